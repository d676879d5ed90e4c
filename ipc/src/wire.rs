//! Every type that crosses a process boundary.
//!
//! One enum per direction, each wrapped in an [`Envelope`]. postcard encodes enum variants
//! and struct fields by position: append new variants and fields at the end only, never
//! reorder or retype. `tests/golden.rs` pins the encoding.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sipcraft_config::{Config, Transport};

use crate::state::{SnapshotPart, Update};

/// Bumped on any incompatible change to the wire types.
pub const PROTOCOL_VERSION: u32 = 3;

/// What a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Supervisor,
    Worker,
    DbAgent,
    /// `sipcraft ctl`.
    Control,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Supervisor => "supervisor",
            Role::Worker => "worker",
            Role::DbAgent => "dbagent",
            Role::Control => "ctl",
        }
    }
}

/// The first frame on every connection, from the side that connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    /// Stable child name (`udp-0`, `dbagent`), or `ctl`.
    pub name: String,
    pub pid: u32,
}

impl Hello {
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            name: name.into(),
            pid: std::process::id(),
        }
    }
}

/// A hello that must be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("protocol version {got} is not ours ({ours}): the peer runs another sipcraft build")]
    Version { got: u32, ours: u32 },
    #[error("role {got} was expected to be {want}")]
    Role {
        got: &'static str,
        want: &'static str,
    },
}

/// Checks a peer's hello against what this end accepts.
pub fn check_hello(hello: &Hello, accept: &[Role]) -> Result<(), HelloError> {
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloError::Version {
            got: hello.version,
            ours: PROTOCOL_VERSION,
        });
    }
    if !accept.contains(&hello.role) {
        let want = accept.first().map_or("none", |r| r.as_str());
        return Err(HelloError::Role {
            got: hello.role.as_str(),
            want,
        });
    }
    Ok(())
}

/// A frame with a request id; 0 when the frame answers nothing and expects no answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(body: T) -> Self {
        Envelope { id: 0, body }
    }
}

/// Supervisor to child, on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToChild {
    /// Hello accepted: the configuration slice for this child (extensions travel as state)
    /// and the instance secret every worker shares (digest nonces issued by one worker are
    /// verified by another).
    Welcome {
        config: Box<Config>,
        secret: Vec<u8>,
    },
    /// Hello refused; the connection closes after this.
    Refused(String),
    /// Start of a snapshot at generation `seq`; parts follow, then `SnapshotEnd`.
    SnapshotBegin {
        seq: u64,
    },
    Snapshot(SnapshotPart),
    SnapshotEnd,
    /// Update number `seq`.
    Update {
        seq: u64,
        update: Update,
    },
    /// A message another process sent to this one.
    Deliver {
        from: String,
        msg: Direct,
    },
    /// A new configuration, already validated; apply what can change live.
    Reload(Box<Config>),
    /// Stop taking new work, finish what is in flight, then exit.
    Drain,
    /// Exit now.
    Stop,
    /// A message the hub keeps until the child acknowledges `num` (or a later number) with
    /// [`FromChild::Persisted`], and sends again to the child's successor if it dies first:
    /// call records for the dbagent. Numbers only grow for the life of the supervisor.
    DeliverNumbered {
        num: u64,
        from: String,
        msg: Direct,
    },
}

/// Child to supervisor, on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromChild {
    Hello(Hello),
    /// Sockets bound and state loaded: the child serves.
    Ready,
    /// Periodic liveness and figures for `ctl status`.
    Health(Health),
    /// A change to replicated state, to be numbered and sent to every process.
    Publish(Update),
    /// A message for one other process, by name.
    Send {
        to: String,
        msg: Direct,
    },
    /// A gap was seen: send a fresh snapshot.
    Resync,
    /// Every [`ToChild::DeliverNumbered`] up to `upto` is safe with this child (in its
    /// journal on disk, or in the database): the hub may forget them.
    Persisted {
        upto: u64,
    },
}

/// Figures a child reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Live SIP transactions.
    pub transactions: u64,
    /// Open connections (TCP, TLS, WS).
    pub connections: u64,
    /// Messages received that could not be answered and were dropped.
    pub dropped: u64,
    /// UDP requests this worker read and handed to the worker that holds their transaction
    /// (a retransmission, ACK or CANCEL, or a REGISTER of an extension another worker has
    /// just changed), by the UDP workers' claim table.
    pub handed_requests: u64,
    /// A warning an operator must see (journal near its limit, database unreachable).
    pub alarm: Option<String>,
    /// Generation of this child's replica: equal to the supervisor's once it has caught up.
    pub generation: u64,
}

/// A message passed between two processes through the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Direct {
    /// A SIP message handed to the worker that owns its flow or transaction.
    Sip(SipHandoff),
    /// A finished call attempt, from the worker that proxied it to the dbagent.
    CallRecord(CallRecord),
}

/// One call attempt (an initial INVITE and its outcome), as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Unique per record across the instance and restarts (worker name, pid, counter):
    /// the key that makes storing it idempotent.
    pub id: String,
    pub call_id: String,
    /// Calling extension (From user), or the From URI for an unauthenticated caller.
    pub caller: String,
    /// Dialled number (Request-URI user).
    pub callee: String,
    /// Milliseconds since the Unix epoch: INVITE received.
    pub started_ms: u64,
    /// 2xx forwarded, if the call was answered.
    pub answered_ms: Option<u64>,
    /// BYE seen, or the final non-2xx response sent.
    pub ended_ms: Option<u64>,
    /// Final status sent to the caller (200, 404, 486, 487, ...).
    pub final_status: u16,
    /// Reason phrase, or why the call ended (`BYE from caller`, `ring timeout`).
    pub reason: String,
    /// Worker that handled it.
    pub worker: String,
}

/// A SIP message handed from one worker to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SipHandoff {
    pub transport: Transport,
    /// The far end: where it came from, or where it must go.
    pub peer: SocketAddr,
    /// The owner's connection id, for connection-oriented transports.
    pub connection: Option<u64>,
    /// True when the message must be sent to `peer`; false when it was received from it.
    pub outbound: bool,
    pub bytes: Vec<u8>,
}

/// `sipcraft ctl` to supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    Hello(Hello),
    Status,
    Restart { name: String },
    Reload,
    Drain,
    Stop,
}

/// Supervisor to `sipcraft ctl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(Status),
    Done(String),
    Failed(String),
}

/// What `ctl status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub supervisor_pid: u32,
    pub version: String,
    pub uptime_ms: u64,
    /// Generation of the replicated state.
    pub generation: u64,
    pub extensions: u64,
    pub bindings: u64,
    pub children: Vec<ChildStatus>,
    /// Sources banned now: `ip reason seconds-left`.
    pub bans: Vec<String>,
}

/// One child's line in `ctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    pub name: String,
    pub role: Role,
    pub pid: Option<u32>,
    pub state: ChildState,
    pub uptime_ms: u64,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub health: Health,
    /// Call records the supervisor holds for this child, not yet acknowledged (on its disk
    /// or in the database); it hands them to a successor if the child dies.
    pub held_records: u64,
}

/// Lifecycle state of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChildState {
    Starting,
    Ready,
    Draining,
    /// Exited; waiting out the restart delay.
    Backoff,
    /// Restarted too often in a short time; still retried at the longest delay.
    CrashLoop,
    Stopped,
}

impl ChildState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Ready => "ready",
            ChildState::Draining => "draining",
            ChildState::Backoff => "backoff",
            ChildState::CrashLoop => "crash-loop",
            ChildState::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks_version_and_role() {
        let ok = Hello::new(Role::Worker, "udp-0");
        assert_eq!(check_hello(&ok, &[Role::Worker, Role::DbAgent]), Ok(()));
        let old = Hello {
            version: PROTOCOL_VERSION + 1,
            ..ok.clone()
        };
        assert!(matches!(
            check_hello(&old, &[Role::Worker]),
            Err(HelloError::Version { .. })
        ));
        assert!(matches!(
            check_hello(&ok, &[Role::Control]),
            Err(HelloError::Role { .. })
        ));
    }
}
