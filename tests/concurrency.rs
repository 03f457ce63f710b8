//! Many threads racing on one key: exactly one claim, and group commit shares syncs.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::{clock, key, sim_store};
use idemstore::storage::SimDisk;
use idemstore::{Begin, Options, Store};

#[test]
fn racing_begins_on_one_key_claim_it_exactly_once() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    for round in 0..20 {
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    store.begin(&key(round), b"req").unwrap()
                })
            })
            .collect();
        let answers: Vec<Begin> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let claims = answers
            .iter()
            .filter(|b| matches!(b, Begin::Claimed(_)))
            .count();
        assert_eq!(claims, 1, "round {round}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|b| matches!(b, Begin::Claimed(_) | Begin::InProgress { .. })),
            "{answers:?}"
        );
    }
    // Across a reopen the same holds: the claims are still there.
    drop(store);
    let store = sim_store(&disk, &clock);
    for round in 0..20 {
        assert!(matches!(
            store.begin(&key(round), b"req").unwrap(),
            Begin::InProgress { .. }
        ));
    }
}

#[test]
fn concurrent_writers_share_syncs_on_a_real_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store: Store = Options::new()
        .purge_interval(None)
        .checkpoint_interval(None)
        .open(dir.path())
        .unwrap();
    let threads = 16;
    let per_thread = 40;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..per_thread {
                    let k = key(t * 1000 + i);
                    let Begin::Claimed(c) = store.begin(&k, b"req").unwrap() else {
                        panic!("fresh key not claimed");
                    };
                    store.complete(&c, b"ok").unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = store.stats().unwrap();
    let writes = threads * per_thread * 2;
    assert_eq!(stats.appended, writes);
    assert_eq!(stats.records, threads * per_thread);
    // Group commit: concurrent callers shared batches, so fewer syncs than writes.
    assert!(
        stats.syncs < writes,
        "{} syncs for {writes} writes",
        stats.syncs
    );
}
