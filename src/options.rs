//! Configuration: durability, retention, leases, limits and tuning.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::log::frame::MAX_OUTCOME_LIMIT;
use crate::storage::{FsStorage, Storage};
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
            cache_size: 256 << 20,
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

    /// Memory for redb's page cache, in bytes. Default 256 MiB.
    pub fn cache_size(mut self, bytes: usize) -> Options {
        self.cache_size = bytes;
        self
    }

    /// Opens (creating if missing) the store in the directory `dir`.
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Store> {
        let storage = FsStorage::new(dir)?;
        self.open_storage(storage)
    }

    /// Opens the store on any [`Storage`], such as a [`SimDisk`](crate::storage::SimDisk).
    pub fn open_storage(self, storage: impl Storage) -> Result<Store> {
        self.validate()?;
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
