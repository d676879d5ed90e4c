//! A throwaway PostgreSQL for tests: `initdb` into a temporary directory, `postgres` on a
//! free loopback port with a socket directory of its own, torn down on drop. PostgreSQL
//! refuses to run as root, so as root it runs as the `sipcraft-pg` system user
//! (`scripts/test-deps.sh` creates it) or, failing that, `postgres`. The test can kill it,
//! stop it (SIGSTOP), resume it and start it again on the same port and data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{free_port, wait_for, Server, Setup, BIN};

/// Where the PostgreSQL server programs are: `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off the PATH).
pub fn bindir() -> Option<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d)
}

/// The OS user PostgreSQL runs as when the tests run as root.
fn run_as() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["sipcraft-pg", "postgres"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .or_else(|| {
            panic!("running as root needs the sipcraft-pg user for PostgreSQL: run scripts/test-deps.sh")
        })
}

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bindir: PathBuf,
    user: Option<nix::unistd::User>,
    process: Option<Child>,
}

impl Postgres {
    /// Initialises a cluster, starts it and creates the `sipcraft` database.
    pub fn start() -> Postgres {
        let bindir = bindir().expect("PostgreSQL is installed (scripts/test-deps.sh)");
        let dir = tempfile::Builder::new()
            .prefix("sipcraft-pg")
            .tempdir()
            .expect("tempdir");
        let user = run_as();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if let Some(u) = &user {
            for p in [dir.path().to_owned(), dir.path().join("sock")] {
                nix::unistd::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        let mut pg = Postgres {
            dir,
            // Picked just before the first start (initdb takes a while), so no other test
            // takes it meanwhile.
            port: 0,
            bindir,
            user,
            process: None,
        };
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args(["-U", "sipcraft", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.port = free_port();
        pg.start_again();
        pg.psql_in("postgres", "CREATE DATABASE sipcraft");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server programs, as the PostgreSQL user.
    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.stdin(Stdio::null()).env("LC_ALL", "C");
        cmd
    }

    /// Starts the server (again) on the same port and data; waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.process = Some(child);
        let started = Instant::now();
        while self.try_psql_in("postgres", "SELECT 1").is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start; log:\n{}",
                self.log()
            );
            if let Some(Some(status)) = self.process.as_mut().map(|p| p.try_wait().unwrap()) {
                panic!("PostgreSQL exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL sipcraft connects with.
    pub fn url(&self) -> String {
        self.url_as("sipcraft")
    }

    /// The URL of the `sipcraft` database for role `user`.
    pub fn url_as(&self, user: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/sipcraft", self.port)
    }

    /// A `[database]` section for this server, with short timeouts.
    pub fn database_toml(&self) -> String {
        self.database_toml_as("sipcraft", "")
    }

    /// [`Postgres::database_toml`] logging in as `user`, with `extra` keys (whole lines).
    pub fn database_toml_as(&self, user: &str, extra: &str) -> String {
        format!(
            "[database]\nurl = \"{}\"\n{extra}connect_timeout_ms = 1000\nstatement_timeout_ms = 1000\n\n",
            self.url_as(user)
        )
    }

    /// Runs SQL in the `sipcraft` database; the output unaligned, tuples only.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("sipcraft", sql)
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in("sipcraft", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "sipcraft", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A number from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.psql(sql)
            .parse()
            .unwrap_or_else(|_| panic!("not a number from {sql:?}"))
    }

    /// The postmaster and every process it started.
    pub fn pids(&self) -> Vec<i32> {
        let Some(main) = self.process.as_ref().map(|p| p.id() as i32) else {
            return Vec::new();
        };
        let mut pids = vec![main];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(main) {
                pids.push(pid);
            }
        }
        pids
    }

    fn signal_all(&self, sig: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// kill -9 of the server and every backend.
    pub fn kill(&mut self) {
        self.signal_all(Signal::SIGCONT);
        self.signal_all(Signal::SIGKILL);
        if let Some(mut p) = self.process.take() {
            let _ = p.wait();
        }
    }

    /// An orderly fast shutdown.
    pub fn stop(&mut self) {
        self.signal_all(Signal::SIGCONT);
        if let Some(mut p) = self.process.take() {
            let _ = kill(Pid::from_raw(p.id() as i32), Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && p.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// SIGSTOP to the server and every backend: it hangs without closing anything.
    pub fn pause(&self) {
        self.signal_all(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(Signal::SIGCONT);
    }

    /// Waits until sipcraft's dbagent has created the schema.
    pub fn wait_schema(&self) {
        wait_for(
            "the dbagent created the schema",
            Duration::from_secs(15),
            || self.try_psql("SELECT count(*) FROM sipcraft_schema").ok(),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sipcraft setup that takes its extensions from `pg`.
pub fn setup_with(pg: &Postgres) -> Setup {
    setup_with_database(&pg.database_toml())
}

/// A sipcraft setup with this `[database]` section (see [`Postgres::database_toml_as`]).
pub fn setup_with_database(database_toml: &str) -> Setup {
    Setup {
        extensions: Vec::new(),
        extra: format!("{database_toml}[security]\ntrusted_ips = [\"127.0.0.0/8\"]\n\n"),
        ..Setup::default()
    }
}

/// Stops the supervisor with SIGTERM and starts it again on the same configuration and
/// state directory (the log goes on in the same file).
pub fn restart(server: &mut Server) {
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "supervisor stopped with {status}");
    start_again(server);
}

/// Starts a stopped supervisor again on the same configuration.
pub fn start_again(server: &mut Server) {
    assert!(server.process.is_none());
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(server.dir.path().join("sipcraft.log"))
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("-c")
        .arg(&server.config)
        .stdin(Stdio::null())
        .stderr(log);
    for (k, v) in &server.setup.env {
        cmd.env(k, v);
    }
    server.process = Some(cmd.spawn().expect("start sipcraft"));
}

/// The dbagent's alarm in `ctl status`, if any.
pub fn dbagent_alarm(server: &Server) -> Option<String> {
    let status = server.try_status()?;
    status["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "dbagent")?["health"]["alarm"]
        .as_str()
        .map(str::to_owned)
}

/// Waits until the dbagent reports the database unreachable (`what` names the moment).
pub fn wait_database_unreachable(server: &Server, what: &str) {
    wait_for(what, Duration::from_secs(10), || {
        dbagent_alarm(server).filter(|a| a.contains("database unreachable"))
    });
}

/// SIPp REGISTERing users (each once, MD5 digest, over UDP) at a steady rate, in the
/// background; [`RegisterLoad::wait`] says whether every REGISTER got its 200.
pub struct RegisterLoad {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub count: usize,
}

impl RegisterLoad {
    /// Starts SIPp registering `users` (number, password) in order at `rate` per second.
    pub fn spawn(server: &Server, users: &[(String, String)], rate: u32) -> RegisterLoad {
        let dir = tempfile::Builder::new()
            .prefix("sipcraft-sipp")
            .tempdir()
            .unwrap();
        let csv = dir.path().join("users.csv");
        let mut text = String::from("SEQUENTIAL\n");
        for (n, pw) in users {
            text += &format!("{n};[authentication username={n} password={pw}];pbx.test\n");
        }
        std::fs::write(&csv, text).unwrap();
        let scenario = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sipp/register_digest.xml"
        );
        let child = Command::new("sipp")
            .current_dir(dir.path())
            .args(["-sf", scenario, "-inf"])
            .arg(&csv)
            .args(["-i", "127.0.0.1", "-p"])
            .arg(free_port().to_string())
            .args(["-t", "u1", "-m"])
            .arg(users.len().to_string())
            .args(["-r"])
            .arg(rate.to_string())
            .args([
                "-l",
                "200",
                "-timeout",
                "600s",
                "-timeout_error",
                "-nostdin",
            ])
            .args(["-trace_err", "-trace_stat", "-fd", "1"])
            .arg(server.udp_addr().to_string())
            .stdout(std::fs::File::create(dir.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("sipp is installed (scripts/test-deps.sh)");
        RegisterLoad {
            child: Some(child),
            dir,
            count: users.len(),
        }
    }

    /// The end of SIPp's screen.
    pub fn screen(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for SIPp to finish; panics with its output unless every REGISTER succeeded.
    pub fn assert_all_ok(&mut self, within: Duration) {
        let mut child = self.child.take().expect("running");
        let status = wait_for("SIPp finishing", within, || child.try_wait().unwrap());
        if !status.success() {
            let read = |name: &str| {
                std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
            };
            let errors: String = std::fs::read_dir(self.dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("errors"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            let stdout = read("stdout.txt");
            panic!(
                "SIPp reported failed REGISTERs ({status}):\n{}\n{}\nerrors:\n{}",
                stdout.lines().rev().take(40).collect::<Vec<_>>().join("\n"),
                read("stderr.txt"),
                errors.chars().take(4000).collect::<String>()
            );
        }
    }
}

impl Drop for RegisterLoad {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `count` extensions numbered from `first`, with passwords `pw<number>`.
pub fn users(first: u32, count: u32) -> Vec<(String, String)> {
    (first..first + count)
        .map(|n| (n.to_string(), format!("pw{n}")))
        .collect()
}

/// Inserts extensions into PostgreSQL (number and password only).
pub fn insert_users(pg: &Postgres, users: &[(String, String)]) {
    for chunk in users.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(n, p)| format!("('{n}', '{p}')"))
            .collect();
        pg.psql(&format!(
            "INSERT INTO extensions (number, password) VALUES {}",
            values.join(", ")
        ));
    }
}

/// [`wait_for`], with a report of the situation when the condition does not come.
pub fn wait_or_report<T>(
    what: &str,
    within: Duration,
    report: impl Fn() -> String,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {within:?} waiting for: {what}\n{}",
                report()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of the server's log, without colours.
pub fn log_tail(server: &Server, n: usize) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
