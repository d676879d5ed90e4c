//! How a datagram on the socket the UDP workers share wakes them (Linux).
//!
//! Every worker waits for the shared socket in its runtime's epoll, and by default epoll
//! wakes every waiter for each datagram: the workers that lose the race read nothing and go
//! back to sleep, a context switch each. The socket's sends wake them too, since the
//! runtime also asks to hear when the socket becomes writable. Kamailio's children avoid
//! both by blocking in `recvfrom`, where the kernel wakes one idle waiter.
//!
//! `EPOLLEXCLUSIVE` gives the same with epoll: for a datagram, the kernel wakes the first
//! epoll on the socket whose thread is asleep in `epoll_wait` on it, and only that one (a
//! worker busy with a request is passed over). Tokio registers the socket without it and
//! has no way to ask, and the flag can only be given when a descriptor is added. So this
//! module finds the runtime's epoll, reads the registration's token from
//! `/proc/self/fdinfo`, and registers the socket again with the same token: readable,
//! edge-triggered, and without writable (this worker sends through another descriptor of
//! the socket, outside the runtime, and never waits to be writable); exclusive or not.
//! Anything unexpected leaves the registration as tokio made it: the herd costs CPU, not
//! correctness.
//!
//! Which is better depends on the load, so [`Wake`] switches between the two. Woken alone,
//! the first idle worker in the socket's queue takes the datagram even when the CPU it
//! would run on is busy and another worker's is free; woken together, whichever gets a CPU
//! first takes it. Measured at 1,000 REGISTERs a second on two vCPUs shared with the load
//! generator, waking every idle worker answered 10 µs sooner at the median and 15 µs at
//! p99, for about 10 µs more CPU per registration, a cost that grows with the rate and with
//! the number of workers. So below `[limits] udp_wake_all_below` datagrams a second (all
//! the workers of the table together) every idle worker is woken; above it, one.
//!
//! Unless calls are among them. A response belongs to the worker whose client transaction
//! it answers, and the ACK, BYE and CANCEL that follow belong to whichever holds theirs:
//! woken together, the workers take them about half the time on the wrong one, which hands
//! them over (a mailbox message and one more wake-up). Woken one at a time, at a moderate
//! rate the first worker in the socket's queue takes nearly all of them. Measured at 300
//! calls a second (`bench/ab_latency.py`, two A/Bs of 4 rounds of 1,800 calls): waking one
//! when responses come, the callee's 180 was relayed in 19-22 µs at the median against
//! 29-31 waking every idle worker (p99 about the same), for 7-17 % less CPU per call;
//! registrations alone still answer sooner with every idle worker woken (p99 97 µs against
//! 119 at 1,000 a second). So a worker also wakes one when at least a tenth of what it
//! reads itself are responses (staying so down to a twentieth): the share does not depend
//! on the mode.

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

/// The runtime's epoll registration of a socket, which this module remakes.
pub struct Registration {
    /// A view of the runtime's epoll, which the runtime owns: never closed from here.
    epoll: ManuallyDrop<Epoll>,
    token: u64,
    exclusive: bool,
}

impl Registration {
    /// Finds the runtime's registration of `socket` and makes it read-only, exclusive or
    /// not. Call from within the runtime, after the socket was registered with it.
    pub fn take(socket: &tokio::net::UdpSocket, exclusive: bool) -> Result<Self, NotExclusive> {
        let (epfd, token) = find_registration(socket.as_raw_fd())
            .map_err(NotExclusive::Kept)?
            .ok_or_else(|| {
                NotExclusive::Kept(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no epoll of this process has the socket",
                ))
            })?;
        // SAFETY: `epfd` is an open epoll descriptor of this process (it was just listed
        // in /proc/self/fd) that the runtime owns for the life of the process;
        // ManuallyDrop keeps this borrowed view from ever closing it.
        let epoll = ManuallyDrop::new(Epoll(unsafe { OwnedFd::from_raw_fd(epfd) }));
        let mut reg = Registration {
            epoll,
            token,
            exclusive: !exclusive,
        };
        reg.set(socket, exclusive)?;
        Ok(reg)
    }

    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Registers `socket` again, exclusive or not. On an error the registration is as
    /// tokio made it ([`NotExclusive::Kept`]), or gone ([`NotExclusive::Lost`]).
    pub fn set(
        &mut self,
        socket: &tokio::net::UdpSocket,
        exclusive: bool,
    ) -> Result<(), NotExclusive> {
        if exclusive == self.exclusive {
            return Ok(());
        }
        let mut interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        if exclusive {
            interest |= EpollFlags::EPOLLEXCLUSIVE;
        }
        self.epoll
            .delete(socket.as_fd())
            .map_err(|e| NotExclusive::Kept(e.into()))?;
        // Readiness already there when it is added again is reported at once (the kernel
        // polls the socket on insertion), so a datagram that came in between is not lost.
        let added = self
            .epoll
            .add(socket.as_fd(), EpollEvent::new(interest, self.token));
        if let Err(e) = added {
            // Back as tokio had it (mio's interest for a socket read and written), or the
            // worker would never hear of a datagram again.
            let tokio = EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET;
            self.epoll
                .add(socket.as_fd(), EpollEvent::new(tokio, self.token))
                .map_err(|again| NotExclusive::Lost(again.into()))?;
            return Err(NotExclusive::Kept(e.into()));
        }
        self.exclusive = exclusive;
        Ok(())
    }
}

/// How often a worker looks at the rate: a switch costs two system calls.
const WINDOW: std::time::Duration = std::time::Duration::from_millis(250);
/// Datagrams a window needs before it decides; a slower worker decides every `SPARSE`
/// (a share of one or two datagrams would follow the last one's kind).
const ENOUGH: u64 = 20;
const SPARSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Chooses, from the rate of datagrams all the workers read, whether a datagram wakes every
/// idle worker or one (see the module's comment).
pub struct Wake {
    registration: Registration,
    table: std::sync::Arc<sipcraft_ipc::claims::Claims>,
    /// Datagrams a second (all the workers) below which every idle worker is woken.
    wake_all_below: u64,
    /// Datagrams this worker read since it last added to the table's tally, and how many of
    /// them were responses.
    read: u64,
    responses: u64,
    since: std::time::Instant,
    tally: u64,
}

impl Wake {
    /// Takes over the registration of `socket`: every idle worker woken to begin with
    /// (a worker starts idle), unless `wake_all_below` is 0.
    pub fn new(
        socket: &tokio::net::UdpSocket,
        table: std::sync::Arc<sipcraft_ipc::claims::Claims>,
        wake_all_below: u64,
    ) -> Result<Self, NotExclusive> {
        let registration = Registration::take(socket, wake_all_below == 0)?;
        let tally = table.tally(0);
        Ok(Wake {
            registration,
            table,
            wake_all_below,
            read: 0,
            responses: 0,
            since: std::time::Instant::now(),
            tally,
        })
    }

    pub fn reload(&mut self, wake_all_below: u64) {
        self.wake_all_below = wake_all_below;
    }

    /// This worker read a datagram (a response or not) at `now`. Every [`WINDOW`], the last
    /// one decides: above `wake_all_below` datagrams a second, or with a tenth of them
    /// responses, one idle worker is woken per datagram; below three quarters of the rate
    /// and a twentieth of responses, every idle worker (the gaps keep a load near a line
    /// from switching back and forth).
    pub fn read(
        &mut self,
        socket: &tokio::net::UdpSocket,
        now: std::time::Instant,
        response: bool,
    ) -> Result<(), NotExclusive> {
        self.read += 1;
        self.responses += u64::from(response);
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < WINDOW || (self.read < ENOUGH && elapsed < SPARSE) {
            return Ok(());
        }
        let responses = std::mem::take(&mut self.responses);
        let read = std::mem::take(&mut self.read);
        let tally = self.table.tally(read);
        let per_s = rate(tally.wrapping_sub(self.tally), elapsed);
        self.tally = tally;
        self.since = now;
        let exclusive = self.registration.is_exclusive();
        // Leaving a mode takes a margin: a quarter below the rate, half the share.
        let (busy, calls) = if exclusive {
            (per_s * 4 >= self.wake_all_below * 3, responses * 20 >= read)
        } else {
            (per_s > self.wake_all_below, responses * 10 >= read)
        };
        // 0 turns the choice off: always one.
        let want = self.wake_all_below == 0 || busy || calls;
        if want != exclusive {
            tracing::debug!(
                datagrams_per_s = per_s,
                exclusive = want,
                "UDP wake-up mode"
            );
            self.registration.set(socket, want)?;
        }
        Ok(())
    }
}

/// `n` events over `elapsed`, per second.
fn rate(n: u64, elapsed: std::time::Duration) -> u64 {
    let us = elapsed.as_micros().max(1);
    u64::try_from(u128::from(n) * 1_000_000 / us).unwrap_or(u64::MAX)
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

    /// The epoll events the runtime's registration of `socket` asks for.
    fn events_of(socket: &tokio::net::UdpSocket) -> u32 {
        let fd = socket.as_raw_fd();
        let (epfd, _) = find_registration(fd)
            .expect("fdinfo")
            .expect("still registered");
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")).expect("info");
        let line = info
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&fd.to_string()))
            .expect("the socket's line");
        let events = line.split_whitespace().nth(3).expect("events");
        u32::from_str_radix(events, 16).expect("hex")
    }

    /// A datagram sent to `socket` reaches it through the runtime.
    async fn still_receives(socket: &tokio::net::UdpSocket) {
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
    }

    const EXCLUSIVE: u32 = EpollFlags::EPOLLEXCLUSIVE.bits() as u32;
    const OUT: u32 = EpollFlags::EPOLLOUT.bits() as u32;

    #[tokio::test]
    async fn a_registered_socket_switches_between_exclusive_and_not_and_still_receives() {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        assert_ne!(events_of(&socket) & OUT, 0, "tokio's own registration");
        let mut reg = Registration::take(&socket, true).expect("exclusive");
        let events = events_of(&socket);
        assert_eq!(events & (EXCLUSIVE | OUT), EXCLUSIVE, "{events:x}");
        still_receives(&socket).await;
        reg.set(&socket, false).expect("not exclusive");
        let events = events_of(&socket);
        assert_eq!(events & (EXCLUSIVE | OUT), 0, "{events:x}");
        still_receives(&socket).await;
        reg.set(&socket, true).expect("exclusive again");
        assert_ne!(events_of(&socket) & EXCLUSIVE, 0);
        still_receives(&socket).await;
    }

    /// A socket and a claim table to count on, with a [`Wake`] for the socket.
    async fn wake_with_table() -> (tokio::net::UdpSocket, std::os::fd::OwnedFd, Wake) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fd = sipcraft_ipc::claims::create(64, 64, 64).expect("memfd");
        let table = std::sync::Arc::new(sipcraft_ipc::claims::Claims::open(&fd).expect("map"));
        let wake = Wake::new(&socket, table, 1_000).expect("wake");
        (socket, fd, wake)
    }

    #[tokio::test]
    async fn the_rate_of_all_the_workers_chooses_the_wake_up() {
        let (socket, fd, mut wake) = wake_with_table().await;
        let other = sipcraft_ipc::claims::Claims::open(&fd).expect("map");
        let ms = std::time::Duration::from_millis;
        assert_eq!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "a worker starts waking all"
        );
        let t0 = std::time::Instant::now();
        // 99 datagrams here and 400 read by the other worker in a quarter of a second
        // (counted from `Wake::new`, a little before `t0`): 2,000 a second in all, far
        // above 1,000 however slow the start was.
        for _ in 0..99 {
            wake.read(&socket, t0 + ms(1), false).expect("read");
        }
        assert_eq!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "not before the window ends"
        );
        other.tally(400);
        wake.read(&socket, t0 + ms(250), false).expect("read");
        assert_ne!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "2,000/s wakes one worker"
        );
        // 800 a second is above three quarters of the line: still one.
        other.tally(180);
        for _ in 0..19 {
            wake.read(&socket, t0 + ms(400), false).expect("read");
        }
        wake.read(&socket, t0 + ms(500), false).expect("read");
        assert_ne!(events_of(&socket) & EXCLUSIVE, 0, "800/s keeps waking one");
        // A quiet second: every idle worker again.
        wake.read(&socket, t0 + ms(1_500), false).expect("read");
        assert_eq!(events_of(&socket) & EXCLUSIVE, 0, "1/s wakes every worker");
        still_receives(&socket).await;
    }

    #[tokio::test]
    async fn responses_among_the_datagrams_wake_one_worker_at_any_rate() {
        let (socket, _fd, mut wake) = wake_with_table().await;
        let ms = std::time::Duration::from_millis;
        let t0 = std::time::Instant::now();
        // A window of 20 datagrams (80 a second), 2 of them responses: calls.
        let window = |wake: &mut Wake, end: u64, responses: usize| {
            for i in 0..20 {
                let at = if i == 19 { ms(end) } else { ms(end - 100) };
                wake.read(&socket, t0 + at, i < responses).expect("read");
            }
        };
        window(&mut wake, 250, 0);
        assert_eq!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "no responses: every worker"
        );
        window(&mut wake, 500, 1);
        assert_eq!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "a twentieth does not switch"
        );
        window(&mut wake, 750, 2);
        assert_ne!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "a tenth responses: one worker"
        );
        window(&mut wake, 1_000, 1);
        assert_ne!(events_of(&socket) & EXCLUSIVE, 0, "a twentieth keeps one");
        window(&mut wake, 1_250, 0);
        assert_eq!(
            events_of(&socket) & EXCLUSIVE,
            0,
            "none again: every worker"
        );
        still_receives(&socket).await;
    }
}
