//! Damage anywhere in the index file never panics and never yields a wrong outcome. redb keeps
//! no checksum it verifies on reads, so damage to a page's keys can hide a record (a miss):
//! `verify` must report every such store as damaged.

mod common;

use common::{claim, clock, key, options};
use idemstore::{Error, Store, verify_dir};

const KEYS: u64 = 150;

fn build(dir: &std::path::Path) {
    let store = options(&clock()).open(dir).unwrap();
    for n in 0..KEYS {
        let c = claim(&store, &key(n), b"req");
        store
            .complete(&c, format!("outcome-{n:04}").as_bytes())
            .unwrap();
    }
    store.close().unwrap();
}

/// Copies the store in `from` to `to`, with or without its log.
fn copy_store(from: &std::path::Path, to: &std::path::Path, with_log: bool) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if with_log || name == "index.redb" {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

/// Flips a byte at ~100 offsets of the index and opens each copy: it must be refused with a
/// typed error, rebuilt from the log (only when the whole log is there), or answer every key
/// truthfully, with any hidden record reported by `verify`. With `verify_on_open`
/// (`Options::verify_index_on_open`), no record may be hidden at all: the open checks every
/// page.
fn flip_bytes(with_log: bool, verify_on_open: bool) {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let index = std::fs::read(pristine.path().join("index.redb")).unwrap();
    let (mut opened, mut refused, mut rebuilt, mut misses) = (0, 0, 0, 0);
    let step = (index.len() / 97).max(1);
    for at in (0..index.len()).step_by(step) {
        let dir = tempfile::tempdir().unwrap();
        copy_store(pristine.path(), dir.path(), with_log);
        let mut damaged = index.clone();
        damaged[at] ^= 0x5A;
        std::fs::write(dir.path().join("index.redb"), &damaged).unwrap();
        let opened_store = options(&clock())
            .verify_index_on_open(verify_on_open)
            .open(dir.path());
        let store = match opened_store {
            Ok(store) => store,
            Err(e) => {
                assert!(
                    matches!(e, Error::Corruption { .. } | Error::Io(_)),
                    "offset {at}: {e}"
                );
                // What a verified open finds, `verify` finds too (it runs the same check).
                if verify_on_open {
                    let report = verify_dir(dir.path());
                    assert!(
                        !matches!(&report, Ok(r) if r.is_clean()),
                        "offset {at}: the open refused it and verify found nothing: {report:?}"
                    );
                }
                refused += 1;
                continue;
            }
        };
        opened += 1;
        let was_rebuilt = store.recovery_report().index_rebuilt;
        assert!(
            with_log || !was_rebuilt,
            "offset {at}: rebuilt without a log"
        );
        rebuilt += u64::from(was_rebuilt);
        let mut missed = false;
        for n in 0..KEYS {
            // The borrowed lookup decodes and verifies in place: it agrees with `get`.
            let borrowed = store.get_with(&key(n), |r| {
                r.and_then(|r| r.outcome_data()).map(<[u8]>::to_vec)
            });
            let owned = store.get(&key(n));
            match (&borrowed, &owned) {
                (Ok(b), Ok(o)) => assert_eq!(
                    b.as_deref(),
                    o.as_ref()
                        .map(|r| r.outcome().expect("completed").data().to_vec())
                        .as_deref(),
                    "offset {at}: get_with and get disagree on key {n}"
                ),
                (Err(_), Err(_)) => {}
                _ => panic!("offset {at}: key {n}: get_with {borrowed:?}, get {owned:?}"),
            }
            match owned {
                Ok(Some(record)) => {
                    let outcome = record.outcome().expect("completed");
                    assert_eq!(
                        outcome.data(),
                        format!("outcome-{n:04}").as_bytes(),
                        "offset {at}: wrong outcome for key {n}"
                    );
                }
                Ok(None) => missed = true,
                Err(_) => {}
            }
        }
        assert!(
            !(was_rebuilt && missed),
            "offset {at}: rebuilt from the whole log yet a record is missing"
        );
        assert!(
            !(verify_on_open && missed),
            "offset {at}: a verified open hid a record"
        );
        drop(store);
        if missed {
            misses += 1;
            let report = verify_dir(dir.path());
            assert!(
                !matches!(&report, Ok(r) if r.is_clean()),
                "offset {at}: a record vanished and verify found nothing: {report:?}"
            );
        }
    }
    println!(
        "{opened} opened ({rebuilt} rebuilt), {refused} refused, {misses} with hidden records"
    );
    assert!(opened + refused > 90);
    if with_log {
        assert!(rebuilt > 0, "no flipped byte made redb refuse the index");
    }
}

#[test]
fn flipped_bytes_in_an_index_without_its_log_are_errors_or_caught_by_verify() {
    flip_bytes(false, false);
}

#[test]
fn flipped_bytes_in_an_index_beside_its_whole_log_are_rebuilt_errors_or_caught_by_verify() {
    flip_bytes(true, false);
}

#[test]
fn flipped_bytes_in_an_index_verified_on_open_are_errors_or_rebuilt_never_a_hidden_record() {
    flip_bytes(false, true);
    flip_bytes(true, true);
}

#[test]
fn a_truncated_index_is_refused_or_rebuilt_from_the_log_never_wrong() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let index = std::fs::read(pristine.path().join("index.redb")).unwrap();
    for keep in [0, 1, 100, 4096, index.len() / 2, index.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        copy_store(pristine.path(), dir.path(), true);
        std::fs::write(dir.path().join("index.redb"), &index[..keep]).unwrap();
        match Store::open(dir.path()) {
            Ok(store) => {
                for n in 0..KEYS {
                    if let Ok(Some(r)) = store.get(&key(n)) {
                        assert_eq!(
                            r.outcome().unwrap().data(),
                            format!("outcome-{n:04}").as_bytes()
                        );
                    }
                }
            }
            Err(e) => assert!(
                matches!(e, Error::Corruption { .. } | Error::Io(_)),
                "kept {keep}: {e}"
            ),
        }
    }
}

/// Found by the `log_decode` fuzzer (in CI's 60 s): a damaged version byte in a commit slot of
/// the index header that names redb's file format 1 or 2. redb asks for an upgrade; idemstore
/// has only ever written format 3, so it is damage. Without the log the store refuses it as
/// `Corruption` (so do `verify`); beside the whole log it rebuilds the index and loses nothing.
#[test]
fn an_index_header_naming_an_old_redb_format_is_corruption_not_an_upgrade() {
    // redb's header: two 128-byte commit slots at offsets 64 and 192, version byte first.
    const SLOTS: [usize; 2] = [64, 192];
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let index = std::fs::read(pristine.path().join("index.redb")).unwrap();
    assert!(SLOTS.iter().all(|&at| index[at] == 3), "redb file format 3");
    for old in [1u8, 2] {
        for with_log in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            copy_store(pristine.path(), dir.path(), with_log);
            let mut damaged = index.clone();
            for at in SLOTS {
                damaged[at] = old;
            }
            std::fs::write(dir.path().join("index.redb"), &damaged).unwrap();
            if !with_log {
                let verified = verify_dir(dir.path());
                assert!(
                    matches!(verified, Err(Error::Corruption { .. })),
                    "format {old}: verify gave {verified:?}"
                );
            }
            match options(&clock()).open(dir.path()) {
                Err(Error::Corruption { what, .. }) => {
                    assert!(
                        !with_log,
                        "format {old}: refused beside its whole log: {what}"
                    );
                    assert!(what.contains("upgrade"), "format {old}: {what}");
                }
                Err(e) => panic!("format {old}, log {with_log}: {e:?}, not Corruption"),
                Ok(store) => {
                    assert!(with_log, "format {old}: opened without its log");
                    assert!(store.recovery_report().index_rebuilt);
                    for n in 0..KEYS {
                        let record = store.get(&key(n)).unwrap().expect("rebuilt record");
                        assert_eq!(
                            record.outcome().unwrap().data(),
                            format!("outcome-{n:04}").as_bytes()
                        );
                    }
                }
            }
        }
    }
}

/// The record cache, warmed at open, answers every key as a lookup through the damaged index
/// does (found by CI, where a background warming filled the cache between two lookups): a
/// scan of a damaged B-tree can reach a leaf a lookup cannot, and the other way round, so the
/// warming caches what a lookup returns, not what the scan saw. On the simulated disk the
/// warming runs before the open returns; the same image opened with the cache off is the
/// reference.
#[test]
fn a_warmed_record_cache_answers_as_lookups_through_a_damaged_index_do() {
    use idemstore::storage::SimDisk;
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(pristine.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "LOCK")
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    let index = &files.iter().find(|(n, _)| n == "index.redb").unwrap().1;
    let answers = |at: usize, cache: usize| -> Option<Vec<String>> {
        let disk = SimDisk::new("damaged");
        for (name, bytes) in &files {
            let mut bytes = bytes.clone();
            if name == "index.redb" {
                bytes[at] ^= 0x5A;
            } else if !name.ends_with(".log") {
                continue;
            }
            disk.write_file(name, bytes);
        }
        let store = options(&clock())
            .record_cache_size(cache)
            .open_storage(disk)
            .ok()?;
        let answers = (0..KEYS)
            .map(|n| match store.get(&key(n)) {
                Ok(found) => format!("{found:?}"),
                Err(e) => format!(
                    "error, corruption: {}",
                    matches!(e, Error::Corruption { .. })
                ),
            })
            .collect();
        Some(answers)
    };
    let (mut compared, mut cached) = (0, 0);
    let step = (index.len() / 97).max(1);
    for at in (0..index.len()).step_by(step) {
        let (Some(warm), Some(reference)) = (answers(at, 64 << 20), answers(at, 0)) else {
            continue;
        };
        if let Some(n) = (0..warm.len()).find(|&n| warm[n] != reference[n]) {
            panic!(
                "offset {at}, key {n}: cached {} but a lookup gives {}",
                warm[n], reference[n]
            );
        }
        compared += 1;
        cached += warm.iter().filter(|a| a.starts_with("Some")).count();
    }
    assert!(
        compared > 50 && cached > 1000,
        "{compared} images, {cached} records"
    );
}

#[test]
fn an_undamaged_index_verified_on_open_keeps_every_record_and_reports_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    for verify in [false, true, false] {
        let store = options(&clock())
            .verify_index_on_open(verify)
            .open(dir.path())
            .unwrap();
        let report = store.recovery_report();
        assert_eq!(report.index_repaired, verify, "verify {verify}");
        assert!(!report.index_rebuilt);
        for n in 0..KEYS {
            let record = store.get(&key(n)).unwrap().expect("a kept record");
            assert_eq!(
                record.outcome().unwrap().data(),
                format!("outcome-{n:04}").as_bytes()
            );
        }
        store.close().unwrap();
    }
}
