//! Publishing: extensions from the database or the cache, and bindings restored from the
//! local state or the database after a full restart.

use std::collections::HashSet;
use std::time::Instant;

use sipcraft_config::Extension;
use sipcraft_ipc::state::{Binding, Update};

use super::{Agent, REPLACE_MAX_BYTES, RESTORE_GRACE};

/// Updates sent to the link per [`Agent::pump`] call.
const PUMP_BATCH: usize = 1024;

impl Agent {
    /// Publishes bindings from the local state (or the database) that the bus lacks.
    pub(super) fn restore(&mut self, bindings: Vec<Binding>) {
        let now = crate::store::now_ms();
        let mut published = 0;
        for b in bindings {
            if b.expires_at_ms <= now {
                continue;
            }
            let known = self.replica().bindings(&b.aor, 0).any(|x| x.key == b.key);
            if known {
                continue;
            }
            self.restoring.insert((b.aor.clone(), b.key.clone()));
            self.publish(Update::BindingUpserted(b));
            published += 1;
        }
        if published > 0 {
            self.restoring_until = Some(Instant::now() + RESTORE_GRACE);
            tracing::info!(bindings = published, "registrations restored");
        }
    }

    /// Queues an update for the bus, in order, and sends what the link takes now.
    pub(super) fn publish(&mut self, update: Update) {
        // The dbagent is the only source of extension changes, and decides the next change by
        // comparing the database with its replica: a change of its own is applied there at
        // once, not when the hub's numbered copy comes back (up to 10 ms later, see the hub's
        // gathering, or later still behind `outgoing`). Otherwise a row inserted and deleted
        // within that window looked never inserted, and the delete was lost.
        if matches!(
            update,
            Update::ExtensionsReplaced(_)
                | Update::ExtensionUpserted(_)
                | Update::ExtensionDeleted(_)
        ) {
            self.link
                .replica
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_local(&update);
        }
        self.outgoing.push_back(update);
        self.pump();
    }

    /// Sends queued updates until the link's queue is full (a big restore or extension set
    /// must not overflow it); the rest go on the next call.
    pub fn pump(&mut self) {
        let mut sent = 0;
        while let Some(update) = self.outgoing.front() {
            if sent >= PUMP_BATCH || !self.link.outbox.publish(update.clone()) {
                break;
            }
            self.outgoing.pop_front();
            sent += 1;
        }
        if sent > 0 && !self.restoring.is_empty() {
            // Restored bindings are protected until their echo can have come back.
            self.restoring_until = Some(Instant::now() + RESTORE_GRACE);
        }
    }

    /// Publishes a full extension set from the database (or the cache): as one replacement
    /// when it differs from the bus's and fits a frame comfortably, else change by change.
    pub(super) fn publish_extensions(&mut self, loaded: Vec<Extension>) {
        let registrar = self.link.config.registrar.clone();
        let mut wanted: Vec<Extension> = Vec::with_capacity(loaded.len());
        for e in loaded {
            if e.challenge_algorithms(&registrar).is_empty() {
                tracing::warn!(number = %e.number, "extension skipped: its secret answers none of its challenge algorithms");
                continue;
            }
            wanted.push(e);
        }
        {
            let replica = self.replica();
            if replica.extension_count() == wanted.len()
                && wanted
                    .iter()
                    .all(|e| replica.extension(&e.number) == Some(e))
            {
                return;
            }
        }
        let size = postcard::to_allocvec(&wanted).map_or(usize::MAX, |v| v.len());
        if size <= REPLACE_MAX_BYTES {
            tracing::info!(extensions = wanted.len(), "extensions published");
            self.publish(Update::ExtensionsReplaced(wanted));
            return;
        }
        // Compared against the replica in place: a copy of 100k extensions is megabytes.
        let changes: Vec<Update> = {
            let replica = self.replica();
            let numbers: HashSet<&str> = wanted.iter().map(|e| e.number.as_str()).collect();
            let mut changes: Vec<Update> = replica
                .extensions()
                .filter(|e| !numbers.contains(e.number.as_str()))
                .map(|e| Update::ExtensionDeleted(e.number.clone()))
                .collect();
            drop(numbers);
            changes.extend(
                wanted
                    .into_iter()
                    .filter(|e| replica.extension(&e.number) != Some(e))
                    .map(Update::ExtensionUpserted),
            );
            changes
        };
        for update in changes {
            self.publish(update);
        }
    }

    pub(super) fn publish_change(&mut self, number: String, ext: Option<Extension>, quiet: bool) {
        let registrar = &self.link.config.registrar;
        let ext = ext.filter(|e| {
            let ok = !e.challenge_algorithms(registrar).is_empty();
            if !ok {
                tracing::warn!(%number, "extension skipped: its secret answers none of its challenge algorithms");
            }
            ok
        });
        let current = self.replica().extension(&number).cloned();
        match (ext, current) {
            (Some(new), old) if old.as_ref() != Some(&new) => {
                if !quiet {
                    tracing::info!(%number, enabled = new.enabled, "extension changed in the database");
                }
                self.publish(Update::ExtensionUpserted(new));
            }
            (None, Some(_)) => {
                if !quiet {
                    tracing::info!(%number, "extension deleted in the database");
                }
                self.publish(Update::ExtensionDeleted(number));
            }
            _ => {}
        }
    }
}
