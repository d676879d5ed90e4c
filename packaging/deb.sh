#!/usr/bin/env bash
# Makes OUTDIR/sipcraft_VERSION-REVISION_ARCH.deb with dpkg-deb from a staged tree: the
# binary, man page, the configuration as a conffile, the systemd unit, docs, and the
# maintainer scripts that create the sipcraft user (packaging/debian/). No debhelper.
# Needs dpkg-dev (dpkg-shlibdeps, dpkg-architecture) and binutils (strip).
# Usage: deb.sh BIN VERSION OUTDIR   (run from the repository root, as `make deb` does)
# Environment: DEB_REVISION (1), DEB_MAINTAINER, SOURCE_DATE_EPOCH.
set -euo pipefail
bin=$1
version=$2-${DEB_REVISION:-1}
outdir=$3
maintainer=${DEB_MAINTAINER:-sipcraft maintainers <maintainers@sipcraft.example.org>}
homepage=${DEB_HOMEPAGE:-https://sipcraft.example.org/}
arch=$(dpkg --print-architecture)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sipcraft-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/sipcraft
doc=$stage/usr/share/doc/sipcraft

# Bookworm ships units under /lib (the /usr-merge moratorium); systemd reads both.
install -D -m 0755 "$bin" "$stage/usr/bin/sipcraft"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/bin/sipcraft"
install -D -m 0644 systemd/sipcraft.service "$stage/lib/systemd/system/sipcraft.service"
install -D -m 0644 packaging/sipcraft.toml "$stage/etc/sipcraft/sipcraft.toml"
install -d -m 0755 "$stage/usr/share/man/man1"
gzip -9n <docs/sipcraft.1 >"$stage/usr/share/man/man1/sipcraft.1.gz"
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
install -D -m 0644 examples/sipcraft.toml "$doc/examples/sipcraft.toml"
install -D -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/sipcraft"
{
	echo "sipcraft ($version) unstable; urgency=medium"
	echo
	echo "  * Built from the sipcraft source with 'make deb'."
	echo
	echo " -- $maintainer  $(date -u -R -d "@$epoch")"
} | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz" "$stage/usr/share/man/man1/sipcraft.1.gz"

# Shared-library dependencies of the binary, as dh_shlibdeps finds them.
mkdir -p "$work/debian"
printf 'Source: sipcraft\n\nPackage: sipcraft\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"$stage/usr/bin/sipcraft" 2>/dev/null |
	sed -n 's/^shlibs:Depends=//p')
depends="${shlibs:+$shlibs, }adduser, passwd"

mkdir -p "$stage/DEBIAN"
size=$(du -k -s --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
	-e "s|@SIZE@|$size|" -e "s|@DEPENDS@|$depends|" -e "s|@HOMEPAGE@|$homepage|" \
	packaging/debian/control.in >"$stage/DEBIAN/control"
echo /etc/sipcraft/sipcraft.toml >"$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
	xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
find "$stage" -type d -exec chmod 0755 {} +

deb=$outdir/sipcraft_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
