#!/usr/bin/env python3
"""Replication latency: how long after one worker answers 200 to a REGISTER does another
worker return the new binding. Loopback only, bounded (ROUNDS registrations).

Usage: bench/replication_latency.py HOST:PORT USER PASSWORD [ROUNDS]
The server must run at least 2 UDP workers and trust 127.0.0.0/8 (no rate limit)."""
import hashlib, re, socket, sys, time

server = sys.argv[1].rsplit(":", 1)
SERVER = (server[0], int(server[1]))
USER, PASSWORD = sys.argv[2], sys.argv[3]
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 200
DOMAIN = "pbx.test"


class Phone:
    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(2)
        self.port = self.s.getsockname()[1]
        self.cseq = 0
        self.nonce = None
        self.nc = 0

    def req(self, extra):
        self.cseq += 1
        msg = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};"
               f"branch=z9hG4bK-{self.port}-{self.cseq};rport\r\nMax-Forwards: 70\r\n"
               f"From: <sip:{USER}@{DOMAIN}>;tag={self.port}\r\nTo: <sip:{USER}@{DOMAIN}>\r\n"
               f"Call-ID: bench-{self.port}\r\nCSeq: {self.cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n")
        self.s.sendto(msg.encode(), SERVER)
        return self.s.recv(65535).decode(errors="replace")

    def auth(self):
        self.nc += 1
        h = lambda x: hashlib.md5(x.encode()).hexdigest()
        nc = f"{self.nc:08x}"
        ha1, ha2 = h(f"{USER}:{DOMAIN}:{PASSWORD}"), h(f"REGISTER:sip:{DOMAIN}")
        resp = h(f"{ha1}:{self.nonce}:{nc}:c0ffee:auth:{ha2}")
        return (f'Authorization: Digest username="{USER}", realm="{DOMAIN}", nonce="{self.nonce}", '
                f'uri="sip:{DOMAIN}", response="{resp}", algorithm=MD5, cnonce="c0ffee", qop=auth, nc={nc}\r\n')

    def authed(self, extra):
        if self.nonce is None:
            r = self.req(extra)
            self.nonce = re.search(r'nonce="([^"]+)"', r).group(1)
        return self.req(extra + self.auth())


def worker(resp):
    m = re.search(r"^Server: .*\((.*)\)", resp, re.M)
    return m.group(1) if m else "?"


a = Phone()
home = worker(a.authed(""))
b = None
for _ in range(200):
    p = Phone()
    if worker(p.authed("")) != home:
        b = p
        break
if b is None:
    sys.exit("could not reach a second worker")

lat = []
for i in range(ROUNDS):
    contact = f"<sip:{USER}@127.0.0.1:{20000 + i}>"
    r = a.authed(f"Contact: {contact};expires=600\r\n")
    assert r.startswith("SIP/2.0 200"), r
    t0 = time.perf_counter()
    while contact not in b.authed(""):
        if time.perf_counter() - t0 > 1:
            sys.exit("binding not replicated within 1 s")
    lat.append((time.perf_counter() - t0) * 1e6)
    a.authed(f"Contact: {contact};expires=0\r\n")
lat.sort()
print(f"replication REGISTER 200 on {home} -> binding returned by {worker(b.authed(''))}: "
      f"n={len(lat)} p50={lat[len(lat)//2]:.0f}us p99={lat[int(len(lat)*0.99)-1]:.0f}us max={lat[-1]:.0f}us "
      "(includes one fetch round trip)")
