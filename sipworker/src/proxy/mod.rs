//! The stateful proxy (RFC 3261 §16): requests to extensions are authenticated, looked up
//! in location, forked to every binding, record-routed; responses are relayed with the best
//! final one chosen; CANCEL, Timer C and in-dialog routing.
//!
//! Written as `impl Core` so it shares the worker's transaction table, registrar
//! (authentication) and replica without borrowing gymnastics.

mod fork;
pub use respond::ack_for;
mod respond;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_config::Transport;
use sipcraft_ipc::wire::CallRecord;
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::rewrite::{RewriteError, Rewriter};
use sipcraft_sip::transaction::{ClientKey, Reliability, ServerKey};
use sipcraft_sip::{Message, Uri};

use crate::core::Core;
use crate::registrar::{aor_user, AuthContext};
use crate::transport::{Out, Target};

pub use fork::{branch_id, branch_owner, Branch, BranchState, Fork};
pub use route::Local;

/// Proxy state of one worker.
#[derive(Debug)]
pub struct Proxy {
    pub local: Local,
    pub forks: HashMap<ServerKey, Fork>,
    pub by_branch: HashMap<ClientKey, ServerKey>,
    next_branch: u64,
    pub ring_timeout: Duration,
    records: u64,
}

impl Proxy {
    pub fn new(config: &sipcraft_config::Config) -> Self {
        Proxy {
            local: Local::new(config),
            forks: HashMap::new(),
            by_branch: HashMap::new(),
            next_branch: 1,
            ring_timeout: Duration::from_secs(config.proxy.ring_timeout_s),
            records: 0,
        }
    }

    pub fn reload(&mut self, config: &sipcraft_config::Config) {
        self.ring_timeout = Duration::from_secs(config.proxy.ring_timeout_s);
    }

    /// The earliest Timer C or fork cleanup.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.forks
            .values()
            .filter_map(|f| f.timer_c.or(f.forget_at))
            .min()
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
    /// A new request that is not for the server itself: route it, or answer why not.
    /// `msg` is the request with received/rport already recorded in its top Via.
    pub(crate) fn proxy_request(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        now: Instant,
    ) -> Vec<Out> {
        let method = msg
            .method()
            .map(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        match msg.max_forwards() {
            Ok(Some(0)) => {
                return self.answer(
                    msg,
                    key,
                    from,
                    ResponseBuilder::new(msg, 483, "Too Many Hops").build(),
                    now,
                )
            }
            Err(_) => {
                return self.answer(
                    msg,
                    key,
                    from,
                    ResponseBuilder::new(msg, 400, "Bad Max-Forwards").build(),
                    now,
                )
            }
            _ => {}
        }
        if self.is_loop(msg) {
            return self.answer(
                msg,
                key,
                from,
                ResponseBuilder::new(msg, 482, "Loop Detected").build(),
                now,
            );
        }
        let in_dialog = msg.to().ok().and_then(|t| t.tag()).is_some();
        if in_dialog {
            return self.proxy_in_dialog(msg, key, from, &method, now);
        }
        if self.draining && method == "INVITE" {
            let r = ResponseBuilder::new(msg, 503, "Service Unavailable (draining)")
                .header("Retry-After", "60")
                .build();
            return self.answer(msg, key, from, r, now);
        }
        let mut out = Vec::new();
        if method == "INVITE" {
            // Stop the caller's retransmissions at once (§16.2).
            let trying = ResponseBuilder::new(msg, 100, "Trying").build();
            let o = self.reply_to(msg, from, trying);
            if let Ok(actions) = self.txns.respond(key, 100, o, now) {
                out.extend(self.run(None, actions, now));
            }
        }
        // The caller must be one of ours, proven with a digest (407).
        let caller = match msg.from().ok().and_then(|f| aor_user(&f)) {
            Some(u) => u,
            None => {
                out.extend(self.answer(
                    msg,
                    key,
                    from,
                    ResponseBuilder::new(msg, 403, "Forbidden").build(),
                    now,
                ));
                return out;
            }
        };
        let ctx = AuthContext {
            from,
            replica: &self.replica,
            outbox: &self.outbox,
            guard: &mut self.guard,
            now,
        };
        if let Err(challenge) = self.registrar.authenticate(msg, &caller, true, ctx) {
            out.extend(self.answer(msg, key, from, challenge, now));
            return out;
        }
        // The callee: an extension of this domain.
        let callee = match msg.request_uri().and_then(Result::ok) {
            Some(Uri::Sip(u)) => u.user_decoded().map(|u| u.into_owned()),
            Some(Uri::Tel(t)) => Some(t.number.to_owned()),
            _ => None,
        };
        let Some(callee) = callee else {
            out.extend(self.answer(
                msg,
                key,
                from,
                ResponseBuilder::new(msg, 404, "Not Found").build(),
                now,
            ));
            return out;
        };
        let now_ms = crate::now_ms();
        let (known, mut bindings) = {
            let r = self.replica.read().unwrap_or_else(|p| p.into_inner());
            let known = r.extension(&callee).is_some_and(|e| e.enabled);
            (
                known,
                r.bindings(&callee, now_ms).cloned().collect::<Vec<_>>(),
            )
        };
        let record = (method == "INVITE").then(|| self.new_record(msg, &caller, &callee));
        if !known {
            let r = ResponseBuilder::new(msg, 404, "Not Found").build();
            out.extend(self.answer_with_record(msg, key, from, r, record, now));
            return out;
        }
        if bindings.is_empty() {
            let r = ResponseBuilder::new(msg, 480, "Temporarily Unavailable").build();
            out.extend(self.answer_with_record(msg, key, from, r, record, now));
            return out;
        }
        // Serial groups by q-value, highest first; parallel within a group.
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
        let mut groups: Vec<Vec<Hop>> = Vec::new();
        let mut last_q = None;
        for b in &bindings {
            let hop = Hop {
                target: route::binding_target(b, &self.name),
                uri: Some(b.contact.clone()),
            };
            if last_q != Some(b.q.unwrap_or(1000)) {
                groups.push(Vec::new());
                last_q = Some(b.q.unwrap_or(1000));
            }
            if let Some(g) = groups.last_mut() {
                g.push(hop);
            }
        }
        let fork = Fork {
            server_key: key.clone(),
            method: method.clone(),
            request: msg.as_bytes().to_vec(),
            caller: self.reply_to(msg, from, Vec::new()).target,
            branches: Vec::new(),
            later: groups.into_iter().rev().collect(),
            best: None,
            finished: false,
            answered: false,
            timer_c: (method == "INVITE").then(|| now + self.proxy.ring_timeout),
            record,
            forget_at: None,
        };
        self.proxy.forks.insert(key.clone(), fork);
        out.extend(self.next_group(key, now));
        out
    }

    /// A request that already went through this server (one of its Vias is ours: sent-by one
    /// of our addresses with a branch one of our workers made) has looped back (§16.3 4).
    fn is_loop(&self, msg: &Message<'_>) -> bool {
        msg.vias().flatten().any(|via| {
            let ours_branch = via.branch().and_then(branch_owner).is_some();
            let port = via.port.unwrap_or(5060);
            let ours_addr = via.host.ip().is_some_and(|ip| {
                self.proxy
                    .local
                    .listens
                    .iter()
                    .any(|(_, a)| a.port() == port && (a.ip() == ip || a.ip().is_unspecified()))
            });
            ours_branch && ours_addr
        })
    }

    /// Starts the next serial group of a fork; answers the caller when none is left.
    fn next_group(&mut self, key: &ServerKey, now: Instant) -> Vec<Out> {
        let Some(fork) = self.proxy.forks.get_mut(key) else {
            return Vec::new();
        };
        let Some(group) = fork.later.pop() else {
            return self.finish_fork(key, now);
        };
        let request = fork.request.clone();
        let Ok(msg) = sipcraft_sip::parse(&request, &self.limits) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for hop in group {
            out.extend(self.forward_branch(&msg, key, hop, now));
        }
        out
    }

    /// Forwards `msg` on a new branch to `hop`.
    fn forward_branch(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        hop: Hop,
        now: Instant,
    ) -> Vec<Out> {
        let method = msg
            .method()
            .map(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        let branch = self.proxy.new_branch(&self.name);
        let target = hop.target.clone();
        let bytes = match self.rewrite(msg, &hop, &branch) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot forward");
                return Vec::new();
            }
        };
        let Ok(client_key) = ClientKey::new(&branch, &method) else {
            return Vec::new();
        };
        tracing::debug!(%method, peer = %target.peer, transport = target.transport.as_str(), %branch, "forwarding");
        let out = Out {
            target: target.clone(),
            bytes: Arc::from(bytes),
        };
        let actions =
            match self
                .txns
                .start_client(client_key.clone(), reliability(&target), out.clone(), now)
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot start a client transaction");
                    if let Some(f) = self.proxy.forks.get_mut(key) {
                        f.offer(503, Vec::new());
                    }
                    return Vec::new();
                }
            };
        if let Some(f) = self.proxy.forks.get_mut(key) {
            f.branches.push(Branch {
                key: client_key.clone(),
                target,
                request: out.bytes.clone(),
                state: BranchState::Trying,
                cancelled: false,
            });
        }
        self.proxy.by_branch.insert(client_key.clone(), key.clone());
        self.run(Some(&client_key), actions, now)
    }

    /// The request as sent on a branch: new Request-URI (initial requests), our Via,
    /// Max-Forwards decremented, our Route entries popped, Record-Route added.
    fn rewrite(&self, msg: &Message<'_>, hop: &Hop, branch: &str) -> Result<Vec<u8>, RewriteError> {
        let target = &hop.target;
        let initial = hop.uri.is_some();
        let mut w = Rewriter::new(msg);
        w.decrement_max_forwards()?;
        let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
        if let Some(uri) = &hop.uri {
            w.set_request_uri(uri);
        } else {
            for route in msg.routes().take(2) {
                match route {
                    Ok(r) if self.proxy.local.is_me(&r.uri) => {
                        w.pop_route();
                    }
                    _ => break,
                }
            }
        }
        if initial && creates_dialog(method) {
            let inbound = self.inbound_transport(msg);
            w.add_record_route(&self.proxy.local.route_uri(inbound));
            if inbound != target.transport {
                // Double Record-Route (RFC 5658): the callee reaches us on its transport.
                w.add_record_route(&self.proxy.local.route_uri(target.transport));
            }
        }
        let via_addr = route::host_port(self.proxy.local.address(target.transport));
        let tp = if target.transport == Transport::Udp {
            "UDP"
        } else {
            "TCP"
        };
        w.prepend_via(&format!("SIP/2.0/{tp} {via_addr};branch={branch};rport"));
        Ok(w.finish())
    }

    fn inbound_transport(&self, msg: &Message<'_>) -> Transport {
        match msg.top_via().map(|v| v.transport.is_reliable()) {
            Ok(true) => Transport::Tcp,
            _ => Transport::Udp,
        }
    }

    /// An in-dialog request (To tag present), or an ACK for a 2xx: routed by its Route
    /// headers (loose routing, §16.12), else by its Request-URI.
    fn proxy_in_dialog(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        method: &str,
        now: Instant,
    ) -> Vec<Out> {
        let Some(target) = self.dialog_target(msg) else {
            let r = ResponseBuilder::new(msg, 404, "Not Found (no route)").build();
            return self.answer(msg, key, from, r, now);
        };
        let fork = Fork {
            server_key: key.clone(),
            method: method.to_owned(),
            request: msg.as_bytes().to_vec(),
            caller: self.reply_to(msg, from, Vec::new()).target,
            branches: Vec::new(),
            later: Vec::new(),
            best: None,
            finished: false,
            answered: false,
            timer_c: None,
            record: None,
            forget_at: None,
        };
        self.proxy.forks.insert(key.clone(), fork);
        if method == "BYE" {
            self.record_bye(msg);
        }
        self.forward_branch(msg, key, Hop { target, uri: None }, now)
    }

    /// An ACK for a 2xx: end to end, forwarded without a transaction.
    pub(crate) fn proxy_ack(&mut self, msg: &Message<'_>) -> Vec<Out> {
        let Some(target) = self.dialog_target(msg) else {
            return Vec::new();
        };
        let branch = self.proxy.new_branch(&self.name);
        match self.rewrite(
            msg,
            &Hop {
                target: target.clone(),
                uri: None,
            },
            &branch,
        ) {
            Ok(bytes) => vec![Out {
                target,
                bytes: Arc::from(bytes),
            }],
            Err(_) => Vec::new(),
        }
    }

    /// Where an in-dialog request goes: the first Route that is not ours, else the
    /// Request-URI; a registered contact is reached through its flow.
    fn dialog_target(&self, msg: &Message<'_>) -> Option<Target> {
        let mut next = None;
        for route in msg.routes().flatten() {
            if self.proxy.local.is_me(&route.uri) {
                continue;
            }
            next = Some(route.uri.to_string());
            break;
        }
        let uri_text = match next {
            Some(u) => u,
            None => msg.request_uri()?.ok()?.to_string(),
        };
        let now_ms = crate::now_ms();
        let uri = Uri::parse(&uri_text).ok()?;
        if let Some(user) = uri.as_sip().and_then(|u| u.user_decoded()) {
            let r = self.replica.read().unwrap_or_else(|p| p.into_inner());
            let found = r
                .bindings(&user, now_ms)
                .find(|b| b.contact == uri_text)
                .map(|b| route::binding_target(b, &self.name));
            if found.is_some() {
                return found;
            }
        }
        route::uri_target(&uri)
    }

    /// CANCEL for a request we forwarded: 200 to the CANCEL, CANCEL on every branch that
    /// is still open; the branches' 487 then reaches the caller. 481 when nothing matches.
    pub(crate) fn proxy_cancel(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        now: Instant,
    ) -> Vec<Out> {
        let invite = key.cancelled_invite();
        if !self.proxy.forks.contains_key(&invite) {
            let r = ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist").build();
            return self.answer(msg, key, from, r, now);
        }
        let mut out = self.answer(
            msg,
            key,
            from,
            ResponseBuilder::new(msg, 200, "OK").build(),
            now,
        );
        if let Some(f) = self.proxy.forks.get_mut(&invite) {
            f.later.clear();
            if let Some(rec) = f.record.as_mut() {
                rec.reason = "cancelled by caller".into();
            }
        }
        out.extend(self.cancel_branches(&invite, now));
        out
    }

    /// Sends CANCEL on every open branch of a fork.
    fn cancel_branches(&mut self, key: &ServerKey, now: Instant) -> Vec<Out> {
        let Some(fork) = self.proxy.forks.get_mut(key) else {
            return Vec::new();
        };
        let mut todo = Vec::new();
        for b in fork.branches.iter_mut() {
            if !b.cancelled && !matches!(b.state, BranchState::Done(_)) {
                b.cancelled = true;
                todo.push(b.clone());
            }
        }
        let mut out = Vec::new();
        for b in todo {
            let Some(cancel) = respond::cancel_for(&b.request, &self.limits) else {
                continue;
            };
            let Ok(ck) = ClientKey::new(b.key.branch(), "CANCEL") else {
                continue;
            };
            let o = Out {
                target: b.target.clone(),
                bytes: Arc::from(cancel),
            };
            if let Ok(actions) = self
                .txns
                .start_client(ck.clone(), reliability(&b.target), o, now)
            {
                out.extend(self.run(Some(&ck), actions, now));
            }
        }
        out
    }

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
        let msg = sipcraft_ipc::wire::FromChild::Send {
            to: "dbagent".into(),
            msg: sipcraft_ipc::wire::Direct::CallRecord(record),
        };
        self.outbox.send(msg);
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
}
