//! Local persistence: the cache file, journal fsync and trimming, the alarm, and the
//! orderly finish.

use std::time::{Duration, Instant};

use sipcraft_config::Extension;

use sipcraft_ipc::wire::FromChild;

use super::{chain, Agent, DbState, Kept, JOURNAL_WARN_PERCENT};
use crate::cache::{self, CacheError, CacheOut, SharedExtensions};
use crate::db::DbEvent;

impl Agent {
    /// The alarm for `ctl status`, if any.
    pub(super) fn alarm(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let DbState::Down(reason) = &self.db_state {
            parts.push(format!(
                "database unreachable ({reason}); serving cached extensions, journaling writes"
            ));
        }
        if self.journal_failing {
            parts.push(
                "journal writes FAILING (full disk or I/O error in state_dir); retried every \
                 50 ms, call records held by the supervisor until they are on disk or in the \
                 database"
                    .to_string(),
            );
        }
        let (bytes, max) = (self.journal.bytes(), self.journal.max_bytes());
        if self.journal_full {
            parts.push(format!(
                "journal FULL ({bytes} of {max} bytes): call records go to the database only, \
                 {} registration changes kept in the cache only (rewritten in full when the \
                 database returns)",
                self.refused_bindings
            ));
        } else if bytes * 100 >= max * JOURNAL_WARN_PERCENT {
            let percent = bytes * 100 / max / 10 * 10;
            parts.push(format!(
                "journal at {percent}% of its limit ({max} bytes) while the database is away"
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub(super) fn snapshot_cache(&mut self) -> CacheOut {
        let version = self.replica().extensions_version();
        let extensions = match &self.listed_extensions {
            Some((v, list)) if *v == version => list.clone(),
            _ => {
                let mut list: Vec<Extension> = self.replica().extensions().cloned().collect();
                list.sort_by(|a, b| a.number.cmp(&b.number));
                let list = SharedExtensions::new(list);
                self.listed_extensions = Some((version, list.clone()));
                list
            }
        };
        CacheOut {
            format: cache::FORMAT.into(),
            version: cache::VERSION,
            written_ms: crate::store::now_ms(),
            instance: self.instance.clone(),
            node: self.link.config.server.node_name.clone(),
            state_seq: self.next_seq - 1,
            db_applied_seq: self.db_applied,
            reconcile: self.reconcile_needed || self.reconcile_sent.is_some(),
            extensions,
            bindings: self.store.table().clone(),
        }
    }

    pub(super) fn start_cache_write(&mut self) {
        let snapshot = self.snapshot_cache();
        let dir = self.dir.clone();
        self.cache_book
            .taken(Instant::now(), self.journal.appended());
        self.cache_job = Some(tokio::task::spawn_blocking(move || {
            let bytes = cache::store(&dir, &snapshot)?;
            Ok(CacheWritten {
                seq: snapshot.state_seq,
                bytes,
            })
        }));
    }

    /// Starts writing the cache file if it is due (checked every second).
    pub(super) fn write_cache_if_due(&mut self) {
        // A new file lets the journal be trimmed further only if it would cover more than the
        // file on disk, and the file, not the database, is what holds the trimming back.
        let behind = self.cache_seq < self.next_seq - 1;
        let trims = behind && (self.db.is_none() || self.cache_seq < self.db_applied);
        let journal = JournalSize {
            bytes: self.journal.bytes(),
            max: self.journal.max_bytes(),
            appended: self.journal.appended(),
        };
        if self.cache_job.is_none() && self.cache_book.due(Instant::now(), journal, trims) {
            self.start_cache_write();
        }
    }

    /// Writes the cache and waits for it (at start and at stop).
    pub(super) async fn write_cache_now(&mut self) {
        if let Some(job) = self.cache_job.take() {
            let done = job.await;
            self.on_cache_written(done);
        }
        self.start_cache_write();
        if let Some(job) = self.cache_job.take() {
            let done = job.await;
            self.on_cache_written(done);
        }
    }

    pub fn on_cache_written(
        &mut self,
        done: Result<Result<CacheWritten, CacheError>, tokio::task::JoinError>,
    ) {
        match done {
            Ok(Ok(written)) => {
                self.cache_seq = self.cache_seq.max(written.seq);
                self.cache_book.written(written.bytes);
                self.trim();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %chain(&e), "cache file not written; retrying");
                self.cache_book.failed();
            }
            Err(e) => {
                tracing::error!(error = %e, "cache writer failed; retrying");
                self.cache_book.failed();
            }
        }
    }

    /// Deletes journal segments that the cache file and the database both cover.
    pub(super) fn trim(&mut self) {
        let upto = if self.db.is_some() {
            self.cache_seq.min(self.db_applied)
        } else {
            self.cache_seq
        };
        let removed = self.journal.trim(upto);
        if removed > 0 {
            tracing::debug!(
                segments = removed,
                bytes = self.journal.bytes(),
                "journal trimmed"
            );
        }
        let roomy = self.journal.bytes() * 100 < self.journal.max_bytes() * JOURNAL_WARN_PERCENT;
        if self.journal_full && roomy {
            tracing::warn!(
                registration_changes_not_journaled = self.refused_bindings,
                "journal has room again"
            );
            self.journal_full = false;
            self.refused_bindings = 0;
        }
    }

    /// Starts an fsync of recent appends unless one is running.
    pub fn sync_journal(&mut self) {
        if self.sync_job.is_none() {
            let taken = self.journal.take_sync();
            if taken.is_ok() && std::mem::take(&mut self.journal_failing) {
                tracing::warn!("journal writes work again");
            }
            match taken {
                Ok(Some(job)) => {
                    self.bus_syncing = Some(self.bus_received);
                    self.sync_job = Some(tokio::task::spawn_blocking(move || job.run()));
                }
                // Everything appended so far is on disk.
                Ok(None) => self.bus_durable = self.bus_received,
                // Kept buffered and retried at the next tick, up to the journal's size
                // limit; what is only in the buffer is not acknowledged meanwhile (the hub
                // keeps those call records) unless PostgreSQL has it.
                Err(e) => {
                    if !std::mem::replace(&mut self.journal_failing, true) {
                        tracing::error!(error = %chain(&e), "journal write failed; retrying; call records wait until the disk or the database has them");
                    }
                }
            }
        }
        self.settle();
    }

    /// Call record `num` from the hub was handled: `kept` (acknowledged once PostgreSQL has
    /// it or, if journaled, after the fsync that follows) or disposed of by the documented
    /// policy (no database: logged; journal full with the database away: dropped).
    pub fn received(&mut self, num: u64, kept: Option<Kept>) {
        self.bus_received = self.bus_received.max(num);
        if let Some(kept) = kept {
            self.bus_pending.push_back((num, kept));
        }
    }

    /// Moves `bus_safe` up to the last call record that is safe with every one before it:
    /// in PostgreSQL (`db_applied`), journaled and on disk (`bus_durable`, as the fsyncs
    /// left it), or never kept, and tells the hub. Acknowledgements are cumulative, so the
    /// oldest unsafe record stops them.
    pub(super) fn settle(&mut self) {
        while let Some(&(num, kept)) = self.bus_pending.front() {
            let on_disk = kept.journaled && num <= self.bus_durable;
            if !on_disk && kept.seq > self.db_applied {
                break;
            }
            self.bus_pending.pop_front();
        }
        let safe = match self.bus_pending.front() {
            Some(&(num, _)) => num - 1,
            None => self.bus_received,
        };
        self.bus_safe = self.bus_safe.max(safe);
        self.acknowledge();
    }

    /// Tells the hub which call records are safe, when that moved on.
    fn acknowledge(&mut self) {
        if self.bus_safe > self.bus_acked
            && self.link.outbox.send(FromChild::Persisted {
                upto: self.bus_safe,
            })
        {
            self.bus_acked = self.bus_safe;
        }
    }

    /// Takes a finished fsync's result. A failed fsync is fatal, as in PostgreSQL: the
    /// kernel may already have dropped the pages it could not write and call them clean, so
    /// a retry could succeed without them being on disk. The dbagent exits without
    /// acknowledging anything more; the supervisor restarts it, the hub hands the
    /// unacknowledged call records to the new one, and the new one journals whatever its
    /// journal lacks of the supervisor's replica.
    pub fn on_synced(
        &mut self,
        done: Result<std::io::Result<()>, tokio::task::JoinError>,
    ) -> std::io::Result<()> {
        let covered = self.bus_syncing.take();
        match done {
            Ok(Ok(())) => {
                if let Some(upto) = covered {
                    self.bus_durable = self.bus_durable.max(upto);
                    self.settle();
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.journal.abandon();
                Err(e)
            }
            Err(e) => {
                self.journal.abandon();
                Err(std::io::Error::other(e))
            }
        }
    }

    /// At stop: fsync the journal, give the database a moment to take what is queued,
    /// write the cache. A failed fsync ends it at once (see [`Agent::on_synced`]).
    pub async fn finish(&mut self) -> std::io::Result<()> {
        // The fsync running now, then one for what it did not cover.
        for _ in 0..2 {
            if let Some(job) = self.sync_job.take() {
                let done = job.await;
                self.on_synced(done)?;
            }
            self.sync_journal();
        }
        let last = self.next_seq - 1;
        if self.db_state == DbState::Up && self.db_applied < last {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while self.db_applied < last {
                let Some(db) = self.db.as_mut() else { break };
                match tokio::time::timeout_at(deadline, db.events.recv()).await {
                    Ok(Some(ev @ DbEvent::Applied { .. })) => self.on_db(ev),
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
        self.write_cache_now().await;
        Ok(())
    }
}

/// A cache file written: the journal sequence number it covers, and its size.
pub struct CacheWritten {
    seq: u64,
    bytes: u64,
}

/// Binding changes are in the journal, which is replayed over the cache file at start; so the
/// file needs rewriting only often enough that the replay stays short: once the journal has
/// grown by as much as the file (at least [`MIN_GROWTH`], at most a quarter of the journal's
/// limit), or after [`MAX_AGE`]. With 100,000 bindings a write costs about 40 ms (it was 200 ms
/// as JSON); at 1,000 refreshes a second the file is rewritten about every 90 s, not every 30 s
/// (issue 7). What the journal does not hold is written sooner: extensions and the reconcile
/// flag within [`CACHE_ONLY_EVERY`], binding changes a full journal refused within
/// [`REFUSED_EVERY`]. A journal half full is relieved at once when the file is what holds its
/// trimming back. The file is also written at every start and stop.
pub(super) struct CacheBook {
    /// Binding changes (journaled) since the last write was taken.
    pub journaled: bool,
    /// Changes only the cache file keeps: extensions, the reconcile flag.
    pub cache_only: bool,
    /// Binding changes a full journal refused.
    pub refused: bool,
    /// What the write in progress took (`journaled`, `cache_only`, `refused`): put back if
    /// it fails.
    in_flight: [bool; 3],
    /// When the last write was taken.
    written_at: Instant,
    /// [`Journal::appended`](crate::journal::Journal::appended) when it was taken.
    journal_mark: u64,
    /// Size of the last file written.
    file_bytes: u64,
}

/// The journal's size, as [`CacheBook::due`] needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct JournalSize {
    pub bytes: u64,
    pub max: u64,
    pub appended: u64,
}

pub(super) const CACHE_ONLY_EVERY: Duration = Duration::from_secs(30);
pub(super) const REFUSED_EVERY: Duration = Duration::from_secs(2);
pub(super) const MAX_AGE: Duration = Duration::from_secs(600);
pub(super) const MIN_GROWTH: u64 = 1 << 20;

impl CacheBook {
    /// At start (which writes the file at once, before any tick).
    pub fn new(now: Instant) -> CacheBook {
        CacheBook {
            journaled: false,
            cache_only: false,
            refused: false,
            in_flight: [false; 3],
            written_at: now,
            journal_mark: 0,
            file_bytes: 0,
        }
    }

    /// Whether a write is due now. `trims`: a new file would let the journal be trimmed
    /// further (it covers entries the file on disk does not, and the database is not what
    /// holds the trimming back).
    pub fn due(&self, now: Instant, journal: JournalSize, trims: bool) -> bool {
        let age = now.saturating_duration_since(self.written_at);
        let pressed = journal.bytes * 2 >= journal.max;
        if pressed && trims {
            return true;
        }
        if self.refused && age >= REFUSED_EVERY {
            return true;
        }
        if self.cache_only && age >= CACHE_ONLY_EVERY {
            return true;
        }
        if !self.journaled {
            return false;
        }
        let grown = journal.appended.saturating_sub(self.journal_mark);
        let enough = self.file_bytes.max(MIN_GROWTH).min(journal.max / 4);
        age >= MAX_AGE || grown >= enough
    }

    /// A write was taken now, with the journal at `appended`.
    pub fn taken(&mut self, now: Instant, appended: u64) {
        self.in_flight = [
            std::mem::take(&mut self.journaled),
            std::mem::take(&mut self.cache_only),
            std::mem::take(&mut self.refused),
        ];
        self.written_at = now;
        self.journal_mark = appended;
    }

    /// The write in progress is on disk.
    pub fn written(&mut self, bytes: u64) {
        self.in_flight = [false; 3];
        self.file_bytes = bytes;
    }

    /// The write in progress failed: what it held is due again, as urgently as before.
    pub fn failed(&mut self) {
        let [journaled, cache_only, refused] = std::mem::take(&mut self.in_flight);
        self.journaled |= journaled;
        self.cache_only |= cache_only;
        self.refused |= refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn journal(bytes: u64, appended: u64) -> JournalSize {
        JournalSize {
            bytes,
            max: 64 * MIB,
            appended,
        }
    }

    #[test]
    fn journaled_changes_wait_for_growth_or_age() {
        let t0 = Instant::now();
        let mut book = CacheBook::new(t0);
        book.taken(t0, 5 * MIB);
        book.written(20 * MIB);
        assert!(
            !book.due(t0 + MAX_AGE, journal(MIB, 5 * MIB), true),
            "nothing changed"
        );
        book.journaled = true;
        let later = t0 + Duration::from_secs(60);
        assert!(!book.due(later, journal(10 * MIB, 15 * MIB), true));
        // Grown by as much as the file, but at most a quarter of the journal's limit.
        assert!(book.due(later, journal(16 * MIB, 21 * MIB), true));
        book.written(10 * MIB);
        assert!(book.due(later, journal(10 * MIB, 15 * MIB), true));
        // A small file still waits for MIN_GROWTH, or for MAX_AGE.
        book.written(1000);
        assert!(!book.due(later, journal(MIB / 2, 5 * MIB + MIB / 2), true));
        assert!(book.due(t0 + MAX_AGE, journal(MIB / 2, 5 * MIB + MIB / 2), true));
    }

    #[test]
    fn a_half_full_journal_is_relieved_only_when_the_file_holds_it_back() {
        let t0 = Instant::now();
        let mut book = CacheBook::new(t0);
        book.taken(t0, 0);
        book.written(40 * MIB);
        let soon = t0 + Duration::from_secs(1);
        // Half full, but the database (or nothing new) keeps the segments: no write.
        assert!(!book.due(soon, journal(32 * MIB, 8 * MIB), false));
        // The file holds it back: written at once, changed bindings or not (call records).
        assert!(book.due(soon, journal(32 * MIB, 8 * MIB), true));
    }

    #[test]
    fn what_the_journal_lacks_is_written_sooner() {
        let t0 = Instant::now();
        let mut book = CacheBook::new(t0);
        assert!(
            !book.due(t0 + MAX_AGE, journal(0, 0), true),
            "start wrote it"
        );
        book.cache_only = true;
        assert!(!book.due(t0 + Duration::from_secs(29), journal(0, 0), false));
        assert!(book.due(t0 + CACHE_ONLY_EVERY, journal(0, 0), false));
        book.taken(t0, 0);
        book.refused = true;
        assert!(!book.due(t0 + Duration::from_secs(1), journal(0, 0), false));
        assert!(book.due(t0 + REFUSED_EVERY, journal(0, 0), false));
    }

    #[test]
    fn a_failed_write_puts_back_what_it_took() {
        let t0 = Instant::now();
        let mut book = CacheBook::new(t0);
        book.refused = true;
        book.taken(t0, 0);
        assert!(!book.due(t0 + REFUSED_EVERY, journal(0, 0), false));
        book.failed();
        assert!(
            book.due(t0 + REFUSED_EVERY, journal(0, 0), false),
            "as urgent as before"
        );
        book.taken(t0, 0);
        book.written(MIB);
        book.failed();
        assert!(
            !book.due(t0 + MAX_AGE, journal(0, 0), false),
            "nothing to put back"
        );
    }
}
