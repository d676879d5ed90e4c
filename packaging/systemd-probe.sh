#!/usr/bin/env bash
# Installs a sipcraft .deb in a throwaway copy of this machine booted under systemd-nspawn
# (real systemd as PID 1, private network) and checks the unit for real: the sandboxed
# service starts as the sipcraft user with CAP_NET_BIND_SERVICE alone, reaches READY with every
# child, answers OPTIONS on 0.0.0.0:5060, reloads, is restarted by the watchdog when the
# supervisor hangs (SIGSTOP), stops with result "success", and purge removes user and state.
# A manual check (two to three minutes), not part of `make test`: it needs root, overlayfs and
# systemd-nspawn (package systemd-container), and boots this machine's own Debian.
# Usage: packaging/systemd-probe.sh target/dist/sipcraft_*.deb
set -euo pipefail
deb=$(realpath "$1")
work=$(mktemp -d /var/tmp/sipcraft-probe.XXXXXX)
root=$work/merged
mounted_run=
cleanup() {
	umount "$root" 2>/dev/null || true
	if [ -n "$mounted_run" ]; then umount /run/systemd/nspawn 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/upper" "$work/overlay-work" "$root" "$work/share"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/overlay-work" "$root"
# nspawn keeps state under /run/systemd/nspawn and insists on it being a tmpfs.
if ! mountpoint -q /run/systemd/nspawn 2>/dev/null && [ "$(stat -f -c %T /run)" != tmpfs ]; then
	mkdir -p /run/systemd/nspawn
	mount -t tmpfs tmpfs /run/systemd/nspawn
	mounted_run=1
fi
cp "$deb" "$work/share/sipcraft.deb"

cat >"$work/share/probe.sh" <<'PROBE'
#!/bin/sh
exec >/probe/result.log 2>&1
check() { if "$@"; then echo "PASS: $*"; else echo "FAIL: $*"; fi; }
# Waits up to $1 seconds for the rest of the command line to succeed.
within() { n=$1; shift; while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 1; n=$((n - 1)); done; return 1; }
prop() { systemctl show sipcraft -p "$1" --value; }
dpkg -i /probe/sipcraft.deb
check id sipcraft
systemctl start sipcraft
check test "$(prop ActiveState)" = active
check test "$(prop User)" = sipcraft
pid=$(prop MainPID)
check grep -q '^CapEff:.*0000000000000400$' "/proc/$pid/status"
systemctl status sipcraft --no-pager
options() { python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
m = ("OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-probe;rport\r\n"
     "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
     "Call-ID: probe@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % p).encode()
s.settimeout(2); s.sendto(m, ("127.0.0.1", 5060)); r = s.recv(65535).decode()
print(r.splitlines()[0]); assert r.startswith("SIP/2.0 ")'; }
check options
check systemctl reload sipcraft
kill -STOP "$pid"
check within 60 sh -c "test \"\$(systemctl show sipcraft -p NRestarts --value)\" = 1 && systemctl is-active -q sipcraft"
check within 20 sh -c 'sipcraft ctl status | grep -q "^udp-0 .* ready "'
systemctl stop sipcraft
check test "$(prop Result)" = success
check test "$(prop ExecMainStatus)" = 0
journalctl -u sipcraft --no-pager -n 30
dpkg --purge sipcraft
check sh -c '! id sipcraft && ! test -e /var/lib/sipcraft && ! test -e /etc/sipcraft'
echo DONE
systemctl poweroff
PROBE
chmod +x "$work/share/probe.sh"
cat >"$root/etc/systemd/system/sipcraft-probe.service" <<'UNIT'
[Unit]
Description=sipcraft packaging probe
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/probe/probe.sh
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/sipcraft-probe.service "$root/etc/systemd/system/multi-user.target.wants/"
# Whatever else this machine would start stays out of the way (a PostgreSQL server, say).
for unit in postgresql.service postgresql@.service; do ln -sf /dev/null "$root/etc/systemd/system/$unit"; done
rm -f "$root/etc/machine-id" "$root/usr/sbin/policy-rc.d"

timeout 300 systemd-nspawn -q -D "$root" --private-network --link-journal=no --register=no \
	--keep-unit --bind="$work/share:/probe" --machine=sipcraft-probe -b >"$work/console.log" 2>&1 || true
cat "$work/share/result.log" 2>/dev/null || { tail -40 "$work/console.log"; exit 1; }
grep -q '^DONE$' "$work/share/result.log" && ! grep -q '^FAIL' "$work/share/result.log"
