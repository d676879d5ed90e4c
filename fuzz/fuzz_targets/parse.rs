//! Datagram parsing, every typed accessor, validation, the response builder, the rewriter
//! and the print round trip, on arbitrary bytes. Nothing may panic, and whatever parses must
//! print to something that parses again to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::header::{Contacts, DigestCredentials};
use sipcraft_sip::rewrite::Rewriter;
use sipcraft_sip::{check, parse, HeaderName, Limits, Message, Policy, Verdict};

fn touch(m: &Message<'_>) {
    let _ = m.request_uri().map(|u| u.map(|u| u.to_string()));
    for v in m.vias() {
        if let Ok(v) = v {
            let _ = (v.branch(), v.received(), v.rport(), v.maddr(), v.ttl(), v.to_string());
        }
    }
    for n in [m.from(), m.to()] {
        if let Ok(n) = n {
            let _ = (n.tag(), n.to_string(), n.display_name.map(|d| d.text()));
            if let Some(u) = n.uri.as_sip() {
                let _ = (u.user_decoded(), u.transport(), u.lr(), u.equivalent(u));
            }
        }
    }
    let _ = (m.call_id(), m.cseq().map(|c| c.to_string()), m.max_forwards(), m.expires());
    let _ = (m.content_length(), m.content_type().map(|c| c.map(|c| c.to_string())), m.user_agent());
    if let Ok(Contacts::List(l)) = m.contacts() {
        for c in l {
            let _ = (c.q(), c.expires(), c.instance(), c.reg_id(), c.uri.equivalent(&c.uri));
        }
    }
    let _ = m.routes().count() + m.record_routes().count();
    for c in m.credentials(false).flatten() {
        let _ = (c.digest(), c.to_string());
    }
    for c in m.challenges(true).flatten() {
        let _ = (c.digest(), c.to_string());
    }
    let _ = m.digest_credentials(true).count();
    for name in [HeaderName::Require, HeaderName::ProxyRequire, HeaderName::Supported, HeaderName::Allow] {
        let _ = m.tokens(name).count();
    }
    let _ = m.validate(&Policy::default());
}

fn round_trip(m: &Message<'_>) {
    let printed = m.to_bytes();
    let again = parse(&printed, &Limits::default()).expect("printed message parses");
    assert_eq!(again.start_line(), m.start_line());
    assert_eq!(again.body(), m.body());
    assert_eq!(again.headers().len(), m.headers().len());
    assert_eq!(again.vias().collect::<Vec<_>>(), m.vias().collect::<Vec<_>>());
    assert_eq!(again.from(), m.from());
    assert_eq!(again.to(), m.to());
    assert_eq!(again.cseq(), m.cseq());
    assert_eq!(again.call_id(), m.call_id());
    assert_eq!(again.contacts(), m.contacts());
    assert_eq!(
        again.digest_credentials(false).collect::<Vec<_>>(),
        m.digest_credentials(false).collect::<Vec<_>>()
    );
}

fn rewrite(m: &Message<'_>) {
    let mut w = Rewriter::new(m);
    let _ = w.set_top_via_received("192.0.2.1".parse().unwrap(), 5060);
    let _ = w.decrement_max_forwards();
    let _ = w.pop_route();
    w.add_record_route("<sip:proxy.example.com;lr>");
    w.prepend_via("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKfuzz");
    if m.is_request() {
        w.set_request_uri("sip:target@192.0.2.2");
    } else {
        let _ = w.remove_top_via();
    }
    let out = w.finish();
    // Edits of a well-formed message give a well-formed message. The edits add up to four
    // lines, so a message at the limits may pass them: parse with room for those lines.
    if m.top_via().is_ok() && m.validate(&Policy::default()).is_ok() {
        let d = Limits::default();
        let roomy = Limits {
            max_headers: d.max_headers + 4,
            max_head_size: d.max_head_size + 1024,
            max_message_size: d.max_message_size + 1024,
            ..d
        };
        parse(&out, &roomy).expect("rewritten message parses");
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = parse(data, &limits) {
        touch(&m);
        round_trip(&m);
        rewrite(&m);
    }
    match check(data, &limits, &Policy { supported: &["path"], ..Policy::default() }) {
        Verdict::Accept(m) => touch(&m),
        Verdict::Reject { request, rejection } => {
            let resp = ResponseBuilder::reject(&request, &rejection).to_tag("f").build();
            parse(&resp, &limits).expect("rejection response parses");
        }
        Verdict::Drop(_) => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = DigestCredentials::parse(s);
        let _ = sipcraft_sip::Uri::parse(s).map(|u| u.equivalent(&u));
    }
});
