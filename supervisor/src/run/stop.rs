//! An orderly stop: workers first, then the dbagent, then the supervisor; anything
//! still running at the deadline is killed.

use std::time::{Duration, Instant};

use sipcraft_ipc::wire::{ChildState, ToChild};

use super::{Phase, Supervisor};
use crate::bus::Outgoing;
use crate::children::Kind;
use crate::process;

/// An orderly stop in progress: workers first, then the dbagent (which flushes the writes
/// the workers made), then the supervisor exits.
pub(super) struct StopPlan {
    /// Workers still running at this time are killed.
    workers_by: Instant,
    /// Anything still running at this time is killed.
    all_by: Instant,
    dbagent_told: bool,
}

impl Supervisor {
    pub(super) fn begin_stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            return;
        }
        let timeout = Duration::from_secs(self.config.supervisor.stop_timeout_s.max(1));
        let now = Instant::now();
        tracing::info!(reason = why, timeout_s = timeout.as_secs(), "stopping");
        self.notifier.stopping();
        self.set_phase(Phase::Stopping);
        self.stopping = Some(StopPlan {
            workers_by: now + timeout.mul_f32(0.5),
            all_by: now + timeout.mul_f32(0.8),
            dbagent_told: false,
        });
        for child in &mut self.children {
            child.restart_at = None;
            if child.pid.is_none() {
                child.state = ChildState::Stopped;
            }
        }
        for child in &self.children {
            if let (Kind::Worker { .. }, Some(pid)) = (&child.kind, child.pid) {
                let told = child
                    .link
                    .as_ref()
                    .is_some_and(|l| l.try_send(Outgoing::Msg(Box::new(ToChild::Stop))).is_ok());
                if !told {
                    process::terminate(pid);
                }
            }
        }
    }

    pub(super) fn kill_all(&mut self) {
        for child in &self.children {
            if let Some(pid) = child.pid {
                tracing::warn!(child = %child.name, pid, "killing");
                process::kill(pid);
            }
        }
    }

    pub(super) fn stop_progress(&mut self, now: Instant) -> bool {
        let Some(plan) = &mut self.stopping else {
            return false;
        };
        let all_by = plan.all_by;
        let workers_left = self
            .children
            .iter()
            .any(|c| matches!(c.kind, Kind::Worker { .. }) && c.pid.is_some());
        // A worker has left once its process is gone and the hub has read its connection to
        // the end: what it published last (a binding it answered 200 for) is numbered and
        // queued for the dbagent before the dbagent's Stop. (Its exit can be reaped before
        // the hub reads those frames.) A connection that stays open past the workers'
        // deadline is not waited for.
        let workers_reading = now < plan.workers_by
            && self
                .children
                .iter()
                .any(|c| matches!(c.kind, Kind::Worker { .. }) && c.bus_open.is_some());
        if workers_left && now >= plan.workers_by {
            for c in self
                .children
                .iter()
                .filter(|c| matches!(c.kind, Kind::Worker { .. }))
            {
                if let Some(pid) = c.pid {
                    tracing::warn!(child = %c.name, pid, "did not stop in time; killing it");
                    process::kill(pid);
                }
            }
        }
        if !workers_left && !workers_reading && !plan.dbagent_told {
            plan.dbagent_told = true;
            for c in self.children.iter().filter(|c| c.kind == Kind::DbAgent) {
                if let Some(pid) = c.pid {
                    let told = c.link.as_ref().is_some_and(|l| {
                        l.try_send(Outgoing::Msg(Box::new(ToChild::Stop))).is_ok()
                    });
                    if !told {
                        process::terminate(pid);
                    }
                }
            }
        }
        if self.children.iter().all(|c| c.pid.is_none()) {
            return true;
        }
        if now >= all_by {
            self.kill_all();
            // Killed children are reaped on the next ticks; give up waiting soon after.
            if now >= all_by + Duration::from_millis(500) {
                return true;
            }
        }
        false
    }
}
