"""What the bench reads from /proc: process trees, CPU seconds, memory, the machine."""
import os
import socket

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    """A UDP port free on 127.0.0.1 right now (and its TCP twin, for good measure)."""
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def _stat(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree(root):
    """root and all its descendants (pids), from the parent links in /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(name)
            if st:
                children.setdefault(int(st[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids):
    """utime + stime of these processes, in seconds (threads included)."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st:
            total += int(st[11]) + int(st[12])
    return total / CLK_TCK


def context_switches(pids):
    """Voluntary + involuntary context switches of every thread of these processes."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def pss_kib(pids):
    """Proportional set size summed: each page shared by N processes counts 1/N in each,
    so the sum is the footprint of the group (shared memory once)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def private_kib(pids):
    """Private_Dirty of the private mappings only, summed: the memory a process wrote and
    no other process shares (heap, stacks, copied-on-write data). Left out: pages of a
    shared mapping (Kamailio's shared memory) that one process alone has touched, which
    smaps also calls private until another process touches them, and clean file pages
    (library code), which count as private only while no other process maps them."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps") as f:
                private_mapping = False
                for line in f:
                    first = line.split(None, 2)
                    if "-" in first[0] and len(first) > 1 and len(first[1]) == 4:
                        private_mapping = first[1][3] == "p"
                    elif private_mapping and line.startswith("Private_Dirty:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_busy_seconds():
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuWindow:
    """CPU seconds used by groups of processes (and by the whole machine) over a window."""

    def __init__(self, groups):
        self.groups = groups  # name -> callable returning pids

    def __enter__(self):
        import time
        self.t0 = time.monotonic()
        self.m0 = machine_busy_seconds()
        self.c0 = {k: cpu_seconds(f()) for k, f in self.groups.items()}
        self.s0 = {k: context_switches(f()) for k, f in self.groups.items()}
        return self

    def __exit__(self, *exc):
        import time
        self.wall = time.monotonic() - self.t0
        m1 = machine_busy_seconds()
        self.cpu = {k: cpu_seconds(f()) - self.c0[k] for k, f in self.groups.items()}
        self.switches = {k: context_switches(f()) - self.s0[k] for k, f in self.groups.items()}
        self.machine = m1[0] - self.m0[0]
        return False


def machine_info():
    model, cores = "?", os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    return {"cpu": model, "cores": cores, "memory": mem, "kernel": os.uname().release}
