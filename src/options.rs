//! Configuration: durability, retention, leases, limits and tuning.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::index::{INDEX_FILE, IndexSettings};
use crate::log::frame::MAX_OUTCOME_LIMIT;
use crate::storage::{FsStorage, Overlay, Storage};
use crate::store::Store;

/// When a write is acknowledged, and so what a crash can take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A write returns only after its log record is on disk (fdatasync). Concurrent callers
    /// share syncs (group commit). Survives kill -9 and power loss. The default.
    Immediate,
    /// A write returns after write(2); the log is synced at least this often. Survives kill -9
    /// (the kernel still holds the data), but a power cut loses up to the interval's writes.
    Periodic(Duration),
    /// The store never syncs the log on its own ([`Store::sync`] still does). Survives kill -9;
    /// a power cut may lose anything since the last checkpoint or `sync`. For tests and
    /// benchmarks.
    None,
}

/// Options for opening a [`Store`]: a by-value builder.
///
/// ```
/// use std::time::Duration;
/// use idemstore::{Durability, Options};
/// let dir = tempfile::tempdir()?;
/// let store = Options::new()
///     .retention(Duration::from_secs(3600))
///     .lease(Duration::from_secs(30))
///     .durability(Durability::Immediate)
///     .max_outcome_size(64 * 1024)
///     .open(dir.path())?;
/// # drop(store);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) retention: Duration,
    pub(crate) lease: Duration,
    pub(crate) durability: Durability,
    pub(crate) max_outcome_size: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) checkpoint_interval: Option<Duration>,
    pub(crate) purge_interval: Option<Duration>,
    pub(crate) segment_size: u64,
    pub(crate) cache_size: usize,
    pub(crate) record_cache_size: usize,
    pub(crate) backlog_size: usize,
    pub(crate) read_only: bool,
    pub(crate) lapse_claims_on_open: bool,
    pub(crate) compact_on_close: bool,
    pub(crate) verify_index_on_open: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retention: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            durability: Durability::Immediate,
            max_outcome_size: 1 << 20,
            clock: Arc::new(SystemClock),
            checkpoint_bytes: 64 << 20,
            checkpoint_interval: Some(Duration::from_secs(60)),
            purge_interval: Some(Duration::from_secs(60)),
            segment_size: 64 << 20,
            cache_size: 1 << 30,
            record_cache_size: 512 << 20,
            backlog_size: 64 << 20,
            read_only: false,
            lapse_claims_on_open: false,
            compact_on_close: true,
            verify_index_on_open: false,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("retention", &self.retention)
            .field("lease", &self.lease)
            .field("durability", &self.durability)
            .field("max_outcome_size", &self.max_outcome_size)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("purge_interval", &self.purge_interval)
            .field("segment_size", &self.segment_size)
            .field("cache_size", &self.cache_size)
            .field("record_cache_size", &self.record_cache_size)
            .field("backlog_size", &self.backlog_size)
            .field("read_only", &self.read_only)
            .field("compact_on_close", &self.compact_on_close)
            .field("verify_index_on_open", &self.verify_index_on_open)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The defaults: retention 24 h, lease 60 s, [`Durability::Immediate`], outcomes up to
    /// 1 MiB, the system clock.
    pub fn new() -> Options {
        Options::default()
    }

    /// How long a completed outcome is kept and replayed. Default 24 hours (Stripe's window).
    /// An abandoned claim is kept for its lease plus this long, so that a late retry still
    /// learns that an earlier attempt lapsed.
    pub fn retention(mut self, retention: Duration) -> Options {
        self.retention = retention;
        self
    }

    /// How long a claim holds its key before another caller may take it over. Default 60 s.
    /// Long operations call [`Store::extend`] as a heartbeat.
    pub fn lease(mut self, lease: Duration) -> Options {
        self.lease = lease;
        self
    }

    /// Whether the claims left in progress by an earlier handle lapse when the store opens, so
    /// that a retry takes the key over at once (with `attempt() > 1`, the sign of an operation
    /// in doubt) instead of being told [`Begin::InProgress`](crate::Begin) until the lease
    /// runs out. Default `false`.
    ///
    /// Turn it on when each process opens the store once, at start: the directory lock then
    /// means no claim from before the open can still be running, and after a crash the
    /// retries of the in-doubt operations need not wait out their leases. Leave it off if a
    /// process closes and reopens the store while operations that hold claims from the old
    /// handle still run: those claims would be taken over, and their holders would get
    /// [`Error::ClaimLost`](crate::Error::ClaimLost) once they were. A lapsed claim is
    /// otherwise unchanged: its holder may still complete, release or extend it until
    /// someone takes it over; `get` and `in_progress` still show its stored lease, and
    /// [`RecoveryReport::in_doubt`](crate::RecoveryReport) counts it.
    pub fn lapse_claims_on_open(mut self, lapse: bool) -> Options {
        self.lapse_claims_on_open = lapse;
        self
    }

    /// When writes are acknowledged. Default [`Durability::Immediate`].
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// The largest outcome [`Store::complete`] accepts, in bytes. Default 1 MiB; at most
    /// 64 MiB.
    pub fn max_outcome_size(mut self, bytes: usize) -> Options {
        self.max_outcome_size = bytes;
        self
    }

    /// The time source. Default [`SystemClock`]; tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Options {
        self.clock = Arc::new(clock);
        self
    }

    /// Checkpoint the index after this many bytes of log. Smaller means faster reopen after a
    /// crash and more frequent durable index commits. Default 64 MiB.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Options {
        self.checkpoint_bytes = bytes;
        self
    }

    /// Also checkpoint this often when anything was written (`None`: only by size). Default
    /// 60 s.
    pub fn checkpoint_interval(mut self, interval: Option<Duration>) -> Options {
        self.checkpoint_interval = interval;
        self
    }

    /// Whether [`Store::close`] compacts the index file after a large purge (see there).
    /// Default `true`. The compaction rewrites the whole index: about 5 s for 1M live records
    /// on the 2-core benchmark VM (`docs/benchmarks.md`), so a service that must stop within
    /// a deadline (a container's grace period) may turn it off. Then the file keeps about the
    /// size it reached: redb reuses the pages that TTL compaction frees for new records, but
    /// does not return them to the filesystem. A later close with this on compacts only
    /// after a large purge since that open.
    pub fn compact_on_close(mut self, compact: bool) -> Options {
        self.compact_on_close = compact;
        self
    }

    /// Whether every open checks the whole index file (redb's integrity check: every page's
    /// checksum, and the allocator state rebuilt from the trees). Default `false`.
    ///
    /// Without it, an index is trusted as its last durable commit left it, after a clean
    /// close and after a crash alike (redb then loads the allocator state that commit saved,
    /// without walking the file): damage made to it since (a flipped bit on disk, a stray
    /// write by another program) is found only where a read meets it, and some damage to
    /// redb's own bookkeeping makes redb panic in a way that aborts the process
    /// (`docs/reliability.md`, finding 17). With it,
    /// such damage is found on open: the index is rebuilt from the log when the log still
    /// holds every change since the store was created, and the open fails with
    /// [`Error::Corruption`](crate::Error::Corruption) otherwise.
    ///
    /// The cost is a read of the whole index on every open, in proportion to its size: 14.9 s
    /// for a 10M-key store (a 9.8 GB index) on the 2-core benchmark VM, where a plain open of
    /// it took 0.006 s (`docs/benchmarks.md`).
    pub fn verify_index_on_open(mut self, verify: bool) -> Options {
        self.verify_index_on_open = verify;
        self
    }

    /// Run TTL compaction in a background thread this often (`None`: only when
    /// [`Store::purge_expired`] is called). Default 60 s.
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Options {
        self.purge_interval = interval;
        self
    }

    /// Start a new log segment when the current one reaches this size. Segments are removed
    /// whole once checkpointed. Default 64 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Options {
        self.segment_size = bytes;
        self
    }

    /// Memory for redb's page cache, in bytes: an upper bound, filled as index pages are
    /// read. Default 1 GiB (redb's own default). It serves lookups that miss the record
    /// cache ([`record_cache_size`](Options::record_cache_size)), index commits, TTL
    /// compaction and the scans at open; reads that miss it cost a `pread` and an eviction
    /// under a lock that readers share. Halving it to 512 MiB cost 64 writers about 15% on a
    /// 1M-key store; on a 2–3M-key store (an index of 1–2 GB), 2 or 4 GiB instead of 1 made
    /// sustained writes of new keys 15–20% faster (`docs/benchmarks.md`). Lower it where
    /// memory is scarcer than writes are hot.
    pub fn cache_size(mut self, bytes: usize) -> Options {
        self.cache_size = bytes;
        self
    }

    /// Memory for the record cache, in bytes: records kept in memory in front of the index,
    /// so that a lookup of one walks no B-tree. Default 512 MiB, about 1.3 million records of
    /// 48-byte keys and 200-byte outcomes; 0 turns it off. It is warmed from the index after
    /// an open (in the background, where it has room), then holds the records most recently
    /// read, each replaced by its key's later writes. It holds only what the index holds,
    /// and never changes an answer, only how fast it comes (`docs/design.md`, Record cache).
    pub fn record_cache_size(mut self, bytes: usize) -> Options {
        self.record_cache_size = bytes;
        self
    }

    /// Memory for acknowledged changes waiting for the index, in bytes (their keys and
    /// entries and a fixed allowance each). Default 64 MiB, about 200 000 changes of 48-byte
    /// keys and 200-byte outcomes: a second or more of writes at full speed, time for a
    /// checkpoint's durable commit of a large index to finish while writes go on.
    ///
    /// Every change is durable in the log, and served from memory, as soon as it is
    /// acknowledged; the index receives it later, in large commits on the background thread.
    /// Past this limit, the caller that led a group commit waits, once its batch is
    /// acknowledged, until the background thread has brought the backlog back under it
    /// (backpressure): writes then go at the index's pace. Without a background thread
    /// (every interval `None` and [`Durability`] not `Periodic`), leaders apply it themselves
    /// instead, a chunk after each batch once it is over this limit (or 32 Ki changes are
    /// queued). A recovery that replayed more than this from the log leaves it over the
    /// limit: the first writes after the open then wait until the excess is applied.
    /// [`Stats::backlog_waits`](crate::Stats::backlog_waits) counts the waits.
    pub fn backlog_size(mut self, bytes: usize) -> Options {
        self.backlog_size = bytes;
        self
    }

    /// How the index is opened.
    pub(crate) fn index_settings(&self) -> IndexSettings {
        IndexSettings {
            pages: self.cache_size,
            records: self.record_cache_size,
            verify_on_open: self.verify_index_on_open,
        }
    }

    /// Whether to open the store read-only: without changing a byte on disk, to look at it —
    /// for operators' tools, and to inspect a crashed or damaged store as it is. Default false.
    ///
    /// The directory must already hold a store: a missing directory or one without
    /// `index.redb` is [`Error::NotFound`], and nothing is created. Recovery runs as on any
    /// open, but over a copy-on-write view of the files kept in memory: the log tail after
    /// the checkpoint is replayed into it and a torn tail is cut from it, and the
    /// [`RecoveryReport`](crate::RecoveryReport) says what a writable open would do, while the
    /// files stay as they are. No background thread runs.
    ///
    /// Reads answer as usual: [`Store::get`], [`Store::in_progress`], [`Store::for_each`],
    /// [`Store::stats`], and a [`Store::begin`] that finds the key completed, in progress or
    /// mismatched. Every call that would write returns [`Error::ReadOnly`]; [`Store::sync`]
    /// and [`Store::close`] succeed and write nothing.
    ///
    /// The directory's lock is still taken, so a running service (which holds it) gives
    /// [`Error::Locked`]: a store is only read while no one writes it. What recovery writes
    /// (the index pages the replayed log tail touches) is held in memory.
    pub fn read_only(mut self, read_only: bool) -> Options {
        self.read_only = read_only;
        self
    }

    /// Opens the store in the directory `dir`, creating the directory and the store if they
    /// are missing (unless [`read_only`](Options::read_only)).
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref();
        if self.read_only {
            // `FsStorage::new` would create a missing directory.
            let no_store = || Error::NotFound {
                path: dir.display().to_string(),
            };
            match dir.metadata() {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(no_store()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Err(no_store());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let storage = FsStorage::new(dir)?;
        self.open_storage(storage)
    }

    /// Opens the store on any [`Storage`], such as a [`SimDisk`](crate::storage::SimDisk).
    pub fn open_storage(self, storage: impl Storage) -> Result<Store> {
        self.validate()?;
        if self.read_only {
            // Checked before the lock is taken: taking it may create the lock file.
            if !storage.list()?.iter().any(|name| name == INDEX_FILE) {
                return Err(Error::NotFound {
                    path: storage.describe(),
                });
            }
            return Store::open_with(self, Arc::new(Overlay::new(storage)));
        }
        Store::open_with(self, Arc::new(storage))
    }

    fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::InvalidOption { name, reason });
        if self.max_outcome_size > MAX_OUTCOME_LIMIT {
            return invalid(
                "max_outcome_size",
                format!(
                    "{} exceeds the limit of {MAX_OUTCOME_LIMIT}",
                    self.max_outcome_size
                ),
            );
        }
        if self.lease.is_zero() {
            return invalid("lease", "must be longer than zero".into());
        }
        if let Durability::Periodic(d) = self.durability
            && d.is_zero()
        {
            return invalid(
                "durability",
                "a periodic interval must be longer than zero".into(),
            );
        }
        if self.segment_size < 4096 {
            return invalid("segment_size", "must be at least 4096 bytes".into());
        }
        Ok(())
    }
}
