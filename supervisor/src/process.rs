//! Starting, signalling and reaping child processes.
//!
//! Children are the supervisor's own executable re-executed with a hidden subcommand, so a
//! child always matches the supervisor's version. Every spawn happens on one dedicated
//! thread that lives as long as the supervisor: a child's parent-death signal fires when
//! the thread that forked it exits, not the process. One `waitpid(-1)` loop owns every exit
//! status (a second reaper would steal statuses); as PID 1 it also reaps orphans.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

/// A child to start.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub args: Vec<OsString>,
    /// A socket the child inherits (same descriptor number), for workers on Unix.
    #[cfg(unix)]
    pub inherit_fds: Vec<std::os::fd::RawFd>,
}

/// A child's exit, from the reaper.
#[derive(Debug, Clone)]
pub struct Exit {
    pub pid: u32,
    pub reason: String,
    /// True for a clean exit with status 0.
    pub clean: bool,
}

type Job = (SpawnRequest, oneshot::Sender<io::Result<u32>>);

/// Starts children from a dedicated thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: std_mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawning thread. `exe` is the executable to re-run.
    pub fn start(exe: PathBuf) -> io::Result<Self> {
        let (tx, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (req, reply) in rx {
                    let _ = reply.send(spawn_one(&exe, &req));
                }
            })?;
        Ok(Spawner { jobs: tx })
    }

    pub async fn spawn(&self, req: SpawnRequest) -> io::Result<u32> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((req, tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

/// The executable to re-run for children.
pub fn own_executable() -> io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        // /proc/self/exe keeps working when the file was replaced by an upgrade.
        Ok(PathBuf::from("/proc/self/exe"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::env::current_exe()
    }
}

#[cfg(unix)]
fn spawn_one(exe: &std::path::Path, req: &SpawnRequest) -> io::Result<u32> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::unix::process::CommandExt;

    // Only this thread forks, so clearing close-on-exec for the duration of one spawn
    // cannot leak a descriptor into another child.
    let set_cloexec = |fd, on: bool| {
        let flags = if on {
            FdFlag::FD_CLOEXEC
        } else {
            FdFlag::empty()
        };
        fcntl(fd, FcntlArg::F_SETFD(flags))
            .map(|_| ())
            .map_err(io::Error::from)
    };
    for &fd in &req.inherit_fds {
        set_cloexec(fd, false)?;
    }
    let result = std::process::Command::new(exe)
        .arg0("sipcraft")
        .args(&req.args)
        .stdin(std::process::Stdio::null())
        // Terminal signals (Ctrl-C) reach only the supervisor, which stops children in order.
        .process_group(0)
        // Only the supervisor talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .spawn();
    for &fd in &req.inherit_fds {
        set_cloexec(fd, true)?;
    }
    // The reaper owns exit statuses: the Child handle is dropped without waiting.
    result.map(|child| child.id())
}

#[cfg(windows)]
fn spawn_one(exe: &std::path::Path, req: &SpawnRequest) -> io::Result<u32> {
    use std::os::windows::process::CommandExt;
    /// CREATE_NEW_PROCESS_GROUP: Ctrl-C in the console reaches only the supervisor, which
    /// stops children in order (what `process_group(0)` does on Unix).
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    let mut command = std::process::Command::new(exe);
    command
        .args(&req.args)
        .stdin(std::process::Stdio::null())
        .creation_flags(CREATE_NEW_PROCESS_GROUP);
    if let Some(log) = CHILD_OUTPUT.get() {
        command.stdout(log.try_clone()?).stderr(log.try_clone()?);
    }
    let child = command.spawn()?;
    let pid = child.id();
    windows_reaper::adopt(child);
    Ok(pid)
}

#[cfg(windows)]
static CHILD_OUTPUT: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Sends every child's stdout and stderr to `log` instead of the supervisor's own (which a
/// Windows service does not have). Only the first call counts.
#[cfg(windows)]
pub fn set_child_output(log: std::fs::File) {
    let _ = CHILD_OUTPUT.set(log);
}

/// Sends SIGKILL (Unix) or terminates (Windows) a child by pid.
pub fn kill(pid: u32) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    #[cfg(windows)]
    windows_reaper::kill(pid);
}

/// Sends SIGTERM (Unix); on Windows a child is asked over the bus, so this terminates.
pub fn terminate(pid: u32) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    #[cfg(windows)]
    windows_reaper::kill(pid);
}

/// Reaps every exited child, forever, and reports each exit on `tx`.
#[cfg(unix)]
pub async fn reap(tx: mpsc::UnboundedSender<Exit>) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child())?;
    loop {
        for exit in reap_ready() {
            if tx.send(exit).is_err() {
                return Ok(());
            }
        }
        sigchld.recv().await;
    }
}

/// Collects every exit status that is ready now (`waitpid(-1, WNOHANG)` until none).
#[cfg(unix)]
fn reap_ready() -> Vec<Exit> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut exits = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.push(Exit {
                pid: pid.as_raw() as u32,
                reason: format!("exited with status {code}"),
                clean: code == 0,
            }),
            Ok(WaitStatus::Signaled(pid, sig, core)) => exits.push(Exit {
                pid: pid.as_raw() as u32,
                reason: format!(
                    "killed by {}{}",
                    sig.as_str(),
                    if core { " (core dumped)" } else { "" }
                ),
                clean: false,
            }),
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(_) => continue,
        }
    }
}

#[cfg(windows)]
pub async fn reap(tx: mpsc::UnboundedSender<Exit>) -> io::Result<()> {
    loop {
        for exit in windows_reaper::poll() {
            if tx.send(exit).is_err() {
                return Ok(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Windows has no SIGCHLD: child handles are kept and polled.
#[cfg(windows)]
mod windows_reaper {
    use super::Exit;
    use std::process::Child;
    use std::sync::Mutex;

    static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

    pub fn adopt(child: Child) {
        CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
    }

    pub fn kill(pid: u32) {
        let mut list = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = list.iter_mut().find(|c| c.id() == pid) {
            let _ = child.kill();
        }
    }

    pub fn poll() -> Vec<Exit> {
        let mut list = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
        let mut exits = Vec::new();
        list.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                exits.push(Exit {
                    pid: child.id(),
                    reason: format!("{status}"),
                    clean: status.success(),
                });
                false
            }
            _ => true,
        });
        exits
    }
}
