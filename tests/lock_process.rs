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
