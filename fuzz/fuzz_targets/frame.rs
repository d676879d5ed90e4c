//! Stream framing on arbitrary bytes, fed whole and in two pieces: nothing may panic, a
//! frame never claims more bytes than the buffer holds, and a prefix of a buffer never
//! frames differently (it may only be Incomplete).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipcraft_sip::{frame, parse, Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message_size: 4096, max_head_size: 2048, ..Limits::default() };
    let mut buf = data;
    // Consume the whole buffer the way a connection reader would.
    for _ in 0..64 {
        match frame(buf, &limits) {
            Ok(Frame::Incomplete) | Err(_) => break,
            Ok(Frame::Message { len }) => {
                assert!(len <= buf.len() && len > 0);
                let msg = &buf[..len];
                // A framed message parses, or fails only on its own content.
                let _ = parse(msg, &limits);
                // Any strict prefix is incomplete, or an error the full buffer also shows.
                if len > 1 {
                    let cut = data.len() % len;
                    if cut > 0 {
                        match frame(&buf[..cut], &limits) {
                            Ok(Frame::Incomplete) | Err(_) => {}
                            Ok(f) => assert!(
                                matches!(f, Frame::Ping { .. } | Frame::Pong { .. }),
                                "prefix framed as {f:?}"
                            ),
                        }
                    }
                }
                buf = &buf[len..];
            }
            Ok(Frame::Ping { len }) | Ok(Frame::Pong { len }) => {
                assert!(len <= buf.len() && len > 0);
                buf = &buf[len..];
            }
        }
    }
});
