#!/usr/bin/env bash
# INVITE -> 180 latency through sipcraft's proxy (issue 4), with and without a hand-off
# between workers. Loopback only, bounded: CALLS calls per case at RATE calls/s, one at a time.
#
# Usage: bench/call_latency.sh [CALLS] [RATE]        (defaults: 1000 calls, 50 calls/s)
#   BIN=path/to/sipcraft  (default target/release/sipcraft, built when missing)
#
# It starts its own sipcraft (2 UDP workers, 1 TCP worker, a free port, a temporary
# directory), then for each case registers a callee (1002) and places CALLS calls from 1001.
# The caller times each authenticated INVITE to the first 180 (perf_counter, so below the
# millisecond SIPp's -trace_rtt resolves); the callee answers 180 then 486 at once, so a call
# is INVITE/407/ACK/INVITE/180/486/ACK and leaves no dialog behind. Cases:
#   udp-same   caller and callee on the same UDP worker: no hand-off
#   udp-cross  caller and callee on different UDP workers: the callee's responses reach
#              the other worker and are handed over the bus to the one holding the transaction
#   udp-tcp    callee over TCP: the INVITE is handed to tcp-0, which owns the connection
# The worker a UDP socket lands on (SO_REUSEPORT hashes the source address and port) is read
# from the Server header of the answer to an OPTIONS sent from it.
set -euo pipefail
CALLS=${1:-1000}
RATE=${2:-50}
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/sipcraft}
if [ ! -x "$BIN" ]; then
  cargo build --release --bin sipcraft
fi

dir=$(mktemp -d -t sipcraft-bench-XXXXXX)
port=$(python3 -c 'import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass')
cat > "$dir/sipcraft.toml" <<EOF
[server]
domain = "pbx.test"
runtime_dir = "$dir/rt"
state_dir = "$dir/state"

[[listen]]
transport = "udp"
address = "127.0.0.1:$port"
workers = 2

[[listen]]
transport = "tcp"
address = "127.0.0.1:$port"
workers = 1

[[extension]]
number = "1001"
password = "pw1001"

[[extension]]
number = "1002"
password = "pw1002"

[security]
trusted_ips = ["127.0.0.0/8"]
EOF

"$BIN" run -c "$dir/sipcraft.toml" 2>"$dir/sipcraft.log" &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do
  if "$BIN" ctl -c "$dir/sipcraft.toml" status --check >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$BIN" ctl -c "$dir/sipcraft.toml" status --check >/dev/null

echo "$("$BIN" --version 2>/dev/null | head -n 1) on 127.0.0.1:$port; $CALLS calls per case at $RATE calls/s, $(nproc) CPUs"
python3 - "$port" "$CALLS" "$RATE" <<'PY'
import hashlib, re, socket, statistics, sys, threading, time

PORT, CALLS, RATE = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
SERVER = ("127.0.0.1", PORT)
DOMAIN = "pbx.test"
TIMEOUT = 2.0


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def param(h, name):
    m = re.search(r'(?:^|[\s,])' + name + r'="?([^",]+)"?', h)
    return m.group(1) if m else None


def authorization(challenge, user, password, method, uri):
    realm, nonce = param(challenge, "realm"), param(challenge, "nonce")
    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    resp = md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, cnonce="c0ffee", qop=auth, nc=00000001')


def headers(msg, name):
    head = msg.split("\r\n\r\n", 1)[0]
    return [l.split(":", 1)[1].strip() for l in head.split("\r\n")[1:]
            if l.split(":", 1)[0].strip().lower() == name.lower()]


class Phone:
    """One socket (UDP, or a TCP connection to sipcraft), one extension."""

    def __init__(self, user, tcp=False, sock=None):
        self.user, self.password, self.tcp = user, f"pw{user}", tcp
        if tcp:
            self.s = socket.create_connection(SERVER)
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.s = sock or udp_socket()
        self.s.settimeout(TIMEOUT)
        self.local = "%s:%d" % self.s.getsockname()
        self.tp = "TCP" if tcp else "UDP"
        self.buf = b""
        self.n = 0

    def send(self, text):
        if self.tcp:
            self.s.sendall(text.encode())
        else:
            self.s.sendto(text.encode(), SERVER)

    def recv(self):
        if not self.tcp:
            return self.s.recv(65535).decode(errors="replace")
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", self.buf[:end])
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg.decode(errors="replace")
            chunk = self.s.recv(65535)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def next(self):
        self.n += 1
        return self.n

    def via(self, branch):
        return f"Via: SIP/2.0/{self.tp} {self.local};branch={branch};rport\r\n"

    def register(self):
        auth = ""
        for _ in range(2):
            n = self.next()
            self.send(f"REGISTER sip:{DOMAIN} SIP/2.0\r\n{self.via(f'z9hG4bK-r{n}-{self.local}')}"
                      f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@{DOMAIN}>;tag=r\r\n"
                      f"To: <sip:{self.user}@{DOMAIN}>\r\nCall-ID: reg-{self.local}\r\n"
                      f"CSeq: {n} REGISTER\r\nContact: <sip:{self.user}@{self.local};"
                      f"transport={self.tp.lower()}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n")
            r = self.recv()
            if r.startswith("SIP/2.0 200"):
                return
            ch = [c for c in headers(r, "WWW-Authenticate") if "MD5" in c][0]
            auth = "Authorization: " + authorization(ch, self.user, self.password, "REGISTER",
                                                     f"sip:{DOMAIN}") + "\r\n"
        raise SystemExit(f"REGISTER failed: {r.splitlines()[0]}")



def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def worker_of(sock):
    """The UDP worker that handles datagrams from this socket."""
    port = sock.getsockname()[1]
    sock.settimeout(TIMEOUT)
    sock.sendto((f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};"
                 f"branch=z9hG4bK-probe-{port};rport\r\nMax-Forwards: 70\r\n"
                 f"From: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{DOMAIN}>\r\n"
                 f"Call-ID: probe-{port}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
                SERVER)
    r = sock.recv(65535).decode(errors="replace")
    m = re.search(r"(?m)^Server:.*\((.*)\)", r)
    return m.group(1) if m else "?"


def socket_on(worker=None, not_worker=None):
    for _ in range(200):
        s = udp_socket()
        w = worker_of(s)
        if (worker is None or w == worker) and (not_worker is None or w != not_worker):
            return s, w
        s.close()
    raise SystemExit("could not land a socket on the wanted worker")


def callee_loop(phone, stop):
    """180 then 486 for every INVITE; absorbs the ACKs."""
    phone.s.settimeout(0.2)
    while not stop.is_set():
        try:
            m = phone.recv()
        except (socket.timeout, TimeoutError):
            continue
        except (EOFError, OSError):
            return
        if not m.startswith("INVITE "):
            continue
        head = m.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [l for l in head[1:] if l.split(":", 1)[0].strip().lower() in
                ("via", "v", "from", "f", "call-id", "i", "cseq", "record-route")]
        to = [l for l in head[1:] if l.split(":", 1)[0].strip().lower() in ("to", "t")][0]
        base = "\r\n".join(keep) + f"\r\n{to};tag=bench\r\n"
        phone.send(f"SIP/2.0 180 Ringing\r\n{base}Contact: <sip:{phone.user}@{phone.local}>\r\n"
                   "Content-Length: 0\r\n\r\n")
        base = "\r\n".join(l for l in keep if not l.lower().startswith("record-route"))
        phone.send(f"SIP/2.0 486 Busy Here\r\n{base}\r\n{to};tag=bench\r\nContent-Length: 0\r\n\r\n")


def call_once(c, i):
    cid = f"bench-{c.local}-{i}"
    uri = f"sip:1002@{DOMAIN}"

    def invite(cseq, branch, extra=""):
        return (f"INVITE {uri} SIP/2.0\r\n{c.via(branch)}Max-Forwards: 70\r\n"
                f"From: <sip:1001@{DOMAIN}>;tag=b{i}\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\n"
                f"CSeq: {cseq} INVITE\r\nContact: <sip:1001@{c.local}>\r\n{extra}Content-Length: 0\r\n\r\n")

    def ack(cseq, branch, resp):
        to = headers(resp, "To")[0]
        c.send(f"ACK {uri} SIP/2.0\r\n{c.via(branch)}Max-Forwards: 70\r\n"
               f"From: <sip:1001@{DOMAIN}>;tag=b{i}\r\nTo: {to}\r\nCall-ID: {cid}\r\n"
               f"CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n")

    def final(cseq):
        while True:
            r = c.recv()
            if cid not in r or f"{cseq} INVITE" not in r:
                continue
            code = int(r[8:11])
            if code >= 200:
                return r

    b1, b2 = f"z9hG4bK-{i}-a-{c.local}", f"z9hG4bK-{i}-b-{c.local}"
    c.send(invite(1, b1))
    r = final(1)
    if not r.startswith("SIP/2.0 407"):
        raise SystemExit(f"expected 407, got {r.splitlines()[0]}")
    ack(1, b1, r)
    auth = authorization(headers(r, "Proxy-Authenticate")[0], "1001", "pw1001", "INVITE", uri)
    t0 = time.perf_counter()
    c.send(invite(2, b2, f"Proxy-Authorization: {auth}\r\n"))
    ring = None
    while True:
        r = c.recv()
        if cid not in r or "2 INVITE" not in r:
            continue
        code = int(r[8:11])
        if code == 180 and ring is None:
            ring = time.perf_counter() - t0
        if code >= 200:
            break
    if not r.startswith("SIP/2.0 486"):
        raise SystemExit(f"expected 486, got {r.splitlines()[0]}")
    ack(2, b2, r)
    if ring is None:
        raise SystemExit("no 180 before the final response")
    return ring


def run(name, caller_sock, callee):
    stop = threading.Event()
    t = threading.Thread(target=callee_loop, args=(callee, stop), daemon=True)
    t.start()
    caller = Phone("1001", sock=caller_sock)
    lat, start = [], time.perf_counter()
    for i in range(CALLS):
        slot = start + i / RATE
        delay = slot - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        lat.append(call_once(caller, i))
    stop.set()
    t.join()
    lat.sort()
    ms = lambda x: f"{x * 1000:.3f}"
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"{name:10} median {ms(statistics.median(lat))} ms  p99 {ms(p99)} ms  "
          f"max {ms(lat[-1])} ms  ({len(lat)} calls)", flush=True)


# Each case registers a fresh callee; the previous one unregisters first (a stale binding
# would fork the calls to a closed socket).
def unregister(phone):
    auth = ""
    for _ in range(2):
        n = phone.next()
        phone.send(f"REGISTER sip:{DOMAIN} SIP/2.0\r\n{phone.via(f'z9hG4bK-u{n}-{phone.local}')}"
                   f"Max-Forwards: 70\r\nFrom: <sip:{phone.user}@{DOMAIN}>;tag=r\r\n"
                   f"To: <sip:{phone.user}@{DOMAIN}>\r\nCall-ID: reg-{phone.local}\r\n"
                   f"CSeq: {n} REGISTER\r\nContact: *\r\nExpires: 0\r\n{auth}Content-Length: 0\r\n\r\n")
        phone.s.settimeout(TIMEOUT)
        r = phone.recv()
        while "REGISTER" not in r:
            r = phone.recv()
        if r.startswith("SIP/2.0 200"):
            return
        ch = [c for c in headers(r, "WWW-Authenticate") if "MD5" in c][0]
        auth = "Authorization: " + authorization(ch, phone.user, phone.password, "REGISTER",
                                                 f"sip:{DOMAIN}") + "\r\n"
    raise SystemExit("unREGISTER failed")


callee_sock, w = socket_on()
callee = Phone("1002", sock=callee_sock)
callee.register()
caller_sock, _ = socket_on(worker=w)
run("udp-same", caller_sock, callee)
caller_sock, _ = socket_on(not_worker=w)
run("udp-cross", caller_sock, callee)
unregister(callee)
callee = Phone("1002", tcp=True)
callee.register()
caller_sock, _ = socket_on()
run("udp-tcp", caller_sock, callee)
unregister(callee)
PY
