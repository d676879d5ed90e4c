#!/usr/bin/env python3
"""Memory of sipcraft alone, per process, in about a minute: the quick loop for memory work
that the full bench (run.py, ~8 min, Kamailio beside) is too slow for.

Starts BINARY with USERS generated extensions (the bench's config), takes RSS and PSS of
every process with nothing registered, registers every user once with SIPp (register.xml,
at RATE/s), and takes them again as soon as all are registered and once the fill's
transactions have expired. Prints bytes per registration by process.

    python3 bench/mem.py --bin target/release/sipcraft [--users 100000] [--json out.json]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402
import sipp  # noqa: E402
from servers import Sipcraft, password  # noqa: E402

SETTLE_S = 10  # Timer J for UDP (udp_linger_ms, 5 s) and a margin


def pss_kib(pid):
    return procs.pss_kib([pid])


def point(srv):
    """RSS and PSS (KiB) of each process, by name."""
    st = srv.status()
    out = {"supervisor": (procs.rss_kib([st["supervisor_pid"]]), pss_kib(st["supervisor_pid"]))}
    for c in st["children"]:
        if c.get("pid"):
            out[c["name"]] = (procs.rss_kib([c["pid"]]), pss_kib(c["pid"]))
    return out


def show(title, base, now, n):
    print(f"{title} ({n} registered)")
    print(f"  {'process':12} {'RSS MiB':>9} {'B/reg RSS':>10} {'B/reg PSS':>10}")
    tot = [0, 0, 0, 0]
    for name in sorted(now):
        r, p = now[name]
        r0, p0 = base.get(name, (0, 0))
        tot = [tot[0] + r, tot[1] + r0, tot[2] + p, tot[3] + p0]
        print(f"  {name:12} {r / 1024:9.1f} {(r - r0) * 1024 / max(n, 1):10.0f} "
              f"{(p - p0) * 1024 / max(n, 1):10.0f}")
    print(f"  {'all':12} {tot[0] / 1024:9.1f} {(tot[0] - tot[1]) * 1024 / max(n, 1):10.0f} "
          f"{(tot[2] - tot[3]) * 1024 / max(n, 1):10.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/sipcraft")
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--wait", type=float, default=2,
                    help="seconds between start and the baseline (an allocator that returns "
                         "freed memory lazily, such as mimalloc, needs ~15)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sipcraft-mem-")
    users = [str(100000 + i) for i in range(args.users)]
    srv = Sipcraft(os.path.abspath(args.bin), work, users, udp_workers=args.workers)
    result = {"users": args.users}
    try:
        t = time.monotonic()
        srv.start(timeout=300)
        result["start_s"] = round(time.monotonic() - t, 1)
        time.sleep(args.wait)
        base = point(srv)
        result["baseline_kib"] = base
        print(f"started in {result['start_s']} s; baseline with {args.users} extensions:")
        for name in sorted(base):
            print(f"  {name:12} RSS {base[name][0] / 1024:7.1f} MiB  PSS {base[name][1] / 1024:7.1f} MiB")
        print(f"  {'all':12} RSS {sum(v[0] for v in base.values()) / 1024:7.1f} MiB  "
              f"PSS {sum(v[1] for v in base.values()) / 1024:7.1f} MiB")
        inf = sipp.write_inf(os.path.join(work, "reg.inf"),
                             [f"{u};[authentication username={u} password={password(u)}]"
                              for u in users])
        s = sipp.Sipp(work, "fill", "register.xml", srv.port, inf, rate=args.rate,
                      count=args.users, extra=["-recv_timeout", "4000"])
        cpu0 = srv.cpu_seconds()
        s.start()
        s.wait(args.users / args.rate + 60)
        result["fill_cpu_s"] = round(srv.cpu_seconds() - cpu0, 2)
        deadline = time.monotonic() + 20
        while srv.registered() < args.users and time.monotonic() < deadline:
            time.sleep(0.2)
        n = srv.registered()
        full = point(srv)
        show("right after the fill", base, full, n)
        print(f"  server CPU during the fill: {result['fill_cpu_s']} s")
        time.sleep(SETTLE_S)
        settled = point(srv)
        show(f"{SETTLE_S} s later", base, settled, n)
        result.update(registered=n, full_kib=full, settled_kib=settled)
    finally:
        srv.stop()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
