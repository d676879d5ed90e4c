"""Runs SIPp (3.6.1) for the bench and reads what it wrote: the statistics file (-trace_stat)
for counts, and the message trace (-trace_msg, microsecond timestamps) for response times,
since SIPp's own response-time figures are in whole milliseconds.

SIPp 3.6.1 notes: -nostdin (there is no -bg_print); `-t un` (one socket, so one source port,
per call) needs -max_socket below the open-file limit; the [authentication ...] keyword must
sit inside an injection-file field."""
import csv
import os
import re
import signal
import subprocess
import time

import procs

HERE = os.path.dirname(os.path.abspath(__file__))
SOCKBUF = "4194304"  # 4 MiB socket buffers, as both servers ask for


def scenario(name):
    return os.path.join(HERE, "sipp", name)


def write_inf(path, lines):
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for line in lines:
            f.write(line + "\n")
    return path


class Sipp:
    """One SIPp process in a directory of its own."""

    def __init__(self, workdir, label, scenario_name, port, inf, *, rate=None, count=None,
                 transport="un", ooc=None, pause_ms=None, trace_msg=False, extra=()):
        self.label = label
        self.dir = os.path.join(workdir, label)
        os.makedirs(self.dir, exist_ok=True)
        self.count, self.rate = count, rate
        cmd = ["sipp", "-sf", scenario(scenario_name), "-inf", inf,
               "-i", "127.0.0.1", "-p", str(procs.free_port()), "-t", transport,
               "-buff_size", SOCKBUF, "-nostdin",
               "-trace_err", "-error_file", "errors.log",
               "-trace_stat", "-stf", "stat.csv", "-fd", "1",
               # SIPp's main-loop watchdog must not end a run that merely overloads the box
               "-watchdog_major_maxtriggers", "1000000"]
        if transport == "un":
            cmd += ["-max_socket", "9000"]
        if ooc:
            cmd += ["-oocsf", scenario(ooc)]
        if rate is not None:
            cmd += ["-r", str(rate), "-l", "9000"]
        if count is not None:
            cmd += ["-m", str(count)]
        if pause_ms is not None:
            cmd += ["-d", str(pause_ms)]
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", "messages.log"]
        cmd += list(extra)
        cmd.append(f"127.0.0.1:{port}")
        self.cmd = cmd
        self.proc = None
        self.rusage = None

    def start(self):
        out = open(os.path.join(self.dir, "stdout.txt"), "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout):
        """Waits for SIPp to end (killing it after timeout); returns its exit code."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.wall = time.monotonic() - self.t0
                self.rusage = ru
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode
            if time.monotonic() > deadline:
                self.proc.send_signal(signal.SIGKILL)
                deadline += 5
            time.sleep(0.02)

    def cpu_seconds(self):
        """CPU seconds so far (running) or in all (ended)."""
        if self.rusage is not None:
            return self.rusage.ru_utime + self.rusage.ru_stime
        return procs.cpu_seconds([self.proc.pid])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    # ---- what SIPp wrote

    def rows(self):
        path = os.path.join(self.dir, "stat.csv")
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f, delimiter=";")]

    def stats(self):
        rows = self.rows()
        last = rows[-1] if rows else {}
        num = lambda k: int(float(last.get(k) or 0))
        failures = {k[len("Failed"):-3]: num(k) for k in last
                    if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and num(k)}
        created = num("TotalCallCreated")
        st = {
            "created": created,
            "successful": num("SuccessfulCall(C)"),
            "failed": num("FailedCall(C)"),
            "failures": failures,
            "retransmissions": num("Retransmissions(C)"),
            "exit": self.proc.returncode if self.proc else None,
            "wall_s": round(getattr(self, "wall", 0), 3),
            "sipp_cpu_s": round(self.cpu_seconds(), 3),
        }
        # Time the last call was created, interpolated between the 1 s statistics rows:
        # the rate SIPp really offered is count / that time.
        if self.count and rows:
            start = _epoch(rows[0]["StartTime"])
            prev_t, prev_n = 0.0, 0
            for r in rows:
                t, n = _epoch(r["CurrentTime"]) - start, int(r["TotalCallCreated"] or 0)
                if n >= self.count:
                    t_reach = prev_t + (t - prev_t) * (self.count - prev_n) / max(n - prev_n, 1)
                    st["offered_rate"] = round(self.count / max(t_reach, 1e-3), 1)
                    break
                prev_t, prev_n = t, n
        # calls never finished (SIPp killed by the bench's deadline) count as failed
        st["unfinished"] = max(created - st["successful"] - st["failed"], 0)
        return st

    def errors_head(self, n=30):
        path = os.path.join(self.dir, "errors.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[:n])


def _epoch(field):
    # "2026-11-22\t16:43:20.157887\t1795365800.157887"
    return float(field.split("\t")[-1])


# ---- response times from the message trace

_HEAD = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d) (\d\d):(\d\d):(\d\d\.\d+)$")


def start_callee(workdir, label, port, inf, server_label):
    """The callee SIPp (callee.xml, answer.xml out of call), registered with the server on
    `port` from the socket it answers calls on; waits for the registration (10 s at most)."""
    c = Sipp(workdir, label, "callee.xml", port, inf, transport="u1", ooc="answer.xml",
             count=1, extra=["-trace_logs", "-log_file", "logs.log"]).start()
    deadline = time.monotonic() + 10
    logf = os.path.join(c.dir, "logs.log")
    while not (os.path.exists(logf) and "REGISTERED" in open(logf).read()):
        if time.monotonic() > deadline or c.proc.poll() is not None:
            raise RuntimeError(f"the callee did not register with {server_label}; see {c.dir}")
        time.sleep(0.1)
    return c


def trace_messages(path):
    """Yields (seconds of day, 'sent'|'received', first line, call-id, cseq) per message."""
    with open(path, errors="replace") as f:
        t = direction = first = callid = cseq = None
        state = 0
        for line in f:
            line = line.rstrip("\r\n")
            m = _HEAD.match(line)
            if m:
                if first:
                    yield t, direction, first, callid, cseq
                t = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
                direction = first = callid = cseq = None
                state = 1
                continue
            if state == 1:
                if "message sent" in line:
                    direction = "sent"
                elif "message received" in line:
                    direction = "received"
                if direction:
                    state = 2
                continue
            if state == 2:
                if line.strip():
                    first = line.strip()
                    state = 3
                continue
            if state == 3:
                low = line[:8].lower()
                if low.startswith("call-id:") or low.startswith("i:"):
                    callid = line.split(":", 1)[1].strip()
                elif low.startswith("cseq:"):
                    cseq = line.split(":", 1)[1].strip()
        if first:
            yield t, direction, first, callid, cseq


def response_times_us(path, request, cseq_num, response_code):
    """Microseconds from the first sending of `request` with CSeq number `cseq_num` to the
    first response `response_code` to it, per call, from SIPp's message trace."""
    sent, out = {}, []
    want_cseq = f"{cseq_num} {request}"
    for t, direction, first, callid, cseq in trace_messages(path):
        if cseq != want_cseq or callid is None:
            continue
        if direction == "sent" and first.startswith(request + " "):
            sent.setdefault(callid, t)
        elif direction == "received" and first.startswith(f"SIP/2.0 {response_code}"):
            t0 = sent.pop(callid, None)
            if t0 is not None:
                out.append(((t - t0) % 86400) * 1e6)
    return out


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]
