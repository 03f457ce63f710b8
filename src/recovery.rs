//! Opening a store: replay the log after the index's checkpoint, cut a torn tail, refuse damage.
//!
//! 1. Open (or create) the index and read its checkpoint: `checkpoint_lsn`, `next_token`. A
//!    new store creates its first segment (LSN 1) before the index. An index that redb
//!    refuses as damaged is rebuilt from the log when the log still holds every change (its
//!    first segment starts at LSN 1: a creation cut short, or a store not yet trimmed);
//!    otherwise it is `Error::Corruption`.
//! 2. Read the log after the checkpoint (see [`crate::log::reader`] for the rules that tell a
//!    torn tail from corruption) and return its records in LSN order. They are not applied
//!    to the index here: the store serves them from its acknowledged layer in memory and
//!    applies them in chunks afterwards, like any acknowledged change, so that reopening
//!    costs a read of the log, not a B-tree insert per record. A second thread builds that
//!    layer (each key's latest change) from chunks of the records while the log is read.
//!    Each record sets its key's whole state, so replay is idempotent: a crash before the
//!    next checkpoint just replays again.
//!
//!    Steps 1 and 2 run at once (on storage that allows it, see
//!    [`Storage::helper_threads`]): after a crash, opening the index costs redb's sync of the
//!    pages the dead process left dirty, about as long as reading the log. Since the
//!    checkpoint is not known yet, the log is read from its first segment, and the records
//!    at or before the checkpoint are dropped once it is. That equals the read after the
//!    checkpoint when the log starts at or before it and the read cut nothing (no gap, no
//!    damage, whose verdict can depend on the checkpoint); otherwise the log is read again
//!    after the checkpoint.
//! 3. Cut a torn tail: truncate the last segment where the damage starts (or remove a
//!    segment whose creation was cut short); report it in [`RecoveryReport::torn_tail`]. Sync
//!    the last segment and the directory either way: what was read back, and the names of
//!    the files, may have come from the page cache.
//! 4. A new or rebuilt index gets its first checkpoint (still the old LSN: nothing is
//!    applied yet); segments behind the checkpoint are removed.
//! 5. Continue the log in the last segment, or in a new one where the checkpoint is ahead of
//!    the log's end (records acknowledged without a sync and lost with power after the index
//!    had checkpointed them), so that LSNs stay in sequence within each segment.

use std::mem;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Instant;

use crate::commit::{Recent, publish};
use crate::error::{Error, Result};
use crate::hash;
use crate::index::{Change, Checkpoint, INDEX_FILE, Index, IndexSettings, is_in_progress};
use crate::log::reader::{self, LogRead, Tail};
use crate::log::segment;
use crate::log::writer::Writer;
use crate::record::{Body, Entry};
use crate::stats::RecoveryReport;
use crate::storage::{Storage, StorageFile};
use crate::writeback::{WRITEBACK_BYTES, WritebackFile};

/// Replayed changes handed at a time to the thread that builds the acknowledged layer.
const REPLAY_CHUNK: usize = 4096;

/// An opened, recovered store's parts.
pub(crate) struct Recovered {
    pub index: Index,
    pub writer: Writer,
    pub next_lsn: u64,
    pub next_token: u64,
    pub checkpoint_lsn: u64,
    /// The log's records after the checkpoint, in LSN order, not yet in the index.
    pub replayed: Vec<Change>,
    /// Each key's latest replayed change: what reads see until the index holds it.
    pub recent: Recent,
    /// The key filter hashes of the keys of replayed claims (see
    /// [`Shared::start_filter_build`](crate::commit::Shared::start_filter_build)).
    pub claimed: Vec<u64>,
    pub report: RecoveryReport,
}

pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    settings: IndexSettings,
    segment_size: u64,
) -> Result<Recovered> {
    let started = Instant::now();
    let created = !storage.list()?.iter().any(|n| n == INDEX_FILE);
    if created && reader::list_segments(storage.as_ref())?.is_empty() {
        // A new store writes its first segment before its index: an index damaged by a crash
        // during creation then always has the complete log beside it to be rebuilt from.
        Writer::create_segment(storage.as_ref(), 1)?;
    }
    let index_file = storage.open(INDEX_FILE, true)?;
    if created {
        storage.sync_dir()?;
    }
    let mut report = RecoveryReport {
        created,
        ..RecoveryReport::default()
    };
    // The index opens (after a crash, redb first syncs the pages the dead process left
    // dirty) while the log is read. The checkpoint is not known until the index is open, so
    // the log is read from its first segment on, and what the checkpoint covers is dropped
    // afterwards (see `Replay::after`).
    let open = move || open_index(storage, index_file, settings, created);
    let (opened, from_start) = if storage.helper_threads() {
        thread::scope(|scope| {
            let opening = scope.spawn(open);
            let from_start = read_log(storage.as_ref(), None);
            let opened = opening
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (opened, from_start)
        })
    } else {
        (open(), read_log(storage.as_ref(), None))
    };
    let (index, checkpoint, rebuilt) = opened?;
    report.index_rebuilt = rebuilt;
    report.checkpoint_lsn = checkpoint.lsn;
    report.index_repaired = index.repaired_on_open();

    let Replay {
        log,
        changes,
        recent,
        claimed,
        max_token,
    } = match from_start {
        // Read from where the log starts, the result is the read after the checkpoint plus
        // the records the checkpoint covers, as long as the log starts at or before the
        // checkpoint and nothing was cut: neither read met a gap or damage. Otherwise the
        // log is read again, after the checkpoint, and its rules decide.
        Ok(read) if read.log.after <= checkpoint.lsn && read.log.torn.is_none() => {
            read.after(checkpoint.lsn)
        }
        _ => read_log(storage.as_ref(), Some(checkpoint.lsn))?,
    };
    report.replayed = changes.len() as u64;
    report.segments_read = log.segments_read;

    if let Some(torn) = &log.torn {
        if torn.offset == 0 {
            // A segment whose creation was cut short (not listed in `log.segments`).
            storage.remove(&torn.segment)?;
            storage.sync_dir()?;
        } else if let Some(tail) = &log.tail {
            tail.file.set_len(tail.end)?;
        }
        report.torn_tail = Some(torn.clone());
    }
    // Frames read back may still sit unsynced in the page cache (the process died, the
    // machine did not). Sync them now: frames written from here on record a synced LSN that
    // vouches for them, and the checkpoint below covers them.
    if let Some(tail) = &log.tail {
        tail.file.sync_data()?;
    }
    // So may the names: a segment whose creation failed before its directory sync (a failed
    // roll) is adopted as the tail here, and what is written into it next must not vanish
    // with its name in a power cut.
    storage.sync_dir()?;

    let last_lsn = log.last_lsn.unwrap_or(0).max(checkpoint.lsn);
    let out_of_range = |what: &str| {
        Error::corruption(
            format!("{what} out of range (at the end of the u64 space)"),
            format!("{INDEX_FILE} checkpoint or log"),
        )
    };
    let next_lsn = last_lsn
        .checked_add(1)
        .ok_or_else(|| out_of_range("log sequence number"))?;
    if checkpoint.next_token == u64::MAX {
        return Err(out_of_range("next fencing token"));
    }
    let next_token = checkpoint.next_token.max(max_token + 1).max(1);
    report.last_lsn = last_lsn;

    let mut segments = log.segments;
    let mut writer = match log.tail {
        Some(Tail { file, end, lsn }) => {
            let continues = lsn.wrapping_add(1) == next_lsn;
            let mut writer = Writer::resume(storage.clone(), file, end, segments, segment_size);
            if !continues {
                writer.roll(next_lsn)?;
            }
            writer
        }
        None => {
            let (file, name) = Writer::create_segment(storage.as_ref(), next_lsn)?;
            segments.push((next_lsn, name));
            Writer::resume(
                storage.clone(),
                file,
                segment::HEADER_LEN as u64,
                segments,
                segment_size,
            )
        }
    };

    if created || report.index_rebuilt {
        index.apply(
            &[],
            Some(Checkpoint {
                lsn: checkpoint.lsn,
                next_token,
            }),
        )?;
    }
    // Only what the index holds durably: the replayed records are not in it yet.
    writer.remove_behind(checkpoint.lsn)?;
    // Claims open now: the replayed ones, and the index's whose key no replayed change moved on.
    let replayed_open = recent
        .values()
        .filter(|(_, entry)| is_in_progress(entry.as_deref()))
        .count();
    let indexed_open = index
        .in_progress()?
        .iter()
        .filter(|(key, _)| !recent.contains_key(key.as_slice()))
        .count();
    report.in_doubt = (replayed_open + indexed_open) as u64;
    report.duration = started.elapsed();
    Ok(Recovered {
        index,
        writer,
        next_lsn,
        next_token,
        checkpoint_lsn: checkpoint.lsn,
        replayed: changes,
        recent,
        claimed: claimed.into_iter().map(|(_, hash)| hash).collect(),
        report,
    })
}

/// Opens the index and reads its checkpoint, rebuilding a damaged index when the log holds
/// every change since the store was created (its first segment starts at LSN 1). With a
/// trimmed log, or none, damage stays an error. Also returns whether it was rebuilt.
fn open_index(
    storage: &Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    settings: IndexSettings,
    created: bool,
) -> Result<(Index, Checkpoint, bool)> {
    let opened = Index::open(with_writeback(storage.as_ref(), file), settings, created)
        .and_then(|index| Ok((index.checkpoint()?, index)));
    match opened {
        Ok((checkpoint, index)) => Ok((index, checkpoint, false)),
        Err(Error::Corruption { .. })
            if reader::list_segments(storage.as_ref())?
                .first()
                .is_some_and(|(lsn, _)| *lsn == 1) =>
        {
            storage.remove(INDEX_FILE)?;
            storage.sync_dir()?;
            let file = storage.open(INDEX_FILE, true)?;
            storage.sync_dir()?;
            let index = Index::open(with_writeback(storage.as_ref(), file), settings, true)?;
            let checkpoint = index.checkpoint()?;
            Ok((index, checkpoint, true))
        }
        Err(e) => Err(e),
    }
}

/// The index file, synced in the background (see [`crate::writeback`]) where the storage
/// allows helper threads.
fn with_writeback(storage: &dyn Storage, file: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
    if storage.helper_threads() {
        Arc::new(WritebackFile::new(file, WRITEBACK_BYTES))
    } else {
        file
    }
}

/// The log as read after some LSN, and what recovery keeps of it.
struct Replay {
    log: LogRead,
    /// The records after that LSN, in LSN order.
    changes: Vec<Change>,
    /// Each key's latest record among `changes`.
    recent: Recent,
    /// The LSNs and key filter hashes of the claims among `changes`.
    claimed: Vec<(u64, u64)>,
    /// The highest fencing token in the records read.
    max_token: u64,
}

impl Replay {
    /// What a read after `lsn` would have kept, from a read after an earlier LSN that met
    /// no damage and no gap (so that both reads saw the same frames).
    ///
    /// `max_token` keeps the tokens of the dropped records: the checkpoint's next token
    /// already lies above them in a sound store, and a higher next token is always safe.
    fn after(mut self, lsn: u64) -> Replay {
        let behind = self.changes.partition_point(|c| c.lsn <= lsn);
        if behind > 0 {
            self.changes.drain(..behind);
            self.recent.retain(|_, (latest, _)| *latest > lsn);
            self.claimed.retain(|(claim, _)| *claim > lsn);
        }
        self
    }
}

/// Reads the log after `after` (from its start if `None`) and collects its records (see
/// [`reader::read`] for the rules).
/// A second thread builds the acknowledged layer from chunks of the records while the log
/// is read and decoded: each is about half of the work.
fn read_log(storage: &dyn Storage, after: Option<u64>) -> Result<Replay> {
    let mut max_token = 0u64;
    let mut claimed = Vec::new();
    let (log, changes, recent) = thread::scope(|scope| {
        let (send, receive) = mpsc::sync_channel::<Vec<Change>>(4);
        let builder = scope.spawn(move || {
            let mut changes: Vec<Change> = Vec::new();
            let mut recent = Recent::default();
            for chunk in receive {
                publish(&mut recent, &chunk);
                changes.extend(chunk);
            }
            (changes, recent)
        });
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        let log = reader::read(storage, after, false, |lsn, e, location| {
            if let Some(bytes) = e.entry {
                let entry = Entry::decode(e.key, bytes, location)?;
                // Tokens count up from 1: the last one can never have been handed out, and
                // the next open could hand out none above it.
                if entry.token == u64::MAX {
                    return Err(Error::corruption(
                        "record fencing token out of range",
                        location(),
                    ));
                }
                max_token = max_token.max(entry.token);
                if matches!(entry.body, Body::InProgress { .. }) {
                    claimed.push((lsn, hash::hash(e.key)));
                }
            }
            chunk.push(Change {
                lsn,
                key: Arc::from(e.key),
                entry: e.entry.map(Arc::from),
            });
            if chunk.len() == REPLAY_CHUNK {
                let full = mem::replace(&mut chunk, Vec::with_capacity(REPLAY_CHUNK));
                // The builder only stops when this side hangs up.
                let _ = send.send(full);
            }
            Ok(())
        });
        let _ = send.send(chunk);
        drop(send);
        let built = builder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (log, built.0, built.1)
    });
    Ok(Replay {
        log: log?,
        changes,
        recent,
        claimed,
        max_token,
    })
}
