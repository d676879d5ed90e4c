//! Any one of the four transaction machines, as the table holds them.

use std::time::Instant;

use super::{Action, ClientInvite, ClientNonInvite, Kind, ServerInvite, ServerNonInvite, State};

/// Any one of the four machines.
#[derive(Debug, Clone)]
pub enum Transaction<M> {
    /// §17.1.1.
    ClientInvite(ClientInvite<M>),
    /// §17.1.2.
    ClientNonInvite(ClientNonInvite<M>),
    /// §17.2.1.
    ServerInvite(ServerInvite<M>),
    /// §17.2.2.
    ServerNonInvite(ServerNonInvite<M>),
}

impl<M: Clone> Transaction<M> {
    /// Which kind of transaction this is.
    pub fn kind(&self) -> Kind {
        match self {
            Transaction::ClientInvite(_) => Kind::ClientInvite,
            Transaction::ClientNonInvite(_) => Kind::ClientNonInvite,
            Transaction::ServerInvite(_) => Kind::ServerInvite,
            Transaction::ServerNonInvite(_) => Kind::ServerNonInvite,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self {
            Transaction::ClientInvite(t) => t.state(),
            Transaction::ClientNonInvite(t) => t.state(),
            Transaction::ServerInvite(t) => t.state(),
            Transaction::ServerNonInvite(t) => t.state(),
        }
    }

    /// The request that the transaction sent (client) or that created it (server). A TU
    /// answering a CANCEL uses it to build the 487 for the INVITE.
    pub fn request(&self) -> &M {
        match self {
            Transaction::ClientInvite(t) => t.request(),
            Transaction::ClientNonInvite(t) => t.request(),
            Transaction::ServerInvite(t) => t.request(),
            Transaction::ServerNonInvite(t) => t.request(),
        }
    }

    /// When the machine next wants `on_timer`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Transaction::ClientInvite(t) => t.next_deadline(),
            Transaction::ClientNonInvite(t) => t.next_deadline(),
            Transaction::ServerInvite(t) => t.next_deadline(),
            Transaction::ServerNonInvite(t) => t.next_deadline(),
        }
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<M>> {
        match self {
            Transaction::ClientInvite(t) => t.on_timer(now),
            Transaction::ClientNonInvite(t) => t.on_timer(now),
            Transaction::ServerInvite(t) => t.on_timer(now),
            Transaction::ServerNonInvite(t) => t.on_timer(now),
        }
    }

    /// The transport failed to send this transaction's message.
    pub fn on_transport_error(&mut self) -> Vec<Action<M>> {
        match self {
            Transaction::ClientInvite(t) => t.on_transport_error(),
            Transaction::ClientNonInvite(t) => t.on_transport_error(),
            Transaction::ServerInvite(t) => t.on_transport_error(),
            Transaction::ServerNonInvite(t) => t.on_transport_error(),
        }
    }
}
