//! What each durability mode survives, on the simulated disk.

mod common;

use std::time::{Duration, Instant};

use common::{claim, clock, completed, key, options, sim_store};
use idemstore::Durability;
use idemstore::storage::{CrashMode, SimDisk};

fn complete_keys(store: &idemstore::Store, range: std::ops::Range<u64>) {
    for n in range {
        let c = claim(store, &key(n), b"req");
        store.complete(&c, format!("o{n}").as_bytes()).unwrap();
    }
}

/// Every key of `range` replays the outcome `complete_keys` gave it.
fn assert_completed(store: &idemstore::Store, range: std::ops::Range<u64>) {
    for n in range {
        assert_eq!(
            completed(store, &key(n), b"req").data(),
            format!("o{n}").as_bytes()
        );
    }
}

#[test]
fn immediate_survives_a_power_cut_right_after_the_ack() {
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock());
    complete_keys(&store, 0..10);
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = sim_store(&disk, &clock());
    assert_completed(&store, 0..10);
}

/// A store on `disk` in `Durability::Periodic(interval)`.
fn periodic_store(disk: &SimDisk, interval: Duration) -> idemstore::Store {
    options(&clock())
        .durability(Durability::Periodic(interval))
        .open_storage(disk.clone())
        .unwrap()
}

#[test]
fn periodic_survives_kill_at_once_and_power_loss_after_its_interval() {
    let disk = SimDisk::new("t");
    let store = periodic_store(&disk, Duration::from_millis(20));
    assert!(disk.is_synced(), "open left something unsynced");
    complete_keys(&store, 0..10);
    // Wait for the background sync to cover the writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.is_synced() {
        assert!(Instant::now() < deadline, "no periodic sync happened");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(store.stats().unwrap().syncs > 0, "the sync was not counted");
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = sim_store(&disk, &clock());
    assert_completed(&store, 0..10);
}

#[test]
fn periodic_acknowledges_before_its_sync() {
    let disk = SimDisk::new("t");
    let store = periodic_store(&disk, Duration::from_secs(3600));
    complete_keys(&store, 0..10);
    assert!(
        !disk.is_synced(),
        "periodic mode synced before its interval"
    );
    // kill -9: the page cache survives, and so does everything acknowledged.
    disk.power_cut(CrashMode::KeepAll);
    drop(store);
    let store = sim_store(&disk, &clock());
    assert_completed(&store, 0..10);
}

#[test]
fn none_survives_kill_and_what_sync_covered_but_never_invents() {
    let disk = SimDisk::new("t");
    let store = options(&clock())
        .durability(Durability::None)
        .open_storage(disk.clone())
        .unwrap();
    complete_keys(&store, 0..10);
    store.sync().unwrap();
    complete_keys(&store, 10..20);
    // kill -9: the page cache survives, so everything acknowledged does.
    disk.power_cut(CrashMode::KeepAll);
    drop(store);
    let killed = sim_store(&disk, &clock());
    for n in 0..20 {
        assert!(
            killed.get(&key(n)).unwrap().is_some(),
            "kill -9 lost key {n}"
        );
    }

    // Power loss: what `sync` covered survives; the rest may not, but nothing is invented.
    let disk = SimDisk::new("t2");
    let store = options(&clock())
        .durability(Durability::None)
        .open_storage(disk.clone())
        .unwrap();
    complete_keys(&store, 0..10);
    store.sync().unwrap();
    complete_keys(&store, 10..20);
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = sim_store(&disk, &clock());
    assert_completed(&store, 0..10);
    for n in 10..20 {
        if let Some(r) = store.get(&key(n)).unwrap()
            && let Some(o) = r.outcome()
        {
            assert_eq!(o.data(), format!("o{n}").as_bytes());
        }
    }
}
