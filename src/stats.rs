//! What the store reports about itself: counters, and what the last open recovered.

use std::time::Duration;

/// Counters and sizes of an open store, from [`Store::stats`](crate::Store::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records in the index, including expired ones not yet compacted.
    pub records: u64,
    /// Claims in progress (including lapsed ones), as of the last applied change.
    pub in_progress: u64,
    /// The LSN of the last log record written.
    pub last_lsn: u64,
    /// The LSN of the last acknowledged log record.
    pub acknowledged_lsn: u64,
    /// The last LSN whose effect is in the durable index.
    pub checkpoint_lsn: u64,
    /// The next fencing token to be handed out.
    pub next_token: u64,
    /// Log records appended since open.
    pub appended: u64,
    /// Batches written by group commit since open (`appended / batches` is the batching factor).
    pub batches: u64,
    /// Log syncs (fdatasync) since open.
    pub syncs: u64,
    /// Checkpoints since open.
    pub checkpoints: u64,
    /// Records removed by TTL compaction since open.
    pub purged: u64,
    /// How many times since open a caller that led a group commit then waited for the index
    /// to catch up, because the acknowledged changes waiting for it took more than
    /// [`Options::backlog_size`](crate::Options::backlog_size) (backpressure). Each wait
    /// delays that caller's return; its write was already acknowledged.
    pub backlog_waits: u64,
    /// The total time of those waits.
    pub backlog_wait: Duration,
    /// Log segments on disk.
    pub segments: u64,
    /// Bytes in the current log segment.
    pub current_segment_bytes: u64,
    /// Whether the in-memory key filter is ready: until its first build (in the background
    /// after open) finishes, lookups of absent keys go to the index.
    pub key_filter_ready: bool,
    /// The number of keys the ready key filter was sized for; it is rebuilt, twice the size
    /// of the keys there are, once more keys were inserted.
    pub key_filter_capacity: u64,
    /// Memory the ready key filter takes, in bytes.
    pub key_filter_bytes: u64,
    /// Key filter builds finished since open.
    pub key_filter_builds: u64,
    /// Records in the record cache (see
    /// [`Options::record_cache_size`](crate::Options::record_cache_size)).
    pub record_cache_records: u64,
    /// Bytes the record cache charges for them: their keys and entries and a fixed
    /// allowance each for its maps.
    pub record_cache_bytes: u64,
}

/// What the last open found and did, from
/// [`Store::recovery_report`](crate::Store::recovery_report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Whether the index file was created by this open (a new store).
    pub created: bool,
    /// Whether the index file was damaged and rebuilt from the log, which still held every
    /// change since the store was created (e.g. a crash cut the index's creation short).
    pub index_rebuilt: bool,
    /// Whether redb had to walk the whole index file to rebuild its allocator state before
    /// recovery could start: time in proportion to the index, not the log. Every durable
    /// index commit saves that state and a crash rolls back to one, so a crash should never
    /// need it; `true` points at a file written by something else, or by an older version
    /// — or at [`Options::verify_index_on_open`](crate::Options::verify_index_on_open),
    /// whose check is that same walk, on every open.
    pub index_repaired: bool,
    /// The checkpoint the index held when opened.
    pub checkpoint_lsn: u64,
    /// Log records newer than the checkpoint, read back into the store's acknowledged layer in
    /// memory (served from there, and applied to the index after the open, in chunks).
    pub replayed: u64,
    /// The last valid LSN in the log after recovery.
    pub last_lsn: u64,
    /// Segments read.
    pub segments_read: u64,
    /// The torn tail that was cut off, if the log ended in one.
    pub torn_tail: Option<TornTail>,
    /// Claims that were in progress when the store was opened: operations that may have run
    /// partly or wholly before the crash, which a service may need to reconcile. List them
    /// with [`Store::in_progress`](crate::Store::in_progress).
    pub in_doubt: u64,
    /// How long the open took.
    pub duration: Duration,
    /// Whether the store was opened [read-only](crate::Options::read_only): then all of the
    /// above happened in memory only. A torn tail is reported but still on disk, and the next
    /// writable open replays and cuts the same again.
    pub read_only: bool,
}

/// The end of a log segment that a crash left incomplete and recovery cut off.
///
/// In [`Durability::Immediate`](crate::Durability::Immediate) nothing in a torn tail was
/// acknowledged: every acknowledged record was synced, and a record is recognised as damage
/// only when no later record proves it had been synced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// The segment's file name.
    pub segment: String,
    /// Where the damage started; the segment now ends here (on disk, unless the store was
    /// opened read-only).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes_removed: u64,
    /// Valid-looking records after the damage that were removed with it (written after the
    /// last sync, so never acknowledged in `Immediate` mode).
    pub frames_discarded: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}
