//! TCP connections: accepted by the worker that owns the listener, framed by Content-Length,
//! answered with CRLF to CRLFCRLF keep-alive pings (RFC 5626 §3.5.1), closed when idle, and
//! bounded in number and buffer size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sipcraft_sip::{frame, Frame, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Outbound messages queued for one connection before it counts as stuck.
const WRITE_QUEUE: usize = 256;

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

/// Accepts connections until the listener fails; refuses past `max` open connections.
pub async fn accept_loop(
    listener: TcpListener,
    events: mpsc::Sender<ConnEvent>,
    limits: Limits,
    idle: Duration,
    max: usize,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let mut next_id = 1u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= max {
            tracing::warn!(%peer, max, "tcp connection refused: connection limit reached");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let id = next_id;
        next_id += 1;
        let events = events.clone();
        let open = open.clone();
        tokio::spawn(async move {
            serve(id, stream, peer, events.clone(), limits, idle).await;
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = events.send(ConnEvent::Closed { id }).await;
        });
    }
}

async fn serve(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    events: mpsc::Sender<ConnEvent>,
    limits: Limits,
    idle: Duration,
) {
    let (mut rd, mut wr) = stream.into_split();
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
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let max = limits.max_message_size;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        let n = match tokio::time::timeout(idle, rd.read(&mut chunk)).await {
            Err(_) => {
                tracing::debug!(%peer, "tcp connection idle; closing");
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match frame(&buf, &limits) {
                Ok(Frame::Incomplete) => {
                    if buf.len() > max {
                        tracing::warn!(%peer, "tcp message over the size limit; closing");
                        break 'conn;
                    }
                    break;
                }
                Ok(Frame::Ping { len }) => {
                    buf.drain(..len);
                    if tx.try_send(Arc::from(&b"\r\n"[..])).is_err() {
                        break 'conn;
                    }
                }
                Ok(Frame::Pong { len }) => {
                    buf.drain(..len);
                }
                Ok(Frame::Message { len }) => {
                    let bytes: Vec<u8> = buf.drain(..len).collect();
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
                    tracing::warn!(%peer, error = %e, "tcp framing error; closing");
                    break 'conn;
                }
            }
        }
    }
    drop(tx);
    writer.abort();
}
