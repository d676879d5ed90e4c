//! Authentication failures per source IP, and the bans they lead to.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_config::{IpNet, Security};

use super::event::{canonical_ip, log_safe_user, BanEvent, BanReason};
use super::lru::Lru;
use super::SharedCounts;

/// Most expired entries dropped by one call, so no single packet pays for a big cleanup.
const PURGE_PER_CALL: usize = 64;

/// Counts authentication failures per source IP and bans an IP that reaches
/// `auth_failures_before_ban` failures within `ban_window_s`, for `ban_time_s`.
///
/// - **Window**: a streak starts at an IP's first failure and lasts `ban_window_s`; the
///   streak's failures are counted, and the first failure after the window starts a new
///   streak. (A fixed window keeps one counter per IP instead of one timestamp per
///   failure; its cost is that up to twice the threshold, minus two, failures can fall into
///   one window-long span straddling two streaks.)
/// - **Success does not reset the count.** Failures are counted per IP, not per user, and a
///   success from an IP only proves that one phone there knows its own password: an
///   attacker holding one valid account (or sharing a NAT with a phone) could otherwise
///   interleave successes to guess other users' passwords for ever. The threshold is set
///   far above what a few mistyped passwords behind one NAT produce, and offices with many
///   phones behind one address belong in `trusted_ips`.
/// - **Trusted** addresses (`trusted_ips`) are never counted nor banned.
/// - **Bounded**: at most `capacity` IPs with a running count and `capacity` bans. When a
///   table is full, the oldest entry goes (the oldest streak, or the ban nearest to its
///   end, already logged for fail2ban). Expired entries are purged as calls come in.
/// - **Counted by every worker together** when the list [shares](BanList::share) a counter
///   (the UDP workers that read one socket, each seeing part of one source's requests);
///   otherwise per worker. A ban starts in the worker whose failure reaches the threshold;
///   it returns the [`BanEvent`] so the caller can log it and tell the other workers, which
///   call [`BanList::apply`].
#[derive(Debug)]
pub struct BanList {
    threshold: u32,
    window: Duration,
    ban_time: Duration,
    trusted: Vec<IpNet>,
    /// Running failure counts, oldest streak first.
    counters: Lru<IpAddr, Counter>,
    /// Active bans, oldest first.
    bans: Lru<IpAddr, Ban>,
    /// The failure counts every worker adds to, when there is one.
    shared: Option<Arc<dyn SharedCounts>>,
}

#[derive(Debug)]
struct Counter {
    since: Instant,
    failures: u32,
}

#[derive(Debug)]
struct Ban {
    until: Instant,
    reason: BanReason,
    user: Option<String>,
    failures: u64,
}

/// One active ban, for `sipcraft ctl status` / `ctl bans`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInfo {
    /// The banned address.
    pub ip: IpAddr,
    /// Seconds left, rounded up.
    pub remaining_s: u64,
    /// Why it was banned.
    pub reason: BanReason,
    /// The user name of the failure that triggered the ban (log-safe), if any.
    pub user: Option<String>,
    /// Failures (or dropped requests) that led to it.
    pub failures: u64,
}

impl BanList {
    /// Default bound on tracked IPs (and, separately, on bans): about 10 MB at most.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    /// A ban list following `[security]`.
    pub fn new(security: &Security) -> Self {
        Self::with_capacity(security, Self::DEFAULT_CAPACITY)
    }

    /// A ban list tracking at most `capacity` IPs (and `capacity` bans).
    pub fn with_capacity(security: &Security, capacity: usize) -> Self {
        let mut list = BanList {
            threshold: 1,
            window: Duration::ZERO,
            ban_time: Duration::ZERO,
            trusted: Vec::new(),
            counters: Lru::new(capacity),
            bans: Lru::new(capacity),
            shared: None,
        };
        list.reconfigure(security);
        list
    }

    /// Counts failures in `counts`, which other workers add to as well.
    pub fn share(&mut self, counts: Arc<dyn SharedCounts>) {
        self.shared = Some(counts);
    }

    /// Applies reloaded `[security]` settings. Running bans keep their end time, except that
    /// newly trusted addresses are unbanned at once.
    pub fn reconfigure(&mut self, security: &Security) {
        self.threshold = security.auth_failures_before_ban.max(1);
        self.window = Duration::from_secs(security.ban_window_s);
        self.ban_time = Duration::from_secs(security.ban_time_s);
        self.trusted = security.trusted_ips.clone();
        let trusted: Vec<IpAddr> = self
            .bans
            .iter()
            .map(|(ip, _)| *ip)
            .filter(|ip| self.is_trusted(*ip))
            .collect();
        for ip in trusted {
            self.bans.remove(&ip);
            self.counters.remove(&ip);
        }
    }

    /// Whether `ip` is in `trusted_ips` (never counted, banned nor rate limited).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// Whether `ip` is banned at `now`: its requests are dropped without an answer.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans
            .get(&canonical_ip(ip))
            .is_some_and(|ban| ban.until > now)
    }

    /// Records a failed authentication from `ip` for `user` (as sent, sanitized here).
    /// Returns the [`BanEvent`] when this failure starts a ban, exactly once per ban;
    /// `None` otherwise (including for trusted or already banned addresses, whose failures
    /// are not counted).
    pub fn record_failure(&mut self, ip: IpAddr, user: &str, now: Instant) -> Option<BanEvent> {
        let ip = canonical_ip(ip);
        self.purge(now);
        if self.is_trusted(ip) || self.is_banned(ip, now) {
            return None;
        }
        let window_s = u32::try_from(self.window.as_secs()).unwrap_or(u32::MAX);
        if let Some(failures) = self.shared.as_ref().and_then(|s| s.add(ip, window_s)) {
            if failures < self.threshold {
                return None;
            }
            if let Some(s) = &self.shared {
                s.forget(ip);
            }
            return self.ban(
                ip,
                BanReason::AuthFailures,
                Some(user),
                u64::from(failures),
                now,
            );
        }
        let failures = match self.counters.get_mut(&ip) {
            Some(c) if now.saturating_duration_since(c.since) < self.window => {
                c.failures = c.failures.saturating_add(1);
                c.failures
            }
            _ => {
                self.counters.insert(
                    ip,
                    Counter {
                        since: now,
                        failures: 1,
                    },
                );
                1
            }
        };
        if failures < self.threshold {
            return None;
        }
        self.counters.remove(&ip);
        self.ban(
            ip,
            BanReason::AuthFailures,
            Some(user),
            u64::from(failures),
            now,
        )
    }

    /// Bans `ip` for `ban_time_s` now (the rate limiter's verdict, or an operator's). Returns
    /// the event, or `None` if `ip` is trusted or already banned.
    pub fn ban(
        &mut self,
        ip: IpAddr,
        reason: BanReason,
        user: Option<&str>,
        failures: u64,
        now: Instant,
    ) -> Option<BanEvent> {
        let ip = canonical_ip(ip);
        if self.is_trusted(ip) || self.is_banned(ip, now) {
            return None;
        }
        let user = user.map(log_safe_user);
        self.bans.insert(
            ip,
            Ban {
                until: deadline(now, self.ban_time),
                reason,
                user: user.clone(),
                failures,
            },
        );
        Some(BanEvent {
            ip,
            user,
            reason,
            failures,
            ban_s: self.ban_time.as_secs(),
        })
    }

    /// Applies a ban another worker started (`remaining` left of it), without a new event.
    /// Trusted addresses are ignored; an existing longer ban is kept.
    pub fn apply(&mut self, ip: IpAddr, reason: BanReason, remaining: Duration, now: Instant) {
        let ip = canonical_ip(ip);
        let until = deadline(now, remaining);
        if self.is_trusted(ip) || self.bans.get(&ip).is_some_and(|b| b.until >= until) {
            return;
        }
        self.counters.remove(&ip);
        self.bans.insert(
            ip,
            Ban {
                until,
                reason,
                user: None,
                failures: 0,
            },
        );
    }

    /// Lifts a ban (`ctl unban`); returns whether `ip` was banned. Its failure count
    /// starts again from zero.
    pub fn unban(&mut self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.counters.remove(&ip);
        self.bans.remove(&ip).is_some()
    }

    /// The active bans at `now`, sorted by address.
    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(ip, b)| BanInfo {
                ip: *ip,
                remaining_s: ceil_secs(b.until.saturating_duration_since(now)),
                reason: b.reason,
                user: b.user.clone(),
                failures: b.failures,
            })
            .collect();
        out.sort_by_key(|b| b.ip);
        out
    }

    /// Drops expired streaks and bans (a bounded number per call; every
    /// [`BanList::record_failure`] calls it too).
    pub fn purge(&mut self, now: Instant) {
        let window = self.window;
        self.counters.purge_oldest(PURGE_PER_CALL, |c| {
            now.saturating_duration_since(c.since) >= window
        });
        self.bans.purge_oldest(PURGE_PER_CALL, |b| b.until <= now);
    }

    /// How many IPs have a running count, and how many bans are held (expired ones not yet
    /// purged included).
    pub fn tracked(&self) -> (usize, usize) {
        (self.counters.len(), self.bans.len())
    }

    /// The bound on each table.
    pub fn capacity(&self) -> usize {
        self.counters.capacity()
    }

    /// Changes the bound on each table.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.counters.set_capacity(capacity);
        self.bans.set_capacity(capacity);
    }
}

/// `now + d`, saturating instead of panicking on an absurd duration.
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security() -> Security {
        Security {
            auth_failures_before_ban: 3,
            ban_window_s: 60,
            ban_time_s: 600,
            requests_per_second_per_ip: 10,
            trusted_ips: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bans_at_threshold_exactly_once() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        let a = ip("192.0.2.7");
        assert_eq!(b.record_failure(a, "1001", t0), None);
        assert_eq!(b.record_failure(a, "1002", t0 + S), None);
        assert!(!b.is_banned(a, t0 + S));
        let ev = b.record_failure(a, "1003", t0 + 2 * S).expect("ban");
        assert_eq!(
            ev.log_line(),
            "sipcraft ban: ip=192.0.2.7 user=1003 reason=auth-failures failures=3 ban_s=600"
        );
        assert!(b.is_banned(a, t0 + 2 * S));
        assert_eq!(b.record_failure(a, "1003", t0 + 3 * S), None);
        let bans = b.bans(t0 + 3 * S);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].ip, a);
        assert_eq!(bans[0].remaining_s, 599);
        assert_eq!(bans[0].reason, BanReason::AuthFailures);
        // Another address is unaffected.
        assert!(!b.is_banned(ip("192.0.2.8"), t0 + 3 * S));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        let a = ip("192.0.2.7");
        b.record_failure(a, "u", t0);
        b.record_failure(a, "u", t0 + 30 * S);
        // The streak began at t0; at t0 + 60 s a new one starts.
        assert_eq!(b.record_failure(a, "u", t0 + 60 * S), None);
        assert_eq!(b.record_failure(a, "u", t0 + 61 * S), None);
        assert!(b.record_failure(a, "u", t0 + 62 * S).is_some());
    }

    #[test]
    fn bans_expire() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        let a = ip("2001:db8::1");
        for _ in 0..3 {
            b.record_failure(a, "u", t0);
        }
        assert!(b.is_banned(a, t0 + 599 * S));
        assert!(!b.is_banned(a, t0 + 600 * S));
        assert!(b.bans(t0 + 600 * S).is_empty());
        b.purge(t0 + 600 * S);
        assert_eq!(b.tracked(), (0, 0));
        // And counting starts over.
        assert_eq!(b.record_failure(a, "u", t0 + 601 * S), None);
    }

    #[test]
    fn trusted_are_never_banned() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        for a in [ip("10.1.2.3"), ip("::ffff:10.1.2.3")] {
            for _ in 0..100 {
                assert_eq!(b.record_failure(a, "u", t0), None);
            }
            assert!(!b.is_banned(a, t0));
            assert_eq!(b.ban(a, BanReason::Rate, None, 1, t0), None);
        }
        assert_eq!(b.tracked(), (0, 0));
    }

    #[test]
    fn newly_trusted_addresses_are_unbanned_on_reload() {
        let t0 = Instant::now();
        let mut b = BanList::new(&Security::default());
        let a = ip("192.0.2.7");
        assert!(b.ban(a, BanReason::Rate, None, 5, t0).is_some());
        let mut s = Security::default();
        s.trusted_ips.push("192.0.2.0/24".parse().unwrap());
        b.reconfigure(&s);
        assert!(!b.is_banned(a, t0));
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        b.record_failure(ip("192.0.2.9"), "u", t0);
        b.record_failure(ip("::ffff:192.0.2.9"), "u", t0);
        assert!(b.record_failure(ip("192.0.2.9"), "u", t0).is_some());
        assert!(b.is_banned(ip("::ffff:192.0.2.9"), t0));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut b = BanList::with_capacity(&security(), 100);
        for i in 0..10_000u32 {
            let a = IpAddr::from((0xC000_0000u32 + i).to_be_bytes());
            b.record_failure(a, "u", t0);
            b.record_failure(a, "u", t0);
            b.record_failure(a, "u", t0);
        }
        let (counters, bans) = b.tracked();
        assert!(counters <= 100 && bans <= 100, "{counters} {bans}");
        // The newest bans are kept.
        let last = IpAddr::from((0xC000_0000u32 + 9_999).to_be_bytes());
        assert!(b.is_banned(last, t0));
    }

    #[test]
    fn remote_bans_and_unban() {
        let t0 = Instant::now();
        let mut b = BanList::new(&security());
        let a = ip("198.51.100.4");
        b.apply(a, BanReason::AuthFailures, 30 * S, t0);
        assert!(b.is_banned(a, t0 + 29 * S));
        assert!(!b.is_banned(a, t0 + 30 * S));
        b.apply(a, BanReason::Rate, 30 * S, t0);
        assert!(b.unban(a));
        assert!(!b.is_banned(a, t0));
        assert!(!b.unban(a));
        b.apply(ip("10.0.0.1"), BanReason::Rate, 30 * S, t0);
        assert!(b.bans(t0).is_empty());
    }

    #[test]
    fn absurd_durations_do_not_panic() {
        let t0 = Instant::now();
        let mut b = BanList::new(&Security {
            ban_time_s: u64::MAX,
            ban_window_s: u64::MAX,
            auth_failures_before_ban: 0,
            ..Security::default()
        });
        assert!(b.record_failure(ip("192.0.2.1"), "u", t0).is_some());
        b.apply(ip("192.0.2.2"), BanReason::Rate, Duration::MAX, t0);
        assert_eq!(b.bans(t0).len(), 2);
    }
}
