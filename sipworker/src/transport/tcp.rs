//! Stream connections (TCP, TLS, WebSocket): accepted by the worker that owns the listener,
//! bounded in number, given a deadline for their handshake, then served by a task of their
//! own that reports to the worker's main loop with [`ConnEvent`]s, whatever the transport.
//!
//! TCP and TLS carry a byte stream framed by Content-Length, with CRLF answered to
//! CRLFCRLF keep-alive pings (RFC 5626 §3.5.1); WebSocket carries one SIP message per
//! WebSocket message (`ws.rs`). Every connection is closed when idle, and its buffers are
//! bounded by the message size limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sipcraft_config::{Listen, Transport};
use sipcraft_sip::{frame, Frame, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::tls::{self, Certificates};
use super::ws::{self, Origins};

/// Outbound messages queued for one connection before it counts as stuck.
pub(crate) const WRITE_QUEUE: usize = 256;

/// How long a TLS or WebSocket handshake may take before the connection is dropped, so
/// half-open connections cannot hold connection slots.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What connection tasks tell the worker's main loop.
#[derive(Debug)]
pub enum ConnEvent {
    Opened {
        id: u64,
        peer: SocketAddr,
        tx: mpsc::Sender<Arc<[u8]>>,
    },
    Message {
        id: u64,
        peer: SocketAddr,
        bytes: Vec<u8>,
    },
    Closed {
        id: u64,
    },
}

/// What a connection goes through after it is accepted, before it carries SIP.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Plain TCP.
    Plain,
    /// TLS, then a byte stream.
    Tls(Certificates),
    /// A WebSocket upgrade.
    Ws(Origins),
    /// TLS, then a WebSocket upgrade.
    Wss(Certificates, Origins),
}

impl Layer {
    /// The layer a stream listen entry needs; loads its certificate (blocking file reads:
    /// at worker start only).
    pub fn new(listen: &Listen) -> Result<Layer, tls::TlsError> {
        let certs = || match &listen.tls {
            Some(files) => Certificates::load(files).map(|(certs, loaded)| {
                tracing::info!(
                    cert = %files.cert.display(),
                    chain = loaded.chain,
                    client_auth = loaded.client_auth,
                    "tls certificate loaded"
                );
                certs
            }),
            None => Err(tls::TlsError::NoCertificate {
                path: format!("(no cert for {} {})", listen.transport, listen.address),
            }),
        };
        let origins = || Origins::new(listen.allowed_origins.clone());
        Ok(match listen.transport {
            Transport::Udp | Transport::Tcp => Layer::Plain,
            Transport::Tls => Layer::Tls(certs()?),
            Transport::Ws => Layer::Ws(origins()),
            Transport::Wss => Layer::Wss(certs()?, origins()),
        })
    }

    /// Applies a reloaded listen entry: certificates are re-read in the background (new
    /// handshakes use them once loaded), the Origin allow-list replaced.
    pub fn reload(&self, listen: &Listen) {
        let (certs, origins) = match self {
            Layer::Plain => (None, None),
            Layer::Tls(c) => (Some(c), None),
            Layer::Ws(o) => (None, Some(o)),
            Layer::Wss(c, o) => (Some(c), Some(o)),
        };
        if let (Some(certs), Some(files)) = (certs, &listen.tls) {
            certs.reload_in_background(files.clone());
        }
        if let Some(origins) = origins {
            origins.replace(listen.allowed_origins.clone());
        }
    }

    /// A problem the operator must see (a refused certificate reload).
    pub fn alarm(&self) -> Option<String> {
        match self {
            Layer::Tls(c) | Layer::Wss(c, _) => c.alarm(),
            Layer::Plain | Layer::Ws(_) => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Layer::Plain => "tcp",
            Layer::Tls(_) => "tls",
            Layer::Ws(_) => "ws",
            Layer::Wss(..) => "wss",
        }
    }
}

/// Settings every connection of a listener shares.
#[derive(Debug, Clone)]
pub struct Accept {
    pub layer: Layer,
    pub limits: Limits,
    /// A connection silent for this long is closed.
    pub idle: Duration,
    /// Open connections (including those still in their handshake) past which new ones are
    /// refused.
    pub max: usize,
    /// The open connection count, shown in `ctl status`.
    pub open: Arc<AtomicUsize>,
}

/// Accepts connections until the listener fails; refuses past `max` open connections.
pub async fn accept_loop(listener: TcpListener, events: mpsc::Sender<ConnEvent>, accept: Accept) {
    let mut next_id = first_connection_id();
    let transport = accept.layer.name();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(transport, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if accept.open.load(Ordering::Relaxed) >= accept.max {
            tracing::warn!(transport, %peer, max = accept.max, "connection refused: connection limit reached");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        accept.open.fetch_add(1, Ordering::Relaxed);
        let id = next_id;
        next_id += 1;
        let events = events.clone();
        let accept = accept.clone();
        tokio::spawn(async move {
            let opened = connect(id, stream, peer, &events, &accept).await;
            accept.open.fetch_sub(1, Ordering::Relaxed);
            if opened {
                let _ = events.send(ConnEvent::Closed { id }).await;
            }
        });
    }
}

/// The first connection id of this worker process. Bindings and Record-Route flow tokens
/// name connections by owner and id, and outlive a worker that is restarted: ids start at a
/// random point so that a restarted worker's new connections never take the ids of the old
/// ones, and a request for a phone that was on the old process finds no connection rather
/// than another phone's.
fn first_connection_id() -> u64 {
    let high = getrandom::u32().unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| d.subsec_nanos() ^ std::process::id())
    });
    // 31 bits: ids stay positive where they are stored as signed 64-bit numbers.
    (u64::from(high & 0x7fff_ffff) << 32) | 1
}

/// Runs the handshake of `accept.layer`, then serves the connection until it closes.
/// Returns whether the main loop was told the connection opened.
///
/// Each transport's future is boxed: the task of an idle TCP connection then does not
/// carry room for a TLS handshake or a WebSocket upgrade.
async fn connect(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    events: &mpsc::Sender<ConnEvent>,
    accept: &Accept,
) -> bool {
    let (limits, idle) = (accept.limits, accept.idle);
    match &accept.layer {
        Layer::Plain => Box::pin(serve(id, stream, peer, events, limits, idle)).await,
        Layer::Tls(certs) => {
            let certs = certs.clone();
            let serve_tls = async move {
                let tls = Box::pin(tls_handshake(&certs, stream, peer, "tls")).await?;
                Some(Box::pin(serve(id, tls, peer, events, limits, idle)).await)
            };
            Box::pin(serve_tls).await.unwrap_or(false)
        }
        Layer::Ws(origins) => {
            let origins = origins.clone();
            let serve_ws = async move {
                let ws = upgrade(stream, peer, &origins, &limits, "ws").await?;
                Some(Box::pin(ws::serve(id, ws, peer, events, idle)).await)
            };
            Box::pin(serve_ws).await.unwrap_or(false)
        }
        Layer::Wss(certs, origins) => {
            let (certs, origins) = (certs.clone(), origins.clone());
            let serve_wss = async move {
                let started = tokio::time::Instant::now();
                let tls = Box::pin(tls_handshake(&certs, stream, peer, "wss")).await?;
                let left = HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
                let ws = Box::pin(tokio::time::timeout(
                    left,
                    ws::upgrade(tls, peer, &origins, &limits, "wss"),
                ))
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(transport = "wss", %peer, "websocket handshake timed out; closing");
                    None
                })?;
                Some(Box::pin(ws::serve(id, ws, peer, events, idle)).await)
            };
            Box::pin(serve_wss).await.unwrap_or(false)
        }
    }
}

/// The WebSocket upgrade within [`HANDSHAKE_TIMEOUT`] (for `ws`; `wss` counts the TLS
/// handshake in).
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    origins: &Origins,
    limits: &Limits,
    transport: &'static str,
) -> Option<tokio_tungstenite::WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upgrade = Box::pin(ws::upgrade(stream, peer, origins, limits, transport));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(ws) => ws,
        Err(_) => {
            tracing::warn!(transport, %peer, "websocket handshake timed out; closing");
            None
        }
    }
}

/// The TLS handshake, with the certificate current at this moment. Failures (plaintext sent
/// to the TLS port, an unknown CA, no common cipher, a timeout) are logged and the
/// connection closed.
async fn tls_handshake(
    certs: &Certificates,
    stream: TcpStream,
    peer: SocketAddr,
    transport: &'static str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = certs.acceptor();
    let handshake = async {
        // A client speaking plaintext (SIP, HTTP) gets a clear log line rather than a
        // decoding error.
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Err("connection closed before the handshake".to_string()),
            Ok(_) if first[0] != tls::HANDSHAKE_RECORD => {
                return Err(
                    "not a TLS handshake (plaintext SIP or HTTP sent to a TLS port?)".into(),
                )
            }
            Ok(_) => {}
        }
        acceptor.accept(stream).await.map_err(|e| tls::chain(&e))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => {
            let (_, session) = tls.get_ref();
            tracing::debug!(
                transport,
                %peer,
                version = ?session.protocol_version(),
                cipher = ?session.negotiated_cipher_suite().map(|c| c.suite()),
                client_cert = session.peer_certificates().is_some(),
                "tls connection established"
            );
            Some(tls)
        }
        Ok(Err(error)) => {
            tracing::warn!(transport, %peer, %error, "tls handshake failed; closing");
            None
        }
        Err(_) => {
            tracing::warn!(transport, %peer, "tls handshake timed out; closing");
            None
        }
    }
}

/// Serves one byte-stream connection (TCP or TLS): frames messages by Content-Length,
/// answers keep-alive pings, writes what the main loop queues. Returns whether the main
/// loop was told the connection opened.
async fn serve<S>(
    id: u64,
    stream: S,
    peer: SocketAddr,
    events: &mpsc::Sender<ConnEvent>,
    limits: Limits,
    idle: Duration,
) -> bool
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(WRITE_QUEUE);
    if events
        .send(ConnEvent::Opened {
            id,
            peer,
            tx: tx.clone(),
        })
        .await
        .is_err()
    {
        return false;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let max = limits.max_message_size;
    // Reads land in `chunk`, part of this (boxed) future; `buf` holds only the start of a
    // message still incomplete, so an idle connection keeps no heap buffer of its own.
    let mut chunk = [0u8; 2048];
    let mut buf: Vec<u8> = Vec::new();
    'conn: loop {
        let n = match tokio::time::timeout(idle, rd.read(&mut chunk)).await {
            Err(_) => {
                tracing::debug!(%peer, "connection idle; closing");
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        let buffered = !buf.is_empty();
        if buffered {
            buf.extend_from_slice(&chunk[..n]);
        }
        let data: &[u8] = if buffered { &buf } else { &chunk[..n] };
        let mut at = 0;
        loop {
            match frame(&data[at..], &limits) {
                Ok(Frame::Incomplete) => {
                    if data.len() - at > max {
                        tracing::warn!(%peer, "message over the size limit; closing");
                        break 'conn;
                    }
                    break;
                }
                Ok(Frame::Ping { len }) => {
                    at += len;
                    if tx.try_send(Arc::from(&b"\r\n"[..])).is_err() {
                        break 'conn;
                    }
                }
                Ok(Frame::Pong { len }) => at += len,
                Ok(Frame::Message { len }) => {
                    let bytes = data[at..at + len].to_vec();
                    at += len;
                    if events
                        .send(ConnEvent::Message { id, peer, bytes })
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                Err(e) => {
                    // A stream cannot be resynchronised after a framing error.
                    tracing::warn!(%peer, error = %e, "framing error; closing");
                    break 'conn;
                }
            }
        }
        if buffered {
            buf.drain(..at);
        } else {
            buf.extend_from_slice(&chunk[at..n]);
        }
        if buf.is_empty() {
            buf = Vec::new();
        }
    }
    drop(tx);
    // Let queued messages (a last response) go out; the main loop drops its sender when
    // told the connection closed.
    writer.abort();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection is one task: its future must not carry room for the largest
    /// transport's handshake (see `connect`).
    #[test]
    fn connection_task_stays_small() {
        let (tx, _rx) = mpsc::channel(1);
        let accept = Accept {
            layer: Layer::Plain,
            limits: Limits::default(),
            idle: Duration::from_secs(1),
            max: 1,
            open: Default::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let peer = stream.local_addr().unwrap();
            let task = connect(1, stream, peer, &tx, &accept);
            assert!(
                std::mem::size_of_val(&task) < 256,
                "{}",
                std::mem::size_of_val(&task)
            );
        });
    }

    fn message(body: usize) -> Vec<u8> {
        let mut m = format!(
            "MESSAGE sip:1002@pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5;branch=z9hG4bK{body}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@pbx.test>;tag=a\r\nTo: <sip:1002@pbx.test>\r\n\
             Call-ID: c{body}\r\nCSeq: 1 MESSAGE\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes();
        m.extend(std::iter::repeat_n(b'x', body));
        m
    }

    /// Messages split across reads, several in one read, larger than the read chunk, and
    /// keep-alive pings between them all come out whole and in order.
    #[test]
    fn stream_framing_across_reads() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (events, mut rx) = mpsc::channel(16);
            let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
            let task = tokio::spawn(async move {
                serve(
                    7,
                    server,
                    peer,
                    &events,
                    Limits::default(),
                    Duration::from_secs(5),
                )
                .await
            });
            let Some(ConnEvent::Opened { id: 7, .. }) = rx.recv().await else {
                panic!("no Opened event");
            };
            let sizes = [0usize, 10, 5000, 100];
            let mut wire = b"\r\n\r\n".to_vec();
            for &n in &sizes {
                wire.extend(message(n));
            }
            // Odd pieces: a message ends mid-read, the big one spans several chunks.
            for piece in wire.chunks(1500) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            for &n in &sizes {
                match rx.recv().await {
                    Some(ConnEvent::Message { id: 7, bytes, .. }) => assert_eq!(bytes, message(n)),
                    other => panic!("expected message of body {n}, got {other:?}"),
                }
            }
            let mut pong = [0u8; 2];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"\r\n");
            drop(client);
            assert!(task.await.unwrap());
        });
    }
}
