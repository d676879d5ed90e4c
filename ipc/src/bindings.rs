//! Compact storage of bindings: what every replica (and the dbagent's persisted copy) keeps
//! per registered contact, at a fraction of the memory of owned [`Binding`]s.
//!
//! One allocation per AOR holds all its bindings, postcard-encoded behind a small header:
//!
//! ```text
//! [earliest expiry: u64 LE] [AOR: postcard str] [packed binding]...
//! ```
//!
//! The table is keyed by a hash of the AOR inside the blob, so the AOR is stored once; the
//! owning worker's name is interned (it is one of a handful); a binding's key is left out
//! when it equals its contact (a phone without `+sip.instance`). The earliest expiry lets
//! [`BindingTable::purge_expired`] skip an AOR without decoding it. Lookups decode on demand
//! into borrowed [`BindingRef`]s, which allocate nothing.
//!
//! A SIPp-style binding (AOR `100000`, contact `sip:100000@127.0.0.1:5061`, a 20-character
//! Call-ID, no User-Agent) costs about 120 bytes here, table slot and allocator overhead
//! included (`bytes_per_binding` below measures it), against ~700 as a
//! `HashMap<String, Vec<Binding>>` entry.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use sipcraft_config::Transport;

use crate::state::Binding;

/// Bytes of the header before the AOR: the earliest expiry of the AOR's bindings.
const HEADER: usize = 8;

/// Distinct owner names interned per table; any further one is stored inline in its binding
/// (owners are worker names, so this is never reached in practice, but nothing is unbounded).
const MAX_OWNERS: usize = 64;

/// A borrowed view of one stored binding: the fields of [`Binding`], as slices of the table.
/// It serializes as a [`Binding`] does (same fields, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BindingRef<'a> {
    pub aor: &'a str,
    pub key: &'a str,
    pub contact: &'a str,
    pub source: SocketAddr,
    pub transport: Transport,
    pub owner: &'a str,
    pub connection: Option<u64>,
    pub instance: Option<&'a str>,
    pub reg_id: Option<u32>,
    pub user_agent: Option<&'a str>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub q: Option<u16>,
    pub expires_at_ms: u64,
}

impl BindingRef<'_> {
    /// An owned copy, for the wire or to keep past the table's lock.
    pub fn to_binding(&self) -> Binding {
        Binding {
            aor: self.aor.to_owned(),
            key: self.key.to_owned(),
            contact: self.contact.to_owned(),
            source: self.source,
            transport: self.transport,
            owner: self.owner.to_owned(),
            connection: self.connection,
            instance: self.instance.map(str::to_owned),
            reg_id: self.reg_id,
            user_agent: self.user_agent.map(str::to_owned),
            call_id: self.call_id.to_owned(),
            cseq: self.cseq,
            q: self.q,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

impl From<BindingRef<'_>> for Binding {
    fn from(b: BindingRef<'_>) -> Binding {
        b.to_binding()
    }
}

impl Binding {
    /// A borrowed view, to compare with stored bindings.
    pub fn view(&self) -> BindingRef<'_> {
        BindingRef {
            aor: &self.aor,
            key: &self.key,
            contact: &self.contact,
            source: self.source,
            transport: self.transport,
            owner: &self.owner,
            connection: self.connection,
            instance: self.instance.as_deref(),
            reg_id: self.reg_id,
            user_agent: self.user_agent.as_deref(),
            call_id: &self.call_id,
            cseq: self.cseq,
            q: self.q,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// The owner of a packed binding: an index into the table's interned names, or the name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Owner<'a> {
    Interned(u8),
    Inline(&'a str),
}

/// One binding as stored: no AOR (the blob's), no key when it equals the contact, the owner
/// interned. Private: its encoding only lives in memory, so it may change freely.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Packed<'a> {
    #[serde(borrow)]
    key: Option<&'a str>,
    contact: &'a str,
    source: SocketAddr,
    transport: Transport,
    #[serde(borrow)]
    owner: Owner<'a>,
    connection: Option<u64>,
    #[serde(borrow)]
    instance: Option<&'a str>,
    reg_id: Option<u32>,
    #[serde(borrow)]
    user_agent: Option<&'a str>,
    call_id: &'a str,
    cseq: u32,
    q: Option<u16>,
    expires_at_ms: u64,
}

impl<'a> Packed<'a> {
    fn new(b: &'a Binding, owner: Owner<'a>) -> Packed<'a> {
        Packed {
            key: (b.key != b.contact).then_some(b.key.as_str()),
            contact: &b.contact,
            source: b.source,
            transport: b.transport,
            owner,
            connection: b.connection,
            instance: b.instance.as_deref(),
            reg_id: b.reg_id,
            user_agent: b.user_agent.as_deref(),
            call_id: &b.call_id,
            cseq: b.cseq,
            q: b.q,
            expires_at_ms: b.expires_at_ms,
        }
    }

    fn key(&self) -> &'a str {
        self.key.unwrap_or(self.contact)
    }
}

/// The AOR of a blob.
fn blob_aor(blob: &[u8]) -> &str {
    blob.get(HEADER..)
        .and_then(|rest| postcard::take_from_bytes::<&str>(rest).ok())
        .map_or("", |(aor, _)| aor)
}

/// The earliest expiry in a blob.
fn blob_earliest(blob: &[u8]) -> u64 {
    blob.get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The AOR of a blob and its packed bindings, in order.
fn unpack(blob: &[u8]) -> (&str, impl Iterator<Item = Packed<'_>> + '_) {
    let (aor, mut rest) = blob
        .get(HEADER..)
        .and_then(|rest| postcard::take_from_bytes::<&str>(rest).ok())
        .unwrap_or(("", &[]));
    let entries = std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The table wrote these bytes itself; a failure would be a bug here, and ends the
        // list rather than the process.
        let (entry, tail) = postcard::take_from_bytes::<Packed<'_>>(rest).ok()?;
        rest = tail;
        Some(entry)
    });
    (aor, entries)
}

/// A blob holding `entries` of `aor` (which must not be empty).
fn pack(aor: &str, entries: &[Packed<'_>]) -> Box<[u8]> {
    let earliest = entries.iter().map(|e| e.expires_at_ms).min().unwrap_or(0);
    let mut out = Vec::with_capacity(64 * entries.len() + 16);
    out.extend_from_slice(&earliest.to_le_bytes());
    // Writing into a Vec cannot fail.
    let mut out = postcard::to_extend(&aor, out).unwrap_or_default();
    for e in entries {
        out = postcard::to_extend(e, out).unwrap_or_default();
    }
    Box::from(out.as_slice())
}

/// Bindings by AOR, compactly (see the module doc).
#[derive(Clone, Default)]
pub struct BindingTable {
    table: HashTable<Box<[u8]>>,
    hasher: RandomState,
    /// Owner names, interned; the index is what a packed binding stores.
    owners: Vec<Box<str>>,
    /// Number of bindings, expired ones not yet purged included.
    len: usize,
    /// No binding expires before this (a lower bound: exact after a purge, lowered by every
    /// upsert), so [`BindingTable::purge_expired`] walks the table only when something may
    /// have expired. Phones refresh before their bindings expire: in a steady state the walk
    /// runs about once per half registration lifetime, not every second. (It stalled the
    /// worker's loop for ~2 ms a second with 100k bindings, visible in the p99 latency.)
    purge_from_ms: u64,
}

impl std::fmt::Debug for BindingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingTable")
            .field("aors", &self.table.len())
            .field("bindings", &self.len)
            .field("owners", &self.owners)
            .finish()
    }
}

/// A sequence of bindings, as a `Vec<Binding>` serializes: so a copy of the table can be
/// written out (the dbagent's cache file) without an owned `Binding` per entry.
impl Serialize for BindingTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length first: postcard (the cache file) cannot write a sequence without it.
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        let mut written = 0;
        for binding in self.iter() {
            seq.serialize_element(&binding)?;
            written += 1;
        }
        if written != self.len {
            // The length already went out: the reader would misread whatever follows.
            return Err(serde::ser::Error::custom(format!(
                "binding table holds {written} bindings but counted {}",
                self.len
            )));
        }
        seq.end()
    }
}

impl BindingTable {
    pub fn new() -> BindingTable {
        BindingTable::default()
    }

    /// Number of bindings, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of AORs with at least one binding.
    pub fn aor_count(&self) -> usize {
        self.table.len()
    }

    fn hash(&self, aor: &str) -> u64 {
        self.hasher.hash_one(aor)
    }

    fn intern<'b>(&mut self, owner: &'b str) -> Owner<'b> {
        if let Some(i) = self.owners.iter().position(|o| &**o == owner) {
            return Owner::Interned(i as u8);
        }
        if self.owners.len() < MAX_OWNERS {
            self.owners.push(owner.into());
            return Owner::Interned((self.owners.len() - 1) as u8);
        }
        Owner::Inline(owner)
    }

    fn view<'a>(&'a self, aor: &'a str, p: Packed<'a>) -> BindingRef<'a> {
        let owner = match p.owner {
            Owner::Interned(i) => self.owners.get(usize::from(i)).map_or("", |o| &**o),
            Owner::Inline(name) => name,
        };
        BindingRef {
            aor,
            key: p.key(),
            contact: p.contact,
            source: p.source,
            transport: p.transport,
            owner,
            connection: p.connection,
            instance: p.instance,
            reg_id: p.reg_id,
            user_agent: p.user_agent,
            call_id: p.call_id,
            cseq: p.cseq,
            q: p.q,
            expires_at_ms: p.expires_at_ms,
        }
    }

    /// Inserts `binding`, or replaces the binding of its AOR with the same key (in place,
    /// so the order of an AOR's bindings is the order they were first registered).
    pub fn upsert(&mut self, binding: &Binding) {
        let owner = self.intern(&binding.owner);
        let new = Packed::new(binding, owner);
        self.purge_from_ms = self.purge_from_ms.min(binding.expires_at_ms);
        let hash = self.hash(&binding.aor);
        let hasher = &self.hasher;
        match self
            .table
            .find_mut(hash, |blob| blob_aor(blob) == binding.aor)
        {
            Some(slot) => {
                let (blob, added) = {
                    let (_, entries) = unpack(slot);
                    let mut entries: Vec<Packed<'_>> = entries.collect();
                    let added = match entries.iter_mut().find(|e| e.key() == binding.key) {
                        Some(e) => {
                            *e = new;
                            false
                        }
                        None => {
                            entries.push(new);
                            true
                        }
                    };
                    (pack(&binding.aor, &entries), added)
                };
                *slot = blob;
                if added {
                    self.len += 1;
                }
            }
            None => {
                let blob = pack(&binding.aor, &[new]);
                self.table
                    .insert_unique(hash, blob, |b| hasher.hash_one(blob_aor(b)));
                self.len += 1;
            }
        }
    }

    /// Removes the binding `key` of `aor`, and the AOR once it has none.
    pub fn remove(&mut self, aor: &str, key: &str) {
        let hash = self.hash(aor);
        let Ok(mut entry) = self.table.find_entry(hash, |blob| blob_aor(blob) == aor) else {
            return;
        };
        let (blob, before, after) = {
            let (_, entries) = unpack(entry.get());
            let mut before = 0;
            let kept: Vec<Packed<'_>> = entries
                .inspect(|_| before += 1)
                .filter(|e| e.key() != key)
                .collect();
            let blob = (!kept.is_empty() && kept.len() != before).then(|| pack(aor, &kept));
            (blob, before, kept.len())
        };
        self.len -= before - after;
        if after == 0 {
            entry.remove();
        } else if let Some(blob) = blob {
            *entry.get_mut() = blob;
        }
    }

    /// Removes every binding of `aor`.
    pub fn clear_aor(&mut self, aor: &str) {
        let hash = self.hash(aor);
        if let Ok(entry) = self.table.find_entry(hash, |blob| blob_aor(blob) == aor) {
            let (blob, _) = entry.remove();
            self.len -= unpack(&blob).1.count();
        }
    }

    /// Keeps only the AORs for which `keep` says so.
    pub fn retain_aors(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let len = &mut self.len;
        self.table.retain(|blob| {
            let (aor, entries) = unpack(blob);
            if keep(aor) {
                return true;
            }
            *len -= entries.count();
            false
        });
    }

    /// The bindings of `aor`, expired ones included, in order.
    pub fn get<'a>(&'a self, aor: &str) -> impl Iterator<Item = BindingRef<'a>> + 'a {
        let blob = self
            .table
            .find(self.hash(aor), |blob| blob_aor(blob) == aor);
        blob.into_iter().flat_map(move |blob| {
            let (aor, entries) = unpack(blob);
            entries.map(move |p| self.view(aor, p))
        })
    }

    /// Every AOR that has bindings, in no particular order.
    pub fn aors(&self) -> impl Iterator<Item = &str> {
        self.table.iter().map(|blob| blob_aor(blob))
    }

    /// Every binding, grouped by AOR, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = BindingRef<'_>> {
        self.table.iter().flat_map(move |blob| {
            let (aor, entries) = unpack(blob);
            entries.map(move |p| self.view(aor, p))
        })
    }

    /// Drops bindings that expired at or before `now_ms`; returns how many.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        if now_ms < self.purge_from_ms {
            return 0;
        }
        let mut purged = 0;
        let mut next = u64::MAX;
        self.table.retain(|blob| {
            let earliest = blob_earliest(blob);
            if earliest > now_ms {
                next = next.min(earliest);
                return true;
            }
            let (kept, gone) = {
                let (aor, entries) = unpack(blob);
                let mut gone = 0;
                let live: Vec<Packed<'_>> = entries
                    .filter(|e| {
                        let keep = e.expires_at_ms > now_ms;
                        gone += usize::from(!keep);
                        keep
                    })
                    .collect();
                ((!live.is_empty()).then(|| pack(aor, &live)), gone)
            };
            purged += gone;
            match kept {
                Some(kept) => {
                    next = next.min(blob_earliest(&kept));
                    *blob = kept;
                    true
                }
                None => false,
            }
        });
        self.len -= purged;
        self.purge_from_ms = next;
        purged
    }

    /// Bytes of memory the table holds on the heap: the table's buckets and every blob, each
    /// rounded up as glibc's malloc does (16-byte chunks, 8 bytes of overhead, 32 at least).
    /// An estimate for tests and benchmarks; RSS is the real figure.
    pub fn heap_bytes(&self) -> usize {
        let chunk = |n: usize| (n + 8).next_multiple_of(16).max(32);
        let blobs: usize = self.table.iter().map(|b| chunk(b.len())).sum();
        let owners: usize = self.owners.iter().map(|o| chunk(o.len())).sum();
        chunk(self.table.allocation_size()) + blobs + owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sipp(i: u32, key: Option<&str>, expires_at_ms: u64) -> Binding {
        let aor = format!("{}", 100_000 + i);
        let contact = format!("sip:{aor}@127.0.0.1:5061");
        Binding {
            key: key.map_or_else(|| contact.clone(), str::to_owned),
            contact,
            aor,
            source: "127.0.0.1:5061".parse().unwrap(),
            transport: Transport::Udp,
            owner: format!("udp-{}", i % 2),
            connection: None,
            instance: None,
            reg_id: None,
            user_agent: None,
            call_id: format!("{i}-12345@127.0.0.1"),
            cseq: 2,
            q: None,
            expires_at_ms,
        }
    }

    #[test]
    fn views_round_trip_every_field() {
        let mut t = BindingTable::new();
        let mut b = sipp(1, Some("<urn:uuid:1>;1"), 5_000);
        b.connection = Some(7);
        b.instance = Some("<urn:uuid:1>".into());
        b.reg_id = Some(1);
        b.user_agent = Some("phone/1.0".into());
        b.q = Some(500);
        b.transport = Transport::Tls;
        b.source = "[2001:db8::1]:5061".parse().unwrap();
        let plain = sipp(1, None, 4_000);
        t.upsert(&b);
        t.upsert(&plain);
        let got: Vec<Binding> = t.get(&b.aor).map(Binding::from).collect();
        assert_eq!(got, vec![b.clone(), plain.clone()]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("nobody").count(), 0);
        assert_eq!(t.iter().count(), 2);
        assert_eq!(t.aors().collect::<Vec<_>>(), vec![b.aor.as_str()]);
        assert!(t.get(&b.aor).any(|v| v == b.view()));
        let json = serde_json::to_string(&t).unwrap();
        let back: Vec<Binding> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![b.clone(), plain.clone()]);
    }

    #[test]
    fn upsert_replaces_in_place_and_remove_drops_empty_aors() {
        let mut t = BindingTable::new();
        t.upsert(&sipp(1, Some("a"), 1_000));
        t.upsert(&sipp(1, Some("b"), 2_000));
        let mut a = sipp(1, Some("a"), 3_000);
        a.cseq = 9;
        t.upsert(&a);
        let keys: Vec<(&str, u32)> = t.get("100001").map(|b| (b.key, b.cseq)).collect();
        assert_eq!(keys, vec![("a", 9), ("b", 2)]);
        assert_eq!(t.len(), 2);
        t.remove("100001", "zz");
        assert_eq!(t.len(), 2);
        t.remove("100001", "a");
        assert_eq!(t.len(), 1);
        t.remove("100001", "b");
        assert_eq!((t.len(), t.aor_count()), (0, 0));
        t.upsert(&sipp(2, None, 1));
        t.upsert(&sipp(3, None, 1));
        t.clear_aor("100002");
        t.clear_aor("100009");
        assert_eq!((t.len(), t.aor_count()), (1, 1));
        t.retain_aors(|aor| aor != "100003");
        assert!(t.is_empty());
    }

    #[test]
    fn purge_drops_only_what_expired() {
        let mut t = BindingTable::new();
        for i in 0..100 {
            t.upsert(&sipp(i, Some("a"), 1_000 + u64::from(i)));
            t.upsert(&sipp(i, Some("b"), 2_000));
        }
        assert_eq!(t.purge_expired(1_049), 50);
        assert_eq!(t.len(), 150);
        assert_eq!(t.purge_expired(1_049), 0);
        assert_eq!(t.get("100000").count(), 1);
        assert_eq!(t.get("100099").count(), 2);
        assert_eq!(t.purge_expired(2_000), 150);
        assert!(t.is_empty());
        assert_eq!(t.aor_count(), 0);
    }

    #[test]
    fn purge_skips_the_walk_until_something_may_have_expired_and_misses_nothing() {
        let mut t = BindingTable::new();
        t.upsert(&sipp(1, Some("a"), 5_000));
        assert_eq!(t.purge_expired(1_000), 0);
        assert_eq!(
            t.purge_from_ms, 5_000,
            "a walk leaves the exact earliest expiry"
        );
        // An upsert that expires earlier than everything seen lowers the bound at once.
        t.upsert(&sipp(2, Some("a"), 2_000));
        assert_eq!(t.purge_from_ms, 2_000);
        assert_eq!(t.purge_expired(1_999), 0);
        assert_eq!(t.purge_expired(2_500), 1);
        assert_eq!(t.get("100002").count(), 0);
        // A refresh moves the expiry later: the next walk finds nothing and moves on.
        t.upsert(&sipp(1, Some("a"), 9_000));
        assert_eq!(t.purge_expired(5_000), 0);
        assert_eq!(t.purge_from_ms, 9_000);
        assert_eq!(t.purge_expired(9_000), 1);
        assert!(t.is_empty());
        assert_eq!(t.purge_from_ms, u64::MAX);
    }

    #[test]
    fn owners_beyond_the_interned_few_are_kept_inline() {
        let mut t = BindingTable::new();
        for i in 0..(MAX_OWNERS as u32 + 10) {
            let mut b = sipp(i, None, 1);
            b.owner = format!("node-{i}/udp-0");
            t.upsert(&b);
        }
        assert_eq!(t.owners.len(), MAX_OWNERS);
        for i in 0..(MAX_OWNERS as u32 + 10) {
            let owner = t.get(&format!("{}", 100_000 + i)).next().unwrap().owner;
            assert_eq!(owner, format!("node-{i}/udp-0"));
        }
    }

    /// Resident memory of this process, in bytes (Linux).
    fn rss_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Memory per SIPp-style binding, 100k of them, compact and as the former
    /// `HashMap<String, Vec<Binding>>`: `cargo test -p sipcraft-ipc --release
    /// bytes_per_binding -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: prints bytes per binding"]
    fn bytes_per_binding() {
        let n = 100_000;
        let bindings: Vec<Binding> = (0..n).map(|i| sipp(i, None, 1_800_000_000_000)).collect();
        let before = rss_bytes();
        let mut t = BindingTable::new();
        for b in &bindings {
            t.upsert(b);
        }
        let compact = rss_bytes() - before;
        let before = rss_bytes();
        let mut map: std::collections::HashMap<String, Vec<Binding>> = Default::default();
        for b in &bindings {
            map.entry(b.aor.clone()).or_default().push(b.clone());
        }
        let owned = rss_bytes() - before;
        let n = n as usize;
        println!(
            "{n} SIPp-style bindings: compact {} B/binding RSS growth ({} estimated from \
             allocation sizes); HashMap<String, Vec<Binding>> {} B/binding RSS growth",
            compact / n,
            t.heap_bytes() / n,
            owned / n
        );
        assert_eq!(map.len(), t.aor_count());
        assert!(t.heap_bytes() / n < 250);
    }
}
