//! Inputs found by fuzzing (`fuzz/`), kept so each finding stays fixed.

use sipcraft_sip::{parse, Limits};

/// Parses, prints, parses again and checks the typed core headers are unchanged.
fn round_trip_holds(raw: &[u8]) {
    let Ok(m) = parse(raw, &Limits::default()) else {
        return;
    };
    let printed = m.to_bytes();
    let again = parse(&printed, &Limits::default()).expect("printed form parses");
    assert_eq!(again.from(), m.from());
    assert_eq!(
        again.validate(&Default::default()),
        m.validate(&Default::default())
    );
    assert_eq!(again.to(), m.to());
    assert_eq!(
        again.vias().collect::<Vec<_>>(),
        m.vias().collect::<Vec<_>>()
    );
    assert_eq!(again.contacts(), m.contacts());
    assert_eq!(
        again.routes().collect::<Vec<_>>(),
        m.routes().collect::<Vec<_>>()
    );
    assert_eq!(again.cseq(), m.cseq());
    assert_eq!(
        again.digest_credentials(false).collect::<Vec<_>>(),
        m.digest_credentials(false).collect::<Vec<_>>()
    );
}

/// A quoted display name folded over two lines printed unfolded and then compared unequal
/// to the original: folds are white space (RFC 3261 §7.3.1), so equality now unfolds.
#[test]
fn folded_quoted_display_name() {
    let raw = include_bytes!("regressions/folded-display-name.bin");
    let m = parse(raw, &Limits::default()).expect("parses");
    let from = m.from().expect("From parses");
    assert!(from
        .display_name
        .is_some_and(|d| d.text().contains("]]] sip:vivekg")));
    round_trip_holds(raw);
}

#[test]
fn folds_inside_quoted_parameter_values() {
    let raw = b"REGISTER sip:a SIP/2.0\r\nFrom: <sip:a@b>;x=\"one\r\n two\";tag=1\r\nAuthorization: Digest username=\"al\r\n\tice\", realm=\"r\"\r\n\r\n";
    round_trip_holds(raw);
    let m = parse(raw, &Limits::default()).unwrap();
    let d = m
        .digest_credentials(false)
        .next()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.username.as_deref(), Some("al ice"));
}

/// A backslash right before a fold inside a quoted display name is malformed (a quoted-pair
/// cannot escape CR); unfolding it on print turned it into a valid escape of SP and changed
/// what the header meant. The printer now keeps such a fold.
#[test]
fn backslash_before_fold() {
    let raw = include_bytes!("regressions/backslash-before-fold.bin");
    round_trip_holds(raw);
    let small = b"OPTIONS sip:a SIP/2.0\r\nFrom: \"abc \\\r\n def\" <sip:x@y>;tag=1\r\n\r\n";
    let m = parse(small, &Limits::default()).unwrap();
    assert!(m.from().is_err());
    round_trip_holds(small);
}

/// A fold followed by an escaped SP (`CRLF SP \ SP`) read as one SP when unescaping ran
/// before unfolding, but as two once printed unfolded. Unfolding now comes first.
#[test]
fn fold_then_escaped_space() {
    round_trip_holds(include_bytes!("regressions/fold-then-escaped-space.bin"));
    assert_eq!(sipcraft_sip::unescape_quoted("a\r\n \\ b"), "a  b");
    assert_eq!(sipcraft_sip::unescape_quoted("a \\ b"), "a  b");
}

/// A request carrying exactly `max_headers` header lines, rewritten by a proxy (Via and
/// Record-Route added), no longer fits the same limits. That is the receiver's limit doing
/// its job, not a broken message: with room for the added lines it parses.
#[test]
fn rewrite_at_the_header_limit() {
    use sipcraft_sip::rewrite::Rewriter;
    let raw = include_bytes!("regressions/rewrite-at-header-limit.bin");
    let m = parse(raw, &Limits::default()).expect("parses");
    let mut w = Rewriter::new(&m);
    let _ = w.set_top_via_received("192.0.2.1".parse().unwrap(), 5060);
    let _ = w.decrement_max_forwards();
    let _ = w.pop_route();
    w.add_record_route("<sip:proxy.example.com;lr>");
    w.prepend_via("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKfuzz");
    let out = w.finish();
    let d = Limits::default();
    let roomy = Limits {
        max_headers: d.max_headers + 4,
        ..d
    };
    assert!(parse(&out, &roomy).is_ok());
    assert_eq!(
        parse(&out, &d).err(),
        Some(sipcraft_sip::ParseError::TooManyHeaders)
    );
}
