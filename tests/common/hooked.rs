//! A storage that calls a test's hooks: before each sync of the index file (a way into the
//! index's durable commits, checkpoints, and its background writeback), and before each
//! removal of a file (a way into the removal of log segments after a checkpoint).

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

use idemstore::storage::{Storage, StorageFile};

/// What runs before the call it hooks; an error fails the call without it reaching the
/// storage.
pub type Hook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// `inner`, with `index_sync` run before each sync of the index file and `remove` before each
/// removal of a file.
pub struct Hooked<S> {
    pub inner: S,
    pub index_sync: Hook,
    pub remove: Hook,
}

impl<S> Hooked<S> {
    /// `inner` with hooks that do nothing.
    pub fn new(inner: S) -> Hooked<S> {
        Hooked {
            inner,
            index_sync: Arc::new(|| Ok(())),
            remove: Arc::new(|| Ok(())),
        }
    }
}

struct HookedFile {
    inner: Arc<dyn StorageFile>,
    hook: Hook,
}

impl fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedFile")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: fmt::Debug> fmt::Debug for Hooked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooked")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl StorageFile for HookedFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(data, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        (self.hook)()?;
        self.inner.sync_data()
    }
}

impl<S: Storage> Storage for Hooked<S> {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = self.inner.open(name, create)?;
        Ok(if name == "index.redb" {
            Arc::new(HookedFile {
                inner: file,
                hook: self.index_sync.clone(),
            })
        } else {
            file
        })
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        (self.remove)()?;
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn try_lock(&self) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.inner.try_lock()
    }
    fn helper_threads(&self) -> bool {
        self.inner.helper_threads()
    }
    fn describe(&self) -> String {
        format!("hooked {}", self.inner.describe())
    }
}
