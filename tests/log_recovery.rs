//! Torn tails are cut and reported; damage before valid, synced records is corruption.

mod common;

use common::{claim, clock, completed, filled, key, last_segment, options, sim_store};
use idemstore::Error;
use idemstore::storage::SimDisk;

/// A crashed store whose log holds every record (no checkpoint since creation).
fn log_only_store(records: u64) -> (SimDisk, String) {
    let disk = SimDisk::new("t");
    drop(filled(&disk, records));
    let segment = last_segment(&disk);
    (disk, segment)
}

/// A store image whose index is empty and whose log holds `records` completed keys.
fn unreplayed(records: u64) -> (SimDisk, Vec<u8>, String) {
    let (disk, segment) = log_only_store(records);
    let log = disk.read_file(&segment).unwrap();
    // A fresh disk with only the log: the index is rebuilt from it on open.
    let image = SimDisk::new("image");
    image.write_file(&segment, log.clone());
    (image, log, segment)
}

#[test]
fn a_log_alone_rebuilds_the_index() {
    let (image, _, _) = unreplayed(10);
    let clock = clock();
    let store = sim_store(&image, &clock);
    assert!(store.recovery_report().created);
    assert_eq!(store.recovery_report().replayed, 20);
    for n in 0..10 {
        assert_eq!(
            completed(&store, &key(n), b"req").data(),
            format!("outcome-{n}").as_bytes()
        );
    }
}

#[test]
fn a_torn_last_record_is_cut_off_and_reported() {
    let (_, log, segment) = unreplayed(3);
    let clock = clock();
    for cut in 1..60 {
        let image = SimDisk::new("image");
        image.write_file(&segment, log[..log.len() - cut].to_vec());
        let store = sim_store(&image, &clock);
        let report = store.recovery_report();
        let torn = report.torn_tail.expect("torn tail reported");
        assert_eq!(torn.segment, segment);
        assert_eq!(torn.bytes_removed + torn.offset, (log.len() - cut) as u64);
        // The last completion is torn: key 2 is claimed but not completed; 0 and 1 replay.
        assert_eq!(completed(&store, &key(0), b"req").data(), b"outcome-0");
        assert_eq!(completed(&store, &key(1), b"req").data(), b"outcome-1");
        assert!(store.get(&key(2)).unwrap().unwrap().outcome().is_none());
        // The cut is durable: a second open finds a clean log.
        drop(store);
        let store = sim_store(&image, &clock);
        assert_eq!(store.recovery_report().torn_tail, None);
    }
}

#[test]
fn a_zeroed_tail_is_cut_off() {
    let (_, mut log, segment) = unreplayed(3);
    log.extend_from_slice(&[0u8; 4096]);
    let image = SimDisk::new("image");
    image.write_file(&segment, log.clone());
    let store = sim_store(&image, &clock());
    let torn = store.recovery_report().torn_tail.unwrap();
    assert_eq!(torn.bytes_removed, 4096);
    assert_eq!(torn.frames_discarded, 0);
    assert_eq!(completed(&store, &key(2), b"req").data(), b"outcome-2");
}

#[test]
fn damage_followed_by_records_that_prove_it_was_synced_is_corruption() {
    let (_, log, segment) = unreplayed(8);
    // Flip a byte inside the first frame's payload: later frames record that it was synced.
    let mut damaged = log.clone();
    damaged[32 + 40] ^= 0x55;
    let image = SimDisk::new("image");
    image.write_file(&segment, damaged);
    match options(&clock()).open_storage(image.clone()) {
        Err(Error::Corruption { what, location }) => {
            assert!(what.contains("synced"), "{what}");
            assert!(location.contains(&segment), "{location}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was changed: the log is still the damaged one.
    assert_eq!(image.read_file(&segment).unwrap().len(), log.len());
}

#[test]
fn a_damaged_index_record_is_corruption_not_a_wrong_outcome() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let store = options(&clock).open(dir.path()).unwrap();
    let c = claim(&store, &key(1), b"req");
    let marker = b"UNIQUE-OUTCOME-MARKER-0123456789";
    store.complete(&c, marker).unwrap();
    store.close().unwrap();
    // Both the log and the index hold the outcome; damage the index copy.
    let path = dir.path().join("index.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("outcome stored in the index");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let store = options(&clock).open(dir.path()).unwrap();
    assert!(matches!(store.get(&key(1)), Err(Error::Corruption { .. })));
    assert!(matches!(
        store.begin(&key(1), b"req"),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = options(&clock)
        .checkpoint_bytes(u64::MAX)
        .segment_size(4096)
        .open_storage(disk.clone())
        .unwrap();
    for n in 0..60 {
        let c = claim(&store, &key(n), b"req");
        store.complete(&c, &[7u8; 100]).unwrap();
    }
    let mut segments: Vec<_> = disk
        .file_names()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let image = SimDisk::new("image");
    for name in segments.iter().filter(|n| *n != &segments[1]) {
        image.write_file(name, disk.read_file(name).unwrap());
    }
    assert!(matches!(
        options(&clock).open_storage(image),
        Err(Error::Corruption { .. })
    ));
}
