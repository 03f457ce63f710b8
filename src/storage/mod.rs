//! The file-system seam: every byte the store reads or writes, the log's and the index's,
//! goes through [`Storage`] and [`StorageFile`].
//!
//! Two implementations ship: [`FsStorage`], a directory on the real file system, and
//! [`SimDisk`], an in-memory disk that can cut power (dropping, keeping or tearing every write
//! not yet synced) and fail any call with EIO or ENOSPC. The crash and fault tests run the
//! same store code on the simulated disk.
//!
//! A read-only open ([`Options::read_only`](crate::Options::read_only)) runs the store over a
//! copy-on-write overlay of either (`overlay.rs`), which keeps every change in memory.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

mod fs;
mod overlay;
mod sim;

pub use fs::FsStorage;
pub(crate) use overlay::Overlay;
pub use sim::{CrashMode, Fault, FaultError, Op, SimDisk};

/// A flat directory of named files, with the durability operations the store relies on.
///
/// The store assumes the POSIX model: a file's contents are durable after
/// [`StorageFile::sync_data`]; the creation and removal of names are durable after
/// [`Storage::sync_dir`]; anything not yet synced may vanish, persist or be torn in a crash.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Opens the file `name`, creating an empty one when `create` is true and it is missing.
    /// A missing file with `create` false is an error of kind `NotFound`.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>>;

    /// The names of all files.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Removes the file `name`.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes the creation and removal of names durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;

    /// Takes the exclusive lock of this directory: `Ok(None)` if another handle holds it. The
    /// lock is held until the returned guard is dropped.
    fn try_lock(&self) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;

    /// Opens the existing file `name` only to read it: all a read-only open of the store
    /// does, so that it works where nothing can be written (a read-only mount). The default
    /// is [`Storage::open`] without `create`.
    fn open_read(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.open(name, false)
    }

    /// Takes the lock like [`Storage::try_lock`] (the default), for a handle that writes
    /// nothing: it may succeed without a lock where nothing in the directory can be written,
    /// since no writer can open the store there either.
    fn try_lock_read(&self) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.try_lock()
    }

    /// Whether the store may call this storage from helper threads of its own while the
    /// caller's call runs: an open reads the log while the index opens, the key filter is
    /// built from an index snapshot in a thread, and a committer thread leads the group
    /// commits of asynchronous calls. The default is yes. Without, each of these runs on the
    /// calling thread (a poll of an asynchronous call leads its commit itself). The simulated
    /// disk says no unless told otherwise, to keep a seed's run reproducible: its faults
    /// count calls, and the page layout redb writes depends on which of its read
    /// transactions are still alive.
    fn helper_threads(&self) -> bool {
        true
    }

    /// A name for messages: the directory path, or the simulated disk's name.
    fn describe(&self) -> String;
}

/// One open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`; reading past the end is an error of kind `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `data` at `offset`, growing the file as needed (with zeros in any gap).
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;

    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes the file's contents durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}
