//! Checkpoints and the commit path: one checkpoint per `checkpoint_bytes` of log, however long
//! a checkpoint's durable index commit takes, and group commits that go on while a checkpoint
//! removes the log segments it made redundant.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use common::hooked::{Hook, Hooked};
use idemstore::storage::FsStorage;
use idemstore::{Durability, Options, Store};

/// Holds every call it is hooked into while closed: a checkpoint's durable commit, or its
/// removal of old segments, that takes as long as the test wants.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: usize,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock();
        state.waiting += 1;
        self.changed.notify_all();
        while state.closed {
            self.changed.wait(&mut state);
        }
        state.waiting -= 1;
    }

    /// A hook that passes this gate.
    fn hook(self: &Arc<Self>) -> Hook {
        let gate = self.clone();
        Arc::new(move || {
            gate.pass();
            Ok(())
        })
    }

    fn set_closed(&self, closed: bool) {
        self.state.lock().closed = closed;
        self.changed.notify_all();
    }

    fn wait_for_a_waiter(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = self.state.lock();
        while state.waiting == 0 {
            assert!(
                !self.changed.wait_until(&mut state, deadline).timed_out(),
                "no call reached the gate"
            );
        }
    }
}

/// Small beside the 1 MiB at which a checkpoint starts a new segment: the log stays in one.
const CHECKPOINT_BYTES: u64 = 128 << 10;

/// The bytes of the log segments in `dir` (read from the files: `stats` would wait for a
/// running checkpoint).
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// Claims and completes new keys until `bytes` more of log are written.
fn write_log(store: &Store, dir: &Path, next: &mut u64, bytes: u64) {
    let start = log_bytes(dir);
    while log_bytes(dir) < start + bytes {
        for _ in 0..64 {
            let key = common::key(*next);
            *next += 1;
            let claim = common::claim(store, &key, b"request");
            store.complete(&claim, &[7; 200]).expect("complete");
        }
    }
}

/// Waits until `store` has made `n` checkpoints, then a little longer for any it should not.
fn settled_checkpoints(store: &Store, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.stats().expect("stats").checkpoints < n {
        assert!(Instant::now() < deadline, "checkpoint {n} never came");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(300));
    store.stats().expect("stats").checkpoints
}

#[test]
fn batches_committed_while_a_checkpoint_runs_do_not_ask_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Gate::default());
    let storage = Hooked {
        index_sync: gate.hook(),
        ..Hooked::new(FsStorage::new(dir.path()).expect("storage"))
    };
    let store = Options::new()
        .durability(Durability::Immediate)
        .checkpoint_bytes(CHECKPOINT_BYTES)
        .checkpoint_interval(None)
        // A background thread, which the leaders hand their checkpoints to.
        .purge_interval(Some(Duration::from_secs(3600)))
        .segment_size(1 << 30)
        .open_storage(storage)
        .expect("open");
    let before = store.stats().expect("stats").checkpoints;
    let mut next = 0;

    gate.set_closed(true);
    write_log(&store, dir.path(), &mut next, CHECKPOINT_BYTES);
    // The checkpoint has taken what was queued and waits in its durable commit; the writers
    // go on meanwhile, with less than another checkpoint's worth of log.
    gate.wait_for_a_waiter();
    write_log(&store, dir.path(), &mut next, CHECKPOINT_BYTES / 2);
    gate.set_closed(false);
    assert_eq!(
        settled_checkpoints(&store, before + 1),
        before + 1,
        "half a checkpoint's worth of log, written while one ran, made another"
    );

    // Pacing still works afterwards: another checkpoint's worth brings exactly one more.
    write_log(&store, dir.path(), &mut next, CHECKPOINT_BYTES);
    assert_eq!(settled_checkpoints(&store, before + 2), before + 2);
    store.close().expect("close");
}

#[test]
fn writes_go_on_while_a_checkpoint_removes_old_segments() {
    const SEGMENT: u64 = 64 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Gate::default());
    let storage = Hooked {
        remove: gate.hook(),
        ..Hooked::new(FsStorage::new(dir.path()).expect("storage"))
    };
    let store = Options::new()
        .durability(Durability::Immediate)
        .checkpoint_bytes(u64::MAX)
        .checkpoint_interval(None)
        .purge_interval(None)
        .segment_size(SEGMENT)
        .open_storage(storage)
        .expect("open");
    let mut next = 0;
    write_log(&store, dir.path(), &mut next, 4 * SEGMENT);
    let segments = store.stats().expect("stats").segments;
    assert!(segments >= 4, "{segments} segments");

    // The checkpoint stops in the removal of the first segment behind it (and, before the
    // fix, held the log writer's lock meanwhile).
    gate.set_closed(true);
    let checkpointing = {
        let store = store.clone();
        thread::spawn(move || store.checkpoint())
    };
    gate.wait_for_a_waiter();
    let (done, went_on) = mpsc::channel();
    let writing = {
        let store = store.clone();
        let key = common::key(next);
        thread::spawn(move || {
            let claim = common::claim(&store, &key, b"request");
            let written = store.complete(&claim, b"done").map(drop);
            let _ = done.send(());
            written
        })
    };
    let went_on = went_on.recv_timeout(Duration::from_secs(10)).is_ok();
    gate.set_closed(false);
    checkpointing.join().expect("join").expect("checkpoint");
    writing.join().expect("join").expect("write");
    assert!(
        went_on,
        "a write waited for the checkpoint to delete old segments"
    );
    assert_eq!(store.stats().expect("stats").segments, 1);
    store.close().expect("close");
}
