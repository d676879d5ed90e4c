"""BENCHMARKS.md from the results of bench/run.py."""

NAMES = ("sipcraft", "kamailio")


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def ratio(a, b, digits=2):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.{digits}f}×"


def limit(step):
    """What most likely stopped this (failing) step, from where the CPU went."""
    if not step:
        return "no failing step (the search reached its cap)"
    s, p, o = step["server_cores"], step["sipp_cores"], step["other_cores"]
    total = s + p + o
    parts = []
    if step["offered_rate"] < 0.95 * step["rate"]:
        parts.append(f"SIPp offered only {step['offered_rate']:,.0f}/s")
    if p >= 0.85:
        parts.append(f"SIPp near one full core ({p:.2f})")
    if total >= 1.8:
        parts.append(f"both vCPUs busy (server {s:.2f} + SIPp {p:.2f} + others {o:.2f} cores)")
    elif s >= 0.9 * total and s > 0.9:
        parts.append(f"server CPU ({s:.2f} cores)")
    if not parts:
        parts.append(f"not CPU: server {s:.2f}, SIPp {p:.2f}, others {o:.2f} cores "
                     "(queueing or losses; see the failure kinds)")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(step["failures"].items()))
    return "; ".join(parts) + (f"; failures: {kinds}" if kinds else "")


def per_round(res, kind, metric):
    """The p99 of `metric` in each captured run of `kind`, per server, in run order."""
    out = {}
    for step in res.get("steps", []):
        lat = step.get("latency", {}).get(metric)
        if step.get("kind") == kind and lat:
            out.setdefault(step["server"], []).append(lat["p99"])
    return out


def goal_lines(res):
    """The goals (at least Kamailio's rates, p99 no worse, no more memory per registration,
    no failures and p99 within 20 % during the database hang), each met or not."""
    mx, mod, mem, db = res["max"], res["moderate"], res["memory"], res.get("db") or {}
    out = []

    def val(d, *keys):
        for k in keys:
            d = (d or {}).get(k)
        return d

    for kind, name in (("register", "REGISTER/s"), ("call", "calls/s")):
        a, b = val(mx, kind, "sipcraft", "max_rate"), val(mx, kind, "kamailio", "max_rate")
        if a and b:
            out.append(f"- {name} ≥ 1.0× Kamailio: {'met' if a >= b else 'not met'} "
                       f"({a / b:.2f}×; see below for what limited each)")
    for kind, fig in (("register", "REGISTER -> 200"), ("call", "INVITE -> 180")):
        a = val(mod, kind, "sipcraft", "latency", fig, "p99")
        b = val(mod, kind, "kamailio", "latency", fig, "p99")
        if a and b:
            out.append(f"- p99 {fig.replace('->', '→')} no worse than Kamailio: "
                       f"{'met' if a <= b else 'not met'} ({a:,} vs {b:,} µs)")
    a = val(mem, "sipcraft", "settled", "bytes_per_registration")
    b = val(mem, "kamailio", "settled", "bytes_per_registration")
    fa = val(mem, "sipcraft", "all", "bytes_per_registration")
    fb = val(mem, "kamailio", "all", "bytes_per_registration")
    sa = val(mem, "sipcraft", "first_settled", "bytes_per_registration")
    sb = val(mem, "kamailio", "first_settled", "bytes_per_registration")
    if a and b:
        met = a <= b and (not (sa and sb) or sa <= sb)
        small = (f"; at {res['params']['mem_first']:,} in steady state {sa:,} vs {sb:,}"
                 if sa and sb else "")
        out.append(f"- memory per registration no more than Kamailio: "
                   f"{'met' if met else 'not met'} ({a:,} vs {b:,} bytes at 100k in steady "
                   f"state{small}; at 100k right after the fill, with its transactions still "
                   f"alive: {fa:,} vs {fb:,})")
    if db.get("ran"):
        p99 = [val(db, w, "p99") for w in ("before", "during", "after")]
        fails = sum(val(db, w, "failed") or 0 for w in ("before", "during", "after"))
        ok = fails == 0 and all(p99) and max(p99[1:]) <= 1.2 * p99[0]
        out.append(f"- database hang: no failures and p99 within 20 %: {'met' if ok else 'not met'} "
                   f"({fails} failed; p99 {' / '.join(f'{x:,}' for x in p99 if x)} µs "
                   "before / during / after)")
    else:
        out.append("- database hang: not measured in this run (see below)")
    out.append("- CPU per operation, the figure SIPp sharing the 2 vCPUs cannot blur: "
               + ", ".join(f"{fmt(val(mod, k, 'sipcraft', 'cpu_per_1000'), 3)} vs "
                           f"{fmt(val(mod, k, 'kamailio', 'cpu_per_1000'), 3)} CPU-s per 1000 {u}"
                           for k, u in (("register", "registrations"), ("call", "calls")))
               + " at the moderate rates. Where sipcraft's time and memory go, and what would "
               "close the gap: [bench/PROFILE.md](bench/PROFILE.md).")
    return "\n".join(out) + "\n"


def markdown(res):
    m, mod, mx, mem = res["machine"], res["moderate"], res["max"], res["memory"]
    v = res.get("versions", {})
    p = res["params"]
    out = []
    w = out.append
    w("# Benchmarks: sipcraft and Kamailio, same machine, same run\n")
    w("Regenerated by `make bench` (bench/run.py; bench/README.md says how it measures). "
      "Every figure below comes from one run in which both servers were up side by side and "
      "the same SIPp scenarios ran against one, then the other, alternating which went first "
      "step by step.\n")
    if res.get("quick"):
        w("**This is a `--quick` run (short steps, fewer users): not a figure to quote.**\n")
    w(f"- Run: {res['started']}, {res['duration_s']} s, command `make bench`"
      f" (= `bash bench/deps.sh && cargo build --release --locked && python3 bench/run.py`)")
    w(f"- Machine: {m['cpu']}, {m['cores']} vCPUs (KVM), {m['memory']}, Linux {m['kernel']}; "
      f"load average at the start {' / '.join(res['loadavg_start'])}, at the end "
      f"{' / '.join(res['loadavg_end'])}")
    w(f"- {v.get('sipcraft', '?')} (commit {v.get('commit', '?')}, release build), "
      f"2 UDP workers; {v.get('kamailio', '?').replace('kamailio', 'Kamailio', 1)} with bench/kamailio.cfg, 2 UDP "
      f"workers (`children=2`); {v.get('sipp', 'SIPp')}; UDP on 127.0.0.1 only")
    others = [s["other_cores"] for s in res["steps"]]
    if others:
        others.sort()
        w(f"- Other work on the machine during the steps (CPU neither server nor SIPp used): "
          f"median {others[len(others) // 2]:.2f}, max {others[-1]:.2f} cores"
          + (" — other builds and tests were running on the machine at the time, so rates "
             "and response times carry that noise; the CPU-per-operation figures do not"
             if others[len(others) // 2] > 0.15 or others[-1] > 0.5 else ""))
    w(f"- Users: {p['users']:,} generated extensions plus the callee, the same in both "
      f"servers (sipcraft: `[[extension]]` entries; Kamailio: htable loaded from db_text)\n")

    w("## Against the goal of issue 7\n")
    w(goal_lines(res))
    w("## Figures\n")
    w("| figure | sipcraft | Kamailio | sipcraft / Kamailio | better |")
    w("|---|---:|---:|---:|---|")
    row = lambda name, a, b, rt, better: w(f"| {name} | {a} | {b} | {rt} | {better} |")

    def best(kind, name):
        return (mx.get(kind, {}).get(name) or {}).get("max_rate")

    a, b = best("register", "sipcraft"), best("register", "kamailio")
    row("Digest registrations/s (401, REGISTER with MD5 credentials, 200), < 0.1 % failed",
        fmt(a), fmt(b), ratio(a, b), "higher")
    a, b = best("call", "sipcraft"), best("call", "kamailio")
    row(f"Calls/s (INVITE, 407, ACK, INVITE with credentials, 180, 200, ACK, {p['hold_ms']} ms, "
        "BYE, 200), < 0.1 % failed", fmt(a), fmt(b), ratio(a, b), "higher")
    for kind, fig, label in (("register", "REGISTER -> 200", "REGISTER → 200"),
                             ("call", "INVITE -> 180", "INVITE → 180 (callee SIPp included)"),
                             ("call", "INVITE in -> INVITE out", "INVITE in → INVITE forwarded"),
                             ("call", "INVITE out -> 180 in", "INVITE forwarded → callee's 180 in (callee SIPp)"),
                             ("call", "180 in -> 180 out", "Callee's 180 in → 180 to the caller")):
        d = mod.get(kind, {})
        la = (d.get("sipcraft", {}).get("latency") or {}).get(fig)
        lb = (d.get("kamailio", {}).get("latency") or {}).get(fig)
        rate = d.get("sipcraft", {}).get("rate", "?")
        unit = "registrations/s" if kind == "register" else "calls/s"
        for pct in ("p50", "p99"):
            va, vb = (la or {}).get(pct), (lb or {}).get(pct)
            row(f"{label} {pct} at {rate} {unit}, µs", fmt(va), fmt(vb), ratio(va, vb), "lower")
    for kind, unit in (("register", "registrations"), ("call", "calls")):
        d = mod.get(kind, {})
        va, vb = d.get("sipcraft", {}).get("cpu_per_1000"), d.get("kamailio", {}).get("cpu_per_1000")
        rate = d.get("sipcraft", {}).get("rate", "?")
        row(f"Server CPU-s per 1000 {unit} at {rate}/s", fmt(va, 3), fmt(vb, 3), ratio(va, vb),
            "lower")
        sa = (mx.get(kind, {}).get("sipcraft") or {}).get("best_step") or {}
        sb = (mx.get(kind, {}).get("kamailio") or {}).get("best_step") or {}
        va, vb = sa.get("cpu_per_1000"), sb.get("cpu_per_1000")
        row(f"Server CPU-s per 1000 {unit} at each one's highest passing step "
            f"({fmt(sa.get('rate'))} / {fmt(sb.get('rate'))} per s)",
            fmt(va, 3), fmt(vb, 3), ratio(va, vb), "lower")
    for kind, unit in (("register", "registration"), ("call", "call")):
        d = mod.get(kind, {})
        va = d.get("sipcraft", {}).get("switches_per_op")
        vb = d.get("kamailio", {}).get("switches_per_op")
        row(f"Context switches per {unit} at {d.get('sipcraft', {}).get('rate', '?')}/s "
            "(all server threads)", fmt(va, 1), fmt(vb, 1), ratio(va, vb), "lower")
    for stage, label in (("first", f"{p['mem_first']:,} registered, right after the fill"),
                         ("first_settled", f"{p['mem_first']:,} registered, steady state "
                                           "(fill's transactions expired)"),
                         ("all", f"{p['users']:,} registered, right after the fill"),
                         ("settled", f"{p['users']:,} registered, steady state "
                                     "(fill's transactions expired)")):
        va = (mem.get("sipcraft", {}).get(stage) or {}).get("bytes_per_registration")
        vb = (mem.get("kamailio", {}).get(stage) or {}).get("bytes_per_registration")
        row(f"Memory per registration at {label}, bytes (sipcraft RSS; Kamailio shm + "
            "private)", fmt(va), fmt(vb), ratio(va, vb), "lower")
    for stage, label in (("first", f"{p['mem_first']:,}"), ("all", f"{p['users']:,}")):
        va = (mem.get("sipcraft", {}).get(stage) or {}).get("pss_bytes_per_registration")
        vb = (mem.get("kamailio", {}).get(stage) or {}).get("pss_bytes_per_registration")
        row(f"Same, measured alike for both as PSS growth, at {label}, bytes", fmt(va), fmt(vb),
            ratio(va, vb), "lower")
    va = ((mem.get("sipcraft", {}).get("baseline") or {}).get("loaded") or {}).get("pss")
    vb = ((mem.get("kamailio", {}).get("baseline") or {}).get("loaded") or {}).get("pss")
    row(f"Memory with {p['users']:,} users loaded, none registered (PSS summed), MiB",
        fmt(va / 1024 if va else None), fmt(vb / 1024 if vb else None), ratio(va, vb), "lower")
    idle = res.get("idle_cores", {})
    va, vb = idle.get("sipcraft"), idle.get("kamailio")
    row("CPU used while idle, cores", fmt(va, 3), fmt(vb, 3), ratio(va, vb), "lower")
    w("")

    w("What the figures mean:\n")
    w("- **Rates** are the highest step of a step-up search (steps of "
      f"{p['step_s']} s; ×1.5 while steps pass, then halving the interval to within 12 %) "
      "that passed: fewer than 0.1 % of the SIPp calls failed (any unexpected or missing "
      "message, 4 s receive timeout) and SIPp really offered at least 95 % of the rate. A "
      "registration is one SIPp call of two REGISTER transactions.")
    w("- **Response times** come from a loopback capture (tcpdump, kernel timestamps in µs) "
      "of the server's port during "
      + (f"{p['lat_rounds']['register']} runs per server at the moderate registration rate "
         f"and {p['lat_rounds']['call']} at the moderate call rate"
         if "lat_rounds" in p else "two runs per server at the moderate rate")
      + ", pooled, the servers alternating run by run; SIPp "
      "itself times only in whole milliseconds. REGISTER → 200, INVITE in → INVITE "
      "forwarded and the callee's 180 in → 180 to the caller are the server alone; INVITE → "
      "180 (authorized INVITE in, 180 out to the caller) also contains the callee SIPp's "
      "answer (INVITE forwarded → callee's 180 in): the same program for both servers, "
      "slowed by whatever else wants its vCPU.")
    for kind, metric in (("register", "REGISTER -> 200"), ("call", "INVITE -> 180")):
        rounds = per_round(res, kind, metric)
        if rounds:
            w(f"- p99 {metric.replace('->', '→')} of each captured run, in the order they ran "
              "(the first runs come right after the memory fill or, for calls, the REGISTER search): "
              + "; ".join(f"{'Kamailio' if n == 'kamailio' else n} "
                          f"{' / '.join(fmt(v) for v in vals)} µs"
                          for n, vals in rounds.items()) + ".")
    w("- **CPU** is utime + stime summed over every process of the server (sipcraft: "
      "supervisor, workers, dbagent; Kamailio: all its processes) from /proc, over the whole "
      "SIPp run, divided by the successful registrations or calls. The moderate-rate figure "
      "is from two runs per server without capture. With SIPp on the same two vCPUs this is "
      "the figure that holds whatever limited the rates."
      + "".join(f" sipcraft's CPU at the moderate {k} rate went to: " + ", ".join(
          f"{n} {v:.0%}" for n, v in (mod.get(k, {}).get("sipcraft", {})
                                      .get("cpu_share_by_process") or {}).items()) + "."
          for k in ("register", "call")
          if mod.get(k, {}).get("sipcraft", {}).get("cpu_share_by_process")))
    w("- **Memory**: sipcraft's RSS summed over all its processes (each worker holds a full "
      "replica); Kamailio's shared memory in use (`kamcmd core.shmmem` real_used) plus the "
      "private memory (Private_Dirty of the private mappings) of all its processes; both minus the "
      "baseline, divided by the registrations made after it. The baseline has every user "
      "loaded and the first 1,000 registered, after a warm-up of 5 s of registrations at the fill "
      "rate cycling over those 1,000 (sipcraft's allocator, mimalloc, hands back what loading "
      "the users took only once the process is busy again), and is taken "
      "once memory has stopped moving (two readings 3 s apart within 0.5 %, at least 15 s "
      "after the start). "
      f"Registrations are loaded at {p['load_rate']:,}/s and measured once all are in place, "
      "then again (steady state) 10 s later, when the fill's transactions have expired: "
      "sipcraft keeps every UDP request's server transaction for Timer J (`[limits] "
      "udp_linger_ms`, 5 s by default), Kamailio answers REGISTER statelessly and keeps "
      "completed transactions 5 s. "
      "The steady-state figure is what a registered phone costs; the first one adds what a "
      "burst of registrations costs while it lasts. PSS (proportional set size, shared "
      "pages split between the processes sharing them) is measured the same way for both, but undercounts Kamailio: its shared-memory "
      "pool hands out again pages it touched while loading the credentials, which add no "
      "PSS; the shm + private figure is the fair one for Kamailio.")
    for stage in ("first", "first_settled", "all", "settled"):
        bp = (mem.get("sipcraft", {}).get(stage) or {}).get("bytes_per_registration_by_process")
        if bp:
            n = (mem["sipcraft"][stage] or {}).get("registered")
            steady = stage.endswith("settled")
            when = "in steady state" if steady else "right after the fill"
            w(f"- sipcraft's growth per registration by process at {fmt(n)}, {when}: "
              + ", ".join(f"{k} {fmt(v)} B" for k, v in bp.items())
              + ". Each worker holds a replica of the bindings"
              + ("." if steady else "; right after the fill a worker's figure "
                 "also holds the load's UDP transactions (alive 5 s)."))
    w("")

    w("## What limited the rates\n")
    w("The step that failed right above each server's highest passing step, and where the CPU "
      "went during it (cores of the 2 vCPUs; SIPp is single-threaded, so near 1.0 means SIPp "
      "was the limit):\n")
    for kind, label in (("register", "Registrations"), ("call", "Calls")):
        for name in NAMES:
            d = mx.get(kind, {}).get(name) or {}
            bs = d.get("best_step") or {}
            w(f"- {label}, {name}: highest pass {fmt(d.get('max_rate'))}/s (server "
              f"{fmt(bs.get('server_cores'), 2)} cores, SIPp {fmt(bs.get('sipp_cores'), 2)}); "
              f"failed at {fmt(d.get('first_failure'))}/s: {limit(d.get('failed_step'))}")
    w("")

    w("## Database outage (sipcraft with PostgreSQL, SIGSTOPped for 20 s under call load)\n")
    db = res.get("db") or {}
    if db.get("ran"):
        w(f"Calls at {db['rate']}/s to a callee registered with sipcraft, extensions from "
          "PostgreSQL; every PostgreSQL process SIGSTOPped 10 s in, SIGCONTed 20 s later. "
          "INVITE → 180 from the capture.\n")
        w("| window | successful calls | failed calls | INVITE → 180 p50 µs | p99 µs |")
        w("|---|---:|---:|---:|---:|")
        for win in ("before", "during", "after"):
            x = db.get(win, {})
            w(f"| {win} | {fmt(x.get('successful'))} | {fmt(x.get('failed'))} | "
              f"{fmt(x.get('p50'))} | {fmt(x.get('p99'))} |")
        w("")
    else:
        w(f"Not measured in this run: {db.get('skipped', 'not run')}. The step (bench/run.py, "
          "`database_outage`) runs by itself once sipcraft's `[database]` works: it starts a "
          "throwaway PostgreSQL, waits for the dbagent's schema, inserts the users and waits "
          "for them to reach the workers, then SIGSTOPs PostgreSQL for 20 s under 200 calls/s "
          "and reports failures and p99 before, during and after.\n")

    w("## Set-up and differences that matter\n")
    w("- Same scenarios (bench/sipp/) and the same SIPp options for both: `-t un` (one "
      "socket, so one source port, per call), 4 MiB socket buffers; one callee SIPp "
      "registered from the socket that answers the calls. Both servers' UDP processes "
      "read one shared socket, so the next free process takes the next datagram.")
    w("- sipcraft: stand-alone config generated by bench/run.py: `trusted_ips = "
      "[\"127.0.0.0/8\"]` (no per-IP rate limit), `[limits] max_transactions = 2000000` "
      "(every UDP request keeps its server transaction for Timer J, 5 s: with the default "
      "50,000 per worker, 50,000 / (2 transactions × 5 s) = 5,000 registrations/s per worker "
      "is the most a worker can sustain before answering 503); all else default, which "
      "includes challenging with MD5 and SHA-256 (two WWW-Authenticate headers). "
      "`log_level = \"warn\"` and `RUST_LOG=warn` (builds before 5f05c01 ignored "
      "`server.log_level`; at info every call writes three \"call record\" log lines).")
    w("- Kamailio: bench/kamailio.cfg, `-m 1024 -M 64` (1 GiB shared memory; 64 MiB private "
      "per process, needed to load 100k credentials from db_text). REGISTER is answered "
      "statelessly (sl), INVITE/BYE through tm; only MD5 is offered; completed non-INVITE "
      "transactions live 5 s (tm wt_timer), as sipcraft's do (`udp_linger_ms`; RFC 3261's "
      "Timer J would be 64 × T1 = 32 s).")
    w(f"- Every step's numbers (and the SIPp output) are in target/bench/results.json and "
      f"target/bench/ after a run. Profile of sipcraft's REGISTER path: bench/PROFILE.md "
      f"(`python3 bench/profile.py`).\n")

    w("## Every step\n")
    w("| phase | server | rate/s | offered/s | successful | failed | server cores | SIPp cores | other cores | CPU-s/1000 | pass |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in res["steps"]:
        phase = s["kind"] + (" " + s["label"].rsplit("-", 1)[-1]
                             if s["label"].endswith(("-fill", "-lat", "-cpu")) else " search")
        w(f"| {phase} | {s['server']} | {fmt(s['rate'])} | {fmt(s['offered_rate'])} | "
          f"{fmt(s['successful'])} | {fmt(s['failed'])} | {s['server_cores']:.2f} | "
          f"{s['sipp_cores']:.2f} | {s['other_cores']:.2f} | {s['cpu_per_1000']:.3f} | "
          f"{'yes' if s['ok'] else 'no'} |")
    w("")
    return "\n".join(out)
