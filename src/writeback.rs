//! Background writeback of the index file: once `every` bytes were written to it since its
//! last sync, a helper thread syncs it, so that the kernel never holds more than about that
//! much of it dirty.
//!
//! redb writes the pages of non-durable commits to the file when its write buffer is full and
//! syncs them only at the next durable commit (a checkpoint). Without writeback, the dirty
//! pages pile up in the page cache until then, and two things pay for all of them at once:
//! the checkpoint's sync (while the log's syncs queue behind it on the same disk), and, after
//! a kill -9, the next open, where redb syncs the file before it trusts it (2 GB of dirty
//! index took 1.3 s there). A sync that makes more of the file durable than a commit needs is
//! always safe: redb's header says which pages belong to a commit.
//!
//! A failed background sync fails every later [`StorageFile::sync_data`] of the file: after a
//! failed fdatasync the kernel may have dropped the dirty pages and a later one can succeed
//! without them, so the next durable commit must not. redb then fails the commit, and the
//! store refuses writes until it is reopened (`Error::PreviousIo`).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use parking_lot::{Condvar, Mutex};

use crate::storage::StorageFile;

/// Bytes written to the index file after which the helper syncs it.
pub(crate) const WRITEBACK_BYTES: u64 = 64 << 20;

/// A [`StorageFile`] that syncs itself in the background every `every` bytes written.
pub(crate) struct WritebackFile {
    inner: Arc<dyn StorageFile>,
    state: Arc<State>,
    every: u64,
    helper: Option<JoinHandle<()>>,
}

struct State {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    /// Bytes written since the last sync began.
    unsynced: u64,
    /// A sync is asked for and not yet begun.
    asked: bool,
    stopped: bool,
    /// The first failed sync: every later one fails with it.
    failed: Option<(io::ErrorKind, String)>,
}

impl Pending {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(
                *kind,
                format!("an earlier background sync of the index file failed: {message}"),
            )),
            None => Ok(()),
        }
    }
}

impl WritebackFile {
    /// Wraps `inner`, starting the helper thread. If the thread cannot start, the file is
    /// only synced when asked, as without writeback.
    pub fn new(inner: Arc<dyn StorageFile>, every: u64) -> WritebackFile {
        let state = Arc::new(State {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let (file, shared) = (inner.clone(), state.clone());
        let helper = thread::Builder::new()
            .name("idemstore-writeback".into())
            .spawn(move || run(file.as_ref(), &shared))
            .ok();
        WritebackFile {
            inner,
            state,
            every,
            helper,
        }
    }

    /// Begins a sync: what is written from here on counts toward the next one. Fails if an
    /// earlier sync did.
    fn begin_sync(&self) -> io::Result<()> {
        let mut pending = self.state.pending.lock();
        pending.check()?;
        pending.unsynced = 0;
        Ok(())
    }
}

/// Records the outcome of a sync: a failure sticks.
fn record(state: &State, result: io::Result<()>) -> io::Result<()> {
    if let Err(e) = &result {
        let mut pending = state.pending.lock();
        if pending.failed.is_none() {
            pending.failed = Some((e.kind(), e.to_string()));
        }
    }
    result
}

fn run(file: &dyn StorageFile, state: &State) {
    loop {
        {
            let mut pending = state.pending.lock();
            while !pending.asked && !pending.stopped {
                state.wake.wait(&mut pending);
            }
            if pending.stopped || pending.failed.is_some() {
                return;
            }
            pending.asked = false;
            pending.unsynced = 0;
        }
        // The failure is kept for the next foreground sync to report.
        let _ = record(state, file.sync_data());
    }
}

impl StorageFile for WritebackFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(data, offset)?;
        if self.helper.is_some() {
            let mut pending = self.state.pending.lock();
            pending.unsynced += data.len() as u64;
            if pending.unsynced >= self.every && !pending.asked {
                pending.asked = true;
                self.state.wake.notify_one();
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.begin_sync()?;
        record(&self.state, self.inner.sync_data())
    }
}

impl Drop for WritebackFile {
    fn drop(&mut self) {
        self.state.pending.lock().stopped = true;
        self.state.wake.notify_all();
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

impl fmt::Debug for WritebackFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritebackFile")
            .field("inner", &self.inner)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// A file in memory that counts its syncs and fails them on demand.
    #[derive(Debug, Default)]
    struct Counting {
        bytes: Mutex<Vec<u8>>,
        syncs: AtomicU64,
        fail: AtomicBool,
    }

    impl StorageFile for Counting {
        fn len(&self) -> io::Result<u64> {
            Ok(self.bytes.lock().len() as u64)
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let bytes = self.bytes.lock();
            let start = usize::try_from(offset).expect("small");
            let src = bytes
                .get(start..start + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
            let mut bytes = self.bytes.lock();
            let start = usize::try_from(offset).expect("small");
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.bytes
                .lock()
                .resize(usize::try_from(len).expect("small"), 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
    }

    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(started.elapsed() < Duration::from_secs(30), "{what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_file_is_synced_in_the_background_every_so_many_bytes() {
        let inner = Arc::new(Counting::default());
        let file = WritebackFile::new(inner.clone(), 4096);
        file.write_all_at(&[1; 4095], 0).expect("write");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(inner.syncs.load(Ordering::SeqCst), 0, "synced too early");
        file.write_all_at(&[2; 1], 4095).expect("write");
        eventually("no background sync after 4096 bytes", || {
            inner.syncs.load(Ordering::SeqCst) == 1
        });
        // A foreground sync starts the count again.
        file.write_all_at(&[3; 4000], 0).expect("write");
        file.sync_data().expect("sync");
        assert_eq!(inner.syncs.load(Ordering::SeqCst), 2);
        file.write_all_at(&[4; 4000], 0).expect("write");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            inner.syncs.load(Ordering::SeqCst),
            2,
            "the count was not reset"
        );
        let mut back = [0; 1];
        file.read_exact_at(&mut back, 4095).expect("read");
        assert_eq!(back, [2]);
    }

    #[test]
    fn a_failed_background_sync_fails_every_later_sync() {
        let inner = Arc::new(Counting::default());
        let file = WritebackFile::new(inner.clone(), 100);
        inner.fail.store(true, Ordering::SeqCst);
        file.write_all_at(&[1; 100], 0).expect("write");
        eventually("no background sync", || {
            inner.syncs.load(Ordering::SeqCst) == 1
        });
        // The disk recovers, but what the failed sync dropped is gone: the file must not
        // say durable again.
        inner.fail.store(false, Ordering::SeqCst);
        for _ in 0..2 {
            let err = file
                .sync_data()
                .expect_err("a sync after a failed one succeeded");
            assert!(err.to_string().contains("background sync"), "{err}");
        }
        assert_eq!(
            inner.syncs.load(Ordering::SeqCst),
            1,
            "the failed file was synced again"
        );
    }

    #[test]
    fn dropping_the_file_stops_its_helper() {
        let inner = Arc::new(Counting::default());
        let file = WritebackFile::new(inner.clone(), 1);
        file.write_all_at(&[1; 10], 0).expect("write");
        drop(file);
        // Only the test's reference is left once the helper has exited.
        assert_eq!(Arc::strong_count(&inner), 1);
    }
}
