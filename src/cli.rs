//! Subcommand plumbing: logging, runtimes, and the `ctl` front end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sipcraft_ipc::wire::{ControlRequest, ControlResponse};

#[derive(Args)]
pub struct CtlArgs {
    /// The server's configuration file (its runtime_dir holds the control socket).
    #[arg(short, long, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every process: state, pid, uptime, restarts, last exit.
    Status {
        #[arg(long)]
        json: bool,
        /// Exit 1 unless every child is ready (for health checks).
        #[arg(long)]
        check: bool,
    },
    /// Restart one child by name (`udp-0`, `tcp-0`, `dbagent`).
    Restart { name: String },
    /// Re-read the configuration and apply what can change live.
    Reload,
    /// Refuse new calls and registrations (503) and let in-flight ones finish.
    Drain,
    /// Stop the server gracefully.
    Stop,
}

#[derive(Args)]
pub struct ChildArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    bus: PathBuf,
    #[arg(long)]
    parent: u32,
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    child: ChildArgs,
    #[arg(long)]
    listen: usize,
    #[arg(long)]
    fd: Option<i32>,
    #[arg(long)]
    udp_fd: Option<i32>,
    #[arg(long)]
    claims_fd: Option<i32>,
    #[arg(long)]
    mailbox_fd: Option<i32>,
    /// Another UDP worker sharing the socket and the descriptor posting to it: `udp-1=9`.
    #[arg(long = "peer", value_parser = peer_link)]
    peers: Vec<(String, i32)>,
}

fn peer_link(s: &str) -> Result<(String, i32), String> {
    let (name, fd) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=DESCRIPTOR, got {s:?}"))?;
    let fd = fd
        .parse()
        .map_err(|_| format!("descriptor {fd:?} is not a number"))?;
    Ok((name.to_owned(), fd))
}

/// Logs to stderr. Under systemd (JOURNAL_STREAM set) journald adds its own timestamps.
fn report(role: &str, err: &dyn std::error::Error) -> ExitCode {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    tracing::error!(role, "{msg}");
    eprintln!("sipcraft {role}: {msg}");
    ExitCode::FAILURE
}

pub fn run_supervisor(config: &Path) -> ExitCode {
    // `[server] log_level` applies unless RUST_LOG says otherwise; children inherit it
    // through the environment. (Set before any thread exists.)
    if std::env::var_os("RUST_LOG").is_none() {
        if let Ok(c) = sipcraft_config::load(config) {
            std::env::set_var("RUST_LOG", c.server.log_level.as_str());
        }
    }
    crate::logging::init();
    // One thread: the supervisor's work is small and comes in bursts (a frame in, the same
    // frame out to every child), and handing it between threads cost more context switches
    // than the work itself. What could block (a snapshot, reading the configuration on
    // reload) runs on tokio's blocking pool; spawning runs on its own thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("supervisor")
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(sipcraft_supervisor::run(config.to_owned())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report("supervisor", &e),
    }
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Test hook: a child whose name is in SIPCRAFT_FAULT_EXIT (comma separated) exits with
/// status 3 as soon as it starts, so tests can drive a real crash loop.
fn fault_point(name: &str) -> Option<ExitCode> {
    let list = std::env::var("SIPCRAFT_FAULT_EXIT").ok()?;
    list.split(',').any(|n| n == name).then(|| {
        eprintln!("sipcraft {name}: exiting at start (SIPCRAFT_FAULT_EXIT)");
        ExitCode::from(3)
    })
}

pub fn run_worker(args: WorkerArgs) -> ExitCode {
    use tracing::Instrument;
    if let Some(code) = fault_point(&args.child.name) {
        return code;
    }
    crate::logging::init();
    crate::sched::worker();
    let span = tracing::info_span!("worker", name = %args.child.name);
    let worker = sipcraft_sipworker::Args {
        name: args.child.name,
        bus: args.child.bus,
        parent: args.child.parent,
        listen: args.listen,
        fd: args.fd,
        udp_fd: args.udp_fd,
        claims_fd: args.claims_fd,
        mailbox_fd: args.mailbox_fd,
        peers: args.peers,
        give_back: crate::pages::give_back,
    };
    match child_runtime().block_on(sipcraft_sipworker::run(worker).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report("worker", &e),
    }
}

pub fn run_dbagent(args: ChildArgs) -> ExitCode {
    use tracing::Instrument;
    if let Some(code) = fault_point(&args.name) {
        return code;
    }
    crate::logging::init();
    crate::sched::dbagent();
    let span = tracing::info_span!("dbagent");
    let agent = sipcraft_dbagent::Args {
        name: args.name,
        bus: args.bus,
        parent: args.parent,
    };
    match child_runtime().block_on(sipcraft_dbagent::run(agent).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report("dbagent", &e),
    }
}

pub fn ctl(args: CtlArgs) -> ExitCode {
    let socket = match (args.socket, args.config) {
        (Some(socket), _) => socket,
        (None, config) => {
            let path = config.unwrap_or_else(|| PathBuf::from(crate::DEFAULT_CONFIG));
            // Read leniently: `ctl` must reach a running server even when someone has since
            // broken another part of the file (that is when `ctl reload` must report it).
            match sipcraft_config::runtime_dir(&path) {
                Ok(dir) => sipcraft_ipc::conn::endpoint(&dir, "control"),
                Err(why) => {
                    eprintln!(
                        "sipcraft ctl: cannot find the control socket from {}:\n{why}",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let mut check_ready = false;
    let (request, json) = match args.command {
        CtlCommand::Status { json, check } => {
            check_ready = check;
            (ControlRequest::Status, json)
        }
        CtlCommand::Restart { name } => (ControlRequest::Restart { name }, false),
        CtlCommand::Reload => (ControlRequest::Reload, false),
        CtlCommand::Drain => (ControlRequest::Drain, false),
        CtlCommand::Stop => (ControlRequest::Stop, false),
    };
    let result = child_runtime().block_on(sipcraft_supervisor::ctl::request(&socket, request));
    match result {
        Ok(ControlResponse::Status(status)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status is JSON")
                );
            } else {
                print!("{}", sipcraft_supervisor::ctl::status_table(&status));
            }
            let all_ready = status
                .children
                .iter()
                .all(|c| c.state == sipcraft_ipc::wire::ChildState::Ready);
            if check_ready && !all_ready {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(ControlResponse::Done(msg)) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Ok(ControlResponse::Failed(msg)) => {
            eprintln!("sipcraft ctl: {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("sipcraft ctl: {msg}");
            ExitCode::FAILURE
        }
    }
}
