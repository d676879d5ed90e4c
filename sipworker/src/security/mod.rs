//! Flood and brute-force protection, per source IP: a [`RateLimiter`] on every request and
//! a [`BanList`] fed by failed authentications, put together as a [`Guard`].
//!
//! Pure code with no I/O: time comes in as a `std::time::Instant` (`now`), so tests use
//! synthetic time. Every table is bounded, and nothing a packet can carry makes a call
//! panic or do unbounded work. Failure counts and rate buckets are per worker, or kept with
//! the other workers in shared memory when a [`SharedCounts`] is given (the UDP workers
//! that read one socket). A worker that starts a ban returns a [`BanEvent`] whose
//! [`BanEvent::log_line`] is the stable line fail2ban filters match (see [`event`] for the
//! contract), and which the caller shares with the other workers ([`BanList::apply`]).

mod ban;
pub mod event;
mod lru;
mod rate;

use std::net::IpAddr;
use std::time::Instant;

use sipcraft_config::Security;

pub use ban::{BanInfo, BanList};
pub use event::{auth_failure_line, log_safe_user, BanEvent, BanReason};
pub use rate::{RateDecision, RateLimiter};

/// Per-source figures that several workers keep together (the UDP workers that read one
/// socket, each seeing part of one source's requests).
pub trait SharedCounts: Send + Sync + std::fmt::Debug {
    /// Adds a failed authentication from `ip`, in a window of `window_s` seconds from its
    /// first: the count in the window, or `None` when it cannot be counted there (the
    /// caller counts on its own).
    fn add(&self, ip: std::net::IpAddr, window_s: u32) -> Option<u32>;
    /// Drops `ip`'s failure count.
    fn forget(&self, ip: std::net::IpAddr);
    /// Spends one request of `ip` from its rate bucket (`interval` per request, up to
    /// `tolerance` ahead): whether it is within the rate, or `None` when it cannot be
    /// decided there (the caller decides on its own).
    fn spend(
        &self,
        ip: std::net::IpAddr,
        interval: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> Option<bool>;
}

/// What to do with a request from a source, before looking at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Handle it.
    Allow,
    /// The source is banned: drop it without an answer.
    Banned,
    /// Over the rate: drop it without an answer.
    RateLimited,
    /// Over the rate for long enough that the source is now banned: log the event's line,
    /// share the ban with the other workers, and drop the request.
    NewBan(BanEvent),
}

/// A worker's protection: the ban list and the rate limiter, with `[security]`'s trusted
/// addresses exempt from both.
#[derive(Debug)]
pub struct Guard {
    bans: BanList,
    rate: RateLimiter,
}

impl Guard {
    /// A guard following `[security]`, with the default table bounds.
    pub fn new(security: &Security) -> Self {
        Guard {
            bans: BanList::new(security),
            rate: RateLimiter::new(security),
        }
    }

    /// Applies reloaded `[security]` settings.
    pub fn reconfigure(&mut self, security: &Security) {
        self.bans.reconfigure(security);
        self.rate.reconfigure(security);
    }

    /// Decides on a request from `ip` at `now`: banned sources first (dropped without
    /// touching the rate tables), then the rate limit.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admission {
        if self.bans.is_banned(ip, now) {
            return Admission::Banned;
        }
        match self.rate.check(ip, now) {
            RateDecision::Allow => Admission::Allow,
            RateDecision::Drop => Admission::RateLimited,
            RateDecision::Ban { dropped } => {
                match self.bans.ban(ip, BanReason::Rate, None, dropped, now) {
                    Some(event) => Admission::NewBan(event),
                    None => Admission::RateLimited,
                }
            }
        }
    }

    /// Records a failed authentication ([`crate::auth::Verdict::counts_as_failure`]);
    /// returns the event when it starts a ban.
    pub fn record_failure(&mut self, ip: IpAddr, user: &str, now: Instant) -> Option<BanEvent> {
        self.bans.record_failure(ip, user, now)
    }

    /// Counts authentication failures and spends request rates in `counts`, which other
    /// workers share.
    pub fn share(&mut self, counts: std::sync::Arc<dyn SharedCounts>) {
        self.bans.share(counts.clone());
        self.rate.share(counts);
    }

    /// The active bans, for `ctl status` / `ctl bans`.
    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        self.bans.bans(now)
    }

    /// The ban list (to apply other workers' bans, unban, purge, read sizes).
    pub fn ban_list_mut(&mut self) -> &mut BanList {
        &mut self.bans
    }

    /// The rate limiter.
    pub fn rate_limiter_mut(&mut self) -> &mut RateLimiter {
        &mut self.rate
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn guard_bans_on_failures_and_floods() {
        let t0 = Instant::now();
        let security = Security {
            auth_failures_before_ban: 2,
            requests_per_second_per_ip: 5,
            ..Security::default()
        };
        let mut g = Guard::new(&security);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.admit(a, t0), Admission::Allow);
        assert_eq!(g.record_failure(a, "1001", t0), None);
        let ev = g.record_failure(a, "1001", t0).expect("ban");
        assert_eq!(ev.reason, BanReason::AuthFailures);
        assert_eq!(g.admit(a, t0), Admission::Banned);
        assert_eq!(g.bans(t0).len(), 1);

        let f: IpAddr = "192.0.2.2".parse().unwrap();
        let mut new_bans = 0;
        let mut limited = 0;
        for i in 0..2_000u64 {
            match g.admit(f, t0 + Duration::from_millis(i * 10)) {
                Admission::NewBan(ev) => {
                    assert!(ev.log_line().contains("reason=rate"), "{}", ev.log_line());
                    new_bans += 1;
                }
                Admission::RateLimited => limited += 1,
                Admission::Banned | Admission::Allow => {}
            }
        }
        assert_eq!(new_bans, 1);
        assert!(limited > 0);
        assert!(g.ban_list_mut().unban(f));
        assert_eq!(g.rate_limiter_mut().tracked(), 1);
    }
}
