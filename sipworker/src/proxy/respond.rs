//! Responses on the proxy's branches (RFC 3261 §16.7): provisional responses relayed, every
//! 2xx forwarded and the other branches cancelled, the best final response chosen when all
//! branches are done; Timer C; CANCEL and ACK built for a branch (§9.1, §17.1.1.3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::rewrite::Rewriter;
use sipcraft_sip::transaction::{ClientKey, ServerKey};
use sipcraft_sip::{parse, HeaderName, Limits, Message};

use super::fork::BranchState;
use crate::core::Core;
use crate::transport::Out;

/// How long a finished fork is kept, for 2xx retransmissions (64·T1).
const LINGER: Duration = Duration::from_secs(32);
/// How often at most the forks are swept for Timer C and cleanup: Timer C (minutes) may
/// fire this much late.
const SWEEP: Duration = Duration::from_millis(200);

impl Core {
    /// A response on branch `ck`, passed up by its client transaction.
    /// `parsed` is the response already parsed, when the caller has it.
    pub(crate) fn proxy_response(
        &mut self,
        ck: &ClientKey,
        response: &Out,
        parsed: Option<&Message<'_>>,
        now: Instant,
    ) -> Vec<Out> {
        let Some(key) = self.proxy.by_branch.get(ck).cloned() else {
            return Vec::new();
        };
        if ck.method() == "CANCEL" {
            return Vec::new(); // the 200 to our CANCEL ends there
        }
        let reparsed;
        let msg = match parsed {
            Some(m) => m,
            None => match parse(&response.bytes, &self.limits) {
                Ok(m) => {
                    reparsed = m;
                    &reparsed
                }
                Err(_) => return Vec::new(),
            },
        };
        let Some(status) = msg.status() else {
            return Vec::new();
        };
        // The response as the caller gets it: our Via removed.
        let mut w = Rewriter::new(msg);
        if w.remove_top_via().is_err() {
            return Vec::new();
        }
        let relayed = w.finish();
        let Some(fork) = self.proxy.forks.get_mut(&key) else {
            return Vec::new();
        };
        let Some(branch) = fork.branches.iter_mut().find(|b| &b.key == ck) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match status {
            100 => {
                branch.state = BranchState::Proceeding;
            }
            101..=199 => {
                if branch.state == BranchState::Trying {
                    branch.state = BranchState::Proceeding;
                }
                if !fork.finished {
                    let caller = fork.caller.clone();
                    out.extend(self.send_to_caller(&key, status, relayed, caller, now));
                }
            }
            200..=299 => {
                branch.state = BranchState::Done(status);
                let first = !fork.answered;
                fork.answered = true;
                fork.finished = true;
                fork.timer_c = None;
                fork.later.clear();
                let caller = fork.caller.clone();
                if first {
                    if let Some(mut rec) = fork.record.take() {
                        rec.answered_ms = Some(crate::now_ms());
                        rec.final_status = status;
                        rec.reason = msg
                            .status_line()
                            .map(|l| l.reason.to_owned())
                            .unwrap_or_default();
                        if let (Ok(f), Ok(t)) = (msg.from(), msg.to()) {
                            rec.id = super::answered_id(
                                &rec.call_id,
                                f.tag().unwrap_or(""),
                                t.tag().unwrap_or(""),
                            );
                        }
                        self.send_record(rec);
                    }
                }
                out.extend(self.send_to_caller(&key, status, relayed, caller, now));
                if first {
                    out.extend(self.cancel_branches(&key, now));
                }
                self.linger(&key, now);
            }
            _ => {
                branch.state = BranchState::Done(status);
                if fork.finished {
                    return out;
                }
                if status >= 600 {
                    fork.later.clear();
                    fork.offer(status, relayed);
                    out.extend(self.cancel_branches(&key, now));
                    out.extend(self.finish_fork(&key, now));
                    return out;
                }
                fork.offer(status, relayed);
                if fork.all_done() {
                    out.extend(self.next_group(&key, None, now));
                }
            }
        }
        out
    }

    /// A branch failed without a response (timeout, transport error).
    pub(crate) fn proxy_branch_failed(
        &mut self,
        ck: &ClientKey,
        status: u16,
        now: Instant,
    ) -> Vec<Out> {
        let Some(key) = self.proxy.by_branch.get(ck).cloned() else {
            return Vec::new();
        };
        if ck.method() == "CANCEL" {
            return Vec::new();
        }
        let Some(fork) = self.proxy.forks.get_mut(&key) else {
            return Vec::new();
        };
        let Some(branch) = fork.branches.iter_mut().find(|b| &b.key == ck) else {
            return Vec::new();
        };
        if matches!(branch.state, BranchState::Done(_)) {
            return Vec::new();
        }
        branch.state = BranchState::Done(status);
        if fork.finished {
            return Vec::new();
        }
        let request = fork.request.clone();
        if let Ok(req) = parse(&request, &self.limits) {
            let reason = if status == 408 {
                "Request Timeout"
            } else {
                "Service Unavailable"
            };
            let r = local_response(&req, status, reason, &self.server_header);
            if let Some(f) = self.proxy.forks.get_mut(&key) {
                f.offer(status, r);
            }
        }
        if self.proxy.forks.get(&key).is_some_and(|f| f.all_done()) {
            return self.next_group(&key, None, now);
        }
        Vec::new()
    }

    /// No branch is left: the best final response goes to the caller (a 503 becomes 500,
    /// §16.7 step 6; no response at all becomes 408).
    pub(crate) fn finish_fork(&mut self, key: &ServerKey, now: Instant) -> Vec<Out> {
        let Some(fork) = self.proxy.forks.get_mut(key) else {
            return Vec::new();
        };
        if fork.finished {
            return Vec::new();
        }
        fork.finished = true;
        fork.timer_c = None;
        let caller = fork.caller.clone();
        let request = fork.request.clone();
        // The best response, or one of ours in its place.
        let best = match fork.best.take() {
            // Ours (no branch could start: the transaction table is full): said as it is.
            Some((s, b)) if b.is_empty() => Err((s, "Service Unavailable")),
            // A callee's 503 is not passed on as one (§16.7 step 6).
            Some((503, _)) => Err((500, "Server Internal Error")),
            Some(best) => Ok(best),
            None if fork.branches.is_empty() => Err((480, "Temporarily Unavailable")),
            None => Err((500, "Server Internal Error")),
        };
        let (status, bytes) = match best {
            Ok(best) => best,
            Err((s, reason)) => {
                let Ok(req) = parse(&request, &self.limits) else {
                    return Vec::new();
                };
                (s, local_response(&req, s, reason, &self.server_header))
            }
        };
        if let Some(mut rec) = fork.record.take() {
            rec.final_status = status;
            rec.ended_ms = Some(crate::now_ms());
            if rec.reason.is_empty() {
                rec.reason = crate::core::reason_of(&bytes);
            }
            self.send_record(rec);
        }
        let out = self.send_to_caller(key, status, bytes, caller, now);
        self.linger(key, now);
        out
    }

    /// Sends a response to the caller through the server transaction.
    pub(super) fn send_to_caller(
        &mut self,
        key: &ServerKey,
        status: u16,
        bytes: Vec<u8>,
        caller: crate::transport::Target,
        now: Instant,
    ) -> Vec<Out> {
        let o = Out {
            target: caller,
            bytes: Arc::from(bytes),
        };
        match self.txns.respond(key, status, o, now) {
            Ok(actions) => self.run(None, actions, now),
            Err(_) => Vec::new(),
        }
    }

    /// Keeps a finished fork around for retransmitted 2xx, then forgets it.
    pub(super) fn linger(&mut self, key: &ServerKey, now: Instant) {
        if let Some(f) = self.proxy.forks.get_mut(key) {
            f.timer_c = None;
            f.forget_at = Some(now + LINGER);
            self.proxy.schedule(now + LINGER);
        }
    }

    /// Timer C and fork cleanup. The forks are looked at only when the earliest of their
    /// deadlines is due, not at every transaction timer.
    pub(crate) fn proxy_timers(&mut self, now: Instant) -> Vec<Out> {
        if self.proxy.next_due.is_none_or(|due| due > now) {
            return Vec::new();
        }
        let ringing: Vec<ServerKey> = self
            .proxy
            .forks
            .iter()
            .filter(|(_, f)| f.timer_c.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in ringing {
            tracing::debug!("ring timeout");
            if let Some(f) = self.proxy.forks.get_mut(&key) {
                f.timer_c = None;
                f.later.clear();
                if let Some(rec) = f.record.as_mut() {
                    rec.reason = "ring timeout".into();
                }
                let request = f.request.clone();
                if let Ok(req) = parse(&request, &self.limits) {
                    f.best = Some((
                        408,
                        local_response(&req, 408, "Request Timeout", &self.server_header),
                    ));
                }
            }
            out.extend(self.cancel_branches(&key, now));
            out.extend(self.finish_fork(&key, now));
        }
        let gone: Vec<ServerKey> = self
            .proxy
            .forks
            .iter()
            .filter(|(_, f)| f.forget_at.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(f) = self.proxy.forks.remove(&key) {
                for b in f.branches {
                    self.proxy.by_branch.remove(&b.key);
                }
            }
        }
        // The next look no sooner than SWEEP from now: thousands of finished forks linger,
        // each with its own deadline, and one pass handles all that fell due meanwhile.
        self.proxy.next_due = self
            .proxy
            .forks
            .values()
            .filter_map(|f| f.timer_c.or(f.forget_at))
            .min()
            .map(|due| due.max(now + SWEEP));
        out
    }
}

/// A response the proxy makes itself (not relayed), with its Server header.
fn local_response(req: &Message<'_>, status: u16, reason: &str, server: &str) -> Vec<u8> {
    // Finished as every other answer is: a Server header, and a To tag (RFC 3261 §8.2.6.2).
    let built = ResponseBuilder::new(req, status, reason).build();
    let mut out = Vec::with_capacity(built.len() + server.len() + 40);
    crate::core::finish_response(&mut out, &built, server, None, req);
    out
}

/// The CANCEL for a forwarded request (§9.1): same Request-URI, Call-ID, From, To, CSeq
/// number and top Via; Route headers copied.
pub fn cancel_for(request: &[u8], limits: &Limits) -> Option<Vec<u8>> {
    let req = parse(request, limits).ok()?;
    let rl = req.request_line()?;
    let mut out = format!("CANCEL {} SIP/2.0\r\n", rl.uri);
    out += &format!("Via: {}\r\n", req.values(HeaderName::Via).next()?);
    copy_headers(&req, &mut out, &[HeaderName::Route]);
    out += "Max-Forwards: 70\r\n";
    copy_headers(
        &req,
        &mut out,
        &[HeaderName::From, HeaderName::To, HeaderName::CallId],
    );
    out += &format!(
        "CSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
        req.cseq().ok()?.seq
    );
    Some(out.into_bytes())
}

/// The ACK for a non-2xx final response to a forwarded INVITE (§17.1.1.3).
pub fn ack_for(request: &[u8], response: &[u8], limits: &Limits) -> Option<Vec<u8>> {
    let req = parse(request, limits).ok()?;
    let resp = parse(response, limits).ok()?;
    let rl = req.request_line()?;
    let mut out = format!("ACK {} SIP/2.0\r\n", rl.uri);
    out += &format!("Via: {}\r\n", req.values(HeaderName::Via).next()?);
    copy_headers(&req, &mut out, &[HeaderName::Route]);
    out += "Max-Forwards: 70\r\n";
    copy_headers(&req, &mut out, &[HeaderName::From, HeaderName::CallId]);
    copy_headers(&resp, &mut out, &[HeaderName::To]);
    out += &format!(
        "CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        req.cseq().ok()?.seq
    );
    Some(out.into_bytes())
}

fn copy_headers(msg: &Message<'_>, out: &mut String, names: &[HeaderName<'_>]) {
    for name in names {
        for h in msg.headers_named(*name) {
            out.push_str(h.raw_name);
            out.push_str(": ");
            out.push_str(h.value);
            out.push_str("\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:1002@127.0.0.1:5070 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.udp-0.5;rport\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKcaller;rport=4000\r\n\
        Record-Route: <sip:127.0.0.1:5060;transport=udp;lr>\r\n\
        Route: <sip:edge.example.test;lr>\r\n\
        Max-Forwards: 69\r\nFrom: <sip:1001@pbx.test>;tag=a\r\nTo: <sip:1002@pbx.test>\r\n\
        Call-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn cancel_matches_the_forwarded_invite() {
        let cancel = cancel_for(INVITE, &Limits::default()).expect("builds");
        let m = parse(&cancel, &Limits::default()).unwrap();
        assert_eq!(m.method().unwrap().as_str(), "CANCEL");
        assert_eq!(
            m.request_uri().unwrap().unwrap().to_string(),
            "sip:1002@127.0.0.1:5070"
        );
        assert_eq!(
            m.vias().count(),
            1,
            "only our Via: the CANCEL is hop by hop"
        );
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK.udp-0.5"));
        assert_eq!(m.cseq().unwrap().seq, 7);
        assert_eq!(m.cseq().unwrap().method.as_str(), "CANCEL");
        assert_eq!(m.routes().count(), 1);
        assert_eq!(m.call_id().unwrap(), "c1");
    }

    #[test]
    fn ack_takes_the_to_tag_of_the_response() {
        let resp = b"SIP/2.0 486 Busy Here\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.udp-0.5;rport\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKcaller;rport=4000\r\n\
            From: <sip:1001@pbx.test>;tag=a\r\nTo: <sip:1002@pbx.test>;tag=callee\r\n\
            Call-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let ack = ack_for(INVITE, resp, &Limits::default()).expect("builds");
        let m = parse(&ack, &Limits::default()).unwrap();
        assert_eq!(m.method().unwrap().as_str(), "ACK");
        assert_eq!(m.to().unwrap().tag(), Some("callee"));
        assert_eq!(m.cseq().unwrap().seq, 7);
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK.udp-0.5"));
        assert_eq!(m.vias().count(), 1);
    }
}
