//! `sip:` and `sips:` URIs (RFC 3261 §19.1, §25.1).

use std::borrow::Cow;
use std::fmt;

use super::{check_escaped, percent_decode};
use crate::error::{bad, SResult};
use crate::host::Host;
use crate::lex::class;

/// A SIP or SIPS URI. Text parts are kept as written (escapes included); use the `*_decoded`
/// accessors or [`SipUri::equivalent`] to work on their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// User part (escapes kept).
    pub user: Option<&'a str>,
    /// Password (escapes kept); deprecated but legal.
    pub password: Option<&'a str>,
    /// Host.
    pub host: Host<'a>,
    /// Port, when written.
    pub port: Option<u16>,
    /// `;name[=value]` URI parameters.
    pub params: UriParams<'a>,
    /// Raw header part after `?` (`a=b&c=d`), when present.
    pub headers: Option<&'a str>,
}

static USER: [bool; 256] = class(true, b"-_.!~*'()&=+$,;?/");
static PASSWORD: [bool; 256] = class(true, b"-_.!~*'()&=+$,");
static PARAM: [bool; 256] = class(true, b"-_.!~*'()[]/:&+$");
static HEADER: [bool; 256] = class(true, b"-_.!~*'()[]/?:+$");

/// `unreserved / user-unreserved` (escapes are checked separately).
fn is_user_char(b: u8) -> bool {
    USER[b as usize]
}

fn is_password_char(b: u8) -> bool {
    PASSWORD[b as usize]
}

/// `paramchar = param-unreserved / unreserved / escaped`
fn is_param_char(b: u8) -> bool {
    PARAM[b as usize]
}

/// The end of the run of bytes from `from` that satisfy `ok` or are a valid `escaped`
/// (`%` and two hex digits).
fn escaped_run(b: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while let Some(&c) = b.get(i) {
        if ok(c) {
            i += 1;
        } else if c == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            i += 3;
        } else {
            break;
        }
    }
    i
}

/// User, password and what follows the `@` (or all of it when there is no userinfo).
type UserInfo<'a> = (Option<&'a str>, Option<&'a str>, &'a str);

/// Reads the userinfo of `s` (after `sip:`) in one forward pass: user characters, an
/// optional `:` and password, then `@`. `None` when the pass cannot decide (an invalid
/// character or escape, an empty user), for [`userinfo_checked`] to give the verdict; when it
/// reaches the end without `@` there is no userinfo, since neither class admits `@`.
#[inline]
fn userinfo_scan(s: &str) -> Option<UserInfo<'_>> {
    let b = s.as_bytes();
    let user_end = escaped_run(b, 0, is_user_char);
    match b.get(user_end) {
        None => Some((None, None, s)),
        Some(b'@') if user_end > 0 => Some((s.get(..user_end), None, s.get(user_end + 1..)?)),
        Some(b':') if user_end > 0 => {
            let pass_end = escaped_run(b, user_end + 1, is_password_char);
            match b.get(pass_end) {
                None => Some((None, None, s)),
                Some(b'@') => Some((
                    s.get(..user_end),
                    s.get(user_end + 1..pass_end),
                    s.get(pass_end + 1..)?,
                )),
                Some(_) => None,
            }
        }
        Some(_) => None,
    }
}

/// Splits off and checks the userinfo of `s` (after `sip:`): everything before the first
/// `@`, user and password split at the first `:`.
fn userinfo_checked(s: &str) -> SResult<UserInfo<'_>> {
    let (userinfo, rest) = match memchr::memchr(b'@', s.as_bytes()) {
        Some(at) => (s.get(..at), s.get(at + 1..).unwrap_or("")),
        None => (None, s),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match memchr::memchr(b':', ui.as_bytes()) {
                Some(i) => (ui.get(..i).unwrap_or(""), ui.get(i + 1..)),
                None => (ui, None),
            };
            if u.is_empty() || !check_escaped(u, is_user_char) {
                return bad("invalid user part in SIP URI");
            }
            if let Some(p) = p {
                if !check_escaped(p, is_password_char) {
                    return bad("invalid password in SIP URI");
                }
            }
            (Some(u), p)
        }
    };
    Ok((user, password, rest))
}

/// `hnv-unreserved / unreserved / escaped`
fn is_header_char(b: u8) -> bool {
    HEADER[b as usize]
}

impl<'a> SipUri<'a> {
    /// Parses what follows `sip:` / `sips:`.
    pub(crate) fn parse_parts(secure: bool, s: &'a str) -> SResult<SipUri<'a>> {
        let (user, password, rest) = match userinfo_scan(s) {
            Some(found) => found,
            None => userinfo_checked(s)?,
        };
        // hostport: an IPv6 reference runs to its ']'.
        let host_end = if rest.starts_with('[') {
            match memchr::memchr(b']', rest.as_bytes()) {
                Some(i) => i + 1,
                None => return bad("unterminated IPv6 reference"),
            }
        } else {
            rest.bytes()
                .position(|b| matches!(b, b':' | b';' | b'?'))
                .unwrap_or(rest.len())
        };
        let host = Host::parse(rest.get(..host_end).unwrap_or(""))?;
        let mut tail = rest.get(host_end..).unwrap_or("");
        let mut port = None;
        if let Some(p) = tail.strip_prefix(':') {
            let end = p
                .bytes()
                .position(|b| b == b';' || b == b'?')
                .unwrap_or(p.len());
            let digits = p.get(..end).unwrap_or("");
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return bad("invalid port in SIP URI");
            }
            let value = digits
                .bytes()
                .fold(0u32, |v, b| v * 10 + u32::from(b - b'0'));
            port = match u16::try_from(value) {
                Ok(v) => Some(v),
                Err(_) => return bad("port out of range"),
            };
            tail = p.get(end..).unwrap_or("");
        }
        let (params_raw, headers) = match tail.is_empty() {
            true => (tail, None),
            false => match memchr::memchr(b'?', tail.as_bytes()) {
                Some(i) => (tail.get(..i).unwrap_or(""), tail.get(i + 1..)),
                None => (tail, None),
            },
        };
        let params = UriParams::parse(params_raw)?;
        if let Some(h) = headers {
            let ok = !h.is_empty()
                && h.split('&').all(|hv| match hv.split_once('=') {
                    Some((n, v)) => {
                        !n.is_empty()
                            && check_escaped(n, is_header_char)
                            && check_escaped(v, is_header_char)
                    }
                    None => false,
                });
            if !ok {
                return bad("invalid header part in SIP URI");
            }
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Parses a whole `sip:`/`sips:` URI.
    pub fn parse(s: &'a str) -> SResult<SipUri<'a>> {
        match super::Uri::parse(s)? {
            super::Uri::Sip(u) => Ok(u),
            _ => bad("not a SIP URI"),
        }
    }

    /// The user part with escapes decoded.
    pub fn user_decoded(&self) -> Option<Cow<'a, str>> {
        self.user.map(percent_decode)
    }

    /// The `transport` parameter.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.value("transport").flatten()
    }

    /// Whether `lr` (loose routing, RFC 3261 §19.1.1) is present.
    pub fn lr(&self) -> bool {
        self.params.contains("lr")
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.value("maddr").flatten()
    }

    /// The `user` parameter (`phone`, `ip`, ...).
    pub fn user_param(&self) -> Option<&'a str> {
        self.params.value("user").flatten()
    }

    /// Whether `ob` (RFC 5626 outbound) is present.
    pub fn ob(&self) -> bool {
        self.params.contains("ob")
    }

    /// The `ttl` parameter, when it is a number in 0..=255.
    pub fn ttl(&self) -> Option<u8> {
        self.params
            .value("ttl")
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    /// The port to use: the written one, or 5060 (5061 for `sips:`).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.secure { 5061 } else { 5060 })
    }
}

impl fmt::Display for SipUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = self.user {
            f.write_str(u)?;
            if let Some(p) = self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(self.params.as_str())?;
        if let Some(h) = self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// URI parameters (`;transport=tcp;lr`), kept as their raw text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UriParams<'a> {
    raw: &'a str,
}

impl<'a> UriParams<'a> {
    /// Validates `*( ";" pname [ "=" pvalue ] )` in one pass over the bytes.
    pub(crate) fn parse(raw: &'a str) -> SResult<UriParams<'a>> {
        let b = raw.as_bytes();
        if b.is_empty() {
            return Ok(UriParams { raw });
        }
        if b.first() != Some(&b';') {
            return bad("invalid URI parameters");
        }
        let mut i = 1;
        loop {
            let name_end = escaped_run(b, i, is_param_char);
            if name_end == i {
                return bad("invalid URI parameter name");
            }
            i = name_end;
            match b.get(i) {
                None => break,
                Some(b';') => {}
                Some(b'=') => {
                    let value_end = escaped_run(b, i + 1, is_param_char);
                    if value_end == i + 1 {
                        return bad("invalid URI parameter value");
                    }
                    i = value_end;
                    match b.get(i) {
                        None => break,
                        Some(b';') => {}
                        Some(_) => return bad("invalid URI parameter value"),
                    }
                }
                Some(_) => return bad("invalid URI parameter name"),
            }
            i += 1;
        }
        Ok(UriParams { raw })
    }

    /// The raw text, starting with `;`, or empty.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The parameters in order, as `(name, value)` (escapes kept).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.raw
            .split(';')
            .skip(1)
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            })
    }

    /// The value of a parameter (name compared case-insensitively, escapes decoded in the
    /// name): `Some(None)` when present without value.
    pub fn value(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| {
                n.eq_ignore_ascii_case(name) || percent_decode(n).eq_ignore_ascii_case(name)
            })
            .map(|(_, v)| v)
    }

    /// Whether the parameter is present.
    pub fn contains(&self, name: &str) -> bool {
        self.value(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn p(s: &str) -> SipUri<'_> {
        SipUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parts() {
        let u = p("sip:alice:secret@EXAMPLE.com:5070;transport=tcp;lr?subject=hi&x=%20");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, Host::Domain("EXAMPLE.com"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers, Some("subject=hi&x=%20"));
        let u = p("sips:[2001:db8::10]:5061;maddr=239.255.255.1;ttl=15;ob");
        assert!(u.secure);
        assert_eq!(
            u.host,
            Host::V6(
                "2001:db8::10"
                    .parse::<Ipv6Addr>()
                    .unwrap_or(Ipv6Addr::LOCALHOST)
            )
        );
        assert_eq!(u.maddr(), Some("239.255.255.1"));
        assert_eq!(u.ttl(), Some(15));
        assert!(u.ob());
        assert_eq!(u.port_or_default(), 5061);
    }

    #[test]
    fn torture_users() {
        let u = p("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.user_decoded().as_deref(), Some("user;par=u@example.net"));
        let u = p("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com");
        assert_eq!(
            u.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        let u = p("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
        assert!(u.lr());
        assert_eq!(u.user_decoded().as_deref(), Some("caller"));
    }

    #[test]
    fn rejects() {
        for s in [
            "sip:",
            "sip:@host",
            "sip:a b@host",
            "sip:host:99999",
            "sip:host:",
            "sip:host;",
            "sip:host;a=",
            "sip:host?",
            "sip:host?a",
            "sip:[::1",
            "sip:2001:db8::10",
            "sip:a%4@host",
        ] {
            assert!(SipUri::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn round_trip() {
        for s in [
            "sip:a@b.com",
            "sips:a:p@[2001:db8::1]:5061;transport=tls?h=v",
            "sip:+19725552222@gw1.example.net;unknownparam",
            "sip:%00%00@host5.example.com",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }
}
