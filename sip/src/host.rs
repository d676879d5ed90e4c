//! Hosts as they appear in URIs and Via sent-by: a domain name, an IPv4 address or an IPv6
//! reference in brackets (RFC 3261 §25.1, RFC 5118).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{bad, SResult, SyntaxError};

/// A host: domain name or IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    /// A host name, as written (compare with [`Host::eq_host`], which ignores case).
    Domain(&'a str),
    /// A dotted IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (written `[...]` in SIP).
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Reads a host: `[IPv6]`, dotted IPv4, or a host name.
    pub fn parse(s: &'a str) -> SResult<Host<'a>> {
        if let Some(inner) = s.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return bad("unterminated IPv6 reference");
            };
            return parse_v6(inner).map(Host::V6);
        }
        // An address is the common case in Via and Contact: one pass, and a name starting
        // with a digit (or anything else) falls through to the full check.
        if s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            if let Some(a) = parse_v4(s) {
                return Ok(Host::V4(a));
            }
        }
        match classify(s) {
            HostKind::Name => Ok(Host::Domain(s)),
            // All-numeric labels are not a valid host name either.
            HostKind::Numeric => parse_v4(s)
                .map(Host::V4)
                .ok_or(SyntaxError("invalid IPv4 address")),
            HostKind::Invalid => bad("invalid host name"),
        }
    }

    /// Reads a Via `received` value: an IPv4 address, or an IPv6 address with or without
    /// brackets (RFC 5118 §4.5 asks to accept both).
    pub fn parse_address(s: &'a str) -> SResult<Host<'a>> {
        if s.starts_with('[') {
            return Host::parse(s);
        }
        if let Some(a) = parse_v4(s) {
            return Ok(Host::V4(a));
        }
        parse_v6(s).map(Host::V6)
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Domain(_) => None,
        }
    }

    /// Host equality as RFC 3261 §19.1.4 wants it: names case-insensitively, addresses by
    /// value.
    pub fn eq_host(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Host::Domain(a), Host::Domain(b)) => a
                .trim_end_matches('.')
                .eq_ignore_ascii_case(b.trim_end_matches('.')),
            (Host::V4(a), Host::V4(b)) => a == b,
            (Host::V6(a), Host::V6(b)) => a == b,
            _ => false,
        }
    }
}

impl From<IpAddr> for Host<'static> {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// `IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT`, each at most 255
/// (leading zeros allowed, as the grammar allows them).
fn parse_v4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut idx, mut val, mut digits) = (0usize, 0u16, 0u8);
    for &b in s.as_bytes() {
        if b == b'.' {
            if digits == 0 {
                return None;
            }
            *octets.get_mut(idx)? = u8::try_from(val).ok()?;
            idx += 1;
            (val, digits) = (0, 0);
        } else if b.is_ascii_digit() && digits < 3 {
            val = val * 10 + u16::from(b - b'0');
            digits += 1;
        } else {
            return None;
        }
    }
    if idx != 3 || digits == 0 {
        return None;
    }
    *octets.get_mut(3)? = u8::try_from(val).ok()?;
    Some(Ipv4Addr::from(octets))
}

enum HostKind {
    Name,
    Numeric,
    Invalid,
}

/// Byte classes of a host name, for [`classify`].
const INVALID: u8 = 0;
const DIGIT: u8 = 1;
const LETTER: u8 = 2;
const HYPHEN: u8 = 3;
const DOT: u8 = 4;

static HOST_CLASS: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            DIGIT
        } else if b.is_ascii_alphabetic() || b == b'_' {
            LETTER
        } else if b == b'-' {
            HYPHEN
        } else if b == b'.' {
            DOT
        } else {
            INVALID
        };
        i += 1;
    }
    t
};

/// Whether a byte of class `cur` may not follow one of class `prev` (a label may not be
/// empty, nor start or end with `-`), indexed `prev * 5 + cur`.
static BAD_PAIR: [bool; 25] = {
    let mut t = [false; 25];
    let mut prev = 0;
    while prev < 5 {
        t[prev * 5 + INVALID as usize] = true;
        prev += 1;
    }
    t[DOT as usize * 5 + DOT as usize] = true;
    t[HYPHEN as usize * 5 + DOT as usize] = true;
    t[DOT as usize * 5 + HYPHEN as usize] = true;
    t
};

/// One pass over a host that is not an IPv6 reference: digits and dots only (an IPv4
/// address to check), a valid `hostname` (`*( domainlabel "." ) toplabel [ "." ]`, with `_`
/// tolerated since real deployments use it), or neither. Table-driven and branch-free per
/// byte: the verdict is read at the end.
fn classify(s: &str) -> HostKind {
    let b = s.strip_suffix('.').unwrap_or(s).as_bytes();
    if b.is_empty() || b.len() > 255 {
        return HostKind::Invalid;
    }
    let mut prev = DOT;
    let mut bad = false;
    let mut name = false;
    for &c in b {
        let class = HOST_CLASS[usize::from(c)];
        bad |= BAD_PAIR[usize::from(prev) * 5 + usize::from(class)];
        name |= class == LETTER || class == HYPHEN;
        prev = class;
    }
    if bad || prev == HYPHEN {
        HostKind::Invalid
    } else if name {
        HostKind::Name
    } else {
        HostKind::Numeric
    }
}

/// An IPv6 address; also tolerates the three-colon form before an embedded IPv4 address
/// that RFC 3261's ABNF allowed (`2001:db8:::192.0.2.1`, RFC 5118 §4.10).
fn parse_v6(s: &str) -> SResult<Ipv6Addr> {
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Ok(a);
    }
    if s.len() <= 64 && s.contains(":::") && s.contains('.') {
        let fixed = s.replacen(":::", "::", 1);
        if let Ok(a) = fixed.parse::<Ipv6Addr>() {
            return Ok(a);
        }
    }
    bad("invalid IPv6 address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "example.com",
            "192.0.2.1",
            "[2001:db8::10]",
            "a-b.c_d.example.",
            "[::1]",
        ] {
            let h = Host::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(h.to_string(), s);
        }
        assert_eq!(
            Host::parse("[2001:db8:::192.0.2.1]").map(|h| h.to_string()),
            Ok("[2001:db8::c000:201]".to_string())
        );
        assert!(Host::parse("2001:db8::10").is_err());
        assert!(Host::parse("[2001:db8::10").is_err());
        assert!(Host::parse("256.1.1.1").is_err());
        assert!(Host::parse("1.2.3").is_err());
        assert!(Host::parse("1.2.3.4.5").is_err());
        assert!(Host::parse("1..3.4").is_err());
        assert_eq!(
            Host::parse("010.000.002.001"),
            Ok(Host::V4(Ipv4Addr::new(10, 0, 2, 1)))
        );
        assert!(Host::parse("-bad.com").is_err());
        assert!(Host::parse("").is_err());
        assert!(Host::parse("a b").is_err());
    }

    #[test]
    fn received_with_or_without_brackets() {
        let a = Host::parse_address("2001:db8::9:255");
        let b = Host::parse_address("[2001:db8::9:255]");
        assert_eq!(a, b);
        assert!(a.is_ok());
        assert_eq!(
            Host::parse_address("192.0.2.200"),
            Ok(Host::V4(Ipv4Addr::new(192, 0, 2, 200)))
        );
        assert!(Host::parse_address("example.com").is_err());
    }

    #[test]
    fn host_equality() {
        let a = Host::parse("EXAMPLE.com").unwrap_or(Host::Domain(""));
        let b = Host::parse("example.COM").unwrap_or(Host::Domain("x"));
        assert!(a.eq_host(&b));
        assert!(!a.eq_host(&Host::V4(Ipv4Addr::LOCALHOST)));
    }
}
