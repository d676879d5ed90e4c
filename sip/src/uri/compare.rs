//! SIP URI comparison, RFC 3261 §19.1.4.

use super::sip::SipUri;
use super::unescape;

/// Escape-insensitive, case-sensitive byte comparison.
fn eq_unescaped(a: &str, b: &str) -> bool {
    a == b || unescape(a).eq(unescape(b))
}

/// Escape- and case-insensitive comparison.
fn eq_unescaped_ic(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
        || unescape(a)
            .map(|c| c.to_ascii_lowercase())
            .eq(unescape(b).map(|c| c.to_ascii_lowercase()))
}

/// Parameters that, present in one URI, must be present and equal in the other.
const SIGNIFICANT: [&str; 5] = ["transport", "user", "ttl", "method", "maddr"];

impl SipUri<'_> {
    /// Whether two SIP URIs are equivalent under RFC 3261 §19.1.4: same scheme; user and
    /// password byte-equal after unescaping; host case-insensitive (addresses by value); same
    /// port (an absent port does not equal an explicit 5060); `transport`, `user`, `ttl`,
    /// `method` and `maddr` equal whenever either URI has them; other parameters compared only
    /// when both have them; header components all present in both and equal.
    pub fn equivalent(&self, other: &SipUri<'_>) -> bool {
        if self.secure != other.secure || self.port != other.port || !self.host.eq_host(&other.host)
        {
            return false;
        }
        let opt_eq = |a: Option<&str>, b: Option<&str>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => eq_unescaped(a, b),
            _ => false,
        };
        if !opt_eq(self.user, other.user) || !opt_eq(self.password, other.password) {
            return false;
        }
        for name in SIGNIFICANT {
            match (self.params.value(name), other.params.value(name)) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if !eq_unescaped_ic(a.unwrap_or(""), b.unwrap_or("")) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        for (name, va) in self.params.iter() {
            if SIGNIFICANT.iter().any(|s| eq_unescaped_ic(s, name)) {
                continue;
            }
            if let Some((_, vb)) = other.params.iter().find(|(n, _)| eq_unescaped_ic(n, name)) {
                if !eq_unescaped_ic(va.unwrap_or(""), vb.unwrap_or("")) {
                    return false;
                }
            }
        }
        headers_equal(self.headers, other.headers)
    }
}

fn headers_equal(a: Option<&str>, b: Option<&str>) -> bool {
    let split = |h: Option<&str>| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = h
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (
                    String::from_utf8_lossy(&unescape(k).collect::<Vec<u8>>()).to_ascii_lowercase(),
                    unescape(v).collect(),
                )
            })
            .collect();
        v.sort();
        v
    };
    if a.is_none() && b.is_none() {
        return true;
    }
    split(a) == split(b)
}

#[cfg(test)]
mod tests {
    use super::super::Uri;

    fn eqv(a: &str, b: &str) -> bool {
        let (Ok(a), Ok(b)) = (Uri::parse(a), Uri::parse(b)) else {
            panic!("parse {a} / {b}");
        };
        a.equivalent(&b) && b.equivalent(&a)
    }

    #[test]
    fn rfc3261_equal_pairs() {
        // The equivalent pairs of RFC 3261 §19.1.4.
        assert!(eqv(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eqv(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eqv(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;security=on"
        ));
        assert!(eqv(
            "sip:carol@chicago.com;newparam=5",
            "sip:carol@chicago.com;security=on"
        ));
        assert!(eqv(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        assert!(eqv(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
        ));
    }

    #[test]
    fn rfc3261_unequal_pairs() {
        // The non-equivalent pairs of RFC 3261 §19.1.4.
        assert!(!eqv(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eqv("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eqv(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eqv(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com:6000;transport=tcp"
        ));
        assert!(!eqv(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com?Subject=next%20meeting"
        ));
        assert!(!eqv("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"));
        assert!(!eqv("sip:a@x.com", "sips:a@x.com"));
        assert!(!eqv("sip:a@x.com", "tel:+1234"));
    }
}
