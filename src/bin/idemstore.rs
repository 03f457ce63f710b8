//! `idemstore`: the operator's tool for an idemstore directory — look at it, check it, and
//! maintain it. Built with the `cli` feature:
//!
//! ```sh
//! cargo run --features cli --bin idemstore -- --help
//! cargo run --features cli --bin idemstore -- stats demo/store
//! cargo run --features cli --bin idemstore -- list demo/store --in-doubt
//! cargo run --features cli --bin idemstore -- verify demo/store
//! ```
//!
//! `stats`, `get` and `list` open the store read-only (`Options::read_only`): they take the
//! directory's lock (a store in use by a service answers "locked") and recover in memory, so
//! they show what a service would see without changing a byte on disk — a torn log tail is
//! reported and left in place. `verify` reads the files without recovering. `purge` and
//! `remove` open the store for writing, running recovery like any open (which may cut off a
//! torn tail). No command creates a store.
//!
//! Exit codes: 0 done, 1 `verify` found damage, 2 an error (one line on stderr) or bad usage.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use idemstore::{
    Begin, Durability, Error, Key, Options, Record, RecordState, Stats, Store, VerifyReport,
};
use indicatif::{ProgressBar, ProgressStyle};

/// The index file every store directory has (see docs/design.md).
const INDEX_FILE: &str = "index.redb";

#[derive(Parser)]
#[command(
    name = "idemstore",
    version,
    about = "Inspect, check and maintain an idemstore directory",
    after_help = "Exit codes: 0 done, 1 `verify` found damage, 2 an error or bad usage.\n\
                  Every command but `bench` takes the store's lock: stop the service that uses \
                  it first. `stats`, `get`, `list` and `verify` change nothing on disk; `purge` \
                  and `remove` write, and their open runs recovery (which may cut off a torn log \
                  tail)."
)]
struct Cli {
    /// Print JSON instead of text (`list` always prints JSON lines).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show counters, sizes, and what opening the store recovered
    Stats {
        /// The store directory.
        dir: PathBuf,
    },
    /// Show the record of one key
    Get {
        /// The store directory.
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List records as JSON lines, one object per record, in key order
    List {
        /// The store directory.
        dir: PathBuf,
        /// Only records in this state.
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// Only records of this client (the key's first part, exact match).
        #[arg(long)]
        client: Option<String>,
        /// Only claims in doubt: in progress, never completed nor released. With the store
        /// closed (this tool holds its lock), no process is running them: each may have
        /// partly run and may need reconciling.
        #[arg(long)]
        in_doubt: bool,
        /// Only records that leave the store before this time (RFC 3339, e.g.
        /// 2026-01-31T12:00:00Z, or Unix seconds).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        expiring_before: Option<SystemTime>,
    },
    /// Check the store for damage; exit code 1 if any
    ///
    /// Checks every log frame and index record checksum and that the index agrees with the
    /// log. Writes nothing, but needs the store's lock.
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
    /// Remove the records past their retention now (TTL compaction)
    Purge {
        /// The store directory.
        dir: PathBuf,
    },
    /// Remove one key whatever its state (manual invalidation)
    ///
    /// The next request with the key runs the operation again.
    Remove {
        /// The store directory.
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Measure write and lookup throughput on a new store in a temporary directory
    Bench {
        /// Keys to claim and complete.
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// Lookups (`get`) of random written keys.
        #[arg(long, default_value_t = 100_000)]
        lookups: u64,
        /// Threads issuing requests at once (concurrent writers share syncs).
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// Outcome size in bytes.
        #[arg(long, default_value_t = 128)]
        outcome_size: usize,
        /// When writes are acknowledged.
        #[arg(long, value_enum, default_value_t = DurabilityArg::Immediate)]
        durability: DurabilityArg,
        /// Where to make the temporary store directory (default: the system's temp dir). It
        /// is removed afterwards.
        #[arg(long, value_name = "DIR")]
        temp_dir: Option<PathBuf>,
    },
}

/// The three parts of a key, as text.
#[derive(Args)]
struct KeyArgs {
    /// Who asks (the key's first part; may be empty: --client '').
    #[arg(long)]
    client: String,
    /// The idempotency key the client sent.
    #[arg(long)]
    request: String,
    /// What the operation acts on, e.g. 'POST /v1/charges' (may be empty).
    #[arg(long)]
    resource: String,
}

impl KeyArgs {
    fn key(&self) -> Result<Key, Failure> {
        Ok(Key::new(&self.client, &self.request, &self.resource)?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StateFilter {
    InProgress,
    Completed,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Synced before acknowledged (group commit).
    Immediate,
    /// Synced every 100 ms.
    Periodic,
    /// Never synced by the store.
    None,
}

/// Why the command failed: printed as one line on stderr.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        eprintln!("idemstore: internal error{at}: {what} (please report it)");
    }));
    let cli = Cli::parse();
    let mut out = io::stdout().lock();
    match run(&cli, &mut out).and_then(|code| out.flush().map(|()| code).map_err(Failure::from)) {
        Ok(code) => code,
        Err(Failure(message)) if message == BROKEN_PIPE => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("idemstore: {message}");
            ExitCode::from(2)
        }
    }
}

/// The message of a write to a closed pipe (`idemstore list | head`): not an error.
const BROKEN_PIPE: &str = "broken pipe";

fn run(cli: &Cli, out: &mut dyn Write) -> Result<ExitCode, Failure> {
    let json = cli.json;
    let result = match &cli.command {
        Command::Stats { dir } => stats(&open(dir, Access::Read)?, dir, json, out),
        Command::Get { dir, key } => get(&open(dir, Access::Read)?, &key.key()?, json, out),
        Command::List {
            dir,
            state,
            client,
            in_doubt,
            expiring_before,
        } => {
            let filter = Filter {
                state: if *in_doubt {
                    Some(StateFilter::InProgress)
                } else {
                    *state
                },
                client: client.as_deref().map(str::as_bytes),
                expiring_before: *expiring_before,
            };
            if *in_doubt && matches!(state, Some(StateFilter::Completed)) {
                return Err(Failure(
                    "--in-doubt lists claims in progress; it contradicts --state completed".into(),
                ));
            }
            list(&open(dir, Access::Read)?, &filter, out)
        }
        Command::Verify { dir } => return verify(dir, json, out),
        Command::Purge { dir } => {
            let store = open(dir, Access::Write)?;
            let purged = store.purge_expired()?;
            store.close()?;
            if json {
                writeln!(out, r#"{{"purged":{purged}}}"#)
            } else {
                writeln!(
                    out,
                    "purged {purged} expired records from {}",
                    dir.display()
                )
            }
        }
        Command::Remove { dir, key } => {
            let store = open(dir, Access::Write)?;
            let key = key.key()?;
            let removed = store.remove(&key)?;
            store.close()?;
            if json {
                writeln!(out, r#"{{"removed":{removed}}}"#)
            } else if removed {
                writeln!(out, "removed {key}")
            } else {
                writeln!(out, "not present: {key} (nothing removed)")
            }
        }
        Command::Bench {
            records,
            lookups,
            threads,
            outcome_size,
            durability,
            temp_dir,
        } => {
            let settings = BenchSettings {
                records: (*records).max(1),
                lookups: *lookups,
                threads: (*threads).max(1),
                outcome_size: *outcome_size,
                durability: *durability,
            };
            bench(&settings, temp_dir.as_deref(), json, out)
        }
    };
    result.map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure(BROKEN_PIPE.into())
        } else {
            Failure(format!("writing the output: {e}"))
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How a command opens the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only: recovery in memory, nothing written.
    Read,
    /// For writing: recovery on disk, as a service's open.
    Write,
}

/// Opens an existing store; never creates one (a mistyped path is an error, not a new store).
fn open(dir: &Path, access: Access) -> Result<Store, Failure> {
    let options = Options::new()
        .purge_interval(None)
        .checkpoint_interval(None);
    // A read-only open refuses a missing store itself; a writable one would create it.
    if access == Access::Write && !dir.join(INDEX_FILE).is_file() {
        let path = dir.display().to_string();
        return Err(locked_or(Error::NotFound { path }, dir));
    }
    options
        .read_only(access == Access::Read)
        .open(dir)
        .map_err(|e| locked_or(e, dir))
}

/// A held lock gets a message that says what to do.
fn locked_or(e: Error, dir: &Path) -> Failure {
    match e {
        Error::Locked { .. } => Failure(format!(
            "{} is locked: another process (a running service?) has the store open; \
             stop it and retry (reading takes the lock too, so that a store is never read \
             while it is written)",
            dir.display()
        )),
        // Names the directory itself.
        e @ Error::NotFound { .. } => Failure(e.to_string()),
        other => Failure(format!("{}: {other}", dir.display())),
    }
}

fn stats(store: &Store, dir: &Path, json: bool, out: &mut dyn Write) -> io::Result<()> {
    let s: Stats = match store.stats() {
        Ok(s) => s,
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    let r = store.recovery_report();
    let torn = r.torn_tail.as_ref();
    if json {
        let torn = torn.map_or_else(
            || "null".to_owned(),
            |t| {
                format!(
                    r#"{{"segment":{},"offset":{},"bytes_removed":{},"frames_discarded":{},"reason":{}}}"#,
                    json_str(&t.segment),
                    t.offset,
                    t.bytes_removed,
                    t.frames_discarded,
                    json_str(&t.reason)
                )
            },
        );
        return writeln!(
            out,
            concat!(
                r#"{{"dir":{},"records":{},"in_progress":{},"last_lsn":{},"acknowledged_lsn":{},"#,
                r#""checkpoint_lsn":{},"next_token":{},"segments":{},"current_segment_bytes":{},"#,
                r#""recovery":{{"created":{},"index_rebuilt":{},"index_repaired":{},"#,
                r#""checkpoint_lsn":{},"replayed":{},"last_lsn":{},"#,
                r#""segments_read":{},"in_doubt":{},"duration_ms":{:.3},"read_only":{},"#,
                r#""torn_tail":{}}}}}"#
            ),
            json_str(&dir.display().to_string()),
            s.records,
            s.in_progress,
            s.last_lsn,
            s.acknowledged_lsn,
            s.checkpoint_lsn,
            s.next_token,
            s.segments,
            s.current_segment_bytes,
            r.created,
            r.index_rebuilt,
            r.index_repaired,
            r.checkpoint_lsn,
            r.replayed,
            r.last_lsn,
            r.segments_read,
            r.in_doubt,
            r.duration.as_secs_f64() * 1000.0,
            r.read_only,
            torn
        );
    }
    writeln!(out, "store        {}", dir.display())?;
    writeln!(
        out,
        "records      {} ({} in progress; expired ones count until purged)",
        s.records, s.in_progress
    )?;
    writeln!(
        out,
        "log          {} segment(s), current one {} bytes; last LSN {}, checkpoint LSN {}",
        s.segments, s.current_segment_bytes, s.last_lsn, s.checkpoint_lsn
    )?;
    writeln!(out, "next token   {}", s.next_token)?;
    writeln!(
        out,
        "this open    {:.1} ms{}: replayed {} log records after checkpoint {}, read {} segment(s)",
        r.duration.as_secs_f64() * 1000.0,
        if r.read_only {
            " (read-only: in memory, nothing written)"
        } else {
            ""
        },
        r.replayed,
        r.checkpoint_lsn,
        r.segments_read
    )?;
    match torn {
        Some(t) if r.read_only => writeln!(
            out,
            "torn tail    {} bytes ({} frames) at offset {} of {}: {}; left on disk, the next \
             writable open (a service's, `purge`, `remove`) cuts it off",
            t.bytes_removed, t.frames_discarded, t.offset, t.segment, t.reason
        )?,
        Some(t) => writeln!(
            out,
            "torn tail    cut off {} bytes ({} frames) at offset {} of {}: {}",
            t.bytes_removed, t.frames_discarded, t.offset, t.segment, t.reason
        )?,
        None => writeln!(out, "torn tail    none")?,
    }
    writeln!(
        out,
        "in doubt     {} claim(s) in progress when opened{}",
        r.in_doubt,
        if r.in_doubt > 0 {
            " (see `idemstore list DIR --in-doubt`)"
        } else {
            ""
        }
    )
}

fn get(store: &Store, key: &Key, json: bool, out: &mut dyn Write) -> io::Result<()> {
    let record = store
        .get(key)
        .map_err(|e| io::Error::other(e.to_string()))?;
    match (record, json) {
        (Some(record), true) => writeln!(out, "{}", record_json(&record)),
        (None, true) => writeln!(out, r#"{{"state":"absent"}}"#),
        (None, false) => writeln!(
            out,
            "absent: {key} (never seen, released, removed or expired)"
        ),
        (Some(record), false) => {
            writeln!(out, "key          {}", record.key())?;
            writeln!(out, "fingerprint  {}", hex(record.fingerprint().as_bytes()))?;
            match record.state() {
                RecordState::InProgress {
                    token,
                    attempt,
                    lease_expires_at,
                } => {
                    writeln!(out, "state        in progress")?;
                    writeln!(out, "token        {token} (attempt {attempt})")?;
                    let lapsed = if lease_expires_at <= SystemTime::now() {
                        " (lapsed: the next request takes it over)"
                    } else {
                        ""
                    };
                    writeln!(out, "lease until  {}{lapsed}", rfc3339(lease_expires_at))?;
                }
                RecordState::Completed(outcome) => {
                    writeln!(out, "state        completed")?;
                    writeln!(
                        out,
                        "token        {} (attempt {})",
                        outcome.token(),
                        outcome.attempt()
                    )?;
                    writeln!(out, "completed    {}", rfc3339(outcome.completed_at()))?;
                    let (text, encoding) = bytes_text(outcome.data());
                    writeln!(
                        out,
                        "outcome      {} bytes, {encoding}: {text}",
                        outcome.data().len()
                    )?;
                }
                _ => writeln!(out, "state        unknown to this version of the tool")?,
            }
            writeln!(out, "expires      {}", rfc3339(record.expires_at()))
        }
    }
}

struct Filter<'a> {
    state: Option<StateFilter>,
    client: Option<&'a [u8]>,
    expiring_before: Option<SystemTime>,
}

impl Filter<'_> {
    fn accepts(&self, record: &Record) -> bool {
        let state_ok = match self.state {
            None => true,
            Some(StateFilter::InProgress) => {
                matches!(record.state(), RecordState::InProgress { .. })
            }
            Some(StateFilter::Completed) => matches!(record.state(), RecordState::Completed(_)),
        };
        state_ok
            && self.client.is_none_or(|c| record.key().client() == c)
            && self.expiring_before.is_none_or(|t| record.expires_at() < t)
    }
}

fn list(store: &Store, filter: &Filter<'_>, out: &mut dyn Write) -> io::Result<()> {
    let mut result = Ok(());
    let mut emit = |record: Record| {
        if result.is_ok() && filter.accepts(&record) {
            result = writeln!(out, "{}", record_json(&record));
        }
    };
    let scanned = if matches!(filter.state, Some(StateFilter::InProgress)) {
        // The in-progress table: no full scan.
        store.in_progress().map(|records| {
            let mut records = records;
            records.sort_by(|a, b| a.key().cmp(b.key()));
            records.into_iter().for_each(&mut emit);
        })
    } else {
        store.for_each(&mut emit)
    };
    scanned.map_err(|e| io::Error::other(e.to_string()))?;
    result
}

fn verify(dir: &Path, json: bool, out: &mut dyn Write) -> Result<ExitCode, Failure> {
    if !dir.is_dir() {
        return Err(Failure(format!("{}: no such directory", dir.display())));
    }
    let report = match idemstore::verify_dir(dir) {
        Ok(report) => report,
        // Damage so bad that the check could not go on is still a verdict: damaged.
        Err(Error::Corruption { what, location }) => {
            let mut report = VerifyReport::default();
            report.problems.push(idemstore::Problem { location, what });
            report
        }
        Err(e) => return Err(locked_or(e, dir)),
    };
    let written = if json {
        verify_json(&report, out)
    } else {
        verify_text(dir, &report, out)
    };
    written.map_err(|e| Failure(format!("writing the output: {e}")))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify_text(dir: &Path, report: &VerifyReport, out: &mut dyn Write) -> io::Result<()> {
    let summary = format!(
        "{} segment(s), {} log frames, {} index records; checkpoint LSN {}, last LSN {}",
        report.segments, report.frames, report.records, report.checkpoint_lsn, report.last_lsn
    );
    if report.is_clean() {
        writeln!(out, "{}: OK ({summary})", dir.display())?;
    } else {
        writeln!(
            out,
            "{}: DAMAGED, {} problem(s) ({summary})",
            dir.display(),
            report.problems.len()
        )?;
        for p in &report.problems {
            writeln!(out, "  {}: {}", p.location, p.what)?;
        }
    }
    if let Some(t) = &report.torn_tail {
        writeln!(
            out,
            "  note: torn log tail in {} at offset {} ({}); the next writable open cuts it off",
            t.segment, t.offset, t.reason
        )?;
    }
    if report.index_needs_recovery {
        writeln!(
            out,
            "  note: the index was not closed cleanly; it was checked as the next open will recover it"
        )?;
    }
    Ok(())
}

fn verify_json(report: &VerifyReport, out: &mut dyn Write) -> io::Result<()> {
    let problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| {
            format!(
                r#"{{"location":{},"what":{}}}"#,
                json_str(&p.location),
                json_str(&p.what)
            )
        })
        .collect();
    let torn = report.torn_tail.as_ref().map_or_else(
        || "null".to_owned(),
        |t| {
            format!(
                r#"{{"segment":{},"offset":{},"reason":{}}}"#,
                json_str(&t.segment),
                t.offset,
                json_str(&t.reason)
            )
        },
    );
    writeln!(
        out,
        r#"{{"clean":{},"segments":{},"frames":{},"records":{},"checkpoint_lsn":{},"last_lsn":{},"index_needs_recovery":{},"torn_tail":{torn},"problems":[{}]}}"#,
        report.is_clean(),
        report.segments,
        report.frames,
        report.records,
        report.checkpoint_lsn,
        report.last_lsn,
        report.index_needs_recovery,
        problems.join(",")
    )
}

struct BenchSettings {
    records: u64,
    lookups: u64,
    threads: u64,
    outcome_size: usize,
    durability: DurabilityArg,
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench(
    settings: &BenchSettings,
    parent: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = TempDir(parent.join(format!("idemstore-bench-{}-{nanos}", std::process::id())));
    let (durability, durability_name) = match settings.durability {
        DurabilityArg::Immediate => (Durability::Immediate, "immediate"),
        DurabilityArg::Periodic => (
            Durability::Periodic(Duration::from_millis(100)),
            "periodic (100 ms)",
        ),
        DurabilityArg::None => (Durability::None, "none"),
    };
    let store = Options::new()
        .durability(durability)
        .max_outcome_size(settings.outcome_size.max(1 << 20))
        .open(&dir.0)
        .map_err(|e| io::Error::other(format!("{}: {e}", dir.0.display())))?;
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..settings.records)
            .map(|n| Key::new("bench-client", format!("req-{n:010}"), "POST /bench"))
            .collect::<Result<_, _>>()
            .map_err(|e| io::Error::other(e.to_string()))?,
    );
    let outcome = Arc::new(vec![b'x'; settings.outcome_size]);

    // Writes: each key claimed and completed once (two durable writes).
    let bar = progress(settings.records, "writes ");
    let writes = timed(settings.threads, |t| {
        let mut n = t;
        let mut done = 0;
        while let Some(key) = keys.get(usize::try_from(n).unwrap_or(usize::MAX)) {
            match store.begin(key, key.as_bytes())? {
                Begin::Claimed(claim) => {
                    store.complete(&claim, &outcome)?;
                }
                other => return Err(Failure(format!("bench: unexpected answer {other:?}"))),
            }
            n += settings.threads;
            done += 1;
            if done % 64 == 0 {
                bar.inc(64);
            }
        }
        bar.inc(done % 64);
        Ok(())
    })?;
    bar.finish_and_clear();
    let stats = store.stats().map_err(|e| io::Error::other(e.to_string()))?;

    // Lookups: random keys among those written.
    let bar = progress(settings.lookups, "lookups");
    let lookups = timed(settings.threads, |t| {
        let mut state = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
        let share = settings.lookups / settings.threads
            + u64::from(t < settings.lookups % settings.threads);
        for i in 0..share {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = usize::try_from(state % settings.records).unwrap_or(0);
            if let Some(key) = keys.get(at)
                && store.get(key)?.is_none()
            {
                return Err(Failure(format!("bench: {key} is missing")));
            }
            if i % 1024 == 1023 {
                bar.inc(1024);
            }
        }
        bar.inc(share % 1024);
        Ok(())
    })?;
    bar.finish_and_clear();
    store.close().map_err(|e| io::Error::other(e.to_string()))?;

    let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let per_sync = if stats.syncs > 0 {
        stats.appended as f64 / stats.syncs as f64
    } else {
        0.0
    };
    if json {
        return writeln!(
            out,
            r#"{{"threads":{},"durability":{},"outcome_size":{},"records":{},"write_secs":{:.4},"writes_per_sec":{:.0},"log_records_per_sync":{:.2},"lookups":{},"lookup_secs":{:.4},"lookups_per_sec":{:.0}}}"#,
            settings.threads,
            json_str(durability_name),
            settings.outcome_size,
            settings.records,
            writes.as_secs_f64(),
            per_sec(settings.records, writes),
            per_sync,
            settings.lookups,
            lookups.as_secs_f64(),
            per_sec(settings.lookups, lookups),
        );
    }
    writeln!(
        out,
        "{} threads, durability {durability_name}, {}-byte outcomes, in {}",
        settings.threads,
        settings.outcome_size,
        parent.display()
    )?;
    writeln!(
        out,
        "writes   {:>9} claim+complete in {:>7.3} s = {:>10.0} /s  ({per_sync:.1} log records per sync)",
        settings.records,
        writes.as_secs_f64(),
        per_sec(settings.records, writes)
    )?;
    writeln!(
        out,
        "lookups  {:>9} get            in {:>7.3} s = {:>10.0} /s",
        settings.lookups,
        lookups.as_secs_f64(),
        per_sec(settings.lookups, lookups)
    )
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Runs `work(thread)` on `threads` threads at once; returns the wall time.
fn timed(threads: u64, work: impl Fn(u64) -> Result<(), Failure> + Sync) -> io::Result<Duration> {
    let failed = AtomicU64::new(0);
    let mut first_error = None;
    let start = Instant::now();
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                let failed = &failed;
                scope.spawn(move || {
                    let result = work(t);
                    if result.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        for handle in handles {
            if let Ok(Err(Failure(e))) = handle.join() {
                first_error.get_or_insert(e);
            }
        }
    });
    let elapsed = start.elapsed();
    match first_error {
        Some(e) => Err(io::Error::other(e)),
        None if failed.load(Ordering::Relaxed) > 0 => {
            Err(io::Error::other("a bench thread failed"))
        }
        None => Ok(elapsed),
    }
}

/// One record as a JSON object.
fn record_json(record: &Record) -> String {
    let key = record.key();
    let parts = [key.client(), key.request(), key.resource()];
    let utf8 = parts.iter().all(|p| std::str::from_utf8(p).is_ok());
    let part = |p: &[u8]| {
        if utf8 {
            json_str(&String::from_utf8_lossy(p))
        } else {
            json_str(&hex(p))
        }
    };
    let mut s = format!(
        r#"{{"client":{},"request":{},"resource":{},"key_encoding":"{}","fingerprint":"{}","#,
        part(key.client()),
        part(key.request()),
        part(key.resource()),
        if utf8 { "utf8" } else { "hex" },
        hex(record.fingerprint().as_bytes())
    );
    match record.state() {
        RecordState::InProgress {
            token,
            attempt,
            lease_expires_at,
        } => {
            let _ = write!(
                s,
                r#""state":"in_progress","token":{token},"attempt":{attempt},"lease_expires_at":"{}","lease_lapsed":{},"#,
                rfc3339(lease_expires_at),
                lease_expires_at <= SystemTime::now()
            );
        }
        RecordState::Completed(outcome) => {
            let (text, encoding) = bytes_text(outcome.data());
            let _ = write!(
                s,
                r#""state":"completed","token":{},"attempt":{},"completed_at":"{}","outcome":{},"outcome_encoding":"{encoding}","outcome_bytes":{},"#,
                outcome.token(),
                outcome.attempt(),
                rfc3339(outcome.completed_at()),
                json_str(&text),
                outcome.data().len()
            );
        }
        _ => s.push_str(r#""state":"unknown","#),
    }
    let _ = write!(s, r#""expires_at":"{}"}}"#, rfc3339(record.expires_at()));
    s
}

/// Outcome bytes as text: UTF-8 when they are valid UTF-8, else lowercase hex. Says which.
fn bytes_text(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (hex(bytes), "hex"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-01-31T12:00:00.000Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `--expiring-before`: Unix seconds, or RFC 3339 (`2026-01-31T12:00:00Z`,
/// `2026-01-31T12:00:00.5+02:00`).
fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let bad = || format!("{s:?} is neither RFC 3339 (2026-01-31T12:00:00Z) nor Unix seconds");
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = s.get(range).ok_or_else(bad)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let sep = |at: usize, allowed: &[u8]| {
        s.as_bytes()
            .get(at)
            .is_some_and(|b| allowed.contains(b))
            .then_some(())
            .ok_or_else(bad)
    };
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    sep(13, b":")?;
    sep(16, b":")?;
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month = u32::try_from(month).map_err(|_| bad())?;
    let day = u32::try_from(day).map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    if second > 60 {
        return Err(bad());
    }
    let mut rest = s.get(19..).ok_or_else(bad)?;
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let text = frac.get(..digits.min(9)).ok_or_else(bad)?;
        let scale = 10u32.pow(9 - u32::try_from(text.len()).unwrap_or(9));
        nanos = text.parse::<u32>().map_err(|_| bad())? * scale;
        rest = frac.get(digits..).ok_or_else(bad)?;
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(bad()),
            };
            let (h, m) = rest
                .get(1..)
                .and_then(|hm| hm.split_once(':'))
                .ok_or_else(bad)?;
            let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_769_860_800_123);
        assert_eq!(rfc3339(t), "2026-01-31T12:00:00.123Z");
        assert_eq!(parse_time("2026-01-31T12:00:00.123Z"), Ok(t));
        assert_eq!(parse_time("2026-01-31T14:00:00.123+02:00"), Ok(t));
        assert_eq!(
            parse_time("1769860800"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_769_860_800))
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time("2000-02-29T00:00:00Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
    }

    #[test]
    fn bad_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-31",
            "2026-01-31T12:00:00",
            "2026-01-31T12:00:00.Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn outcomes_print_as_utf8_or_hex() {
        assert_eq!(bytes_text(b"ok"), ("ok".to_owned(), "utf8"));
        assert_eq!(bytes_text(&[0xff, 0x00]), ("ff00".to_owned(), "hex"));
    }
}
