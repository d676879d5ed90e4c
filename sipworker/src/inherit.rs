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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
