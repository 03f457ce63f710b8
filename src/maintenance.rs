//! The background thread: the sync of `Durability::Periodic`, timed checkpoints and TTL
//! compaction. It holds only a weak reference, so dropping the last `Store` stops it.

use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::commit::Shared;
use crate::options::Durability;

/// The running thread and its stop signal.
pub(crate) struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
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
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak = Arc::downgrade(shared);
        let thread_stop = stop.clone();
        let spawned = thread::Builder::new()
            .name("idemstore-maintenance".into())
            .spawn(move || run(&weak, &thread_stop, tick, periodic));
        if let Ok(thread) = spawned {
            *shared.background.lock() = Some(Background { stop, thread });
        }
    }

    /// Stops the thread and waits for it (unless this is the thread itself, dropping the
    /// last reference).
    pub fn stop_background(&self) {
        let Some(bg) = self.background.lock().take() else {
            return;
        };
        *bg.stop.0.lock() = true;
        bg.stop.1.notify_all();
        if bg.thread.thread().id() != thread::current().id() {
            let _ = bg.thread.join();
        }
    }
}

fn run(
    weak: &Weak<Shared>,
    stop: &(Mutex<bool>, Condvar),
    tick: Duration,
    periodic: Option<Duration>,
) {
    let started = Instant::now();
    let mut last_purge = started;
    let mut last_sync = started;
    loop {
        {
            let mut stopped = stop.0.lock();
            if *stopped {
                return;
            }
            stop.1.wait_for(&mut stopped, tick);
            if *stopped {
                return;
            }
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.check_open().is_err() || shared.poisoned().is_err() {
            continue;
        }
        // Errors poison the handle; callers see them on their next write.
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
