//! The record cache in front of the index never changes an answer: lookups racing the
//! applies that move writes into the index (and so into the cache) never see an older state
//! than one acknowledged before they started, and a store with the cache off answers alike.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{claim, clock, key, options};
use idemstore::{Durability, Key, Options, Store};

const KEYS: u64 = 4;
const ROUNDS: u64 = 500;

fn version(store: &Store, key: &Key) -> Option<u64> {
    let record = store.get(key).expect("get")?;
    let outcome = record.outcome()?;
    let text = std::str::from_utf8(outcome.data()).expect("utf-8 outcome");
    Some(text.parse().expect("a version"))
}

/// One writer rewrites each key in turn (remove, claim, complete with the next version) while a
/// checkpoint thread moves the writes into the index, and so into the record cache, as fast
/// as it can; two readers check every completed version they see against the latest one
/// acknowledged before their lookup began, and against what they saw before.
fn lookups_never_go_back(options: Options) {
    let dir = tempfile::tempdir().unwrap();
    let store = options.open(dir.path()).unwrap();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(4));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, acked, done, start) =
                (store.clone(), acked.clone(), done.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut seen = vec![0u64; KEYS as usize];
                let mut completed_reads = 0u64;
                while !done.load(Ordering::Acquire) {
                    for n in 0..KEYS {
                        let floor = acked[n as usize].load(Ordering::Acquire);
                        let Some(v) = version(&store, &key(n)) else {
                            continue; // removed or claimed: the next version is under way
                        };
                        completed_reads += 1;
                        assert!(
                            v >= floor,
                            "key {n}: read version {v} after {floor} was acked"
                        );
                        assert!(
                            v >= seen[n as usize],
                            "key {n}: {v} after {}",
                            seen[n as usize]
                        );
                        seen[n as usize] = v;
                    }
                }
                completed_reads
            })
        })
        .collect();
    let checkpointer = {
        let (store, done, start) = (store.clone(), done.clone(), start.clone());
        thread::spawn(move || {
            start.wait();
            let mut checkpoints = 0u64;
            while !done.load(Ordering::Acquire) {
                store.checkpoint().expect("checkpoint");
                checkpoints += 1;
            }
            checkpoints
        })
    };
    start.wait();
    for v in 1..=ROUNDS {
        for n in 0..KEYS {
            store.remove(&key(n)).unwrap();
            let c = claim(&store, &key(n), b"req");
            store.complete(&c, v.to_string().as_bytes()).unwrap();
            acked[n as usize].store(v, Ordering::Release);
            // A pause lets the checkpoints apply the other keys' writes, so that lookups
            // are served by the index and the cache, not by the acknowledged layer.
            thread::sleep(Duration::from_micros(100));
        }
    }
    done.store(true, Ordering::Release);
    let checkpoints = checkpointer.join().unwrap();
    for reader in readers {
        let reads = reader.join().unwrap();
        assert!(reads > 1000, "only {reads} completed versions read");
    }
    assert!(checkpoints > 10, "only {checkpoints} checkpoints");
    for n in 0..KEYS {
        assert_eq!(version(&store, &key(n)), Some(ROUNDS));
    }
}

fn racing_options() -> Options {
    options(&clock()).durability(Durability::None)
}

#[test]
fn lookups_racing_index_applies_never_see_an_older_state() {
    lookups_never_go_back(racing_options());
}

#[test]
fn lookups_racing_index_applies_never_see_an_older_state_in_a_tiny_cache() {
    // About one record per shard: every write evicts.
    lookups_never_go_back(racing_options().record_cache_size(32 << 10));
}

#[test]
fn lookups_racing_index_applies_never_see_an_older_state_without_the_cache() {
    lookups_never_go_back(racing_options().record_cache_size(0));
}

/// Records served from the cache after they reached the index, after a purge removed them,
/// and after a reopen, answer as the same store with the cache off does.
#[test]
fn the_cache_changes_no_answer() {
    let answers = |cache: usize| {
        let clock = clock();
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            options(&clock)
                .record_cache_size(cache)
                .open(dir.path())
                .unwrap()
        };
        let store = open();
        let mut seen = Vec::new();
        for n in 0..200 {
            let c = claim(&store, &key(n), b"req");
            if n % 3 != 0 {
                store
                    .complete(&c, format!("outcome-{n}").as_bytes())
                    .unwrap();
            }
        }
        let mut look = |store: &Store| {
            for n in 0..200 {
                seen.push(format!("{:?}", store.get(&key(n)).unwrap()));
                seen.push(format!("{:?}", store.begin(&key(n), b"req").unwrap()));
                seen.push(format!("{:?}", store.begin(&key(n), b"other").unwrap()));
            }
        };
        look(&store); // from `recent`
        store.checkpoint().unwrap();
        look(&store); // from the index, filling the cache
        look(&store); // from the cache
        for n in (0..200).step_by(7) {
            store.remove(&key(n)).unwrap();
        }
        store.checkpoint().unwrap();
        look(&store);
        clock.advance(std::time::Duration::from_secs(1000));
        let purged = store.purge_expired().unwrap();
        look(&store);
        store.close().unwrap();
        look(&open());
        seen.push(format!("purged {purged}"));
        seen
    };
    let with_cache = answers(128 << 20);
    assert!(
        with_cache.iter().any(|a| a.starts_with("Completed")),
        "{:?}",
        &with_cache[..6]
    );
    assert_eq!(with_cache, answers(0));
}

/// An open warms the record cache from the index (on the simulated disk, before it returns),
/// up to its budget; the store's statistics count what it holds.
#[test]
fn an_open_warms_the_cache_within_its_budget() {
    use idemstore::storage::SimDisk;
    let disk = SimDisk::new("warm");
    let store = common::filled(&disk, 300);
    store.close().unwrap();
    let open = |budget: usize| {
        options(&clock())
            .record_cache_size(budget)
            .open_storage(disk.clone())
            .unwrap()
    };
    let store = open(128 << 20);
    let stats = store.stats().unwrap();
    assert_eq!(stats.records, 300);
    assert_eq!(stats.record_cache_records, 300);
    // Each record: its key, its entry and the per-record allowance.
    assert!(stats.record_cache_bytes > 300 * 100, "{stats:?}");
    store.close().unwrap();

    let budget = 16 << 10;
    let store = open(budget);
    let stats = store.stats().unwrap();
    assert!(stats.record_cache_records > 0, "{stats:?}");
    assert!(stats.record_cache_records < 300, "{stats:?}");
    assert!(stats.record_cache_bytes <= budget as u64, "{stats:?}");
    for n in 0..300 {
        let outcome = store.get(&key(n)).unwrap().expect("record");
        assert_eq!(
            outcome.outcome().unwrap().data(),
            format!("outcome-{n}").as_bytes()
        );
    }
    store.close().unwrap();

    let store = open(0);
    assert_eq!(store.stats().unwrap().record_cache_records, 0);
}
