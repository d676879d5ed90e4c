//! The bus hub: every child connects here. The hub numbers replicated-state updates, keeps
//! its own replica (so a restarting child always finds a snapshot, whoever else is dead),
//! fans updates out, and routes messages from one child to another.
//!
//! Nothing here waits on a slow child: updates go through a bounded broadcast channel, and a
//! child that falls behind it is resynced from a fresh snapshot; direct messages to a child
//! whose queue is full are dropped (SIP retransmits).
//!
//! Call records are the exception: the hub numbers each one and keeps it (bounded) until the
//! dbagent acknowledges that number once the record is in its journal on disk or in
//! PostgreSQL, whichever comes first. A record the
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

mod writer;
use writer::ChildWriter;

/// Updates kept for slow children before they must resync from a snapshot. The dbagent runs
/// at a lower priority, and at the highest registration rates `make bench` reaches (28,800/s,
/// both vCPUs busy) it fell up to 30,000 updates behind and was resynced twice a step: a
/// snapshot of 100,000 extensions each time, CPU spent when there is none to spare. 64 Ki
/// frames (about 2 s at that rate) cost some 3.5 MiB of ring, allocated once.
const UPDATE_BACKLOG: usize = 64 * 1024;
/// Call records held for a child: not yet acknowledged, or waiting for it to come back (a
/// restarting dbagent). Past this, new records are dropped with an alarm.
const HELD_MAX: usize = 10_000;
/// Direct messages queued for one child.
const DIRECT_QUEUE: usize = 4096;

/// The dbagent persists what it receives and is in no hurry: its writer writes at most once
/// per this long, so under load the dbagent wakes once for many updates, not for each. It
/// matches the dbagent's own fsync batch (`SYNC_EVERY`). (Workers get every frame at once:
/// replication and SIP hand-offs are on the call path.)
const DBAGENT_GATHER: Duration = Duration::from_millis(50);

/// How long the echo of a worker's own update may wait for other traffic to that worker. The
/// worker applied the change when it made it; the numbered copy only moves its generation on,
/// so it rides along with the next frame the worker needs instead of waking it by itself.
/// Longer than a worker's lazy window (`child::LAZY`), so under a steady load the echo of one
/// worker's refreshes nearly always rides with the next batch from another.
const ECHO_WAIT: Duration = Duration::from_millis(100);

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
/// connection (its route's) and await its acknowledgement; the rest wait for it (or for room
/// in its queue).
#[derive(Debug, Default)]
struct Mailbox {
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
        let Some(route) = route else {
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

    /// Forgets what the current connection has acknowledged.
    fn acknowledge(&mut self, upto: u64) {
        while self.sent > 0 && self.queue.front().is_some_and(|h| h.num <= upto) {
            self.queue.pop_front();
            self.sent -= 1;
        }
    }

    /// A new connection (or none): whatever the old one did not acknowledge goes again.
    fn reconnect(&mut self) {
        if self.sent > 0 {
            tracing::info!(
                records = self.sent,
                "call records not acknowledged by the child that left; sending them again"
            );
        }
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

    /// `connection` of child `name` has every call record up to `upto` safe (on its disk or
    /// in the database).
    fn acknowledge(&self, name: &str, connection: u64, upto: u64) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let route = routes.get(name).filter(|r| r.connection == connection);
        if let (Some(mailbox), Some(route)) = (held.get_mut(name), route) {
            mailbox.acknowledge(upto);
            mailbox.pump(Some(route));
        }
    }

    /// Call records held for `name`, not yet acknowledged.
    pub fn held_records(&self, name: &str) -> u64 {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(name).map_or(0, |m| m.queue.len() as u64)
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
        let mailbox = held.entry(name.to_owned()).or_default();
        mailbox.reconnect();
        mailbox.pump(Some(&route));
        routes.insert(name.to_owned(), route);
    }

    /// `connection` of `name` closed: unless a newer one took its place, nothing routes to
    /// `name` until it is back, and what it did not acknowledge waits for its successor.
    fn disconnect(&self, name: &str, connection: u64) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes.get(name).is_none_or(|r| r.connection != connection) {
            return;
        }
        routes.remove(name);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = held.get_mut(name) {
            mailbox.reconnect();
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

#[cfg(test)]
mod tests;
