//! Headers with a single simple value: Call-ID, Max-Forwards, Expires, Content-Length,
//! Content-Type, and the option-tag lists (Require, Proxy-Require, Supported, Unsupported,
//! Allow).

use std::fmt;

use crate::error::{bad, SResult};
use crate::lex::{is_token_str, is_word, parse_u32, Cursor};
use crate::params::Params;

/// `callid = word [ "@" word ]`
pub fn parse_call_id(s: &str) -> SResult<&str> {
    // `@` is not a word character: the first byte that is not one must be the only `@`,
    // with words on both sides.
    let b = s.as_bytes();
    let ok = match b.iter().position(|&c| !is_word(c)) {
        None => !b.is_empty(),
        Some(at) => {
            let after = b.get(at + 1..).unwrap_or_default();
            b.get(at) == Some(&b'@')
                && at > 0
                && !after.is_empty()
                && after.iter().all(|&c| is_word(c))
        }
    };
    if ok {
        Ok(s)
    } else {
        bad("invalid Call-ID")
    }
}

/// `Max-Forwards: 1*DIGIT`, 0 to 255.
pub fn parse_max_forwards(s: &str) -> SResult<u8> {
    match parse_u32(s).map(u8::try_from) {
        Some(Ok(v)) => Ok(v),
        _ => bad("Max-Forwards not a number from 0 to 255"),
    }
}

/// `Expires: delta-seconds`, saturating at `u32::MAX`.
pub fn parse_expires(s: &str) -> SResult<u32> {
    super::name_addr::parse_delta_seconds(s)
        .ok_or(crate::error::SyntaxError("Expires not a number"))
}

/// `Content-Length: 1*DIGIT`.
pub fn parse_content_length(s: &str) -> SResult<usize> {
    match parse_u32(s) {
        Some(v) => Ok(v as usize),
        None => bad("Content-Length not a number"),
    }
}

/// `Content-Type: type "/" subtype *( SEMI parameter )`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// Top-level type (`application`).
    pub mtype: &'a str,
    /// Subtype (`sdp`).
    pub subtype: &'a str,
    /// Parameters (`;boundary=...`).
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    /// Parses a media type.
    pub fn parse(s: &'a str) -> SResult<MediaType<'a>> {
        let mut c = Cursor::new(s);
        c.skip_ws();
        let Some(mtype) = c.token() else {
            return bad("invalid media type");
        };
        if !c.eat_sep(b'/') {
            return bad("invalid media type");
        }
        let Some(subtype) = c.token() else {
            return bad("invalid media subtype");
        };
        let params = Params::parse(&mut c)?;
        c.skip_ws();
        if !c.at_end() {
            return bad("unexpected text in media type");
        }
        Ok(MediaType {
            mtype,
            subtype,
            params,
        })
    }

    /// Whether this is `type/subtype`, case-insensitively.
    pub fn is(&self, mtype: &str, subtype: &str) -> bool {
        self.mtype.eq_ignore_ascii_case(mtype) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

impl fmt::Display for MediaType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.mtype, self.subtype, self.params)
    }
}

/// One item of an option-tag or method list: a token.
pub fn parse_token_item(s: &str) -> SResult<&str> {
    if is_token_str(s) {
        Ok(s)
    } else {
        bad("invalid token in list")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(
            parse_call_id("wsinv.ndaksdj@192.0.2.1"),
            Ok("wsinv.ndaksdj@192.0.2.1")
        );
        assert!(parse_call_id("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{").is_ok());
        assert!(parse_call_id("a@b@c").is_err());
        assert!(parse_call_id("a b").is_err());
        assert!(parse_call_id("").is_err());
        assert_eq!(parse_max_forwards("0068"), Ok(68));
        assert!(parse_max_forwards("300").is_err());
        assert_eq!(parse_expires("10000000000000000000000"), Ok(u32::MAX));
        assert!(parse_expires("-1").is_err());
        assert_eq!(parse_content_length("150"), Ok(150));
        assert!(parse_content_length("-999").is_err());
    }

    #[test]
    fn media_type() {
        let m = MediaType::parse("multipart/mixed;boundary=7a9cbec02ceef655").unwrap();
        assert!(m.is("MULTIPART", "mixed"));
        assert_eq!(m.params.value("boundary"), Some(Some("7a9cbec02ceef655")));
        assert_eq!(m.to_string(), "multipart/mixed;boundary=7a9cbec02ceef655");
        assert_eq!(
            MediaType::parse("application / sdp").map(|m| m.to_string()),
            Ok("application/sdp".into())
        );
        assert!(MediaType::parse("application").is_err());
        assert!(MediaType::parse("a/b c").is_err());
    }
}
