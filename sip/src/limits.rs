//! Bounds applied while parsing and framing, so that no input can make the parser allocate or
//! work without limit.

/// Limits on what one message may contain. The defaults suit a registrar/proxy on UDP and TCP:
/// they accept every message of RFC 4475 and RFC 5118 and any real phone's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (start line, headers and body), in bytes. A bigger request is
    /// answered 513 when it can be answered at all.
    pub max_message_size: usize,
    /// Largest start line plus header section, in bytes; a stream that has not shown the end
    /// of its headers within this many bytes is broken.
    pub max_head_size: usize,
    /// Most header lines (not values) one message may carry.
    pub max_headers: usize,
    /// Longest single header line, folded continuations included, in bytes.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 65_535,
            max_head_size: 16 * 1024,
            max_headers: 128,
            max_line_len: 8 * 1024,
        }
    }
}
