//! Shared test helpers.
#![allow(dead_code)]

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
