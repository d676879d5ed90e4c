//! The stateful proxy (RFC 3261 §16): requests to extensions are authenticated, looked up
//! in location, forked to every binding, record-routed; responses are relayed with the best
//! final one chosen; CANCEL, Timer C and in-dialog routing.
//!
//! Written as `impl Core` so it shares the worker's transaction table, registrar
//! (authentication) and replica without borrowing gymnastics.

mod dialog;
mod fork;
mod initial;
pub use respond::ack_for;
mod respond;
pub mod route;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sipcraft_ipc::wire::CallRecord;
use sipcraft_sip::transaction::{ClientKey, Reliability, ServerKey};
use sipcraft_sip::Message;

use crate::core::Core;
use crate::registrar::aor_user;
use crate::transport::Target;

pub use fork::{branch_id, branch_owner, Branch, BranchState, Fork};
pub use route::Local;

/// Proxy state of one worker.
#[derive(Debug)]
pub struct Proxy {
    pub local: Local,
    pub forks: HashMap<ServerKey, Fork, ahash::RandomState>,
    pub by_branch: HashMap<ClientKey, ServerKey, ahash::RandomState>,
    next_branch: u64,
    pub ring_timeout: Duration,
    records: u64,
    /// When the forks are next swept for Timer C and cleanup: no earlier than the earliest
    /// deadline, at most `respond::SWEEP` after it.
    pub(crate) next_due: Option<Instant>,
}

impl Proxy {
    pub fn new(config: &sipcraft_config::Config) -> Self {
        Proxy {
            local: Local::new(config),
            forks: HashMap::default(),
            by_branch: HashMap::default(),
            next_branch: 1,
            ring_timeout: Duration::from_secs(config.proxy.ring_timeout_s),
            records: 0,
            next_due: None,
        }
    }

    pub fn reload(&mut self, config: &sipcraft_config::Config) {
        self.ring_timeout = Duration::from_secs(config.proxy.ring_timeout_s);
    }

    /// When a Timer C or fork cleanup may be due (never later than the earliest).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_due
    }

    /// Notes a fork deadline set to `at`.
    pub(crate) fn schedule(&mut self, at: Instant) {
        self.next_due = Some(self.next_due.map_or(at, |due| due.min(at)));
    }

    fn new_branch(&mut self, worker: &str) -> String {
        self.next_branch += 1;
        branch_id(worker, self.next_branch)
    }
}

/// Methods that start a dialog: the proxy record-routes them.
fn creates_dialog(method: &str) -> bool {
    matches!(method, "INVITE" | "SUBSCRIBE" | "REFER" | "NOTIFY")
}

fn reliability(t: &Target) -> Reliability {
    if t.is_reliable() {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    }
}

impl Core {
    fn new_record(&mut self, msg: &Message<'_>, caller: &str, callee: &str) -> CallRecord {
        self.proxy.records += 1;
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        CallRecord {
            id: format!(
                "{}.{}.{}",
                self.name,
                std::process::id(),
                self.proxy.records
            ),
            call_id,
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            started_ms: crate::now_ms(),
            answered_ms: None,
            ended_ms: None,
            final_status: 0,
            reason: String::new(),
            worker: self.name.clone(),
        }
    }

    /// A BYE ends an answered call: the record of its INVITE is completed (the record id of
    /// an answered call is derived from Call-ID and tags, so any worker can complete it).
    fn record_bye(&mut self, msg: &Message<'_>) {
        let (Ok(call_id), Ok(f), Ok(t)) = (msg.call_id(), msg.from(), msg.to()) else {
            return;
        };
        let id = answered_id(call_id, f.tag().unwrap_or(""), t.tag().unwrap_or(""));
        let now = crate::now_ms();
        let caller = aor_user(&f).unwrap_or_default();
        let callee = aor_user(&t).unwrap_or_default();
        let record = CallRecord {
            id,
            call_id: call_id.to_owned(),
            caller,
            callee,
            started_ms: now,
            answered_ms: None,
            ended_ms: Some(now),
            final_status: 200,
            reason: "BYE".into(),
            worker: self.name.clone(),
        };
        self.send_record(record);
    }

    pub(crate) fn send_record(&self, record: CallRecord) {
        tracing::info!(
            id = %record.id, call_id = %record.call_id, caller = %record.caller, callee = %record.callee,
            status = record.final_status, reason = %record.reason, "call record"
        );
        // The dbagent journals records in batches anyway: they ride with the worker's next
        // bus message instead of waking the supervisor once each (issue 7).
        let msg = sipcraft_ipc::wire::FromChild::Send {
            to: "dbagent".into(),
            msg: sipcraft_ipc::wire::Direct::CallRecord(record),
        };
        if !self.outbox.send_lazy(msg) {
            tracing::warn!("bus outbox full: a call record was not sent");
        }
    }
}

/// The record id of an answered call: the same whichever side sends the BYE.
pub fn answered_id(call_id: &str, tag_a: &str, tag_b: &str) -> String {
    let (lo, hi) = if tag_a <= tag_b {
        (tag_a, tag_b)
    } else {
        (tag_b, tag_a)
    };
    format!("{call_id};{lo};{hi}")
}

/// Where one branch goes: the flow to send on, and the Request-URI to set (the registered
/// contact, for initial requests; `None` keeps the Request-URI of an in-dialog request).
#[derive(Debug, Clone)]
pub struct Hop {
    pub target: Target,
    pub uri: Option<String>,
    /// The caller's flow token, for the Record-Route of an initial request.
    pub caller_flow: Option<String>,
}
