//! Criterion micro-benchmarks of the store's hot paths (issue 4, part 1).
//!
//! `cargo bench --bench store`. The warm store for the `get` benchmarks holds
//! `IDEMSTORE_BENCH_KEYS` keys (default 100 000; the size is 1 000 000, which takes
//! about a minute to load on a 2-core VM). Every store here uses `Durability::None`, so the
//! figures are CPU and index costs, not fsync costs: the durable paths are measured side by side
//! with other engines by the comparison harness in `benches/compare`.
//!
//! Record encode/decode with its checksum is crate-private, so it is measured through the
//! public API: `get/hit` decodes and verifies one record, `begin_complete/none` encodes two.
//!
//! The 4096 keys the `get` benchmarks cycle through fit in the record cache: `hit` and
//! `hit_borrowed` measure a record-cache hit, `hit_index` the same lookups with the cache
//! off (redb's B-tree through its page cache).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use idemstore::{Begin, Durability, Key, Options, Store};

const OUTCOME: [u8; 200] = [0x5a; 200];
const REQUEST: &[u8] = b"{\"amount\": 1000, \"currency\": \"EUR\", \"customer\": \"cus_123\"}";

/// A 48-byte encoded key: 16-byte client, 16-byte request id, 13-byte resource and three
/// length bytes.
fn key(i: u64) -> Key {
    let client = format!("client-{:09}", i % 1_000);
    let request = format!("{:016x}", mix(i));
    Key::new(client, request, "POST /charges").expect("valid key")
}

/// splitmix64: request ids spread over the key space like random idempotency keys do.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn keys_from_env() -> u64 {
    std::env::var("IDEMSTORE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(100_000)
}

fn open(dir: &std::path::Path) -> Store {
    options().open(dir).expect("open store")
}

fn options() -> Options {
    Options::new()
        .durability(Durability::None)
        .checkpoint_interval(None)
        .purge_interval(None)
}

fn claim_and_complete(store: &Store, key: &Key) {
    match store.begin(key, REQUEST).expect("begin") {
        Begin::Claimed(claim) => {
            store.complete(&claim, &OUTCOME).expect("complete");
        }
        other => panic!("expected a claim for a new key, got {other:?}"),
    }
}

/// Loads keys `0..n` with completed outcomes. Many threads, so that group commit batches the
/// index commits and the load takes seconds rather than minutes.
fn load(store: &Store, n: u64) {
    let next = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    claim_and_complete(store, &key(i));
                }
            });
        }
    });
    store.checkpoint().expect("checkpoint");
}

fn key_encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.throughput(Throughput::Elements(1));
    let parts = (
        "client-000000042".to_string(),
        "9f1c4e2a7b3d5f60".to_string(),
        "POST /charges",
    );
    g.bench_function("new_48_bytes", |b| {
        b.iter(|| Key::new(black_box(&parts.0), black_box(&parts.1), black_box(parts.2)))
    });
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let n = keys_from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    eprintln!("loading {n} keys for the get benchmarks (IDEMSTORE_BENCH_KEYS)...");
    load(&store, n);

    // Keys chosen ahead of time, so key construction is not measured.
    let hits: Vec<Key> = (0..4096).map(|i| key(mix(i) % n)).collect();
    let misses: Vec<Key> = (0..4096).map(|i| key(n + i)).collect();

    let mut g = c.benchmark_group(format!("get_{n}_keys"));
    g.throughput(Throughput::Elements(1));
    let mut hits = hits.iter().cycle();
    let mut misses = misses.iter().cycle();
    g.bench_function("hit", |b| {
        b.iter(|| {
            let found = store.get(hits.next().expect("cycle")).expect("get");
            debug_assert!(found.is_some());
            found
        })
    });
    g.bench_function("hit_borrowed", |b| {
        b.iter(|| {
            let key = hits.next().expect("cycle");
            let len = store.get_with(key, |r| r.and_then(|r| r.outcome_data()).map(<[u8]>::len));
            debug_assert!(matches!(len, Ok(Some(_))));
            len
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            let found = store.get(misses.next().expect("cycle")).expect("get");
            debug_assert!(found.is_none());
            found
        })
    });
    drop(store);
    // The same lookups through the B-tree: the store reopened with its record cache off.
    let store = options()
        .record_cache_size(0)
        .open(dir.path())
        .expect("reopen store");
    g.bench_function("hit_index", |b| {
        b.iter(|| {
            let found = store.get(hits.next().expect("cycle")).expect("get");
            debug_assert!(found.is_some());
            found
        })
    });
    g.finish();
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    load(&store, 10_000);
    let mut next = 1u64 << 40;
    let mut g = c.benchmark_group("write_durability_none");
    g.throughput(Throughput::Elements(1));
    g.bench_function("begin_new_key", |b| {
        b.iter_batched(
            || {
                next += 1;
                key(next)
            },
            |k| store.begin(&k, REQUEST).expect("begin"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("begin_complete_new_key", |b| {
        b.iter_batched(
            || {
                next += 1;
                key(next)
            },
            |k| claim_and_complete(&store, &k),
            BatchSize::SmallInput,
        )
    });
    // One task at a time: the cost of a lone asynchronous caller, whose every write is led by
    // the committer thread and so pays a thread wake-up each (many tasks share them).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    g.bench_function("begin_complete_new_key_async_one_task", |b| {
        b.iter_batched(
            || {
                next += 1;
                key(next)
            },
            |k| {
                runtime.block_on(async {
                    match store.begin_async(&k, REQUEST).await.expect("begin") {
                        Begin::Claimed(c) => store.complete_async(&c, &OUTCOME).await,
                        other => panic!("a new key was not claimed: {other:?}"),
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    key_encoding(&mut c);
    lookups(&mut c);
    writes(&mut c);
    c.final_summary();
}
