//! The public handle. The machinery behind it is in `commit.rs` (the write path) and
//! `maintenance.rs` (the background thread).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::acknowledgement::Acknowledgement;
use crate::claim::{Begin, Claim};
use crate::clock::{duration_nanos, from_nanos};
use crate::commit::{Apply, Core, Parts, Shared};
use crate::decide::{self, BeginDecision, HolderDecision};
use crate::error::{Error, Result};
use crate::index::decode_entry;
use crate::key::{Fingerprint, Key};
use crate::options::Options;
use crate::record::{Body, Entry, Outcome, Record, RecordRef};
use crate::recovery::recover;
use crate::stats::{RecoveryReport, Stats};
use crate::storage::Storage;

/// An open idempotency store. Cheap to clone: clones share one store.
///
/// See the [crate documentation](crate) for an example, and [`Options`] for configuration.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    /// Dropped with the last clone, after `shared` (fields drop in order).
    _last: Arc<LastHandle>,
}

/// Stops the background thread when the last [`Store`] clone goes, and waits for it: the
/// thread holds the store while it works (a timed checkpoint, say), and the directory lock
/// must be released by the time the last `drop` returns, not when the thread finishes.
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.stop_background();
        self.0.stop_committer();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("storage", &self.shared.storage.describe())
            .finish_non_exhaustive()
    }
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
        let mut recovered = recover(&storage, options.index_settings(), options.segment_size)?;
        recovered.report.read_only = options.read_only;
        let claimed = std::mem::take(&mut recovered.claimed);
        let shared = Arc::new(Shared::new(Parts {
            options,
            storage,
            lock,
            index: recovered.index,
            writer: recovered.writer,
            next_lsn: recovered.next_lsn,
            next_token: recovered.next_token,
            checkpoint_lsn: recovered.checkpoint_lsn,
            replayed: recovered.replayed,
            recent: recovered.recent,
            report: recovered.report,
        }));
        Shared::start_background(&shared);
        shared.start_filter_build(&shared.core.lock(), Some(&claimed));
        Ok(Store {
            _last: Arc::new(LastHandle(shared.clone())),
            shared,
        })
    }

    /// Asks about `key` before running the operation whose input is `request`, and claims the
    /// key if the operation should run. `request` is fingerprinted with blake3; a retry must
    /// send the same bytes (see [`begin_with`](Store::begin_with) to fingerprint a canonical
    /// form instead).
    ///
    /// Atomic: of any number of concurrent callers for one key, exactly one is `Claimed`. A
    /// claim is durable (in the configured [`Durability`](crate::Durability)) before it is
    /// returned.
    pub fn begin(&self, key: &Key, request: &[u8]) -> Result<Begin> {
        self.begin_with(key, Fingerprint::of(request))
    }

    /// [`begin`](Store::begin) with a fingerprint the caller computed.
    pub fn begin_with(&self, key: &Key, request: Fingerprint) -> Result<Begin> {
        self.run(|shared, core, now| decide_begin(shared, core, now, key, request))
    }

    /// [`begin`](Store::begin) for asynchronous callers: decides now, and resolves once the
    /// answer is durable without blocking the executor (see [`Acknowledgement`]).
    pub fn begin_async(&self, key: &Key, request: &[u8]) -> Acknowledgement<Begin> {
        self.begin_with_async(key, Fingerprint::of(request))
    }

    /// [`begin_with`](Store::begin_with) for asynchronous callers (see [`Acknowledgement`]).
    pub fn begin_with_async(&self, key: &Key, request: Fingerprint) -> Acknowledgement<Begin> {
        self.run_async(|shared, core, now| decide_begin(shared, core, now, key, request))
    }

    /// Stores the outcome of the claimed operation; durable before it returns. Returns the
    /// stored outcome, which retries will replay.
    ///
    /// Idempotent: completing the same claim again returns the first outcome and writes
    /// nothing. A claim that is no longer current gets [`Error::ClaimLost`]; an outcome over
    /// [`Options::max_outcome_size`] gets [`Error::OutcomeTooLarge`] and leaves the claim valid.
    pub fn complete(&self, claim: &Claim, outcome: &[u8]) -> Result<Outcome> {
        self.run(|shared, core, now| decide_complete(shared, core, now, claim, outcome))
    }

    /// [`complete`](Store::complete) for asynchronous callers (see [`Acknowledgement`]).
    pub fn complete_async(&self, claim: &Claim, outcome: &[u8]) -> Acknowledgement<Outcome> {
        self.run_async(|shared, core, now| decide_complete(shared, core, now, claim, outcome))
    }

    /// Gives the key back: the operation failed and may be retried. The key is absent at once,
    /// and the next `begin` claims it with attempt 1.
    pub fn release(&self, claim: &Claim) -> Result<()> {
        self.run(|shared, core, now| decide_release(shared, core, now, claim))
    }

    /// [`release`](Store::release) for asynchronous callers (see [`Acknowledgement`]).
    pub fn release_async(&self, claim: &Claim) -> Acknowledgement<()> {
        self.run_async(|shared, core, now| decide_release(shared, core, now, claim))
    }

    /// Extends the claim's lease to at least `by` from now (a heartbeat for long operations).
    /// Returns the new lease expiry.
    pub fn extend(&self, claim: &Claim, by: Duration) -> Result<SystemTime> {
        self.run(|shared, core, now| decide_extend(shared, core, now, claim, by))
    }

    /// [`extend`](Store::extend) for asynchronous callers (see [`Acknowledgement`]).
    pub fn extend_async(&self, claim: &Claim, by: Duration) -> Acknowledgement<SystemTime> {
        self.run_async(|shared, core, now| decide_extend(shared, core, now, claim, by))
    }

    /// The key's current state, or `None` if it is absent (never seen, released, removed, or
    /// expired). Reads the index without taking the write lock: the hot path for lookups.
    pub fn get(&self, key: &Key) -> Result<Option<Record>> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let entry = shared.acknowledged(key.as_bytes())?;
        Ok(entry.filter(|e| e.is_live(now)).map(|entry| Record {
            key: key.clone(),
            entry,
        }))
    }

    /// Calls `f` with the key's current state borrowed in place, or `None` if it is absent:
    /// [`get`](Store::get) without copying the outcome or allocating, for a service that
    /// writes a stored response straight out. The record is verified (checksum) as `get`
    /// verifies it. `f` runs with no lock held; it may call the store.
    ///
    /// ```
    /// # use idemstore::{Begin, Key, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path())?;
    /// let key = Key::new("client-1", "req-1", "POST /charges")?;
    /// # if let Begin::Claimed(c) = store.begin(&key, b"req")? { store.complete(&c, b"charged")?; }
    /// let mut response = Vec::new();
    /// let replayed = store.get_with(&key, |record| match record.and_then(|r| r.outcome_data()) {
    ///     Some(stored) => { response.extend_from_slice(stored); true }
    ///     None => false,
    /// })?;
    /// assert!(replayed);
    /// assert_eq!(response, b"charged");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_with<T>(&self, key: &Key, f: impl FnOnce(Option<RecordRef<'_>>) -> T) -> Result<T> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        shared.acknowledged_with(key.as_bytes(), |found| {
            f(found
                .filter(|e| e.is_live(now))
                .map(|entry| RecordRef { entry }))
        })
    }

    /// Removes the key whatever its state (manual invalidation). Returns whether it was
    /// present. A holder of a removed claim gets [`Error::ClaimLost`].
    pub fn remove(&self, key: &Key) -> Result<bool> {
        self.run(|shared, core, now| decide_remove(shared, core, now, key))
    }

    /// [`remove`](Store::remove) for asynchronous callers (see [`Acknowledgement`]).
    pub fn remove_async(&self, key: &Key) -> Acknowledgement<bool> {
        self.run_async(|shared, core, now| decide_remove(shared, core, now, key))
    }

    /// Decides under the `core` lock and waits, still holding it, until the answer is
    /// acknowledged: the blocking write path.
    fn run<T>(
        &self,
        decide: impl FnOnce(&Shared, &mut Core, u64) -> Result<Decided<T>>,
    ) -> Result<T> {
        let shared = &*self.shared;
        shared.check_open()?;
        let now = shared.now();
        let mut core = shared.core.lock();
        let decided = decide(shared, &mut core, now)?;
        shared.wait_acknowledged(core, decided.lsn)?;
        decided.answer
    }

    /// Decides under the `core` lock and returns a future of the answer: the asynchronous
    /// write path. An answer already acknowledged needs no committer and no clone.
    fn run_async<T>(
        &self,
        decide: impl FnOnce(&Shared, &mut Core, u64) -> Result<Decided<T>>,
    ) -> Acknowledgement<T> {
        let shared = &*self.shared;
        if let Err(e) = shared.check_open() {
            return Acknowledgement::ready(Err(e));
        }
        let now = shared.now();
        let mut core = shared.core.lock();
        match decide(shared, &mut core, now) {
            Ok(decided) if core.acknowledged_lsn >= decided.lsn => {
                Acknowledgement::ready(decided.answer)
            }
            Ok(decided) => Acknowledgement::after(self.clone(), decided.lsn, decided.answer),
            Err(e) => Acknowledgement::ready(Err(e)),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
        shared.apply_pending(Apply::Wait)?;
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
        shared.apply_pending(Apply::Wait)?;
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
        shared.apply_pending(Apply::Wait)?;
        let (records, in_progress) = shared.index.counts()?;
        let (next_token, acknowledged_lsn, last_lsn) = {
            let core = shared.core.lock();
            (core.next_token, core.acknowledged_lsn, core.next_lsn - 1)
        };
        let io = shared.io.lock();
        let (segments, current_segment_bytes) = io.writer.footprint();
        let c = &shared.counters;
        let filter = shared.filters.stats();
        let cached = shared.index.cache_usage();
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
            backlog_waits: c.backlog_waits.load(Ordering::Relaxed),
            backlog_wait: Duration::from_nanos(c.backlog_wait_nanos.load(Ordering::Relaxed)),
            segments: segments as u64,
            current_segment_bytes,
            key_filter_ready: filter.ready,
            key_filter_capacity: filter.capacity,
            key_filter_bytes: filter.bytes,
            key_filter_builds: filter.builds,
            record_cache_records: cached.0 as u64,
            record_cache_bytes: cached.1 as u64,
        })
    }

    /// What the open that created this handle replayed, cut off and found in doubt.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.shared.report.clone()
    }

    /// Checkpoints, syncs and closes the store. Other clones get [`Error::Closed`] from then
    /// on; the directory is unlocked once every clone is dropped. An `Err` means the final
    /// checkpoint, sync or compaction failed: everything acknowledged is still recovered
    /// from the log on the next open. A read-only store just closes.
    ///
    /// If TTL compaction removed at least a quarter as many records since open as remain
    /// (and at least 1024), closing also compacts the index file: redb reuses the pages that
    /// removals free but never shrinks its file on its own. That takes time in proportion to
    /// the index (about 5 s for 1M live records on the 2-core benchmark VM);
    /// [`Options::compact_on_close`] turns it off.
    pub fn close(self) -> Result<()> {
        let shared = &*self.shared;
        shared.check_open()?;
        let result = match shared.check_writable() {
            Ok(()) => shared.checkpoint().and_then(|()| shared.sync_log()),
            Err(_) => Ok(()),
        };
        shared.closed.store(true, Ordering::SeqCst);
        shared.stop_background();
        shared.filters.stop();
        result.and_then(|()| shared.compact_if_sparse())
    }
}

/// An answer decided under the `core` lock, to give once `lsn` is acknowledged: the change
/// it wrote, or the change in flight it was decided on (0: nothing to wait for).
struct Decided<T> {
    lsn: u64,
    answer: Result<T>,
}

impl<T> Decided<T> {
    fn after(lsn: u64, answer: Result<T>) -> Self {
        Decided { lsn, answer }
    }
}

fn decide_begin(
    shared: &Shared,
    core: &mut Core,
    now: u64,
    key: &Key,
    request: Fingerprint,
) -> Result<Decided<Begin>> {
    let (current, depends_on) = shared.current(core, key.as_bytes())?;
    let answer = match decide::begin(current.as_ref(), request, now, shared.policy) {
        BeginDecision::Claim { attempt } => {
            let token = core.next_token;
            let entry = decide::claim_entry(request, token, attempt, now, shared.policy);
            let lease_expires_at = match entry.body {
                Body::InProgress { lease_expires_at } => lease_expires_at,
                Body::Completed { .. } => now,
            };
            let lsn = shared.enqueue(core, key.as_bytes(), Some(entry), true)?;
            let claim = Claim {
                key: key.clone(),
                fingerprint: request,
                token,
                attempt,
                lease_expires_at,
            };
            return Ok(Decided::after(lsn, Ok(Begin::Claimed(claim))));
        }
        BeginDecision::Replay(outcome) => Begin::Completed(outcome),
        BeginDecision::InProgress {
            lease_expires_at,
            attempt,
        } => Begin::InProgress {
            lease_expires_at: from_nanos(lease_expires_at),
            attempt,
        },
        BeginDecision::Mismatch { stored } => Begin::Mismatch { stored },
    };
    Ok(Decided::after(depends_on, Ok(answer)))
}

fn decide_complete(
    shared: &Shared,
    core: &mut Core,
    now: u64,
    claim: &Claim,
    outcome: &[u8],
) -> Result<Decided<Outcome>> {
    let limit = shared.options.max_outcome_size;
    if outcome.len() > limit {
        return Err(Error::OutcomeTooLarge {
            size: outcome.len(),
            limit,
        });
    }
    let key = claim.key.as_bytes();
    let (current, depends_on) = shared.current(core, key)?;
    let lost = Error::ClaimLost { token: claim.token };
    Ok(
        match decide::complete(current.as_ref(), claim.token, outcome, now, shared.policy) {
            HolderDecision::Write(Some(entry)) => {
                let stored = entry.outcome().ok_or(lost);
                Decided::after(shared.enqueue(core, key, Some(entry), false)?, stored)
            }
            HolderDecision::AlreadyCompleted(outcome) => Decided::after(depends_on, Ok(outcome)),
            HolderDecision::Write(None) | HolderDecision::Lost => {
                Decided::after(depends_on, Err(lost))
            }
        },
    )
}

fn decide_release(
    shared: &Shared,
    core: &mut Core,
    now: u64,
    claim: &Claim,
) -> Result<Decided<()>> {
    let (current, depends_on) = shared.current(core, claim.key.as_bytes())?;
    let decision = decide::release(current.as_ref(), claim.token, now);
    holder_write(shared, core, claim, decision, depends_on, ())
}

fn decide_extend(
    shared: &Shared,
    core: &mut Core,
    now: u64,
    claim: &Claim,
    by: Duration,
) -> Result<Decided<SystemTime>> {
    let (current, depends_on) = shared.current(core, claim.key.as_bytes())?;
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
    holder_write(shared, core, claim, decision, depends_on, from_nanos(lease))
}

fn decide_remove(shared: &Shared, core: &mut Core, now: u64, key: &Key) -> Result<Decided<bool>> {
    let (current, depends_on) = shared.current(core, key.as_bytes())?;
    Ok(if decide::live(current.as_ref(), now).is_some() {
        Decided::after(shared.enqueue(core, key.as_bytes(), None, false)?, Ok(true))
    } else {
        Decided::after(depends_on, Ok(false))
    })
}

/// Writes a holder's change (answering `done`), or reports the claim lost once the state it
/// was decided on is acknowledged.
fn holder_write<T>(
    shared: &Shared,
    core: &mut Core,
    claim: &Claim,
    decision: HolderDecision,
    depends_on: u64,
    done: T,
) -> Result<Decided<T>> {
    Ok(match decision {
        HolderDecision::Write(entry) => Decided::after(
            shared.enqueue(core, claim.key.as_bytes(), entry, false)?,
            Ok(done),
        ),
        HolderDecision::AlreadyCompleted(_) | HolderDecision::Lost => {
            Decided::after(depends_on, Err(Error::ClaimLost { token: claim.token }))
        }
    })
}

const _: () = {
    const fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<Store>();
};
