//! Reading a buffer into a [`Message`]: start line, one pass over the header lines, and
//! Content-Length framing of the body (RFC 3261 §7, §18.3).

use memchr::memchr2;

use crate::error::ParseError;
use crate::header::parse_content_length;
use crate::lex::{is_token_str, trim_ws};
use crate::limits::Limits;
use crate::message::{Header, Message, RequestLine, StartLine, StatusLine, Version};
use crate::method::Method;
use crate::name::{HeaderName, KNOWN};

/// Parses one SIP message from a datagram (or from one message cut out of a stream by
/// [`crate::frame`]).
///
/// Leading CRLFs are skipped. The body is Content-Length octets and anything after it is
/// ignored; without Content-Length the body is the rest of the buffer. A datagram may end
/// right after its last header line. Every framing fault (bad or conflicting Content-Length,
/// a body shorter than announced, an oversized message) is an error here; [`crate::check`]
/// reports the same faults as answerable 400/513 rejections when the request allows one.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Result<Message<'a>, ParseError> {
    match parse_lenient(buf, limits)? {
        (msg, None) => Ok(msg),
        (_, Some(fault)) => Err(fault),
    }
}

/// Like [`parse`], but returns the message alongside a framing fault when the start line and
/// headers could be read, so that a rejection can still be built from it.
pub(crate) fn parse_lenient<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Message<'a>, Option<ParseError>), ParseError> {
    let mut buf = buf;
    while let Some(rest) = buf.strip_prefix(b"\r\n") {
        buf = rest;
    }
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut fault = (buf.len() > limits.max_message_size).then_some(ParseError::TooLarge);

    // Pass 1: walk the line ends (rejecting bare CR and LF) up to the empty line, or
    // (datagram) the end of the buffer, noting each header line's span and colon.
    let (sl_end, _) = line_end(buf, 0)?;
    // Fourteen lines hold a typical request and keep the allocation within the small-size
    // caches of common allocators (under 1 KiB).
    let mut headers: Vec<Header<'a>> = Vec::with_capacity(14);
    let max_headers = limits.max_headers.min(usize::from(u16::MAX) - 1);
    let mut pos = sl_end + 2;
    let (head_len, body_start) = loop {
        if pos > limits.max_head_size {
            return Err(ParseError::HeadTooLarge);
        }
        match buf.get(pos..pos + 2) {
            None if pos == buf.len() => break (pos, pos),
            Some(b"\r\n") => break (pos, pos + 2),
            _ => {}
        }
        // The line ends at a CRLF not followed by SP/HTAB (which would fold it).
        let mut end = pos;
        loop {
            let (e, folded) = line_end(buf, end)?;
            end = e;
            if !folded {
                break;
            }
            end += 2;
        }
        if end - pos > limits.max_line_len {
            return Err(ParseError::LineTooLong);
        }
        if headers.len() >= max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        let line = buf.get(pos..end).unwrap_or_default();
        let colon = pos
            + line
                .iter()
                .position(|&b| b == b':')
                .ok_or(ParseError::HeaderLine)?;
        headers.push(Header {
            name: HeaderName::Other(""),
            raw_name: "",
            value: "",
            line: (offset32(pos), offset32(end)),
            colon: offset32(colon),
        });
        pos = end + 2;
    };
    if head_len > limits.max_head_size {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(buf.get(..head_len).unwrap_or_default())
        .map_err(|_| ParseError::NotUtf8)?;
    let (start, start_fault) = parse_start_line(head.get(..sl_end).ok_or(ParseError::StartLine)?)?;

    // Pass 2: names and values, the table of first occurrences, Content-Length.
    let mut first = [0u16; KNOWN];
    let mut count = [0u8; KNOWN];
    let mut content_length: Option<Result<usize, ()>> = None;
    for (i, h) in headers.iter_mut().enumerate() {
        let (pos, colon, end) = (h.line.0 as usize, h.colon as usize, h.line.1 as usize);
        let raw_name = trim_end_sp(head.get(pos..colon).unwrap_or(""));
        let name = HeaderName::parse(raw_name);
        // Known names are tokens already; anything else must be one.
        if matches!(name, HeaderName::Other(_)) && !is_token_str(raw_name) {
            return Err(ParseError::HeaderLine);
        }
        let value = trim_ws(head.get(colon + 1..end).unwrap_or(""));
        if let Some(k) = name.index() {
            if let (Some(f), Some(c)) = (first.get_mut(k), count.get_mut(k)) {
                if *f == 0 {
                    *f = u16::try_from(i + 1).unwrap_or(u16::MAX);
                }
                *c = c.saturating_add(1);
            }
            if name == HeaderName::ContentLength {
                let v = parse_content_length(value).map_err(|_| ());
                content_length = match content_length {
                    Some(Ok(prev)) if v != Ok(prev) => Some(Err(())),
                    Some(Err(())) => Some(Err(())),
                    _ => Some(v),
                };
            }
        }
        h.name = name;
        h.raw_name = raw_name;
        h.value = value;
    }

    // Body.
    let available = buf.len().saturating_sub(body_start);
    let body_len = match content_length {
        None => available,
        Some(Err(())) => {
            fault = fault.or(Some(ParseError::ContentLength));
            0
        }
        Some(Ok(n)) if n > available => {
            fault = fault.or(Some(ParseError::BodyTruncated {
                declared: n,
                available,
            }));
            available
        }
        Some(Ok(n)) => n,
    };
    let end = body_start + body_len;
    let msg = Message {
        buf: buf.get(..end).unwrap_or(buf),
        start,
        start_fault,
        start_line_len: sl_end,
        headers,
        first,
        count,
        head_len,
        body: buf.get(body_start..end).unwrap_or_default(),
    };
    Ok((msg, fault))
}

/// Trims SP and HTAB from the end (between a header name and its colon).
fn trim_end_sp(s: &str) -> &str {
    let n = s
        .bytes()
        .rposition(|b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    s.get(..n).unwrap_or("")
}

fn offset32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Finds the CRLF ending the line that starts at `from`: returns its offset and whether
/// the next line folds into this one (starts with SP or HTAB). A bare CR or LF, or a buffer
/// ending inside the line, is an error.
#[inline]
fn line_end(buf: &[u8], from: usize) -> Result<(usize, bool), ParseError> {
    let rest = buf.get(from..).unwrap_or_default();
    let i = from + memchr2(b'\r', b'\n', rest).ok_or(ParseError::LineEnding)?;
    if buf.get(i) != Some(&b'\r') || buf.get(i + 1) != Some(&b'\n') {
        return Err(ParseError::LineEnding);
    }
    Ok((i, matches!(buf.get(i + 2), Some(b' ') | Some(b'\t'))))
}

/// `SIP/x.y`, case-insensitive.
fn parse_version(s: &str) -> Option<Version> {
    if s == "SIP/2.0" {
        return Some(Version::SIP_2_0);
    }
    let v = s.get(..4).filter(|p| p.eq_ignore_ascii_case("SIP/"))?;
    let _ = v;
    let (maj, min) = s.get(4..)?.split_once('.')?;
    let num = |d: &str| {
        (!d.is_empty() && d.len() <= 3 && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse::<u16>().ok())
            .flatten()
    };
    Some(Version {
        major: num(maj)?,
        minor: num(min)?,
    })
}

/// Reads the start line. Structural garbage is an error (nothing can be answered); a request
/// line that is recognisable but badly spaced is returned with a fault for a 400.
fn parse_start_line(line: &str) -> Result<(StartLine<'_>, Option<&'static str>), ParseError> {
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let (v, rest) = line.split_once(' ').ok_or(ParseError::StartLine)?;
        let version = parse_version(v).ok_or(ParseError::StartLine)?;
        let code_text = rest.get(..3).ok_or(ParseError::StartLine)?;
        if !code_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StartLine);
        }
        let reason = match rest.get(3..) {
            Some("") => "",
            Some(r) => r.strip_prefix(' ').ok_or(ParseError::StartLine)?,
            None => return Err(ParseError::StartLine),
        };
        let code = code_text
            .parse::<u16>()
            .map_err(|_| ParseError::StartLine)?;
        return Ok((
            StartLine::Response(StatusLine {
                version,
                code,
                reason,
            }),
            None,
        ));
    }
    // The usual shape, `METHOD SP URI SP SIP/2.0` with single spaces and no white space in
    // the URI, takes a short path.
    if let Some(head) = line.strip_suffix(" SIP/2.0") {
        let b = head.as_bytes();
        if let Some(sp) = b.iter().position(|&c| c == b' ') {
            let uri = head.get(sp + 1..).unwrap_or("");
            if !uri.is_empty() && !uri.bytes().any(|c| c == b' ' || c == b'\t') {
                let method = head
                    .get(..sp)
                    .and_then(Method::parse)
                    .ok_or(ParseError::StartLine)?;
                let rl = RequestLine {
                    method,
                    uri,
                    version: Version::SIP_2_0,
                    uri_offset: sp + 1,
                };
                return Ok((StartLine::Request(rl), None));
            }
        }
    }
    let mut fault = None;
    let trimmed = line.trim_end_matches(' ');
    if trimmed.len() != line.len() {
        fault = Some("white space at end of Request-Line");
    }
    let (m, rest) = trimmed.split_once(' ').ok_or(ParseError::StartLine)?;
    let method = Method::parse(m).ok_or(ParseError::StartLine)?;
    let (uri_part, v) = rest.rsplit_once(' ').ok_or(ParseError::StartLine)?;
    let version = parse_version(v).ok_or(ParseError::StartLine)?;
    let uri = uri_part.trim_matches(' ');
    if uri.is_empty() {
        return Err(ParseError::StartLine);
    }
    if uri.len() != uri_part.len() {
        fault = fault.or(Some("multiple spaces in Request-Line"));
    } else if uri.bytes().any(|b| b == b' ' || b == b'\t') {
        fault = fault.or(Some("white space in Request-URI"));
    }
    let uri_offset =
        line.len() - rest.len() + (uri_part.len() - uri_part.trim_start_matches(' ').len());
    Ok((
        StartLine::Request(RequestLine {
            method,
            uri,
            version,
            uri_offset,
        }),
        fault,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Message<'_>, ParseError> {
        parse(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn minimal_request_and_response() {
        let m = p("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n").unwrap();
        assert!(m.is_request());
        assert_eq!(m.headers().len(), 2);
        assert_eq!(m.body(), b"");
        let m = p("SIP/2.0 180 Ringing\r\n\r\n").unwrap();
        assert_eq!(
            m.status_line().map(|s| (s.code, s.reason)),
            Some((180, "Ringing"))
        );
        let m = p("\r\n\r\nSIP/2.0 100\r\n\r\n").unwrap();
        assert_eq!(m.status_line().map(|s| s.reason), Some(""));
    }

    #[test]
    fn body_framing() {
        let m = p("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!(m.body(), b"abc");
        assert_eq!(
            m.as_bytes().len(),
            "MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc".len()
        );
        let m = p("MESSAGE sip:a@b SIP/2.0\r\nFoo: bar\r\n\r\nabcdef").unwrap();
        assert_eq!(m.body(), b"abcdef");
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: 9\r\n\r\nabc").err(),
            Some(ParseError::BodyTruncated {
                declared: 9,
                available: 3
            })
        );
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n").err(),
            Some(ParseError::ContentLength)
        );
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab").err(),
            Some(ParseError::ContentLength)
        );
    }

    #[test]
    fn structural_errors() {
        for (s, e) in [
            ("", ParseError::Empty),
            ("\r\n\r\n", ParseError::Empty),
            ("garbage", ParseError::LineEnding),
            ("garbage\r\n\r\n", ParseError::StartLine),
            ("INVITE sip:a@b HTTP/1.1\r\n\r\n", ParseError::StartLine),
            ("SIP/2.0 4294967301 big\r\n\r\n", ParseError::StartLine),
            (
                "INVITE sip:a@b SIP/2.0\nVia: x\r\n\r\n",
                ParseError::LineEnding,
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\nVia x\r\n\r\n",
                ParseError::HeaderLine,
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\n folded: x\r\n\r\n",
                ParseError::HeaderLine,
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\nA: x\rB: y\r\n\r\n",
                ParseError::LineEnding,
            ),
        ] {
            assert_eq!(p(s).err(), Some(e), "{s:?}");
        }
    }

    #[test]
    fn limits_hold() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let s = "OPTIONS sip:a SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse(s.as_bytes(), &limits).err(),
            Some(ParseError::TooManyHeaders)
        );
        let limits = Limits {
            max_line_len: 3,
            ..Limits::default()
        };
        assert_eq!(
            parse(s.as_bytes(), &limits).err(),
            Some(ParseError::LineTooLong)
        );
        let limits = Limits {
            max_head_size: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse(s.as_bytes(), &limits).err(),
            Some(ParseError::HeadTooLarge)
        );
        let limits = Limits {
            max_message_size: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse(s.as_bytes(), &limits).err(),
            Some(ParseError::TooLarge)
        );
    }

    #[test]
    fn request_line_faults() {
        let m = p("INVITE  sip:a@b  SIP/2.0\r\n\r\n").unwrap();
        assert_eq!(m.request_line().map(|r| r.uri), Some("sip:a@b"));
        assert!(m.start_fault.is_some());
        let m = p("OPTIONS sip:a@b SIP/2.0  \r\n\r\n").unwrap();
        assert!(m.start_fault.is_some());
        let m = p("INVITE sip:a@b; lr SIP/2.0\r\n\r\n").unwrap();
        assert_eq!(m.start_fault, Some("white space in Request-URI"));
        let m = p("INVITE sip:a@b SIP/7.0\r\n\r\n").unwrap();
        assert_eq!(
            m.request_line().map(|r| r.version),
            Some(Version { major: 7, minor: 0 })
        );
    }
}
