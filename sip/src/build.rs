//! Building responses to requests (RFC 3261 §8.2.6).
//!
//! ```
//! use sipcraft_sip::{build::ResponseBuilder, parse, Limits};
//!
//! let raw = b"REGISTER sip:example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK77\r\n\
//!     From: <sip:100@example.com>;tag=a1\r\nTo: <sip:100@example.com>\r\n\
//!     Call-ID: x1\r\nCSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n";
//! let req = parse(raw, &Limits::default()).unwrap();
//! let resp = ResponseBuilder::new(&req, 200, "OK")
//!     .to_tag("srv1")
//!     .header("Contact", "<sip:100@192.0.2.4>;expires=3600")
//!     .build();
//! let resp = parse(&resp, &Limits::default()).unwrap();
//! assert_eq!(resp.to().unwrap().tag(), Some("srv1"));
//! assert_eq!(resp.cseq().unwrap().seq, 2);
//! ```

use std::io::Write;

use crate::message::{push_unfolded, Message};
use crate::name::HeaderName;
use crate::validate::Rejection;

/// Builds the response to a request: copies every Via, From, To (adding a tag when it has
/// none), Call-ID and CSeq, then the headers and body you add, with a correct
/// Content-Length.
#[derive(Debug)]
pub struct ResponseBuilder<'r, 'a> {
    req: &'r Message<'a>,
    status: u16,
    reason: String,
    to_tag: Option<String>,
    extra: Vec<u8>,
    body: Vec<u8>,
}

impl<'r, 'a> ResponseBuilder<'r, 'a> {
    /// Starts a response with this status and reason phrase.
    pub fn new(req: &'r Message<'a>, status: u16, reason: &str) -> Self {
        let reason = reason.replace(['\r', '\n'], " ");
        ResponseBuilder {
            req,
            status,
            reason,
            to_tag: None,
            extra: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The response for a [`Rejection`] from [`crate::check`], Unsupported included for 420.
    pub fn reject(req: &'r Message<'a>, rejection: &Rejection<'_>) -> Self {
        let mut b = ResponseBuilder::new(req, rejection.status, &rejection.reason);
        if !rejection.unsupported.is_empty() {
            let list = rejection.unsupported.join(", ");
            b = b.header("Unsupported", &list);
        }
        b
    }

    /// The To tag to add when the request's To has none (ignored for 100 Trying, which
    /// carries no tag, RFC 3261 §8.2.6.2).
    pub fn to_tag(mut self, tag: &str) -> Self {
        self.to_tag = Some(tag.to_owned());
        self
    }

    /// Adds a header line (CR and LF in the value are replaced by spaces).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.extra.extend_from_slice(name.as_bytes());
        self.extra.extend_from_slice(b": ");
        for b in value.bytes() {
            self.extra
                .push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.extra.extend_from_slice(b"\r\n");
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(self, content_type: &str, body: &[u8]) -> Self {
        let mut b = self.header("Content-Type", content_type);
        b.body = body.to_vec();
        b
    }

    /// Writes the response into `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "SIP/2.0 {} {}\r\n", self.status, self.reason);
        let copy = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            push_unfolded(out, value);
            out.extend_from_slice(b"\r\n");
        };
        for h in self.req.headers_named(HeaderName::Via) {
            copy(out, "Via", h.value);
        }
        if let Some(h) = self.req.header(HeaderName::From) {
            copy(out, "From", h.value);
        }
        if let Some(h) = self.req.header(HeaderName::To) {
            copy(out, "To", h.value);
            let needs_tag = self.status != 100 && self.req.to().is_ok_and(|t| t.tag().is_none());
            if let (true, Some(tag)) = (needs_tag, &self.to_tag) {
                out.truncate(out.len() - 2);
                let _ = write!(out, ";tag={tag}\r\n");
            }
        }
        for name in [HeaderName::CallId, HeaderName::CSeq] {
            if let Some(h) = self.req.header(name) {
                copy(out, name.as_str(), h.value);
            }
        }
        out.extend_from_slice(&self.extra);
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        out.extend_from_slice(&self.body);
    }

    /// The response bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        self.write_to(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Limits};

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1,\r\n SIP/2.0/UDP a.example.com;branch=z9hG4bK2\r\nv: SIP/2.0/TCP b.example.com;branch=z9hG4bK3\r\nf: \"A\" <sip:a@example.com>;tag=9\r\nt: <sip:bob@example.com>\r\ni: abc@h\r\nCSeq: 7 INVITE\r\nl: 0\r\n\r\n";

    #[test]
    fn copies_dialog_headers_and_adds_tag() {
        let req = parse(REQ, &Limits::default()).unwrap();
        let out = ResponseBuilder::new(&req, 180, "Ringing")
            .to_tag("t1")
            .build();
        let resp = parse(&out, &Limits::default()).unwrap();
        assert_eq!(resp.status(), Some(180));
        let vias: Vec<_> = resp
            .vias()
            .map(|v| v.unwrap().branch().unwrap_or(""))
            .collect();
        assert_eq!(vias, ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]);
        assert_eq!(resp.to().unwrap().tag(), Some("t1"));
        assert_eq!(resp.from().unwrap().tag(), Some("9"));
        assert_eq!(resp.call_id(), Ok("abc@h"));
        assert_eq!(resp.cseq().unwrap().seq, 7);
        assert_eq!(resp.content_length(), Ok(Some(0)));
        let trying = parse_owned(
            ResponseBuilder::new(&req, 100, "Trying")
                .to_tag("t1")
                .build(),
        );
        assert!(trying.contains("To: <sip:bob@example.com>\r\n"));
    }

    fn parse_owned(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn body_and_headers() {
        let req = parse(REQ, &Limits::default()).unwrap();
        let out = ResponseBuilder::new(&req, 200, "OK")
            .header("Contact", "<sip:bob@192.0.2.1>")
            .body("application/sdp", b"v=0\r\n")
            .build();
        let resp = parse(&out, &Limits::default()).unwrap();
        assert_eq!(resp.body(), b"v=0\r\n");
        assert_eq!(resp.content_length(), Ok(Some(5)));
        assert!(resp
            .content_type()
            .unwrap()
            .is_some_and(|m| m.is("application", "sdp")));
        assert_eq!(resp.validate(&Default::default()), Ok(()));
    }
}
