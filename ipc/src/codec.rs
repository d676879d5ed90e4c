//! Frame codec: a `u32` little-endian length, then a postcard body.
//!
//! The codec does no I/O, so it is unit-tested and fuzzed on its own. The length is checked
//! against a maximum before any buffer for the body is allocated.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame body accepted by default. Snapshots are sent in chunks well below this.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Buffer space a reader or writer keeps once it is empty again. A burst (a snapshot, a
/// peer that read nothing for a while) can grow a buffer to megabytes; kept, that would be
/// memory held for good after the burst has passed.
pub const KEEP_CAPACITY: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("could not encode frame")]
    Encode(#[source] postcard::Error),
    #[error("could not decode frame body")]
    Decode(#[source] postcard::Error),
}

/// Encodes `msg` as one frame (length prefix and body), appended to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>, max: usize) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let body = postcard::to_extend(msg, std::mem::take(out)).map_err(CodecError::Encode)?;
    *out = body;
    let len = out.len() - start - HEADER_LEN;
    if len > max {
        out.truncate(start);
        return Err(CodecError::Oversize { len, max });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out, MAX_FRAME)?;
    Ok(out)
}

/// Reads the length prefix of a frame and checks it against `max`.
/// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are available.
pub fn peek_len(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut bytes = [0u8; HEADER_LEN];
    bytes.copy_from_slice(prefix);
    let len = u32::from_le_bytes(bytes) as usize;
    if len > max {
        return Err(CodecError::Oversize { len, max });
    }
    Ok(Some(len))
}

/// True when `bytes` is a sequence of whole frames, each within `max`.
pub fn whole_frames(mut bytes: &[u8], max: usize) -> bool {
    while !bytes.is_empty() {
        match peek_len(bytes, max) {
            Ok(Some(len)) if bytes.len() >= HEADER_LEN + len => bytes = &bytes[HEADER_LEN + len..],
            _ => return false,
        }
    }
    true
}

/// Incremental decoder for a byte stream: push bytes in, take whole messages out.
///
/// Frames are taken from a read position that moves forward; the bytes before it are dropped
/// only when new bytes are pushed, so taking every frame of one large read costs no copying.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the first frame not yet taken.
    start: usize,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends received bytes. Fails if the pending frame announces a body over the limit;
    /// the connection must then be closed (the stream cannot be resynchronised).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
            // A stream that never quite empties (part of a frame always pending) gives back
            // a burst's room here rather than in `take`.
            if self.buf.capacity() > KEEP_CAPACITY
                && self.buf.len() + bytes.len() <= KEEP_CAPACITY / 2
            {
                self.buf.shrink_to(KEEP_CAPACITY);
            }
        }
        self.buf.extend_from_slice(bytes);
        peek_len(&self.buf, self.max).map(|_| ())
    }

    /// Takes the next whole message, if one has arrived.
    pub fn take<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        let pending = &self.buf[self.start..];
        let Some(len) = peek_len(pending, self.max)? else {
            return Ok(None);
        };
        let end = HEADER_LEN + len;
        if pending.len() < end {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&pending[HEADER_LEN..end]).map_err(CodecError::Decode);
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.buf.shrink_to(KEEP_CAPACITY);
            self.start = 0;
        }
        msg.map(Some)
    }

    /// Bytes received but not yet taken as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Probe {
        Unit,
        Text(String),
        Pair { a: u32, b: bool },
    }

    #[test]
    fn round_trip_across_split_reads() {
        let mut wire = Vec::new();
        for msg in [
            Probe::Unit,
            Probe::Text("ok".into()),
            Probe::Pair { a: 300, b: true },
        ] {
            encode_into(&msg, &mut wire, MAX_FRAME).unwrap();
        }
        let mut dec = Decoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for byte in &wire {
            dec.push(std::slice::from_ref(byte)).unwrap();
            while let Some(m) = dec.take::<Probe>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Probe::Unit,
                Probe::Text("ok".into()),
                Probe::Pair { a: 300, b: true }
            ]
        );
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn every_frame_of_one_push_is_taken_before_the_next_push() {
        let mut wire = Vec::new();
        for i in 0..100u32 {
            encode_into(
                &Probe::Pair {
                    a: i,
                    b: i % 2 == 0,
                },
                &mut wire,
                MAX_FRAME,
            )
            .unwrap();
        }
        // Two pushes that split a frame in the middle.
        let cut = wire.len() / 2 + 1;
        let mut dec = Decoder::new(MAX_FRAME);
        dec.push(&wire[..cut]).unwrap();
        let mut got = Vec::new();
        while let Some(Probe::Pair { a, .. }) = dec.take::<Probe>().unwrap() {
            got.push(a);
        }
        assert!(dec.pending() > 0, "the cut frame waits for the rest");
        dec.push(&wire[cut..]).unwrap();
        while let Some(Probe::Pair { a, .. }) = dec.take::<Probe>().unwrap() {
            got.push(a);
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn oversize_prefix_is_refused_before_the_body_arrives() {
        let mut dec = Decoder::new(1024);
        let err = dec.push(&(u32::MAX).to_le_bytes()).unwrap_err();
        assert!(matches!(err, CodecError::Oversize { len, max: 1024 } if len == u32::MAX as usize));
        // Nothing of the announced size was reserved.
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn oversize_message_is_refused_by_the_encoder() {
        let mut out = vec![9];
        let err = encode_into(&Probe::Text("x".repeat(100)), &mut out, 50).unwrap_err();
        assert!(matches!(err, CodecError::Oversize { max: 50, .. }));
        assert_eq!(out, vec![9], "a refused frame leaves the buffer as it was");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut dec = Decoder::new(MAX_FRAME);
        dec.push(&[2, 0, 0, 0, 0xff, 0xff]).unwrap();
        assert!(matches!(dec.take::<Probe>(), Err(CodecError::Decode(_))));
    }

    #[test]
    fn a_decoder_hands_back_the_room_of_a_burst_once_it_is_taken() {
        let mut wire = Vec::new();
        let big = "x".repeat(4 * KEEP_CAPACITY);
        encode_into(&big, &mut wire, MAX_FRAME).unwrap();
        let mut dec = Decoder::new(MAX_FRAME);
        dec.push(&wire).unwrap();
        assert!(dec.buf.capacity() > KEEP_CAPACITY);
        assert_eq!(dec.take::<String>().unwrap(), Some(big));
        assert!(
            dec.buf.capacity() <= KEEP_CAPACITY,
            "{}",
            dec.buf.capacity()
        );
    }

    #[test]
    fn a_decoder_that_never_empties_hands_back_the_room_of_a_burst_too() {
        let mut wire = Vec::new();
        let big = "x".repeat(4 * KEEP_CAPACITY);
        encode_into(&big, &mut wire, MAX_FRAME).unwrap();
        let mut small = Vec::new();
        encode_into(&"small", &mut small, MAX_FRAME).unwrap();
        let mut dec = Decoder::new(MAX_FRAME);
        // The burst and the first bytes of the next frame arrive together.
        wire.extend_from_slice(&small[..3]);
        dec.push(&wire).unwrap();
        assert_eq!(dec.take::<String>().unwrap(), Some(big));
        assert!(
            dec.buf.capacity() > KEEP_CAPACITY,
            "a frame is still pending"
        );
        // The rest arrives with the first bytes of yet another frame: never empty.
        let mut rest = small[3..].to_vec();
        rest.extend_from_slice(&small[..3]);
        dec.push(&rest).unwrap();
        assert_eq!(dec.take::<String>().unwrap().as_deref(), Some("small"));
        assert_eq!(dec.pending(), 3);
        assert!(
            dec.buf.capacity() <= KEEP_CAPACITY,
            "{}",
            dec.buf.capacity()
        );
    }
}
