//! What `sipcraft ctl` asks for: status, restart, reload, drain, stop.

use std::time::{Duration, Instant};

use sipcraft_ipc::state::Update;
use sipcraft_ipc::wire::{ChildState, ControlRequest, ControlResponse, Status, ToChild};

use super::Supervisor;
use crate::bus::Outgoing;
use crate::children::{Backoff, Kind};
use crate::process;

impl Supervisor {
    pub(super) async fn on_control(&mut self, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::Status => ControlResponse::Status(self.status()),
            ControlRequest::Restart { name } => self.restart(&name),
            ControlRequest::Reload => match self.reload().await {
                Ok(msg) => ControlResponse::Done(msg),
                Err(msg) => ControlResponse::Failed(msg),
            },
            ControlRequest::Drain => {
                self.draining = true;
                let names: Vec<String> = self.children.iter().map(|c| c.name.clone()).collect();
                for (i, name) in names.iter().enumerate() {
                    if matches!(self.children[i].kind, Kind::Worker { .. })
                        && self.tell(name, ToChild::Drain)
                    {
                        self.children[i].state = ChildState::Draining;
                    }
                }
                tracing::info!(
                    "draining: workers refuse new calls and registrations; in-flight ones finish"
                );
                ControlResponse::Done("draining: new calls and registrations are refused with 503; `ctl stop` when the transaction counts reach 0".into())
            }
            ControlRequest::Stop => {
                self.begin_stop("ctl stop");
                ControlResponse::Done("stopping".into())
            }
            ControlRequest::Hello(_) => {
                ControlResponse::Failed("hello was already received".into())
            }
        }
    }

    pub(super) fn status(&self) -> Status {
        let now = Instant::now();
        let (generation, extensions, bindings) = self.hub.counts();
        Status {
            supervisor_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            generation,
            extensions,
            bindings,
            children: self
                .children
                .iter()
                .map(|c| {
                    let mut status = c.status(now);
                    status.held_records = self.hub.held_records(&c.name);
                    let dropped = self.hub.dropped_records(&c.name);
                    if dropped > 0 {
                        let alarm = format!(
                            "{dropped} call records for it dropped by the bus: too many held \
                             unacknowledged"
                        );
                        status.health.alarm = Some(match status.health.alarm {
                            Some(a) => format!("{a}; {alarm}"),
                            None => alarm,
                        });
                    }
                    status
                })
                .collect(),
            bans: self.hub.bans(),
        }
    }

    pub(super) fn restart(&mut self, name: &str) -> ControlResponse {
        if self.stopping.is_some() {
            return ControlResponse::Failed("the supervisor is stopping".into());
        }
        let Some(i) = self.children.iter().position(|c| c.name == name) else {
            let names: Vec<&str> = self.children.iter().map(|c| c.name.as_str()).collect();
            return ControlResponse::Failed(format!(
                "no child named {name:?}; children: {}",
                names.join(", ")
            ));
        };
        let policy = self.config.supervisor.clone();
        let child = &mut self.children[i];
        child.restart_now = true;
        child.backoff = Backoff::new(&policy);
        match child.pid {
            Some(pid) => {
                tracing::info!(child = %name, pid, "restart requested");
                // The child is asked politely and killed if it has not gone in a second.
                process::terminate(pid);
                let deadline = Instant::now() + Duration::from_secs(1);
                child.restart_at = Some(deadline);
                ControlResponse::Done(format!("restarting {name} (pid {pid})"))
            }
            None => {
                child.restart_at = Some(Instant::now());
                ControlResponse::Done(format!("starting {name}"))
            }
        }
    }

    /// Re-reads the configuration file; applies what can change live. Keeps running on the
    /// old configuration when the new one is not valid.
    pub(super) async fn reload(&mut self) -> Result<String, String> {
        self.notifier.reloading();
        let result = self.reload_inner().await;
        self.notifier.ready();
        result
    }

    pub(super) async fn reload_inner(&mut self) -> Result<String, String> {
        // Reading and checking a file of 100,000 extensions takes a while: off the runtime's
        // thread, which carries the bus.
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || sipcraft_config::load(&path)).await;
        let loaded = loaded.map_err(|e| format!("could not read the configuration: {e}"))?;
        let new = match loaded {
            Ok(c) => c,
            Err(problems) => {
                for p in problems.iter() {
                    tracing::error!(problem = %p, "reload refused");
                }
                return Err(format!(
                    "configuration not valid, still running the previous one:\n{problems}"
                ));
            }
        };
        let refused = sipcraft_config::restart_needed(&self.config, &new);
        // What needs a restart stays as it is; everything else takes effect now.
        let mut new = sipcraft_config::apply_live(&self.config, new);
        let extensions = std::mem::take(&mut new.extensions);
        let fingerprint = super::fingerprint(&extensions);
        if new.database.is_none() && fingerprint != self.extensions_fingerprint {
            self.hub.publish(Update::ExtensionsReplaced(extensions));
            self.extensions_fingerprint = fingerprint;
        }
        self.config = new;
        let slice = self.slice();
        for child in &self.children {
            if let Some(link) = &child.link {
                let _ = link.try_send(Outgoing::Msg(Box::new(ToChild::Reload(slice.clone()))));
            }
        }
        let mut msg = String::from("configuration reloaded");
        if !refused.is_empty() {
            msg.push_str(&format!(
                "; not applied until a restart: {}",
                refused.join(", ")
            ));
            tracing::warn!(keys = %refused.join(", "), "reload: these changes need a restart and were not applied");
        }
        tracing::info!("{msg}");
        Ok(msg)
    }
}
