//! Side-by-side benchmarks for issue 4: idemstore against raw redb, SQLite, Redis, PostgreSQL
//! and the physical limits of the disk, in one process and one run.
//!
//! ```text
//! cargo run --release -- [--quick] [--keys N] [--callers 1,8,64] [--tail-records N]
//!     [--big-index N] [--purge N] [--lookup-secs S] [--write-secs S] [--data-dir DIR]
//!     [--out DIR] [--only idem,redb,sqlite,redis,postgres,map,reopen,purge] [--keep]
//!     [--skip-physical]
//! ```
//!
//! Redis and PostgreSQL are used only when `IDEMSTORE_REDIS_URL` / `IDEMSTORE_POSTGRES_URL`
//! name a loopback server; otherwise the output says they were skipped.

mod engines;
mod machine;
mod report;
mod workload;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use idemstore::{Begin, Durability, ManualClock, Options, Store};
use serde_json::json;

use engines::{Engine, FRAME_BYTES, Idem, LogFile, Map, Postgres, Redb, Redis, Sqlite};
use report::{Bar, Row, latency};
use workload::{
    Fresh, MISS_BASE, Measured, OUTCOME, REQUEST, Res, key, mix, run_all, run_timed,
    run_timed_tasks,
};

const USAGE: &str = "usage: idemstore-bench-compare [--quick] [--keys N] [--callers 1,8,64] \
[--tail-records N] [--big-index N] [--purge N] [--lookup-secs S] [--write-secs S] \
[--data-dir DIR] [--out DIR] [--only LIST] [--keep] [--skip-physical]";

#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    keys: u64,
    callers: Vec<usize>,
    tail_records: u64,
    big_index: u64,
    purge: u64,
    lookup_secs: f64,
    write_secs: f64,
    data_dir: PathBuf,
    out: PathBuf,
    only: Option<Vec<String>>,
    keep: bool,
    /// Skip the physical limits (for A/B runs of the store alone: its rows then have no peer
    /// and the bars say "not measured").
    skip_physical: bool,
}

fn parse_count(s: &str) -> Res<u64> {
    let s = s.replace('_', "");
    let (digits, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s.as_str(), 1),
    };
    Ok(digits.parse::<u64>()? * mul)
}

fn parse_args() -> Res<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let tmp = std::env::temp_dir();
    let mut a = Args {
        quick,
        keys: if quick { 20_000 } else { 1_000_000 },
        callers: vec![1, 8, 64],
        tail_records: if quick { 20_000 } else { 1_000_000 },
        big_index: if quick { 20_000 } else { 2_000_000 },
        purge: if quick { 20_000 } else { 1_000_000 },
        lookup_secs: if quick { 0.4 } else { 3.0 },
        write_secs: if quick { 0.4 } else { 3.0 },
        data_dir: tmp.join("idemstore-bench"),
        out: tmp.join("idemstore-bench-results"),
        only: None,
        keep: false,
        skip_physical: false,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--quick" => {}
            "--keep" => a.keep = true,
            "--skip-physical" => a.skip_physical = true,
            "--keys" => a.keys = parse_count(value()?)?,
            "--tail-records" => a.tail_records = parse_count(value()?)?,
            "--big-index" => a.big_index = parse_count(value()?)?,
            "--purge" => a.purge = parse_count(value()?)?,
            "--lookup-secs" => a.lookup_secs = value()?.parse()?,
            "--write-secs" => a.write_secs = value()?.parse()?,
            "--data-dir" => a.data_dir = PathBuf::from(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--callers" => {
                a.callers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--only" => a.only = Some(value()?.split(',').map(String::from).collect()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    Ok(a)
}

struct Run {
    args: Args,
    started: Instant,
    rows: Vec<Row>,
    bars: Vec<Bar>,
    notes: Vec<String>,
    fresh: Fresh,
    hits: Arc<Vec<idemstore::Key>>,
    misses: Arc<Vec<idemstore::Key>>,
    dir: PathBuf,
}

impl Run {
    fn progress(&self, what: &str) {
        eprintln!(
            "[{:>7.1}s] {what}   (load {})",
            self.started.elapsed().as_secs_f64(),
            machine::load_average()
        );
    }

    fn wants(&self, block: &str) -> bool {
        self.args
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|b| b == block))
    }

    fn lookup_budget(&self) -> Duration {
        Duration::from_secs_f64(self.args.lookup_secs)
    }

    fn write_budget(&self) -> Duration {
        Duration::from_secs_f64(self.args.write_secs)
    }

    fn row(&mut self, group: &str, subject: &str, m: &Measured, note: String) {
        let mut note = if m.errors > 0 {
            format!("{note} ({} errors)", m.errors)
        } else {
            note
        };
        let cpu = m.cpu_per_op();
        if !cpu.is_empty() {
            note = if note.is_empty() {
                cpu
            } else {
                format!("{note}; {cpu}")
            };
        }
        self.rows.push(Row {
            group: group.into(),
            subject: subject.into(),
            value: m.ops_per_sec(),
            unit: "ops/s",
            latency: latency(m),
            peer: None,
            note,
        });
    }

    fn figure(&mut self, group: &str, subject: &str, value: f64, unit: &'static str, note: String) {
        self.rows.push(Row {
            group: group.into(),
            subject: subject.into(),
            value,
            unit,
            latency: None,
            peer: None,
            note,
        });
    }

    fn set_last_peer(&mut self, name: impl Into<String>, value: f64) {
        if let Some(r) = self.rows.last_mut() {
            r.peer = Some((name.into(), value));
        }
    }

    fn value_of(&self, group: &str, subject: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.group == group && r.subject == subject)
            .map(|r| r.value)
    }

    fn rss(&mut self, phase: &str) {
        let peak = machine::peak_rss() as f64 / (1 << 20) as f64;
        self.figure(
            "Peak RSS of this process (VmHWM) per phase",
            phase,
            peak,
            "MiB",
            String::new(),
        );
        machine::reset_peak_rss();
    }

    /// Lookups of loaded keys (hits) and of absent keys (misses), on 1 and 2 threads.
    fn lookups(&mut self, engine: &dyn Engine, subject: &str) -> Res<()> {
        let (hits, misses) = (self.hits.clone(), self.misses.clone());
        for (kind, keys, expect) in [("hit", &hits, true), ("miss", &misses, false)] {
            for threads in [1usize, 2] {
                let group = lookup_group(kind, threads);
                self.progress(&format!("{group}: {subject}"));
                let m = run_timed(
                    threads,
                    self.lookup_budget(),
                    8,
                    || engine.worker(),
                    |w, t, n| {
                        // The pools are in random order: a walk in sequence is a
                        // uniformly random key sequence. Each thread starts elsewhere.
                        let i = (n as usize + t * (keys.len() / 2 + 1)) % keys.len();
                        if w.get(&keys[i])? == expect {
                            Ok(())
                        } else {
                            Err(format!("lookup {kind} found the opposite").into())
                        }
                    },
                )?;
                self.row(&group, subject, &m, String::new());
            }
        }
        Ok(())
    }

    /// Durable claim+complete of new keys with each number of concurrent callers.
    fn writes(&mut self, engine: &dyn Engine, subject: &str, note: &dyn Fn() -> String) -> Res<()> {
        for &callers in &self.args.callers.clone() {
            let group = write_group(callers);
            self.progress(&format!("{group}: {subject}"));
            let fresh = &self.fresh;
            let m = run_timed(
                callers,
                self.write_budget(),
                1,
                || engine.worker(),
                |w, _, _| w.claim_complete(&key(fresh.next())),
            )?;
            let catching_up = Instant::now();
            let caught_up = engine.catch_up()?.then(|| catching_up.elapsed());
            self.row(&group, subject, &m, note());
            if let Some(took) = caught_up {
                self.caught_up_row(&group, subject, &m, took);
            }
        }
        Ok(())
    }

    /// The rate of a write row counting the time its engine then took to finish what it
    /// deferred (see [`Engine::catch_up`]): a burst of writes can outrun the work they leave
    /// behind, and this is the rate that can be kept up.
    fn caught_up_row(&mut self, group: &str, subject: &str, m: &Measured, took: Duration) {
        let total = m.elapsed + took;
        self.figure(
            group,
            &format!("{subject}{CAUGHT_UP}"),
            m.ops as f64 / total.as_secs_f64(),
            "ops/s",
            format!(
                "the row above's {} ops over its {:.2} s and the {:.2} s the index then took to \
                 apply what they left queued",
                m.ops,
                m.elapsed.as_secs_f64(),
                took.as_secs_f64()
            ),
        );
    }
}

impl Run {
    /// Durable claim+complete of new keys by as many asynchronous tasks as there are callers,
    /// on a Tokio runtime with a worker thread per core: the async API's share of each sync.
    fn async_writes(&mut self, store: &Store, note: &dyn Fn() -> String) -> Res<()> {
        let workers = thread::available_parallelism().map_or(2, |n| n.get());
        for &callers in &self.args.callers.clone() {
            let group = write_group(callers);
            self.progress(&format!("{group}: {IDEM_ASYNC}"));
            let base = self.fresh.reserve(1 << 40);
            let tasks = store.clone();
            let m = run_timed_tasks(callers, workers, self.write_budget(), move |t, n| {
                let store = tasks.clone();
                async move {
                    let key = key(base + ((t as u64) << 32) + n);
                    match store.begin_async(&key, REQUEST).await? {
                        Begin::Claimed(claim) => {
                            store.complete_async(&claim, &OUTCOME).await?;
                            Ok(())
                        }
                        other => {
                            Err(format!("expected a claim of a new key, got {other:?}").into())
                        }
                    }
                }
            })?;
            let catching_up = Instant::now();
            store.stats()?;
            let took = catching_up.elapsed();
            let note = format!(
                "{} on {workers} Tokio worker threads; {}",
                plural(callers, "task"),
                note()
            );
            self.row(&group, IDEM_ASYNC, &m, note);
            self.caught_up_row(&group, IDEM_ASYNC, &m, took);
        }
        Ok(())
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn lookup_group(kind: &str, threads: usize) -> String {
    format!(
        "get {kind} (uniformly random {}), {threads} thread{}",
        if kind == "hit" {
            "loaded key"
        } else {
            "absent key"
        },
        if threads == 1 { "" } else { "s" }
    )
}

fn write_group(callers: usize) -> String {
    format!(
        "durable claim+complete on new keys, {callers} concurrent caller{}",
        if callers == 1 { "" } else { "s" }
    )
}

const REDB_REUSED: &str = "raw redb, read txn reused";
const IDEM_IMMEDIATE: &str = "idemstore Immediate";
const IDEM_ASYNC: &str = "idemstore Immediate, async (begin_async/complete_async)";
/// Appended to a write row's subject for its rate until the index caught up.
const CAUGHT_UP: &str = ", until the index caught up";
const PHYS_ONE: &str = "append + fdatasync per record";
const PHYS_64: &str = "64 records per fdatasync (append)";

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child-tail") {
        if let Err(e) = child_tail(&argv[2..]) {
            eprintln!("child failed: {e}");
            std::process::exit(2);
        }
        return;
    }
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let dir = args.data_dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&args.out)?;
    let facts = machine::facts(&dir);
    let load_start = machine::load_average();
    let config = json!({
        "date": iso_now(),
        "quick": args.quick,
        "warm_keys": args.keys,
        "callers": args.callers,
        "log_tail_records": args.tail_records,
        "big_index_keys": args.big_index,
        "purge_records": args.purge,
        "lookup_secs": args.lookup_secs,
        "write_secs": args.write_secs,
        "key_bytes": 48,
        "outcome_bytes": OUTCOME.len(),
    });
    // Hits draw from every loaded key: a pool smaller than the store would let a cache in
    // front of the index hold all that is looked up, which a uniform load over the whole
    // store does not allow. The pool is in a random order and read in sequence: the engines
    // see uniformly random keys, while the harness's own reads of its pool stay sequential
    // (a service has the key it looks up at hand, not in a cold array).
    let mut order: Vec<u64> = (0..args.keys.max(1)).collect();
    order.sort_unstable_by_key(|&i| mix(i ^ 0xabcdef));
    let mut run = Run {
        hits: Arc::new(order.into_iter().map(key).collect()),
        misses: Arc::new((0..1 << 18).map(|i| key(MISS_BASE + i)).collect()),
        args,
        started: Instant::now(),
        rows: Vec::new(),
        bars: Vec::new(),
        notes: Vec::new(),
        fresh: Fresh::new(1 << 40),
        dir: dir.clone(),
    };
    run.progress(&format!(
        "starting: {} warm keys, data in {}",
        run.args.keys,
        dir.display()
    ));
    machine::reset_peak_rss();

    physical(&mut run, "start")?;
    let idem_dir = dir.join("idemstore");
    if run.wants("idem") || run.wants("idem-get") || run.wants("idem-write") {
        idemstore_block(&mut run, &idem_dir)?;
        physical(&mut run, "middle")?;
    }
    if run.wants("reopen") {
        reopen_block(&mut run, &idem_dir)?;
    }
    if run.wants("purge") {
        purge_block(&mut run)?;
    }
    if run.wants("redb") {
        redb_block(&mut run)?;
    }
    if run.wants("sqlite") {
        sqlite_block(&mut run)?;
    }
    if run.wants("redis") {
        redis_block(&mut run)?;
    }
    if run.wants("postgres") {
        postgres_block(&mut run)?;
    }
    if run.wants("map") {
        map_block(&mut run)?;
    }
    physical(&mut run, "end")?;

    set_peers(&mut run);
    check_bars(&mut run);
    run.notes.push(format!(
        "load average (1, 5, 15 min) at start: {load_start}; at end: {}",
        machine::load_average()
    ));

    let md = report::markdown(&run.rows, &run.bars, &facts, &config, &run.notes);
    let js = report::json_report(&run.rows, &run.bars, &facts, &config, &run.notes);
    let md_path = run.args.out.join("results.md");
    let js_path = run.args.out.join("results.json");
    std::fs::write(&md_path, &md)?;
    std::fs::write(&js_path, serde_json::to_string_pretty(&js)?)?;
    println!("{md}");
    run.progress(&format!(
        "done: wrote {} and {}",
        md_path.display(),
        js_path.display()
    ));
    if !run.args.keep {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn iso_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| {
            format!(
                "{} s since the epoch",
                UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs())
            )
        })
}

// ---------------------------------------------------------------- the physical limits

fn physical(run: &mut Run, when: &str) -> Res<()> {
    if run.args.skip_physical {
        return Ok(());
    }
    let group = "Physical limits of this disk (one writer; records of idemstore's frame sizes)";
    for (subject, records, prealloc) in [
        (PHYS_ONE, 1usize, false),
        (PHYS_64, 64, false),
        (
            "overwrite + fdatasync per record (preallocated file)",
            1,
            true,
        ),
        ("64 records per fdatasync (preallocated file)", 64, true),
    ] {
        run.progress(&format!("physical limit ({when} of run): {subject}"));
        let path = run.dir.join("physical.log");
        let prealloc = if prealloc { 256 << 20 } else { 0 };
        let m = run_timed(
            1,
            run.write_budget(),
            1,
            || {
                Ok((
                    LogFile::create(&path, prealloc)?,
                    Vec::with_capacity(64 * FRAME_BYTES[1]),
                ))
            },
            |(f, buf), _, _| f.append_sync(records, buf),
        )?;
        let subject = format!("{subject} ({when} of run)");
        let value = m.ops_per_sec() * records as f64;
        run.rows.push(Row {
            group: group.into(),
            subject,
            value,
            unit: "records/s",
            latency: latency(&m),
            peer: None,
            note: "latency is per fdatasync".into(),
        });
    }
    run.rss(&format!("physical limits ({when})"));
    Ok(())
}

/// The median of the measurements of a physical limit (start, middle and end of the run): the
/// disk's fdatasync latency swings with other load on the machine.
fn physical_rate(run: &Run, subject: &str) -> Option<f64> {
    let group = "Physical limits of this disk (one writer; records of idemstore's frame sizes)";
    let mut v: Vec<f64> = ["start", "middle", "end"]
        .iter()
        .filter_map(|w| run.value_of(group, &format!("{subject} ({w} of run)")))
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

// ---------------------------------------------------------------- idemstore

fn idem_options(durability: Durability) -> Options {
    Options::new().durability(durability)
}

fn loading_options() -> Options {
    Options::new()
        .durability(Durability::None)
        .checkpoint_interval(None)
        .purge_interval(None)
}

/// Waits for the steady state after an open: the key filter, built in the background, is
/// ready, and then the record cache, which the same thread warms from the index, stops
/// growing. Returns how long after the call each was reached.
fn settle(store: &Store) -> Res<(Duration, Duration)> {
    let opened = Instant::now();
    while !store.stats()?.key_filter_ready {
        std::thread::sleep(Duration::from_millis(10));
    }
    let filter_ready = opened.elapsed();
    let mut cached = store.stats()?.record_cache_records;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = store.stats()?.record_cache_records;
        if now == cached {
            break;
        }
        cached = now;
    }
    Ok((filter_ready, opened.elapsed()))
}

fn idemstore_block(run: &mut Run, dir: &Path) -> Res<()> {
    run.progress(&format!(
        "idemstore: loading {} keys (Durability::None, 32 threads)",
        run.args.keys
    ));
    let idem = Idem {
        store: loading_options().open(dir)?,
    };
    let took = idem.load(run.args.keys)?;
    idem.store.clone().close()?;
    drop(idem);
    let keys = run.args.keys;
    run.figure(
        "Loading the warm keys (each engine's own bulk path)",
        "idemstore (begin+complete, Durability::None, 32 threads)",
        keys as f64 / took.as_secs_f64(),
        "ops/s",
        format!("{keys} keys in {:.1} s", took.as_secs_f64()),
    );

    if run.wants("idem") || run.wants("idem-get") {
        let idem = Idem {
            store: idem_options(Durability::Immediate).open(dir)?,
        };
        let (filter_ready, warm) = settle(&idem.store)?;
        let stats = idem.store.stats()?;
        run.notes.push(format!(
            "idemstore: the key filter ({} KiB for {} keys) was ready {:.2} s after open, and \
             the record cache held {} records ({} MiB charged) {:.2} s after open; lookups \
             were measured after that",
            stats.key_filter_bytes / 1024,
            stats.key_filter_capacity,
            filter_ready.as_secs_f64(),
            stats.record_cache_records,
            stats.record_cache_bytes >> 20,
            warm.as_secs_f64()
        ));
        run.lookups(&idem, "idemstore")?;
        drop(idem);
    }
    if !(run.wants("idem") || run.wants("idem-write")) {
        return Ok(());
    }

    for (subject, mode) in [
        (IDEM_IMMEDIATE, Durability::Immediate),
        (
            "idemstore Periodic(10 ms)",
            Durability::Periodic(Duration::from_millis(10)),
        ),
        ("idemstore None", Durability::None),
    ] {
        let idem = Idem {
            store: idem_options(mode).open(dir)?,
        };
        // The same steady state as the lookups: the writes of a service that opened its store
        // a while ago, not the building of the key filter and the warming of the record cache
        // that each reopen starts (they took a core's fifth during 10 s write rows).
        settle(&idem.store)?;
        let before = std::cell::Cell::new(idem.store.stats()?);
        let store = idem.store.clone();
        let note = move || {
            let after = store.stats().unwrap_or_default();
            let b = before.replace(after.clone());
            let records = after.appended.saturating_sub(b.appended);
            let batches = after.batches.saturating_sub(b.batches).max(1);
            let syncs = after.syncs.saturating_sub(b.syncs);
            let waits = after.backlog_waits.saturating_sub(b.backlog_waits);
            let waited = after.backlog_wait.saturating_sub(b.backlog_wait);
            format!(
                "{:.1} records per batch, {:.2} fdatasyncs per op; leaders waited for the \
                 index {waits} times, {:.2} s in all",
                records as f64 / batches as f64,
                syncs as f64 / (records as f64 / 2.0).max(1.0),
                waited.as_secs_f64()
            )
        };
        run.writes(&idem, subject, &note)?;
        if mode == Durability::Immediate {
            run.async_writes(&idem.store, &note)?;
        }
        idem.store.close()?;
    }
    run.notes.push(
        "idemstore: each write row's store was reopened, and measured once its key filter was \
         ready and its record cache warm, as for the lookups"
            .into(),
    );
    run.rss("idemstore load, lookups and writes");
    Ok(())
}

// ---------------------------------------------------------------- reopen after a crash

/// The child of the crash test: writes `records` log records into the store at `dir` without
/// ever checkpointing, then exits without dropping the store (no final checkpoint or sync): the
/// log tail is what a kill -9 leaves (written, in the page cache).
fn child_tail(argv: &[String]) -> Res<()> {
    let [dir, records, base] = argv else {
        return Err("--child-tail DIR RECORDS FIRST_KEY".into());
    };
    let records = parse_count(records)?;
    let base: u64 = base.parse()?;
    let store = Options::new()
        .durability(Durability::None)
        .checkpoint_bytes(u64::MAX)
        .checkpoint_interval(None)
        .purge_interval(None)
        .open(dir)?;
    let before = store.stats()?;
    run_all(engines::LOAD_THREADS, records / 2, |i| {
        engines::idem_claim_complete(&store, &key(base + i))
    })?;
    let after = store.stats()?;
    eprintln!(
        "    child: wrote {} log records after checkpoint LSN {}; exiting without closing",
        after.last_lsn - before.last_lsn,
        after.checkpoint_lsn
    );
    std::process::exit(0);
}

fn reopen_block(run: &mut Run, warm: &Path) -> Res<()> {
    let group = "Reopen";
    if !warm.exists() {
        run.notes
            .push("reopen: skipped (needs the idemstore block's warm store)".into());
        return Ok(());
    }
    let records = run.args.tail_records;
    run.progress(&format!(
        "reopen: child process writes {records} log records into the warm store and exits without closing"
    ));
    let base = run.fresh.next() + (1 << 36);
    // Far above anything the fresh counter hands out in one run.
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--child-tail")
        .arg(warm)
        .arg(records.to_string())
        .arg(base.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("the crash child failed: {status}").into());
    }
    run.progress("reopen: recovering the crashed store");
    let started = Instant::now();
    let store = Options::new().open(warm)?;
    let took = started.elapsed();
    let report = store.recovery_report();
    // The replayed records are served from memory; `stats` applies them all to the index.
    let started = Instant::now();
    let index_keys = store.stats()?.records;
    let applying = started.elapsed();
    run.figure(
        group,
        &format!(
            "replay rate after a crash, {} records in the log tail",
            report.replayed
        ),
        report.replayed as f64 / took.as_secs_f64(),
        "records/s",
        format!(
            "open took {:.3} s on an index of {index_keys} keys (kill -9 equivalent: child exited \
             without closing; page cache warm); redb full repair: {}",
            took.as_secs_f64(),
            if report.index_repaired { "yes" } else { "no" }
        ),
    );
    run.set_last_peer("bar: 1M records/s", 1e6);
    run.notes.push(format!(
        "reopen: after the open, applying the {} replayed records to the index took {:.2} s more \
         (in the background of a running service: reads are served from memory meanwhile)",
        report.replayed,
        applying.as_secs_f64()
    ));
    store.close()?;

    let big = run.args.big_index;
    let big_dir = if big <= index_keys {
        warm.to_path_buf()
    } else {
        let d = run.dir.join("big-index");
        run.progress(&format!(
            "reopen: loading a {big}-key store (Durability::None, 32 threads)"
        ));
        let idem = Idem {
            store: loading_options().open(&d)?,
        };
        let took = idem.load(big)?;
        idem.store.clone().close()?;
        run.figure(
            "Loading the warm keys (each engine's own bulk path)",
            &format!("idemstore, {big}-key store for the reopen test"),
            big as f64 / took.as_secs_f64(),
            "ops/s",
            format!("{big} keys in {:.1} s", took.as_secs_f64()),
        );
        d
    };
    let mut times = Vec::new();
    let mut keys = 0;
    for i in 0..3 {
        run.progress(&format!(
            "reopen: big index, empty log tail, open {}/3",
            i + 1
        ));
        let started = Instant::now();
        let store = Options::new().open(&big_dir)?;
        times.push(started.elapsed().as_secs_f64());
        keys = store.stats()?.records;
        drop(store);
    }
    times.sort_by(f64::total_cmp);
    let (allocated, _) = machine::disk_usage(&big_dir);
    run.figure(
        group,
        &format!("open a {keys}-key store, empty log tail (median of 3)"),
        times[1],
        "s",
        format!(
            "opens took {:.3} / {:.3} / {:.3} s; store is {:.0} MiB on disk",
            times[0],
            times[1],
            times[2],
            allocated as f64 / (1 << 20) as f64
        ),
    );
    run.set_last_peer("bar: 1 s", 1.0);

    // What the opt-in integrity check costs: it reads every page of the index.
    run.progress("reopen: big index, empty log tail, open with verify_index_on_open");
    let started = Instant::now();
    let store = Options::new().verify_index_on_open(true).open(&big_dir)?;
    let verified = started.elapsed().as_secs_f64();
    let repaired = store.recovery_report().index_repaired;
    drop(store);
    run.figure(
        group,
        &format!("open a {keys}-key store with verify_index_on_open(true)"),
        verified,
        "s",
        format!(
            "one open, right after the load and the plain opens (the OS page cache may hold \
             much of the file); {:.0}× the plain open; redb repair reported: {}",
            verified / times[1],
            if repaired { "yes" } else { "no" }
        ),
    );
    if big_dir != warm {
        std::fs::remove_dir_all(&big_dir)?;
    }
    run.rss("reopen (crash replay and big index)");
    Ok(())
}

// ---------------------------------------------------------------- purge

fn purge_block(run: &mut Run) -> Res<()> {
    let group = "TTL purge";
    let dir = run.dir.join("purge");
    let n = run.args.purge;
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let retention = Duration::from_secs(3600);
    let options = |d| {
        Options::new()
            .durability(d)
            .retention(retention)
            .clock(clock.clone())
            .checkpoint_interval(None)
            .purge_interval(None)
    };
    run.progress(&format!(
        "purge: loading {n} keys that will expire, then {n} that stay live (ManualClock)"
    ));
    let store = options(Durability::None).open(&dir)?;
    let expiring = run.fresh.next() + (1 << 38);
    run_all(engines::LOAD_THREADS, n, |i| {
        engines::idem_claim_complete(&store, &key(expiring + i))
    })?;
    clock.advance(retention * 2);
    let live = expiring + (1 << 37);
    run_all(engines::LOAD_THREADS, n, |i| {
        engines::idem_claim_complete(&store, &key(live + i))
    })?;
    store.close()?;
    let live_bytes = n as f64 * (48.0 + OUTCOME.len() as f64);
    let (before, _) = machine::disk_usage(&dir);
    let before_files = machine::file_breakdown(&dir);

    let store = options(Durability::Immediate).open(&dir)?;
    let fresh_base = live + (1 << 36);
    let next = std::sync::atomic::AtomicU64::new(0);
    let begin_new = |store: &Store| -> Res<()> {
        let k = key(fresh_base + next.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        match store.begin(&k, REQUEST)? {
            Begin::Claimed(_) => Ok(()),
            other => Err(format!("expected a claim, got {other:?}").into()),
        }
    };
    run.progress("purge: foreground begin (Immediate) without a purge running");
    let quiet = run_timed(
        1,
        run.write_budget(),
        1,
        || Ok(()),
        |_, _, _| begin_new(&store),
    )?;

    run.progress(&format!(
        "purge: purge_expired() of {n} records, foreground begin meanwhile"
    ));
    let (purged, took, during) = thread::scope(|s| -> Res<(u64, Duration, Measured)> {
        let purger = s.spawn(|| {
            let started = Instant::now();
            store.purge_expired().map(|n| (n, started.elapsed()))
        });
        let started = Instant::now();
        let mut m = Measured::default();
        while !purger.is_finished() {
            let t = Instant::now();
            match begin_new(&store) {
                Ok(()) => m.ops += 1,
                Err(_) => m.errors += 1,
            }
            m.samples.push(t.elapsed().as_nanos() as u64);
        }
        m.elapsed = started.elapsed();
        m.samples.sort_unstable();
        let (purged, took) = purger.join().map_err(|_| "the purge thread panicked")??;
        Ok((purged, took, m))
    })?;
    // Closing after a purge this large also compacts the index file (`Store::close`).
    let closing = Instant::now();
    store.close()?;
    let closed_in = closing.elapsed();
    let (after, _) = machine::disk_usage(&dir);
    let after_files = machine::file_breakdown(&dir);

    run.figure(
        group,
        &format!("purge_expired() of {purged} expired records"),
        took.as_secs_f64(),
        "s",
        format!(
            "{:.0} records/s; {n} live records stay",
            purged as f64 / took.as_secs_f64()
        ),
    );
    run.set_last_peer("bar: 5 s", 5.0);
    run.figure(
        group,
        "close() after the purge",
        closed_in.as_secs_f64(),
        "s",
        format!("a checkpoint, then a compaction of the index file ({n} live records)"),
    );
    run.row(
        group,
        "foreground begin (Immediate) during the purge",
        &during,
        format!("{} begins while the purge ran", during.ops),
    );
    let quiet_p99 = quiet.quantile_us(0.99);
    if let Some(r) = run.rows.last_mut() {
        r.note.push_str(&format!(
            "; p99 {:.2}× the p99 without a purge ({:.2} ms); bar: p99 under 10 ms",
            during.quantile_us(0.99) / quiet_p99,
            quiet_p99 / 1000.0
        ));
    }
    run.row(
        group,
        "foreground begin (Immediate) without a purge",
        &quiet,
        String::new(),
    );
    let disk = "Disk: bytes per live record (live key + outcome = 248 B)";
    for (when, bytes, note) in [
        (
            "before purge",
            before,
            format!("{n} expired + {n} live records present; {before_files}"),
        ),
        (
            "after purge",
            after,
            format!("{n} live records, after close (checkpoint); {after_files}"),
        ),
    ] {
        run.figure(
            disk,
            &format!("idemstore {when}"),
            bytes as f64 / n as f64,
            "B",
            note,
        );
        run.set_last_peer("live keys + outcomes", live_bytes / n as f64);
    }
    std::fs::remove_dir_all(&dir)?;
    run.rss("purge");
    Ok(())
}

// ---------------------------------------------------------------- the other engines

fn redb_block(run: &mut Run) -> Res<()> {
    let path = run.dir.join("raw.redb");
    run.progress(&format!("raw redb: loading {} keys", run.args.keys));
    // The same page cache as idemstore's default index (`Options::cache_size`): the raw table
    // is the ceiling for that index, not for a differently sized one.
    let db = Redb::create(&path, 1 << 30)?;
    let mut engine = Redb {
        db,
        reuse_read: true,
    };
    let took = engine.load(run.args.keys)?;
    run.figure(
        "Loading the warm keys (each engine's own bulk path)",
        "raw redb (20 000 inserts per commit)",
        run.args.keys as f64 / took.as_secs_f64(),
        "ops/s",
        String::new(),
    );
    run.lookups(&engine, REDB_REUSED)?;
    engine.reuse_read = false;
    run.lookups(&engine, "raw redb, read txn per get")?;
    run.writes(
        &engine,
        "raw redb (2 commits, Durability::Immediate)",
        &String::new,
    )?;
    drop(engine);
    std::fs::remove_file(&path)?;
    run.rss("raw redb");
    Ok(())
}

fn sqlite_block(run: &mut Run) -> Res<()> {
    let path = run.dir.join("sqlite.db");
    run.progress(&format!("SQLite: loading {} keys", run.args.keys));
    let normal = Sqlite {
        path: path.clone(),
        synchronous: "NORMAL",
    };
    let took = normal.load(run.args.keys)?;
    run.figure(
        "Loading the warm keys (each engine's own bulk path)",
        "SQLite (one transaction)",
        run.args.keys as f64 / took.as_secs_f64(),
        "ops/s",
        String::new(),
    );
    run.lookups(&normal, "SQLite (WAL)")?;
    let full = Sqlite {
        path: path.clone(),
        synchronous: "FULL",
    };
    run.writes(&full, "SQLite WAL synchronous=FULL", &String::new)?;
    run.writes(
        &normal,
        "SQLite WAL synchronous=NORMAL (not durable on power loss)",
        &String::new,
    )?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    run.rss("SQLite");
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn redis_block(run: &mut Run) -> Res<()> {
    let Ok(url) = std::env::var("IDEMSTORE_REDIS_URL") else {
        let line = "Redis: SKIPPED (IDEMSTORE_REDIS_URL is not set)";
        run.progress(line);
        run.notes.push(line.into());
        return Ok(());
    };
    let client = redis::Client::open(url.as_str())?;
    match &client.get_connection_info().addr {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. }
            if !is_loopback(host) =>
        {
            return Err(format!(
                "IDEMSTORE_REDIS_URL {url}: only loopback servers are benchmarked"
            )
            .into());
        }
        _ => {}
    }
    let mut con = match client.get_connection() {
        Ok(c) => c,
        Err(e) => {
            let line = format!("Redis: SKIPPED ({url} unreachable: {e})");
            run.progress(&line);
            run.notes.push(line);
            return Ok(());
        }
    };
    let config = |name: &str, con: &mut redis::Connection| -> String {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query::<Vec<String>>(con)
            .ok()
            .and_then(|v| v.get(1).cloned())
            .unwrap_or_else(|| "?".into())
    };
    let aof = config("appendonly", &mut con);
    let fsync = config("appendfsync", &mut con);
    let info: String = redis::cmd("INFO").arg("server").query(&mut con)?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let label = format!("Redis {version} appendonly={aof} appendfsync={fsync}");
    run.notes.push(format!("{label} at {url}"));
    if aof != "yes" || fsync != "always" {
        run.notes.push(format!(
            "Redis at {url} is NOT durable per write (appendonly={aof}, appendfsync={fsync}): its \
             write figures are not a like-for-like peer of a durable store; `run.sh` starts a \
             private `appendfsync always` server for that"
        ));
    }
    let engine = Redis {
        client,
        prefix: format!("idemstore-bench:{}:", std::process::id()).into_bytes(),
    };
    run.progress(&format!("{label}: loading {} keys", run.args.keys));
    let result = (|| -> Res<()> {
        let took = engine.load(run.args.keys)?;
        run.figure(
            "Loading the warm keys (each engine's own bulk path)",
            "Redis (pipelines of 1000 SET)",
            run.args.keys as f64 / took.as_secs_f64(),
            "ops/s",
            String::new(),
        );
        run.lookups(&engine, &label)?;
        run.writes(
            &engine,
            &format!("{label} (SET NX PX, SET XX PX)"),
            &String::new,
        )?;
        Ok(())
    })();
    run.progress("Redis: removing this run's keys");
    engine.cleanup()?;
    run.rss("Redis client side");
    result
}

fn postgres_block(run: &mut Run) -> Res<()> {
    let Ok(url) = std::env::var("IDEMSTORE_POSTGRES_URL") else {
        let line = "PostgreSQL: SKIPPED (IDEMSTORE_POSTGRES_URL is not set)";
        run.progress(line);
        run.notes.push(line.into());
        return Ok(());
    };
    let config: postgres::Config = url.parse()?;
    for host in config.get_hosts() {
        if let postgres::config::Host::Tcp(h) = host
            && !is_loopback(h)
        {
            return Err(
                format!("IDEMSTORE_POSTGRES_URL: host {h} is not loopback; refusing").into(),
            );
        }
    }
    let engine = Postgres {
        config: url.clone(),
        table: format!("idemstore_bench_{}", std::process::id()),
    };
    let mut client = match engine.connect() {
        Ok(c) => c,
        Err(e) => {
            let line = format!("PostgreSQL: SKIPPED ({url} unreachable: {e})");
            run.progress(&line);
            run.notes.push(line);
            return Ok(());
        }
    };
    let show = |name: &str, c: &mut postgres::Client| -> String {
        c.query_one(&format!("SHOW {name}"), &[])
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|_| "?".into())
    };
    let version = show("server_version", &mut client);
    let label = format!("PostgreSQL {version}");
    run.notes.push(format!(
        "{label} at {url}: fsync={}, synchronous_commit={}, wal_sync_method={}, shared_buffers={}",
        show("fsync", &mut client),
        show("synchronous_commit", &mut client),
        show("wal_sync_method", &mut client),
        show("shared_buffers", &mut client),
    ));
    drop(client);
    run.progress(&format!("{label}: loading {} keys (COPY)", run.args.keys));
    engine.create_table()?;
    let result = (|| -> Res<()> {
        let took = engine.load(run.args.keys)?;
        run.figure(
            "Loading the warm keys (each engine's own bulk path)",
            "PostgreSQL (COPY, then VACUUM ANALYZE)",
            run.args.keys as f64 / took.as_secs_f64(),
            "ops/s",
            String::new(),
        );
        run.lookups(&engine, &label)?;
        run.writes(
            &engine,
            &format!("{label} (INSERT ON CONFLICT DO NOTHING, UPDATE; autocommit)"),
            &String::new,
        )?;
        Ok(())
    })();
    run.progress("PostgreSQL: dropping this run's table");
    engine.drop_table()?;
    run.rss("PostgreSQL client side");
    result
}

fn map_block(run: &mut Run) -> Res<()> {
    run.progress(&format!("std HashMap: building {} keys", run.args.keys));
    let map = Map((0..run.args.keys)
        .map(|i| {
            (
                key(i).as_bytes().to_vec(),
                vec![2u8; workload::RECORD_BYTES],
            )
        })
        .collect());
    run.lookups(&map, "std HashMap (in memory)")?;
    drop(map);
    run.rss("std HashMap");
    Ok(())
}

// ---------------------------------------------------------------- peers and bars

fn set_peers(run: &mut Run) {
    let phys_one = physical_rate(run, PHYS_ONE);
    let phys_64 = physical_rate(run, PHYS_64);
    let peers: Vec<Option<(String, f64)>> = run
        .rows
        .iter()
        .map(|r| {
            if r.peer.is_some() {
                return r.peer.clone();
            }
            if r.group.starts_with("get ") {
                return run
                    .value_of(&r.group, REDB_REUSED)
                    .map(|v| (REDB_REUSED.to_string(), v));
            }
            if r.group.starts_with("durable claim+complete") {
                let one = r.group.ends_with(" 1 concurrent caller");
                return if one {
                    phys_one.map(|v| (format!("{PHYS_ONE}, ÷ 2 records per op"), v / 2.0))
                } else {
                    phys_64.map(|v| (format!("{PHYS_64}, ÷ 2 records per op"), v / 2.0))
                };
            }
            None
        })
        .collect();
    for (r, p) in run.rows.iter_mut().zip(peers) {
        r.peer = p;
    }
}

fn check_bars(run: &mut Run) {
    let find = |g: &str, s: &str| run.value_of(g, s);
    let mut bars = Vec::new();
    let mut bar = |goal: &str, measured: Option<String>, met: Option<bool>| {
        bars.push(Bar {
            goal: goal.into(),
            measured: measured.unwrap_or_else(|| "not measured".into()),
            met,
        });
    };
    let callers = run.args.callers.iter().copied().max().unwrap_or(64);
    let group_c = write_group(callers);
    // A write row's rate, and its rate until the index caught up (the rate that can be kept
    // up; the same where that was not measured). A 64-caller bar is met only if both meet
    // it: there a burst can outrun the index by a backlog of up to `backlog_size`.
    let rates = |g: &str, s: &str| {
        find(g, s).map(|burst| (burst, find(g, &format!("{s}{CAUGHT_UP}")).unwrap_or(burst)))
    };
    let both = |(burst, kept): (f64, f64), f: &dyn Fn(f64) -> String| {
        format!("{}; {} until the index caught up", f(burst), f(kept))
    };
    // The better of the two ways to have many callers: a thread each, or a task each.
    let (how, idem_c) = [("threads", IDEM_IMMEDIATE), ("async tasks", IDEM_ASYNC)]
        .into_iter()
        .filter_map(|(how, subject)| rates(&group_c, subject).map(|v| (how, v)))
        .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map_or(("", None), |(how, v)| (how, Some(v)));
    let phys_64 = physical_rate(run, PHYS_64);
    let ratio = idem_c
        .zip(phys_64)
        .map(|((b, k), p)| (2.0 * b / p, 2.0 * k / p));
    bar(
        &format!(
            "claim+complete, {callers} callers, Immediate: ≥ 50% of the group-commit record rate"
        ),
        ratio.zip(phys_64).map(|(r, p)| {
            format!(
                "{} (of {p:.0} records/s; {callers} {how})",
                both(r, &|r| format!(
                    "{:.0}% ({:.0} records/s)",
                    r * 100.0,
                    r * p
                ))
            )
        }),
        ratio.map(|(b, k)| b >= 0.5 && k >= 0.5),
    );
    let redis = run
        .rows
        .iter()
        .find(|r| r.group == group_c && r.subject.starts_with("Redis"))
        .map(|r| (r.value, r.subject.contains("appendfsync=always")));
    let ratio = idem_c.zip(redis).map(|((b, k), (r, _))| (b / r, k / r));
    bar(
        &format!(
            "claim+complete, {callers} callers, Immediate: ≥ 3× Redis appendfsync always (issue: 50 clients)"
        ),
        ratio.map(|r| {
            format!(
                "{} Redis with {callers} clients ({callers} {how}){}",
                both(r, &|r| format!("{r:.2}×")),
                if redis.is_some_and(|(_, always)| !always) {
                    " (that Redis was NOT appendfsync always)"
                } else {
                    ""
                }
            )
        }),
        ratio.map(|(b, k)| b >= 3.0 && k >= 3.0),
    );
    let idem_1 = rates(&write_group(1), IDEM_IMMEDIATE);
    let phys_one = physical_rate(run, PHYS_ONE);
    let ratio = idem_1
        .zip(phys_one)
        .map(|((b, k), p)| (b / (p / 2.0), k / (p / 2.0)));
    // On the burst alone: one caller leaves the index less than a batch of changes, which the
    // background thread applies on the idle core while the caller goes on (the catch-up
    // timed after the row, in sequence, would count it as the caller's time).
    bar(
        "claim+complete, 1 caller, Immediate: ≥ 0.9× two appends + two fdatasyncs",
        ratio.map(|r| both(r, &|r| format!("{r:.2}×"))),
        ratio.map(|(b, _)| b >= 0.9),
    );
    let hit1 = lookup_group("hit", 1);
    let hit2 = lookup_group("hit", 2);
    let ratio = find(&hit1, "idemstore")
        .zip(find(&hit1, REDB_REUSED))
        .map(|(a, b)| a / b);
    bar(
        "get hit, 1 thread: ≥ 1.0× raw redb with a reused read txn",
        ratio.map(|r| format!("{r:.2}×")),
        ratio.map(|r| r >= 1.0),
    );
    let scale = find(&hit2, "idemstore")
        .zip(find(&hit1, "idemstore"))
        .map(|(a, b)| a / b);
    bar(
        "get hit: 2 threads scale ≥ 1.8×",
        scale.map(|r| {
            format!(
                "{r:.2}× (raw redb: {})",
                find(&hit2, REDB_REUSED)
                    .zip(find(&hit1, REDB_REUSED))
                    .map_or("–".into(), |(a, b)| format!("{:.2}×", a / b))
            )
        }),
        scale.map(|r| r >= 1.8),
    );
    let miss = find(&lookup_group("miss", 1), "idemstore");
    bar(
        "get miss on an absent key, 1 thread: ≥ 2M/s",
        miss.map(|m| format!("{:.2} M/s", m / 1e6)),
        miss.map(|m| m >= 2e6),
    );
    let replay = run
        .rows
        .iter()
        .find(|r| r.group == "Reopen" && r.unit == "records/s")
        .map(|r| r.value);
    bar(
        "reopen after a crash: replay ≥ 1M log records/s",
        replay.map(|v| format!("{:.2} M records/s", v / 1e6)),
        replay.map(|v| v >= 1e6),
    );
    let open = run
        .rows
        .iter()
        .find(|r| r.group == "Reopen" && r.unit == "s")
        .map(|r| (r.value, r.subject.clone()));
    bar(
        &format!(
            "reopen a {}-key store with an empty log tail: < 1 s (issue: 10M keys)",
            run.args.big_index
        ),
        open.as_ref().map(|(v, s)| format!("{v:.3} s ({s})")),
        open.as_ref().map(|(v, _)| *v < 1.0),
    );
    let purge = run
        .rows
        .iter()
        .find(|r| r.group == "TTL purge" && r.subject.starts_with("purge_expired()"))
        .map(|r| r.value);
    bar(
        &format!("purge of {} expired records: < 5 s", run.args.purge),
        purge.map(|v| format!("{v:.2} s")),
        purge.map(|v| v < 5.0),
    );
    let fg = run
        .rows
        .iter()
        .find(|r| r.group == "TTL purge" && r.subject.contains("during"))
        .and_then(|r| r.latency)
        .map(|l| l[1]);
    bar(
        "foreground begin p99 during the purge: < 10 ms",
        fg.map(|v| format!("{:.2} ms", v / 1000.0)),
        fg.map(|v| v < 10_000.0),
    );
    let disk = run
        .rows
        .iter()
        .find(|r| r.subject == "idemstore after purge")
        .and_then(|r| r.ratio());
    bar(
        "disk after purge: ≤ 2× the bytes of live keys and outcomes",
        disk.map(|r| format!("{r:.2}×")),
        disk.map(|r| r <= 2.0),
    );
    run.bars = bars;
}
