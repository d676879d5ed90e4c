//! The child table: what each child is, how it is doing, and when to restart it.

use std::time::{Duration, Instant};

use sipcraft_config::Supervisor as Policy;
use sipcraft_ipc::wire::{ChildState, ChildStatus, Health, Role};
use tokio::sync::mpsc;

use crate::bus::Outgoing;

/// What a child is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    DbAgent,
    /// A SIP worker serving `socket` of listen entry `listen`.
    Worker {
        listen: usize,
        socket: usize,
    },
}

/// One child process and its history.
#[derive(Debug)]
pub struct Child {
    pub name: String,
    pub kind: Kind,
    pub pid: Option<u32>,
    pub state: ChildState,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub health: Health,
    /// Last message from the child on the bus; a ready child that stays silent is hung.
    pub last_seen: Instant,
    pub backoff: Backoff,
    pub restart_at: Option<Instant>,
    /// The bus connection, once the child said hello.
    pub link: Option<mpsc::Sender<Outgoing>>,
    /// The same connection until the hub has read it to the end: it outlives `link`, which
    /// goes when the process exits, while the hub may still be reading what the child wrote
    /// last (an orderly stop waits for it).
    pub bus_open: Option<mpsc::Sender<Outgoing>>,
    /// Restart at once when it exits (asked for with `ctl restart`).
    pub restart_now: bool,
    /// Has been ready at least once since the supervisor started.
    pub was_ready: bool,
}

impl Child {
    pub fn new(name: String, kind: Kind, policy: &Policy) -> Self {
        Child {
            name,
            kind,
            pid: None,
            state: ChildState::Starting,
            started_at: None,
            restarts: 0,
            last_exit: None,
            health: Health::default(),
            last_seen: Instant::now(),
            backoff: Backoff::new(policy),
            restart_at: None,
            link: None,
            bus_open: None,
            restart_now: false,
            was_ready: false,
        }
    }

    pub fn role(&self) -> Role {
        match self.kind {
            Kind::DbAgent => Role::DbAgent,
            Kind::Worker { .. } => Role::Worker,
        }
    }

    pub fn status(&self, now: Instant) -> ChildStatus {
        let running = self.pid.is_some();
        ChildStatus {
            name: self.name.clone(),
            role: self.role(),
            pid: self.pid,
            state: self.state,
            uptime_ms: match (running, self.started_at) {
                (true, Some(t)) => now.saturating_duration_since(t).as_millis() as u64,
                _ => 0,
            },
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            health: self.health.clone(),
            held_records: 0,
        }
    }
}

/// Exponential restart delay: doubles from `initial` to `max`, back to `initial` once a
/// child has run for `healthy_after`. `crash_loop` quick exits in a row make a crash loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    healthy_after: Duration,
    crash_loop: u32,
    next: Duration,
    quick_exits: u32,
}

impl Backoff {
    pub fn new(policy: &Policy) -> Self {
        let initial = Duration::from_millis(policy.backoff_initial_ms);
        Backoff {
            initial,
            max: Duration::from_millis(policy.backoff_max_ms).max(initial),
            healthy_after: Duration::from_secs(policy.healthy_after_s),
            crash_loop: policy.crash_loop_restarts.max(1),
            next: initial,
            quick_exits: 0,
        }
    }

    /// Records an exit after `uptime`; returns the delay before the next start and whether
    /// the child is now in a crash loop.
    pub fn on_exit(&mut self, uptime: Duration) -> (Duration, bool) {
        if uptime >= self.healthy_after {
            self.next = self.initial;
            self.quick_exits = 0;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.quick_exits += 1;
        (delay, self.quick_exits >= self.crash_loop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            healthy_after_s: 60,
            crash_loop_restarts: 5,
            stop_timeout_s: 5,
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_flags_a_crash_loop() {
        let mut b = Backoff::new(&policy());
        let quick = Duration::from_millis(10);
        let delays: Vec<u64> = (0..10)
            .map(|_| b.on_exit(quick).0.as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]
        );
        assert!(
            b.on_exit(quick).1,
            "many quick exits in a row are a crash loop"
        );
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut b = Backoff::new(&policy());
        for _ in 0..4 {
            b.on_exit(Duration::from_millis(10));
        }
        let (delay, looping) = b.on_exit(Duration::from_secs(61));
        assert_eq!(delay, Duration::from_millis(100));
        assert!(!looping);
    }
}
