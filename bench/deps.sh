#!/usr/bin/env bash
# Installs what `make bench` needs when it is missing (apt-get, as root): Kamailio 5.6 (the
# server compared against), SIPp (sip-tester), tcpdump (sub-millisecond response times from
# a loopback capture), PostgreSQL server programs (the database-outage step), and perf and
# valgrind for bench/profile.py.
set -euo pipefail
need=()
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
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
    # The Debian package enables a kamailio service on port 5060; the bench starts its own.
    if [[ " ${need[*]} " == *" kamailio "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now kamailio.service >/dev/null 2>&1 || true
    fi
  else
    echo "missing bench dependencies: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi
