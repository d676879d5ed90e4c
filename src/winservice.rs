//! The supervisor as a Windows service: `sipcraft service install | uninstall | run`.
//!
//! `install` registers the service "sipcraft" with the service control manager (SCM),
//! starting automatically at boot and running `sipcraft service run -c FILE`. `run` is what
//! the SCM starts: it hands the SCM a control handler, runs the supervisor until the SCM
//! says Stop or Shutdown, and then stops it in order, exactly as SIGTERM does on Unix,
//! reporting StartPending, Running, StopPending and Stopped on the way. A service has no
//! console, so the supervisor and every child log to one file (`--log`, by default
//! `sipcraft.log` beside the configuration file). See docs/windows.md.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use sipcraft_supervisor::Phase;
use tokio::sync::watch;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The service's name for the SCM: `sc.exe query sipcraft`, `net start sipcraft`.
const SERVICE_NAME: &str = "sipcraft";
const DISPLAY_NAME: &str = "sipcraft SIP server";
const DESCRIPTION: &str =
    "Enterprise SIP registrar, location service and call router (sipcraft supervisor)";
const SERVICE_TYPE: ServiceType = ServiceType::OWN_PROCESS;

/// Children not all ready after this long: the service is reported Running anyway, so that
/// the SCM can still stop it (it sends no control to a service that is StartPending).
const START_GRACE: Duration = Duration::from_secs(30);
/// While StartPending or StopPending, progress is reported every second with this hint.
const PENDING_WAIT_HINT: Duration = Duration::from_secs(5);
/// How long `uninstall` waits for a running service to stop.
const UNINSTALL_STOP_WAIT: Duration = Duration::from_secs(60);

/// Service-specific exit codes, shown by `sc.exe query sipcraft` and in the event log.
const EXIT_SUPERVISOR_FAILED: u32 = 1;
const EXIT_NO_LOG: u32 = 2;
const EXIT_NO_RUNTIME: u32 = 3;

/// Win32 errors these commands explain.
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
const ERROR_SERVICE_EXISTS: i32 = 1073;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Register the "sipcraft" service (automatic start, LocalSystem). Needs Administrator.
    Install {
        #[arg(short, long, default_value = crate::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log file of the service and its children [default: sipcraft.log beside the
        /// configuration file].
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Stop the service if it is running and remove it. Needs Administrator.
    Uninstall,
    /// What the installed service runs; the SCM starts it (in a console use `sipcraft run`).
    Run {
        #[arg(short, long, default_value = crate::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log file of the service and its children [default: sipcraft.log beside the
        /// configuration file].
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

pub fn main(command: ServiceCommand) -> ExitCode {
    let result = match command {
        ServiceCommand::Install { config, log } => install(&config, log.as_deref()),
        ServiceCommand::Uninstall => uninstall(),
        ServiceCommand::Run { config, log } => dispatch(config, log),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipcraft service: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A Win32 failure with what to do about it when that is known.
fn explain(e: windows_service::Error, what: &str) -> anyhow::Error {
    let hint = match &e {
        windows_service::Error::Winapi(io) => match io.raw_os_error() {
            Some(ERROR_ACCESS_DENIED) => Some("run it from an elevated (Administrator) prompt"),
            Some(ERROR_SERVICE_EXISTS) => {
                Some("it is installed already; `sipcraft service uninstall` first")
            }
            Some(ERROR_SERVICE_DOES_NOT_EXIST) => Some("it is not installed"),
            Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => Some(
                "`service run` is started by the service control manager; \
                 in a console use `sipcraft run -c FILE`",
            ),
            _ => None,
        },
        _ => None,
    };
    let context = match hint {
        Some(hint) => format!("{what} ({hint})"),
        None => what.to_owned(),
    };
    anyhow::Error::new(e).context(context)
}

fn install(config: &Path, log: Option<&Path>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    // The SCM starts services in C:\Windows\System32: every path handed down is absolute.
    // (`absolute`, not `canonicalize`: a \\?\ path would not resolve the `..` of a relative
    // runtime_dir in the configuration.)
    let config = std::path::absolute(config)
        .with_context(|| format!("bad configuration path {}", config.display()))?;
    if !config.is_file() {
        eprintln!(
            "sipcraft service: warning: {} does not exist yet; the service will not start \
             until it does (`sipcraft config check` it first)",
            config.display()
        );
    }
    let mut arguments: Vec<OsString> = vec![
        "service".into(),
        "run".into(),
        "-c".into(),
        config.clone().into_os_string(),
    ];
    if let Some(log) = log {
        let log =
            std::path::absolute(log).with_context(|| format!("bad log path {}", log.display()))?;
        arguments.push("--log".into());
        arguments.push(log.into_os_string());
    }

    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| explain(e, "cannot open the service control manager"))?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: SERVICE_TYPE,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: arguments,
        dependencies: Vec::new(),
        account_name: None, // LocalSystem
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(|e| explain(e, "cannot install the sipcraft service"))?;
    service
        .set_description(DESCRIPTION)
        .map_err(|e| explain(e, "cannot set the service description"))?;
    // The supervisor restarts its children; the SCM restarts the supervisor if it fails
    // (also when it exits with an error rather than crashing).
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        })
        .and_then(|()| service.set_failure_actions_on_non_crash_failures(true))
        .map_err(|e| explain(e, "cannot set the service's recovery actions"))?;

    println!(
        "installed the {SERVICE_NAME} service (automatic start): {} service run -c {}",
        exe.display(),
        config.display()
    );
    println!("start it with `sc.exe start {SERVICE_NAME}` (or reboot)");
    Ok(())
}

fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| explain(e, "cannot open the service control manager"))?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| explain(e, "cannot open the sipcraft service"))?;
    let state = |s: &windows_service::service::Service| {
        s.query_status()
            .map(|status| status.current_state)
            .map_err(|e| explain(e, "cannot query the sipcraft service"))
    };
    if state(&service)? != ServiceState::Stopped {
        println!("stopping the {SERVICE_NAME} service");
        match service.stop() {
            Ok(_) => {}
            Err(windows_service::Error::Winapi(e))
                if e.raw_os_error() == Some(ERROR_SERVICE_NOT_ACTIVE) => {}
            Err(e) => eprintln!(
                "sipcraft service: warning: {:#}",
                explain(e, "could not stop the service")
            ),
        }
        let asked = Instant::now();
        while state(&service)? != ServiceState::Stopped {
            if asked.elapsed() > UNINSTALL_STOP_WAIT {
                eprintln!(
                    "sipcraft service: warning: the service has not stopped after {}s; \
                     it is removed once it does",
                    UNINSTALL_STOP_WAIT.as_secs()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    service
        .delete()
        .map_err(|e| explain(e, "cannot remove the sipcraft service"))?;
    println!("removed the {SERVICE_NAME} service");
    Ok(())
}

/// The configuration and log file of `service run`, for the SCM's thread.
static SERVICE_ARGS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// `service run`: connects this process to the SCM, which calls `service_main` on a thread
/// of its own; returns when the service has stopped.
fn dispatch(config: PathBuf, log: Option<PathBuf>) -> anyhow::Result<()> {
    let config = std::path::absolute(&config).unwrap_or(config);
    let log = log.unwrap_or_else(|| config.with_file_name("sipcraft.log"));
    let _ = SERVICE_ARGS.set((config, log));
    // Children write to the log file too: no terminal colour codes in it (tracing-subscriber
    // honours NO_COLOR). Set before any other thread exists.
    std::env::set_var("NO_COLOR", "1");
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)
        .map_err(|e| explain(e, "cannot connect to the service control manager"))
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    let Some((config, log)) = SERVICE_ARGS.get() else {
        return;
    };
    if let Err(e) = serve(config, log) {
        // Nothing to tell but the log, if it is open.
        tracing::error!(error = %chain(&e), "service control manager");
    }
}

/// Runs the supervisor under the SCM: the whole life of the service.
fn serve(config: &Path, log: &Path) -> windows_service::Result<()> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let status = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            stop_tx.send_replace(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    status.set_service_status(service_status(ServiceState::StartPending, 1))?;

    let exit = match start_logging(log) {
        // No log and no console: the exit code is all the SCM can show.
        Err(_) => ServiceExitCode::ServiceSpecific(EXIT_NO_LOG),
        Ok(()) => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("supervisor")
            .enable_all()
            .build()
        {
            Err(e) => {
                tracing::error!(error = %e, "cannot start the tokio runtime");
                ServiceExitCode::ServiceSpecific(EXIT_NO_RUNTIME)
            }
            Ok(runtime) => {
                tracing::info!(config = %config.display(), "starting as the {SERVICE_NAME} service");
                let stop = async move {
                    // The handler lives as long as the process; a closed channel is no stop.
                    if stop_rx.wait_for(|stop| *stop).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                let result = runtime.block_on(async {
                    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
                    let reporting = tokio::spawn(report_phases(status, phase_rx));
                    let result =
                        sipcraft_supervisor::run_until(config.to_owned(), stop, Some(phase_tx))
                            .await;
                    reporting.abort();
                    let _ = reporting.await;
                    result
                });
                match result {
                    Ok(()) => ServiceExitCode::NO_ERROR,
                    Err(e) => {
                        tracing::error!("{}", chain(&e));
                        ServiceExitCode::ServiceSpecific(EXIT_SUPERVISOR_FAILED)
                    }
                }
            }
        },
    };
    status.set_service_status(ServiceStatus {
        exit_code: exit,
        ..service_status(ServiceState::Stopped, 0)
    })
}

/// Follows the supervisor's [`Phase`] with the SCM: StartPending (progress every second)
/// until every child has been ready, Running, then StopPending (progress every second).
async fn report_phases(status: ServiceStatusHandle, mut phase: watch::Receiver<Phase>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported: Option<ServiceState> = None;
    let mut checkpoint = 0;
    loop {
        let now = *phase.borrow_and_update();
        let state = match now {
            Phase::Starting if started.elapsed() < START_GRACE => ServiceState::StartPending,
            Phase::Starting | Phase::Ready => ServiceState::Running,
            Phase::Stopping => ServiceState::StopPending,
        };
        checkpoint = if reported == Some(state) {
            checkpoint + 1
        } else {
            1
        };
        if state != ServiceState::Running || reported != Some(state) {
            if state == ServiceState::Running && now == Phase::Starting {
                tracing::warn!(
                    "not every child is ready after {}s; reporting the service as running \
                     so that it can be stopped (see `sipcraft ctl status`)",
                    START_GRACE.as_secs()
                );
            }
            if let Err(e) = status.set_service_status(service_status(state, checkpoint)) {
                tracing::warn!(error = %chain(&e), ?state, "cannot report the service status");
            }
            reported = Some(state);
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

fn service_status(state: ServiceState, checkpoint: u32) -> ServiceStatus {
    let pending = matches!(
        state,
        ServiceState::StartPending | ServiceState::StopPending
    );
    ServiceStatus {
        service_type: SERVICE_TYPE,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: ServiceExitCode::NO_ERROR,
        checkpoint: if pending { checkpoint } else { 0 },
        wait_hint: if pending {
            PENDING_WAIT_HINT
        } else {
            Duration::ZERO
        },
        process_id: None,
    }
}

/// The supervisor logs to `path`, and so does every child it starts.
fn start_logging(path: &Path) -> std::io::Result<()> {
    use tracing_subscriber::EnvFilter;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::options().create(true).append(true).open(path)?;
    sipcraft_supervisor::process::set_child_output(file.try_clone()?);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(())
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
