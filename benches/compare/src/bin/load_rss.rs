//! Memory of a bulk load: `threads` callers claim and complete `keys` new keys with
//! `Durability::None`, as the harness's load and its purge phase do (the same keys, op and
//! loader), and the resident set size is printed every 5 s and at the end. It shows what the
//! allocator adds to the store's own memory budgets under many threads (see
//! `docs/benchmarks.md`).
//!
//! ```text
//! cargo run --release --bin load_rss -- [--keys N] [--threads T] [--cache BYTES]
//!     [--record-cache BYTES] [--dir DIR]
//! ```
//!
//! Run it with `MALLOC_ARENA_MAX=2` (glibc) to compare.

// The harness's own modules, shared rather than copied; this binary uses a few of their items.
#[allow(dead_code)]
#[path = "../machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../workload.rs"]
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use idemstore::{Durability, Options};

use workload::{LOAD_THREADS, Res, idem_claim_complete, key, run_all};

/// `peak …, now …` in MiB.
fn memory() -> String {
    format!(
        "peak {} MiB, now {} MiB",
        machine::peak_rss() >> 20,
        machine::status_bytes("VmRSS") >> 20
    )
}

fn main() -> Res<()> {
    let (mut keys, mut threads) = (2_500_000u64, LOAD_THREADS);
    let mut dir = std::env::temp_dir().join("idemstore-load-rss");
    let mut options = Options::new()
        .durability(Durability::None)
        .checkpoint_interval(None)
        .purge_interval(None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--keys" => keys = value.parse()?,
            "--threads" => threads = value.parse()?,
            "--cache" => options = options.cache_size(value.parse()?),
            "--record-cache" => options = options.record_cache_size(value.parse()?),
            "--dir" => dir = PathBuf::from(value),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let store = options.open(&dir)?;
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let loaded = thread::scope(|s| {
        let reporter = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                thread::park_timeout(Duration::from_secs(5));
                eprintln!("{:6.1} s  {}", started.elapsed().as_secs_f64(), memory());
            }
        });
        let loaded = run_all(threads, keys, |i| idem_claim_complete(&store, &key(i)));
        done.store(true, Ordering::Relaxed);
        reporter.thread().unpark();
        loaded
    })?;
    let records = store.stats()?.records;
    println!(
        "{keys} keys with {threads} threads in {:.1} s; {records} records; {}",
        loaded.as_secs_f64(),
        memory()
    );
    store.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
