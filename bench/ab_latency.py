#!/usr/bin/env python3
"""REGISTER -> 200 response times of several servers side by side, alternating.

Usage: python3 bench/ab_latency.py kam target/release/sipcraft /tmp/other-build ...

Every server given ("kam" for Kamailio with bench/kamailio.cfg, else a sipcraft binary) is
started with the same N users (env N, default 100,000) and filled with one registration each;
then R rounds (env R, default 3) of 12,000 REGISTERs at 1,000/s over the first 20,000 users
run against one server after the other, the order rotating every round, each captured on
loopback. Prints p50/p90/p99/max per round and pooled. This is how the p99 changes in
bench/PROFILE.md were measured: the drift of a shared 2-vCPU machine hits every build alike.
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


def main():
    n = int(os.environ.get("N", "100000"))
    rounds = int(os.environ.get("R", "3"))
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="ab-latency-")
    users = [str(100000 + i) for i in range(n)]
    servers = []
    for i, what in enumerate(sys.argv[1:]):
        d = os.path.join(work, f"s{i}")
        s = Kamailio(d, users) if what == "kam" else Sipcraft(os.path.abspath(what), d, users)
        s.tag = what
        servers.append(s)
    try:
        for s in servers:
            s.start(timeout=300)
        cred = lambda u: f"{u};[authentication username={u} password={password(u)}]"
        fill = sipp.write_inf(os.path.join(work, "all.inf"), [cred(u) for u in users])
        pool = sipp.write_inf(os.path.join(work, "pool.inf"), [cred(u) for u in users[:20000]])
        for s in servers:
            f = sipp.Sipp(work, "fill", "register.xml", s.port, fill, rate=4000, count=n,
                          extra=["-recv_timeout", "4000"])
            f.start()
            f.wait(n / 4000 + 60)
        time.sleep(12)  # the fill's transactions expire (Timer J, 5 s)
        pooled = {s.tag: [] for s in servers}
        for r in range(rounds):
            k = r % len(servers)
            for s in servers[k:] + servers[:k]:
                pcap = os.path.join(work, "c.pcap")
                with capture.Capture(pcap, s.port):
                    run = sipp.Sipp(work, "lat", "register.xml", s.port, pool, rate=RATE,
                                    count=COUNT, extra=["-recv_timeout", "4000"])
                    run.start()
                    run.wait(60)
                vals = sorted(v for _, v in capture.response_times_us(pcap, s.port)["REGISTER -> 200"])
                pooled[s.tag].extend(vals)
                print(f"round {r} {s.tag}: {summary(vals)}", flush=True)
        for tag, vals in pooled.items():
            print(f"all {tag}: {summary(sorted(vals))}")
    finally:
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
