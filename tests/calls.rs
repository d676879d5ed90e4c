//! Calls between extensions through sipcraft's stateful proxy (issue 4), one behaviour per
//! test: cancel while ringing, forking, 404 / 480 / 408, busy and decline passed through.
//! The load tests (1000 calls per transport pair, kill -9 under load) are in calls_load.rs.
//!
//! Callers and callees are SIPp (tests/sipp/uac_*.xml, uas_*.xml, see tests/common/sipp.rs)
//! or, where a test must see and order every message, the small endpoint below: it speaks
//! UDP or TCP from its own socket, registers with digest, and reads requests as well as
//! responses. Everything on loopback; every wait has a deadline.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sip::{digest_authorization, param};
use common::sipp::{self, SippCmd, Transport};
use common::{Server, Setup};

/// How long one expected message may take.
const WAIT: Duration = Duration::from_secs(5);
/// Over UDP a server transaction outlives its call by Timer J (64*T1 = 32 s).
const IDLE_UDP: Duration = Duration::from_secs(40);
/// Over TCP the transaction timers are zero: transactions end with the call.
const IDLE_TCP: Duration = Duration::from_secs(5);

fn setup(extra: &str) -> Setup {
    Setup {
        // Extensions 1001..=1003 with passwords pw1001..pw1003, 2 UDP workers, 1 TCP worker.
        extra: format!("[security]\ntrusted_ips = [\"127.0.0.0/8\"]\n{extra}"),
        ..Setup::default()
    }
}

fn caller_line(caller: &str, callee: &str) -> String {
    format!("{caller};[authentication username={caller} password=pw{caller}];{callee}")
}

// ---------------------------------------------------------------------------------------
// A SIP message and an endpoint that sends and receives any of them.

#[derive(Clone, Debug)]
struct Msg {
    text: String,
}

/// Full header name for the compact forms (RFC 3261 §7.3.3).
fn long_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        _ => lower,
    }
}

/// Splits a header value at the commas outside quotes and angle brackets.
fn split_list(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut angle) = (Vec::new(), String::new(), false, false);
    for ch in value.chars() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

impl Msg {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    fn method(&self) -> Option<&str> {
        let line = self.first_line();
        (!line.starts_with("SIP/2.0")).then(|| line.split(' ').next().unwrap_or(""))
    }

    fn status(&self) -> Option<u16> {
        self.first_line()
            .strip_prefix("SIP/2.0 ")?
            .get(..3)?
            .parse()
            .ok()
    }

    fn head(&self) -> &str {
        self.text.split("\r\n\r\n").next().unwrap_or("")
    }

    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The header lines (name as written, value), in order.
    fn lines(&self) -> Vec<(String, String)> {
        self.head()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_owned(), v.trim().to_owned()))
            })
            .collect()
    }

    /// Every value of a header, comma lists split (Via, Record-Route, Route ...).
    fn values(&self, name: &str) -> Vec<String> {
        let want = long_name(name);
        self.lines()
            .into_iter()
            .filter(|(n, _)| long_name(n) == want)
            .flat_map(|(_, v)| split_list(&v))
            .collect()
    }

    /// Every value of a header, one per header line (for WWW- and Proxy-Authenticate,
    /// whose values hold commas).
    fn raw_values(&self, name: &str) -> Vec<String> {
        let want = long_name(name);
        self.lines()
            .into_iter()
            .filter(|(n, _)| long_name(n) == want)
            .map(|(_, v)| v)
            .collect()
    }

    fn header(&self, name: &str) -> Option<String> {
        let want = long_name(name);
        self.lines()
            .into_iter()
            .find(|(n, _)| long_name(n) == want)
            .map(|(_, v)| v)
    }

    fn call_id(&self) -> String {
        self.header("Call-ID").unwrap_or_default()
    }

    fn cseq(&self) -> (u32, String) {
        let v = self.header("CSeq").unwrap_or_default();
        let mut it = v.split_whitespace();
        let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, it.next().unwrap_or("").to_owned())
    }

    fn branch(&self) -> String {
        self.values("Via")
            .first()
            .and_then(|v| uri_param(v, "branch"))
            .unwrap_or_default()
    }

    fn to_tag(&self) -> Option<String> {
        uri_param(&self.header("To")?, "tag")
    }

    /// A key that a retransmission of this message shares.
    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{:?}|{:?}",
            self.first_line(),
            self.call_id(),
            self.branch(),
            self.cseq(),
            self.to_tag()
        )
    }
}

/// A `;name=value` parameter of a header value (outside its `<...>`).
fn uri_param(value: &str, name: &str) -> Option<String> {
    let tail = value.rsplit_once('>').map_or(value, |(_, t)| t);
    tail.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The URI inside `<...>`, or the value itself.
fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

enum Wire {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

/// One phone: its own socket, one extension, a trace of everything it sent and received.
struct Endpoint {
    name: String,
    wire: Wire,
    local: SocketAddr,
    server: SocketAddr,
    user: String,
    password: String,
    seq: u32,
    seen: BTreeSet<String>,
    trace: Vec<String>,
    /// The Contact this endpoint puts in its 1xx/2xx to an INVITE, when it is not the one
    /// it registered (phones do that; SIPp's is `<sip:IP:PORT;transport=TCP>`).
    dialog_contact: Option<String>,
}

/// An INVITE client transaction of a caller (the authenticated INVITE).
struct Invite {
    /// The Proxy-Authorization line it carried (with CRLF), repeated on its ACK for a 2xx
    /// (§13.2.2.4); empty when it had none.
    auth: String,
    number: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    branch: String,
    sent_at: Instant,
}

/// A confirmed dialog, from the caller's side.
struct Dialog {
    call_id: String,
    from_tag: String,
    to: String,
    request_uri: String,
    routes: Vec<String>,
}

const SDP: &str = "v=0\r\no=test 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                   t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

impl Endpoint {
    fn udp(name: &str, server: SocketAddr, user: &str) -> Endpoint {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        Endpoint::new(name, Wire::Udp(sock), local, server, user)
    }

    fn tcp(name: &str, server: SocketAddr, user: &str) -> Endpoint {
        let stream = TcpStream::connect(server).unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        Endpoint::new(name, Wire::Tcp(stream, Vec::new()), local, server, user)
    }

    fn new(name: &str, wire: Wire, local: SocketAddr, server: SocketAddr, user: &str) -> Self {
        Endpoint {
            name: name.to_owned(),
            wire,
            local,
            server,
            user: user.to_owned(),
            password: format!("pw{user}"),
            seq: 0,
            seen: BTreeSet::new(),
            trace: Vec::new(),
            dialog_contact: None,
        }
    }

    fn transport(&self) -> &'static str {
        match self.wire {
            Wire::Udp(_) => "UDP",
            Wire::Tcp(..) => "TCP",
        }
    }

    fn contact(&self) -> String {
        format!(
            "<sip:{}@{};transport={}>",
            self.user,
            self.local,
            self.transport().to_lowercase()
        )
    }

    fn next(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn new_branch(&mut self) -> String {
        let n = self.next();
        format!("z9hG4bK-{}-{}-{n}", self.name, self.local.port())
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.transport(),
            self.local
        )
    }

    fn send(&mut self, text: &str) {
        self.trace.push(format!(">>> {} sent:\n{text}", self.name));
        match &mut self.wire {
            Wire::Udp(s) => {
                s.send_to(text.as_bytes(), self.server).unwrap();
            }
            Wire::Tcp(s, _) => s.write_all(text.as_bytes()).unwrap(),
        }
    }

    /// The next message of any kind, or None after `within`.
    fn recv(&mut self, within: Duration) -> Option<Msg> {
        let deadline = Instant::now() + within;
        let text = match &mut self.wire {
            Wire::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let (n, _) = s.recv_from(&mut buf).ok()?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            Wire::Tcp(s, pending) => loop {
                // Keep-alive CRLFs between messages.
                while pending.starts_with(b"\r\n") {
                    pending.drain(..2);
                }
                if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            (long_name(n) == "content-length").then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0usize);
                    if pending.len() >= end + 4 + len {
                        let msg: Vec<u8> = pending.drain(..end + 4 + len).collect();
                        break String::from_utf8_lossy(&msg).into_owned();
                    }
                }
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut chunk = [0u8; 16384];
                match s.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    Err(_) => return None,
                }
            },
        };
        self.trace
            .push(format!("<<< {} received:\n{text}", self.name));
        Some(Msg { text })
    }

    fn dump(&self) -> String {
        self.trace.join("\n")
    }

    /// The next message for which `want` holds. Retransmissions of messages already seen are
    /// skipped, and so is a `100 Trying` when `want` does not ask for one (it is hop by hop
    /// and optional); anything else is a failure, reported with this endpoint's trace.
    fn expect_within(&mut self, within: Duration, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.recv(left) else {
                panic!(
                    "{}: no {what} within {within:?}\n--- trace of {}:\n{}",
                    self.name,
                    self.name,
                    self.dump()
                );
            };
            if want(&msg) {
                self.seen.insert(msg.key());
                return msg;
            }
            if !self.seen.insert(msg.key()) || msg.status() == Some(100) {
                continue;
            }
            panic!(
                "{}: expected {what}, got:\n{}\n--- trace of {}:\n{}",
                self.name,
                msg.text,
                self.name,
                self.dump()
            );
        }
    }

    /// Whether a `100 Trying` to the INVITE `call_id` / `cseq` has been received so far.
    fn got_trying(&self, call_id: &str, cseq: u32) -> bool {
        self.trace
            .iter()
            .filter_map(|t| t.strip_prefix("<<< "))
            .filter_map(|t| t.split_once('\n'))
            .map(|(_, text)| Msg {
                text: text.to_owned(),
            })
            .any(|m| {
                m.status() == Some(100)
                    && m.call_id() == call_id
                    && m.cseq() == (cseq, "INVITE".to_owned())
            })
    }

    fn expect(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        self.expect_within(WAIT, what, want)
    }

    fn expect_request(&mut self, method: &str) -> Msg {
        self.expect(&format!("a {method}"), |m| m.method() == Some(method))
    }

    /// The ACK for this endpoint's 2xx to `inv` and the BYE that ends the call, the BYE
    /// answered 200; returns the ACK. The caller sends them back to back over UDP, and two
    /// workers reading the shared socket may forward them in either order (as UDP may
    /// deliver them), so either may come first.
    fn take_ack_and_bye(&mut self, inv: &Msg) -> Msg {
        let first = self.expect("the ACK or the BYE", |m| {
            matches!(m.method(), Some("ACK" | "BYE"))
        });
        assert_eq!(first.call_id(), inv.call_id(), "{}", self.dump());
        let ack = if first.method() == Some("ACK") {
            let bye = self.expect_request("BYE");
            self.reply(&bye, 200, "OK", None);
            first
        } else {
            self.reply(&first, 200, "OK", None);
            self.expect_request("ACK")
        };
        assert_eq!(ack.call_id(), inv.call_id(), "{}", self.dump());
        ack
    }

    // --- as a callee -------------------------------------------------------------------

    /// REGISTER for an hour, which must succeed.
    fn register_ok(&mut self) {
        assert_eq!(self.register(3600).status(), Some(200), "{}", self.dump());
    }

    /// REGISTER this endpoint's contact for `expires` seconds, answering the 401 with MD5.
    fn register(&mut self, expires: u32) -> Msg {
        let call_id = format!("reg-{}-{}", self.name, self.local.port());
        let mut auth = String::new();
        for _ in 0..2 {
            let cseq = self.next();
            let branch = self.new_branch();
            let text = format!(
                "REGISTER sip:pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
                 From: <sip:{user}@pbx.test>;tag=r{port}\r\nTo: <sip:{user}@pbx.test>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n\
                 Expires: {expires}\r\n{auth}Content-Length: 0\r\n\r\n",
                via = self.via(&branch),
                user = self.user,
                port = self.local.port(),
                contact = self.contact(),
            );
            self.send(&text);
            let resp = self.expect("a final response to REGISTER", |m| {
                m.status().is_some_and(|s| s >= 200) && m.cseq().1 == "REGISTER"
            });
            if resp.status() != Some(401) {
                return resp;
            }
            let challenge = resp
                .raw_values("WWW-Authenticate")
                .into_iter()
                .find(|c| param(c, "algorithm").is_none_or(|a| a == "MD5"))
                .expect("an MD5 challenge");
            auth = format!(
                "Authorization: {}\r\n",
                digest_authorization(
                    &challenge,
                    &self.user,
                    &self.password,
                    "REGISTER",
                    "sip:pbx.test",
                    1
                )
            );
        }
        panic!("{}: REGISTER challenged twice\n{}", self.name, self.dump());
    }

    /// Answers `req`: its Via list, From, To (with `to_tag` added when it has none),
    /// Call-ID, CSeq; Record-Route and Contact on 1xx/2xx to an INVITE; an SDP on 2xx.
    fn reply(&mut self, req: &Msg, code: u16, reason: &str, to_tag: Option<&str>) {
        let invite = req.method() == Some("INVITE");
        let mut text = format!("SIP/2.0 {code} {reason}\r\n");
        for (name, value) in req.lines() {
            match long_name(&name).as_str() {
                "via" | "from" | "call-id" | "cseq" => text += &format!("{name}: {value}\r\n"),
                "record-route" if invite && code > 100 && code < 300 => {
                    text += &format!("{name}: {value}\r\n")
                }
                "to" => {
                    let tag = match to_tag {
                        Some(t) if uri_param(&value, "tag").is_none() && code > 100 => {
                            format!(";tag={t}")
                        }
                        _ => String::new(),
                    };
                    text += &format!("{name}: {value}{tag}\r\n");
                }
                _ => {}
            }
        }
        if invite && code > 100 && code < 300 {
            let contact = self
                .dialog_contact
                .clone()
                .unwrap_or_else(|| self.contact());
            text += &format!("Contact: {contact}\r\n");
        }
        if invite && (200..300).contains(&code) {
            text += &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                SDP.len()
            );
        } else {
            text += "Content-Length: 0\r\n\r\n";
        }
        self.send(&text);
    }

    // --- as a caller -------------------------------------------------------------------

    fn invite_text(
        &self,
        number: &str,
        call_id: &str,
        tag: &str,
        cseq: u32,
        branch: &str,
    ) -> String {
        format!(
            "INVITE sip:{number}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: <sip:{number}@pbx.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
            via = self.via(branch),
            user = self.user,
            contact = self.contact(),
            len = SDP.len(),
        )
    }

    /// INVITE `number`: the first INVITE must be challenged with 407 whose first
    /// Proxy-Authenticate is MD5; it is ACKed, and the INVITE re-sent with
    /// Proxy-Authorization (MD5). Returns that second INVITE's transaction.
    fn call(&mut self, number: &str) -> Invite {
        let n = self.next();
        let call_id = format!("call-{}-{}-{n}@test", self.name, self.local.port());
        let from_tag = format!("f{}", self.next());
        let branch = self.new_branch();
        let text = self.invite_text(number, &call_id, &from_tag, 1, &branch);
        self.send(&text);
        let first = self.expect("a final response to the first INVITE", |m| {
            m.status().is_some_and(|s| s >= 200) && m.call_id() == call_id
        });
        assert_eq!(
            first.status(),
            Some(407),
            "{}: an INVITE from a local extension is challenged with 407\n{}",
            self.name,
            self.dump()
        );
        let challenges = first.raw_values("Proxy-Authenticate");
        assert!(
            challenges
                .first()
                .is_some_and(|c| param(c, "algorithm").is_none_or(|a| a == "MD5")),
            "{}: the first Proxy-Authenticate is MD5 (SIPp 3.6 takes the first): {challenges:?}",
            self.name
        );
        let first_invite = Invite {
            auth: String::new(),
            number: number.to_owned(),
            call_id: call_id.clone(),
            from_tag: from_tag.clone(),
            cseq: 1,
            branch,
            sent_at: Instant::now(),
        };
        self.ack_non2xx(&first_invite, &first);
        let uri = format!("sip:{number}@pbx.test");
        let auth = digest_authorization(
            &challenges[0],
            &self.user,
            &self.password,
            "INVITE",
            &uri,
            1,
        );
        let branch = self.new_branch();
        let auth = format!("Proxy-Authorization: {auth}\r\n");
        let text = self
            .invite_text(number, &call_id, &from_tag, 2, &branch)
            .replacen("Content-Type:", &format!("{auth}Content-Type:"), 1);
        self.send(&text);
        Invite {
            auth,
            number: number.to_owned(),
            call_id,
            from_tag,
            cseq: 2,
            branch,
            sent_at: Instant::now(),
        }
    }

    /// The next response to `inv` (100 Trying skipped).
    fn response(&mut self, inv: &Invite, within: Duration) -> Msg {
        let (call_id, cseq) = (inv.call_id.clone(), inv.cseq);
        self.expect_within(within, "a response to the INVITE", move |m| {
            m.status().is_some_and(|s| s > 100)
                && m.call_id() == call_id
                && m.cseq() == (cseq, "INVITE".to_owned())
        })
    }

    /// The final response to `inv`, after zero or more 180s.
    fn final_response(&mut self, inv: &Invite, within: Duration) -> Msg {
        loop {
            let resp = self.response(inv, within);
            if resp.status().is_some_and(|s| s >= 200) {
                return resp;
            }
        }
    }

    /// ACK for a non-2xx final response: the INVITE's branch, hop by hop (RFC 3261 §17.1.1.3).
    fn ack_non2xx(&mut self, inv: &Invite, resp: &Msg) {
        let text = format!(
            "ACK sip:{number}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            number = inv.number,
            via = self.via(&inv.branch),
            user = self.user,
            tag = inv.from_tag,
            to = resp.header("To").unwrap_or_default(),
            cid = inv.call_id,
            cseq = inv.cseq,
        );
        self.send(&text);
    }

    fn cancel(&mut self, inv: &Invite) {
        let text = format!(
            "CANCEL sip:{number}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: <sip:{number}@pbx.test>\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n",
            number = inv.number,
            via = self.via(&inv.branch),
            user = self.user,
            tag = inv.from_tag,
            cid = inv.call_id,
            cseq = inv.cseq,
        );
        self.send(&text);
    }

    /// The dialog a 2xx makes (RFC 3261 §12.1.2: the route set is the Record-Route list
    /// reversed, the remote target the Contact), and the ACK for that 2xx sent along it.
    fn ack_2xx(&mut self, inv: &Invite, ok: &Msg) -> Dialog {
        let mut routes: Vec<String> = ok.values("Record-Route");
        routes.reverse();
        let target = uri_of(
            &ok.values("Contact")
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("{}: a 2xx without Contact\n{}", self.name, ok.text)),
        );
        let (request_uri, routes) = match routes.first() {
            // A strict router (§12.2.1.1): it becomes the Request-URI, the target goes last.
            Some(first) if uri_param(&uri_of(first), "lr").is_none() && !first.contains(";lr") => {
                let mut rest = routes[1..].to_vec();
                rest.push(format!("<{target}>"));
                (uri_of(first), rest)
            }
            _ => (target, routes),
        };
        let dialog = Dialog {
            call_id: inv.call_id.clone(),
            from_tag: inv.from_tag.clone(),
            to: ok.header("To").unwrap_or_default(),
            request_uri,
            routes,
        };
        let branch = self.new_branch();
        // With the INVITE's credentials, as §13.2.2.4 has it.
        let text = self.in_dialog("ACK", &dialog, inv.cseq, &branch).replacen(
            "Content-Length:",
            &format!("{}Content-Length:", inv.auth),
            1,
        );
        self.send(&text);
        dialog
    }

    fn in_dialog(&self, method: &str, d: &Dialog, cseq: u32, branch: &str) -> String {
        let route = if d.routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", d.routes.join(", "))
        };
        format!(
            "{method} {uri} SIP/2.0\r\n{via}{route}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n",
            uri = d.request_uri,
            via = self.via(branch),
            user = self.user,
            tag = d.from_tag,
            to = d.to,
            cid = d.call_id,
            contact = self.contact(),
        )
    }

    /// BYE along the dialog's route set; returns the final response.
    fn bye(&mut self, d: &Dialog, cseq: u32) -> Msg {
        let branch = self.new_branch();
        let text = self.in_dialog("BYE", d, cseq, &branch);
        self.send(&text);
        let call_id = d.call_id.clone();
        self.expect("the final response to BYE", move |m| {
            m.status().is_some_and(|s| s >= 200) && m.call_id() == call_id && m.cseq().1 == "BYE"
        })
    }
}

/// The checks every INVITE forwarded by sipcraft passes (RFC 3261 §16.6): Max-Forwards
/// decremented, a Record-Route added, sipcraft's own Via on top with an RFC 3261 branch,
/// the caller's Via below it, and the caller's credentials for sipcraft's realm consumed
/// (§22.3: the callee never sees them).
fn assert_forwarded(callee: &Endpoint, inv: &Msg, caller_port: u16) {
    let report = || format!("{}: forwarded INVITE:\n{}", callee.name, inv.text);
    assert_eq!(
        inv.header("Max-Forwards").as_deref(),
        Some("69"),
        "{}",
        report()
    );
    assert!(!inv.values("Record-Route").is_empty(), "{}", report());
    assert!(
        inv.header("Proxy-Authorization").is_none(),
        "the caller's digest for our realm is consumed\n{}",
        report()
    );
    let vias = inv.values("Via");
    assert!(vias.len() >= 2, "{}", report());
    assert!(inv.branch().starts_with("z9hG4bK"), "{}", report());
    assert!(
        vias.iter()
            .skip(1)
            .any(|v| v.contains(&format!(":{caller_port};"))),
        "the caller's Via stays below sipcraft's\n{}",
        report()
    );
}

// ---------------------------------------------------------------------------------------
// SIPp caller and callee.

/// Caller cancels while the callee rings: the caller gets 200 for its CANCEL and 487 for the
/// INVITE (uac_cancel.xml checks both), the callee gets the CANCEL and answers it
/// (uas_noanswer.xml logs CANCELLED), and afterwards no transaction is left alive.
fn cancel_while_ringing(transport: Transport, idle: Duration) {
    let server = Server::start(setup(""));
    let callee = sipp::start_callee(
        "callee",
        server.udp_addr(),
        transport,
        "1002",
        "pw1002",
        "uas_noanswer.xml",
    );
    sipp::wait_bindings(&server, 1);
    let mut caller = SippCmd::new("caller", "uac_cancel.xml", server.udp_addr())
        .transport(transport)
        .inf_line(&caller_line("1001", "1002"))
        .args(&["-m", "3", "-r", "2", "-l", "1"])
        .args(&[
            "-recv_timeout",
            "10000",
            "-timeout",
            "40s",
            "-timeout_error",
        ])
        .run(Duration::from_secs(50));
    sipp::assert_calls(&server, &mut caller, &[&callee], 3);
    let deadline = Instant::now() + WAIT;
    while callee.count_logs("CANCELLED") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        callee.count_logs("CANCELLED"),
        3,
        "the callee got and answered every CANCEL\n{}",
        sipp::failure_report(&server, &caller, &[&callee])
    );
    sipp::wait_idle(&server, idle);
}

#[test]
fn cancel_while_ringing_over_udp() {
    cancel_while_ringing(Transport::Udp, IDLE_UDP);
}

#[test]
fn cancel_while_ringing_over_tcp() {
    cancel_while_ringing(Transport::Tcp, IDLE_TCP);
}

/// Busy passes through: the callee's 486 reaches the caller (uac_busy.xml), the callee gets
/// the ACK for it (uas_busy.xml logs BUSY). Caller on UDP, callee on TCP.
#[test]
fn busy_is_passed_through() {
    let server = Server::start(setup(""));
    let callee = sipp::start_callee(
        "callee",
        server.udp_addr(),
        Transport::Tcp,
        "1002",
        "pw1002",
        "uas_busy.xml",
    );
    sipp::wait_bindings(&server, 1);
    let mut caller = SippCmd::new("caller", "uac_busy.xml", server.udp_addr())
        .transport(Transport::Udp)
        .inf_line(&caller_line("1001", "1002"))
        .args(&["-m", "3", "-r", "5", "-l", "1"])
        .args(&[
            "-recv_timeout",
            "10000",
            "-timeout",
            "30s",
            "-timeout_error",
        ])
        .run(Duration::from_secs(40));
    sipp::assert_calls(&server, &mut caller, &[&callee], 3);
    let deadline = Instant::now() + WAIT;
    while callee.count_logs("BUSY") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        callee.count_logs("BUSY"),
        3,
        "the callee got the ACK for each 486\n{}",
        sipp::failure_report(&server, &caller, &[&callee])
    );
    sipp::wait_idle(&server, IDLE_UDP);
}

// ---------------------------------------------------------------------------------------
// Our own endpoints, where the test orders the messages itself.

/// Forking: 1002 registered twice (one contact over UDP, one over TCP). Both get the INVITE
/// and ring; the caller sees both 180s (two To-tags); only then does one branch answer; its
/// 200 reaches the caller, the ACK and BYE come to it through sipcraft; the other branch gets
/// a CANCEL for its INVITE (same branch, same CSeq number), answers 200 and 487, and gets
/// the ACK for the 487; the caller never sees that 487.
#[test]
fn forked_call_rings_both_first_answer_wins() {
    let server = Server::start(setup(""));
    let mut a = Endpoint::udp("callee-a", server.udp_addr(), "1002");
    let mut b = Endpoint::tcp("callee-b", server.udp_addr(), "1002");
    a.register_ok();
    b.register_ok();
    sipp::wait_bindings(&server, 2);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");
    let caller_port = caller.local.port();
    let (answer_tx, answer_rx) = mpsc::channel::<()>();

    std::thread::scope(|s| {
        let callee_a = s.spawn(move || {
            let inv = a.expect_request("INVITE");
            assert_forwarded(&a, &inv, caller_port);
            assert_eq!(inv.body(), SDP, "the offer arrives intact\n{}", a.dump());
            a.reply(&inv, 100, "Trying", None);
            a.reply(&inv, 180, "Ringing", Some("tag-a"));
            answer_rx
                .recv_timeout(WAIT)
                .expect("the caller saw both branches ring");
            a.reply(&inv, 200, "OK", Some("tag-a"));
            let ack = a.take_ack_and_bye(&inv);
            assert!(
                ack.header("Proxy-Authorization").is_none(),
                "the caller's digest on the ACK is consumed too\n{}",
                a.dump()
            );
            a
        });
        let callee_b = s.spawn(move || {
            let inv = b.expect_request("INVITE");
            assert_forwarded(&b, &inv, caller_port);
            b.reply(&inv, 100, "Trying", None);
            b.reply(&inv, 180, "Ringing", Some("tag-b"));
            let cancel = b.expect_request("CANCEL");
            assert_eq!(
                cancel.branch(),
                inv.branch(),
                "CANCEL matches the INVITE\n{}",
                b.dump()
            );
            assert_eq!(cancel.cseq().0, inv.cseq().0, "{}", b.dump());
            assert_eq!(cancel.call_id(), inv.call_id(), "{}", b.dump());
            b.reply(&cancel, 200, "OK", Some("tag-b"));
            b.reply(&inv, 487, "Request Terminated", Some("tag-b"));
            let ack = b.expect_request("ACK");
            assert_eq!(
                ack.branch(),
                inv.branch(),
                "hop-by-hop ACK for the 487\n{}",
                b.dump()
            );
            b
        });

        let inv = caller.call("1002");
        let mut tags = BTreeSet::new();
        let ok = loop {
            let resp = caller.response(&inv, WAIT);
            match resp.status() {
                Some(180) => {
                    tags.insert(resp.to_tag().unwrap_or_default());
                    if tags.len() == 2 {
                        answer_tx.send(()).unwrap();
                    }
                }
                Some(200) => break resp,
                other => panic!("caller: unexpected {other:?}\n{}", caller.dump()),
            }
        };
        assert_eq!(
            tags,
            BTreeSet::from(["tag-a".to_owned(), "tag-b".to_owned()]),
            "both branches rang\n{}",
            caller.dump()
        );
        assert_eq!(ok.to_tag().as_deref(), Some("tag-a"), "{}", caller.dump());
        assert_eq!(
            ok.body(),
            SDP,
            "the answer arrives intact\n{}",
            caller.dump()
        );
        assert!(
            caller.got_trying(&inv.call_id, inv.cseq) && !caller.got_trying(&inv.call_id, 1),
            "a 100 Trying to the forwarded INVITE, none to the challenged one\n{}",
            caller.dump()
        );
        let dialog = caller.ack_2xx(&inv, &ok);
        let bye = caller.bye(&dialog, inv.cseq + 1);
        assert_eq!(bye.status(), Some(200), "{}", caller.dump());
        let a = callee_a.join().expect("callee a");
        let b = callee_b.join().expect("callee b");
        drop((a, b));
    });
    sipp::wait_idle(&server, IDLE_UDP);
}

/// ACK and BYE reach a callee registered over TCP: the caller (UDP) sends them along the
/// Record-Route to sipcraft, with the callee's 2xx Contact as Request-URI; sipcraft sends
/// them down the callee's own connection (the flow its REGISTER came in on).
/// `same_contact`: the 2xx carries the Contact the callee registered; otherwise the one
/// SIPp sends (`<sip:127.0.0.1:PORT;transport=TCP>`: no user part), the same address and
/// port as that connection, so the connection is the one to reuse (RFC 3261 §18.1.1).
fn in_dialog_requests_reach_a_tcp_callee(same_contact: bool) {
    let server = Server::start(setup(""));
    let mut callee = Endpoint::tcp("callee", server.udp_addr(), "1002");
    if !same_contact {
        callee.dialog_contact = Some(format!("<sip:{};transport=TCP>", callee.local));
    }
    callee.register_ok();
    sipp::wait_bindings(&server, 1);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");
    std::thread::scope(|s| {
        let answering = s.spawn(move || {
            let inv = callee.expect_request("INVITE");
            callee.reply(&inv, 180, "Ringing", Some("tag-t"));
            callee.reply(&inv, 200, "OK", Some("tag-t"));
            callee.take_ack_and_bye(&inv);
        });
        let inv = caller.call("1002");
        let ok = caller.final_response(&inv, WAIT);
        assert_eq!(ok.status(), Some(200), "{}", caller.dump());
        let dialog = caller.ack_2xx(&inv, &ok);
        let bye = caller.bye(&dialog, inv.cseq + 1);
        assert_eq!(bye.status(), Some(200), "{}", caller.dump());
        answering.join().expect("callee");
    });
    sipp::wait_idle(&server, IDLE_UDP);
}

#[test]
fn in_dialog_requests_reach_a_tcp_callee_at_its_registered_contact() {
    in_dialog_requests_reach_a_tcp_callee(true);
}

#[test]
fn in_dialog_requests_reach_a_tcp_callee_at_another_contact() {
    in_dialog_requests_reach_a_tcp_callee(false);
}

/// The caller cancels a forked call while both branches ring: 200 for the CANCEL, 487 for
/// the INVITE, and each branch gets a CANCEL for its own INVITE and the ACK for its 487.
#[test]
fn cancel_reaches_every_branch_of_a_forked_call() {
    let server = Server::start(setup(""));
    let mut a = Endpoint::udp("callee-a", server.udp_addr(), "1002");
    let mut b = Endpoint::tcp("callee-b", server.udp_addr(), "1002");
    a.register_ok();
    b.register_ok();
    sipp::wait_bindings(&server, 2);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");

    std::thread::scope(|s| {
        let branches: Vec<_> = [(a, "tag-a"), (b, "tag-b")]
            .into_iter()
            .map(|(mut callee, tag)| {
                s.spawn(move || {
                    let inv = callee.expect_request("INVITE");
                    callee.reply(&inv, 180, "Ringing", Some(tag));
                    let cancel = callee.expect_request("CANCEL");
                    assert_eq!(cancel.branch(), inv.branch(), "{}", callee.dump());
                    callee.reply(&cancel, 200, "OK", Some(tag));
                    callee.reply(&inv, 487, "Request Terminated", Some(tag));
                    let ack = callee.expect_request("ACK");
                    assert_eq!(ack.branch(), inv.branch(), "{}", callee.dump());
                })
            })
            .collect();
        let inv = caller.call("1002");
        let mut tags = BTreeSet::new();
        while tags.len() < 2 {
            let ring = caller.response(&inv, WAIT);
            assert_eq!(ring.status(), Some(180), "{}", caller.dump());
            tags.insert(ring.to_tag().unwrap_or_default());
        }
        caller.cancel(&inv);
        // The 200 for the CANCEL and the 487 for the INVITE, in either order.
        let (mut cancel_ok, mut terminated) = (None, None);
        while cancel_ok.is_none() || terminated.is_none() {
            let call_id = inv.call_id.clone();
            let m = caller.expect("200 for the CANCEL and 487 for the INVITE", move |m| {
                m.call_id() == call_id && m.status().is_some_and(|s| s >= 200)
            });
            match m.cseq().1.as_str() {
                "CANCEL" if cancel_ok.is_none() => cancel_ok = m.status(),
                "INVITE" if terminated.is_none() => terminated = Some(m),
                _ => panic!("caller: unexpected\n{}\n{}", m.text, caller.dump()),
            }
        }
        assert_eq!(cancel_ok, Some(200), "{}", caller.dump());
        let resp = terminated.unwrap();
        assert_eq!(resp.status(), Some(487), "{}", caller.dump());
        caller.ack_non2xx(&inv, &resp);
        for branch in branches {
            branch.join().expect("callee");
        }
    });
    sipp::wait_idle(&server, IDLE_UDP);
}

/// An extension that does not exist: the caller is still challenged first, then gets 404.
#[test]
fn unknown_extension_gets_404() {
    let server = Server::start(setup(""));
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");
    let inv = caller.call("4999");
    let resp = caller.final_response(&inv, WAIT);
    assert_eq!(resp.status(), Some(404), "{}", caller.dump());
    // Answered at once, both times: a 100 would have come before the final response.
    assert!(
        !caller.got_trying(&inv.call_id, 1) && !caller.got_trying(&inv.call_id, 2),
        "no 100 Trying to an INVITE answered at once (407, 404)\n{}",
        caller.dump()
    );
    caller.ack_non2xx(&inv, &resp);
    sipp::wait_idle(&server, IDLE_UDP);
}

/// No branch of a call can start (the worker's transaction table is full): the caller gets
/// 503 at once, not a 408 after the ring timeout. One UDP worker with room for two
/// transactions: the challenged INVITE's and the authorized one's; the callee registers over
/// TCP, so its REGISTERs are the TCP worker's.
#[test]
fn a_call_no_branch_can_start_gets_503_at_once() {
    let server = Server::start(Setup {
        udp_workers: 1,
        ..setup("[limits]\nmax_transactions = 2\n")
    });
    let mut callee = Endpoint::tcp("callee", server.udp_addr(), "1002");
    callee.register_ok();
    sipp::wait_bindings(&server, 1);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");
    let inv = caller.call("1002");
    let resp = caller.final_response(&inv, WAIT);
    assert_eq!(resp.status(), Some(503), "{}", caller.dump());
    assert!(
        !caller.got_trying(&inv.call_id, inv.cseq),
        "a 100 before the 503\n{}",
        caller.dump()
    );
    caller.ack_non2xx(&inv, &resp);
    assert!(
        callee.recv(Duration::from_millis(200)).is_none(),
        "no INVITE reached the callee\n{}",
        callee.dump()
    );
}

/// An extension that registered and then removed its only binding: 480.
#[test]
fn extension_without_binding_gets_480() {
    let server = Server::start(setup(""));
    let mut callee = Endpoint::udp("callee", server.udp_addr(), "1003");
    callee.register_ok();
    sipp::wait_bindings(&server, 1);
    assert_eq!(callee.register(0).status(), Some(200), "{}", callee.dump());
    sipp::wait_bindings(&server, 0);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");
    let inv = caller.call("1003");
    let resp = caller.final_response(&inv, WAIT);
    assert_eq!(resp.status(), Some(480), "{}", caller.dump());
    caller.ack_non2xx(&inv, &resp);
    sipp::wait_idle(&server, IDLE_UDP);
}

/// Nobody answers within `[proxy] ring_timeout_s` (5 s, the smallest the configuration
/// takes): the ringing branch gets a CANCEL, the caller gets 408 no sooner than the timeout
/// after its INVITE and not much later.
#[test]
fn no_answer_gets_408_after_the_ring_timeout() {
    const RING: Duration = Duration::from_secs(5);
    let server = Server::start(setup("[proxy]\nring_timeout_s = 5\n"));
    let mut callee = Endpoint::udp("callee", server.udp_addr(), "1002");
    callee.register_ok();
    sipp::wait_bindings(&server, 1);
    let mut caller = Endpoint::udp("caller", server.udp_addr(), "1001");

    std::thread::scope(|s| {
        let ringing = s.spawn(move || {
            let inv = callee.expect_request("INVITE");
            callee.reply(&inv, 100, "Trying", None);
            callee.reply(&inv, 180, "Ringing", Some("tag-c"));
            let cancel = callee.expect_within(RING + WAIT, "the CANCEL of the ring timeout", |m| {
                m.method() == Some("CANCEL")
            });
            assert_eq!(cancel.branch(), inv.branch(), "{}", callee.dump());
            callee.reply(&cancel, 200, "OK", Some("tag-c"));
            callee.reply(&inv, 487, "Request Terminated", Some("tag-c"));
            callee.expect_request("ACK");
        });
        let inv = caller.call("1002");
        let ring = caller.response(&inv, WAIT);
        assert_eq!(ring.status(), Some(180), "{}", caller.dump());
        let resp = caller.final_response(&inv, RING + WAIT);
        let after = inv.sent_at.elapsed();
        assert_eq!(resp.status(), Some(408), "{}", caller.dump());
        caller.ack_non2xx(&inv, &resp);
        assert!(
            after >= RING && after < RING + Duration::from_secs(2),
            "408 came {after:?} after the INVITE; the ring timeout is {RING:?}"
        );
        ringing.join().expect("callee");
    });
    sipp::wait_idle(&server, IDLE_UDP);
}

/// Decline passes through: the callee's 603 reaches the caller, the callee gets its ACK.
/// Caller on TCP, callee on UDP.
#[test]
fn decline_is_passed_through() {
    let server = Server::start(setup(""));
    let mut callee = Endpoint::udp("callee", server.udp_addr(), "1002");
    callee.register_ok();
    sipp::wait_bindings(&server, 1);
    let mut caller = Endpoint::tcp("caller", server.udp_addr(), "1001");
    std::thread::scope(|s| {
        let declining = s.spawn(move || {
            let inv = callee.expect_request("INVITE");
            callee.reply(&inv, 180, "Ringing", Some("tag-d"));
            callee.reply(&inv, 603, "Decline", Some("tag-d"));
            let ack = callee.expect_request("ACK");
            assert_eq!(ack.branch(), inv.branch(), "{}", callee.dump());
        });
        let inv = caller.call("1002");
        let resp = caller.final_response(&inv, WAIT);
        assert_eq!(resp.status(), Some(603), "{}", caller.dump());
        caller.ack_non2xx(&inv, &resp);
        declining.join().expect("callee");
    });
    sipp::wait_idle(&server, IDLE_UDP);
}

/// Not a proxy test: checks that the scenarios and the SIPp plumbing work against what
/// sipcraft does today. A SIPp callee registers over UDP and over TCP (its binding shows in
/// ctl status), and the SIPp caller's first INVITE gets a final answer from sipcraft.
#[test]
fn sipp_callee_registers_and_caller_reaches_sipcraft() {
    let server = Server::start(setup(""));
    let udp = sipp::start_callee(
        "callee-udp",
        server.udp_addr(),
        Transport::Udp,
        "1002",
        "pw1002",
        "uas_answer.xml",
    );
    let tcp = sipp::start_callee(
        "callee-tcp",
        server.udp_addr(),
        Transport::Tcp,
        "1003",
        "pw1003",
        "uas_answer.xml",
    );
    sipp::wait_bindings(&server, 2);
    // One call attempt; its outcome depends on the proxy, so only the plumbing is checked:
    // SIPp ran, sent the INVITE and got a final response to it.
    let caller = SippCmd::new("caller", "uac_call_auth.xml", server.udp_addr())
        .inf_line(&caller_line("1001", "1002"))
        .args(&["-m", "1", "-d", "100", "-recv_timeout", "10000"])
        .args(&["-timeout", "20s", "-timeout_error"])
        .run(Duration::from_secs(30));
    let trace = std::fs::read_to_string(caller.path("messages.log")).unwrap_or_default();
    assert!(
        trace.contains("INVITE sip:1002@pbx.test SIP/2.0") && trace.contains("CSeq: 1 INVITE"),
        "{}",
        caller.report()
    );
    assert!(
        trace
            .lines()
            .any(|l| l.starts_with("SIP/2.0 4") || l.starts_with("SIP/2.0 5")),
        "sipcraft answered the first INVITE\n{}\n{trace}",
        caller.report()
    );
    drop((udp, tcp));
}
