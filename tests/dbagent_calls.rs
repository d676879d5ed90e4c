//! Call records reach PostgreSQL exactly once, including those made while it was killed and
//! while it was hung (SIGSTOP). The calls are to an extension with no registration: the
//! proxy authenticates the caller, answers 480 and records the attempt.

mod common;

use std::time::Duration;

use common::postgres::{dbagent_alarm, log_tail, setup_with, wait_or_report, Postgres};
use common::sip::{Phone, Response};
use common::{wait_for, Server};

/// The next final response.
fn final_response(phone: &mut Phone) -> Response {
    loop {
        let r = phone
            .recv(Duration::from_secs(5))
            .expect("a response within 5 s");
        if r.status >= 200 {
            return r;
        }
    }
}

fn invite_text(phone: &Phone, callee: &str, cseq: u32, branch: &str, auth: &str) -> String {
    format!(
        "INVITE sip:{callee}@{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{domain}>;tag=c{port}\r\n\
         To: <sip:{callee}@{domain}>\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq} INVITE\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         {auth}Content-Length: 0\r\n\r\n",
        domain = phone.domain,
        local = phone.local,
        user = phone.user,
        port = phone.local.port(),
        cid = phone.call_id,
    )
}

fn ack_text(phone: &Phone, callee: &str, cseq: u32, branch: &str, to: &str) -> String {
    format!(
        "ACK sip:{callee}@{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{domain}>;tag=c{port}\r\n\
         To: {to}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq} ACK\r\n\
         Content-Length: 0\r\n\r\n",
        domain = phone.domain,
        local = phone.local,
        user = phone.user,
        port = phone.local.port(),
        cid = phone.call_id,
    )
}

/// One call attempt from `caller` to `callee` (unregistered): 407, then 480.
fn call(server: &Server, caller: &str, pw: &str, callee: &str, n: u32) {
    let mut phone = Phone::udp(server.udp_addr(), caller, pw);
    phone.call_id = format!("call-{caller}-{n}-{}@test", phone.local.port());
    let b1 = format!("{n}a");
    phone.send(&invite_text(&phone, callee, 1, &b1, ""));
    let challenge = final_response(&mut phone);
    assert_eq!(challenge.status, 407, "{}", challenge.text);
    let to = challenge.header("To").unwrap();
    phone.send(&ack_text(&phone, callee, 1, &b1, &to));
    let value = challenge.header("Proxy-Authenticate").unwrap();
    let uri = format!("sip:{callee}@{}", phone.domain);
    let auth = format!(
        "Proxy-Authorization: {}\r\n",
        phone.authorization(&value, "INVITE", &uri, 1)
    );
    let b2 = format!("{n}b");
    phone.send(&invite_text(&phone, callee, 2, &b2, &auth));
    let r = final_response(&mut phone);
    assert_eq!(r.status, 480, "{}", r.text);
    let to = r.header("To").unwrap();
    phone.send(&ack_text(&phone, callee, 2, &b2, &to));
}

fn records(pg: &Postgres) -> i64 {
    pg.count("SELECT count(*) FROM call_records")
}

#[test]
fn call_records_made_during_outages_reach_postgres_exactly_once() {
    let mut pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3501', 'caller'), ('3502', 'x')");
    wait_for("extensions published", Duration::from_secs(5), || {
        (server.status()["extensions"] == 2u64).then_some(())
    });
    let report = || log_tail(&server, 40);
    let mut n = 0;
    for _ in 0..2 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
    wait_or_report("records while up", Duration::from_secs(5), report, || {
        (records(&pg) == 2).then_some(())
    });

    pg.kill();
    wait_for("database alarm", Duration::from_secs(10), || {
        dbagent_alarm(&server).filter(|a| a.contains("database unreachable"))
    });
    for _ in 0..10 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
    pg.start_again();
    wait_or_report(
        "records after the kill",
        Duration::from_secs(15),
        report,
        || (records(&pg) == 12).then_some(()),
    );

    wait_for("alarm cleared", Duration::from_secs(10), || {
        dbagent_alarm(&server).is_none().then_some(())
    });
    pg.pause();
    wait_for("database alarm while hung", Duration::from_secs(10), || {
        dbagent_alarm(&server).filter(|a| a.contains("database unreachable"))
    });
    for _ in 0..10 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
    pg.resume();
    wait_or_report(
        "records after the hang",
        Duration::from_secs(15),
        report,
        || (records(&pg) == 22).then_some(()),
    );
    let summary = pg.psql(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT call_id), min(final_status), \
         max(final_status), min(caller), max(callee) FROM call_records",
    );
    assert_eq!(summary, "22|22|22|480|480|3501|3502");
}
