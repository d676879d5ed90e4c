//! Which changes a reload (SIGHUP, `sipcraft ctl reload`) can apply to running processes.

use crate::model::{Config, Listen};

/// The keys that differ between `old` and `new` but cannot be applied live; empty means the
/// new config can be applied by a reload without restarting anything.
///
/// Need a restart: `server.domain` (the digest realm: every nonce and HA1 depends on it),
/// `server.node_name` (recorded in registrations), `server.runtime_dir` and
/// `server.state_dir` (sockets and files already open), the transport, address and workers
/// of every `listen[i]` entry (bound sockets and worker processes), and `database` being
/// added or removed or its `url` changing (the dbagent's source of truth), and
/// `dbagent.journal_max_bytes` (the journal is opened with it; its segment size follows).
///
/// Apply live: extensions, `[registrar]`, `[security]`, `[limits]`, `[proxy]`,
/// `[supervisor]`, `server.log_level`, the database timeouts, and the certificate files and
/// allowed origins of listen entries (workers re-read the certificates on every reload).
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let (a, b) = (&old.server, &new.server);
    for (changed, key) in [
        (a.domain != b.domain, "server.domain"),
        (a.node_name != b.node_name, "server.node_name"),
        (a.runtime_dir != b.runtime_dir, "server.runtime_dir"),
        (a.state_dir != b.state_dir, "server.state_dir"),
        (
            old.dbagent.journal_max_bytes != new.dbagent.journal_max_bytes,
            "dbagent.journal_max_bytes",
        ),
    ] {
        if changed {
            keys.push(key.to_string());
        }
    }
    for i in 0..old.listen.len().max(new.listen.len()) {
        let socket = |l: &Listen| (l.transport, l.address, l.workers);
        if old.listen.get(i).map(socket) != new.listen.get(i).map(socket) {
            keys.push(format!("listen[{i}]"));
        }
    }
    match (&old.database, &new.database) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            if a.url != b.url {
                keys.push("database.url".to_string());
            }
            if a.password_file != b.password_file {
                keys.push("database.password_file".to_string());
            }
            if a.ca_file != b.ca_file {
                keys.push("database.ca_file".to_string());
            }
        }
        _ => keys.push("database".to_string()),
    }
    keys
}

/// What a reload runs on: `new`, with every setting [`restart_needed`] lists kept as it is in
/// `running`, so those take effect only at the next restart.
pub fn apply_live(running: &Config, new: Config) -> Config {
    let mut applied = new;
    applied.server.domain = running.server.domain.clone();
    applied.server.node_name = running.server.node_name.clone();
    applied.server.runtime_dir = running.server.runtime_dir.clone();
    applied.server.state_dir = running.server.state_dir.clone();
    applied.dbagent.journal_max_bytes = running.dbagent.journal_max_bytes;
    let mut listen = running.listen.clone();
    for (kept, new) in listen.iter_mut().zip(&applied.listen) {
        if (kept.transport, kept.address) == (new.transport, new.address) {
            kept.tls.clone_from(&new.tls);
            kept.allowed_origins.clone_from(&new.allowed_origins);
        }
    }
    applied.listen = listen;
    match (&running.database, &mut applied.database) {
        (Some(old), Some(db)) => {
            db.url = old.url.clone();
            db.password_file = old.password_file.clone();
            db.ca_file = old.ca_file.clone();
        }
        (old, db) => db.clone_from(old),
    }
    applied
}
