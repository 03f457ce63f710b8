//! Shared test helpers.
#![allow(dead_code)]

pub mod hooked;

use std::time::{Duration, UNIX_EPOCH};

use idemstore::storage::SimDisk;
use idemstore::{Begin, Claim, Durability, Key, ManualClock, Options, Outcome, Store};

/// A clock at a fixed, round time.
pub fn clock() -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

/// Options for deterministic tests: a manual clock, no background thread.
pub fn options(clock: &ManualClock) -> Options {
    Options::new()
        .clock(clock.clone())
        .lease(Duration::from_secs(10))
        .retention(Duration::from_secs(100))
        .purge_interval(None)
        .checkpoint_interval(None)
        .durability(Durability::Immediate)
}

pub fn sim_store(disk: &SimDisk, clock: &ManualClock) -> Store {
    options(clock)
        .open_storage(disk.clone())
        .expect("open simulated store")
}

pub fn key(n: u64) -> Key {
    Key::new("client", format!("req-{n}"), "POST /charges").expect("valid key")
}

pub fn claim(store: &Store, key: &Key, request: &[u8]) -> Claim {
    match store.begin(key, request).expect("begin") {
        Begin::Claimed(c) => c,
        other => panic!("expected a claim for {key:?}, got {other:?}"),
    }
}

pub fn completed(store: &Store, key: &Key, request: &[u8]) -> Outcome {
    match store.begin(key, request).expect("begin") {
        Begin::Completed(o) => o,
        other => panic!("expected a completed outcome for {key:?}, got {other:?}"),
    }
}

/// A store on `disk` that never checkpoints on its own.
pub fn uncheckpointed(disk: &SimDisk, clock: &ManualClock) -> Store {
    options(clock)
        .checkpoint_bytes(u64::MAX)
        .open_storage(disk.clone())
        .expect("open simulated store")
}

/// A store on `disk` that never checkpoints on its own, holding `records` completed keys
/// (`key(n)` with request `req` and outcome `outcome-n`).
pub fn filled(disk: &SimDisk, records: u64) -> Store {
    let store = uncheckpointed(disk, &clock());
    for n in 0..records {
        let c = claim(&store, &key(n), b"req");
        store
            .complete(&c, format!("outcome-{n}").as_bytes())
            .expect("complete");
    }
    store
}

/// Claims and completes `key(n)` for every `n` in `keys`, with request `req`.
pub fn complete_all(store: &Store, keys: std::ops::Range<u64>, outcome: &[u8]) {
    for n in keys {
        let c = claim(store, &key(n), b"req");
        store.complete(&c, outcome).expect("complete");
    }
}

/// The name of the newest log segment on `disk`.
pub fn last_segment(disk: &SimDisk) -> String {
    disk.file_names()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .max()
        .expect("a log segment")
}
