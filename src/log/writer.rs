//! Appending to the log: the current segment, rolling to a new one, and removing segments the
//! checkpoint made redundant. Group commit is the store's job (see `store.rs`): it hands this
//! writer whole batches of frames.

use std::io;
use std::sync::Arc;

use crate::storage::{Storage, StorageFile};

use super::segment;

/// The open tail of the log.
#[derive(Debug)]
pub(crate) struct Writer {
    storage: Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    /// Where the next frame goes in the current segment.
    offset: u64,
    /// Every segment on disk, oldest first: (first LSN, name). The last is the current one.
    segments: Vec<(u64, String)>,
    segment_size: u64,
    /// Bytes appended since the writer was opened.
    pub appended_bytes: u64,
}

impl Writer {
    /// Continues the segment `file`, whose frames end at `offset`. `segments` lists every
    /// segment on disk, oldest first, ending with this one.
    pub fn resume(
        storage: Arc<dyn Storage>,
        file: Arc<dyn StorageFile>,
        offset: u64,
        segments: Vec<(u64, String)>,
        segment_size: u64,
    ) -> Writer {
        Writer {
            storage,
            file,
            offset,
            segments,
            segment_size,
            appended_bytes: 0,
        }
    }

    /// Creates, syncs and lists a new, empty segment starting at `first_lsn`.
    pub fn create_segment(
        storage: &dyn Storage,
        first_lsn: u64,
    ) -> io::Result<(Arc<dyn StorageFile>, String)> {
        let name = segment::name(first_lsn);
        let file = storage.open(&name, true)?;
        file.set_len(0)?;
        file.write_all_at(&segment::header(first_lsn), 0)?;
        // The header and the name are durable before any frame is written, so a segment whose
        // header is damaged never held an acknowledged frame (see recovery).
        file.sync_data()?;
        storage.sync_dir()?;
        Ok((file, name))
    }

    /// Starts a new segment at `next_lsn` if the current one is full. The full segment is
    /// synced first, so that damage in any segment but the last is never a torn tail.
    pub fn roll_if_full(&mut self, next_lsn: u64) -> io::Result<()> {
        if self.offset < self.segment_size {
            return Ok(());
        }
        self.roll(next_lsn)
    }

    /// Starts a new segment at `next_lsn`.
    pub fn roll(&mut self, next_lsn: u64) -> io::Result<()> {
        self.file.sync_data()?;
        let (file, name) = Writer::create_segment(self.storage.as_ref(), next_lsn)?;
        self.file = file;
        self.offset = segment::HEADER_LEN as u64;
        self.segments.push((next_lsn, name));
        Ok(())
    }

    /// Writes encoded frames at the end of the current segment (write(2), no sync).
    pub fn append(&mut self, frames: &[u8]) -> io::Result<()> {
        self.file.write_all_at(frames, self.offset)?;
        self.offset += frames.len() as u64;
        self.appended_bytes += frames.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable (fdatasync).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Removes the segments whose every frame is at or before `checkpoint_lsn` (see
    /// [`Writer::take_behind`]). Returns how many.
    pub fn remove_behind(&mut self, checkpoint_lsn: u64) -> io::Result<usize> {
        let behind = self.take_behind(checkpoint_lsn);
        remove_segments(self.storage.as_ref(), &behind)?;
        Ok(behind.len())
    }

    /// Forgets the segments whose every frame is at or before `checkpoint_lsn` (those
    /// followed by a segment that starts at or before `checkpoint_lsn + 1`) and returns their
    /// names, for [`remove_segments`] to delete without holding the writer.
    pub fn take_behind(&mut self, checkpoint_lsn: u64) -> Vec<String> {
        let mut removable = 0;
        while let Some(next) = self.segments.get(removable + 1) {
            if next.0 > checkpoint_lsn.saturating_add(1) {
                break;
            }
            removable += 1;
        }
        self.segments
            .drain(..removable)
            .map(|(_, name)| name)
            .collect()
    }

    /// The number of segments and the bytes of the current one.
    pub fn footprint(&self) -> (usize, u64) {
        (self.segments.len(), self.offset)
    }
}

/// Deletes the named segments (one already gone is fine) and makes that durable.
pub(crate) fn remove_segments(storage: &dyn Storage, names: &[String]) -> io::Result<()> {
    for name in names {
        match storage.remove(name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !names.is_empty() {
        storage.sync_dir()?;
    }
    Ok(())
}
