//! Answers for asynchronous callers: [`Acknowledgement`], a future that resolves once the
//! change its answer depends on is acknowledged, and the committer, a store thread that leads
//! group commits on the futures' behalf so that no executor thread blocks on a log sync.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use parking_lot::{Condvar, Mutex};

use crate::commit::Shared;
use crate::error::Result;
use crate::maintenance::Helper;
use crate::options::Durability;
use crate::store::Store;

/// The answer of an asynchronous call such as [`Store::begin_async`]: a future that resolves
/// once the answer is durable in the store's [`Durability`](crate::Durability), exactly when
/// the blocking call would have returned it.
///
/// The call decides when it is made, not when the future is first polled: a claim, say, is
/// already taken and in the next group commit when `begin_async` returns. Deciding runs on
/// the calling thread, as a `get` does: it holds the store's lock for a few microseconds and
/// reads the key's record, from memory or from the index (whose page cache may miss and read
/// the disk); it never waits for a write or a sync. Dropping the future
/// does not withdraw the change. A claim whose future is dropped is held by no one until its
/// lease lapses, as after a crash.
///
/// Polling never waits for the disk: a store thread (the committer, started by the first
/// asynchronous call that has to wait) leads the group commits and wakes the tasks whose
/// changes each one made durable (on storage without helper threads, see
/// [`Storage::helper_threads`](crate::storage::Storage::helper_threads), the poll leads its
/// commit itself). Many tasks on a few executor threads thus share each sync,
/// as blocking callers on many threads do. [`wait`](Acknowledgement::wait) blocks instead.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use idemstore::{Begin, Key, Store};
///
/// let store = Store::open(dir.path())?;
/// let key = Key::new("client-42", "req-1", "POST /v1/orders")?;
/// # let run = async {
/// if let Begin::Claimed(claim) = store.begin_async(&key, b"order").await? {
///     store.complete_async(&claim, b"order 7 created").await?;
/// }
/// # Ok::<(), idemstore::Error>(())
/// # };
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(run)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the answer comes from the future; dropping it does not withdraw the change"]
pub struct Acknowledgement<T> {
    /// The store and the LSN to wait for; `None` once nothing is left to wait for.
    waiting: Option<(Store, u64)>,
    answer: Option<Result<T>>,
}

// Nothing is pinned in place: the fields are only moved out of, never borrowed across polls.
impl<T> Unpin for Acknowledgement<T> {}

impl<T> std::fmt::Debug for Acknowledgement<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acknowledgement")
            .field("lsn", &self.waiting.as_ref().map(|(_, lsn)| *lsn))
            .finish_non_exhaustive()
    }
}

impl<T> Acknowledgement<T> {
    /// An answer with nothing to wait for.
    pub(crate) fn ready(answer: Result<T>) -> Self {
        Acknowledgement {
            waiting: None,
            answer: Some(answer),
        }
    }

    /// An answer to give once `lsn` is acknowledged.
    pub(crate) fn after(store: Store, lsn: u64, answer: Result<T>) -> Self {
        Acknowledgement {
            waiting: Some((store, lsn)),
            answer: Some(answer),
        }
    }

    /// Blocks the calling thread until the answer is durable, leading a group commit if no
    /// one else is, and returns it: what the blocking method returns.
    pub fn wait(mut self) -> Result<T> {
        if let Some((store, lsn)) = self.waiting.take() {
            let shared = store.shared();
            shared.wait_acknowledged(shared.core.lock(), lsn)?;
        }
        self.take_answer()
    }

    fn take_answer(&mut self) -> Result<T> {
        self.answer
            .take()
            .expect("an Acknowledgement polled after it resolved")
    }
}

impl<T> Future for Acknowledgement<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        if let Some((store, lsn)) = &this.waiting {
            let shared = store.shared();
            let done = shared.register_waker(&mut shared.core.lock(), *lsn, cx.waker());
            match done {
                Ok(false) => {
                    shared.request_commit(*lsn);
                    return Poll::Pending;
                }
                Ok(true) => this.waiting = None,
                Err(e) => {
                    this.waiting = None;
                    this.answer = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(this.take_answer())
    }
}

/// The committer thread.
pub(crate) type Committer = Helper<Wanted>;

/// The highest LSN an asynchronous waiter waits for.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    lsn: u64,
    stopped: bool,
}

impl Shared {
    /// Asks the committer to see `lsn` acknowledged, and starts it on first use. On storage
    /// without helper threads, or if no thread can be started, leads the commit on the calling
    /// thread instead (which then blocks). In the modes that do not sync before acknowledging,
    /// leads it on the calling thread whenever no other leader is running.
    pub fn request_commit(self: &Arc<Self>, lsn: u64) {
        // Without a sync on the commit path, leading costs this thread a write(2) only: do it
        // here when no leader runs, rather than pay two thread wake-ups for the committer.
        // An error is read by the poll that follows; `Ok(false)`: a leader runs.
        if self.options.durability != Durability::Immediate
            && !matches!(self.lead_unless_led(self.core.lock(), lsn), Ok(false))
        {
            return;
        }
        if self.storage.helper_threads() && self.signal_committer(lsn) {
            return;
        }
        // No committer: lead, or follow the running leader, on this thread. The commit wakes
        // the waker just registered, and the poll that follows answers.
        let _ = self.wait_acknowledged(self.core.lock(), lsn);
    }

    /// Asks the committer, started on first use, to see `lsn` acknowledged; false if no
    /// thread could be started.
    fn signal_committer(self: &Arc<Self>, lsn: u64) -> bool {
        let mut committer = self.committer.lock();
        if committer.is_none() {
            let weak = Arc::downgrade(self);
            match Helper::spawn("idemstore-committer", move |signal| run(&weak, signal)) {
                Ok(started) => *committer = Some(started),
                Err(_) => return false,
            }
        }
        if let Some(c) = committer.as_ref() {
            c.signal(|wanted| {
                let raise = lsn > wanted.lsn;
                wanted.lsn = wanted.lsn.max(lsn);
                raise
            });
        }
        true
    }

    /// Stops the committer and waits for it. Futures hold a `Store`, so none is waiting.
    pub fn stop_committer(&self) {
        let committer = self.committer.lock().take();
        if let Some(c) = committer {
            c.stop(|wanted| wanted.stopped = true);
        }
    }
}

fn run(weak: &Weak<Shared>, signal: &(Mutex<Wanted>, Condvar)) {
    let mut done = 0;
    loop {
        let lsn = {
            let mut wanted = signal.0.lock();
            while !wanted.stopped && wanted.lsn <= done {
                signal.1.wait(&mut wanted);
            }
            if wanted.stopped {
                return;
            }
            wanted.lsn
        };
        let Some(shared) = weak.upgrade() else {
            return;
        };
        // A failure wakes every waiter, which then reads it from the handle: nothing is left
        // for the committer to do for them.
        let _ = shared.commit_for_waiters(shared.core.lock(), lsn);
        done = lsn;
    }
}
