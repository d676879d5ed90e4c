//! Header parameters: `*( SEMI generic-param )` with `generic-param = token [ EQUAL gen-value ]`
//! and `gen-value = token / host / quoted-string` (RFC 3261 §25.1).
//!
//! A parameter list is validated once and kept as its raw text; lookups re-scan that text,
//! which for the handful of parameters a header carries is cheaper than building a list.

use std::borrow::Cow;
use std::fmt;

use crate::error::{bad, SResult};
use crate::lex::{unescape_quoted, unfold, Cursor};

/// One parameter. Two parameters are equal when their names and values are, line folds
/// inside a quoted value counting as one SP.
#[derive(Debug, Clone, Copy, Eq)]
pub struct Param<'a> {
    /// Parameter name, as written.
    pub name: &'a str,
    /// Raw value: `None` for a bare name; a quoted value keeps its quotes.
    pub value: Option<&'a str>,
}

impl PartialEq for Param<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && match (self.value, other.value) {
                (Some(a), Some(b)) => a == b || unfold(a) == unfold(b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl<'a> Param<'a> {
    /// The value with surrounding quotes and quoted-pair escapes removed.
    pub fn unquoted(&self) -> Option<Cow<'a, str>> {
        self.value.map(unquote)
    }
}

/// Removes the quotes and escapes of a quoted-string; a token is returned as is.
pub fn unquote(v: &str) -> Cow<'_, str> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => unescape_quoted(inner),
        None => Cow::Borrowed(v),
    }
}

/// A validated parameter list (the raw text, starting at the first `;`, or empty). Two lists
/// are equal when they hold the same parameters in the same order, whatever the white space.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'a> {
    raw: &'a str,
}

impl PartialEq for Params<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw || self.iter().eq(other.iter())
    }
}

impl Eq for Params<'_> {}

static VALUE: [bool; 256] = crate::lex::class(true, b"-.!%*_+`'~:[]");

/// `gen-value` characters outside quotes: token plus what an IPv6 address needs.
#[inline]
fn is_value_char(b: u8) -> bool {
    VALUE[b as usize]
}

/// Reads one `name [= value]` at the cursor (just after the `;` and its white space).
fn param<'a>(c: &mut Cursor<'a>) -> SResult<Param<'a>> {
    let Some(name) = c.token() else {
        return bad("empty or invalid parameter name");
    };
    let value = if c.eat_sep(b'=') {
        if c.peek() == Some(b'"') {
            let start = c.pos();
            if c.quoted().is_none() {
                return bad("unterminated quoted parameter value");
            }
            Some(c.slice(start, c.pos()))
        } else {
            let v = c.take_while(is_value_char);
            if v.is_empty() {
                return bad("empty parameter value");
            }
            Some(v)
        }
    } else {
        None
    };
    Ok(Param { name, value })
}

impl<'a> Params<'a> {
    /// Reads `*( SEMI generic-param )` from the cursor. Stops (without error) at the first
    /// thing that is not `;`; the caller decides whether more may follow.
    pub(crate) fn parse(c: &mut Cursor<'a>) -> SResult<Params<'a>> {
        Params::parse_with(c, |_| Ok(()))
    }

    /// Like [`Params::parse`], handing each parameter to `each` as it is read, so a header
    /// can check and remember the parameters it cares about in the same pass.
    pub(crate) fn parse_with(
        c: &mut Cursor<'a>,
        mut each: impl FnMut(Param<'a>) -> SResult<()>,
    ) -> SResult<Params<'a>> {
        let save = c.pos();
        c.skip_ws();
        if c.peek() != Some(b';') {
            c.set_pos(save);
            return Ok(Params { raw: "" });
        }
        let start = c.pos();
        let mut end = start;
        loop {
            let mark = c.pos();
            if !c.eat_sep(b';') {
                c.set_pos(mark);
                break;
            }
            each(param(c)?)?;
            end = c.pos();
        }
        c.set_pos(end);
        Ok(Params {
            raw: c.slice(start, end),
        })
    }

    /// Parses a whole string as a parameter list (for tests and builders).
    pub fn from_str_checked(s: &'a str) -> SResult<Params<'a>> {
        let mut c = Cursor::new(s);
        let p = Params::parse(&mut c)?;
        c.skip_ws();
        if c.at_end() {
            Ok(p)
        } else {
            bad("trailing text after parameters")
        }
    }

    /// The raw text of the list (`;a=1;b`), or empty.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Iterates over the parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            c: Cursor::new(self.raw),
        }
    }

    /// The first parameter with this name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<Param<'a>> {
        self.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// Whether a parameter with this name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The raw value of a parameter: `Some(None)` when present without value.
    pub fn value(&self, name: &str) -> Option<Option<&'a str>> {
        self.get(name).map(|p| p.value)
    }
}

/// Iterator over a [`Params`] list.
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        if !self.c.eat_sep(b';') {
            return None;
        }
        param(&mut self.c).ok()
    }
}

impl fmt::Display for Params<'_> {
    /// Prints the list in canonical form: `;name=value` with no white space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.iter() {
            match p.value {
                Some(v) => write!(f, ";{}={}", p.name, v)?,
                None => write!(f, ";{}", p.name)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lookup_print() {
        let p = Params::from_str_checked(
            " ;\r\n  tag = 98asjd8 ; lr;received=2001:db8::9:255;x=\"a \\\"q\\\"\"",
        )
        .unwrap();
        assert_eq!(p.value("TAG"), Some(Some("98asjd8")));
        assert_eq!(p.value("lr"), Some(None));
        assert_eq!(p.value("received"), Some(Some("2001:db8::9:255")));
        assert_eq!(
            p.get("x").and_then(|x| x.unquoted()).as_deref(),
            Some("a \"q\"")
        );
        assert_eq!(p.value("nope"), None);
        assert_eq!(
            p.to_string(),
            ";tag=98asjd8;lr;received=2001:db8::9:255;x=\"a \\\"q\\\"\""
        );
        let again = p.to_string();
        let q = Params::from_str_checked(&again).unwrap();
        assert_eq!(q.iter().collect::<Vec<_>>(), p.iter().collect::<Vec<_>>());
    }

    #[test]
    fn rejects_empty_and_broken() {
        assert!(Params::from_str_checked(";;").is_err());
        assert!(Params::from_str_checked(";a=").is_err());
        assert!(Params::from_str_checked(";a=\"open").is_err());
        assert!(Params::from_str_checked(";a b").is_err());
        assert!(Params::from_str_checked("").unwrap().is_empty());
    }
}
