//! The worker's SIP core: classification, transactions and dispatch by method.
//!
//! Sans I/O: bytes and their origin go in, messages to send come out, so the core is driven
//! by the transports in `lib.rs`. The registrar lives in `registrar.rs`, the proxy in
//! `proxy/` (as further `impl Core` blocks).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use sipcraft_config::Config;
use sipcraft_ipc::child::Outbox;
use sipcraft_ipc::state::Replica;
use sipcraft_ipc::wire::SipHandoff;
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::rewrite::{top_via_received, Rewriter};
use sipcraft_sip::transaction::{
    self, Action, ClientKey, Reliability, ServerKey, TransactionKey, TransactionTable,
};
use sipcraft_sip::{check, parse, Limits, Message, Policy, Verdict};

use crate::proxy::{branch_owner, Proxy};
use crate::registrar::Registrar;
use crate::security::{Admission, Guard};
use crate::transport::{Out, Target};

mod answer;
mod claim;
pub(crate) use answer::finish_response;
pub(crate) use answer::reason_of;
use answer::{draining, options, status_of};
pub use claim::Claimer;
#[cfg(target_os = "linux")]
pub use claim::SourceCounts;

/// Methods this server handles itself or routes.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, PRACK, SUBSCRIBE";
/// Option tags we support.
const SUPPORTED: &[&str] = &["path", "outbound"];

/// Counters for `ctl status` and the log.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub dropped: u64,
    pub rate_limited: u64,
    pub banned: u64,
    pub handed_off: u64,
    /// Of those, requests the claim table sent to the worker holding them.
    pub handed_requests: u64,
}

/// One worker's SIP state.
pub struct Core {
    pub name: String,
    pub config: Config,
    pub replica: Arc<RwLock<Replica>>,
    pub outbox: Outbox,
    pub limits: Limits,
    pub txns: TransactionTable<Out>,
    pub registrar: Registrar,
    pub proxy: Proxy,
    /// Ban list and per-source rate limit.
    pub guard: Guard,
    pub counters: Counters,
    pub draining: bool,
    /// `Server:` value: version and the worker's name, so an operator reading a trace knows
    /// which process answered.
    pub server_header: String,
    /// The buffer responses are assembled in before they are shared (`reply_to`).
    scratch: Vec<u8>,
    /// Open connections of this worker: id → writer.
    pub conns: HashMap<u64, tokio::sync::mpsc::Sender<Arc<[u8]>>, ahash::RandomState>,
    /// The claim table, when this UDP worker shares its socket with others.
    pub claims: Option<Claimer>,
}

impl Core {
    pub fn new(
        name: String,
        config: Config,
        secret: &[u8],
        replica: Arc<RwLock<Replica>>,
        outbox: Outbox,
    ) -> Self {
        let limits = Limits {
            max_message_size: config.limits.max_message_bytes as usize,
            ..Limits::default()
        };
        let timers = transaction::Config {
            timer_j: std::time::Duration::from_millis(config.limits.udp_linger_ms),
            ..transaction::Config::default()
        };
        let txns = TransactionTable::new(timers, config.limits.max_transactions as usize);
        Core {
            registrar: Registrar::new(secret, &config),
            proxy: Proxy::new(&config),
            guard: Guard::new(&config.security),
            server_header: format!("sipcraft/{} ({name})", env!("CARGO_PKG_VERSION")),
            name,
            config,
            replica,
            outbox,
            limits,
            txns,
            counters: Counters::default(),
            draining: false,
            conns: HashMap::default(),
            scratch: Vec::new(),
            claims: None,
        }
    }

    /// Applies a reloaded configuration.
    pub fn reload(&mut self, config: Config) {
        self.registrar.reload(&config);
        self.proxy.reload(&config);
        self.guard.reconfigure(&config.security);
        self.limits.max_message_size = config.limits.max_message_bytes as usize;
        self.config = config;
    }

    /// The next time `poll_timers` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.txns.next_deadline(), self.proxy.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one received message; returns what to send.
    pub fn on_message(&mut self, bytes: &[u8], from: Target, now: Instant) -> Vec<Out> {
        // Bans made by any worker (shared through the replicated state).
        if self
            .replica
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_banned(from.peer.ip(), crate::now_ms())
        {
            self.counters.banned += 1;
            return Vec::new();
        }
        match self.guard.admit(from.peer.ip(), now) {
            Admission::Allow => {}
            Admission::NewBan(event) => {
                tracing::warn!("{}", event.log_line());
                share_ban(&self.outbox, &event);
                self.counters.banned += 1;
                return Vec::new();
            }
            Admission::Banned => {
                self.counters.banned += 1;
                return Vec::new();
            }
            Admission::RateLimited => {
                self.counters.rate_limited += 1;
                return Vec::new();
            }
        }
        self.on_admitted(bytes, from, false, now)
    }

    /// A message past admission; `handed` when another worker handed it over.
    fn on_admitted(&mut self, bytes: &[u8], from: Target, handed: bool, now: Instant) -> Vec<Out> {
        let policy = Policy {
            supported: SUPPORTED,
            check_require: true,
            check_proxy_require: false,
        };
        match check(bytes, &self.limits, &policy) {
            Verdict::Drop(why) => {
                self.counters.dropped += 1;
                tracing::debug!(peer = %from.peer, %why, "dropped");
                Vec::new()
            }
            Verdict::Reject { request, rejection } => {
                tracing::debug!(peer = %from.peer, status = rejection.status, reason = %rejection.reason, "rejected");
                self.stateless(&request, &from, |req| {
                    ResponseBuilder::reject(req, &rejection).build()
                })
            }
            Verdict::Accept(msg) if msg.is_request() => self.on_request(&msg, from, handed, now),
            Verdict::Accept(msg) => self.on_response(&msg, from, now),
        }
    }

    /// A message another worker handed over: one to send on a flow this worker owns, or a
    /// response for a transaction this worker holds.
    pub fn on_handoff(&mut self, from_worker: &str, h: SipHandoff, now: Instant) -> Vec<Out> {
        let target = Target {
            transport: h.transport,
            peer: h.peer,
            conn: h.connection,
            owner: None,
        };
        if h.outbound {
            return vec![Out {
                target,
                bytes: Arc::from(h.bytes),
            }];
        }
        tracing::trace!(from = from_worker, "handed-off message");
        self.on_admitted(&h.bytes, target, true, now)
    }

    /// Answers without a transaction (for requests that cannot start one).
    fn stateless(
        &mut self,
        req: &Message<'_>,
        from: &Target,
        build: impl FnOnce(&Message<'_>) -> Vec<u8>,
    ) -> Vec<Out> {
        let response = build(req);
        vec![self.reply_to(req, from, response)]
    }

    fn on_request(
        &mut self,
        msg: &Message<'_>,
        from: Target,
        handed: bool,
        now: Instant,
    ) -> Vec<Out> {
        let Some(method) = msg.method() else {
            return Vec::new();
        };
        let method = method.as_str();
        let Some(key) = server_key(msg, method) else {
            // RFC 2543 peers (no magic cookie) are answered without a transaction.
            return self.stateless(msg, &from, |req| {
                ResponseBuilder::new(req, 400, "Via branch must start with z9hG4bK").build()
            });
        };
        if let Some(owner) = self.claimed_elsewhere(msg, &key, method, &from, handed) {
            self.counters.handed_requests += 1;
            self.hand_over(owner, msg, &from);
            return Vec::new();
        }
        let reliability = if from.is_reliable() {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        let request = Out {
            target: from.clone(),
            bytes: Arc::from(msg.as_bytes()),
        };
        if let Some(actions) = self.txns.on_request(&key, method, request.clone(), now) {
            return self.run(None, actions, now);
        }
        if method == "ACK" {
            // The ACK for a 2xx: end to end, routed without a transaction.
            return self.proxy_ack(msg, &from);
        }
        match self
            .txns
            .start_server(key.clone(), reliability, request, now)
        {
            Ok(actions) => {
                let mut out = self.run(None, actions, now);
                out.extend(self.dispatch(msg, &key, &from, now));
                out
            }
            Err(transaction::TableError::Full { max }) => {
                tracing::warn!(max, "transaction table full; answering 503");
                self.stateless(msg, &from, |req| {
                    ResponseBuilder::new(req, 503, "Service Unavailable")
                        .header("Retry-After", "5")
                        .build()
                })
            }
            Err(_) => Vec::new(),
        }
    }

    /// A new request with its server transaction started: answer it or route it.
    fn dispatch(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        now: Instant,
    ) -> Vec<Out> {
        // `msg` is the request as received: `received`/`rport` (RFC 3581) go into what is
        // built from it (`reply_to`, the proxy's `rewrite` and stored request).
        let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
        let to_server = msg
            .request_uri()
            .and_then(Result::ok)
            .is_some_and(|u| u.as_sip().is_some_and(|s| s.user.is_none()));
        let response = match method {
            "REGISTER" if self.draining => draining(msg),
            "REGISTER" => {
                let response = self.registrar.register(
                    msg,
                    from,
                    &self.name,
                    &self.replica,
                    &self.outbox,
                    &mut self.guard,
                    now,
                );
                if self.registrar.changed() {
                    self.registered_here(msg);
                }
                response
            }
            "OPTIONS" if to_server => options(msg),
            "CANCEL" => return self.proxy_cancel(msg, key, from, now),
            "INVITE" | "MESSAGE" | "OPTIONS" | "SUBSCRIBE" | "NOTIFY" | "REFER" | "INFO"
            | "UPDATE" | "PRACK" | "BYE" | "PUBLISH" => {
                return self.proxy_request(msg, key, from, now)
            }
            _ => ResponseBuilder::new(msg, 501, "Not Implemented")
                .header("Allow", ALLOW)
                .build(),
        };
        self.answer(msg, key, from, response, now)
    }

    /// Sends `response` to `msg` through its server transaction.
    pub(crate) fn answer(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        response: Vec<u8>,
        now: Instant,
    ) -> Vec<Out> {
        let status = status_of(&response);
        let out = self.reply_to(msg, from, response);
        match self.txns.respond(key, status, out, now) {
            Ok(actions) => self.run(None, actions, now),
            Err(_) => Vec::new(),
        }
    }

    /// Like [`Core::answer`], for a call attempt that ends here (404, 480): its record is sent.
    pub(crate) fn answer_with_record(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        response: Vec<u8>,
        record: Option<sipcraft_ipc::wire::CallRecord>,
        now: Instant,
    ) -> Vec<Out> {
        if let Some(mut rec) = record {
            rec.final_status = status_of(&response);
            rec.ended_ms = Some(crate::now_ms());
            rec.reason = reason_of(&response);
            self.send_record(rec);
        }
        self.answer(msg, key, from, response, now)
    }

    /// A response from the network: to a client transaction of this worker, or handed to the
    /// worker named in its branch.
    fn on_response(&mut self, msg: &Message<'_>, from: Target, now: Instant) -> Vec<Out> {
        let Ok(via) = msg.top_via() else {
            return Vec::new();
        };
        let Some(branch) = via.branch() else {
            return Vec::new();
        };
        if let Some(owner) = branch_owner(branch) {
            if owner != self.name {
                self.hand_over(owner.to_owned(), msg, &from);
                return Vec::new();
            }
        }
        let (Ok(cseq), Some(status)) = (msg.cseq(), msg.status()) else {
            return Vec::new();
        };
        let Ok(key) = ClientKey::new(branch, cseq.method.as_str()) else {
            return Vec::new();
        };
        let response = Out {
            target: from,
            bytes: Arc::from(msg.as_bytes()),
        };
        match self.txns.on_response(&key, status, response, now) {
            Some(actions) => self.run_with(Some(&key), actions, Some(msg), now),
            None => {
                // A stray response: dropped (RFC 6026 §8.4: the transaction keeps 2xx
                // retransmissions while it is in the Accepted state).
                self.counters.dropped += 1;
                Vec::new()
            }
        }
    }

    /// The response `bytes` (built from `req` as received from `from`) as it is sent, and
    /// where (RFC 3261 §18.2.2, RFC 3581): back over the same connection; for UDP to the
    /// source port when `rport` was asked for, else the Via port at the source address.
    pub(crate) fn reply_to(&mut self, req: &Message<'_>, from: &Target, bytes: Vec<u8>) -> Out {
        let via = top_via_received(req, from.peer.ip(), from.peer.port())
            .ok()
            .flatten();
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        finish_response(&mut out, &bytes, &self.server_header, via.as_deref(), req);
        let sent = Out {
            target: reply_target(req, from),
            bytes: Arc::from(out.as_slice()),
        };
        self.scratch = out;
        sent
    }

    /// Carries out transaction actions; `client` names the client transaction they came from.
    pub(crate) fn run(
        &mut self,
        client: Option<&ClientKey>,
        actions: Vec<Action<Out>>,
        now: Instant,
    ) -> Vec<Out> {
        self.run_with(client, actions, None, now)
    }

    /// [`Core::run`], with the response just fed to the client transaction already parsed:
    /// passed up, it is not parsed again.
    fn run_with(
        &mut self,
        client: Option<&ClientKey>,
        actions: Vec<Action<Out>>,
        parsed: Option<&Message<'_>>,
        now: Instant,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        for action in actions {
            match action {
                Action::Send { message, .. } => out.push(message),
                Action::SendAck { request, response } => {
                    if let Some(ack) =
                        crate::proxy::ack_for(&request.bytes, &response.bytes, &self.limits)
                    {
                        out.push(Out {
                            target: request.target.clone(),
                            bytes: Arc::from(ack),
                        });
                    }
                }
                Action::SendTrying { request } => {
                    let Ok(req) = parse(&request.bytes, &self.limits) else {
                        continue;
                    };
                    let Some(key) = server_key(&req, "INVITE") else {
                        continue;
                    };
                    let trying = self.reply_to(
                        &req,
                        &request.target,
                        ResponseBuilder::new(&req, 100, "Trying").build(),
                    );
                    if let Ok(actions) = self.txns.respond(&key, 100, trying, now) {
                        out.extend(self.run(None, actions, now));
                    }
                }
                Action::PassToTu(msg) => {
                    if let Some(ck) = client {
                        let parsed = parsed.filter(|p| p.as_bytes() == &*msg.bytes);
                        out.extend(self.proxy_response(ck, &msg, parsed, now));
                    }
                }
                Action::Timeout(_) => {
                    if let Some(ck) = client {
                        out.extend(self.proxy_branch_failed(ck, 408, now));
                    }
                }
                Action::TransportError => {
                    if let Some(ck) = client {
                        out.extend(self.proxy_branch_failed(ck, 503, now));
                    }
                }
                Action::Terminated => {}
            }
        }
        out
    }

    /// Fires due transaction timers and proxy timers (Timer C, cleanup).
    pub fn poll_timers(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        for (key, action) in self.txns.poll_timers(now) {
            let client = match &key {
                TransactionKey::Client(ck) => Some(ck.clone()),
                TransactionKey::Server(sk) => {
                    if matches!(action, Action::Terminated) {
                        // Most of what expires (Timer J): nothing to do but drop the claim.
                        self.unclaim(sk);
                        continue;
                    }
                    None
                }
            };
            out.extend(self.run(client.as_ref(), vec![action], now));
        }
        out.extend(self.proxy_timers(now));
        out
    }
}

fn server_key(msg: &Message<'_>, method: &str) -> Option<ServerKey> {
    let via = msg.top_via().ok()?;
    let branch = via.branch()?;
    match via.host {
        sipcraft_sip::Host::Domain(host) => ServerKey::from_parts(branch, host, via.port, method),
        ip => {
            // An address is printed the way it always was, on the stack (`[v6]` is at most 47).
            let mut text = StackText::default();
            std::fmt::Write::write_fmt(&mut text, format_args!("{ip}")).ok()?;
            ServerKey::from_parts(branch, text.as_str(), via.port, method)
        }
    }
    .ok()
}

/// A short string written on the stack (no allocation); writing past 64 bytes fails.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The request as received with `received`/`rport` recorded in its top Via (RFC 3581), for
/// a copy that outlives it (the proxy's stored request).
pub(crate) fn with_received(msg: &Message<'_>, from: &Target) -> Vec<u8> {
    let (ip, port) = (from.peer.ip(), from.peer.port());
    match top_via_received(msg, ip, port) {
        Ok(Some(line)) => {
            let mut rw = Rewriter::new(msg);
            let _ = rw.set_top_via_line(line);
            rw.finish()
        }
        _ => msg.as_bytes().to_vec(),
    }
}

/// Where a response to `req`, received from `from`, goes (RFC 3261 §18.2.2, RFC 3581).
pub(crate) fn reply_target(req: &Message<'_>, from: &Target) -> Target {
    let mut target = from.clone();
    if !from.is_reliable() {
        if let Ok(via) = req.top_via() {
            if via.rport().is_none() {
                target.peer.set_port(via.port_or_default());
            }
        }
    }
    target
}

/// Tells every worker about a ban, through the replicated state.
pub fn share_ban(outbox: &Outbox, event: &crate::security::BanEvent) {
    let ban = sipcraft_ipc::state::Ban {
        ip: event.ip,
        until_ms: crate::now_ms() + event.ban_s * 1000,
        reason: event.reason.as_str().to_owned(),
    };
    outbox.publish(sipcraft_ipc::state::Update::SourceBanned(ban));
}
