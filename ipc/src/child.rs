//! The child side of the bus: join, receive the configuration and a snapshot, then follow
//! numbered updates. Shared by the SIP workers and the dbagent.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sipcraft_config::Config;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{self, ConnError, Reader, Writer};
use crate::state::{Replica, Update};
use crate::wire::{Direct, Envelope, FromChild, Hello, Role, ToChild};

/// Messages a child can queue for the supervisor before the link counts as stuck.
pub const OUTBOX: usize = 8192;

/// How long a change sent with [`Outbox::publish_lazy`] may wait for company. A refresh of a
/// binding that is good for a while yet is not needed elsewhere at once; sent one by one,
/// refreshes cost the supervisor and every other worker a wake-up each, on the CPUs the
/// phones' requests wait for (issue 7). Short enough that a worker killed with -9 loses at
/// most this much of them: the old binding then stays in force until it expires.
pub const LAZY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("could not reach the supervisor's bus")]
    Connect(#[source] ConnError),
    #[error("bus connection failed during the handshake")]
    Handshake(#[source] ConnError),
    #[error("the supervisor refused this process: {0}")]
    Refused(String),
    #[error("the supervisor closed the bus during the handshake")]
    Closed,
    #[error("unexpected message during the handshake: {0}")]
    Unexpected(&'static str),
}

/// What the supervisor tells a running child.
#[derive(Debug)]
pub enum LinkEvent {
    /// An update was applied to the replica (sent only when the child asked to observe).
    Applied {
        seq: u64,
        update: Update,
    },
    /// A new snapshot replaced the replica (after a gap or a lag).
    Resynced {
        seq: u64,
    },
    Deliver {
        from: String,
        msg: Direct,
    },
    /// A message the hub keeps until it is acknowledged with [`FromChild::Persisted`].
    DeliverNumbered {
        num: u64,
        from: String,
        msg: Direct,
    },
    Reload(Box<Config>),
    Drain,
    Stop,
    /// The bus closed: the supervisor is gone, and the child must exit.
    Closed,
}

/// A joined child: its configuration, its replica, a way to talk, and events to handle.
#[derive(Debug)]
pub struct Link {
    pub config: Config,
    /// The instance secret shared by every child of this supervisor.
    pub secret: Vec<u8>,
    pub replica: Arc<RwLock<Replica>>,
    pub outbox: Outbox,
    pub events: mpsc::Receiver<LinkEvent>,
}

/// Sends to the supervisor without ever waiting: a full outbox drops the message.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<Out>);

/// What the writer task takes from the outbox. (Nearly every item is a message, so it is
/// not boxed: a box would cost an allocation per message to save space on a rare marker.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Out {
    Msg(Envelope<FromChild>),
    /// Written with the next `Msg`, or [`LAZY`] after it was queued at the latest.
    Lazy(Envelope<FromChild>),
    /// Everything queued before this is written; then the sender is told.
    Flushed(oneshot::Sender<()>),
}

impl Outbox {
    /// Queues a message; false when it was dropped because the link is full or closed.
    pub fn send(&self, msg: FromChild) -> bool {
        self.0.try_send(Out::Msg(Envelope::new(msg))).is_ok()
    }

    /// Waits until everything queued so far is written to the bus (handed to the kernel: the
    /// supervisor reads it even after this process exits), for `within` at most. A child
    /// calls this before it exits, so nothing it published (a binding it answered 200 for)
    /// dies with its writer task. False when the deadline passed or the link is closed.
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let done = async { self.0.send(Out::Flushed(tx)).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(within, done).await.unwrap_or(false)
    }

    /// Publishes a change to the replicated state.
    pub fn publish(&self, update: Update) -> bool {
        self.send(FromChild::Publish(update))
    }

    /// Queues a message that no other process needs at once: it is written with the next
    /// message, or within [`LAZY`]. Order with every other message is kept, and
    /// [`Outbox::flush`] writes it too.
    pub fn send_lazy(&self, msg: FromChild) -> bool {
        self.0.try_send(Out::Lazy(Envelope::new(msg))).is_ok()
    }

    /// [`Outbox::publish`], lazily (see [`Outbox::send_lazy`]).
    pub fn publish_lazy(&self, update: Update) -> bool {
        self.send_lazy(FromChild::Publish(update))
    }
}

/// Connects to the bus at `bus`, says hello as `role`/`name`, and waits for the welcome and
/// the first snapshot. With `observe`, every applied update is also passed on as an event.
pub async fn join(bus: &Path, role: Role, name: &str, observe: bool) -> Result<Link, LinkError> {
    let (mut reader, mut writer) = conn::connect(bus).await.map_err(LinkError::Connect)?;
    let hello = Envelope::new(FromChild::Hello(Hello::new(role, name)));
    writer.send(&hello).await.map_err(LinkError::Handshake)?;

    let (config, secret) = match recv(&mut reader).await? {
        ToChild::Welcome { config, secret } => (*config, secret),
        ToChild::Refused(reason) => return Err(LinkError::Refused(reason)),
        _ => return Err(LinkError::Unexpected("expected a welcome")),
    };
    let replica = match recv(&mut reader).await? {
        ToChild::SnapshotBegin { seq } => read_snapshot(&mut reader, seq).await?,
        _ => return Err(LinkError::Unexpected("expected a snapshot")),
    };
    let replica = Arc::new(RwLock::new(replica));

    let (out_tx, out_rx) = mpsc::channel(OUTBOX);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    tokio::spawn(write_loop(writer, out_rx));
    let follower = Follower {
        replica: replica.clone(),
        events: ev_tx,
        outbox: Outbox(out_tx.clone()),
        observe,
    };
    tokio::spawn(follower.run(reader));
    Ok(Link {
        config,
        secret,
        replica,
        outbox: Outbox(out_tx),
        events: ev_rx,
    })
}

async fn recv(reader: &mut Reader) -> Result<ToChild, LinkError> {
    match reader.recv::<Envelope<ToChild>>().await {
        Ok(Some(env)) => Ok(env.body),
        Ok(None) => Err(LinkError::Closed),
        Err(e) => Err(LinkError::Handshake(e)),
    }
}

async fn read_snapshot(reader: &mut Reader, seq: u64) -> Result<Replica, LinkError> {
    let mut replica = Replica::from_snapshot(seq, []);
    loop {
        match recv(reader).await? {
            ToChild::Snapshot(part) => replica.absorb(&part),
            ToChild::SnapshotEnd => return Ok(replica),
            _ => return Err(LinkError::Unexpected("expected a snapshot part")),
        }
    }
}

async fn write_loop(mut writer: Writer, mut rx: mpsc::Receiver<Out>) {
    // Set while only lazy messages are queued: when they must be written at the latest.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let first = match due {
            Some(at) => tokio::select! {
                out = rx.recv() => out,
                _ = tokio::time::sleep_until(at) => {
                    due = None;
                    if flush(&mut writer, Vec::new()).await {
                        continue;
                    }
                    return;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            // Every sender is gone: what is left still goes out.
            flush(&mut writer, Vec::new()).await;
            return;
        };
        // Batch whatever else is already queued into one write.
        let mut next = Some(first);
        let mut waiting = Vec::new();
        let mut urgent = false;
        while let Some(out) = next {
            let msg = match out {
                Out::Msg(m) => {
                    urgent = true;
                    m
                }
                Out::Lazy(m) => {
                    due.get_or_insert_with(|| tokio::time::Instant::now() + LAZY);
                    m
                }
                // Answered once what is queued before it is written, below.
                Out::Flushed(done) => {
                    urgent = true;
                    waiting.push(done);
                    next = rx.try_recv().ok();
                    continue;
                }
            };
            if let Err(e) = writer.queue(&msg) {
                tracing::error!(error = %e, "dropping a message that cannot be encoded");
            }
            next = if writer.queued() < conn::BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                urgent = true;
                None
            };
        }
        if urgent {
            due = None;
            if !flush(&mut writer, waiting).await {
                return;
            }
        }
    }
}

/// Writes what is queued, then tells whoever waits for it. False when the bus is broken.
async fn flush(writer: &mut Writer, waiting: Vec<oneshot::Sender<()>>) -> bool {
    if writer.queued() > 0 {
        if let Err(e) = writer.flush().await {
            tracing::warn!(error = %e, "bus write failed");
            return false;
        }
    }
    for done in waiting {
        let _ = done.send(());
    }
    true
}

struct Follower {
    replica: Arc<RwLock<Replica>>,
    events: mpsc::Sender<LinkEvent>,
    outbox: Outbox,
    observe: bool,
}

impl Follower {
    async fn run(self, mut reader: Reader) {
        let mut resyncing = false;
        loop {
            let msg = match reader.recv::<Envelope<ToChild>>().await {
                Ok(Some(env)) => env.body,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bus read failed");
                    break;
                }
            };
            let event = match msg {
                ToChild::Update { seq, update } => {
                    if resyncing {
                        continue;
                    }
                    let result = self
                        .replica
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(seq, &update);
                    match result {
                        Ok(()) if self.observe => LinkEvent::Applied { seq, update },
                        Ok(()) => continue,
                        Err(gap) => {
                            tracing::warn!(%gap, "replica out of step; asking for a snapshot");
                            resyncing = true;
                            self.outbox.send(FromChild::Resync);
                            continue;
                        }
                    }
                }
                ToChild::SnapshotBegin { seq } => match read_snapshot(&mut reader, seq).await {
                    Ok(fresh) => {
                        *self.replica.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                        resyncing = false;
                        LinkEvent::Resynced { seq }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot failed");
                        break;
                    }
                },
                ToChild::Deliver { from, msg } => LinkEvent::Deliver { from, msg },
                ToChild::DeliverNumbered { num, from, msg } => {
                    LinkEvent::DeliverNumbered { num, from, msg }
                }
                ToChild::Reload(config) => LinkEvent::Reload(config),
                ToChild::Drain => LinkEvent::Drain,
                ToChild::Stop => LinkEvent::Stop,
                ToChild::Welcome { .. }
                | ToChild::Refused(_)
                | ToChild::Snapshot(_)
                | ToChild::SnapshotEnd => {
                    tracing::warn!("unexpected message on the bus; ignored");
                    continue;
                }
            };
            if self.events.send(event).await.is_err() {
                return;
            }
        }
        let _ = self.events.send(LinkEvent::Closed).await;
    }
}

/// Ties this process's life to the supervisor that started it: the kernel sends SIGTERM
/// when the supervisor's spawning thread dies, and a supervisor that died before this line
/// ran is caught by comparing the parent pid. Returns false when the parent is already gone.
pub fn guard_parent(parent: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::signal::Signal;
        // Children are re-executed through /proc/self/exe, which names them "exe" in top,
        // pidof and killall; they are sipcraft.
        let _ = nix::sys::prctl::set_name(c"sipcraft");
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
            tracing::warn!(error = %e, "could not set the parent-death signal");
        }
    }
    #[cfg(unix)]
    {
        nix::unistd::getppid().as_raw() as u32 == parent
    }
    #[cfg(not(unix))]
    {
        let _ = parent;
        true
    }
}

/// Resolves when the process is asked to stop by a signal (SIGTERM, or the parent-death
/// signal). SIGINT is left to the supervisor, which stops children in order.
///
/// Create it once, before the main loop, and poll the same future on every pass: the
/// listener is registered on the first poll and sees only signals from then on, so a fresh
/// future per pass costs a registration each time and misses a SIGTERM that arrives while
/// the loop is busy between two passes.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}
