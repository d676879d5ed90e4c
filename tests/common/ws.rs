//! A blocking WebSocket client for the tests (tungstenite), over plain TCP or TLS, that
//! asks for the `sip` subprotocol (RFC 7118) and carries one SIP message per message.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::tls::Stream;

/// An open SIP-over-WebSocket connection.
pub struct WsClient {
    pub ws: WebSocket<Stream>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// Upgrades `stream` (already connected to `server`, TLS done for wss) with
/// `Sec-WebSocket-Protocol: sip` and, when given, an `Origin`.
pub fn upgrade(
    stream: Stream,
    server: SocketAddr,
    secure: bool,
    origin: Option<&str>,
) -> Result<WsClient, tungstenite::Error> {
    let scheme = if secure { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{server}/").into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    if let Some(origin) = origin {
        headers.insert("Origin", origin.parse().unwrap());
    }
    stream.set_read_timeout(Duration::from_secs(5));
    let (ws, response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(io::Error::other("handshake interrupted"))
        }
    })?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(WsClient { ws, protocol })
}

impl WsClient {
    pub fn send(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(text))
    }

    /// The next text or binary message; `None` after `within` or when the connection
    /// closes. Pings are answered on the way (tungstenite queues the pong).
    pub fn recv(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.ws.get_ref().set_read_timeout(left);
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
                Ok(Message::Binary(b)) => return Some(String::from_utf8_lossy(&b).into_owned()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return None,
            }
        }
    }
}

/// Sends `request` as is on a plain connection and returns whatever the server answers
/// before it closes (or 5 s pass): for requests that must be refused.
pub fn raw_http(stream: &mut Stream, request: &str) -> String {
    stream.set_read_timeout(Duration::from_secs(5));
    let _ = stream.write_all(request.as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
