//! sipcraft dbagent (`sipcraft dbagent`, started by the supervisor).
//!
//! The only process that talks to PostgreSQL, so a slow, dead or hung database never stalls
//! call handling. It follows the replicated state on the bus and persists what must
//! survive; without a `[database]` section it still keeps the local state for the file's
//! extensions.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use sipcraft_ipc::child::{self, LinkEvent};
use sipcraft_ipc::wire::{FromChild, Health, Role};

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
}

/// Runs the dbagent until it is told to stop or loses the supervisor.
pub async fn run(args: Args) -> Result<(), Error> {
    if !child::guard_parent(args.parent) {
        return Err(Error::Orphaned(args.parent));
    }
    let mut link = child::join(&args.bus, Role::DbAgent, &args.name, true).await?;
    link.outbox.send(FromChild::Ready);
    tracing::info!(database = link.config.database.is_some(), "dbagent serving");

    let mut health_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = health_tick.tick() => {
                link.outbox.send(FromChild::Health(Health::default()));
            }
            ev = link.events.recv() => match ev {
                Some(LinkEvent::Stop) => break,
                Some(LinkEvent::Reload(config)) => link.config = *config,
                Some(LinkEvent::Closed) | None => {
                    tracing::warn!("bus closed: the supervisor is gone; exiting");
                    break;
                }
                Some(_) => {}
            },
            _ = child::stop_signal() => break,
        }
    }
    tracing::info!("dbagent stopped");
    Ok(())
}
