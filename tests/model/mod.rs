//! The model-checking core shared by the crash, I/O-fault and log-decode tests and by the
//! fuzz targets in `fuzz/` (which include this directory with `#[path]`).
//!
//! Each check takes plain bytes and decodes its choices from them ([`input::Input`]), so the
//! same code runs under `cargo test` over seeded pseudo-random inputs ([`run_seeds`]) and
//! under libFuzzer over mutated ones. Every check panics on the first disagreement.
//!
//! - [`crash_recovery`]: clients drive a store on a simulated disk; power cuts strike between
//!   and inside operations and during recovery; the recovered store must hold exactly what
//!   was acknowledged (give or take the one write in flight), with fencing tokens ahead of
//!   every token handed out, and reopening twice must give what reopening once gave.
//! - [`io_faults`]: the same with EIO and ENOSPC injected; a failed write or sync leaves the
//!   handle refusing writes with `Error::PreviousIo`; after a restart the model holds.
//! - [`log_decode`]: arbitrary bytes as a log segment or as damage to a store directory.
#![allow(dead_code)]

pub mod decode;
pub mod format;
pub mod harness;
pub mod input;
pub mod store_model;

use std::ops::{AddAssign, Range};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// The options every model check starts from: the model's lease and retention, and no
/// background thread, so that only the check's own calls touch the disk.
pub fn options(clock: &idemstore::ManualClock) -> idemstore::Options {
    idemstore::Options::new()
        .clock(clock.clone())
        .lease(store_model::LEASE)
        .retention(store_model::RETENTION)
        .purge_interval(None)
        .checkpoint_interval(None)
        .cache_size(4 << 20)
        // About one record per shard of the record cache: lookups hit it, miss it, and
        // evict from it, and records too large for it bypass it.
        .record_cache_size(32 << 10)
        // A few dozen changes: the index receives non-durable commits between checkpoints
        // (applies are due once the queue is over this), as it does under load, so that
        // power cuts strike an index ahead of its last checkpoint.
        .backlog_size(8 << 10)
}

/// Polls `future` to its end on this thread, parking between polls: a minimal executor for
/// the asynchronous calls of the models (std only, so the fuzz targets need nothing more).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => return out,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// Runs the crash model over `data`.
pub fn crash_recovery(data: &[u8]) -> Tally {
    harness::run(harness::Flavor::Crash, data)
}

/// Runs the I/O-fault model over `data`.
pub fn io_faults(data: &[u8]) -> Tally {
    harness::run(harness::Flavor::IoFaults, data)
}

/// Decodes `data` as a log segment or as damage to a store directory, and opens it.
pub fn log_decode(data: &[u8]) -> Tally {
    decode::run(data)
}

/// For the fuzz targets: libfuzzer-sys installs a panic hook that aborts on every panic,
/// even one the store catches (redb panics on some damaged pages; the index turns them into
/// `Error::Corruption`). This hook only reports; a panic that escapes the target still
/// reaches libfuzzer-sys, which aborts and saves the input.
pub fn let_caught_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    });
}

/// What the runs did, to report and to check that they did something.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub runs: u64,
    pub ops: u64,
    /// Power cuts between or inside operations.
    pub crashes: u64,
    /// Opens that failed on an injected fault and were retried, some after another cut.
    pub recovery_crashes: u64,
    /// Reopens without a power cut (a clean drop or a process restart after an error).
    pub restarts: u64,
    pub opens: u64,
    /// Calls that failed on an injected fault.
    pub errors: u64,
    /// Checks that a failed handle refused a claim, a sync and a checkpoint.
    pub refusals_checked: u64,
    /// Recoveries that cut a torn tail.
    pub torn_tails: u64,
    /// Keys whose failed write turned out to have reached the disk.
    pub in_flight_applied: u64,
    pub keys_checked: u64,
    /// Reopens right after a recovery that found nothing to replay and the same state.
    pub stable_reopens: u64,
    /// Damaged inputs that opened, and that were refused with `Corruption` or `Io`.
    pub opened: u64,
    pub refused: u64,
    /// Damaged inputs that opened with the index rebuilt from the log.
    pub rebuilt: u64,
    /// Calls made through the asynchronous API (every other operation), and how many of
    /// them failed.
    pub asynchronous: u64,
    pub asynchronous_failed: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.runs += o.runs;
        self.ops += o.ops;
        self.crashes += o.crashes;
        self.recovery_crashes += o.recovery_crashes;
        self.restarts += o.restarts;
        self.opens += o.opens;
        self.rebuilt += o.rebuilt;
        self.errors += o.errors;
        self.refusals_checked += o.refusals_checked;
        self.torn_tails += o.torn_tails;
        self.in_flight_applied += o.in_flight_applied;
        self.keys_checked += o.keys_checked;
        self.stable_reopens += o.stable_reopens;
        self.opened += o.opened;
        self.asynchronous += o.asynchronous;
        self.asynchronous_failed += o.asynchronous_failed;
        self.refused += o.refused;
    }
}

/// The input [`run_seeds`] gives `check` for `seed` (its length drawn from `len`).
pub fn seed_input(seed: u64, len: Range<usize>) -> Vec<u8> {
    let span = (len.end - len.start).max(1) as u64;
    let n = len.start + input::SplitMix(seed ^ 0x5EED).below(span) as usize;
    input::random_bytes(seed, n)
}

/// Runs `check` over the inputs of seeds `0..count` (lengths drawn from `len`), or of the
/// seeds `IDEMSTORE_MODEL_SEED` and `IDEMSTORE_MODEL_SEEDS` (first seed, how many) name. A
/// failure names its seed, so that it can be replayed alone.
///
/// `IDEMSTORE_MODEL_INPUT=<file>` runs `check` over that file's bytes instead (a fuzzer's
/// crash artifact, say), with an ordinary backtrace.
pub fn run_seeds(test: &str, count: u64, len: Range<usize>, check: fn(&[u8]) -> Tally) -> Tally {
    if let Some(path) = std::env::var_os("IDEMSTORE_MODEL_INPUT") {
        let bytes = std::fs::read(&path).expect("read IDEMSTORE_MODEL_INPUT");
        let tally = check(&bytes);
        eprintln!("{test}: {}: {tally:?}", path.to_string_lossy());
        return tally;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let first = env("IDEMSTORE_MODEL_SEED").unwrap_or(0);
    let count = env("IDEMSTORE_MODEL_SEEDS").unwrap_or(count);
    let mut total = Tally::default();
    for seed in first..first + count {
        let bytes = seed_input(seed, len.clone());
        match catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
            Ok(tally) => total += tally,
            Err(panic) => {
                eprintln!(
                    "{test}: seed {seed} failed; replay it alone with \
                     IDEMSTORE_MODEL_SEED={seed} IDEMSTORE_MODEL_SEEDS=1 cargo test --test {test}"
                );
                resume_unwind(panic);
            }
        }
    }
    eprintln!("{test}: seeds {first}..{}: {total:?}", first + count);
    total
}
