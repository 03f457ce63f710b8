//! Injected EIO and ENOSPC: calls fail with errors, the handle refuses writes after a failed
//! write or sync, and nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;

use common::{clock, key, options, sim_store};
use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{Begin, Error};

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
