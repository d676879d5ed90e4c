//! The bus side of the dbagent: local state at start, bindings journaled as they change,
//! extensions published from the database, health and alarms. Nothing here waits on
//! PostgreSQL; disk writes that may take a while (fsync, the cache file) run on blocking
//! threads while the bus keeps being served.

mod extensions;
mod persist;

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sipcraft_ipc::child::Link;
use sipcraft_ipc::state::{Binding, Update};
use sipcraft_ipc::wire::{CallRecord, FromChild, Health};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cache::{self, Cache, CacheError};
use crate::db::{self, DbConfig, DbEvent, Item};
use crate::journal::{Append, Entry, Journal, Op};
use crate::store::{BindingId, Store};
use crate::Error;
use persist::{CacheBook, CacheWritten};

/// How often journal appends are fsynced (the batch window).
pub const SYNC_EVERY: Duration = Duration::from_millis(50);
/// Bindings published to restore them are kept this long while their echo is awaited.
const RESTORE_GRACE: Duration = Duration::from_secs(10);
/// Largest extension set published as one `ExtensionsReplaced` (bytes, postcard); bigger
/// sets go out as single upserts and deletes so no bus frame nears its limit.
const REPLACE_MAX_BYTES: usize = 2 << 20;
/// The journal alarm starts at this share of the limit (percent).
const JOURNAL_WARN_PERCENT: u64 = 80;

/// The database task's channels.
pub struct Db {
    items: mpsc::UnboundedSender<Item>,
    events: mpsc::UnboundedReceiver<DbEvent>,
}

/// Where the database stands, for the alarm.
#[derive(Debug, Clone, PartialEq)]
enum DbState {
    Connecting,
    Up,
    Down(String),
}

/// The dbagent's bus side.
pub struct Agent {
    pub link: Link,
    dir: PathBuf,
    instance: String,
    store: Store,
    journal: Journal,
    next_seq: u64,
    /// `state_seq` of the cache file on disk.
    cache_seq: u64,
    pub db: Option<Db>,
    db_state: DbState,
    db_applied: u64,
    /// A binding change was refused by a full journal: rewrite this node's registrations.
    reconcile_needed: bool,
    /// Sequence number of a rewrite sent and not yet confirmed.
    reconcile_sent: Option<u64>,
    /// Updates waiting for room in the link's queue.
    outgoing: VecDeque<Update>,
    /// Bindings published from the local state, not yet echoed by the bus.
    restoring: HashSet<BindingId>,
    restoring_until: Option<Instant>,
    /// When the cache file is next due.
    cache_book: CacheBook,
    /// The extensions as the last cache write listed them, with the replica's
    /// `extensions_version` they were listed at.
    listed_extensions: Option<(u64, crate::cache::SharedExtensions)>,
    pub cache_job: Option<JoinHandle<Result<CacheWritten, CacheError>>>,
    pub sync_job: Option<JoinHandle<std::io::Result<()>>>,
    journal_full: bool,
    /// The last journal write failed (a full disk): logged once, and again on recovery.
    journal_failing: bool,
    refused_bindings: u64,
    ticks: u64,
    /// Call records the hub numbered: the highest handled (journaled, sent to the database,
    /// or disposed of by the policy), the highest the running fsync covers, the highest
    /// whose journal entry (if it has one) is on disk, the highest safe with every one
    /// before it, the highest acknowledged to the hub (which keeps the rest and sends them
    /// to our successor).
    bus_received: u64,
    bus_syncing: Option<u64>,
    bus_durable: u64,
    bus_safe: u64,
    bus_acked: u64,
    /// Call records the hub numbered that are kept and not safe yet, oldest first. One is
    /// safe once PostgreSQL has it, or, if it went into the journal, once the journal is on
    /// disk past it: a disk that refuses writes does not hold back what the database took.
    /// Records the policy disposed of (no database: logged; journal full with the database
    /// away: dropped) are never here and never wait.
    bus_pending: VecDeque<(u64, Kept)>,
}

/// Where a call record is kept until it is safe: its journal sequence number, and whether
/// it went into the journal (it is in the database's queue either way).
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub seq: u64,
    pub journaled: bool,
}

impl Agent {
    /// Loads the local state, restores or catches up bindings, publishes cached extensions
    /// and starts the database task.
    pub async fn start(link: Link, journal_max: u64) -> Result<Agent, Error> {
        let dir = link.config.server.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| Error::StateDir {
            path: dir.clone(),
            source,
        })?;
        let loaded = match cache::load(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %chain(&e), "cache file unusable; starting without it");
                None
            }
        };
        let fresh = loaded.is_none();
        let cached = loaded.unwrap_or_else(Cache::new);
        let (journal, entries) = Journal::open(&dir, journal_max)?;
        let mut store = Store::new(cached.bindings);
        let mut last = cached.state_seq;
        let mut replayed = 0;
        for e in &entries {
            if e.seq > cached.state_seq {
                store.apply(&e.op);
                replayed += 1;
            }
            last = last.max(e.seq);
        }
        let instance = fingerprint(&link.secret);
        let same_instance = !fresh && cached.instance == instance;
        tracing::info!(
            cached_extensions = cached.extensions.len(),
            bindings = store.len(),
            journal_entries = entries.len(),
            replayed_locally = replayed,
            journal_bytes = journal.bytes(),
            same_supervisor = same_instance,
            "local state loaded"
        );
        let mut agent = Agent {
            link,
            dir,
            instance,
            store,
            journal,
            // Time-based floor: numbers stay increasing even if the state directory is lost.
            next_seq: (last + 1).max(now_us()),
            cache_seq: cached.state_seq,
            db: None,
            db_state: DbState::Connecting,
            db_applied: cached.db_applied_seq,
            reconcile_needed: cached.reconcile,
            reconcile_sent: None,
            outgoing: VecDeque::new(),
            restoring: HashSet::new(),
            restoring_until: None,
            cache_book: CacheBook::new(Instant::now()),
            listed_extensions: None,
            cache_job: None,
            sync_job: None,
            journal_full: false,
            journal_failing: false,
            refused_bindings: 0,
            ticks: 0,
            bus_received: 0,
            bus_syncing: None,
            bus_durable: 0,
            bus_safe: 0,
            bus_pending: VecDeque::new(),
            bus_acked: 0,
        };
        let database = agent.link.config.database.clone();
        // The database task first: what the comparisons below journal goes to it too.
        if let Some(database) = &database {
            let cfg = DbConfig {
                url: database.url.clone(),
                password_file: database.password_file.clone(),
                ca_file: database.ca_file.clone(),
                connect_timeout: Duration::from_millis(database.connect_timeout_ms.max(1)),
                statement_timeout: Duration::from_millis(database.statement_timeout_ms.max(1)),
                node: agent.link.config.server.node_name.clone(),
                adopt: fresh,
            };
            let queue: VecDeque<Item> = entries
                .into_iter()
                .filter(|e| e.seq > cached.db_applied_seq)
                .map(|e| Item::Write(Box::new(e)))
                .collect();
            if !queue.is_empty() {
                tracing::info!(
                    pending = queue.len(),
                    "journal entries waiting for the database"
                );
            }
            let (items, events) = db::spawn(cfg, queue);
            agent.db = Some(Db { items, events });
        }
        if database.is_some() && !same_instance && !cached.extensions.is_empty() {
            tracing::info!(
                extensions = cached.extensions.len(),
                "serving the cached extensions until the database answers"
            );
            agent.publish_extensions(cached.extensions);
        }
        agent.store.purge_expired(crate::store::now_ms());
        if same_instance {
            // Only the dbagent restarted: the supervisor's state is newer than ours.
            agent.sync_all();
        } else {
            let bindings: Vec<Binding> = agent.store.all().map(Binding::from).collect();
            agent.restore(bindings);
            agent.sync_all();
        }
        agent.write_cache_now().await;
        Ok(agent)
    }

    pub fn has_database(&self) -> bool {
        self.db.is_some()
    }

    fn replica(&self) -> std::sync::RwLockReadGuard<'_, sipcraft_ipc::state::Replica> {
        self.link.replica.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles an update the bus applied.
    pub fn on_update(&mut self, update: &Update) {
        match update {
            Update::BindingUpserted(b) => {
                self.restoring.remove(&(b.aor.clone(), b.key.clone()));
                self.sync_aor(&b.aor);
            }
            Update::BindingRemoved { aor, .. } | Update::BindingsCleared { aor } => {
                self.sync_aor(aor);
            }
            Update::ExtensionDeleted(number) => {
                self.sync_aor(number);
                self.cache_book.cache_only = true;
            }
            Update::ExtensionUpserted(_) => self.cache_book.cache_only = true,
            Update::ExtensionsReplaced(_) => {
                self.sync_all();
                self.cache_book.cache_only = true;
            }
            Update::SourceBanned(_) => {}
        }
    }

    fn sync_aor(&mut self, aor: &str) {
        let now: Vec<Binding> = self.replica().bindings(aor, 0).map(Binding::from).collect();
        let ops = self.store.sync_aor(aor, now, &self.restoring);
        for op in ops {
            self.record(op);
        }
    }

    /// Compares every binding with the replica and journals the differences.
    pub fn sync_all(&mut self) {
        let aors: BTreeSet<String> = {
            let replica = self.replica();
            self.store
                .aors()
                .chain(replica.binding_aors())
                .map(str::to_owned)
                .collect()
        };
        for aor in aors {
            self.sync_aor(&aor);
        }
    }

    /// A call record from a worker; where it is kept, unless the policy disposed of it.
    pub fn on_call_record(&mut self, record: CallRecord) -> Option<Kept> {
        if self.db.is_none() {
            tracing::info!(
                target: "sipcraft::cdr",
                id = %record.id,
                call_id = %record.call_id,
                caller = %record.caller,
                callee = %record.callee,
                status = record.final_status,
                "call record (no database configured)"
            );
            return None;
        }
        self.record(Op::CallRecord(record))
    }

    /// Numbers, journals and forwards one operation; where it is kept, unless the policy
    /// disposed of it.
    fn record(&mut self, op: Op) -> Option<Kept> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let is_binding = !matches!(op, Op::CallRecord(_));
        let entry = Entry { seq, op };
        let appended = match self.journal.append(&entry) {
            Ok(a) => a,
            Err(e) => {
                // Cannot happen with these types (postcard into a Vec); not the full-journal
                // policy, but counted with what it drops.
                tracing::error!(error = %chain(&e), "cannot encode a journal entry; dropped");
                self.cache_book.refused |= is_binding;
                return None;
            }
        };
        match appended {
            Append::Written => {
                if self.journal_full {
                    tracing::warn!("journal accepts writes again");
                }
                self.journal_full = false;
                self.cache_book.journaled |= is_binding;
                if let Some(db) = &self.db {
                    let _ = db.items.send(Item::Write(Box::new(entry)));
                }
                Some(Kept {
                    seq,
                    journaled: true,
                })
            }
            Append::Full => {
                if !self.journal_full {
                    tracing::error!(
                        bytes = self.journal.bytes(),
                        limit = self.journal.max_bytes(),
                        "JOURNAL FULL: call records go to the database's queue only, held \
                         by the supervisor until it takes them, until the journal has room; \
                         registrations are kept in the cache file and rewritten in full when \
                         the database returns"
                    );
                }
                // A full journal is past half full: the next tick writes the cache file if
                // that lets it be trimmed (`CacheBook::due`).
                self.journal_full = true;
                if is_binding {
                    self.cache_book.refused = true;
                    self.refused_bindings += 1;
                    if self.db.is_some() {
                        self.reconcile_needed = true;
                    }
                    return None;
                }
                // A call record: queued for the database, which keeps its queue across
                // sessions, and acknowledged once it has it. The hub keeps it until then (and
                // hands it to a successor), which bounds this queue to its 10,000. (Without a
                // database call records are only logged and never come here.)
                let Some(db) = &self.db else {
                    return None;
                };
                let _ = db.items.send(Item::Write(Box::new(entry)));
                Some(Kept {
                    seq,
                    journaled: false,
                })
            }
        }
    }

    /// Handles what the database task reports.
    pub fn on_db(&mut self, ev: DbEvent) {
        match ev {
            DbEvent::Loaded {
                extensions,
                skipped,
                ..
            } => {
                if self.db_state != DbState::Up {
                    tracing::info!(
                        extensions = extensions.len(),
                        "database up: extensions loaded in full"
                    );
                }
                self.db_state = DbState::Up;
                for why in skipped {
                    tracing::warn!(problem = %why, "extension row skipped");
                }
                self.publish_extensions(extensions);
                if self.reconcile_needed && self.reconcile_sent.is_none() {
                    self.send_reconcile();
                }
            }
            DbEvent::Changed(list) => {
                let quiet = list.len() > 10;
                if quiet {
                    tracing::info!(
                        extensions = list.len(),
                        "extensions changed in the database"
                    );
                }
                for (number, ext) in list {
                    self.publish_change(number, ext, quiet);
                }
            }
            DbEvent::Applied {
                seq,
                written,
                skipped,
            } => {
                self.db_applied = self.db_applied.max(seq);
                tracing::debug!(seq, written, skipped, "journal entries in the database");
                self.settle();
                if self.reconcile_sent.is_some_and(|r| r <= seq) {
                    tracing::info!("registrations rewritten in full after the journal overflowed");
                    self.reconcile_sent = None;
                    self.cache_book.cache_only = true;
                }
                self.trim();
            }
            DbEvent::Adopt(bindings) => self.restore(bindings),
            DbEvent::Down { reason, .. } => {
                if self.db_state == DbState::Up {
                    tracing::error!(%reason, "database lost: serving from the cache, journaling writes");
                }
                self.db_state = DbState::Down(reason);
            }
        }
    }

    fn send_reconcile(&mut self) {
        let Some(db) = &self.db else { return };
        let seq = self.next_seq;
        self.next_seq += 1;
        let bindings: Vec<Binding> = self.store.all().map(Binding::from).collect();
        tracing::warn!(
            bindings = bindings.len(),
            "journal overflowed earlier: rewriting this node's registrations in full"
        );
        if db.items.send(Item::Reconcile { seq, bindings }).is_ok() {
            self.reconcile_needed = false;
            self.reconcile_sent = Some(seq);
        }
    }
    /// Every second: health, expiry, the cache file.
    pub fn on_tick(&mut self) {
        self.ticks += 1;
        let health = Health {
            alarm: self.alarm(),
            ..Health::default()
        };
        self.link.outbox.send(FromChild::Health(health));
        if self.restoring_until.is_some_and(|t| Instant::now() >= t) {
            self.restoring.clear();
            self.restoring_until = None;
        }
        if self.ticks % 30 == 0 {
            self.store.purge_expired(crate::store::now_ms());
        }
        self.write_cache_if_due();
    }
}

/// The next event from the database task; never, without a database.
pub async fn next_db_event(db: &mut Option<Db>) -> Option<DbEvent> {
    match db {
        Some(db) => db.events.recv().await,
        None => std::future::pending().await,
    }
}

/// The result of a background job once it is done; never, when there is none.
pub async fn job_done<T>(job: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    let Some(handle) = job.as_mut() else {
        return std::future::pending().await;
    };
    let out = handle.await;
    *job = None;
    out
}

/// A stable fingerprint of the supervisor's instance secret (never the secret itself).
fn fingerprint(secret: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "sipcraft-instance".hash(&mut h);
    secret.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
