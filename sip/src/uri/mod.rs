//! URIs: `sip:`/`sips:` (RFC 3261 §19.1) and `tel:` (RFC 3966) parsed into parts; any other
//! scheme kept as opaque text.

mod compare;
mod sip;
mod tel;

use std::borrow::Cow;
use std::fmt;

use crate::error::{bad, SResult};

pub use sip::{SipUri, UriParams};
pub use tel::TelUri;

/// Any URI found in a Request-URI or a name-addr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:`.
    Tel(TelUri<'a>),
    /// Another scheme: kept as written.
    Other {
        /// Scheme, as written.
        scheme: &'a str,
        /// Everything after the first `:`.
        rest: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parses a complete URI (no surrounding white space or brackets).
    pub fn parse(s: &'a str) -> SResult<Uri<'a>> {
        // Nearly every URI a registrar or proxy reads is written `sip:` in lower case.
        if let Some(rest) = s.strip_prefix("sip:") {
            return SipUri::parse_parts(false, rest).map(Uri::Sip);
        }
        let Some(colon) = memchr::memchr(b':', s.as_bytes()) else {
            return bad("URI without scheme");
        };
        let (scheme, rest) = (
            s.get(..colon).unwrap_or(""),
            s.get(colon + 1..).unwrap_or(""),
        );
        if !is_scheme(scheme) {
            return bad("invalid URI scheme");
        }
        if scheme.len() == 3 && scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_parts(false, rest).map(Uri::Sip)
        } else if scheme.len() == 4 && scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_parts(true, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_parts(rest).map(Uri::Tel)
        } else {
            if rest.is_empty() || !rest.bytes().all(is_uric) {
                return bad("invalid characters in URI");
            }
            Ok(Uri::Other { scheme, rest })
        }
    }

    /// The scheme, lower-case for the parsed ones.
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// The SIP URI, when it is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// URI equivalence (RFC 3261 §19.1.4 for SIP, RFC 3966 §4 for tel; other schemes compare
    /// the scheme case-insensitively and the rest exactly).
    pub fn equivalent(&self, other: &Uri<'_>) -> bool {
        match (self, other) {
            (Uri::Sip(a), Uri::Sip(b)) => a.equivalent(b),
            (Uri::Tel(a), Uri::Tel(b)) => a.equivalent(b),
            (
                Uri::Other {
                    scheme: s1,
                    rest: r1,
                },
                Uri::Other {
                    scheme: s2,
                    rest: r2,
                },
            ) => s1.eq_ignore_ascii_case(s2) && r1 == r2,
            _ => false,
        }
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Tel(u) => u.fmt(f),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`
fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Characters that may appear in a URI (`uric` and friends): printable ASCII except
/// space, `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`.
#[inline]
pub(crate) fn is_uric(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// `unreserved = alphanum / mark`
#[inline]
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// Checks that every `%` starts a valid `escaped` and every other byte satisfies `ok`.
pub(crate) fn check_escaped(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if ok(c) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes `%HH` escapes, as bytes; malformed escapes are kept literally.
pub(crate) fn unescape(s: &str) -> impl Iterator<Item = u8> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *b.get(i)?;
        if c == b'%' {
            let hi = b.get(i + 1).and_then(|h| (*h as char).to_digit(16));
            let lo = b.get(i + 2).and_then(|h| (*h as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                i += 3;
                return u8::try_from(hi * 16 + lo).ok();
            }
        }
        i += 1;
        Some(c)
    })
}

/// Decodes `%HH` escapes into text (lossy for non-UTF-8), borrowing when there are none.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes: Vec<u8> = unescape(s).collect();
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_by_scheme() {
        assert!(matches!(Uri::parse("SIP:a@b.com"), Ok(Uri::Sip(u)) if !u.secure));
        assert!(matches!(Uri::parse("sips:b.com"), Ok(Uri::Sip(u)) if u.secure));
        assert!(matches!(Uri::parse("tel:+1-201-555-0123"), Ok(Uri::Tel(_))));
        assert_eq!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other {
                scheme: "soap.beep",
                rest: "//192.0.2.103:3002"
            })
        );
        assert!(Uri::parse("<sip:user@example.com>").is_err());
        assert!(Uri::parse("nocolon").is_err());
        assert!(Uri::parse("x:a b").is_err());
        for s in [
            "sip:a@b.com;lr",
            "tel:+12015550123;ext=1",
            "name:John_Smith",
            "http://www.example.com",
        ] {
            assert_eq!(Uri::parse(s).map(|u| u.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(percent_decode("%75se%72"), "user");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(
            unescape("null-%00-x").collect::<Vec<_>>(),
            b"null-\0-x".to_vec()
        );
        assert!(check_escaped("a%20b", is_unreserved));
        assert!(!check_escaped("a%2", is_unreserved));
        assert!(!check_escaped("a%zz", is_unreserved));
    }
}
