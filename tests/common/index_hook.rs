//! A storage whose index file calls a test's hook before each of its syncs: a way into the
//! index's durable commits (checkpoints) and its background writeback.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

use idemstore::storage::{Storage, StorageFile};

/// What runs before each `sync_data` of `index.redb`; an error fails the sync without it
/// reaching the storage.
pub type Hook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// `inner`, with `hook` run before each sync of the index file.
pub struct HookedIndex<S> {
    pub inner: S,
    pub hook: Hook,
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

impl<S: fmt::Debug> fmt::Debug for HookedIndex<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedIndex")
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

impl<S: Storage> Storage for HookedIndex<S> {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = self.inner.open(name, create)?;
        Ok(if name == "index.redb" {
            Arc::new(HookedFile {
                inner: file,
                hook: self.hook.clone(),
            })
        } else {
            file
        })
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
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
