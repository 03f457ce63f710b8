//! The main demo: a small payment service that charges every request exactly once, although
//! its clients retry on timeouts and the service is killed with SIGKILL in the middle.
//!
//! ```sh
//! cargo run --release --example payments                   # in a temporary directory
//! cargo run --release --example payments -- --dir demo     # keeps demo/store for the CLI
//! ```
//!
//! - The **service** is this same program re-run as a child process (with the environment
//!   variable `IDEMSTORE_PAYMENTS_SERVICE` naming the demo directory). It serves
//!   `charge <client> <idempotency-key> <amount>` lines over TCP on 127.0.0.1. For each request it
//!   asks the store: a claim runs the charge, a completed key replays the stored answer, a live
//!   claim answers 409 and a key reused with another amount answers 422.
//! - The **payment processor** is an append-only ledger file (`ledger.log`), one line per
//!   charge, synced before the charge counts as made. It plays the bank: the ground truth of what
//!   was charged, which the service asks when it finds a claim *in doubt*.
//! - The **clients** (threads of the parent process) send charges with idempotency keys, retry
//!   on timeouts, refused connections and 409s, and now and then reuse a key with another amount.
//! - The parent **kills the service** (`Child::kill`, SIGKILL on Unix) a few times while charges
//!   are in flight, and restarts it. A claim made before the kill but never completed is in
//!   doubt: the charge may or may not have reached the ledger. The restarted service takes such
//!   claims over (`attempt() > 1`, or `recovery_report().in_doubt` / `in_progress()` at start) and
//!   reconciles them against the ledger instead of charging again. The claim's fencing token goes
//!   with every charge, and the processor refuses a charge from a superseded claim.
//!
//! At the end the parent checks the ledger (every planned charge exactly once, nothing else),
//! every client's final answer (the original charge id), the store (every key completed with
//! that answer, no claim left) and `idemstore::verify_dir`, prints a report, and exits with 1
//! if a charge ran twice or was lost.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idemstore::{Begin, Claim, Error as StoreError, Key, Options, RecordState, Store};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// Set (to the demo directory) in the environment of the service child process.
const SERVICE_ENV: &str = "IDEMSTORE_PAYMENTS_SERVICE";
/// The resource part of every key.
const RESOURCE: &str = "POST /v1/charges";
/// How long a claim holds its key. Longer than any charge takes; a restart waits this long at
/// most before it may take over the claims a killed service left behind.
const LEASE: Duration = Duration::from_millis(500);
/// A client gives up waiting for an answer after this long, and retries.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);
/// One charge in this many is slow at the processor (longer than the client timeout, shorter
/// than the lease): its client times out and retries while it is still running.
const SLOW_ONE_IN: u64 = 40;
const SLOW_CHARGE: Duration = Duration::from_millis(300);
/// One client in this many sends a request under an already used key with another amount.
const REUSE_ONE_IN: u64 = 10;

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(SERVICE_ENV) {
        return match service::run(Path::new(&dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("payments service: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{}", Config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("payments: {e}\n\n{}", Config::USAGE);
            return ExitCode::from(2);
        }
    };
    match driver::run(&config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("payments: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Command-line settings of the demo.
struct Config {
    dir: Option<PathBuf>,
    clients: u64,
    charges: u64,
    kills: u64,
    seed: u64,
}

impl Config {
    const USAGE: &'static str = "\
usage: cargo run --release --example payments -- [options]

  --dir DIR       keep the store (DIR/store) and the ledger (DIR/ledger.log) in DIR
                  instead of a temporary directory, to try the idemstore CLI on them
  --clients N     client threads (default 8)
  --charges N     charges per client (default 40)
  --kills N       how often the service is killed with SIGKILL (default 3)
  --seed N        seed of the simulated latencies and kill points (default: from the clock)";

    fn from_args(mut args: impl Iterator<Item = String>) -> Result<Option<Config>> {
        let mut config = Config {
            dir: None,
            clients: 8,
            charges: 40,
            kills: 3,
            seed: now_nanos(),
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--dir" => config.dir = Some(PathBuf::from(value()?)),
                "--clients" => config.clients = number(&arg, &value()?)?.max(1),
                "--charges" => config.charges = number(&arg, &value()?)?.max(1),
                "--kills" => config.kills = number(&arg, &value()?)?,
                "--seed" => config.seed = number(&arg, &value()?)?,
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        Ok(Some(config))
    }
}

fn number(flag: &str, value: &str) -> Result<u64> {
    value
        .parse()
        .map_err(|_| format!("{flag} expects a whole number, got {value:?}").into())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// splitmix64: a small deterministic generator for latencies and kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The payment processor's ledger: one line per charge made, `<charge id> <token> <client>
/// <idempotency key> <amount>`, appended and synced before the charge counts as made.
mod ledger {
    use super::*;

    /// One charge in the ledger.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        /// `ch_<token>`: named after the fencing token of the claim that made it.
        pub charge: String,
        pub token: u64,
        pub client: String,
        pub key: String,
        pub amount: u64,
    }

    impl Entry {
        pub fn line(&self) -> String {
            format!(
                "{} {} {} {} {}\n",
                self.charge, self.token, self.client, self.key, self.amount
            )
        }

        /// The service's answer for this charge: what the store keeps and replays.
        pub fn answer(&self) -> String {
            format!(
                r#"{{"charge":"{}","client":"{}","amount":{}}}"#,
                self.charge, self.client, self.amount
            )
        }
    }

    /// Reads every charge in the ledger at `path` (none if it does not exist). A last line
    /// without its newline was never synced whole (a power cut, not a kill) and is not a charge;
    /// with `repair` it is cut off.
    pub fn read(path: &Path, repair: bool) -> Result<Vec<Entry>> {
        let mut text = String::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        if whole < text.len() && repair {
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(whole as u64)?;
        }
        let mut entries = Vec::new();
        for (n, line) in text.get(..whole).unwrap_or_default().lines().enumerate() {
            let bad = || format!("{}: line {} is malformed: {line:?}", path.display(), n + 1);
            let fields: Vec<&str> = line.split(' ').collect();
            let [charge, token, client, key, amount] = fields.as_slice() else {
                return Err(bad().into());
            };
            entries.push(Entry {
                charge: (*charge).to_owned(),
                token: token.parse().map_err(|_| bad())?,
                client: (*client).to_owned(),
                key: (*key).to_owned(),
                amount: amount.parse().map_err(|_| bad())?,
            });
        }
        Ok(entries)
    }
}

/// The payment service: the child process.
mod service {
    use super::*;

    /// The simulated payment processor: the ledger, plus the fence of each key (the highest
    /// claim token it has seen), so that a superseded claim cannot charge.
    struct Processor {
        file: File,
        charged: HashMap<(String, String), ledger::Entry>,
        fence: HashMap<(String, String), u64>,
    }

    struct Service {
        store: Store,
        processor: Mutex<Processor>,
        rng: Mutex<Rng>,
        /// Event lines for the parent (stdout).
        events: Mutex<std::io::Stdout>,
    }

    /// Why a request got no answer from the store's point of view.
    #[derive(Debug)]
    enum Refused {
        /// The processor refused the charge: a newer claim holds the key.
        Fenced,
        Store(StoreError),
    }

    impl From<StoreError> for Refused {
        fn from(e: StoreError) -> Self {
            Refused::Store(e)
        }
    }

    pub fn run(dir: &Path) -> Result<()> {
        let store = Options::new().lease(LEASE).open(dir.join("store"))?;
        let ledger_path = dir.join("ledger.log");
        let mut processor = Processor {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&ledger_path)?,
            charged: HashMap::new(),
            fence: HashMap::new(),
        };
        for entry in ledger::read(&ledger_path, true)? {
            let id = (entry.client.clone(), entry.key.clone());
            processor.fence.insert(id.clone(), entry.token);
            processor.charged.insert(id, entry);
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let report = store.recovery_report();
        let in_doubt = store.in_progress()?;
        let service = Arc::new(Service {
            store,
            processor: Mutex::new(processor),
            rng: Mutex::new(Rng(now_nanos() ^ u64::from(std::process::id()))),
            events: Mutex::new(std::io::stdout()),
        });
        service.event(&format!(
            "ready {} {} {} {}",
            addr.port(),
            report.in_doubt,
            report.replayed,
            u8::from(report.torn_tail.is_some())
        ));

        // Claims the killed service left in progress: take each over once its lease lapses
        // and settle it from the ledger, even if its client never comes back.
        let reconciler = Arc::clone(&service);
        thread::spawn(move || reconciler.reconcile_at_start(in_doubt));

        // The parent closes our stdin to stop us (and so does its death).
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(addr); // wakes `accept`
        });

        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let service = Arc::clone(&service);
            thread::spawn(move || service.serve(stream));
        }
        // Every client is done; closing through this clone closes the shared store.
        let store = service.store.clone();
        store.close()?;
        Ok(())
    }

    impl Service {
        fn event(&self, line: &str) {
            let mut out = lock(&self.events);
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }

        fn pause(&self, from: u64, to: u64) {
            let d = lock(&self.rng).millis(from, to);
            thread::sleep(d);
        }

        /// One connection: one request line, one answer line.
        fn serve(&self, stream: TcpStream) {
            let mut line = String::new();
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            if BufReader::new(read_half).read_line(&mut line).is_err() {
                return;
            }
            let answer = match self.handle(line.trim_end()) {
                Ok(answer) => answer,
                Err(e) => format!("500 {e}"),
            };
            let mut stream = stream;
            // The client may have timed out and gone: it will retry.
            let _ = writeln!(stream, "{answer}");
        }

        fn handle(&self, line: &str) -> Result<String> {
            let fields: Vec<&str> = line.split(' ').collect();
            let ["charge", client, key, amount] = fields.as_slice() else {
                return Ok(format!(
                    "400 expected `charge <client> <key> <amount>`, got {line:?}"
                ));
            };
            let amount: u64 = amount.parse()?;
            let idem = Key::new(client, key, RESOURCE)?;
            // The request body the key is bound to: the same key with another amount is a 422.
            let request = format!("amount={amount}");
            Ok(match self.store.begin(&idem, request.as_bytes())? {
                Begin::Claimed(claim) => match self.run_claimed(&claim, client, key, amount) {
                    Ok(answer) => format!("201 {answer}"),
                    Err(Refused::Fenced) => "500 superseded by a newer claim".to_owned(),
                    Err(Refused::Store(e)) => format!("500 {e}"),
                },
                Begin::Completed(outcome) => {
                    format!("200 {}", String::from_utf8_lossy(outcome.data()))
                }
                Begin::InProgress { .. } => "409 a request with this key is in progress".to_owned(),
                Begin::Mismatch { .. } => "422 key reused with a different request".to_owned(),
            })
        }

        /// Runs a claimed charge — or, for a claim in doubt, settles it from the ledger.
        fn run_claimed(
            &self,
            claim: &Claim,
            client: &str,
            key: &str,
            amount: u64,
        ) -> Result<String, Refused> {
            let id = (client.to_owned(), key.to_owned());
            if claim.attempt() > 1 {
                // An earlier claim lapsed without completing: its process died (or stalled),
                // maybe after charging. Ask the processor, fencing off the old claim first.
                if let Some(entry) = self.lookup_and_fence(&id, claim.token()) {
                    let answer = entry.answer();
                    self.store.complete(claim, answer.as_bytes())?;
                    return Ok(answer);
                }
            }
            let entry = self.charge(id, claim.token(), amount)?;
            let answer = entry.answer();
            self.store.complete(claim, answer.as_bytes())?;
            Ok(answer)
        }

        /// Whether the processor charged `id`; from now on it refuses tokens below `token`.
        fn lookup_and_fence(&self, id: &(String, String), token: u64) -> Option<ledger::Entry> {
            let mut processor = lock(&self.processor);
            let fence = processor.fence.entry(id.clone()).or_insert(0);
            *fence = (*fence).max(token);
            processor.charged.get(id).cloned()
        }

        /// The side effect: a call to the processor, which appends and syncs a ledger line.
        fn charge(
            &self,
            id: (String, String),
            token: u64,
            amount: u64,
        ) -> Result<ledger::Entry, Refused> {
            let slow = lock(&self.rng).below(SLOW_ONE_IN) == 0;
            if slow {
                thread::sleep(SLOW_CHARGE);
            } else {
                self.pause(1, 8); // the request's way to the processor
            }
            let entry = {
                let mut processor = lock(&self.processor);
                if processor.fence.get(&id).is_some_and(|&fence| fence > token) {
                    return Err(Refused::Fenced);
                }
                let entry = ledger::Entry {
                    charge: format!("ch_{token}"),
                    token,
                    client: id.0.clone(),
                    key: id.1.clone(),
                    amount,
                };
                let write = processor
                    .file
                    .write_all(entry.line().as_bytes())
                    .and_then(|()| processor.file.sync_data());
                write.map_err(|e| Refused::Store(StoreError::Io(e)))?;
                processor.fence.insert(id.clone(), token);
                processor.charged.insert(id, entry.clone());
                entry
            };
            self.pause(0, 3); // the answer's way back
            Ok(entry)
        }

        /// Settles the claims found in progress at start, each once its lease has lapsed.
        fn reconcile_at_start(&self, mut in_doubt: Vec<idemstore::Record>) {
            in_doubt.sort_by_key(lease_of);
            for record in in_doubt {
                if let Ok(wait) = lease_of(&record).duration_since(SystemTime::now()) {
                    thread::sleep(wait);
                }
                // The same fingerprint the claim was made with; a client's retry may win the
                // race for the key instead, and then settles it the same way.
                let Ok(Begin::Claimed(claim)) =
                    self.store.begin_with(record.key(), record.fingerprint())
                else {
                    continue;
                };
                let client = String::from_utf8_lossy(claim.key().client()).into_owned();
                let key = String::from_utf8_lossy(claim.key().request()).into_owned();
                match self.lookup_and_fence(&(client, key), claim.token()) {
                    Some(entry) => {
                        let _ = self.store.complete(&claim, entry.answer().as_bytes());
                    }
                    // Never charged: give the key back; the client's retry charges it once.
                    None => {
                        if self.store.release(&claim).is_ok() {
                            self.event("event released-uncharged");
                        }
                    }
                }
            }
        }
    }

    fn lease_of(record: &idemstore::Record) -> SystemTime {
        match record.state() {
            RecordState::InProgress {
                lease_expires_at, ..
            } => lease_expires_at,
            _ => SystemTime::now(),
        }
    }
}

/// The parent process: clients, the service's life and death, and the final checks.
mod driver {
    use super::*;

    /// What the clients saw, over all their requests.
    #[derive(Default)]
    struct Counters {
        requests: AtomicU64,
        retries: AtomicU64,
        timeouts: AtomicU64,
        refused: AtomicU64,
        created: AtomicU64,
        replays: AtomicU64,
        conflicts: AtomicU64,
        rejected: AtomicU64,
        errors: AtomicU64,
        /// Charges answered for good (201 or 200).
        settled: AtomicU64,
    }

    /// What the service's incarnations reported.
    #[derive(Default)]
    struct ServiceEvents {
        in_doubt: AtomicU64,
        replayed: AtomicU64,
        torn_tails: AtomicU64,
        released_uncharged: AtomicU64,
    }

    struct Shared {
        /// The service's port; 0 while it is down.
        port: AtomicU16,
        counters: Counters,
        events: ServiceEvents,
        /// Things a client saw that break the guarantee.
        violations: Mutex<Vec<String>>,
    }

    /// One charge a client wants made exactly once.
    #[derive(Debug, Clone)]
    struct Planned {
        client: String,
        key: String,
        amount: u64,
    }

    /// The service child process and the thread reading its stdout.
    struct Service {
        child: Child,
        stdin: Option<ChildStdin>,
        reader: thread::JoinHandle<()>,
    }

    pub fn run(config: &Config) -> Result<bool> {
        let temp;
        let dir = match &config.dir {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => {
                temp = tempfile::tempdir()?;
                temp.path().to_path_buf()
            }
        };
        let store_dir = dir.join("store");
        let ledger_path = dir.join("ledger.log");
        // Keys carry a run id, so that a second run in the same --dir starts afresh.
        let run_id = format!("r{:x}", now_nanos() / 1_000_000);
        let mut rng = Rng(config.seed);
        let plan = plan(config, &run_id, &mut rng);
        let total = plan.iter().map(Vec::len).sum::<usize>() as u64;
        println!(
            "payments demo: {} clients x {} charges, service killed with SIGKILL {} times (seed {})",
            config.clients, config.charges, config.kills, config.seed
        );

        let shared = Arc::new(Shared {
            port: AtomicU16::new(0),
            counters: Counters::default(),
            events: ServiceEvents::default(),
            violations: Mutex::new(Vec::new()),
        });
        let mut service = Service::start(&dir, &shared)?;
        let (answers_tx, answers_rx) = mpsc::channel();
        let clients: Vec<_> = plan
            .into_iter()
            .enumerate()
            .map(|(n, charges)| {
                let shared = Arc::clone(&shared);
                let answers = answers_tx.clone();
                let seed = rng.next() ^ n as u64;
                thread::spawn(move || client(&shared, charges, seed, &answers))
            })
            .collect();
        drop(answers_tx);

        // Kill the service at evenly spread points of progress, while charges are in flight.
        for k in 1..=config.kills {
            let at = total * k / (config.kills + 1);
            while shared.counters.settled.load(Ordering::SeqCst) < at {
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(rng.millis(0, 15));
            shared.port.store(0, Ordering::SeqCst);
            service.kill()?;
            println!("  killed the service (SIGKILL) after {at} of {total} charges; restarting");
            service = Service::start(&dir, &shared)?;
        }
        for client in clients {
            client.join().map_err(|_| "a client thread panicked")?;
        }
        shared.port.store(0, Ordering::SeqCst);
        service.stop()?;

        let answers: BTreeMap<(String, String), (u64, String)> = answers_rx
            .into_iter()
            .map(|(p, answer): (Planned, String)| ((p.client, p.key), (p.amount, answer)))
            .collect();
        check(
            config,
            &dir,
            &store_dir,
            &ledger_path,
            &run_id,
            &answers,
            &shared,
        )
    }

    /// Each client's charges: amounts in cents, idempotency keys unique per client.
    fn plan(config: &Config, run_id: &str, rng: &mut Rng) -> Vec<Vec<Planned>> {
        (0..config.clients)
            .map(|c| {
                (0..config.charges)
                    .map(|n| Planned {
                        client: format!("client-{c:02}"),
                        key: format!("{run_id}-charge-{n:04}"),
                        amount: 100 + rng.below(99_900),
                    })
                    .collect()
            })
            .collect()
    }

    /// A client: sends each charge until it gets a final answer, and sometimes (a bug on its
    /// side) reuses a key with another amount, which must be refused.
    fn client(
        shared: &Shared,
        charges: Vec<Planned>,
        seed: u64,
        answers: &mpsc::Sender<(Planned, String)>,
    ) {
        let mut rng = Rng(seed);
        for charge in charges {
            let line = format!("charge {} {} {}", charge.client, charge.key, charge.amount);
            let answer = send_until_answered(shared, &line, &mut rng);
            match answer.split_once(' ') {
                Some(("201", body)) => {
                    shared.counters.created.fetch_add(1, Ordering::Relaxed);
                    let _ = answers.send((charge.clone(), body.to_owned()));
                }
                Some(("200", body)) => {
                    shared.counters.replays.fetch_add(1, Ordering::Relaxed);
                    let _ = answers.send((charge.clone(), body.to_owned()));
                }
                _ => lock(&shared.violations).push(format!(
                    "{} {}: answered {answer:?}",
                    charge.client, charge.key
                )),
            }
            shared.counters.settled.fetch_add(1, Ordering::SeqCst);

            if rng.below(REUSE_ONE_IN) == 0 {
                let reuse = format!(
                    "charge {} {} {}",
                    charge.client,
                    charge.key,
                    charge.amount + 1
                );
                let answer = send_until_answered(shared, &reuse, &mut rng);
                if answer.starts_with("422") {
                    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                } else {
                    lock(&shared.violations).push(format!(
                        "{} {}: reused with another amount, answered {answer:?}",
                        charge.client, charge.key
                    ));
                }
            }
        }
    }

    /// Sends `line` until the answer is final (not a timeout, refusal, 409 or 500).
    fn send_until_answered(shared: &Shared, line: &str, rng: &mut Rng) -> String {
        let c = &shared.counters;
        let mut tries = 0u32;
        loop {
            let port = shared.port.load(Ordering::SeqCst);
            if port == 0 {
                thread::sleep(Duration::from_millis(10)); // the service is restarting
                continue;
            }
            if tries > 0 {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
            tries += 1;
            c.requests.fetch_add(1, Ordering::Relaxed);
            match send(port, line) {
                Ok(answer) if answer.starts_with("409") => {
                    c.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(answer) if answer.starts_with("500") => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(answer) => return answer,
                Err(e) if is_timeout(&e) => {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Back off before retrying: exponential, capped, with jitter.
            let ceiling = (5u64 << tries.min(6)).min(200);
            thread::sleep(rng.millis(ceiling / 2, ceiling));
        }
    }

    fn send(port: u16, line: &str) -> std::io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        writeln!(stream, "{line}")?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer)?;
        if answer.is_empty() {
            // The service died before answering.
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        Ok(answer.trim_end().to_owned())
    }

    fn is_timeout(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    }

    impl Service {
        /// Starts the service child and waits until it listens.
        fn start(dir: &Path, shared: &Arc<Shared>) -> Result<Service> {
            let mut child = Command::new(std::env::current_exe()?)
                .env(SERVICE_ENV, dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().ok_or("no stdout from the service")?;
            let (ready_tx, ready_rx) = mpsc::channel();
            let events = Arc::clone(shared);
            let reader = thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    events.on_event(&line, &ready_tx);
                }
            });
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(port) => shared.port.store(port, Ordering::SeqCst),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    return Err(format!("the service did not start ({status})").into());
                }
            }
            Ok(Service {
                child,
                stdin,
                reader,
            })
        }

        /// SIGKILL: no destructor, no flush, no close.
        fn kill(mut self) -> Result<()> {
            self.child.kill()?;
            self.child.wait()?;
            let _ = self.reader.join();
            Ok(())
        }

        /// A clean stop: closing its stdin tells the service to close the store and exit.
        fn stop(mut self) -> Result<()> {
            drop(self.stdin.take());
            let status = self.child.wait()?;
            let _ = self.reader.join();
            if !status.success() {
                return Err(format!("the service exited with {status}").into());
            }
            Ok(())
        }
    }

    impl Shared {
        fn on_event(&self, line: &str, ready: &mpsc::Sender<u16>) {
            let e = &self.events;
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["ready", port, in_doubt, replayed, torn] => {
                    let n = |s: &str| s.parse::<u64>().unwrap_or(0);
                    e.in_doubt.fetch_add(n(in_doubt), Ordering::Relaxed);
                    e.replayed.fetch_add(n(replayed), Ordering::Relaxed);
                    e.torn_tails.fetch_add(n(torn), Ordering::Relaxed);
                    let _ = ready.send(port.parse().unwrap_or(0));
                }
                ["event", "released-uncharged"] => {
                    e.released_uncharged.fetch_add(1, Ordering::Relaxed);
                }
                _ => eprintln!("service: {line}"),
            }
        }
    }

    /// Checks the ledger, the clients' answers and the store; prints the report.
    fn check(
        config: &Config,
        dir: &Path,
        store_dir: &Path,
        ledger_path: &Path,
        run_id: &str,
        answers: &BTreeMap<(String, String), (u64, String)>,
        shared: &Shared,
    ) -> Result<bool> {
        let mut violations = lock(&shared.violations).clone();
        let planned = config.clients * config.charges;
        if answers.len() as u64 != planned {
            violations.push(format!(
                "{} of {planned} charges got a final answer",
                answers.len()
            ));
        }

        // The ledger: every planned charge exactly once, with its amount, and nothing else.
        let mut ledger: BTreeMap<(String, String), Vec<ledger::Entry>> = BTreeMap::new();
        for entry in ledger::read(ledger_path, false)? {
            if entry.key.starts_with(run_id) {
                let id = (entry.client.clone(), entry.key.clone());
                ledger.entry(id).or_default().push(entry);
            }
        }
        let executed: usize = ledger.values().map(Vec::len).sum();
        let mut duplicates = 0;
        let mut lost = 0;
        for ((client, key), entries) in &ledger {
            if entries.len() > 1 {
                duplicates += 1;
                let ids: Vec<&str> = entries.iter().map(|e| e.charge.as_str()).collect();
                violations.push(format!(
                    "{client} {key} charged {} times: {ids:?}",
                    ids.len()
                ));
            }
            if !answers.contains_key(&(client.clone(), key.clone())) {
                violations.push(format!("{client} {key} charged but never answered"));
            }
        }
        // The store, reopened: each key completed with the answer its client got.
        let store = Store::open(store_dir)?;
        let mut by_takeover = 0u64;
        let mut charged_before_crash = 0u64;
        for ((client, key), (amount, answer)) in answers {
            let Some(entry) = ledger
                .get(&(client.clone(), key.clone()))
                .and_then(|e| e.first())
            else {
                lost += 1;
                violations.push(format!(
                    "{client} {key}: answered {answer} but not in the ledger"
                ));
                continue;
            };
            if entry.amount != *amount {
                violations.push(format!(
                    "{client} {key}: charged {} not {amount}",
                    entry.amount
                ));
            }
            if *answer != entry.answer() {
                violations.push(format!(
                    "{client} {key}: the client got {answer}, the ledger says {}",
                    entry.answer()
                ));
            }
            let record = store.get(&Key::new(client, key, RESOURCE)?)?;
            match record.as_ref().and_then(idemstore::Record::outcome) {
                Some(outcome) if outcome.data() == entry.answer().as_bytes() => {
                    if outcome.attempt() > 1 {
                        by_takeover += 1;
                        if outcome.token() != entry.token {
                            charged_before_crash += 1;
                        }
                    }
                }
                other => violations.push(format!(
                    "{client} {key}: the store holds {other:?}, not the ledger's answer"
                )),
            }
        }
        let left = store
            .in_progress()?
            .into_iter()
            .filter(|r| r.key().request().starts_with(run_id.as_bytes()))
            .count();
        if left > 0 {
            violations.push(format!("{left} claims left in progress"));
        }
        store.close()?;
        let verify = idemstore::verify_dir(store_dir)?;
        for problem in &verify.problems {
            violations.push(format!("verify: {}: {}", problem.location, problem.what));
        }

        let c = &shared.counters;
        let e = &shared.events;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!();
        println!("  requests sent                 {:>6}", get(&c.requests));
        println!(
            "  retries                       {:>6}  ({} timeouts, {} refused or cut off by a kill, {} 409s, {} 500s)",
            get(&c.retries),
            get(&c.timeouts),
            get(&c.refused),
            get(&c.conflicts),
            get(&c.errors)
        );
        println!(
            "  replays (200)                 {:>6}  stored answer returned, nothing charged",
            get(&c.replays)
        );
        println!(
            "  conflicts (409)               {:>6}  same key already in progress: retry later",
            get(&c.conflicts)
        );
        println!(
            "  rejected (422)                {:>6}  key reused with another amount",
            get(&c.rejected)
        );
        println!(
            "  charges executed (ledger)     {executed:>6}  of {planned} planned; {} answered 201",
            get(&c.created)
        );
        println!(
            "  in doubt after kills          {:>6}  claims open at a restart (recovery_report().in_doubt, summed)",
            get(&e.in_doubt)
        );
        println!(
            "    reconciled from the ledger  {charged_before_crash:>6}  charged before the kill: completed with the original charge, not re-run"
        );
        println!(
            "    taken over, then charged    {:>6}  not in the ledger: charged once by the new claim",
            by_takeover - charged_before_crash
        );
        println!(
            "    released, client retried    {:>6}  not in the ledger: given back by the restart's reconciler",
            get(&e.released_uncharged)
        );
        println!("  duplicates / lost             {duplicates:>3} / {lost}");
        println!(
            "  verify_dir                    {}  ({} frames, {} records)",
            if verify.is_clean() {
                " clean"
            } else {
                "DAMAGED"
            },
            verify.frames,
            verify.records
        );
        println!();
        if violations.is_empty() {
            println!(
                "exactly-once: OK - each of the {planned} charges is in the ledger exactly once, and every retry got the original charge id"
            );
        } else {
            println!("exactly-once: VIOLATED");
            for v in &violations {
                println!("  - {v}");
            }
        }
        if config.dir.is_some() {
            println!(
                "\nThe store is left in {}; try the CLI on it:",
                store_dir.display()
            );
            println!(
                "  cargo run --features cli --bin idemstore -- stats {}",
                store_dir.display()
            );
            println!(
                "  cargo run --features cli --bin idemstore -- list {} --client client-00",
                store_dir.display()
            );
            println!(
                "The processor's ledger: {}",
                dir.join("ledger.log").display()
            );
        }
        Ok(violations.is_empty())
    }
}
