"""Sub-millisecond response times from a loopback capture (tcpdump, kernel timestamps in
microseconds): SIPp's own timings are whole milliseconds and include its event loop.

Each figure is a pair of packets on the server's UDP port, matched by Call-ID and CSeq:
  REGISTER -> 200         authorized REGISTER in, its 200 out (the server alone);
  INVITE -> 180           authorized INVITE in from the caller, the 180 out to the caller
                          (includes the callee SIPp answering);
  INVITE in -> INVITE out authorized INVITE in, the INVITE forwarded to the callee;
  INVITE out -> 180 in    the forwarded INVITE out, the callee's 180 in (the callee SIPp);
  180 in -> 180 out       the callee's 180 in, the 180 out to the caller (the server alone).
The last three add up to the second."""
import os
import signal
import struct
import subprocess
import time


class Capture:
    def __init__(self, path, port):
        self.path, self.port = path, port
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-n", "-s", "2048", "-B", "16384", "-U", "-w", self.path,
             f"udp port {self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.path + ".log", "w"))
        # tcpdump says "listening on lo" once the capture runs
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(self.path + ".log") as f:
                if "listening on" in f.read():
                    break
            time.sleep(0.05)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return False


def packets(path):
    """Yields (time s, src port, dst port, payload bytes) of the UDP/IPv4 packets in a pcap."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        link_len = {1: 14, 113: 16, 276: 20, 0: 4}.get(linktype, 14)
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            t = sec + frac / (1e9 if nano else 1e6)
            ip = data[link_len:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            sport, dport = struct.unpack(">HH", ip[ihl:ihl + 4])
            yield t, sport, dport, ip[ihl + 8:]


def _sip_fields(payload):
    head = payload.split(b"\r\n\r\n", 1)[0].decode("latin-1", "replace").split("\r\n")
    callid = cseq = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        n = name.strip().lower()
        if n in ("call-id", "i"):
            callid = value.strip()
        elif n == "cseq":
            cseq = " ".join(value.split())
    return head[0], callid, cseq


def response_times_us(path, server_port):
    """{'REGISTER -> 200': [...], 'INVITE -> 180': [...], ...} (the pairs above): (arrival
    time s, microseconds) per transaction (the first packet of each kind)."""
    reg_in, inv_in, inv_out, ringing_in = {}, {}, {}, {}
    out = {k: [] for k in ("REGISTER -> 200", "INVITE -> 180", "INVITE in -> INVITE out",
                           "INVITE out -> 180 in", "180 in -> 180 out")}
    for t, sport, dport, payload in packets(path):
        first, callid, cseq = _sip_fields(payload)
        if not callid or not cseq:
            continue
        if dport == server_port:
            if first.startswith("REGISTER ") and cseq == "2 REGISTER":
                reg_in.setdefault(callid, t)
            elif first.startswith("INVITE ") and cseq == "2 INVITE":
                inv_in.setdefault(callid, t)
            elif first.startswith("SIP/2.0 180") and cseq == "2 INVITE" and callid in inv_out \
                    and callid not in ringing_in:
                ringing_in[callid] = t
                out["INVITE out -> 180 in"].append((t, (t - inv_out[callid]) * 1e6))
        elif sport == server_port:
            if first.startswith("SIP/2.0 200") and cseq == "2 REGISTER" and callid in reg_in:
                t0 = reg_in.pop(callid)
                out["REGISTER -> 200"].append((t0, (t - t0) * 1e6))
            elif first.startswith("INVITE ") and cseq == "2 INVITE" and callid in inv_in \
                    and callid not in inv_out:
                inv_out[callid] = t
                out["INVITE in -> INVITE out"].append((inv_in[callid], (t - inv_in[callid]) * 1e6))
            elif first.startswith("SIP/2.0 180") and cseq == "2 INVITE" and callid in inv_in:
                t0 = inv_in.pop(callid)
                out["INVITE -> 180"].append((t0, (t - t0) * 1e6))
                if callid in ringing_in:
                    t1 = ringing_in[callid]
                    out["180 in -> 180 out"].append((t1, (t - t1) * 1e6))
    return out
