//! The redb index: each key's current entry, plus the tables that keep compaction and the
//! in-doubt list proportional to what they touch.
//!
//! Tables:
//! - `records`: encoded key → encoded entry (see [`crate::record`]).
//! - `expiry`: (`expires_at` ns, encoded key) → (). One row per record; TTL compaction walks
//!   it from the oldest and stops at the first row still live.
//! - `in_progress`: encoded key → (). The keys whose entry is a claim.
//! - `meta`: name → u64: `checkpoint_lsn` (the last log record whose effect is in the durable
//!   index) and `next_token` (the next fencing token to hand out), written in the same commit.
//!
//! Between checkpoints the index is written with redb's non-durable commits: the log is what
//! makes those writes durable, and a crash rolls the index back to its last checkpoint. Every
//! durable commit (checkpoints, and the one that opens the tables) uses quick-repair, so a
//! crash costs a log replay, not a walk of the whole index (see [`durable_write`]).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use parking_lot::RwLock;
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition,
};

use crate::cache::{RecordCache, WhenFull};
use crate::error::{Error, Result};
use crate::hash;
use crate::key::describe;
use crate::record::{Entry, EntryRef, le_u64};
use crate::storage::StorageFile;

/// The index file's name in the store directory.
pub(crate) const INDEX_FILE: &str = "index.redb";

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const EXPIRY: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("expiry");
const IN_PROGRESS: TableDefinition<&[u8], ()> = TableDefinition::new("in_progress");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Where [`Index::compact`] rebuilds each table before renaming it into place; they exist
/// only inside its transaction.
const RECORDS_REPACKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records.repacked");
const EXPIRY_REPACKED: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("expiry.repacked");
const IN_PROGRESS_REPACKED: TableDefinition<&[u8], ()> =
    TableDefinition::new("in_progress.repacked");

const META_CHECKPOINT_LSN: &str = "checkpoint_lsn";
const META_NEXT_TOKEN: &str = "next_token";
/// CRC32 of `checkpoint_lsn` and `next_token` (little-endian, in that order): redb does not
/// check what it reads, and a damaged `next_token` would hand out fencing tokens again.
const META_CHECKSUM: &str = "checkpoint_crc";

/// A row of the `expiry` table: a record's key and the `expires_at` it was written with.
/// Ordered by key, then `at` (the field order): a purge pass sorts its rows into key order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    pub key: Box<[u8]>,
    pub at: u64,
}

/// Offset of `expires_at` and of the state byte in an encoded entry (see `record.rs`).
const ENTRY_EXPIRES_AT: usize = 54;
const ENTRY_STATE: usize = 1;
const STATE_IN_PROGRESS: u8 = 1;

/// One change to apply: the key and its new encoded entry (`None` deletes the key).
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The log record that made this change.
    pub lsn: u64,
    /// Shared with the acknowledged layer, like `entry`.
    pub key: Arc<[u8]>,
    /// Shared with the acknowledged layer that serves reads until the change is applied.
    pub entry: Option<Arc<[u8]>>,
}

/// Fills the record cache from a snapshot's rows, where it has room, after an open: lookups
/// of a store that fits in the cache are hits from the start, not after a first read of
/// each record. Fills never evict, and never overwrite a newer write.
pub(crate) struct Warmer {
    cache: Arc<RecordCache>,
    /// The snapshot's generation.
    generation: u64,
    refused: u32,
}

impl Warmer {
    /// Offers the record of `key`, found by a scan of `snapshot`: looked up again the way a
    /// lookup finds it, so that the cache holds what a lookup would read. (On a damaged
    /// index a scan and a lookup can disagree: a damaged branch can hide from one a leaf the
    /// other reaches; a lookup that fails caches nothing.) Returns false once the cache has
    /// refused enough records for want of room that scanning on would fill little.
    pub fn offer(&mut self, snapshot: &Snapshot, key: &[u8]) -> bool {
        if let Ok(Some(entry)) = snapshot.get(key)
            && !self.cache.fill(
                hash::hash(key),
                key,
                entry.value(),
                self.generation,
                WhenFull::Refuse,
            )
        {
            self.refused += 1;
        }
        self.refused < WARM_REFUSALS
    }
}

/// Rows a warming scan may find no room for before it stops.
const WARM_REFUSALS: u32 = 4096;

/// What a checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    pub lsn: u64,
    pub next_token: u64,
}

/// How the index is opened: its memory (redb's page cache and the record cache in front of
/// it) and whether redb checks the whole file first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexSettings {
    pub pages: usize,
    pub records: usize,
    /// redb's integrity check on every open (see
    /// [`Options::verify_index_on_open`](crate::Options::verify_index_on_open)).
    pub verify_on_open: bool,
}

/// A read-only view of the `records` table as of one commit.
pub(crate) type Snapshot = Arc<ReadOnlyTable<&'static [u8], &'static [u8]>>;

pub(crate) struct Index {
    // Declared first so that it drops before the database it reads.
    /// Lock-free for readers: `get` on several threads shares no lock word here. `None`
    /// only while, and after, the store is closed and compacted.
    snapshot: ArcSwapOption<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    /// Counts published snapshots; advanced after each is published (see `cache.rs`).
    generation: AtomicU64,
    /// Recently read records (kept current by writes), in front of the snapshot.
    cache: Arc<RecordCache>,
    /// Written only by [`Index::compact`], which needs the database to itself.
    db: RwLock<Guarded<Database>>,
    /// Whether redb walked the whole file on open to rebuild its allocator state.
    repaired: bool,
    /// Shared with the file's [`Backend`]: see [`Index::freeze`].
    frozen: Arc<AtomicBool>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index").finish_non_exhaustive()
    }
}

impl Index {
    /// Opens the index in `file`, creating its tables if `create` (a new or rebuilt index). A
    /// damaged file is `Error::Corruption`, also where redb itself would panic on it, or on
    /// closing it — and so is an existing index missing a table: recreating it empty would
    /// silently drop its records, or (for `meta`) the next fencing token.
    pub fn open(
        file: Arc<dyn StorageFile>,
        settings: IndexSettings,
        create: bool,
    ) -> Result<Index> {
        let mut db = Guarded(None);
        let backend = Backend::new(file);
        let frozen = backend.frozen.clone();
        let repaired = Arc::new(AtomicBool::new(false));
        let snapshot = guarded(|| {
            let mut builder = Database::builder();
            builder.set_cache_size(settings.pages);
            builder.set_check_integrity_on_open(settings.verify_on_open);
            let flag = repaired.clone();
            builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
            let db = db.0.insert(builder.create_with_backend(backend)?);
            if create {
                // Quick-repair like every durable commit: were this the last commit before a
                // crash, one without it would make the next open walk the whole file.
                let txn = durable_write(db)?;
                {
                    txn.open_table(RECORDS)?;
                    txn.open_table(EXPIRY)?;
                    txn.open_table(IN_PROGRESS)?;
                    txn.open_table(META)?;
                }
                txn.commit()?;
            }
            let txn = db.begin_read()?;
            txn.open_table(EXPIRY)?;
            txn.open_table(IN_PROGRESS)?;
            txn.open_table(META)?;
            Ok(txn.open_table(RECORDS)?)
        })
        .map_err(damaged_on_open)?;
        Ok(Index {
            snapshot: ArcSwapOption::from_pointee(snapshot),
            generation: AtomicU64::new(0),
            cache: Arc::new(RecordCache::new(settings.records)),
            db: RwLock::new(db),
            repaired: repaired.load(Ordering::Relaxed),
            frozen,
        })
    }

    /// Makes every later write to the index file fail, for a handle that failed: the file
    /// then stays as its last durable commit, a checkpoint, left it. redb makes pending
    /// non-durable commits durable when the database closes; without this, dropping a failed
    /// handle would persist changes made after the checkpoint under the old checkpoint, and
    /// with `Periodic` or `None` durability also changes whose log records a power cut could
    /// then lose. Reads go on.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Whether opening the file made redb walk all of it to rebuild its allocator state (a
    /// crash after a commit that did not save it, or `verify_on_open`): time in proportion
    /// to the index.
    pub fn repaired_on_open(&self) -> bool {
        self.repaired
    }

    /// The last checkpoint, or zeros for a new index.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        guarded(|| {
            let txn = self.db.read().begin_read()?;
            let checkpoint = read_checkpoint(&txn.open_table(META)?)?;
            // No checkpoint row beside records: the rows were lost, and `next_token` with
            // them; tokens would be handed out again.
            if checkpoint == Checkpoint::default() && !txn.open_table(RECORDS)?.is_empty()? {
                return Err(Error::corruption(
                    "index holds records but no checkpoint",
                    format!("{INDEX_FILE} meta table"),
                ));
            }
            Ok(checkpoint)
        })
    }

    /// Calls `f` with the encoded entry of `key`: from the record cache, else from the
    /// latest snapshot without copying it (and then into the cache).
    pub fn with_entry<T>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> Result<T> {
        // Hashed once, for the lookup and the fill.
        let hash = hash::hash(key);
        if let Some(cached) = self.cache.get(hash, key) {
            return Ok(f(Some(cached.entry())));
        }
        // Taken before the snapshot: what the snapshot holds is at least this new.
        let generation = self.generation.load(Ordering::Acquire);
        let table = self.snapshot.load();
        let table = table.as_ref().ok_or(Error::Closed)?;
        // Only redb's part runs under `guarded`: a panic in `f` (a caller's closure, for
        // `Store::get_with`) is the caller's, not a damaged page.
        let guard = guarded(|| Ok(table.get(key)?))?;
        let value = guarded(|| Ok(guard.as_ref().map(|v| v.value())))?;
        if let Some(value) = value {
            self.cache
                .fill(hash, key, value, generation, WhenFull::AdmitSome);
        }
        Ok(f(value))
    }

    /// Applies `changes` in one commit: for each key, its last change in the slice, in key
    /// order (intermediate states never reach the index, and sorted inserts touch each page
    /// once). With `checkpoint` (the LSN `changes` reach, every earlier change being in the
    /// index already), the commit is durable and records it; otherwise it is a non-durable
    /// commit that a crash undoes.
    pub fn apply(&self, changes: &[Change], checkpoint: Option<Checkpoint>) -> Result<()> {
        guarded(|| {
            let mut last: HashMap<&[u8], &Change> = HashMap::with_capacity(changes.len());
            for change in changes {
                last.insert(&*change.key, change);
            }
            let mut ordered: Vec<&Change> = last.into_values().collect();
            ordered.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            let db = self.db.read();
            let txn = match checkpoint {
                Some(_) => durable_write(&db)?,
                None => non_durable_write(&db)?,
            };
            {
                let mut records = txn.open_table(RECORDS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                let mut in_progress = txn.open_table(IN_PROGRESS)?;
                for change in &ordered {
                    let key = &*change.key;
                    let old = match &change.entry {
                        Some(entry) => records.insert(key, &**entry)?,
                        None => records.remove(key)?,
                    };
                    let old = old.map(|v| v.value().to_vec());
                    if let Some(old) = &old {
                        expiry.remove((le_u64(old, ENTRY_EXPIRES_AT), key))?;
                    }
                    match &change.entry {
                        Some(entry) => {
                            expiry.insert((le_u64(entry, ENTRY_EXPIRES_AT), key), ())?;
                            if entry.get(ENTRY_STATE) == Some(&STATE_IN_PROGRESS) {
                                in_progress.insert(key, ())?;
                            } else if is_in_progress(old.as_deref()) {
                                in_progress.remove(key)?;
                            }
                        }
                        None => {
                            if is_in_progress(old.as_deref()) {
                                in_progress.remove(key)?;
                            }
                        }
                    }
                }
                if let Some(cp) = checkpoint {
                    let mut meta = txn.open_table(META)?;
                    meta.insert(META_CHECKPOINT_LSN, cp.lsn)?;
                    meta.insert(META_NEXT_TOKEN, cp.next_token)?;
                    meta.insert(META_CHECKSUM, checkpoint_crc(cp))?;
                }
            }
            txn.commit()?;
            drop(db);
            let generation = self.refresh()?;
            for change in ordered {
                self.cache
                    .write(&change.key, change.entry.as_deref(), generation);
            }
            Ok(())
        })
    }

    /// Makes readers see the latest commit. Returns its snapshot's generation.
    fn refresh(&self) -> Result<u64> {
        self.snapshot.store(Some(Arc::new(
            self.db.read().begin_read()?.open_table(RECORDS)?,
        )));
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Up to `limit` rows of the `expiry` table at or before `now` and after `after` (if
    /// given), oldest first, read from the latest commit: what [`Index::purge`] is given, in
    /// chunks sorted by key.
    pub fn due(&self, now: u64, after: Option<&Due>, limit: usize) -> Result<Vec<Due>> {
        guarded(|| {
            let txn = self.db.read().begin_read()?;
            let expiry = txn.open_table(EXPIRY)?;
            let mut due = Vec::new();
            let start = match after {
                Some(d) => Bound::Excluded((d.at, &*d.key)),
                None => Bound::Unbounded,
            };
            for row in expiry.range::<(u64, &[u8])>((start, Bound::Unbounded))? {
                let (row, _) = row?;
                let (at, key) = row.value();
                if at > now || due.len() == limit {
                    break;
                }
                due.push(Due {
                    key: key.into(),
                    at,
                });
            }
            Ok(due)
        })
    }

    /// Removes, in one non-durable commit, the records of `due` (rows read by [`Index::due`],
    /// sorted by key) whose `expires_at` is still the row's, and every row of `due` still in
    /// `expiry`. A record that moved on to a later expiry stays (its row for that expiry is
    /// not in `due`); a row whose record is gone or moved on is stale and goes. Returns the
    /// number of records removed.
    ///
    /// Each table is changed by one ordered scan (`retain_in`) over the range the chunk
    /// spans, which removes a leaf's entries together: removing keys one by one rebuilt a
    /// leaf and its branch path per key, most of the purge's time. `records` is scanned
    /// over the chunk's keys (the chunks of a sorted pass span disjoint runs of it), and
    /// `expiry` over the chunk's rows in expiry order.
    pub fn purge(&self, due: &[Due]) -> Result<u64> {
        // The rows in expiry order, for the scan of `expiry`.
        let mut rows: Vec<(u64, &[u8])> = due.iter().map(|d| (d.at, &*d.key)).collect();
        rows.sort_unstable();
        let (Some(first), Some(last), Some(&low), Some(&high)) =
            (due.first(), due.last(), rows.first(), rows.last())
        else {
            return Ok(0);
        };
        guarded(|| {
            let txn = non_durable_write(&self.db.read())?;
            // The keys of the records removed, and of those that were claims.
            let mut gone: Vec<&[u8]> = Vec::new();
            let mut claims: Vec<&[u8]> = Vec::new();
            {
                let mut records = txn.open_table(RECORDS)?;
                let mut next = 0;
                records.retain_in(&*first.key..=&*last.key, |key, entry| {
                    while due.get(next).is_some_and(|d| &*d.key < key) {
                        next += 1;
                    }
                    let expires_at = le_u64(entry, ENTRY_EXPIRES_AT);
                    // A key may have more than one row here (a stale one beside the live
                    // one): any of them may be the record's.
                    let mut i = next;
                    while let Some(d) = due.get(i).filter(|d| &*d.key == key) {
                        if d.at == expires_at {
                            gone.push(&d.key);
                            if is_in_progress(Some(entry)) {
                                claims.push(&d.key);
                            }
                            return false;
                        }
                        i += 1;
                    }
                    true
                })?;
                let mut in_progress = txn.open_table(IN_PROGRESS)?;
                for key in claims {
                    in_progress.remove(key)?;
                }

                let mut expiry = txn.open_table(EXPIRY)?;
                let mut next = 0;
                expiry.retain_in(low..=high, |row, ()| {
                    while rows.get(next).is_some_and(|r| *r < row) {
                        next += 1;
                    }
                    rows.get(next) != Some(&row)
                })?;
            }
            txn.commit()?;
            let generation = self.refresh()?;
            for key in &gone {
                self.cache.forget(key, generation);
            }
            Ok(gone.len() as u64)
        })
    }

    /// The keys with a claim in progress, with their encoded entries.
    pub fn in_progress(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        guarded(|| {
            let txn = self.db.read().begin_read()?;
            let keys = txn.open_table(IN_PROGRESS)?;
            let records = txn.open_table(RECORDS)?;
            let mut out = Vec::new();
            for row in keys.iter()? {
                let (key, _) = row?;
                if let Some(entry) = records.get(key.value())? {
                    out.push((key.value().to_vec(), entry.value().to_vec()));
                }
            }
            Ok(out)
        })
    }

    /// Repacks the tables into full pages, then gives the file's free pages back (redb's
    /// compaction), when nothing reads the index: for a closed store only, since readers
    /// would wait for it. Returns whether the file was compacted; a reader still holding a
    /// snapshot makes it skip that step.
    ///
    /// Repacking matters as much as the compaction: a B-tree filled by random inserts keeps
    /// its leaves about two thirds full, and TTL compaction's scattered removals thin them
    /// further, while redb's compaction moves pages without merging them.
    pub fn compact(&self) -> Result<bool> {
        guarded(|| {
            let mut db = self.db.write();
            // Our own snapshot is a read transaction too.
            drop(self.snapshot.swap(None));
            let txn = durable_write(&db)?;
            repack(&txn, RECORDS, RECORDS_REPACKED)?;
            repack(&txn, EXPIRY, EXPIRY_REPACKED)?;
            repack(&txn, IN_PROGRESS, IN_PROGRESS_REPACKED)?;
            txn.commit()?;
            let compacted = match db.compact() {
                Ok(done) => done,
                Err(redb::CompactionError::TransactionInProgress) => false,
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            self.snapshot
                .store(Some(Arc::new(db.begin_read()?.open_table(RECORDS)?)));
            Ok(compacted)
        })
    }

    /// The record cache's records and bytes.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// The latest published snapshot, and what warms the record cache with its records
    /// (see [`Warmer`]).
    pub fn snapshot_to_warm(&self) -> Result<(Snapshot, Warmer)> {
        // Taken before the snapshot, as in `with_entry`.
        let generation = self.generation.load(Ordering::Acquire);
        let warmer = Warmer {
            cache: self.cache.clone(),
            generation,
            refused: 0,
        };
        Ok((self.snapshot()?, warmer))
    }

    /// The latest published snapshot of the records.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.snapshot.load_full().ok_or(Error::Closed)
    }

    /// Calls `f` with every record in key order, stopping at its first error.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        guarded(|| {
            let table = self.snapshot()?;
            for row in table.iter()? {
                let (key, entry) = row?;
                f(key.value(), entry.value())?;
            }
            Ok(())
        })
    }

    /// How many records and in-progress claims the index holds.
    pub fn counts(&self) -> Result<(u64, u64)> {
        guarded(|| {
            let txn = self.db.read().begin_read()?;
            Ok((
                txn.open_table(RECORDS)?.len()?,
                txn.open_table(IN_PROGRESS)?.len()?,
            ))
        })
    }
}

fn checkpoint_crc(cp: Checkpoint) -> u64 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&cp.lsn.to_le_bytes());
    hasher.update(&cp.next_token.to_le_bytes());
    u64::from(hasher.finalize())
}

/// Reads the checkpoint from the `meta` table and checks its checksum: a new index has none
/// of the three rows; any other combination that does not check out is corruption.
fn read_checkpoint(meta: &impl ReadableTable<&'static str, u64>) -> Result<Checkpoint> {
    let read = |name| -> Result<Option<u64>> { Ok(meta.get(name)?.map(|v| v.value())) };
    let (lsn, next_token, crc) = (
        read(META_CHECKPOINT_LSN)?,
        read(META_NEXT_TOKEN)?,
        read(META_CHECKSUM)?,
    );
    let checkpoint = Checkpoint {
        lsn: lsn.unwrap_or(0),
        next_token: next_token.unwrap_or(0),
    };
    match (lsn, next_token, crc) {
        (None, None, None) => Ok(checkpoint),
        (_, _, Some(crc)) if crc == checkpoint_crc(checkpoint) => Ok(checkpoint),
        _ => Err(Error::corruption(
            "index checkpoint record damaged (checkpoint_lsn, next_token and their checksum disagree)",
            format!("{INDEX_FILE} meta table"),
        )),
    }
}

/// Rewrites `table` in key order into the empty table `scratch` through a cursor, whose runs
/// of ordered inserts redb packs into full leaves, then puts it in `table`'s place. Within
/// `txn`: a crash before its commit leaves the old table.
fn repack<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
    scratch: TableDefinition<K, V>,
) -> Result<()> {
    {
        let old = txn.open_table(table)?;
        let mut new = txn.open_table(scratch)?;
        let mut cursor = new.upper_bound_mut(Bound::<K::SelfType<'_>>::Unbounded)?;
        for row in old.iter()? {
            let (key, value) = row?;
            cursor.insert_before(key.value(), value.value())?;
        }
        cursor.close()?;
    }
    txn.delete_table(table)?;
    txn.rename_table(scratch, table)?;
    Ok(())
}

/// Begins a write transaction that commits durably with quick-repair. Every durable commit is
/// one: after a crash redb rolls back to its last durable commit, and repairs quickly only if
/// that commit saved its allocator state; otherwise it walks and checksums the whole file.
fn durable_write(db: &Database) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    txn.set_durability(Durability::Immediate)
        .map_err(|e| Error::Index(Box::new(e.into())))?;
    Ok(txn)
}

/// Begins a write transaction whose commit is not durable: in memory and the page cache until
/// the next durable commit, and rolled back by a crash before it.
fn non_durable_write(db: &Database) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)
        .map_err(|e| Error::Index(Box::new(e.into())))?;
    Ok(txn)
}

/// Calls `f` with every key of `snapshot` in order while it returns true. Returns whether it
/// saw them all.
pub(crate) fn scan_keys(snapshot: &Snapshot, mut f: impl FnMut(&[u8]) -> bool) -> Result<bool> {
    guarded(|| {
        for row in snapshot.iter()? {
            let (key, _) = row?;
            if !f(key.value()) {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// What [`check`] found in an index file.
#[derive(Debug, Default)]
pub(crate) struct IndexCheck {
    pub checkpoint: Option<Checkpoint>,
    pub records: u64,
    /// (key, what is wrong) for every damaged or inconsistent row.
    pub problems: Vec<(Vec<u8>, String)>,
    /// What redb's integrity check found wrong with the file's pages, if anything.
    pub pages: Option<String>,
    /// Whether the file needs redb's recovery after a crash (it was not closed cleanly).
    pub needs_recovery: bool,
}

/// redb's page cache for [`check`]: it reads each page about once.
const CHECK_CACHE: usize = 16 << 20;

/// Checks the index in `file` as the next open would find it: recovered first where a crash
/// left it unclean, then every record's checksum and the agreement of the `expiry` and
/// `in_progress` tables with `records` (`each` is called with every record's key and
/// encoded entry), then redb's integrity check: the checksum of every page of its trees,
/// and the allocator state an open would trust compared with one rebuilt from them, which
/// finds damage no record's checksum covers (a branch page, redb's freed-page lists).
///
/// Recovery and the integrity check write to the file, so `file` must be a copy that may
/// be written: `verify` passes its copy-on-write overlay's.
pub(crate) fn check(
    file: Arc<dyn StorageFile>,
    each: impl FnMut(&[u8], &[u8]),
) -> Result<IndexCheck> {
    // A read-only open refuses a file that needs recovery: that is how it is told.
    let needs_recovery = {
        let mut db = Guarded(None);
        let opened = guarded(|| {
            Ok(Database::builder().open_read_only_with_backend(Backend::new(file.clone())))
        })?;
        match opened {
            Ok(opened) => {
                db.0 = Some(opened);
                false
            }
            Err(redb::DatabaseError::RepairAborted) => true,
            Err(e) => return Err(damaged_on_open(e.into())),
        }
    };
    let mut db = Guarded(None);
    let mut check = guarded(|| {
        let mut builder = Database::builder();
        builder.set_cache_size(CHECK_CACHE);
        let db =
            db.0.insert(builder.create_with_backend(Backend::new(file))?);
        check_tables(db, each)
    })
    .map_err(damaged_on_open)?;
    check.needs_recovery = needs_recovery;
    let checked = guarded(|| {
        let db = db.0.as_mut().expect("opened above");
        Ok(db.check_integrity()?)
    });
    check.pages = match checked.map_err(damaged_on_open) {
        Ok(true) => None,
        Ok(false) => Some(
            "its allocator state or tree roots disagree with its pages (redb repaired them in \
             a copy; the store's next open would trust the file as it is)"
                .into(),
        ),
        Err(Error::Corruption { what, .. }) => Some(what),
        Err(e) => return Err(e),
    };
    Ok(check)
}

fn check_tables(
    db: &impl ReadableDatabase,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<IndexCheck> {
    let txn = db.begin_read()?;
    let mut check = IndexCheck::default();
    let meta = txn
        .open_table(META)
        .map_err(|e| damaged_on_open(e.into()))?;
    match read_checkpoint(&meta) {
        Ok(checkpoint) => check.checkpoint = Some(checkpoint),
        Err(Error::Corruption { what, .. }) => check.problems.push((Vec::new(), what)),
        Err(e) => return Err(e),
    }
    let table = |e: redb::TableError| damaged_on_open(e.into());
    let records = txn.open_table(RECORDS).map_err(table)?;
    let expiry = txn.open_table(EXPIRY).map_err(table)?;
    let in_progress = txn.open_table(IN_PROGRESS).map_err(table)?;
    for row in records.iter()? {
        let (key, value) = row?;
        let (key, value) = (key.value(), value.value());
        check.records += 1;
        each(key, value);
        match decode_entry(key, value) {
            Err(e) => check.problems.push((key.to_vec(), e.to_string())),
            Ok(entry) => {
                // The index holds only changes the checkpoint covers, whose tokens were all
                // handed out before it: a token at or above its next one would be handed out
                // again after a reopen.
                if let Some(cp) = check.checkpoint
                    && entry.token >= cp.next_token
                {
                    check.problems.push((
                        key.to_vec(),
                        format!(
                            "fencing token {} is not below the checkpoint's next token {}",
                            entry.token, cp.next_token
                        ),
                    ));
                }
                if expiry.get((entry.expires_at, key))?.is_none() {
                    check
                        .problems
                        .push((key.to_vec(), "record has no expiry row".into()));
                }
                let claimed = is_in_progress(Some(value));
                if claimed != in_progress.get(key)?.is_some() {
                    check.problems.push((
                        key.to_vec(),
                        "in_progress table disagrees with record".into(),
                    ));
                }
            }
        }
    }
    for row in in_progress.iter()? {
        let (key, _) = row?;
        if records.get(key.value())?.is_none() {
            check.problems.push((
                key.value().to_vec(),
                "in_progress row without a record".into(),
            ));
        }
    }
    Ok(check)
}

/// Whether an encoded entry is a claim in progress.
pub(crate) fn is_in_progress(entry: Option<&[u8]>) -> bool {
    entry.and_then(|e| e.get(ENTRY_STATE)) == Some(&STATE_IN_PROGRESS)
}

/// Decodes an encoded entry, naming the index as the location on damage.
pub(crate) fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry> {
    decode_entry_ref(key, bytes).map(|e| e.to_entry())
}

/// [`decode_entry`] in place: the outcome borrows `bytes`.
pub(crate) fn decode_entry_ref<'a>(key: &[u8], bytes: &'a [u8]) -> Result<EntryRef<'a>> {
    EntryRef::decode(key, bytes, &|| {
        format!("{INDEX_FILE} record for key {}", describe(key))
    })
}

/// Runs an index operation, turning a redb panic (which damaged pages can cause) into
/// `Error::Corruption`: data read from disk never panics the caller.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(Error::corruption(panic_message(&panic), INDEX_FILE)))
}

/// Names the errors that mean an index file is not what this store wrote (not a redb file,
/// a redb file format older than the one redb 4 writes, or tables missing or of another type)
/// as `Error::Corruption`. idemstore has only ever written redb's format 3, so a header that
/// names format 1 or 2 is a damaged byte, not a file to upgrade.
fn damaged_on_open(e: Error) -> Error {
    let what = match &e {
        Error::Io(io) if io.kind() == io::ErrorKind::InvalidData => io.to_string(),
        Error::Index(redb) => match redb.as_ref() {
            redb::Error::TableDoesNotExist(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TypeDefinitionChanged { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::UpgradeRequired(_) => redb.to_string(),
            _ => return e,
        },
        _ => return e,
    };
    Error::corruption(format!("index file is damaged ({what})"), INDEX_FILE)
}

/// A redb database whose drop (which may write, and may panic on a damaged file) runs
/// inside [`guarded`].
struct Guarded<D>(Option<D>);

impl<D> std::ops::Deref for Guarded<D> {
    type Target = D;

    fn deref(&self) -> &D {
        self.0.as_ref().expect("only taken on drop")
    }
}

impl<D> std::ops::DerefMut for Guarded<D> {
    fn deref_mut(&mut self) -> &mut D {
        self.0.as_mut().expect("only taken on drop")
    }
}

impl<D> Drop for Guarded<D> {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            // A panic here was turned into an error; the file is as damaged as it was.
            let _ = guarded(|| {
                drop(db);
                Ok(())
            });
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("index file is damaged (redb: {msg})")
}

/// redb's view of a [`StorageFile`].
#[derive(Debug)]
struct Backend {
    file: Arc<dyn StorageFile>,
    /// Set by [`Index::freeze`]: every later write, resize and sync fails.
    frozen: Arc<AtomicBool>,
}

impl Backend {
    fn new(file: Arc<dyn StorageFile>) -> Backend {
        Backend {
            file,
            frozen: Arc::default(),
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.frozen.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the store failed: its index stays as its last checkpoint left it until reopened",
            ));
        }
        Ok(())
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.writable()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.file.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fingerprint;
    use crate::record::{Body, Entry};
    use crate::storage::{SimDisk, Storage};

    const SETTINGS: IndexSettings = IndexSettings {
        pages: 1 << 20,
        records: 0,
        verify_on_open: false,
    };

    /// An index holding one claim with fencing token `token`, checkpointed with
    /// `next_token`.
    fn index_with_token(disk: &SimDisk, token: u64, next_token: u64) {
        let file = disk.open(INDEX_FILE, true).unwrap();
        let index = Index::open(file, SETTINGS, true).unwrap();
        let key: Arc<[u8]> = Arc::from(&b"\x01a\x01b\x01c"[..]);
        let entry = Entry {
            fingerprint: Fingerprint::of(b"request"),
            token,
            attempt: 1,
            expires_at: u64::MAX,
            body: Body::InProgress {
                lease_expires_at: u64::MAX,
            },
        };
        let change = Change {
            lsn: 1,
            key: key.clone(),
            entry: Some(entry.encode(&key).into()),
        };
        let checkpoint = Checkpoint { lsn: 1, next_token };
        index.apply(&[change], Some(checkpoint)).unwrap();
    }

    #[test]
    fn check_reports_a_token_the_checkpoint_would_hand_out_again() {
        let sound = SimDisk::new("sound");
        index_with_token(&sound, 4, 5);
        let found = check(sound.open(INDEX_FILE, false).unwrap(), |_, _| {}).unwrap();
        assert_eq!((found.records, found.problems.len()), (1, 0), "{found:?}");

        let unsound = SimDisk::new("unsound");
        index_with_token(&unsound, 5, 5);
        let found = check(unsound.open(INDEX_FILE, false).unwrap(), |_, _| {}).unwrap();
        assert_eq!(found.problems.len(), 1, "{found:?}");
        assert!(found.problems[0].1.contains("fencing token 5"), "{found:?}");
    }
}
