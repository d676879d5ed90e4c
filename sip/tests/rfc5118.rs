//! Every message of RFC 5118 (SIP Torture Test Messages for IPv6) with the verdict the RFC
//! gives. Files under `tests/torture/rfc5118/` are the RFC's text with CRLF line ends.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{expect, Expect};
use sipcraft_sip::header::{Contacts, Transport};
use sipcraft_sip::{Host, SipUri, Uri};

macro_rules! msg {
    ($name:literal) => {
        include_bytes!(concat!("torture/rfc5118/", $name, ".dat")).as_slice()
    };
}

fn v6(s: &str) -> Host<'static> {
    Host::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn ruri<'a>(m: &sipcraft_sip::Message<'a>) -> SipUri<'a> {
    match m.request_uri().unwrap().unwrap() {
        Uri::Sip(u) => u,
        other => panic!("not SIP: {other}"),
    }
}

fn contact_host<'a>(m: &sipcraft_sip::Message<'a>) -> Host<'a> {
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    c[0].uri.as_sip().unwrap().host
}

#[test]
fn s4_1_ipv6_good() {
    let m = expect("ipv6-good", msg!("ipv6-good"), Expect::Accept).unwrap();
    assert_eq!(ruri(&m).host, v6("2001:db8::10"));
    assert_eq!(ruri(&m).port, None);
    let via = m.top_via().unwrap();
    assert_eq!(via.host, v6("2001:db8::9:1"));
    assert_eq!(via.branch(), Some("z9hG4bKas3-111"));
    assert_eq!(contact_host(&m), v6("2001:db8::1"));
}

#[test]
fn s4_2_ipv6_bad() {
    // "should respond with a 400 Bad Request"
    expect("ipv6-bad", msg!("ipv6-bad"), Expect::Reject(400));
}

#[test]
fn s4_3_port_ambiguous() {
    // Well-formed: the whole bracketed text is the address, and there is no port.
    let m = expect("port-ambiguous", msg!("port-ambiguous"), Expect::Accept).unwrap();
    assert_eq!(ruri(&m).host, v6("2001:db8::10:5070"));
    assert_eq!(ruri(&m).port, None);
}

#[test]
fn s4_4_port_unambiguous() {
    let m = expect("port-unambiguous", msg!("port-unambiguous"), Expect::Accept).unwrap();
    assert_eq!(ruri(&m).host, v6("2001:db8::10"));
    assert_eq!(ruri(&m).port, Some(5070));
}

#[test]
fn s4_5_via_received_with_and_without_delimiters() {
    let a = expect(
        "with-delim",
        msg!("via-received-param-with-delim"),
        Expect::Accept,
    )
    .unwrap();
    let b = expect(
        "no-delim",
        msg!("via-received-param-no-delim"),
        Expect::Accept,
    )
    .unwrap();
    let want = Some(v6("2001:db8::9:255"));
    assert_eq!(a.top_via().unwrap().received(), want);
    assert_eq!(b.top_via().unwrap().received(), want);
    assert_eq!(b.top_via().unwrap().branch(), Some("z9hG4bKas3"));
}

#[test]
fn s4_6_ipv6_in_sdp() {
    // The RFC's own Content-Length (268) exceeds the body it prints (251 octets with CRLF
    // line ends), so taken literally this datagram is RFC 3261 §18.3's "packet ends before
    // the body": answered 400.
    let raw = msg!("ipv6-in-sdp");
    expect("ipv6-in-sdp", raw, Expect::Reject(400));
    // With the length of the body as printed, the message is what the section describes.
    let fixed = String::from_utf8(raw.to_vec())
        .unwrap()
        .replace("Content-Length: 268", "Content-Length: 251");
    let m = expect("ipv6-in-sdp (fixed)", fixed.as_bytes(), Expect::Accept).unwrap();
    assert_eq!(ruri(&m).host, v6("2001:db8::10"));
    assert_eq!(m.top_via().unwrap().host, v6("2001:db8::20"));
    assert_eq!(contact_host(&m), v6("2001:db8::20"));
    let body = std::str::from_utf8(m.body()).unwrap();
    assert!(body.contains("c=IN IP6 2001:db8::20\r\n"));
    assert!(body.ends_with("a=rtpmap:107 H263-1998/90000\r\n"));
}

#[test]
fn s4_7_mult_ip_in_header() {
    let m = expect(
        "mult-ip-in-header",
        msg!("mult-ip-in-header"),
        Expect::Accept,
    )
    .unwrap();
    let v: Vec<_> = m.vias().map(Result::unwrap).collect();
    assert_eq!(v.len(), 3);
    assert_eq!((v[0].host, v[0].port), (v6("2001:db8::9:1"), Some(6050)));
    assert_eq!(v[1].host, Host::V4(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(
        (v[2].transport, v[2].host),
        (Transport::Tcp, v6("2001:db8::9:255"))
    );
    assert_eq!(
        v[2].received(),
        Some(Host::V4(Ipv4Addr::new(192, 0, 2, 200)))
    );
}

#[test]
fn s4_8_mult_ip_in_sdp() {
    // Content-Length 181 is shorter than the printed body: the rest is ignored (§18.3).
    let m = expect("mult-ip-in-sdp", msg!("mult-ip-in-sdp"), Expect::Accept).unwrap();
    assert_eq!(m.body().len(), 181);
    let body = std::str::from_utf8(m.body()).unwrap();
    assert!(body.contains("c=IN IP4 192.0.2.1\r\n") && body.contains("c=IN IP6 2001:db8::1\r\n"));
    assert_eq!(contact_host(&m), v6("2001:db8::9:1"));
}

#[test]
fn s4_9_ipv4_mapped_ipv6() {
    let m = expect("ipv4-mapped-ipv6", msg!("ipv4-mapped-ipv6"), Expect::Accept).unwrap();
    let v: Vec<_> = m.vias().map(Result::unwrap).collect();
    assert_eq!(
        (v[0].host, v[0].port),
        (v6("::ffff:192.0.2.10"), Some(19823))
    );
    assert_eq!(v[1].host, v6("::ffff:192.0.2.2"));
    assert_eq!(contact_host(&m), v6("::ffff:192.0.2.2"));
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert_eq!(c[0].display_name.unwrap().text(), "T. desk phone");
    assert!(std::str::from_utf8(m.body())
        .unwrap()
        .contains("c=IN IP6 ::ffff:192.0.2.2"));
}

#[test]
fn s4_10_ipv6_reference_bug_in_abnf() {
    // Both forms must be tolerated, and they name the same address. The RFC prints these two
    // without the empty line that ends the header section: a datagram may end there.
    let a = expect("3-colons", msg!("ipv6-bug-abnf-3-colons"), Expect::Accept).unwrap();
    let b = expect(
        "2-colons",
        msg!("ipv6-correct-abnf-2-colons"),
        Expect::Accept,
    )
    .unwrap();
    assert_eq!(ruri(&a).host, v6("2001:db8::192.0.2.1"));
    assert_eq!(ruri(&a).host, ruri(&b).host);
    assert!(a.to().unwrap().uri.equivalent(&b.to().unwrap().uri));
    assert_eq!(
        a.top_via().unwrap().host,
        Host::Domain("lab1.east.example.com")
    );
}
