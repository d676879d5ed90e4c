//! Which worker holds a server transaction, when the UDP workers share one socket.
//!
//! Any worker may read the next datagram (see `sipcraft_ipc::claims`). A request that starts
//! a server transaction claims its key; a retransmission, an ACK for a non-2xx response or
//! a CANCEL finds the claim and goes to the worker that holds the transaction, posted to its
//! mailbox (`transport::mail`; over the bus when the mailbox is full).
//! A request handed over is not checked again: the receiver takes it as it is, so a stale
//! claim costs one hand-off and never loops.
//!
//! Registrations are kept together too. Each worker has its own replica of the bindings,
//! and a change reaches the others over the bus a little later; so a worker whose REGISTER
//! changed a binding marks the address of record as its own for [`AOR_TTL_S`], and a
//! REGISTER for that AOR read by another worker meanwhile goes to it. A phone's registration, a
//! fetch right after it or a quick change of mind thus meet the state they follow, as
//! with one process. A REGISTER for an AOR nobody marked (a refresh, minutes after the
//! last) is answered where it lands.

use sipcraft_config::Transport;
use sipcraft_ipc::wire::{Direct, FromChild, SipHandoff};
use sipcraft_sip::transaction::ServerKey;
use sipcraft_sip::Message;

use super::Core;
use crate::transport::Target;

/// How long a claim lasts when its transaction's end is not seen (a transaction removed
/// without its last timer, or a worker that died): a non-INVITE transaction lives 64×T1 at
/// most; an INVITE may ring for `[proxy] ring_timeout_s` and then wait out Timer H, so its
/// claim lasts that long plus this.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const NON_INVITE_TTL_S: u32 = 40;
/// How long a worker that changed a binding keeps that AOR's REGISTERs: far longer
/// than a change takes to reach the other workers (lazy changes wait 50 ms at most).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const AOR_TTL_S: u32 = 2;

/// This worker's view of the claim table.
pub struct Claimer {
    #[cfg(target_os = "linux")]
    pub table: std::sync::Arc<sipcraft_ipc::claims::Claims>,
    /// This worker's number: `udp-N` is N.
    pub me: u8,
    /// This worker's `[[listen]]` entry: keys are per entry, so a request is only ever
    /// handed to a worker reading the same socket (its answer must leave from there).
    pub listen: String,
    /// Links to the mailboxes of the workers that share the socket.
    #[cfg(target_os = "linux")]
    pub post: crate::transport::mail::Post,
}

impl Core {
    /// For a UDP request that a worker sharing the socket holds: that worker's name. A
    /// request starting a transaction claims it for this worker. A request another worker
    /// handed over (`handed`) is claimed for this one when nobody holds it, and never
    /// handed on.
    pub(super) fn claimed_elsewhere(
        &mut self,
        msg: &Message<'_>,
        key: &ServerKey,
        method: &str,
        from: &Target,
        handed: bool,
    ) -> Option<String> {
        if from.transport != Transport::Udp || from.conn.is_some() {
            return None;
        }
        let claims = self.claims.as_ref()?;
        let invite_ttl = self
            .config
            .proxy
            .ring_timeout_s
            .try_into()
            .unwrap_or(u32::MAX)
            .saturating_add(NON_INVITE_TTL_S);
        if handed {
            claims.take(key, method, invite_ttl);
            return None;
        }
        // The transaction first: a retransmission belongs where its transaction is, here
        // or elsewhere.
        match claims.holder(key) {
            Some(owner) if owner == claims.me => return None,
            Some(owner) => return Some(format!("udp-{owner}")),
            None => {}
        }
        // Then the extension, for a new REGISTER; the worker it goes to claims it.
        let aor = (method == "REGISTER").then(|| aor_of(msg)).flatten();
        if let Some(owner) = aor.and_then(|aor| claims.aor_elsewhere(&aor)) {
            return Some(format!("udp-{owner}"));
        }
        let owner = claims.elsewhere(key, method, invite_ttl)?;
        Some(format!("udp-{owner}"))
    }

    /// This worker changed a binding of the AOR of `msg`: it keeps that AOR's
    /// REGISTERs for a while (see the module's comment).
    pub(super) fn registered_here(&mut self, msg: &Message<'_>) {
        if let (Some(claims), Some(aor)) = (&self.claims, aor_of(msg)) {
            claims.mark_aor(&aor);
        }
    }

    /// The server transaction `key` ended: its claim goes.
    pub(super) fn unclaim(&mut self, key: &ServerKey) {
        if let Some(c) = &self.claims {
            c.release(key);
        }
    }

    /// Sends `msg`, received from `from`, to worker `to`, which holds its transaction:
    /// straight to its mailbox when it shares this worker's socket, else over the bus.
    pub(super) fn hand_over(&mut self, to: String, msg: &Message<'_>, from: &Target) {
        self.counters.handed_off += 1;
        let h = SipHandoff {
            transport: from.transport,
            peer: from.peer,
            connection: from.conn,
            outbound: false,
            bytes: msg.as_bytes().to_vec(),
        };
        #[cfg(target_os = "linux")]
        if let Some(c) = &self.claims {
            if c.post.send(&self.name, &to, &h) {
                return;
            }
        }
        self.outbox.send(FromChild::Send {
            to,
            msg: Direct::Sip(h),
        });
    }
}

/// The extension a REGISTER is for.
fn aor_of(msg: &Message<'_>) -> Option<String> {
    crate::registrar::aor_user(&msg.to().ok()?)
}

#[cfg(target_os = "linux")]
impl Claimer {
    fn aor_key(&self, aor: &str) -> sipcraft_ipc::claims::Key {
        self.table.key(&["aor", &self.listen, aor])
    }

    fn txn_key(&self, key: &ServerKey) -> sipcraft_ipc::claims::Key {
        self.table.key(&[&self.listen, key.sent_by(), key.branch()])
    }

    fn aor_elsewhere(&self, aor: &str) -> Option<u8> {
        self.table
            .holder(self.aor_key(aor))
            .filter(|&o| o != self.me)
    }

    fn mark_aor(&self, aor: &str) {
        self.table.claim(self.aor_key(aor), self.me, AOR_TTL_S);
    }

    fn holder(&self, key: &ServerKey) -> Option<u8> {
        self.table.holder(self.txn_key(key))
    }

    /// Claims the transaction of a request that starts one (not an ACK or a CANCEL, which
    /// belong to the INVITE with the same branch; an ACK for a 2xx has a branch of its own
    /// and no claim, and is routed where it lands): the worker that already holds it, if
    /// that is another one.
    fn elsewhere(&self, key: &ServerKey, method: &str, invite_ttl: u32) -> Option<u8> {
        use sipcraft_ipc::claims::Claim;
        let ttl = match method {
            "ACK" | "CANCEL" => return None,
            "INVITE" => invite_ttl,
            _ => NON_INVITE_TTL_S,
        };
        match self.table.claim(self.txn_key(key), self.me, ttl) {
            Claim::Held(owner) if owner != self.me => Some(owner),
            Claim::Held(_) | Claim::Mine | Claim::Untracked => None,
        }
    }

    /// A handed-over request's transaction, claimed for this worker unless another holds it.
    fn take(&self, key: &ServerKey, method: &str, invite_ttl: u32) {
        let _ = self.elsewhere(key, method, invite_ttl);
    }

    fn release(&self, key: &ServerKey) {
        self.table.release(self.txn_key(key), self.me);
    }
}

#[cfg(not(target_os = "linux"))]
impl Claimer {
    fn aor_elsewhere(&self, _aor: &str) -> Option<u8> {
        None
    }

    fn mark_aor(&self, _aor: &str) {}

    fn holder(&self, _key: &ServerKey) -> Option<u8> {
        None
    }

    fn elsewhere(&self, _key: &ServerKey, _method: &str, _invite_ttl: u32) -> Option<u8> {
        None
    }

    fn take(&self, _key: &ServerKey, _method: &str, _invite_ttl: u32) {}

    fn release(&self, _key: &ServerKey) {}
}

/// Authentication failures and request rates per source address, kept in the table by
/// every worker.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct SourceCounts(pub std::sync::Arc<sipcraft_ipc::claims::Claims>);

#[cfg(target_os = "linux")]
impl SourceCounts {
    /// The key of `ip`'s figure named `what`, from the address's octets.
    fn key(&self, what: &str, ip: std::net::IpAddr) -> sipcraft_ipc::claims::Key {
        match ip {
            std::net::IpAddr::V4(a) => self.0.key::<&[u8]>(&[what.as_bytes(), &a.octets()]),
            std::net::IpAddr::V6(a) => self.0.key::<&[u8]>(&[what.as_bytes(), &a.octets()]),
        }
    }
}

#[cfg(target_os = "linux")]
impl crate::security::SharedCounts for SourceCounts {
    fn add(&self, ip: std::net::IpAddr, window_s: u32) -> Option<u32> {
        self.0.count(self.key("auth-failures", ip), window_s)
    }

    fn forget(&self, ip: std::net::IpAddr) {
        self.0.forget(self.key("auth-failures", ip));
    }

    fn spend(
        &self,
        ip: std::net::IpAddr,
        interval: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> Option<bool> {
        let key = self.key("rate", ip);
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.spend(key, us(interval), us(tolerance))
    }
}
