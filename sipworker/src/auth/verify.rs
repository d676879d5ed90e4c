//! Checking digest credentials against an extension: the per-worker [`DigestAuth`] and its
//! [`Verdict`].

use std::time::{Duration, SystemTime};

use sipcraft_config::{AuthAlgorithm, Extension, Registrar, Secret};
use subtle::ConstantTimeEq;

use super::challenge::challenge_headers;
use super::credentials::{AlgorithmName, Credentials, Malformed, Unsupported};
use super::digest::{self, QopAuth};
use super::nonce::{unix_seconds, NonceCheck, NonceKey};
use super::replay::{NonceCounts, DEFAULT_REPLAY_CAPACITY};

/// The outcome of checking credentials, and what the registrar does with it.
///
/// "Re-challenge" means `401`/`407` with fresh [`DigestAuth::challenges`];
/// [`Verdict::counts_as_failure`] says which outcomes go to the ban list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are good: serve the request.
    Ok {
        /// The algorithm the client used.
        algorithm: AuthAlgorithm,
    },
    /// The digest does not match (wrong password, wrong user name for this extension, or an
    /// unknown user): re-challenge, counts as a failure.
    WrongPassword,
    /// The digest is right but the nonce is too old, or is not one of ours (e.g. issued
    /// before the whole instance restarted with a new key): re-challenge with `stale=true`
    /// so the phone retries without asking its user; not a failure.
    Stale,
    /// The nonce is not one we issued and the digest does not match it either (garbled or
    /// forged): re-challenge, counts as a failure.
    BadNonce,
    /// The nonce count did not rise (a replayed request): re-challenge with `stale=true`;
    /// not a failure (whoever replays gains nothing, and a phone with a buggy counter
    /// recovers with the fresh nonce).
    Replay,
    /// An `algorithm` sipcraft does not know: re-challenge, counts as a failure.
    UnknownAlgorithm(AlgorithmName),
    /// A known algorithm this extension is not challenged with (its `auth_algorithms`
    /// exclude it, or its secret is an HA1 for the other algorithm only): re-challenge,
    /// counts as a failure.
    AlgorithmNotAllowed(AuthAlgorithm),
    /// `realm` is not ours: re-challenge, counts as a failure.
    RealmMismatch,
    /// The password is right but the extension is disabled: `403 Forbidden`; not a failure.
    /// Only returned after a correct digest, so it does not reveal disabled extensions.
    Disabled,
    /// A digest feature refused on purpose (`-sess`, `auth-int`): `400` with the reason as
    /// the reason phrase; counts as a failure.
    Unsupported(Unsupported),
    /// Structurally unusable credentials: `400` with the reason; counts as a failure.
    Malformed(Malformed),
}

impl Verdict {
    /// Whether the request is authenticated.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok { .. })
    }

    /// Whether this outcome is recorded as an authentication failure of the source IP
    /// (see [`crate::security::BanList::record_failure`]). Outcomes a phone that knows its
    /// password can produce (`Stale`, `Replay`, `Disabled`) are not.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(
            self,
            Verdict::Ok { .. } | Verdict::Stale | Verdict::Replay | Verdict::Disabled
        )
    }

    /// Whether the re-challenge carries `stale=true`.
    pub fn stale(&self) -> bool {
        matches!(self, Verdict::Stale | Verdict::Replay)
    }

    /// A short stable token for logs (`reason=` in auth failure lines).
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok { .. } => "ok",
            Verdict::WrongPassword => "wrong-password",
            Verdict::Stale => "stale-nonce",
            Verdict::BadNonce => "bad-nonce",
            Verdict::Replay => "replay",
            Verdict::UnknownAlgorithm(_) => "unknown-algorithm",
            Verdict::AlgorithmNotAllowed(_) => "algorithm-not-allowed",
            Verdict::RealmMismatch => "realm-mismatch",
            Verdict::Disabled => "disabled",
            Verdict::Unsupported(_) => "unsupported",
            Verdict::Malformed(_) => "malformed",
        }
    }
}

/// A worker's digest authenticator: issues challenges and verifies credentials.
///
/// One per worker. Nonces are stateless (see [`NonceKey`]); the only state is the bounded
/// nonce-count cache, which is per worker (the `replay` module says why that holds when
/// the UDP workers share a socket).
///
/// # No user enumeration
///
/// A prober must not learn which extensions exist. Therefore:
/// - nonces do not depend on the user, and [`DigestAuth::challenges_for`] with `None` (an
///   unknown user) uses the registrar's algorithm order, as a known extension without its
///   own `auth_algorithms` does: the challenges look alike. (An extension with its own
///   `auth_algorithms` or an HA1 for one algorithm only is challenged differently; that is
///   the price of per-extension algorithms, and it reveals nothing about the password.)
/// - [`DigestAuth::verify_unknown`] runs the same checks and the same hashing as
///   [`DigestAuth::verify`], with a password nobody knows, and so answers what a known user
///   with a wrong password gets (`WrongPassword` or `BadNonce`).
/// - [`Verdict::Disabled`] is only returned after a correct digest.
///
/// The caller must keep its own path identical too: look the extension up by
/// `creds.username`, call `verify` or `verify_unknown`, and answer by the verdict alone.
#[derive(Debug)]
pub struct DigestAuth {
    key: NonceKey,
    nonce_lifetime: Duration,
    algorithms: Vec<AuthAlgorithm>,
    counts: NonceCounts,
}

impl DigestAuth {
    /// An authenticator with `key` (shared by all workers of the instance) and the
    /// `[registrar]` settings (algorithm order, nonce lifetime).
    pub fn new(key: NonceKey, registrar: &Registrar) -> Self {
        DigestAuth {
            key,
            nonce_lifetime: Duration::from_secs(registrar.nonce_lifetime_s),
            algorithms: registrar.auth_algorithms.clone(),
            counts: NonceCounts::new(DEFAULT_REPLAY_CAPACITY),
        }
    }

    /// Sets how many nonces the replay cache tracks (default
    /// [`DEFAULT_REPLAY_CAPACITY`](super::DEFAULT_REPLAY_CAPACITY)).
    pub fn with_replay_capacity(mut self, capacity: usize) -> Self {
        self.counts.set_capacity(capacity);
        self
    }

    /// Applies reloaded `[registrar]` settings. Outstanding nonces stay valid (they are
    /// checked against the new lifetime).
    pub fn reconfigure(&mut self, registrar: &Registrar) {
        self.nonce_lifetime = Duration::from_secs(registrar.nonce_lifetime_s);
        self.algorithms = registrar.auth_algorithms.clone();
    }

    /// A fresh nonce for `realm`.
    pub fn nonce(&self, realm: &str, now: SystemTime) -> String {
        self.key.issue(realm, now)
    }

    /// Challenge header values for `algorithms`, in that order, sharing one fresh nonce;
    /// see [`challenge_headers`].
    pub fn challenges(
        &self,
        realm: &str,
        algorithms: &[AuthAlgorithm],
        stale: bool,
        now: SystemTime,
    ) -> Vec<String> {
        challenge_headers(realm, &self.nonce(realm, now), algorithms, stale)
    }

    /// The algorithms to challenge `extension` with: its own order filtered by what its
    /// secret can answer, or the registrar's order for an unknown user (`None`).
    pub fn algorithms_for(&self, extension: Option<&Extension>) -> Vec<AuthAlgorithm> {
        match extension {
            Some(ext) => ext
                .auth_algorithms
                .as_deref()
                .unwrap_or(&self.algorithms)
                .iter()
                .copied()
                .filter(|a| ext.secret.supports(*a))
                .collect(),
            None => self.algorithms.clone(),
        }
    }

    /// Challenge header values for a user: [`DigestAuth::algorithms_for`] then
    /// [`DigestAuth::challenges`]. Empty only for a misconfigured extension whose secret
    /// answers none of its algorithms (validation rules that out): answer `403` then.
    pub fn challenges_for(
        &self,
        extension: Option<&Extension>,
        realm: &str,
        stale: bool,
        now: SystemTime,
    ) -> Vec<String> {
        self.challenges(realm, &self.algorithms_for(extension), stale, now)
    }

    /// Verifies `creds` sent with a request of `method` for `extension`, in `realm`.
    ///
    /// The digest is compared in constant time, the digest `uri` is not compared with the
    /// Request-URI (RFC 3261 §22.4), and the nonce count is recorded only for a correct
    /// digest with a fresh nonce, so nobody without the password can disturb a phone's
    /// count.
    pub fn verify(
        &mut self,
        creds: &Credentials<'_>,
        method: &str,
        extension: &Extension,
        realm: &str,
        now: SystemTime,
    ) -> Verdict {
        self.check(creds, method, Some(extension), realm, now)
    }

    /// Verifies credentials naming a user that is not an extension: does what
    /// [`DigestAuth::verify`] does for a known user with a wrong password, and answers the
    /// same (`WrongPassword`, `BadNonce` or the same structural verdicts), so timing and
    /// answers reveal nothing.
    pub fn verify_unknown(
        &mut self,
        creds: &Credentials<'_>,
        method: &str,
        realm: &str,
        now: SystemTime,
    ) -> Verdict {
        match self.check(creds, method, None, realm, now) {
            // Unreachable with a password nobody knows; kept total all the same.
            Verdict::Ok { .. } | Verdict::Stale | Verdict::Replay | Verdict::Disabled => {
                Verdict::WrongPassword
            }
            other => other,
        }
    }

    fn check(
        &mut self,
        creds: &Credentials<'_>,
        method: &str,
        extension: Option<&Extension>,
        realm: &str,
        now: SystemTime,
    ) -> Verdict {
        let parsed = match Parsed::from(creds) {
            Ok(p) => p,
            Err(verdict) => return verdict,
        };
        if creds.realm != realm {
            return Verdict::RealmMismatch;
        }
        let algorithm = parsed.algorithm;
        if !self.algorithms_for(extension).contains(&algorithm) {
            return Verdict::AlgorithmNotAllowed(algorithm);
        }
        let mut given = [0u8; 32];
        let given = &mut given[..digest::output_len(algorithm)];
        if hex::decode_to_slice(creds.response, given).is_err() {
            return Verdict::Malformed(Malformed::BadResponse);
        }
        let nonce = self.key.check(creds.nonce, realm, now, self.nonce_lifetime);

        let computed;
        let lowered;
        let ha1: &str = match extension {
            Some(ext) => match &ext.secret {
                // HA1 is computed with the extension's number, so credentials naming another
                // user never match it.
                Secret::Password(password) => {
                    computed = digest::ha1_hex(algorithm, &ext.number, realm, password);
                    computed.as_str()
                }
                Secret::Ha1 { md5, sha256 } => {
                    let stored = match algorithm {
                        AuthAlgorithm::Md5 => md5,
                        AuthAlgorithm::Sha256 => sha256,
                    };
                    // `algorithms_for` only allows algorithms the secret supports.
                    let stored = stored.as_deref().unwrap_or_default();
                    if stored.bytes().any(|b| b.is_ascii_uppercase()) {
                        lowered = stored.to_ascii_lowercase();
                        &lowered
                    } else {
                        stored
                    }
                }
            },
            None => {
                let password = self.key.unknown_user_password(creds.username);
                computed = digest::ha1_hex(algorithm, creds.username, realm, &password);
                computed.as_str()
            }
        };
        let expected =
            digest::response_bytes(algorithm, ha1, method, creds.uri, creds.nonce, parsed.qop);
        let digest_ok = bool::from(expected.as_slice().ct_eq(given));
        let user_ok = extension.is_none_or(|e| e.number == creds.username);

        match (digest_ok && user_ok, nonce) {
            (false, NonceCheck::Invalid) => Verdict::BadNonce,
            (false, _) => Verdict::WrongPassword,
            (true, NonceCheck::Invalid | NonceCheck::Expired) => Verdict::Stale,
            (true, NonceCheck::Fresh { id, issued }) => {
                if extension.is_some_and(|e| !e.enabled) {
                    return Verdict::Disabled;
                }
                let oldest = unix_seconds(now).saturating_sub(self.nonce_lifetime.as_secs());
                self.counts.purge(oldest);
                if self.counts.record(id, issued, parsed.nc) {
                    Verdict::Ok { algorithm }
                } else {
                    Verdict::Replay
                }
            }
        }
    }

    /// Number of nonces in the replay cache (for health figures).
    pub fn tracked_nonces(&self) -> usize {
        self.counts.len()
    }
}

/// The credentials' structure, checked before any hashing.
struct Parsed<'a> {
    algorithm: AuthAlgorithm,
    qop: Option<QopAuth<'a>>,
    /// The nonce count; 0 without `qop`.
    nc: u32,
}

impl<'a> Parsed<'a> {
    fn from(creds: &Credentials<'a>) -> Result<Self, Verdict> {
        for (name, value) in [
            ("username", creds.username),
            ("realm", creds.realm),
            ("nonce", creds.nonce),
            ("uri", creds.uri),
            ("response", creds.response),
        ] {
            if value.is_empty() {
                return Err(Verdict::Malformed(Malformed::Missing(name)));
            }
        }
        let algorithm = parse_algorithm(creds.algorithm_name())?;
        let Some(qop) = creds.qop else {
            // RFC 2069: no qop, no nc, no cnonce (any sent are ignored, as they are not
            // part of the digest).
            return Ok(Parsed {
                algorithm,
                qop: None,
                nc: 0,
            });
        };
        if qop.eq_ignore_ascii_case("auth-int") {
            return Err(Verdict::Unsupported(Unsupported::AuthInt));
        }
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(Verdict::Malformed(Malformed::UnknownQop));
        }
        let cnonce = creds
            .cnonce
            .filter(|c| !c.is_empty())
            .ok_or(Verdict::Malformed(Malformed::Missing("cnonce")))?;
        let nc_text = creds
            .nc
            .filter(|n| !n.is_empty())
            .ok_or(Verdict::Malformed(Malformed::Missing("nc")))?;
        let nc = parse_nc(nc_text).ok_or(Verdict::Malformed(Malformed::BadNonceCount))?;
        Ok(Parsed {
            algorithm,
            qop: Some(QopAuth {
                nc: nc_text,
                cnonce,
                qop,
            }),
            nc,
        })
    }
}

/// The suffix of the session algorithm variants (`MD5-sess`, `SHA-256-sess`).
const SESS: &[u8] = b"-sess";

/// `MD5` / `SHA-256`, case-insensitively; `-sess` variants and others refused.
fn parse_algorithm(name: &str) -> Result<AuthAlgorithm, Verdict> {
    if name.eq_ignore_ascii_case("MD5") {
        Ok(AuthAlgorithm::Md5)
    } else if name.eq_ignore_ascii_case("SHA-256") {
        Ok(AuthAlgorithm::Sha256)
    } else if name.len() > SESS.len()
        && name
            .as_bytes()
            .get(name.len() - SESS.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(SESS))
    {
        Err(Verdict::Unsupported(Unsupported::SessAlgorithm))
    } else {
        Err(Verdict::UnknownAlgorithm(AlgorithmName::new(name)))
    }
}

/// A nonce count: 1 to 8 hex digits, not zero.
fn parse_nc(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok().filter(|n| *n > 0)
}
