//! A SIP user agent for the transport tests: one link to the server over UDP, TCP, TLS, WS
//! or WSS; registers with digest; calls (INVITE with proxy authentication, ACK, CANCEL,
//! BYE) and answers calls; keeps a trace of everything it sent and received, printed when
//! an expectation fails.
//!
//! A WebSocket agent behaves as browser phones do (RFC 7118 §5): its Via host and Contact
//! host are `.invalid` names, reachable only through the connection it registered on.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sip::{digest_authorization, param};
use super::tls::{self, Stream};
use super::ws::{self, WsClient};

/// How long one expected message may take.
pub const WAIT: Duration = Duration::from_secs(5);

pub const SDP: &str = "v=0\r\no=test 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                       t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// One received SIP message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub text: String,
}

impl Msg {
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    pub fn method(&self) -> Option<&str> {
        let line = self.first_line();
        (!line.starts_with("SIP/2.0")).then(|| line.split(' ').next().unwrap_or(""))
    }

    pub fn status(&self) -> Option<u16> {
        self.first_line()
            .strip_prefix("SIP/2.0 ")?
            .get(..3)?
            .parse()
            .ok()
    }

    fn head(&self) -> &str {
        self.text.split("\r\n\r\n").next().unwrap_or("")
    }

    /// Header lines (name, value) in order.
    pub fn lines(&self) -> Vec<(String, String)> {
        self.head()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((long_name(n), v.trim().to_owned()))
            })
            .collect()
    }

    /// Every value of a header, comma lists split (Via, Record-Route ...).
    pub fn values(&self, name: &str) -> Vec<String> {
        let want = long_name(name);
        self.lines()
            .into_iter()
            .filter(|(n, _)| *n == want)
            .flat_map(|(_, v)| split_list(&v))
            .collect()
    }

    /// Whole header lines' values (for challenges, whose values hold commas).
    pub fn raw_values(&self, name: &str) -> Vec<String> {
        let want = long_name(name);
        self.lines()
            .into_iter()
            .filter(|(n, _)| *n == want)
            .map(|(_, v)| v)
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.raw_values(name).into_iter().next()
    }

    pub fn call_id(&self) -> String {
        self.header("Call-ID").unwrap_or_default()
    }

    pub fn cseq(&self) -> (u32, String) {
        let v = self.header("CSeq").unwrap_or_default();
        let mut it = v.split_whitespace();
        let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, it.next().unwrap_or("").to_owned())
    }

    pub fn to_tag(&self) -> Option<String> {
        header_param(&self.header("To")?, "tag")
    }

    /// What a retransmission of this message shares.
    fn key(&self) -> String {
        let branch = self
            .values("Via")
            .first()
            .and_then(|v| header_param(v, "branch"))
            .unwrap_or_default();
        format!(
            "{}|{}|{branch}|{:?}|{:?}",
            self.first_line(),
            self.call_id(),
            self.cseq(),
            self.to_tag()
        )
    }
}

/// Full header name, lower case, for the compact forms (RFC 3261 §7.3.3).
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

/// A `;name=value` parameter of a header value, outside its `<...>`.
pub fn header_param(value: &str, name: &str) -> Option<String> {
    let tail = value.rsplit_once('>').map_or(value, |(_, t)| t);
    tail.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The URI inside `<...>`, or the value itself.
pub fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

/// The agent's link to the server.
pub enum Link {
    Udp(UdpSocket),
    /// TCP or TLS: Content-Length framing.
    Stream(Stream, Vec<u8>),
    Ws(Box<WsClient>),
}

/// A phone.
pub struct Ua {
    pub name: String,
    pub link: Link,
    /// `UDP`, `TCP`, `TLS`, `WS`, `WSS`.
    pub transport: &'static str,
    pub server: SocketAddr,
    pub user: String,
    pub password: String,
    /// The Via sent-by: the socket address, or an `.invalid` name for WebSocket.
    sent_by: String,
    /// The contact URI this agent registers and puts in its dialogs.
    pub contact: String,
    seq: u32,
    seen: BTreeSet<String>,
    trace: Vec<String>,
}

/// An INVITE client transaction: the last INVITE sent.
#[derive(Debug, Clone)]
pub struct Invite {
    pub callee: String,
    pub call_id: String,
    pub from_tag: String,
    pub cseq: u32,
    pub branch: String,
}

/// A confirmed dialog, from either side.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub routes: Vec<String>,
    pub cseq: u32,
}

impl Ua {
    pub fn udp(name: &str, server: SocketAddr, user: &str) -> Ua {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        Ua::new(
            name,
            Link::Udp(sock),
            "UDP",
            local.to_string(),
            server,
            user,
        )
    }

    pub fn tcp(name: &str, server: SocketAddr, user: &str) -> Ua {
        let stream = tls::connect_plain(server).unwrap();
        let local = stream.tcp().local_addr().unwrap();
        let link = Link::Stream(stream, Vec::new());
        Ua::new(name, link, "TCP", local.to_string(), server, user)
    }

    pub fn tls(
        name: &str,
        server: SocketAddr,
        user: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Ua {
        let stream = tls::connect(server, config).expect("tls handshake");
        let local = stream.tcp().local_addr().unwrap();
        let link = Link::Stream(stream, Vec::new());
        Ua::new(name, link, "TLS", local.to_string(), server, user)
    }

    /// A browser-like phone over WebSocket; TLS (wss) when `config` is given.
    pub fn ws(
        name: &str,
        server: SocketAddr,
        user: &str,
        config: Option<Arc<rustls::ClientConfig>>,
    ) -> Ua {
        let secure = config.is_some();
        let stream = match config {
            Some(c) => tls::connect(server, c).expect("tls handshake"),
            None => tls::connect_plain(server).unwrap(),
        };
        let port = stream.tcp().local_addr().unwrap().port();
        let client = ws::upgrade(stream, server, secure, None).expect("websocket upgrade");
        assert_eq!(client.protocol.as_deref(), Some("sip"));
        let transport = if secure { "WSS" } else { "WS" };
        // As JsSIP does: a random user and host under .invalid.
        let host = format!("b{port}x.invalid");
        let mut ua = Ua::new(
            name,
            Link::Ws(Box::new(client)),
            transport,
            host.clone(),
            server,
            user,
        );
        ua.contact = format!("sip:r{port}q@{host};transport=ws");
        ua
    }

    fn new(
        name: &str,
        link: Link,
        transport: &'static str,
        sent_by: String,
        server: SocketAddr,
        user: &str,
    ) -> Ua {
        let contact = format!(
            "sip:{user}@{sent_by};transport={}",
            transport.to_ascii_lowercase()
        );
        Ua {
            name: name.to_owned(),
            link,
            transport,
            server,
            user: user.to_owned(),
            password: format!("pw{user}"),
            sent_by,
            contact,
            seq: 0,
            seen: BTreeSet::new(),
            trace: Vec::new(),
        }
    }

    fn next(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn new_branch(&mut self) -> String {
        let n = self.next();
        format!("z9hG4bK-{}-{n}", self.name)
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.transport, self.sent_by
        )
    }

    pub fn send(&mut self, text: &str) {
        self.trace.push(format!(">>> {} sent:\n{text}", self.name));
        let server = self.server;
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(text.as_bytes(), server).unwrap();
            }
            Link::Stream(s, _) => s.write_all(text.as_bytes()).unwrap(),
            Link::Ws(ws) => ws.send(text).unwrap(),
        }
    }

    /// Sends the last message sent once more, as a retransmission.
    pub fn resend_last(&mut self) {
        let prefix = format!(">>> {} sent:\n", self.name);
        let last = self
            .trace
            .iter()
            .rev()
            .find_map(|t| t.strip_prefix(&prefix))
            .expect("something sent before")
            .to_owned();
        self.send(&last);
    }

    /// The next message of any kind, or None after `within` (or when the link closed).
    pub fn recv(&mut self, within: Duration) -> Option<Msg> {
        let deadline = Instant::now() + within;
        let text = match &mut self.link {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let (n, _) = s.recv_from(&mut buf).ok()?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            Link::Ws(ws) => ws.recv(within)?,
            Link::Stream(s, pending) => loop {
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
                s.set_read_timeout(left);
                let mut chunk = [0u8; 16384];
                match s.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => return None,
                }
            },
        };
        self.trace
            .push(format!("<<< {} received:\n{text}", self.name));
        Some(Msg { text })
    }

    pub fn dump(&self) -> String {
        self.trace.join("\n")
    }

    /// The next message for which `want` holds. Retransmissions of messages already seen and
    /// `100 Trying` (when not asked for) are skipped; anything else fails the test with this
    /// agent's trace.
    pub fn expect(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.recv(left) else {
                panic!(
                    "{}: no {what} within {WAIT:?}\n--- trace of {}:\n{}",
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

    pub fn expect_request(&mut self, method: &str) -> Msg {
        self.expect(&format!("a {method}"), |m| m.method() == Some(method))
    }

    pub fn expect_status(&mut self, status: u16, method: &str) -> Msg {
        self.expect(&format!("{status} to {method}"), |m| {
            m.status() == Some(status) && m.cseq().1 == method
        })
    }

    // --- registration ------------------------------------------------------------------

    /// REGISTER this agent's contact for `expires` seconds, answering the 401 with MD5;
    /// returns the final response.
    pub fn register(&mut self, expires: u32) -> Msg {
        let call_id = format!("reg-{}", self.name);
        let mut auth = String::new();
        for _ in 0..2 {
            let cseq = self.next();
            let branch = self.new_branch();
            let text = format!(
                "REGISTER sip:pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
                 From: <sip:{user}@pbx.test>;tag=r{name}\r\nTo: <sip:{user}@pbx.test>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n\
                 Expires: {expires}\r\n{auth}User-Agent: sipcraft-test-{tp}\r\nContent-Length: 0\r\n\r\n",
                via = self.via(&branch),
                user = self.user,
                name = self.name,
                contact = self.contact,
                tp = self.transport,
            );
            self.send(&text);
            let r = self.expect("a response to REGISTER", |m| {
                m.status().is_some_and(|s| s >= 200) && m.cseq().1 == "REGISTER"
            });
            if r.status() != Some(401) || !auth.is_empty() {
                return r;
            }
            let challenge = r
                .raw_values("WWW-Authenticate")
                .into_iter()
                .find(|c| param(c, "algorithm").as_deref() == Some("MD5"))
                .expect("an MD5 challenge");
            let value = digest_authorization(
                &challenge,
                &self.user,
                &self.password,
                "REGISTER",
                "sip:pbx.test",
                1,
            );
            auth = format!("Authorization: {value}\r\n");
        }
        unreachable!("the second attempt returns")
    }

    // --- as a caller -------------------------------------------------------------------

    fn invite_text(&mut self, inv: &Invite, auth: &str) -> String {
        format!(
            "INVITE sip:{callee}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: <sip:{callee}@pbx.test>\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} INVITE\r\nContact: <{contact}>\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
            callee = inv.callee,
            via = self.via(&inv.branch),
            user = self.user,
            tag = inv.from_tag,
            cid = inv.call_id,
            cseq = inv.cseq,
            contact = self.contact,
            len = SDP.len(),
        )
    }

    /// Calls `callee`: INVITE, ACK for the 407, INVITE with credentials. Returns once the
    /// authenticated INVITE is sent.
    pub fn invite(&mut self, callee: &str) -> Invite {
        let n = self.next();
        let mut inv = Invite {
            callee: callee.to_owned(),
            call_id: format!("call-{}-{n}", self.name),
            from_tag: format!("ft{}{n}", self.name),
            cseq: 1,
            branch: self.new_branch(),
        };
        let text = self.invite_text(&inv, "");
        self.send(&text);
        let challenge = self.expect_status(407, "INVITE");
        self.ack_failure(&inv, &challenge);
        let value = challenge
            .raw_values("Proxy-Authenticate")
            .into_iter()
            .find(|c| param(c, "algorithm").as_deref() == Some("MD5"))
            .expect("an MD5 proxy challenge");
        let uri = format!("sip:{callee}@pbx.test");
        let auth = digest_authorization(&value, &self.user, &self.password, "INVITE", &uri, 1);
        inv.cseq += 1;
        inv.branch = self.new_branch();
        let text = self.invite_text(&inv, &format!("Proxy-Authorization: {auth}\r\n"));
        self.send(&text);
        inv
    }

    /// The ACK for a non-2xx final response (same branch as the INVITE, hop by hop).
    pub fn ack_failure(&mut self, inv: &Invite, response: &Msg) {
        let text = format!(
            "ACK sip:{callee}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            callee = inv.callee,
            via = self.via(&inv.branch),
            user = self.user,
            tag = inv.from_tag,
            to = response.header("To").unwrap_or_default(),
            cid = inv.call_id,
            cseq = inv.cseq,
        );
        self.send(&text);
    }

    /// Waits for the 200 to the INVITE, ACKs it, and returns the dialog.
    pub fn answered(&mut self, inv: &Invite) -> Dialog {
        let ok = self.expect("200 to INVITE", |m| {
            m.status() == Some(200) && m.cseq().1 == "INVITE"
        });
        let mut routes = ok.values("Record-Route");
        routes.reverse();
        let mut dialog = Dialog {
            call_id: inv.call_id.clone(),
            local: format!("<sip:{}@pbx.test>;tag={}", self.user, inv.from_tag),
            remote: ok.header("To").unwrap_or_default(),
            remote_target: uri_of(&ok.header("Contact").expect("Contact in the 200")),
            routes,
            cseq: inv.cseq,
        };
        let text = self.in_dialog_text(&mut dialog, "ACK", Some(inv.cseq));
        self.send(&text);
        dialog
    }

    /// Sends CANCEL for a ringing INVITE; see [`Ua::cancel_done`].
    pub fn cancel(&mut self, inv: &Invite) {
        let text = format!(
            "CANCEL sip:{callee}@pbx.test SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@pbx.test>;tag={tag}\r\nTo: <sip:{callee}@pbx.test>\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n",
            callee = inv.callee,
            via = self.via(&inv.branch),
            user = self.user,
            tag = inv.from_tag,
            cid = inv.call_id,
            cseq = inv.cseq,
        );
        self.send(&text);
    }

    /// After [`Ua::cancel`]: 200 for the CANCEL, 487 for the INVITE (ACKed).
    pub fn cancel_done(&mut self, inv: &Invite) {
        let mut got_200 = false;
        let mut got_487 = None;
        while !got_200 || got_487.is_none() {
            let m = self.expect("200 to CANCEL and 487 to INVITE", |m| {
                matches!(
                    (m.status(), m.cseq().1.as_str()),
                    (Some(200), "CANCEL") | (Some(487), "INVITE") | (Some(180), "INVITE")
                )
            });
            match (m.status(), m.cseq().1.as_str()) {
                (Some(200), _) => got_200 = true,
                (Some(487), _) => got_487 = Some(m),
                _ => {}
            }
        }
        let r = got_487.expect("487");
        self.ack_failure(inv, &r);
    }

    // --- as a callee -------------------------------------------------------------------

    /// A response to `req` with this agent's To tag (for dialog-creating responses) and
    /// Contact, Record-Route copied.
    pub fn respond(&mut self, req: &Msg, status: u16, reason: &str, to_tag: Option<&str>) {
        let mut text = format!("SIP/2.0 {status} {reason}\r\n");
        for (name, value) in req.lines() {
            let copy = match name.as_str() {
                "via" | "from" | "call-id" | "cseq" => true,
                "record-route" => (101..300).contains(&status),
                _ => false,
            };
            if copy {
                text += &format!("{name}: {value}\r\n");
            }
        }
        let to = req.header("To").unwrap_or_default();
        match to_tag {
            Some(tag) if req.to_tag().is_none() => text += &format!("To: {to};tag={tag}\r\n"),
            _ => text += &format!("To: {to}\r\n"),
        }
        if (101..300).contains(&status) && req.method() == Some("INVITE") {
            text += &format!("Contact: <{}>\r\n", self.contact);
        }
        let body = if status == 200 && req.method() == Some("INVITE") {
            SDP
        } else {
            ""
        };
        if !body.is_empty() {
            text += "Content-Type: application/sdp\r\n";
        }
        text += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
        self.send(&text);
    }

    /// Waits for an INVITE and sends 180 Ringing.
    pub fn ringing(&mut self) -> Msg {
        let inv = self.expect_request("INVITE");
        let tag = format!("tt{}", self.name);
        self.respond(&inv, 180, "Ringing", Some(&tag));
        inv
    }

    /// Answers a ringing INVITE with 200 (the caller's ACK is for the test to expect);
    /// returns the dialog.
    pub fn answer(&mut self, inv: &Msg) -> Dialog {
        let tag = format!("tt{}", self.name);
        self.respond(inv, 200, "OK", Some(&tag));
        let to = inv.header("To").unwrap_or_default();
        Dialog {
            call_id: inv.call_id(),
            local: format!("{to};tag={tag}"),
            remote: inv.header("From").unwrap_or_default(),
            remote_target: uri_of(&inv.header("Contact").expect("Contact in the INVITE")),
            routes: inv.values("Record-Route"),
            cseq: 0,
        }
    }

    /// Waits for a CANCEL of a ringing INVITE; answers 200 and 487, takes the ACK.
    pub fn cancelled(&mut self, inv: &Msg) {
        let cancel = self.expect_request("CANCEL");
        self.respond(&cancel, 200, "OK", None);
        let tag = format!("tt{}", self.name);
        self.respond(inv, 487, "Request Terminated", Some(&tag));
        self.expect_request("ACK");
    }

    // --- in a dialog -------------------------------------------------------------------

    fn in_dialog_text(&mut self, d: &mut Dialog, method: &str, cseq: Option<u32>) -> String {
        let cseq = cseq.unwrap_or_else(|| {
            d.cseq += 1;
            d.cseq
        });
        let branch = self.new_branch();
        let route = if d.routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", d.routes.join(", "))
        };
        format!(
            "{method} {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{route}From: {local}\r\n\
             To: {remote}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            target = d.remote_target,
            via = self.via(&branch),
            local = d.local,
            remote = d.remote,
            cid = d.call_id,
        )
    }

    /// Sends BYE in `d`; [`Ua::bye_done`] waits for its final response.
    pub fn bye(&mut self, d: &mut Dialog) {
        let text = self.in_dialog_text(d, "BYE", None);
        self.send(&text);
    }

    /// The final response to the BYE sent.
    pub fn bye_done(&mut self) -> Msg {
        self.expect("a final response to BYE", |m| {
            m.status().is_some_and(|s| s >= 200) && m.cseq().1 == "BYE"
        })
    }

    /// Waits for a BYE and answers 200.
    pub fn take_bye(&mut self) -> Msg {
        let bye = self.expect_request("BYE");
        self.respond(&bye, 200, "OK", None);
        bye
    }
}
