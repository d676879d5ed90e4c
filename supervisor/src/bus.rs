//! The bus hub: every child connects here. The hub numbers replicated-state updates, keeps
//! its own replica (so a restarting child always finds a snapshot, whoever else is dead),
//! fans updates out, and routes messages from one child to another.
//!
//! Nothing here waits on a slow child: updates go through a bounded broadcast channel, and a
//! child that falls behind it is resynced from a fresh snapshot; direct messages to a child
//! whose queue is full are dropped (SIP retransmits).
//!
//! Call records are the exception: the hub numbers each one and keeps it (bounded) until the
//! dbagent acknowledges that number once the record is in its journal on disk. A record the
//! dbagent had not acknowledged when it died, and every record made while it was away, goes
//! to its successor in order. The dbagent stores records idempotently (by record id), so one
//! sent twice does no harm.
//!
//! Each numbered update is encoded once, as the whole `ToChild::Update` frame, and those bytes
//! go to every child unchanged. A child's writer takes everything queued for it when it wakes
//! (updates and direct messages) and writes it with one system call.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sipcraft_ipc::codec;
use sipcraft_ipc::conn::{Reader, Writer};
use sipcraft_ipc::state::{Replica, Update};
use sipcraft_ipc::wire::{check_hello, Direct, Envelope, FromChild, Health, Role, ToChild};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Updates kept for slow children before they must resync from a snapshot.
const UPDATE_BACKLOG: usize = 16 * 1024;
/// Call records held for a child: not yet acknowledged, or waiting for it to come back (a
/// restarting dbagent). Past this, new records are dropped with an alarm.
const HELD_MAX: usize = 10_000;
/// Direct messages queued for one child.
const DIRECT_QUEUE: usize = 4096;
/// Bytes a child's writer gathers before it writes them, at most (it writes sooner when
/// nothing more is queued).
const BATCH_BYTES: usize = 256 * 1024;

/// The dbagent persists what it receives and is in no hurry: its writer lets this much
/// traffic gather before writing, so the dbagent wakes once for many updates, not for each.
/// (Workers get every frame at once: replication and SIP hand-offs are on the call path.)
const DBAGENT_GATHER: Duration = Duration::from_millis(10);

/// How long the echo of a worker's own update may wait for other traffic to that worker. The
/// worker applied the change when it made it; the numbered copy only moves its generation on,
/// so it rides along with the next frame the worker needs instead of waking it by itself.
const ECHO_WAIT: Duration = Duration::from_millis(20);

/// A numbered update as every child receives it: the connection it came from (0: the
/// supervisor) and the encoded `ToChild::Update` frame, shared. The frame is `None` when the
/// update cannot travel as one frame (over the frame limit): every child then resyncs from a
/// snapshot, which carries the state in parts.
#[derive(Debug, Clone)]
struct UpdateFrame {
    origin: u64,
    frame: Option<Arc<[u8]>>,
}

/// Numbers bus connections, to tell a child's own updates from the others'.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// What the writer task of one child sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A message; `ToChild::Stop` and `ToChild::Drain` go out after every update published
    /// before them.
    Msg(Box<ToChild>),
    /// Send a fresh snapshot (the child saw a gap).
    Resync,
}

/// What a child gets when its hello is accepted: its configuration slice and the
/// instance secret.
pub type Welcome = (Box<sipcraft_config::Config>, Vec<u8>);

/// A snapshot, its generation, and the updates that follow it.
type Subscription = (
    u64,
    Vec<sipcraft_ipc::state::SnapshotPart>,
    broadcast::Receiver<UpdateFrame>,
);

/// Events from child connections to the supervisor's main loop.
#[derive(Debug)]
pub enum BusEvent {
    /// A child said hello; the main loop accepts (with the config slice) or refuses it.
    Joined {
        name: String,
        pid: u32,
        role: Role,
        link: mpsc::Sender<Outgoing>,
        reply: oneshot::Sender<Result<Welcome, String>>,
    },
    Ready {
        name: String,
    },
    Health {
        name: String,
        health: Health,
    },
    Left {
        name: String,
        link: mpsc::Sender<Outgoing>,
    },
}

/// The shared replicated state and the routes to every connected child.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<HubState>,
    /// Each connected child's queue, with the bus connection it belongs to.
    routes: RwLock<HashMap<String, Route>>,
    /// Call records by the child they are for, kept until it acknowledges them.
    held: Mutex<HashMap<String, Mailbox>>,
}

#[derive(Debug)]
struct Route {
    connection: u64,
    tx: mpsc::Sender<Outgoing>,
}

/// Call records for one child, oldest first: the first `sent` went to its current
/// connection and await its acknowledgement; the rest wait for it (or for room in its queue).
#[derive(Debug, Default)]
struct Mailbox {
    /// The connection the first `sent` went to.
    connection: Option<u64>,
    queue: VecDeque<Held>,
    sent: usize,
    /// Records dropped because the mailbox was full, since it last had room.
    dropped: u64,
}

#[derive(Debug)]
struct Held {
    num: u64,
    from: String,
    msg: Direct,
}

/// Numbers call records for the life of the supervisor.
static NEXT_RECORD: AtomicU64 = AtomicU64::new(1);

impl Mailbox {
    /// Sends what the connection has not had yet, in order, while its queue takes it.
    fn pump(&mut self, route: Option<&Route>) {
        let Some(route) = route.filter(|r| Some(r.connection) == self.connection) else {
            return;
        };
        while let Some(held) = self.queue.get(self.sent) {
            let deliver = ToChild::DeliverNumbered {
                num: held.num,
                from: held.from.clone(),
                msg: held.msg.clone(),
            };
            if route.tx.try_send(Outgoing::Msg(Box::new(deliver))).is_err() {
                // Full (sent on the next acknowledgement or record) or closed (sent to the
                // next connection).
                break;
            }
            self.sent += 1;
        }
    }

    /// Forgets what `connection` has acknowledged.
    fn acknowledge(&mut self, connection: u64, upto: u64) {
        if self.connection != Some(connection) {
            return;
        }
        while self.sent > 0 && self.queue.front().is_some_and(|h| h.num <= upto) {
            self.queue.pop_front();
            self.sent -= 1;
        }
    }

    /// A new connection (or none): whatever the old one did not acknowledge goes again.
    fn reconnect(&mut self, connection: Option<u64>) {
        if self.sent > 0 {
            tracing::info!(
                records = self.sent,
                "call records not acknowledged by the child that left; sending them again"
            );
        }
        self.connection = connection;
        self.sent = 0;
    }
}

#[derive(Debug)]
struct HubState {
    replica: Replica,
    updates: broadcast::Sender<UpdateFrame>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        let (updates, _) = broadcast::channel(UPDATE_BACKLOG);
        Arc::new(Hub {
            state: Mutex::new(HubState {
                replica: Replica::new(),
                updates,
            }),
            routes: RwLock::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Numbers an update, applies it to the hub's replica and sends it to every child.
    pub fn publish(&self, update: Update) -> u64 {
        self.publish_from(0, update)
    }

    /// [`Hub::publish`] for an update that bus connection `origin` sent.
    fn publish_from(&self, origin: u64, update: Update) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = st.replica.seq() + 1;
        st.replica.apply_local(&update);
        st.replica.set_seq(seq);
        if st.updates.receiver_count() > 0 {
            let frame = encode_update(seq, update);
            let _ = st.updates.send(UpdateFrame { origin, frame });
        }
        seq
    }

    /// A snapshot and a subscription that starts exactly after it.
    fn subscribe(&self) -> Subscription {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (
            st.replica.seq(),
            st.replica.snapshot(),
            st.updates.subscribe(),
        )
    }

    /// (generation, extensions, bindings) for `ctl status`.
    pub fn counts(&self) -> (u64, u64, u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::now_ms();
        st.replica.purge_expired(now);
        (
            st.replica.seq(),
            st.replica.extension_count() as u64,
            st.replica.binding_count() as u64,
        )
    }

    /// Bans in force, one line each, for `ctl status`.
    pub fn bans(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::now_ms();
        let mut lines: Vec<String> = st
            .replica
            .bans(now)
            .map(|b| {
                format!(
                    "{} {} {}s",
                    b.ip,
                    b.reason,
                    (b.until_ms - now).div_ceil(1000)
                )
            })
            .collect();
        lines.sort();
        lines
    }

    fn route(&self, to: &str, from: &str, msg: Direct) -> bool {
        if matches!(msg, Direct::CallRecord(_)) {
            return self.keep(to, from, msg);
        }
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let Some(route) = routes.get(to) else {
            // SIP hand-offs to a child that is away are not kept (retransmissions cover them).
            return false;
        };
        let deliver = ToChild::Deliver {
            from: from.to_owned(),
            msg,
        };
        route.tx.try_send(Outgoing::Msg(Box::new(deliver))).is_ok()
    }

    /// Numbers a call record and keeps it until the child acknowledges it; sends it now when
    /// the child is connected, else when it is back.
    fn keep(&self, to: &str, from: &str, msg: Direct) -> bool {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mailbox = held.entry(to.to_owned()).or_default();
        if mailbox.queue.len() >= HELD_MAX {
            if mailbox.dropped == 0 {
                tracing::error!(
                    %to,
                    held = mailbox.queue.len(),
                    "CALL RECORDS DROPPED: {HELD_MAX} already held for a child that does not \
                     acknowledge them (away, or not keeping up); dropping new ones"
                );
            }
            mailbox.dropped += 1;
            return false;
        }
        if mailbox.dropped > 0 {
            tracing::error!(%to, dropped = mailbox.dropped, "call records held again; this many were dropped");
            mailbox.dropped = 0;
        }
        mailbox.queue.push_back(Held {
            num: NEXT_RECORD.fetch_add(1, Ordering::Relaxed),
            from: from.to_owned(),
            msg,
        });
        mailbox.pump(routes.get(to));
        true
    }

    /// `connection` of child `name` has every call record up to `upto` on disk.
    fn acknowledge(&self, name: &str, connection: u64, upto: u64) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = held.get_mut(name) {
            mailbox.acknowledge(connection, upto);
            mailbox.pump(routes.get(name));
        }
    }

    /// Call records dropped for `name` because too many were held, if any (for the alarm).
    pub fn dropped_records(&self, name: &str) -> u64 {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(name).map_or(0, |m| m.dropped)
    }

    /// Routes to `name` through `connection` from now on (the records held for it go first).
    fn connect(&self, name: &str, connection: u64, tx: mpsc::Sender<Outgoing>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let route = Route { connection, tx };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = held.get_mut(name) {
            mailbox.reconnect(Some(connection));
            mailbox.pump(Some(&route));
        } else {
            held.insert(
                name.to_owned(),
                Mailbox {
                    connection: Some(connection),
                    ..Mailbox::default()
                },
            );
        }
        routes.insert(name.to_owned(), route);
    }

    /// `connection` of `name` closed: unless a newer one took its place, nothing routes to
    /// `name` until it is back, and what it did not acknowledge waits for its successor.
    fn disconnect(&self, name: &str, connection: u64) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes.get(name).is_some_and(|r| r.connection == connection) {
            routes.remove(name);
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = held.get_mut(name) {
            if mailbox.connection == Some(connection) {
                mailbox.reconnect(None);
            }
        }
    }
}

/// The frame of update `seq`, encoded once for every child.
fn encode_update(seq: u64, update: Update) -> Option<Arc<[u8]>> {
    match codec::encode(&Envelope::new(ToChild::Update { seq, update })) {
        Ok(frame) => Some(frame.into()),
        Err(e) => {
            tracing::warn!(seq, error = %e, "update does not fit in one frame; every child resyncs from a snapshot");
            None
        }
    }
}

/// Serves one child connection from hello to close.
pub async fn serve(
    hub: Arc<Hub>,
    mut reader: Reader,
    mut writer: Writer,
    events: mpsc::UnboundedSender<BusEvent>,
) {
    let hello = match reader.recv::<Envelope<FromChild>>().await {
        Ok(Some(Envelope {
            body: FromChild::Hello(h),
            ..
        })) => h,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "bus connection failed before hello");
            return;
        }
    };
    if let Err(e) = check_hello(&hello, &[Role::Worker, Role::DbAgent]) {
        tracing::error!(name = %hello.name, pid = hello.pid, error = %e, "refusing bus connection");
        let _ = writer
            .send(&Envelope::new(ToChild::Refused(e.to_string())))
            .await;
        return;
    }
    let name = hello.name.clone();
    let (link, direct) = mpsc::channel(DIRECT_QUEUE);
    let (reply_tx, reply_rx) = oneshot::channel();
    let joined = BusEvent::Joined {
        name: name.clone(),
        pid: hello.pid,
        role: hello.role,
        link: link.clone(),
        reply: reply_tx,
    };
    if events.send(joined).is_err() {
        return;
    }
    let (config, secret) = match reply_rx.await {
        Ok(Ok(welcome)) => welcome,
        Ok(Err(reason)) => {
            tracing::error!(%name, pid = hello.pid, %reason, "refusing bus connection");
            let _ = writer.send(&Envelope::new(ToChild::Refused(reason))).await;
            return;
        }
        Err(_) => return,
    };
    if writer
        .send(&Envelope::new(ToChild::Welcome { config, secret }))
        .await
        .is_err()
    {
        return;
    }
    let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    hub.connect(&name, connection, link.clone());
    let (gather, echo_wait) = match hello.role {
        Role::DbAgent => (DBAGENT_GATHER, Duration::ZERO),
        _ => (Duration::ZERO, ECHO_WAIT),
    };
    let child_writer = ChildWriter {
        hub: hub.clone(),
        writer,
        direct,
        name: name.clone(),
        connection,
        gather,
        echo_wait,
    };
    let write_task = tokio::spawn(child_writer.run());

    loop {
        let msg = match reader.recv::<Envelope<FromChild>>().await {
            Ok(Some(env)) => env.body,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%name, error = %e, "bus read failed; closing the child's connection");
                break;
            }
        };
        match msg {
            FromChild::Publish(update) => {
                hub.publish_from(connection, update);
            }
            FromChild::Send { to, msg } => {
                if !hub.route(&to, &name, msg) {
                    tracing::debug!(from = %name, %to, "direct message dropped: no route or queue full");
                }
            }
            FromChild::Ready => {
                let _ = events.send(BusEvent::Ready { name: name.clone() });
            }
            FromChild::Health(health) => {
                let _ = events.send(BusEvent::Health {
                    name: name.clone(),
                    health,
                });
            }
            FromChild::Resync => {
                let _ = link.try_send(Outgoing::Resync);
            }
            FromChild::Persisted { upto } => hub.acknowledge(&name, connection, upto),
            FromChild::Hello(_) => tracing::warn!(%name, "second hello ignored"),
        }
    }
    hub.disconnect(&name, connection);
    write_task.abort();
    let _ = events.send(BusEvent::Left { name, link });
}

/// What woke a child's writer.
enum Wake {
    Direct(Outgoing),
    Update(Result<UpdateFrame, broadcast::error::RecvError>),
}

/// Writes to one child: a snapshot first, then updates and direct messages. Each wake-up
/// takes everything queued and writes it with one system call.
struct ChildWriter {
    hub: Arc<Hub>,
    writer: Writer,
    direct: mpsc::Receiver<Outgoing>,
    name: String,
    /// This child's bus connection, as in [`UpdateFrame::origin`].
    connection: u64,
    /// How long to let traffic gather after a wake-up before writing (the dbagent's).
    gather: Duration,
    /// How long the echo of the child's own update may wait for other traffic.
    echo_wait: Duration,
}

impl ChildWriter {
    async fn run(mut self) {
        let Some(mut updates) = send_snapshot(&self.hub, &mut self.writer).await else {
            return;
        };
        loop {
            let Some(first) = self.wait(&mut updates).await else {
                return;
            };
            let Some(mut urgent) = self.put(first, &mut updates).await else {
                return;
            };
            if !self.gather.is_zero() {
                tokio::time::sleep(self.gather).await;
            } else if !urgent && !self.echo_wait.is_zero() {
                // Only the child's own updates so far: they wait for something it needs.
                let deadline = tokio::time::Instant::now() + self.echo_wait;
                while !urgent && self.writer.queued() < BATCH_BYTES {
                    let wake = tokio::select! {
                        biased;
                        wake = self.wait(&mut updates) => wake,
                        () = tokio::time::sleep_until(deadline) => break,
                    };
                    let Some(wake) = wake else { return };
                    match self.put(wake, &mut updates).await {
                        Some(u) => urgent = u,
                        None => return,
                    }
                }
            }
            while self.writer.queued() < BATCH_BYTES {
                let Some(wake) = take_queued(&mut self.direct, &mut updates) else {
                    break;
                };
                if self.put(wake, &mut updates).await.is_none() {
                    return;
                }
            }
            if self.writer.flush().await.is_err() {
                return;
            }
        }
    }

    /// The next thing queued for the child, waiting for it; `None` when the hub is gone.
    async fn wait(&mut self, updates: &mut broadcast::Receiver<UpdateFrame>) -> Option<Wake> {
        tokio::select! {
            biased;
            out = self.direct.recv() => out.map(Wake::Direct),
            update = updates.recv() => Some(Wake::Update(update)),
        }
    }

    /// Queues one thing for the child (a resync writes everything queued and a snapshot).
    /// Returns whether the child needs it soon (anything but the echo of its own update), or
    /// `None` when the connection must end.
    async fn put(
        &mut self,
        wake: Wake,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<bool> {
        match wake {
            Wake::Direct(Outgoing::Msg(msg)) => {
                if matches!(*msg, ToChild::Stop | ToChild::Drain) {
                    // Direct messages usually go first; these must not overtake an update
                    // published before them (a binding a worker answered 200 for before it
                    // stopped must reach the dbagent before the dbagent's Stop).
                    self.put_published(updates).await?;
                }
                if let Err(e) = self.writer.queue(&Envelope::new(*msg)) {
                    let name = &self.name;
                    tracing::error!(%name, error = %e, "dropping a message that cannot be encoded");
                }
                Some(true)
            }
            // The child saw a gap.
            Wake::Direct(Outgoing::Resync) => {
                *updates = send_snapshot(&self.hub, &mut self.writer).await?;
                Some(true)
            }
            Wake::Update(update) => self.put_update(update, updates).await,
        }
    }

    /// Queues every update already published.
    async fn put_published(
        &mut self,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<()> {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            let update = match updates.try_recv() {
                Ok(frame) => Ok(frame),
                Err(TryRecvError::Empty) => return Some(()),
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            self.put_update(update, updates).await?;
        }
    }

    /// [`ChildWriter::put`] for an update, or a gap in the stream (which resyncs the child).
    async fn put_update(
        &mut self,
        update: Result<UpdateFrame, broadcast::error::RecvError>,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<bool> {
        match update {
            Ok(UpdateFrame {
                origin,
                frame: Some(frame),
            }) => {
                self.writer.queue_encoded(&frame);
                return Some(origin != self.connection);
            }
            Err(broadcast::error::RecvError::Closed) => return None,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let name = &self.name;
                tracing::warn!(%name, missed, "child fell behind the update stream; resyncing it from a snapshot");
            }
            // An update too big for one frame.
            Ok(UpdateFrame { frame: None, .. }) => {}
        }
        // What is queued goes first; the snapshot replaces the update stream.
        *updates = send_snapshot(&self.hub, &mut self.writer).await?;
        Some(true)
    }
}

/// Something already queued for a child, without waiting: direct messages first.
fn take_queued(
    direct: &mut mpsc::Receiver<Outgoing>,
    updates: &mut broadcast::Receiver<UpdateFrame>,
) -> Option<Wake> {
    use broadcast::error::{RecvError, TryRecvError};
    if let Ok(out) = direct.try_recv() {
        return Some(Wake::Direct(out));
    }
    match updates.try_recv() {
        Ok(frame) => Some(Wake::Update(Ok(frame))),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Lagged(missed)) => Some(Wake::Update(Err(RecvError::Lagged(missed)))),
        Err(TryRecvError::Closed) => Some(Wake::Update(Err(RecvError::Closed))),
    }
}

/// Writes a snapshot after whatever is queued, and returns the updates that follow it. The
/// copy and its encoding are made off the runtime's thread: with 100,000 extensions they take
/// tens of milliseconds, which the other children's traffic must not wait for.
async fn send_snapshot(
    hub: &Arc<Hub>,
    writer: &mut Writer,
) -> Option<broadcast::Receiver<UpdateFrame>> {
    let hub = hub.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let (seq, parts, rx) = hub.subscribe();
        let mut out = Vec::new();
        let mut put =
            |msg: ToChild| codec::encode_into(&Envelope::new(msg), &mut out, codec::MAX_FRAME);
        put(ToChild::SnapshotBegin { seq })?;
        for part in parts {
            put(ToChild::Snapshot(part))?;
        }
        put(ToChild::SnapshotEnd)?;
        Ok::<_, codec::CodecError>((out, rx))
    })
    .await;
    let (bytes, rx) = match encoded {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not encode a snapshot");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot task failed");
            return None;
        }
    };
    writer.send_encoded(&bytes).await.ok()?;
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_config::{Extension, Secret};
    use sipcraft_ipc::child::{self, LinkEvent};
    use sipcraft_ipc::conn;
    use sipcraft_ipc::wire::{CallRecord, Hello};

    fn extension(number: usize, name_len: usize) -> Extension {
        Extension {
            number: number.to_string(),
            name: Some("n".repeat(name_len)),
            secret: Secret::Password("pw".into()),
            enabled: true,
            auth_algorithms: None,
        }
    }

    /// A hub on a bus socket in `dir`, whose main loop accepts every child.
    fn start_hub(dir: &std::path::Path) -> (Arc<Hub>, std::path::PathBuf) {
        let config = sipcraft_config::parse(
            "[server]\ndomain = \"bus.test\"\nruntime_dir = \"rt\"\nstate_dir = \"st\"\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\n",
            &dir.join("test.toml"),
        )
        .expect("test config");
        let hub = Hub::new();
        let path = conn::endpoint(dir, "bus");
        let listener = conn::listen(&path).expect("listen");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let BusEvent::Joined { reply, .. } = ev {
                    let _ = reply.send(Ok((Box::new(config.clone()), vec![7; 32])));
                }
            }
        });
        let accepting = hub.clone();
        tokio::spawn(async move {
            while let Ok((reader, writer)) = conn::accept(&listener).await {
                tokio::spawn(serve(accepting.clone(), reader, writer, events_tx.clone()));
            }
        });
        (hub, path)
    }

    async fn next_event(link: &mut child::Link) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(20), link.events.recv())
            .await
            .expect("an event within 20 s")
            .expect("link open")
    }

    #[tokio::test]
    async fn updates_arrive_in_order_and_one_too_big_for_a_frame_resyncs_every_child() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, bus) = start_hub(dir.path());
        hub.publish(Update::ExtensionUpserted(extension(1, 1)));
        let mut link = child::join(&bus, Role::Worker, "udp-0", true)
            .await
            .unwrap();
        assert_eq!(link.replica.read().unwrap().seq(), 1);
        for n in 2..=300 {
            hub.publish(Update::ExtensionUpserted(extension(n, 1)));
        }
        for want in 2..=300 {
            match next_event(&mut link).await {
                LinkEvent::Applied { seq, .. } => assert_eq!(seq, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Over the 4 MiB frame limit: it cannot go out as one update, so a snapshot carries it.
        let all: Vec<Extension> = (0..30_000).map(|n| extension(n, 150)).collect();
        let big = hub.publish(Update::ExtensionsReplaced(all));
        match next_event(&mut link).await {
            LinkEvent::Resynced { seq } => assert_eq!(seq, big),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(link.replica.read().unwrap().extension_count(), 30_000);
        hub.publish(Update::ExtensionDeleted("5".into()));
        match next_event(&mut link).await {
            LinkEvent::Applied { seq, .. } => assert_eq!(seq, big + 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_workers_own_update_comes_back_in_order_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, bus) = start_hub(dir.path());
        let mut a = child::join(&bus, Role::Worker, "udp-0", true)
            .await
            .unwrap();
        let mut b = child::join(&bus, Role::Worker, "udp-1", true)
            .await
            .unwrap();
        let applied = |ev: LinkEvent| match ev {
            LinkEvent::Applied { seq, update } => (seq, update),
            other => panic!("unexpected {other:?}"),
        };
        // Alone, the echo of a's own update still comes back (after ECHO_WAIT at most).
        assert!(a.outbox.publish(Update::ExtensionUpserted(extension(1, 1))));
        assert_eq!(applied(next_event(&mut a).await).0, 1);
        assert_eq!(applied(next_event(&mut b).await).0, 1);
        // a's echo waits for b's update and both arrive in order.
        assert!(a.outbox.publish(Update::ExtensionUpserted(extension(2, 1))));
        while hub.counts().0 < 2 {
            tokio::task::yield_now().await;
        }
        assert!(b.outbox.publish(Update::ExtensionUpserted(extension(3, 1))));
        for (want, number) in [(2, "2"), (3, "3")] {
            let (seq, update) = applied(next_event(&mut a).await);
            assert_eq!(seq, want);
            assert!(matches!(update, Update::ExtensionUpserted(e) if e.number == number));
        }
        assert_eq!(a.replica.read().unwrap().seq(), 3);
    }

    async fn recv(reader: &mut conn::Reader) -> ToChild {
        tokio::time::timeout(Duration::from_secs(20), reader.recv::<Envelope<ToChild>>())
            .await
            .expect("a frame within 20 s")
            .unwrap()
            .expect("open")
            .body
    }

    #[tokio::test]
    async fn a_child_that_stops_reading_never_slows_the_hub_and_is_resynced() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, bus) = start_hub(dir.path());
        let (mut reader, mut writer) = conn::connect(&bus).await.unwrap();
        writer
            .send(&Envelope::new(FromChild::Hello(Hello::new(
                Role::Worker,
                "udp-0",
            ))))
            .await
            .unwrap();
        assert!(matches!(recv(&mut reader).await, ToChild::Welcome { .. }));
        assert!(matches!(
            recv(&mut reader).await,
            ToChild::SnapshotBegin { seq: 0 }
        ));
        assert!(matches!(recv(&mut reader).await, ToChild::SnapshotEnd));
        // The child reads nothing while far more updates than the backlog are published; the
        // hub's writer fills the socket and then waits, the publisher never does.
        let total = (UPDATE_BACKLOG * 3) as u64;
        for n in 0..total {
            hub.publish(Update::ExtensionUpserted(extension(n as usize % 1000, 100)));
            if n % 256 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // Now it reads: updates in order, a snapshot, and the stream ends at `total`.
        let mut replica = Replica::new();
        let mut snapshots = 0;
        let mut in_snapshot = false;
        while replica.seq() < total || in_snapshot {
            match recv(&mut reader).await {
                ToChild::SnapshotBegin { seq } => {
                    snapshots += 1;
                    in_snapshot = true;
                    replica = Replica::from_snapshot(seq, []);
                }
                ToChild::Snapshot(part) => replica.absorb(&part),
                ToChild::SnapshotEnd => in_snapshot = false,
                ToChild::Update { seq, update } => replica.apply(seq, &update).unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            snapshots >= 1,
            "the lagging child was resynced from a snapshot"
        );
        assert_eq!(replica.extension_count(), 1000);
    }

    fn record(id: &str) -> Direct {
        Direct::CallRecord(CallRecord {
            id: id.into(),
            call_id: "c".into(),
            caller: "1001".into(),
            callee: "1002".into(),
            started_ms: 1,
            answered_ms: None,
            ended_ms: Some(2),
            final_status: 486,
            reason: "Busy Here".into(),
            worker: "udp-0".into(),
        })
    }

    #[tokio::test]
    async fn a_stop_never_overtakes_an_update_published_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, bus) = start_hub(dir.path());
        let mut link = child::join(&bus, Role::DbAgent, "dbagent", true)
            .await
            .unwrap();
        let tx = hub.routes.read().unwrap()["dbagent"].tx.clone();
        for round in 0..20 {
            // Published, then Stop queued at once: the child's writer finds both waiting.
            let seq = hub.publish(Update::ExtensionUpserted(extension(round, 1)));
            tx.try_send(Outgoing::Msg(Box::new(ToChild::Stop))).unwrap();
            match next_event(&mut link).await {
                LinkEvent::Applied { seq: got, .. } => assert_eq!(got, seq),
                other => panic!("round {round}: {other:?} before update {seq}"),
            }
            assert!(matches!(next_event(&mut link).await, LinkEvent::Stop));
        }
    }

    /// The (number, id) of every call record queued on a child's link.
    fn delivered(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<(u64, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|o| match o {
                Outgoing::Msg(m) => match *m {
                    ToChild::DeliverNumbered {
                        num,
                        msg: Direct::CallRecord(r),
                        ..
                    } => (num, r.id),
                    other => panic!("unexpected {other:?}"),
                },
                Outgoing::Resync => panic!("unexpected resync"),
            })
            .collect()
    }

    fn ids(got: &[(u64, String)]) -> Vec<&str> {
        got.iter().map(|(_, id)| id.as_str()).collect()
    }

    #[test]
    fn call_records_are_kept_until_acknowledged_and_sent_again_to_the_next_dbagent() {
        let hub = Hub::new();
        // Away: held.
        assert!(hub.route("dbagent", "udp-0", record("a")));
        assert!(hub.route("dbagent", "udp-1", record("b")));
        let handoff = Direct::Sip(sipcraft_ipc::wire::SipHandoff {
            transport: sipcraft_config::Transport::Udp,
            peer: "127.0.0.1:5060".parse().unwrap(),
            connection: None,
            outbound: true,
            bytes: Vec::new(),
        });
        assert!(
            !hub.route("dbagent", "udp-0", handoff),
            "SIP hand-offs are not held"
        );
        // Back: delivered in order, numbered.
        let (tx, mut rx) = mpsc::channel(16);
        hub.connect("dbagent", 10, tx);
        let first = delivered(&mut rx);
        assert_eq!(ids(&first), ["a", "b"]);
        assert!(hub.route("dbagent", "udp-0", record("c")));
        let c = delivered(&mut rx);
        assert_eq!(ids(&c), ["c"]);
        // a is acknowledged (an acknowledgement from another connection counts for nothing);
        // then the dbagent dies.
        hub.acknowledge("dbagent", 9, c[0].0);
        hub.acknowledge("dbagent", 10, first[0].0);
        hub.disconnect("dbagent", 10);
        assert!(hub.route("dbagent", "udp-1", record("d")));
        // Its successor gets what was not acknowledged, then what came meanwhile, in order.
        let (tx, mut rx) = mpsc::channel(16);
        hub.connect("dbagent", 11, tx);
        let again = delivered(&mut rx);
        assert_eq!(ids(&again), ["b", "c", "d"]);
        assert!(again.windows(2).all(|w| w[0].0 < w[1].0));
        // The old connection closing late changes nothing for the new one.
        hub.disconnect("dbagent", 10);
        hub.acknowledge("dbagent", 11, again[2].0);
        assert!(hub.held.lock().unwrap()["dbagent"].queue.is_empty());
    }

    #[test]
    fn call_records_past_the_bound_are_dropped_with_an_alarm_and_a_full_link_waits() {
        let hub = Hub::new();
        let (tx, mut rx) = mpsc::channel(4);
        hub.connect("dbagent", 1, tx);
        for n in 0..HELD_MAX {
            assert!(hub.route("dbagent", "udp-0", record(&n.to_string())));
        }
        assert!(!hub.route("dbagent", "udp-0", record("over")));
        assert_eq!(hub.dropped_records("dbagent"), 1);
        // Only what fits the link went; the rest follows each acknowledgement.
        let got = delivered(&mut rx);
        assert_eq!(got.len(), 4);
        hub.acknowledge("dbagent", 1, got[3].0);
        let next = delivered(&mut rx);
        assert_eq!(ids(&next), ["4", "5", "6", "7"]);
        assert!(hub.route("dbagent", "udp-0", record("fits")));
        assert_eq!(hub.dropped_records("dbagent"), 0, "room again");
    }
}
