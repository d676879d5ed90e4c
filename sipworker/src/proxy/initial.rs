//! Initial requests: authentication (407), location lookup, forking by q-value, and the
//! request as sent on each branch.

use std::sync::Arc;
use std::time::Instant;

use sipcraft_config::Transport;
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::rewrite::{RewriteError, Rewriter};
use sipcraft_sip::transaction::{ClientKey, ServerKey};
use sipcraft_sip::{Message, Uri};

use super::{branch_owner, creates_dialog, reliability, route, Branch, BranchState, Fork, Hop};
use crate::core::Core;
use crate::registrar::{aor_user, AuthContext};
use crate::transport::{Out, Target};

impl Core {
    /// A new request that is not for the server itself: route it, or answer why not.
    /// `msg` is the request as received from `from`: its top Via gets received/rport in what
    /// is built from it.
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
                r.bindings(&callee, now_ms)
                    .map(sipcraft_ipc::state::Binding::from)
                    .collect::<Vec<_>>(),
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
        let caller_flow = route::flow_token(from, &self.name);
        for b in &bindings {
            let hop = Hop {
                target: route::binding_target(b, &self.name),
                uri: Some(b.contact.clone()),
                caller_flow: caller_flow.clone(),
            };
            if last_q != Some(b.q.unwrap_or(1000)) {
                groups.push(Vec::new());
                last_q = Some(b.q.unwrap_or(1000));
            }
            if let Some(g) = groups.last_mut() {
                g.push(hop);
            }
        }
        let caller = crate::core::reply_target(msg, from);
        let request = crate::core::with_received(msg, from);
        let mut fork = Fork::new(key.clone(), &method, request, caller);
        fork.later = groups.into_iter().rev().collect();
        fork.timer_c = (method == "INVITE").then(|| now + self.proxy.ring_timeout);
        if let Some(at) = fork.timer_c {
            self.proxy.schedule(at);
        }
        fork.record = record;
        self.proxy.forks.insert(key.clone(), fork);
        // The first group goes out from the message in hand; later ones from the stored copy.
        out.extend(self.next_group(key, Some((msg, from)), now));
        if method == "INVITE" {
            // Stop the caller's retransmissions at once (§16.2). After the forwarded INVITE,
            // which is on the way to the answer, and only for a request that waits for one:
            // a request answered at once (407, 404, 480) needs no 100.
            let trying = ResponseBuilder::new(msg, 100, "Trying").build();
            let o = self.reply_to(msg, from, trying);
            if let Ok(actions) = self.txns.respond(key, 100, o, now) {
                out.extend(self.run(None, actions, now));
            }
        }
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
    /// `received` is the request as received and its source, when in hand; otherwise the
    /// stored copy (received/rport already recorded) is parsed.
    pub(super) fn next_group(
        &mut self,
        key: &ServerKey,
        received: Option<(&Message<'_>, &Target)>,
        now: Instant,
    ) -> Vec<Out> {
        let Some(fork) = self.proxy.forks.get_mut(key) else {
            return Vec::new();
        };
        let Some(group) = fork.later.pop() else {
            return self.finish_fork(key, now);
        };
        let mut out = Vec::new();
        if let Some((msg, from)) = received {
            for hop in group {
                out.extend(self.forward_branch(msg, Some(from), key, hop, now));
            }
        } else {
            let request = fork.request.clone();
            let Ok(msg) = sipcraft_sip::parse(&request, &self.limits) else {
                return self.finish_fork(key, now);
            };
            for hop in group {
                out.extend(self.forward_branch(&msg, None, key, hop, now));
            }
        }
        // No branch of the group could start (nothing to wait for): on to the next group,
        // or the answer, now rather than at Timer C (or never, for a non-INVITE).
        if self.proxy.forks.get(key).is_some_and(|f| f.all_done()) {
            out.extend(self.next_group(key, None, now));
        }
        out
    }

    /// Forwards `msg` on a new branch to `hop`; `received` is where `msg` came from when its
    /// top Via still needs received/rport.
    pub(super) fn forward_branch(
        &mut self,
        msg: &Message<'_>,
        received: Option<&Target>,
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
        let bytes = match self.rewrite(msg, received, &hop, &branch) {
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

    /// The request as sent on a branch: received/rport in the top Via when `received` gives
    /// the source (RFC 3581), new Request-URI (initial requests), our Via, Max-Forwards
    /// decremented, our Route entries popped, our realm's Proxy-Authorization consumed,
    /// Record-Route added.
    pub(super) fn rewrite(
        &self,
        msg: &Message<'_>,
        received: Option<&Target>,
        hop: &Hop,
        branch: &str,
    ) -> Result<Vec<u8>, RewriteError> {
        let target = &hop.target;
        let initial = hop.uri.is_some();
        let mut w = Rewriter::new(msg);
        if let Some(from) = received {
            // As before, a top Via that cannot be annotated is forwarded as it came.
            let _ = w.set_top_via_received(from.peer.ip(), from.peer.port());
        }
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
        // Credentials for our realm go no further (§20.28, §22.3): checked here on an initial
        // request, and repeated on its ACK (§13.2.2.4) and on in-dialog requests.
        w.consume_credentials(self.registrar.realm());
        if initial && creates_dialog(method) {
            let mut flows = String::new();
            if let Some(t) = &hop.caller_flow {
                flows.push_str(&format!(";{}={t}", route::CALLER_FLOW));
            }
            if let Some(t) = route::flow_token(target, &self.name) {
                flows.push_str(&format!(";{}={t}", route::CALLEE_FLOW));
            }
            let inbound = self.inbound_transport(msg);
            w.add_record_route(&self.proxy.local.route_uri(inbound, &flows));
            if inbound != target.transport {
                // Double Record-Route (RFC 5658): the callee reaches us on its transport.
                w.add_record_route(&self.proxy.local.route_uri(target.transport, &flows));
            }
        }
        let via_addr = route::host_port(self.proxy.local.address(target.transport));
        let tp = target.transport.via_name();
        w.prepend_via(&format!("SIP/2.0/{tp} {via_addr};branch={branch};rport"));
        Ok(w.finish())
    }

    fn inbound_transport(&self, msg: &Message<'_>) -> Transport {
        msg.top_via()
            .map_or(Transport::Udp, |v| route::via_transport(v.transport))
    }
}
