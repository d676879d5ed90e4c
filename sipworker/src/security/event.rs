//! Ban events and the log lines operators' fail2ban filters match.
//!
//! # The log line contract
//!
//! These two lines are a stable interface: fields are never renamed, reordered or removed;
//! a new field could only ever be appended at the end, so filters should not anchor the end
//! of the line. Each is one line of space-separated `key=value` fields after a fixed prefix,
//! and no value ever contains a space, `=` or a control character (user names from the
//! network are sanitized, see [`log_safe_user`]), so a user name cannot forge a field. The
//! logging layer adds its own timestamp and level in front.
//!
//! A ban (emitted once, when the ban starts, by [`BanEvent::log_line`]):
//!
//! ```text
//! sipcraft ban: ip=<ip> user=<user|-> reason=<auth-failures|rate> failures=<n> ban_s=<secs>
//! sipcraft ban: ip=192.0.2.7 user=1001 reason=auth-failures failures=10 ban_s=600
//! sipcraft ban: ip=2001:db8::7 user=- reason=rate failures=4210 ban_s=600
//! ```
//!
//! `failures` counts the offending events: failed authentications for `auth-failures`,
//! dropped requests for `rate`. `user` is the user name of the failure that triggered the
//! ban, or `-`. IPv4-mapped IPv6 addresses are written as IPv4.
//!
//! A failed authentication (emitted by the registrar for each failure, [`auth_failure_line`]):
//!
//! ```text
//! sipcraft auth failure: ip=<ip> user=<user|-> reason=<verdict>
//! sipcraft auth failure: ip=192.0.2.7 user=1001 reason=wrong-password
//! ```
//!
//! sipcraft already drops a banned source itself; fail2ban moves the ban to the firewall
//! (and keeps it across restarts). An example filter, `/etc/fail2ban/filter.d/sipcraft.conf`:
//!
//! ```text
//! [Definition]
//! failregex = sipcraft ban: ip=<HOST> user=\S+ reason=\S+ failures=\d+ ban_s=\d+
//! ignoreregex =
//! ```
//!
//! with `maxretry = 1` in the jail (sipcraft has already counted), or, to let fail2ban do
//! the counting itself:
//!
//! ```text
//! failregex = sipcraft auth failure: ip=<HOST> user=\S+ reason=\S+
//! ```

use std::fmt;
use std::net::IpAddr;

/// Longest user name written to a log line; longer ones are cut.
pub const MAX_LOG_USER: usize = 64;

/// Why an address was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanReason {
    /// Too many failed authentications within the window.
    AuthFailures,
    /// Requests above the rate limit for a sustained time.
    Rate,
}

impl BanReason {
    /// The `reason=` token of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::AuthFailures => "auth-failures",
            BanReason::Rate => "rate",
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ban that just started. Returned exactly once per ban, by the call that caused it: log
/// [`BanEvent::log_line`] and tell the other workers (the ban list is per worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEvent {
    /// The banned address (IPv4-mapped IPv6 addresses as IPv4).
    pub ip: IpAddr,
    /// The user name of the failure that triggered the ban, already log-safe.
    pub user: Option<String>,
    /// Why.
    pub reason: BanReason,
    /// Failed authentications (`AuthFailures`) or dropped requests (`Rate`).
    pub failures: u64,
    /// Length of the ban, seconds.
    pub ban_s: u64,
}

impl BanEvent {
    /// The one stable line for logs and fail2ban (see the module docs for the contract):
    /// `sipcraft ban: ip=192.0.2.7 user=1001 reason=auth-failures failures=10 ban_s=600`.
    pub fn log_line(&self) -> String {
        format!(
            "sipcraft ban: ip={} user={} reason={} failures={} ban_s={}",
            canonical_ip(self.ip),
            self.user.as_deref().map_or("-".into(), log_safe_user),
            self.reason,
            self.failures,
            self.ban_s
        )
    }
}

impl fmt::Display for BanEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.log_line())
    }
}

/// The stable line for one failed authentication (see the module docs):
/// `sipcraft auth failure: ip=192.0.2.7 user=1001 reason=wrong-password`. `reason` is
/// [`Verdict::as_str`](crate::auth::Verdict::as_str); `user` comes from the network and is
/// sanitized here.
pub fn auth_failure_line(ip: IpAddr, user: &str, reason: &str) -> String {
    format!(
        "sipcraft auth failure: ip={} user={} reason={}",
        canonical_ip(ip),
        log_safe_user(user),
        log_safe_user(reason)
    )
}

/// A user name made safe for a `key=value` log field: at most [`MAX_LOG_USER`] characters;
/// letters, digits and `. _ - + @ !  ~ * ' ( ) % & ; ?` kept (the SIP user-part set, less the
/// ones that could fool a filter), anything else (space, `=`, quotes, control characters,
/// non-ASCII) written as `%XX` per byte; empty becomes `-`.
pub fn log_safe_user(user: &str) -> String {
    if user.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(user.len().min(MAX_LOG_USER));
    for b in user.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'.' | b'_'
                    | b'-'
                    | b'+'
                    | b'@'
                    | b'!'
                    | b'~'
                    | b'*'
                    | b'\''
                    | b'('
                    | b')'
                    | b'&'
                    | b';'
                    | b'?'
            );
        let piece = if keep {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        };
        if out.len() + piece.len() > MAX_LOG_USER {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// IPv4-mapped IPv6 addresses as IPv4, so one source has one spelling everywhere.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_line_is_the_documented_format() {
        let e = BanEvent {
            ip: "::ffff:192.0.2.7".parse().unwrap(),
            user: Some("1001".into()),
            reason: BanReason::AuthFailures,
            failures: 20,
            ban_s: 600,
        };
        assert_eq!(
            e.log_line(),
            "sipcraft ban: ip=192.0.2.7 user=1001 reason=auth-failures failures=20 ban_s=600"
        );
        let r = BanEvent {
            ip: "2001:db8::7".parse().unwrap(),
            user: None,
            reason: BanReason::Rate,
            failures: 4210,
            ban_s: 600,
        };
        assert_eq!(
            r.to_string(),
            "sipcraft ban: ip=2001:db8::7 user=- reason=rate failures=4210 ban_s=600"
        );
    }

    #[test]
    fn hostile_user_names_cannot_forge_fields() {
        let line = auth_failure_line(
            "198.51.100.1".parse().unwrap(),
            "x ip=10.0.0.1\nsipcraft ban: ip=10.0.0.2 ",
            "wrong-password",
        );
        assert_eq!(line.matches("ip=").count(), 1, "{line}");
        assert!(!line.contains('\n') && !line.contains("user=x "), "{line}");
        assert_eq!(log_safe_user(""), "-");
        assert_eq!(log_safe_user("1001"), "1001");
        assert_eq!(log_safe_user("é"), "%C3%A9");
        assert!(log_safe_user(&"%".repeat(1000)).len() <= MAX_LOG_USER);
    }
}
