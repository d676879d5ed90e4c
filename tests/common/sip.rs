//! A small SIP client for tests: builds requests, answers digest challenges (MD5 and
//! SHA-256), and reads responses over UDP or TCP from a socket it owns.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// One parsed response, enough for assertions.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub text: String,
}

impl Response {
    pub fn headers(&self, name: &str) -> Vec<String> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// The worker that answered, from the Server header (`sipcraft/VERSION (udp-1)`).
    pub fn worker(&self) -> String {
        let server = self.header("Server").unwrap_or_default();
        server
            .rsplit('(')
            .next()
            .unwrap_or("")
            .trim_end_matches(')')
            .to_owned()
    }
}

enum Wire {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

/// A phone: one local socket, one extension.
pub struct Phone {
    wire: Wire,
    pub local: SocketAddr,
    pub server: SocketAddr,
    pub user: String,
    pub password: String,
    pub domain: String,
    pub call_id: String,
    pub cseq: u32,
    branch_seq: u32,
}

impl Phone {
    pub fn udp(server: SocketAddr, user: &str, password: &str) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        Phone::new(Wire::Udp(sock), local, server, user, password)
    }

    /// A UDP phone on another loopback address (127.0.0.0/8 all reach the server).
    pub fn udp_from(ip: &str, server: SocketAddr, user: &str, password: &str) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let local = sock.local_addr().unwrap();
        Phone::new(Wire::Udp(sock), local, server, user, password)
    }

    pub fn tcp(server: SocketAddr, user: &str, password: &str) -> Phone {
        let stream = TcpStream::connect(server).unwrap();
        let local = stream.local_addr().unwrap();
        Phone::new(Wire::Tcp(stream, Vec::new()), local, server, user, password)
    }

    fn new(wire: Wire, local: SocketAddr, server: SocketAddr, user: &str, password: &str) -> Phone {
        Phone {
            wire,
            local,
            server,
            user: user.into(),
            password: password.into(),
            domain: "pbx.test".into(),
            call_id: format!("{}-{}@test", user, local.port()),
            cseq: 0,
            branch_seq: 0,
        }
    }

    fn transport(&self) -> &'static str {
        match self.wire {
            Wire::Udp(_) => "UDP",
            Wire::Tcp(..) => "TCP",
        }
    }

    /// A REGISTER with the given extra headers (Contact, Expires, Authorization ...).
    pub fn register_text(&mut self, extra: &str) -> String {
        self.cseq += 1;
        // Unique in the whole test run, as RFC 3261 wants a branch to be: a later phone on a
        // reused port must not meet the claim table's entry of an earlier one's transaction.
        static BRANCHES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        self.branch_seq = BRANCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{tp} {local};branch=z9hG4bK-{port}-{b};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=t{port}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             User-Agent: sipcraft-test\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            domain = self.domain,
            tp = self.transport(),
            local = self.local,
            port = self.local.port(),
            b = self.branch_seq,
            user = self.user,
            cid = self.call_id,
            cseq = self.cseq,
        )
    }

    pub fn contact(&self) -> String {
        format!(
            "Contact: <sip:{}@{};transport={}>\r\n",
            self.user,
            self.local,
            self.transport().to_lowercase()
        )
    }

    pub fn send(&mut self, text: &str) {
        match &mut self.wire {
            Wire::Udp(s) => {
                s.send_to(text.as_bytes(), self.server).unwrap();
            }
            Wire::Tcp(s, _) => s.write_all(text.as_bytes()).unwrap(),
        }
    }

    /// The next response, or None after `within`.
    pub fn recv(&mut self, within: Duration) -> Option<Response> {
        let deadline = Instant::now() + within;
        match &mut self.wire {
            Wire::Udp(s) => {
                let mut buf = [0u8; 65536];
                loop {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .unwrap();
                    let (n, _) = s.recv_from(&mut buf).ok()?;
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Some(r) = parse_response(&text) {
                        return Some(r);
                    }
                }
            }
            Wire::Tcp(s, pending) => loop {
                if let Some(end) = find(pending, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            (n.trim().eq_ignore_ascii_case("content-length") || n.trim() == "l")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if pending.len() >= end + 4 + len {
                        let msg: Vec<u8> = pending.drain(..end + 4 + len).collect();
                        if let Some(r) = parse_response(&String::from_utf8_lossy(&msg)) {
                            return Some(r);
                        }
                        continue;
                    }
                }
                let left = deadline.checked_duration_since(Instant::now())?;
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut chunk = [0u8; 16384];
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&chunk[..n]);
            },
        }
    }

    pub fn request(&mut self, text: &str) -> Response {
        self.send(text);
        self.recv(Duration::from_secs(5))
            .expect("a response within 5 s")
    }

    /// One REGISTER, without answering any challenge.
    pub fn register_once(&mut self, extra: &str) -> Response {
        let text = self.register_text(extra);
        self.request(&text)
    }

    /// REGISTER, answering one challenge; returns the final response.
    pub fn register(&mut self, extra: &str, algorithm: Option<&str>) -> Response {
        match self.authorized_register(extra, algorithm) {
            Ok(text) => self.request(&text),
            Err(first) => first,
        }
    }

    /// A REGISTER with `extra` and MD5 credentials, after the challenge round it takes, not
    /// sent yet; the first response instead when it is not a 401.
    pub fn authorized_register_text(&mut self, extra: &str) -> String {
        self.authorized_register(extra, Some("MD5"))
            .unwrap_or_else(|r| panic!("no challenge: {}", r.text))
    }

    fn authorized_register(
        &mut self,
        extra: &str,
        algorithm: Option<&str>,
    ) -> Result<String, Response> {
        let text = self.register_text(extra);
        let first = self.request(&text);
        if first.status != 401 {
            return Err(first);
        }
        let challenges = first.headers("WWW-Authenticate");
        let challenge = challenges
            .iter()
            .find(|c| algorithm.is_none_or(|a| param(c, "algorithm").as_deref() == Some(a)))
            .unwrap_or_else(|| panic!("no {algorithm:?} challenge in {challenges:?}"))
            .clone();
        let auth = self.authorization(&challenge, "REGISTER", &format!("sip:{}", self.domain), 1);
        Ok(self.register_text(&format!("{extra}Authorization: {auth}\r\n")))
    }

    /// An Authorization value for `challenge` with this phone's password.
    pub fn authorization(&self, challenge: &str, method: &str, uri: &str, nc: u32) -> String {
        digest_authorization(challenge, &self.user, &self.password, method, uri, nc)
    }
}

pub fn digest_authorization(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let realm = param(challenge, "realm").expect("realm");
    let nonce = param(challenge, "nonce").expect("nonce");
    let algorithm = param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    let h = |s: String| -> String {
        if algorithm == "SHA-256" {
            use sha2::Digest;
            hex(&sha2::Sha256::digest(s.as_bytes()))
        } else {
            use md5::Digest;
            hex(&md5::Md5::digest(s.as_bytes()))
        }
    };
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("{method}:{uri}"));
    let response = h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", qop=auth, nc={nc}"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parameter of a challenge header value, quotes removed.
pub fn param(header: &str, name: &str) -> Option<String> {
    let lower = header.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&format!("{name}=")) {
        let at = from + i;
        let before = lower[..at].chars().last();
        if before.is_none_or(|c| c == ' ' || c == ',' || c == '\t') {
            let rest = &header[at + name.len() + 1..];
            return Some(if let Some(stripped) = rest.strip_prefix('"') {
                stripped.split('"').next().unwrap_or("").to_owned()
            } else {
                rest.split([',', ' ']).next().unwrap_or("").to_owned()
            });
        }
        from = at + 1;
    }
    None
}

fn parse_response(text: &str) -> Option<Response> {
    let status = text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
    Some(Response {
        status,
        text: text.to_owned(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
