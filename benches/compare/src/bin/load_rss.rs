//! Memory of a bulk load: `threads` callers claim and complete `n` new keys with
//! `Durability::None` (the harness's load and its purge phase do the same), and the resident
//! set size is printed every 5 s and at the end. It shows what the allocator adds to the
//! store's own memory budgets under many threads (see `docs/benchmarks.md`, "Memory").
//!
//! ```text
//! cargo run --release --bin load_rss -- [--keys N] [--threads T] [--cache BYTES]
//!     [--record-cache BYTES] [--dir DIR]
//! ```
//!
//! Run it with `MALLOC_ARENA_MAX=2` (glibc) to compare.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use idemstore::{Begin, Durability, Key, Options};

/// `VmHWM / VmRSS` of this process, in MiB.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    format!("peak {} MiB, now {} MiB", field("VmHWM:"), field("VmRSS:"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut keys, mut threads) = (2_500_000u64, 32usize);
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
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let outcome = [0x5a; 200];
    thread::scope(|s| {
        let callers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), idemstore::Error> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= keys {
                            return Ok(());
                        }
                        let request = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        let key = Key::new(format!("client-{:09}", i % 1000), request, "POST /")?;
                        if let Begin::Claimed(claim) = store.begin(&key, b"request")? {
                            store.complete(&claim, &outcome)?;
                        }
                    }
                })
            })
            .collect();
        while next.load(Ordering::Relaxed) < keys && callers.iter().any(|c| !c.is_finished()) {
            thread::sleep(Duration::from_secs(5));
            eprintln!(
                "{:6.1} s  {:>9} keys  {}",
                started.elapsed().as_secs_f64(),
                next.load(Ordering::Relaxed).min(keys),
                rss()
            );
        }
        callers
            .into_iter()
            .try_for_each(|c| c.join().expect("a caller panicked"))
    })?;
    let loaded = started.elapsed();
    let stats = store.stats()?;
    println!(
        "{keys} keys with {threads} threads in {:.1} s; {} records; {}",
        loaded.as_secs_f64(),
        stats.records,
        rss()
    );
    store.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
