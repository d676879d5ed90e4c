#!/usr/bin/env bash
# Installs the programs the test suite talks to, when they are missing.
set -euo pipefail
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
# Packaging tests (tests/packaging.rs): unit verification, .deb build, check and install.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v strip >/dev/null 2>&1 || need+=(binutils)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v useradd >/dev/null 2>&1 || need+=(passwd)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# dbagent tests (tests/dbagent*.rs) start their own PostgreSQL from the server programs
# (Debian keeps initdb and postgres in /usr/lib/postgresql/VERSION/bin, off the PATH).
have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_initdb || need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing test dependencies: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi
# PostgreSQL refuses to run as root: as root, the dbagent tests run it as this system user.
if [ "$(id -u)" = 0 ] && ! id -u sipcraft-pg >/dev/null 2>&1; then
  echo "creating the system user sipcraft-pg (runs the tests' PostgreSQL)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sipcraft-pg
fi
