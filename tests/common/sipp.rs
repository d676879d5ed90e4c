//! Runs SIPp for the call tests: scenarios from `tests/sipp`, local ports picked at run time,
//! every output (stdout, stderr, `-trace_err`, `-trace_msg`, `-trace_logs`, `-trace_stat`)
//! in a directory of its own, and the process killed when its guard is dropped.
//!
//! SIPp 3.6.1 notes: `-p 0` means 5060 when that is free, so a port is always picked here; a
//! port taken between picking and binding makes SIPp exit with 254, and the run is retried on
//! another port. A callee is SIPp in client mode: `uas_register.xml` REGISTERs from the very
//! socket that takes the calls (sipcraft sends requests to where the REGISTER came from) and
//! the calls, whose Call-IDs SIPp does not know, are played by the `-oocsf` scenario.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Server};

/// Exit status of SIPp when it cannot bind its socket (-2).
const BIND_FAILED: i32 = 254;

/// A scenario file of `tests/sipp`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// SIPp's `-t` transport modes used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `u1`: one UDP socket for every call.
    Udp,
    /// `un`: one UDP socket (so one source port) per call: the bench's habit (with
    /// SO_REUSEPORT, where the workers do not share one socket, it spreads the calls).
    UdpPerCall,
    /// `t1`: one TCP connection for every call.
    Tcp,
}

impl Transport {
    pub fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::UdpPerCall => "un",
            Transport::Tcp => "t1",
        }
    }
}

/// A SIPp command line, spawned by [`SippCmd::spawn`] or run to its end by [`SippCmd::run`].
#[derive(Clone, Debug)]
pub struct SippCmd {
    label: String,
    scenario: PathBuf,
    ooc: Option<PathBuf>,
    inf: Vec<String>,
    transport: Transport,
    remote: SocketAddr,
    args: Vec<String>,
    trace_msg: bool,
}

impl SippCmd {
    /// `label` names the run in reports; `scenario` is a file of `tests/sipp`.
    pub fn new(label: &str, scenario_name: &str, remote: SocketAddr) -> SippCmd {
        SippCmd {
            label: label.to_owned(),
            scenario: scenario(scenario_name),
            ooc: None,
            inf: Vec::new(),
            transport: Transport::Udp,
            remote,
            args: Vec::new(),
            trace_msg: true,
        }
    }

    /// The out-of-call scenario (`-oocsf`).
    pub fn ooc(mut self, scenario_name: &str) -> SippCmd {
        self.ooc = Some(scenario(scenario_name));
        self
    }

    /// One line of the injection file (`-inf`, read SEQUENTIAL).
    pub fn inf_line(mut self, line: &str) -> SippCmd {
        self.inf.push(line.to_owned());
        self
    }

    pub fn transport(mut self, transport: Transport) -> SippCmd {
        self.transport = transport;
        self
    }

    /// More arguments (`-m`, `-r`, `-l`, `-d`, `-timeout` ...).
    pub fn args(mut self, args: &[&str]) -> SippCmd {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `-trace_msg` (on by default): every message sent and received, for the report.
    pub fn trace_msg(mut self, on: bool) -> SippCmd {
        self.trace_msg = on;
        self
    }

    /// Starts SIPp on a free local port, without waiting for anything.
    pub fn spawn(&self) -> Sipp {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sipp-{}-", self.label))
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let mut cmd = Command::new("sipp");
        cmd.current_dir(dir.path()).stdin(Stdio::null());
        cmd.arg("-sf").arg(&self.scenario);
        if let Some(ooc) = &self.ooc {
            cmd.arg("-oocsf").arg(ooc);
        }
        if !self.inf.is_empty() {
            let csv = dir.path().join("inf.csv");
            std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", self.inf.join("\n"))).unwrap();
            cmd.arg("-inf").arg(csv);
        }
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        cmd.args(["-t", self.transport.flag()]);
        if self.transport == Transport::UdpPerCall {
            // SIPp refuses `un` when -max_socket (50000) exceeds the open-file limit.
            cmd.args(["-max_socket", "2000"]);
        }
        cmd.args(["-nostdin", "-trace_err", "-error_file", "errors.log"]);
        cmd.args(["-trace_logs", "-log_file", "logs.log"]);
        cmd.args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"]);
        if self.trace_msg {
            cmd.args(["-trace_msg", "-message_file", "messages.log"]);
        }
        cmd.args(&self.args);
        cmd.arg(self.remote.to_string());
        cmd.stdout(std::fs::File::create(dir.path().join("stdout.txt")).unwrap());
        cmd.stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap());
        let command_line = format!("{cmd:?}");
        let child = cmd.spawn().expect("sipp is installed (make test-deps)");
        Sipp {
            label: self.label.clone(),
            port,
            command_line,
            dir: Some(dir),
            child: Some(child),
            status: None,
        }
    }

    /// Runs SIPp to its end (it must stop by itself: `-m` and a `-timeout`), retrying on
    /// another port when the picked one was taken meanwhile. Panics with the report when it
    /// is still running after `within`.
    pub fn run(&self, within: Duration) -> Sipp {
        for _ in 0..3 {
            let mut sipp = self.spawn();
            let status = sipp.wait(within);
            if status.code() != Some(BIND_FAILED) {
                return sipp;
            }
        }
        panic!(
            "{}: SIPp could not bind a local port three times",
            self.label
        );
    }
}

/// Statistics from the last row SIPp wrote to its `-trace_stat` file.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub created: u64,
    pub current: u64,
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
    /// The non-zero `Failed...(C)` counters, by name.
    pub failures: Vec<(String, u64)>,
}

/// A SIPp process; killed (SIGKILL) when dropped. Its output directory is removed then,
/// unless the test is failing (panicking): then it is kept for a look at the full traces.
pub struct Sipp {
    pub label: String,
    pub port: u16,
    pub command_line: String,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Sipp {
    /// The output directory (stdout.txt, errors.log, messages.log, logs.log, stat.csv ...).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("output directory").path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read(self.path(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status, once SIPp has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits for SIPp to exit; after `within` kills it and panics with the report.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} still running after {within:?}; killed\n{}",
                    self.label,
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills SIPp (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
            }
            if let Ok(status) = child.wait() {
                self.status.get_or_insert(status);
            }
        }
    }

    /// SIGUSR1, SIPp's soft quit: it places no new call and exits once the calls in flight
    /// have ended, with status 0 only if no call failed. For a load run with a large `-m`
    /// that the test ends when it has seen what it needs.
    pub fn stop_placing_calls(&mut self) {
        if self.try_wait().is_none() {
            if let Some(child) = &self.child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGUSR1,
                );
            }
        }
    }

    /// The second word of every `<log>` line that starts with `word`: the Call-IDs of
    /// `ANSWERED <call_id>` lines, say.
    pub fn logged_ids(&self, word: &str) -> Vec<String> {
        self.logs()
            .iter()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(word))
                    .then(|| words.next())
                    .flatten()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Lines written by `<log>` actions (`-trace_logs`).
    pub fn logs(&self) -> Vec<String> {
        self.read("logs.log").lines().map(str::to_owned).collect()
    }

    /// How many `<log>` lines start with `word` (`ANSWERED`, `CANCELLED`, `BUSY` ...).
    pub fn count_logs(&self, word: &str) -> usize {
        self.logs()
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(word))
            .count()
    }

    /// Every row of the `-trace_stat` file, as (column, value) pairs.
    pub fn stat_rows(&self) -> Vec<Vec<(String, String)>> {
        let text = self.read("stat.csv");
        let mut lines = text.lines();
        let Some(head) = lines.next() else {
            return Vec::new();
        };
        let names: Vec<&str> = head.split(';').collect();
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                names
                    .iter()
                    .zip(l.split(';'))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// The statistics of the last row SIPp wrote (`-fd 1`: every second and at the end).
    pub fn stats(&self) -> Option<Stats> {
        self.stat_rows().last().map(|row| stats_of(row))
    }

    /// Call-IDs named in the error log (aborted calls), first seen first. SIPp writes
    /// `Call-Id 'ID'` for an unexpected message, `Call-Id: ID,` for a receive timeout.
    pub fn failed_call_ids(&self) -> Vec<String> {
        let text = self.read("errors.log");
        let mut ids: Vec<String> = Vec::new();
        let quoted = text
            .split("Call-Id '")
            .skip(1)
            .filter_map(|p| p.split('\'').next());
        let plain = text
            .split("Call-Id: ")
            .skip(1)
            .filter_map(|p| p.split([',', ' ', '\n']).next());
        for id in quoted.chain(plain) {
            if !id.is_empty() && !ids.iter().any(|i| i == id) {
                ids.push(id.to_owned());
            }
        }
        ids
    }

    /// Every traced message (`-trace_msg`) of one Call-ID, in order.
    pub fn trace_of(&self, call_id: &str) -> String {
        let text = self.read("messages.log");
        let needle = format!("call-id: {}", call_id.to_ascii_lowercase());
        text.split("\n----------------------------------------------- ")
            .filter(|block| {
                block.lines().any(|l| {
                    let l = l.trim().to_ascii_lowercase();
                    l == needle || l == format!("i: {}", call_id.to_ascii_lowercase())
                })
            })
            .map(|b| format!("--- {}\n", b.trim_end()))
            .collect()
    }

    /// Every traced message, the last `max_chars` of them.
    pub fn trace_tail(&self, max_chars: usize) -> String {
        tail_chars(&self.read("messages.log"), max_chars)
    }

    /// What to print when a test fails: command, exit status, statistics, the last lines of
    /// stdout and of the error log, stderr.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "===== SIPp {} (port {})", self.label, self.port);
        let _ = writeln!(out, "command: {}", self.command_line);
        let _ = writeln!(out, "exit: {:?}", self.status);
        let _ = writeln!(out, "stats: {:?}", self.stats());
        let _ = writeln!(
            out,
            "--- stdout (last 30 lines):\n{}",
            last_lines(&self.read("stdout.txt"), 30)
        );
        let stderr = self.read("stderr.txt");
        if !stderr.trim().is_empty() {
            let _ = writeln!(out, "--- stderr:\n{}", last_lines(&stderr, 30));
        }
        let _ = writeln!(
            out,
            "--- error log (-trace_err, last 60 lines):\n{}",
            last_lines(&self.read("errors.log"), 60)
        );
        let _ = writeln!(
            out,
            "--- all output in {} (kept when the test fails)",
            self.dir().display()
        );
        out
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

fn stats_of(row: &[(String, String)]) -> Stats {
    let get = |name: &str| -> u64 {
        row.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Stats {
        created: get("TotalCallCreated"),
        current: get("CurrentCall"),
        successful: get("SuccessfulCall(C)"),
        failed: get("FailedCall(C)"),
        retransmissions: get("Retransmissions(C)"),
        failures: row
            .iter()
            .filter(|(n, _)| n.starts_with("Failed") && n.ends_with("(C)") && n != "FailedCall(C)")
            .filter_map(|(n, v)| {
                let v: u64 = v.trim().parse().ok()?;
                (v > 0).then(|| (n.clone(), v))
            })
            .collect(),
    }
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn tail_chars(text: &str, n: usize) -> String {
    let start = text.len().saturating_sub(n);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// A registered SIPp callee: `uas_register.xml` for `number`, calls played by `ooc` (a
/// `uas_*.xml` scenario). Returns once SIPp logged its 200 for the REGISTER.
pub fn start_callee(
    label: &str,
    remote: SocketAddr,
    transport: Transport,
    number: &str,
    password: &str,
    ooc: &str,
) -> Sipp {
    let cmd = SippCmd::new(label, "uas_register.xml", remote)
        .ooc(ooc)
        .transport(transport)
        .inf_line(&format!(
            "{number};[authentication username={number} password={password}]"
        ))
        // One "call": the registration, then a long pause holding the socket. A callee
        // never sends a BYE of its own for a call it aborted.
        .args(&["-m", "1", "-default_behaviors", "abortunexp,pingreply"]);
    let registered = format!("REGISTERED {number}");
    for _ in 0..3 {
        let mut sipp = cmd.spawn();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if sipp.logs().iter().any(|l| l.trim() == registered) {
                return sipp;
            }
            if let Some(status) = sipp.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                sipp.kill();
                panic!(
                    "{label}: SIPp callee {number} not registered within 15 s\n{}\n{}",
                    sipp.report(),
                    sipp.trace_tail(8000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.code() != Some(BIND_FAILED) {
            panic!(
                "{label}: SIPp callee exited ({status:?}) before registering\n{}\n{}",
                sipp.report(),
                sipp.trace_tail(8000)
            );
        }
    }
    panic!("{label}: SIPp could not bind a local port three times");
}

/// The live transactions of every child (`ctl status`: children[].health.transactions).
pub fn live_transactions(server: &Server) -> Option<(u64, Vec<(String, u64)>)> {
    let status = server.try_status()?;
    let per_child: Vec<(String, u64)> = status["children"]
        .as_array()?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("?").to_owned(),
                c["health"]["transactions"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Some((per_child.iter().map(|(_, n)| n).sum(), per_child))
}

/// Waits until no transaction is left alive in any child. Over UDP a server transaction
/// lingers by the RFC 3261 timers (Timer J: 32 s for non-INVITE), so give UDP ~40 s.
pub fn wait_idle(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some((total, per_child)) = live_transactions(server) {
            if total == 0 {
                return;
            }
            last = Some(per_child);
        }
        if Instant::now() >= deadline {
            panic!(
                "transactions still alive {within:?} after the calls ended: {last:?}\n\
                 --- sipcraft log (last 40 lines):\n{}",
                last_lines(&server.log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the server holds `n` bindings (replicated to every worker).
pub fn wait_bindings(server: &Server, n: u64) {
    super::wait_for(
        &format!("{n} bindings in ctl status"),
        Duration::from_secs(5),
        || (server.try_status()?["bindings"].as_u64()? == n).then_some(()),
    );
}

/// What to print when calls failed: the caller's report, the SIP trace of the first failed
/// calls as every SIPp saw them (a proxy keeps the Call-ID), the others' reports, and the
/// end of sipcraft's log.
pub fn failure_report(server: &Server, caller: &Sipp, others: &[&Sipp]) -> String {
    let mut out = caller.report();
    let failed = caller.failed_call_ids();
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "--- {} trace (-trace_msg, last messages):\n{}",
            caller.label,
            caller.trace_tail(6000)
        );
    }
    for id in failed.iter().take(2) {
        for sipp in std::iter::once(caller).chain(others.iter().copied()) {
            let _ = writeln!(
                out,
                "--- trace of failed call {id} as {} saw it:\n{}",
                sipp.label,
                sipp.trace_of(id)
            );
        }
    }
    for other in others {
        out += &other.report();
    }
    let _ = writeln!(
        out,
        "--- sipcraft log (last 40 lines):\n{}",
        last_lines(&server.log(), 40)
    );
    out
}

/// Asserts that the caller SIPp exited 0 with `expected` successful calls and no failure.
pub fn assert_calls(server: &Server, caller: &mut Sipp, others: &[&Sipp], expected: u64) {
    let status = caller.try_wait();
    let stats = caller.stats().unwrap_or_default();
    let ok =
        status.is_some_and(|s| s.success()) && stats.successful == expected && stats.failed == 0;
    assert!(
        ok,
        "{}: {} of {expected} calls succeeded, {} failed {:?} (exit {status:?})\n{}",
        caller.label,
        stats.successful,
        stats.failed,
        stats.failures,
        failure_report(server, caller, others)
    );
}
