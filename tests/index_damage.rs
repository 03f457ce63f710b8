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

#[test]
fn flipped_bytes_in_the_index_are_errors_or_caught_by_verify() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let index = std::fs::read(pristine.path().join("index.redb")).unwrap();
    let (mut opened, mut refused, mut misses) = (0, 0, 0);
    let step = (index.len() / 97).max(1);
    for at in (0..index.len()).step_by(step) {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = index.clone();
        damaged[at] ^= 0x5A;
        std::fs::write(dir.path().join("index.redb"), &damaged).unwrap();
        // The index alone, without the log, must still answer truthfully.
        let store = match options(&clock()).open(dir.path()) {
            Ok(store) => store,
            Err(e) => {
                assert!(
                    matches!(e, Error::Corruption { .. } | Error::Io(_) | Error::Index(_)),
                    "offset {at}: {e}"
                );
                refused += 1;
                continue;
            }
        };
        opened += 1;
        let mut missed = false;
        for n in 0..KEYS {
            match store.get(&key(n)) {
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
    println!("{opened} opened, {refused} refused, {misses} with hidden records");
    assert!(opened + refused > 90);
}

#[test]
fn a_truncated_index_is_refused_or_rebuilt_from_the_log_never_wrong() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path());
    let index = std::fs::read(pristine.path().join("index.redb")).unwrap();
    for keep in [0, 1, 100, 4096, index.len() / 2, index.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(pristine.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
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
                matches!(e, Error::Corruption { .. } | Error::Io(_) | Error::Index(_)),
                "kept {keep}: {e}"
            ),
        }
    }
}
