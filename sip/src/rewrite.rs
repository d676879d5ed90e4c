//! Editing a message the way a proxy forwards it (RFC 3261 §16.6, §16.7; RFC 3581), by
//! copying untouched lines from the original bytes and writing only what changed.
//!
//! ```
//! use sipcraft_sip::{parse, rewrite::Rewriter, Limits};
//!
//! let raw = b"INVITE sip:100@example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport\r\nMax-Forwards: 70\r\n\
//!     Route: <sip:proxy.example.com;lr>\r\nFrom: <sip:200@example.com>;tag=1\r\n\
//!     To: <sip:100@example.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
//! let req = parse(raw, &Limits::default()).unwrap();
//! let mut w = Rewriter::new(&req);
//! w.set_top_via_received("203.0.113.9".parse().unwrap(), 40123).unwrap();
//! w.decrement_max_forwards().unwrap();
//! w.pop_route();
//! w.set_request_uri("sip:100@192.0.2.44:5060");
//! w.add_record_route("<sip:proxy.example.com;lr>");
//! w.prepend_via("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1");
//! let out = w.finish();
//! let fwd = parse(&out, &Limits::default()).unwrap();
//! assert_eq!(fwd.max_forwards().unwrap(), Some(69));
//! assert_eq!(fwd.vias().count(), 2);
//! assert_eq!(fwd.vias().nth(1).unwrap().unwrap().rport(), Some(Some(40123)));
//! ```

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;

use crate::header::Via;
use crate::host::Host;
use crate::lex::split_commas;
use crate::message::{push_unfolded, Message, StartLine};
use crate::name::HeaderName;

/// Why an edit could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// Max-Forwards is 0: the proxy answers 483 Too Many Hops.
    #[error("Max-Forwards is zero")]
    TooManyHops,
    /// The message has no Via to edit.
    #[error("no Via header")]
    NoVia,
    /// A header to edit does not parse.
    #[error("malformed {0} header")]
    Malformed(&'static str),
}

/// Collects edits to one message and writes the edited copy.
///
/// The edits add at most a Via, a Record-Route, a Max-Forwards and a Content-Length line
/// (plus any [`Rewriter::add_header`]): a message received right at a peer's [`crate::Limits`]
/// can exceed them once forwarded, so a proxy checks the size of what it sends.
#[derive(Debug)]
pub struct Rewriter<'m, 'a> {
    msg: &'m Message<'a>,
    start_line: Option<String>,
    /// Replaced (`Some`) or deleted (`None`) header lines, by index.
    edits: Vec<(usize, Option<String>)>,
    /// New lines (`Name: value`) to write before the header of that index (`len` = at the end).
    inserts: Vec<(usize, String)>,
}

impl<'m, 'a> Rewriter<'m, 'a> {
    /// Starts with no edits.
    pub fn new(msg: &'m Message<'a>) -> Self {
        Rewriter {
            msg,
            start_line: None,
            edits: Vec::new(),
            inserts: Vec::new(),
        }
    }

    fn current(&self, i: usize) -> Option<Option<&str>> {
        match self.edits.iter().find(|(j, _)| *j == i) {
            Some((_, e)) => Some(e.as_deref()),
            None => self.msg.headers.get(i).map(|h| Some(h.value)),
        }
    }

    fn set(&mut self, i: usize, v: Option<String>) {
        match self.edits.iter_mut().find(|(j, _)| *j == i) {
            Some(e) => e.1 = v,
            None => self.edits.push((i, v)),
        }
    }

    /// Index and current value of the first not-deleted line with this name.
    fn first_live(&self, name: HeaderName<'_>) -> Option<(usize, String)> {
        self.msg
            .headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name == name)
            .find_map(|(i, _)| self.current(i).flatten().map(|v| (i, v.to_owned())))
    }

    fn first_index(&self, name: HeaderName<'_>) -> usize {
        self.msg
            .headers
            .iter()
            .position(|h| h.name == name)
            .unwrap_or(0)
    }

    /// Removes the first value of a list header; returns it.
    fn remove_first_value(&mut self, name: HeaderName<'_>) -> Option<String> {
        let (i, value) = self.first_live(name)?;
        let mut items = split_commas(&value);
        let first = items.next().map(str::to_owned);
        let rest: Vec<&str> = items.collect();
        self.set(i, (!rest.is_empty()).then(|| rest.join(", ")));
        first
    }

    /// Replaces the Request-URI (requests only).
    pub fn set_request_uri(&mut self, uri: &str) -> &mut Self {
        if let StartLine::Request(rl) = self.msg.start {
            self.start_line = Some(format!("{} {} {}", rl.method, uri.trim(), rl.version));
        }
        self
    }

    /// Adds a Via value on top (`SIP/2.0/UDP host:port;branch=z9hG4bK...`).
    pub fn prepend_via(&mut self, via: &str) -> &mut Self {
        let at = self.first_index(HeaderName::Via);
        self.inserts.insert(0, (at, format!("Via: {via}")));
        self
    }

    /// Removes the topmost Via (what a proxy does to a response before forwarding it).
    pub fn remove_top_via(&mut self) -> Result<(), RewriteError> {
        self.remove_first_value(HeaderName::Via)
            .map(|_| ())
            .ok_or(RewriteError::NoVia)
    }

    /// Records where a request came from in its top Via (RFC 3261 §18.2.1, RFC 3581):
    /// `received` is set when the sent-by host is not `source` or when `rport` was asked
    /// for, and a valueless `rport` is filled with `port`.
    pub fn set_top_via_received(&mut self, source: IpAddr, port: u16) -> Result<(), RewriteError> {
        let (i, value) = self
            .first_live(HeaderName::Via)
            .ok_or(RewriteError::NoVia)?;
        if let Some(out) = annotate_via_line(&value, source, port)? {
            self.set(i, Some(out));
        }
        Ok(())
    }

    /// Replaces the first Via line with `line`: one [`top_via_received`] already made.
    pub fn set_top_via_line(&mut self, line: String) -> Result<(), RewriteError> {
        let (i, _) = self
            .first_live(HeaderName::Via)
            .ok_or(RewriteError::NoVia)?;
        self.set(i, Some(line));
        Ok(())
    }

    /// Decrements Max-Forwards and returns the new value; adds `Max-Forwards: 70` when absent
    /// (RFC 3261 §16.6 step 3). Fails with [`RewriteError::TooManyHops`] at zero.
    pub fn decrement_max_forwards(&mut self) -> Result<u8, RewriteError> {
        let Some((i, v)) = self.first_live(HeaderName::MaxForwards) else {
            let at = self.msg.headers.len();
            self.inserts.push((at, "Max-Forwards: 70".to_owned()));
            return Ok(70);
        };
        let n = crate::header::parse_max_forwards(&v)
            .map_err(|_| RewriteError::Malformed("Max-Forwards"))?;
        let n = n.checked_sub(1).ok_or(RewriteError::TooManyHops)?;
        self.set(i, Some(n.to_string()));
        Ok(n)
    }

    /// Adds a Record-Route value on top (`<sip:proxy.example.com;lr>`).
    pub fn add_record_route(&mut self, value: &str) -> &mut Self {
        let at = self.first_index(HeaderName::RecordRoute);
        self.inserts
            .insert(0, (at, format!("Record-Route: {value}")));
        self
    }

    /// Removes the topmost Route value (the proxy's own, RFC 3261 §16.4) and returns it.
    pub fn pop_route(&mut self) -> Option<String> {
        self.remove_first_value(HeaderName::Route)
    }

    /// Removes the Proxy-Authorization lines whose digest credentials are for `realm`: a
    /// proxy that checked them consumes them (RFC 3261 §20.28, §22.3), so the callee never
    /// sees the caller's digest. Lines for other realms, and lines that do not parse, are
    /// left for the proxies they belong to. Returns how many were removed.
    pub fn consume_credentials(&mut self, realm: &str) -> usize {
        let ours: Vec<usize> = self
            .msg
            .headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name == HeaderName::ProxyAuthorization)
            .filter(|(_, h)| {
                crate::header::DigestCredentials::parse(h.value)
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.realm.as_deref() == Some(realm))
            })
            .map(|(i, _)| i)
            .collect();
        for &i in &ours {
            self.set(i, None);
        }
        ours.len()
    }

    /// Adds a header line at the end of the header section.
    pub fn add_header(&mut self, name: &str, value: &str) -> &mut Self {
        let at = self.msg.headers.len();
        self.inserts.push((at, format!("{name}: {value}")));
        self
    }

    /// Writes the edited message into `out`. A missing Content-Length is added, so the result
    /// can go out on a stream as well as on UDP.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let m = self.msg;
        match &self.start_line {
            Some(s) => out.extend_from_slice(s.as_bytes()),
            None => out.extend_from_slice(m.buf.get(..m.start_line_len).unwrap_or_default()),
        }
        out.extend_from_slice(b"\r\n");
        let insert_at = |out: &mut Vec<u8>, i: usize| {
            for (_, line) in self.inserts.iter().filter(|(at, _)| *at == i) {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        };
        for (i, h) in m.headers.iter().enumerate() {
            insert_at(out, i);
            match self.edits.iter().find(|(j, _)| *j == i) {
                Some((_, None)) => {}
                Some((_, Some(v))) => {
                    out.extend_from_slice(h.raw_name.as_bytes());
                    out.extend_from_slice(b": ");
                    push_unfolded(out, v);
                    out.extend_from_slice(b"\r\n");
                }
                None => {
                    let (a, b) = (h.line.0 as usize, h.line.1 as usize);
                    out.extend_from_slice(m.buf.get(a..b).unwrap_or_default());
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        insert_at(out, m.headers.len());
        if m.count(HeaderName::ContentLength) == 0 {
            let _ = write!(out, "Content-Length: {}\r\n", m.body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body);
    }

    /// The edited message.
    pub fn finish(&self) -> Vec<u8> {
        let extra: usize = self.inserts.iter().map(|(_, l)| l.len() + 2).sum();
        let mut out = Vec::with_capacity(self.msg.buf.len() + extra + 64);
        self.write_to(&mut out);
        out
    }
}

/// The first Via line of a received request with `received`/`rport` recorded in its top
/// value (RFC 3261 §18.2.1, RFC 3581), or `None` when the top Via already says where the
/// request came from: no `rport` asked for, no `received`, and the sent-by host is `source`.
///
/// A server that answers or forwards a request from the message it parsed substitutes this
/// line for the first Via line (responses copy it, forwarded requests keep it under their
/// own Via), so the request needs neither rewriting nor parsing again.
pub fn top_via_received(
    msg: &Message<'_>,
    source: IpAddr,
    port: u16,
) -> Result<Option<String>, RewriteError> {
    let line = msg.header(HeaderName::Via).ok_or(RewriteError::NoVia)?;
    annotate_via_line(line.value, source, port)
}

/// [`top_via_received`] for one Via line value.
fn annotate_via_line(
    value: &str,
    source: IpAddr,
    port: u16,
) -> Result<Option<String>, RewriteError> {
    let mut items = split_commas(value);
    let top = items.next().unwrap_or("");
    let via = Via::parse(top).map_err(|_| RewriteError::Malformed("Via"))?;
    let wants_rport = via.rport().is_some();
    let src = Host::from(source);
    let needs_received = wants_rport || !via.host.eq_host(&src);
    if !needs_received && via.received().is_none() {
        return Ok(None);
    }
    let mut out = String::with_capacity(value.len() + 40);
    let _ = write!(
        out,
        "{}/{}/{} {}",
        via.protocol,
        via.version,
        via.transport.as_str(),
        via.host
    );
    if let Some(p) = via.port {
        let _ = write!(out, ":{p}");
    }
    for p in via.params.iter() {
        if p.name.eq_ignore_ascii_case("received") {
            continue;
        }
        if p.name.eq_ignore_ascii_case("rport") {
            let _ = write!(out, ";rport={port}");
            continue;
        }
        out.push(';');
        out.push_str(p.name);
        if let Some(v) = p.value {
            out.push('=');
            out.push_str(v);
        }
    }
    if needs_received {
        // `received` carries the bare address (RFC 3261 via-received).
        let _ = match source {
            IpAddr::V4(a) => write!(out, ";received={a}"),
            IpAddr::V6(a) => write!(out, ";received={a}"),
        };
    }
    for rest in items {
        out.push_str(", ");
        out.push_str(rest);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Limits};

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1;rport, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\nRoute: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nRecord-Route: <sip:p0.example.com;lr>\r\nMax-Forwards: 1\r\nFrom: <sip:a@example.com>;tag=9\r\nTo: <sip:bob@example.com>\r\nCall-ID: abc\r\nCSeq: 7 INVITE\r\n\r\nbody";

    fn reparse(out: &[u8], f: impl FnOnce(&Message<'_>)) {
        let m = parse(out, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)));
        f(&m);
    }

    #[test]
    fn consumes_only_our_realms_credentials() {
        let raw = b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
            Proxy-Authorization: Digest username=\"a\",realm=\"other.example\",nonce=\"n\",uri=\"sip:x\",response=\"r\"\r\n\
            From: <sip:a@example.com>;tag=9\r\n\
            Proxy-Authorization: Digest username=\"a\",realm=\"example.com\",nonce=\"n\",uri=\"sip:x\",response=\"r\"\r\n\
            To: <sip:bob@example.com>\r\nCall-ID: abc\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let req = parse(raw, &Limits::default()).unwrap();
        let mut w = Rewriter::new(&req);
        assert_eq!(w.consume_credentials("example.com"), 1);
        let out = w.finish();
        reparse(&out, |m| {
            let realms: Vec<_> = m
                .digest_credentials(true)
                .map(|d| d.unwrap().unwrap().realm.unwrap().into_owned())
                .collect();
            assert_eq!(realms, ["other.example"]);
            assert_eq!(m.call_id(), Ok("abc"));
        });
        let mut w = Rewriter::new(&req);
        assert_eq!(w.consume_credentials("elsewhere.example"), 0);
        assert_eq!(w.finish(), raw.to_vec());
    }

    #[test]
    fn proxy_edits() {
        let req = parse(REQ, &Limits::default()).unwrap();
        let mut w = Rewriter::new(&req);
        w.set_top_via_received("192.0.2.7".parse().unwrap(), 5070)
            .unwrap();
        w.prepend_via("SIP/2.0/UDP me.example.com;branch=z9hG4bKme");
        assert_eq!(w.pop_route().as_deref(), Some("<sip:p1.example.com;lr>"));
        w.add_record_route("<sip:me.example.com;lr>");
        assert_eq!(w.decrement_max_forwards(), Ok(0));
        w.set_request_uri("sip:bob@192.0.2.99:5062");
        let out = w.finish();
        reparse(&out, |m| {
            assert_eq!(
                m.request_line().map(|r| r.uri),
                Some("sip:bob@192.0.2.99:5062")
            );
            let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
            assert_eq!(vias.len(), 3);
            assert_eq!(vias[0].branch(), Some("z9hG4bKme"));
            assert_eq!(vias[1].rport(), Some(Some(5070)));
            assert_eq!(
                vias[1].received().map(|h| h.to_string()).as_deref(),
                Some("192.0.2.7")
            );
            assert_eq!(vias[2].branch(), Some("z9hG4bK2"));
            let routes: Vec<_> = m.routes().map(|r| r.unwrap().to_string()).collect();
            assert_eq!(routes, ["<sip:p2.example.com;lr>"]);
            let rr: Vec<_> = m.record_routes().map(|r| r.unwrap().to_string()).collect();
            assert_eq!(rr, ["<sip:me.example.com;lr>", "<sip:p0.example.com;lr>"]);
            assert_eq!(m.max_forwards(), Ok(Some(0)));
            assert_eq!(m.body(), b"body");
            assert_eq!(m.content_length(), Ok(Some(4)));
        });
        let mut w = Rewriter::new(&req);
        w.decrement_max_forwards().unwrap();
        let again = w.finish();
        let m = parse(&again, &Limits::default()).unwrap();
        assert_eq!(
            Rewriter::new(&m).decrement_max_forwards(),
            Err(RewriteError::TooManyHops)
        );
    }

    #[test]
    fn response_via_removal() {
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP me;branch=z9hG4bKme\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = parse(resp, &Limits::default()).unwrap();
        let mut w = Rewriter::new(&m);
        w.remove_top_via().unwrap();
        w.remove_top_via().unwrap();
        reparse(&w.finish(), |m| {
            let b: Vec<_> = m
                .vias()
                .map(|v| v.unwrap().branch().unwrap_or(""))
                .collect();
            assert_eq!(b, ["z9hG4bK2"]);
        });
        w.remove_top_via().unwrap();
        assert_eq!(w.remove_top_via(), Err(RewriteError::NoVia));
    }

    #[test]
    fn top_via_line_is_left_alone_when_it_says_where_the_request_came_from() {
        let raw = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = parse(raw, &Limits::default()).unwrap();
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(top_via_received(&m, src, 5070), Ok(None));
        assert_eq!(
            top_via_received(&m, "192.0.2.8".parse().unwrap(), 5070).unwrap().as_deref(),
            Some("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1;received=192.0.2.8, SIP/2.0/UDP b;branch=z9hG4bK2")
        );
        let raw = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5070;rport;branch=z9hG4bK1;received=10.0.0.1\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = parse(raw, &Limits::default()).unwrap();
        assert_eq!(
            top_via_received(&m, src, 40000).unwrap().as_deref(),
            Some("SIP/2.0/UDP 192.0.2.7:5070;rport=40000;branch=z9hG4bK1;received=192.0.2.7")
        );
    }

    #[test]
    fn adds_max_forwards_and_received_without_rport() {
        let raw = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = parse(raw, &Limits::default()).unwrap();
        let mut w = Rewriter::new(&m);
        assert_eq!(w.decrement_max_forwards(), Ok(70));
        w.set_top_via_received("2001:db8::1".parse().unwrap(), 5060)
            .unwrap();
        let out = String::from_utf8(w.finish()).unwrap();
        assert!(
            out.contains("Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"),
            "{out}"
        );
        let mut w = Rewriter::new(&m);
        w.set_top_via_received("2001:db8::2".parse().unwrap(), 5060)
            .unwrap();
        assert!(String::from_utf8(w.finish())
            .unwrap()
            .contains(";received=2001:db8::2\r\n"));
    }
}
