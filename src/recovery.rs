//! Opening a store: replay the log after the index's checkpoint, cut a torn tail, refuse damage.
//!
//! 1. Open (or create) the index and read its checkpoint: `checkpoint_lsn`, `next_token`.
//! 2. List the segments by first LSN. Skip those wholly at or before the checkpoint.
//! 3. Read each remaining segment in order. Every frame must carry the next LSN (a gap is
//!    allowed only where the missing LSNs are all at or before the checkpoint). Frames after
//!    the checkpoint are applied to the index in LSN order; each sets its key's whole state,
//!    so replay is idempotent and a crash during recovery just replays again.
//! 4. At the first invalid frame (bad magic, length, checksum, or LSN out of sequence):
//!    - in any segment but the last, that is corruption: segments are synced before the next
//!      one is created;
//!    - in the last segment, look for valid frames further on. If one of them records a synced
//!      LSN at or beyond the damaged one, the damaged record had been made durable: corruption.
//!      Otherwise the damage lies in writes no sync covered (a torn tail): truncate the segment
//!      there, sync it, and report it in [`RecoveryReport::torn_tail`].
//! 5. A last segment whose header is damaged and that holds no valid frame is a segment whose
//!    creation was cut short: it is removed and reported. With frames behind it, it is
//!    corruption.
//! 6. If anything was replayed or cut, write a checkpoint, then remove segments behind it.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::index::{Change, Checkpoint, INDEX_FILE, Index};
use crate::log::entry;
use crate::log::frame;
use crate::log::segment::{self, BadHeader};
use crate::log::writer::Writer;
use crate::record::Entry;
use crate::stats::{RecoveryReport, TornTail};
use crate::storage::Storage;

/// Replayed changes are applied to the index in commits of this many.
const REPLAY_BATCH: usize = 16 * 1024;

/// An opened, recovered store's parts.
pub(crate) struct Recovered {
    pub index: Index,
    pub writer: Writer,
    pub next_lsn: u64,
    pub next_token: u64,
    pub checkpoint_lsn: u64,
    pub report: RecoveryReport,
}

pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    cache_size: usize,
    segment_size: u64,
) -> Result<Recovered> {
    let started = Instant::now();
    let names = storage.list()?;
    let created = !names.iter().any(|n| n == INDEX_FILE);
    let mut segments: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| segment::parse_name(n).map(|lsn| (lsn, n.clone())))
        .collect();
    segments.sort();

    let index_file = storage.open(INDEX_FILE, true)?;
    if created {
        storage.sync_dir()?;
    }
    let index = Index::open(index_file, cache_size)?;
    let checkpoint = index.checkpoint()?;
    let mut report = RecoveryReport {
        created,
        checkpoint_lsn: checkpoint.lsn,
        ..RecoveryReport::default()
    };

    // Segments wholly behind the checkpoint are not read.
    let first_needed = segments
        .iter()
        .enumerate()
        .take_while(|(i, _)| {
            segments
                .get(i + 1)
                .is_some_and(|next| next.0 <= checkpoint.lsn.saturating_add(1))
        })
        .count();
    if let Some((first, name)) = segments.get(first_needed)
        && *first > checkpoint.lsn.saturating_add(1)
    {
        return Err(Error::corruption(
            format!(
                "the log resumes at LSN {first} but the index checkpoint is at LSN {}: \
                 records in between are missing{}",
                checkpoint.lsn,
                if created {
                    " (the index file was missing)"
                } else {
                    ""
                }
            ),
            format!("{} segment {name}", storage.describe()),
        ));
    }

    // The LSN of the last valid frame read, in sequence.
    let mut last_seen: Option<u64> = None;
    let mut max_token = 0u64;
    let mut changes: Vec<Change> = Vec::new();
    let mut tail: Option<(Arc<dyn crate::storage::StorageFile>, u64, u64)> = None;
    let mut kept: Vec<(u64, String)> = segments.get(..first_needed).unwrap_or_default().to_vec();
    let last_index = segments.len().saturating_sub(1);

    for (i, (first_lsn, name)) in segments.iter().enumerate().skip(first_needed) {
        let is_last = i == last_index;
        let location =
            |offset: usize| format!("{} segment {name} at offset {offset}", storage.describe());
        let file = storage.open(name, false)?;
        let len = usize::try_from(file.len()?).unwrap_or(usize::MAX);
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0)?;
        report.segments_read += 1;

        match segment::parse_header(&bytes) {
            Ok(lsn) if lsn == *first_lsn => {}
            Ok(lsn) => {
                return Err(Error::corruption(
                    format!("segment header says first LSN {lsn}"),
                    location(0),
                ));
            }
            Err(BadHeader::UnknownVersion(v)) => {
                return Err(Error::corruption(
                    format!(
                        "segment format version {v} is not supported (this build reads {})",
                        segment::FORMAT_VERSION
                    ),
                    location(0),
                ));
            }
            Err(BadHeader::Damaged) => {
                if !is_last || !frame::valid_frames_after(&bytes, 0).is_empty() {
                    return Err(Error::corruption("segment header damaged", location(0)));
                }
                // Creation was cut short: nothing in it was ever acknowledged.
                storage.remove(name)?;
                storage.sync_dir()?;
                report.torn_tail = Some(TornTail {
                    segment: name.clone(),
                    offset: 0,
                    bytes_removed: len as u64,
                    frames_discarded: 0,
                    reason: "segment header incomplete".into(),
                });
                continue;
            }
        }

        let scan = segment::scan(&bytes);
        let mut cut = scan.damage.map(|(at, why)| (at, why.describe()));
        let mut end = len;
        for (k, (offset, f)) in scan.frames.iter().enumerate() {
            // Each frame follows the one before; a gap may only skip LSNs the checkpoint holds.
            let in_sequence = (k > 0 || f.lsn == *first_lsn)
                && match last_seen {
                    None => f.lsn <= checkpoint.lsn.saturating_add(1),
                    Some(last) => {
                        f.lsn == last.wrapping_add(1)
                            || (f.lsn > last && f.lsn - 1 <= checkpoint.lsn)
                    }
                };
            if !in_sequence {
                cut = Some((*offset, "frame LSN out of sequence"));
                break;
            }
            last_seen = Some(f.lsn);
            if f.lsn <= checkpoint.lsn {
                continue;
            }
            let Some(e) = entry::decode(f.payload) else {
                return Err(Error::corruption(
                    "log entry malformed behind a valid checksum",
                    location(*offset),
                ));
            };
            if let Some(bytes) = e.entry {
                let decoded = Entry::decode(e.key, bytes, &|| location(*offset))?;
                max_token = max_token.max(decoded.token);
            }
            changes.push(Change {
                key: e.key.to_vec(),
                entry: e.entry.map(<[u8]>::to_vec),
            });
            report.replayed += 1;
            if changes.len() >= REPLAY_BATCH {
                index.apply(&changes, None)?;
                changes.clear();
            }
        }

        if let Some((at, why)) = cut {
            if !is_last {
                return Err(Error::corruption(why, location(at)));
            }
            let damaged_lsn = last_seen.map_or(*first_lsn, |l| l.wrapping_add(1));
            let later = frame::valid_frames_after(&bytes, at);
            if let Some((proof_at, proof)) = later.iter().find(|(_, f)| f.synced >= damaged_lsn) {
                return Err(Error::corruption(
                    format!(
                        "{why} where LSN {damaged_lsn} was expected, but the frame at offset \
                         {proof_at} records that LSNs through {} had been synced",
                        proof.synced
                    ),
                    location(at),
                ));
            }
            file.set_len(at as u64)?;
            file.sync_data()?;
            report.torn_tail = Some(TornTail {
                segment: name.clone(),
                offset: at as u64,
                bytes_removed: (len - at) as u64,
                frames_discarded: later.len() as u64,
                reason: why.to_string(),
            });
            end = at;
        }
        kept.push((*first_lsn, name.clone()));
        let tail_lsn = scan
            .frames
            .iter()
            .take_while(|(o, _)| *o < end)
            .last()
            .map_or(first_lsn.wrapping_sub(1), |(_, f)| f.lsn);
        tail = Some((file, end as u64, tail_lsn));
    }
    if !changes.is_empty() {
        index.apply(&changes, None)?;
    }

    let last_lsn = last_seen.unwrap_or(0).max(checkpoint.lsn);
    let next_lsn = last_lsn + 1;
    let next_token = checkpoint.next_token.max(max_token + 1).max(1);
    report.last_lsn = last_lsn;

    let mut writer = match tail {
        Some((file, offset, tail_lsn)) if tail_lsn.wrapping_add(1) == next_lsn => {
            Writer::resume(storage.clone(), file, offset, kept, segment_size)
        }
        Some((file, offset, _)) => {
            // The checkpoint is ahead of the log's end (records acknowledged without a sync
            // were lost with power, after the index had checkpointed them): continue in a new
            // segment so that LSNs stay in sequence within each one.
            let mut writer = Writer::resume(storage.clone(), file, offset, kept, segment_size);
            writer.roll(next_lsn)?;
            writer
        }
        None => {
            let (file, name) = Writer::create_segment(storage.as_ref(), next_lsn)?;
            kept.push((next_lsn, name));
            Writer::resume(
                storage.clone(),
                file,
                segment::HEADER_LEN as u64,
                kept,
                segment_size,
            )
        }
    };

    if report.replayed > 0 || report.torn_tail.is_some() || created {
        index.apply(
            &[],
            Some(Checkpoint {
                lsn: last_lsn,
                next_token,
            }),
        )?;
    }
    // Nothing replayed means nothing after the checkpoint: `last_lsn` is the checkpoint.
    let checkpoint_lsn = last_lsn;
    writer.remove_behind(checkpoint_lsn)?;
    report.in_doubt = index.counts()?.1;
    report.duration = started.elapsed();
    Ok(Recovered {
        index,
        writer,
        next_lsn,
        next_token,
        checkpoint_lsn,
        report,
    })
}
