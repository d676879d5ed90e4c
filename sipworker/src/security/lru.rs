//! A bounded map that remembers the order entries were last renewed, for the per-IP
//! tables: the oldest entry is found and dropped in O(log n), so eviction stays cheap even
//! when a flood of new addresses keeps the table full.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map with a size bound and an age order (oldest renewal first).
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    map: HashMap<K, (V, u64), ahash::RandomState>,
    order: BTreeMap<u64, K>,
    next: u64,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V> Lru<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            map: HashMap::default(),
            order: BTreeMap::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the bound; entries beyond it leave at the next insert.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// The value, without renewing its age.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(v, _)| v)
    }

    /// Makes `key` the newest entry.
    pub(crate) fn renew(&mut self, key: &K) {
        let seq = self.bump();
        if let Some((_, old)) = self.map.get_mut(key) {
            self.order.remove(old);
            *old = seq;
            self.order.insert(seq, *key);
        }
    }

    /// Inserts or replaces `key` as the newest entry, first dropping the oldest entries
    /// while the map is full; returns what was dropped.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Vec<(K, V)> {
        let mut dropped = Vec::new();
        self.remove(&key);
        while self.map.len() >= self.capacity {
            match self.pop_oldest() {
                Some(entry) => dropped.push(entry),
                None => break,
            }
        }
        let seq = self.bump();
        self.map.insert(key, (value, seq));
        self.order.insert(seq, key);
        dropped
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, seq) = self.map.remove(key)?;
        self.order.remove(&seq);
        Some(value)
    }

    /// The oldest entry.
    pub(crate) fn oldest(&self) -> Option<(&K, &V)> {
        let (_, key) = self.order.first_key_value()?;
        self.map.get(key).map(|(v, _)| (key, v))
    }

    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        self.map.remove(&key).map(|(v, _)| (key, v))
    }

    /// Drops oldest entries while `expired` says so, at most `limit` of them (so one call
    /// never does unbounded work); returns how many went.
    pub(crate) fn purge_oldest(
        &mut self,
        limit: usize,
        mut expired: impl FnMut(&V) -> bool,
    ) -> usize {
        let mut n = 0;
        while n < limit {
            match self.oldest() {
                Some((_, v)) if expired(v) => {
                    self.pop_oldest();
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    /// Entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }

    fn bump(&mut self) -> u64 {
        self.next = self.next.wrapping_add(1);
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_oldest_first() {
        let mut l = Lru::new(3);
        for k in 0..3u32 {
            assert!(l.insert(k, k * 10).is_empty());
        }
        l.renew(&0);
        let dropped = l.insert(3, 30);
        assert_eq!(dropped, [(1, 10)]);
        assert_eq!(l.len(), 3);
        assert_eq!(l.oldest(), Some((&2, &20)));
        assert_eq!(l.purge_oldest(10, |v| *v == 20), 1);
        assert_eq!(l.oldest(), Some((&0, &0)));
        assert_eq!(l.remove(&0), Some(0));
        assert_eq!(l.get(&3), Some(&30));
        *l.get_mut(&3).unwrap() = 31;
        assert_eq!(l.iter().count(), 1);
        assert_eq!(l.pop_oldest(), Some((3, 31)));
        assert_eq!(l.pop_oldest(), None);
    }

    #[test]
    fn replacing_a_key_does_not_evict_others() {
        let mut l = Lru::new(2);
        l.insert(1u8, 'a');
        l.insert(2, 'b');
        assert!(l.insert(1, 'c').is_empty());
        assert_eq!(l.oldest(), Some((&2, &'b')));
    }
}
