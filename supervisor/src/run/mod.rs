//! The supervisor's main loop: one task owns the child table and every decision about it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_config::{Config, Transport};
use sipcraft_ipc::conn;
use sipcraft_ipc::state::Update;
use sipcraft_ipc::wire::{ChildState, ToChild};
use tokio::sync::{mpsc, watch};

use crate::bus::{self, BusEvent, Hub, Outgoing};
use crate::children::{Child, Kind};
use crate::control::{self, ControlEvent};
use crate::notify::Notifier;
use crate::process::{self, Exit, SpawnRequest, Spawner};
use crate::Error;

mod commands;
mod signals;
mod stop;
mod udp_shared;

use signals::{Sig, Signals};
use stop::StopPlan;
use udp_shared::UdpShared;

/// A ready child that sends nothing for this long is hung and is killed.
const HUNG_AFTER: Duration = Duration::from_secs(10);
/// How often the main loop looks at timers.
const TICK: Duration = Duration::from_millis(50);

/// Runs the supervisor until it is stopped (SIGTERM, SIGINT or `ctl stop`).
pub async fn run(config_path: PathBuf) -> Result<(), Error> {
    run_until(config_path, std::future::pending(), None).await
}

/// Where the supervisor is in its life, for a service manager other than systemd (the
/// Windows service control manager): what sd_notify's READY=1 and STOPPING=1 say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting the children; not every one has been ready yet.
    Starting,
    /// Every child has been ready once.
    Ready,
    /// An orderly stop is in progress; `run_until` returns when it is done.
    Stopping,
}

/// [`run`], with one more way to stop it from outside: when `stop` completes, the supervisor
/// stops in order exactly as on SIGTERM or `ctl stop` (signals and `ctl stop` still work).
/// `phase`, when given, follows the supervisor through [`Phase`].
pub async fn run_until(
    config_path: PathBuf,
    stop: impl Future<Output = ()> + Send,
    phase: Option<watch::Sender<Phase>>,
) -> Result<(), Error> {
    let mut config = sipcraft_config::load(&config_path).map_err(Error::Config)?;
    prepare_dir(&config.server.runtime_dir, true)?;
    prepare_dir(&config.server.state_dir, false)?;

    #[cfg(unix)]
    let sockets = config
        .listen
        .iter()
        .map(crate::sockets::bind)
        .collect::<Result<Vec<_>, _>>()?;

    let hub = Hub::new();
    // Stand-alone: the file is the source of extensions, and the supervisor already has it
    // parsed, so it seeds the replicated state itself. From here on the hub's replica is the
    // supervisor's only copy of them; `config.extensions` stays empty.
    let extensions = std::mem::take(&mut config.extensions);
    let extensions_fingerprint = fingerprint(&extensions);
    if config.database.is_none() {
        hub.publish(Update::ExtensionsReplaced(extensions));
    }

    let bus_path = conn::endpoint(&config.server.runtime_dir, "bus");
    let bus_listener = conn::listen(&bus_path).map_err(|source| Error::Listen {
        what: "bus",
        source,
    })?;
    let control_path = conn::endpoint(&config.server.runtime_dir, "control");
    let control_listener = conn::listen(&control_path).map_err(|source| Error::Listen {
        what: "control",
        source,
    })?;

    let exe = process::own_executable().map_err(Error::Spawner)?;
    let spawner = Spawner::start(exe).map_err(Error::Spawner)?;

    let (exit_tx, exits) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = process::reap(exit_tx).await {
            tracing::error!(error = %e, "child reaper failed");
        }
    });
    let (bus_tx, bus_events) = mpsc::unbounded_channel();
    tokio::spawn(accept_children(bus_listener, hub.clone(), bus_tx));
    let (ctl_tx, ctl_events) = mpsc::unbounded_channel();
    tokio::spawn(control::serve(control_listener, ctl_tx));

    let children = child_table(&config);
    let udp = UdpShared::new(&config, &children)?;
    let signals = Signals::install().map_err(Error::Signals)?;
    let mut sup = Supervisor {
        config_path,
        children,
        hub,
        spawner,
        bus_path,
        #[cfg(unix)]
        sockets,
        udp,
        started: Instant::now(),
        notifier: Notifier::from_env(),
        ready_sent: false,
        last_status_line: String::new(),
        last_watchdog: Instant::now(),
        stopping: None,
        draining: false,
        secret: instance_secret()?,
        phase,
        config,
        extensions_fingerprint,
    };
    tracing::info!(
        pid = std::process::id(),
        children = sup.children.len(),
        control = %control_path.display(),
        "supervisor starting"
    );
    let stop = std::pin::pin!(stop);
    sup.main_loop(exits, bus_events, ctl_events, signals, stop)
        .await;
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(&sup.bus_path);
    tracing::info!("supervisor stopped");
    Ok(())
}

fn instance_secret() -> Result<Vec<u8>, Error> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| Error::Spawner(std::io::Error::other(e.to_string())))?;
    Ok(secret)
}

fn prepare_dir(path: &Path, private: bool) -> Result<(), Error> {
    let err = |source| Error::CreateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// The dbagent first, then the workers: `udp-0`, `udp-1`, `tcp-0`, numbered per transport.
fn child_table(config: &Config) -> Vec<Child> {
    let policy = &config.supervisor;
    let mut children = vec![Child::new("dbagent".into(), Kind::DbAgent, policy)];
    let mut counters = std::collections::HashMap::<Transport, usize>::new();
    for (listen, entry) in config.listen.iter().enumerate() {
        let workers = entry.workers;
        // Windows has no SO_REUSEPORT and each worker binds its own socket there: a second
        // worker on the same address could only fail to bind, again and again.
        #[cfg(windows)]
        let workers = {
            if workers > 1 {
                tracing::warn!(
                    transport = entry.transport.as_str(),
                    address = %entry.address,
                    configured = workers,
                    "Windows: one worker per listen address"
                );
            }
            workers.min(1)
        };
        for socket in 0..workers {
            let n = counters.entry(entry.transport).or_default();
            let name = format!("{}-{}", entry.transport.as_str(), n);
            *n += 1;
            children.push(Child::new(name, Kind::Worker { listen, socket }, policy));
        }
    }
    children
}

async fn accept_children(
    listener: sipcraft_ipc::Listener,
    hub: Arc<Hub>,
    events: mpsc::UnboundedSender<BusEvent>,
) {
    loop {
        match conn::accept(&listener).await {
            Ok((reader, writer)) => {
                tokio::spawn(bus::serve(hub.clone(), reader, writer, events.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "bus accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Supervisor {
    config_path: PathBuf,
    config: Config,
    children: Vec<Child>,
    hub: Arc<Hub>,
    spawner: Spawner,
    bus_path: PathBuf,
    #[cfg(unix)]
    sockets: Vec<Vec<socket2::Socket>>,
    /// The claim table and mail links of the UDP workers that share a socket.
    #[cfg_attr(not(unix), allow(dead_code))]
    udp: UdpShared,
    started: Instant,
    notifier: Notifier,
    ready_sent: bool,
    last_status_line: String,
    last_watchdog: Instant,
    stopping: Option<StopPlan>,
    draining: bool,
    /// Told about readiness and stopping, for a caller of [`run_until`].
    phase: Option<watch::Sender<Phase>>,
    /// Random per instance, shared with every child (digest nonces).
    secret: Vec<u8>,
    /// [`fingerprint`] of the extensions the file gave at start or last reload: a reload
    /// republishes them only when they changed. (`config.extensions` is kept empty: with
    /// 100,000 extensions, a second copy next to the hub's replica cost tens of MB.)
    extensions_fingerprint: u64,
}

/// A 64-bit fingerprint of an extension list (its JSON, secrets included, through SipHash).
fn fingerprint(extensions: &[sipcraft_config::Extension]) -> u64 {
    use std::hash::Hasher;
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(std::collections::hash_map::DefaultHasher::new());
    // Writing into a hasher cannot fail, nor can encoding these plain structs.
    let _ = serde_json::to_writer(&mut w, extensions);
    w.0.finish()
}

impl Supervisor {
    async fn main_loop(
        &mut self,
        mut exits: mpsc::UnboundedReceiver<Exit>,
        mut bus_events: mpsc::UnboundedReceiver<BusEvent>,
        mut ctl_events: mpsc::UnboundedReceiver<ControlEvent>,
        mut signals: Signals,
        mut stop: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) {
        for i in 0..self.children.len() {
            self.start(i).await;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_requested = false;
        loop {
            tokio::select! {
                Some(exit) = exits.recv() => self.on_exit(exit),
                Some(ev) = bus_events.recv() => self.on_bus(ev),
                Some(ev) = ctl_events.recv() => {
                    let response = self.on_control(ev.request).await;
                    let _ = ev.reply.send(response);
                }
                sig = signals.next() => match sig {
                    Sig::Stop if self.stopping.is_some() => {
                        tracing::warn!("second stop signal: killing every child now");
                        self.kill_all();
                    }
                    Sig::Stop => self.begin_stop("signal"),
                    #[cfg(unix)]
                    Sig::Reload => {
                        let _ = self.reload().await;
                    }
                },
                () = &mut stop, if !stop_requested => {
                    stop_requested = true;
                    self.begin_stop("stop requested by the service manager");
                }
                _ = tick.tick() => {
                    if self.on_tick().await {
                        return;
                    }
                }
            }
        }
    }

    async fn start(&mut self, i: usize) {
        let args = self.child_args(i);
        let request = SpawnRequest {
            args,
            #[cfg(unix)]
            inherit_fds: match self.children[i].kind {
                Kind::Worker { listen, socket } => {
                    use std::os::fd::AsRawFd;
                    let mut fds = vec![self.sockets[listen][socket].as_raw_fd()];
                    fds.extend(self.shared_udp_fd(listen));
                    fds.extend(self.udp.for_child(&self.children, i).0);
                    fds
                }
                Kind::DbAgent => Vec::new(),
            },
        };
        let child = &mut self.children[i];
        let restarting = child.started_at.is_some();
        child.restart_at = None;
        child.restart_now = false;
        match self.spawner.spawn(request).await {
            Ok(pid) => {
                let child = &mut self.children[i];
                if restarting {
                    child.restarts += 1;
                }
                child.pid = Some(pid);
                child.started_at = Some(Instant::now());
                child.last_seen = Instant::now();
                child.health = Default::default();
                if child.state != ChildState::CrashLoop {
                    child.state = ChildState::Starting;
                }
                tracing::info!(child = %child.name, pid, restarts = child.restarts, "child started");
            }
            Err(e) => {
                tracing::error!(child = %self.children[i].name, error = %e, "could not start child");
                self.after_exit(i, format!("could not start: {e}"), Duration::ZERO);
            }
        }
    }

    fn child_args(&self, i: usize) -> Vec<std::ffi::OsString> {
        let child = &self.children[i];
        let mut args: Vec<std::ffi::OsString> = match child.kind {
            Kind::DbAgent => vec!["dbagent".into()],
            Kind::Worker { listen, .. } => vec![
                "worker".into(),
                "--listen".into(),
                listen.to_string().into(),
            ],
        };
        args.extend([
            "--name".into(),
            child.name.clone().into(),
            "--bus".into(),
            self.bus_path.clone().into_os_string(),
            "--parent".into(),
            std::process::id().to_string().into(),
        ]);
        #[cfg(unix)]
        if let Kind::Worker { listen, socket } = child.kind {
            use std::os::fd::AsRawFd;
            args.extend([
                "--fd".into(),
                self.sockets[listen][socket].as_raw_fd().to_string().into(),
            ]);
            if let Some(fd) = self.shared_udp_fd(listen) {
                args.extend(["--udp-fd".into(), fd.to_string().into()]);
            }
            args.extend(self.udp.for_child(&self.children, i).1);
        }
        args
    }

    /// For a TCP worker: a UDP listen socket to send to UDP phones from the server's port
    /// (the first UDP socket of the same address family; the UDP worker that owns it keeps
    /// receiving on it, the TCP worker only sends).
    #[cfg(unix)]
    fn shared_udp_fd(&self, listen: usize) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let me = &self.config.listen[listen];
        if me.transport == Transport::Udp {
            return None;
        }
        let same_family =
            |l: &&sipcraft_config::Listen| l.address.is_ipv4() == me.address.is_ipv4();
        let udp = self
            .config
            .listen
            .iter()
            .enumerate()
            .filter(|(_, l)| l.transport == Transport::Udp);
        let (i, _) = udp
            .clone()
            .find(|(_, l)| same_family(l))
            .or_else(|| udp.clone().next())?;
        self.sockets.get(i)?.first().map(|s| s.as_raw_fd())
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(i) = self.children.iter().position(|c| c.pid == Some(exit.pid)) else {
            tracing::debug!(pid = exit.pid, reason = %exit.reason, "reaped a process that is not ours");
            return;
        };
        let uptime = self.children[i]
            .started_at
            .map_or(Duration::ZERO, |t| t.elapsed());
        let child = &self.children[i];
        if self.stopping.is_some()
            || (exit.clean && child.state == ChildState::Draining && self.draining)
        {
            tracing::info!(child = %child.name, pid = exit.pid, reason = %exit.reason, "child stopped");
        } else {
            tracing::warn!(child = %child.name, pid = exit.pid, reason = %exit.reason, "child exited");
        }
        self.after_exit(i, exit.reason, uptime);
    }

    fn after_exit(&mut self, i: usize, reason: String, uptime: Duration) {
        let stopping = self.stopping.is_some();
        let child = &mut self.children[i];
        child.pid = None;
        child.link = None;
        child.last_exit = Some(reason);
        if stopping {
            child.state = ChildState::Stopped;
            return;
        }
        if child.restart_now {
            child.state = ChildState::Backoff;
            child.restart_at = Some(Instant::now());
            return;
        }
        let (delay, crash_loop) = child.backoff.on_exit(uptime);
        child.restart_at = Some(Instant::now() + delay);
        if crash_loop {
            if child.state != ChildState::CrashLoop {
                tracing::error!(
                    child = %child.name,
                    delay_ms = delay.as_millis() as u64,
                    "CRASH LOOP: child keeps exiting soon after start; still retrying with backoff"
                );
            }
            child.state = ChildState::CrashLoop;
        } else {
            child.state = ChildState::Backoff;
            tracing::info!(child = %child.name, delay_ms = delay.as_millis() as u64, "restarting after backoff");
        }
    }

    fn on_bus(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Joined {
                name,
                pid,
                role,
                link,
                reply,
            } => {
                let slice = self.slice();
                let Some(child) = self.children.iter_mut().find(|c| c.name == name) else {
                    let _ = reply.send(Err(format!("no child named {name} in this supervisor")));
                    return;
                };
                if child.pid != Some(pid) || child.role() != role {
                    let _ = reply.send(Err(format!(
                        "pid {pid} is not the {} this supervisor started as {name}",
                        role.as_str()
                    )));
                    return;
                }
                child.link = Some(link.clone());
                child.bus_open = Some(link);
                child.last_seen = Instant::now();
                let _ = reply.send(Ok((slice, self.secret.clone())));
                if self.draining {
                    self.tell(&name, ToChild::Drain);
                }
            }
            BusEvent::Ready { name } => {
                let draining = self.draining;
                if let Some(child) = self.children.iter_mut().find(|c| c.name == name) {
                    child.last_seen = Instant::now();
                    child.was_ready = true;
                    child.state = if draining {
                        ChildState::Draining
                    } else {
                        ChildState::Ready
                    };
                    let ms = child
                        .started_at
                        .map_or(0, |t| t.elapsed().as_millis() as u64);
                    tracing::info!(child = %name, pid = child.pid, after_ms = ms, "child ready");
                }
                if !self.ready_sent && self.children.iter().all(|c| c.was_ready) {
                    self.ready_sent = true;
                    self.notifier.ready();
                    self.set_phase(Phase::Ready);
                    tracing::info!(
                        after_ms = self.started.elapsed().as_millis() as u64,
                        "all children ready"
                    );
                }
            }
            BusEvent::Health { name, health } => {
                if let Some(child) = self.children.iter_mut().find(|c| c.name == name) {
                    child.last_seen = Instant::now();
                    if health.alarm != child.health.alarm {
                        if let Some(alarm) = &health.alarm {
                            tracing::error!(child = %name, %alarm, "ALARM");
                        }
                    }
                    child.health = health;
                }
            }
            BusEvent::Left { name, link } => {
                if let Some(child) = self.children.iter_mut().find(|c| c.name == name) {
                    if child.link.as_ref().is_some_and(|l| l.same_channel(&link)) {
                        child.link = None;
                    }
                    if child
                        .bus_open
                        .as_ref()
                        .is_some_and(|l| l.same_channel(&link))
                    {
                        child.bus_open = None;
                    }
                }
            }
        }
    }

    /// The configuration a child receives: extensions travel as replicated state (and
    /// `config.extensions` is empty anyway).
    fn slice(&self) -> Box<Config> {
        Box::new(self.config.clone())
    }

    fn tell(&self, name: &str, msg: ToChild) -> bool {
        self.children
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.link.as_ref())
            .is_some_and(|l| l.try_send(Outgoing::Msg(Box::new(msg))).is_ok())
    }

    fn set_phase(&self, phase: Phase) {
        if let Some(tx) = &self.phase {
            tx.send_replace(phase);
        }
    }

    /// Timers: restarts due, watchdog, hung children, stop progress. True when done.
    async fn on_tick(&mut self) -> bool {
        let now = Instant::now();
        if let Some(every) = self.notifier.watchdog_every {
            if now.duration_since(self.last_watchdog) >= every {
                self.notifier.watchdog();
                self.last_watchdog = now;
            }
        }
        self.update_status_line();
        if self.stopping.is_some() {
            return self.stop_progress(now);
        }
        for i in 0..self.children.len() {
            let child = &mut self.children[i];
            match (child.pid, child.restart_at) {
                (None, Some(at)) if at <= now => self.start(i).await,
                (Some(pid), Some(at)) if child.restart_now && at <= now => {
                    tracing::warn!(child = %child.name, pid, "did not stop when asked; killing it");
                    process::kill(pid);
                    child.restart_at = None;
                }
                (Some(pid), _)
                    if child.state == ChildState::Ready
                        && now.duration_since(child.last_seen) > HUNG_AFTER =>
                {
                    tracing::error!(child = %child.name, pid, "HUNG: no message for {HUNG_AFTER:?}; killing it");
                    process::kill(pid);
                    child.last_seen = now;
                }
                _ => {}
            }
        }
        false
    }

    fn update_status_line(&mut self) {
        let ready = self
            .children
            .iter()
            .filter(|c| c.state == ChildState::Ready)
            .count();
        let looping = self
            .children
            .iter()
            .filter(|c| c.state == ChildState::CrashLoop)
            .count();
        let mut line = format!("{ready}/{} children ready", self.children.len());
        if looping > 0 {
            line.push_str(&format!(", {looping} in crash loop"));
        }
        if self.draining {
            line.push_str(", draining");
        }
        if self.stopping.is_some() {
            line.push_str(", stopping");
        }
        if line != self.last_status_line {
            self.notifier.status(&line);
            self.last_status_line = line;
        }
    }
}
