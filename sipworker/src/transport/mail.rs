//! Mail between the UDP workers that share a socket (`sipcraft_ipc::mail`): a worker posts
//! the messages of another's transactions straight to that worker's mailbox, a datagram
//! socket pair the supervisor made, instead of over the bus through the supervisor.

use std::io;
use std::os::unix::net::UnixDatagram;

use sipcraft_ipc::mail::{self, Mail, MAX_MAIL};
use sipcraft_ipc::wire::SipHandoff;

use crate::inherit::{take_socket, Expect};

/// The ends this worker posts to the other workers' mailboxes through.
#[derive(Debug, Default)]
pub struct Post {
    links: Vec<(String, UnixDatagram)>,
}

impl Post {
    /// Takes the inherited ends named on the command line (`worker name = descriptor`).
    pub fn open(peers: &[(String, i32)]) -> io::Result<Self> {
        let links = peers
            .iter()
            .map(|(name, fd)| {
                let owned = take_socket(*fd, Expect::Datagram)?;
                let socket = UnixDatagram::from(owned);
                socket.set_nonblocking(true)?;
                Ok((name.clone(), socket))
            })
            .collect::<io::Result<_>>()?;
        Ok(Post { links })
    }

    /// Posts `handoff` from worker `from` to worker `to`. False when there is no link to
    /// it or its mailbox is full (the caller then uses the bus); never waits.
    pub fn send(&self, from: &str, to: &str, handoff: &SipHandoff) -> bool {
        let Some((_, socket)) = self.links.iter().find(|(name, _)| name == to) else {
            return false;
        };
        let Ok(datagram) = mail::encode(from, handoff) else {
            return false;
        };
        match socket.send(&datagram) {
            Ok(n) => n == datagram.len(),
            Err(e) => {
                tracing::debug!(to, error = %e, "mail not posted; handing over the bus instead");
                false
            }
        }
    }
}

/// This worker's mailbox.
pub struct Mailbox {
    socket: tokio::net::UnixDatagram,
    buf: Vec<u8>,
}

impl Mailbox {
    /// Takes the inherited mailbox and empties it: what is in it was posted to the worker
    /// this one replaces, for transactions that went with it.
    pub fn open(fd: i32) -> io::Result<Self> {
        let socket = UnixDatagram::from(take_socket(fd, Expect::Datagram)?);
        socket.set_nonblocking(true)?;
        let mut buf = vec![0u8; MAX_MAIL + 1];
        let mut stale = 0usize;
        while socket.recv(&mut buf).is_ok() {
            stale += 1;
        }
        if stale > 0 {
            tracing::info!(stale, "discarded mail posted to this worker's predecessor");
        }
        Ok(Mailbox {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            buf,
        })
    }

    /// The next mail. A datagram that is not mail is logged and skipped.
    pub async fn recv(&mut self) -> Mail {
        loop {
            match self.socket.recv(&mut self.buf).await {
                Ok(n) if n <= MAX_MAIL => match mail::decode(&self.buf[..n]) {
                    Ok(m) => return m,
                    Err(e) => tracing::warn!(error = %e, "mail that could not be read; dropped"),
                },
                Ok(n) => tracing::warn!(bytes = n, "mail over the size limit; dropped"),
                Err(e) => {
                    tracing::warn!(error = %e, "mailbox read failed");
                    // A read error on a socket pair is not expected to clear; do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_config::Transport;
    use std::os::fd::IntoRawFd;

    fn pair() -> (i32, i32) {
        let (a, b) = UnixDatagram::pair().unwrap();
        (a.into_raw_fd(), b.into_raw_fd())
    }

    #[tokio::test]
    async fn mail_posted_by_one_worker_is_read_by_the_other_and_stale_mail_is_discarded() {
        let (mailbox_fd, post_fd) = pair();
        let post = Post::open(&[("udp-0".into(), post_fd)]).unwrap();
        let handoff = |bytes: &[u8]| SipHandoff {
            transport: Transport::Udp,
            peer: "127.0.0.1:5070".parse().unwrap(),
            connection: None,
            outbound: false,
            bytes: bytes.to_vec(),
        };
        // Posted before the mailbox's worker starts: for its predecessor.
        assert!(post.send("udp-1", "udp-0", &handoff(b"stale")));
        let mut mailbox = Mailbox::open(mailbox_fd).unwrap();
        let ringing = handoff(b"SIP/2.0 180 Ringing\r\n\r\n");
        assert!(post.send("udp-1", "udp-0", &ringing));
        assert!(!post.send("udp-1", "udp-7", &ringing), "no link to udp-7");
        let mail = tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.recv())
            .await
            .unwrap();
        assert_eq!(mail.from, "udp-1");
        // The first mail read is the one posted after the start: the stale one is gone.
        assert_eq!(mail.handoff, ringing);
    }
}
