//! Taking over the listen socket the supervisor handed down.
//!
//! The supervisor binds every listen socket and keeps it open for its whole life; a worker
//! receives its socket as an inherited descriptor whose number comes on the command line.
//! The same goes for the UDP workers' claim table, a memfd. This module is the only place
//! in sipcraft that turns a raw descriptor into an owned one.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt};

/// The kind of socket expected on the inherited descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Datagram,
    Listener,
}

/// Takes ownership of descriptor `fd`, after checking that it is an open socket of the
/// expected kind (so a wrong number on the command line is an error, not a stolen file).
pub fn take_socket(fd: RawFd, expect: Expect) -> io::Result<OwnedFd> {
    use std::os::fd::BorrowedFd;
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a socket"),
        ));
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: fcntl just confirmed `fd` is open; the borrow lives only for this check.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&borrowed, sockopt::SockType).map_err(io::Error::from)?;
    let want = match expect {
        Expect::Datagram => nix::sys::socket::SockType::Datagram,
        Expect::Listener => nix::sys::socket::SockType::Stream,
    };
    if ty != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is a {ty:?} socket, not {want:?}"),
        ));
    }
    // SAFETY: `fd` is an open socket of the expected type that the supervisor passed to this
    // process for it alone; nothing else in this process refers to it, so owning it is sound.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    close_on_exec(&owned)?;
    Ok(owned)
}

/// Marks an inherited descriptor close-on-exec: it was left inheritable only to cross the
/// supervisor's exec of this process, and nothing this process might start should get it.
fn close_on_exec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(drop)
        .map_err(io::Error::from)
}

/// Takes ownership of descriptor `fd`, after checking that it is an open memory file (the
/// claim table's memfd), not a socket or a terminal.
#[cfg(target_os = "linux")]
pub fn take_memory(fd: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::stat::{fstat, SFlag};
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a memory file"),
        ));
    }
    let stat = fstat(fd).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a memory file"),
        ));
    }
    // SAFETY: fstat confirmed `fd` is an open regular file, which the supervisor passed to
    // this process for this use alone; nothing else in this process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    close_on_exec(&owned)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn a_taken_socket_is_checked_and_no_longer_inherited() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let flags = |fd: RawFd| FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(!flags(a.as_raw_fd()).contains(FdFlag::FD_CLOEXEC));
        let wrong = take_socket(b.as_raw_fd(), Expect::Listener).unwrap_err();
        assert!(wrong.to_string().contains("not Stream"), "{wrong}");
        let taken = take_socket(a.into_raw_fd(), Expect::Datagram).unwrap();
        assert!(flags(taken.as_raw_fd()).contains(FdFlag::FD_CLOEXEC));
        assert!(
            take_socket(1, Expect::Datagram).is_err(),
            "stdout is never taken"
        );
    }
}
