//! The local cache file (`state_dir/dbagent-cache.bin`): the extensions last published and
//! the bindings held, so a restart during a database outage still knows every extension, and
//! a full restart brings registered phones back without their re-registering.
//!
//! Layout: `SIPCACHE`, a little-endian `u32` version, the [`Cache`] in postcard, and a
//! little-endian CRC-32 of that body. Written atomically: a temporary file, fsync, rename over
//! the old one, fsync of the directory. A file from a newer build is refused (the caller starts
//! without it and says so); a missing file means a fresh state directory. Mode 0600: it holds
//! the extensions' secrets.
//!
//! Version 1 was JSON in `dbagent-cache.json`. It is still read when there is no binary file,
//! so an upgrade keeps its registrations, and removed once the binary file is written. With
//! 100,000 bindings the binary file is 11.7 MB against 30.9 MB of JSON. On a quiet core,
//! writing it (fsync included) takes about 40 ms, less than encoding the JSON alone did
//! (45 ms), and reading it back 36 ms against 85. (In the benchmark, under load and with the
//! 31 MB written out, a JSON write cost about 200 ms of CPU read from /proc.)

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sipcraft_config::Extension;
use sipcraft_ipc::state::{Binding, BindingTable};

use crate::journal::{create_private, sync_dir};

/// `format` of the file.
pub const FORMAT: &str = "sipcraft-dbagent-cache";
/// `version` this build writes and reads.
pub const VERSION: u32 = 2;
/// File name in `state_dir`.
pub const FILE: &str = "dbagent-cache.bin";
/// The JSON file of version 1, read when there is no binary file.
pub const FILE_V1: &str = "dbagent-cache.json";
/// First bytes of the file.
const MAGIC: &[u8; 8] = b"SIPCACHE";

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
    Encode(#[source] postcard::Error),
    #[error("the cache file {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
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
pub struct Cache<B = Vec<Binding>, E = Vec<Extension>> {
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
    pub extensions: E,
    pub bindings: B,
}

/// The cache as written from the dbagent's compact table, with the extensions as last
/// listed (shared: they change rarely, and listing 100,000 of them for every write, as the
/// bindings' churn makes one every few seconds under load, was a tenth of the dbagent's CPU).
pub type CacheOut = Cache<BindingTable, SharedExtensions>;

/// Extensions, sorted by number, shared between the dbagent and the cache writes that list
/// them; written as a `Vec<Extension>` is (serde's `rc` feature).
pub type SharedExtensions = std::sync::Arc<Vec<Extension>>;

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

/// Reads the cache in `dir`; `Ok(None)` when there is none. With both files there (an
/// upgrade, a downgrade that wrote JSON again, an upgrade once more), the one that covers more
/// of the journal is the one to trust.
pub fn load(dir: &Path) -> Result<Option<Cache>, CacheError> {
    let path = dir.join(FILE);
    let binary = match std::fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return load_v1(dir),
        Err(source) => return Err(CacheError::Read { path, source }),
    };
    match load_v1(dir) {
        Ok(Some(json)) if json.state_seq > binary.state_seq => {
            tracing::warn!(
                "{FILE_V1} is newer than {FILE} (an older sipcraft ran since): using {FILE_V1}"
            );
            Ok(Some(json))
        }
        Ok(_) => Ok(Some(binary)),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring {FILE_V1}; using {FILE}");
            Ok(Some(binary))
        }
    }
}

/// The binary file's contents.
fn decode(path: &Path, bytes: &[u8]) -> Result<Cache, CacheError> {
    let damaged = |what: &str| CacheError::Damaged {
        path: path.to_owned(),
        what: what.into(),
    };
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| damaged("not a cache file"))?;
    let (version, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged("cut short"))?;
    let version = u32::from_le_bytes(*version);
    if version != VERSION {
        return Err(CacheError::Version {
            path: path.to_owned(),
            format: FORMAT.into(),
            version,
        });
    }
    let (body, crc) = rest
        .split_last_chunk::<4>()
        .ok_or_else(|| damaged("cut short"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(damaged("checksum mismatch"));
    }
    postcard::from_bytes(body).map_err(|e| damaged(&e.to_string()))
}

/// The JSON file of version 1; `Ok(None)` when there is none.
fn load_v1(dir: &Path) -> Result<Option<Cache>, CacheError> {
    let path = dir.join(FILE_V1);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path, source }),
    };
    let header: Header = serde_json::from_slice(&text).map_err(|source| CacheError::Parse {
        path: path.clone(),
        source,
    })?;
    if header.format != FORMAT || header.version != 1 {
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

/// Passes bytes on and keeps the CRC-32 of what went through, and the write error if one
/// happened: postcard reports any failed write or flush, and a short write too (a disk
/// filling up takes part of a write before it refuses), only as a full buffer, so every
/// write here is whole or an error.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    error: Option<std::io::Error>,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write_all(buf) {
            Ok(()) => {
                self.crc.update(buf);
                Ok(buf.len())
            }
            Err(e) => Err(self.keep(e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

impl<W> Checksummed<W> {
    /// Keeps a copy of `e` for `store`, which gets only postcard's "buffer full".
    fn keep(&mut self, e: std::io::Error) -> std::io::Error {
        self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
        e
    }
}

/// Writes the cache (a [`CacheOut`], or a [`Cache`]) into `dir` atomically (blocking: run it
/// off the async thread), and removes a version 1 file. Encoded straight into the file, never
/// as one body in memory. Returns the file's size.
pub fn store(dir: &Path, cache: &impl Serialize) -> Result<u64, CacheError> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let stored = store_via(dir, &tmp, cache);
    if stored.is_err() {
        // A half-written file would hold on to the room a full disk gets back.
        let _ = std::fs::remove_file(&tmp);
    }
    stored
}

fn store_via(dir: &Path, tmp: &Path, cache: &impl Serialize) -> Result<u64, CacheError> {
    let path = dir.join(FILE);
    let err = |source| CacheError::Write {
        path: path.clone(),
        source,
    };
    let file = create_private(tmp).map_err(err)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    out.write_all(MAGIC).map_err(err)?;
    out.write_all(&VERSION.to_le_bytes()).map_err(err)?;
    let mut body = Checksummed {
        inner: out,
        crc: crc32fast::Hasher::new(),
        error: None,
    };
    if let Err(e) = postcard::to_io(cache, &mut body) {
        return Err(match body.error.take() {
            Some(io) => err(io),
            None => CacheError::Encode(e),
        });
    }
    let Checksummed { mut inner, crc, .. } = body;
    inner
        .write_all(&crc.finalize().to_le_bytes())
        .map_err(err)?;
    let file = inner.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    let bytes = file.metadata().map_err(err)?.len();
    drop(file);
    std::fs::rename(tmp, &path).map_err(err)?;
    sync_dir(dir).map_err(err)?;
    // Only once the new file is durably in place: a crash between the two must not leave
    // neither. (`load` prefers whichever covers more, should the removal not last.)
    match std::fs::remove_file(dir.join(FILE_V1)) {
        Ok(()) => {
            tracing::info!("cache file converted to {FILE}; {FILE_V1} removed");
            let _ = std::fs::remove_file(dir.join(format!("{FILE_V1}.tmp")));
            sync_dir(dir).map_err(err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the old {FILE_V1}"),
    }
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
        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&99u32.to_le_bytes());
        newer.extend_from_slice(b"whatever it holds");
        refused_as_version(dir.path(), FILE, &newer, 99);
    }

    /// `contents` written as `file` in `dir` makes `load` refuse it as `version`.
    fn refused_as_version(dir: &Path, file: &str, contents: &[u8], version: u32) {
        std::fs::write(dir.join(file), contents).unwrap();
        match load(dir) {
            Err(CacheError::Version { version: v, .. }) => assert_eq!(v, version),
            other => panic!("{file}: {other:?}"),
        }
    }

    #[test]
    fn damage_is_found_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = Cache::new();
        cache.node = "a node name long enough to flip a byte in".into();
        store(dir.path(), &cache).unwrap();
        let path = dir.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[20] ^= 0x20;
        std::fs::write(&path, &flipped).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(&path, &good[..10]).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        std::fs::write(&path, b"{\"format\":\"json\"}").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a cache file"), "{e}");
    }

    /// Upgrade, downgrade (JSON written again), upgrade: the file covering more wins.
    #[test]
    fn with_both_files_the_one_covering_more_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let binary = Cache {
            state_seq: 10,
            ..Cache::new()
        };
        store(dir.path(), &binary).unwrap();
        let json = |seq| {
            let v1 = Cache {
                version: 1,
                state_seq: seq,
                ..Cache::new()
            };
            std::fs::write(dir.path().join(FILE_V1), serde_json::to_vec(&v1).unwrap()).unwrap();
        };
        json(20);
        assert_eq!(load(dir.path()).unwrap().unwrap().state_seq, 20);
        json(5);
        assert_eq!(load(dir.path()).unwrap().unwrap().state_seq, 10);
        std::fs::write(dir.path().join(FILE_V1), "not json").unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().state_seq, 10);
    }

    /// An upgrade from the JSON cache keeps what it held; the first write replaces the file.
    #[test]
    fn a_version_1_json_file_is_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::store::tests::binding("1001", "a", 7);
        let v1 = Cache {
            version: 1,
            state_seq: 9,
            node: "n".into(),
            bindings: vec![b.clone()],
            ..Cache::new()
        };
        std::fs::write(dir.path().join(FILE_V1), serde_json::to_vec(&v1).unwrap()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!((loaded.state_seq, loaded.bindings), (9, vec![b]));
        store(dir.path(), &Cache::new()).unwrap();
        assert!(!dir.path().join(FILE_V1).exists());
        assert_eq!(load(dir.path()).unwrap(), Some(Cache::new()));
        // A version 1 file from something newer than version 1 is refused like any other.
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let v7 = br#"{"format":"sipcraft-dbagent-cache","version":7,"whatever":1}"#;
        refused_as_version(dir.path(), FILE_V1, v7, 7);
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
            extensions: SharedExtensions::default(),
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
