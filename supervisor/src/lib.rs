//! sipcraft supervisor: `sipcraft run`.
//!
//! Reads and validates the configuration, binds the listen sockets, starts the dbagent and
//! the SIP workers (re-executing its own executable), restarts a child that exits with
//! exponential backoff, reaps every exit (it may be PID 1), hosts the bus, serves the
//! control socket for `sipcraft ctl`, and talks to systemd. It does no SIP and no database
//! I/O: it must be the last thing to fail.

#![forbid(unsafe_code)]

pub mod bus;
pub mod children;
pub mod control;
pub mod ctl;
pub mod notify;
pub mod process;
mod run;
#[cfg(unix)]
pub mod sockets;

use std::path::PathBuf;

pub use run::{run, run_until, Phase};

/// Errors that stop the supervisor from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration is not valid:\n{0}")]
    Config(#[source] sipcraft_config::Problems),
    #[error("could not create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] sockets_error::BindError),
    #[error("could not open the {what} socket")]
    Listen {
        what: &'static str,
        #[source]
        source: sipcraft_ipc::conn::ConnError,
    },
    #[error("could not start the process manager")]
    Spawner(#[source] std::io::Error),
    #[error("could not install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("could not make the UDP workers' claim table")]
    Claims(#[source] std::io::Error),
    #[error("could not make the UDP workers' mail links")]
    MailLinks(#[source] std::io::Error),
}

#[cfg(unix)]
mod sockets_error {
    pub use crate::sockets::BindError;
}
#[cfg(not(unix))]
mod sockets_error {
    /// Windows workers bind their own sockets.
    #[derive(Debug, thiserror::Error)]
    #[error("unreachable")]
    pub struct BindError;
}

pub use sipcraft_ipc::state::now_ms;
