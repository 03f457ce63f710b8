//! A real store on a real disk in a child process that is killed with SIGKILL at a random
//! moment, round after round (in the style of sled's crash tests). The child re-runs this test
//! binary with `IDEMSTORE_TORTURE_CHILD` set, drives the store under `Durability::Immediate`
//! from several threads with the blocking calls and from asynchronous tasks on a Tokio
//! runtime with `begin_async`/`complete_async`, and prints a line for every acknowledged
//! completion. After each
//! kill the parent reopens the store and checks that every acknowledged key replays its exact
//! outcome (by blake3 hash) instead of being claimed again, and that fencing tokens stay
//! ahead of every token handed out.
//!
//! The seed is printed; replay a run with `IDEMSTORE_TORTURE_SEED=<seed>`. Run longer with
//! `IDEMSTORE_TORTURE_SECS=<seconds>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idemstore::{Begin, Claim, Durability, Key, Options, Outcome, Store};

const TEST_NAME: &str = "sigkill_never_loses_an_acknowledged_completion";
const CHILD_ENV: &str = "IDEMSTORE_TORTURE_CHILD";
const ROUND_ENV: &str = "IDEMSTORE_TORTURE_ROUND";
const SEED_ENV: &str = "IDEMSTORE_TORTURE_SEED";
const SECS_ENV: &str = "IDEMSTORE_TORTURE_SECS";
const THREADS: usize = 4;
/// Asynchronous tasks, on one more thread's current-thread runtime.
const TASKS: usize = 16;
/// A child that is never killed stops on its own after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);
const REQUEST: &[u8] = b"POST /v1/charges {amount: 1000}";

#[test]
fn sigkill_never_loses_an_acknowledged_completion() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

fn options() -> Options {
    Options::new()
        .durability(Durability::Immediate)
        .segment_size(64 << 10)
        .checkpoint_bytes(192 << 10)
        .checkpoint_interval(Some(Duration::from_millis(40)))
        .purge_interval(None)
        .cache_size(8 << 20)
}

fn key(request_id: &str) -> Key {
    Key::new("torture", request_id, "POST /v1/charges").expect("valid key")
}

/// The outcome stored for a request id: its length and bytes depend on the id and the seed.
fn outcome(request_id: &str, seed: u64) -> Vec<u8> {
    let hash = blake3::hash(format!("{seed}/{request_id}").as_bytes());
    let len = usize::from(u16::from_le_bytes([hash.as_bytes()[0], hash.as_bytes()[1]])) % 3000;
    hash.as_bytes().iter().copied().cycle().take(len).collect()
}

fn child(dir: &Path) {
    let env = |name: &str| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not set"))
    };
    let (round, seed) = (env(ROUND_ENV), env(SEED_ENV));
    let store = options().open(dir).expect("child: open the store");
    say("READY");
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..THREADS {
            let store = store.clone();
            s.spawn(move || {
                let mut n = 0u64;
                while started.elapsed() < CHILD_LIFETIME {
                    let id = format!("r{round}-t{t}-{n}");
                    n += 1;
                    work(&store, &id, seed);
                }
            });
        }
        let store = store.clone();
        s.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("child: a runtime");
            runtime.block_on(async {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let mut n = 0u64;
                            while started.elapsed() < CHILD_LIFETIME {
                                let id = format!("r{round}-a{t}-{n}");
                                n += 1;
                                work_async(&store, &id, seed).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("child: a task");
                }
            });
        });
    });
}

fn work(store: &Store, id: &str, seed: u64) {
    let claim = claimed(store.begin(&key(id), REQUEST).expect("child: begin"), id);
    let data = outcome(id, seed);
    let stored = store.complete(&claim, &data).expect("child: complete");
    acknowledged(id, &claim, &stored, &data);
}

async fn work_async(store: &Store, id: &str, seed: u64) {
    let begun = store.begin_async(&key(id), REQUEST).await;
    let claim = claimed(begun.expect("child: begin_async"), id);
    let data = outcome(id, seed);
    let stored = store.complete_async(&claim, &data).await;
    acknowledged(id, &claim, &stored.expect("child: complete_async"), &data);
}

fn claimed(begin: Begin, id: &str) -> Claim {
    match begin {
        Begin::Claimed(c) => c,
        other => panic!("child: a new key {id} was not claimed: {other:?}"),
    }
}

/// Reports a completion the store acknowledged (the call returned, or its future resolved):
/// its outcome is durable.
fn acknowledged(id: &str, claim: &Claim, stored: &Outcome, data: &[u8]) {
    assert_eq!(stored.data(), data);
    let hash = blake3::hash(stored.data());
    say(&format!("ACK {id} {} {}", hash.to_hex(), claim.token()));
}

/// One whole line per write(2) on the pipe, so a kill never leaves half a line behind.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

struct Acked {
    id: String,
    hash: String,
    token: u64,
}

fn parent() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let budget = Duration::from_secs(
        std::env::var(SECS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25),
    );
    eprintln!("torture seed {seed}: replay with {SEED_ENV}={seed}");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current_exe");
    let started = Instant::now();
    let mut acked: Vec<Acked> = Vec::new();
    let mut verified = 0; // acked[..verified] were checked after a kill
    let (mut rounds, mut killed_while_working, mut killed_early) = (0u64, 0u64, 0u64);

    while started.elapsed() < budget {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, rounds.to_string())
            .env(SEED_ENV, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel::<String>();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });

        let mut early = Vec::new();
        if rng.below(5) == 0 {
            // Kill it while it starts up, maybe in the middle of its recovery.
            thread::sleep(Duration::from_millis(rng.below(60)));
            killed_early += 1;
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    // libtest's "test <name> ... " has no newline of its own.
                    Ok(line) if line.ends_with("READY") => break,
                    Ok(line) => early.push(line),
                    Err(e) => {
                        let _ = child.kill();
                        let status = child.wait().expect("wait for the child");
                        let stderr = stderr_reader.join().expect("stderr reader");
                        panic!(
                            "round {rounds}: the child did not open the store ({e}, {status}); \
                             its stderr:\n{stderr}"
                        );
                    }
                }
            }
            thread::sleep(Duration::from_millis(5 + rng.below(150)));
            killed_while_working += 1;
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait for the child");
        reader.join().expect("stdout reader");
        let child_stderr = stderr_reader.join().expect("stderr reader");
        assert_eq!(
            status.signal(),
            Some(9),
            "round {rounds}: the child was not killed but exited with {status}; its stderr:\n{child_stderr}"
        );
        for line in early.into_iter().chain(lines.try_iter()) {
            let mut words = line.split(' ');
            if words.next() != Some("ACK") {
                continue;
            }
            let mut field = || {
                words
                    .next()
                    .expect("an ACK line has three fields")
                    .to_string()
            };
            let (id, hash, token) = (field(), field(), field());
            acked.push(Acked {
                id,
                hash,
                token: token.parse().expect("a token"),
            });
        }
        rounds += 1;

        // Most rounds the parent reopens and checks; otherwise the next child recovers from
        // the kill itself (and may be killed while it does).
        if rng.below(3) > 0 {
            let store = options().open(dir.path()).expect("reopen after SIGKILL");
            check(&store, &acked[verified..], &acked);
            // And a sample of everything acknowledged in earlier rounds.
            for _ in 0..verified.min(40) {
                let i = rng.below(verified as u64) as usize;
                check(&store, &acked[i..=i], &acked);
            }
            verified = acked.len();
        }
    }

    let store = options().open(dir.path()).expect("final reopen");
    check(&store, &acked, &acked);
    let by_tasks = acked.iter().filter(|a| a.id.contains("-a")).count();
    eprintln!(
        "torture seed {seed}: {rounds} rounds ({killed_while_working} killed while working, \
         {killed_early} while starting), {} completions acknowledged and replayed, {by_tasks} \
         of them by asynchronous tasks",
        acked.len()
    );
    assert!(
        by_tasks > 0 && by_tasks < acked.len(),
        "both the threads and the tasks had completions acknowledged"
    );
    assert!(
        killed_while_working > 0,
        "no child was killed while working"
    );
    assert!(
        acked.len() as u64 >= killed_while_working,
        "the children acknowledged almost nothing: {} in {rounds} rounds",
        acked.len()
    );
}

/// Every completion in `these` replays with its hash; tokens stay ahead of all of `all`.
fn check(store: &Store, these: &[Acked], all: &[Acked]) {
    for a in these {
        match store.begin(&key(&a.id), REQUEST).expect("begin") {
            Begin::Completed(o) => assert_eq!(
                blake3::hash(o.data()).to_hex().as_str(),
                a.hash,
                "{}: the replayed outcome differs from the acknowledged one",
                a.id
            ),
            other => panic!(
                "{}: an acknowledged completion was lost after SIGKILL: {other:?}",
                a.id
            ),
        }
    }
    let max_token = all.iter().map(|a| a.token).max().unwrap_or(0);
    let next = store.stats().expect("stats").next_token;
    assert!(next > max_token, "next token {next} not above {max_token}");
}

/// splitmix64, so that a seed names one schedule of kills.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}
