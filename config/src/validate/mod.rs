//! File structs -> one validated [`Config`], collecting every problem on the way.
//!
//! Each check records its problem and goes on with a stand-in value, so one pass reports
//! everything; the caller throws the result away if anything was recorded.

mod extension;
mod sections;
mod transport;

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::file::{DatabaseFile, FileConfig, ListenFile, ServerFile, Workers};
use crate::model::{Config, Database, Listen, LogLevel, Server, Transport};
use crate::problem::Collector;

/// Largest `workers` value.
pub const MAX_WORKERS: usize = 256;

/// Most UDP workers in all: the UDP workers of an address share one socket, and the table
/// that says which of them holds a transaction names a worker in one byte.
pub const MAX_UDP_WORKERS: usize = 255;

/// Longest `runtime_dir`, in bytes: Unix socket paths must fit in 108 bytes (`sun_path`), and
/// socket names inside the directory need room too.
pub const MAX_RUNTIME_DIR_BYTES: usize = 90;

/// Builds the validated config. `base_dir` is the absolute directory of the config file.
pub(crate) fn validate(file: FileConfig, base_dir: &Path, c: &mut Collector<'_>) -> Config {
    let server = server(file.server, base_dir, c);
    let listen = listen(&file.listen, base_dir, c);
    let registrar = sections::registrar(&file.registrar, c);
    let extensions = extension::extensions(&file.extension, &registrar, c);
    let database = file.database.map(|db| database(db, base_dir, c));
    if database.is_some() && !file.extension.is_empty() {
        c.at(
            "extension",
            "[[extension]] entries cannot be combined with [database]: with a database, \
             extensions come from it; move them there or remove [database]",
        );
    }
    Config {
        server,
        listen,
        extensions,
        database,
        registrar,
        security: sections::security(&file.security, c),
        limits: sections::limits(&file.limits, c),
        proxy: sections::proxy(&file.proxy, c),
        supervisor: sections::supervisor(&file.supervisor, c),
        dbagent: sections::dbagent(&file.dbagent, c),
    }
}

/// A required key's value, or a "missing" problem (unless the key was already reported,
/// e.g. dropped for having the wrong type).
fn required<'v>(
    c: &mut Collector<'_>,
    key: &str,
    value: Option<&'v String>,
    what: &str,
) -> Option<&'v str> {
    if value.is_none() && !c.reported(key) {
        c.at(key, format!("missing: {what}"));
    }
    value.map(String::as_str)
}

/// A number within `range`, `default` when absent; out of range is a problem.
fn number(
    c: &mut Collector<'_>,
    key: &str,
    value: Option<u64>,
    default: u64,
    range: RangeInclusive<u64>,
) -> u64 {
    match value {
        None => default,
        Some(v) if range.contains(&v) => v,
        Some(v) => {
            c.at(key, out_of_range(v, &range));
            default
        }
    }
}

/// [`number`] for values kept as `u32` (every range passed fits).
fn number32(
    c: &mut Collector<'_>,
    key: &str,
    value: Option<u64>,
    default: u32,
    range: RangeInclusive<u64>,
) -> u32 {
    let v = number(c, key, value, u64::from(default), range);
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn out_of_range<T: Display>(v: T, range: &RangeInclusive<T>) -> String {
    format!(
        "{v} is out of range (expected {}..={})",
        range.start(),
        range.end()
    )
}

fn server(file: Option<ServerFile>, base_dir: &Path, c: &mut Collector<'_>) -> Server {
    // Without the section, one problem says so instead of one per missing key.
    let present = file.is_some();
    if !present && !c.reported("server") {
        c.push(
            "server".into(),
            None,
            "missing [server] section (domain, runtime_dir, state_dir)",
        );
    }
    let file = file.unwrap_or_default();
    let need = |c: &mut Collector<'_>, key: &str, value: Option<&String>, what: &str| {
        if present {
            required(c, key, value, what).map(str::to_string)
        } else {
            value.cloned()
        }
    };
    let domain = need(
        c,
        "server.domain",
        file.domain.as_ref(),
        "the SIP domain served, also the digest realm",
    );
    let runtime_dir = need(
        c,
        "server.runtime_dir",
        file.runtime_dir.as_ref(),
        "directory for control and IPC sockets",
    );
    let state_dir = need(
        c,
        "server.state_dir",
        file.state_dir.as_ref(),
        "directory for the extension cache and write journal",
    );
    if let Some(domain) = &domain {
        check_domain(c, domain);
    }
    let runtime_dir = runtime_dir.map_or_else(PathBuf::new, |dir| {
        let path = directory(c, "server.runtime_dir", &dir, base_dir);
        let len = path.as_os_str().len();
        if len > MAX_RUNTIME_DIR_BYTES {
            c.at(
                "server.runtime_dir",
                format!(
                    "resolves to {} ({len} bytes): keep it under {MAX_RUNTIME_DIR_BYTES} bytes, \
                     Unix socket paths are limited to 108",
                    path.display()
                ),
            );
        }
        path
    });
    let state_dir = state_dir.map_or_else(PathBuf::new, |dir| {
        directory(c, "server.state_dir", &dir, base_dir)
    });
    let log_level = match file.log_level.as_deref() {
        None => LogLevel::default(),
        Some(s) => s.parse().unwrap_or_else(|()| {
            c.at(
                "server.log_level",
                format!("{s:?} is not a log level (expected error, warn, info, debug or trace)"),
            );
            LogLevel::default()
        }),
    };
    let node_name = match file.node_name {
        Some(name) => {
            if !is_node_name(&name) {
                c.at(
                    "server.node_name",
                    format!("{name:?} is not a node name (1 to 63 letters, digits, '.', '-', '_')"),
                );
            }
            name
        }
        None => host_name(),
    };
    Server {
        domain: domain.unwrap_or_default(),
        runtime_dir,
        state_dir,
        log_level,
        node_name,
    }
}

fn check_domain(c: &mut Collector<'_>, domain: &str) {
    if domain.trim().is_empty() {
        c.at("server.domain", "must not be empty");
        return;
    }
    let is_ip = domain.parse::<std::net::IpAddr>().is_ok();
    let is_name = domain.len() <= 253
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !is_ip && !is_name {
        c.at(
            "server.domain",
            format!("{domain:?} is not a domain name or IP address"),
        );
    }
}

/// Resolves a directory from the file: relative paths are taken from `base_dir`.
fn directory(c: &mut Collector<'_>, key: &str, dir: &str, base_dir: &Path) -> PathBuf {
    if dir.trim().is_empty() {
        c.at(key, "must not be empty");
        return PathBuf::new();
    }
    let path = resolve(base_dir, dir);
    if path.to_str().is_none() {
        c.at(
            key,
            format!(
                "resolves to {}, which is not valid UTF-8; give an absolute path",
                path.display()
            ),
        );
    }
    path
}

/// `dir` as an absolute path: relative to `base_dir`, `.` components dropped.
pub(crate) fn resolve(base_dir: &Path, dir: &str) -> PathBuf {
    base_dir.join(dir).components().collect()
}

fn is_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
}

/// This machine's host name, the default `node_name`.
fn host_name() -> String {
    let from_file = |path: &str| std::fs::read_to_string(path).ok();
    let candidates = [
        from_file("/proc/sys/kernel/hostname"),
        from_file("/etc/hostname"),
        std::env::var("COMPUTERNAME").ok(),
        std::env::var("HOSTNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_string())
        .find(|name| is_node_name(name))
        .unwrap_or_else(|| "sipcraft".to_string())
}

fn listen(entries: &[ListenFile], base_dir: &Path, c: &mut Collector<'_>) -> Vec<Listen> {
    if entries.is_empty() && !c.reported("listen") {
        c.push(
            "listen".into(),
            None,
            "no [[listen]] entry: at least one socket to serve SIP on is needed",
        );
    }
    let mut out: Vec<Listen> = Vec::new();
    let mut valid: Vec<(usize, Transport, SocketAddr)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("listen[{i}]");
        let transport = required(
            c,
            &format!("{key}.transport"),
            entry.transport.as_ref(),
            "udp, tcp, tls, ws or wss",
        )
        .and_then(|t| match t.parse::<Transport>() {
            Ok(t) => Some(t),
            Err(()) => {
                c.at(
                    format!("{key}.transport"),
                    format!("{t:?} is not a transport (expected udp, tcp, tls, ws or wss)"),
                );
                None
            }
        });
        let address = required(
            c,
            &format!("{key}.address"),
            entry.address.as_ref(),
            "IP:port to listen on",
        )
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                c.at(
                    format!("{key}.address"),
                    format!(
                        "{a:?} has port 0: every worker of an entry binds the same, fixed port"
                    ),
                );
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                c.at(
                    format!("{key}.address"),
                    format!("{a:?} is not a socket address (expected IP:port)"),
                );
                None
            }
        });
        let workers = workers(c, &format!("{key}.workers"), entry.workers);
        let tls = transport::tls_files(c, &key, entry, transport, base_dir);
        let allowed_origins = transport::origins(c, &key, entry, transport);
        let (Some(transport), Some(address)) = (transport, address) else {
            continue;
        };
        // TCP, TLS and WebSocket entries are all TCP sockets: they share the port space.
        let datagram = |t: Transport| t == Transport::Udp;
        for &(j, other_transport, other) in &valid {
            if datagram(other_transport) != datagram(transport) || other.port() != address.port() {
                continue;
            }
            let here = &format!("{key}.address");
            let there = format!("listen[{j}]{}", line_note(c, &format!("listen[{j}]")));
            if other.ip() == address.ip() {
                c.at(
                    here,
                    format!(
                        "{transport} {address} is already listened on by {there}{}",
                        also(other_transport, transport)
                    ),
                );
            } else if other.is_ipv4() == address.is_ipv4()
                && (other.ip().is_unspecified() || address.ip().is_unspecified())
            {
                let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
                let any = if address.ip().is_unspecified() {
                    address.ip()
                } else {
                    other.ip()
                };
                c.at(
                    here,
                    format!(
                        "{transport} {address} overlaps {other_transport} {other} of {there}: \
                         {any} covers every {family} address"
                    ),
                );
            }
        }
        valid.push((i, transport, address));
        out.push(Listen {
            transport,
            address,
            workers,
            tls,
            allowed_origins,
        });
    }
    let udp: usize = out
        .iter()
        .filter(|l| l.transport == Transport::Udp)
        .map(|l| l.workers)
        .sum();
    if udp > MAX_UDP_WORKERS {
        c.at(
            "listen",
            format!(
                "{udp} UDP workers in all; at most {MAX_UDP_WORKERS} (set `workers` on the udp \
                 entries, \"auto\" being one per CPU each: one per CPU in all is the most \
                 that helps)"
            ),
        );
    }
    out
}

/// What to add when two entries of different stream transports clash.
fn also(other: Transport, this: Transport) -> String {
    if other == this {
        String::new()
    } else {
        format!(", a {other} entry (tcp, tls, ws and wss entries are all TCP sockets)")
    }
}

/// ` (line N)` when `key` has a line, for pointing at the other half of a duplicate.
fn line_note(c: &Collector<'_>, key: &str) -> String {
    c.line(key)
        .map(|line| format!(" (line {line})"))
        .unwrap_or_default()
}

/// `workers = "auto"` is one per CPU (capped at [`MAX_UDP_WORKERS`], so one UDP entry on
/// auto always fits); absent means auto.
fn workers(c: &mut Collector<'_>, key: &str, workers: Option<Workers>) -> usize {
    match workers {
        None | Some(Workers::Auto) => std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(MAX_UDP_WORKERS),
        Some(Workers::Count(n)) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
            _ => {
                c.at(
                    key,
                    format!("{n} is out of range (expected 1..={MAX_WORKERS} or \"auto\")"),
                );
                1
            }
        },
    }
}

fn database(file: DatabaseFile, base_dir: &Path, c: &mut Collector<'_>) -> Database {
    let url = required(
        c,
        "database.url",
        file.url.as_ref(),
        "postgresql://user@host/dbname",
    )
    .unwrap_or_default()
    .to_string();
    let is_postgres = ["postgresql://", "postgres://"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if file.url.is_some() && !is_postgres {
        // The URL itself is not repeated: it may hold a password.
        c.at(
            "database.url",
            "is not a PostgreSQL URL (expected postgresql://user@host/dbname)",
        );
    }
    let password_file = file
        .password_file
        .as_deref()
        .and_then(|f| password_file(c, f, base_dir));
    if password_file.is_some() && is_postgres && url_has_password(&url) {
        c.at(
            "database.password_file",
            "is set, and so is a password in database.url: keep one of them",
        );
    }
    let ca_file = file.ca_file.as_deref().and_then(|f| {
        let key = "database.ca_file";
        if f.trim().is_empty() {
            c.at(key, "must not be empty");
            return None;
        }
        let path = resolve(base_dir, f);
        transport::check_pem(c, key, &path, transport::Expect::Certificates);
        Some(path)
    });
    match (sslmode(&url), &ca_file) {
        (Some("disable"), Some(_)) => c.at(
            "database.ca_file",
            "is set, so the connection is TLS, but database.url says sslmode=disable",
        ),
        (Some(mode @ ("require" | "verify-ca" | "verify-full")), None) => c.at(
            "database.url",
            format!(
                "says sslmode={mode}: set database.ca_file to the authority that signs the \
                 server's certificate (sipcraft always verifies it)"
            ),
        ),
        _ => {}
    }
    Database {
        url,
        password_file,
        ca_file,
        connect_timeout_ms: number(
            c,
            "database.connect_timeout_ms",
            file.connect_timeout_ms,
            Database::DEFAULT_CONNECT_TIMEOUT_MS,
            100..=600_000,
        ),
        statement_timeout_ms: number(
            c,
            "database.statement_timeout_ms",
            file.statement_timeout_ms,
            Database::DEFAULT_STATEMENT_TIMEOUT_MS,
            100..=600_000,
        ),
    }
}

/// `database.password_file`, resolved against the config directory; it must be readable and
/// hold a password now (the dbagent reads it again at every connection attempt).
fn password_file(c: &mut Collector<'_>, value: &str, base_dir: &Path) -> Option<PathBuf> {
    let key = "database.password_file";
    if value.trim().is_empty() {
        c.at(key, "must not be empty");
        return None;
    }
    let path = resolve(base_dir, value);
    match crate::read_password_file(&path) {
        Ok(_) => {}
        Err(e) => c.at(key, e),
    }
    Some(path)
}

/// The `sslmode` query parameter of a PostgreSQL URL.
fn sslmode(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sslmode="))
}

/// Whether a PostgreSQL URL carries `user:password@`.
fn url_has_password(url: &str) -> bool {
    crate::model::url_parts(url).is_some_and(|u| matches!(u.userinfo, Some((_, Some(_)))))
}

/// Remembers the first entry that used a value, to name both halves of a duplicate.
pub(crate) struct FirstUse(HashMap<String, usize>);

impl FirstUse {
    pub(crate) fn new() -> Self {
        FirstUse(HashMap::new())
    }

    /// Records `value` for entry `index`; returns the earlier entry's index if already used.
    pub(crate) fn insert(&mut self, value: &str, index: usize) -> Option<usize> {
        match self.0.get(value) {
            Some(first) => Some(*first),
            None => {
                self.0.insert(value.to_string(), index);
                None
            }
        }
    }
}
