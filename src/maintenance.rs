//! The background thread: the sync of `Durability::Periodic`, timed checkpoints, TTL
//! compaction, and the index work a group-commit leader hands over (applying acknowledged
//! changes, a checkpoint once `checkpoint_bytes` were written), so that no caller waits for an
//! index commit. It holds only a weak reference, so dropping the last `Store` stops it.

use std::mem;
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::commit::{FollowUp, Shared};
use crate::options::Durability;

/// A store thread and the state it waits on (the background thread, the committer).
pub(crate) struct Helper<S> {
    signal: Arc<(Mutex<S>, Condvar)>,
    thread: JoinHandle<()>,
}

impl<S: Default + Send + 'static> Helper<S> {
    /// Starts thread `name` running `run` over a fresh state.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(&(Mutex<S>, Condvar)) + Send + 'static,
    ) -> std::io::Result<Helper<S>> {
        let signal = Arc::new((Mutex::new(S::default()), Condvar::new()));
        let thread_signal = signal.clone();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&thread_signal))?;
        Ok(Helper { signal, thread })
    }

    /// Changes the thread's state with `change`, and wakes the thread if it says so.
    pub fn signal(&self, change: impl FnOnce(&mut S) -> bool) {
        if change(&mut self.signal.0.lock()) {
            self.signal.1.notify_all();
        }
    }

    /// Marks the state stopped with `stop`, wakes the thread and waits for it (unless this is
    /// the thread itself, dropping the last reference to the store).
    pub fn stop(self, stop: impl FnOnce(&mut S)) {
        self.signal(|s| {
            stop(s);
            true
        });
        if self.thread.thread().id() != thread::current().id() {
            let _ = self.thread.join();
        }
    }
}

/// The background thread.
pub(crate) type Background = Helper<Signal>;

/// What the thread is asked to do before its next tick.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    stopped: bool,
    apply: bool,
    checkpoint: bool,
}

impl Shared {
    /// Starts the thread if any periodic work is configured (never on a read-only store).
    pub fn start_background(shared: &Arc<Shared>) {
        let options = &shared.options;
        if options.read_only {
            return;
        }
        let periodic = match options.durability {
            Durability::Periodic(d) => Some(d),
            _ => None,
        };
        let Some(tick) = [
            periodic,
            options.checkpoint_interval,
            options.purge_interval,
        ]
        .into_iter()
        .flatten()
        .min() else {
            return;
        };
        let weak = Arc::downgrade(shared);
        let spawned = Helper::spawn("idemstore-maintenance", move |signal| {
            run(&weak, signal, tick, periodic)
        });
        if let Ok(background) = spawned {
            *shared.background.lock() = Some(background);
        }
    }

    /// Asks the background thread to do `follow_up`; false if there is no thread (the caller
    /// then does it).
    pub fn hand_to_background(&self, follow_up: FollowUp) -> bool {
        let background = self.background.lock();
        let Some(bg) = background.as_ref() else {
            return false;
        };
        bg.signal(|signal| {
            let flag = match follow_up {
                FollowUp::Checkpoint => &mut signal.checkpoint,
                FollowUp::Apply => &mut signal.apply,
                FollowUp::Nothing => return false,
            };
            // Leaders ask on every batch while a backlog lasts: wake the thread only once.
            !mem::replace(flag, true)
        });
        true
    }

    /// Stops the thread and waits for it (unless this is the thread itself, dropping the
    /// last reference).
    pub fn stop_background(&self) {
        // Taken out first: the thread may need the lock to finish what it is doing.
        let background = self.background.lock().take();
        if let Some(bg) = background {
            bg.stop(|s| s.stopped = true);
        }
    }
}

fn run(
    weak: &Weak<Shared>,
    signal: &(Mutex<Signal>, Condvar),
    tick: Duration,
    periodic: Option<Duration>,
) {
    let started = Instant::now();
    let mut last_purge = started;
    let mut last_sync = started;
    loop {
        let (apply, checkpoint) = {
            let mut s = signal.0.lock();
            if !s.stopped && !s.apply && !s.checkpoint {
                signal.1.wait_for(&mut s, tick);
            }
            if s.stopped {
                return;
            }
            (mem::take(&mut s.apply), mem::take(&mut s.checkpoint))
        };
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.check_open().is_err() || shared.poisoned().is_err() {
            continue;
        }
        // Errors poison the handle; callers see them on their next write.
        if checkpoint {
            let _ = shared.checkpoint();
        } else if apply {
            let _ = shared.apply_backlog();
        }
        if let Some(interval) = periodic
            && last_sync.elapsed() >= interval
        {
            let _ = shared.sync_log();
            last_sync = Instant::now();
        }
        if let Some(interval) = shared.options.checkpoint_interval
            && shared.io.lock().last_checkpoint.elapsed() >= interval
            && shared.checkpoint_pending()
        {
            let _ = shared.checkpoint();
        }
        if let Some(interval) = shared.options.purge_interval
            && last_purge.elapsed() >= interval
        {
            let _ = shared.purge_expired();
            last_purge = Instant::now();
        }
    }
}
