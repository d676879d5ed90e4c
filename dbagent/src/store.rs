//! The dbagent's own view of the bindings: what it has persisted (journal and cache).
//!
//! The bus replica is the truth; after every update the dbagent compares the affected AOR
//! in the replica with this view and journals the difference. Comparing rather than
//! copying updates one by one means a missed stretch (the dbagent was killed, or fell behind
//! and was resynced from a snapshot) is caught up the same way as a single change.

use std::collections::HashSet;

use sipcraft_ipc::state::{Binding, BindingRef, BindingTable};

use crate::journal::Op;

/// Bindings by AOR, as persisted, in the same compact table as the replica's.
#[derive(Debug, Default)]
pub struct Store {
    bindings: BindingTable,
}

/// (aor, key) of one binding.
pub type BindingId = (String, String);

impl Store {
    pub fn new(bindings: Vec<Binding>) -> Store {
        let mut store = Store::default();
        for b in bindings {
            store.apply(&Op::BindingUpserted(b));
        }
        store
    }

    /// Applies a journaled operation (replaying the journal at start).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::BindingUpserted(b) => self.bindings.upsert(b),
            Op::BindingRemoved { aor, key } => self.bindings.remove(aor, key),
            Op::CallRecord(_) => {}
        }
    }

    /// Makes `aor` hold exactly `now` (the replica's bindings) and returns the operations
    /// that do the same to the persisted copy. Bindings in `keep` (being restored, not yet
    /// back from the bus) are kept even when the replica lacks them.
    pub fn sync_aor(&mut self, aor: &str, now: Vec<Binding>, keep: &HashSet<BindingId>) -> Vec<Op> {
        let mut ops = Vec::new();
        let old: Vec<BindingRef<'_>> = self.bindings.get(aor).collect();
        for o in &old {
            if now.iter().any(|b| b.key == o.key) {
                continue;
            }
            if !keep.contains(&(o.aor.to_owned(), o.key.to_owned())) {
                ops.push(Op::BindingRemoved {
                    aor: o.aor.to_owned(),
                    key: o.key.to_owned(),
                });
            }
        }
        let removed = ops.len();
        for b in now {
            if !old.iter().any(|o| *o == b.view()) {
                ops.push(Op::BindingUpserted(b));
            }
        }
        drop(old);
        // Upserts first, as before: the journal order a replay (and PostgreSQL) sees.
        ops.rotate_left(removed);
        for op in &ops {
            self.apply(op);
        }
        ops
    }

    /// Every AOR that has bindings here.
    pub fn aors(&self) -> impl Iterator<Item = &str> {
        self.bindings.aors()
    }

    /// The table itself (a copy of it is what the cache file is written from).
    pub fn table(&self) -> &BindingTable {
        &self.bindings
    }

    /// Every binding.
    pub fn all(&self) -> impl Iterator<Item = BindingRef<'_>> {
        self.bindings.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Forgets bindings expired at `now_ms` (nothing is journaled: every replica and the
    /// database drop them by their absolute expiry).
    pub fn purge_expired(&mut self, now_ms: u64) {
        self.bindings.purge_expired(now_ms);
    }
}

pub use sipcraft_ipc::state::now_ms;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sipcraft_config::Transport;

    pub(crate) fn binding(aor: &str, key: &str, cseq: u32) -> Binding {
        Binding {
            aor: aor.into(),
            key: key.into(),
            contact: format!("sip:{aor}@127.0.0.1:5070"),
            source: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
            owner: "udp-0".into(),
            connection: None,
            instance: None,
            reg_id: None,
            user_agent: None,
            call_id: "c".into(),
            cseq,
            q: None,
            expires_at_ms: u64::MAX,
        }
    }

    #[test]
    fn sync_journals_only_the_difference() {
        let mut s = Store::new(vec![binding("1", "a", 1), binding("1", "b", 1)]);
        let none = HashSet::new();
        let ops = s.sync_aor("1", vec![binding("1", "a", 1), binding("1", "c", 1)], &none);
        assert_eq!(
            ops,
            vec![
                Op::BindingUpserted(binding("1", "c", 1)),
                Op::BindingRemoved {
                    aor: "1".into(),
                    key: "b".into()
                }
            ]
        );
        assert!(s
            .sync_aor("1", vec![binding("1", "a", 1), binding("1", "c", 1)], &none)
            .is_empty());
        let ops = s.sync_aor("1", vec![binding("1", "a", 2)], &none);
        assert_eq!(ops.len(), 2);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn restoring_bindings_are_kept() {
        let mut s = Store::new(vec![binding("1", "a", 1)]);
        let keep = HashSet::from([("1".to_string(), "a".to_string())]);
        assert!(s.sync_aor("1", vec![], &keep).is_empty());
        assert_eq!(s.len(), 1);
    }
}
