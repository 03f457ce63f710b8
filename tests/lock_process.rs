//! A second process opening the same directory gets `Error::Locked`, and the lock goes away
//! with the process that held it, even when it is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use idemstore::{Error, Store};

const CHILD_ENV: &str = "IDEMSTORE_LOCK_CHILD_DIR";

#[test]
fn lock_holder_child() {
    // Runs only as the child of the test below: open the store, say so, then wait to be killed.
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _store = Store::open(&dir).expect("child opens the store");
    println!("opened");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_second_process_is_locked_out_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.map(|l| l.contains("opened")).unwrap_or(false)),
        "the child did not open the store"
    );
    match Store::open(dir.path()) {
        Err(Error::Locked { path }) => assert!(path.contains(&dir.path().display().to_string())),
        other => panic!("expected Locked while the child holds the store, got {other:?}"),
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs, the kernel drops the lock
    child.wait().unwrap();
    Store::open(dir.path()).expect("the lock died with its holder");
}

#[test]
fn dropping_the_last_handle_unlocks_at_once_while_the_background_thread_works() {
    // The background thread checkpoints every millisecond; a drop that left it holding the
    // store would leave the directory locked for a moment after `drop` returned.
    let dir = tempfile::tempdir().unwrap();
    let options = idemstore::Options::new()
        .checkpoint_interval(Some(std::time::Duration::from_millis(1)))
        .purge_interval(Some(std::time::Duration::from_millis(1)));
    for round in 0..300u32 {
        let store = options
            .clone()
            .open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: reopen after drop: {e:?}"));
        let key = idemstore::Key::new("c", format!("r{round}"), "x").unwrap();
        if let idemstore::Begin::Claimed(claim) = store.begin(&key, b"req").unwrap() {
            store.complete(&claim, b"done").unwrap();
        }
        // Give the background thread time to start a checkpoint of this write.
        std::thread::sleep(std::time::Duration::from_micros(u64::from(round % 7) * 300));
        drop(store);
    }
}
