//! The crash model over fixed seeds: power cuts between and inside operations and during
//! recovery, on a simulated disk, against a model of what was acknowledged. The same core runs
//! under libFuzzer as `fuzz/fuzz_targets/crash_recovery.rs`.
//!
//! Run longer: `IDEMSTORE_MODEL_SEEDS=5000 cargo test --release --test crash_model`.

mod model;

#[test]
fn acknowledged_state_survives_power_cuts() {
    let tally = model::run_seeds("crash_model", 45, 200..1200, model::crash_recovery);
    // The runs did what they are for: without this a decoder bug could make them vacuous.
    assert!(tally.runs > 0);
    assert!(
        tally.crashes >= 5 * tally.runs,
        "too few power cuts: {tally:?}"
    );
    assert!(
        tally.recovery_crashes > 0,
        "recovery never interrupted: {tally:?}"
    );
    assert!(
        tally.in_flight_applied > 0,
        "no failed write reached the disk: {tally:?}"
    );
    assert!(
        tally.stable_reopens > 0,
        "no second reopen checked: {tally:?}"
    );
    assert!(
        tally.keys_checked > 100 * tally.runs,
        "too few keys checked: {tally:?}"
    );
    assert!(
        tally.asynchronous > 10 * tally.runs,
        "too few asynchronous calls: {tally:?}"
    );
}

use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{Begin, Durability, Error, Key, ManualClock, Options};

fn options(clock: &ManualClock) -> Options {
    model::options(clock)
        .durability(Durability::Immediate)
        .checkpoint_bytes(u64::MAX)
}

fn key(n: u32) -> Key {
    Key::new("c", format!("k{n}"), "x").expect("valid key")
}

fn fault(op: Op, sticky: bool) -> Fault {
    Fault {
        op,
        skip: 0,
        error: FaultError::Eio,
        sticky,
    }
}

/// Nothing was ever acknowledged by a store whose creation failed; a crash there must not
/// leave a directory that can never be opened.
#[test]
fn a_store_whose_creation_was_cut_short_opens_again() {
    let clock = ManualClock::new(model::store_model::start_time());
    let mut bricked = Vec::new();
    for seed in 0..32 {
        let disk = SimDisk::new("creation");
        disk.inject(fault(Op::Sync, true));
        let first = options(&clock).open_storage(disk.clone());
        assert!(matches!(first, Err(Error::Io(_))), "{first:?}");
        disk.power_cut(CrashMode::Random(seed));
        disk.clear_faults();
        if let Err(e) = options(&clock).open_storage(disk.clone()) {
            bricked.push(format!("Random({seed}): {e}"));
        }
    }
    assert!(
        bricked.is_empty(),
        "unopenable after a cut creation: {bricked:#?}"
    );
}

/// A restart after a failed sync replays records that are in the page cache but were never
/// synced. Records written after that carry "synced through" LSNs that cover them; unless
/// recovery syncs what it replayed, a power cut can tear the replayed records while keeping a
/// later one, and the next open takes the torn tail for corruption.
#[test]
fn records_replayed_from_the_page_cache_are_synced_before_later_records_vouch_for_them() {
    let clock = ManualClock::new(model::store_model::start_time());
    let mut refused = Vec::new();
    for seed in 0..64 {
        let disk = SimDisk::new("replayed");
        let store = options(&clock).open_storage(disk.clone()).expect("open");
        let Begin::Claimed(c) = store.begin(&key(1), b"r").expect("begin") else {
            panic!("not claimed");
        };
        store.complete(&c, b"acknowledged").expect("complete");
        // B: written, its sync fails; the process restarts with the page cache intact.
        disk.inject(fault(Op::Sync, false));
        assert!(store.begin(&key(2), b"r").is_err());
        drop(store);
        let store = options(&clock).open_storage(disk.clone()).expect("reopen");
        assert_eq!(
            store.recovery_report().replayed,
            3,
            "the claim, the completion and B were replayed"
        );
        // C: written after recovery, its sync fails too; then the power goes.
        disk.inject(fault(Op::Sync, false));
        assert!(store.begin(&key(3), b"r").is_err());
        disk.power_cut(CrashMode::Random(seed));
        drop(store);
        match options(&clock).open_storage(disk.clone()) {
            Ok(store) => {
                let replay = store.begin(&key(1), b"r").expect("begin");
                assert!(
                    matches!(&replay, Begin::Completed(o) if o.data() == b"acknowledged"),
                    "seed {seed}: {replay:?}"
                );
            }
            Err(e) => refused.push(format!("Random({seed}): {e}")),
        }
    }
    assert!(refused.is_empty(), "refused after a crash: {refused:#?}");
}

/// A segment whose creation failed at the directory sync (its name not yet durable) is
/// adopted as the log's tail by the next open. Unless recovery makes the directory durable,
/// records acknowledged into that segment vanish with it in a power cut. Found by the
/// `io_faults` fuzzer.
#[test]
fn a_segment_left_by_a_failed_roll_is_made_durable_before_it_is_written() {
    let clock = ManualClock::new(model::store_model::start_time());
    let disk = SimDisk::new("roll");
    let store = options(&clock)
        .segment_size(4096)
        .open_storage(disk.clone())
        .expect("open");
    // Only a segment roll syncs the directory while writing: make the next one fail there.
    disk.inject(fault(Op::SyncDir, false));
    let segments = disk.file_names().len();
    let mut n = 0;
    while store.begin(&key(n), b"r").is_ok() {
        n += 1;
        assert!(n < 1000, "no roll happened");
    }
    assert_eq!(
        disk.file_names().len(),
        segments + 1,
        "the failed roll left its segment"
    );
    drop(store);
    // A restart: no power cut, the new segment is still there, its name not durable.
    let store = options(&clock)
        .segment_size(4096)
        .open_storage(disk.clone())
        .expect("reopen");
    let Begin::Claimed(c) = store.begin(&key(5000), b"r").expect("begin") else {
        panic!("not claimed");
    };
    store.complete(&c, b"acknowledged").expect("complete");
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let store = options(&clock)
        .open_storage(disk.clone())
        .expect("reopen after the cut");
    let replay = store.begin(&key(5000), b"r").expect("begin");
    assert!(
        matches!(&replay, Begin::Completed(o) if o.data() == b"acknowledged"),
        "an acknowledged completion was lost: {replay:?}"
    );
}
