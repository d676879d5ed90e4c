//! `tel:` URIs (RFC 3966), enough to route on: the number and its parameters.

use std::fmt;

use super::{check_escaped, is_unreserved};
use crate::error::{bad, SResult};

/// A telephone URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The number as written, `+` and visual separators included.
    pub number: &'a str,
    /// Raw parameters, starting with `;`, or empty.
    pub params: &'a str,
}

fn is_phone_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b'*' | b'#' | b'-' | b'.' | b'(' | b')')
}

impl<'a> TelUri<'a> {
    /// Parses what follows `tel:`.
    pub(crate) fn parse_parts(s: &'a str) -> SResult<TelUri<'a>> {
        let (number, params) = match s.find(';') {
            Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("")),
            None => (s, ""),
        };
        let digits = number.strip_prefix('+').unwrap_or(number);
        if digits.is_empty() || !digits.bytes().all(is_phone_char) {
            return bad("invalid telephone number");
        }
        let ok = params.split(';').skip(1).all(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && check_escaped(v, |b| is_unreserved(b) || b"[]/:&+$".contains(&b))
        });
        if !ok {
            return bad("invalid tel URI parameter");
        }
        Ok(TelUri { number, params })
    }

    /// Whether the number is global (starts with `+`).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }

    /// The number without visual separators (`+1-201-555` gives `+1201555`).
    pub fn digits(&self) -> impl Iterator<Item = char> + 'a {
        self.number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .map(|c| c.to_ascii_uppercase())
    }

    /// RFC 3966 §4 equivalence: same number ignoring visual separators, same parameters in
    /// any order (names and values case-insensitively).
    pub fn equivalent(&self, other: &TelUri<'_>) -> bool {
        if !self.digits().eq(other.digits()) {
            return false;
        }
        let mut a: Vec<String> = self
            .params
            .split(';')
            .skip(1)
            .map(str::to_ascii_lowercase)
            .collect();
        let mut b: Vec<String> = other
            .params
            .split(';')
            .skip(1)
            .map(str::to_ascii_lowercase)
            .collect();
        a.sort();
        b.sort();
        a == b
    }
}

impl fmt::Display for TelUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tel:{}{}", self.number, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_compare_print() {
        let a = TelUri::parse_parts("+1-201-555-0123;ext=12;phone-context=example.com").unwrap();
        assert!(a.is_global());
        let b = TelUri::parse_parts("+12015550123;phone-context=EXAMPLE.com;ext=12").unwrap();
        assert!(a.equivalent(&b));
        let c = TelUri::parse_parts("+12015550124").unwrap();
        assert!(!a.equivalent(&c));
        assert_eq!(
            a.to_string(),
            "tel:+1-201-555-0123;ext=12;phone-context=example.com"
        );
        assert!(TelUri::parse_parts("").is_err());
        assert!(TelUri::parse_parts("+").is_err());
        assert!(TelUri::parse_parts("12 34").is_err());
        assert!(TelUri::parse_parts("1234;=x").is_err());
    }
}
