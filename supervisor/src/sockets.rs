//! Listen sockets, bound by the supervisor and handed down to the workers.
//!
//! On Linux, the UDP workers of a listen entry share one socket: the next datagram goes to
//! whichever worker is free, one queue for all of them (as Kamailio's children share
//! theirs). Which worker holds a transaction is in the claim table
//! (`sipcraft_ipc::claims`), so retransmissions, ACKs and CANCELs still reach it.
//! Elsewhere every UDP worker gets its own socket bound with SO_REUSEPORT, and the kernel
//! keeps one phone's datagrams on one worker. TCP workers always get one listener each.
//!
//! The supervisor keeps the sockets open for its whole life: a restarted worker gets the
//! very same socket back (and while it restarts, the other workers keep reading the shared
//! one). Binding here also means a busy or privileged port fails at start, once, with a
//! clear error, and only the supervisor needs the capability for port 5060.

use std::io;
use std::net::SocketAddr;

use sipcraft_config::{Listen, Transport};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
#[error("could not bind {transport} {address}")]
pub struct BindError {
    pub transport: &'static str,
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Whether the UDP workers of an entry share one socket (see the module's comment).
pub const SHARED_UDP: bool = cfg!(target_os = "linux");

/// One socket per worker of a listen entry: for shared UDP, descriptors of one socket.
pub fn bind(listen: &Listen) -> Result<Vec<Socket>, BindError> {
    let shared = SHARED_UDP && listen.transport == Transport::Udp;
    let sockets = if shared {
        bind_one(listen.transport, listen.address).and_then(|first| {
            let mut all = Vec::with_capacity(listen.workers);
            for _ in 1..listen.workers {
                all.push(first.try_clone()?);
            }
            all.insert(0, first);
            Ok(all)
        })
    } else {
        (0..listen.workers)
            .map(|_| bind_one(listen.transport, listen.address))
            .collect::<io::Result<_>>()
    };
    sockets.map_err(|source| BindError {
        transport: listen.transport.as_str(),
        address: listen.address,
        source,
    })
}

fn bind_one(transport: Transport, address: SocketAddr) -> io::Result<Socket> {
    let domain = Domain::for_address(address);
    let (ty, proto) = match transport {
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
        // TLS and WebSocket run over TCP: the worker does the handshake.
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
            (Type::STREAM, Protocol::TCP)
        }
    };
    let socket = Socket::new(domain, ty, Some(proto))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A UDP socket shared by all the workers needs neither SO_REUSEADDR nor SO_REUSEPORT,
    // and without them a second instance on the same port fails to bind instead of taking
    // the datagrams (with SO_REUSEADDR on both, Linux lets the later one bind and gives it
    // the unicast traffic).
    let shared = SHARED_UDP && transport == Transport::Udp;
    if !shared {
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
    }
    if transport == Transport::Udp {
        // Bursts of REGISTERs after a power cut must not overflow the receive queue.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
    }
    socket.bind(&address.into())?;
    if transport != Transport::Udp {
        socket.listen(1024)?;
    }
    Ok(socket)
}
