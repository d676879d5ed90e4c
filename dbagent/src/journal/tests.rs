//! The journal's own tests: appends, reopening, trimming, limits, torn tails and failed
//! writes (through the `fail_writes` hook).

use super::*;
use std::io::Write;

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        op: Op::BindingRemoved {
            aor: "1001".into(),
            key: format!("k{seq}"),
        },
    }
}

#[test]
fn appends_survive_reopen_and_trim_drops_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, found) = Journal::open(dir.path(), 64 << 10).unwrap();
    assert!(found.is_empty());
    for seq in 1..=2000 {
        assert_eq!(j.append(&entry(seq)).unwrap(), Append::Written);
    }
    j.take_sync().unwrap().unwrap().run().unwrap();
    let before = j.bytes();
    // Growth counts the records, not the segment headers.
    assert!(j.appended() < before && j.appended() > before / 2);
    drop(j);
    let (mut j, found) = Journal::open(dir.path(), 64 << 10).unwrap();
    assert_eq!(found.len(), 2000);
    assert_eq!(found[1999], entry(2000));
    assert_eq!(j.bytes(), before);
    assert!(j.trim(1000) >= 1);
    assert!(j.bytes() < before);
    assert_eq!(
        j.appended(),
        0,
        "what was there at open, or trimmed, is not growth"
    );
    let (_, found) = Journal::open(dir.path(), 64 << 10).unwrap();
    assert!(found.first().unwrap().seq <= 1001);
    assert_eq!(found.last().unwrap().seq, 2000);
}

/// Appends are written to the file in batches: at the sync, or when the buffer fills.
#[test]
fn appends_reach_the_file_at_the_sync_or_when_the_buffer_fills() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 64 << 20).unwrap();
    let on_disk = |dir: &Path| -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|f| f.metadata().unwrap().len())
            .sum()
    };
    for seq in 1..=3 {
        j.append(&entry(seq)).unwrap();
    }
    assert_eq!(on_disk(dir.path()), 0, "buffered, header and all");
    j.take_sync().unwrap().unwrap().run().unwrap();
    assert_eq!(on_disk(dir.path()), j.bytes(), "written at the sync");
    let mut seq = 3;
    while on_disk(dir.path()) == j.bytes() {
        seq += 1;
        j.append(&entry(seq)).unwrap();
    }
    assert!(
        on_disk(dir.path()) + PENDING_MAX as u64 >= j.bytes(),
        "a full buffer is written without waiting for the sync"
    );
    let (_, found) = Journal::open(dir.path(), 64 << 20).unwrap();
    assert!(found.len() as u64 >= seq - 1 && found.len() as u64 <= seq);
}

#[test]
fn refuses_past_the_limit_and_recovers_after_trim() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 16 << 10).unwrap();
    let mut seq = 0;
    while j.append(&entry(seq + 1)).unwrap() == Append::Written {
        seq += 1;
    }
    assert!(j.bytes() <= 16 << 10);
    assert!(seq > 100);
    j.trim(seq);
    assert_eq!(j.append(&entry(seq + 1)).unwrap(), Append::Written);
}

#[test]
fn a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 1 << 20).unwrap();
    for seq in 1..=3 {
        j.append(&entry(seq)).unwrap();
    }
    drop(j);
    let seg = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap();
    let mut f = OpenOptions::new().append(true).open(seg.path()).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let (mut j, found) = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(found.len(), 3);
    j.append(&entry(4)).unwrap();
    drop(j);
    let (_, found) = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(found.len(), 4);
}

/// What a restart would find in `dir` now. Its repair of a torn tail (a half write) cuts
/// nothing the live journal needs: that one writes its buffer over the same place.
fn seqs(dir: &Path) -> Vec<u64> {
    let (_, found) = Journal::open(dir, 64 << 20).unwrap();
    found.iter().map(|e| e.seq).collect()
}

/// A write that fails halfway (a full disk) is not reported as synced, keeps its buffer,
/// and the next one writes it over the half: every entry once, in order.
#[test]
fn a_failed_write_is_retried_whole_and_nothing_counts_as_synced_before() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 64 << 20).unwrap();
    for seq in 1..=50 {
        j.append(&entry(seq)).unwrap();
    }
    j.take_sync().unwrap().unwrap().run().unwrap();
    j.fail_writes = 1;
    for seq in 51..=100 {
        j.append(&entry(seq)).unwrap();
    }
    assert!(j.take_sync().is_err(), "a failed write is not a sync");
    let half = seqs(dir.path()).len();
    assert!(
        half > 50 && half < 100,
        "half of it reached the file: {half}"
    );
    for seq in 101..=150 {
        assert_eq!(j.append(&entry(seq)).unwrap(), Append::Written);
    }
    j.take_sync()
        .unwrap()
        .expect("something to fsync")
        .run()
        .unwrap();
    assert_eq!(seqs(dir.path()), (1..=150).collect::<Vec<_>>());
}

/// A segment whose file cannot be created yet (the first write of a journal, or a
/// rotation) is created by the next write; while writes fail, the segment grows past its
/// size rather than rotate away from its buffer, and appends do not retry the write.
#[test]
fn failed_creations_and_rotations_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 8 KiB.
    let (mut j, _) = Journal::open(dir.path(), 64 << 10).unwrap();
    j.fail_writes = 1;
    j.append(&entry(1)).unwrap();
    assert!(j.take_sync().is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "not created");
    j.take_sync().unwrap().unwrap().run().unwrap();
    assert_eq!(seqs(dir.path()), vec![1]);

    // Past a segment's size while writes fail: one attempt per sync, no rotation.
    j.fail_writes = 2;
    for seq in 2..=400 {
        assert_eq!(j.append(&entry(seq)).unwrap(), Append::Written);
    }
    assert_eq!(
        j.fail_writes, 2,
        "appends leave the failed write to the sync"
    );
    assert!(j.take_sync().is_err());
    assert!(j.take_sync().is_err());
    j.take_sync().unwrap().unwrap().run().unwrap();
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "grown, not rotated"
    );

    // The rotation that follows, with its new file failing once.
    j.fail_writes = 1;
    for seq in 401..=420 {
        j.append(&entry(seq)).unwrap();
    }
    assert!(j.take_sync().is_err());
    j.take_sync().unwrap().unwrap().run().unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(seqs(dir.path()), (1..=420).collect::<Vec<_>>());
}

/// Trimming the segment being written (the database took everything) while its write fails
/// forgets its buffer; what comes after goes to a new segment. A dropped journal writes
/// what it buffered.
#[test]
fn trimming_a_failing_segment_and_dropping_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 64 << 20).unwrap();
    for seq in 1..=10 {
        j.append(&entry(seq)).unwrap();
    }
    j.take_sync().unwrap().unwrap().run().unwrap();
    j.fail_writes = 1;
    for seq in 11..=20 {
        j.append(&entry(seq)).unwrap();
    }
    assert!(j.take_sync().is_err());
    assert_eq!(j.trim(20), 1);
    assert_eq!(j.bytes(), 0);
    for seq in 21..=30 {
        j.append(&entry(seq)).unwrap();
    }
    drop(j);
    assert_eq!(seqs(dir.path()), (21..=30).collect::<Vec<_>>());
}
