//! One wake-up per datagram for the UDP workers that share a socket (Linux).
//!
//! Every worker waits for the shared socket in its runtime's epoll, and epoll wakes every
//! waiter for each datagram: the workers that lose the race read nothing and go back to
//! sleep, a context switch each. The socket's sends wake them too, since the runtime also
//! asks to hear when the socket becomes writable. Kamailio's children avoid both by
//! blocking in `recvfrom`, where the kernel wakes one idle waiter.
//!
//! `EPOLLEXCLUSIVE` gives the same with epoll: for a datagram, the kernel wakes the first
//! epoll on the socket whose thread is asleep in `epoll_wait` on it, and only that one (a
//! worker busy with a request is passed over). Tokio registers the socket without it and
//! has no way to ask, and the flag can only be given when a descriptor is added. So this
//! module finds the runtime's epoll, reads the registration's token from
//! `/proc/self/fdinfo`, and registers the socket again with the same token: readable,
//! edge-triggered, exclusive, and without writable (this worker sends through another
//! descriptor of the socket, outside the runtime, and never waits to be writable).
//! Anything unexpected leaves the registration as tokio made it: the herd costs CPU, not
//! correctness.

#![allow(unsafe_code)]

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// Why the registration could not be made exclusive.
#[derive(Debug, thiserror::Error)]
pub enum NotExclusive {
    /// The socket is registered as tokio made it: it works, every idle worker wakes.
    #[error("the registration is as tokio made it: {0}")]
    Kept(#[source] io::Error),
    /// The socket is in no epoll any more: this worker would never read again.
    #[error("the socket is out of the runtime's epoll: {0}")]
    Lost(#[source] io::Error),
}

/// Makes the runtime's epoll registration of `socket` exclusive and read-only. Call from
/// within the runtime, after the socket was registered with it.
pub fn make_exclusive(socket: &tokio::net::UdpSocket) -> Result<(), NotExclusive> {
    let target = socket.as_raw_fd();
    let (epfd, token) = find_registration(target)
        .map_err(NotExclusive::Kept)?
        .ok_or_else(|| {
            NotExclusive::Kept(io::Error::new(
                io::ErrorKind::NotFound,
                "no epoll of this process has the socket",
            ))
        })?;
    // SAFETY: `epfd` is an open epoll descriptor of this process (it was just listed in
    // /proc/self/fd) that the runtime owns for the life of the process; ManuallyDrop keeps
    // this borrowed view from ever closing it.
    let epoll = ManuallyDrop::new(Epoll(unsafe { OwnedFd::from_raw_fd(epfd) }));
    let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLET | EpollFlags::EPOLLEXCLUSIVE;
    epoll
        .delete(socket.as_fd())
        .map_err(|e| NotExclusive::Kept(e.into()))?;
    // Readiness already there when it is added again is reported at once (the kernel polls
    // the socket on insertion), so a datagram that came in between is not lost.
    let added = epoll.add(socket.as_fd(), EpollEvent::new(interest, token));
    if let Err(e) = added {
        // Back as tokio had it (mio's interest for a socket read and written), or the
        // worker would never hear of a datagram again.
        let tokio = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        epoll
            .add(socket.as_fd(), EpollEvent::new(tokio, token))
            .map_err(|again| NotExclusive::Lost(again.into()))?;
        return Err(NotExclusive::Kept(e.into()));
    }
    Ok(())
}

/// The epoll descriptor of this process that watches `target`, and the token it reports.
fn find_registration(target: RawFd) -> io::Result<Option<(RawFd, u64)>> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        if let Some(token) = token_for(&info, target) {
            return Ok(Some((fd, token)));
        }
    }
    Ok(None)
}

/// From an epoll's fdinfo (`tfd: 7 events: 8000201d data: 55d0c1a8 ...` per watched
/// descriptor, numbers in hex but the descriptor's), the data word registered for `target`.
fn token_for(info: &str, target: RawFd) -> Option<u64> {
    info.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "tfd:").then_some(())?;
        let fd: RawFd = words.next()?.parse().ok()?;
        (fd == target).then_some(())?;
        let mut rest = words.skip_while(|w| *w != "data:");
        rest.next()?;
        u64::from_str_radix(rest.next()?, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_line_of_the_socket() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
                    tfd:        9 events: 8000201d data:     7f00aa01  pos:0 ino:1c sdev:9\n\
                    tfd:       12 events: 80000019 data:                3  pos:0 ino:1d sdev:9\n";
        assert_eq!(token_for(info, 9), Some(0x7f00_aa01));
        assert_eq!(token_for(info, 12), Some(3));
        assert_eq!(token_for(info, 1), None);
    }

    #[test]
    fn a_registered_socket_becomes_exclusive_and_still_receives() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            make_exclusive(&socket).expect("exclusive");
            let (epfd, _) = find_registration(socket.as_raw_fd())
                .expect("fdinfo")
                .expect("still registered");
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")).expect("info");
            let line = info
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(&socket.as_raw_fd().to_string()))
                .expect("the socket's line");
            let events = line.split_whitespace().nth(3).expect("events");
            let events = u32::from_str_radix(events, 16).expect("hex");
            assert_ne!(
                events & EpollFlags::EPOLLEXCLUSIVE.bits() as u32,
                0,
                "{line}"
            );
            assert_eq!(events & EpollFlags::EPOLLOUT.bits() as u32, 0, "{line}");
            // The runtime still hears of datagrams through the new registration.
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
            peer.send_to(b"ping", socket.local_addr().expect("addr"))
                .expect("send");
            let mut buf = [0u8; 8];
            let got = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.recv_from(&mut buf),
            )
            .await
            .expect("a datagram within 5 s")
            .expect("recv");
            assert_eq!(&buf[..got.0], b"ping");
        });
    }
}
