//! A parsed message: start line, an index of header lines, the body, and typed accessors
//! that parse a header when asked.

use std::fmt;

use crate::error::{HeaderError, SyntaxError};
use crate::header::{
    parse_call_id, parse_content_length, parse_expires, parse_max_forwards, parse_token_item, CSeq,
    Challenge, Contacts, Credentials, DigestCredentials, MediaType, NameAddr, Via,
};
use crate::lex::{split_commas, Cursor};
use crate::method::Method;
use crate::name::{HeaderName, KNOWN};
use crate::uri::Uri;

/// Protocol version from a start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Major number.
    pub major: u16,
    /// Minor number.
    pub minor: u16,
}

impl Version {
    /// SIP/2.0.
    pub const SIP_2_0: Version = Version { major: 2, minor: 0 };
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/{}.{}", self.major, self.minor)
    }
}

/// `Method SP Request-URI SP SIP-Version`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// Method.
    pub method: Method<'a>,
    /// The Request-URI as written (parse it with [`Message::request_uri`]).
    pub uri: &'a str,
    /// Version.
    pub version: Version,
    /// Offset of the URI in the start line.
    pub(crate) uri_offset: usize,
}

/// `SIP-Version SP Status-Code SP Reason-Phrase`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine<'a> {
    /// Version.
    pub version: Version,
    /// Status code (three digits).
    pub code: u16,
    /// Reason phrase (UTF-8, may be empty).
    pub reason: &'a str,
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// A request.
    Request(RequestLine<'a>),
    /// A response.
    Response(StatusLine<'a>),
}

/// One header line: its name and its whole value (white space around it trimmed, folded
/// continuation lines kept inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name, known or not.
    pub name: HeaderName<'a>,
    /// The name as written (a compact form stays compact).
    pub raw_name: &'a str,
    /// The raw value.
    pub value: &'a str,
    /// Start and end (before CRLF) of the line in [`Message::as_bytes`].
    pub(crate) line: (u32, u32),
    /// Offset of the colon after the name.
    pub(crate) colon: u32,
}

/// A parsed SIP message that borrows the buffer it was read from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) start: StartLine<'a>,
    pub(crate) start_fault: Option<&'static str>,
    pub(crate) start_line_len: usize,
    pub(crate) headers: Vec<Header<'a>>,
    pub(crate) first: [u16; KNOWN],
    pub(crate) count: [u8; KNOWN],
    pub(crate) head_len: usize,
    pub(crate) body: &'a [u8],
}

fn malformed(name: HeaderName<'_>, reason: SyntaxError) -> HeaderError {
    HeaderError::Malformed {
        name: static_name(name),
        reason,
    }
}

fn static_name(name: HeaderName<'_>) -> &'static str {
    crate::name::canonical_static(name)
}

impl<'a> Message<'a> {
    /// The start line.
    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start
    }

    /// The Request-Line, for a request.
    pub fn request_line(&self) -> Option<&RequestLine<'a>> {
        match &self.start {
            StartLine::Request(r) => Some(r),
            StartLine::Response(_) => None,
        }
    }

    /// The Status-Line, for a response.
    pub fn status_line(&self) -> Option<&StatusLine<'a>> {
        match &self.start {
            StartLine::Response(s) => Some(s),
            StartLine::Request(_) => None,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request(_))
    }

    /// The request method, for a request.
    pub fn method(&self) -> Option<Method<'a>> {
        self.request_line().map(|r| r.method)
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        self.status_line().map(|s| s.code)
    }

    /// The parsed Request-URI, for a request.
    pub fn request_uri(&self) -> Option<Result<Uri<'a>, SyntaxError>> {
        self.request_line().map(|r| Uri::parse(r.uri))
    }

    /// Every header line, in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The message as it was framed (leading CRLFs and trailing datagram octets excluded).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The body (Content-Length octets).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The first header line with this name.
    pub fn header(&self, name: HeaderName<'_>) -> Option<&Header<'a>> {
        match name.index() {
            Some(k) => {
                let i = usize::from(*self.first.get(k)?).checked_sub(1)?;
                self.headers.get(i)
            }
            None => self.headers.iter().find(|h| same_name(h.name, name)),
        }
    }

    /// Every header line with this name, in order (`Other` names compare case-insensitively).
    pub fn headers_named<'s>(
        &'s self,
        name: HeaderName<'s>,
    ) -> impl Iterator<Item = &'s Header<'a>> + 's {
        // A known name starts at its first line and stops after its last one (the count
        // saturates, so a name with that many lines is followed to the end).
        let (skip, take) = match name.index() {
            Some(k) => (
                usize::from(self.first.get(k).copied().unwrap_or(0)).saturating_sub(1),
                match self.count.get(k).copied().unwrap_or(0) {
                    u8::MAX => usize::MAX,
                    n => usize::from(n),
                },
            ),
            None => (0, usize::MAX),
        };
        self.headers
            .iter()
            .skip(skip)
            .filter(move |h| same_name(h.name, name))
            .take(take)
    }

    /// How many header lines carry this name.
    pub fn count(&self, name: HeaderName<'_>) -> usize {
        match name.index() {
            Some(k) => usize::from(self.count.get(k).copied().unwrap_or(0)),
            None => self.headers_named(name).count(),
        }
    }

    /// The values of a list header across all its lines, split at top-level commas.
    pub fn values<'s>(&'s self, name: HeaderName<'s>) -> impl Iterator<Item = &'a str> + 's {
        self.headers_named(name).flat_map(|h| split_commas(h.value))
    }

    /// The single value of a header that must appear at most once.
    pub fn single(&self, name: HeaderName<'_>) -> Result<Option<&'a str>, HeaderError> {
        // A known name is two table reads: how many lines, and where the first one is.
        if let Some(k) = name.index() {
            return match self.count.get(k).copied().unwrap_or(0) {
                0 => Ok(None),
                1 => Ok(usize::from(self.first.get(k).copied().unwrap_or(0))
                    .checked_sub(1)
                    .and_then(|i| self.headers.get(i))
                    .map(|h| h.value)),
                _ => Err(HeaderError::Duplicate(static_name(name))),
            };
        }
        match self.count(name) {
            0 => Ok(None),
            1 => Ok(self.header(name).map(|h| h.value)),
            _ => Err(HeaderError::Duplicate(static_name(name))),
        }
    }

    fn required(&self, name: HeaderName<'_>) -> Result<&'a str, HeaderError> {
        self.single(name)?
            .ok_or(HeaderError::Missing(static_name(name)))
    }

    /// Every Via value, top first, across all Via lines. Reading a line stops at its first
    /// malformed value (reported as an error).
    pub fn vias<'s>(&'s self) -> impl Iterator<Item = Result<Via<'a>, SyntaxError>> + 's {
        ListItems::new(self.headers_named(HeaderName::Via), Via::parse_item)
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Result<Via<'a>, HeaderError> {
        self.vias()
            .next()
            .ok_or(HeaderError::Missing("Via"))?
            .map_err(|e| malformed(HeaderName::Via, e))
    }

    /// From.
    pub fn from(&self) -> Result<NameAddr<'a>, HeaderError> {
        NameAddr::parse(self.required(HeaderName::From)?)
            .map_err(|e| malformed(HeaderName::From, e))
    }

    /// To.
    pub fn to(&self) -> Result<NameAddr<'a>, HeaderError> {
        NameAddr::parse(self.required(HeaderName::To)?).map_err(|e| malformed(HeaderName::To, e))
    }

    /// Call-ID.
    pub fn call_id(&self) -> Result<&'a str, HeaderError> {
        parse_call_id(self.required(HeaderName::CallId)?)
            .map_err(|e| malformed(HeaderName::CallId, e))
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq<'a>, HeaderError> {
        CSeq::parse(self.required(HeaderName::CSeq)?).map_err(|e| malformed(HeaderName::CSeq, e))
    }

    /// Max-Forwards, when present.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.single(HeaderName::MaxForwards)?
            .map(|v| parse_max_forwards(v).map_err(|e| malformed(HeaderName::MaxForwards, e)))
            .transpose()
    }

    /// Expires, when present (saturating at `u32::MAX`).
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.single(HeaderName::Expires)?
            .map(|v| parse_expires(v).map_err(|e| malformed(HeaderName::Expires, e)))
            .transpose()
    }

    /// Content-Length, when present.
    pub fn content_length(&self) -> Result<Option<usize>, HeaderError> {
        self.single(HeaderName::ContentLength)?
            .map(|v| parse_content_length(v).map_err(|e| malformed(HeaderName::ContentLength, e)))
            .transpose()
    }

    /// Content-Type, when present.
    pub fn content_type(&self) -> Result<Option<MediaType<'a>>, HeaderError> {
        self.single(HeaderName::ContentType)?
            .map(|v| MediaType::parse(v).map_err(|e| malformed(HeaderName::ContentType, e)))
            .transpose()
    }

    /// User-Agent, raw.
    pub fn user_agent(&self) -> Option<&'a str> {
        self.header(HeaderName::UserAgent).map(|h| h.value)
    }

    /// Contact: `*`, or every address across all Contact lines (empty list when absent).
    pub fn contacts(&self) -> Result<Contacts<'a>, HeaderError> {
        // One address per line is usual: room for that, not the default four.
        let mut list = Vec::with_capacity(self.count(HeaderName::Contact));
        let mut star = false;
        for h in self.headers_named(HeaderName::Contact) {
            if h.value == "*" {
                star = true;
                continue;
            }
            for c in ListItems::new(std::iter::once(h), NameAddr::parse_item) {
                list.push(c.map_err(|e| malformed(HeaderName::Contact, e))?);
            }
        }
        match (star, list.is_empty()) {
            (false, _) => Ok(Contacts::List(list)),
            (true, true) => Ok(Contacts::Wildcard),
            (true, false) => Err(malformed(
                HeaderName::Contact,
                SyntaxError("* mixed with addresses"),
            )),
        }
    }

    /// Route values, top first.
    pub fn routes<'s>(&'s self) -> impl Iterator<Item = Result<NameAddr<'a>, SyntaxError>> + 's {
        ListItems::new(self.headers_named(HeaderName::Route), NameAddr::parse_item)
    }

    /// Record-Route values, top first.
    pub fn record_routes<'s>(
        &'s self,
    ) -> impl Iterator<Item = Result<NameAddr<'a>, SyntaxError>> + 's {
        ListItems::new(
            self.headers_named(HeaderName::RecordRoute),
            NameAddr::parse_item,
        )
    }

    /// Authorization (`proxy = false`) or Proxy-Authorization credentials, one per line.
    pub fn credentials<'s>(
        &'s self,
        proxy: bool,
    ) -> impl Iterator<Item = Result<Credentials<'a>, SyntaxError>> + 's {
        let name = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        self.headers_named(name)
            .map(|h| Credentials::parse(h.value))
    }

    /// Digest credentials of Authorization (`proxy = false`) or Proxy-Authorization, one per
    /// line, read in a single pass; `Ok(None)` for a line with another scheme.
    pub fn digest_credentials<'s>(
        &'s self,
        proxy: bool,
    ) -> impl Iterator<Item = Result<Option<DigestCredentials<'a>>, SyntaxError>> + 's {
        let name = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        self.headers_named(name)
            .map(|h| DigestCredentials::parse(h.value))
    }

    /// WWW-Authenticate (`proxy = false`) or Proxy-Authenticate challenges, one per line.
    pub fn challenges<'s>(
        &'s self,
        proxy: bool,
    ) -> impl Iterator<Item = Result<Challenge<'a>, SyntaxError>> + 's {
        let name = if proxy {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        self.headers_named(name).map(|h| Challenge::parse(h.value))
    }

    /// Tokens of a list header (Require, Proxy-Require, Supported, Unsupported, Allow).
    pub fn tokens<'s>(
        &'s self,
        name: HeaderName<'s>,
    ) -> impl Iterator<Item = Result<&'a str, SyntaxError>> + 's {
        self.values(name)
            .filter(|v| !v.is_empty())
            .map(parse_token_item)
    }
}

/// The values of a list header read one after the other straight from each line (no
/// splitting pass first): a value, then `,` or the end of the line. An empty line, an empty
/// value (`a,,b`, `a,`) or a malformed value is an error, and ends that line.
struct ListItems<'a, I, T> {
    lines: I,
    cur: Option<Cursor<'a>>,
    need_item: bool,
    parse: fn(&mut Cursor<'a>) -> Result<T, SyntaxError>,
}

impl<'a, 'h, I, T> ListItems<'a, I, T>
where
    'a: 'h,
    I: Iterator<Item = &'h Header<'a>>,
{
    fn new(lines: I, parse: fn(&mut Cursor<'a>) -> Result<T, SyntaxError>) -> Self {
        ListItems {
            lines,
            cur: None,
            need_item: false,
            parse,
        }
    }
}

impl<'a, 'h, I, T> Iterator for ListItems<'a, I, T>
where
    'a: 'h,
    I: Iterator<Item = &'h Header<'a>>,
{
    type Item = Result<T, SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = &mut self.cur {
                c.skip_ws();
                if c.at_end() {
                    self.cur = None;
                    if std::mem::take(&mut self.need_item) {
                        return Some(Err(SyntaxError("empty value in list")));
                    }
                    continue;
                }
                let item = (self.parse)(c);
                match &item {
                    Ok(_) => self.need_item = c.eat(b','),
                    Err(_) => {
                        self.cur = None;
                        self.need_item = false;
                    }
                }
                return Some(item);
            }
            let h = self.lines.next()?;
            self.cur = Some(Cursor::new(h.value));
            self.need_item = true;
        }
    }
}

fn same_name(a: HeaderName<'_>, b: HeaderName<'_>) -> bool {
    match (a, b) {
        (HeaderName::Other(x), HeaderName::Other(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

impl fmt::Display for Message<'_> {
    /// Prints the message: start line, each header as `Name: value` with folded lines joined,
    /// and the body (lossy if not UTF-8; use [`Message::to_bytes`] for exact bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl Message<'_> {
    /// Serializes the message: start line as read, headers one per line with folding
    /// removed (`Name: value`), an empty line, and the body. The result parses back to a
    /// semantically equal message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 16);
        out.extend_from_slice(self.buf.get(..self.start_line_len).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
        for h in &self.headers {
            out.extend_from_slice(h.raw_name.as_bytes());
            out.extend_from_slice(b": ");
            push_unfolded(&mut out, h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        out
    }

    /// Length of the start line and headers, including the CRLF of the last header line.
    pub fn head_len(&self) -> usize {
        self.head_len
    }
}

/// Appends a header value with each fold (CRLF followed by white space) replaced by one SP
/// (except right after a backslash, where unfolding would change what the value means).
pub(crate) fn push_unfolded(out: &mut Vec<u8>, value: &str) {
    let b = value.as_bytes();
    let mut i = 0;
    while let Some(rel) = memchr::memchr(b'\r', b.get(i..).unwrap_or_default()) {
        out.extend_from_slice(b.get(i..i + rel).unwrap_or_default());
        let cr = i + rel;
        let mut j = cr + 2;
        while matches!(b.get(j), Some(b' ') | Some(b'\t')) {
            j += 1;
        }
        if cr > 0 && b.get(cr - 1) == Some(&b'\\') {
            // A backslash right before a fold: a quoted-pair cannot escape CR, so the value is
            // malformed as written. Keep the fold so printing does not make it well-formed.
            out.extend_from_slice(b.get(cr..j).unwrap_or_default());
        } else {
            out.push(b' ');
        }
        i = j;
    }
    out.extend_from_slice(b.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use crate::{parse, Limits};

    fn vias(v: &str) -> Vec<bool> {
        let raw = format!("OPTIONS sip:a SIP/2.0\r\nVia: {v}\r\nVia: SIP/2.0/UDP z\r\n\r\n");
        let m = parse(raw.as_bytes(), &Limits::default()).unwrap();
        m.vias().map(|v| v.is_ok()).collect()
    }

    #[test]
    fn list_values_one_after_the_other() {
        assert_eq!(
            vias("SIP/2.0/UDP a, SIP/2.0/UDP b;branch=\"x,y\""),
            [true, false, true]
        );
        assert_eq!(
            vias("SIP/2.0/UDP a ,\r\n SIP/2.0/UDP b"),
            [true, true, true]
        );
        assert_eq!(vias("SIP/2.0/UDP a,,SIP/2.0/UDP b"), [true, false, true]);
        assert_eq!(vias("SIP/2.0/UDP a,"), [true, false, true]);
        assert_eq!(vias(""), [false, true]);
        assert_eq!(vias("SIP/2.0/UDP a;;"), [false, true]);
    }

    #[test]
    fn contacts_across_lines_and_star() {
        let raw = b"REGISTER sip:a SIP/2.0\r\nContact: <sip:a@h>;q=0.5, \"B, b\" <sip:b@h>\r\nm: sip:c@h;expires=5\r\n\r\n";
        let m = parse(raw, &Limits::default()).unwrap();
        let Ok(crate::header::Contacts::List(l)) = m.contacts() else {
            panic!("contacts")
        };
        assert_eq!(l.len(), 3);
        assert_eq!(l[2].expires(), Some(5));
        let raw = b"REGISTER sip:a SIP/2.0\r\nContact: *\r\nContact: <sip:a@h>\r\n\r\n";
        assert!(parse(raw, &Limits::default()).unwrap().contacts().is_err());
    }
}
