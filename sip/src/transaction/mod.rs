//! Transaction state machines (RFC 3261 §17, with the Accepted state of RFC 6026), sans-I/O.
//!
//! The four machines — [`ClientInvite`] (§17.1.1), [`ClientNonInvite`] (§17.1.2),
//! [`ServerInvite`] (§17.2.1) and [`ServerNonInvite`] (§17.2.2) — do no I/O and read no clock.
//! Events (a response received, a response from the TU, a transport error, a timer) go in with
//! the current [`Instant`]; a list of [`Action`]s comes out, and `next_deadline()` says when the
//! machine next wants to be woken. The transport layer owns sockets and sleeping.
//!
//! The machines know nothing of the parser. A message is an opaque payload `M: Clone` (by
//! default `Arc<[u8]>`, the bytes as sent or received) that the machine hands back in actions
//! when it must be (re)sent or passed up; for a response the machine only needs its status
//! code, which the caller passes beside it.
//!
//! Transactions are found by [`TransactionKey`] (§17.1.3, §17.2.3), built from plain strings,
//! and kept in a bounded [`TransactionTable`] with one timer queue for all of them:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use sipcraft_sip::transaction::{
//!     Action, ClientKey, Config, Reliability, TransactionKey, TransactionTable,
//! };
//!
//! let mut table: TransactionTable<Arc<[u8]>> = TransactionTable::new(Config::default(), 10_000);
//! let now = Instant::now();
//! let key = ClientKey::new("z9hG4bK776asdhds", "INVITE").unwrap();
//! let invite: Arc<[u8]> = Arc::from(&b"INVITE sip:bob@example.com SIP/2.0\r\n..."[..]);
//! let actions = table
//!     .start_client(key.clone(), Reliability::Unreliable, invite, now)
//!     .unwrap();
//! assert!(matches!(actions[0], Action::Send { retransmission: false, .. }));
//!
//! // Later: a 180 Ringing whose top Via branch and CSeq method give the same key.
//! let ringing: Arc<[u8]> = Arc::from(&b"SIP/2.0 180 Ringing\r\n..."[..]);
//! let actions = table.on_response(&key, 180, ringing, now).unwrap();
//! assert!(matches!(actions[0], Action::PassToTu(_)));
//!
//! // The driver sleeps until `table.next_deadline()` and then calls `poll_timers`.
//! let fired: Vec<(TransactionKey, Action<Arc<[u8]>>)> = table.poll_timers(Instant::now());
//! assert!(fired.is_empty());
//! ```
//!
//! # Driving it from tokio
//!
//! The payload can carry whatever the transport needs to resend, for example the destination
//! beside the bytes. A UDP worker's loop waits on its socket and on the table's next deadline:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use sipcraft_sip::transaction::{
//!     Action, Config, Reliability, ServerKey, TransactionKey, TransactionTable,
//! };
//! use tokio::net::UdpSocket;
//! use tokio::time::{sleep_until, Instant};
//!
//! /// What the parser tells about a received request (stand-in for the real parser).
//! struct Peek<'a> { method: &'a str, branch: &'a str, sent_by: &'a str }
//! fn peek(_datagram: &[u8]) -> Option<Peek<'_>> { None }
//!
//! type Msg = (SocketAddr, Arc<[u8]>);
//!
//! async fn worker(socket: UdpSocket) -> std::io::Result<()> {
//!     let mut table: TransactionTable<Msg> = TransactionTable::new(Config::default(), 50_000);
//!     let mut buf = vec![0u8; 65_535];
//!     loop {
//!         let deadline = table.next_deadline().map(Instant::from_std);
//!         let actions: Vec<(Option<TransactionKey>, Action<Msg>)> = tokio::select! {
//!             received = socket.recv_from(&mut buf) => {
//!                 let (len, peer) = received?;
//!                 let msg: Msg = (peer, Arc::from(&buf[..len]));
//!                 let now = Instant::now().into_std();
//!                 let Some(p) = peek(&msg.1) else { continue };
//!                 let Ok(key) = ServerKey::new(p.branch, p.sent_by, p.method) else { continue };
//!                 match table.on_request(&key, p.method, msg.clone(), now) {
//!                     // A retransmission or an ACK: absorbed, answered, or passed up.
//!                     Some(actions) => actions.into_iter().map(|a| (None, a)).collect(),
//!                     None if p.method == "ACK" => Vec::new(), // ACK to a 2xx: to the TU
//!                     None => match table.start_server(key, Reliability::Unreliable, msg, now) {
//!                         Ok(actions) => actions.into_iter().map(|a| (None, a)).collect(),
//!                         Err(_full) => Vec::new(), // answer 503 statelessly
//!                     },
//!                 }
//!             }
//!             _ = async {
//!                 match deadline {
//!                     Some(at) => sleep_until(at).await,
//!                     None => std::future::pending().await,
//!                 }
//!             } => {
//!                 let now = Instant::now().into_std();
//!                 table.poll_timers(now).into_iter().map(|(k, a)| (Some(k), a)).collect()
//!             }
//!         };
//!         for (_key, action) in actions {
//!             match action {
//!                 Action::Send { message: (to, bytes), .. } => {
//!                     if socket.send_to(&bytes, to).await.is_err() {
//!                         // Report it: table.on_transport_error(&key) and run those actions.
//!                     }
//!                 }
//!                 Action::SendTrying { .. } => { /* build the 100, then table.respond(..) */ }
//!                 Action::SendAck { .. } => { /* build the ACK from request and response */ }
//!                 Action::PassToTu(_) | Action::Timeout(_) | Action::TransportError => {
//!                     // Hand to the TU (registrar, proxy core) with the key.
//!                 }
//!                 Action::Terminated => {}
//!             }
//!         }
//!     }
//! }
//! ```

mod client_invite;
mod client_non_invite;
mod key;
mod machine;
mod server_invite;
mod server_non_invite;
mod table;
mod timers;

#[cfg(test)]
mod tests;

pub use client_invite::ClientInvite;
pub use client_non_invite::ClientNonInvite;
pub use key::{ClientKey, KeyError, ServerKey, TransactionKey, MAGIC_COOKIE};
pub use machine::Transaction;
pub use server_invite::ServerInvite;
pub use server_non_invite::ServerNonInvite;
pub use table::{Counts, TableError, TransactionTable};
pub use timers::{Config, ConfigError, TimerKind};

#[cfg(doc)]
use std::time::Instant;

/// Whether the transport a transaction runs over delivers reliably (TCP, TLS, WebSocket, SCTP)
/// or not (UDP). Only unreliable transports get retransmissions and non-zero D, I, J, K timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// TCP, TLS, WS, WSS: no retransmissions; the wait-for-retransmission states end at once.
    Reliable,
    /// UDP: the transaction retransmits and absorbs retransmissions.
    Unreliable,
}

impl Reliability {
    /// True for [`Reliability::Reliable`].
    pub fn is_reliable(self) -> bool {
        self == Reliability::Reliable
    }
}

/// The state of a transaction. Each machine uses a subset, as documented on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Client INVITE: the INVITE is sent, nothing heard yet.
    Calling,
    /// Non-INVITE: client waiting for a response, or server waiting for the TU.
    Trying,
    /// A provisional response was received (client) or sent / awaited (server).
    Proceeding,
    /// A final response (non-2xx for INVITE) was received or sent; retransmissions are absorbed.
    Completed,
    /// Server INVITE: the ACK for a non-2xx final response arrived.
    Confirmed,
    /// INVITE: a 2xx was received or sent (RFC 6026); 2xx retransmissions pass through.
    Accepted,
    /// The transaction is over; the table drops it at once.
    Terminated,
}

/// The four kinds of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Client INVITE transaction (§17.1.1).
    ClientInvite,
    /// Client non-INVITE transaction (§17.1.2).
    ClientNonInvite,
    /// Server INVITE transaction (§17.2.1).
    ServerInvite,
    /// Server non-INVITE transaction (§17.2.2).
    ServerNonInvite,
}

/// What a machine asks its driver to do. Actions come out in the order they must be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<M> {
    /// Hand this message to the transport: the request (client) or a response (server).
    /// `retransmission` is true when the transaction resends something it sent before.
    Send {
        /// The message to send, as the TU gave it.
        message: M,
        /// Whether this is a resend by the transaction (timer or absorbed retransmission).
        retransmission: bool,
    },
    /// Client INVITE: build the ACK for this non-2xx final response (§17.1.1.3: Request-URI,
    /// Call-ID, From, CSeq number and top Via of `request`, To of `response`, method ACK) and
    /// send it where the INVITE went. Asked again for every retransmission of the response; the
    /// ACK is the same each time, so the driver may cache it.
    SendAck {
        /// The INVITE the transaction sent.
        request: M,
        /// The final response being acknowledged.
        response: M,
    },
    /// Server INVITE: build a 100 (Trying) for `request` (§8.2.6) and hand it back through
    /// `respond(.., 100, ..)`, which sends it and keeps it for INVITE retransmissions.
    SendTrying {
        /// The INVITE that created the transaction.
        request: M,
    },
    /// Pass this message up to the TU: a response (client transactions) or, in a server INVITE
    /// transaction's Accepted state, an ACK.
    PassToTu(M),
    /// A timer ran out and the transaction failed. For a client transaction (Timer B or F) the
    /// TU treats this like a 408 (Request Timeout); for a server INVITE transaction (Timer H)
    /// the ACK never came.
    Timeout(TimerKind),
    /// The transport reported a failure sending this transaction's message (§17.1.4, §17.2.4).
    TransportError,
    /// The transaction is over. The table drops it; a TU keeping per-transaction state frees it.
    Terminated,
}

/// The class of a status code, as the machines need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 100-199.
    Provisional,
    /// 200-299.
    Success,
    /// 300-699.
    Failure,
    /// Anything else: ignored.
    Invalid,
}

impl StatusClass {
    /// Classifies a status code.
    pub(crate) fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Provisional,
            200..=299 => StatusClass::Success,
            300..=699 => StatusClass::Failure,
            _ => StatusClass::Invalid,
        }
    }
}
