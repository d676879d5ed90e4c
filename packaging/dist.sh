#!/usr/bin/env bash
# Makes OUTDIR/sipcraft-VERSION.tar.gz: the source tree (every file git tracks or would track,
# as it is in the working tree) plus every crate it depends on, vendored, and a
# .cargo/config.toml that points cargo at them. Unpacked anywhere, it builds with
#   cargo build --offline --frozen
# with no network and no cargo registry cache.
# Usage: dist.sh VERSION OUTDIR   (run from the repository root, as `make dist` does)
set -euo pipefail
version=$1
outdir=$2
name=sipcraft-$version
cargo=${CARGO:-cargo}

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sipcraft-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/$name
mkdir -p "$stage"

# The files: tracked and untracked-but-not-ignored, minus those deleted in the working tree.
git ls-files -z --cached --others --exclude-standard |
	while IFS= read -r -d '' f; do
		if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
	done | sort -zu >"$work/files"
tar --create --null --files-from="$work/files" --file=- | tar --extract --file=- -C "$stage"

# The crates, for every platform in Cargo.lock (Windows ones included, for check-windows).
mkdir -p "$stage/.cargo"
vendor_config=$(cd "$stage" && "$cargo" vendor --locked --versioned-dirs vendor)
{
	if [ -f "$stage/.cargo/config.toml" ]; then
		cat "$stage/.cargo/config.toml"
		echo
	fi
	echo "# Written by 'make dist': build from the vendored crates, offline."
	echo "$vendor_config"
} >"$work/config.toml"
mv "$work/config.toml" "$stage/.cargo/config.toml"

# Reproducible: sorted names, no owner, one timestamp (the last commit's, when there is one).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
tar --create --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
	--format=gnu -C "$work" "$name" | gzip -n -9 >"$outdir/$name.tar.gz.tmp"
mv "$outdir/$name.tar.gz.tmp" "$outdir/$name.tar.gz"
echo "$outdir/$name.tar.gz ($(du -h "$outdir/$name.tar.gz" | cut -f1))"
