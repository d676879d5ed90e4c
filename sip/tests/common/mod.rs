//! Helpers shared by the torture-test suites.
#![allow(dead_code)]

use sipcraft_sip::{check, parse, HeaderName, Limits, Message, Policy, Verdict};

/// What RFC 4475 / RFC 5118 expect an element to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Processed normally.
    Accept,
    /// Answered with this status.
    Reject(u16),
    /// Silently discarded.
    Drop,
}

pub fn verdict(bytes: &[u8]) -> Verdict<'_> {
    check(bytes, &Limits::default(), &Policy::default())
}

/// Checks the verdict and returns the message for further assertions (the request as read
/// for a rejection, `None` for a drop).
pub fn expect<'a>(name: &str, bytes: &'a [u8], want: Expect) -> Option<Message<'a>> {
    match (verdict(bytes), want) {
        (Verdict::Accept(m), Expect::Accept) => {
            round_trip(name, &m);
            Some(m)
        }
        (Verdict::Reject { request, rejection }, Expect::Reject(code)) => {
            assert_eq!(rejection.status, code, "{name}: {}", rejection.reason);
            // The rejection must be answerable: the response parses and matches the request.
            let resp = sipcraft_sip::build::ResponseBuilder::reject(&request, &rejection)
                .to_tag("t0rture")
                .build();
            let r = parse(&resp, &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: response does not parse: {e}"));
            assert_eq!(r.status(), Some(code), "{name}");
            assert_eq!(
                r.values(HeaderName::Via).next(),
                request.values(HeaderName::Via).next(),
                "{name}: top Via copied"
            );
            Some(request)
        }
        (Verdict::Drop(_), Expect::Drop) => None,
        (Verdict::Accept(_), w) => panic!("{name}: accepted, want {w:?}"),
        (Verdict::Reject { rejection, .. }, w) => {
            panic!(
                "{name}: rejected {} {}, want {w:?}",
                rejection.status, rejection.reason
            )
        }
        (Verdict::Drop(why), w) => panic!("{name}: dropped ({why}), want {w:?}"),
    }
}

/// Printing a message and parsing it again gives the same message, header by header.
pub fn round_trip(name: &str, m: &Message<'_>) {
    let printed = m.to_bytes();
    let again = parse(&printed, &Limits::default())
        .unwrap_or_else(|e| panic!("{name}: printed form does not parse: {e}"));
    assert_eq!(again.start_line(), m.start_line(), "{name}");
    assert_eq!(again.body(), m.body(), "{name}");
    assert_eq!(again.headers().len(), m.headers().len(), "{name}");
    for (a, b) in again.headers().iter().zip(m.headers()) {
        assert_eq!(a.name, b.name, "{name}");
    }
    assert_eq!(again.top_via(), m.top_via(), "{name}");
    assert_eq!(
        again.vias().collect::<Vec<_>>(),
        m.vias().collect::<Vec<_>>(),
        "{name}"
    );
    assert_eq!(again.from(), m.from(), "{name}");
    assert_eq!(again.to(), m.to(), "{name}");
    assert_eq!(again.call_id(), m.call_id(), "{name}");
    assert_eq!(again.cseq(), m.cseq(), "{name}");
    assert_eq!(again.contacts(), m.contacts(), "{name}");
    assert_eq!(again.max_forwards(), m.max_forwards(), "{name}");
    assert_eq!(
        again.routes().collect::<Vec<_>>(),
        m.routes().collect::<Vec<_>>(),
        "{name}"
    );
    assert_eq!(
        again.validate(&Policy::default()),
        m.validate(&Policy::default()),
        "{name}"
    );
}
