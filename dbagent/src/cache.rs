//! The local cache file (`state_dir/dbagent-cache.json`): the extensions last published and
//! the bindings held, so a restart during a database outage still knows every extension, and
//! a full restart brings registered phones back without their re-registering.
//!
//! JSON with a `format` name and a `version`, written atomically: a temporary file, fsync,
//! rename over the old one, fsync of the directory. A file from a newer build is refused
//! (the caller starts without it and says so); a missing file means a fresh state directory.
//! Mode 0600: it holds the extensions' secrets.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sipcraft_config::Extension;
use sipcraft_ipc::state::{Binding, BindingTable};

use crate::journal::{create_private, sync_dir};

/// `format` of the file.
pub const FORMAT: &str = "sipcraft-dbagent-cache";
/// `version` this build writes and reads.
pub const VERSION: u32 = 1;
/// File name in `state_dir`.
pub const FILE: &str = "dbagent-cache.json";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the cache file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cache file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the cache file {path} is format {format:?} version {version}; this build reads {FORMAT:?} version {VERSION}")]
    Version {
        path: PathBuf,
        format: String,
        version: u32,
    },
    #[error("cannot write the cache file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the cache")]
    Encode(#[source] serde_json::Error),
}

/// Just the header, read first so a newer format is refused before its body is parsed.
#[derive(Debug, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// What the cache file holds. Read back with `Vec<Binding>` (the default); written with the
/// bindings serialized straight from a copy of the compact table (`Cache<BindingTable>`,
/// which serializes as the same sequence), so no owned `Binding` per entry is made while
/// the file is written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cache<B = Vec<Binding>> {
    pub format: String,
    pub version: u32,
    /// Milliseconds since the Unix epoch when written.
    pub written_ms: u64,
    /// Fingerprint of the supervisor instance that was running: tells a restart of the
    /// dbagent alone (the supervisor's state is newer) from a full restart.
    pub instance: String,
    /// Node name the bindings belong to.
    pub node: String,
    /// The bindings below include every journal entry up to this sequence number.
    pub state_seq: u64,
    /// Journal entries up to this number are known to be in PostgreSQL (0: none yet).
    pub db_applied_seq: u64,
    /// Binding changes were refused by a full journal: the registrations of this node must
    /// be rewritten from the bindings in full when the database is next reached.
    pub reconcile: bool,
    pub extensions: Vec<Extension>,
    pub bindings: B,
}

/// The cache as written from the dbagent's compact table.
pub type CacheOut = Cache<BindingTable>;

impl Cache {
    /// An empty cache of this build's format.
    pub fn new() -> Cache {
        Cache {
            format: FORMAT.into(),
            version: VERSION,
            ..Cache::default()
        }
    }
}

/// Reads the cache in `dir`; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Cache>, CacheError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path, source }),
    };
    let header: Header = serde_json::from_slice(&text).map_err(|source| CacheError::Parse {
        path: path.clone(),
        source,
    })?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(CacheError::Version {
            path,
            format: header.format,
            version: header.version,
        });
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| CacheError::Parse { path, source })
}

/// Writes the cache (a [`CacheOut`], or a [`Cache`]) into `dir` atomically (blocking: run it
/// off the async thread). Encoded straight into the file, never as one body in memory.
/// Returns the file's size.
pub fn store(dir: &Path, cache: &impl Serialize) -> Result<u64, CacheError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let err = |source| CacheError::Write {
        path: path.clone(),
        source,
    };
    let file = create_private(&tmp).map_err(err)?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut out, cache).map_err(|e| {
        if e.is_io() {
            err(e.into())
        } else {
            CacheError::Encode(e)
        }
    })?;
    out.flush().map_err(err)?;
    let file = out.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    let bytes = file.metadata().map_err(err)?.len();
    drop(file);
    std::fs::rename(&tmp, &path).map_err(err)?;
    sync_dir(dir).map_err(err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipcraft_config::Secret;

    #[test]
    fn round_trip_and_newer_version_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut cache = Cache::new();
        cache.state_seq = 42;
        cache.extensions.push(Extension {
            number: "1001".into(),
            name: Some("Desk".into()),
            secret: Secret::Ha1 {
                md5: Some("0".repeat(32)),
                sha256: None,
            },
            enabled: true,
            auth_algorithms: None,
        });
        store(dir.path(), &cache).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(cache));
        std::fs::write(
            dir.path().join(FILE),
            r#"{"format":"sipcraft-dbagent-cache","version":99,"whatever":1}"#,
        )
        .unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(CacheError::Version { version: 99, .. })
        ));
    }

    #[test]
    fn what_is_written_from_the_table_reads_back_as_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::store::tests::binding("1001", "a", 7);
        let mut bindings = BindingTable::new();
        bindings.upsert(&b);
        let out = CacheOut {
            format: FORMAT.into(),
            version: VERSION,
            written_ms: 1,
            instance: "i".into(),
            node: "n".into(),
            state_seq: 2,
            db_applied_seq: 3,
            reconcile: true,
            extensions: Vec::new(),
            bindings,
        };
        store(dir.path(), &out).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(
            back,
            Cache {
                written_ms: 1,
                instance: "i".into(),
                node: "n".into(),
                state_seq: 2,
                db_applied_seq: 3,
                reconcile: true,
                bindings: vec![b],
                ..Cache::new()
            }
        );
    }
}
