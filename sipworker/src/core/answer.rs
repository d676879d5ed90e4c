//! Answers the core writes itself, and the last pass every response takes before it is sent.

use std::io::Write as _;

use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::Message;

use super::{ALLOW, SUPPORTED};

/// The response as sent, written into `out` in one pass over `bytes` (built from `req` as
/// received, one header per line): a Server header after the status line, the first Via line
/// replaced by `via` (the request's with `received`/`rport`, RFC 3581) when given, and a To
/// tag on a final response whose request had none (RFC 3261 §8.2.6.2; `ResponseBuilder`
/// copies the request's To). The tag is derived from the request, so a retransmitted
/// request gets the same one.
pub(crate) fn finish_response(
    out: &mut Vec<u8>,
    bytes: &[u8],
    server: &str,
    mut via: Option<&str>,
    req: &Message<'_>,
) {
    out.reserve(bytes.len() + server.len() + via.map_or(0, str::len) + 40);
    let mut needs_tag = status_of(bytes) >= 200 && !req.to().is_ok_and(|t| t.tag().is_some());
    let mut at = line_end(bytes, 0);
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(b"\r\n");
    at = (at + 2).min(bytes.len());
    while at < bytes.len() && !bytes[at..].starts_with(b"\r\n") {
        let end = line_end(bytes, at);
        let line = &bytes[at..end];
        let name = line
            .iter()
            .position(|&b| b == b':')
            .map_or(&line[..0], |c| line[..c].trim_ascii());
        let is = |names: &[&[u8]]| names.iter().any(|n| name.eq_ignore_ascii_case(n));
        match via {
            Some(v) if is(&[b"via", b"v"]) => {
                out.extend_from_slice(b"Via: ");
                out.extend_from_slice(v.as_bytes());
                via = None;
            }
            _ if needs_tag && is(&[b"to", b"t"]) => {
                out.extend_from_slice(line);
                if !line.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")) {
                    let _ = write!(out, ";tag=sc{:x}", to_tag_hash(req));
                }
                needs_tag = false;
            }
            _ => out.extend_from_slice(line),
        }
        out.extend_from_slice(b"\r\n");
        at = (end + 2).min(bytes.len());
    }
    out.extend_from_slice(&bytes[at..]);
}

/// Where the line starting at `from` ends (its CRLF, or the end of `bytes`).
pub(super) fn line_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(bytes.len(), |i| from + i)
}

/// The To tag sipcraft gives a final response of its own: a hash of Call-ID, From tag and
/// CSeq number, the same in every worker and for every retransmission.
pub(super) fn to_tag_hash(req: &Message<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.call_id().unwrap_or_default().hash(&mut h);
    req.from()
        .ok()
        .and_then(|f| f.tag())
        .unwrap_or_default()
        .hash(&mut h);
    req.cseq().map(|c| c.seq).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The reason phrase of a response (for call records).
pub(crate) fn reason_of(response: &[u8]) -> String {
    let end = line_end(response, 0);
    String::from_utf8_lossy(response.get(12..end).unwrap_or_default()).into_owned()
}

pub(super) fn status_of(response: &[u8]) -> u16 {
    response
        .get(8..11)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

pub(super) fn draining(msg: &Message<'_>) -> Vec<u8> {
    ResponseBuilder::new(msg, 503, "Service Unavailable (draining)")
        .header("Retry-After", "60")
        .build()
}

/// OPTIONS to the server (monitoring systems ping with it): 200 with what we do.
pub(super) fn options(msg: &Message<'_>) -> Vec<u8> {
    ResponseBuilder::new(msg, 200, "OK")
        .header("Allow", ALLOW)
        .header("Accept", "application/sdp")
        .header("Accept-Encoding", "identity")
        .header("Accept-Language", "en")
        .header("Supported", &SUPPORTED.join(", "))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_sip::rewrite::top_via_received;
    use sipcraft_sip::{parse, Limits};

    const REGISTER: &[u8] = b"REGISTER sip:pbx.test SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bKr1;rport, SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
        From: <sip:1001@pbx.test>;tag=f1\r\nTo: <sip:1001@pbx.test>\r\n\
        Call-ID: c1\r\nCSeq: 3 REGISTER\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn responses_carry_server_received_rport_and_a_stable_to_tag() {
        let req = parse(REGISTER, &Limits::default()).unwrap();
        let from: std::net::SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let via = top_via_received(&req, from.ip(), from.port()).unwrap();
        let built = ResponseBuilder::new(&req, 401, "Unauthorized")
            .header("WWW-Authenticate", "Digest realm=\"pbx.test\"")
            .build();
        let mut out = Vec::new();
        finish_response(&mut out, &built, "sipcraft/test", via.as_deref(), &req);
        let resp = parse(&out, &Limits::default()).unwrap();
        assert_eq!(resp.status(), Some(401));
        assert_eq!(resp.headers()[0].raw_name, "Server");
        assert_eq!(resp.headers()[0].value, "sipcraft/test");
        let vias: Vec<_> = resp.vias().map(Result::unwrap).collect();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].rport(), Some(Some(40000)));
        assert_eq!(
            vias[0].received().map(|h| h.to_string()).as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(vias[1].branch(), Some("z9hG4bK2"));
        let tag = resp.to().unwrap().tag().map(str::to_owned);
        assert!(tag.as_deref().is_some_and(|t| t.starts_with("sc")));
        assert_eq!(reason_of(&out), "Unauthorized");
        // The same request gets the same tag; a 100 gets none; with no Via given, the
        // request's stays as it was (`rport` without a value).
        let mut again = Vec::new();
        finish_response(&mut again, &built, "sipcraft/test", via.as_deref(), &req);
        assert_eq!(out, again);
        let trying = ResponseBuilder::new(&req, 100, "Trying").build();
        let mut t = Vec::new();
        finish_response(&mut t, &trying, "s", None, &req);
        let t = parse(&t, &Limits::default()).unwrap();
        assert_eq!(t.to().unwrap().tag(), None);
        assert_eq!(t.top_via().unwrap().rport(), Some(None));
    }
}
