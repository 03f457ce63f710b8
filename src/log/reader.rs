//! Reading the log back: segments in order, frames in sequence, and where it ends.
//!
//! The reader changes nothing on disk; recovery acts on what it reports (cutting a torn
//! tail), and `verify` only reports it. The rules it applies:
//!
//! - Segments wholly at or before the checkpoint are skipped unread. The first segment read
//!   must start at or before `checkpoint_lsn + 1`, or records are missing.
//! - Every frame carries the next LSN; a gap may only skip LSNs at or before the checkpoint.
//! - At the first invalid frame, in any segment but the last: corruption (a segment is synced
//!   before the next is created). In the last segment: corruption if a valid frame further on
//!   records a synced LSN at or beyond the damaged one; otherwise a torn tail.
//! - A last segment with a damaged header and no valid frame is a torn creation; with valid
//!   frames behind the damaged header it is corruption.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::stats::TornTail;
use crate::storage::{Storage, StorageFile};

use super::entry::{self, LogEntry};
use super::frame;
use super::segment::{self, BadHeader};

/// The end of the log as read.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The last segment.
    pub file: Arc<dyn StorageFile>,
    /// Where its valid frames end.
    pub end: u64,
    /// The LSN of its last valid frame (its first LSN minus one if it has none).
    pub lsn: u64,
}

/// What reading the log found.
#[derive(Debug, Default)]
pub(crate) struct LogRead {
    /// The LSN the read took as the checkpoint: records at or before it were skipped.
    pub after: u64,
    /// Every segment to keep, oldest first: (first LSN, name). A torn creation is not listed.
    pub segments: Vec<(u64, String)>,
    pub segments_read: u64,
    /// The LSN of the last valid frame read in sequence.
    pub last_lsn: Option<u64>,
    pub tail: Option<Tail>,
    /// Damage at the end of the last segment that no sync covered.
    pub torn: Option<TornTail>,
}

/// Lists the segment files of `storage`, oldest first.
pub(crate) fn list_segments(storage: &dyn Storage) -> Result<Vec<(u64, String)>> {
    let mut segments: Vec<(u64, String)> = storage
        .list()?
        .into_iter()
        .filter_map(|n| segment::parse_name(&n).map(|lsn| (lsn, n)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// Reads the log after `checkpoint_lsn`, calling `visit` with each record newer than it (with
/// `covered`, also those at or before it in the segments read), in LSN order, and a function
/// naming its location. Without a checkpoint (`None`), reads as if it were just before the
/// first segment's first LSN: every record, by the same rules ([`LogRead::after`] says which
/// LSN that was).
pub(crate) fn read(
    storage: &dyn Storage,
    checkpoint_lsn: Option<u64>,
    covered: bool,
    mut visit: impl FnMut(u64, LogEntry<'_>, &dyn Fn() -> String) -> Result<()>,
) -> Result<LogRead> {
    let segments = list_segments(storage)?;
    let checkpoint_lsn = checkpoint_lsn
        .unwrap_or_else(|| segments.first().map_or(0, |(lsn, _)| lsn.saturating_sub(1)));
    let describe = storage.describe();
    let first_needed = segments
        .iter()
        .enumerate()
        .take_while(|(i, _)| {
            segments
                .get(i + 1)
                .is_some_and(|next| next.0 <= checkpoint_lsn.saturating_add(1))
        })
        .count();
    if let Some((first, name)) = segments.get(first_needed)
        && *first > checkpoint_lsn.saturating_add(1)
    {
        return Err(Error::corruption(
            format!(
                "the log resumes at LSN {first} but the index checkpoint is at LSN \
                 {checkpoint_lsn}: the records in between are missing"
            ),
            format!("{describe} segment {name}"),
        ));
    }

    let mut read = LogRead {
        after: checkpoint_lsn,
        segments: segments.get(..first_needed).unwrap_or_default().to_vec(),
        ..LogRead::default()
    };
    let last_index = segments.len().saturating_sub(1);
    // One buffer for every segment: its pages are faulted in once, not once per segment.
    let mut buffer = Vec::new();
    for (i, (first_lsn, name)) in segments.iter().enumerate().skip(first_needed) {
        let is_last = i == last_index;
        let location = |offset: usize| format!("{describe} segment {name} at offset {offset}");
        let file = storage.open(name, false)?;
        let len = usize::try_from(file.len()?).unwrap_or(usize::MAX);
        buffer.resize(len, 0);
        let bytes = buffer.get_mut(..len).unwrap_or_default();
        file.read_exact_at(bytes, 0)?;
        let bytes = &*bytes;
        read.segments_read += 1;

        match segment::parse_header(bytes) {
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
                if !is_last || !frame::valid_frames_after(bytes, 0).is_empty() {
                    return Err(Error::corruption("segment header damaged", location(0)));
                }
                read.torn = Some(TornTail {
                    segment: name.clone(),
                    offset: 0,
                    bytes_removed: len as u64,
                    frames_discarded: 0,
                    reason: "segment header incomplete".into(),
                });
                continue;
            }
        }

        let scan = segment::scan(bytes);
        let mut cut = scan.damage.map(|(at, why)| (at, why.describe()));
        for (k, (offset, f)) in scan.frames.iter().enumerate() {
            // Each frame follows the one before; a gap may only skip LSNs the checkpoint holds.
            let in_sequence = (k > 0 || f.lsn == *first_lsn)
                && match read.last_lsn {
                    None => f.lsn <= checkpoint_lsn.saturating_add(1),
                    Some(last) => {
                        f.lsn == last.wrapping_add(1)
                            || (f.lsn > last && f.lsn - 1 <= checkpoint_lsn)
                    }
                };
            if !in_sequence {
                cut = Some((*offset, "frame LSN out of sequence"));
                break;
            }
            read.last_lsn = Some(f.lsn);
            if f.lsn <= checkpoint_lsn && !covered {
                continue;
            }
            let here = || location(*offset);
            let Some(e) = entry::decode(f.payload) else {
                return Err(Error::corruption(
                    "log entry malformed behind a valid checksum",
                    here(),
                ));
            };
            visit(f.lsn, e, &here)?;
        }

        let mut end = len;
        if let Some((at, why)) = cut {
            if !is_last {
                return Err(Error::corruption(why, location(at)));
            }
            let damaged_lsn = read.last_lsn.map_or(*first_lsn, |l| l.wrapping_add(1));
            let later = frame::valid_frames_after(bytes, at);
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
            read.torn = Some(TornTail {
                segment: name.clone(),
                offset: at as u64,
                bytes_removed: (len - at) as u64,
                frames_discarded: later.len() as u64,
                reason: why.to_string(),
            });
            end = at;
        }
        read.segments.push((*first_lsn, name.clone()));
        let lsn = scan
            .frames
            .iter()
            .take_while(|(o, _)| *o < end)
            .last()
            .map_or(first_lsn.wrapping_sub(1), |(_, f)| f.lsn);
        read.tail = Some(Tail {
            file,
            end: end as u64,
            lsn,
        });
    }
    Ok(read)
}
