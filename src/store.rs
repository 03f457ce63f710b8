//! The public handle: decisions under one lock, group commit to the log, then the index.
//!
//! # Write path
//!
//! 1. Under the `core` lock, read the key's current state (a change still in flight, else the
//!    index), decide with [`crate::decide`], assign the LSN (and a fencing token for a claim),
//!    append the frame to the shared batch and record the change as in flight.
//! 2. Wait until the LSN is acknowledged. The first waiter with no leader running becomes the
//!    leader: it takes the whole batch, writes it with one write(2), syncs once
//!    (`Durability::Immediate`), applies it to the index in one non-durable redb commit, makes
//!    the commit visible to readers, and only then marks the batch acknowledged and wakes every
//!    waiter. Callers that arrived meanwhile form the next batch.
//! 3. A failed write or sync fails the batch's callers and poisons the handle: every later
//!    write gets `Error::PreviousIo` until the store is reopened and recovers from disk.
//!
//! Answers that write nothing (replay, in progress, mismatch, lost) still wait for the change
//! they were decided on, if it is in flight, so nothing not yet durable is ever reported.

use std::any::Any;
use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::claim::{Begin, Claim};
use crate::clock::{duration_nanos, from_nanos, to_nanos};
use crate::decide::{self, BeginDecision, HolderDecision, Policy};
use crate::error::{Error, Result};
use crate::index::{Change, Checkpoint, Index, decode_entry};
use crate::key::{Fingerprint, Key};
use crate::log::writer::Writer;
use crate::log::{entry, frame};
use crate::options::{Durability, Options};
use crate::record::{Body, Entry, Outcome, Record};
use crate::recovery::recover;
use crate::stats::{RecoveryReport, Stats};
use crate::storage::Storage;

/// Expired records removed per index commit by TTL compaction, so that foreground writers
/// wait at most one small commit.
const PURGE_CHUNK: usize = 1024;

/// An open idempotency store. Cheap to clone: clones share one store.
///
/// See the [crate documentation](crate) for an example, and [`Options`] for configuration.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("storage", &self.shared.storage.describe())
            .finish_non_exhaustive()
    }
}

struct Shared {
    options: Options,
    policy: Policy,
    core: Mutex<Core>,
    acknowledged: Condvar,
    io: Mutex<Io>,
    index: Index,
    storage: Arc<dyn Storage>,
    closed: AtomicBool,
    report: RecoveryReport,
    counters: Counters,
    /// The highest LSN known durable in the log; written into each frame.
    synced_lsn: AtomicU64,
    background: Mutex<Option<Background>>,
    /// Released last, after the index is dropped.
    _lock: Box<dyn Any + Send + Sync>,
}

/// Decision state and the batch being formed.
struct Core {
    /// Changes written to the batch or the log but not yet acknowledged, by key.
    in_flight: HashMap<Vec<u8>, InFlight>,
    frames: Vec<u8>,
    changes: Vec<Change>,
    next_lsn: u64,
    next_token: u64,
    acknowledged_lsn: u64,
    leader: bool,
    failure: Option<String>,
}

struct InFlight {
    lsn: u64,
    entry: Option<Entry>,
}

/// The log writer and checkpoint bookkeeping; held by the leader while it writes and applies.
struct Io {
    writer: Writer,
    written_lsn: u64,
    applied_lsn: u64,
    checkpoint_lsn: u64,
    bytes_since_checkpoint: u64,
    last_checkpoint: Instant,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    checkpoints: AtomicU64,
    purged: AtomicU64,
}

struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Store {
    /// Opens (creating if missing) the store in directory `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<std::path::Path>) -> Result<Store> {
        Options::new().open(dir)
    }

    pub(crate) fn open_with(options: Options, storage: Arc<dyn Storage>) -> Result<Store> {
        let lock = storage.try_lock()?.ok_or_else(|| Error::Locked {
            path: storage.describe(),
        })?;
        let recovered = recover(&storage, options.cache_size, options.segment_size)?;
        let last_lsn = recovered.next_lsn - 1;
        let shared = Arc::new(Shared {
            policy: Policy {
                lease: duration_nanos(options.lease),
                retention: duration_nanos(options.retention),
            },
            core: Mutex::new(Core {
                in_flight: HashMap::new(),
                frames: Vec::new(),
                changes: Vec::new(),
                next_lsn: recovered.next_lsn,
                next_token: recovered.next_token,
                acknowledged_lsn: last_lsn,
                leader: false,
                failure: None,
            }),
            acknowledged: Condvar::new(),
            io: Mutex::new(Io {
                writer: recovered.writer,
                written_lsn: last_lsn,
                applied_lsn: last_lsn,
                checkpoint_lsn: recovered.checkpoint_lsn,
                bytes_since_checkpoint: 0,
                last_checkpoint: Instant::now(),
            }),
            index: recovered.index,
            storage,
            closed: AtomicBool::new(false),
            report: recovered.report,
            counters: Counters::default(),
            // Recovery synced what it kept; a frame never claims more than the log's end.
            synced_lsn: AtomicU64::new(last_lsn),
            background: Mutex::new(None),
            options,
            _lock: lock,
        });
        Shared::start_background(&shared);
        Ok(Store { shared })
    }

    /// Asks about `key` before running the operation whose input is `request`, and claims the
    /// key if the operation should run. `request` is fingerprinted with blake3; a retry must
    /// send the same bytes (see [`begin_with`](Store::begin_with) to fingerprint a canonical
    /// form instead).
    ///
    /// Atomic: of any number of concurrent callers for one key, exactly one is `Claimed`. A
    /// claim is durable (in the configured [`Durability`]) before it is returned.
    pub fn begin(&self, key: &Key, request: &[u8]) -> Result<Begin> {
        self.begin_with(key, Fingerprint::of(request))
    }

    /// [`begin`](Store::begin) with a fingerprint the caller computed.
    pub fn begin_with(&self, key: &Key, request: Fingerprint) -> Result<Begin> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let core = shared.core.lock();
        let (current, depends_on) = shared.current(&core, key.as_bytes())?;
        match decide::begin(current.as_ref(), request, now) {
            BeginDecision::Claim { attempt } => {
                let token = core.next_token;
                let entry = decide::claim_entry(request, token, attempt, now, shared.policy);
                let lease_expires_at = match entry.body {
                    Body::InProgress { lease_expires_at } => lease_expires_at,
                    Body::Completed { .. } => now,
                };
                shared.write(core, key.as_bytes(), Some(entry), true)?;
                Ok(Begin::Claimed(Claim {
                    key: key.clone(),
                    fingerprint: request,
                    token,
                    attempt,
                    lease_expires_at,
                }))
            }
            decision => {
                shared.wait_acknowledged(core, depends_on)?;
                Ok(match decision {
                    BeginDecision::Replay(outcome) => Begin::Completed(outcome),
                    BeginDecision::InProgress {
                        lease_expires_at,
                        attempt,
                    } => Begin::InProgress {
                        lease_expires_at: from_nanos(lease_expires_at),
                        attempt,
                    },
                    BeginDecision::Mismatch { stored } => Begin::Mismatch { stored },
                    BeginDecision::Claim { .. } => unreachable!("handled above"),
                })
            }
        }
    }

    /// Stores the outcome of the claimed operation; durable before it returns. Returns the
    /// stored outcome, which retries will replay.
    ///
    /// Idempotent: completing the same claim again returns the first outcome and writes
    /// nothing. A claim that is no longer current gets [`Error::ClaimLost`]; an outcome over
    /// [`Options::max_outcome_size`] gets [`Error::OutcomeTooLarge`] and leaves the claim valid.
    pub fn complete(&self, claim: &Claim, outcome: &[u8]) -> Result<Outcome> {
        let shared = &*self.shared;
        shared.check_open()?;
        let limit = shared.options.max_outcome_size;
        if outcome.len() > limit {
            return Err(Error::OutcomeTooLarge {
                size: outcome.len(),
                limit,
            });
        }
        let now = shared.now();
        let core = shared.core.lock();
        let key = claim.key.as_bytes();
        let (current, depends_on) = shared.current(&core, key)?;
        match decide::complete(current.as_ref(), claim.token, outcome, now, shared.policy) {
            HolderDecision::Write(Some(entry)) => {
                let stored = entry.outcome();
                shared.write(core, key, Some(entry), false)?;
                stored.ok_or(Error::ClaimLost { token: claim.token })
            }
            HolderDecision::AlreadyCompleted(outcome) => {
                shared.wait_acknowledged(core, depends_on)?;
                Ok(outcome)
            }
            HolderDecision::Write(None) | HolderDecision::Lost => {
                shared.wait_acknowledged(core, depends_on)?;
                Err(Error::ClaimLost { token: claim.token })
            }
        }
    }

    /// Gives the key back: the operation failed and may be retried. The key is absent at once,
    /// and the next `begin` claims it with attempt 1.
    pub fn release(&self, claim: &Claim) -> Result<()> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let core = shared.core.lock();
        let key = claim.key.as_bytes();
        let (current, depends_on) = shared.current(&core, key)?;
        shared.holder_write(
            core,
            claim,
            decide::release(current.as_ref(), claim.token, now),
            depends_on,
        )
    }

    /// Extends the claim's lease to at least `by` from now (a heartbeat for long operations).
    /// Returns the new lease expiry.
    pub fn extend(&self, claim: &Claim, by: Duration) -> Result<SystemTime> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let core = shared.core.lock();
        let key = claim.key.as_bytes();
        let (current, depends_on) = shared.current(&core, key)?;
        let decision = decide::extend(
            current.as_ref(),
            claim.token,
            duration_nanos(by),
            now,
            shared.policy,
        );
        let lease = match &decision {
            HolderDecision::Write(Some(Entry {
                body: Body::InProgress { lease_expires_at },
                ..
            })) => *lease_expires_at,
            _ => now,
        };
        shared.holder_write(core, claim, decision, depends_on)?;
        Ok(from_nanos(lease))
    }

    /// The key's current state, or `None` if it is absent (never seen, released, removed, or
    /// expired). Reads the index without taking the write lock: the hot path for lookups.
    pub fn get(&self, key: &Key) -> Result<Option<Record>> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let bytes = key.as_bytes();
        let entry = shared
            .index
            .with_entry(bytes, |found| found.map(|v| decode_entry(bytes, v)))?
            .transpose()?;
        Ok(entry.filter(|e| e.is_live(now)).map(|entry| Record {
            key: key.clone(),
            entry,
        }))
    }

    /// Removes the key whatever its state (manual invalidation). Returns whether it was
    /// present. A holder of a removed claim gets [`Error::ClaimLost`].
    pub fn remove(&self, key: &Key) -> Result<bool> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let core = shared.core.lock();
        let (current, depends_on) = shared.current(&core, key.as_bytes())?;
        if decide::live(current.as_ref(), now).is_some() {
            shared.write(core, key.as_bytes(), None, false)?;
            Ok(true)
        } else {
            shared.wait_acknowledged(core, depends_on)?;
            Ok(false)
        }
    }

    /// Runs TTL compaction now: removes every record past its `expires_at`. Returns how many.
    /// Costs in proportion to what expired: it walks an expiry-ordered table from the oldest
    /// entry and stops at the first live one.
    pub fn purge_expired(&self) -> Result<u64> {
        self.shared.check_open()?;
        self.shared.purge_expired()
    }

    /// The claims not completed: after a crash these are the operations *in doubt*, which a
    /// service may need to reconcile. Includes lapsed claims until they expire.
    pub fn in_progress(&self) -> Result<Vec<Record>> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let mut out = Vec::new();
        for (key, bytes) in shared.index.in_progress()? {
            let entry = decode_entry(&key, &bytes)?;
            if entry.is_live(now) {
                let key = Key::decode(&key).ok_or_else(|| {
                    Error::corruption("undecodable key", "index in_progress table")
                })?;
                out.push(Record { key, entry });
            }
        }
        Ok(out)
    }

    /// Calls `f` with every live record, in key order (a full scan: for tools, not hot paths).
    pub fn for_each(&self, mut f: impl FnMut(Record)) -> Result<()> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        shared.index.for_each(|key, bytes| {
            let entry = decode_entry(key, bytes)?;
            if entry.is_live(now) {
                let key = Key::decode(key)
                    .ok_or_else(|| Error::corruption("undecodable key", "index records table"))?;
                f(Record { key, entry });
            }
            Ok(())
        })
    }

    /// Makes every acknowledged write durable now (fdatasync of the log), whatever the
    /// durability mode.
    pub fn sync(&self) -> Result<()> {
        self.shared.check_open()?;
        self.shared.sync_log()
    }

    /// Writes a checkpoint now: a durable index commit that records the last applied LSN, after
    /// which the log segments behind it are removed. Bounds the next recovery's replay.
    pub fn checkpoint(&self) -> Result<()> {
        self.shared.check_open()?;
        self.shared.checkpoint()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Result<Stats> {
        let shared = &*self.shared;
        let (records, in_progress) = shared.index.counts()?;
        let (next_token, acknowledged_lsn, last_lsn) = {
            let core = shared.core.lock();
            (core.next_token, core.acknowledged_lsn, core.next_lsn - 1)
        };
        let io = shared.io.lock();
        let (segments, current_segment_bytes) = io.writer.footprint();
        let c = &shared.counters;
        Ok(Stats {
            records,
            in_progress,
            last_lsn,
            acknowledged_lsn,
            checkpoint_lsn: io.checkpoint_lsn,
            next_token,
            appended: c.appended.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            purged: c.purged.load(Ordering::Relaxed),
            segments: segments as u64,
            current_segment_bytes,
        })
    }

    /// What the open that created this handle replayed, cut off and found in doubt.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.shared.report.clone()
    }

    /// Checkpoints, syncs and closes the store. Other clones get [`Error::Closed`] from then
    /// on; the directory is unlocked once every clone is dropped. An `Err` means the final
    /// checkpoint or sync failed: everything acknowledged is still recovered from the log on
    /// the next open.
    pub fn close(self) -> Result<()> {
        let shared = &*self.shared;
        shared.check_open()?;
        let result = shared.checkpoint().and_then(|()| shared.sync_log());
        shared.closed.store(true, Ordering::SeqCst);
        shared.stop_background();
        result
    }
}

impl Shared {
    fn now(&self) -> u64 {
        to_nanos(self.options.clock.now())
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The key's current entry and the LSN it depends on (0 if it is acknowledged).
    fn current(&self, core: &Core, key: &[u8]) -> Result<(Option<Entry>, u64)> {
        if let Some(flight) = core.in_flight.get(key) {
            return Ok((flight.entry.clone(), flight.lsn));
        }
        let entry = self
            .index
            .with_entry(key, |found| found.map(|v| decode_entry(key, v)))?
            .transpose()?;
        Ok((entry, 0))
    }

    fn holder_write(
        &self,
        core: MutexGuard<'_, Core>,
        claim: &Claim,
        decision: HolderDecision,
        depends_on: u64,
    ) -> Result<()> {
        match decision {
            HolderDecision::Write(entry) => self.write(core, claim.key.as_bytes(), entry, false),
            HolderDecision::AlreadyCompleted(_) | HolderDecision::Lost => {
                self.wait_acknowledged(core, depends_on)?;
                Err(Error::ClaimLost { token: claim.token })
            }
        }
    }

    /// Adds a change to the batch and waits until it is acknowledged.
    fn write(
        &self,
        mut core: MutexGuard<'_, Core>,
        key: &[u8],
        entry: Option<Entry>,
        takes_token: bool,
    ) -> Result<()> {
        if let Some(cause) = &core.failure {
            return Err(Error::PreviousIo {
                cause: cause.clone(),
            });
        }
        let lsn = core.next_lsn;
        core.next_lsn += 1;
        if takes_token {
            core.next_token += 1;
        }
        let encoded = entry.as_ref().map(|e| e.encode(key));
        let mut payload = Vec::with_capacity(3 + key.len() + encoded.as_ref().map_or(0, Vec::len));
        entry::encode(&mut payload, key, encoded.as_deref());
        let synced = self.synced_lsn.load(Ordering::Acquire);
        frame::encode(&mut core.frames, lsn, synced, &payload);
        core.changes.push(Change {
            key: key.to_vec(),
            entry: encoded,
        });
        core.in_flight.insert(key.to_vec(), InFlight { lsn, entry });
        self.wait_acknowledged(core, lsn)
    }

    /// Waits until `lsn` is acknowledged, leading a group commit when no one else is.
    fn wait_acknowledged(&self, mut core: MutexGuard<'_, Core>, lsn: u64) -> Result<()> {
        loop {
            if core.acknowledged_lsn >= lsn {
                return Ok(());
            }
            if let Some(cause) = &core.failure {
                return Err(Error::PreviousIo {
                    cause: cause.clone(),
                });
            }
            if core.leader {
                self.acknowledged.wait(&mut core);
                continue;
            }
            core.leader = true;
            let frames = mem::take(&mut core.frames);
            let changes = mem::take(&mut core.changes);
            let last = core.next_lsn - 1;
            let next_token = core.next_token;
            let result = MutexGuard::unlocked(&mut core, || {
                self.commit_batch(&frames, &changes, last, next_token)
            });
            core.leader = false;
            match &result {
                Ok(()) => {
                    core.acknowledged_lsn = last;
                    core.in_flight.retain(|_, f| f.lsn > last);
                    // Reuse the batch buffer's allocation.
                    if core.frames.is_empty() {
                        let mut frames = frames;
                        frames.clear();
                        core.frames = frames;
                    }
                }
                Err(e) => core.failure = Some(e.to_string()),
            }
            self.acknowledged.notify_all();
            result?;
        }
    }

    /// Writes, syncs and applies one batch. Runs with the `io` lock, never the `core` lock.
    fn commit_batch(
        &self,
        frames: &[u8],
        changes: &[Change],
        last: u64,
        next_token: u64,
    ) -> Result<()> {
        let mut io = self.io.lock();
        let first = io.written_lsn + 1;
        io.writer.roll_if_full(first)?;
        io.writer.append(frames)?;
        io.written_lsn = last;
        io.bytes_since_checkpoint += frames.len() as u64;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .appended
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        if self.options.durability == Durability::Immediate {
            io.writer.sync()?;
            self.counters.syncs.fetch_add(1, Ordering::Relaxed);
            self.synced_lsn.store(last, Ordering::Release);
        }
        let due = io.bytes_since_checkpoint >= self.options.checkpoint_bytes;
        let checkpoint = due.then_some(Checkpoint {
            lsn: last,
            next_token,
        });
        self.index.apply(changes, checkpoint)?;
        io.applied_lsn = last;
        if let Some(cp) = checkpoint {
            self.after_checkpoint(&mut io, cp.lsn)?;
        }
        Ok(())
    }

    fn after_checkpoint(&self, io: &mut Io, lsn: u64) -> Result<()> {
        io.checkpoint_lsn = lsn;
        io.bytes_since_checkpoint = 0;
        io.last_checkpoint = Instant::now();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        io.writer.remove_behind(lsn)?;
        Ok(())
    }

    fn fail(&self, err: &Error) {
        let mut core = self.core.lock();
        if core.failure.is_none() {
            core.failure = Some(err.to_string());
        }
    }

    fn poisoned(&self) -> Result<()> {
        match &self.core.lock().failure {
            Some(cause) => Err(Error::PreviousIo {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn sync_log(&self) -> Result<()> {
        self.poisoned()?;
        let io = self.io.lock();
        if let Err(e) = io.writer.sync() {
            let e = Error::Io(e);
            self.fail(&e);
            return Err(e);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced_lsn.store(io.written_lsn, Ordering::Release);
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        self.poisoned()?;
        let mut io = self.io.lock();
        let next_token = self.core.lock().next_token;
        let lsn = io.applied_lsn;
        let result = self
            .index
            .apply(&[], Some(Checkpoint { lsn, next_token }))
            .and_then(|()| self.after_checkpoint(&mut io, lsn));
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn purge_expired(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let core = self.core.lock();
            if let Some(cause) = &core.failure {
                return Err(Error::PreviousIo {
                    cause: cause.clone(),
                });
            }
            let now = self.now();
            let (removed, more) = self
                .index
                .purge(now, PURGE_CHUNK, &|key| core.in_flight.contains_key(key))?;
            drop(core);
            total += removed;
            if !more {
                break;
            }
        }
        self.counters.purged.fetch_add(total, Ordering::Relaxed);
        Ok(total)
    }

    /// Periodic work: the sync of `Durability::Periodic`, timed checkpoints and TTL compaction.
    fn start_background(shared: &Arc<Shared>) {
        let options = &shared.options;
        let periodic = match options.durability {
            Durability::Periodic(d) => Some(d),
            _ => None,
        };
        let Some(tick) = [
            periodic,
            options.checkpoint_interval,
            options.purge_interval,
        ]
        .into_iter()
        .flatten()
        .min() else {
            return;
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let thread_stop = stop.clone();
        let spawned = thread::Builder::new()
            .name("idemstore-maintenance".into())
            .spawn(move || background_loop(&weak, &thread_stop, tick, periodic));
        if let Ok(thread) = spawned {
            *shared.background.lock() = Some(Background { stop, thread });
        }
    }

    fn stop_background(&self) {
        let Some(bg) = self.background.lock().take() else {
            return;
        };
        *bg.stop.0.lock() = true;
        bg.stop.1.notify_all();
        if bg.thread.thread().id() != thread::current().id() {
            let _ = bg.thread.join();
        }
    }
}

fn background_loop(
    weak: &Weak<Shared>,
    stop: &(Mutex<bool>, Condvar),
    tick: Duration,
    periodic: Option<Duration>,
) {
    let started = Instant::now();
    let mut last_purge = started;
    let mut last_sync = started;
    loop {
        {
            let mut stopped = stop.0.lock();
            if *stopped {
                return;
            }
            stop.1.wait_for(&mut stopped, tick);
            if *stopped {
                return;
            }
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Relaxed) || shared.poisoned().is_err() {
            continue;
        }
        // Errors poison the handle; callers see them on their next write.
        if let Some(interval) = periodic
            && last_sync.elapsed() >= interval
        {
            let _ = shared.sync_log();
            last_sync = Instant::now();
        }
        if let Some(interval) = shared.options.checkpoint_interval {
            let due = {
                let io = shared.io.lock();
                io.last_checkpoint.elapsed() >= interval && io.applied_lsn > io.checkpoint_lsn
            };
            if due {
                let _ = shared.checkpoint();
            }
        }
        if let Some(interval) = shared.options.purge_interval
            && last_purge.elapsed() >= interval
        {
            let _ = shared.purge_expired();
            last_purge = Instant::now();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_background();
        if !self.closed.load(Ordering::Relaxed) && self.poisoned().is_ok() {
            // Best effort: a failure here only means the next open replays more log.
            let _ = self.checkpoint();
        }
    }
}

const _: () = {
    const fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<Store>();
};
