//! What the UDP workers of a listen entry share besides their socket (Linux): the claim
//! table (`sipcraft_ipc::claims`), which says which worker holds a transaction, and a
//! mail link to each of them (`sipcraft_ipc::mail`), over which the others hand it the
//! messages of its transactions without a hop through the supervisor.
//!
//! Both are made once, at start, and kept for the supervisor's whole life, as the listen
//! sockets are: a restarted worker gets the same table and the same mailbox back.

#[cfg(unix)]
use std::ffi::OsString;
#[cfg(unix)]
use std::os::fd::RawFd;

use sipcraft_config::Config;

use crate::children::Child;
#[cfg(target_os = "linux")]
use crate::children::Kind;
use crate::Error;

/// The claim table and the mail links of the UDP workers that share a socket.
#[derive(Default)]
pub struct UdpShared {
    #[cfg(target_os = "linux")]
    claims: Option<std::os::fd::OwnedFd>,
    /// Per child (by index in the child table), for a UDP worker sharing its socket: the
    /// end of its mail link it reads, and the end the others post to.
    #[cfg(target_os = "linux")]
    links: Vec<Option<Link>>,
}

#[cfg(target_os = "linux")]
struct Link {
    mailbox: std::os::fd::OwnedFd,
    post: std::os::fd::OwnedFd,
}

/// Whether the workers of `listen` share a UDP socket.
#[cfg(target_os = "linux")]
fn shared(config: &Config, listen: usize) -> bool {
    let entry = &config.listen[listen];
    crate::sockets::SHARED_UDP
        && entry.transport == sipcraft_config::Transport::Udp
        && entry.workers > 1
}

impl UdpShared {
    /// The table and the links for `children` (the child table of `config`).
    #[cfg(target_os = "linux")]
    pub fn new(config: &Config, children: &[Child]) -> Result<Self, Error> {
        use sipcraft_ipc::claims::{create, DEFAULT_COUNTERS, DEFAULT_RATES, DEFAULT_SLOTS};
        let sharing =
            |c: &Child| matches!(c.kind, Kind::Worker { listen, .. } if shared(config, listen));
        if !children.iter().any(sharing) {
            return Ok(Self::default());
        }
        let claims =
            create(DEFAULT_SLOTS, DEFAULT_COUNTERS, DEFAULT_RATES).map_err(Error::Claims)?;
        let links = children
            .iter()
            .map(|c| sharing(c).then(link).transpose())
            .collect::<std::io::Result<_>>()
            .map_err(Error::MailLinks)?;
        Ok(UdpShared {
            claims: Some(claims),
            links,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_config: &Config, _children: &[Child]) -> Result<Self, Error> {
        Ok(Self::default())
    }

    /// For child `i`: the descriptors it inherits and the arguments that name them.
    #[cfg(target_os = "linux")]
    pub fn for_child(&self, children: &[Child], i: usize) -> (Vec<RawFd>, Vec<OsString>) {
        use std::os::fd::AsRawFd;
        let (Some(claims), Some(Some(mine))) = (&self.claims, self.links.get(i)) else {
            return (Vec::new(), Vec::new());
        };
        let Kind::Worker { listen: me, .. } = children[i].kind else {
            return (Vec::new(), Vec::new());
        };
        let mut fds = vec![claims.as_raw_fd(), mine.mailbox.as_raw_fd()];
        let mut args: Vec<OsString> = vec![
            "--claims-fd".into(),
            claims.as_raw_fd().to_string().into(),
            "--mailbox-fd".into(),
            mine.mailbox.as_raw_fd().to_string().into(),
        ];
        for (j, other) in children.iter().enumerate() {
            let same_entry = matches!(other.kind, Kind::Worker { listen, .. } if listen == me);
            if j == i || !same_entry {
                continue;
            }
            if let Some(Some(link)) = self.links.get(j) {
                fds.push(link.post.as_raw_fd());
                args.push("--peer".into());
                args.push(format!("{}={}", other.name, link.post.as_raw_fd()).into());
            }
        }
        (fds, args)
    }

    #[cfg(all(unix, not(target_os = "linux")))]
    pub fn for_child(&self, _children: &[Child], _i: usize) -> (Vec<RawFd>, Vec<OsString>) {
        (Vec::new(), Vec::new())
    }
}

/// A datagram socket pair: a worker's mailbox and the end that posts to it. Both ends are
/// non-blocking (a worker never waits to post: it falls back to the bus) and close on exec
/// unless handed down.
#[cfg(target_os = "linux")]
fn link() -> std::io::Result<Link> {
    use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
    let (mailbox, post) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // Room for a burst of hand-offs (the kernel caps it at net.core.wmem_max): posts are
    // charged to the sending end until the mailbox's reader takes them.
    let _ = setsockopt(&post, sockopt::SndBuf, &(1 << 20));
    Ok(Link { mailbox, post })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_post_reaches_the_mailbox_and_a_full_one_refuses_without_waiting() {
        use nix::sys::socket::{recv, send, MsgFlags};
        let l = link().unwrap();
        send(
            std::os::fd::AsRawFd::as_raw_fd(&l.post),
            b"INVITE",
            MsgFlags::empty(),
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let n = recv(
            std::os::fd::AsRawFd::as_raw_fd(&l.mailbox),
            &mut buf,
            MsgFlags::empty(),
        )
        .unwrap();
        assert_eq!(&buf[..n], b"INVITE");
        // Nobody reads: the sender's buffer fills and a post fails at once.
        let big = vec![0u8; 60_000];
        let full = (0..10_000).find_map(|_| {
            send(
                std::os::fd::AsRawFd::as_raw_fd(&l.post),
                &big,
                MsgFlags::empty(),
            )
            .err()
        });
        assert_eq!(full, Some(nix::errno::Errno::EAGAIN));
    }
}
