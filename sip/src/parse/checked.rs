//! The checked reader: any head, every fault found and named in a fixed order.

use memchr::memchr2;

use super::{offset32, parse_start_line, Head, Index};
use crate::error::ParseError;
use crate::lex::{is_token_str, trim_ws};
use crate::limits::Limits;
use crate::message::Header;
use crate::name::HeaderName;

/// Reads the head of any message, checking everything and reporting the first fault in a
/// fixed order: line structure and limits, then UTF-8, then the start line, then header
/// names.
pub(super) fn read_head_checked<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Head<'a>, ParseError> {
    // Pass 1: walk the line ends (rejecting bare CR and LF) up to the empty line, or
    // (datagram) the end of the buffer, noting each header line's span and colon.
    let (sl_end, _) = line_end(buf, 0)?;
    let mut index = Index::new();
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
        if index.headers.len() >= max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        let line = buf.get(pos..end).unwrap_or_default();
        let colon = pos
            + line
                .iter()
                .position(|&b| b == b':')
                .ok_or(ParseError::HeaderLine)?;
        index.headers.push(Header {
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
    let mut headers = std::mem::take(&mut index.headers);
    for (i, h) in headers.iter_mut().enumerate() {
        let (pos, colon, end) = (h.line.0 as usize, h.colon as usize, h.line.1 as usize);
        let raw_name = trim_end_sp(head.get(pos..colon).unwrap_or(""));
        let name = HeaderName::parse(raw_name);
        // Known names are tokens already; anything else must be one.
        if matches!(name, HeaderName::Other(_)) && !is_token_str(raw_name) {
            return Err(ParseError::HeaderLine);
        }
        let value = trim_ws(head.get(colon + 1..end).unwrap_or(""));
        index.note(i, name, value);
        h.name = name;
        h.raw_name = raw_name;
        h.value = value;
    }
    index.headers = headers;
    Ok(Head {
        start,
        start_fault,
        start_line_len: sl_end,
        index,
        head_len,
        body_start,
    })
}

/// Trims SP and HTAB from the end (between a header name and its colon).
fn trim_end_sp(s: &str) -> &str {
    let n = s
        .bytes()
        .rposition(|b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    s.get(..n).unwrap_or("")
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
