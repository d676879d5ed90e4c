#!/usr/bin/env python3
"""Profiles sipcraft's hot paths with perf (sampling on the cpu-clock software event: this VM
has no hardware counters, so `perf stat -e instructions` is not supported; and callgrind
cannot follow the supervisor re-executing /proc/self/exe for its children).

sipcraft runs with 2 UDP workers as in the bench; a REGISTER load and then a call load run
against it, each for --seconds, while perf samples every sipcraft process (DWARF call
graphs: the release profile keeps debug info). For each load it writes the flat profile
(self time per function) and the inclusive one to target/bench-profile/ and prints the top.

Usage: bench/profile.py [--bin target/release/sipcraft] [--register-rate 3000]
                        [--call-rate 600] [--seconds 8]"""
import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procs  # noqa: E402
import sipp  # noqa: E402
from servers import Sipcraft, password  # noqa: E402


def perf_report(data, out, children):
    args = ["perf", "report", "-i", data, "--stdio", "--sort", "symbol", "--percent-limit", "0.7",
            "-g", "none"]
    args.append("--children" if children else "--no-children")
    r = subprocess.run(args, capture_output=True, text=True)
    with open(out, "w") as f:
        f.write(r.stdout)
    return [line for line in r.stdout.splitlines() if line.strip() and not line.startswith("#")]


def main():
    root = os.path.dirname(HERE)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(root, "target/release/sipcraft"))
    ap.add_argument("--work", default=os.path.join(root, "target/bench-profile"))
    ap.add_argument("--register-rate", type=int, default=3000)
    ap.add_argument("--call-rate", type=int, default=600)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf is missing: apt-get install linux-perf")
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "bin"))
    binary = os.path.join(work, "bin", "sipcraft")
    shutil.copy2(args.bin, binary)
    users = [str(100000 + i) for i in range(20000)]
    srv = Sipcraft(binary, work, users + ["999999"])
    auth = lambda u: f"[authentication username={u} password={password(u)}]"
    srv.start()
    callee = None
    try:
        inf = sipp.write_inf(os.path.join(work, "reg.inf"), [f"{u};{auth(u)}" for u in users])
        cinf = sipp.write_inf(os.path.join(work, "callee.inf"), [f"999999;{auth('999999')}"])
        callinf = sipp.write_inf(os.path.join(work, "calls.inf"),
                                 [f"{u};{auth(u)};999999" for u in users])
        for load in ("register", "call"):
            if load == "register":
                s = sipp.Sipp(work, "load-register", "register.xml", srv.port, inf,
                              rate=args.register_rate, count=args.register_rate * args.seconds)
            else:
                callee = sipp.Sipp(work, "callee", "callee.xml", srv.port, cinf, transport="u1",
                                   ooc="answer.xml", count=1).start()
                time.sleep(2)
                s = sipp.Sipp(work, "load-call", "call.xml", srv.port, callinf,
                              rate=args.call_rate, count=args.call_rate * args.seconds,
                              pause_ms=100)
            data = os.path.join(work, f"perf-{load}.data")
            pids = ",".join(str(p) for p in srv.pids())
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499",
                                     "--call-graph", "dwarf,16384", "-p", pids, "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            cpu0 = procs.cpu_seconds(srv.pids())
            s.start()
            s.wait(args.seconds + 30)
            cpu = procs.cpu_seconds(srv.pids()) - cpu0
            perf.send_signal(2)
            perf.wait()
            st = s.stats()
            print(f"== {load}: {st['successful']} ok, {st['failed']} failed at {s.rate}/s; "
                  f"server {cpu:.2f} CPU-s = {cpu / max(st['successful'], 1) * 1000:.3f} per 1000",
                  flush=True)
            for children in (False, True):
                name = f"{load}.{'inclusive' if children else 'self'}.txt"
                lines = perf_report(data, os.path.join(work, name), children)
                print(f"-- {name}")
                print("\n".join(lines[:30 if children else 25]), flush=True)
    finally:
        if callee:
            callee.kill()
        srv.stop()


if __name__ == "__main__":
    main()
