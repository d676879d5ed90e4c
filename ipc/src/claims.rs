//! Which UDP worker holds a server transaction, in memory that every UDP worker maps.
//!
//! The UDP workers of one listen address read one shared socket, so the next datagram goes
//! to whichever worker is free: one queue for all of them, as Kamailio's children share
//! theirs. A retransmission, an ACK or a CANCEL must still reach the worker that holds the
//! transaction. So the worker that starts a server transaction claims its key here, and a
//! worker that receives a request another worker has claimed hands it over.
//!
//! The table is a fixed array of 64-bit words in a memfd that the supervisor creates and
//! every UDP worker maps. A word packs a tag of the key's hash, the owner and an expiry;
//! a key's bucket is the 8 words of one cache line. A claim is one compare-and-swap, so no
//! lock is held across processes, and a worker that dies mid-claim leaves nothing
//! half-written. Claims also expire on their own, because a dead worker never releases its
//! claims.
//!
//! After the claims, the same memory holds counters that every worker adds to (the
//! authentication failures per source address, so a ban comes after exactly the number of
//! failures configured, whichever workers read them). A counter word packs a 24-bit tag,
//! a 20-bit count and the 20-bit second its window started.
//!
//! The table is a routing hint, never the truth: a worker handed a request it does not hold
//! takes it as new. A tag collision or a stale claim therefore costs one hand-off, never a
//! request. A full bucket leaves a request unclaimed, handled where it landed, which is
//! what a server without the table would do.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Words per bucket: one 64-byte cache line.
const BUCKET: usize = 8;
/// Header words before the slots: magic, slot count, two hash seeds, the clock's origin,
/// counter count.
const HEADER: usize = 8;
const MAGIC: u64 = u64::from_le_bytes(*b"SIPCLAIM");
/// Expiries are seconds on a 24-bit clock that wraps every 194 days; a claim is live while
/// its expiry is less than half a turn ahead.
const CLOCK_BITS: u32 = 24;
const CLOCK_MASK: u64 = (1 << CLOCK_BITS) - 1;

/// The slot count the supervisor makes: 4 MiB, room for some 500,000 live transactions.
pub const DEFAULT_SLOTS: usize = 1 << 19;
/// The counter count the supervisor makes: 128 KiB, some 10,000 addresses counted at once.
pub const DEFAULT_COUNTERS: usize = 1 << 14;

/// Counter words: tag, count and start, 24 + 20 + 20 bits.
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const START_BITS: u32 = 20;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the key now (it was free, or already the caller's).
    Mine,
    /// Another worker holds it.
    Held(u8),
    /// The key's bucket is full of live claims: nobody holds it.
    Untracked,
}

/// The hash of a transaction key, as every process computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64);

/// Makes the table: a memfd of `slots` claim words and `counters` counter words (each
/// rounded up to a power of two of at least one bucket) after the header, with fresh
/// random hash seeds. The supervisor keeps the descriptor and hands it to every UDP worker.
pub fn create(slots: usize, counters: usize) -> io::Result<OwnedFd> {
    let slots = slots.max(BUCKET).next_power_of_two();
    let counters = counters.max(BUCKET).next_power_of_two();
    let fd = nix::sys::memfd::memfd_create(
        c"sipcraft-claims",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut seeds = [0u8; 16];
    getrandom::fill(&mut seeds).map_err(|e| io::Error::other(e.to_string()))?;
    let mut header = [0u64; HEADER];
    header[0] = MAGIC;
    header[1] = slots as u64;
    header[2] = u64::from_ne_bytes(seeds[..8].try_into().unwrap_or_default());
    header[3] = u64::from_ne_bytes(seeds[8..].try_into().unwrap_or_default());
    header[4] = monotonic_secs()?;
    header[5] = counters as u64;
    let mut file = File::from(fd);
    let bytes: Vec<u8> = header.iter().flat_map(|w| w.to_ne_bytes()).collect();
    file.write_all(&bytes)?;
    file.set_len(((HEADER + slots + counters) * 8) as u64)?;
    Ok(OwnedFd::from(file))
}

/// One process's mapping of the table.
pub struct Claims {
    base: NonNull<AtomicU64>,
    len: usize,
    slots: usize,
    counters: usize,
    hasher: ahash::RandomState,
    origin: u64,
}

// SAFETY: the mapping is only ever accessed through atomics, from any thread.
unsafe impl Send for Claims {}
// SAFETY: as above; `&Claims` hands out no reference to the memory but atomic operations.
unsafe impl Sync for Claims {}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Claims {
    /// Maps the table on `fd` (made by [`create`]), checking its header and size, with
    /// every page faulted in now, so the table's memory is part of the process from its
    /// start rather than growing under load.
    pub fn open(fd: &OwnedFd) -> io::Result<Claims> {
        let size = File::from(fd.try_clone()?).metadata()?.len() as usize;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        if size < (HEADER + BUCKET) * 8 || size % 8 != 0 {
            return Err(bad("the claim table has the wrong size"));
        }
        let len = NonZeroUsize::new(size).ok_or_else(|| bad("the claim table is empty"))?;
        // SAFETY: a fresh shared mapping of the whole file at an address the kernel picks;
        // nothing else in this process refers to it, and it is unmapped in Drop.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                fd,
                0,
            )
        }
        .map_err(io::Error::from)?;
        let base = ptr.cast::<AtomicU64>();
        let mut claims = Claims {
            base,
            len: size,
            slots: 0,
            counters: 0,
            hasher: ahash::RandomState::with_seeds(0, 0, 0, 0),
            origin: 0,
        };
        let word = |i: usize| claims.word(i).load(Ordering::Acquire);
        let (magic, slots, counters) = (word(0), word(1) as usize, word(5) as usize);
        if magic != MAGIC {
            return Err(bad("not a claim table"));
        }
        let powers = slots.is_power_of_two() && counters.is_power_of_two();
        if !powers || slots.checked_add(counters).map(|n| (HEADER + n) * 8) != Some(size) {
            return Err(bad("the claim table's header does not match its size"));
        }
        let (s0, s1, origin) = (word(2), word(3), word(4));
        claims.slots = slots;
        claims.counters = counters;
        claims.hasher = ahash::RandomState::with_seeds(s0, s1, s0 ^ 0x5bd1_e995, s1 ^ 0x9e37);
        claims.origin = origin;
        Ok(claims)
    }

    /// The key of a server transaction from its parts (sent-by and branch, as the
    /// transaction layer normalises them); the method is left out, so an INVITE, its ACK
    /// and its CANCEL have one key.
    pub fn key(&self, parts: &[&str]) -> Key {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        for part in parts {
            h.write(part.as_bytes());
            h.write_u8(0xff);
        }
        Key(h.finish())
    }

    /// Claims `key` for worker `me` for `ttl_s` seconds from now, unless a live claim of
    /// another worker is there (a claim of `me`'s own is renewed).
    pub fn claim(&self, key: Key, me: u8, ttl_s: u32) -> Claim {
        self.claim_at(key, me, ttl_s, self.now())
    }

    /// The worker holding `key`, if any.
    pub fn holder(&self, key: Key) -> Option<u8> {
        let now = self.now();
        let tag = tag_of(key);
        self.bucket(key).find_map(|w| {
            let v = w.load(Ordering::Acquire);
            (v != 0 && v >> 32 == tag && live(v, now)).then(|| owner_of(v))
        })
    }

    /// Gives up `me`'s claim on `key` (the transaction ended).
    pub fn release(&self, key: Key, me: u8) {
        let tag = tag_of(key);
        for w in self.bucket(key) {
            let v = w.load(Ordering::Acquire);
            if v != 0 && v >> 32 == tag && owner_of(v) == me {
                let _ = w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Adds one to the counter of `key`, whose window is `window_s` seconds from its first
    /// event: returns the count in the window, this event included, or `None` when the
    /// key's bucket is full (the caller then counts on its own). Saturates at about a
    /// million.
    pub fn count(&self, key: Key, window_s: u32) -> Option<u32> {
        self.count_at(key, window_s, self.now())
    }

    /// Drops the counter of `key` (a ban was decided on it).
    pub fn forget(&self, key: Key) {
        let tag = counter_tag(key);
        for w in self.counter_bucket(key) {
            let v = w.load(Ordering::Acquire);
            if v != 0 && v >> (COUNT_BITS + START_BITS) == tag {
                let _ = w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    fn count_at(&self, key: Key, window_s: u32, now: u64) -> Option<u32> {
        let tag = counter_tag(key);
        let now = now & START_MASK;
        let within = |v: u64| (now.wrapping_sub(v & START_MASK) & START_MASK) < u64::from(window_s);
        let fresh = (tag << (COUNT_BITS + START_BITS)) | (1 << START_BITS) | now;
        for _ in 0..4 {
            let mut free = None;
            let mut found = None;
            for w in self.counter_bucket(key) {
                let v = w.load(Ordering::Acquire);
                if v != 0 && v >> (COUNT_BITS + START_BITS) == tag {
                    found = Some((w, v));
                    break;
                }
                if (v == 0 || !within(v)) && free.is_none() {
                    free = Some((w, v));
                }
            }
            let (w, v, next) = match found {
                Some((w, v)) if within(v) => {
                    let count = ((v >> START_BITS) & COUNT_MAX)
                        .saturating_add(1)
                        .min(COUNT_MAX);
                    let next = (v & !(COUNT_MAX << START_BITS)) | (count << START_BITS);
                    (w, v, next)
                }
                // The key's window is over: a new one starts with this event.
                Some((w, v)) => (w, v, fresh),
                None => {
                    let (w, v) = free?;
                    (w, v, fresh)
                }
            };
            if w.compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(((next >> START_BITS) & COUNT_MAX) as u32);
            }
        }
        None
    }

    fn counter_bucket(&self, key: Key) -> impl Iterator<Item = &AtomicU64> {
        let first = (key.0 as usize & (self.counters - 1)) & !(BUCKET - 1);
        let base = HEADER + self.slots;
        (first..first + BUCKET).map(move |i| self.word(base + i))
    }

    fn claim_at(&self, key: Key, me: u8, ttl_s: u32, now: u64) -> Claim {
        let tag = tag_of(key);
        let expiry = (now + u64::from(ttl_s)) & CLOCK_MASK;
        let mine = (tag << 32) | ((u64::from(me) + 1) << CLOCK_BITS) | expiry;
        // A lost race means another worker changed a word of the bucket: look again.
        for _ in 0..4 {
            let mut free = None;
            for w in self.bucket(key) {
                let v = w.load(Ordering::Acquire);
                if v != 0 && live(v, now) {
                    if v >> 32 == tag {
                        let owner = owner_of(v);
                        if owner != me {
                            return Claim::Held(owner);
                        }
                        // Ours already: renewed from now (if another worker changed the
                        // word meanwhile, the claim it found stands).
                        let _ = w.compare_exchange(v, mine, Ordering::AcqRel, Ordering::Relaxed);
                        return Claim::Mine;
                    }
                } else if free.is_none() {
                    free = Some((w, v));
                }
            }
            let Some((w, v)) = free else {
                return Claim::Untracked;
            };
            if w.compare_exchange(v, mine, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Claim::Mine;
            }
        }
        Claim::Untracked
    }

    fn bucket(&self, key: Key) -> impl Iterator<Item = &AtomicU64> {
        let first = (key.0 as usize & (self.slots - 1)) & !(BUCKET - 1);
        (first..first + BUCKET).map(move |i| self.word(HEADER + i))
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len / 8);
        // SAFETY: `i` is within the mapping (asserted), which lives as long as `self` and is
        // 8-byte aligned (page aligned); AtomicU64 has the layout of u64 and every access
        // to the shared words is atomic, in this process and the others.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// Seconds since the table was made, on the 24-bit clock.
    fn now(&self) -> u64 {
        monotonic_secs()
            .unwrap_or(self.origin)
            .wrapping_sub(self.origin)
            & CLOCK_MASK
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping made in `open`; no reference to it
        // outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

fn tag_of(key: Key) -> u64 {
    key.0 >> 32
}

/// The counter tag: 24 bits of the hash that the bucket index does not use.
fn counter_tag(key: Key) -> u64 {
    key.0 >> 40
}

fn owner_of(word: u64) -> u8 {
    (((word >> CLOCK_BITS) & 0xff) as u8).wrapping_sub(1)
}

/// Whether the claim in `word` has not expired at `now` (both on the 24-bit clock).
fn live(word: u64, now: u64) -> bool {
    let left = (word & CLOCK_MASK).wrapping_sub(now) & CLOCK_MASK;
    left != 0 && left < 1 << (CLOCK_BITS - 1)
}

/// CLOCK_MONOTONIC in whole seconds: one clock for every process on the machine.
fn monotonic_secs() -> io::Result<u64> {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    Ok(t.tv_sec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: usize) -> (Claims, Claims) {
        let fd = create(slots, 64).expect("memfd");
        (
            Claims::open(&fd).expect("map"),
            Claims::open(&fd).expect("map"),
        )
    }

    #[test]
    fn a_claim_made_in_one_mapping_is_seen_in_another() {
        let (a, b) = table(1024);
        let key = a.key(&["192.0.2.1:5060", "z9hg4bk1"]);
        assert_eq!(b.key(&["192.0.2.1:5060", "z9hg4bk1"]), key);
        assert_eq!(a.claim(key, 0, 40), Claim::Mine);
        assert_eq!(a.claim(key, 0, 40), Claim::Mine);
        assert_eq!(b.claim(key, 1, 40), Claim::Held(0));
        assert_eq!(b.holder(key), Some(0));
        b.release(key, 1);
        assert_eq!(b.holder(key), Some(0), "only the owner releases");
        a.release(key, 0);
        assert_eq!(b.holder(key), None);
        assert_eq!(b.claim(key, 1, 40), Claim::Mine);
        assert_eq!(a.holder(key), Some(1));
    }

    #[test]
    fn keys_differ_by_branch_and_sent_by_and_not_by_how_parts_are_cut() {
        let (a, _) = table(64);
        let k = a.key(&["192.0.2.1:5060", "z9hg4bk1"]);
        assert_ne!(k, a.key(&["192.0.2.1:5060", "z9hg4bk2"]));
        assert_ne!(k, a.key(&["192.0.2.2:5060", "z9hg4bk1"]));
        assert_ne!(k, a.key(&["192.0.2.1:5060z9hg4bk1"]));
    }

    #[test]
    fn claims_expire_and_their_words_are_reused() {
        let (a, _) = table(64);
        let key = a.key(&["h", "z9hg4bk1"]);
        assert_eq!(a.claim_at(key, 3, 10, 100), Claim::Mine);
        assert_eq!(a.claim_at(key, 4, 10, 109), Claim::Held(3));
        assert_eq!(a.claim_at(key, 4, 10, 110), Claim::Mine, "expired at 110");
        assert_eq!(a.claim_at(key, 4, 10, 115), Claim::Mine, "renewed to 125");
        assert_eq!(a.claim_at(key, 3, 10, 124), Claim::Held(4));
        // Across the clock's wrap too.
        let near = CLOCK_MASK - 2;
        let other = a.key(&["h", "z9hg4bk2"]);
        assert_eq!(a.claim_at(other, 1, 10, near), Claim::Mine);
        assert_eq!(a.claim_at(other, 2, 10, 5), Claim::Held(1));
        assert_eq!(a.claim_at(other, 2, 10, 8), Claim::Mine);
    }

    #[test]
    fn a_full_bucket_leaves_new_keys_untracked() {
        let (a, _) = table(8);
        let keys: Vec<Key> = (0..BUCKET + 1)
            .map(|i| a.key(&["h", &format!("z9hg4bk{i}")]))
            .collect();
        for &k in &keys[..BUCKET] {
            assert_eq!(a.claim_at(k, 0, 10, 1), Claim::Mine);
        }
        assert_eq!(a.claim_at(keys[BUCKET], 1, 10, 1), Claim::Untracked);
        a.release(keys[0], 0);
        assert_eq!(a.claim_at(keys[BUCKET], 1, 10, 1), Claim::Mine);
    }

    #[test]
    fn of_workers_racing_for_one_key_exactly_one_wins() {
        let fd = create(1 << 10, 64).expect("memfd");
        for round in 0..200 {
            let results: Vec<Claim> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4u8)
                    .map(|me| {
                        let claims = Claims::open(&fd).expect("map");
                        s.spawn(move || {
                            let key = claims.key(&["h", &format!("z9hg4bk{round}")]);
                            claims.claim(key, me, 40)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread"))
                    .collect()
            });
            let winners = results.iter().filter(|c| **c == Claim::Mine).count();
            assert_eq!(winners, 1, "round {round}: {results:?}");
            let owner = (0..4u8).find(|&me| results[me as usize] == Claim::Mine);
            for (me, c) in results.iter().enumerate() {
                if Some(me as u8) != owner {
                    assert_eq!(*c, Claim::Held(owner.unwrap_or(255)));
                }
            }
        }
    }

    #[test]
    fn counters_add_up_across_mappings_within_their_window() {
        let (a, b) = table(64);
        let ip = a.key(&["auth", "192.0.2.7"]);
        let other = a.key(&["auth", "192.0.2.8"]);
        assert_eq!(a.count_at(ip, 60, 1000), Some(1));
        assert_eq!(b.count_at(ip, 60, 1010), Some(2));
        assert_eq!(b.count_at(other, 60, 1010), Some(1));
        assert_eq!(a.count_at(ip, 60, 1059), Some(3));
        assert_eq!(a.count_at(ip, 60, 1060), Some(1), "a new window");
        b.forget(ip);
        assert_eq!(a.count_at(ip, 60, 1061), Some(1));
        assert_eq!(
            a.count_at(other, 60, 1061),
            Some(2),
            "the other key is kept"
        );
        // The claims beside them are untouched.
        let call = a.key(&["h", "z9hg4bk1"]);
        assert_eq!(a.claim(call, 2, 40), Claim::Mine);
        assert_eq!(b.count(call, 60), Some(1));
        assert_eq!(b.holder(call), Some(2));
    }

    #[test]
    fn counting_from_many_threads_loses_no_event() {
        let fd = create(64, 64).expect("memfd");
        let total: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let c = Claims::open(&fd).expect("map");
                    s.spawn(move || {
                        let key = c.key(&["auth", "192.0.2.9"]);
                        (0..500).filter(|_| c.count(key, 3600).is_some()).count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        let c = Claims::open(&fd).expect("map");
        let last = c.count(c.key(&["auth", "192.0.2.9"]), 3600);
        assert_eq!(last, Some(total as u32 + 1));
    }

    #[test]
    fn a_file_that_is_not_a_table_is_refused() {
        let file = tempfile::tempfile().expect("temp file");
        file.set_len(4096).expect("size");
        assert!(Claims::open(&OwnedFd::from(file)).is_err());
    }
}
