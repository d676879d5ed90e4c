//! One call attempt to an extension with no registration, as a phone makes it over UDP:
//! INVITE, 407, ACK, INVITE with credentials, 480, ACK. The proxy records each attempt
//! (a call record for the dbagent).

use std::time::Duration;

use super::postgres::Postgres;
use super::sip::{Phone, Response};
use super::{wait_for, Server};

/// Call attempts from one caller (password `caller`) to one extension nobody registers,
/// both in PostgreSQL, numbered across a test.
pub struct Attempts<'a> {
    server: &'a Server,
    caller: &'a str,
    callee: &'a str,
    made: u32,
}

impl<'a> Attempts<'a> {
    /// Puts both extensions in PostgreSQL (once its schema is there) and waits until the
    /// server publishes them.
    pub fn publish(server: &'a Server, pg: &Postgres, caller: &'a str, callee: &'a str) -> Self {
        pg.wait_schema();
        pg.psql(&format!(
            "INSERT INTO extensions (number, password) VALUES ('{caller}', 'caller'), \
             ('{callee}', 'x')"
        ));
        wait_for("extensions published", Duration::from_secs(5), || {
            (server.status()["extensions"] == 2u64).then_some(())
        });
        Attempts {
            server,
            caller,
            callee,
            made: 0,
        }
    }

    /// Makes `count` more attempts, one after the other.
    pub fn make(&mut self, count: u32) {
        for _ in 0..count {
            self.made += 1;
            call(self.server, self.caller, "caller", self.callee, self.made);
        }
    }
}

/// The call records in PostgreSQL.
pub fn records(pg: &Postgres) -> i64 {
    pg.count("SELECT count(*) FROM call_records")
}

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
pub fn call(server: &Server, caller: &str, pw: &str, callee: &str, n: u32) {
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
