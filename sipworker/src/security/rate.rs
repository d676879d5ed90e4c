//! Requests per second per source IP: a token bucket, and a ban for sustained floods.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_config::{IpNet, Security};

use super::event::canonical_ip;
use super::lru::Lru;
use super::SharedCounts;

/// Idle buckets dropped by one call, at most.
const PURGE_PER_CALL: usize = 4;
/// Drops closer together than this belong to one flood.
const FLOOD_GAP: Duration = Duration::from_secs(1);

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: drop it without an answer.
    Drop,
    /// Over the rate for [`RateLimiter::DEFAULT_SUSTAIN`] without a break: drop it and ban
    /// the source (reason `rate`); `dropped` requests were dropped during that flood.
    /// Returned once per flood.
    Ban {
        /// Requests dropped during the flood.
        dropped: u64,
    },
}

/// A per-IP token bucket: `requests_per_second_per_ip` tokens a second, holding at most
/// twice that (so a whole office re-registering at once after an outage passes), and
/// trusted addresses never limited.
///
/// It is kept as the bucket's "theoretical arrival time" (GCRA), one `Instant` per IP,
/// which is exactly a token bucket with that rate and burst.
///
/// **Ban policy**: dropping alone bounds the work a source causes; a source that keeps
/// exceeding the rate for [`RateLimiter::DEFAULT_SUSTAIN`] (10 s) with no pause of a
/// second or more between drops is flooding, not bursting, and gets
/// [`RateDecision::Ban`]: a legitimate burst empties the bucket for a moment, a flood keeps
/// it empty.
///
/// **Bounded**: at most `capacity` IPs. Idle buckets (full again, no flood running) hold
/// nothing worth keeping and are dropped as calls come in; when the table is still full the
/// least recently seen IP goes (it simply starts again with a full bucket).
#[derive(Debug)]
pub struct RateLimiter {
    /// Time one request costs: 1 s / rate.
    interval: Duration,
    /// How far ahead of now the bucket may run: (burst - 1) × interval.
    tolerance: Duration,
    sustain: Duration,
    trusted: Vec<IpNet>,
    /// Buckets, least recently seen first.
    buckets: Lru<IpAddr, Bucket>,
    /// The buckets every worker spends from, when there are; `buckets` then keeps only
    /// this worker's view of a flood.
    shared: Option<Arc<dyn SharedCounts>>,
}

#[derive(Debug)]
struct Bucket {
    /// When the bucket will be full again if no request comes (GCRA's TAT).
    full_at: Instant,
    flood: Option<Flood>,
}

#[derive(Debug, Clone, Copy)]
struct Flood {
    since: Instant,
    last_drop: Instant,
    dropped: u64,
}

impl RateLimiter {
    /// Default bound on tracked IPs.
    pub const DEFAULT_CAPACITY: usize = 65_536;
    /// How long a source must flood before it is banned.
    pub const DEFAULT_SUSTAIN: Duration = Duration::from_secs(10);
    /// The burst allowed, as a multiple of the per-second rate.
    pub const BURST_FACTOR: u32 = 2;

    /// A limiter following `[security]`.
    pub fn new(security: &Security) -> Self {
        Self::with_capacity(security, Self::DEFAULT_CAPACITY)
    }

    /// A limiter tracking at most `capacity` IPs.
    pub fn with_capacity(security: &Security, capacity: usize) -> Self {
        let mut limiter = RateLimiter {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            sustain: Self::DEFAULT_SUSTAIN,
            trusted: Vec::new(),
            buckets: Lru::new(capacity),
            shared: None,
        };
        limiter.reconfigure(security);
        limiter
    }

    /// Spends requests from `buckets`, which other workers spend from too.
    pub fn share(&mut self, buckets: Arc<dyn SharedCounts>) {
        self.shared = Some(buckets);
    }

    /// Sets how long a flood lasts before [`RateDecision::Ban`].
    pub fn with_sustain(mut self, sustain: Duration) -> Self {
        self.sustain = sustain;
        self
    }

    /// Applies reloaded `[security]` settings; running buckets keep their state.
    pub fn reconfigure(&mut self, security: &Security) {
        let rate = security.requests_per_second_per_ip.max(1);
        let burst = rate.saturating_mul(Self::BURST_FACTOR);
        self.interval = Duration::from_secs(1) / rate;
        self.tolerance = self
            .interval
            .checked_mul(burst - 1)
            .unwrap_or(Duration::from_secs(2));
        self.trusted = security.trusted_ips.clone();
    }

    /// Decides on one request from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> RateDecision {
        let ip = canonical_ip(ip);
        if self.trusted.iter().any(|net| net.contains(ip)) {
            return RateDecision::Allow;
        }
        self.buckets.purge_oldest(PURGE_PER_CALL, |b| {
            b.full_at <= now
                && b.flood
                    .is_none_or(|f| now.saturating_duration_since(f.last_drop) > FLOOD_GAP)
        });
        if self.buckets.get(&ip).is_some() {
            self.buckets.renew(&ip);
        } else {
            self.buckets.insert(
                ip,
                Bucket {
                    full_at: now,
                    flood: None,
                },
            );
        }
        let (interval, tolerance, sustain) = (self.interval, self.tolerance, self.sustain);
        let Some(bucket) = self.buckets.get_mut(&ip) else {
            return RateDecision::Allow;
        };
        if bucket
            .flood
            .is_some_and(|f| now.saturating_duration_since(f.last_drop) > FLOOD_GAP)
        {
            bucket.flood = None;
        }
        let shared = self.shared.as_ref();
        let within = match shared.and_then(|s| s.spend(ip, interval, tolerance)) {
            Some(within) => within,
            None if bucket.full_at.saturating_duration_since(now) <= tolerance => {
                let from = bucket.full_at.max(now);
                bucket.full_at = from.checked_add(interval).unwrap_or(from);
                true
            }
            None => false,
        };
        if within {
            return RateDecision::Allow;
        }
        let flood = bucket.flood.get_or_insert(Flood {
            since: now,
            last_drop: now,
            dropped: 0,
        });
        flood.last_drop = now;
        flood.dropped = flood.dropped.saturating_add(1);
        if now.saturating_duration_since(flood.since) >= sustain {
            let dropped = flood.dropped;
            bucket.flood = None;
            return RateDecision::Ban { dropped };
        }
        RateDecision::Drop
    }

    /// Whether one request from `ip` at `now` is within the rate. (Ignores the ban
    /// escalation: use [`RateLimiter::check`] or [`super::Guard::admit`] for that.)
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.check(ip, now) == RateDecision::Allow
    }

    /// How many IPs have a bucket.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32) -> RateLimiter {
        RateLimiter::new(&Security {
            requests_per_second_per_ip: rate,
            trusted_ips: vec!["127.0.0.0/8".parse().unwrap()],
            ..Security::default()
        })
    }

    const IP: &str = "192.0.2.7";

    fn ip() -> IpAddr {
        IP.parse().unwrap()
    }

    fn allowed(l: &mut RateLimiter, at: Instant, n: u32) -> u32 {
        (0..n).filter(|_| l.allow(ip(), at)).count() as u32
    }

    #[test]
    fn burst_of_twice_the_rate_then_refill() {
        let t0 = Instant::now();
        let mut l = limiter(10);
        assert_eq!(allowed(&mut l, t0, 50), 20);
        // Refill: one request per 100 ms.
        assert_eq!(allowed(&mut l, t0 + Duration::from_millis(100), 5), 1);
        assert_eq!(allowed(&mut l, t0 + Duration::from_millis(350), 5), 2);
        // After 2 s of quiet the bucket is full again.
        assert_eq!(allowed(&mut l, t0 + Duration::from_millis(2_500), 50), 20);
    }

    #[test]
    fn steady_rate_is_never_dropped() {
        let t0 = Instant::now();
        let mut l = limiter(10);
        for i in 0..1_000u64 {
            assert!(l.allow(ip(), t0 + Duration::from_millis(i * 100)), "{i}");
        }
    }

    #[test]
    fn trusted_are_never_limited() {
        let t0 = Instant::now();
        let mut l = limiter(1);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..1_000).all(|_| l.allow(local, t0)));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn sustained_flood_is_banned_once_a_burst_is_not() {
        let t0 = Instant::now();
        let mut l = limiter(10);
        // A burst: 100 requests at once, then quiet.
        assert_eq!(allowed(&mut l, t0, 100), 20);
        // A flood: 50 requests a second for 12 s.
        let start = t0 + Duration::from_secs(5);
        let mut bans = Vec::new();
        for i in 0..600u64 {
            let at = start + Duration::from_millis(i * 20);
            if let RateDecision::Ban { dropped } = l.check(ip(), at) {
                bans.push((i, dropped));
            }
        }
        assert_eq!(bans.len(), 1, "{bans:?}");
        let (i, dropped) = bans[0];
        // Banned 10 s into the flood, after roughly 40 of every 50 requests were dropped.
        // First drop at request 24 (0.48 s in), so the ban comes at request 524.
        assert!((520..=530).contains(&i), "{i}");
        assert!((380..=420).contains(&dropped), "{dropped}");
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_capacity(&Security::default(), 64);
        for i in 0..10_000u32 {
            let a = IpAddr::from((0xC633_6400u32 + i).to_be_bytes());
            assert!(l.allow(a, t0));
        }
        assert!(l.tracked() <= 64);
        // Idle buckets are dropped as time passes.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..64 {
            l.allow(ip(), later);
        }
        assert!(l.tracked() < 64, "{}", l.tracked());
    }
}
