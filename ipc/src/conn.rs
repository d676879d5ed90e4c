//! Framed connections over local sockets: Unix domain sockets on Unix, named pipes on
//! Windows, both through `interprocess`. This is the only part of the crate that does I/O.

use std::io;
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::ListenerOptions;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, CodecError, Decoder, MAX_FRAME};

/// Bytes a bus writer gathers before it writes them, at most (it writes sooner when nothing
/// more is queued): the supervisor's writer to each child and each child's to the hub.
pub const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("could not listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not read from peer")]
    Read(#[source] io::Error),
    #[error("could not write to peer")]
    Write(#[source] io::Error),
    #[error("bad frame from peer")]
    Frame(#[from] CodecError),
}

/// The endpoint of a local socket in `runtime_dir` (`bus`, `control`).
///
/// On Unix this is the file `runtime_dir/NAME.sock`. On Windows it is a named pipe whose name
/// is derived from the runtime directory, so two instances with different directories coexist.
/// The directory is made absolute with `.`, `..` and `/` resolved and compared without case,
/// as Windows compares paths, so `ctl` finds the pipe however the path was spelled.
pub fn endpoint(runtime_dir: &Path, name: &str) -> PathBuf {
    #[cfg(unix)]
    {
        runtime_dir.join(format!("{name}.sock"))
    }
    #[cfg(windows)]
    {
        let dir = std::path::absolute(runtime_dir).unwrap_or_else(|_| runtime_dir.to_owned());
        let dir = dir.to_string_lossy().trim_end_matches('\\').to_lowercase();
        let mut tag: u64 = 0xcbf2_9ce4_8422_2325;
        for b in dir.bytes() {
            tag = (tag ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        PathBuf::from(format!(r"\\.\pipe\sipcraft-{tag:016x}-{name}"))
    }
}

fn name_of(path: &Path) -> io::Result<interprocess::local_socket::Name<'_>> {
    use interprocess::local_socket::GenericFilePath;
    path.to_fs_name::<GenericFilePath>()
}

/// The reading side of a local-socket connection.
pub type Reader = FrameReader<RecvHalf>;
/// The writing side of a local-socket connection.
pub type Writer = FrameWriter<SendHalf>;

/// On Unix, tokio's own halves of the socket: no lock between reader and writer, and a short
/// read marks the socket drained, so a wake-up costs one `read(2)` instead of a second one
/// that only says `EAGAIN`. Dropping the sending half shuts the socket down for writing, so
/// the peer sees the end of the stream.
#[cfg(unix)]
type RecvHalf = tokio::net::unix::OwnedReadHalf;
#[cfg(unix)]
type SendHalf = tokio::net::unix::OwnedWriteHalf;
#[cfg(not(unix))]
type RecvHalf = tokio::io::ReadHalf<Stream>;
#[cfg(not(unix))]
type SendHalf = tokio::io::WriteHalf<Stream>;

/// Starts listening at `path`, replacing a stale socket file left by a dead process.
pub fn listen(path: &Path) -> Result<Listener, ConnError> {
    let err = |source| ConnError::Listen {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let name = name_of(path).map_err(err)?;
    ListenerOptions::new()
        .name(name)
        .create_tokio()
        .map_err(err)
}

/// Accepts one connection.
pub async fn accept(listener: &Listener) -> io::Result<(Reader, Writer)> {
    let stream = listener.accept().await?;
    Ok(split(stream))
}

/// Connects to the listener at `path`.
pub async fn connect(path: &Path) -> Result<(Reader, Writer), ConnError> {
    let err = |source| ConnError::Connect {
        path: path.to_owned(),
        source,
    };
    let name = name_of(path).map_err(err)?;
    let stream = Stream::connect(name).await.map_err(err)?;
    Ok(split(stream))
}

fn split(stream: Stream) -> (Reader, Writer) {
    #[cfg(unix)]
    let (rx, tx) = {
        let Stream::UdSocket(stream) = stream;
        tokio::net::UnixStream::from(stream).into_split()
    };
    #[cfg(not(unix))]
    let (rx, tx) = tokio::io::split(stream);
    (FrameReader::new(rx), FrameWriter::new(tx))
}

/// Reads whole frames from a byte stream: one read takes up to 64 KiB, and every frame in it
/// is handed out before the next read.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: Decoder::new(MAX_FRAME),
            chunk: vec![0; 64 * 1024].into(),
        }
    }

    /// The next message; `Ok(None)` when the peer closed the connection cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnError> {
        loop {
            if let Some(msg) = self.decoder.take()? {
                return Ok(Some(msg));
            }
            let n = self
                .inner
                .read(&mut self.chunk)
                .await
                .map_err(ConnError::Read)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.chunk[..n])?;
        }
    }
}

/// Writes whole frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::new(),
        }
    }

    /// Writes one message, after anything already queued.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Encodes a message and queues it, to be written by [`FrameWriter::flush`].
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        codec::encode_into(msg, &mut self.buf, MAX_FRAME)?;
        Ok(())
    }

    /// Queues frames that are already encoded (each a length prefix and a body, as
    /// [`codec::encode`] makes them), so one encoding can be written to many peers.
    pub fn queue_encoded(&mut self, frames: &[u8]) {
        debug_assert!(codec::whole_frames(frames, MAX_FRAME), "not whole frames");
        self.buf.extend_from_slice(frames);
    }

    /// Writes everything queued, then `frames` (already encoded, as for
    /// [`FrameWriter::queue_encoded`]) without copying them: for a large run of frames.
    pub async fn send_encoded(&mut self, frames: &[u8]) -> Result<(), ConnError> {
        debug_assert!(codec::whole_frames(frames, MAX_FRAME), "not whole frames");
        self.flush().await?;
        self.inner.write_all(frames).await.map_err(ConnError::Write)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let result = self
            .inner
            .write_all(&self.buf)
            .await
            .map_err(ConnError::Write);
        self.buf.clear();
        self.buf.shrink_to(codec::KEEP_CAPACITY);
        result
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }
}
