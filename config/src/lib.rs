//! sipcraft configuration.
//!
//! The pipeline is: TOML text -> [`file`] structs (unknown keys rejected) -> one validated
//! [`Config`] -> the slice each process role needs. The supervisor is the only process that
//! reads the file; children receive their slice over the bus, so every process of one
//! generation runs on the same validated configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub server: Server,
    pub listen: Vec<Listen>,
    pub extensions: Vec<Extension>,
    pub database: Option<Database>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// SIP domain served, and the digest realm.
    pub domain: String,
    /// Control and IPC sockets live here (created with mode 0700).
    pub runtime_dir: PathBuf,
    /// Extension cache file and write journal live here.
    pub state_dir: PathBuf,
}

/// Transport of a `[[listen]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// `[[listen]]`, with `workers = "auto"` already resolved to a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listen {
    pub transport: Transport,
    pub address: SocketAddr,
    pub workers: usize,
}

/// `[[extension]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    pub number: String,
    pub name: Option<String>,
    pub secret: Secret,
    pub enabled: bool,
}

/// How an extension's digest secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Secret {
    Password(String),
    /// Precomputed HA1 values (hex), `MD5(user:realm:password)` / `SHA-256(...)`.
    Ha1 {
        md5: Option<String>,
        sha256: Option<String>,
    },
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub url: String,
}
