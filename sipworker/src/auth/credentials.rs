//! The digest parameters of an `Authorization` / `Proxy-Authorization` header, as the SIP
//! parser hands them over: plain strings, already unquoted, borrowed from the message.

use std::fmt;

/// The parameters of one `Digest` credentials header (RFC 3261 §22.4, RFC 7616 §3.4).
///
/// Values are the parameter values with quotes removed and quoted-pairs resolved; a
/// parameter that is absent is `None` (or `""` for the ones every response must carry,
/// which [`verify`](super::DigestAuth::verify) then reports as
/// [`Malformed::Missing`]). Build it field by field with `..Default::default()`, or from
/// the header's `(name, value)` pairs with [`Credentials::from_params`].
///
/// `Debug` prints every field: none of them is secret (they all cross the wire in clear).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// `username`: the digest user name; for sipcraft the extension number.
    pub username: &'a str,
    /// `realm`: must be the realm sipcraft challenged with (the SIP domain).
    pub realm: &'a str,
    /// `nonce`: the server nonce the client is answering.
    pub nonce: &'a str,
    /// `uri`: the digest-uri. Hashed as sent and deliberately not compared with the
    /// Request-URI: RFC 3261 §22.4 lets proxies rewrite the Request-URI, and test tools
    /// (SIPp `-auth_uri`) send their own.
    pub uri: &'a str,
    /// `response`: the request digest, hex.
    pub response: &'a str,
    /// `algorithm`: `MD5` when absent; `MD5` and `SHA-256` are supported.
    pub algorithm: Option<&'a str>,
    /// `cnonce`: required with `qop`.
    pub cnonce: Option<&'a str>,
    /// `qop`: `auth`, or absent for an RFC 2069 response.
    pub qop: Option<&'a str>,
    /// `nc`: the nonce count, hex; required with `qop`.
    pub nc: Option<&'a str>,
    /// `opaque`: sipcraft sends none and ignores it.
    pub opaque: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Builds credentials from the header's `(name, value)` pairs (names case-insensitive,
    /// values unquoted). Unknown parameters (`userhash`, extensions) are ignored. A
    /// parameter given twice is refused: two values for one name are ambiguous, and
    /// accepting either could let a proxy and sipcraft disagree about what was signed.
    pub fn from_params<I>(params: I) -> Result<Self, Malformed>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut c = Credentials::default();
        let mut seen = [false; PARAM_NAMES.len()];
        for (name, value) in params {
            let Some(index) = PARAM_NAMES
                .iter()
                .position(|known| known.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            if let Some(seen) = seen.get_mut(index) {
                if std::mem::replace(seen, true) {
                    return Err(Malformed::Duplicate(PARAM_NAMES[index]));
                }
            }
            match index {
                0 => c.username = value,
                1 => c.realm = value,
                2 => c.nonce = value,
                3 => c.uri = value,
                4 => c.response = value,
                5 => c.algorithm = Some(value),
                6 => c.cnonce = Some(value),
                7 => c.qop = Some(value),
                8 => c.nc = Some(value),
                _ => c.opaque = Some(value),
            }
        }
        Ok(c)
    }

    /// The `algorithm` parameter resolved: `MD5` when absent (RFC 2617 §3.2.2).
    pub(crate) fn algorithm_name(&self) -> &'a str {
        self.algorithm.unwrap_or("MD5")
    }
}

/// The parameters [`Credentials::from_params`] knows, in the order of its `match`.
const PARAM_NAMES: [&str; 10] = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "cnonce",
    "qop",
    "nc",
    "opaque",
];

/// Why credentials are structurally unusable (answered `400 Bad Request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A parameter every digest response carries is missing or empty.
    #[error("digest credentials lack {0}")]
    Missing(&'static str),
    /// A parameter appears twice.
    #[error("digest parameter {0} given twice")]
    Duplicate(&'static str),
    /// `qop` is neither `auth` nor `auth-int`.
    #[error("unknown qop (only qop=auth is supported)")]
    UnknownQop,
    /// `nc` is not 1 to 8 hex digits, or is zero.
    #[error("nc is not a nonce count (1 to 8 hex digits, not zero)")]
    BadNonceCount,
    /// `response` is not hex of the algorithm's digest length.
    #[error("response is not a hex digest of the algorithm's length")]
    BadResponse,
}

/// Digest features sipcraft refuses on purpose (answered `400`, with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// `MD5-sess` / `SHA-256-sess`: session variants hash the client's cnonce into HA1, so a
    /// stored HA1 no longer suffices and they add nothing for SIP; RFC 8760 phones do not
    /// need them. sipcraft never offers them.
    #[error("the -sess digest algorithms are not supported (use MD5 or SHA-256)")]
    SessAlgorithm,
    /// `qop=auth-int`: would need the message body at this layer; sipcraft offers only
    /// `qop="auth"`.
    #[error("qop=auth-int is not supported (use qop=auth)")]
    AuthInt,
}

/// Up to this many characters of an unknown algorithm name are kept for the log.
pub(crate) const MAX_ALGORITHM_NAME: usize = 32;

/// An algorithm name from the network, shortened for logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AlgorithmName(pub(crate) String);

impl AlgorithmName {
    pub(crate) fn new(name: &str) -> Self {
        AlgorithmName(
            name.chars()
                .take(MAX_ALGORITHM_NAME)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect(),
        )
    }

    /// The (shortened, printable) name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AlgorithmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for AlgorithmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_params_fills_fields_case_insensitively() {
        let c = Credentials::from_params([
            ("Username", "1001"),
            ("realm", "pbx.example.test"),
            ("NONCE", "abc"),
            ("uri", "sip:pbx.example.test"),
            ("response", "00"),
            ("algorithm", "SHA-256"),
            ("qop", "auth"),
            ("nc", "00000001"),
            ("cnonce", "xyz"),
            ("userhash", "false"),
        ])
        .unwrap();
        assert_eq!(c.username, "1001");
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.algorithm, Some("SHA-256"));
        assert_eq!(c.opaque, None);
        assert_eq!(c.nc, Some("00000001"));
    }

    #[test]
    fn from_params_refuses_duplicates() {
        assert_eq!(
            Credentials::from_params([("nonce", "a"), ("Nonce", "b")]),
            Err(Malformed::Duplicate("nonce"))
        );
    }

    #[test]
    fn algorithm_defaults_to_md5() {
        assert_eq!(Credentials::default().algorithm_name(), "MD5");
    }

    #[test]
    fn algorithm_name_is_bounded_and_printable() {
        let long = "X\n".repeat(100);
        let name = AlgorithmName::new(&long);
        assert_eq!(name.as_str().len(), MAX_ALGORITHM_NAME);
        assert!(!name.as_str().contains('\n'));
    }
}
