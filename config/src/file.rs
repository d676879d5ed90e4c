//! The config file as written: one struct per table, unknown keys rejected.
//!
//! Every key is optional at this level, so that a missing key is reported by validation, in
//! words, together with every other problem; `validate` turns these into [`crate::Config`].
//! Values that need checking beyond their TOML type (addresses, algorithm names, ranges) stay
//! strings and numbers here for the same reason.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub server: Option<ServerFile>,
    #[serde(default)]
    pub listen: Vec<ListenFile>,
    #[serde(default)]
    pub extension: Vec<ExtensionFile>,
    pub database: Option<DatabaseFile>,
    #[serde(default)]
    pub registrar: RegistrarFile,
    #[serde(default)]
    pub security: SecurityFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub supervisor: SupervisorFile,
    #[serde(default)]
    pub dbagent: DbAgentFile,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub domain: Option<String>,
    pub runtime_dir: Option<String>,
    pub state_dir: Option<String>,
    pub log_level: Option<String>,
    pub node_name: Option<String>,
}

/// `[[listen]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenFile {
    pub transport: Option<String>,
    pub address: Option<String>,
    pub workers: Option<Workers>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
}

/// `workers = "auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workers {
    Auto,
    Count(i64),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;

        impl Visitor<'_> for WorkersVisitor {
            type Value = Workers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of workers or \"auto\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                Ok(Workers::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }

        deserializer.deserialize_any(WorkersVisitor)
    }
}

/// `[[extension]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtensionFile {
    pub number: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
    pub enabled: Option<bool>,
    pub auth_algorithms: Option<Vec<String>>,
}

/// `[database]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseFile {
    pub url: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub statement_timeout_ms: Option<u64>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
}

/// `[registrar]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrarFile {
    pub min_expires: Option<u64>,
    pub max_expires: Option<u64>,
    pub default_expires: Option<u64>,
    pub max_contacts_per_aor: Option<u64>,
    pub auth_algorithms: Option<Vec<String>>,
    pub nonce_lifetime_s: Option<u64>,
}

/// `[security]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecurityFile {
    pub auth_failures_before_ban: Option<u64>,
    pub ban_window_s: Option<u64>,
    pub ban_time_s: Option<u64>,
    pub requests_per_second_per_ip: Option<u64>,
    pub trusted_ips: Option<Vec<String>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub max_message_bytes: Option<u64>,
    pub max_tcp_connections: Option<u64>,
    pub tcp_idle_timeout_s: Option<u64>,
    pub max_transactions: Option<u64>,
    pub udp_linger_ms: Option<u64>,
    pub udp_wake_all_below: Option<u64>,
}

/// `[proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyFile {
    pub ring_timeout_s: Option<u64>,
}

/// `[supervisor]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupervisorFile {
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub healthy_after_s: Option<u64>,
    pub crash_loop_restarts: Option<u64>,
    pub stop_timeout_s: Option<u64>,
}

/// `[dbagent]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DbAgentFile {
    pub journal_max_bytes: Option<u64>,
}
