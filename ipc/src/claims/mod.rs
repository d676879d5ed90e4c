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
//! Last come the request-rate buckets per source address (GCRA: each word is a 24-bit tag
//! and, in 40 bits, the microsecond at which the source's bucket is full again), so the
//! per-source rate limit holds for a source whichever workers read its requests.
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
/// counter count, rate bucket count, and the datagrams the workers have read.
const HEADER: usize = 8;
/// The header word the workers add the datagrams they read to ([`Claims::tally`]).
const TALLY: usize = 7;
const MAGIC: u64 = u64::from_le_bytes(*b"SIPCLAIM");
/// Expiries are seconds on a 24-bit clock that wraps every 194 days; a claim is live while
/// its expiry is less than half a turn ahead.
const CLOCK_BITS: u32 = 24;
const CLOCK_MASK: u64 = (1 << CLOCK_BITS) - 1;

/// The slot count the supervisor makes: 4 MiB, room for some 500,000 live transactions.
pub const DEFAULT_SLOTS: usize = 1 << 19;
/// The counter count the supervisor makes: 128 KiB, some 10,000 addresses counted at once.
pub const DEFAULT_COUNTERS: usize = 1 << 14;

/// The rate bucket count the supervisor makes: 128 KiB, some 10,000 sources at once.
pub const DEFAULT_RATES: usize = 1 << 14;

/// Rate words: tag and the time the bucket is full again, 24 + 40 bits (µs, wraps every
/// 12.7 days).
const TAT_BITS: u32 = 40;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
/// See `spend_at`.
const STALE_MARGIN_US: u64 = 2_000_000;

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

/// Makes the table: a memfd of `slots` claim words, `counters` counter words and `rates`
/// rate words (each rounded up to a power of two of at least one bucket) after the header,
/// with fresh random hash seeds. The supervisor keeps the descriptor and hands it to every
/// UDP worker.
pub fn create(slots: usize, counters: usize, rates: usize) -> io::Result<OwnedFd> {
    let slots = slots.max(BUCKET).next_power_of_two();
    let counters = counters.max(BUCKET).next_power_of_two();
    let rates = rates.max(BUCKET).next_power_of_two();
    use nix::sys::memfd::MemFdCreateFlag;
    let fd = nix::sys::memfd::memfd_create(
        c"sipcraft-claims",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
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
    header[6] = rates as u64;
    let mut file = File::from(fd);
    let bytes: Vec<u8> = header.iter().flat_map(|w| w.to_ne_bytes()).collect();
    file.write_all(&bytes)?;
    file.set_len(((HEADER + slots + counters + rates) * 8) as u64)?;
    // Its size is fixed for good: a worker that shrank it would make every other worker's
    // next access to the lost pages a SIGBUS. Hardening only: a kernel or sandbox without
    // seals still gets the table.
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    if let Err(e) = fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    ) {
        tracing::warn!(error = %e, "could not seal the claim table's size");
    }
    Ok(OwnedFd::from(file))
}

/// One process's mapping of the table.
pub struct Claims {
    base: NonNull<AtomicU64>,
    len: usize,
    slots: usize,
    counters: usize,
    rates: usize,
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
            rates: 0,
            hasher: ahash::RandomState::with_seeds(0, 0, 0, 0),
            origin: 0,
        };
        let word = |i: usize| claims.word(i).load(Ordering::Acquire);
        let (magic, slots) = (word(0), word(1) as usize);
        let (counters, rates) = (word(5) as usize, word(6) as usize);
        if magic != MAGIC {
            return Err(bad("not a claim table"));
        }
        let powers = [slots, counters, rates].iter().all(|n| n.is_power_of_two());
        let words = slots
            .checked_add(counters)
            .and_then(|n| n.checked_add(rates));
        if !powers || words.map(|n| (HEADER + n) * 8) != Some(size) {
            return Err(bad("the claim table's header does not match its size"));
        }
        let (s0, s1, origin) = (word(2), word(3), word(4));
        claims.slots = slots;
        claims.counters = counters;
        claims.rates = rates;
        claims.hasher = ahash::RandomState::with_seeds(s0, s1, s0 ^ 0x5bd1_e995, s1 ^ 0x9e37);
        claims.origin = origin;
        Ok(claims)
    }

    /// A key from its parts, as every process computes it (for a server transaction: the
    /// listen entry, sent-by and branch, without the method, so an INVITE, its ACK and its
    /// CANCEL have one key). Parts are text (`&[&str]`) or bytes (`&[&[u8]]`, an address's
    /// octets, so no text is made per request).
    pub fn key<P: AsRef<[u8]>>(&self, parts: &[P]) -> Key {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        for part in parts {
            h.write(part.as_ref());
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

    /// Spends one request from the rate bucket of `key` (GCRA: one request costs
    /// `interval_us`, and the bucket may run up to `tolerance_us` ahead of now): whether the
    /// request is within the rate, or `None` when the key's bucket of words is full (the
    /// caller then decides on its own).
    pub fn spend(&self, key: Key, interval_us: u64, tolerance_us: u64) -> Option<bool> {
        self.spend_at(key, interval_us, tolerance_us, self.now_us())
    }

    fn spend_at(&self, key: Key, interval_us: u64, tolerance_us: u64, now: u64) -> Option<bool> {
        let tag = counter_tag(key);
        let now = now & TAT_MASK;
        // How far the bucket of `word` is ahead of now; 0 for one that is full again. No
        // bucket runs further ahead than the tolerance and one request, give or take how
        // late another worker's `now` was read and a reload that changed the tolerance
        // (both well under the 2 s margin): a word that seems to is from long ago, its
        // 40-bit clock having wrapped since.
        let stale_after = tolerance_us
            .saturating_add(interval_us)
            .saturating_add(STALE_MARGIN_US);
        let ahead = |word: u64| {
            let ahead = (word & TAT_MASK).wrapping_sub(now) & TAT_MASK;
            if ahead <= stale_after {
                ahead
            } else {
                0
            }
        };
        for _ in 0..4 {
            let mut free = None;
            let mut found = None;
            for w in self.rate_bucket(key) {
                let v = w.load(Ordering::Acquire);
                if v != 0 && v >> TAT_BITS == tag {
                    found = Some((w, v));
                    break;
                }
                if (v == 0 || ahead(v) == 0) && free.is_none() {
                    free = Some((w, v));
                }
            }
            let (w, v, ahead) = match found {
                Some((w, v)) => (w, v, ahead(v)),
                None => {
                    let (w, v) = free?;
                    (w, v, 0)
                }
            };
            if ahead > tolerance_us {
                return Some(false);
            }
            let tat = (now + ahead + interval_us) & TAT_MASK;
            let next = (tag << TAT_BITS) | tat;
            if w.compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(true);
            }
        }
        None
    }

    fn rate_bucket(&self, key: Key) -> impl Iterator<Item = &AtomicU64> {
        let first = (key.0 as usize & (self.rates - 1)) & !(BUCKET - 1);
        let base = HEADER + self.slots + self.counters;
        (first..first + BUCKET).map(move |i| self.word(base + i))
    }

    /// Microseconds since the table was made.
    fn now_us(&self) -> u64 {
        let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
            return 0;
        };
        let us = (t.tv_sec() as u64).saturating_mul(1_000_000) + t.tv_nsec() as u64 / 1_000;
        us.wrapping_sub(self.origin.saturating_mul(1_000_000))
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
                let mut v = w.load(Ordering::Acquire);
                if v != 0 && !live(v, now) {
                    // Expired: cleared, so that it cannot read as live again once the
                    // 24-bit clock has wrapped.
                    if w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        v = 0;
                    }
                }
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

    /// Adds `read` datagrams to the count of all the workers sharing the table; returns the
    /// count since the table was made. Each worker adds what it read every so often (not
    /// per datagram, which would bounce the word's cache line between the workers), so the
    /// sum lags by that much.
    pub fn tally(&self, read: u64) -> u64 {
        self.word(TALLY)
            .fetch_add(read, Ordering::Relaxed)
            .wrapping_add(read)
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
mod tests;
