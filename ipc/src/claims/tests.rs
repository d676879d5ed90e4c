//! The claim table's words, counters and rate buckets, over real memfd mappings.

use super::*;

fn table(slots: usize) -> (Claims, Claims) {
    let fd = create(slots, 64, 64).expect("memfd");
    (
        Claims::open(&fd).expect("map"),
        Claims::open(&fd).expect("map"),
    )
}

#[test]
fn a_claim_made_in_one_mapping_is_seen_in_another() {
    let (a, b) = table(1024);
    let key = a.key(&["192.0.2.1:5060", "z9hg4bk1"]);
    assert_eq!(b.key(&["192.0.2.1:5060", "z9hg4bk1"]), key);
    assert_eq!(a.claim(key, 0, 40), Claim::Mine);
    assert_eq!(a.claim(key, 0, 40), Claim::Mine);
    assert_eq!(b.claim(key, 1, 40), Claim::Held(0));
    assert_eq!(b.holder(key), Some(0));
    b.release(key, 1);
    assert_eq!(b.holder(key), Some(0), "only the owner releases");
    a.release(key, 0);
    assert_eq!(b.holder(key), None);
    assert_eq!(b.claim(key, 1, 40), Claim::Mine);
    assert_eq!(a.holder(key), Some(1));
}

#[test]
fn keys_differ_by_branch_and_sent_by_and_not_by_how_parts_are_cut() {
    let (a, _) = table(64);
    let k = a.key(&["192.0.2.1:5060", "z9hg4bk1"]);
    assert_ne!(k, a.key(&["192.0.2.1:5060", "z9hg4bk2"]));
    assert_ne!(k, a.key(&["192.0.2.2:5060", "z9hg4bk1"]));
    assert_ne!(k, a.key(&["192.0.2.1:5060z9hg4bk1"]));
}

#[test]
fn claims_expire_and_their_words_are_reused() {
    let (a, _) = table(64);
    let key = a.key(&["h", "z9hg4bk1"]);
    assert_eq!(a.claim_at(key, 3, 10, 100), Claim::Mine);
    assert_eq!(a.claim_at(key, 4, 10, 109), Claim::Held(3));
    assert_eq!(a.claim_at(key, 4, 10, 110), Claim::Mine, "expired at 110");
    assert_eq!(a.claim_at(key, 4, 10, 115), Claim::Mine, "renewed to 125");
    assert_eq!(a.claim_at(key, 3, 10, 124), Claim::Held(4));
    // Across the clock's wrap too.
    let near = CLOCK_MASK - 2;
    let other = a.key(&["h", "z9hg4bk2"]);
    assert_eq!(a.claim_at(other, 1, 10, near), Claim::Mine);
    assert_eq!(a.claim_at(other, 2, 10, 5), Claim::Held(1));
    assert_eq!(a.claim_at(other, 2, 10, 8), Claim::Mine);
}

#[test]
fn a_full_bucket_leaves_new_keys_untracked() {
    let (a, _) = table(8);
    let keys: Vec<Key> = (0..BUCKET + 1)
        .map(|i| a.key(&["h", &format!("z9hg4bk{i}")]))
        .collect();
    for &k in &keys[..BUCKET] {
        assert_eq!(a.claim_at(k, 0, 10, 1), Claim::Mine);
    }
    assert_eq!(a.claim_at(keys[BUCKET], 1, 10, 1), Claim::Untracked);
    a.release(keys[0], 0);
    assert_eq!(a.claim_at(keys[BUCKET], 1, 10, 1), Claim::Mine);
}

#[test]
fn of_workers_racing_for_one_key_exactly_one_wins() {
    let fd = create(1 << 10, 64, 64).expect("memfd");
    for round in 0..200 {
        let results: Vec<Claim> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u8)
                .map(|me| {
                    let claims = Claims::open(&fd).expect("map");
                    s.spawn(move || {
                        let key = claims.key(&["h", &format!("z9hg4bk{round}")]);
                        claims.claim(key, me, 40)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let winners = results.iter().filter(|c| **c == Claim::Mine).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        let owner = (0..4u8).find(|&me| results[me as usize] == Claim::Mine);
        for (me, c) in results.iter().enumerate() {
            if Some(me as u8) != owner {
                assert_eq!(*c, Claim::Held(owner.unwrap_or(255)));
            }
        }
    }
}

#[test]
fn counters_add_up_across_mappings_within_their_window() {
    let (a, b) = table(64);
    let ip = a.key(&["auth", "192.0.2.7"]);
    let other = a.key(&["auth", "192.0.2.8"]);
    assert_eq!(a.count_at(ip, 60, 1000), Some(1));
    assert_eq!(b.count_at(ip, 60, 1010), Some(2));
    assert_eq!(b.count_at(other, 60, 1010), Some(1));
    assert_eq!(a.count_at(ip, 60, 1059), Some(3));
    assert_eq!(a.count_at(ip, 60, 1060), Some(1), "a new window");
    b.forget(ip);
    assert_eq!(a.count_at(ip, 60, 1061), Some(1));
    assert_eq!(
        a.count_at(other, 60, 1061),
        Some(2),
        "the other key is kept"
    );
    // The claims beside them are untouched.
    let call = a.key(&["h", "z9hg4bk1"]);
    assert_eq!(a.claim(call, 2, 40), Claim::Mine);
    assert_eq!(b.count(call, 60), Some(1));
    assert_eq!(b.holder(call), Some(2));
}

#[test]
fn counting_from_many_threads_loses_no_event() {
    let fd = create(64, 64, 64).expect("memfd");
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = Claims::open(&fd).expect("map");
                s.spawn(move || {
                    let key = c.key(&["auth", "192.0.2.9"]);
                    (0..500).filter(|_| c.count(key, 3600).is_some()).count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    let c = Claims::open(&fd).expect("map");
    let last = c.count(c.key(&["auth", "192.0.2.9"]), 3600);
    assert_eq!(last, Some(total as u32 + 1));
}

#[test]
fn a_rate_bucket_is_shared_and_refills() {
    let (a, b) = table(64);
    let ip = a.key(&["rate", "192.0.2.7"]);
    // 10 a second (100 ms each), a burst of 3 (tolerance 200 ms).
    let spend = |c: &Claims, at: u64| c.spend_at(ip, 100_000, 200_000, at);
    assert_eq!(spend(&a, 1_000_000), Some(true));
    assert_eq!(spend(&b, 1_000_000), Some(true));
    assert_eq!(spend(&a, 1_000_000), Some(true));
    assert_eq!(
        spend(&b, 1_000_000),
        Some(false),
        "a fourth at once is over"
    );
    assert_eq!(spend(&b, 1_100_000), Some(true), "100 ms later one more");
    assert_eq!(spend(&a, 1_100_000), Some(false));
    // Long idle: the bucket is full again.
    assert_eq!(spend(&a, 60_000_000), Some(true));
    // Idle for a whole turn of the 40-bit clock, where the old word would seem a minute
    // ahead: too far ahead to be a bucket (even with the margin), so it is taken as full.
    let turned = (1u64 << 40) + 200_000;
    assert_eq!(spend(&a, turned), Some(true));
    assert_eq!(spend(&a, turned), Some(true));
    let other = a.key(&["rate", "192.0.2.8"]);
    assert_eq!(a.spend_at(other, 100_000, 0, 5_000_000), Some(true));
    assert_eq!(a.spend_at(other, 100_000, 0, 5_000_000), Some(false));
}

#[test]
fn a_file_that_is_not_a_table_is_refused() {
    let file = tempfile::tempfile().expect("temp file");
    file.set_len(4096).expect("size");
    assert!(Claims::open(&OwnedFd::from(file)).is_err());
}

#[test]
fn the_tally_sums_what_every_mapping_adds() {
    let (a, b) = table(64);
    assert_eq!(a.tally(0), 0);
    assert_eq!(a.tally(120), 120);
    assert_eq!(b.tally(30), 150);
    assert_eq!(a.tally(0), 150);
    // The tally is a header word: it disturbs no claim.
    let key = a.key(&["192.0.2.1:5060", "z9hg4bk1"]);
    assert_eq!(a.claim(key, 0, 40), Claim::Mine);
    assert_eq!(b.tally(1), 151);
    assert_eq!(b.holder(key), Some(0));
}

#[test]
fn the_table_cannot_be_resized() {
    let fd = create(64, 64, 64).expect("memfd");
    let file = File::from(fd.try_clone().expect("dup"));
    let size = file.metadata().expect("stat").len();
    assert!(file.set_len(size / 2).is_err(), "shrunk");
    assert!(file.set_len(size * 2).is_err(), "grown");
    assert_eq!(file.metadata().expect("stat").len(), size);
    assert!(Claims::open(&fd).is_ok());
}
