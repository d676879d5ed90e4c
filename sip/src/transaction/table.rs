//! The transaction table: every live transaction of a worker, found by key, with one timer
//! queue for all of them.
//!
//! Transactions live in a slab (`Vec` of slots plus a free list) indexed by two hash maps, one
//! for client keys and one for server keys. Timers are a binary heap of
//! `(deadline, generation, slot)`: whenever a transaction's next deadline changes, a new entry
//! is pushed with a fresh generation and the slot remembers it; entries whose generation no
//! longer matches their slot are stale and skipped. Stale entries are dropped from the top
//! after every call, and the heap is rebuilt when they outnumber the live ones, so it stays
//! bounded by the number of transactions.
//!
//! The table is bounded: [`TransactionTable::start_client`] and
//! [`TransactionTable::start_server`] refuse with [`TableError::Full`] past the configured
//! maximum, which the caller answers with a 503 (Service Unavailable).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use super::key::{ClientKey, ServerKey, TransactionKey};
use super::timers::Config;
use super::{
    Action, ClientInvite, ClientNonInvite, Kind, Reliability, ServerInvite, ServerNonInvite, State,
};

/// Why the table refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The table holds its maximum of live transactions; answer 503 and retry later.
    Full {
        /// The configured maximum.
        max: usize,
    },
    /// A live transaction already has this key.
    Duplicate,
    /// No live transaction has this key.
    NotFound,
    /// ACK never creates a client transaction (§17.1.1.3: the ACK to a non-2xx belongs to the
    /// INVITE transaction; the ACK to a 2xx is sent by the TU outside any transaction).
    AckHasNoTransaction,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Full { max } => write!(f, "transaction table full ({max} live)"),
            TableError::Duplicate => f.write_str("a transaction with this key already exists"),
            TableError::NotFound => f.write_str("no transaction with this key"),
            TableError::AckHasNoTransaction => f.write_str("ACK does not start a transaction"),
        }
    }
}

impl std::error::Error for TableError {}

/// Live transactions by kind, for `sipcraft ctl status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// INVITE client transactions.
    pub client_invite: usize,
    /// Non-INVITE client transactions.
    pub client_non_invite: usize,
    /// INVITE server transactions.
    pub server_invite: usize,
    /// Non-INVITE server transactions.
    pub server_non_invite: usize,
}

impl Counts {
    /// All live transactions.
    pub fn total(&self) -> usize {
        self.client_invite + self.client_non_invite + self.server_invite + self.server_non_invite
    }

    fn of_kind(&mut self, kind: Kind) -> &mut usize {
        match kind {
            Kind::ClientInvite => &mut self.client_invite,
            Kind::ClientNonInvite => &mut self.client_non_invite,
            Kind::ServerInvite => &mut self.server_invite,
            Kind::ServerNonInvite => &mut self.server_non_invite,
        }
    }
}

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

/// One occupied place in the slab.
#[derive(Debug)]
struct Slot<M> {
    key: TransactionKey,
    txn: Transaction<M>,
    /// The heap entry that is current for this slot: its deadline and generation.
    scheduled: Option<(Instant, u64)>,
}

/// Every live transaction of one worker, with a bounded size and one timer queue.
///
/// Each call that feeds an event returns the actions to carry out; a transaction that
/// reaches Terminated is removed at once (its last action is [`Action::Terminated`]). The
/// driver sleeps until [`next_deadline`](Self::next_deadline) and then calls
/// [`poll_timers`](Self::poll_timers).
#[derive(Debug)]
pub struct TransactionTable<M = Arc<[u8]>> {
    config: Config,
    max: usize,
    clients: HashMap<ClientKey, usize>,
    servers: HashMap<ServerKey, usize>,
    slots: Vec<Option<Slot<M>>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    generation: u64,
    counts: Counts,
}

impl<M: Clone> TransactionTable<M> {
    /// An empty table holding at most `max` live transactions.
    pub fn new(config: Config, max: usize) -> Self {
        TransactionTable {
            config,
            max,
            clients: HashMap::new(),
            servers: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            counts: Counts::default(),
        }
    }

    /// The timer configuration every new transaction gets.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The most live transactions the table accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The number of live transactions.
    pub fn len(&self) -> usize {
        self.counts.total()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live transactions by kind.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The live transaction with this key, if any.
    pub fn get(&self, key: &TransactionKey) -> Option<&Transaction<M>> {
        let idx = self.find(key)?;
        self.slots.get(idx)?.as_ref().map(|slot| &slot.txn)
    }

    /// The earliest instant at which [`poll_timers`](Self::poll_timers) has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Starts a client transaction for a request the TU sends: INVITE if the key's method is
    /// INVITE, non-INVITE otherwise. The returned actions send the request.
    pub fn start_client(
        &mut self,
        key: ClientKey,
        reliability: Reliability,
        request: M,
        now: Instant,
    ) -> Result<Vec<Action<M>>, TableError> {
        if key.method() == "ACK" {
            return Err(TableError::AckHasNoTransaction);
        }
        self.check_room(self.clients.contains_key(&key))?;
        let (txn, actions) = if key.is_invite() {
            let (t, a) = ClientInvite::new(self.config, reliability, request, now);
            (Transaction::ClientInvite(t), a)
        } else {
            let (t, a) = ClientNonInvite::new(self.config, reliability, request, now);
            (Transaction::ClientNonInvite(t), a)
        };
        let idx = self.insert(TransactionKey::Client(key.clone()), txn);
        self.clients.insert(key, idx);
        self.settle(idx);
        Ok(actions)
    }

    /// Starts a server transaction for a new request (one [`on_request`](Self::on_request)
    /// did not match): INVITE if the key's method is INVITE, non-INVITE otherwise. The caller
    /// passes the request to the TU. Never call this for an ACK: an unmatched ACK (the ACK to
    /// a 2xx) goes to the TU without a transaction. The returned actions are empty unless the
    /// Trying delay is zero.
    pub fn start_server(
        &mut self,
        key: ServerKey,
        reliability: Reliability,
        request: M,
        now: Instant,
    ) -> Result<Vec<Action<M>>, TableError> {
        self.check_room(self.servers.contains_key(&key))?;
        let (txn, actions) = if key.is_invite() {
            let (t, a) = ServerInvite::new(self.config, reliability, request, now);
            (Transaction::ServerInvite(t), a)
        } else {
            let t = ServerNonInvite::new(self.config, reliability, request);
            (Transaction::ServerNonInvite(t), Vec::new())
        };
        let idx = self.insert(TransactionKey::Server(key.clone()), txn);
        self.servers.insert(key, idx);
        self.settle(idx);
        Ok(actions)
    }

    /// Feeds a response received from the network (key from its top Via branch and CSeq
    /// method). `None` when no client transaction matches: the caller handles it as a stray
    /// response (RFC 6026 §8.4: a proxy drops it).
    pub fn on_response(
        &mut self,
        key: &ClientKey,
        status: u16,
        response: M,
        now: Instant,
    ) -> Option<Vec<Action<M>>> {
        let idx = *self.clients.get(key)?;
        Some(self.apply(idx, |txn| match txn {
            Transaction::ClientInvite(t) => t.on_response(now, status, response),
            Transaction::ClientNonInvite(t) => t.on_response(now, status, response),
            _ => Vec::new(),
        }))
    }

    /// Feeds a request received from the network whose key may match a server transaction:
    /// a retransmission, or an ACK (whose key is the INVITE's). `method` is the request's own
    /// method. `None` when nothing matches: a new request (call
    /// [`start_server`](Self::start_server)) or an ACK to a 2xx (pass it to the TU).
    pub fn on_request(
        &mut self,
        key: &ServerKey,
        method: &str,
        request: M,
        now: Instant,
    ) -> Option<Vec<Action<M>>> {
        let idx = *self.servers.get(key)?;
        Some(self.apply(idx, |txn| match txn {
            Transaction::ServerInvite(t) if method == "ACK" => t.on_ack(now, request),
            Transaction::ServerInvite(t) => t.on_invite(),
            Transaction::ServerNonInvite(t) => t.on_request(),
            _ => Vec::new(),
        }))
    }

    /// The TU sends a response on a server transaction.
    pub fn respond(
        &mut self,
        key: &ServerKey,
        status: u16,
        response: M,
        now: Instant,
    ) -> Result<Vec<Action<M>>, TableError> {
        let idx = *self.servers.get(key).ok_or(TableError::NotFound)?;
        Ok(self.apply(idx, |txn| match txn {
            Transaction::ServerInvite(t) => t.respond(now, status, response),
            Transaction::ServerNonInvite(t) => t.respond(now, status, response),
            _ => Vec::new(),
        }))
    }

    /// The transport failed to send a message of this transaction (§17.1.4, §17.2.4). `None`
    /// when no transaction has the key (it may have ended meanwhile).
    pub fn on_transport_error(&mut self, key: &TransactionKey) -> Option<Vec<Action<M>>> {
        let idx = self.find(key)?;
        Some(self.apply(idx, Transaction::on_transport_error))
    }

    /// Drops a transaction without any action (the TU gives up on it, or the worker drains).
    pub fn remove(&mut self, key: &TransactionKey) -> Option<Transaction<M>> {
        let idx = self.find(key)?;
        self.release(idx).map(|slot| slot.txn)
    }

    /// Fires every timer due at `now`, in deadline order, and returns what to do, each action
    /// with its transaction's key.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<(TransactionKey, Action<M>)> {
        let mut fired = Vec::new();
        while let Some(&Reverse((at, generation, idx))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slot_mut(idx) else {
                continue;
            };
            if slot.scheduled != Some((at, generation)) {
                continue;
            }
            slot.scheduled = None;
            let actions = slot.txn.on_timer(now);
            if !actions.is_empty() {
                let key = slot.key.clone();
                fired.extend(actions.into_iter().map(|a| (key.clone(), a)));
            }
            self.settle(idx);
        }
        self.tidy();
        fired
    }

    fn find(&self, key: &TransactionKey) -> Option<usize> {
        match key {
            TransactionKey::Client(k) => self.clients.get(k).copied(),
            TransactionKey::Server(k) => self.servers.get(k).copied(),
        }
    }

    fn slot_mut(&mut self, idx: usize) -> Option<&mut Slot<M>> {
        self.slots.get_mut(idx).and_then(Option::as_mut)
    }

    fn check_room(&self, duplicate: bool) -> Result<(), TableError> {
        if duplicate {
            Err(TableError::Duplicate)
        } else if self.len() >= self.max {
            Err(TableError::Full { max: self.max })
        } else {
            Ok(())
        }
    }

    /// Puts a transaction in a free slot and counts it; the caller indexes it.
    fn insert(&mut self, key: TransactionKey, txn: Transaction<M>) -> usize {
        *self.counts.of_kind(txn.kind()) += 1;
        let slot = Some(Slot {
            key,
            txn,
            scheduled: None,
        });
        match self.free.pop() {
            Some(idx) => {
                self.slots[idx] = slot;
                idx
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// Runs one event on a transaction, then reschedules or removes it.
    fn apply(
        &mut self,
        idx: usize,
        event: impl FnOnce(&mut Transaction<M>) -> Vec<Action<M>>,
    ) -> Vec<Action<M>> {
        let actions = match self.slot_mut(idx) {
            Some(slot) => event(&mut slot.txn),
            None => Vec::new(),
        };
        self.settle(idx);
        actions
    }

    /// After an event: drops a terminated transaction, or queues its next deadline if it
    /// changed.
    fn settle(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if slot.txn.state() == State::Terminated {
            self.release(idx);
            return;
        }
        let next = slot.txn.next_deadline();
        if next != slot.scheduled.map(|(at, _)| at) {
            slot.scheduled = next.map(|at| {
                self.generation += 1;
                self.timers.push(Reverse((at, self.generation, idx)));
                (at, self.generation)
            });
        }
        self.tidy();
    }

    /// Removes a transaction from the slab, the indexes and the counts.
    fn release(&mut self, idx: usize) -> Option<Slot<M>> {
        let slot = self.slots.get_mut(idx)?.take()?;
        match &slot.key {
            TransactionKey::Client(k) => self.clients.remove(k),
            TransactionKey::Server(k) => self.servers.remove(k),
        };
        *self.counts.of_kind(slot.txn.kind()) -= 1;
        self.free.push(idx);
        self.tidy();
        Some(slot)
    }

    /// Whether a heap entry is the current one of its slot.
    fn is_current(&self, at: Instant, generation: u64, idx: usize) -> bool {
        self.slots
            .get(idx)
            .and_then(Option::as_ref)
            .is_some_and(|slot| slot.scheduled == Some((at, generation)))
    }

    /// Keeps the heap's top current (so `next_deadline` is exact) and its size bounded.
    fn tidy(&mut self) {
        while let Some(&Reverse((at, generation, idx))) = self.timers.peek() {
            if self.is_current(at, generation, idx) {
                break;
            }
            self.timers.pop();
        }
        if self.timers.len() > 2 * self.len() + 64 {
            self.timers = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(idx, slot)| {
                    let (at, generation) = slot.as_ref()?.scheduled?;
                    Some(Reverse((at, generation, idx)))
                })
                .collect();
        }
    }

    /// The number of entries in the timer heap, stale ones included (for tests).
    #[cfg(test)]
    pub(crate) fn queued_timers(&self) -> usize {
        self.timers.len()
    }
}
