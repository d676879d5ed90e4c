//! The write journal: every registration change and call record, numbered, appended to
//! segment files in `state_dir` before it goes anywhere else.
//!
//! A segment (`journal-<first seq>.log`) is an 8-byte header (`SIPJRNL` and a format
//! version) followed by records: `u32` little-endian body length, `u32` CRC-32 of the body,
//! and the body (postcard, [`Entry`]). Appends go to the newest segment through a buffer
//! that is written out when it fills and by [`Journal::take_sync`], the batched fsync the
//! caller runs off the async thread every 50 ms: one `write` per batch rather than one per
//! entry (a fifth of the dbagent's CPU at 15,000 REGISTER/s went to those calls). What a
//! killed dbagent had buffered is still in the supervisor's replica, which a restarted
//! dbagent compares its own with; call records are acknowledged only after the fsync that
//! covers them. Killing every process at once loses at most the last batch, as a power cut
//! loses at most the last unsynced one, as long as writes succeed. A write that fails (a full
//! disk) keeps the buffer for the next attempt, which writes it at the same place; what it
//! holds then is only in memory (and, for call records, in the supervisor's queue). A
//! failed fsync ends the dbagent (see `Agent::on_synced`). A segment is deleted
//! whole once every entry in it is both in the cache file and in PostgreSQL (without a
//! database: in the cache file), so nothing is ever rewritten in place.
//!
//! The journal is bounded: an append that would pass `max_bytes` is refused
//! ([`Append::Full`]) and the caller applies the documented policy (`docs/schema.md`).
//! Reading at start stops at the first record that is torn or fails its checksum (a crash
//! in the middle of a write); the rest of that segment is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sipcraft_ipc::state::Binding;
use sipcraft_ipc::wire::CallRecord;

/// Segment header: magic and format version 1.
const HEADER: &[u8; 8] = b"SIPJRNL\x01";
/// Largest body a record may have; anything bigger is corruption.
const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read the journal directory {path}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read journal segment {path}")]
    ReadSegment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot repair journal segment {path}")]
    Repair {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create journal segment {path}")]
    CreateSegment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot append to journal segment {path}")]
    Append {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a journal entry")]
    Encode(#[source] postcard::Error),
}

/// One journaled write. Append variants only: postcard encodes by position, and segments
/// written by an older build are read by a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    BindingUpserted(Binding),
    BindingRemoved { aor: String, key: String },
    CallRecord(CallRecord),
}

/// An operation with its sequence number (unique and increasing for this node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub op: Op,
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    Written,
    /// The journal is at its size limit; nothing was written.
    Full,
}

#[derive(Debug)]
struct Segment {
    /// The number in its name: its first seq, or one past the segment before (names only
    /// have to sort in order, and must never repeat).
    name_seq: u64,
    path: PathBuf,
    last_seq: u64,
    bytes: u64,
}

/// Files to fsync, taken from the journal and synced on a blocking thread.
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// Runs the fsyncs (blocking).
    pub fn run(self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(dir) = self.dir {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// The journal of one state directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is appended to while `appending`.
    segments: Vec<Segment>,
    /// The last segment takes appends. Its file is created with its first write, so a
    /// failed creation is retried like a failed write.
    appending: bool,
    /// The last segment's file, once created. Shared with the sync job (no `dup` that
    /// could fail when the process is out of descriptors).
    current: Option<Arc<File>>,
    total: u64,
    /// Bytes appended since the journal was opened (trimming does not lower it).
    appended: u64,
    /// Finished segments written since their last fsync.
    unsynced: Vec<Arc<File>>,
    /// The open segment was written since its last fsync.
    current_dirty: bool,
    dir_changed: bool,
    /// The end of the last segment not yet written to it: records (and, for a new segment,
    /// its header). Always the tail of that segment: a segment is finished only once its
    /// buffer is written.
    pending: Vec<u8>,
    /// The last write failed: appends leave the buffer to the next sync, rather than retry
    /// a write of up to `max_bytes` on every append while the disk is full.
    write_failed: bool,
    /// Test hook: how many writes or creations fail next (a write after writing half).
    #[cfg(test)]
    fail_writes: u32,
}

/// Buffered records are written out once they pass this many bytes.
const PENDING_MAX: usize = 256 << 10;

impl Journal {
    /// Opens the journal in `dir`, returning it and every entry it holds, oldest first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Journal, Vec<Entry>), JournalError> {
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let list = fs::read_dir(dir).map_err(|source| JournalError::ListDir {
            path: dir.to_owned(),
            source,
        })?;
        for item in list.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(first) = name
                .strip_prefix("journal-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push((first, item.path()));
            }
        }
        names.sort();
        let mut entries = Vec::new();
        let mut segments = Vec::new();
        let mut total = 0;
        for (name_seq, path) in names {
            let (mut found, bytes) = read_segment(&path)?;
            let last_seq = found.last().map_or(0, |e: &Entry| e.seq);
            total += bytes;
            entries.append(&mut found);
            segments.push(Segment {
                name_seq,
                path,
                last_seq,
                bytes,
            });
        }
        let journal = Journal {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4 << 10, 4 << 20),
            segments,
            appending: false,
            current: None,
            total,
            appended: 0,
            unsynced: Vec::new(),
            current_dirty: false,
            dir_changed: false,
            pending: Vec::new(),
            write_failed: false,
            #[cfg(test)]
            fail_writes: 0,
        };
        Ok((journal, entries))
    }

    /// Appends one entry unless that would pass the size limit. It is buffered, and
    /// written by [`Journal::take_sync`] at the latest: a write that fails (a full disk)
    /// keeps it buffered for the next attempt, so an append fails only on the size limit
    /// (`Full`), which also bounds the buffer, or if the entry cannot be encoded.
    pub fn append(&mut self, entry: &Entry) -> Result<Append, JournalError> {
        let body = postcard::to_allocvec(entry).map_err(JournalError::Encode)?;
        let len = 8 + body.len() as u64;
        if self.total + len > self.max_bytes {
            return Ok(Append::Full);
        }
        let rotate = match self.segments.last() {
            Some(seg) if self.appending => {
                // A segment is finished only once its buffer is written; until a write
                // works, it grows past its size instead.
                seg.bytes + len > self.segment_bytes
                    && !self.write_failed
                    && self.write_pending().is_ok()
            }
            _ => true,
        };
        if rotate {
            if self.total + len + HEADER.len() as u64 > self.max_bytes {
                return Ok(Append::Full);
            }
            self.start_segment(entry.seq);
        }
        if self.pending.len() + len as usize > PENDING_MAX && !self.write_failed {
            // A failure leaves the buffer as it is; the sync reports it.
            if let Err(e) = self.write_pending() {
                tracing::debug!(error = %e, "journal write failed; kept buffered");
            }
        }
        self.pending
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.pending
            .extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        self.pending.extend_from_slice(&body);
        let seg = self.segments.last_mut().expect("a segment is open");
        seg.bytes += len;
        seg.last_seq = entry.seq;
        self.total += len;
        self.appended += len;
        self.current_dirty = true;
        Ok(Append::Written)
    }

    /// Finishes the last segment (its buffer is written) and starts a new one, created with
    /// its first write.
    fn start_segment(&mut self, first_seq: u64) {
        if let Some(old) = self.current.take() {
            if std::mem::take(&mut self.current_dirty) {
                // The finished segment still needs its fsync.
                self.unsynced.push(old);
            }
        }
        self.pending.extend_from_slice(HEADER);
        self.total += HEADER.len() as u64;
        let name_seq = match self.segments.last() {
            // A clock stepped back can give a first seq at or below an older name.
            Some(seg) => first_seq.max(seg.name_seq + 1),
            None => first_seq,
        };
        self.segments.push(Segment {
            name_seq,
            path: self.dir.join(format!("journal-{name_seq:020}.log")),
            last_seq: first_seq,
            bytes: HEADER.len() as u64,
        });
        self.appending = true;
    }

    /// Writes the buffer to the end of the last segment, creating its file first if need
    /// be. The write is positioned (where the buffer starts in the segment), so one that
    /// fails halfway leaves bytes the next attempt writes over: the buffer is kept and
    /// nothing counts as written (no call record is acknowledged) until a write succeeds.
    fn write_pending(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write_failed = true;
        if self.current.is_none() {
            let fail = self.injected_failure();
            let path = &self
                .segments
                .last()
                .expect("buffers belong to a segment")
                .path;
            let created = if fail {
                Err(std::io::Error::other("injected failure"))
            } else {
                create_private(path)
            };
            let file = created.map_err(|source| JournalError::CreateSegment {
                path: path.clone(),
                source,
            })?;
            self.current = Some(Arc::new(file));
            self.dir_changed = true;
        }
        let half = self.injected_failure();
        let seg = self.segments.last().expect("buffers belong to a segment");
        let file = self.current.as_ref().expect("created above");
        let at = seg.bytes - self.pending.len() as u64;
        let written = if half {
            write_at(file, &self.pending[..self.pending.len() / 2], at)
                .and_then(|()| Err(std::io::Error::other("injected failure after half")))
        } else {
            write_at(file, &self.pending, at)
        };
        written.map_err(|source| JournalError::Append {
            path: seg.path.clone(),
            source,
        })?;
        self.pending.clear();
        self.write_failed = false;
        if self.pending.capacity() > 2 * PENDING_MAX {
            self.pending.shrink_to(PENDING_MAX);
        }
        Ok(())
    }

    /// Test hook: whether the next creation fails, or the next write fails after writing
    /// half its bytes.
    #[cfg(test)]
    fn injected_failure(&mut self) -> bool {
        let fail = self.fail_writes > 0;
        self.fail_writes = self.fail_writes.saturating_sub(1);
        fail
    }

    #[cfg(not(test))]
    fn injected_failure(&mut self) -> bool {
        false
    }

    /// Deletes every segment whose entries all have `seq <= upto`; returns how many.
    pub fn trim(&mut self, upto: u64) -> usize {
        let mut removed = 0;
        while let Some(seg) = self.segments.first() {
            if seg.last_seq > upto {
                break;
            }
            if self.segments.len() == 1 && self.appending {
                self.appending = false;
                self.current = None;
                self.current_dirty = false;
                self.pending.clear();
                self.write_failed = false;
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                // A segment whose first write has not happened yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %seg.path.display(), error = %e, "cannot delete a journal segment")
                }
            }
            self.total -= seg.bytes;
            self.segments.remove(0);
            self.dir_changed = true;
            removed += 1;
        }
        removed
    }

    /// Writes out what is buffered and returns what must be fsynced now, if anything; the
    /// journal counts it as synced. An error means nothing new is on disk (the buffer is
    /// kept for the next call).
    pub fn take_sync(&mut self) -> Result<Option<SyncJob>, JournalError> {
        self.write_pending()?;
        if self.unsynced.is_empty() && !self.current_dirty && !self.dir_changed {
            return Ok(None);
        }
        let mut files = std::mem::take(&mut self.unsynced);
        if std::mem::take(&mut self.current_dirty) {
            if let Some(f) = &self.current {
                files.push(Arc::clone(f));
            }
        }
        let dir = std::mem::take(&mut self.dir_changed).then(|| self.dir.clone());
        Ok(Some(SyncJob { files, dir }))
    }

    /// Forgets what is buffered and writes nothing more, not even at drop: after a failed
    /// fsync nothing the journal holds can be trusted, and a successor must not read
    /// unsynced records as if they were on disk (see `Agent::on_synced`).
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.appending = false;
        self.current = None;
    }

    /// Bytes on disk, or buffered for it.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Bytes appended since the journal was opened: how much it has grown, whatever was
    /// trimmed meanwhile.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

impl Drop for Journal {
    /// A journal dropped (the dbagent stopping, a test) writes out what it buffered; only a
    /// killed process leaves it unwritten.
    fn drop(&mut self) {
        if let Err(e) = self.write_pending() {
            tracing::error!(error = %e, "journal write at close failed");
        }
    }
}

/// Reads one segment; cuts off a torn or corrupt tail. Returns its entries and its size.
fn read_segment(path: &Path) -> Result<(Vec<Entry>, u64), JournalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| JournalError::ReadSegment {
            path: path.to_owned(),
            source,
        })?;
    let mut entries = Vec::new();
    if data.len() < HEADER.len() || &data[..HEADER.len()] != HEADER {
        tracing::error!(path = %path.display(), "journal segment has no valid header; ignoring it");
        return Ok((entries, data.len() as u64));
    }
    let mut at = HEADER.len();
    let good_end = loop {
        if at == data.len() {
            break at;
        }
        let Some(head) = data.get(at..at + 8) else {
            break at;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break at;
        }
        let Some(body) = data.get(at + 8..at + 8 + len) else {
            break at;
        };
        if crc32fast::hash(body) != crc {
            break at;
        }
        match postcard::from_bytes::<Entry>(body) {
            Ok(e) => entries.push(e),
            Err(_) => break at,
        }
        at += 8 + len;
    };
    if good_end < data.len() {
        tracing::warn!(
            path = %path.display(),
            cut = data.len() - good_end,
            kept = entries.len(),
            "journal segment ends in a torn or corrupt record (a crash mid-write); cutting it off"
        );
        let repair = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(good_end as u64).and_then(|()| f.sync_all()));
        repair.map_err(|source| JournalError::Repair {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok((entries, good_end as u64))
}

/// Creates a new file readable by this user only (it holds registrations, or secrets).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes all of `buf` at `offset`, wherever the file's cursor is.
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_write(&buf[done..], offset + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// fsyncs a directory, so a file created, renamed or deleted in it stays so after a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
