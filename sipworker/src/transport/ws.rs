//! SIP over WebSocket (RFC 7118) for `ws` and `wss` listen entries.
//!
//! The HTTP upgrade is read and answered here, so that every refusal gets an HTTP answer
//! and a log line: a request that is not an upgrade gets `426 Upgrade Required`, one
//! without the `sip` subprotocol `400`, one from an Origin not in `allowed_origins` `403`.
//! WebSocket framing after the upgrade is tungstenite's. Each WebSocket message carries one
//! SIP message (text or binary; we send text); frames and messages are bounded by
//! `limits.max_message_bytes`. The server pings every [`PING_INTERVAL`] and closes a
//! connection whose peer has not answered within [`PONG_TIMEOUT`] (browsers answer pings
//! by themselves), or that stays silent past the idle timeout.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sipcraft_sip::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::tcp::{ConnEvent, WRITE_QUEUE};

/// The WebSocket subprotocol of RFC 7118.
pub const SUBPROTOCOL: &str = "sip";
/// Longest HTTP upgrade request read.
const MAX_REQUEST: usize = 8 * 1024;
/// How often the server pings a connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may stay unanswered before the connection is taken for dead.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// The Origin allow-list of a listen entry, replaced on reload.
#[derive(Debug, Clone, Default)]
pub struct Origins(Arc<RwLock<Vec<String>>>);

impl Origins {
    pub fn new(allowed: Vec<String>) -> Self {
        Origins(Arc::new(RwLock::new(allowed)))
    }

    pub fn replace(&self, allowed: Vec<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = allowed;
    }

    /// Whether a connection with this `Origin` header (if any) may be upgraded: any, when
    /// the list is empty; else only the listed ones (compared in lower case).
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let allowed = self.0.read().unwrap_or_else(|p| p.into_inner());
        if allowed.is_empty() {
            return true;
        }
        origin.is_some_and(|o| {
            let o = o.trim().to_ascii_lowercase();
            allowed.contains(&o)
        })
    }
}

/// What the upgrade request asked for, once checked.
#[derive(Debug, PartialEq, Eq)]
struct Upgrade {
    key: String,
}

/// Why an upgrade is refused, as answered and logged.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: &'static str,
    reason: String,
    /// Extra response headers.
    headers: &'static str,
}

impl Refusal {
    fn new(status: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            headers: "",
        }
    }
}

/// Reads and answers the HTTP upgrade; `None` (logged, answered where HTTP was spoken)
/// when the connection is not upgraded. The caller bounds the time it takes.
pub async fn upgrade<S>(
    mut stream: S,
    peer: SocketAddr,
    origins: &Origins,
    limits: &Limits,
    transport: &'static str,
) -> Option<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    let checked = loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                tracing::debug!(transport, %peer, "connection closed during the websocket upgrade");
                return None;
            }
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        if head.first() == Some(&super::tls::HANDSHAKE_RECORD) {
            // Not HTTP: a TLS client on a plain WebSocket port. Nothing it could read.
            tracing::warn!(
                transport,
                %peer,
                "websocket upgrade refused: a TLS handshake on a plain ws port (wss meant?)"
            );
            return None;
        }
        if let Some(end) = find(&head, b"\r\n\r\n") {
            if end + 4 != head.len() {
                // A client waits for 101 before it sends frames (RFC 6455 §4.1).
                break Err(Refusal::new(
                    "400 Bad Request",
                    "data after the upgrade request",
                ));
            }
            break check(&head, origins);
        }
        if head.len() > MAX_REQUEST {
            break Err(Refusal::new(
                "431 Request Header Fields Too Large",
                "upgrade request too long",
            ));
        }
    };
    let upgrade = match checked {
        Ok(u) => u,
        Err(refusal) => {
            tracing::warn!(
                transport,
                %peer,
                status = refusal.status,
                reason = %refusal.reason,
                "websocket upgrade refused"
            );
            let body = format!("{}\r\n", refusal.reason);
            let response = format!(
                "HTTP/1.1 {}\r\nConnection: close\r\n{}Content-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                refusal.status,
                refusal.headers,
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return None;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n",
        derive_accept_key(upgrade.key.as_bytes())
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return None;
    }
    let max = limits.max_message_size;
    let config = WebSocketConfig::default()
        // Small buffers: most connections are idle phones.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(WRITE_QUEUE).max(1 << 20))
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    Some(WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await)
}

/// Checks an upgrade request (RFC 6455 §4.2.1, RFC 7118 §4).
fn check(head: &[u8], origins: &Origins) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(Refusal::new("400 Bad Request", "not an HTTP request"));
        }
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
    };
    let tokens = |name: &str| {
        header(name)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    };
    let upgrade_refusal = |why: &str| Refusal {
        status: "426 Upgrade Required",
        reason: format!("{why}: this port speaks SIP over WebSocket only"),
        headers: "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
    };
    if req.method != Some("GET") {
        return Err(upgrade_refusal(&format!(
            "{} request",
            req.method.unwrap_or("?")
        )));
    }
    if !tokens("upgrade").iter().any(|t| t == "websocket") {
        return Err(upgrade_refusal("not a websocket upgrade"));
    }
    if !tokens("connection").iter().any(|t| t == "upgrade") {
        return Err(upgrade_refusal("no Connection: Upgrade"));
    }
    if header("sec-websocket-version").first().map(|v| v.trim()) != Some("13") {
        return Err(upgrade_refusal(
            "unsupported Sec-WebSocket-Version (13 required)",
        ));
    }
    let key = match header("sec-websocket-key").as_slice() {
        [key] if !key.trim().is_empty() => key.trim().to_owned(),
        _ => return Err(Refusal::new("400 Bad Request", "no Sec-WebSocket-Key")),
    };
    if !tokens("sec-websocket-protocol")
        .iter()
        .any(|t| t == SUBPROTOCOL)
    {
        return Err(Refusal::new(
            "400 Bad Request",
            "the sip subprotocol is required (Sec-WebSocket-Protocol: sip, RFC 7118)",
        ));
    }
    let origin = header("origin").first().map(|o| o.to_string());
    if !origins.allows(origin.as_deref()) {
        return Err(Refusal::new(
            "403 Forbidden",
            format!(
                "origin {} is not allowed",
                origin.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    Ok(Upgrade { key })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serves an upgraded connection: each text or binary message is one SIP message for the
/// main loop; each queued message goes out as one text message. Returns whether the main
/// loop was told the connection opened.
pub async fn serve<S>(
    id: u64,
    mut ws: WebSocketStream<S>,
    peer: SocketAddr,
    events: &mpsc::Sender<ConnEvent>,
    idle: Duration,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(WRITE_QUEUE);
    if events
        .send(ConnEvent::Opened { id, peer, tx })
        .await
        .is_err()
    {
        return false;
    }
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            incoming = ws.next() => {
                let msg = match incoming {
                    None => break "closed".to_string(),
                    Some(Err(e)) => break format!("websocket error: {e}"),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                let bytes: Vec<u8> = match msg {
                    Message::Text(t) => t.as_bytes().to_vec(),
                    Message::Binary(b) => b.to_vec(),
                    Message::Pong(_) => {
                        ping_sent = None;
                        continue;
                    }
                    // tungstenite answers pings itself.
                    Message::Ping(_) | Message::Frame(_) => continue,
                    Message::Close(_) => break "closed by the client".to_string(),
                };
                if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                    // A keep-alive some clients send as a message of its own (CRLF).
                    continue;
                }
                if events.send(ConnEvent::Message { id, peer, bytes }).await.is_err() {
                    break "worker stopping".to_string();
                }
            }
            out = rx.recv() => {
                let Some(bytes) = out else { break "worker closed it".to_string() };
                let msg = match std::str::from_utf8(&bytes) {
                    Ok(text) => Message::text(text),
                    Err(_) => Message::binary(bytes.to_vec()),
                };
                if let Err(e) = ws.send(msg).await {
                    break format!("send failed: {e}");
                }
            }
            _ = ping.tick() => {
                if let Some(sent) = ping_sent {
                    if sent.elapsed() >= PONG_TIMEOUT {
                        break "no pong: peer unreachable".to_string();
                    }
                }
                if last_heard.elapsed() >= idle {
                    break "idle".to_string();
                }
                if ping_sent.is_none() {
                    ping_sent = Some(Instant::now());
                    if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                        break format!("ping failed: {e}");
                    }
                }
            }
        }
    };
    tracing::debug!(%peer, reason = %why, "websocket connection closed");
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &str) -> Vec<u8> {
        format!(
            "GET / HTTP/1.1\r\nHost: pbx.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn upgrade_checks() {
        let any = Origins::default();
        let ok = check(&request("Sec-WebSocket-Protocol: foo, SIP\r\n"), &any).unwrap();
        assert_eq!(ok.key, "dGhlIHNhbXBsZSBub25jZQ==");
        let e = check(&request(""), &any).unwrap_err();
        assert_eq!(e.status, "400 Bad Request");
        let e = check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &any).unwrap_err();
        assert_eq!(e.status, "426 Upgrade Required");
        let e = check(b"REGISTER sip:x SIP/2.0\r\n\r\n", &any).unwrap_err();
        assert_eq!(e.status, "400 Bad Request");

        let only = Origins::new(vec!["https://phone.example".into()]);
        let e = check(&request("Sec-WebSocket-Protocol: sip\r\n"), &only).unwrap_err();
        assert_eq!(e.status, "403 Forbidden");
        let e = check(
            &request("Sec-WebSocket-Protocol: sip\r\nOrigin: https://evil.example\r\n"),
            &only,
        )
        .unwrap_err();
        assert_eq!(e.reason, "origin https://evil.example is not allowed");
        check(
            &request("Sec-WebSocket-Protocol: sip\r\nOrigin: https://Phone.Example\r\n"),
            &only,
        )
        .unwrap();
    }
}
