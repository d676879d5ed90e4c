//! HTTP digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).
//!
//! Pure code with no I/O and no dependency on the SIP parser: the registrar hands in the
//! parsed [`Credentials`] of an `Authorization` header, the method and the extension, and
//! gets a [`Verdict`]; it asks [`DigestAuth::challenges_for`] for the `WWW-Authenticate`
//! values of a `401`.
//!
//! - `MD5` and `SHA-256`, from a plain password or a stored HA1; `qop=auth`, or no `qop`
//!   (RFC 2069 clients). `-sess` algorithms and `auth-int` are refused with a clear verdict.
//! - Stateless nonces bound to the issue time and a server secret ([`NonceKey`]) shared by
//!   every worker of an instance, so any worker checks any worker's nonce; an expired nonce
//!   with a correct digest gets `stale=true`.
//! - Nonce-count replay protection in a bounded per-worker cache.
//! - Constant-time comparison of the digest, and no user enumeration (see [`DigestAuth`]).
//!
//! # How the registrar uses it on a REGISTER
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::{Instant, SystemTime};
//! use sipcraft_config::{Extension, Registrar, Secret, Security};
//! use sipcraft_sipworker::auth::{Credentials, DigestAuth, NonceKey, Verdict};
//! use sipcraft_sipworker::security::{Admission, Guard};
//!
//! let realm = "pbx.example.test";
//! let registrar = Registrar::default();
//! // The supervisor draws the key bytes once and gives them to every worker.
//! let key = NonceKey::new(&NonceKey::random_bytes().unwrap()).unwrap();
//! let mut auth = DigestAuth::new(key, &registrar);
//! let mut guard = Guard::new(&Security::default());
//! let alice = Extension {
//!     number: "1001".into(),
//!     name: None,
//!     secret: Secret::Password("alice-secret".into()),
//!     enabled: true,
//!     auth_algorithms: None,
//! };
//! let ip: IpAddr = "192.0.2.7".parse().unwrap();
//! let lookup = |user: &str| (user == "1001").then_some(&alice);
//!
//! // 1. Before parsing anything: drop banned and flooding sources without an answer.
//! match guard.admit(ip, Instant::now()) {
//!     Admission::Allow => {}
//!     Admission::NewBan(event) => { tracing::warn!("{}", event.log_line()); return; }
//!     Admission::Banned | Admission::RateLimited => return,
//! }
//!
//! // 2. A REGISTER without Authorization: 401 with one WWW-Authenticate per value.
//! //    (The user comes from the To header; unknown users get the same kind of challenge.)
//! let www_authenticate = auth.challenges_for(lookup("1001"), realm, false, SystemTime::now());
//! assert!(www_authenticate[0].contains("algorithm=MD5"));
//!
//! // 3. A REGISTER with Authorization: the parser's digest params as Credentials.
//! # let nonce = auth.nonce(realm, SystemTime::now());
//! # let ha1 = sipcraft_sipworker::auth::ha1(sipcraft_config::AuthAlgorithm::Md5, "1001", realm, "alice-secret");
//! # let qop = sipcraft_sipworker::auth::QopAuth { nc: "00000001", cnonce: "c", qop: "auth" };
//! # let response = sipcraft_sipworker::auth::response(sipcraft_config::AuthAlgorithm::Md5, &ha1, "REGISTER", "sip:pbx.example.test", &nonce, Some(qop));
//! let creds = Credentials {
//!     username: "1001",
//!     realm,
//!     nonce: &nonce,
//!     uri: "sip:pbx.example.test",
//!     response: &response,
//!     qop: Some("auth"),
//!     nc: Some("00000001"),
//!     cnonce: Some("c"),
//!     ..Default::default()
//! };
//! let now = SystemTime::now();
//! let verdict = match lookup(creds.username) {
//!     Some(ext) => auth.verify(&creds, "REGISTER", ext, realm, now),
//!     None => auth.verify_unknown(&creds, "REGISTER", realm, now),
//! };
//! match &verdict {
//!     Verdict::Ok { .. } => { /* bind the contact, 200 OK */ }
//!     Verdict::Disabled => { /* 403 Forbidden */ }
//!     Verdict::Malformed(why) => { /* 400 with `why` as the reason */ let _ = why; }
//!     Verdict::Unsupported(why) => { /* 400 with `why` as the reason */ let _ = why; }
//!     other => {
//!         // 4. Everything else: count the failure if it is one, then re-challenge.
//!         if other.counts_as_failure() {
//!             tracing::info!("{}", sipcraft_sipworker::security::auth_failure_line(ip, creds.username, other.as_str()));
//!             if let Some(ban) = guard.record_failure(ip, creds.username, Instant::now()) {
//!                 tracing::warn!("{}", ban.log_line());
//!             }
//!         }
//!         let _www = auth.challenges_for(lookup(creds.username), realm, other.stale(), now);
//!     }
//! }
//! assert!(verdict.is_ok());
//! ```

mod challenge;
mod credentials;
mod digest;
mod nonce;
mod replay;
mod verify;

#[cfg(test)]
mod tests;

pub use challenge::challenge_headers;
pub use credentials::{AlgorithmName, Credentials, Malformed, Unsupported};
pub use digest::{ha1, ha2, response, QopAuth};
pub use nonce::{KeyError, NonceCheck, NonceKey};
pub use replay::DEFAULT_REPLAY_CAPACITY;
pub use verify::{DigestAuth, Verdict};
