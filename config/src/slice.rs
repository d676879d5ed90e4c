//! The slice of the [`Config`] each child role needs, sent to it over the bus.
//!
//! The supervisor keeps the whole `Config`; a child gets only its slice, so what a role can
//! see is written down here. Extensions are not in the worker slice: workers get them from
//! the dbagent as versioned updates on the bus, whether they come from this file or from
//! PostgreSQL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{Config, Database, Extension, Listen, LogLevel};
use crate::sections::{Limits, Proxy, Registrar, Security};

/// One sipworker process the supervisor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Stable name, `udp-0`, `udp-1`, `tcp-0` ...: numbered per transport across entries,
    /// used in logs, `ctl status` and `ctl restart`.
    pub name: String,
    /// Index of its `[[listen]]` entry in [`Config::listen`].
    pub listen: usize,
}

/// What a sipworker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// This worker's name ([`WorkerSpec::name`]).
    pub name: String,
    /// Recorded in the bindings this worker creates.
    pub node_name: String,
    /// SIP domain and digest realm.
    pub domain: String,
    /// The socket this worker serves.
    pub listen: Listen,
    pub log_level: LogLevel,
    pub registrar: Registrar,
    pub security: Security,
    pub limits: Limits,
    pub proxy: Proxy,
}

/// What the dbagent needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbAgentConfig {
    pub node_name: String,
    /// Realm the HA1 values are computed for.
    pub domain: String,
    /// Where the extension cache file and write journal live.
    pub state_dir: PathBuf,
    pub log_level: LogLevel,
    /// PostgreSQL, if configured; without it the extensions below are the source.
    pub database: Option<Database>,
    /// Extensions from the file (empty when `database` is set).
    pub extensions: Vec<Extension>,
    /// Bound of the write journal in `state_dir`, in bytes.
    pub journal_max_bytes: u64,
}

impl Config {
    /// Every sipworker to run, in `[[listen]]` order.
    pub fn worker_specs(&self) -> Vec<WorkerSpec> {
        let mut next = std::collections::HashMap::new();
        let mut specs = Vec::new();
        for (i, listen) in self.listen.iter().enumerate() {
            for _ in 0..listen.workers {
                let n = next.entry(listen.transport).or_insert(0usize);
                specs.push(WorkerSpec {
                    name: format!("{}-{n}", listen.transport),
                    listen: i,
                });
                *n += 1;
            }
        }
        specs
    }

    /// The slice for one worker, `None` if `spec.listen` is not an entry of this config.
    pub fn worker_config(&self, spec: &WorkerSpec) -> Option<WorkerConfig> {
        Some(WorkerConfig {
            name: spec.name.clone(),
            node_name: self.server.node_name.clone(),
            domain: self.server.domain.clone(),
            listen: self.listen.get(spec.listen)?.clone(),
            log_level: self.server.log_level,
            registrar: self.registrar.clone(),
            security: self.security.clone(),
            limits: self.limits.clone(),
            proxy: self.proxy.clone(),
        })
    }

    /// The slice for the dbagent.
    pub fn dbagent_config(&self) -> DbAgentConfig {
        DbAgentConfig {
            node_name: self.server.node_name.clone(),
            domain: self.server.domain.clone(),
            state_dir: self.server.state_dir.clone(),
            log_level: self.server.log_level,
            database: self.database.clone(),
            extensions: self.extensions.clone(),
            journal_max_bytes: self.dbagent.journal_max_bytes,
        }
    }
}
