//! A simulated disk that cuts power and fails calls on demand.
//!
//! Each file keeps its *live* bytes (what reads see) and its *durable* bytes (what survives a
//! power cut), plus the writes and truncations made since its last sync, in order. Names keep a
//! live and a durable existence the same way, made durable by `sync_dir`. A power cut rebuilds
//! every file from its durable bytes and then, per unsynced operation and as the
//! [`CrashMode`] says, drops it, applies it, or applies a torn prefix of it — in any
//! combination, so a later write may survive where an earlier one did not, as on a real disk
//! that reorders its page flushes (the ALICE / CrashMonkey model).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Storage, StorageFile};

/// How a power cut treats what was written but not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything written survives: a process crash (kill -9), where the page cache lives on.
    KeepAll,
    /// Only what was synced survives.
    DropUnsynced,
    /// Each unsynced write and truncation is independently dropped, kept, or torn at a random
    /// byte boundary; unsynced creations and removals of names independently happen or not.
    /// The same seed gives the same image.
    Random(u64),
}

/// The calls a [`Fault`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `open`.
    Open,
    /// `read_exact_at`.
    Read,
    /// `write_all_at`.
    Write,
    /// `set_len`.
    SetLen,
    /// `sync_data`.
    Sync,
    /// `remove`.
    Remove,
    /// `sync_dir`.
    SyncDir,
}

/// The error a [`Fault`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the disk is full.
    Enospc,
}

impl FaultError {
    fn to_io(self) -> io::Error {
        match self {
            FaultError::Eio => io::Error::from_raw_os_error(5),
            FaultError::Enospc => io::Error::from_raw_os_error(28),
        }
    }
}

/// Fail calls of kind `op`: the one after `skip` more such calls succeed, and, if `sticky`,
/// every one after it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Which call fails.
    pub op: Op,
    /// How many calls of that kind succeed first.
    pub skip: u64,
    /// The error returned.
    pub error: FaultError,
    /// Whether calls keep failing once the fault fired (a full disk stays full).
    pub sticky: bool,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct FileState {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Pending>,
    linked: bool,
    durably_linked: bool,
}

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<String, FileState>,
    epoch: u64,
    locked: bool,
    faults: Vec<Fault>,
    calls: u64,
}

/// An in-memory disk for crash and fault tests. Clones share the same disk.
///
/// ```
/// use idemstore::storage::{CrashMode, SimDisk};
/// use idemstore::{Begin, Key, Options};
///
/// let disk = SimDisk::new("example");
/// let store = Options::new().open_storage(disk.clone())?;
/// let key = Key::new("c", "r", "x")?;
/// if let Begin::Claimed(claim) = store.begin(&key, b"req")? {
///     store.complete(&claim, b"done")?; // acknowledged: synced
/// }
/// disk.power_cut(CrashMode::DropUnsynced); // the old handle now fails every call
/// drop(store);
/// let store = Options::new().open_storage(disk)?;
/// assert!(matches!(store.begin(&key, b"req")?, Begin::Completed(o) if o.data() == b"done"));
/// # Ok::<(), idemstore::Error>(())
/// ```
#[derive(Clone)]
pub struct SimDisk {
    name: Arc<str>,
    state: Arc<Mutex<DiskState>>,
    helper_threads: bool,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("name", &self.name)
            .field("helper_threads", &self.helper_threads)
            .finish()
    }
}

impl SimDisk {
    /// An empty disk; `name` appears in messages.
    pub fn new(name: &str) -> SimDisk {
        SimDisk {
            name: Arc::from(name),
            state: Arc::new(Mutex::new(DiskState::default())),
            helper_threads: false,
        }
    }

    /// This handle to the same disk, letting a store use helper threads on it (see
    /// [`Storage::helper_threads`]): for tests of the threaded paths, such as the committer
    /// of asynchronous calls meeting an injected fault. Runs are then no longer reproducible
    /// call for call.
    pub fn with_helper_threads(&self) -> SimDisk {
        SimDisk {
            helper_threads: true,
            ..self.clone()
        }
    }

    /// Cuts power: every handle opened so far fails all further calls with EIO, the directory
    /// lock is released, and the disk holds what `mode` says survived.
    pub fn power_cut(&self, mode: CrashMode) {
        let mut state = self.state.lock();
        let mut rng = match mode {
            CrashMode::Random(seed) => Some(Rng::new(seed)),
            _ => None,
        };
        let files = std::mem::take(&mut state.files);
        for (name, file) in files {
            let exists = if file.linked == file.durably_linked {
                file.linked
            } else {
                match (&mut rng, mode) {
                    (Some(rng), _) => rng.below(2) == 0,
                    (None, CrashMode::KeepAll) => file.linked,
                    (None, _) => file.durably_linked,
                }
            };
            if !exists {
                continue;
            }
            let mut bytes = file.durable.clone();
            if mode == CrashMode::KeepAll {
                bytes = file.live.clone();
            } else if let Some(rng) = &mut rng {
                for op in &file.unsynced {
                    match (rng.below(3), op) {
                        (0, _) => {}
                        (1, op) => apply(&mut bytes, op),
                        (_, Pending::Write { offset, data }) => {
                            let keep = rng.below(data.len() as u64 + 1) as usize;
                            let torn = Pending::Write {
                                offset: *offset,
                                data: data.get(..keep).unwrap_or_default().to_vec(),
                            };
                            apply(&mut bytes, &torn);
                        }
                        (_, op) => apply(&mut bytes, op),
                    }
                }
            }
            state.files.insert(
                name,
                FileState {
                    live: bytes.clone(),
                    durable: bytes,
                    unsynced: Vec::new(),
                    linked: true,
                    durably_linked: true,
                },
            );
        }
        state.epoch += 1;
        state.locked = false;
    }

    /// Adds a fault; faults fire independently.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push(fault);
    }

    /// Removes every fault (the disk was replaced, or space was freed).
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// How many calls the disk has served (a clock for choosing crash points).
    pub fn calls(&self) -> u64 {
        self.state.lock().calls
    }

    /// The live contents of a file, or `None` if it does not exist.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state
            .files
            .get(name)
            .filter(|f| f.linked)
            .map(|f| f.live.clone())
    }

    /// Replaces a file's live and durable contents at once (to plant damage in tests).
    pub fn write_file(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.state.lock();
        state.files.insert(
            name.to_string(),
            FileState {
                live: bytes.clone(),
                durable: bytes,
                unsynced: Vec::new(),
                linked: true,
                durably_linked: true,
            },
        );
    }

    /// Whether a power cut now would lose nothing: every file's contents and name are
    /// durable.
    pub fn is_synced(&self) -> bool {
        let state = self.state.lock();
        state
            .files
            .values()
            .all(|f| f.unsynced.is_empty() && f.linked == f.durably_linked)
    }

    /// The names of the files that exist now.
    pub fn file_names(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .files
            .iter()
            .filter(|(_, f)| f.linked)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Counts a call of kind `op` and returns the error of a fault that fires on it.
    fn check(state: &mut DiskState, epoch: u64, op: Op) -> io::Result<()> {
        if state.epoch != epoch {
            return Err(io::Error::other("simulated disk lost power"));
        }
        state.calls += 1;
        let mut failure = None;
        for fault in state.faults.iter_mut().filter(|f| f.op == op) {
            if fault.skip > 0 {
                fault.skip -= 1;
            } else if failure.is_none() {
                failure = Some(*fault);
            }
        }
        if let Some(fault) = failure {
            if !fault.sticky {
                state.faults.retain(|f| *f != fault);
            }
            return Err(fault.error.to_io());
        }
        Ok(())
    }
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            if let Some(dst) = bytes.get_mut(start..end) {
                dst.copy_from_slice(data);
            }
        }
        Pending::SetLen(len) => bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

impl Storage for SimDisk {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.state.lock();
        let epoch = state.epoch;
        SimDisk::check(&mut state, epoch, Op::Open)?;
        let exists = state.files.get(name).is_some_and(|f| f.linked);
        if !exists && !create {
            return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string()));
        }
        let file = state.files.entry(name.to_string()).or_default();
        if !file.linked {
            // A new file under a name whose old file may still be durable: a crash may bring
            // back the old contents or keep the new, empty file.
            file.linked = true;
            file.live.clear();
            file.unsynced.push(Pending::SetLen(0));
        }
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            name: name.to_string(),
            epoch,
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        Ok(state
            .files
            .iter()
            .filter(|(_, f)| f.linked)
            .map(|(n, _)| n.clone())
            .collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        let epoch = state.epoch;
        SimDisk::check(&mut state, epoch, Op::Remove)?;
        match state.files.get_mut(name) {
            Some(file) if file.linked => {
                file.linked = false;
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::NotFound, name.to_string())),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        let epoch = state.epoch;
        SimDisk::check(&mut state, epoch, Op::SyncDir)?;
        for file in state.files.values_mut() {
            file.durably_linked = file.linked;
        }
        state.files.retain(|_, f| f.linked);
        Ok(())
    }

    fn try_lock(&self) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let mut state = self.state.lock();
        if state.locked {
            return Ok(None);
        }
        state.locked = true;
        Ok(Some(Box::new(SimLock {
            disk: self.clone(),
            epoch: state.epoch,
        })))
    }

    fn helper_threads(&self) -> bool {
        self.helper_threads
    }

    fn describe(&self) -> String {
        format!("simulated disk {}", self.name)
    }
}

struct SimLock {
    disk: SimDisk,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.disk.state.lock();
        if state.epoch == self.epoch {
            state.locked = false;
        }
    }
}

#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    name: String,
    epoch: u64,
}

impl SimFile {
    fn with<T>(&self, op: Op, f: impl FnOnce(&mut FileState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.state.lock();
        SimDisk::check(&mut state, self.epoch, op)?;
        match state.files.get_mut(&self.name) {
            Some(file) if file.linked => f(file),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} was removed", self.name),
            )),
        }
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(Op::Read, |f| Ok(f.live.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(Op::Read, |f| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            match f.live.get(start..start.saturating_add(buf.len())) {
                Some(src) if src.len() == buf.len() => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of file",
                )),
            }
        })
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(Op::Write, |f| {
            let op = Pending::Write {
                offset,
                data: data.to_vec(),
            };
            apply(&mut f.live, &op);
            f.unsynced.push(op);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(Op::SetLen, |f| {
            let op = Pending::SetLen(len);
            apply(&mut f.live, &op);
            f.unsynced.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(Op::Sync, |f| {
            f.durable = f.live.clone();
            f.unsynced.clear();
            Ok(())
        })
    }
}

/// A small deterministic generator (splitmix64), so that a seed names one crash image.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}
