//! Replicated state: extensions and registrations (bindings).
//!
//! Every process keeps a [`Replica`] and changes it only through [`Replica::apply`], so the
//! same reducer runs everywhere. The supervisor numbers updates; a process that sees a gap in
//! the numbers asks for a snapshot instead of guessing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::{Entry, HashTable};
use serde::{Deserialize, Serialize};
use sipcraft_config::{Extension, Transport};

pub use crate::bindings::{BindingRef, BindingTable};

/// One registered contact of an extension (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// The address of record: the extension number.
    pub aor: String,
    /// Identity of the binding within its AOR: `+sip.instance` and `reg-id` when the phone
    /// sent them (RFC 5626), else the contact URI.
    pub key: String,
    /// The Contact URI as the phone sent it.
    pub contact: String,
    /// Where the REGISTER came from (after NAT): requests to the phone go here.
    pub source: SocketAddr,
    pub transport: Transport,
    /// The worker that holds the flow (the connection, for TCP).
    pub owner: String,
    /// The connection within the owner, for connection-oriented transports.
    pub connection: Option<u64>,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub user_agent: Option<String>,
    /// Call-ID and CSeq of the REGISTER that made this binding: a refresh with the same
    /// Call-ID must carry a higher CSeq.
    pub call_id: String,
    pub cseq: u32,
    /// q-value times 1000 (0..=1000), when given.
    pub q: Option<u16>,
    /// Absolute expiry, milliseconds since the Unix epoch, so every replica expires the
    /// binding at the same moment without talking.
    pub expires_at_ms: u64,
}

/// A change to the replicated state. Append variants only: postcard encodes by position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// The whole extension set from its source (config file or database).
    ExtensionsReplaced(Vec<Extension>),
    ExtensionUpserted(Extension),
    ExtensionDeleted(String),
    BindingUpserted(Binding),
    BindingRemoved {
        aor: String,
        key: String,
    },
    /// Every binding of an AOR removed (`Contact: *`, or the extension was deleted).
    BindingsCleared {
        aor: String,
    },
    /// A source banned by one worker, so every worker ignores it (a flood reaches every
    /// worker reading the shared UDP socket, or every worker of a reuseport group).
    SourceBanned(Ban),
}

/// A banned source address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    pub ip: IpAddr,
    /// Milliseconds since the Unix epoch when the ban ends.
    pub until_ms: u64,
    /// Why, as logged (`auth-failures`, `rate`).
    pub reason: String,
}

/// Part of a snapshot. A snapshot is sent as parts so no frame grows with the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapshotPart {
    Extensions(Vec<Extension>),
    Bindings(Vec<Binding>),
    Bans(Vec<Ban>),
}

/// Items per snapshot part.
pub const SNAPSHOT_CHUNK: usize = 512;

/// A process's copy of the replicated state.
#[derive(Debug, Default, Clone)]
pub struct Replica {
    /// Number of the last update applied (the generation).
    seq: u64,
    extensions: ExtensionTable,
    bindings: BindingTable,
    bans: HashMap<IpAddr, Ban>,
    /// Changes whenever the extensions do: unique in the process (see
    /// [`Replica::extensions_version`]).
    extensions_version: u64,
}

/// The source of [`Replica::extensions_version`] values, shared by every replica of the
/// process so that a replica rebuilt from a snapshot never repeats an older one's value.
static EXTENSIONS_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Extensions by number, the number kept once (in the extension itself, not again as a key:
/// with 100,000 extensions in every process, that copy was ~5 MB each).
#[derive(Clone, Default)]
struct ExtensionTable {
    table: HashTable<Extension>,
    hasher: RandomState,
}

impl std::fmt::Debug for ExtensionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtensionTable")
            .field("len", &self.table.len())
            .finish()
    }
}

impl ExtensionTable {
    fn get(&self, number: &str) -> Option<&Extension> {
        self.table
            .find(self.hasher.hash_one(number), |e| e.number == number)
    }

    /// Inserts `ext`, or replaces the extension with its number.
    fn insert(&mut self, ext: Extension) {
        let hash = self.hasher.hash_one(ext.number.as_str());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |e| e.number == ext.number,
            |e| hasher.hash_one(e.number.as_str()),
        ) {
            Entry::Occupied(mut slot) => *slot.get_mut() = ext,
            Entry::Vacant(slot) => {
                slot.insert(ext);
            }
        }
    }

    fn remove(&mut self, number: &str) {
        let hash = self.hasher.hash_one(number);
        if let Ok(slot) = self.table.find_entry(hash, |e| e.number == number) {
            slot.remove();
        }
    }
}

/// An update arrived out of order: the receiver must resync from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("update {got} arrived after {have}: expected {}", have + 1)]
pub struct Gap {
    pub have: u64,
    pub got: u64,
}

impl Replica {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of the last update applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies update number `seq`. An update already applied is ignored; one that skips a
    /// number is refused with [`Gap`].
    pub fn apply(&mut self, seq: u64, update: &Update) -> Result<(), Gap> {
        if seq <= self.seq {
            return Ok(());
        }
        if seq != self.seq + 1 {
            return Err(Gap {
                have: self.seq,
                got: seq,
            });
        }
        self.reduce(update);
        self.seq = seq;
        Ok(())
    }

    /// Applies an update without numbering: for the process that numbers them (the
    /// supervisor) and for a worker's own change before the numbered copy comes back.
    pub fn apply_local(&mut self, update: &Update) {
        self.reduce(update);
    }

    /// Sets the generation after an unnumbered apply (the supervisor numbers updates).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn reduce(&mut self, update: &Update) {
        if matches!(
            update,
            Update::ExtensionsReplaced(_)
                | Update::ExtensionUpserted(_)
                | Update::ExtensionDeleted(_)
        ) {
            self.extensions_changed();
        }
        match update {
            Update::ExtensionsReplaced(all) => {
                self.extensions = ExtensionTable::default();
                for e in all {
                    self.extensions.insert(e.clone());
                }
                let extensions = &self.extensions;
                self.bindings
                    .retain_aors(|aor| extensions.get(aor).is_some());
            }
            Update::ExtensionUpserted(ext) => {
                self.extensions.insert(ext.clone());
            }
            Update::ExtensionDeleted(number) => {
                self.extensions.remove(number);
                self.bindings.clear_aor(number);
            }
            Update::BindingUpserted(binding) => self.bindings.upsert(binding),
            Update::BindingRemoved { aor, key } => self.bindings.remove(aor, key),
            Update::BindingsCleared { aor } => self.bindings.clear_aor(aor),
            Update::SourceBanned(ban) => {
                let longer = self
                    .bans
                    .get(&ban.ip)
                    .is_none_or(|b| b.until_ms < ban.until_ms);
                if longer {
                    self.bans.insert(ban.ip, ban.clone());
                }
            }
        }
    }

    fn extensions_changed(&mut self) {
        self.extensions_version =
            EXTENSIONS_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    }

    /// A number that changes whenever the extensions do, and is never the same for two
    /// different extension sets in one process (0: none was ever added): what lets a
    /// process reuse a list of them it made earlier.
    pub fn extensions_version(&self) -> u64 {
        self.extensions_version
    }

    pub fn extension(&self, number: &str) -> Option<&Extension> {
        self.extensions.get(number)
    }

    /// Every extension, in no particular order.
    pub fn extensions(&self) -> impl Iterator<Item = &Extension> {
        self.extensions.table.iter()
    }

    pub fn extension_count(&self) -> usize {
        self.extensions.table.len()
    }

    /// Bindings of `aor` that have not expired at `now_ms`, as borrowed views
    /// ([`BindingRef::to_binding`] for an owned copy).
    pub fn bindings<'a>(
        &'a self,
        aor: &str,
        now_ms: u64,
    ) -> impl Iterator<Item = BindingRef<'a>> + 'a {
        self.bindings
            .get(aor)
            .filter(move |b| b.expires_at_ms > now_ms)
    }

    /// Every binding, expired ones not yet purged included.
    pub fn all_bindings(&self) -> impl Iterator<Item = BindingRef<'_>> {
        self.bindings.iter()
    }

    /// Every AOR with bindings (expired ones not yet purged included), in no particular order.
    pub fn binding_aors(&self) -> impl Iterator<Item = &str> {
        self.bindings.aors()
    }

    /// Count of bindings, expired ones not yet purged included.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Whether `ip` is banned at `now_ms`.
    pub fn is_banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.bans.get(&ip).is_some_and(|b| b.until_ms > now_ms)
    }

    /// Bans in force at `now_ms`.
    pub fn bans(&self, now_ms: u64) -> impl Iterator<Item = &Ban> {
        self.bans.values().filter(move |b| b.until_ms > now_ms)
    }

    /// Drops bindings that expired at or before `now_ms`. Every process does this on its
    /// own; it changes nothing another process could observe, since lookups ignore them.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        self.bans.retain(|_, b| b.until_ms > now_ms);
        self.bindings.purge_expired(now_ms)
    }

    /// The whole state as snapshot parts, to rebuild with [`Replica::from_snapshot`].
    pub fn snapshot(&self) -> Vec<SnapshotPart> {
        let mut parts: Vec<SnapshotPart> = chunked(self.extensions.table.iter().cloned())
            .map(SnapshotPart::Extensions)
            .collect();
        parts.extend(chunked(self.bindings.iter().map(Binding::from)).map(SnapshotPart::Bindings));
        if !self.bans.is_empty() {
            parts.push(SnapshotPart::Bans(self.bans.values().cloned().collect()));
        }
        parts
    }

    /// Rebuilds a replica from snapshot parts taken at generation `seq`.
    pub fn from_snapshot<'a>(seq: u64, parts: impl IntoIterator<Item = &'a SnapshotPart>) -> Self {
        let mut replica = Replica {
            seq,
            ..Replica::default()
        };
        for part in parts {
            replica.absorb(part);
        }
        replica
    }

    /// Adds one snapshot part to a replica being rebuilt.
    pub fn absorb(&mut self, part: &SnapshotPart) {
        match part {
            SnapshotPart::Extensions(list) => {
                self.extensions_changed();
                for e in list {
                    self.extensions.insert(e.clone());
                }
            }
            SnapshotPart::Bindings(list) => {
                for b in list {
                    self.reduce(&Update::BindingUpserted(b.clone()));
                }
            }
            SnapshotPart::Bans(list) => {
                for b in list {
                    self.reduce(&Update::SourceBanned(b.clone()));
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch: the clock bindings and bans expire by, in every
/// process.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `items` in vectors of [`SNAPSHOT_CHUNK`], without collecting them all first.
fn chunked<T>(mut items: impl Iterator<Item = T>) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        let chunk: Vec<T> = items.by_ref().take(SNAPSHOT_CHUNK).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_config::Secret;

    fn ext(number: &str) -> Extension {
        Extension {
            number: number.into(),
            name: None,
            secret: Secret::Password("pw".into()),
            enabled: true,
            auth_algorithms: None,
        }
    }

    pub(crate) fn binding(aor: &str, key: &str, expires_at_ms: u64) -> Binding {
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
            user_agent: Some("test".into()),
            call_id: "c1".into(),
            cseq: 1,
            q: None,
            expires_at_ms,
        }
    }

    #[test]
    fn numbered_updates_apply_in_order_and_gaps_are_refused() {
        let mut r = Replica::new();
        r.apply(1, &Update::ExtensionUpserted(ext("1001"))).unwrap();
        r.apply(1, &Update::ExtensionDeleted("1001".into()))
            .unwrap(); // duplicate: ignored
        assert!(r.extension("1001").is_some());
        assert_eq!(
            r.apply(3, &Update::ExtensionDeleted("1001".into())),
            Err(Gap { have: 1, got: 3 })
        );
        assert_eq!(r.seq(), 1);
    }

    #[test]
    fn bindings_upsert_by_key_and_expire_by_absolute_time() {
        let mut r = Replica::new();
        r.apply_local(&Update::ExtensionUpserted(ext("1001")));
        r.apply_local(&Update::BindingUpserted(binding("1001", "a", 1000)));
        r.apply_local(&Update::BindingUpserted(binding("1001", "b", 2000)));
        r.apply_local(&Update::BindingUpserted(binding("1001", "a", 3000)));
        assert_eq!(r.binding_count(), 2);
        let live: Vec<_> = r.bindings("1001", 2500).map(|b| b.key).collect();
        assert_eq!(live, vec!["a"]);
        assert_eq!(r.purge_expired(2500), 1);
        r.apply_local(&Update::BindingRemoved {
            aor: "1001".into(),
            key: "a".into(),
        });
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn the_extensions_version_moves_with_the_extensions_only() {
        let mut r = Replica::new();
        assert_eq!(r.extensions_version(), 0);
        r.apply_local(&Update::ExtensionUpserted(ext("1001")));
        let v1 = r.extensions_version();
        r.apply_local(&Update::BindingUpserted(binding("1001", "a", 1000)));
        r.apply_local(&Update::BindingRemoved {
            aor: "1001".into(),
            key: "a".into(),
        });
        assert_eq!(r.extensions_version(), v1, "bindings are not extensions");
        r.apply_local(&Update::ExtensionDeleted("1001".into()));
        assert_ne!(r.extensions_version(), v1);
        let copy = Replica::from_snapshot(1, &r.snapshot());
        let mut other = Replica::new();
        other.apply_local(&Update::ExtensionUpserted(ext("1002")));
        assert!(
            ![v1, r.extensions_version(), copy.extensions_version()]
                .contains(&other.extensions_version()),
            "no two extension sets share a version"
        );
    }

    #[test]
    fn an_upserted_extension_replaces_the_one_with_its_number() {
        let mut r = Replica::new();
        r.apply_local(&Update::ExtensionsReplaced(vec![ext("1001"), ext("1002")]));
        let mut changed = ext("1001");
        changed.enabled = false;
        r.apply_local(&Update::ExtensionUpserted(changed.clone()));
        assert_eq!(r.extension_count(), 2);
        assert_eq!(r.extension("1001"), Some(&changed));
        r.apply_local(&Update::ExtensionDeleted("1002".into()));
        r.apply_local(&Update::ExtensionDeleted("1003".into()));
        assert_eq!(r.extension_count(), 1);
        assert!(r.extension("1002").is_none());
        assert_eq!(r.extensions().count(), 1);
    }

    #[test]
    fn deleting_an_extension_drops_its_bindings() {
        let mut r = Replica::new();
        r.apply_local(&Update::ExtensionsReplaced(vec![ext("1001"), ext("1002")]));
        r.apply_local(&Update::BindingUpserted(binding("1001", "a", 1000)));
        r.apply_local(&Update::BindingUpserted(binding("1002", "a", 1000)));
        r.apply_local(&Update::ExtensionDeleted("1001".into()));
        r.apply_local(&Update::ExtensionsReplaced(vec![ext("1003")]));
        assert_eq!(r.binding_count(), 0);
        assert_eq!(r.extension_count(), 1);
    }

    #[test]
    fn snapshot_round_trip_in_chunks() {
        let mut r = Replica::new();
        let exts: Vec<_> = (0..1200).map(|i| ext(&format!("{}", 1000 + i))).collect();
        r.apply_local(&Update::ExtensionsReplaced(exts));
        for i in 0..700 {
            r.apply_local(&Update::BindingUpserted(binding(
                &format!("{}", 1000 + i),
                "k",
                10,
            )));
        }
        let parts = r.snapshot();
        assert_eq!(parts.len(), 3 + 2);
        let copy = Replica::from_snapshot(42, &parts);
        assert_eq!(copy.seq(), 42);
        assert_eq!(copy.extension_count(), 1200);
        assert_eq!(copy.binding_count(), 700);
    }
}
