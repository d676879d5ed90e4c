//! Reading a buffer into a [`Message`]: start line, one pass over the header lines, and
//! Content-Length framing of the body (RFC 3261 §7, §18.3).

use std::sync::LazyLock;

use memchr::memchr2;
use memchr::memmem::Finder;

use crate::error::ParseError;
use crate::header::parse_content_length;
use crate::lex::{is_token, is_ws};
use crate::limits::Limits;
use crate::message::{Header, Message, StartLine};
use crate::name::{HeaderName, KNOWN};

mod checked;
mod start_line;

use checked::read_head_checked;
use start_line::parse_start_line;

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
    let too_large = (buf.len() > limits.max_message_size).then_some(ParseError::TooLarge);
    let (msg, body_fault) = match read_head_fast(buf, limits) {
        Some(head) => {
            #[cfg(debug_assertions)]
            check_fast_read(buf, limits, &head);
            head.finish(buf)
        }
        None => read_head_checked(buf, limits)?.finish(buf),
    };
    Ok((msg, too_large.or(body_fault)))
}

/// In debug builds (the tests, and fuzzing with `-a`), every head read the fast way is read
/// again the checked way: the two must agree.
#[cfg(debug_assertions)]
fn check_fast_read(buf: &[u8], limits: &Limits, fast: &Head<'_>) {
    let checked = read_head_checked(buf, limits);
    assert!(
        checked.as_ref().is_ok_and(|c| c.same_as(fast)),
        "fast and checked readers disagree on {:?}: {:?}",
        String::from_utf8_lossy(buf),
        checked.err()
    );
}

/// Start line and indexed header lines, before the body is cut out.
struct Head<'a> {
    start: StartLine<'a>,
    start_fault: Option<&'static str>,
    start_line_len: usize,
    index: Index<'a>,
    head_len: usize,
    body_start: usize,
}

/// The header lines, the table of first occurrences and counts of known names, and the
/// Content-Length read on the way (`Err` when unreadable or conflicting).
struct Index<'a> {
    headers: Vec<Header<'a>>,
    first: [u16; KNOWN],
    count: [u8; KNOWN],
    content_length: Option<Result<usize, ()>>,
}

impl<'a> Index<'a> {
    fn new() -> Self {
        Index {
            // Fourteen lines hold a typical request and keep the allocation within the
            // small-size caches of common allocators (under 1 KiB).
            headers: Vec::with_capacity(14),
            first: [0; KNOWN],
            count: [0; KNOWN],
            content_length: None,
        }
    }

    /// Notes a header line's name in the tables (it is, or will be, line `i`).
    #[inline]
    fn note(&mut self, i: usize, name: HeaderName<'_>, value: &str) {
        let Some(k) = name.index() else {
            return;
        };
        if let (Some(f), Some(c)) = (self.first.get_mut(k), self.count.get_mut(k)) {
            if *f == 0 {
                *f = u16::try_from(i + 1).unwrap_or(u16::MAX);
            }
            *c = c.saturating_add(1);
        }
        if name == HeaderName::ContentLength {
            let v = parse_content_length(value).map_err(|_| ());
            self.content_length = match self.content_length {
                Some(Ok(prev)) if v != Ok(prev) => Some(Err(())),
                Some(Err(())) => Some(Err(())),
                _ => Some(v),
            };
        }
    }
}

impl<'a> Head<'a> {
    #[cfg(debug_assertions)]
    fn same_as(&self, other: &Head<'_>) -> bool {
        self.start == other.start
            && self.start_fault == other.start_fault
            && self.start_line_len == other.start_line_len
            && self.index.headers == other.index.headers
            && self.index.first == other.index.first
            && self.index.count == other.index.count
            && self.index.content_length == other.index.content_length
            && self.head_len == other.head_len
            && self.body_start == other.body_start
    }

    /// Frames the body by Content-Length and builds the message, with the framing fault.
    fn finish(self, buf: &'a [u8]) -> (Message<'a>, Option<ParseError>) {
        let body_start = self.body_start;
        let available = buf.len().saturating_sub(body_start);
        let mut fault = None;
        let body_len = match self.index.content_length {
            None => available,
            Some(Err(())) => {
                fault = Some(ParseError::ContentLength);
                0
            }
            Some(Ok(n)) if n > available => {
                fault = Some(ParseError::BodyTruncated {
                    declared: n,
                    available,
                });
                available
            }
            Some(Ok(n)) => n,
        };
        let end = body_start + body_len;
        let msg = Message {
            buf: buf.get(..end).unwrap_or(buf),
            start: self.start,
            start_fault: self.start_fault,
            start_line_len: self.start_line_len,
            headers: self.index.headers,
            first: self.index.first,
            count: self.index.count,
            head_len: self.head_len,
            body: buf.get(body_start..end).unwrap_or_default(),
        };
        (msg, fault)
    }
}

/// Reads the head of a well-formed message in one pass: CRLF line ends, each header a token
/// name, optional SP/HTAB and a colon, every line valid UTF-8, all within the limits.
/// `None` at the first thing out of the ordinary, for [`read_head_checked`] to find and
/// name; when it returns a head, it is the one [`read_head_checked`] would return.
fn read_head_fast<'a>(buf: &'a [u8], limits: &Limits) -> Option<Head<'a>> {
    let head = utf8_head(buf)?;
    let sl_end = memchr2(b'\r', b'\n', buf)?;
    if buf.get(sl_end + 1) != Some(&b'\n') || buf.get(sl_end) != Some(&b'\r') {
        return None;
    }
    let (start, start_fault) = parse_start_line(head.get(..sl_end)?).ok()?;
    let mut index = Index::new();
    let max_headers = limits.max_headers.min(usize::from(u16::MAX) - 1);
    let mut pos = sl_end + 2;
    let body_start = loop {
        if pos > limits.max_head_size {
            return None;
        }
        match buf.get(pos..pos + 2) {
            None if pos == buf.len() => break pos,
            Some(b"\r\n") => break pos + 2,
            _ => {}
        }
        let rest = buf.get(pos..)?;
        let name_len = rest.iter().position(|&b| !is_token(b))?;
        let mut colon = pos + name_len;
        while matches!(buf.get(colon), Some(b' ' | b'\t')) {
            colon += 1;
        }
        if name_len == 0 || buf.get(colon) != Some(&b':') {
            return None;
        }
        // The name and colon hold no CR or LF: the line end is searched from the colon.
        let mut end = colon + 1;
        loop {
            end += memchr2(b'\r', b'\n', buf.get(end..)?)?;
            if buf.get(end + 1) != Some(&b'\n') || buf.get(end) != Some(&b'\r') {
                return None;
            }
            if !matches!(buf.get(end + 2), Some(b' ' | b'\t')) {
                break;
            }
            end += 2;
        }
        if end - pos > limits.max_line_len || index.headers.len() >= max_headers {
            return None;
        }
        // The value without the white space (folds included) around it.
        let mut value_start = colon + 1;
        while value_start < end && buf.get(value_start).copied().is_some_and(is_ws) {
            value_start += 1;
        }
        let mut value_end = end;
        while value_end > value_start && buf.get(value_end - 1).copied().is_some_and(is_ws) {
            value_end -= 1;
        }
        // `head` may stop short of the real head (see `utf8_head`): then this gives up.
        let raw_name = head.get(pos..pos + name_len)?;
        let value = head.get(value_start..value_end)?;
        let name = HeaderName::parse(raw_name);
        index.note(index.headers.len(), name, value);
        index.headers.push(Header {
            name,
            raw_name,
            value,
            line: (offset32(pos), offset32(end)),
            colon: offset32(colon),
        });
        pos = end + 2;
    };
    let head_len = pos;
    if head_len > limits.max_head_size {
        return None;
    }
    Some(Head {
        start,
        start_fault,
        start_line_len: sl_end,
        index,
        head_len,
        body_start,
    })
}

/// The longest prefix of `buf` known to be UTF-8 that covers the head when the head is
/// UTF-8, checked in one call. A datagram-sized buffer is checked whole (cheaper than
/// finding the empty line first); in a bigger one the head is found first, as it ends at
/// the first CR LF CR LF when it is well formed.
fn utf8_head(buf: &[u8]) -> Option<&str> {
    const WHOLE: usize = 1500;
    static EMPTY_LINE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
    let scope = if buf.len() <= WHOLE {
        buf
    } else {
        buf.get(..EMPTY_LINE.find(buf).map_or(buf.len(), |i| i + 2))?
    };
    match std::str::from_utf8(scope) {
        Ok(text) => Some(text),
        // A body that is not UTF-8: the valid prefix may still hold the whole head.
        Err(e) => std::str::from_utf8(scope.get(..e.valid_up_to())?).ok(),
    }
}

fn offset32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
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

    /// Every torture and regression message, and each of them with one byte changed to
    /// something a parser must handle (or truncated there), under default and tight limits:
    /// parsing never panics, so the fast reader agrees with the checked one (see
    /// `check_fast_read`) wherever it reads a head.
    #[test]
    fn fast_and_checked_readers_agree() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut inputs = Vec::new();
        for dir in ["torture/rfc4475", "torture/rfc5118", "regressions"] {
            for entry in std::fs::read_dir(root.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                inputs.extend(std::fs::read(entry.path()));
            }
        }
        assert!(inputs.len() > 50, "test messages found");
        let tight = Limits {
            max_headers: 6,
            max_line_len: 60,
            max_head_size: 400,
            max_message_size: 500,
        };
        let fast = inputs
            .iter()
            .filter(|m| read_head_fast(m, &Limits::default()).is_some())
            .count();
        assert!(fast > 40, "most test messages take the fast path ({fast})");
        for input in &inputs {
            for limits in [Limits::default(), tight] {
                let _ = parse(input, &limits);
                for at in 0..input.len().min(400) {
                    let _ = parse(input.get(..at).unwrap_or_default(), &limits);
                    for b in [b'\r', b'\n', b':', b' ', 0, 0xff] {
                        let mut changed = input.clone();
                        if let Some(c) = changed.get_mut(at) {
                            *c = b;
                        }
                        let _ = parse(&changed, &limits);
                    }
                }
            }
        }
    }
}
