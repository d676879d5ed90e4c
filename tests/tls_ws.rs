//! TLS and WebSocket transports (issue 8), against the real binary on loopback.
//!
//! Certificates are made at run time (rcgen, tests/common/tls.rs); phones are our own user
//! agents (tests/common/ua.rs) over UDP, TCP, TLS, WS and WSS. Covered: registration with
//! digest over TLS and WSS; calls WSS ↔ UDP and TLS ↔ TCP with BYE and CANCEL each way; a
//! certificate replaced and reloaded during a TLS call; refused handshakes (wrong CA,
//! plaintext to the TLS port, HTTP that is not an upgrade, a foreign Origin, no client
//! certificate for mutual TLS) that never take a worker down.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::{self, Pki, Versions};
use common::ua::Ua;
use common::ws;
use common::{free_port, wait_for, Server, Setup};

/// A server with UDP and TCP on one port, and TLS, WS and WSS on ports of their own.
struct Net {
    server: Server,
    pki: Pki,
    _pki_dir: tempfile::TempDir,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
}

/// Extra keys for the entries: `tls_extra` goes into the TLS entry, `ws_extra` into both
/// WebSocket entries.
fn start(tls_extra: &str, ws_extra: &str) -> Net {
    let pki_dir = tempfile::Builder::new()
        .prefix("sipcraft-pki")
        .tempdir()
        .unwrap();
    let pki = Pki::new(pki_dir.path(), "sipcraft");
    let [tls, ws, wss] = [(); 3].map(|()| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let files = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        pki.cert_path().display(),
        pki.key_path().display()
    );
    let extra = format!(
        "[[listen]]\ntransport = \"tls\"\naddress = \"{tls}\"\nworkers = 1\n{files}{tls_extra}\n\n\
         [[listen]]\ntransport = \"ws\"\naddress = \"{ws}\"\nworkers = 1\n{ws_extra}\n\n\
         [[listen]]\ntransport = \"wss\"\naddress = \"{wss}\"\nworkers = 1\n{files}{ws_extra}\n\n\
         [security]\ntrusted_ips = [\"127.0.0.0/8\"]\n"
    );
    let server = Server::start(Setup {
        extra,
        extra_workers: 3,
        ..Setup::default()
    });
    Net {
        server,
        pki,
        _pki_dir: pki_dir,
        tls,
        ws,
        wss,
    }
}

impl Net {
    fn udp(&self, name: &str, user: &str) -> Ua {
        Ua::udp(name, self.server.udp_addr(), user)
    }

    fn tcp(&self, name: &str, user: &str) -> Ua {
        Ua::tcp(name, self.server.udp_addr(), user)
    }

    fn tls(&self, name: &str, user: &str) -> Ua {
        Ua::tls(name, self.tls, user, self.pki.client())
    }

    fn wss(&self, name: &str, user: &str) -> Ua {
        Ua::ws(name, self.wss, user, Some(self.pki.client()))
    }

    fn ws(&self, name: &str, user: &str) -> Ua {
        Ua::ws(name, self.ws, user, None)
    }

    /// Registers, asserting the 200.
    fn registered(&self, mut ua: Ua) -> Ua {
        let r = ua.register(300);
        assert_eq!(r.status(), Some(200), "{}", ua.dump());
        self.server.wait_replicated();
        ua
    }

    fn worker(&self, name: &str) -> serde_json::Value {
        self.server.child(name)
    }
}

/// `caller` calls `callee` (registered): rings, is answered, `caller` hangs up.
fn call_and_bye(caller: &mut Ua, callee: &mut Ua, caller_hangs_up: bool) {
    let inv = caller.invite(&callee.user);
    let incoming = callee.ringing();
    caller.expect_status(180, "INVITE");
    let mut callee_dialog = callee.answer(&incoming);
    let mut caller_dialog = caller.answered(&inv);
    callee.expect_request("ACK");
    let (hangs_up, other, dialog) = if caller_hangs_up {
        (caller, callee, &mut caller_dialog)
    } else {
        (callee, caller, &mut callee_dialog)
    };
    hangs_up.bye(dialog);
    other.take_bye();
    let r = hangs_up.bye_done();
    assert_eq!(r.status(), Some(200), "{}", hangs_up.dump());
}

/// `caller` calls `callee`, which rings; `caller` cancels.
fn call_and_cancel(caller: &mut Ua, callee: &mut Ua) {
    let inv = caller.invite(&callee.user);
    let incoming = callee.ringing();
    caller.expect_status(180, "INVITE");
    caller.cancel(&inv);
    callee.cancelled(&incoming);
    caller.cancel_done(&inv);
}

#[test]
fn register_over_tls_and_websocket_with_digest() {
    let net = start("", "");
    let mut tls13 = Ua::tls(
        "tls13",
        net.tls,
        "1001",
        tls::client_config(&net.pki.ca_der, Versions::Only13, None),
    );
    let r = tls13.register(300);
    assert_eq!(r.status(), Some(200), "{}", tls13.dump());
    assert!(r.text.contains("transport=tls"), "{}", r.text);
    // The first attempt was challenged: digest over TLS like anywhere else.
    assert!(tls13.dump().contains("401 Unauthorized"));
    assert!(r.header("Server").unwrap_or_default().contains("tls-0"));

    let mut tls12 = Ua::tls(
        "tls12",
        net.tls,
        "1002",
        tls::client_config(&net.pki.ca_der, Versions::Only12, None),
    );
    assert_eq!(tls12.register(300).status(), Some(200));
    if let common::ua::Link::Stream(s, _) = &tls12.link {
        assert_eq!(s.tls_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    }

    let mut wss = net.wss("wss", "1003");
    let r = wss.register(300);
    assert_eq!(r.status(), Some(200), "{}", wss.dump());
    assert!(r.text.contains(".invalid;transport=ws"), "{}", r.text);
    assert!(wss.dump().contains("Via: SIP/2.0/WSS"));

    let mut plain_ws = net.ws("ws", "1003");
    plain_ws.password = "wrong".into();
    assert_eq!(plain_ws.register(300).status(), Some(401));
    plain_ws.password = "pw1003".into();
    assert_eq!(plain_ws.register(300).status(), Some(200));

    wait_for("connections counted", Duration::from_secs(5), || {
        let tls = net.worker("tls-0")["health"]["connections"].as_u64()?;
        let wss = net.worker("wss-0")["health"]["connections"].as_u64()?;
        (tls == 2 && wss == 1).then_some(())
    });
}

#[test]
fn calls_between_websocket_and_udp() {
    let net = start("", "");
    let mut browser = net.registered(net.wss("browser", "1001"));
    let mut desk = net.registered(net.udp("desk", "1002"));

    // WSS -> UDP, the caller hangs up; then the callee hangs up.
    call_and_bye(&mut browser, &mut desk, true);
    call_and_bye(&mut browser, &mut desk, false);
    // UDP -> WSS: the browser is reached through its connection (its contact is .invalid).
    let inv = desk.invite("1001");
    let incoming = browser.ringing();
    let via = incoming.values("Via");
    assert!(via[0].starts_with("SIP/2.0/WSS"), "{via:?}");
    let rr = incoming.values("Record-Route");
    assert!(
        rr.iter().any(|r| r.contains("transport=wss"))
            && rr.iter().any(|r| r.contains("transport=udp")),
        "double Record-Route across transports: {rr:?}"
    );
    desk.expect_status(180, "INVITE");
    let mut browser_dialog = browser.answer(&incoming);
    let _desk_dialog = desk.answered(&inv);
    browser.expect_request("ACK");
    browser.bye(&mut browser_dialog);
    desk.take_bye();
    assert_eq!(browser.bye_done().status(), Some(200), "{}", browser.dump());
    call_and_bye(&mut desk, &mut browser, false);

    // CANCEL each way.
    call_and_cancel(&mut browser, &mut desk);
    call_and_cancel(&mut desk, &mut browser);
}

#[test]
fn calls_between_tls_and_tcp() {
    let net = start("", "");
    let mut secure = net.registered(net.tls("secure", "1001"));
    let mut plain = net.registered(net.tcp("plain", "1002"));

    call_and_bye(&mut secure, &mut plain, true);
    call_and_bye(&mut secure, &mut plain, false);
    call_and_bye(&mut plain, &mut secure, true);
    call_and_bye(&mut plain, &mut secure, false);
    call_and_cancel(&mut secure, &mut plain);
    call_and_cancel(&mut plain, &mut secure);

    // The TLS leg carries TLS in Via and Record-Route.
    let inv = plain.invite("1001");
    let incoming = secure.ringing();
    assert!(incoming.values("Via")[0].starts_with("SIP/2.0/TLS"));
    assert!(incoming
        .values("Record-Route")
        .iter()
        .any(|r| r.contains(&format!("{};transport=tls", net.tls))));
    plain.expect_status(180, "INVITE");
    plain.cancel(&inv);
    secure.cancelled(&incoming);
    plain.cancel_done(&inv);
}

/// The certificate the server presents to a new TLS connection.
fn served_certificate(net: &Net) -> rustls::pki_types::CertificateDer<'static> {
    let stream = tls::connect(net.tls, net.pki.client()).expect("tls handshake");
    stream.peer_certificate().expect("a server certificate")
}

#[test]
fn certificate_reload_during_a_call() {
    let mut net = start("", "");
    let first = net.pki.server_der.clone();
    assert_eq!(served_certificate(&net), first);
    let mut caller = net.registered(net.tls("caller", "1001"));
    let mut callee = net.registered(net.udp("callee", "1002"));
    let inv = caller.invite("1002");
    let incoming = callee.ringing();
    caller.expect_status(180, "INVITE");
    callee.answer(&incoming);
    let mut dialog = caller.answered(&inv);
    callee.expect_request("ACK");

    // Renewed in place, then `ctl reload`.
    let second = net.pki.issue_server("server 2");
    let out = net.server.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "new connections get the new certificate",
        Duration::from_secs(5),
        || (served_certificate(&net) == second).then_some(()),
    );
    // The call's connection is untouched: its BYE goes through on it.
    caller.bye(&mut dialog);
    callee.take_bye();
    assert_eq!(caller.bye_done().status(), Some(200), "{}", caller.dump());
    assert!(net.server.log().contains("tls certificate reloaded"));

    // A key that does not match the certificate: refused, the current one stays.
    let (_, other_key) = net.pki.issue("stray", &["pbx.test"]);
    std::fs::write(net.pki.key_path(), other_key.serialize_pem()).unwrap();
    assert!(net.server.ctl(&["reload"]).status.success());
    let alarm = wait_for(
        "the refusal shown as an alarm",
        Duration::from_secs(5),
        || {
            net.worker("tls-0")["health"]["alarm"]
                .as_str()
                .map(str::to_owned)
        },
    );
    assert!(alarm.contains("certificate reload refused"), "{alarm}");
    assert!(net
        .server
        .log()
        .contains("tls certificate reload refused; still serving the previous certificate"));
    assert_eq!(served_certificate(&net), second);
    // The same call carries on over the old connection.
    call_and_bye(&mut caller, &mut callee, true);

    // A file that is not a certificate at all: `ctl reload` itself refuses, naming the key.
    std::fs::write(net.pki.cert_path(), "not a certificate\n").unwrap();
    let out = net.server.ctl(&["reload"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("listen[2].cert") && said.contains("holds no PEM certificate"),
        "{said}"
    );

    // Fixed: the next reload serves the third certificate and clears the alarm.
    let third = net.pki.issue_server("server 3");
    assert!(net.server.ctl(&["reload"]).status.success());
    wait_for(
        "the third certificate served",
        Duration::from_secs(5),
        || (served_certificate(&net) == third).then_some(()),
    );
    wait_for("the alarm cleared", Duration::from_secs(5), || {
        net.worker("tls-0")["health"]["alarm"]
            .is_null()
            .then_some(())
    });
}

#[test]
fn refused_handshakes_are_clean_and_workers_survive() {
    let net = start("", "");
    let pids: Vec<u32> = ["tls-0", "ws-0", "wss-0"]
        .iter()
        .map(|n| net.server.pid_of(n))
        .collect();

    // A client that trusts another CA refuses the server's certificate.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path(), "other");
    assert!(tls::connect(net.tls, other.client()).is_err());
    // Plaintext SIP on the TLS port: closed without an answer.
    let mut plain = tls::connect_plain(net.tls).unwrap();
    let answer = ws::raw_http(
        &mut plain,
        "OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\n\r\n",
    );
    assert_eq!(answer, "");
    // HTTP that is not an upgrade, on WS and (after TLS) on WSS: 426.
    let mut plain = tls::connect_plain(net.ws).unwrap();
    let answer = ws::raw_http(&mut plain, "GET / HTTP/1.1\r\nHost: pbx.test\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    let mut secure = tls::connect(net.wss, net.pki.client()).unwrap();
    let answer = ws::raw_http(&mut secure, "GET / HTTP/1.1\r\nHost: pbx.test\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    // An upgrade without the sip subprotocol: 400.
    let mut plain = tls::connect_plain(net.ws).unwrap();
    let answer = ws::raw_http(
        &mut plain,
        "GET / HTTP/1.1\r\nHost: pbx.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("sip subprotocol"), "{answer}");
    // A TLS handshake on the plain WebSocket port: refused as HTTP.
    assert!(tls::connect(net.ws, net.pki.client()).is_err());
    // A WebSocket message over the size limit closes that connection only.
    let mut big = net.ws("big", "1001");
    big.send(&"x".repeat(70_000));
    assert!(big.recv(Duration::from_secs(5)).is_none());

    let log = net.server.log();
    for line in [
        "tls handshake failed",
        "not a TLS handshake",
        "websocket upgrade refused",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    // Nobody went down, and the ports still serve.
    for (name, pid) in ["tls-0", "ws-0", "wss-0"].iter().zip(&pids) {
        assert_eq!(net.server.pid_of(name), *pid, "{name} was restarted");
        assert_eq!(net.worker(name)["restarts"], 0);
    }
    net.registered(net.tls("after-tls", "1001"));
    net.registered(net.ws("after-ws", "1002"));
    net.registered(net.wss("after-wss", "1003"));
}

#[test]
fn origin_allow_list_and_mutual_tls() {
    let pki_dir = tempfile::tempdir().unwrap();
    // The client CA is written before the server starts: start() makes its own PKI, so the
    // client CA here is a second one, whose path goes into the TLS entry.
    let clients = Pki::new(pki_dir.path(), "clients");
    let net = start(
        &format!("client_ca = \"{}\"", clients.ca_path().display()),
        "allowed_origins = [\"https://phone.pbx.test\"]",
    );
    let upgrade = |origin: Option<&str>| {
        let stream = tls::connect_plain(net.ws).unwrap();
        ws::upgrade(stream, net.ws, false, origin)
    };
    assert!(upgrade(Some("https://phone.pbx.test")).is_ok());
    for refused in [Some("https://evil.test"), None] {
        match upgrade(refused) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{refused:?}")
            }
            other => panic!("{refused:?}: expected 403, got {:?}", other.map(|_| ())),
        }
    }

    // Without a client certificate the handshake is refused (TLS 1.3 says so on the first
    // read); with one issued by the client CA the phone registers.
    let anonymous = tls::client_config(&net.pki.ca_der, Versions::Both, None);
    if let Ok(mut stream) = tls::connect(net.tls, anonymous) {
        let answer = ws::raw_http(
            &mut stream,
            "OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@pbx.test>;tag=1\r\nTo: <sip:pbx.test>\r\n\
             Call-ID: anon\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(answer, "", "a client without a certificate was answered");
    }
    let identity = clients.client_identity("desk phone 1002");
    let config = tls::client_config(&net.pki.ca_der, Versions::Both, Some(identity));
    net.registered(Ua::tls("trusted", net.tls, "1002", config));
    assert!(net.server.log().contains("tls handshake failed"));
    assert_eq!(net.worker("tls-0")["restarts"], 0);
}

#[test]
fn a_restarted_worker_never_hands_an_old_flow_to_a_new_phone() {
    let net = start("", "");
    let mut old = net.registered(net.tls("old", "1001"));
    let pid = net.server.pid_of("tls-0");
    assert!(net.server.ctl(&["restart", "tls-0"]).status.success());
    wait_for("tls-0 back", Duration::from_secs(10), || {
        let w = net.worker("tls-0");
        (w["state"] == "ready" && w["pid"].as_u64() != Some(u64::from(pid))).then_some(())
    });
    // The new process's first connection: with ids counted from 1 in every process it
    // would take the old phone's id, and the old binding would reach it.
    let mut new = net.registered(net.tls("new", "1002"));
    let mut caller = net.registered(net.udp("caller", "1003"));
    let _inv = caller.invite("1001");
    assert!(
        new.recv(Duration::from_secs(2)).is_none(),
        "a call for 1001 reached 1002's connection\n{}",
        new.dump()
    );
    assert!(old.recv(Duration::from_millis(100)).is_none());
}
