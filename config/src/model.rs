//! The validated configuration: what every process runs on once the file has been checked.
//!
//! These types cross process boundaries (the supervisor sends them to its children with
//! postcard), so they stay plain structs and enums: postcard encodes fields and variants by
//! position, so append fields and variants, never reorder or retype them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::sections::{DbAgent, Limits, Proxy, Registrar, Security, Supervisor};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// `[server]`: who this server is and where it keeps its files.
    pub server: Server,
    /// `[[listen]]`: the sockets SIP is served on; at least one.
    pub listen: Vec<Listen>,
    /// `[[extension]]`: the phones, when they come from this file (empty with `[database]`).
    pub extensions: Vec<Extension>,
    /// `[database]`: PostgreSQL as the source of extensions, if configured.
    pub database: Option<Database>,
    /// `[registrar]`: REGISTER handling and the digest challenge.
    pub registrar: Registrar,
    /// `[security]`: bans and rate limits against scanners and password guessing.
    pub security: Security,
    /// `[limits]`: per-worker bounds, so no input can grow memory without limit.
    pub limits: Limits,
    /// `[proxy]`: call routing timers.
    pub proxy: Proxy,
    /// `[supervisor]`: child restart policy and shutdown timing.
    pub supervisor: Supervisor,
    /// `[dbagent]`: the write journal's bound.
    pub dbagent: DbAgent,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// SIP domain served, and the digest realm.
    pub domain: String,
    /// Control and IPC sockets live here (created with mode 0700). Absolute: a relative path in
    /// the file is resolved against the directory of the config file.
    pub runtime_dir: PathBuf,
    /// Extension cache file and write journal live here. Absolute: a relative path in the file
    /// is resolved against the directory of the config file.
    pub state_dir: PathBuf,
    /// Default log verbosity; `RUST_LOG`, when set, takes precedence.
    pub log_level: LogLevel,
    /// Name of this node among several sharing one database; registrations record it.
    /// Defaults to the host name.
    pub node_name: String,
}

/// Log verbosity, `server.log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The spelling used in the file and understood by `tracing` filters.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
        .ok_or(())
    }
}

/// Transport of a `[[listen]]` entry. New variants go at the end (postcard encodes the
/// position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26, RFC 5630), usually port 5061.
    Tls,
    /// SIP over WebSocket (RFC 7118), for browser phones.
    Ws,
    /// SIP over secure WebSocket (RFC 7118).
    Wss,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Whether the transport runs over TLS (`tls`, `wss`): it needs a certificate.
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether the transport is WebSocket (`ws`, `wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// The name in a Via (`SIP/2.0/TLS`) and, lower-cased, in a `transport=` parameter.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }
}

impl FromStr for Transport {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "ws" => Ok(Transport::Ws),
            "wss" => Ok(Transport::Wss),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[listen]]`, with `workers = "auto"` already resolved to a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listen {
    /// Which SIP transport this socket speaks.
    pub transport: Transport,
    /// Address of this entry's socket (for UDP on Linux, one socket every worker reads;
    /// elsewhere one SO_REUSEPORT socket per worker); never port 0.
    pub address: SocketAddr,
    /// Number of sipworker processes for this entry, 1..=256 (and at most 255 UDP workers
    /// over all entries).
    pub workers: usize,
    /// `tls` and `wss`: the certificate and key the workers serve (re-read on reload);
    /// `None` for the other transports.
    pub tls: Option<TlsFiles>,
    /// `ws` and `wss`: the `Origin` values a browser may open a connection from (scheme,
    /// host and port, lower case); empty accepts any origin, and clients that send none.
    pub allowed_origins: Vec<String>,
}

/// Certificate files of a `tls` or `wss` listen entry, absolute paths. The files are read
/// when a worker starts and again on every reload, so a renewed certificate is served to new
/// connections without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
    /// PEM CA certificates for mutual TLS: when set, a client (a trunk, a desk phone with a
    /// device certificate) must present a certificate issued by one of them.
    pub client_ca: Option<PathBuf>,
}

/// `[[extension]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// SIP user part and digest user name, unique in the file.
    pub number: String,
    /// Display name, for the directory and caller id.
    pub name: Option<String>,
    /// What digest authentication checks against.
    pub secret: Secret,
    /// A disabled extension is known but can neither register nor call.
    pub enabled: bool,
    /// Challenge order for this extension; `None` follows `registrar.auth_algorithms`.
    pub auth_algorithms: Option<Vec<AuthAlgorithm>>,
}

impl Extension {
    /// The algorithms to challenge this extension with, in order: its own list or the
    /// registrar's, keeping only those its secret can answer (an HA1-only extension cannot
    /// be challenged with an algorithm whose HA1 is not configured). Validation guarantees the
    /// result is not empty.
    pub fn challenge_algorithms(&self, registrar: &Registrar) -> Vec<AuthAlgorithm> {
        self.auth_algorithms
            .as_deref()
            .unwrap_or(&registrar.auth_algorithms)
            .iter()
            .copied()
            .filter(|a| self.secret.supports(*a))
            .collect()
    }
}

/// How an extension's digest secret is stored. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum Secret {
    Password(String),
    /// Precomputed HA1 values (lowercase hex), `MD5(user:realm:password)` / `SHA-256(...)`;
    /// at least one is present.
    Ha1 {
        md5: Option<String>,
        sha256: Option<String>,
    },
}

impl Secret {
    /// Whether this secret can answer a challenge with `algorithm`.
    pub fn supports(&self, algorithm: AuthAlgorithm) -> bool {
        match (self, algorithm) {
            (Secret::Password(_), _) => true,
            (Secret::Ha1 { md5, .. }, AuthAlgorithm::Md5) => md5.is_some(),
            (Secret::Ha1 { sha256, .. }, AuthAlgorithm::Sha256) => sha256.is_some(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::Ha1 { md5, sha256 } => f
                .debug_struct("Ha1")
                .field("md5", &md5.as_ref().map(|_| "<redacted>"))
                .field("sha256", &sha256.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// A digest algorithm (RFC 8760 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthAlgorithm {
    Md5,
    Sha256,
}

impl AuthAlgorithm {
    /// The name used in the file and in `WWW-Authenticate: ... algorithm=`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthAlgorithm::Md5 => "MD5",
            AuthAlgorithm::Sha256 => "SHA-256",
        }
    }
}

impl FromStr for AuthAlgorithm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "MD5" => Ok(AuthAlgorithm::Md5),
            "SHA-256" => Ok(AuthAlgorithm::Sha256),
            _ => Err(()),
        }
    }
}

/// `[database]`. `Debug` hides the password in the URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    /// libpq-style URL, `postgresql://user[:password]@host[:port]/dbname[?...]`.
    pub url: String,
    /// Give up one connection attempt after this long and retry with backoff; the cache keeps
    /// serving meanwhile.
    pub connect_timeout_ms: u64,
    /// Server-side `statement_timeout`, so a hung query frees the dbagent to reconnect rather
    /// than stall the write journal.
    pub statement_timeout_ms: u64,
    /// A file holding the password (one line), read at every connection attempt so a
    /// rotated password applies at the next reconnect; the password then never sits in this
    /// file or crosses the bus.
    pub password_file: Option<PathBuf>,
    /// PEM certificates of the authorities that sign the server's certificate. Set, the
    /// connection is TLS and the server must prove the URL's host name (libpq's
    /// `sslmode=verify-full`); unset, it is plain TCP.
    pub ca_file: Option<PathBuf>,
}

impl Database {
    /// Default for `connect_timeout_ms`.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// Default for `statement_timeout_ms`.
    pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;

    /// The URL with any password replaced by `***`, for logs and status output.
    pub fn redacted_url(&self) -> String {
        match url_parts(&self.url) {
            Some(UrlParts {
                scheme,
                userinfo: Some((user, Some(_))),
                host,
                tail,
            }) => format!("{scheme}://{user}:***@{host}{tail}"),
            _ => self.url.clone(),
        }
    }
}

/// A PostgreSQL URL taken apart: `scheme://[user[:password]@]host/tail`.
pub(crate) struct UrlParts<'a> {
    pub scheme: &'a str,
    /// The user, and the password when one is given.
    pub userinfo: Option<(&'a str, Option<&'a str>)>,
    pub host: &'a str,
    pub tail: &'a str,
}

pub(crate) fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((info, host)) => (
            Some(
                info.split_once(':')
                    .map_or((info, None), |(u, p)| (u, Some(p))),
            ),
            host,
        ),
        None => (None, authority),
    };
    Some(UrlParts {
        scheme,
        userinfo,
        host,
        tail,
    })
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.redacted_url())
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let db = Database {
            url: "postgresql://sip:hunter2@db.example/sip".into(),
            connect_timeout_ms: 1,
            statement_timeout_ms: 1,
            password_file: None,
            ca_file: None,
        };
        let shown = format!("{db:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgresql://sip:***@db.example/sip"),
            "{shown}"
        );
        let secret = Secret::Password("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn challenge_algorithms_skip_what_the_secret_cannot_answer() {
        let registrar = Registrar::default();
        let ext = Extension {
            number: "1".into(),
            name: None,
            secret: Secret::Ha1 {
                md5: Some("0".repeat(32)),
                sha256: None,
            },
            enabled: true,
            auth_algorithms: None,
        };
        assert_eq!(
            ext.challenge_algorithms(&registrar),
            vec![AuthAlgorithm::Md5]
        );
    }
}
