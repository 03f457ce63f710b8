//! A copy-on-write view of another [`Storage`], for opening a store read-only.
//!
//! Recovery, and redb opening its file, write: they cut a torn log tail, repair and checkpoint
//! the index, create and remove segments. Run over an [`Overlay`], they do all of it in
//! memory: reads fall through to the base files, and everything written, truncated, created
//! or removed lives in the overlay only, so the store answers as if it had recovered while
//! not one byte of the base changes. Syncs succeed and do nothing. The directory lock is still
//! taken on the base, so a running service (which holds it) keeps the directory to itself.
//!
//! Each file keeps its changed bytes in 4 KiB pages, plus its logical length and the length
//! below which the base's bytes still show through: a truncation lowers that limit, so a file
//! cut and then grown again reads zeros where the cut bytes were, as on a real disk. Memory
//! grows with what is written (for a store, with the log tail replayed into the index).

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{Storage, StorageFile};

/// The overlay's page size in bytes.
const PAGE: u64 = 4096;

/// A copy-on-write [`Storage`] over a base storage that it never writes to.
///
/// Everything but [`try_lock`](Storage::try_lock) stays in memory: writes, truncations,
/// creations and removals are seen through this overlay only and are lost when it is dropped.
/// Files of the base are opened only to be read.
pub(crate) struct Overlay {
    base: Box<dyn Storage>,
    /// Names opened, created or removed through the overlay. A name not here is the base's.
    names: Mutex<HashMap<String, Name>>,
}

/// What the overlay knows about one name.
#[derive(Clone)]
enum Name {
    /// Opened or created through the overlay: every handle to it shares this file.
    Open(Arc<OverlayFile>),
    /// Removed through the overlay: hidden, whether or not the base holds it.
    Removed,
}

impl Overlay {
    /// A read-only view of `base`, with nothing changed yet.
    pub(crate) fn new(base: impl Storage) -> Overlay {
        Overlay {
            base: Box::new(base),
            names: Mutex::new(HashMap::new()),
        }
    }
}

impl fmt::Debug for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlay")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, name.to_string())
}

impl Storage for Overlay {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut names = self.names.lock();
        let file = match names.get(name) {
            Some(Name::Open(file)) => return Ok(file.clone()),
            Some(Name::Removed) if !create => return Err(not_found(name)),
            Some(Name::Removed) => Arc::new(OverlayFile::empty()),
            // Never `create` on the base: a missing file is created in memory.
            None => match self.base.open_read(name) {
                Ok(base) => Arc::new(OverlayFile::over(base)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    Arc::new(OverlayFile::empty())
                }
                Err(e) => return Err(e),
            },
        };
        names.insert(name.to_string(), Name::Open(file.clone()));
        Ok(file)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let names = self.names.lock();
        let mut out: Vec<String> = self
            .base
            .list()?
            .into_iter()
            .filter(|n| !names.contains_key(n))
            .collect();
        out.extend(names.iter().filter_map(|(n, state)| match state {
            Name::Open(_) => Some(n.clone()),
            Name::Removed => None,
        }));
        out.sort();
        Ok(out)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut names = self.names.lock();
        match names.get(name) {
            Some(Name::Open(_)) => {}
            Some(Name::Removed) => return Err(not_found(name)),
            // Opened only to learn that the base holds the name.
            None => drop(self.base.open_read(name)?),
        }
        // Handles already open keep working, as for an unlinked file.
        names.insert(name.to_string(), Name::Removed);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }

    fn try_lock(&self) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.base.try_lock_read()
    }

    fn helper_threads(&self) -> bool {
        self.base.helper_threads()
    }

    fn describe(&self) -> String {
        format!("{} (opened read-only)", self.base.describe())
    }
}

/// One file of an [`Overlay`]: the base file's bytes (if it has one) under the pages written.
struct OverlayFile {
    base: Option<Arc<dyn StorageFile>>,
    pages: RwLock<Pages>,
}

struct Pages {
    /// The file's length as seen through the overlay.
    len: u64,
    /// Base bytes at and after this offset were cut off by a truncation (or never existed):
    /// outside the written pages they read as zeros. Never above `len`.
    base_limit: u64,
    /// Page number → its `PAGE` bytes. Bytes of a page at or beyond `len` are zero.
    written: HashMap<u64, Box<[u8]>>,
}

impl fmt::Debug for OverlayFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pages = self.pages.read();
        f.debug_struct("OverlayFile")
            .field("base", &self.base)
            .field("len", &pages.len)
            .field("base_limit", &pages.base_limit)
            .field("pages_written", &pages.written.len())
            .finish()
    }
}

/// `buf[start..end]`, or an error (never expected: the callers keep within bounds).
fn range_mut(buf: &mut [u8], start: u64, end: u64) -> io::Result<&mut [u8]> {
    let start = usize::try_from(start).ok();
    let end = usize::try_from(end).ok();
    start
        .zip(end)
        .and_then(|(s, e)| buf.get_mut(s..e))
        .ok_or_else(|| io::Error::other("overlay: range out of bounds"))
}

fn range(buf: &[u8], start: u64, end: u64) -> io::Result<&[u8]> {
    let start = usize::try_from(start).ok();
    let end = usize::try_from(end).ok();
    start
        .zip(end)
        .and_then(|(s, e)| buf.get(s..e))
        .ok_or_else(|| io::Error::other("overlay: range out of bounds"))
}

impl OverlayFile {
    fn empty() -> OverlayFile {
        OverlayFile {
            base: None,
            pages: RwLock::new(Pages {
                len: 0,
                base_limit: 0,
                written: HashMap::new(),
            }),
        }
    }

    fn over(base: Arc<dyn StorageFile>) -> io::Result<OverlayFile> {
        let len = base.len()?;
        Ok(OverlayFile {
            base: Some(base),
            pages: RwLock::new(Pages {
                len,
                base_limit: len,
                written: HashMap::new(),
            }),
        })
    }

    /// Fills `dst` with the base's bytes from `offset`, as far as `base_limit`, then zeros.
    fn read_base(&self, dst: &mut [u8], offset: u64, base_limit: u64) -> io::Result<()> {
        let from_base = base_limit.saturating_sub(offset).min(dst.len() as u64);
        let (head, tail) = dst.split_at_mut(usize::try_from(from_base).unwrap_or(0));
        if !head.is_empty() {
            match &self.base {
                Some(base) => base.read_exact_at(head, offset)?,
                None => head.fill(0),
            }
        }
        tail.fill(0);
        Ok(())
    }
}

impl StorageFile for OverlayFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.pages.read().len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let pages = self.pages.read();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= pages.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))?;
        let mut at = offset;
        while at < end {
            let page_start = at / PAGE * PAGE;
            let chunk_end = end.min(page_start + PAGE);
            if let Some(page) = pages.written.get(&(at / PAGE)) {
                let src = range(page, at - page_start, chunk_end - page_start)?;
                range_mut(buf, at - offset, chunk_end - offset)?.copy_from_slice(src);
                at = chunk_end;
                continue;
            }
            // The run of pages not written through the overlay: one read of the base.
            let mut run_end = chunk_end;
            while run_end < end && !pages.written.contains_key(&(run_end / PAGE)) {
                run_end = end.min(run_end + PAGE);
            }
            let dst = range_mut(buf, at - offset, run_end - offset)?;
            self.read_base(dst, at, pages.base_limit)?;
            at = run_end;
        }
        Ok(())
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond the largest offset",
            )
        })?;
        let mut pages = self.pages.write();
        let base_limit = pages.base_limit;
        let mut at = offset;
        while at < end {
            let page_start = at / PAGE * PAGE;
            let chunk_end = end.min(page_start + PAGE);
            let page = match pages.written.entry(at / PAGE) {
                Entry::Occupied(page) => page.into_mut(),
                Entry::Vacant(slot) => {
                    let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                    // A page the write covers whole needs nothing from the base.
                    if chunk_end - at < PAGE {
                        self.read_base(&mut page, page_start, base_limit)?;
                    }
                    slot.insert(page)
                }
            };
            let src = range(data, at - offset, chunk_end - offset)?;
            range_mut(page, at - page_start, chunk_end - page_start)?.copy_from_slice(src);
            at = chunk_end;
        }
        pages.len = pages.len.max(end);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pages = self.pages.write();
        if len < pages.len {
            // Keep the invariant that bytes at or beyond `len` are zero wherever they are kept,
            // so that growing the file again shows zeros.
            pages.written.retain(|page, _| page * PAGE < len);
            if let Some(page) = pages.written.get_mut(&(len / PAGE)) {
                range_mut(page, len % PAGE, PAGE)?.fill(0);
            }
            pages.base_limit = pages.base_limit.min(len);
        }
        pages.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimDisk;

    /// `n` bytes that differ from their neighbours and from zero.
    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| ((i % 251) as u8 ^ seed) | 1).collect()
    }

    fn read_all(file: &dyn StorageFile) -> Vec<u8> {
        let mut buf = vec![0u8; file.len().unwrap() as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// A disk holding `a` (10 000 bytes) and `b` (100 bytes), and an overlay over it.
    fn setup() -> (SimDisk, Overlay, Vec<u8>) {
        let disk = SimDisk::new("overlay");
        let a = pattern(10_000, 0x5a);
        disk.write_file("a", a.clone());
        disk.write_file("b", pattern(100, 0x33));
        let overlay = Overlay::new(disk.clone());
        (disk, overlay, a)
    }

    fn assert_base_untouched(disk: &SimDisk, a: &[u8]) {
        assert_eq!(disk.file_names(), ["a", "b"]);
        assert_eq!(disk.read_file("a").unwrap(), a);
        assert_eq!(disk.read_file("b").unwrap(), pattern(100, 0x33));
    }

    #[test]
    fn reads_fall_through_to_the_base() {
        let (disk, overlay, a) = setup();
        let file = overlay.open("a", false).unwrap();
        assert_eq!(file.len().unwrap(), 10_000);
        assert_eq!(read_all(file.as_ref()), a);
        let mut buf = [0u8; 10];
        file.read_exact_at(&mut buf, 4090).unwrap();
        assert_eq!(&buf[..], &a[4090..4100]);
        let err = file.read_exact_at(&mut buf, 9_995).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_base_untouched(&disk, &a);
    }

    #[test]
    fn a_write_over_the_base_is_seen_and_stays_in_memory() {
        let (disk, overlay, a) = setup();
        let file = overlay.open("a", false).unwrap();
        // Across a page boundary, then a whole page.
        file.write_all_at(b"hello world", 4090).unwrap();
        file.write_all_at(&[7u8; 4096], 8192).unwrap();
        let mut expected = a.clone();
        expected[4090..4101].copy_from_slice(b"hello world");
        expected[8192..10_000].fill(7);
        expected.resize(8192 + 4096, 7);
        assert_eq!(read_all(file.as_ref()), expected);
        // A read that mixes written pages and base pages.
        let mut buf = vec![0u8; 6000];
        file.read_exact_at(&mut buf, 3000).unwrap();
        assert_eq!(buf, expected[3000..9000]);
        // Another handle sees the same file.
        assert_eq!(
            read_all(overlay.open("a", true).unwrap().as_ref()),
            expected
        );
        file.sync_data().unwrap();
        overlay.sync_dir().unwrap();
        assert_base_untouched(&disk, &a);
    }

    #[test]
    fn growing_fills_with_zeros() {
        let (disk, overlay, a) = setup();
        let file = overlay.open("a", false).unwrap();
        file.write_all_at(b"end", 20_000).unwrap();
        assert_eq!(file.len().unwrap(), 20_003);
        let mut expected = a.clone();
        expected.resize(20_000, 0);
        expected.extend_from_slice(b"end");
        assert_eq!(read_all(file.as_ref()), expected);
        file.set_len(30_000).unwrap();
        expected.resize(30_000, 0);
        assert_eq!(read_all(file.as_ref()), expected);
        assert_base_untouched(&disk, &a);
    }

    #[test]
    fn truncating_then_growing_shows_zeros_not_the_old_bytes() {
        let (disk, overlay, a) = setup();
        let file = overlay.open("a", false).unwrap();
        // A written page that the cut splits, and base bytes after it.
        file.write_all_at(b"xyz", 4990).unwrap();
        file.set_len(4991).unwrap();
        assert_eq!(file.len().unwrap(), 4991);
        file.set_len(10_000).unwrap();
        let mut expected = a[..4991].to_vec();
        expected[4990] = b'x';
        expected.resize(10_000, 0);
        assert_eq!(read_all(file.as_ref()), expected);
        // A cut in a page never written, then a write beyond the old end.
        file.set_len(100).unwrap();
        file.write_all_at(b"!", 5000).unwrap();
        let mut expected = a[..100].to_vec();
        expected.resize(5000, 0);
        expected.push(b'!');
        assert_eq!(read_all(file.as_ref()), expected);
        file.set_len(0).unwrap();
        assert!(file.is_empty().unwrap());
        assert_base_untouched(&disk, &a);
    }

    #[test]
    fn creations_and_removals_stay_in_memory() {
        let (disk, overlay, a) = setup();
        assert_eq!(overlay.list().unwrap(), ["a", "b"]);
        let missing = overlay.open("c", false).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);

        let c = overlay.open("c", true).unwrap();
        assert_eq!(c.len().unwrap(), 0);
        c.write_all_at(b"new", 0).unwrap();
        assert_eq!(overlay.list().unwrap(), ["a", "b", "c"]);
        assert_eq!(read_all(overlay.open("c", false).unwrap().as_ref()), b"new");

        // Removing a base file hides it; a handle opened before keeps reading it.
        let old = overlay.open("a", false).unwrap();
        overlay.remove("a").unwrap();
        assert_eq!(overlay.list().unwrap(), ["b", "c"]);
        let err = overlay.open("a", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            overlay.remove("a").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(read_all(old.as_ref()), a);
        // Creating it again gives an empty file, not the base's bytes.
        let again = overlay.open("a", true).unwrap();
        assert!(again.is_empty().unwrap());
        assert_eq!(overlay.list().unwrap(), ["a", "b", "c"]);

        // A base file never opened, and a file created in the overlay, can both be removed.
        overlay.remove("b").unwrap();
        overlay.remove("c").unwrap();
        assert_eq!(overlay.list().unwrap(), ["a"]);
        let nothing = overlay.remove("nothing").unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::NotFound);
        assert_base_untouched(&disk, &a);
    }

    #[test]
    fn the_lock_is_the_bases_and_the_name_says_read_only() {
        let (disk, overlay, _) = setup();
        let held = disk.try_lock().unwrap().expect("the disk's lock is free");
        assert!(overlay.try_lock().unwrap().is_none());
        drop(held);
        let guard = overlay.try_lock().unwrap().expect("free again");
        assert!(
            disk.try_lock().unwrap().is_none(),
            "the overlay holds the base's lock"
        );
        drop(guard);
        assert!(overlay.describe().contains("overlay"));
        assert!(overlay.describe().contains("read-only"));
    }

    /// Random writes, truncations and extensions agree with a plain byte vector.
    #[test]
    fn agrees_with_a_byte_vector() {
        let (disk, overlay, a) = setup();
        let file = overlay.open("a", false).unwrap();
        let mut model = a.clone();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for step in 0..2000u64 {
            match next(4) {
                0 | 1 => {
                    let offset = next(14_000);
                    let data = pattern(next(5000) as usize + 1, step as u8);
                    file.write_all_at(&data, offset).unwrap();
                    let end = offset as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                2 => {
                    let len = next(16_000);
                    file.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                _ => {
                    let len = model.len() as u64;
                    let offset = next(len + 1);
                    let n = next(len - offset + 1);
                    let mut buf = vec![0xeeu8; n as usize];
                    file.read_exact_at(&mut buf, offset).unwrap();
                    assert_eq!(
                        buf,
                        model[offset as usize..(offset + n) as usize],
                        "step {step}"
                    );
                }
            }
            assert_eq!(file.len().unwrap(), model.len() as u64);
        }
        assert_eq!(read_all(file.as_ref()), model);
        assert_base_untouched(&disk, &a);
    }
}
