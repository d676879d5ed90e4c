//! Parse throughput on one core: a typical INVITE with SDP and a typical REGISTER with
//! Digest credentials, parsed and then read through the typed accessors a registrar or proxy
//! uses on every message (Via, From, To, Call-ID, CSeq, Contact, Max-Forwards, Expires,
//! Authorization, Content-Length).
//!
//! Run with `cargo bench -p sipcraft-sip --bench parse`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sipcraft_sip::header::Contacts;
use sipcraft_sip::{parse, Limits, Message};

const INVITE: &[u8] = b"INVITE sip:201@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Reception\" <sip:201@pbx.example.com>\r\n\
From: \"Alice Smith\" <sip:101@pbx.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:101@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 227\r\n\
\r\n\
v=0\r\n\
o=- 20518 0 IN IP4 192.0.2.10\r\n\
s=SDP data\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 11424 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

const REGISTER: &[u8] = b"REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:101@pbx.example.com>;tag=456248\r\n\
To: <sip:101@pbx.example.com>\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:101@192.0.2.10:5060;line=vq3q7a>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-0015657A1B2C>\"\r\n\
Authorization: Digest username=\"101\", realm=\"pbx.example.com\", nonce=\"5f7b0c1e9d3a4b2c\", uri=\"sip:pbx.example.com\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001, opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"\r\n\
Expires: 3600\r\n\
Supported: path, outbound\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Length: 0\r\n\
\r\n";

/// Reads every core header through its typed accessor; returns something derived from all
/// of them so nothing is optimised away.
fn typed(m: &Message<'_>) -> usize {
    let mut n = 0;
    for v in m.vias() {
        n += v.map(|v| v.branch().map_or(0, str::len)).unwrap_or(0);
    }
    n += m.from().map(|f| f.tag().map_or(0, str::len)).unwrap_or(0);
    n += m.to().map(|t| usize::from(t.tag().is_none())).unwrap_or(0);
    n += m.call_id().map_or(0, str::len);
    n += m.cseq().map_or(0, |c| c.seq as usize);
    n += match m.contacts() {
        Ok(Contacts::List(l)) => l.len() + l.iter().filter_map(|c| c.expires()).count(),
        _ => 0,
    };
    n += m.max_forwards().ok().flatten().map_or(0, usize::from);
    n += m.expires().ok().flatten().map_or(0, |e| e as usize);
    for d in m.digest_credentials(false).flatten().flatten() {
        n += d.response.map_or(0, |r| r.len());
    }
    n += m.content_length().ok().flatten().unwrap_or(0);
    n
}

/// Iterations per timed round; `SIP_BENCH_ITERS` lowers it for profiling under callgrind.
fn iterations() -> u32 {
    std::env::var("SIP_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000)
}

fn run(name: &str, msg: &[u8]) {
    let limits = Limits::default();
    // Check the work is real before timing it.
    let m = parse(msg, &limits).expect("benchmark message parses");
    assert!(typed(&m) > 0);
    assert!(m.validate(&Default::default()).is_ok() || name == "REGISTER");

    let mut best = f64::MAX;
    for _round in 0..5 {
        let iters = iterations();
        let start = Instant::now();
        let mut acc = 0usize;
        for _ in 0..iters {
            let m = parse(black_box(msg), &limits).expect("parses");
            acc = acc.wrapping_add(typed(&m));
        }
        black_box(acc);
        let per = start.elapsed().as_secs_f64() / f64::from(iters);
        best = best.min(per);
    }
    let parse_only = {
        let iters = iterations();
        let start = Instant::now();
        for _ in 0..iters {
            black_box(
                parse(black_box(msg), &limits)
                    .map(|m| m.headers().len())
                    .ok(),
            );
        }
        start.elapsed().as_secs_f64() / f64::from(iters)
    };
    println!(
        "{name:<9} {:>5} bytes: {:>9.0} msg/s parse+typed ({:.0} ns/msg), {:>9.0} msg/s index only",
        msg.len(),
        1.0 / best,
        best * 1e9,
        1.0 / parse_only
    );
}

fn main() {
    // Let the CPU settle before the first figure.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(if iterations() < 400_000 { 1 } else { 200 }) {
        black_box(parse(black_box(INVITE), &Limits::default()).ok());
    }
    // `SIP_BENCH_ONLY=REGISTER` (or INVITE) runs one message, for profiling.
    let only = std::env::var("SIP_BENCH_ONLY").unwrap_or_default();
    for (name, msg) in [("INVITE", INVITE), ("REGISTER", REGISTER)] {
        if only.is_empty() || only.eq_ignore_ascii_case(name) {
            run(name, msg);
        }
    }
}
