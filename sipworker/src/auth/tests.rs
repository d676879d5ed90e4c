//! Verification tests: a SIP REGISTER answered the way a phone would, and every refusal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipcraft_config::{AuthAlgorithm, Extension, Registrar, Secret};

use super::*;

const REALM: &str = "pbx.example.test";
const URI: &str = "sip:pbx.example.test";
const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn auth() -> DigestAuth {
    DigestAuth::new(NonceKey::new(&[42u8; 32]).unwrap(), &Registrar::default())
}

fn ext(secret: Secret) -> Extension {
    Extension {
        number: "1001".into(),
        name: Some("Alice".into()),
        secret,
        enabled: true,
        auth_algorithms: None,
    }
}

fn password() -> Extension {
    ext(Secret::Password("alice-secret".into()))
}

/// What a phone sends back: all the owned strings a `Credentials` borrows.
struct Answer {
    user: String,
    nonce: String,
    nc: String,
    response: String,
    algorithm: Option<&'static str>,
    qop: bool,
}

impl Answer {
    fn creds(&self) -> Credentials<'_> {
        Credentials {
            username: &self.user,
            realm: REALM,
            nonce: &self.nonce,
            uri: URI,
            response: &self.response,
            algorithm: self.algorithm,
            cnonce: self.qop.then_some("0a4f113b"),
            qop: self.qop.then_some("auth"),
            nc: self.qop.then_some(self.nc.as_str()),
            opaque: None,
        }
    }
}

/// A phone answering `nonce` for user 1001 with `password`, count `nc`.
fn answer(alg: AuthAlgorithm, password: &str, nonce: &str, nc: u32) -> Answer {
    let ha1 = ha1(alg, "1001", REALM, password);
    let nc = format!("{nc:08x}");
    let qop = QopAuth {
        nc: &nc,
        cnonce: "0a4f113b",
        qop: "auth",
    };
    let response = response(alg, &ha1, "REGISTER", URI, nonce, Some(qop));
    Answer {
        user: "1001".into(),
        nonce: nonce.into(),
        nc,
        response,
        algorithm: Some(alg.as_str()),
        qop: true,
    }
}

fn verify(a: &mut DigestAuth, ans: &Answer, e: &Extension, now: u64) -> Verdict {
    a.verify(&ans.creds(), "REGISTER", e, REALM, at(now))
}

#[test]
fn register_with_password_and_with_stored_ha1() {
    let mut a = auth();
    let md5 = ha1(AuthAlgorithm::Md5, "1001", REALM, "alice-secret");
    let sha = ha1(AuthAlgorithm::Sha256, "1001", REALM, "alice-secret");
    let stored = ext(Secret::Ha1 {
        md5: Some(md5.to_uppercase()),
        sha256: Some(sha),
    });
    for alg in [AuthAlgorithm::Md5, AuthAlgorithm::Sha256] {
        for e in [password(), stored.clone()] {
            let nonce = a.nonce(REALM, at(T0));
            let ans = answer(alg, "alice-secret", &nonce, 1);
            assert_eq!(
                verify(&mut a, &ans, &e, T0 + 1),
                Verdict::Ok { algorithm: alg }
            );
            let wrong = answer(alg, "guess", &nonce, 2);
            assert_eq!(verify(&mut a, &wrong, &e, T0 + 1), Verdict::WrongPassword);
        }
    }
}

#[test]
fn md5_is_the_default_algorithm_and_rfc2069_is_accepted_once() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let h = ha1(AuthAlgorithm::Md5, "1001", REALM, "alice-secret");
    let ans = Answer {
        user: "1001".into(),
        response: response(AuthAlgorithm::Md5, &h, "REGISTER", URI, &nonce, None),
        nonce,
        nc: String::new(),
        algorithm: None,
        qop: false,
    };
    let ok = Verdict::Ok {
        algorithm: AuthAlgorithm::Md5,
    };
    assert_eq!(verify(&mut a, &ans, &password(), T0), ok);
    assert_eq!(verify(&mut a, &ans, &password(), T0), Verdict::Replay);
}

#[test]
fn nonce_count_must_rise() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let e = password();
    let first = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    assert!(verify(&mut a, &first, &e, T0).is_ok());
    assert_eq!(verify(&mut a, &first, &e, T0 + 1), Verdict::Replay);
    assert!(Verdict::Replay.stale() && !Verdict::Replay.counts_as_failure());
    let second = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 2);
    assert!(verify(&mut a, &second, &e, T0 + 2).is_ok());
    // A wrong digest with a high count neither passes nor raises the phone's count.
    let attacker = answer(AuthAlgorithm::Md5, "guess", &nonce, 0xffff_ffff);
    assert_eq!(
        verify(&mut a, &attacker, &e, T0 + 3),
        Verdict::WrongPassword
    );
    let third = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 3);
    assert!(verify(&mut a, &third, &e, T0 + 3).is_ok());
    assert_eq!(a.tracked_nonces(), 1);
}

#[test]
fn another_worker_with_the_same_key_accepts_the_nonce() {
    let bytes = NonceKey::random_bytes().unwrap();
    let issuer = DigestAuth::new(NonceKey::new(&bytes).unwrap(), &Registrar::default());
    let mut other = DigestAuth::new(NonceKey::new(&bytes).unwrap(), &Registrar::default());
    let nonce = issuer.nonce(REALM, at(T0));
    let ans = answer(AuthAlgorithm::Sha256, "alice-secret", &nonce, 1);
    assert!(verify(&mut other, &ans, &password(), T0 + 10).is_ok());
}

#[test]
fn expired_nonce_is_stale_only_with_the_right_password() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let life = Registrar::default().nonce_lifetime_s;
    let good = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    assert_eq!(
        verify(&mut a, &good, &password(), T0 + life + 1),
        Verdict::Stale
    );
    assert!(Verdict::Stale.stale() && !Verdict::Stale.counts_as_failure());
    let bad = answer(AuthAlgorithm::Md5, "guess", &nonce, 1);
    assert_eq!(
        verify(&mut a, &bad, &password(), T0 + life + 1),
        Verdict::WrongPassword
    );
    // Within the lifetime (reloaded to a longer one) it is fine again.
    a.reconfigure(&Registrar {
        nonce_lifetime_s: life * 2,
        ..Registrar::default()
    });
    assert!(verify(&mut a, &good, &password(), T0 + life + 1).is_ok());
}

#[test]
fn forged_nonce_is_bad_unless_the_digest_proves_the_password() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    // Push the issue time some 18 hours ahead to stretch the nonce's life: the tag no
    // longer fits.
    let mut bytes = hex::decode(&nonce).unwrap();
    bytes[5] = bytes[5].wrapping_add(1);
    let forged = hex::encode(bytes);
    let guess = answer(AuthAlgorithm::Md5, "guess", &forged, 1);
    assert_eq!(verify(&mut a, &guess, &password(), T0), Verdict::BadNonce);
    assert!(Verdict::BadNonce.counts_as_failure());
    for garbage in ["x", "dcd98b7102dd2f0e8b11d0f600bfb0c093"] {
        let g = answer(AuthAlgorithm::Md5, "guess", garbage, 1);
        assert_eq!(verify(&mut a, &g, &password(), T0), Verdict::BadNonce);
    }
    // A phone answering a nonce from a previous key (the instance restarted) with the
    // right password is told to retry, not counted as an attacker.
    let old = DigestAuth::new(NonceKey::new(&[1u8; 32]).unwrap(), &Registrar::default());
    let before_restart = old.nonce(REALM, at(T0));
    let phone = answer(AuthAlgorithm::Md5, "alice-secret", &before_restart, 7);
    assert_eq!(verify(&mut a, &phone, &password(), T0), Verdict::Stale);
}

#[test]
fn algorithm_not_allowed_for_the_extension() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let mut sha_only = password();
    sha_only.auth_algorithms = Some(vec![AuthAlgorithm::Sha256]);
    let md5 = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    assert_eq!(
        verify(&mut a, &md5, &sha_only, T0),
        Verdict::AlgorithmNotAllowed(AuthAlgorithm::Md5)
    );
    // HA1 given for MD5 only: SHA-256 cannot be checked.
    let md5_ha1 = ext(Secret::Ha1 {
        md5: Some(ha1(AuthAlgorithm::Md5, "1001", REALM, "alice-secret")),
        sha256: None,
    });
    let sha = answer(AuthAlgorithm::Sha256, "alice-secret", &nonce, 1);
    assert_eq!(
        verify(&mut a, &sha, &md5_ha1, T0),
        Verdict::AlgorithmNotAllowed(AuthAlgorithm::Sha256)
    );
    assert_eq!(a.algorithms_for(Some(&md5_ha1)), [AuthAlgorithm::Md5]);
    assert_eq!(a.algorithms_for(Some(&sha_only)), [AuthAlgorithm::Sha256]);
}

#[test]
fn unknown_and_sess_algorithms_are_refused() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let mut ans = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    ans.algorithm = Some("SHA-512-256");
    assert!(matches!(
        verify(&mut a, &ans, &password(), T0),
        Verdict::UnknownAlgorithm(name) if name.as_str() == "SHA-512-256"
    ));
    for sess in ["MD5-sess", "SHA-256-SESS"] {
        ans.algorithm = Some(sess);
        assert_eq!(
            verify(&mut a, &ans, &password(), T0),
            Verdict::Unsupported(Unsupported::SessAlgorithm)
        );
    }
    ans.algorithm = Some("md5");
    assert!(verify(&mut a, &ans, &password(), T0).is_ok());
}

#[test]
fn structural_refusals() {
    let mut a = auth();
    let nonce = a.nonce(REALM, at(T0));
    let e = password();
    let good = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    let check =
        |a: &mut DigestAuth, c: Credentials<'_>| a.verify(&c, "REGISTER", &e, REALM, at(T0));

    let c = good.creds();
    assert_eq!(
        check(&mut a, Credentials { nonce: "", ..c }),
        Verdict::Malformed(Malformed::Missing("nonce"))
    );
    assert_eq!(
        check(
            &mut a,
            Credentials {
                qop: Some("auth-int"),
                ..c
            }
        ),
        Verdict::Unsupported(Unsupported::AuthInt)
    );
    assert_eq!(
        check(
            &mut a,
            Credentials {
                qop: Some("bogus"),
                ..c
            }
        ),
        Verdict::Malformed(Malformed::UnknownQop)
    );
    assert_eq!(
        check(&mut a, Credentials { cnonce: None, ..c }),
        Verdict::Malformed(Malformed::Missing("cnonce"))
    );
    for nc in ["00000000", "+1", "123456789", "zz"] {
        assert_eq!(
            check(&mut a, Credentials { nc: Some(nc), ..c }),
            Verdict::Malformed(Malformed::BadNonceCount),
            "{nc}"
        );
    }
    for response in ["xyz", "6629fae49393a05397450978507c4ef", "€€€€€€€€€€€"]
    {
        assert_eq!(
            check(&mut a, Credentials { response, ..c }),
            Verdict::Malformed(Malformed::BadResponse)
        );
    }
    assert_eq!(
        check(
            &mut a,
            Credentials {
                realm: "other.test",
                ..c
            }
        ),
        Verdict::RealmMismatch
    );
    // The digest uri is not compared with anything: a different one simply fails the
    // digest (it was signed with the original one).
    assert_eq!(
        check(
            &mut a,
            Credentials {
                uri: "sip:elsewhere",
                ..c
            }
        ),
        Verdict::WrongPassword
    );
    // Uppercase hex from a sloppy client is fine.
    let upper = good.response.to_uppercase();
    assert!(check(
        &mut a,
        Credentials {
            response: &upper,
            ..c
        }
    )
    .is_ok());
}

#[test]
fn unknown_user_looks_like_a_wrong_password() {
    let mut a = auth();
    let registrar = Registrar::default();
    // Same challenge shape for a known extension and an unknown user.
    let known = a.challenges_for(Some(&password()), REALM, false, at(T0));
    let unknown = a.challenges_for(None, REALM, false, at(T0));
    let strip = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|h| {
                let start = h.find("nonce=\"").unwrap() + 7;
                format!("{}{}", &h[..start], &h[start + 64..])
            })
            .collect()
    };
    assert_eq!(strip(&known), strip(&unknown));
    assert_eq!(a.algorithms_for(None), registrar.auth_algorithms);

    let nonce = a.nonce(REALM, at(T0));
    let mut ans = answer(AuthAlgorithm::Md5, "whatever", &nonce, 1);
    ans.user = "9999".into();
    let v = a.verify_unknown(&ans.creds(), "REGISTER", REALM, at(T0));
    assert_eq!(v, Verdict::WrongPassword);
    let mut garbled = ans;
    garbled.nonce = "x".into();
    let v = a.verify_unknown(&garbled.creds(), "REGISTER", REALM, at(T0));
    assert_eq!(v, Verdict::BadNonce);
    // Credentials naming another user never pass for this extension.
    let mut other = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    other.user = "1002".into();
    assert_eq!(
        verify(&mut a, &other, &password(), T0),
        Verdict::WrongPassword
    );
}

#[test]
fn disabled_extension_is_only_revealed_to_the_password_holder() {
    let mut a = auth();
    let mut e = password();
    e.enabled = false;
    let nonce = a.nonce(REALM, at(T0));
    let wrong = answer(AuthAlgorithm::Md5, "guess", &nonce, 1);
    assert_eq!(verify(&mut a, &wrong, &e, T0), Verdict::WrongPassword);
    let right = answer(AuthAlgorithm::Md5, "alice-secret", &nonce, 1);
    assert_eq!(verify(&mut a, &right, &e, T0), Verdict::Disabled);
    assert!(!Verdict::Disabled.counts_as_failure());
}

#[test]
fn challenges_carry_algorithm_and_stale() {
    let a = auth();
    let v = a.challenges(
        REALM,
        &[AuthAlgorithm::Md5, AuthAlgorithm::Sha256],
        true,
        at(T0),
    );
    assert_eq!(v.len(), 2);
    assert!(v[0].starts_with("Digest realm=\"pbx.example.test\", nonce=\""));
    assert!(v[0].ends_with("qop=\"auth\", algorithm=MD5, stale=true"));
    assert!(v[1].ends_with("qop=\"auth\", algorithm=SHA-256, stale=true"));
    // Both share one nonce.
    let nonce = |h: &str| h.split("nonce=\"").nth(1).unwrap()[..64].to_string();
    assert_eq!(nonce(&v[0]), nonce(&v[1]));
}

#[test]
fn hostile_input_never_panics() {
    let mut a = auth();
    let e = password();
    let long = "A".repeat(100_000);
    for s in ["", "\0", "€", "-sess", "€-sess", long.as_str(), "\"\\"] {
        let c = Credentials {
            username: s,
            realm: s,
            nonce: s,
            uri: s,
            response: s,
            algorithm: Some(s),
            cnonce: Some(s),
            qop: Some(s),
            nc: Some(s),
            opaque: Some(s),
        };
        let _ = a.verify(&c, s, &e, s, at(0));
        let _ = a.verify_unknown(&c, s, s, UNIX_EPOCH - Duration::from_secs(5));
        let _ = a.challenges(s, &[AuthAlgorithm::Md5], false, at(u64::MAX / 4));
    }
}
