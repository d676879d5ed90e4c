//! Errors of the message layer.

/// Why a buffer could not be read as a SIP message at all. None of these can be answered:
/// the caller drops the datagram (or closes the stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but line breaks (a keep-alive), or nothing at all.
    #[error("empty message")]
    Empty,
    /// The first line is neither a Request-Line nor a Status-Line.
    #[error("malformed start line")]
    StartLine,
    /// The start line or header section is not UTF-8.
    #[error("start line or headers are not UTF-8")]
    NotUtf8,
    /// A line ends in a bare CR or LF instead of CRLF.
    #[error("line not terminated by CRLF")]
    LineEnding,
    /// A header line has no colon or its name is not a token.
    #[error("malformed header line")]
    HeaderLine,
    /// The header section is not closed by an empty line (stream framing only: a datagram
    /// may end right after its last header line).
    #[error("header section not terminated")]
    UnterminatedHeaders,
    /// More header lines than [`crate::Limits::max_headers`].
    #[error("too many header lines")]
    TooManyHeaders,
    /// A header line longer than [`crate::Limits::max_line_len`].
    #[error("header line too long")]
    LineTooLong,
    /// Start line and headers longer than [`crate::Limits::max_head_size`].
    #[error("header section too large")]
    HeadTooLarge,
    /// The message is longer than [`crate::Limits::max_message_size`].
    #[error("message too large")]
    TooLarge,
    /// Content-Length is not a number, is negative, or appears twice with different values.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Content-Length claims more octets than the datagram holds.
    #[error("Content-Length {declared} larger than the {available} octets present")]
    BodyTruncated {
        /// Octets announced by Content-Length.
        declared: usize,
        /// Octets present after the header section.
        available: usize,
    },
    /// A stream message has no Content-Length (RFC 3261 §18.3 makes it mandatory there).
    #[error("missing Content-Length on a stream")]
    MissingContentLength,
}

/// A syntax error inside one header value or URI, with a short static description of what
/// was wrong (used in 400 reason phrases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub &'static str);

/// Why a typed header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header is required here but absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A single-valued header appears more than once.
    #[error("multiple {0} headers")]
    Duplicate(&'static str),
    /// The header value does not follow its grammar.
    #[error("malformed {name} header: {reason}")]
    Malformed {
        /// Canonical header name.
        name: &'static str,
        /// What was wrong.
        #[source]
        reason: SyntaxError,
    },
}

pub(crate) type SResult<T> = Result<T, SyntaxError>;

/// Shorthand for a syntax error.
#[inline]
pub(crate) fn bad<T>(what: &'static str) -> SResult<T> {
    Err(SyntaxError(what))
}
