//! In-dialog requests and ACKs for 2xx (loose routing, §16.12) and CANCEL (§16.10).

use std::sync::Arc;
use std::time::Instant;

use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::transaction::{ClientKey, ServerKey};
use sipcraft_sip::{Message, Uri};

use super::{reliability, respond, route, BranchState, Fork, Hop};
use crate::core::Core;
use crate::registrar::aor_user;
use crate::transport::{Out, Target};

impl Core {
    /// An in-dialog request (To tag present), or an ACK for a 2xx: routed by its Route
    /// headers (loose routing, §16.12), else by its Request-URI.
    pub(super) fn proxy_in_dialog(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        from: &Target,
        method: &str,
        now: Instant,
    ) -> Vec<Out> {
        let Some(target) = self.dialog_target(msg, from) else {
            let r = ResponseBuilder::new(msg, 404, "Not Found (no route)").build();
            return self.answer(msg, key, from, r, now);
        };
        let caller = crate::core::reply_target(msg, from);
        let request = crate::core::with_received(msg, from);
        let fork = Fork::new(key.clone(), method, request, caller);
        self.proxy.forks.insert(key.clone(), fork);
        if method == "BYE" {
            self.record_bye(msg);
        }
        let hop = Hop {
            target,
            uri: None,
            caller_flow: None,
        };
        self.forward_branch(msg, Some(from), key, hop, now)
    }

    /// An ACK for a 2xx: end to end, forwarded without a transaction.
    pub(crate) fn proxy_ack(&mut self, msg: &Message<'_>, from: &Target) -> Vec<Out> {
        let Some(target) = self.dialog_target(msg, from) else {
            return Vec::new();
        };
        let branch = self.proxy.new_branch(&self.name);
        match self.rewrite(
            msg,
            Some(from),
            &Hop {
                target: target.clone(),
                uri: None,
                caller_flow: None,
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

    /// Where an in-dialog request goes: the flow of the other side when our Record-Route
    /// named one, else the first Route that is not ours, else the Request-URI (a registered
    /// contact is reached through its flow).
    pub(super) fn dialog_target(&self, msg: &Message<'_>, from: &Target) -> Option<Target> {
        let mut next = None;
        let (mut caller_flow, mut callee_flow) = (None, None);
        for route in msg.routes().flatten() {
            if self.proxy.local.is_me(&route.uri) {
                if let Some(sip) = route.uri.as_sip() {
                    caller_flow = caller_flow.or(sip.params.value(route::CALLER_FLOW).flatten());
                    callee_flow = callee_flow.or(sip.params.value(route::CALLEE_FLOW).flatten());
                }
                continue;
            }
            next = Some(route.uri.to_string());
            break;
        }
        // A request from one side's flow goes to the other side's flow.
        let source = route::flow_token(from, &self.name);
        let other = match source.as_deref() {
            Some(s) if caller_flow == Some(s) => callee_flow,
            Some(s) if callee_flow == Some(s) => caller_flow,
            _ if caller_flow.is_some() != callee_flow.is_some() => caller_flow.or(callee_flow),
            _ => None,
        };
        if next.is_none() {
            let peer = msg
                .request_uri()
                .and_then(Result::ok)
                .and_then(|u| route::uri_target(&u))
                .map_or_else(|| from.peer, |t| t.peer);
            if let Some(t) = other.and_then(|token| route::flow_target(token, &self.name, peer)) {
                return Some(t);
            }
        }
        let uri_text = match next {
            Some(u) => u,
            None => msg.request_uri()?.ok()?.to_string(),
        };
        let now_ms = crate::now_ms();
        let uri = Uri::parse(&uri_text).ok()?;
        // The contact is looked up under its user part, then under the To of the request:
        // a WebSocket client's contact (`sip:a8x2@df7j.invalid;transport=ws`, RFC 7118 §5)
        // names no extension, and is reachable only through its flow.
        let users = [
            uri.as_sip()
                .and_then(|u| u.user_decoded())
                .map(|u| u.into_owned()),
            msg.to().ok().and_then(|t| aor_user(&t)),
        ];
        let r = self.replica.read().unwrap_or_else(|p| p.into_inner());
        for user in users.iter().flatten() {
            let found = r
                .bindings(user, now_ms)
                .find(|b| b.contact == uri_text)
                .map(|b| route::binding_target(&b.to_binding(), &self.name));
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
    pub(super) fn cancel_branches(&mut self, key: &ServerKey, now: Instant) -> Vec<Out> {
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
}
