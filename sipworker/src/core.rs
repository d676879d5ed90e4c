//! The worker's SIP core: classification, server transactions and dispatch by method.
//!
//! Sans I/O: bytes and their origin go in, messages to send come out, so the core is driven
//! by the transports in `lib.rs` and tested without sockets.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use sipcraft_config::Config;
use sipcraft_ipc::child::Outbox;
use sipcraft_ipc::state::Replica;
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::rewrite::Rewriter;
use sipcraft_sip::transaction::{self, Action, Reliability, ServerKey, TransactionTable};
use sipcraft_sip::{check, parse, Limits, Message, Policy, Verdict};

use crate::registrar::Registrar;
use crate::security::{Admission, Guard};
use crate::transport::{Out, Target};

/// Methods this server handles itself or routes.
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, PRACK";
/// Option tags we support (none yet beyond the base protocol and outbound keep-alives).
const SUPPORTED: &[&str] = &["path", "outbound"];

/// Counters for `ctl status` and the log.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub dropped: u64,
    pub rate_limited: u64,
    pub banned: u64,
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
    /// Ban list and per-source rate limit.
    pub guard: Guard,
    pub counters: Counters,
    pub draining: bool,
    /// `Server:` value: version and the worker's name, so an operator reading a trace knows
    /// which process answered.
    pub server_header: String,
    /// Open connections of this worker: id → writer.
    pub conns: HashMap<u64, tokio::sync::mpsc::Sender<Arc<[u8]>>>,
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
        let txns = TransactionTable::new(
            transaction::Config::default(),
            config.limits.max_transactions as usize,
        );
        Core {
            registrar: Registrar::new(secret, &config),
            guard: Guard::new(&config.security),
            name: name.clone(),
            config,
            replica,
            outbox,
            limits,
            txns,
            counters: Counters::default(),
            draining: false,
            server_header: format!("sipcraft/{} ({name})", env!("CARGO_PKG_VERSION")),
            conns: HashMap::new(),
        }
    }

    /// Applies a reloaded configuration.
    pub fn reload(&mut self, config: Config) {
        self.registrar.reload(&config);
        self.guard.reconfigure(&config.security);
        self.limits.max_message_size = config.limits.max_message_bytes as usize;
        self.config = config;
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
            Verdict::Accept(msg) if msg.is_request() => self.on_request(&msg, from, now),
            Verdict::Accept(_) => {
                // Responses belong to client transactions; the proxy is not routing yet.
                self.counters.dropped += 1;
                Vec::new()
            }
        }
    }

    /// Answers without a transaction (for requests that cannot start one).
    fn stateless(
        &mut self,
        req: &Message<'_>,
        from: &Target,
        build: impl FnOnce(&Message<'_>) -> Vec<u8>,
    ) -> Vec<Out> {
        match with_received(req, from) {
            Some(annotated) => match parse(&annotated, &self.limits) {
                Ok(req) => vec![self.reply_to(&req, from, build(&req))],
                Err(_) => Vec::new(),
            },
            None => vec![self.reply_to(req, from, build(req))],
        }
    }

    fn on_request(&mut self, msg: &Message<'_>, from: Target, now: Instant) -> Vec<Out> {
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
            return self.run(actions);
        }
        if method == "ACK" {
            // An ACK for a 2xx: end to end, routed by the proxy (not yet).
            return Vec::new();
        }
        match self
            .txns
            .start_server(key.clone(), reliability, request, now)
        {
            Ok(actions) => {
                let mut out = self.run(actions);
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

    /// A new request with its server transaction started: produce the TU's answer.
    fn dispatch(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        now: Instant,
    ) -> Vec<Out> {
        let annotated = with_received(msg, from);
        let reparsed;
        let msg = match &annotated {
            Some(bytes) => match parse(bytes, &self.limits) {
                Ok(m) => {
                    reparsed = m;
                    &reparsed
                }
                Err(_) => return Vec::new(),
            },
            None => msg,
        };
        let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
        let response = match method {
            "REGISTER" if self.draining => draining(msg),
            "REGISTER" => self.registrar.register(
                msg,
                from,
                &self.name,
                &self.replica,
                &self.outbox,
                &mut self.guard,
                now,
            ),
            "OPTIONS" => options(msg),
            "CANCEL" => ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist").build(),
            "INVITE" if self.draining => draining(msg),
            "INVITE" | "MESSAGE" | "SUBSCRIBE" | "PUBLISH" | "BYE" | "INFO" | "UPDATE"
            | "REFER" | "NOTIFY" | "PRACK" => ResponseBuilder::new(msg, 501, "Not Implemented")
                .header("Allow", "OPTIONS, REGISTER")
                .build(),
            _ => ResponseBuilder::new(msg, 501, "Not Implemented")
                .header("Allow", ALLOW)
                .build(),
        };
        let status = status_of(&response);
        let out = self.reply_to(msg, from, response);
        match self.txns.respond(key, status, out, now) {
            Ok(actions) => self.run(actions),
            Err(_) => Vec::new(),
        }
    }

    /// Where a response to `req` goes (RFC 3261 §18.2.2, RFC 3581): back over the same
    /// connection; for UDP to the source port when `rport` was asked for, else the Via port
    /// at the source address.
    fn reply_to(&self, req: &Message<'_>, from: &Target, bytes: Vec<u8>) -> Out {
        let bytes = with_server_header(&bytes, &self.server_header);
        let mut target = from.clone();
        if !from.is_reliable() {
            if let Ok(via) = req.top_via() {
                if via.rport().is_none() {
                    target.peer.set_port(via.port_or_default());
                }
            }
        }
        Out {
            target,
            bytes: Arc::from(bytes),
        }
    }

    /// Turns transaction actions into messages to send.
    pub fn run(&mut self, actions: Vec<Action<Out>>) -> Vec<Out> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    /// Fires due transaction timers.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<Out> {
        let actions: Vec<_> = self
            .txns
            .poll_timers(now)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        self.run(actions)
    }
}

fn server_key(msg: &Message<'_>, method: &str) -> Option<ServerKey> {
    let via = msg.top_via().ok()?;
    let branch = via.branch()?;
    let sent_by = match via.port {
        Some(p) => format!("{}:{p}", via.host),
        None => via.host.to_string(),
    };
    ServerKey::new(branch, &sent_by, method).ok()
}

/// The request with `received`/`rport` recorded in its top Via, when that changes it.
fn with_received(msg: &Message<'_>, from: &Target) -> Option<Vec<u8>> {
    let mut rw = Rewriter::new(msg);
    rw.set_top_via_received(from.peer.ip(), from.peer.port())
        .ok()?;
    Some(rw.finish())
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

/// `bytes` (a response) with a Server header after the status line.
fn with_server_header(bytes: &[u8], server: &str) -> Vec<u8> {
    let at = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(bytes.len(), |i| i + 2);
    let mut out = Vec::with_capacity(bytes.len() + server.len() + 10);
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(b"Server: ");
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&bytes[at..]);
    out
}

fn status_of(response: &[u8]) -> u16 {
    response
        .get(8..11)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn draining(msg: &Message<'_>) -> Vec<u8> {
    ResponseBuilder::new(msg, 503, "Service Unavailable (draining)")
        .header("Retry-After", "60")
        .build()
}

/// OPTIONS to the server (monitoring systems ping with it): 200 with what we do.
fn options(msg: &Message<'_>) -> Vec<u8> {
    ResponseBuilder::new(msg, 200, "OK")
        .header("Allow", ALLOW)
        .header("Accept", "application/sdp")
        .header("Accept-Encoding", "identity")
        .header("Accept-Language", "en")
        .header("Supported", &SUPPORTED.join(", "))
        .build()
}
