//! What to do with a message before any transaction sees it: accept it, answer it with an
//! error (400, 416, 420, 505, 513), or drop it (RFC 3261 §8.2, §16.3, §18.3; RFC 4475).

use std::borrow::Cow;

use crate::error::{HeaderError, ParseError};
use crate::header::{NameAddr, Via};
use crate::limits::Limits;
use crate::message::{Message, StartLine, Version};
use crate::method::Method;
use crate::name::HeaderName;
use crate::parse::parse_lenient;
use crate::uri::Uri;

/// What the server supports, for the checks that depend on it.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'p> {
    /// Option tags this element supports; any other tag in Require/Proxy-Require gets 420.
    pub supported: &'p [&'p str],
    /// Check Require (what a UAS does; a registrar is one).
    pub check_require: bool,
    /// Check Proxy-Require (what a proxy does).
    pub check_proxy_require: bool,
}

impl Default for Policy<'_> {
    /// Supports nothing, checks both Require and Proxy-Require.
    fn default() -> Self {
        Policy {
            supported: &[],
            check_require: true,
            check_proxy_require: true,
        }
    }
}

/// Why a request must be answered with an error instead of being processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'a> {
    /// Status code to answer with.
    pub status: u16,
    /// Reason phrase naming the fault.
    pub reason: Cow<'static, str>,
    /// For 420: the option tags to list in Unsupported.
    pub unsupported: Vec<&'a str>,
}

impl Rejection<'_> {
    fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
            unsupported: Vec::new(),
        }
    }

    fn bad(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection::new(400, reason)
    }

    fn header(e: HeaderError) -> Self {
        Rejection::bad(capitalize(&e.to_string()))
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The outcome of [`check`].
#[derive(Debug, Clone)]
pub enum Verdict<'a> {
    /// A well-formed message: process it.
    Accept(Message<'a>),
    /// A request to answer with an error; `request` holds what is needed to build the
    /// response (see [`crate::build::ResponseBuilder::reject`]).
    Reject {
        /// The request as far as it could be read.
        request: Message<'a>,
        /// Status, reason and Unsupported list.
        rejection: Rejection<'a>,
    },
    /// Nothing can be answered (garbage, a response in error, a request without a usable
    /// Via or CSeq): drop it and, at most, log why.
    Drop(Cow<'static, str>),
}

/// Reads a datagram and classifies it: accept, answer with an error, or drop.
pub fn check<'a>(buf: &'a [u8], limits: &Limits, policy: &Policy<'_>) -> Verdict<'a> {
    let (msg, fault) = match parse_lenient(buf, limits) {
        Ok(x) => x,
        Err(e) => return Verdict::Drop(e.to_string().into()),
    };
    if !msg.is_request() {
        if let Some(f) = fault {
            return Verdict::Drop(f.to_string().into());
        }
        return match msg.validate_response() {
            Ok(()) => Verdict::Accept(msg),
            Err(r) => Verdict::Drop(r),
        };
    }
    if let Err(why) = answerable(&msg) {
        return Verdict::Drop(why.into());
    }
    let rejection = match fault {
        Some(ParseError::TooLarge) => Some(Rejection::new(513, "Message Too Large")),
        Some(ParseError::BodyTruncated { .. }) => {
            Some(Rejection::bad("Content-Length larger than message"))
        }
        Some(ParseError::ContentLength) => {
            Some(Rejection::bad("Invalid or conflicting Content-Length"))
        }
        Some(other) => Some(Rejection::bad(capitalize(&other.to_string()))),
        None => msg.validate(policy).err(),
    };
    match rejection {
        None => Verdict::Accept(msg),
        // Nothing ever answers an ACK (RFC 3261 §17.1.1.3): a bad one is dropped.
        Some(_) if msg.method() == Some(Method::Ack) => Verdict::Drop("malformed ACK".into()),
        Some(rejection) => Verdict::Reject {
            request: msg,
            rejection,
        },
    }
}

/// A response can be sent back when the top Via can be routed to and a CSeq can be copied.
fn answerable(msg: &Message<'_>) -> Result<(), &'static str> {
    let top = msg
        .values(HeaderName::Via)
        .next()
        .ok_or("request without Via")?;
    Via::parse_routing(top).map_err(|_| "request with an unusable top Via")?;
    if msg.count(HeaderName::CSeq) == 0 {
        return Err("request without CSeq");
    }
    Ok(())
}

impl<'a> Message<'a> {
    /// Checks a parsed request the way a registrar or proxy must before processing it, in
    /// RFC 3261 §8.2 order: version (505), syntax of the start line and of every header it
    /// relies on (400), Request-URI scheme (416), Require/Proxy-Require (420). A response
    /// always passes; use [`check`] to classify responses.
    pub fn validate(&self, policy: &Policy<'_>) -> Result<(), Rejection<'a>> {
        let StartLine::Request(rl) = self.start else {
            return Ok(());
        };
        if rl.version != Version::SIP_2_0 {
            return Err(Rejection::new(505, "Version Not Supported"));
        }
        if let Some(f) = self.start_fault {
            return Err(Rejection::bad(capitalize(f)));
        }
        let uri = Uri::parse(rl.uri)
            .map_err(|e| Rejection::bad(format!("Malformed Request-URI: {e}")))?;
        if uri.as_sip().is_some_and(|u| u.headers.is_some()) {
            return Err(Rejection::bad("Request-URI must not carry headers"));
        }
        for v in self.vias() {
            v.map_err(|e| Rejection::bad(format!("Malformed Via header: {e}")))?;
        }
        self.from().map_err(Rejection::header)?;
        self.to().map_err(Rejection::header)?;
        self.call_id().map_err(Rejection::header)?;
        let cseq = self.cseq().map_err(Rejection::header)?;
        if cseq.method.as_str() != rl.method.as_str() {
            return Err(Rejection::bad("CSeq method does not match request method"));
        }
        self.max_forwards().map_err(Rejection::header)?;
        self.content_length().map_err(Rejection::header)?;
        let ctype = self.content_type().map_err(Rejection::header)?;
        if ctype.is_none() && !self.body.is_empty() {
            return Err(Rejection::bad("Body without Content-Type"));
        }
        self.contacts().map_err(Rejection::header)?;
        for (name, list) in [
            ("Route", HeaderName::Route),
            ("Record-Route", HeaderName::RecordRoute),
        ] {
            for r in self.values(list) {
                NameAddr::parse(r)
                    .map_err(|e| Rejection::bad(format!("Malformed {name} header: {e}")))?;
            }
        }
        for name in [HeaderName::Require, HeaderName::ProxyRequire] {
            for t in self.tokens(name) {
                t.map_err(|e| Rejection::bad(format!("Malformed {name} header: {e}")))?;
            }
        }
        if !matches!(uri, Uri::Sip(_) | Uri::Tel(_)) {
            return Err(Rejection::new(416, "Unsupported URI Scheme"));
        }
        if !matches!(rl.method, Method::Ack | Method::Cancel) {
            let mut unsupported = Vec::new();
            let lists = [
                (policy.check_require, HeaderName::Require),
                (policy.check_proxy_require, HeaderName::ProxyRequire),
            ];
            for (on, name) in lists {
                if !on {
                    continue;
                }
                for tag in self.tokens(name).flatten() {
                    let known = policy.supported.iter().any(|s| s.eq_ignore_ascii_case(tag));
                    if !known
                        && !unsupported
                            .iter()
                            .any(|u: &&str| u.eq_ignore_ascii_case(tag))
                    {
                        unsupported.push(tag);
                    }
                }
            }
            if !unsupported.is_empty() {
                return Err(Rejection {
                    status: 420,
                    reason: "Bad Extension".into(),
                    unsupported,
                });
            }
        }
        Ok(())
    }

    /// Checks a response: SIP/2.0, status 100 to 699, and usable Via, From, To, Call-ID,
    /// CSeq. A response that fails is dropped (RFC 3261 §18.1.2).
    fn validate_response(&self) -> Result<(), Cow<'static, str>> {
        let StartLine::Response(sl) = self.start else {
            return Ok(());
        };
        if sl.version != Version::SIP_2_0 {
            return Err("response with another SIP version".into());
        }
        if !(100..=699).contains(&sl.code) {
            return Err("response code out of range".into());
        }
        let e = |e: HeaderError| Cow::Owned(e.to_string());
        self.top_via().map_err(e)?;
        self.from().map_err(e)?;
        self.to().map_err(e)?;
        self.call_id().map_err(e)?;
        self.cseq().map_err(e)?;
        self.content_length().map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n";

    fn verdict(extra: &str) -> Verdict<'static> {
        let s: &'static str = Box::leak(format!("{BASE}{extra}\r\n").into_boxed_str());
        check(
            s.as_bytes(),
            &Limits::default(),
            &Policy {
                supported: &["path"],
                ..Policy::default()
            },
        )
    }

    fn status(v: &Verdict<'_>) -> Option<u16> {
        match v {
            Verdict::Reject { rejection, .. } => Some(rejection.status),
            _ => None,
        }
    }

    #[test]
    fn accept_and_reject() {
        assert!(matches!(verdict(""), Verdict::Accept(_)));
        assert!(matches!(verdict("Require: path\r\n"), Verdict::Accept(_)));
        let v = verdict("Require: path, foo\r\nProxy-Require: bar\r\n");
        assert_eq!(status(&v), Some(420));
        if let Verdict::Reject { rejection, .. } = v {
            assert_eq!(rejection.unsupported, vec!["foo", "bar"]);
        }
        assert_eq!(status(&verdict("Max-Forwards: 70\r\n")), Some(400));
        assert_eq!(status(&verdict("Contact: <sip:x\r\n")), Some(400));
        assert_eq!(status(&verdict("Content-Length: 5\r\n")), Some(400));
    }

    #[test]
    fn bad_ack_is_dropped() {
        let ack = BASE
            .replace("OPTIONS sip", "ACK sip")
            .replace("1 OPTIONS", "1 ACK");
        let s: &'static str = Box::leak(format!("{ack}Max-Forwards: 70\r\n\r\n").into_boxed_str());
        assert!(matches!(
            check(s.as_bytes(), &Limits::default(), &Policy::default()),
            Verdict::Drop(_)
        ));
    }

    #[test]
    fn drops() {
        let l = Limits::default();
        let p = Policy::default();
        assert!(matches!(check(b"hello", &l, &p), Verdict::Drop(_)));
        assert!(matches!(
            check(b"OPTIONS sip:a SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", &l, &p),
            Verdict::Drop(_)
        ));
        assert!(matches!(
            check(b"SIP/2.0 200 OK\r\n\r\n", &l, &p),
            Verdict::Drop(_)
        ));
    }

    #[test]
    fn oversized_gets_513() {
        let big = format!("{BASE}Content-Length: 3000\r\n\r\n{}", "x".repeat(3000));
        let l = Limits {
            max_message_size: 1000,
            ..Limits::default()
        };
        assert_eq!(
            status(&check(big.as_bytes(), &l, &Policy::default())),
            Some(513)
        );
    }
}
