//! sipcraft dbagent (`sipcraft dbagent`, started by the supervisor).
//!
//! The only process that talks to PostgreSQL, so a slow, dead or hung database never stalls
//! call handling. It has two halves joined by channels:
//!
//! - the bus side ([`agent`]): follows the replicated state, journals every registration
//!   change and call record ([`journal`]), keeps the local cache file ([`cache`]), restores
//!   bindings after a full restart, publishes extensions, and reports health and alarms. It
//!   never waits on the database.
//! - the database side ([`db`]): one task owning the connections; loads and follows the
//!   extensions (LISTEN/NOTIFY), writes journal entries in order, and reconnects with
//!   backoff after any failure or missed deadline.
//!
//! Without a `[database]` section only the bus side runs: bindings still survive a full
//! restart through the journal and the cache.

#![forbid(unsafe_code)]

mod agent;
pub mod cache;
pub mod db;
pub mod journal;
pub mod store;

use std::path::PathBuf;

use sipcraft_ipc::child::{self, LinkEvent};
use sipcraft_ipc::wire::{Direct, FromChild, Role};

use crate::agent::Agent;

/// How the supervisor started the dbagent.
#[derive(Debug, Clone)]
pub struct Args {
    pub name: String,
    pub bus: PathBuf,
    pub parent: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the supervisor (pid {0}) is gone")]
    Orphaned(u32),
    #[error("could not join the bus")]
    Join(#[from] child::LinkError),
    #[error("could not open the write journal")]
    OpenJournal(#[from] journal::JournalError),
    #[error("journal fsync failed; exiting so that a restarted dbagent rewrites what may be lost")]
    JournalSync(#[source] std::io::Error),
    #[error("could not create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the dbagent until it is told to stop or loses the supervisor.
pub async fn run(args: Args) -> Result<(), Error> {
    if !child::guard_parent(args.parent) {
        return Err(Error::Orphaned(args.parent));
    }
    let link = child::join(&args.bus, Role::DbAgent, &args.name, true).await?;
    // `[dbagent] journal_max_bytes`, validated with the config; a reload keeps the value the
    // journal was opened with (it needs a restart).
    let journal_max = link.config.dbagent.journal_max_bytes;
    let mut agent = Agent::start(link, journal_max).await?;
    agent.link.outbox.send(FromChild::Ready);
    tracing::info!(database = agent.has_database(), "dbagent serving");

    let mut health_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut sync_tick = tokio::time::interval(agent::SYNC_EVERY);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = child::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = health_tick.tick() => agent.on_tick(),
            _ = sync_tick.tick() => {
                agent.sync_journal();
                agent.pump();
            }
            ev = agent.link.events.recv() => match ev {
                Some(LinkEvent::Applied { update, .. }) => agent.on_update(&update),
                Some(LinkEvent::Resynced { seq }) => {
                    tracing::info!(seq, "replica resynced; comparing every binding");
                    agent.sync_all();
                }
                Some(LinkEvent::Deliver { msg: Direct::CallRecord(record), .. }) => {
                    agent.on_call_record(record);
                }
                Some(LinkEvent::DeliverNumbered { num, msg, from }) => {
                    let journaled = match msg {
                        Direct::CallRecord(record) => agent.on_call_record(record),
                        Direct::Sip(_) => {
                            tracing::debug!(%from, "message for the dbagent ignored");
                            None
                        }
                    };
                    // Acknowledged once it is on disk (the next journal fsync) or in
                    // PostgreSQL, whichever comes first.
                    agent.received(num, journaled);
                }
                Some(LinkEvent::Deliver { from, .. }) => {
                    tracing::debug!(%from, "message for the dbagent ignored");
                }
                Some(LinkEvent::Reload(config)) => agent.link.config = *config,
                Some(LinkEvent::Drain) => {}
                Some(LinkEvent::Stop) => break,
                Some(LinkEvent::Closed) | None => {
                    tracing::warn!("bus closed: the supervisor is gone; exiting");
                    break;
                }
            },
            Some(ev) = agent::next_db_event(&mut agent.db) => agent.on_db(ev),
            done = agent::job_done(&mut agent.cache_job) => agent.on_cache_written(done),
            done = agent::job_done(&mut agent.sync_job) => {
                // Nothing more is acknowledged, and the journal is not trusted further.
                agent.on_synced(done).map_err(Error::JournalSync)?;
            }
            _ = &mut stop => break,
        }
    }
    agent.finish().await.map_err(Error::JournalSync)?;
    // The last acknowledgement (and health) must leave before the process does.
    if !agent
        .link
        .outbox
        .flush(std::time::Duration::from_secs(1))
        .await
    {
        tracing::warn!("could not hand the last messages to the bus before exiting");
    }
    tracing::info!("dbagent stopped");
    Ok(())
}
