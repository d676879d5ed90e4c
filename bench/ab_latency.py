#!/usr/bin/env python3
"""Response times of several servers side by side, alternating.

Usage: python3 bench/ab_latency.py kam target/release/sipcraft /tmp/other-build ...
       KIND=call python3 bench/ab_latency.py kam /tmp/build@udp_wake_all_below=0 ...

Every server given ("kam" for Kamailio with bench/kamailio.cfg, else a sipcraft binary,
optionally followed by @key=value,... for its `[limits]`) is started with the same N users
(env N, default 100,000) and filled with one registration each; then R rounds (env R,
default 3) run against one server after the other, the order rotating every round, each
captured on loopback:
  KIND=register (default): 12,000 REGISTERs at 1,000/s over the first 20,000 users;
  KIND=call: 1,800 calls at 300/s (as `make bench`'s moderate step) to one callee SIPp
             registered with each server; every pair of bench/capture.py is printed.
Prints p50/p90/p99/max per round and pooled, and the server's CPU seconds per 1000
registrations or calls (every server process, from /proc) per round and on average. This is
how the p99 changes in bench/PROFILE.md were measured: the drift of a shared 2-vCPU machine
hits every build alike.
Loopback only, bounded (about 2 minutes per server at the defaults).
"""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture  # noqa: E402
import sipp  # noqa: E402
from servers import Kamailio, Sipcraft, password  # noqa: E402

RATE = 1000
COUNT = 12000
CALL_RATE = 300
CALLS = 1800
CALLEE = "999999"


def main():
    n = int(os.environ.get("N", "100000"))
    rounds = int(os.environ.get("R", "3"))
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="ab-latency-")
    kind = os.environ.get("KIND", "register")
    users = [str(100000 + i) for i in range(n)]
    servers, callees = [], []
    for i, what in enumerate(sys.argv[1:]):
        d = os.path.join(work, f"s{i}")
        binary, _, settings = what.partition("@")
        limits = [kv.replace("=", " = ", 1) for kv in settings.split(",") if kv]
        s = Kamailio(d, users + [CALLEE]) if what == "kam" else \
            Sipcraft(os.path.abspath(binary), d, users + [CALLEE], limits=limits)
        s.tag = what
        servers.append(s)
    try:
        for s in servers:
            s.start(timeout=300)
        auth = lambda u: f"[authentication username={u} password={password(u)}]"
        cred = lambda u: f"{u};{auth(u)}"
        fill = sipp.write_inf(os.path.join(work, "all.inf"), [cred(u) for u in users])
        pool = sipp.write_inf(os.path.join(work, "pool.inf"), [cred(u) for u in users[:20000]])
        calls = sipp.write_inf(os.path.join(work, "calls.inf"),
                               [f"{u};{auth(u)};{CALLEE}" for u in users[:20000]])
        if kind == "call":
            callee_inf = sipp.write_inf(os.path.join(work, "callee.inf"), [cred(CALLEE)])
            for s in servers:
                callees.append(sipp.start_callee(work, f"callee-{s.port}", s.port, callee_inf,
                                                 s.tag))
        for s in servers:
            f = sipp.Sipp(work, "fill", "register.xml", s.port, fill, rate=4000, count=n,
                          extra=["-recv_timeout", "4000"])
            f.start()
            f.wait(n / 4000 + 60)
        time.sleep(12)  # the fill's transactions expire (Timer J, 5 s)
        pooled, cpus = {}, {}
        for r in range(rounds):
            k = r % len(servers)
            for s in servers[k:] + servers[:k]:
                pcap = os.path.join(work, "c.pcap")
                cpu0 = s.cpu_seconds()
                with capture.Capture(pcap, s.port):
                    if kind == "call":
                        run = sipp.Sipp(work, "lat", "call.xml", s.port, calls, rate=CALL_RATE,
                                        count=CALLS, pause_ms=100, extra=["-recv_timeout", "4000"])
                    else:
                        run = sipp.Sipp(work, "lat", "register.xml", s.port, pool, rate=RATE,
                                        count=COUNT, extra=["-recv_timeout", "4000"])
                    run.start()
                    run.wait(60)
                done = max(run.stats()["successful"], 1)
                cpu = (s.cpu_seconds() - cpu0) / done * 1000
                cpus.setdefault(s.tag, []).append(cpu)
                print(f"round {r} {s.tag}: server {cpu:.3f} CPU-s per 1000", flush=True)
                for pair, got in capture.response_times_us(pcap, s.port).items():
                    vals = sorted(v for _, v in got)
                    if not vals:
                        continue
                    pooled.setdefault((pair, s.tag), []).extend(vals)
                    print(f"round {r} {s.tag} {pair}: {summary(vals)}", flush=True)
        for (pair, tag), vals in sorted(pooled.items()):
            print(f"all {pair} {tag}: {summary(sorted(vals))}")
        for tag, vals in cpus.items():
            print(f"all {tag}: server {sum(vals) / len(vals):.3f} CPU-s per 1000 "
                  f"(rounds {', '.join(f'{v:.3f}' for v in vals)})")
    finally:
        for c in callees:
            c.kill()
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


def summary(vals):
    n = len(vals)
    if not n:
        return "no samples"
    at = lambda q: vals[min(n - 1, int(n * q))]
    return f"n {n} p50 {at(.5):.0f} p90 {at(.9):.0f} p99 {at(.99):.0f} max {vals[-1]:.0f} us"


if __name__ == "__main__":
    main()
