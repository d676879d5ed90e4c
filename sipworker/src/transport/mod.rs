//! Transports: where SIP bytes come from and go to. UDP is served inline by the worker's
//! main loop; each stream connection (TCP, TLS, WebSocket) has a task of its own that
//! frames it and reports to the main loop with the same events, whatever the transport.

#[cfg(target_os = "linux")]
pub mod exclusive;
#[cfg(target_os = "linux")]
pub mod mail;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use sipcraft_config::Transport;

/// Where a message came from, or must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The connection, for connection-oriented transports.
    pub conn: Option<u64>,
    /// The worker that owns the connection, when it is not this one: sending means handing
    /// the message over the bus.
    pub owner: Option<String>,
}

impl Target {
    pub fn udp(peer: SocketAddr) -> Self {
        Target {
            transport: Transport::Udp,
            peer,
            conn: None,
            owner: None,
        }
    }

    pub fn is_reliable(&self) -> bool {
        self.transport != Transport::Udp
    }
}

/// A message to send: the payload the transaction layer keeps for retransmissions.
#[derive(Debug, Clone)]
pub struct Out {
    pub target: Target,
    pub bytes: Arc<[u8]>,
}
