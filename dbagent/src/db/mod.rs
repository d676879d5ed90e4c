//! The database side of the dbagent: one task that owns every PostgreSQL connection.
//!
//! It talks to the rest of the dbagent only through channels, so however long PostgreSQL
//! takes (down, hung, slow) the bus side never waits on it. A session is: connect (within the
//! connect timeout), migrate, LISTEN, load every extension (a full resync: notifications sent
//! while no session was up are lost), skip journal entries the database already has, then
//! follow notifications and write journal entries in batches, pinging every second. Any
//! failure or missed deadline ends the session; the next starts after a backoff with jitter.

pub mod rows;
pub mod schema;
pub mod session;

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sipcraft_config::Extension;
use sipcraft_ipc::state::Binding;
use tokio::sync::mpsc;

use crate::journal::Entry;
use session::{DbError, Session};

/// Entries written per transaction.
const BATCH: usize = 256;
/// Reconnect backoff: first delay and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle session checks the server still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often expired registrations of this node are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// What the database task needs to know.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: String,
    /// Read at every connection attempt (`[database] password_file`).
    pub password_file: Option<PathBuf>,
    /// TLS, verified against these authorities (`[database] ca_file`), read at every
    /// connection attempt; `None` is plain TCP.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub node: String,
    /// The local state was empty at start: take this node's registrations from the database
    /// on the first session.
    pub adopt: bool,
}

impl DbConfig {
    /// The client-side deadline on one call: the server's statement timeout plus a margin,
    /// so the server normally reports the timeout itself.
    pub fn call_deadline(&self) -> Duration {
        self.statement_timeout + Duration::from_millis(500)
    }
}

/// Something to write, in order.
#[derive(Debug, Clone)]
pub enum Item {
    Write(Box<Entry>),
    /// Replace this node's registrations with these bindings (after journal overflow).
    Reconcile {
        seq: u64,
        bindings: Vec<Binding>,
    },
}

impl Item {
    pub fn seq(&self) -> u64 {
        match self {
            Item::Write(e) => e.seq,
            Item::Reconcile { seq, .. } => *seq,
        }
    }
}

/// What the database task reports.
#[derive(Debug)]
pub enum DbEvent {
    /// A session is up and the full extension set was loaded (rows not valid are skipped).
    Loaded {
        extensions: Vec<Extension>,
        skipped: Vec<String>,
        migrated: Vec<i32>,
    },
    /// Extensions changed (from notifications): `None` means deleted.
    Changed(Vec<(String, Option<Extension>)>),
    /// Items up to `seq` are in the database: `written` by this session, `skipped` because
    /// an earlier session had already written them (found at reconnect).
    Applied {
        seq: u64,
        written: usize,
        skipped: usize,
    },
    /// This node's registrations in the database (first session after the local state was
    /// found empty).
    Adopt(Vec<Binding>),
    /// The session ended or could not start; retrying after `retry_in`.
    Down { reason: String, retry_in: Duration },
}

/// Starts the task with the items not yet known to be in the database.
pub fn spawn(
    cfg: DbConfig,
    queue: VecDeque<Item>,
) -> (
    mpsc::UnboundedSender<Item>,
    mpsc::UnboundedReceiver<DbEvent>,
) {
    let (item_tx, items) = mpsc::unbounded_channel();
    let (event_tx, events) = mpsc::unbounded_channel();
    let task = Task {
        cfg,
        queue,
        replay: None,
        items,
        events: event_tx,
    };
    tokio::spawn(tracing::Instrument::in_current_span(task.run()));
    (item_tx, events)
}

struct Task {
    cfg: DbConfig,
    queue: VecDeque<Item>,
    /// A backlog being replayed: items written so far and when the session started.
    replay: Option<(usize, Instant)>,
    items: mpsc::UnboundedReceiver<Item>,
    events: mpsc::UnboundedSender<DbEvent>,
}

/// What woke a session loop.
enum Wake {
    Note(Option<String>),
    Write,
    Item(Option<Item>),
    Ping,
    Purge,
}

/// Why a session loop stopped.
enum End {
    Failed(DbError),
    /// The rest of the dbagent is gone.
    Closed,
}

impl Task {
    async fn run(mut self) {
        let mut delay = BACKOFF_MIN;
        let redacted = redact(&self.cfg.url);
        loop {
            let started = Instant::now();
            let opened = {
                let cfg = self.cfg.clone();
                match self.while_draining(Session::open(&cfg)).await {
                    Some(r) => r,
                    None => return,
                }
            };
            let error = match opened {
                Ok(session) => {
                    tracing::info!(url = %redacted, "database connected");
                    match self.session(session).await {
                        End::Closed => return,
                        End::Failed(e) => e,
                    }
                }
                Err(e) => e,
            };
            // A session that ran a while failed on its own: retry soon.
            if started.elapsed() > BACKOFF_MAX * 2 {
                delay = BACKOFF_MIN;
            }
            let slow = matches!(error, DbError::Schema(schema::SchemaError::Newer { .. }));
            let base = if slow { Duration::from_secs(30) } else { delay };
            let retry_in = jitter(base);
            tracing::warn!(url = %redacted, error = %error.chain(), retry_in_ms = retry_in.as_millis() as u64, "database unavailable");
            let reason = error.chain();
            if self
                .events
                .send(DbEvent::Down { reason, retry_in })
                .is_err()
            {
                return;
            }
            if self
                .while_draining(tokio::time::sleep(retry_in))
                .await
                .is_none()
            {
                return;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs `fut` while moving queued items off the channel; `None` if the channel closed.
    async fn while_draining<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                item = self.items.recv() => match item {
                    Some(item) => self.queue.push_back(item),
                    None => return None,
                },
            }
        }
    }

    async fn session(&mut self, mut s: Session) -> End {
        match self.start_session(&mut s).await {
            Ok(true) => {}
            Ok(false) => return End::Closed,
            Err(e) => return End::Failed(e),
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Ok(item) = self.items.try_recv() {
                self.queue.push_back(item);
            }
            let wake = tokio::select! {
                biased;
                note = s.notification() => Wake::Note(note),
                () = std::future::ready(()), if !self.queue.is_empty() => Wake::Write,
                item = self.items.recv() => Wake::Item(item),
                _ = ping.tick() => Wake::Ping,
                _ = purge.tick() => Wake::Purge,
            };
            let result = match wake {
                Wake::Note(Some(first)) => self.follow(&mut s, first).await,
                Wake::Note(None) => Err(DbError::ListenClosed),
                Wake::Write => self.write(&mut s).await,
                Wake::Item(Some(item)) => {
                    self.queue.push_back(item);
                    Ok(true)
                }
                Wake::Item(None) => Ok(false),
                Wake::Ping => s.ping().await.map(|()| true),
                Wake::Purge => s.purge_expired().await.map(|n| {
                    if n > 0 {
                        tracing::debug!(deleted = n, "expired registrations deleted");
                    }
                    true
                }),
            };
            match result {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(e) => return End::Failed(e),
            }
        }
    }

    /// Migrate, LISTEN, full load, skip what the database has. False: shutting down.
    async fn start_session(&mut self, s: &mut Session) -> Result<bool, DbError> {
        let migrated = s.migrate().await?;
        if !migrated.is_empty() {
            tracing::info!(versions = ?migrated, "database schema migrated");
        }
        // LISTEN before loading: a change made during the load is then seen twice, never
        // missed.
        s.listen().await?;
        let (extensions, skipped) = s.load_extensions().await?;
        let loaded = DbEvent::Loaded {
            extensions,
            skipped,
            migrated,
        };
        if self.events.send(loaded).is_err() {
            return Ok(false);
        }
        let applied = s.watermark().await?;
        let before = self.queue.len();
        while self.queue.front().is_some_and(|i| i.seq() <= applied) {
            self.queue.pop_front();
        }
        let skipped = before - self.queue.len();
        if skipped > 0 {
            tracing::info!(
                skipped,
                applied_seq = applied,
                "journal entries already in the database; skipped"
            );
            let ev = DbEvent::Applied {
                seq: applied,
                written: 0,
                skipped,
            };
            if self.events.send(ev).is_err() {
                return Ok(false);
            }
        }
        if !self.queue.is_empty() {
            tracing::info!(
                pending = self.queue.len(),
                "replaying the journal into the database"
            );
            self.replay = Some((0, Instant::now()));
        }
        if self.cfg.adopt {
            let bindings = s.load_bindings().await?;
            tracing::info!(
                bindings = bindings.len(),
                "local state was empty: registrations taken from the database"
            );
            if self.events.send(DbEvent::Adopt(bindings)).is_err() {
                return Ok(false);
            }
            self.cfg.adopt = false;
        }
        Ok(true)
    }

    /// Handles a burst of notifications with one query.
    async fn follow(&mut self, s: &mut Session, first: String) -> Result<bool, DbError> {
        let mut numbers = BTreeSet::from([first]);
        while let Some(n) = s.try_notification() {
            numbers.insert(n);
        }
        if numbers.contains("") {
            let (extensions, skipped) = s.load_extensions().await?;
            let ev = DbEvent::Loaded {
                extensions,
                skipped,
                migrated: Vec::new(),
            };
            return Ok(self.events.send(ev).is_ok());
        }
        let numbers: Vec<String> = numbers.into_iter().collect();
        let changed = s.fetch(&numbers).await?;
        Ok(self.events.send(DbEvent::Changed(changed)).is_ok())
    }

    /// Writes the oldest batch.
    async fn write(&mut self, s: &mut Session) -> Result<bool, DbError> {
        let n = self.queue.len().min(BATCH);
        let batch: Vec<Item> = self.queue.iter().take(n).cloned().collect();
        s.apply(&batch).await?;
        self.queue.drain(..n);
        if let Some((written, since)) = &mut self.replay {
            *written += n;
            if self.queue.is_empty() {
                tracing::info!(
                    written = *written,
                    took_ms = since.elapsed().as_millis() as u64,
                    "journal replayed; following live again"
                );
                self.replay = None;
            }
        }
        let seq = batch.last().map_or(0, Item::seq);
        let ev = DbEvent::Applied {
            seq,
            written: n,
            skipped: 0,
        };
        Ok(self.events.send(ev).is_ok())
    }
}

/// `base` scaled by a random factor in 0.75..1.25, so many nodes do not retry in step.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    sipcraft_config::Database {
        url: url.to_owned(),
        connect_timeout_ms: 0,
        statement_timeout_ms: 0,
        password_file: None,
        ca_file: None,
    }
    .redacted_url()
}
