//! Mail between the UDP workers that share a socket: one datagram per message.
//!
//! With one socket read by several workers, a response or a retransmission often reaches a
//! worker other than the one holding its transaction, which hands it over. Over the bus that
//! is two hops through the supervisor (worker, supervisor, worker) and a wake-up of a third
//! process for every such message. The supervisor therefore makes one datagram socket pair
//! per worker: the worker reads one end (its mailbox); the others hold the other end and
//! post to it directly. The pairs live as long as the supervisor, so a restarted worker gets
//! the same mailbox back; what was posted to the worker it replaces is discarded at start.
//!
//! A datagram is a postcard body without the bus's length prefix: the datagram is the
//! frame. Mail is best effort, as UDP is: a full mailbox makes the sender fall back to the
//! bus.

use serde::{Deserialize, Serialize};

use crate::codec::CodecError;
use crate::wire::SipHandoff;

/// Largest mail: a UDP datagram of 64 KiB and the hand-off's few fields.
pub const MAX_MAIL: usize = 65_536 + 1_024;

/// One message handed from worker `from`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Mail {
    pub from: String,
    pub handoff: SipHandoff,
}

/// [`Mail`] as it is sent, borrowed.
#[derive(Serialize)]
struct MailRef<'a> {
    from: &'a str,
    handoff: &'a SipHandoff,
}

/// The datagram for `handoff` from worker `from`.
pub fn encode(from: &str, handoff: &SipHandoff) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_allocvec(&MailRef { from, handoff }).map_err(CodecError::Encode)?;
    if bytes.len() > MAX_MAIL {
        return Err(CodecError::Oversize {
            len: bytes.len(),
            max: MAX_MAIL,
        });
    }
    Ok(bytes)
}

/// The mail in one received datagram.
pub fn decode(datagram: &[u8]) -> Result<Mail, CodecError> {
    postcard::from_bytes(datagram).map_err(CodecError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_config::Transport;

    fn handoff(len: usize) -> SipHandoff {
        SipHandoff {
            transport: Transport::Udp,
            peer: "[2001:db8::7]:5062".parse().unwrap(),
            connection: None,
            outbound: false,
            bytes: vec![b'x'; len],
        }
    }

    #[test]
    fn mail_comes_out_as_it_went_in() {
        let h = handoff(900);
        let mail = decode(&encode("udp-1", &h).unwrap()).unwrap();
        assert_eq!(mail.from, "udp-1");
        assert_eq!(mail.handoff, h);
    }

    #[test]
    fn the_largest_datagram_fits_and_a_cut_one_is_refused() {
        let bytes = encode("udp-254", &handoff(65_535)).unwrap();
        assert!(bytes.len() <= MAX_MAIL);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"").is_err());
    }
}
