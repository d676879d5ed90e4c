#!/usr/bin/env python3
"""Memory per idle connection of a sipcraft TLS (or WSS, or TCP) worker, on loopback.

Starts `sipcraft run` with one listen entry of the chosen transport and one worker, opens
idle connections in steps (TLS handshake done, WebSocket upgraded, nothing else sent), and
reads the worker's memory from /proc after each step. Prints the growth per connection.

    cargo build --release && python3 bench/tls_idle.py                # 1000 TLS connections
    python3 bench/tls_idle.py --transport wss --connections 2000
    python3 bench/tls_idle.py --bin target/debug/sipcraft --transport tcp

Needs python3 and the openssl command (for a throw-away certificate). Loopback only; the
server and every connection are closed at the end.
"""
import argparse
import base64
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid):
    """Rss and private (anonymous, dirty) memory of one process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields.get("Rss", 0), fields.get("Private_Dirty", 0)


def ctl_status(binary, config):
    out = subprocess.run(
        [binary, "ctl", "-c", config, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_for(what, within, cond):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def make_certificate(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=bench.test", "-days", "2",
         "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def open_connection(transport, address, context):
    sock = socket.create_connection(address, timeout=10)
    if transport in ("tls", "wss"):
        sock = context.wrap_socket(sock, server_hostname="bench.test")
    if transport == "wss":
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (f"GET / HTTP/1.1\r\nHost: bench.test\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n").encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                sys.exit("the server closed a connection during the upgrade")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"upgrade refused: {head[:80]!r}")
    return sock


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "sipcraft"))
    parser.add_argument("--transport", choices=["tls", "wss", "tcp"], default="tls")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: build it first (cargo build --release)")
    if args.transport != "tcp" and not shutil.which("openssl"):
        sys.exit("the openssl command is needed for the test certificate")
    # The worker inherits this limit through the supervisor.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    work = tempfile.mkdtemp(prefix="sipcraft-tls-idle-")
    port = free_port()
    files = ""
    context = None
    if args.transport != "tcp":
        cert, key = make_certificate(work)
        files = f'cert = "{cert}"\nkey = "{key}"\n'
        context = ssl.create_default_context(cafile=cert)
    config = os.path.join(work, "sipcraft.toml")
    with open(config, "w") as f:
        f.write(
            f'[server]\ndomain = "bench.test"\nruntime_dir = "{work}/rt"\n'
            f'state_dir = "{work}/state"\nlog_level = "warn"\n\n'
            f'[[listen]]\ntransport = "{args.transport}"\naddress = "127.0.0.1:{port}"\n'
            f"workers = 1\n{files}\n"
            f"[limits]\nmax_tcp_connections = {args.connections + 100}\n"
        )
    log = open(os.path.join(work, "sipcraft.log"), "w")
    server = subprocess.Popen(
        [args.bin, "run", "-c", config], stdin=subprocess.DEVNULL, stderr=log, start_new_session=True
    )
    conns = []
    try:
        name = f"{args.transport}-0"

        def ready():
            s = ctl_status(args.bin, config)
            if not s:
                return None
            child = [c for c in s["children"] if c["name"] == name]
            return child[0] if child and child[0]["state"] == "ready" else None

        worker = wait_for("the worker to be ready", 20, ready)
        pid = worker["pid"]
        time.sleep(0.5)
        base_rss, base_private = memory_kib(pid)
        print(f"sipcraft {args.transport} worker pid {pid}: {base_rss} KiB RSS, "
              f"{base_private} KiB private at rest")
        print(f"{'connections':>11} {'RSS KiB':>9} {'private KiB':>11} {'per conn (RSS)':>15} "
              f"{'per conn (private)':>18}")
        address = ("127.0.0.1", port)
        started = time.monotonic()
        for step in range(1, args.steps + 1):
            target = args.connections * step // args.steps
            while len(conns) < target:
                conns.append(open_connection(args.transport, address, context))

            def counted():
                s = ctl_status(args.bin, config)
                c = [c for c in s["children"] if c["name"] == name] if s else []
                return c and c[0]["health"]["connections"] >= target

            wait_for(f"{target} connections counted", 30, counted)
            time.sleep(1.0)
            rss, private = memory_kib(pid)
            n = len(conns)
            print(f"{n:>11} {rss:>9} {private:>11} {(rss - base_rss) / n:>15.1f} "
                  f"{(private - base_private) / n:>18.1f}")
        print(f"opened {len(conns)} idle {args.transport} connections in "
              f"{time.monotonic() - started:.1f} s; figures in KiB per connection")
    finally:
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
