//! A read-only open (`Options::read_only`): recovery runs in memory, reads answer, writes are
//! refused, and not one byte of the store's files changes — on a real directory and on the
//! simulated disk.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{claim, clock, completed, filled, key, last_segment, options};
use idemstore::storage::{CrashMode, SimDisk};
use idemstore::{Begin, Error, ExecuteError, Options, RecordState, Store};

/// Bytes that no frame starts with: a torn tail.
const GARBAGE: &[u8] = b"\x01\x02 not a frame, the rest of a write a crash cut short";

/// Every file in `dir` (the lock file included) and its bytes.
fn dir_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// Every file on `disk` and its bytes.
fn disk_snapshot(disk: &SimDisk) -> BTreeMap<String, Vec<u8>> {
    disk.file_names()
        .into_iter()
        .map(|name| {
            let bytes = disk.read_file(&name).unwrap();
            (name, bytes)
        })
        .collect()
}

fn read_only() -> Options {
    options(&clock()).read_only(true)
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    let name = dir_snapshot(dir)
        .into_keys()
        .filter(|n| n.ends_with(".log"))
        .max()
        .expect("a log segment");
    dir.join(name)
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// Asserts that a call was refused with `Error::ReadOnly`.
fn refused<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::ReadOnly) => {}
        other => panic!("{what}: expected Error::ReadOnly, got {other:?}"),
    }
}

fn assert_outcomes(store: &Store, keys: std::ops::Range<u64>) {
    for n in keys {
        assert_eq!(
            completed(store, &key(n), b"req").data(),
            format!("outcome-{n}").as_bytes(),
            "key {n}"
        );
    }
}

/// `count` keys from `from` claimed and completed with `outcome-n`.
fn complete_keys(store: &Store, from: u64, count: u64) {
    for n in from..from + count {
        let c = claim(store, &key(n), b"req");
        store
            .complete(&c, format!("outcome-{n}").as_bytes())
            .unwrap();
    }
}

#[test]
fn a_torn_tail_in_a_directory_is_reported_replayed_in_memory_and_left_on_disk() {
    let live = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = options(&clock()).open(live.path()).unwrap();
    complete_keys(&store, 0, 5);
    store.checkpoint().unwrap();
    complete_keys(&store, 5, 3);
    // What a kill -9 leaves: the files as they are, with the last checkpoint at LSN 10 and
    // 6 log records after it.
    for (name, bytes) in dir_snapshot(live.path()) {
        std::fs::write(image.path().join(name), bytes).unwrap();
    }
    drop(store);
    append(&newest_segment(image.path()), GARBAGE);
    let before = dir_snapshot(image.path());

    let store = read_only().open(image.path()).unwrap();
    let report = store.recovery_report();
    assert!(report.read_only);
    assert_eq!(report.checkpoint_lsn, 10);
    assert_eq!(report.replayed, 6);
    let torn = report.torn_tail.expect("the torn tail is reported");
    assert_eq!(torn.bytes_removed, GARBAGE.len() as u64);
    assert_outcomes(&store, 0..8);
    assert!(store.get(&key(8)).unwrap().is_none());
    let stats = store.stats().unwrap();
    assert_eq!((stats.records, stats.last_lsn), (8, 16));
    store.sync().unwrap();
    store.close().unwrap();
    assert_eq!(
        dir_snapshot(image.path()),
        before,
        "a read-only open changed a file"
    );

    // The next writable open finds the same log, and cuts the tail itself.
    let store = options(&clock()).open(image.path()).unwrap();
    let report = store.recovery_report();
    assert!(!report.read_only);
    assert_eq!(report.replayed, 6);
    assert_eq!(report.torn_tail, Some(torn));
    assert_outcomes(&store, 0..8);
}

#[test]
fn a_torn_tail_on_a_simulated_disk_is_reported_and_left_on_disk() {
    let disk = SimDisk::new("torn");
    let store = filled(&disk, 4);
    disk.power_cut(CrashMode::KeepAll);
    drop(store);
    let segment = last_segment(&disk);
    let mut log = disk.read_file(&segment).unwrap();
    log.extend_from_slice(GARBAGE);
    disk.write_file(&segment, log);
    let before = disk_snapshot(&disk);

    let store = read_only().open_storage(disk.clone()).unwrap();
    let report = store.recovery_report();
    assert!(report.read_only);
    assert_eq!(report.replayed, 8);
    let torn = report.torn_tail.expect("the torn tail is reported");
    assert_eq!(torn.segment, segment);
    assert_eq!(torn.bytes_removed, GARBAGE.len() as u64);
    assert_outcomes(&store, 0..4);
    drop(store);
    assert_eq!(
        disk_snapshot(&disk),
        before,
        "a read-only open changed a file"
    );

    let store = options(&clock()).open_storage(disk.clone()).unwrap();
    assert_eq!(store.recovery_report().torn_tail, Some(torn));
}

#[test]
fn records_a_crash_left_after_the_checkpoint_are_replayed_every_time() {
    let disk = SimDisk::new("replay");
    // Nothing checkpointed since creation: every record is in the log only.
    let store = filled(&disk, 20);
    disk.power_cut(CrashMode::DropUnsynced);
    drop(store);
    let before = disk_snapshot(&disk);

    for _ in 0..2 {
        let store = read_only().open_storage(disk.clone()).unwrap();
        let report = store.recovery_report();
        assert_eq!((report.checkpoint_lsn, report.replayed), (0, 40));
        assert_outcomes(&store, 0..20);
        let mut seen = 0;
        store.for_each(|_| seen += 1).unwrap();
        assert_eq!(seen, 20);
        assert_eq!(store.stats().unwrap().records, 20);
    }
    assert_eq!(disk_snapshot(&disk), before);
    // Nothing was checkpointed: a writable open replays the same.
    let store = options(&clock()).open_storage(disk.clone()).unwrap();
    assert_eq!(store.recovery_report().replayed, 40);
}

#[test]
fn a_damaged_index_is_rebuilt_in_memory_only() {
    let disk = SimDisk::new("rebuild");
    drop(filled(&disk, 5));
    // The whole log is there (its first segment starts at LSN 1): the index can be rebuilt.
    disk.write_file("index.redb", vec![0xAB; 8192]);
    let before = disk_snapshot(&disk);
    let store = read_only().open_storage(disk.clone()).unwrap();
    assert!(store.recovery_report().index_rebuilt);
    assert_outcomes(&store, 0..5);
    drop(store);
    assert_eq!(disk_snapshot(&disk), before);
}

#[test]
fn every_write_is_refused_and_reads_answer() {
    let disk = SimDisk::new("writes");
    let clock = clock();
    let store = options(&clock).open_storage(disk.clone()).unwrap();
    complete_keys(&store, 0, 1);
    let held = claim(&store, &key(1), b"req");
    let expired = claim(&store, &key(2), b"req");
    store.close().unwrap();
    let before = disk_snapshot(&disk);

    let store = options(&clock)
        .read_only(true)
        .open_storage(disk.clone())
        .unwrap();
    // Reads, and answers that write nothing.
    assert!(
        matches!(store.begin(&key(0), b"req").unwrap(), Begin::Completed(o) if o.data() == b"outcome-0")
    );
    assert!(matches!(
        store.begin(&key(0), b"other").unwrap(),
        Begin::Mismatch { .. }
    ));
    assert!(matches!(
        store.begin(&key(1), b"req").unwrap(),
        Begin::InProgress { attempt: 1, .. }
    ));
    let record = store.get(&key(1)).unwrap().unwrap();
    assert!(
        matches!(record.state(), RecordState::InProgress { token, .. } if token == held.token())
    );
    assert_eq!(store.in_progress().unwrap().len(), 2);
    assert!(
        !store.remove(&key(9)).unwrap(),
        "nothing to remove, nothing written"
    );
    store.sync().unwrap();
    let replayed = store.execute(&key(0), b"req", |_| -> Result<Vec<u8>, std::io::Error> {
        panic!("a completed key never runs")
    });
    assert!(matches!(replayed, Ok(idemstore::Execution::Replayed(_))));

    // Every call that would write.
    refused(store.begin(&key(9), b"req"), "begin of a new key");
    refused(store.complete(&held, b"done"), "complete");
    refused(store.extend(&held, Duration::from_secs(60)), "extend");
    refused(store.release(&held), "release");
    refused(store.remove(&key(0)), "remove");
    refused(store.purge_expired(), "purge_expired");
    refused(store.checkpoint(), "checkpoint");
    let mut ran = false;
    match store.execute(&key(9), b"req", |_| {
        ran = true;
        Ok::<_, std::io::Error>(b"ran".to_vec())
    }) {
        Err(ExecuteError::Store(Error::ReadOnly)) => {}
        other => panic!("execute: expected Error::ReadOnly, got {other:?}"),
    }
    assert!(!ran, "execute ran the operation without a claim");
    // A lapsed lease would be taken over: a write.
    clock.advance(Duration::from_secs(11));
    refused(
        store.begin(&key(2), b"req"),
        "begin taking over a lapsed claim",
    );

    // Nothing changed, in memory or on disk.
    assert_eq!(
        store
            .get(&key(0))
            .unwrap()
            .unwrap()
            .outcome()
            .unwrap()
            .data(),
        b"outcome-0"
    );
    assert_eq!(store.stats().unwrap().appended, 0);
    assert_eq!(store.in_progress().unwrap().len(), 2);
    store.close().unwrap();
    assert_eq!(disk_snapshot(&disk), before);

    // The claims are still current for a writable open.
    let store = options(&clock).open_storage(disk.clone()).unwrap();
    assert_eq!(store.complete(&held, b"done").unwrap().data(), b"done");
    assert!(
        matches!(store.begin(&key(2), b"req").unwrap(), Begin::Claimed(c) if c.token() > expired.token())
    );
}

#[test]
fn every_write_is_refused_in_a_directory_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = options(&clock()).open(dir.path()).unwrap();
    complete_keys(&store, 0, 2);
    store.close().unwrap();
    let before = dir_snapshot(dir.path());
    let store = read_only().open(dir.path()).unwrap();
    assert_outcomes(&store, 0..2);
    assert!(matches!(store.begin(&key(5), b"req"), Err(Error::ReadOnly)));
    assert!(matches!(store.remove(&key(1)), Err(Error::ReadOnly)));
    assert!(matches!(store.purge_expired(), Err(Error::ReadOnly)));
    assert!(matches!(store.checkpoint(), Err(Error::ReadOnly)));
    store.close().unwrap();
    assert_eq!(dir_snapshot(dir.path()), before);
}

#[test]
fn no_store_is_not_found_and_nothing_is_created() {
    let parent = tempfile::tempdir().unwrap();
    let not_found = |result: Result<Store, Error>, path: &Path| match result {
        Err(e @ Error::NotFound { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("index.redb"), "{message}");
        }
        other => panic!(
            "{}: expected Error::NotFound, got {other:?}",
            path.display()
        ),
    };

    let missing = parent.path().join("missing").join("store");
    not_found(read_only().open(&missing), &missing);
    assert!(
        !parent.path().join("missing").exists(),
        "a directory was created"
    );

    // An empty directory: no lock file, no index, no segment appears.
    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    not_found(read_only().open(&empty), &empty);
    assert!(
        dir_snapshot(&empty).is_empty(),
        "{:?}",
        dir_snapshot(&empty).keys()
    );

    // A directory with a log segment but no index is not a store either.
    let log_only = parent.path().join("log-only");
    std::fs::create_dir(&log_only).unwrap();
    std::fs::write(log_only.join("00000000000000000001.log"), b"log").unwrap();
    let before = dir_snapshot(&log_only);
    not_found(read_only().open(&log_only), &log_only);
    assert_eq!(dir_snapshot(&log_only), before);

    // A file where the directory should be.
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    not_found(read_only().open(&file), &file);
    not_found(read_only().open(file.join("below")), &file.join("below"));

    let disk = SimDisk::new("empty");
    assert!(matches!(
        read_only().open_storage(disk.clone()),
        Err(Error::NotFound { .. })
    ));
    assert!(disk.file_names().is_empty());
}

#[test]
fn a_held_lock_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let writer = options(&clock()).open(dir.path()).unwrap();
    assert!(matches!(
        read_only().open(dir.path()),
        Err(Error::Locked { .. })
    ));
    drop(writer);
    // A read-only handle holds the lock too: no writer opens beside it.
    let reader = read_only().open(dir.path()).unwrap();
    assert!(matches!(
        options(&clock()).open(dir.path()),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        read_only().open(dir.path()),
        Err(Error::Locked { .. })
    ));
    drop(reader);
    options(&clock()).open(dir.path()).unwrap();

    let disk = SimDisk::new("locked");
    let writer = options(&clock()).open_storage(disk.clone()).unwrap();
    let before = disk_snapshot(&disk);
    match read_only().open_storage(disk.clone()) {
        Err(Error::Locked { path }) => assert!(path.contains("locked"), "{path}"),
        other => panic!("expected Error::Locked, got {other:?}"),
    }
    assert_eq!(disk_snapshot(&disk), before);
    drop(writer);
    read_only().open_storage(disk).unwrap();
}
