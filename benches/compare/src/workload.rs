//! The workload every engine runs: keys, values, timed loops and latency percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use idemstore::{Begin, Key, Store};

use crate::machine::{cpu_between, thread_cpu};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The stored outcome of every completed operation.
pub const OUTCOME: [u8; 200] = [0x5a; 200];
/// The request body whose fingerprint idemstore stores (others store a fixed 32-byte hash).
pub const REQUEST: &[u8] =
    b"{\"amount\":1000,\"currency\":\"EUR\",\"customer\":\"cus_0123456789\"}";
pub const FINGERPRINT: [u8; 32] = [0x11; 32];
/// Bytes of an idemstore record holding `OUTCOME` (70 bytes of header and CRC): raw redb
/// stores values of this size so that both B-trees carry the same bytes.
pub const RECORD_BYTES: usize = 70 + OUTCOME.len();
/// Bytes of an idemstore claim record (no outcome).
pub const CLAIM_BYTES: usize = 70;
pub const LEASE_MS: u64 = 60_000;
pub const RETENTION_MS: u64 = 24 * 3600 * 1000;

/// splitmix64: spreads request ids over the key space like random idempotency keys.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key number `i`: 48 bytes encoded (16-byte client | 16-byte request id | 13-byte resource,
/// plus three length bytes). Every engine stores `key(i).as_bytes()`.
pub fn key(i: u64) -> Key {
    let client = format!("client-{:09}", i % 1_000);
    let request = format!("{:016x}", mix(i));
    Key::new(client, request, "POST /charges").expect("a valid key")
}

/// Threads used to load warm keys through an engine's ordinary write path.
pub const LOAD_THREADS: usize = 32;

/// idemstore's claim+complete of a new `key`: `begin`, then `complete` with [`OUTCOME`].
pub fn idem_claim_complete(store: &Store, key: &Key) -> Res<()> {
    match store.begin(key, REQUEST)? {
        Begin::Claimed(claim) => {
            store.complete(&claim, &OUTCOME)?;
            Ok(())
        }
        other => Err(format!("expected a claim of a new key, got {other:?}").into()),
    }
}

/// Keys never loaded: a separate range far above any loaded or written key.
pub const MISS_BASE: u64 = 1 << 60;

/// Hands out key numbers never used before, for writes on new keys.
pub struct Fresh(AtomicU64);

impl Fresh {
    pub fn new(start: u64) -> Fresh {
        Fresh(AtomicU64::new(start))
    }
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// The first of `n` consecutive numbers never used before.
    pub fn reserve(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed)
    }
}

/// Latency samples in nanoseconds and the throughput of one measured run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub ops: u64,
    pub elapsed: Duration,
    pub samples: Vec<u64>,
    pub errors: u64,
    /// CPU seconds (user, system) per thread name over the measured time, busiest first: where
    /// the machine's cores went (see [`crate::machine::thread_cpu`]).
    pub cpu: Vec<(String, f64, f64)>,
}

impl Measured {
    /// Where the CPU went, per op: each busy thread name's microseconds of CPU per op (and the
    /// system share of them), then the total and the cores it kept busy. Empty without ops.
    pub fn cpu_per_op(&self) -> String {
        if self.ops == 0 || self.cpu.is_empty() {
            return String::new();
        }
        let per_op = |secs: f64| secs * 1e6 / self.ops as f64;
        let mut parts: Vec<String> = self
            .cpu
            .iter()
            .filter(|(_, u, s)| per_op(u + s) >= 0.005)
            .map(|(name, u, s)| {
                format!(
                    "{name} {} µs ({:.0}% sys)",
                    micros(per_op(u + s)),
                    100.0 * s / (u + s)
                )
            })
            .collect();
        let total: f64 = self.cpu.iter().map(|(_, u, s)| u + s).sum();
        parts.push(format!(
            "total {} µs, {:.2} cores busy",
            micros(per_op(total)),
            total / self.elapsed.as_secs_f64().max(1e-9)
        ));
        format!("CPU per op: {}", parts.join(", "))
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latency samples, in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let at = ((self.samples.len() - 1) as f64 * q).round() as usize;
        self.samples[at.min(self.samples.len() - 1)] as f64 / 1000.0
    }

    fn merge(parts: Vec<Measured>, elapsed: Duration, cpu: Vec<(String, f64, f64)>) -> Measured {
        let mut all = Measured {
            elapsed,
            cpu,
            ..Measured::default()
        };
        for p in parts {
            all.ops += p.ops;
            all.errors += p.errors;
            all.samples.extend(p.samples);
        }
        all.samples.sort_unstable();
        all
    }
}

/// Microseconds with one decimal, or two below 1 µs (lookups cost a fraction of one).
fn micros(us: f64) -> String {
    if us < 1.0 {
        format!("{us:.2}")
    } else {
        format!("{us:.1}")
    }
}

/// One caller's count of ops, errors and latency samples; counting starts once `measuring`
/// is set (after the warm-up).
#[derive(Default)]
struct Tally {
    m: Measured,
    counting: bool,
}

impl Tally {
    /// Called before an op: when to time it from, if it is counted and sampled.
    fn start(&mut self, measuring: &AtomicBool, sample: bool) -> Option<Instant> {
        if !self.counting && measuring.load(Ordering::Relaxed) {
            self.counting = true;
            self.m = Measured::default();
        }
        (self.counting && sample).then(Instant::now)
    }

    /// Called after an op with its result; gives up after 1000 errors.
    fn record(&mut self, result: Res<()>, started: Option<Instant>, caller: usize) -> Res<()> {
        match result {
            Ok(()) => self.m.ops += u64::from(self.counting),
            Err(e) => {
                self.m.errors += 1;
                if self.m.errors == 1 {
                    eprintln!("    (caller {caller}) error: {e}");
                }
                if self.m.errors > 1000 {
                    return Err(e);
                }
            }
        }
        if let Some(started) = started {
            self.m.samples.push(started.elapsed().as_nanos() as u64);
        }
        Ok(())
    }
}

/// Runs `op` on `threads` threads until `budget` has passed (after a warm-up of a quarter of
/// it), timing one op in every `sample_every`. `make` builds each thread's state (a
/// connection, a read transaction); `op` gets the state, the thread number and the op count.
pub fn run_timed<S, M, O>(
    threads: usize,
    budget: Duration,
    sample_every: u64,
    make: M,
    op: O,
) -> Res<Measured>
where
    M: Fn() -> Res<S> + Sync,
    O: Fn(&mut S, usize, u64) -> Res<()> + Sync,
{
    let warm_up = budget / 4;
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let barrier = std::sync::Barrier::new(threads + 1);
    let results: (Vec<Res<Measured>>, _) = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (make, op, barrier, measuring, stop) =
                    (&make, &op, &barrier, &measuring, &stop);
                s.spawn(move || -> Res<Measured> {
                    let state = make();
                    barrier.wait();
                    let mut state = state?;
                    let mut tally = Tally::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let started = tally.start(measuring, n.is_multiple_of(sample_every));
                        tally.record(op(&mut state, t, n), started, t)?;
                        n += 1;
                    }
                    Ok(tally.m)
                })
            })
            .collect();
        barrier.wait();
        thread::sleep(warm_up);
        let cpu_before = thread_cpu();
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        thread::sleep(budget);
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu = cpu_between(&cpu_before, &thread_cpu());
        let mut out: Vec<Res<Measured>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect();
        // Each thread's counts cover the time from `measuring` to `stop`, give or take one op.
        for m in out.iter_mut().flatten() {
            m.elapsed = elapsed;
        }
        (out, cpu)
    });
    let (results, cpu) = results;
    let mut parts = Vec::new();
    for r in results {
        parts.push(r?);
    }
    let elapsed = parts.first().map_or(Duration::ZERO, |p| p.elapsed);
    Ok(Measured::merge(parts, elapsed, cpu))
}

/// Runs `op(i)` for every `i` in `0..n` on `threads` threads; returns the wall time.
pub fn run_all<O>(threads: usize, n: u64, op: O) -> Res<Duration>
where
    O: Fn(u64) -> Res<()> + Sync,
{
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<Res<()>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Res<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        op(i)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a loader panicked".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(started.elapsed())
}

/// As [`run_timed`], with `tasks` asynchronous tasks on a Tokio runtime of `workers` threads
/// instead of one thread per caller: `op(task, n)` returns the future of one operation.
pub fn run_timed_tasks<O, F>(tasks: usize, workers: usize, budget: Duration, op: O) -> Res<Measured>
where
    O: Fn(usize, u64) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Res<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()?;
    let op = std::sync::Arc::new(op);
    let measuring = std::sync::Arc::new(AtomicBool::new(false));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, measuring, stop) = (op.clone(), measuring.clone(), stop.clone());
            runtime.spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = tally.start(&measuring, true);
                    tally.record(op(t, n).await, started, t)?;
                    n += 1;
                }
                Res::<Measured>::Ok(tally.m)
            })
        })
        .collect();
    thread::sleep(budget / 4);
    let cpu_before = thread_cpu();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    thread::sleep(budget);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = cpu_between(&cpu_before, &thread_cpu());
    let mut parts = Vec::new();
    for h in handles {
        parts.push(runtime.block_on(h)??);
    }
    Ok(Measured::merge(parts, elapsed, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_op_divides_each_threads_time_by_the_ops() {
        let m = Measured {
            ops: 1000,
            elapsed: Duration::from_secs(1),
            cpu: vec![
                ("apply".into(), 0.015, 0.005),
                ("callers".into(), 0.004, 0.006),
                ("idle".into(), 0.000001, 0.0),
            ],
            ..Measured::default()
        };
        assert_eq!(
            m.cpu_per_op(),
            "CPU per op: apply 20.0 µs (25% sys), callers 10.0 µs (60% sys), \
             total 30.0 µs, 0.03 cores busy"
        );
        assert_eq!(Measured::default().cpu_per_op(), "");
    }
}
