//! Stateless server nonces, bound to the time they were issued and to a server secret.
//!
//! A nonce is 32 bytes written as 64 lowercase hex digits:
//!
//! ```text
//! issued (u64 BE, Unix seconds) || unique (8 random bytes) || tag (16 bytes)
//! tag = HMAC-SHA256(key, "sipcraft-nonce-v1" || issued || unique || realm)[..16]
//! ```
//!
//! Nothing is stored when a nonce is issued, so any worker holding the same [`NonceKey`]
//! can check a nonce that another worker issued: the supervisor draws one key per instance
//! ([`NonceKey::random_bytes`]) and hands it to every worker ([`NonceKey::new`]). The time
//! is wall-clock time (not `Instant`) because it crosses processes. The unique part makes
//! every challenge's nonce different, so two phones challenged in the same second never
//! share a nonce (and so never trip each other's nonce-count replay check).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Domain separation for the nonce MAC, so the key can never be confused with another use.
const NONCE_LABEL: &[u8] = b"sipcraft-nonce-v1";
/// Domain separation for the unknown-user password derivation.
const UNKNOWN_USER_LABEL: &[u8] = b"sipcraft-unknown-user-v1";
/// Bytes in a decoded nonce.
const NONCE_BYTES: usize = 32;
/// Bytes of the tag, the nonce's identity in the replay cache.
pub(crate) const TAG_BYTES: usize = 16;
/// A nonce issued up to this far in the future (another host's or a stepped clock) still
/// counts as fresh.
const CLOCK_SKEW_S: u64 = 5;

/// The server secret nonces are bound to. `Debug` never prints it.
#[derive(Clone)]
pub struct NonceKey {
    mac: Hmac<Sha256>,
}

/// Why a [`NonceKey`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key material is shorter than [`NonceKey::MIN_LEN`] bytes.
    #[error("a nonce key needs at least {min} bytes, got {got}")]
    TooShort { min: usize, got: usize },
    /// The operating system's random source failed.
    #[error("could not read the operating system's random source: {0}")]
    Random(String),
}

impl NonceKey {
    /// Length of the keys [`NonceKey::random_bytes`] draws.
    pub const LEN: usize = 32;
    /// Shortest key material accepted.
    pub const MIN_LEN: usize = 16;

    /// A key from shared material, e.g. the 32 random bytes the supervisor handed to every
    /// worker of this instance. Workers with the same bytes accept each other's nonces.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(KeyError::TooShort {
                min: Self::MIN_LEN,
                got: bytes.len(),
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| KeyError::TooShort {
            min: Self::MIN_LEN,
            got: bytes.len(),
        })?;
        Ok(NonceKey { mac })
    }

    /// Fresh key material from the operating system, for the supervisor to share.
    pub fn random_bytes() -> Result<[u8; Self::LEN], KeyError> {
        let mut bytes = [0u8; Self::LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(bytes)
    }

    /// A fresh random key (only this process will accept its nonces).
    pub fn random() -> Result<Self, KeyError> {
        Self::new(&Self::random_bytes()?)
    }

    /// The tag of the first 16 bytes of a nonce for `realm`.
    fn tag(&self, head: &[u8], realm: &str) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(NONCE_LABEL);
        mac.update(head);
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        for (t, f) in tag.iter_mut().zip(full.iter()) {
            *t = *f;
        }
        tag
    }

    /// A password nobody can know, for an unknown user, so that verifying an unknown user
    /// does the same work as a known one and always fails.
    pub(crate) fn unknown_user_password(&self, username: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(UNKNOWN_USER_LABEL);
        mac.update(username.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Issues a nonce for `realm` at `now`. Never fails: if the random source fails, the
    /// unique part falls back to a process-wide counter mixed with the process id and the
    /// time (still unique, which is all that part needs: the tag authenticates).
    pub fn issue(&self, realm: &str, now: SystemTime) -> String {
        let mut head = [0u8; NONCE_BYTES - TAG_BYTES];
        let (issued, unique) = head.split_at_mut(8);
        issued.copy_from_slice(&unix_seconds(now).to_be_bytes());
        if getrandom::fill(unique).is_err() {
            unique.copy_from_slice(&fallback_unique(now).to_be_bytes());
        }
        let tag = self.tag(&head, realm);
        let mut nonce = [0u8; NONCE_BYTES];
        let (h, t) = nonce.split_at_mut(head.len());
        h.copy_from_slice(&head);
        t.copy_from_slice(&tag);
        hex::encode(nonce)
    }

    /// Checks a nonce for `realm` at `now` against the accepted `lifetime`.
    pub fn check(
        &self,
        nonce: &str,
        realm: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> NonceCheck {
        let mut bytes = [0u8; NONCE_BYTES];
        if nonce.len() != 2 * NONCE_BYTES || hex::decode_to_slice(nonce, &mut bytes).is_err() {
            return NonceCheck::Invalid;
        }
        let (head, tag) = bytes.split_at(NONCE_BYTES - TAG_BYTES);
        let expected = self.tag(head, realm);
        if !bool::from(expected.ct_eq(tag)) {
            return NonceCheck::Invalid;
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&head[..8]);
        let issued = u64::from_be_bytes(issued);
        let now = unix_seconds(now);
        let too_old = now.saturating_sub(issued) > lifetime.as_secs();
        let too_new = issued > now.saturating_add(CLOCK_SKEW_S);
        if too_old || too_new {
            NonceCheck::Expired
        } else {
            NonceCheck::Fresh {
                id: expected,
                issued,
            }
        }
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// What a nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued with this key for this realm, and within its lifetime.
    Fresh {
        /// The nonce's identity for the replay cache (its tag).
        id: [u8; TAG_BYTES],
        /// When it was issued, Unix seconds.
        issued: u64,
    },
    /// Issued with this key for this realm, but past its lifetime (or too far in the
    /// future): a client with the right password gets a new challenge with `stale=true`.
    Expired,
    /// Not a nonce this key issued for this realm: garbled, forged, from another realm or
    /// from a previous key (e.g. before the whole instance restarted).
    Invalid,
}

/// Seconds since the Unix epoch; 0 for a clock set before 1970 (never panics).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A unique 64-bit value without the random source: counter, process id and time mixed.
fn fallback_unique(now: SystemTime) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    (u64::from(std::process::id()) << 32) ^ (nanos << 8) ^ count
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "pbx.example.test";
    const LIFE: Duration = Duration::from_secs(300);

    fn key() -> NonceKey {
        NonceKey::new(&[7u8; 32]).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn fresh_then_expired() {
        let k = key();
        let n = k.issue(REALM, at(1_000_000));
        assert_eq!(n.len(), 64);
        assert!(matches!(
            k.check(&n, REALM, at(1_000_300), LIFE),
            NonceCheck::Fresh {
                issued: 1_000_000,
                ..
            }
        ));
        assert_eq!(k.check(&n, REALM, at(1_000_301), LIFE), NonceCheck::Expired);
        // Issued in the future beyond the allowed skew.
        assert_eq!(k.check(&n, REALM, at(999_990), LIFE), NonceCheck::Expired);
        assert!(matches!(
            k.check(&n, REALM, at(999_996), LIFE),
            NonceCheck::Fresh { .. }
        ));
    }

    #[test]
    fn another_key_or_realm_or_garbage_is_invalid() {
        let n = key().issue(REALM, at(1_000));
        let other = NonceKey::new(&[8u8; 32]).unwrap();
        assert_eq!(other.check(&n, REALM, at(1_000), LIFE), NonceCheck::Invalid);
        assert_eq!(
            key().check(&n, "other.test", at(1_000), LIFE),
            NonceCheck::Invalid
        );
        for garbage in ["", "zz", &n[..63], &format!("{n}0"), &"g".repeat(64)] {
            assert_eq!(
                key().check(garbage, REALM, at(1_000), LIFE),
                NonceCheck::Invalid
            );
        }
        // Moving the timestamp forward (to extend the nonce's life) breaks the tag.
        let mut forged = n.into_bytes();
        forged[15] = if forged[15] == b'f' { b'e' } else { b'f' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            key().check(&forged, REALM, at(1_000), LIFE),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn every_nonce_is_unique_and_shared_keys_agree() {
        let bytes = NonceKey::random_bytes().unwrap();
        let a = NonceKey::new(&bytes).unwrap();
        let b = NonceKey::new(&bytes).unwrap();
        let n1 = a.issue(REALM, at(5_000));
        let n2 = a.issue(REALM, at(5_000));
        assert_ne!(n1, n2);
        assert!(matches!(
            b.check(&n1, REALM, at(5_001), LIFE),
            NonceCheck::Fresh { .. }
        ));
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(matches!(
            NonceKey::new(&[1u8; 15]),
            Err(KeyError::TooShort { .. })
        ));
        assert_eq!(format!("{:?}", key()), "NonceKey(<redacted>)");
        assert!(NonceKey::random().is_ok());
    }

    #[test]
    fn fallback_unique_differs_between_calls() {
        assert_ne!(fallback_unique(at(1)), fallback_unique(at(1)));
    }
}
