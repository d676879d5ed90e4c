//! The first line of a message: Request-Line or Status-Line (RFC 3261 §7.1, §7.2).

use crate::error::ParseError;
use crate::message::{RequestLine, StartLine, StatusLine, Version};
use crate::method::Method;

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
pub(super) fn parse_start_line(
    line: &str,
) -> Result<(StartLine<'_>, Option<&'static str>), ParseError> {
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
    use crate::message::{Message, Version};
    use crate::{parse, Limits, ParseError};

    fn p(s: &str) -> Result<Message<'_>, ParseError> {
        parse(s.as_bytes(), &Limits::default())
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
