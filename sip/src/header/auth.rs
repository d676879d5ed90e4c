//! Authorization / Proxy-Authorization credentials and WWW-Authenticate /
//! Proxy-Authenticate challenges (RFC 3261 §20.7, §20.27, §20.28, §20.44; RFC 7616 names).

use std::borrow::Cow;
use std::fmt;

use crate::error::{bad, SResult};
use crate::lex::{split_commas, Cursor};
use crate::params::unquote;

/// `auth-param *(COMMA auth-param)` after the scheme, validated and kept raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthParams<'a> {
    raw: &'a str,
}

impl<'a> AuthParams<'a> {
    fn parse(raw: &'a str) -> SResult<AuthParams<'a>> {
        for item in split_commas(raw) {
            auth_param(item)?;
        }
        Ok(AuthParams { raw })
    }

    /// The parameters in order: name and raw value (quotes kept).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        split_commas(self.raw).filter_map(|i| auth_param(i).ok())
    }

    /// A parameter's value with quotes and escapes removed (name case-insensitive).
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unquote(v))
    }

    /// The raw text.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

/// Reads one `auth-param` at the cursor: name, raw value, and the value ready for use when it
/// needed no unquoting work.
#[inline]
fn next_auth_param<'a>(c: &mut Cursor<'a>) -> SResult<(&'a str, &'a str, Option<&'a str>)> {
    let Some(name) = c.token() else {
        return bad("invalid auth parameter name");
    };
    if !c.eat_sep(b'=') {
        return bad("auth parameter without value");
    }
    let start = c.pos();
    let ready = if c.peek() == Some(b'"') {
        match c.quoted_plain() {
            None => return bad("unterminated quoted auth parameter"),
            Some((inner, plain)) => plain.then_some(inner),
        }
    } else {
        let t = c.take_while(is_auth_value_char);
        if t.is_empty() {
            return bad("empty auth parameter value");
        }
        Some(t)
    };
    Ok((name, c.slice(start, c.pos()), ready))
}

/// Reads `auth-param *( COMMA auth-param )` to the end of the cursor, handing each
/// parameter to `each` (see [`next_auth_param`]).
#[inline]
fn auth_params<'a>(
    c: &mut Cursor<'a>,
    mut each: impl FnMut(&'a str, &'a str, Option<&'a str>),
) -> SResult<()> {
    loop {
        let (name, value, ready) = next_auth_param(c)?;
        each(name, value, ready);
        c.skip_ws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return bad("expected , between auth parameters");
        }
        c.skip_ws();
    }
}

static AUTH_VALUE: [bool; 256] = crate::lex::class(true, b"-.!%*_+`'~/=");

/// A token character, or `/` and `=` of a token68-style value (base64).
#[inline]
fn is_auth_value_char(b: u8) -> bool {
    AUTH_VALUE[b as usize]
}

/// Whether `name` is `lower` in any case; `lower` must be lower-case letters only, which
/// makes setting bit 0x20 of each byte of `name` an exact case fold.
#[inline]
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    // No early exit: with `lower` known at each call the comparison unrolls branch-free.
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0, |diff, (a, b)| diff | ((a | 0x20) ^ b))
            == 0
}

/// `auth-param-name EQUAL ( token / quoted-string )`
fn auth_param(item: &str) -> SResult<(&str, &str)> {
    let mut c = Cursor::new(item);
    let Some(name) = c.token() else {
        return bad("invalid auth parameter name");
    };
    if !c.eat_sep(b'=') {
        return bad("auth parameter without value");
    }
    let start = c.pos();
    if c.peek() == Some(b'"') {
        if c.quoted().is_none() {
            return bad("unterminated quoted auth parameter");
        }
    } else if c.take_while(is_auth_value_char).is_empty() {
        // token68-style values (base64 with '/' and '=') are accepted for other schemes.
        return bad("empty auth parameter value");
    }
    let value = c.slice(start, c.pos());
    c.skip_ws();
    if !c.at_end() {
        return bad("unexpected text in auth parameter");
    }
    Ok((name, value))
}

fn scheme_and_params(s: &str) -> SResult<(&str, AuthParams<'_>)> {
    let mut c = Cursor::new(s);
    c.skip_ws();
    let Some(scheme) = c.token() else {
        return bad("missing auth scheme");
    };
    let had_ws = c.skip_ws();
    let rest = c.rest();
    if !rest.is_empty() && !had_ws {
        return bad("missing white space after auth scheme");
    }
    let params = AuthParams::parse(crate::lex::trim_ws(rest))?;
    Ok((scheme, params))
}

/// Credentials of an Authorization or Proxy-Authorization header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// Scheme (`Digest`, or anything else).
    pub scheme: &'a str,
    /// Its parameters.
    pub params: AuthParams<'a>,
}

/// The Digest fields of [`Credentials`] (RFC 3261 §25.1 `digest-response`), quotes removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestCredentials<'a> {
    /// `username`
    pub username: Option<Cow<'a, str>>,
    /// `realm`
    pub realm: Option<Cow<'a, str>>,
    /// `nonce`
    pub nonce: Option<Cow<'a, str>>,
    /// `uri` (digest-uri)
    pub uri: Option<Cow<'a, str>>,
    /// `response`
    pub response: Option<Cow<'a, str>>,
    /// `algorithm`
    pub algorithm: Option<Cow<'a, str>>,
    /// `cnonce`
    pub cnonce: Option<Cow<'a, str>>,
    /// `opaque`
    pub opaque: Option<Cow<'a, str>>,
    /// `qop`
    pub qop: Option<Cow<'a, str>>,
    /// `nc` (nonce count, 8 hex digits)
    pub nc: Option<Cow<'a, str>>,
}

impl<'a> Credentials<'a> {
    /// Parses a credentials value.
    pub fn parse(s: &'a str) -> SResult<Credentials<'a>> {
        let (scheme, params) = scheme_and_params(s)?;
        Ok(Credentials { scheme, params })
    }

    /// Whether the scheme is Digest.
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// The Digest fields, when the scheme is Digest.
    pub fn digest(&self) -> Option<DigestCredentials<'a>> {
        if !self.is_digest() {
            return None;
        }
        let mut d = DigestCredentials::default();
        for (name, value) in self.params.iter() {
            d.set(name, value, None);
        }
        Some(d)
    }
}

impl<'a> DigestCredentials<'a> {
    /// Parses a credentials value in one pass: `Ok(None)` when the scheme is not Digest.
    /// Cheaper than [`Credentials::parse`] followed by [`Credentials::digest`].
    pub fn parse(s: &'a str) -> SResult<Option<DigestCredentials<'a>>> {
        let mut c = Cursor::new(s);
        c.skip_ws();
        let Some(scheme) = c.token() else {
            return bad("missing auth scheme");
        };
        if !c.skip_ws() {
            return bad("missing white space after auth scheme");
        }
        // One pass: each parameter, then `,` or the end. Another scheme's parameters are
        // checked the same way, and nothing is kept.
        let mut d = scheme
            .eq_ignore_ascii_case("Digest")
            .then(DigestCredentials::default);
        auth_params(&mut c, |name, value, ready| {
            if let Some(d) = &mut d {
                d.set(name, value, ready);
            }
        })?;
        Ok(d)
    }

    #[inline]
    fn set(&mut self, name: &str, value: &'a str, ready: Option<&'a str>) {
        let n = name.as_bytes();
        let slot = match (n.len(), n.first().map_or(0, |c| c | 0x20)) {
            (2, b'n') if is_name(n, b"nc") => &mut self.nc,
            (3, b'u') if is_name(n, b"uri") => &mut self.uri,
            (3, b'q') if is_name(n, b"qop") => &mut self.qop,
            (5, b'r') if is_name(n, b"realm") => &mut self.realm,
            (5, b'n') if is_name(n, b"nonce") => &mut self.nonce,
            (6, b'c') if is_name(n, b"cnonce") => &mut self.cnonce,
            (6, b'o') if is_name(n, b"opaque") => &mut self.opaque,
            (8, b'u') if is_name(n, b"username") => &mut self.username,
            (8, b'r') if is_name(n, b"response") => &mut self.response,
            (9, b'a') if is_name(n, b"algorithm") => &mut self.algorithm,
            _ => return,
        };
        // The first occurrence counts; a repeated parameter is ignored.
        if slot.is_none() {
            *slot = Some(match ready {
                Some(v) => Cow::Borrowed(v),
                None => unquote(value),
            });
        }
    }
}

/// A challenge of a WWW-Authenticate or Proxy-Authenticate header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// Scheme (`Digest`).
    pub scheme: &'a str,
    /// Its parameters.
    pub params: AuthParams<'a>,
}

/// The Digest fields of a [`Challenge`], quotes removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestChallenge<'a> {
    /// `realm`
    pub realm: Option<Cow<'a, str>>,
    /// `domain`
    pub domain: Option<Cow<'a, str>>,
    /// `nonce`
    pub nonce: Option<Cow<'a, str>>,
    /// `opaque`
    pub opaque: Option<Cow<'a, str>>,
    /// `stale=true`
    pub stale: bool,
    /// `algorithm`
    pub algorithm: Option<Cow<'a, str>>,
    /// `qop` options (comma-separated inside the quotes)
    pub qop: Option<Cow<'a, str>>,
}

impl<'a> Challenge<'a> {
    /// Parses a challenge value.
    pub fn parse(s: &'a str) -> SResult<Challenge<'a>> {
        let (scheme, params) = scheme_and_params(s)?;
        Ok(Challenge { scheme, params })
    }

    /// The Digest fields, when the scheme is Digest.
    pub fn digest(&self) -> Option<DigestChallenge<'a>> {
        if !self.scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut d = DigestChallenge::default();
        for (name, value) in self.params.iter() {
            let v = Some(unquote(value));
            if name.eq_ignore_ascii_case("stale") {
                d.stale = unquote(value).eq_ignore_ascii_case("true");
                continue;
            }
            let slot = if name.eq_ignore_ascii_case("realm") {
                &mut d.realm
            } else if name.eq_ignore_ascii_case("domain") {
                &mut d.domain
            } else if name.eq_ignore_ascii_case("nonce") {
                &mut d.nonce
            } else if name.eq_ignore_ascii_case("opaque") {
                &mut d.opaque
            } else if name.eq_ignore_ascii_case("algorithm") {
                &mut d.algorithm
            } else if name.eq_ignore_ascii_case("qop") {
                &mut d.qop
            } else {
                continue;
            };
            *slot = v;
        }
        Some(d)
    }
}

fn write_params(f: &mut fmt::Formatter<'_>, scheme: &str, p: &AuthParams<'_>) -> fmt::Result {
    f.write_str(scheme)?;
    for (i, (n, v)) in p.iter().enumerate() {
        write!(f, "{}{n}={v}", if i == 0 { " " } else { ", " })?;
    }
    Ok(())
}

impl fmt::Display for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_params(f, self.scheme, &self.params)
    }
}

impl fmt::Display for Challenge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_params(f, self.scheme, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "Digest username=\"alice\", realm=\"atlanta.com\",\r\n nonce=\"84a4cc6f3082121f32b42a2187831a9e\", uri=\"sip:atlanta.com\",\r\n response=\"7587245234b3434cc3412213e5f113a5\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001, opaque=\"5ccc\"";

    #[test]
    fn digest_credentials() {
        let c = Credentials::parse(AUTH).unwrap();
        let d = c.digest().unwrap();
        assert_eq!(d.username.as_deref(), Some("alice"));
        assert_eq!(d.realm.as_deref(), Some("atlanta.com"));
        assert_eq!(d.nonce.as_deref(), Some("84a4cc6f3082121f32b42a2187831a9e"));
        assert_eq!(d.uri.as_deref(), Some("sip:atlanta.com"));
        assert_eq!(
            d.response.as_deref(),
            Some("7587245234b3434cc3412213e5f113a5")
        );
        assert_eq!(d.algorithm.as_deref(), Some("MD5"));
        assert_eq!(d.cnonce.as_deref(), Some("0a4f113b"));
        assert_eq!(d.qop.as_deref(), Some("auth"));
        assert_eq!(d.nc.as_deref(), Some("00000001"));
        assert_eq!(d.opaque.as_deref(), Some("5ccc"));
        assert_eq!(DigestCredentials::parse(AUTH), Ok(Some(d.clone())));
        let printed = c.to_string();
        assert_eq!(Credentials::parse(&printed).unwrap().digest(), Some(d));
    }

    #[test]
    fn challenge_and_other_schemes() {
        let c = Challenge::parse(
            "Digest realm=\"a.com\", qop=\"auth,auth-int\", nonce=\"n\", stale=TRUE, algorithm=MD5",
        )
        .unwrap();
        let d = c.digest().unwrap();
        assert_eq!(d.qop.as_deref(), Some("auth,auth-int"));
        assert!(d.stale);
        let o = Credentials::parse("NoOneKnowsThisScheme opaque-data=here").unwrap();
        assert!(o.digest().is_none());
        assert_eq!(o.params.get("opaque-data").as_deref(), Some("here"));
        for s in [
            "",
            "Digest username",
            "Digest username=\"x",
            "Digest a=b c",
            "Digest,a=b",
        ] {
            assert!(Credentials::parse(s).is_err(), "{s}");
        }
    }
}
