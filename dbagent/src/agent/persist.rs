//! Local persistence: the cache file, journal fsync and trimming, the alarm, and the
//! orderly finish.

use std::time::{Duration, Instant};

use sipcraft_config::Extension;

use sipcraft_ipc::wire::FromChild;

use super::{chain, Agent, DbState, JOURNAL_WARN_PERCENT};
use crate::cache::{self, CacheError, CacheOut};
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
        let (bytes, max) = (self.journal.bytes(), self.journal.max_bytes());
        if self.journal_full {
            parts.push(format!(
                "journal FULL ({bytes} of {max} bytes): {} call records dropped, {} registration \
                 changes kept in the cache only (rewritten in full when the database returns)",
                self.dropped_records, self.refused_bindings
            ));
        } else if bytes * 100 >= max * JOURNAL_WARN_PERCENT {
            let percent = bytes * 100 / max / 10 * 10;
            parts.push(format!(
                "journal at {percent}% of its limit ({max} bytes) while the database is away"
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub(super) fn snapshot_cache(&self) -> CacheOut {
        let mut extensions: Vec<Extension> = self.replica().extensions().cloned().collect();
        extensions.sort_by(|a, b| a.number.cmp(&b.number));
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
        self.cache_dirty = false;
        self.last_cache_write = Instant::now();
        self.cache_job = Some(tokio::task::spawn_blocking(move || {
            cache::store(&dir, &snapshot).map(|()| snapshot.state_seq)
        }));
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
        done: Result<Result<u64, CacheError>, tokio::task::JoinError>,
    ) {
        match done {
            Ok(Ok(seq)) => {
                self.cache_seq = self.cache_seq.max(seq);
                self.trim();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %chain(&e), "cache file not written; retrying");
                self.cache_dirty = true;
            }
            Err(e) => tracing::error!(error = %e, "cache writer failed"),
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
                dropped_call_records = self.dropped_records,
                registration_changes_not_journaled = self.refused_bindings,
                "journal has room again"
            );
            self.journal_full = false;
            self.dropped_records = 0;
            self.refused_bindings = 0;
        }
    }

    /// Starts an fsync of recent appends unless one is running.
    pub fn sync_journal(&mut self) {
        if self.sync_job.is_none() {
            match self.journal.take_sync() {
                Some(job) => {
                    self.bus_syncing = Some(self.bus_received);
                    self.sync_job = Some(tokio::task::spawn_blocking(move || job.run()));
                }
                // Everything appended so far is on disk.
                None => self.bus_durable = self.bus_received,
            }
        }
        self.acknowledge();
    }

    /// Call record `num` from the hub was handled: journaled (acknowledged after the fsync
    /// that follows) or disposed of by the documented policy (no database: logged; journal
    /// full: dropped).
    pub fn received(&mut self, num: u64) {
        self.bus_received = self.bus_received.max(num);
    }

    /// Tells the hub which call records are on disk, when that moved on.
    fn acknowledge(&mut self) {
        if self.bus_durable > self.bus_acked
            && self.link.outbox.send(FromChild::Persisted {
                upto: self.bus_durable,
            })
        {
            self.bus_acked = self.bus_durable;
        }
    }

    pub fn on_synced(&mut self, done: Result<std::io::Result<()>, tokio::task::JoinError>) {
        let covered = self.bus_syncing.take();
        match done {
            Ok(Ok(())) => {
                if let Some(upto) = covered {
                    self.bus_durable = self.bus_durable.max(upto);
                    self.acknowledge();
                }
            }
            // Not acknowledged: the hub keeps those records (until a later fsync covers them,
            // or for the next dbagent).
            Ok(Err(e)) => tracing::error!(error = %e, "journal fsync failed"),
            Err(e) => tracing::error!(error = %e, "journal fsync task failed"),
        }
    }

    /// At stop: fsync the journal, give the database a moment to take what is queued,
    /// write the cache.
    pub async fn finish(&mut self) {
        // The fsync running now, then one for what it did not cover.
        for _ in 0..2 {
            if let Some(job) = self.sync_job.take() {
                let done = job.await;
                self.on_synced(done);
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
    }
}
