//! Tombstones: what a replica remembers, for a few seconds, about the bindings it removed.
//!
//! Workers publish binding changes in the order they make them, but two workers reading
//! the same phone's REGISTERs publish independently: a refresh published lazily by one can
//! reach the hub after the same phone's de-REGISTER published by the other. The phone's
//! own order is in its requests (RFC 3261 §10.3: one Call-ID, rising CSeq), so a removal
//! leaves a tombstone with the Call-ID and CSeq of the REGISTER that made it, and an upsert
//! from an older REGISTER of the same Call-ID that arrives afterwards is refused. (So is an
//! upsert older than the live binding it would replace.) A removal by another registration
//! (an eviction past `max_contacts_per_aor`, a `Contact: *` under another Call-ID) buries
//! the removed binding's own next REGISTER, which may be in flight.
//!
//! The hub decides (`Replica::apply_local`, with its clock): it numbers and forwards only
//! what it applied, and numbered updates apply everywhere unchecked, so every replica ends
//! the same. A worker checks its own changes the same way before it applies them locally,
//! and its registrar answers a buried REGISTER as out of order.
//!
//! Tombstones last [`TOMB_MS`], far longer than a lazily published change can lag, and at
//! most [`MAX_TOMBS`] are kept (the oldest go first). A tombstone costs about 250 bytes
//! (its strings, the table slot, the order entry), so a flood of de-REGISTERs costs at most
//! some 16 MB per process while it lasts; the table is given back once they have expired.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

/// How long a tombstone outlives its removal, in milliseconds.
pub const TOMB_MS: u64 = 5_000;

/// Most tombstones kept.
pub const MAX_TOMBS: usize = 65_536;

/// A removed binding (or, with no key, every binding of an AOR) and the REGISTER that
/// removed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tomb {
    pub aor: String,
    /// The binding's key; `None` for `Contact: *`, which removed them all.
    pub key: Option<String>,
    pub call_id: String,
    pub cseq: u32,
    /// Milliseconds since the Unix epoch when it stops counting.
    pub until_ms: u64,
}

/// The tombstones of one replica.
#[derive(Clone, Default)]
pub struct Tombs {
    table: HashTable<(u64, Tomb)>,
    /// (hash, serial) of every tombstone in the order they were laid: the oldest first. A
    /// tombstone laid again gets a new serial, so its older entry here is skipped.
    order: VecDeque<(u64, u64)>,
    serial: u64,
    hasher: RandomState,
}

impl std::fmt::Debug for Tombs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tombs")
            .field("len", &self.table.len())
            .finish()
    }
}

impl Tombs {
    fn hash(&self, aor: &str, key: Option<&str>) -> u64 {
        self.hasher.hash_one((aor, key))
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Lays (or moves forward) the tombstone of `tomb.aor` / `tomb.key`, dropping those
    /// past their time (at `now_ms`) or beyond [`MAX_TOMBS`].
    pub fn lay(&mut self, tomb: Tomb, now_ms: u64) {
        self.serial += 1;
        let serial = self.serial;
        let hash = self.hash(&tomb.aor, tomb.key.as_deref());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |(_, t)| t.aor == tomb.aor && t.key == tomb.key,
            |(_, t)| hasher.hash_one((t.aor.as_str(), t.key.as_deref())),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                let held = &mut slot.get_mut().1;
                // A tombstone only moves forward: an older removal arriving late keeps the
                // newer one's CSeq.
                if held.call_id != tomb.call_id || held.cseq <= tomb.cseq {
                    *slot.get_mut() = (serial, tomb);
                } else {
                    held.until_ms = held.until_ms.max(tomb.until_ms);
                    slot.get_mut().0 = serial;
                }
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((serial, tomb));
            }
        }
        self.order.push_back((hash, serial));
        self.prune(now_ms);
    }

    /// Drops tombstones past their time at `now_ms`, and the oldest beyond [`MAX_TOMBS`].
    pub fn prune(&mut self, now_ms: u64) {
        while let Some(&(hash, serial)) = self.order.front() {
            let full = self.table.len() > MAX_TOMBS;
            let Ok(entry) = self.table.find_entry(hash, |(s, _)| *s == serial) else {
                // Laid again since: its newer entry is further back.
                self.order.pop_front();
                continue;
            };
            if entry.get().1.until_ms > now_ms && !full {
                break;
            }
            entry.remove();
            self.order.pop_front();
        }
        if self.table.is_empty() && self.table.capacity() > 1024 {
            // A flood is over: give its room back.
            let hasher = &self.hasher;
            self.table.shrink_to(0, |(_, t)| {
                hasher.hash_one((t.aor.as_str(), t.key.as_deref()))
            });
            self.order = VecDeque::new();
        }
        if self.order.len() > 2 * MAX_TOMBS {
            // Only lays of the same few bindings over and over leave this many stale entries.
            let table = &self.table;
            self.order
                .retain(|&(hash, serial)| table.find(hash, |(s, _)| *s == serial).is_some());
        }
    }

    /// Whether a change made by REGISTER `call_id` / `cseq` to binding `key` of `aor` is
    /// older than a removal still remembered at `now_ms`: same Call-ID, a CSeq not above it.
    pub fn buries(&self, aor: &str, key: &str, call_id: &str, cseq: u32, now_ms: u64) -> bool {
        if self.table.is_empty() {
            return false;
        }
        [Some(key), None].into_iter().any(|k| {
            self.table
                .find(self.hash(aor, k), |(_, t)| {
                    t.aor == aor && t.key.as_deref() == k
                })
                .is_some_and(|(_, t)| t.until_ms > now_ms && t.call_id == call_id && cseq <= t.cseq)
        })
    }

    /// Every tombstone, oldest first (for a snapshot).
    pub fn iter(&self) -> impl Iterator<Item = &Tomb> {
        self.order.iter().filter_map(|&(hash, serial)| {
            self.table.find(hash, |(s, _)| *s == serial).map(|(_, t)| t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tomb(key: Option<&str>, cseq: u32, until_ms: u64) -> Tomb {
        Tomb {
            aor: "1001".into(),
            key: key.map(str::to_owned),
            call_id: "c1".into(),
            cseq,
            until_ms,
        }
    }

    #[test]
    fn a_tomb_buries_older_requests_of_its_call_id_until_its_time() {
        let mut t = Tombs::default();
        assert!(!t.buries("1001", "a", "c1", 1, 0));
        t.lay(tomb(Some("a"), 5, 1_000), 0);
        assert!(t.buries("1001", "a", "c1", 4, 999));
        assert!(t.buries("1001", "a", "c1", 5, 999));
        assert!(!t.buries("1001", "a", "c1", 6, 999), "a later request");
        assert!(!t.buries("1001", "a", "c2", 4, 999), "another Call-ID");
        assert!(!t.buries("1001", "b", "c1", 4, 999), "another binding");
        assert!(!t.buries("1002", "a", "c1", 4, 999), "another AOR");
        assert!(!t.buries("1001", "a", "c1", 4, 1_000), "past its time");
    }

    #[test]
    fn a_wildcard_tomb_buries_every_key_and_tombs_only_move_forward() {
        let mut t = Tombs::default();
        t.lay(tomb(None, 7, 1_000), 0);
        assert!(t.buries("1001", "x", "c1", 7, 0));
        t.lay(tomb(Some("a"), 9, 2_000), 0);
        t.lay(tomb(Some("a"), 8, 3_000), 0);
        assert!(
            t.buries("1001", "a", "c1", 9, 2_500),
            "kept CSeq 9, the later time"
        );
        assert_eq!(t.len(), 2);
        t.prune(1_000);
        assert_eq!(t.iter().cloned().collect::<Vec<_>>().len(), 1);
        t.prune(3_000);
        assert!(t.is_empty());
    }

    #[test]
    fn at_most_max_tombs_are_kept_and_the_oldest_go() {
        let mut t = Tombs::default();
        for i in 0..MAX_TOMBS + 10 {
            let mut b = tomb(Some(&i.to_string()), 1, u64::MAX);
            b.aor = format!("a{i}");
            t.lay(b, 0);
        }
        assert_eq!(t.len(), MAX_TOMBS);
        assert!(!t.buries("a0", "0", "c1", 1, 0));
        let last = MAX_TOMBS + 9;
        assert!(t.buries(&format!("a{last}"), &last.to_string(), "c1", 1, 0));
        // Laying one binding over and over keeps the order list bounded too.
        for _ in 0..3 * MAX_TOMBS {
            t.lay(tomb(Some("same"), 1, u64::MAX), 0);
        }
        assert!(t.order.len() <= 2 * MAX_TOMBS + 1);
        assert_eq!(t.iter().count(), t.len());
    }
}
