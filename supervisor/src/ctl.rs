//! `sipcraft ctl`: the operator's client for the control socket.

use std::path::Path;
use std::time::Duration;

use sipcraft_ipc::conn;
use sipcraft_ipc::wire::{ControlRequest, ControlResponse, Envelope, Hello, Role, Status};

/// How long `ctl` waits for the supervisor to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the supervisor at {path} (is sipcraft running, with this runtime_dir?)")]
    Connect {
        path: String,
        #[source]
        source: conn::ConnError,
    },
    #[error("control connection failed")]
    Talk(#[source] conn::ConnError),
    #[error("the supervisor closed the connection without answering")]
    NoAnswer,
    #[error("the supervisor did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Sends one request and returns the answer; `Failed` answers become errors.
pub async fn request(socket: &Path, request: ControlRequest) -> Result<ControlResponse, CtlError> {
    let talk = async {
        let (mut reader, mut writer) =
            conn::connect(socket)
                .await
                .map_err(|source| CtlError::Connect {
                    path: socket.display().to_string(),
                    source,
                })?;
        let hello = ControlRequest::Hello(Hello::new(Role::Control, "ctl"));
        writer
            .send(&Envelope::new(hello))
            .await
            .map_err(CtlError::Talk)?;
        writer
            .send(&Envelope {
                id: 1,
                body: request,
            })
            .await
            .map_err(CtlError::Talk)?;
        match reader
            .recv::<Envelope<ControlResponse>>()
            .await
            .map_err(CtlError::Talk)?
        {
            Some(Envelope {
                body: ControlResponse::Failed(why),
                ..
            }) => Err(CtlError::Failed(why)),
            Some(env) => Ok(env.body),
            None => Err(CtlError::NoAnswer),
        }
    };
    tokio::time::timeout(ANSWER_WITHIN, talk)
        .await
        .map_err(|_| CtlError::Timeout(ANSWER_WITHIN))?
}

/// The `ctl status` table.
pub fn status_table(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sipcraft {} supervisor pid {} up {}  state generation {}  extensions {}  bindings {}",
        status.version,
        status.supervisor_pid,
        human(status.uptime_ms),
        status.generation,
        status.extensions,
        status.bindings
    );
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>8} {:<11} {:>9} {:>8} {:>6} {:>6}  LAST EXIT",
        "NAME", "ROLE", "PID", "STATE", "UPTIME", "RESTARTS", "TXNS", "CONNS"
    );
    for c in &status.children {
        let pid = c.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:>8} {:<11} {:>9} {:>8} {:>6} {:>6}  {}",
            c.name,
            c.role.as_str(),
            pid,
            c.state.as_str(),
            human(c.uptime_ms),
            c.restarts,
            c.health.transactions,
            c.health.connections,
            c.last_exit.as_deref().unwrap_or("-")
        );
        if let Some(alarm) = &c.health.alarm {
            let _ = writeln!(out, "  ALARM {}: {alarm}", c.name);
        }
        if c.held_records > 0 {
            let _ = writeln!(
                out,
                "  HELD {}: {} call records not yet on its disk or in the database",
                c.name, c.held_records
            );
        }
    }
    for ban in &status.bans {
        let _ = writeln!(out, "BANNED {ban}");
    }
    out
}

fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_an_operator_expects() {
        assert_eq!(human(1_500), "1.5s");
        assert_eq!(human(125_000), "2m05s");
        assert_eq!(human(7_260_000), "2h01m");
        assert_eq!(human(90_000_000), "1d01h");
    }
}
