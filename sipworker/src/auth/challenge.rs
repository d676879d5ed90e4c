//! `WWW-Authenticate` / `Proxy-Authenticate` values: one `Digest` challenge per algorithm.

use std::fmt::Write;

use sipcraft_config::AuthAlgorithm;

/// One challenge header value per algorithm, in the order given, all with the same nonce:
///
/// ```text
/// Digest realm="pbx.example.test", nonce="…", qop="auth", algorithm=MD5[, stale=true]
/// ```
///
/// Every value carries an explicit `algorithm=` (RFC 8760 §2.4 recommends it; and Debian's
/// SIPp 3.6 takes the first `algorithm=` it finds across all challenge headers and knows only
/// MD5, so the order chosen by the configuration matters and is kept). A duplicated
/// algorithm is listed once. No `opaque` is sent: the nonce carries all the state.
pub fn challenge_headers(
    realm: &str,
    nonce: &str,
    algorithms: &[AuthAlgorithm],
    stale: bool,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(algorithms.len());
    for (i, algorithm) in algorithms.iter().enumerate() {
        if algorithms[..i].contains(algorithm) {
            continue;
        }
        let mut value = String::with_capacity(128 + realm.len() + nonce.len());
        value.push_str("Digest realm=");
        push_quoted(&mut value, realm);
        value.push_str(", nonce=");
        push_quoted(&mut value, nonce);
        let _ = write!(value, ", qop=\"auth\", algorithm={}", algorithm.as_str());
        if stale {
            value.push_str(", stale=true");
        }
        out.push(value);
    }
    out
}

/// Appends `s` as an RFC 3261 quoted-string (`"` and `\` escaped; control characters,
/// which a quoted-string cannot carry, dropped).
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_algorithm_in_order() {
        let got = challenge_headers(
            "pbx.example.test",
            "abc",
            &[AuthAlgorithm::Md5, AuthAlgorithm::Sha256],
            false,
        );
        assert_eq!(
            got,
            [
                r#"Digest realm="pbx.example.test", nonce="abc", qop="auth", algorithm=MD5"#,
                r#"Digest realm="pbx.example.test", nonce="abc", qop="auth", algorithm=SHA-256"#,
            ]
        );
    }

    #[test]
    fn stale_sha256_first_and_deduplicated() {
        let got = challenge_headers(
            "r",
            "n",
            &[
                AuthAlgorithm::Sha256,
                AuthAlgorithm::Md5,
                AuthAlgorithm::Sha256,
            ],
            true,
        );
        assert_eq!(got.len(), 2);
        assert!(
            got[0].ends_with("algorithm=SHA-256, stale=true"),
            "{}",
            got[0]
        );
        assert!(got[1].ends_with("algorithm=MD5, stale=true"), "{}", got[1]);
    }

    #[test]
    fn realm_is_quoted_safely() {
        let got = challenge_headers("a\"b\\c\r\nd", "n", &[AuthAlgorithm::Md5], false);
        assert!(
            got[0].starts_with(r#"Digest realm="a\"b\\cd", "#),
            "{}",
            got[0]
        );
    }
}
