"""A throwaway PostgreSQL for the database-outage step (as tests/common/postgres.rs does):
initdb into the bench's work directory, postgres on a free loopback port; as root it runs as
the sipcraft-pg system user (created when missing), since PostgreSQL refuses root."""
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time

import procs


def bindir():
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        d = out.stdout.strip()
        if out.returncode == 0 and os.path.exists(os.path.join(d, "initdb")) \
                and os.path.exists(os.path.join(d, "postgres")):
            return d
    except OSError:
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    def __init__(self, workdir):
        self.bin = bindir()
        if not self.bin:
            raise RuntimeError("PostgreSQL server programs not installed (initdb, postgres)")
        self.dir = os.path.join(workdir, "postgres")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "sock"))
        self.port = procs.free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("sipcraft-pg")
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                                "/nonexistent", "--shell", "/usr/sbin/nologin", "sipcraft-pg"],
                               check=True)
            self.user = pwd.getpwnam("sipcraft-pg")
            for p in (self.dir, os.path.join(self.dir, "sock")):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self.proc = None

    def _cmd(self, program, *args):
        exe = os.path.join(self.bin, program)
        if self.user:
            return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                    "--clear-groups", "--", exe, *args]
        return [exe, *args]

    def start(self):
        data = os.path.join(self.dir, "data")
        r = subprocess.run(self._cmd("initdb", "-D", data, "-U", "sipcraft", "--auth=trust",
                                     "-E", "UTF8", "--locale=C", "--no-sync"),
                           capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        if r.returncode != 0:
            raise RuntimeError("initdb failed: " + r.stdout + r.stderr)
        log = open(os.path.join(self.dir, "postgres.log"), "ab")
        self.proc = subprocess.Popen(
            self._cmd("postgres", "-D", data, "-c", "listen_addresses=127.0.0.1",
                      "-p", str(self.port), "-k", os.path.join(self.dir, "sock"),
                      "-c", "fsync=off", "-c", "full_page_writes=off",
                      "-c", "max_connections=40", "-c", "shared_buffers=16MB"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while self.psql("SELECT 1", db="postgres") is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start; see {self.dir}/postgres.log")
            time.sleep(0.1)
        self.psql("CREATE DATABASE sipcraft", db="postgres")

    def url(self):
        return f"postgresql://sipcraft@127.0.0.1:{self.port}/sipcraft"

    def psql(self, sql, db="sipcraft"):
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-q",
                            "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "sipcraft", "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    def pids(self):
        return procs.tree(self.proc.pid) if self.proc else []

    def signal_all(self, sig):
        """SIGSTOP / SIGCONT every PostgreSQL process: the whole server hangs."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.signal_all(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
