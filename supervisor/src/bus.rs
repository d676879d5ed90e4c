//! The bus hub: every child connects here. The hub numbers replicated-state updates, keeps
//! its own replica (so a restarting child always finds a snapshot, whoever else is dead),
//! fans updates out, and routes messages from one child to another.
//!
//! Nothing here waits on a slow child: updates go through a bounded broadcast channel, and a
//! child that falls behind it is resynced from a fresh snapshot; direct messages to a child
//! whose queue is full are dropped (SIP retransmits).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use sipcraft_ipc::conn::{Reader, Writer};
use sipcraft_ipc::state::{Replica, Update};
use sipcraft_ipc::wire::{check_hello, Direct, Envelope, FromChild, Health, Role, ToChild};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Updates kept for slow children before they must resync from a snapshot.
const UPDATE_BACKLOG: usize = 16 * 1024;
/// Call records held for a child that is away (a restarting dbagent).
const HELD_MAX: usize = 10_000;
/// Direct messages queued for one child.
const DIRECT_QUEUE: usize = 4096;

/// What the writer task of one child sends.
#[derive(Debug)]
pub enum Outgoing {
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
    broadcast::Receiver<(u64, Arc<Update>)>,
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
    routes: RwLock<HashMap<String, mpsc::Sender<Outgoing>>>,
    /// Call records for a child that is away, delivered when it is back.
    held: Mutex<HashMap<String, VecDeque<(String, Direct)>>>,
}

#[derive(Debug)]
struct HubState {
    replica: Replica,
    updates: broadcast::Sender<(u64, Arc<Update>)>,
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
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = st.replica.seq() + 1;
        st.replica.apply_local(&update);
        st.replica.set_seq(seq);
        let _ = st.updates.send((seq, Arc::new(update)));
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
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = routes.get(to) else {
            drop(routes);
            return self.hold(to, from, msg);
        };
        let deliver = ToChild::Deliver {
            from: from.to_owned(),
            msg,
        };
        tx.try_send(Outgoing::Msg(Box::new(deliver))).is_ok()
    }

    /// Keeps a call record for a dbagent that is restarting (a few hundred ms), so a record
    /// made meanwhile is not lost; SIP hand-offs are not kept (retransmissions cover them).
    fn hold(&self, to: &str, from: &str, msg: Direct) -> bool {
        if !matches!(msg, Direct::CallRecord(_)) {
            return false;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let queue = held.entry(to.to_owned()).or_default();
        if queue.len() >= HELD_MAX {
            tracing::warn!(%to, "call record dropped: {HELD_MAX} already held for a child that is away");
            return false;
        }
        queue.push_back((from.to_owned(), msg));
        true
    }

    fn set_route(&self, name: &str, link: Option<mpsc::Sender<Outgoing>>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        match link {
            Some(tx) => {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(queue) = held.get_mut(name) {
                    while let Some((from, msg)) = queue.pop_front() {
                        let deliver = ToChild::Deliver {
                            from: from.clone(),
                            msg,
                        };
                        if let Err(e) = tx.try_send(Outgoing::Msg(Box::new(deliver))) {
                            // The new link is full already: keep the rest for later.
                            if let mpsc::error::TrySendError::Full(Outgoing::Msg(m)) = e {
                                if let ToChild::Deliver { from, msg } = *m {
                                    queue.push_front((from, msg));
                                }
                            }
                            break;
                        }
                    }
                }
                routes.insert(name.to_owned(), tx)
            }
            None => routes.remove(name),
        };
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
    hub.set_route(&name, Some(link.clone()));
    let write_task = tokio::spawn(write_loop(hub.clone(), writer, direct, name.clone()));

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
                hub.publish(update);
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
            FromChild::Hello(_) => tracing::warn!(%name, "second hello ignored"),
        }
    }
    hub.set_route(&name, None);
    write_task.abort();
    let _ = events.send(BusEvent::Left { name, link });
}

async fn write_loop(
    hub: Arc<Hub>,
    mut writer: Writer,
    mut direct: mpsc::Receiver<Outgoing>,
    name: String,
) {
    let mut updates = match send_snapshot(&hub, &mut writer).await {
        Some(rx) => rx,
        None => return,
    };
    loop {
        let msg = tokio::select! {
            biased;
            out = direct.recv() => match out {
                Some(Outgoing::Msg(msg)) => *msg,
                Some(Outgoing::Resync) => {
                    match send_snapshot(&hub, &mut writer).await {
                        Some(rx) => updates = rx,
                        None => return,
                    }
                    continue;
                }
                None => return,
            },
            update = updates.recv() => match update {
                Ok((seq, update)) => ToChild::Update { seq, update: (*update).clone() },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(%name, missed, "child fell behind the update stream; resyncing it from a snapshot");
                    match send_snapshot(&hub, &mut writer).await {
                        Some(rx) => updates = rx,
                        None => return,
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if writer.send(&Envelope::new(msg)).await.is_err() {
            return;
        }
    }
}

async fn send_snapshot(
    hub: &Hub,
    writer: &mut Writer,
) -> Option<broadcast::Receiver<(u64, Arc<Update>)>> {
    let (seq, parts, rx) = hub.subscribe();
    writer
        .queue(&Envelope::new(ToChild::SnapshotBegin { seq }))
        .ok()?;
    for part in parts {
        writer.queue(&Envelope::new(ToChild::Snapshot(part))).ok()?;
        if writer.queued() > 1 << 20 {
            writer.flush().await.ok()?;
        }
    }
    writer.queue(&Envelope::new(ToChild::SnapshotEnd)).ok()?;
    writer.flush().await.ok()?;
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_ipc::wire::CallRecord;

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

    #[test]
    fn call_records_for_an_absent_dbagent_are_held_and_delivered_in_order() {
        let hub = Hub::new();
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
        let (tx, mut rx) = mpsc::channel(16);
        hub.set_route("dbagent", Some(tx));
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|o| match o {
                Outgoing::Msg(m) => match *m {
                    ToChild::Deliver {
                        msg: Direct::CallRecord(r),
                        ..
                    } => r.id,
                    other => panic!("unexpected {other:?}"),
                },
                Outgoing::Resync => panic!("unexpected resync"),
            })
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
