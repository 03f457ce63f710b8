//! Retention: expired records are invisible at once and removed by TTL compaction.

mod common;

use std::time::Duration;

use common::{claim, clock, completed, key, options, sim_store};
use idemstore::storage::SimDisk;
use idemstore::{Begin, Durability, RecordState};

#[test]
fn a_completed_record_expires_retention_after_completion() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(5));
    store.complete(&c, b"done").unwrap();
    clock.advance(Duration::from_secs(99));
    assert!(matches!(
        store.begin(&key(1), b"req").unwrap(),
        Begin::Completed(_)
    ));
    clock.advance(Duration::from_secs(1));
    // Invisible at once, before any compaction: absent means claimable with attempt 1.
    assert_eq!(store.get(&key(1)).unwrap(), None);
    assert_eq!(store.stats().unwrap().records, 1);
    let again = claim(&store, &key(1), b"another request");
    assert_eq!(again.attempt(), 1);
}

#[test]
fn purge_removes_exactly_what_expired() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    for n in 0..30 {
        let c = claim(&store, &key(n), b"req");
        store.complete(&c, b"x").unwrap();
        clock.advance(Duration::from_secs(1));
    }
    // Key n completed at t0 + n and expires at t0 + n + 100; now is t0 + 30.
    clock.advance(Duration::from_secs(80)); // now t0 + 110: keys 0..=10 expired
    assert_eq!(store.purge_expired().unwrap(), 11);
    assert_eq!(store.stats().unwrap().records, 19);
    assert_eq!(store.purge_expired().unwrap(), 0);
    for n in 0..30 {
        assert_eq!(store.get(&key(n)).unwrap().is_some(), n > 10, "key {n}");
    }
    assert_eq!(store.stats().unwrap().purged, 11);
}

#[test]
fn purge_leaves_records_rewritten_with_a_later_expiry() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req"); // would leave at lease + retention = 110 s
    clock.advance(Duration::from_secs(50));
    store.complete(&c, b"x").unwrap(); // now leaves at 150 s
    clock.advance(Duration::from_secs(70)); // 120 s
    assert_eq!(store.purge_expired().unwrap(), 0);
    assert!(store.get(&key(1)).unwrap().is_some());
    clock.advance(Duration::from_secs(30)); // 150 s
    assert_eq!(store.purge_expired().unwrap(), 1);
}

#[test]
fn an_abandoned_claim_is_compacted_after_its_lease_plus_retention() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let _abandoned = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(109));
    assert_eq!(store.in_progress().unwrap().len(), 1);
    assert_eq!(store.purge_expired().unwrap(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.purge_expired().unwrap(), 1);
    assert_eq!(store.stats().unwrap().in_progress, 0);
    assert!(store.in_progress().unwrap().is_empty());
}

#[test]
fn purge_in_many_chunks_and_purged_records_stay_gone_after_reopen() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = options(&clock)
        .durability(Durability::None)
        .open_storage(disk.clone())
        .unwrap();
    for n in 0..3000 {
        let c = claim(&store, &key(n), b"req");
        store.complete(&c, b"x").unwrap();
    }
    clock.advance(Duration::from_secs(101));
    assert_eq!(store.purge_expired().unwrap(), 3000);
    store.close().unwrap();
    let store = sim_store(&disk, &clock);
    assert_eq!(store.stats().unwrap().records, 0);
}

#[test]
fn background_compaction_runs_on_its_interval() {
    let clock = clock();
    let store = options(&clock)
        .purge_interval(Some(Duration::from_millis(20)))
        .open_storage(SimDisk::new("t"))
        .unwrap();
    let c = claim(&store, &key(1), b"req");
    store.complete(&c, b"x").unwrap();
    clock.advance(Duration::from_secs(101));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stats().unwrap().records > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background purge did not run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().unwrap().purged, 1);
}

/// Every key but each seventh of `0..7_000`, then 50 s later the rest, with 200-byte outcomes
/// (the benchmark's sizes: many records to a leaf, so that fill shows), then claims of
/// `7_000..7_010` left open; closes the store. At 60 s the 6 000 first records have expired,
/// and their removals are scattered over every leaf. Returns the open claims' tokens.
fn load_sparse(store: idemstore::Store, clock: &idemstore::ManualClock) -> Vec<u64> {
    for n in (0..7_000).filter(|n| !lives(n)) {
        store
            .complete(&claim(&store, &key(n), b"req"), &SPARSE_OUTCOME)
            .unwrap();
    }
    clock.advance(Duration::from_secs(50));
    for n in (0..7_000).filter(lives) {
        store
            .complete(&claim(&store, &key(n), b"req"), &SPARSE_OUTCOME)
            .unwrap();
    }
    let open_claims = (7_000..7_010)
        .map(|n| claim(&store, &key(n), b"req").token())
        .collect();
    store.close().unwrap();
    open_claims
}

/// The outcome of every record [`load_sparse`] writes.
const SPARSE_OUTCOME: [u8; 200] = [b'x'; 200];

/// After [`purge_and_close`]: the live records of [`load_sparse`] answer with their outcome,
/// the expired ones are gone, and its 10 claims are still open.
fn assert_only_live_records_remain(store: &idemstore::Store) {
    for n in 0..7_000 {
        match lives(&n) {
            true => assert_eq!(completed(store, &key(n), b"req").data(), &SPARSE_OUTCOME),
            false => assert!(store.get(&key(n)).unwrap().is_none(), "key {n}"),
        }
    }
    assert_eq!(store.stats().unwrap().in_progress, 10);
}

/// At 60 s, purges the 6 000 records [`load_sparse`] let expire and closes `store`; returns
/// the length of the `index` file after the close.
fn purge_and_close(
    store: idemstore::Store,
    clock: &idemstore::ManualClock,
    index: &std::path::Path,
) -> u64 {
    clock.advance(Duration::from_secs(60));
    assert_eq!(store.purge_expired().unwrap(), 6_000);
    store.close().unwrap();
    std::fs::metadata(index).unwrap().len()
}

/// The keys [`load_sparse`] keeps live.
fn lives(n: &u64) -> bool {
    n.is_multiple_of(7)
}

/// Closing after a large purge compacts the index file: redb reuses freed pages but never
/// shrinks its file by itself, nor merges the leaves that scattered removals thinned. The
/// tables are repacked into full pages, with every row (records, expiry, open claims) kept.
#[test]
fn closing_after_a_large_purge_repacks_and_shrinks_the_index_file() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        options(&clock)
            .durability(Durability::None)
            .open(dir.path())
            .unwrap()
    };
    let open_claims = load_sparse(open(), &clock);
    let index = dir.path().join("index.redb");
    let full = std::fs::metadata(&index).unwrap().len();

    let compacted = purge_and_close(open(), &clock, &index);
    // 1 000 live records of a 200-byte outcome and a 48-byte key.
    let live = 1_000 * (200 + 48);
    assert!(
        compacted < 2 * live,
        "index file {full} bytes before the purge, {compacted} after closing, {live} live"
    );
    let report = idemstore::verify_dir(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let store = open();
    assert_only_live_records_remain(&store);
    for (n, token) in (7_000..7_010).zip(open_claims) {
        match store.get(&key(n)).unwrap().map(|r| r.state()) {
            Some(RecordState::InProgress { token: t, .. }) => assert_eq!(t, token),
            other => panic!("key {n}: {other:?}"),
        }
    }
    // The expiry rows came through too: the completed records still leave on time.
    clock.advance(Duration::from_secs(100));
    assert_eq!(store.purge_expired().unwrap(), 1_010);
}

/// With `compact_on_close(false)` closing after the same purge leaves the index file about as
/// large as it was (redb may trim free pages at its end; a compaction leaves under a twentieth),
/// and every record as it was: a fast shutdown.
#[test]
fn closing_without_compaction_keeps_the_file_and_every_record() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let open = |compact| {
        options(&clock)
            .durability(Durability::None)
            .compact_on_close(compact)
            .open(dir.path())
            .unwrap()
    };
    load_sparse(open(false), &clock);
    let index = dir.path().join("index.redb");
    let full = std::fs::metadata(&index).unwrap().len();

    let after = purge_and_close(open(false), &clock, &index);
    let live = 1_000 * (200 + 48);
    assert!(
        after > full / 2 && after > 2 * live,
        "index file {full} bytes before the purge, {after} after closing, {live} live"
    );
    let report = idemstore::verify_dir(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_only_live_records_remain(&open(false));
}
