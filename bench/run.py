#!/usr/bin/env python3
"""sipcraft against Kamailio, same machine, same run, same SIPp scenarios (`make bench`).

Both servers run side by side for the whole run, each on a loopback port picked now, with
the same users (USERS generated extensions + the callee). Every measurement runs against one
server, then the other, alternating which goes first, so drift of this noisy machine hits
both alike. Phases:
  1. memory per registration at 10k and at 100k registered users (baseline subtracted);
  2. REGISTER with digest at a fixed moderate rate: response times (loopback capture) and
     CPU seconds per 1000 registrations (separate runs, no capture);
  3. REGISTER step-up search: highest rate with < 0.1 % failed registrations;
  4. calls (INVITE, 407, ACK, INVITE with credentials, 180, 200, ACK, BYE, 200) at a fixed
     moderate rate: response times and CPU per 1000 calls; then the step-up search;
  5. sipcraft alone with PostgreSQL, SIGSTOPped for 20 s under call load (when the
     dbagent's [database] support works; otherwise skipped with the reason);
then writes BENCHMARKS.md (and target/bench/results.json with every step).

Usage: bench/run.py [--bin target/release/sipcraft] [--out BENCHMARKS.md] [--quick]"""
import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import capture  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import sipp  # noqa: E402
from servers import Kamailio, Sipcraft, password  # noqa: E402

CALLEE = "999999"
# Seconds to wait after the 100k fill before the steady-state memory point: sipcraft's
# Timer J for UDP (`[limits] udp_linger_ms`, 5 s by default) and Kamailio's wt_timer (5 s),
# plus a margin.
SETTLE_S = 10
# Users registered before the memory baseline (see Bench.memory), not counted in the growth,
# and how long the warm-up registers them over and over.
WARMUP = 1000
WARMUP_S = 5
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        q = args.quick
        self.users = [str(100000 + i) for i in range(20000 if q else 100000)]
        self.mem_first = 2000 if q else 10000       # registrations at the first memory point
        self.load_rate = 4000                       # registrations/s while filling the registrar
        self.reg_moderate = 1000                    # registrations/s for latency and CPU
        self.call_moderate = 300                    # calls/s for latency and CPU
        self.hold_ms = 100                          # call hold time before the BYE
        self.step_s = 3 if q else 5                 # length of one search step
        self.moderate_s = 4 if q else 6
        # Captured rounds per server at the moderate rate. A REGISTER takes 40-60 µs, and its
        # p99 moved by 20-40 % between runs of 2 rounds (12,000 samples) with the same code
        # (issue 7, session 7): 4 rounds pool 24,000 and spread the machine's drift over
        # more alternations. Calls too: their p99 over 2 rounds (3,600 calls, the 36th
        # slowest) moved by 50-200 µs between runs with the same code, most of it the
        # callee SIPp's answer (issue 7, sessions 8 and 9).
        self.lat_rounds = {"register": 2 if q else 4, "call": 2 if q else 4}
        self.work = os.path.abspath(args.work)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        binary = os.path.join(self.work, "bin", "sipcraft")
        os.makedirs(os.path.dirname(binary))
        shutil.copy2(args.bin, binary)  # a rebuild during the run does not change it
        pool = self.users[:20000]
        self.inf = {
            "warm": self._inf("warm", self.users[:WARMUP]),
            "mem1": self._inf("mem1", self.users[WARMUP:self.mem_first]),
            "mem2": self._inf("mem2", self.users[self.mem_first:]),
            "reg": self._inf("reg", pool),
            "calls": sipp.write_inf(os.path.join(self.work, "calls.inf"),
                                    [f"{u};{auth(u)};{CALLEE}" for u in pool]),
            "callee": self._inf("callee", [CALLEE]),
            # the database-outage step: callers among the users it inserts in PostgreSQL
            "db-calls": sipp.write_inf(os.path.join(self.work, "db-calls.inf"),
                                       [f"{u};{auth(u)};{CALLEE}" for u in self.users[:1000]]),
        }
        everyone = self.users + [CALLEE]
        self.servers = [Sipcraft(binary, self.work, everyone), Kamailio(self.work, everyone)]
        self.callees = {}
        self.results = {"steps": [], "memory": {}, "moderate": {}, "max": {}, "db": None}
        self.run_no = 0

    def _inf(self, name, users):
        return sipp.write_inf(os.path.join(self.work, name + ".inf"),
                              [f"{u};{auth(u)}" for u in users])

    def order(self, k):
        return self.servers if k % 2 == 0 else self.servers[::-1]

    # ---- one SIPp run against one server, with CPU accounting

    def run(self, srv, kind, rate, seconds, inf=None, trace_port=None, tag=""):
        self.run_no += 1
        count = max(int(rate * seconds), 1)
        label = f"{self.run_no:03d}-{kind}-{srv.name}-{rate}{tag}"
        if kind == "register":
            s = sipp.Sipp(self.work, label, "register.xml", srv.port, inf or self.inf["reg"],
                          rate=rate, count=count, extra=["-recv_timeout", "4000"])
        else:
            s = sipp.Sipp(self.work, label, "call.xml", srv.port, self.inf["calls"],
                          rate=rate, count=count, pause_ms=self.hold_ms,
                          extra=["-recv_timeout", "4000"])
        callee = self.callees.get(srv.name)
        groups = {"server": srv.pids}
        if callee:
            groups["callee"] = lambda: [callee.proc.pid]
        by_process = srv.process_groups() if srv.name == "sipcraft" else {}
        for name, f in by_process.items():
            groups["p:" + name] = f
        pcap = os.path.join(self.work, label + ".pcap")
        with procs.CpuWindow(groups) as w:
            if trace_port:
                with capture.Capture(pcap, trace_port):
                    s.start()
                    s.wait(seconds + 30)
            else:
                s.start()
                s.wait(seconds + 30)
        st = s.stats()
        sipp_cpu = st["sipp_cpu_s"] + w.cpu.get("callee", 0)
        bad = st["failed"] + st["unfinished"] + (count - st["created"])
        r = {
            "label": label, "server": srv.name, "kind": kind, "rate": rate, "count": count,
            "offered_rate": st.get("offered_rate", 0), "successful": st["successful"],
            "failed": bad, "failures": st["failures"], "retransmissions": st["retransmissions"],
            "exit": st["exit"], "wall_s": round(w.wall, 2),
            "server_cpu_s": round(w.cpu["server"], 3),
            "server_cores": round(w.cpu["server"] / w.wall, 2),
            "sipp_cores": round(sipp_cpu / w.wall, 2),
            "other_cores": round(max(w.machine - w.cpu["server"] - sipp_cpu, 0) / w.wall, 2),
        }
        r["cpu_per_1000"] = round(w.cpu["server"] / max(st["successful"], 1) * 1000, 4)
        r["switches_per_op"] = round(w.switches["server"] / max(st["successful"], 1), 1)
        if by_process:
            r["cpu_share_by_process"] = {
                k[2:]: round(v / max(w.cpu["server"], 1e-9), 3)
                for k, v in w.cpu.items() if k.startswith("p:")}
        r["ok"] = bad < 0.001 * count and r["offered_rate"] >= 0.95 * rate
        if trace_port:
            r["pcap"] = pcap
        self.results["steps"].append(r)
        log(f"{srv.name:8} {kind:8} {rate:6}/s offered {r['offered_rate']:8} ok {st['successful']:6} "
            f"failed {bad:5} server {r['server_cores']:.2f} cores ({r['cpu_per_1000']:.3f} "
            f"CPU-s/1000)  SIPp {r['sipp_cores']:.2f}  other {r['other_cores']:.2f}  "
            f"{'PASS' if r['ok'] else 'FAIL'}")
        if bad:
            err = s.errors_head(6).strip()
            if err:
                log("  SIPp errors: " + err.replace("\n", " | ")[:400])
        return r

    # ---- phases

    def start(self):
        for srv in self.servers:
            log(f"starting {srv.label} on 127.0.0.1:{srv.port} with {len(self.users) + 1} users")
            srv.start()
        time.sleep(2)
        # what each server burns doing nothing (timers), in cores
        with procs.CpuWindow({s.name: s.pids for s in self.servers}) as w:
            time.sleep(3)
        self.results["idle_cores"] = {k: round(v / w.wall, 4) for k, v in w.cpu.items()}
        log(f"idle CPU (cores): {self.results['idle_cores']}")

    def memory(self):
        # "Loaded": every user in place, nothing registered, once memory has stopped moving.
        loaded = {s.name: self._steady_memory(s) for s in self.servers}
        log("memory with the users loaded: "
            + ", ".join(f"{k} {v['total'] / 1024:.0f} MiB" for k, v in loaded.items()))
        # The baseline the growth is measured from comes after a warm-up: WARMUP_S seconds of
        # registrations at the fill rate that cycle over the first WARMUP users only, so the
        # server is as busy as during the fill but its bindings stop growing at WARMUP. An
        # allocator may hand back what loading the users took only once the process is busy
        # again (sipcraft's mimalloc purges lazily: its supervisor dropped another 30 MiB
        # during the first registrations), and a baseline that still holds it would flatter
        # the growth. The warm-up's registrations are not counted in the growth.
        for srv in self.order(0):
            self.run(srv, "register", self.load_rate, WARMUP_S, inf=self.inf["warm"],
                     tag="-warmup")
        time.sleep(SETTLE_S)  # the warm-up's transactions expire
        base = {}
        for srv in self.servers:
            self._wait_registered(srv, WARMUP)
            base[srv.name] = dict(self._steady_memory(srv), registered=srv.registered())
            base[srv.name]["loaded"] = loaded[srv.name]
        log("memory baseline: " + ", ".join(f"{k} {v['total'] / 1024:.0f} MiB" for k, v in base.items()))
        for stage, target, inf in (("first", self.mem_first, "mem1"),
                                   ("all", len(self.users), "mem2")):
            for srv in self.order(0 if stage == "first" else 1):
                n = target - (WARMUP if stage == "first" else self.mem_first)
                self.run(srv, "register", self.load_rate, n / self.load_rate, inf=self.inf[inf],
                         tag="-fill")
            # Taken as soon as every binding is in place, so each server's figure still holds
            # the fill's transient state: sipcraft keeps every UDP request's server
            # transaction for Timer J (5 s), Kamailio answers REGISTER statelessly.
            for srv in self.servers:
                self._wait_registered(srv, target)
                self._memory_point(srv, stage, base[srv.name])
            # Steady state: what a registration costs once the fill's transactions are gone
            # (both keep completed transactions 5 s). One wait covers both servers.
            log(f"waiting {SETTLE_S} s for the fill's transactions to expire")
            time.sleep(SETTLE_S)
            for srv in self.servers:
                self._memory_point(srv, "settled" if stage == "all" else "first_settled",
                                   base[srv.name])

    def _wait_registered(self, srv, target, within_s=10):
        deadline = time.monotonic() + within_s
        while srv.registered() < target and time.monotonic() < deadline:
            time.sleep(0.2)

    def _steady_memory(self, srv, window_s=3, within_s=40):
        """Memory once two readings window_s apart differ by less than 0.5 %, and at least
        15 s after the server started (sipcraft's allocator hands back the first big chunks
        about 10 s after they were freed, even while idle)."""
        wait = srv.started_at + 15 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        last = srv.memory_kib()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(window_s)
            now = srv.memory_kib()
            if abs(now["total"] - last["total"]) <= 0.005 * last["total"]:
                return now
            last = now
        return last

    def _memory_point(self, srv, stage, b):
        """Memory per registration now against the baseline `b`, stored under `stage`."""
        total = srv.registered()
        regs = total - b["registered"]
        m = srv.memory_kib()
        per = lambda key: round((m[key] - b[key]) * 1024 / max(regs, 1))
        point = {"registered": total, "counted": regs, "memory": m,
                 "bytes_per_registration": per("total"),
                 "pss_bytes_per_registration": per("pss")}
        if "by_process" in m and "by_process" in b:
            point["bytes_per_registration_by_process"] = {
                k: round((m["by_process"][k] - b["by_process"].get(k, 0)) * 1024 / max(regs, 1))
                for k in m["by_process"]}
        self.results["memory"].setdefault(srv.name, {"baseline": b})[stage] = point
        log(f"{srv.name} ({stage}): {total} registered, {m['total'] / 1024:.0f} MiB, "
            f"{point['bytes_per_registration']} B/registration")

    def moderate(self, kind, rate, lat_rounds):
        """Rounds alternating server by server: `lat_rounds` per server with a capture
        (response times, pooled), the first two of them each followed by one without (CPU:
        the capture's packet copies would be charged to the server)."""
        out = {}
        for k in range(max(lat_rounds, 2)):
            for srv in self.order(k):
                o = out.setdefault(srv.name, {"latency": {}, "cpu_runs": []})
                if k < lat_rounds:
                    r = self.run(srv, kind, rate, self.moderate_s, trace_port=srv.port,
                                 tag="-lat")
                    times = capture.response_times_us(r["pcap"], srv.port)
                    for name, vals in times.items():
                        o["latency"].setdefault(name, []).extend(v for _, v in vals)
                    per_round = {n: summarize([v for _, v in vals]) for n, vals in times.items() if vals}
                    r["latency"] = per_round
                    log(f"  {srv.name} round {k}: " + "; ".join(
                        f"{n} p50 {v['p50']} p99 {v['p99']}" for n, v in per_round.items()))
                    os.unlink(r["pcap"])
                if k < 2:
                    o["cpu_runs"].append(self.run(srv, kind, rate, self.moderate_s, tag="-cpu"))
        for name, o in out.items():
            runs = o["cpu_runs"]
            o["cpu_per_1000"] = round(sum(r["server_cpu_s"] for r in runs) /
                                      max(sum(r["successful"] for r in runs), 1) * 1000, 4)
            o["failed"] = sum(r["failed"] for r in runs)
            o["switches_per_op"] = round(sum(r["switches_per_op"] for r in runs) / len(runs), 1)
            if "cpu_share_by_process" in runs[0]:
                o["cpu_share_by_process"] = {
                    k: round(sum(r["cpu_share_by_process"].get(k, 0) for r in runs) / len(runs), 3)
                    for k in runs[0]["cpu_share_by_process"]}
            o["latency"] = {n: summarize(v) for n, v in o["latency"].items() if v}
            o["rate"] = rate
            del o["cpu_runs"]
            log(f"{name}: {kind} at {rate}/s: {o['cpu_per_1000']} CPU-s/1000, " +
                ", ".join(f"{n} p50 {v['p50']} p99 {v['p99']} us (n={v['n']})"
                          for n, v in o["latency"].items()))
        self.results["moderate"][kind] = out

    def search(self, kind, start, factor, cap, round_to, max_steps):
        """Step-up search, servers interleaved step by step: multiply the rate while steps
        pass, then halve the interval between the highest pass and the lowest failure."""
        st = {s.name: {"lo": None, "hi": None, "next": start, "steps": 0, "done": False,
                       "best": None} for s in self.servers}
        k = 0
        last = None
        while not all(v["done"] for v in st.values()):
            for srv in self.order(k):
                v = st[srv.name]
                if v["done"]:
                    continue
                if last == srv.name:
                    time.sleep(0.7)  # no other server's step in between: a second of rest
                last = srv.name
                rate = v["next"]
                r = self.run(srv, kind, rate, self.step_s)
                v["steps"] += 1
                if r["ok"]:
                    v["lo"], v["best"] = rate, r
                else:
                    v["hi"] = rate
                if v["hi"] is None:
                    nxt = min(rnd(rate * factor, round_to), cap)
                    v["done"] = rate >= cap
                elif v["lo"] is None:
                    nxt = rnd(rate / 2, round_to)
                else:
                    nxt = rnd((v["lo"] + v["hi"]) / 2, round_to)
                    v["done"] = v["hi"] <= v["lo"] * 1.12
                v["done"] = v["done"] or v["steps"] >= max_steps or nxt in (v["lo"], v["hi"])
                v["next"] = nxt
                # Let a failed step's backlog drain; after a pass the other server's step
                # (or the wait above) gives this one its rest.
                time.sleep(0.3 if r["ok"] else 3)
            k += 1
        self.results["max"][kind] = {
            name: {"max_rate": v["lo"], "first_failure": v["hi"], "best_step": v["best"],
                   "failed_step": self._failed_step(kind, name, v["hi"])}
            for name, v in st.items()}

    def _failed_step(self, kind, server, rate):
        for r in reversed(self.results["steps"]):
            if r["kind"] == kind and r["server"] == server and r["rate"] == rate and not r["ok"]:
                return r
        return None

    def start_callees(self):
        for srv in self.servers:
            self.callees[srv.name] = sipp.start_callee(
                self.work, f"callee-{srv.name}", srv.port, self.inf["callee"], srv.label)
            log(f"callee {CALLEE} registered with {srv.label}")

    def stop_callees(self):
        for c in self.callees.values():
            c.kill()
        self.callees = {}

    def stop(self):
        self.stop_callees()
        for srv in self.servers:
            srv.stop()

    # ---- the database outage (sipcraft only)

    def database_outage(self):
        import pg
        db = {"ran": False}
        self.results["db"] = db
        users = self.users[:1000]
        try:
            p = pg.Postgres(self.work)
        except RuntimeError as e:
            db["skipped"] = str(e)
            return
        srv = None
        try:
            p.start()
            srv = Sipcraft(self.servers[0].binary, os.path.join(self.work, "with-db"),
                           [], database_url=p.url())
            srv.nusers = 0
            srv.start()
            deadline = time.monotonic() + 20
            while p.psql("SELECT to_regclass('extensions') IS NOT NULL") != "t":
                if time.monotonic() > deadline:
                    db["skipped"] = ("the dbagent did not create its schema in PostgreSQL within "
                                     "20 s ([database] support not there yet)")
                    return
                time.sleep(0.2)
            values = ",".join(f"('{u}','{password(u)}')" for u in users + [CALLEE])
            if p.psql(f"INSERT INTO extensions (number, password) VALUES {values}") is None:
                db["skipped"] = "could not insert extensions into the dbagent's schema"
                return
            deadline = time.monotonic() + 20
            while (srv.status() or {}).get("extensions", 0) < len(users) + 1:
                if time.monotonic() > deadline:
                    db["skipped"] = ("extensions inserted in PostgreSQL did not reach the workers "
                                     "within 20 s (dbagent not following the database yet)")
                    return
                time.sleep(0.2)
            db["ran"] = True
            self._outage_load(srv, p, db)
        except Exception as e:  # a broken step must not lose the rest of the report
            db["ran"] = False
            db["skipped"] = f"error: {e}"
        finally:
            if srv:
                srv.stop()
            p.stop()

    def _outage_load(self, srv, p, db):
        rate, before, during, after = 200, 10, 20, 10
        total = before + during + after
        c = sipp.Sipp(self.work, "db-callee", "callee.xml", srv.port, self.inf["callee"],
                      transport="u1", ooc="answer.xml", count=1,
                      extra=["-trace_logs", "-log_file", "logs.log"]).start()
        try:
            time.sleep(1.5)
            pcap = os.path.join(self.work, "db-outage.pcap")
            s = sipp.Sipp(self.work, "db-calls", "call.xml", srv.port, self.inf["db-calls"],
                          rate=rate, count=rate * total, pause_ms=self.hold_ms,
                          extra=["-recv_timeout", "4000"])
            with capture.Capture(pcap, srv.port):
                s.start()
                t_start = time.time()
                time.sleep(before)
                log("PostgreSQL SIGSTOPped")
                p.signal_all(signal.SIGSTOP)
                time.sleep(during)
                p.signal_all(signal.SIGCONT)
                log("PostgreSQL resumed")
                s.wait(after + 40)
            st = s.stats()
            rows = s.rows()
            windows = {"before": (0, before), "during": (before, before + during),
                       "after": (before + during, total + 30)}
            lat = capture.response_times_us(pcap, srv.port)["INVITE -> 180"]
            for name, (a, b) in windows.items():
                vals = [v for t, v in lat if a <= t - t_start < b]
                ok = failed = 0
                for r in rows:
                    t = sipp._epoch(r["CurrentTime"]) - t_start
                    if a < t <= b or (name == "after" and t > b):
                        ok += int(r["SuccessfulCall(P)"] or 0)
                        failed += int(r["FailedCall(P)"] or 0)
                db[name] = {"successful": ok, "failed": failed, **(summarize(vals) or {})}
            db["rate"] = rate
            db["total"] = {k: st[k] for k in ("created", "successful", "failed", "failures")}
            log("database outage: " + json.dumps({k: db[k] for k in ("before", "during", "after")}))
        finally:
            c.kill()


def auth(u):
    return f"[authentication username={u} password={password(u)}]"


def rnd(x, to):
    return max(int(round(x / to)) * to, to)


def summarize(values):
    if not values:
        return None
    return {"n": len(values), "p50": round(sipp.percentile(values, 50)),
            "p99": round(sipp.percentile(values, 99))}


def versions(bench):
    srv, kam = bench.servers
    out = {"sipcraft": srv.version(), "kamailio": kam.version()}
    r = subprocess.run(["sipp", "-v"], capture_output=True, text=True)
    out["sipp"] = next((l.strip() for l in (r.stdout + r.stderr).splitlines() if "SIPp v" in l), "?")
    r = subprocess.run(["git", "-C", os.path.dirname(HERE), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    out["commit"] = r.stdout.strip() or "?"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(HERE), "target/release/sipcraft"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "BENCHMARKS.md"))
    ap.add_argument("--work", default=os.path.join(os.path.dirname(HERE), "target/bench"))
    ap.add_argument("--quick", action="store_true", help="short steps, 20k users (trying it out)")
    ap.add_argument("--skip-db", action="store_true", help="skip the database-outage step")
    args = ap.parse_args()
    for tool in ("sipp", "kamailio", "kamcmd", "tcpdump"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run bench/deps.sh (as root)")

    bench = Bench(args)
    res = bench.results
    res["machine"] = procs.machine_info()
    res["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    res["started"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res["quick"] = args.quick
    res["params"] = {k: getattr(bench, k) for k in (
        "mem_first", "load_rate", "reg_moderate", "call_moderate", "hold_ms", "step_s",
        "moderate_s", "lat_rounds")}
    res["params"]["users"] = len(bench.users)
    try:
        bench.start()
        res["versions"] = versions(bench)
        log(f"versions: {res['versions']}")
        bench.memory()
        bench.moderate("register", bench.reg_moderate, bench.lat_rounds["register"])
        bench.search("register", start=2000, factor=1.5, cap=60000, round_to=100,
                     max_steps=4 if args.quick else 9)
        bench.start_callees()
        bench.moderate("call", bench.call_moderate, bench.lat_rounds["call"])
        bench.search("call", start=400, factor=1.5, cap=20000, round_to=20,
                     max_steps=4 if args.quick else 9)
    finally:
        bench.stop()
    if args.skip_db:
        res["db"] = {"ran": False, "skipped": "--skip-db given"}
    else:
        log("database outage step (sipcraft with PostgreSQL)")
        bench.database_outage()
        if not res["db"]["ran"]:
            log("database outage step skipped: " + res["db"]["skipped"])
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["duration_s"] = round(time.monotonic() - T0)
    with open(os.path.join(bench.work, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(args.out, "w") as f:
        f.write(report.markdown(res))
    log(f"wrote {args.out} and {bench.work}/results.json in {res['duration_s']} s")


if __name__ == "__main__":
    main()
