//! Test harness: runs the real `sipcraft` binary on loopback ports picked at run time.
#![allow(dead_code)]

pub mod attempt;
pub mod postgres;
pub mod sip;
pub mod sipp;
pub mod tls;
pub mod ua;
pub mod ws;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sipcraft");

/// Waits for `cond` to hold, polling, until `within` has passed; panics with `what` if not.
pub fn wait_for<T>(what: &str, within: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for both UDP and TCP");
}

/// Builds a configuration file for a test server.
#[derive(Debug, Clone)]
pub struct Setup {
    pub udp_workers: usize,
    pub tcp_workers: usize,
    pub extensions: Vec<(String, String)>,
    /// Extra TOML appended as is (sections like `[supervisor]`).
    pub extra: String,
    /// Workers of `[[listen]]` entries written in `extra` (TLS, WebSocket), so that waiting
    /// for every child to be ready counts them.
    pub extra_workers: usize,
    pub env: Vec<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            udp_workers: 2,
            tcp_workers: 1,
            extensions: (1001..=1003)
                .map(|n| (n.to_string(), format!("pw{n}")))
                .collect(),
            extra: String::new(),
            extra_workers: 0,
            env: Vec::new(),
        }
    }
}

/// A running sipcraft supervisor with its own directory.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub process: Option<Child>,
    pub setup: Setup,
}

impl Server {
    pub fn config_text(setup: &Setup, dir: &Path, port: u16) -> String {
        let mut text = format!(
            "[server]\ndomain = \"pbx.test\"\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\n\n",
            dir.join("rt").display(),
            dir.join("state").display()
        );
        if setup.udp_workers > 0 {
            text += &format!(
                "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\nworkers = {}\n\n",
                setup.udp_workers
            );
        }
        if setup.tcp_workers > 0 {
            text += &format!(
                "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nworkers = {}\n\n",
                setup.tcp_workers
            );
        }
        for (number, password) in &setup.extensions {
            text += &format!("[[extension]]\nnumber = \"{number}\"\npassword = \"{password}\"\n\n");
        }
        text += &setup.extra;
        text
    }

    /// Writes the configuration and starts the supervisor, without waiting for it.
    pub fn spawn(setup: Setup) -> Server {
        Self::spawn_with(setup, |cmd| cmd)
    }

    /// Like [`Server::spawn`], with a hook to change the command (wrap it, add env).
    pub fn spawn_with(setup: Setup, wrap: impl FnOnce(Command) -> Command) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("sipcraft-test")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let config = dir.path().join("sipcraft.toml");
        std::fs::write(&config, Self::config_text(&setup, dir.path(), port)).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("-c").arg(&config).stdin(Stdio::null());
        cmd.stderr(std::fs::File::create(dir.path().join("sipcraft.log")).unwrap());
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let mut cmd = wrap(cmd);
        let process = cmd.spawn().expect("start sipcraft");
        Server {
            dir,
            config,
            port,
            process: Some(process),
            setup,
        }
    }

    /// Starts the supervisor and waits until every child is ready.
    pub fn start(setup: Setup) -> Server {
        let server = Self::spawn(setup);
        server.wait_all_ready();
        server
    }

    pub fn children_count(&self) -> usize {
        1 + self.setup.udp_workers + self.setup.tcp_workers + self.setup.extra_workers
    }

    pub fn wait_all_ready(&self) -> Value {
        let n = self.children_count();
        wait_for("every child ready", Duration::from_secs(15), || {
            let status = self.try_status()?;
            let children = status["children"].as_array()?;
            (children.len() == n && children.iter().all(|c| c["state"] == "ready"))
                .then_some(status)
        })
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("ctl")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run sipcraft ctl")
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("ctl status failed; log:\n{}", self.log()))
    }

    pub fn child(&self, name: &str) -> Value {
        self.status()["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no child {name}"))
    }

    pub fn pid_of(&self, name: &str) -> u32 {
        self.child(name)["pid"].as_u64().expect("child has a pid") as u32
    }

    pub fn child_pids(&self) -> Vec<(String, u32)> {
        self.status()["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["pid"].as_u64().unwrap_or(0) as u32,
                )
            })
            .collect()
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.process.as_ref().expect("running").id()
    }

    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until every worker's replica has caught up with the supervisor's generation
    /// (replication is asynchronous; workers report their generation once a second).
    pub fn wait_replicated(&self) {
        let target = self.status()["generation"].as_u64().unwrap_or(0);
        wait_for(
            "every worker's replica caught up",
            Duration::from_secs(5),
            || {
                let s = self.try_status()?;
                s["children"]
                    .as_array()?
                    .iter()
                    .filter(|c| c["role"] == "worker")
                    .all(|c| c["health"]["generation"].as_u64().unwrap_or(0) >= target)
                    .then_some(())
            },
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sipcraft.log")).unwrap_or_default()
    }

    /// Sends `sig` to the supervisor.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.supervisor_pid() as i32),
            sig,
        )
        .unwrap();
    }

    /// Waits for the supervisor to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.process.as_mut().expect("running");
        let status = wait_for("supervisor exit", within, || child.try_wait().unwrap());
        self.process = None;
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let pids: Vec<u32> = self.try_status().map_or_else(Vec::new, |s| {
                s["children"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            });
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && p.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// True when a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
