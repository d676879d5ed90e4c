//! `name-addr / addr-spec` with header parameters: the value shape of From, To, Contact,
//! Route and Record-Route (RFC 3261 §20.10, §20.20, §20.39, §20.30, §20.34).

use std::borrow::Cow;
use std::fmt;

use crate::error::{bad, SResult};
use crate::lex::{is_ws, unescape_quoted, unfold, Cursor};
use crate::params::Params;
use crate::uri::Uri;

/// A display name: a quoted string (escapes kept in `raw`) or a run of tokens. Equality is
/// on the [`DisplayName::text`], so a folded name equals its unfolded print.
#[derive(Debug, Clone, Copy, Eq)]
pub struct DisplayName<'a> {
    /// The text as written, without the surrounding quotes.
    pub raw: &'a str,
    /// Whether it was written as a quoted string.
    pub quoted: bool,
}

impl PartialEq for DisplayName<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.quoted == other.quoted && (self.raw == other.raw || self.text() == other.text())
    }
}

impl<'a> DisplayName<'a> {
    /// The name with quoted-pair escapes removed and line folds turned into one SP.
    pub fn text(&self) -> Cow<'a, str> {
        if self.quoted {
            unescape_quoted(self.raw)
        } else {
            unfold(self.raw)
        }
    }
}

impl fmt::Display for DisplayName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted {
            write!(f, "\"{}\"", self.raw)
        } else {
            f.write_str(self.raw)
        }
    }
}

/// One `name-addr` or `addr-spec` and its header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name, when given.
    pub display_name: Option<DisplayName<'a>>,
    /// The URI.
    pub uri: Uri<'a>,
    /// Whether the URI was enclosed in `<>`.
    pub bracketed: bool,
    /// Header parameters (after the URI).
    pub params: Params<'a>,
    /// `tag` and `expires`, remembered from the parsing pass.
    tag: Option<&'a str>,
    expires: Option<&'a str>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (one item of a comma list, or a whole From/To value).
    pub fn parse(s: &'a str) -> SResult<NameAddr<'a>> {
        let mut c = Cursor::new(s);
        let n = NameAddr::parse_item(&mut c)?;
        if !c.at_end() {
            return bad("unexpected text after address");
        }
        Ok(n)
    }

    /// Reads one value of a list at the cursor, up to (not including) the `,` that separates
    /// it from the next, or the end; trailing white space is skipped.
    pub(crate) fn parse_item(c: &mut Cursor<'a>) -> SResult<NameAddr<'a>> {
        c.skip_ws();
        let mut display_name = None;
        let bracketed;
        let uri_text;
        if c.peek() == Some(b'"') {
            let Some(raw) = c.quoted() else {
                return bad("unterminated quoted display name");
            };
            display_name = Some(DisplayName { raw, quoted: true });
            c.skip_ws();
            if !c.eat(b'<') {
                return bad("quoted display name without <URI>");
            }
            uri_text = angle_uri(c)?;
            bracketed = true;
        } else if c.eat(b'<') {
            uri_text = angle_uri(c)?;
            bracketed = true;
        } else {
            // Either tokens then <URI>, or a bare addr-spec (whose scheme ends at ':').
            let start = c.pos();
            let first = c.token();
            if first.is_some() && c.peek() == Some(b':') {
                c.set_pos(start);
                let t = c.take_while(|b| !is_ws(b) && b != b';' && b != b',');
                if t.contains('?') {
                    return bad("URI with headers must be enclosed in <>");
                }
                uri_text = t;
                bracketed = false;
            } else {
                if first.is_none() {
                    return bad("expected display name or URI");
                }
                let mut end = c.pos();
                loop {
                    c.skip_ws();
                    if c.eat(b'<') {
                        break;
                    }
                    if c.token().is_none() {
                        return bad("invalid character in display name");
                    }
                    end = c.pos();
                }
                display_name = Some(DisplayName {
                    raw: c.slice(start, end),
                    quoted: false,
                });
                uri_text = angle_uri(c)?;
                bracketed = true;
            }
        }
        let uri = Uri::parse(uri_text)?;
        let (mut tag, mut expires) = (None, None);
        let params = Params::parse_with(c, |p| {
            if p.name.len() == 3 && p.name.eq_ignore_ascii_case("tag") {
                tag = tag.or(p.value);
            } else if p.name.len() == 7 && p.name.eq_ignore_ascii_case("expires") {
                expires = expires.or(p.value);
            }
            Ok(())
        })?;
        c.skip_ws();
        if !c.at_end() && c.peek() != Some(b',') {
            return bad("unexpected text after address");
        }
        Ok(NameAddr {
            display_name,
            uri,
            bracketed,
            params,
            tag,
            expires,
        })
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }

    /// The `q` parameter (Contact) in thousandths: `q=0.33` gives 330. `None` when absent
    /// or malformed.
    pub fn q(&self) -> Option<u16> {
        parse_qvalue(self.params.value("q")??)
    }

    /// The `expires` parameter (Contact), saturating at `u32::MAX` for longer numbers (a
    /// registrar clamps to its own maximum anyway). `None` when absent or not a number.
    pub fn expires(&self) -> Option<u32> {
        parse_delta_seconds(self.expires?)
    }

    /// The `+sip.instance` parameter (RFC 5626), without its quotes and `<>`.
    pub fn instance(&self) -> Option<&'a str> {
        let v = self.params.value("+sip.instance")??;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        Some(
            v.strip_prefix('<')
                .and_then(|v| v.strip_suffix('>'))
                .unwrap_or(v),
        )
    }

    /// The `reg-id` parameter (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        self.params.value("reg-id")??.parse().ok()
    }
}

/// Reads `addr-spec ">"` after a `<`. White space inside is refused by the URI parsers
/// (no URI character class admits it), so it needs no separate check here.
fn angle_uri<'a>(c: &mut Cursor<'a>) -> SResult<&'a str> {
    let rest = c.rest();
    let Some(end) = memchr::memchr(b'>', rest.as_bytes()) else {
        return bad("missing > after URI");
    };
    c.set_pos(c.pos() + end + 1);
    Ok(rest.get(..end).unwrap_or(""))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
pub(crate) fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        let weight = [100u16, 10, 1].get(i).copied().unwrap_or(0);
        thousandths += u16::from(b - b'0') * weight;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `delta-seconds = 1*DIGIT`, saturating at `u32::MAX`.
pub(crate) fn parse_delta_seconds(v: &str) -> Option<u32> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(crate::lex::parse_u32(v).unwrap_or(u32::MAX))
}

impl fmt::Display for NameAddr<'_> {
    /// Canonical form: `"Name" <uri>;params` (the URI always in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display_name {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NameAddr<'_> {
        NameAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn forms() {
        let n = p(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        );
        assert_eq!(
            n.display_name.map(|d| d.text().into_owned()).as_deref(),
            Some("J Rosenberg \\\"")
        );
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = p("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n");
        assert!(!n.bracketed);
        assert_eq!(n.tag(), Some("1918181833n"));
        let n = p("caller<sip:caller@example.com>;tag=323");
        assert_eq!(n.display_name.map(|d| d.raw), Some("caller"));
        let n = p("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=x");
        assert_eq!(
            n.display_name.map(|d| d.raw),
            Some("token1~` token2'+_ token3*%!.-")
        );
        let n = p("sip:+19725552222@gw1.example.net;unknownparam");
        assert!(n.params.contains("unknownparam"));
        assert!(n.uri.as_sip().is_some_and(|u| u.params.is_empty()));
        let n = p("<sip:+19725552222@gw1.example.net;unknownparam>");
        assert!(n.params.is_empty());
    }

    #[test]
    fn contact_params() {
        let n = p("<sip:a@b>;q=0.33;expires=280297596632815;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1");
        assert_eq!(n.q(), Some(330));
        assert_eq!(n.expires(), Some(u32::MAX));
        assert_eq!(
            n.instance(),
            Some("urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF")
        );
        assert_eq!(n.reg_id(), Some(1));
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("0.0001"), None);
        assert_eq!(parse_qvalue("0.5"), Some(500));
    }

    #[test]
    fn rejects() {
        for s in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "< sip:t.watson@example.org >",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "<sip:a@b",
            "<sip:a@b> junk",
            "\"Joe\" <sip:joe@example.org>;;;;",
            "",
        ] {
            assert!(NameAddr::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn print_round_trip() {
        for (s, want) in [
            ("sip:a@b.com;tag=1", "<sip:a@b.com>;tag=1"),
            (
                "\"A \\\"B\\\"\" <sip:a@b.com;lr>",
                "\"A \\\"B\\\"\" <sip:a@b.com;lr>",
            ),
            (
                "A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
                "A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
            ),
        ] {
            let printed = p(s).to_string();
            assert_eq!(printed, want);
            assert_eq!(
                p(&printed),
                NameAddr {
                    bracketed: true,
                    ..p(s)
                }
            );
        }
    }
}
