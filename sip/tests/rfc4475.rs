//! Every message of RFC 4475 (SIP Torture Test Messages), byte-exact, with the verdict the
//! RFC gives. The files under `tests/torture/rfc4475/` were written from the RFC's text and
//! checked against the SHA-256 of the Appendix B archive members where known (see
//! `tests/torture/README.md`).

mod common;

use common::{expect, Expect};
use sipcraft_sip::header::{Contacts, Transport};
use sipcraft_sip::rewrite::{RewriteError, Rewriter};
use sipcraft_sip::{HeaderName, Host, Method, Uri};

macro_rules! msg {
    ($name:literal) => {
        include_bytes!(concat!("torture/rfc4475/", $name, ".dat")).as_slice()
    };
}

fn sip_uri<'a>(u: &Uri<'a>) -> sipcraft_sip::SipUri<'a> {
    *u.as_sip().unwrap_or_else(|| panic!("not a SIP URI: {u}"))
}

// ---- 3.1.1 Valid messages --------------------------------------------------------------

#[test]
fn s3_1_1_1_wsinv() {
    let m = expect("wsinv", msg!("wsinv"), Expect::Accept).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    let ruri = sip_uri(&m.request_uri().unwrap().unwrap());
    assert_eq!(ruri.user, Some("vivekg"));
    assert!(ruri.params.contains("unknownparam"));
    assert_eq!(m.to().unwrap().tag(), Some("1918181833n"));
    let from = m.from().unwrap();
    assert_eq!(from.display_name.unwrap().text(), "J Rosenberg \\\"");
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.call_id(), Ok("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.content_length(), Ok(Some(150)));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));
    let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport, vias[0].host.to_string()),
        (Transport::Udp, "192.0.2.2".into())
    );
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(
        (vias[1].transport, vias[1].host),
        (Transport::Tcp, Host::Domain("spindle.example.com"))
    );
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].host.to_string(), "192.168.255.111");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.header(HeaderName::Subject).map(|h| h.value), Some(""));
    let nf = m
        .header(HeaderName::Other("NewFangledHeader"))
        .unwrap()
        .value;
    assert_eq!(nf, "newfangled value\r\n continued newfangled value");
    let unusual = m
        .header(HeaderName::Other("unknownheaderwithunusualvalue"))
        .unwrap();
    assert_eq!(unusual.value, ";;,,;;,;");
    assert!(m.content_type().unwrap().unwrap().is("application", "sdp"));
    let route = m.routes().next().unwrap().unwrap();
    assert!(sip_uri(&route.uri).lr());
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].display_name.unwrap().text(), "Quoted string \"\"");
    assert_eq!(c[0].params.value("newparam"), Some(Some("newvalue")));
    assert_eq!(c[0].params.value("secondparam"), Some(None));
    assert_eq!(c[0].q(), Some(330));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn s3_1_1_2_intmeth() {
    let m = expect("intmeth", msg!("intmeth"), Expect::Accept).unwrap();
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(m.method(), Some(Method::Extension(method)));
    assert_eq!(m.cseq().unwrap().method, Method::Extension(method));
    let ruri = sip_uri(&m.request_uri().unwrap().unwrap());
    assert_eq!(
        ruri.user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        ruri.password,
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
    let to = m.to().unwrap();
    assert_eq!(
        to.display_name.unwrap().text(),
        "BEL:\u{7} NUL:\0 DEL:\u{7f}"
    );
    let from = m.from().unwrap();
    assert_eq!(
        from.display_name.unwrap().raw,
        "token1~` token2'+_ token3*%!.-"
    );
    let p = from.params.get("fromParam''~+*_!.-%").unwrap();
    assert_eq!(p.unquoted().as_deref(), Some("работающий"));
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(
        m.call_id(),
        Ok("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(m.max_forwards(), Ok(Some(255)));
    let ext = m
        .header(HeaderName::Other("extensionHeader-!.%*+_`'~"))
        .unwrap();
    assert_eq!(ext.value, "\u{feff}大停電");
}

#[test]
fn s3_1_1_3_esc01() {
    let m = expect("esc01", msg!("esc01"), Expect::Accept).unwrap();
    let ruri = sip_uri(&m.request_uri().unwrap().unwrap());
    assert_eq!(
        ruri.user_decoded().as_deref(),
        Some("sips:user@example.com")
    );
    assert_eq!(ruri.host, Host::Domain("example.net"));
    let to = sip_uri(&m.to().unwrap().uri);
    assert_eq!(to.user_decoded().as_deref(), Some("user"));
    assert!(to.equivalent(&sipcraft_sip::SipUri::parse("sip:user@example.com").unwrap()));
    let from = sip_uri(&m.from().unwrap().uri);
    assert_eq!(from.user_decoded().as_deref(), Some("I have spaces"));
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    let cu = sip_uri(&c[0].uri);
    assert_eq!(cu.user_decoded().as_deref(), Some("caller"));
    assert!(cu.lr());
    assert_eq!(cu.params.value("name"), Some(Some("v%61lue%25%34%31")));
}

#[test]
fn s3_1_1_4_escnull() {
    let m = expect("escnull", msg!("escnull"), Expect::Accept).unwrap();
    assert_eq!(
        sip_uri(&m.to().unwrap().uri).user_decoded().as_deref(),
        Some("null-\0-null")
    );
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert_eq!(c.len(), 2);
    assert_eq!(sip_uri(&c[1].uri).user_decoded().as_deref(), Some("\0\0"));
    assert!(!c[0].uri.equivalent(&c[1].uri));
}

#[test]
fn s3_1_1_5_esc02() {
    let m = expect("esc02", msg!("esc02"), Expect::Accept).unwrap();
    assert_eq!(m.method(), Some(Method::Extension("RE%47IST%45R")));
    assert_eq!(m.to().unwrap().display_name.unwrap().text(), "%Z%45");
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
    // C%6Fntact is an unknown header, not a Contact.
    assert_eq!(m.count(HeaderName::Contact), 2);
    assert_eq!(m.count(HeaderName::Other("C%6Fntact")), 1);
}

#[test]
fn s3_1_1_6_lwsdisp() {
    let m = expect("lwsdisp", msg!("lwsdisp"), Expect::Accept).unwrap();
    assert_eq!(m.from().unwrap().display_name.unwrap().raw, "caller");
}

#[test]
fn s3_1_1_7_longreq() {
    let m = expect("longreq", msg!("longreq"), Expect::Accept).unwrap();
    let to = m.to().unwrap();
    assert!(to.display_name.unwrap().raw.ends_with("extreme proportion"));
    assert_eq!(sip_uri(&to.uri).port, Some(6000));
    let from = m.from().unwrap();
    assert!(from.tag().unwrap().ends_with("982424"));
    assert!(from.params.contains("unknownValuelessparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamname"));
    let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
    assert_eq!(vias.len(), 34);
    assert_eq!(vias[0].host, Host::Domain("sip33.example.com"));
    assert_eq!(
        vias[33].received().map(|h| h.to_string()).as_deref(),
        Some("192.0.2.5")
    );
    assert!(vias[33].branch().unwrap().ends_with("longbranchvalue"));
    assert_eq!(m.content_length(), Ok(Some(150)));
}

#[test]
fn s3_1_1_8_dblreq() {
    let raw = msg!("dblreq");
    let m = expect("dblreq", raw, Expect::Accept).unwrap();
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.body(), b"");
    assert!(
        m.as_bytes().len() < raw.len(),
        "the trailing INVITE is ignored"
    );
    assert!(m.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));
}

#[test]
fn s3_1_1_9_semiuri() {
    let m = expect("semiuri", msg!("semiuri"), Expect::Accept).unwrap();
    let ruri = sip_uri(&m.request_uri().unwrap().unwrap());
    assert_eq!(ruri.user, Some("user;par=u%40example.net"));
    assert_eq!(ruri.host, Host::Domain("example.com"));
    assert!(ruri.params.is_empty());
    assert_eq!(m.values(HeaderName::Accept).count(), 6);
}

#[test]
fn s3_1_1_10_transports() {
    let m = expect("transports", msg!("transports"), Expect::Accept).unwrap();
    let t: Vec<_> = m.vias().map(|v| v.unwrap().transport).collect();
    assert_eq!(
        t,
        [
            Transport::Udp,
            Transport::Sctp,
            Transport::Tls,
            Transport::Other("UNKNOWN"),
            Transport::Tcp
        ]
    );
    assert_eq!(m.call_id(), Ok("transports.kijh4akdnaqjkwendsasfdj"));
}

#[test]
fn s3_1_1_11_mpart01() {
    let m = expect("mpart01", msg!("mpart01"), Expect::Accept).unwrap();
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.body().len(), 553);
    let ct = m.content_type().unwrap().unwrap();
    assert!(ct.is("multipart", "mixed"));
    assert_eq!(ct.params.value("boundary"), Some(Some("7a9cbec02ceef655")));
    assert_eq!(m.top_via().unwrap().rport(), Some(None));
    assert!(m.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
}

#[test]
fn s3_1_1_12_unreason() {
    let m = expect("unreason", msg!("unreason"), Expect::Accept).unwrap();
    let sl = m.status_line().unwrap();
    assert_eq!(sl.code, 200);
    assert_eq!(sl.reason, "= 2**3 * 5**2 но сто девяносто девять - простое");
}

#[test]
fn s3_1_1_13_noreason() {
    let m = expect("noreason", msg!("noreason"), Expect::Accept).unwrap();
    assert_eq!(m.status_line().map(|s| (s.code, s.reason)), Some((100, "")));
}

// ---- 3.1.2 Invalid messages ------------------------------------------------------------

#[test]
fn s3_1_2_1_badinv01() {
    // The broken Via parameters still leave a sent-by to answer to.
    expect("badinv01", msg!("badinv01"), Expect::Reject(400));
}

#[test]
fn s3_1_2_2_clerr() {
    expect("clerr", msg!("clerr"), Expect::Reject(400));
}

#[test]
fn s3_1_2_3_ncl() {
    expect("ncl", msg!("ncl"), Expect::Reject(400));
}

#[test]
fn s3_1_2_4_scalar02() {
    let m = expect("scalar02", msg!("scalar02"), Expect::Reject(400)).unwrap();
    assert!(m.cseq().is_err());
    // Had the CSeq been right, the overlarge expiry values would read as the maximum.
    assert_eq!(m.expires(), Ok(Some(u32::MAX)));
    assert!(m.max_forwards().is_err());
}

#[test]
fn s3_1_2_5_scalarlg() {
    expect("scalarlg", msg!("scalarlg"), Expect::Drop);
}

#[test]
fn s3_1_2_6_quotbal() {
    expect("quotbal", msg!("quotbal"), Expect::Reject(400));
}

#[test]
fn s3_1_2_7_ltgtruri() {
    expect("ltgtruri", msg!("ltgtruri"), Expect::Reject(400));
}

#[test]
fn s3_1_2_8_lwsruri() {
    expect("lwsruri", msg!("lwsruri"), Expect::Reject(400));
}

#[test]
fn s3_1_2_9_lwsstart() {
    // The RFC allows a liberal element to accept it; we answer 400.
    expect("lwsstart", msg!("lwsstart"), Expect::Reject(400));
}

#[test]
fn s3_1_2_10_trws() {
    expect("trws", msg!("trws"), Expect::Reject(400));
}

#[test]
fn s3_1_2_11_escruri() {
    // Headers in a Request-URI: rejected, never turned into real headers.
    expect("escruri", msg!("escruri"), Expect::Reject(400));
}

#[test]
fn s3_1_2_12_baddate() {
    // The RFC lets an element that does not need Date accept it; the parser never reads it.
    let m = expect("baddate", msg!("baddate"), Expect::Accept).unwrap();
    assert_eq!(
        m.header(HeaderName::Date).map(|h| h.value),
        Some("Fri, 01 Jan 2010 16:00:00 EST")
    );
}

#[test]
fn s3_1_2_13_regbadct() {
    expect("regbadct", msg!("regbadct"), Expect::Reject(400));
}

#[test]
fn s3_1_2_14_badaspec() {
    expect("badaspec", msg!("badaspec"), Expect::Reject(400));
}

#[test]
fn s3_1_2_15_baddn() {
    expect("baddn", msg!("baddn"), Expect::Reject(400));
}

#[test]
fn s3_1_2_16_badvers() {
    expect("badvers", msg!("badvers"), Expect::Reject(505));
}

#[test]
fn s3_1_2_17_mismatch01() {
    expect("mismatch01", msg!("mismatch01"), Expect::Reject(400));
}

#[test]
fn s3_1_2_18_mismatch02() {
    expect("mismatch02", msg!("mismatch02"), Expect::Reject(400));
}

#[test]
fn s3_1_2_19_bigcode() {
    expect("bigcode", msg!("bigcode"), Expect::Drop);
}

// ---- 3.2 Transaction layer semantics ---------------------------------------------------

#[test]
fn s3_2_1_badbranch() {
    let m = expect("badbranch", msg!("badbranch"), Expect::Accept).unwrap();
    let via = m.top_via().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bK"));
    assert!(
        !via.has_rfc3261_branch(),
        "the bare cookie is not a transaction id"
    );
}

// ---- 3.3 Application layer semantics ---------------------------------------------------

#[test]
fn s3_3_1_insuf() {
    let m = expect("insuf", msg!("insuf"), Expect::Reject(400)).unwrap();
    assert!(m.from().is_err() && m.to().is_err() && m.call_id().is_err());
}

#[test]
fn s3_3_2_unkscm() {
    expect("unkscm", msg!("unkscm"), Expect::Reject(416));
}

#[test]
fn s3_3_3_novelsc() {
    expect("novelsc", msg!("novelsc"), Expect::Reject(416));
}

#[test]
fn s3_3_4_unksm2() {
    // Well-formed; a registrar refuses the non-SIP address-of-record itself.
    let m = expect("unksm2", msg!("unksm2"), Expect::Accept).unwrap();
    assert_eq!(m.to().unwrap().uri.scheme(), "isbn");
    assert_eq!(m.from().unwrap().uri.scheme(), "http");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert_eq!(
        c[0].uri,
        Uri::Other {
            scheme: "name",
            rest: "John_Smith"
        }
    );
}

#[test]
fn s3_3_5_bext01() {
    let v = common::verdict(msg!("bext01"));
    let sipcraft_sip::Verdict::Reject { rejection, .. } = v else {
        panic!("bext01")
    };
    assert_eq!(rejection.status, 420);
    assert_eq!(
        rejection.unsupported,
        [
            "nothingSupportsThis",
            "nothingSupportsThisEither",
            "noProxiesSupportThis",
            "norDoAnyProxiesSupportThis"
        ]
    );
    expect("bext01", msg!("bext01"), Expect::Reject(420));
}

#[test]
fn s3_3_6_invut() {
    // 415 is the UAS's answer once it looks at the body; the message itself is fine.
    let m = expect("invut", msg!("invut"), Expect::Accept).unwrap();
    assert!(m
        .content_type()
        .unwrap()
        .unwrap()
        .is("application", "unknownformat"));
}

#[test]
fn s3_3_7_regaut01() {
    let m = expect("regaut01", msg!("regaut01"), Expect::Accept).unwrap();
    let c = m.credentials(false).next().unwrap().unwrap();
    assert_eq!(c.scheme, "NoOneKnowsThisScheme");
    assert!(c.digest().is_none());
}

#[test]
fn s3_3_8_multi01() {
    expect("multi01", msg!("multi01"), Expect::Reject(400));
}

#[test]
fn s3_3_9_mcl01() {
    expect("mcl01", msg!("mcl01"), Expect::Reject(400));
}

#[test]
fn s3_3_10_bcast() {
    let m = expect("bcast", msg!("bcast"), Expect::Accept).unwrap();
    assert_eq!(
        m.vias().nth(1).unwrap().unwrap().host.to_string(),
        "255.255.255.255"
    );
}

#[test]
fn s3_3_11_zeromf() {
    let m = expect("zeromf", msg!("zeromf"), Expect::Accept).unwrap();
    assert_eq!(m.max_forwards(), Ok(Some(0)));
    assert_eq!(
        Rewriter::new(&m).decrement_max_forwards(),
        Err(RewriteError::TooManyHops)
    );
}

#[test]
fn s3_3_12_cparam01() {
    let m = expect("cparam01", msg!("cparam01"), Expect::Accept).unwrap();
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert!(c[0].params.contains("unknownparam"), "a header parameter");
    assert!(sip_uri(&c[0].uri).params.is_empty());
}

#[test]
fn s3_3_13_cparam02() {
    let m = expect("cparam02", msg!("cparam02"), Expect::Accept).unwrap();
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert!(c[0].params.is_empty());
    assert!(
        sip_uri(&c[0].uri).params.contains("unknownparam"),
        "a URI parameter"
    );
}

#[test]
fn s3_3_14_regescrt() {
    let m = expect("regescrt", msg!("regescrt"), Expect::Accept).unwrap();
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("contact")
    };
    assert_eq!(
        sip_uri(&c[0].uri).headers,
        Some("Route=%3Csip:sip.example.com%3E")
    );
}

#[test]
fn s3_3_15_sdp01() {
    let m = expect("sdp01", msg!("sdp01"), Expect::Accept).unwrap();
    assert_eq!(
        m.header(HeaderName::Accept).map(|h| h.value),
        Some("text/nobodyKnowsThis")
    );
}

// ---- 3.4 Backward compatibility --------------------------------------------------------

#[test]
fn s3_4_1_inv2543() {
    let m = expect("inv2543", msg!("inv2543"), Expect::Accept).unwrap();
    assert_eq!(m.max_forwards(), Ok(None));
    assert_eq!(m.content_length(), Ok(None));
    assert!(m.top_via().unwrap().branch().is_none());
    assert!(m.from().unwrap().tag().is_none());
    assert!(m.body().starts_with(b"v=0\r\n") && m.body().ends_with(b"RTP/AVP 0\r\n"));
}

// ---- The archive's extra file ----------------------------------------------------------

#[test]
fn archive_test_dat() {
    // Not described by any section: a Request-Line without SIP-Version. Nothing to answer.
    expect("test", msg!("test"), Expect::Drop);
}
