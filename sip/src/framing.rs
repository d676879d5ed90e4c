//! Cutting a TCP/TLS byte stream into messages (RFC 3261 §18.3) and CRLF keep-alives
//! (RFC 5626 §3.5.1).

use memchr::{memchr, memmem};

use crate::error::ParseError;
use crate::header::parse_content_length;
use crate::lex::trim_ws;
use crate::limits::Limits;
use crate::name::HeaderName;

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet; read more and ask again.
    Incomplete,
    /// A complete message occupies the first `len` bytes: parse `&buf[..len]`, then drop them.
    Message {
        /// Length of the message, body included.
        len: usize,
    },
    /// A keep-alive ping (CRLF CRLF) occupies the first `len` bytes: answer with a pong
    /// (one CRLF) and drop them.
    Ping {
        /// Bytes to drop (4).
        len: usize,
    },
    /// A keep-alive pong (a lone CRLF), or a stray CRLF before a start line: drop `len` bytes.
    Pong {
        /// Bytes to drop (2).
        len: usize,
    },
}

/// Whether a datagram looks like a response rather than a request, from its first bytes
/// alone (no parse): its start line, after any CRLFs before it (§7.5), begins with the SIP
/// version, whose letters may be in any case (RFC 3261 §7, ABNF strings). For decisions
/// that only steer work, such as how the UDP workers are woken; the parser decides the rest.
pub fn looks_like_response(datagram: &[u8]) -> bool {
    let start = datagram
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(datagram.len());
    datagram
        .get(start..start + 8)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/2.0 "))
}

/// Looks at the front of a stream buffer and says what it holds.
///
/// Errors mean the stream cannot be resynchronised and should be closed: a header section
/// longer than [`Limits::max_head_size`], a message longer than [`Limits::max_message_size`],
/// a missing or invalid Content-Length, or a header section that is not SIP at all.
///
/// A lone CRLF is reported as [`Frame::Pong`] as soon as it is followed by anything other
/// than CR (or by nothing): a ping split by TCP exactly between its two CRLFs reads as two
/// pongs, which costs one unanswered ping and nothing else.
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    if buf.starts_with(b"\r\n\r\n") {
        return Ok(Frame::Ping { len: 4 });
    }
    if buf.starts_with(b"\r\n") {
        return Ok(match buf.get(2) {
            Some(b'\r') if buf.len() < 4 => Frame::Incomplete,
            _ => Frame::Pong { len: 2 },
        });
    }
    if buf.is_empty() || buf == b"\r" {
        return Ok(Frame::Incomplete);
    }
    let window = buf
        .get(..limits.max_head_size.saturating_add(4))
        .unwrap_or(buf);
    let Some(end) = memmem::find(window, b"\r\n\r\n") else {
        return if buf.len() > limits.max_head_size {
            Err(ParseError::HeadTooLarge)
        } else {
            Ok(Frame::Incomplete)
        };
    };
    let head = buf.get(..end + 2).unwrap_or_default();
    let mut content_length = None;
    // Skip the start line, then look at each header line (folded continuations start with
    // white space and never carry a header name).
    let mut pos = memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    while pos < head.len() {
        let rest = head.get(pos..).unwrap_or_default();
        let line_len = memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = rest.get(..line_len).unwrap_or_default();
        pos += line_len;
        if matches!(line.first(), Some(b' ') | Some(b'\t')) {
            continue;
        }
        let Some(colon) = memchr(b':', line) else {
            return Err(ParseError::HeaderLine);
        };
        let name = std::str::from_utf8(line.get(..colon).unwrap_or_default())
            .map_err(|_| ParseError::NotUtf8)?
            .trim_end_matches([' ', '\t']);
        if HeaderName::parse(name) != HeaderName::ContentLength {
            continue;
        }
        // The value may be folded onto following lines; gather up to the next header.
        let mut vend = pos;
        while matches!(head.get(vend), Some(b' ') | Some(b'\t')) {
            let more = head.get(vend..).unwrap_or_default();
            vend += memchr(b'\n', more).map_or(more.len(), |i| i + 1);
        }
        let value = std::str::from_utf8(
            head.get(pos - line_len + colon + 1..vend)
                .unwrap_or_default(),
        )
        .map_err(|_| ParseError::NotUtf8)?;
        let n = parse_content_length(trim_ws(value)).map_err(|_| ParseError::ContentLength)?;
        if content_length.is_some_and(|prev| prev != n) {
            return Err(ParseError::ContentLength);
        }
        content_length = Some(n);
    }
    let Some(n) = content_length else {
        return Err(ParseError::MissingContentLength);
    };
    let len = (end + 4).checked_add(n).ok_or(ParseError::TooLarge)?;
    if len > limits.max_message_size {
        return Err(ParseError::TooLarge);
    }
    if buf.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message { len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length:\r\n 5\r\n\r\nhello";

    #[test]
    fn keepalives() {
        let l = Limits::default();
        assert_eq!(frame(b"\r\n\r\n", &l), Ok(Frame::Ping { len: 4 }));
        assert_eq!(frame(b"\r\n\r\nINVITE", &l), Ok(Frame::Ping { len: 4 }));
        assert_eq!(frame(b"\r\n", &l), Ok(Frame::Pong { len: 2 }));
        assert_eq!(frame(b"\r\nINVITE", &l), Ok(Frame::Pong { len: 2 }));
        assert_eq!(frame(b"\r\n\r", &l), Ok(Frame::Incomplete));
        assert_eq!(frame(b"", &l), Ok(Frame::Incomplete));
    }

    #[test]
    fn messages_by_content_length() {
        let l = Limits::default();
        for cut in 0..MSG.len() {
            assert_eq!(
                frame(&MSG[..cut], &l),
                Ok(Frame::Incomplete),
                "cut at {cut}"
            );
        }
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(frame(&two, &l), Ok(Frame::Message { len: MSG.len() }));
    }

    #[test]
    fn errors() {
        let l = Limits::default();
        assert_eq!(
            frame(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n", &l),
            Err(ParseError::MissingContentLength)
        );
        assert_eq!(
            frame(b"OPTIONS sip:a SIP/2.0\r\nl: -1\r\n\r\n", &l),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            frame(b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\n", &l),
            Err(ParseError::ContentLength)
        );
        let small = Limits {
            max_head_size: 8,
            ..l
        };
        assert_eq!(
            frame(b"OPTIONS sip:a SIP/2.0\r\n", &small),
            Err(ParseError::HeadTooLarge)
        );
        let small = Limits {
            max_message_size: 20,
            ..l
        };
        assert_eq!(frame(MSG, &small), Err(ParseError::TooLarge));
        assert_eq!(
            frame(b"OPTIONS sip:a SIP/2.0\r\nbad\r\n\r\n", &l),
            Err(ParseError::HeaderLine)
        );
    }

    #[test]
    fn responses_are_told_from_requests_by_their_first_bytes() {
        assert!(looks_like_response(b"SIP/2.0 180 Ringing\r\n"));
        assert!(looks_like_response(b"\r\n\r\nsip/2.0 200 OK\r\n"));
        assert!(!looks_like_response(
            b"INVITE sip:1002@pbx.test SIP/2.0\r\n"
        ));
        assert!(!looks_like_response(b"\r\n\r\n"));
        assert!(!looks_like_response(b"SIP/2.0"));
        assert!(!looks_like_response(b""));
    }
}
