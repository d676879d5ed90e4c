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
//! A completed non-INVITE server transaction over UDP waits out Timer J (64·T1, 32 s) only to
//! resend its final response to a retransmitted request. It leaves the slab for a compact
//! store that keeps just its key and that response (shared with what was sent), and since
//! Timer J is the same for all of them, their deadlines are a queue in order, not heap
//! entries. At thousands of REGISTERs per second these are most of the live transactions.
//!
//! The maps use a keyed fast hash (`ahash`, seeded from the OS): keys hold attacker-chosen
//! branches, and SipHash was a visible share of a worker's time.
//!
//! The table is bounded: [`TransactionTable::start_client`] and
//! [`TransactionTable::start_server`] refuse with [`TableError::Full`] past the configured
//! maximum, which the caller answers with a 503 (Service Unavailable).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::RandomState;

use super::key::{ClientKey, ServerKey, TransactionKey};
use super::machine::Transaction;
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

/// One occupied place in the slab.
#[derive(Debug)]
struct Slot<M> {
    key: TransactionKey,
    txn: Transaction<M>,
    /// The heap entry that is current for this slot: its deadline and generation.
    scheduled: Option<(Instant, u64)>,
}

/// A completed non-INVITE server transaction waiting out Timer J: what it still needs.
#[derive(Debug)]
struct Lingering<M> {
    /// When Timer J fires.
    until: Instant,
    /// The final response, resent to each retransmission of the request.
    response: M,
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
    clients: HashMap<ClientKey, usize, RandomState>,
    servers: HashMap<ServerKey, usize, RandomState>,
    slots: Vec<Option<Slot<M>>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    generation: u64,
    counts: Counts,
    /// Completed non-INVITE server transactions waiting out Timer J (counted in `counts`).
    lingering: HashMap<ServerKey, Lingering<M>, RandomState>,
    /// Their Timer J deadlines, earliest first. An entry whose key is no longer lingering,
    /// or lingers with another deadline, is stale and skipped.
    expiry: VecDeque<(Instant, ServerKey)>,
    /// The last poll left due ones for the next ([`EXPIRY_BATCH`]).
    expiry_backlog: bool,
}

/// How late Timer J may fire (see [`TransactionTable::next_deadline`]). Under a steady load of
/// UDP requests a completed transaction falls due every few hundred microseconds; waking for
/// each 10 ms batch of them cost a worker 100 wake-ups a second (issue 7).
pub const TIMER_J_SLACK: Duration = Duration::from_millis(100);

/// How many lingering transactions one [`poll_timers`](TransactionTable::poll_timers) frees
/// at most. After a burst of requests (phones registering again after an outage) thousands
/// fall due in one slack window; freed at once they held the worker for a millisecond or
/// more while calls waited. The rest stay due (see `next_deadline`), so the worker frees
/// the next batch as soon as it has looked at its sockets again.
pub const EXPIRY_BATCH: usize = 32;

impl<M: Clone> TransactionTable<M> {
    /// An empty table holding at most `max` live transactions.
    pub fn new(config: Config, max: usize) -> Self {
        TransactionTable {
            config,
            max,
            clients: HashMap::default(),
            servers: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            counts: Counts::default(),
            lingering: HashMap::default(),
            expiry: VecDeque::new(),
            expiry_backlog: false,
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

    /// The live transaction with this key, if any. A completed non-INVITE server transaction
    /// waiting out Timer J is kept as its final response alone and is not returned.
    pub fn get(&self, key: &TransactionKey) -> Option<&Transaction<M>> {
        let idx = self.find(key)?;
        self.slots.get(idx)?.as_ref().map(|slot| &slot.txn)
    }

    /// The earliest instant at which [`poll_timers`](Self::poll_timers) has work to do that
    /// should not wait. Timer J only frees a completed transaction, so it may fire up to
    /// [`TIMER_J_SLACK`] late, and the ones due within that window go together, in batches
    /// of [`EXPIRY_BATCH`]: after a full batch the next is due at once.
    pub fn next_deadline(&self) -> Option<Instant> {
        let heap = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let slack = if self.expiry_backlog {
            Duration::ZERO
        } else {
            TIMER_J_SLACK
        };
        let queue = self.expiry.front().map(|(at, _)| *at + slack);
        match (heap, queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        self.check_room(self.servers.contains_key(&key) || self.lingering.contains_key(&key))?;
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
        let Some(&idx) = self.servers.get(key) else {
            // Completed: the final response again (§17.2.2).
            let lingering = self.lingering.get(key)?;
            return Some(vec![Action::Send {
                message: lingering.response.clone(),
                retransmission: true,
            }]);
        };
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
        let Some(&idx) = self.servers.get(key) else {
            // Completed: later responses from the TU are discarded (§17.2.2).
            return match self.lingering.contains_key(key) {
                true => Ok(Vec::new()),
                false => Err(TableError::NotFound),
            };
        };
        Ok(self.apply(idx, |txn| match txn {
            Transaction::ServerInvite(t) => t.respond(now, status, response),
            Transaction::ServerNonInvite(t) => t.respond(now, status, response),
            _ => Vec::new(),
        }))
    }

    /// The transport failed to send a message of this transaction (§17.1.4, §17.2.4). `None`
    /// when no transaction has the key (it may have ended meanwhile).
    pub fn on_transport_error(&mut self, key: &TransactionKey) -> Option<Vec<Action<M>>> {
        let Some(idx) = self.find(key) else {
            // Completed: the transaction ends (§17.2.4).
            self.unlinger(key)?;
            return Some(vec![Action::TransportError, Action::Terminated]);
        };
        Some(self.apply(idx, Transaction::on_transport_error))
    }

    /// Drops a transaction without any action (the TU gives up on it, or the worker drains).
    /// A completed non-INVITE server transaction waiting out Timer J is dropped as well, but
    /// there is no [`Transaction`] left of it to return.
    pub fn remove(&mut self, key: &TransactionKey) -> Option<Transaction<M>> {
        let Some(idx) = self.find(key) else {
            self.unlinger(key);
            return None;
        };
        self.release(idx).map(|slot| slot.txn)
    }

    /// Fires every timer due at `now`, in deadline order, and returns what to do, each action
    /// with its transaction's key. Of the lingering transactions due, at most
    /// [`EXPIRY_BATCH`] are freed; the others are left for the next call.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<(TransactionKey, Action<M>)> {
        let mut fired = Vec::new();
        let mut freed = 0;
        self.expiry_backlog = false;
        loop {
            // Once a batch is freed, the rest of the queue waits; due timers still fire.
            let queue = if freed < EXPIRY_BATCH {
                self.tidy_expiry();
                self.expiry.front().map(|(at, _)| *at)
            } else {
                None
            };
            let heap = self.timers.peek().map(|&Reverse(entry)| entry);
            let (at, generation, idx) = match (heap, queue) {
                (Some(entry), q) if entry.0 <= now && q.is_none_or(|q| entry.0 <= q) => entry,
                (_, Some(q)) if q <= now => {
                    // Timer J of a completed non-INVITE server transaction.
                    freed += 1;
                    if let Some((_, key)) = self.expiry.pop_front() {
                        if self.lingering.remove(&key).is_some() {
                            self.counts.server_non_invite -= 1;
                            fired.push((TransactionKey::Server(key), Action::Terminated));
                        }
                    }
                    continue;
                }
                _ => break,
            };
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
        if freed == EXPIRY_BATCH {
            self.tidy_expiry();
            self.expiry_backlog = self.expiry.front().is_some_and(|(at, _)| *at <= now);
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
        if matches!(&slot.txn, Transaction::ServerNonInvite(t) if t.is_lingering()) {
            self.park(idx);
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

    /// Moves a completed non-INVITE server transaction from the slab to the lingering store:
    /// its key and final response, and its Timer J in the queue. It stays counted.
    fn park(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let (key, txn) = match slot {
            Slot {
                key: TransactionKey::Server(key),
                txn: Transaction::ServerNonInvite(txn),
                ..
            } => (key, txn),
            // Not a server non-INVITE transaction: it stays where it was.
            other => {
                self.slots[idx] = Some(other);
                return;
            }
        };
        self.free.push(idx);
        self.servers.remove(&key);
        let Some((until, response)) = txn.into_lingering() else {
            self.counts.server_non_invite -= 1;
            return;
        };
        // Timer J is one duration and `now` only moves forward, so this is nearly always
        // the back; a clock that stepped back still gets its place in order.
        let at = match self.expiry.back() {
            Some((last, _)) if *last > until => self.expiry.partition_point(|(at, _)| *at <= until),
            _ => self.expiry.len(),
        };
        self.expiry.insert(at, (until, key.clone()));
        self.lingering.insert(key, Lingering { until, response });
        self.tidy();
    }

    /// Drops a lingering completed transaction; `None` if the key has none.
    fn unlinger(&mut self, key: &TransactionKey) -> Option<()> {
        let TransactionKey::Server(key) = key else {
            return None;
        };
        self.lingering.remove(key)?;
        self.counts.server_non_invite -= 1;
        self.tidy_expiry();
        Some(())
    }

    /// Drops stale entries from the front of the Timer J queue, so `next_deadline` is exact.
    fn tidy_expiry(&mut self) {
        while let Some((at, key)) = self.expiry.front() {
            if self.lingering.get(key).is_some_and(|l| l.until == *at) {
                break;
            }
            self.expiry.pop_front();
        }
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
        if self.timers.len() > 2 * (self.len() - self.lingering.len()) + 64 {
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
