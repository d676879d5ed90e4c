//! The digest computations themselves (RFC 2617 §3.2.2, RFC 7616 §3.4.1, RFC 8760): HA1,
//! HA2 and the request digest, for `MD5` and `SHA-256`, with `qop=auth` or without `qop`
//! (RFC 2069 compatibility). Pure functions with no state, usable by a test client too.

use md5::Md5;
use sha2::{Digest, Sha256};
use sipcraft_config::AuthAlgorithm;

/// The `qop=auth` parameters of a response: the client's nonce count, its cnonce and the
/// `qop` value exactly as the client sent them (they are hashed as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QopAuth<'a> {
    /// `nc`, eight hex digits as sent (e.g. `00000001`).
    pub nc: &'a str,
    /// `cnonce`, as sent.
    pub cnonce: &'a str,
    /// `qop`, as sent (`auth`).
    pub qop: &'a str,
}

/// A digest on the stack: 16 bytes for MD5, 32 for SHA-256 (no allocation per request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed {
    bytes: [u8; 32],
    len: usize,
}

impl Hashed {
    /// The digest bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The digest in lowercase hex, on the stack.
    pub(crate) fn hex(&self) -> Hex {
        let mut out = Hex {
            bytes: [0; 64],
            len: self.len * 2,
        };
        // The buffer is exactly twice the digest: encoding cannot fail.
        let _ = hex::encode_to_slice(self.as_slice(), &mut out.bytes[..self.len * 2]);
        out
    }
}

/// Lowercase hex of a digest, on the stack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hex {
    bytes: [u8; 64],
    len: usize,
}

impl Hex {
    /// The hex text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// `H(part1:part2:...)`, raw bytes (16 for MD5, 32 for SHA-256).
pub(crate) fn hash(algorithm: AuthAlgorithm, parts: &[&str]) -> Hashed {
    match algorithm {
        AuthAlgorithm::Md5 => hash_with::<Md5>(parts),
        AuthAlgorithm::Sha256 => hash_with::<Sha256>(parts),
    }
}

fn hash_with<D: Digest>(parts: &[&str]) -> Hashed {
    let mut hasher = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = Hashed {
        bytes: [0; 32],
        len: digest.len().min(32),
    };
    out.bytes[..out.len].copy_from_slice(&digest[..out.len]);
    out
}

/// Length in bytes of a digest of `algorithm`.
pub(crate) fn output_len(algorithm: AuthAlgorithm) -> usize {
    match algorithm {
        AuthAlgorithm::Md5 => 16,
        AuthAlgorithm::Sha256 => 32,
    }
}

/// HA1 = `H(username:realm:password)`, lowercase hex: what `ha1_md5` / `ha1_sha256` store.
pub fn ha1(algorithm: AuthAlgorithm, username: &str, realm: &str, password: &str) -> String {
    ha1_hex(algorithm, username, realm, password)
        .as_str()
        .to_owned()
}

/// [`ha1`] on the stack.
pub(crate) fn ha1_hex(
    algorithm: AuthAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> Hex {
    hash(algorithm, &[username, realm, password]).hex()
}

/// HA2 = `H(method:uri)` for `qop=auth` or no `qop`, lowercase hex. (`auth-int` would hash
/// the body too; it is not supported.)
pub fn ha2(algorithm: AuthAlgorithm, method: &str, uri: &str) -> String {
    hash(algorithm, &[method, uri]).hex().as_str().to_owned()
}

/// The request digest, raw bytes: `H(HA1:nonce:nc:cnonce:qop:HA2)` with `qop`, or
/// `H(HA1:nonce:HA2)` without (RFC 2069). `ha1` is lowercase hex.
pub(crate) fn response_bytes(
    algorithm: AuthAlgorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<QopAuth<'_>>,
) -> Hashed {
    let ha2 = hash(algorithm, &[method, uri]).hex();
    let ha2 = ha2.as_str();
    match qop {
        Some(q) => hash(algorithm, &[ha1, nonce, q.nc, q.cnonce, q.qop, ha2]),
        None => hash(algorithm, &[ha1, nonce, ha2]),
    }
}

/// The request digest, lowercase hex: what a client puts in `response=`. `ha1` is lowercase
/// hex (from [`ha1`] or a stored value).
pub fn response(
    algorithm: AuthAlgorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<QopAuth<'_>>,
) -> String {
    response_bytes(algorithm, ha1, method, uri, nonce, qop)
        .hex()
        .as_str()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_section_3_5_md5_qop_auth() {
        let ha1 = ha1(
            AuthAlgorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let got = response(
            AuthAlgorithm::Md5,
            &ha1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(QopAuth {
                nc: "00000001",
                cnonce: "0a4f113b",
                qop: "auth",
            }),
        );
        assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256_and_md5() {
        for (algorithm, expected) in [
            (
                AuthAlgorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (AuthAlgorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let ha1 = ha1(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
            );
            let got = response(
                algorithm,
                &ha1,
                "GET",
                "/dir/index.html",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                Some(QopAuth {
                    nc: "00000001",
                    cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
                    qop: "auth",
                }),
            );
            assert_eq!(got, expected, "{}", algorithm.as_str());
        }
    }

    #[test]
    fn rfc2069_without_qop() {
        // H(HA1:nonce:HA2), computed independently of this module's joining code.
        let ha1 = ha1(
            AuthAlgorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let ha2 = ha2(AuthAlgorithm::Md5, "GET", "/dir/index.html");
        let nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093";
        let joined = format!("{ha1}:{nonce}:{ha2}");
        let expected = hex::encode(Md5::digest(joined.as_bytes()));
        let got = response(
            AuthAlgorithm::Md5,
            &ha1,
            "GET",
            "/dir/index.html",
            nonce,
            None,
        );
        assert_eq!(got, expected);
        assert_eq!(got, "670fd8c2df070c60b045671b8b24ff02");
    }

    #[test]
    fn example_config_ha1_matches() {
        // examples/sipcraft.toml: Carol, 1003, password "carol-secret".
        assert_eq!(
            ha1(
                AuthAlgorithm::Md5,
                "1003",
                "pbx.example.test",
                "carol-secret"
            ),
            "651e3d6547ba54de2730bb0a2ede77ac"
        );
    }
}
