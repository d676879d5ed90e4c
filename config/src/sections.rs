//! The optional sections: `[registrar]`, `[security]`, `[limits]`, `[proxy]`, `[supervisor]`,
//! `[dbagent]`.
//!
//! Each `Default` is the production default, so a file can leave any of them out. The same
//! postcard rule as in [`crate::model`] holds: append fields, never reorder or retype.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::AuthAlgorithm;

/// `[registrar]`: REGISTER handling and the digest challenge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registrar {
    /// Shorter requested expiries get `423 Interval Too Brief`, so phones cannot flood the
    /// registrar with refreshes.
    pub min_expires: u32,
    /// Longer requested expiries are cut to this, so a vanished phone's binding goes away.
    pub max_expires: u32,
    /// Expiry granted when the REGISTER asks for none.
    pub default_expires: u32,
    /// Bindings kept per address of record; more are refused, so one account cannot grow the
    /// location table without bound.
    pub max_contacts_per_aor: u32,
    /// Digest algorithms offered, in challenge order (one `WWW-Authenticate` each). Offering
    /// SHA-256 first lets modern phones use it while MD5-only phones still register.
    pub auth_algorithms: Vec<AuthAlgorithm>,
    /// How long a nonce is accepted; older ones get a fresh challenge with `stale=true`.
    pub nonce_lifetime_s: u64,
}

impl Default for Registrar {
    fn default() -> Self {
        Registrar {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts_per_aor: 10,
            auth_algorithms: vec![AuthAlgorithm::Md5, AuthAlgorithm::Sha256],
            nonce_lifetime_s: 300,
        }
    }
}

/// `[security]`: bans and rate limits against scanners and password guessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Security {
    /// Failed digest authentications from one IP within `ban_window_s` that get it banned.
    /// 10 is far above what a mistyped password on a few phones behind one NAT produces, and
    /// far below what a password scanner needs.
    pub auth_failures_before_ban: u32,
    /// The window over which auth failures are counted.
    pub ban_window_s: u64,
    /// How long a banned IP is ignored (its requests are dropped without an answer).
    pub ban_time_s: u64,
    /// Requests per second accepted from one IP; the excess is dropped. Bounds the work one
    /// source can cause; a whole office behind one NAT stays far below 200.
    pub requests_per_second_per_ip: u32,
    /// Addresses and networks never banned nor rate limited (e.g. the office NAT, an SBC).
    pub trusted_ips: Vec<IpNet>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            auth_failures_before_ban: 10,
            ban_window_s: 300,
            ban_time_s: 600,
            requests_per_second_per_ip: 200,
            trusted_ips: Vec::new(),
        }
    }
}

impl Security {
    /// Whether `ip` is in `trusted_ips`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_ips.iter().any(|net| net.contains(ip))
    }
}

/// An IP network, `addr/prefix_len`; a bare address is a /32 or /128. The address has no
/// bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Whether `ip` falls inside this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), self.prefix_len, 32) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix_len, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// Keeps the top `prefix` bits of a `width`-bit value.
fn mask(value: u128, prefix: u8, width: u8) -> u128 {
    let host_bits = u32::from(width - prefix.min(width));
    value
        .checked_shr(host_bits)
        .unwrap_or(0)
        .checked_shl(host_bits)
        .unwrap_or(0)
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("is not an IP address or network (expected e.g. 192.0.2.7 or 10.0.0.0/8)")]
    Syntax,
    #[error("has a prefix length past {max}")]
    PrefixTooLong { max: u8 },
    #[error("has bits set past the prefix length (did you mean {suggestion}?)")]
    HostBitsSet { suggestion: IpNet },
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, IpNetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError::Syntax)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| IpNetError::Syntax)?,
        };
        if prefix_len > max {
            return Err(IpNetError::PrefixTooLong { max });
        }
        let masked = match addr {
            IpAddr::V4(v4) => {
                let bits = mask(u128::from(u32::from(v4)), prefix_len, 32);
                IpAddr::from((bits as u32).to_be_bytes())
            }
            IpAddr::V6(v6) => IpAddr::from(mask(u128::from(v6), prefix_len, 128).to_be_bytes()),
        };
        let net = IpNet {
            addr: masked,
            prefix_len,
        };
        if masked != addr {
            return Err(IpNetError::HostBitsSet { suggestion: net });
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `[limits]`: per-worker bounds, so no input can grow memory without limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest SIP message accepted on a stream transport; larger ones get `513` and the
    /// connection is closed. UDP is bounded by the datagram size (at most 65,507 bytes of
    /// payload) and by this, whichever is smaller.
    pub max_message_bytes: u32,
    /// Open TCP connections per worker; new ones are refused beyond this.
    pub max_tcp_connections: u32,
    /// A TCP connection silent for this long is closed. Above `registrar.max_expires` by
    /// default, so a phone that only re-registers (no RFC 5626 keep-alives) stays reachable.
    pub tcp_idle_timeout_s: u64,
    /// Live SIP transactions per worker; requests beyond it get `503` with `Retry-After`.
    pub max_transactions: u32,
    /// How long a finished non-INVITE server transaction over UDP keeps its response to
    /// answer retransmissions (RFC 3261 Timer J). RFC 3261 says 64*T1 = 32 s; like
    /// Kamailio's `wt_timer` the default is 5 s: a client that got the response stops
    /// retransmitting, and 32 s of every REGISTER kept in memory caps a worker at about
    /// `max_transactions / 64` digest registrations per second.
    pub udp_linger_ms: u64,
    /// For UDP workers sharing a socket (Linux): below this many datagrams a second (all the
    /// UDP workers that share sockets, together) a datagram wakes every idle worker and the first to get a CPU
    /// takes it, the lowest latency; above it, one idle worker, the least CPU. A worker also
    /// wakes one while a tenth of what it reads are responses (calls, whose messages belong
    /// to the worker holding them). 0 always wakes one. The herd costs each idle worker a wake-up per datagram, about 1 % of a
    /// core per other worker at the default.
    pub udp_wake_all_below: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 65_535,
            max_tcp_connections: 10_000,
            tcp_idle_timeout_s: 3_900,
            max_transactions: 50_000,
            udp_linger_ms: 5_000,
            udp_wake_all_below: 3_000,
        }
    }
}

/// `[proxy]`: call routing timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Timer C: how long a call rings unanswered before sipcraft cancels it (`408`/`480` to
    /// the caller). RFC 3261 asks a general proxy for more than 3 minutes; sipcraft is the
    /// phone system that owns the call, and 60 s (about 12 rings) is what callers expect.
    pub ring_timeout_s: u64,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy { ring_timeout_s: 60 }
    }
}

/// `[supervisor]`: child restart policy and shutdown timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Supervisor {
    /// Delay before the first restart of a child that exited; it doubles on each further exit.
    pub backoff_initial_ms: u64,
    /// Ceiling for the doubling restart delay.
    pub backoff_max_ms: u64,
    /// A child that stays up this long is healthy again: its backoff and restart count reset.
    pub healthy_after_s: u64,
    /// This many restarts of one child without it ever becoming healthy is a crash loop: the
    /// supervisor stops restarting it, says so loudly and reports it in `ctl status`. With the
    /// default backoff, 5 restarts take about 3 s.
    pub crash_loop_restarts: u32,
    /// On shutdown or drain, children still running after this long are killed.
    pub stop_timeout_s: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            healthy_after_s: 60,
            crash_loop_restarts: 5,
            stop_timeout_s: 5,
        }
    }
}

/// `[dbagent]`: the dbagent's local persistence in `server.state_dir`, which it keeps with or
/// without a `[database]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbAgent {
    /// Bound of the write journal (registration changes and call records waiting for
    /// PostgreSQL, or for the cache file without one), in bytes. It caps the disk a long
    /// database outage can take; from 80 % of it the dbagent raises an alarm, and at it call
    /// records are dropped and registrations kept in the cache only (docs/schema.md). Read
    /// when the dbagent starts (segment sizes derive from it), so a change needs a restart.
    pub journal_max_bytes: u64,
}

impl DbAgent {
    /// Smallest `journal_max_bytes`: room for a few segments of a few records each.
    pub const MIN_JOURNAL_BYTES: u64 = 16 << 10;
    /// Largest `journal_max_bytes` (1 TiB): beyond any outage worth journaling.
    pub const MAX_JOURNAL_BYTES: u64 = 1 << 40;
}

impl Default for DbAgent {
    fn default() -> Self {
        // About 400,000 writes: days of registrations for thousands of phones.
        DbAgent {
            journal_max_bytes: 64 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_parses_and_matches() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host: IpNet = "192.0.2.7".parse().unwrap();
        assert_eq!(host.prefix_len, 32);
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        let all: IpNet = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn ipnet_rejects_bad_input() {
        assert_eq!(
            "10.0.0.1/8".parse::<IpNet>().unwrap_err().to_string(),
            "has bits set past the prefix length (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong { max: 32 })
        );
        assert_eq!("nope".parse::<IpNet>(), Err(IpNetError::Syntax));
    }
}
