//! Byte-level building blocks of the RFC 3261 grammar (§25.1): character classes, a cursor
//! that skips linear white space (folded lines included) and splitters for comma lists.
//!
//! Every function here works on `&str` slices of one header value and never panics: positions
//! only ever land on ASCII delimiters, and every access goes through `get`.

use std::borrow::Cow;

/// A 256-entry character class: alphanumerics (when `alnum`) plus the bytes of `extra`.
pub(crate) const fn class(alnum: bool, extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = alnum && b.is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
}

static TOKEN: [bool; 256] = class(true, b"-.!%*_+`'~");
static WORD: [bool; 256] = class(true, b"-.!%*_+`'~()<>:\\\"/[]?{}");
/// Bytes that may stand unescaped inside a quoted string (qdtext): everything but controls
/// (HTAB and the CR LF of folding aside), `"` and `\\`.
static QDTEXT: [bool; 256] = {
    let mut t = [true; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = false;
        i += 1;
    }
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[0x7f] = false;
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

/// `token` characters: alphanum and `-.!%*_+`'~`.
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// `word` characters (Call-ID): token plus `()<>:\"/[]?{}`.
#[inline]
pub(crate) fn is_word(b: u8) -> bool {
    WORD[b as usize]
}

/// White space inside a header value: SP, HTAB and the CR LF of a folded line.
#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether the whole string is a non-empty `token`.
pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// Trims SP, HTAB and folding CR LF from both ends.
pub(crate) fn trim_ws(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| !is_ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !is_ws(c)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or("")
}

/// A forward-only reader over one header value.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    #[inline]
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// What is left, not yet read.
    pub(crate) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back (or forward) to a position previously read with [`Cursor::pos`].
    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.s.len());
    }

    /// The text between two positions of this cursor.
    pub(crate) fn slice(&self, from: usize, to: usize) -> &'a str {
        self.s.get(from..to).unwrap_or("")
    }

    /// Skips linear white space; returns whether any was skipped.
    #[inline]
    pub(crate) fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Consumes `b` if it is next.
    #[inline]
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `SWS b SWS`: consumes a separator with optional white space around it.
    pub(crate) fn eat_sep(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.eat(b) {
            self.skip_ws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes the longest run of bytes matching `f`.
    #[inline]
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let rest = self.s.as_bytes().get(start..).unwrap_or_default();
        let n = rest.iter().position(|&b| !f(b)).unwrap_or(rest.len());
        self.pos = start + n;
        self.slice(start, self.pos)
    }

    /// A non-empty `token`.
    #[inline]
    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A `quoted-string` starting at the cursor (which must be on the opening quote). Returns
    /// the raw text between the quotes, escapes kept.
    pub(crate) fn quoted(&mut self) -> Option<&'a str> {
        self.quoted_plain().map(|(inner, _)| inner)
    }

    /// Like [`Cursor::quoted`], also telling whether the text is plain: no quoted-pair and no
    /// line fold, so that it needs no [`unescape_quoted`].
    pub(crate) fn quoted_plain(&mut self) -> Option<(&'a str, bool)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let bytes = self.s.as_bytes();
        let mut plain = true;
        loop {
            self.pos = skip_qdtext(bytes, self.pos);
            match bytes.get(self.pos).copied() {
                Some(b'"') => {
                    let inner = self.slice(start, self.pos);
                    self.pos += 1;
                    return Some((inner, plain));
                }
                // quoted-pair: any octet but CR and LF.
                Some(b'\\') => match bytes.get(self.pos + 1) {
                    Some(b'\r') | Some(b'\n') | None => return None,
                    Some(_) => {
                        plain = false;
                        self.pos += 2;
                    }
                },
                // A fold: CR LF then white space (the header indexer guarantees the LF).
                Some(b'\r') => {
                    plain = false;
                    self.pos += 1;
                }
                _ => return None,
            }
        }
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `x` that is below `n` (`n` at most 0x80). Bytes above the
/// lowest flagged one may be flagged wrongly; the lowest flagged byte is always right.
#[inline]
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// The high bit of each byte of `x` equal to `b`, exact at the lowest flagged byte.
#[inline]
fn bytes_equal(x: u64, b: u8) -> u64 {
    bytes_below(x ^ (ONES * u64::from(b)), 1)
}

/// The end of the run of `qdtext` bytes from `i`: eight bytes at a time while none of them
/// is `"`, `\`, a control or DEL (the common case), then one at a time.
#[inline]
fn skip_qdtext(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let x = u64::from_le_bytes(*chunk);
        let stops = bytes_equal(x, b'"')
            | bytes_equal(x, b'\\')
            | bytes_equal(x, 0x7f)
            | bytes_below(x, 0x20);
        if stops != 0 {
            // The first stop is exact; HTAB is qdtext, so finish byte by byte from there.
            i += (stops.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    let rest = bytes.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|&b| !QDTEXT[b as usize])
        .unwrap_or(rest.len())
}

/// Replaces each line fold (CRLF and the white space after it) with one SP, as RFC 3261
/// §7.3.1 allows a recipient to do; borrows when there is none.
pub fn unfold(s: &str) -> Cow<'_, str> {
    if memchr::memchr(b'\r', s.as_bytes()).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    crate::message::push_unfolded(&mut out, s);
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// Removes the backslashes of `quoted-pair`s and unfolds folded lines, borrowing when there
/// is nothing to change.
pub fn unescape_quoted(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'\\' || b == b'\r') {
        return Cow::Borrowed(s);
    }
    // Folds are undone first (they are white space of the raw text), escapes second: an
    // escaped SP right after a fold stays an SP of its own.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '\r' => {
                chars.next_if_eq(&'\n');
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Splits a list header value (`a, b, c`) at top-level commas: commas inside quoted strings
/// and inside `<...>` do not split. Items are trimmed; empty items are kept so a caller can
/// reject them.
pub(crate) fn split_commas(s: &str) -> SplitCommas<'_> {
    SplitCommas {
        s,
        pos: 0,
        done: false,
    }
}

/// Iterator returned by [`split_commas`].
#[derive(Debug, Clone)]
pub(crate) struct SplitCommas<'a> {
    s: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> Iterator for SplitCommas<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        let bytes = self.s.as_bytes();
        let start = self.pos;
        let mut i = start;
        loop {
            let rest = bytes.get(i..).unwrap_or_default();
            let Some(rel) = memchr::memchr3(b',', b'"', b'<', rest) else {
                break;
            };
            i += rel;
            match bytes.get(i) {
                Some(b',') => {
                    self.pos = i + 1;
                    return Some(trim_ws(self.s.get(start..i).unwrap_or("")));
                }
                Some(b'"') => {
                    // Skip the quoted string, escapes included.
                    i += 1;
                    loop {
                        let rest = bytes.get(i..).unwrap_or_default();
                        match memchr::memchr2(b'"', b'\\', rest) {
                            Some(r) if rest.get(r) == Some(&b'\\') => i += r + 2,
                            Some(r) => {
                                i += r + 1;
                                break;
                            }
                            None => {
                                i = bytes.len();
                                break;
                            }
                        }
                    }
                }
                _ => {
                    // '<': skip to the matching '>'.
                    let rest = bytes.get(i..).unwrap_or_default();
                    i += memchr::memchr(b'>', rest).map_or(rest.len(), |r| r + 1);
                }
            }
        }
        self.done = true;
        Some(trim_ws(self.s.get(start..).unwrap_or("")))
    }
}

/// Parses a decimal number of at most `u32` range; leading zeros are fine.
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: u32 = 0;
    for b in s.bytes() {
        v = v.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        let v: Vec<_> = split_commas(r#""a,b" <sip:x;p=1,2>;q=1 , sip:y, "c\",d""#).collect();
        assert_eq!(v, vec![r#""a,b" <sip:x;p=1,2>;q=1"#, "sip:y", r#""c\",d""#]);
        let v: Vec<_> = split_commas(";;,,").collect();
        assert_eq!(v, vec![";;", "", ""]);
    }

    #[test]
    fn quoted_strings() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" rest"#);
        assert_eq!(c.quoted(), Some(r#"J Rosenberg \\\""#));
        assert_eq!(c.rest(), " rest");
        assert_eq!(unescape_quoted(r#"J Rosenberg \\\""#), r#"J Rosenberg \""#);
        // Long enough for the eight-byte steps, with each kind of stop past the first step.
        let mut c = Cursor::new("\"0123456789abcdef\tghij\\\"klmnopqrstu\" x");
        assert_eq!(
            c.quoted_plain(),
            Some(("0123456789abcdef\tghij\\\"klmnopqrstu", false))
        );
        assert_eq!(c.rest(), " x");
        let mut c = Cursor::new("\"0123456789abcdefghijklmnopqrstu\u{e9}\u{e9}\u{e9}\u{e9}\"");
        assert_eq!(c.quoted_plain().map(|(_, plain)| plain), Some(true));
        assert!(c.at_end());
        for bad in [
            "\"0123456789abc\u{0}def\"",
            "\"0123456789abcdef\u{7f}\"",
            "\"0123456789abcdefgh",
        ] {
            assert_eq!(Cursor::new(bad).quoted(), None, "{bad:?}");
        }
        assert_eq!(Cursor::new("\"open").quoted(), None);
        assert_eq!(Cursor::new("\"bad\\").quoted(), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32("0068"), Some(68));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32(""), None);
    }
}
