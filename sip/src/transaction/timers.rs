//! Timer values of RFC 3261 §17 (Table 4) and RFC 6026, and the two small timer shapes the
//! machines share: a doubling retransmission timer and a one-shot deadline.
//!
//! Nothing here sleeps: a machine stores the [`Instant`] at which a timer is due, reports the
//! earliest one through `next_deadline()`, and acts when it is handed a `now` at or past it.

use std::fmt;
use std::time::{Duration, Instant};

use super::Reliability;

/// The timers of RFC 3261 §17 and RFC 6026, named as there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Client INVITE request retransmission, from T1, doubling (unreliable transports only).
    A,
    /// Client INVITE transaction timeout in Calling, 64*T1.
    B,
    /// Client INVITE wait for final-response retransmissions in Completed (32 s; 0 on reliable).
    D,
    /// Client non-INVITE request retransmission, from T1, doubling up to T2 (unreliable only).
    E,
    /// Client non-INVITE transaction timeout, 64*T1.
    F,
    /// Server INVITE final-response retransmission, from T1, doubling up to T2 (unreliable only).
    G,
    /// Server INVITE wait for the ACK in Completed, 64*T1.
    H,
    /// Server INVITE wait for ACK retransmissions in Confirmed (T4; 0 on reliable).
    I,
    /// Server non-INVITE wait for request retransmissions in Completed (64*T1; 0 on reliable).
    J,
    /// Client non-INVITE wait for response retransmissions in Completed (T4; 0 on reliable).
    K,
    /// Server INVITE lifetime in Accepted (RFC 6026), 64*T1.
    L,
    /// Client INVITE lifetime in Accepted (RFC 6026), 64*T1.
    M,
    /// Server INVITE: send 100 (Trying) if the TU has not answered within 200 ms (§17.2.1).
    Trying,
}

/// Timer base values. One `Config` is shared by every transaction of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// RTT estimate: first retransmission interval and base of the 64*T1 timeouts (500 ms).
    pub t1: Duration,
    /// Cap of the non-INVITE request and INVITE response retransmission interval (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network: Timers I and K (5 s).
    pub t4: Duration,
    /// Timer D on unreliable transports; RFC 3261 asks for at least 32 s.
    pub timer_d: Duration,
    /// Timer J over UDP: how long a completed non-INVITE server transaction absorbs
    /// retransmissions (RFC 3261: 64*T1).
    pub timer_j: Duration,
    /// How long a server INVITE transaction waits for the TU before asking for a 100 (Trying).
    pub trying_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            timer_j: Duration::from_secs(32),
            trying_delay: Duration::from_millis(200),
        }
    }
}

/// Largest value any base timer is clamped to, so `64 * T1` and `now + timer` never overflow.
const MAX_BASE: Duration = Duration::from_secs(3600);

/// Why a [`Config`] was refused by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// T1 must be above zero: it is the first retransmission interval.
    ZeroT1,
    /// T2 must not be below T1.
    T2BelowT1,
    /// A value is above the one-hour ceiling (named by the field).
    TooLarge(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroT1 => f.write_str("transaction timer T1 must be above zero"),
            ConfigError::T2BelowT1 => f.write_str("transaction timer T2 must not be below T1"),
            ConfigError::TooLarge(field) => {
                write!(f, "transaction timer {field} must not exceed one hour")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the values; the config loader calls this to report a clear error. Machines built
    /// from an unchecked config still behave: they clamp T1 to at least 1 ms, T2 to at least T1
    /// and every value to at most one hour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("t1", self.t1),
            ("t2", self.t2),
            ("t4", self.t4),
            ("timer_d", self.timer_d),
            ("timer_j", self.timer_j),
            ("trying_delay", self.trying_delay),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, value)| *value > MAX_BASE) {
            return Err(ConfigError::TooLarge(name));
        }
        if self.t1.is_zero() {
            return Err(ConfigError::ZeroT1);
        }
        if self.t2 < self.t1 {
            return Err(ConfigError::T2BelowT1);
        }
        Ok(())
    }

    /// The config with every value brought into the range the machines rely on.
    pub(crate) fn sanitized(self) -> Config {
        let t1 = self.t1.clamp(Duration::from_millis(1), MAX_BASE);
        Config {
            t1,
            t2: self.t2.clamp(t1, MAX_BASE),
            t4: self.t4.min(MAX_BASE),
            timer_d: self.timer_d.min(MAX_BASE),
            timer_j: self.timer_j.min(MAX_BASE),
            trying_delay: self.trying_delay.min(MAX_BASE),
        }
    }

    /// 64*T1: Timers B, F, H, L and M, and J on unreliable transports.
    pub fn transaction_timeout(&self) -> Duration {
        self.t1 * 64
    }

    /// The value a timer starts with on the given transport, or `None` where the timer is not
    /// set at all (the retransmission timers A, E and G on reliable transports). A zero value
    /// (D, I, J, K on reliable transports) means the machine moves on at once.
    pub fn initial(&self, timer: TimerKind, reliability: Reliability) -> Option<Duration> {
        let reliable = reliability.is_reliable();
        let value = match timer {
            TimerKind::A | TimerKind::E | TimerKind::G if reliable => return None,
            TimerKind::A | TimerKind::E | TimerKind::G => self.t1,
            TimerKind::B | TimerKind::F | TimerKind::H | TimerKind::L | TimerKind::M => {
                self.transaction_timeout()
            }
            TimerKind::D | TimerKind::I | TimerKind::J | TimerKind::K if reliable => Duration::ZERO,
            TimerKind::D => self.timer_d,
            TimerKind::I | TimerKind::K => self.t4,
            TimerKind::J => self.timer_j,
            TimerKind::Trying => self.trying_delay,
        };
        Some(value)
    }
}

/// A retransmission timer (A, E, G): when it is due and the interval it was last set with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retransmit {
    pub(crate) at: Instant,
    pub(crate) interval: Duration,
}

impl Retransmit {
    /// Starts the timer `interval` after `now`.
    pub(crate) fn start(now: Instant, interval: Duration) -> Retransmit {
        Retransmit {
            at: now + interval,
            interval,
        }
    }

    /// Whether the timer is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.at <= now
    }

    /// Re-arms the timer after it fired, `next` after the time it was due. The schedule stays
    /// exact when the driver is on time; a driver that woke very late gets one retransmission
    /// and the next one a full interval later, never a burst.
    pub(crate) fn rearm(&mut self, now: Instant, next: Duration) {
        let at = self.at + next;
        self.at = if at > now { at } else { now + next };
        self.interval = next;
    }
}

/// A one-shot timer (B, D, F, H, I, J, K, L, M) and which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) kind: TimerKind,
    pub(crate) at: Instant,
}

impl Deadline {
    /// A deadline `after` from `now`.
    pub(crate) fn after(kind: TimerKind, now: Instant, after: Duration) -> Deadline {
        Deadline {
            kind,
            at: now + after,
        }
    }

    /// Whether the deadline is reached at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.at <= now
    }
}

/// The earliest of a few optional instants.
pub(crate) fn earliest(instants: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    instants.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rfc_3261_table_4() {
        let c = Config::default();
        assert_eq!(c.t1, Duration::from_millis(500));
        assert_eq!(c.t2, Duration::from_secs(4));
        assert_eq!(c.t4, Duration::from_secs(5));
        assert_eq!(c.transaction_timeout(), Duration::from_secs(32));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn reliable_transports_have_no_retransmissions_and_zero_waits() {
        let c = Config::default();
        for t in [TimerKind::A, TimerKind::E, TimerKind::G] {
            assert_eq!(c.initial(t, Reliability::Reliable), None);
            assert_eq!(c.initial(t, Reliability::Unreliable), Some(c.t1));
        }
        for t in [TimerKind::D, TimerKind::I, TimerKind::J, TimerKind::K] {
            assert_eq!(c.initial(t, Reliability::Reliable), Some(Duration::ZERO));
        }
        let udp = Reliability::Unreliable;
        assert_eq!(c.initial(TimerKind::D, udp), Some(Duration::from_secs(32)));
        assert_eq!(c.initial(TimerKind::I, udp), Some(c.t4));
        assert_eq!(c.initial(TimerKind::K, udp), Some(c.t4));
        assert_eq!(c.initial(TimerKind::J, udp), Some(Duration::from_secs(32)));
        for t in [
            TimerKind::B,
            TimerKind::F,
            TimerKind::H,
            TimerKind::L,
            TimerKind::M,
        ] {
            assert_eq!(
                c.initial(t, Reliability::Reliable),
                Some(Duration::from_secs(32))
            );
        }
    }

    #[test]
    fn validate_and_sanitize_reject_or_clamp_bad_values() {
        let zero = Config {
            t1: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(zero.validate(), Err(ConfigError::ZeroT1));
        assert_eq!(zero.sanitized().t1, Duration::from_millis(1));

        let low_t2 = Config {
            t2: Duration::from_millis(100),
            ..Config::default()
        };
        assert_eq!(low_t2.validate(), Err(ConfigError::T2BelowT1));
        assert_eq!(low_t2.sanitized().t2, Duration::from_millis(500));

        let huge = Config {
            t4: Duration::from_secs(1 << 40),
            ..Config::default()
        };
        assert_eq!(huge.validate(), Err(ConfigError::TooLarge("t4")));
        assert_eq!(huge.sanitized().t4, MAX_BASE);
    }

    #[test]
    fn late_rearm_never_bursts() {
        let t0 = Instant::now();
        let mut r = Retransmit::start(t0, Duration::from_millis(500));
        // On time: the schedule is kept exactly.
        r.rearm(t0 + Duration::from_millis(500), Duration::from_secs(1));
        assert_eq!(r.at, t0 + Duration::from_millis(1500));
        // Ten seconds late: the next one is a full interval after now.
        let late = t0 + Duration::from_secs(11);
        r.rearm(late, Duration::from_secs(2));
        assert_eq!(r.at, late + Duration::from_secs(2));
    }
}
