//! Nonce-count replay protection: the highest `nc` seen per nonce, in a bounded cache.
//!
//! The cache is per worker. A TCP/TLS connection belongs to the worker that accepted it;
//! UDP workers share one socket, so one phone's uses of a nonce may be spread over them,
//! each worker seeing a rising subsequence of the counts: a phone is never refused. A
//! retransmission goes to the worker holding its transaction (the claim table), so it is
//! absorbed there, not counted anew. A captured request replayed to a worker that has seen
//! neither its count nor a higher one is accepted once there; that was already so with one
//! socket per worker (a replay from another source port reached another worker), and a
//! replayed request can never outlive the nonce's lifetime.
//!
//! Only authenticated requests (right digest, fresh nonce) reach the cache, so an attacker
//! without the password cannot fill it or raise a phone's count. When it is full, the entry
//! first used longest ago is dropped: the only effect is that a replay of that one nonce
//! would be accepted once more within its lifetime.

use std::collections::{HashMap, VecDeque};

use super::nonce::TAG_BYTES;

/// The default number of nonces tracked per worker: some 70 bytes each, so about 4.5 MB at
/// most, enough for 200 new nonces a second with the default 300 s lifetime.
pub const DEFAULT_REPLAY_CAPACITY: usize = 65_536;

/// Highest nonce count seen per nonce, bounded, oldest first out.
#[derive(Debug)]
pub(crate) struct NonceCounts {
    seen: HashMap<[u8; TAG_BYTES], u32, ahash::RandomState>,
    /// Nonces in order of first use, with their issue time (Unix seconds).
    order: VecDeque<([u8; TAG_BYTES], u64)>,
    capacity: usize,
}

impl NonceCounts {
    pub(crate) fn new(capacity: usize) -> Self {
        NonceCounts {
            seen: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `nc` for the nonce `id` (issued at `issued`) if it is higher than any count
    /// seen for it; returns false for a replay. Without `qop` a client sends no count: pass
    /// 0, which makes such a nonce single-use (a second use is a replay).
    pub(crate) fn record(&mut self, id: [u8; TAG_BYTES], issued: u64, nc: u32) -> bool {
        if let Some(last) = self.seen.get_mut(&id) {
            if nc <= *last {
                return false;
            }
            *last = nc;
            return true;
        }
        while self.seen.len() >= self.capacity {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&old);
        }
        self.seen.insert(id, nc);
        self.order.push_back((id, issued));
        true
    }

    /// Forgets nonces issued before `oldest_valid` (Unix seconds): they are refused as
    /// expired before the cache is asked. Entries leave in order of first use, which
    /// follows issue order closely enough; anything left behind goes when the cap is hit.
    pub(crate) fn purge(&mut self, oldest_valid: u64) {
        while let Some(&(id, issued)) = self.order.front() {
            if issued >= oldest_valid {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    /// Number of nonces tracked.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Changes the bound; extra entries go at the next record.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; TAG_BYTES] {
        [n; TAG_BYTES]
    }

    #[test]
    fn counts_must_rise() {
        let mut c = NonceCounts::new(10);
        assert!(c.record(id(1), 0, 1));
        assert!(!c.record(id(1), 0, 1));
        assert!(c.record(id(1), 0, 3));
        assert!(!c.record(id(1), 0, 2));
        assert!(c.record(id(2), 0, 1));
    }

    #[test]
    fn without_qop_a_nonce_is_single_use() {
        let mut c = NonceCounts::new(10);
        assert!(c.record(id(1), 0, 0));
        assert!(!c.record(id(1), 0, 0));
    }

    #[test]
    fn bounded_oldest_first_out() {
        let mut c = NonceCounts::new(3);
        for n in 0..10 {
            assert!(c.record(id(n), u64::from(n), 1));
        }
        assert_eq!(c.len(), 3);
        // The oldest were forgotten: a replay of them is (knowingly) accepted once more.
        assert!(c.record(id(0), 0, 1));
        assert!(!c.record(id(9), 9, 1));
    }

    #[test]
    fn purge_drops_expired() {
        let mut c = NonceCounts::new(10);
        for n in 0..5 {
            c.record(id(n), u64::from(n) * 100, 1);
        }
        c.purge(250);
        assert_eq!(c.len(), 2);
        assert!(!c.record(id(3), 300, 1));
    }
}
