//! Injected EIO and ENOSPC: calls fail with errors, the handle refuses writes after a failed
//! write or sync, and nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::hooked::Hooked;
use common::{claim, clock, key, options, sim_store};
use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{Begin, Error, RecordState};

#[test]
fn a_failed_sync_fails_the_call_and_poisons_the_handle() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    let Begin::Claimed(c) = store.begin(&key(1), b"req").unwrap() else {
        panic!("not claimed");
    };
    disk.inject(Fault {
        op: Op::Sync,
        skip: 0,
        error: FaultError::Eio,
        sticky: false,
    });
    assert!(matches!(store.complete(&c, b"x"), Err(Error::Io(_))));
    // The fault is gone, but the handle stays failed: a retried fsync could lie.
    assert!(matches!(
        store.begin(&key(2), b"req"),
        Err(Error::PreviousIo { .. })
    ));
    assert!(matches!(
        store.complete(&c, b"x"),
        Err(Error::PreviousIo { .. })
    ));
    assert!(matches!(store.sync(), Err(Error::PreviousIo { .. })));
    // Reads of acknowledged state still work.
    assert!(store.get(&key(1)).unwrap().is_some());
    drop(store);
    disk.power_cut(CrashMode::DropUnsynced);
    let store = sim_store(&disk, &clock);
    // The completion was never acknowledged: either state is allowed, but it is consistent.
    let record = store
        .get(&key(1))
        .unwrap()
        .expect("the claim was acknowledged");
    if let Some(outcome) = record.outcome() {
        assert_eq!(outcome.data(), b"x");
    }
}

#[test]
fn a_full_disk_fails_writes_and_loses_nothing_acknowledged() {
    let clock = clock();
    for op in [
        Op::Write,
        Op::Sync,
        Op::SetLen,
        Op::SyncDir,
        Op::Remove,
        Op::Open,
    ] {
        for skip in [0, 1, 3, 10] {
            let disk = SimDisk::new("t");
            let store = options(&clock)
                .checkpoint_bytes(512)
                .segment_size(4096)
                .open_storage(disk.clone())
                .unwrap();
            disk.inject(Fault {
                op,
                skip,
                error: FaultError::Enospc,
                sticky: true,
            });
            let mut acknowledged = BTreeMap::new();
            let mut failed = false;
            for n in 0..40 {
                let result = store.begin(&key(n), b"req").and_then(|b| match b {
                    Begin::Claimed(c) => store.complete(&c, format!("o{n}").as_bytes()),
                    other => panic!("unexpected {other:?}"),
                });
                match result {
                    Ok(o) => {
                        assert!(!failed, "{op:?}/{skip}: a write succeeded after a failure");
                        acknowledged.insert(n, o.into_data());
                    }
                    Err(Error::Io(e)) => {
                        assert_eq!(e.raw_os_error(), Some(28), "{op:?}/{skip}");
                        failed = true;
                    }
                    // A checkpoint after an acknowledged write may be what failed first.
                    Err(Error::PreviousIo { cause }) => {
                        assert!(cause.contains("28") || cause.contains("space"), "{cause}");
                        failed = true;
                    }
                    Err(e) => panic!("{op:?}/{skip}: unexpected error {e}"),
                }
            }
            drop(store);
            disk.power_cut(CrashMode::Random(skip));
            disk.clear_faults();
            let store = sim_store(&disk, &clock);
            for (n, outcome) in &acknowledged {
                let got = store.get(&key(*n)).unwrap().and_then(|r| r.outcome());
                assert_eq!(
                    got.map(|o| o.into_data()).as_ref(),
                    Some(outcome),
                    "{op:?}/{skip}: key {n} lost"
                );
            }
        }
    }
}

#[test]
fn eio_on_open_is_an_error_not_a_panic() {
    let disk = SimDisk::new("t");
    drop(sim_store(&disk, &clock()));
    for op in [Op::Open, Op::Read, Op::Write, Op::Sync] {
        disk.inject(Fault {
            op,
            skip: 0,
            error: FaultError::Eio,
            sticky: true,
        });
        match options(&clock()).open_storage(disk.clone()) {
            // Opening a cleanly closed store need not write or sync.
            Ok(_) => assert!(matches!(op, Op::Write | Op::Sync), "{op:?} fault ignored"),
            Err(e) => assert!(
                matches!(e, Error::Io(_) | Error::PreviousIo { .. }),
                "{op:?}: {e}"
            ),
        }
        disk.clear_faults();
    }
    sim_store(&disk, &clock());
}

/// The index file's background writeback (a sync every 64 MiB written to it, off the commit
/// path) fails: no caller is told at once, but the next durable index commit fails, the
/// handle refuses writes from then on, and every acknowledged write survives a power cut.
#[test]
fn a_failed_background_sync_of_the_index_fails_the_next_checkpoint_and_loses_nothing() {
    const KEYS: u64 = 80;
    let clock = clock();
    let disk = SimDisk::new("t").with_helper_threads();
    // The next sync of the index by the writeback helper fails, once armed.
    let armed = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let hook = {
        let (armed, failed) = (armed.clone(), failed.clone());
        move || {
            if thread::current().name() == Some("idemstore-writeback")
                && armed.swap(false, Ordering::SeqCst)
            {
                failed.store(true, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
    };
    // Outcomes of 1 MiB: 80 MiB of index pages once the keys are applied, past the 64 MiB
    // after which the helper syncs. A small page cache, so that redb writes them out.
    let outcome = |n: u64| vec![(n % 251) as u8; 1 << 20];
    let store = options(&clock)
        .checkpoint_bytes(u64::MAX)
        .cache_size(4 << 20)
        .open_storage(Hooked {
            index_sync: Arc::new(hook),
            ..Hooked::new(disk.clone())
        })
        .expect("open");
    armed.store(true, Ordering::SeqCst);
    for n in 0..KEYS {
        let c = common::claim(&store, &key(n), b"req");
        store.complete(&c, &outcome(n)).expect("complete");
    }
    // Applying the changes is what writes the index, and the helper's sync fails meanwhile.
    // The first call after that which syncs the index itself fails with that cause: the
    // apply, if it grows the file after the failure, else the checkpoint. A later sync would
    // succeed, but the failed one may have dropped dirty pages.
    let applied = store.stats();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !failed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the index was never synced in the background"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let first = match applied {
        Err(e) => e,
        Ok(_) => store
            .checkpoint()
            .expect_err("a checkpoint after a failed background sync"),
    };
    assert!(
        matches!(&first, Error::Io(e) if e.to_string().contains("background sync")),
        "unexpected failure: {first}"
    );
    assert!(store.checkpoint().is_err());
    assert!(matches!(
        store.begin(&key(KEYS), b"req"),
        Err(Error::PreviousIo { .. })
    ));
    // A read answers from the changes not yet in the index, or is refused if it reaches the
    // index (redb refuses every transaction once a commit failed): never from a state the
    // disk may not hold.
    match store.get(&key(7)) {
        Ok(Some(record)) => assert_eq!(
            record.outcome().map(|o| o.data().to_vec()),
            Some(outcome(7))
        ),
        Err(Error::PreviousIo { .. }) => {}
        other => panic!("a read after the failure: {other:?}"),
    }
    drop(store);

    disk.power_cut(CrashMode::DropUnsynced);
    let store = sim_store(&disk, &clock);
    for n in 0..KEYS {
        let record = store.get(&key(n)).expect("get").expect("acknowledged");
        assert_eq!(
            record.outcome().map(|o| o.data().to_vec()),
            Some(outcome(n)),
            "key {n}"
        );
    }
    assert!(store.get(&key(KEYS)).expect("get").is_none());
}

/// A handle poisoned by a failed log sync leaves the index as its last checkpoint left it.
/// redb makes the pending non-durable commits durable when the database closes, so without
/// a guard the drop of the failed handle persisted changes made after the checkpoint under
/// the old checkpoint: harmless with `Immediate` (those changes are in the synced log and
/// are replayed over them), but with `Periodic` or `None` a change whose log record a power
/// cut then lost could stay in the index, its fencing token above the next one handed out.
/// Found by the `io_fault_model` once it ran `verify` after each power cut.
#[test]
fn a_poisoned_handle_leaves_the_index_at_its_last_checkpoint() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    let first = claim(&store, &key(1), b"req");
    store.complete(&first, b"checkpointed").unwrap();
    store.checkpoint().unwrap();
    // After the checkpoint the key is removed and claimed again, and that reaches the index
    // in a non-durable commit.
    assert!(store.remove(&key(1)).unwrap());
    let again = claim(&store, &key(1), b"req");
    store.stats().unwrap();
    disk.inject(Fault {
        op: Op::Sync,
        skip: 0,
        error: FaultError::Eio,
        sticky: false,
    });
    assert!(matches!(store.complete(&again, b"x"), Err(Error::Io(_))));
    drop(store);

    let report = idemstore::verify(disk.clone()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    // The reopened store replays the second claim from the log (and the completion, whose
    // write reached the file though its sync failed: either is allowed).
    let store = sim_store(&disk, &clock);
    let record = store.get(&key(1)).unwrap().expect("the second claim");
    let token = match record.state() {
        RecordState::InProgress { token, .. } => token,
        RecordState::Completed(outcome) => outcome.token(),
        other => panic!("an unknown state: {other:?}"),
    };
    assert_eq!(token, again.token());
}
