//! Reopening: after a clean close, after drop, and after power cuts at many points.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{claim, clock, complete_all, completed, key, options, sim_store, uncheckpointed};
use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{Begin, Error, Store};

#[test]
fn clean_close_keeps_everything_and_replays_nothing() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    let done = claim(&store, &key(1), b"a");
    store.complete(&done, b"outcome-1").unwrap();
    let open = claim(&store, &key(2), b"b");
    store.close().unwrap();

    let store = sim_store(&disk, &clock);
    let report = store.recovery_report();
    assert!(!report.created);
    assert_eq!(report.replayed, 0, "a clean close checkpoints everything");
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.in_doubt, 1);
    assert_eq!(completed(&store, &key(1), b"a").data(), b"outcome-1");
    assert!(matches!(
        store.begin(&key(2), b"b").unwrap(),
        Begin::InProgress { .. }
    ));
    // The claim from before the restart is still the current one.
    store.complete(&open, b"outcome-2").unwrap();
}

#[test]
fn tokens_never_go_back_across_restarts_removal_and_purge() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let mut last = 0;
    for round in 0..5 {
        let store = sim_store(&disk, &clock);
        let c = claim(&store, &key(round), b"x");
        assert!(
            c.token() > last,
            "round {round}: token {} after {last}",
            c.token()
        );
        last = c.token();
        match round % 3 {
            0 => store.release(&c).unwrap(),
            1 => assert!(store.remove(&key(round)).unwrap()),
            _ => {
                store.complete(&c, b"done").unwrap();
                clock.advance(Duration::from_secs(1000));
                assert_eq!(store.purge_expired().unwrap(), 1);
            }
        }
        if round % 2 == 0 {
            drop(store); // crash-like: no close
            disk.power_cut(CrashMode::DropUnsynced);
        } else {
            store.close().unwrap();
        }
    }
}

#[test]
fn second_open_of_the_same_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    let disk = SimDisk::new("t");
    let _sim = sim_store(&disk, &clock());
    assert!(matches!(
        options(&clock()).open_storage(disk.clone()),
        Err(Error::Locked { .. })
    ));
    store.close().unwrap();
    // Closing the only handle releases the lock.
    let store = Store::open(dir.path()).unwrap();
    drop(store);
    Store::open(dir.path()).unwrap();
}

#[test]
fn a_real_directory_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key1 = key(1);
    {
        let store = Store::open(dir.path()).unwrap();
        let c = claim(&store, &key1, b"req");
        store.complete(&c, b"kept").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(completed(&store, &key1, b"req").data(), b"kept");
}

/// The model: for each key, the outcome acknowledged as completed.
fn check(store: &Store, acknowledged: &BTreeMap<u64, Vec<u8>>) {
    for (n, outcome) in acknowledged {
        let record = store.get(&key(*n)).unwrap();
        let got = record.and_then(|r| r.outcome()).map(|o| o.into_data());
        assert_eq!(
            got.as_ref(),
            Some(outcome),
            "key {n} lost its acknowledged outcome"
        );
    }
}

#[test]
fn power_cut_after_every_operation_keeps_every_acknowledged_completion() {
    let clock = clock();
    for cut_after in 0..40u64 {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepAll,
            CrashMode::Random(cut_after),
        ] {
            let disk = SimDisk::new("t");
            let mut acknowledged = BTreeMap::new();
            let store = common::options(&clock)
                .checkpoint_bytes(600) // checkpoint and roll often
                .segment_size(4096)
                .open_storage(disk.clone())
                .unwrap();
            for n in 0..cut_after {
                let c = claim(&store, &key(n), b"req");
                if n % 5 == 4 {
                    store.release(&c).unwrap();
                    continue;
                }
                let outcome = format!("outcome-{n}").into_bytes();
                store.complete(&c, &outcome).unwrap();
                acknowledged.insert(n, outcome);
            }
            // An operation in flight when the power goes: its claim may or may not survive.
            let in_flight = claim(&store, &key(1000), b"req");
            disk.power_cut(mode);
            drop(store);

            let store = sim_store(&disk, &clock);
            check(&store, &acknowledged);
            let mut records = 0;
            store
                .for_each(|r| {
                    records += 1;
                    let n: u64 = std::str::from_utf8(r.key().request())
                        .unwrap()
                        .trim_start_matches("req-")
                        .parse()
                        .unwrap();
                    assert!(
                        acknowledged.contains_key(&n) || n == 1000,
                        "key {n} exists but was never acknowledged as completed ({mode:?})"
                    );
                })
                .unwrap();
            assert!(records >= acknowledged.len());
            // A second open gives the same state as the first.
            let after_first: Vec<_> = dump(&store);
            drop(store);
            let store = sim_store(&disk, &clock);
            assert_eq!(dump(&store), after_first);
            // The in-flight claim, if it survived, is in doubt and holds the key.
            if let Some(r) = store.get(&key(1000)).unwrap() {
                assert_eq!(r.fingerprint(), in_flight.fingerprint());
                assert!(
                    store
                        .in_progress()
                        .unwrap()
                        .iter()
                        .any(|r| r.key() == &key(1000))
                );
            }
        }
    }
}

fn dump(store: &Store) -> Vec<idemstore::Record> {
    let mut out = Vec::new();
    store.for_each(|r| out.push(r)).unwrap();
    out
}

#[test]
fn power_cut_during_recovery_then_reopen_gives_the_same_state() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = uncheckpointed(&disk, &clock);
    for n in 0..30 {
        let c = claim(&store, &key(n), b"req");
        store.complete(&c, format!("o{n}").as_bytes()).unwrap();
    }
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    // Recovery replays 30 records; cut the power at every step of it.
    let mut reference = None;
    for seed in 0..20 {
        let image = SimDisk::new("copy");
        for name in disk.file_names() {
            image.write_file(&name, disk.read_file(&name).unwrap());
        }
        let store = sim_store(&image, &clock);
        assert_eq!(
            store.recovery_report().replayed,
            60,
            "30 claims and 30 completions"
        );
        image.power_cut(CrashMode::Random(seed));
        drop(store);
        let store = sim_store(&image, &clock);
        let state = dump(&store);
        assert_eq!(state.len(), 30);
        if let Some(reference) = &reference {
            assert_eq!(&state, reference);
        }
        reference = Some(state);
    }
}

#[test]
fn recovery_interrupted_by_failures_at_every_step_converges() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = uncheckpointed(&disk, &clock);
    for n in 0..20 {
        let c = claim(&store, &key(n), b"req");
        store.complete(&c, format!("o{n}").as_bytes()).unwrap();
    }
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let reference = {
        let image = copy(&disk);
        dump(&sim_store(&image, &clock))
    };
    assert_eq!(reference.len(), 20);
    for op in [Op::Write, Op::Sync, Op::SetLen, Op::SyncDir] {
        for skip in 0..12 {
            let image = copy(&disk);
            image.inject(Fault {
                op,
                skip,
                error: FaultError::Eio,
                sticky: true,
            });
            let attempt = options(&clock).open_storage(image.clone());
            if let Err(e) = &attempt {
                assert!(matches!(e, Error::Io(_)), "{op:?}/{skip}: unexpected {e}");
            }
            drop(attempt);
            image.power_cut(CrashMode::Random(skip));
            image.clear_faults();
            let store = sim_store(&image, &clock);
            assert_eq!(dump(&store), reference, "{op:?} failing after {skip} calls");
        }
    }
}

fn copy(disk: &SimDisk) -> SimDisk {
    let image = SimDisk::new("copy");
    for name in disk.file_names() {
        image.write_file(&name, disk.read_file(&name).unwrap());
    }
    image
}

/// A store on `disk` that never checkpoints on its own, holding `key(0..800)` completed with
/// 1500-byte outcomes: over a megabyte of log, the size at which a checkpoint rolls the log.
fn over_a_megabyte_of_log(disk: &SimDisk, clock: &idemstore::ManualClock) -> (Store, Vec<u8>) {
    let store = uncheckpointed(disk, clock);
    let outcome = vec![b'o'; 1500];
    complete_all(&store, 0..800, &outcome);
    (store, outcome)
}

/// A checkpoint starts a new segment first once the current one holds a megabyte or more,
/// covers the old one and removes it: the log's disk comes back without waiting for a 64 MiB
/// segment to fill. The power may go at once: nothing is lost.
#[test]
fn a_checkpoint_covering_the_log_gives_its_disk_back() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let (store, outcome) = over_a_megabyte_of_log(&disk, &clock);
    let logs = |disk: &SimDisk| {
        disk.file_names()
            .into_iter()
            .filter(|n| n.ends_with(".log"))
            .collect::<Vec<_>>()
    };
    let before = logs(&disk);
    assert_eq!(before.len(), 1);
    assert!(store.stats().unwrap().current_segment_bytes > 1 << 20);
    store.checkpoint().unwrap();
    let after = logs(&disk);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the covered segment was not replaced");
    assert!(store.stats().unwrap().current_segment_bytes < 4096);
    // A small log is left alone: another checkpoint keeps the new segment.
    store.checkpoint().unwrap();
    assert_eq!(logs(&disk), after);

    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = sim_store(&disk, &clock);
    assert_eq!(store.recovery_report().replayed, 0);
    for n in 0..800 {
        assert_eq!(completed(&store, &key(n), b"req").data(), &outcome[..]);
    }
}

/// Opens `disk` after a power cut in `mode` and says whether redb walked the whole index.
fn repaired_after_cut(disk: &SimDisk, store: Store, mode: CrashMode) -> (Store, bool) {
    disk.power_cut(mode);
    drop(store);
    let store = sim_store(disk, &clock());
    let repaired = store.recovery_report().index_repaired;
    (store, repaired)
}

#[test]
fn a_crash_at_any_moment_leaves_an_index_that_opens_without_a_full_repair() {
    // Every durable index commit saves redb's allocator state; a crash after one that did not made
    // the next open read the whole index file (seen: the commit that creates the tables on
    // open, followed by a crash before any other commit).
    for mode in [CrashMode::KeepAll, CrashMode::DropUnsynced] {
        let disk = SimDisk::new("t");
        let store = sim_store(&disk, &clock());
        complete_all(&store, 0..50, b"outcome");
        store.close().unwrap();

        // Right after an open: no commit but the one that opens the tables.
        let store = sim_store(&disk, &clock());
        let (store, repaired) = repaired_after_cut(&disk, store, mode);
        assert!(!repaired, "{mode:?}: crash right after an open");

        // After changes reached the index (`stats` applies them) and a purge.
        complete_all(&store, 50..100, b"outcome");
        store.stats().unwrap();
        let (store, repaired) = repaired_after_cut(&disk, store, mode);
        assert!(!repaired, "{mode:?}: crash after an apply");
        store.purge_expired().unwrap();
        let (store, repaired) = repaired_after_cut(&disk, store, mode);
        assert!(!repaired, "{mode:?}: crash after a purge");
        assert_eq!(completed(&store, &key(99), b"req").data(), b"outcome");
    }
}

#[test]
fn an_index_whose_last_commit_did_not_save_its_allocator_state_is_repaired_and_reported() {
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock());
    complete_all(&store, 0..20, b"outcome");
    store.close().unwrap();

    // What a crash leaves after a durable commit without quick-repair (as this crate's
    // earlier versions made): the file, read while redb still has it open.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    std::fs::write(&path, disk.read_file("index.redb").unwrap()).unwrap();
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn
            .open_table(redb::TableDefinition::<&str, u64>::new("scratch"))
            .unwrap();
        table.insert("x", 1).unwrap();
    }
    txn.commit().unwrap();
    disk.write_file("index.redb", std::fs::read(&path).unwrap());
    drop(db);

    let store = sim_store(&disk, &clock());
    assert!(store.recovery_report().index_repaired);
    for n in 0..20 {
        assert_eq!(completed(&store, &key(n), b"req").data(), b"outcome");
    }
}

/// With a background thread, the checkpoint that `checkpoint_bytes` calls for is done there,
/// not by the writer whose batch crossed the mark (whose call would wait for the index's
/// fsync); and the changes applied meanwhile are all there after a power cut.
#[test]
fn a_checkpoint_called_for_by_checkpoint_bytes_is_taken_by_the_background_thread() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = options(&clock)
        .checkpoint_bytes(32 << 10)
        // A thread whose own timer never fires in this test.
        .checkpoint_interval(Some(Duration::from_secs(3600)))
        .open_storage(disk.clone())
        .unwrap();
    complete_all(&store, 0..400, &[b'o'; 200]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.stats().unwrap().checkpoints == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after {} bytes of log",
            32 << 10
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = sim_store(&disk, &clock);
    assert!(store.recovery_report().checkpoint_lsn > 0);
    for n in 0..400 {
        assert_eq!(completed(&store, &key(n), b"req").data(), &[b'o'; 200]);
    }
}

/// Writers far ahead of the index: with a background thread, leaders hand it the applying,
/// and help once it falls behind. Everything acknowledged is there after a kill -9, whichever
/// thread applied it.
#[test]
fn writers_ahead_of_the_index_lose_nothing_with_a_background_thread() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = options(&clock)
        .durability(idemstore::Durability::None)
        .checkpoint_interval(Some(Duration::from_secs(3600)))
        .open_storage(disk.clone())
        .unwrap();
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 12_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = store.clone();
            s.spawn(move || {
                complete_all(&store, t * PER_THREAD..(t + 1) * PER_THREAD, b"outcome");
            });
        }
    });
    disk.power_cut(CrashMode::KeepAll);
    drop(store);
    let store = sim_store(&disk, &clock);
    assert_eq!(
        store.stats().unwrap().records,
        THREADS * PER_THREAD,
        "records after the restart"
    );
    for n in (0..THREADS * PER_THREAD).step_by(97) {
        assert_eq!(completed(&store, &key(n), b"req").data(), b"outcome");
    }
}

/// A checkpoint that rolls the log first makes three kinds of writes: the old segment's sync
/// and the new segment's creation, the index commit, and the removal of the old segment. The
/// power goes at each file or directory sync in turn (the failed sync and everything after it
/// lost): every acknowledged record is there after the reopen, and once that recovery has
/// closed, nothing is left to replay.
#[test]
fn power_cut_at_any_sync_of_a_checkpoint_that_rolls_the_log_loses_nothing() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let (store, outcome) = over_a_megabyte_of_log(&disk, &clock);
    assert!(store.stats().unwrap().current_segment_bytes > 1 << 20);
    let before = copy(&disk);
    drop(store);
    let mut cut_before_the_end = 0;
    let cuts = (0..8).map(|skip| (Op::Sync, skip));
    for (op, skip) in cuts.chain((0..4).map(|skip| (Op::SyncDir, skip))) {
        let image = copy(&before);
        let store = uncheckpointed(&image, &clock);
        image.inject(Fault {
            op,
            skip,
            error: FaultError::Eio,
            sticky: true,
        });
        // Records written after a successful checkpoint go into the new segment.
        let after = match store.checkpoint() {
            Ok(()) => {
                image.clear_faults();
                complete_all(&store, 800..803, b"after");
                800..803
            }
            Err(_) => {
                cut_before_the_end += 1;
                800..800
            }
        };
        image.power_cut(CrashMode::DropUnsynced);
        drop(store);
        image.clear_faults();
        let store = sim_store(&image, &clock);
        for n in 0..800 {
            assert_eq!(
                completed(&store, &key(n), b"req").data(),
                &outcome[..],
                "{op:?} {skip} failed: key {n}"
            );
        }
        for n in after.clone() {
            assert_eq!(completed(&store, &key(n), b"req").data(), b"after");
        }
        // And again, once that recovery's own checkpoint is in place.
        store.close().unwrap();
        let store = sim_store(&image, &clock);
        assert_eq!(store.recovery_report().replayed, 0);
        assert_eq!(completed(&store, &key(799), b"req").data(), &outcome[..]);
    }
    assert!(
        cut_before_the_end >= 3,
        "{cut_before_the_end} checkpoints failed"
    );
}

/// Checkpoints taken while other threads write: a checkpoint that finds the current segment
/// at 1 MiB or more ends it first and covers it, so afterwards the oldest segment starts after
/// every record acknowledged before the call, and the next open reads only what came after.
/// (In a real directory: its durable index commit takes long enough for the writers to add
/// records during every checkpoint.)
#[test]
fn a_checkpoint_beside_running_writers_leaves_no_segment_of_old_records() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let store = options(&clock)
        .checkpoint_bytes(u64::MAX)
        .open(dir.path())
        .unwrap();
    let oldest_segment = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .min()
            .expect("a segment")
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcome = vec![b'o'; 1500];
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (store, stop, outcome) = (&store, &stop, &outcome);
            s.spawn(move || {
                let mut n = 1_000_000 * (t + 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    complete_all(store, n..n + 1, outcome);
                    n += 1;
                }
            });
        }
        // Stops the writers however this thread leaves the scope (a failed assertion too),
        // or the scope would wait for them forever.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let mut checked = 0;
        while checked < 6 {
            let stats = store.stats().unwrap();
            if stats.current_segment_bytes < 1 << 20 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let acknowledged = stats.acknowledged_lsn;
            store.checkpoint().unwrap();
            let oldest = oldest_segment(dir.path());
            assert!(
                oldest > acknowledged,
                "checkpoint {checked}: the oldest segment starts at LSN {oldest}, at or before \
                 LSN {acknowledged}, acknowledged before the checkpoint"
            );
            checked += 1;
        }
    });
}

/// Builds the history the next two tests reopen: `key(1)` completed, then purged once expired
/// (a purge writes no log record: only the index knows it), more keys, a checkpoint, and six
/// records after it. Returns the keys that must be there, with their outcomes.
fn purged_then_checkpointed(store: &Store, clock: &idemstore::ManualClock) -> Vec<(u64, Vec<u8>)> {
    complete_all(store, 1..2, b"purged");
    clock.advance(Duration::from_secs(60));
    complete_all(store, 2..5, b"before");
    clock.advance(Duration::from_secs(50));
    assert_eq!(store.purge_expired().unwrap(), 1);
    complete_all(store, 5..6, b"before");
    store.checkpoint().unwrap();
    complete_all(store, 6..9, b"after");
    (2..9)
        .map(|n| {
            (
                n,
                if n < 6 {
                    b"before".to_vec()
                } else {
                    b"after".to_vec()
                },
            )
        })
        .collect()
}

/// The open reads the log while the index opens, before it knows the checkpoint, and drops
/// what the checkpoint covers once it does. A record dropped too few would bring back the
/// purged key (read with a clock from before it expired) or count in `replayed`. Checked on
/// a real directory (helper threads) and on the simulated disk (one thread).
#[test]
fn records_the_checkpoint_covers_are_not_replayed_or_brought_back() {
    let check = |store: &Store, expected: &[(u64, Vec<u8>)], torn: bool| {
        let report = store.recovery_report();
        assert!(report.checkpoint_lsn > 0, "{report:?}");
        assert_eq!(report.replayed, 6, "{report:?}");
        assert_eq!(report.torn_tail.is_some(), torn, "{report:?}");
        assert_eq!(report.segments_read, 1, "{report:?}");
        assert_eq!(
            store.get(&key(1)).unwrap(),
            None,
            "the purged key came back"
        );
        for (n, outcome) in expected {
            assert_eq!(
                completed(store, &key(*n), b"req").data(),
                outcome.as_slice()
            );
        }
    };
    for torn in [false, true] {
        // A real directory, copied while the store is open: what a kill -9 leaves.
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let clock = clock();
        let store = options(&clock).open(dir.path()).unwrap();
        let expected = purged_then_checkpointed(&store, &clock);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let to = crashed.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &to).unwrap();
            if torn && to.extension().is_some_and(|e| e == "log") {
                // Garbage no sync covered at the end of the log: a torn tail, which makes the
                // open read the log a second time, after the checkpoint.
                let mut bytes = std::fs::read(&to).unwrap();
                bytes.extend_from_slice(&[0xA5; 40]);
                std::fs::write(&to, bytes).unwrap();
            }
        }
        drop(store);
        let store = options(&common::clock()).open(crashed.path()).unwrap();
        check(&store, &expected, torn);

        let disk = SimDisk::new("t");
        let clock = common::clock();
        let store = sim_store(&disk, &clock);
        let expected = purged_then_checkpointed(&store, &clock);
        disk.power_cut(CrashMode::DropUnsynced);
        drop(store);
        if torn {
            let log = common::last_segment(&disk);
            let mut bytes = disk.read_file(&log).unwrap();
            bytes.extend_from_slice(&[0xA5; 40]);
            disk.write_file(&log, bytes);
        }
        let store = sim_store(&disk, &common::clock());
        check(&store, &expected, torn);
    }
}

#[test]
fn with_lapse_claims_on_open_an_in_doubt_claim_is_taken_over_at_once() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let lapsing = || {
        options(&clock)
            .lapse_claims_on_open(true)
            .open_storage(disk.clone())
            .expect("open")
    };
    let store = lapsing();
    let in_doubt = claim(&store, &key(1), b"a");
    let finished = claim(&store, &key(2), b"b");
    store.complete(&finished, b"outcome-2").unwrap();
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);

    let store = lapsing();
    assert_eq!(store.recovery_report().in_doubt, 1);
    // The lease (10 s) has not run out, but the claim is from before the open.
    let Begin::Claimed(retry) = store.begin(&key(1), b"a").unwrap() else {
        panic!("the in-doubt claim was not taken over");
    };
    assert_eq!(
        retry.attempt(),
        2,
        "the takeover says the operation is in doubt"
    );
    assert!(retry.token() > in_doubt.token());
    // Claims of this handle hold their keys as usual, and mismatches are still refused.
    assert!(matches!(
        store.begin(&key(1), b"a").unwrap(),
        Begin::InProgress { attempt: 2, .. }
    ));
    assert!(matches!(
        store.begin(&key(1), b"other").unwrap(),
        Begin::Mismatch { .. }
    ));
    assert_eq!(completed(&store, &key(2), b"b").data(), b"outcome-2");
    // The old holder was taken over: fenced.
    assert!(matches!(
        store.complete(&in_doubt, b"late"),
        Err(Error::ClaimLost { .. })
    ));
    store.complete(&retry, b"outcome-1").unwrap();
    drop(store);

    // Without the option (the default), a claim from before the open holds its key until
    // its lease runs out.
    let store = sim_store(&disk, &clock);
    let held = claim(&store, &key(3), b"c");
    drop(store);
    let store = sim_store(&disk, &clock);
    assert!(matches!(
        store.begin(&key(3), b"c").unwrap(),
        Begin::InProgress { attempt: 1, .. }
    ));
    drop(store);
    let store = lapsing();
    assert!(matches!(store.begin(&key(3), b"c").unwrap(), Begin::Claimed(c) if c.attempt() == 2));
    assert!(matches!(
        store.complete(&held, b"late"),
        Err(Error::ClaimLost { .. })
    ));
}
