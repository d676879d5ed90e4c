//! CSeq (RFC 3261 §20.16).

use std::fmt;

use crate::error::{bad, SResult};
use crate::lex::{parse_u32, Cursor};
use crate::method::Method;

/// `CSeq: 1*DIGIT LWS Method`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number (RFC 3261 bounds it below 2**31; values up to 2**32-1 are read).
    pub seq: u32,
    /// Method.
    pub method: Method<'a>,
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value.
    pub fn parse(s: &'a str) -> SResult<CSeq<'a>> {
        let mut c = Cursor::new(s);
        c.skip_ws();
        let Some(seq) = parse_u32(c.take_while(|b| b.is_ascii_digit())) else {
            return bad("CSeq number missing or out of range");
        };
        if !c.skip_ws() {
            return bad("missing white space in CSeq");
        }
        let Some(method) = c.token().and_then(Method::parse) else {
            return bad("invalid CSeq method");
        };
        c.skip_ws();
        if !c.at_end() {
            return bad("unexpected text in CSeq");
        }
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print() {
        let c = CSeq::parse("0009\r\n  INVITE").unwrap();
        assert_eq!((c.seq, c.method), (9, Method::Invite));
        assert_eq!(c.to_string(), "9 INVITE");
        assert_eq!(CSeq::parse(&c.to_string()), Ok(c));
        let c = CSeq::parse("29344 RE%47IST%45R").unwrap();
        assert_eq!(c.method, Method::Extension("RE%47IST%45R"));
        for s in [
            "36893488147419103232 REGISTER",
            "1",
            "INVITE",
            "1INVITE",
            "1 INVITE x",
            "-1 ACK",
        ] {
            assert!(CSeq::parse(s).is_err(), "{s}");
        }
    }
}
