//! The key filter: a blocked Bloom filter in front of the index, so that a lookup of an
//! absent key (every new request's `begin`, every `get` miss) costs a few cache-line reads
//! instead of a B-tree walk.
//!
//! The filter is memory only, rebuilt from the index in the background: at open (so that
//! opening stays independent of the index's size; lookups bypass the filter until it is
//! ready) and whenever more keys were inserted than it was sized for. It never forgets a key
//! it was told about, so a "no" is always right; a "maybe" goes on to the index. Removed and
//! purged keys stay in it until the next rebuild, which only costs false positives. A thread
//! whose lookups nearly all find their key skips it (see [`worth_probing`]).
//!
//! # Why it is never wrong
//!
//! A key reaches `recent` or the index only through a claim written by
//! [`crate::commit::Shared::enqueue`], which inserts it into the ready filter and into one
//! being built *before* the change can be seen (recovery writes the index before any filter
//! exists). A build installs its empty filter under the `core` lock (so every later write
//! inserts into it), adds the keys in flight, then the keys in `recent`, then the keys of an
//! index snapshot taken after that: a key leaves `recent` only once a published snapshot
//! holds it. Only then does the new filter replace the old.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::hash::hash;
use crate::index::{self, Snapshot, Warmer};

/// 64-bit words per block: one 512-bit cache line.
const WORDS: usize = 8;
/// Bits set per key, all in one block.
const PROBES: u32 = 6;
/// Bits of filter per key it is sized for (about 1% false positives at that load).
const BITS_PER_KEY: u64 = 12;
/// The smallest capacity a filter is built with, in keys.
pub(crate) const MIN_CAPACITY: u64 = 64 * 1024;

/// A thread's lookups skip the filter while its hit score is at least this.
const BYPASS_AT: u32 = 32;
/// The highest hit score: how much credit a run of hits builds up.
const HIT_SCORE_MAX: u32 = 48;
/// What a lookup of an absent key takes off the score: two such lookups in a row end a bypass.
const MISS_COST: u32 = 16;

thread_local! {
    /// This thread's hit score (see [`worth_probing`]).
    static HIT_SCORE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread's next lookup should probe the filter first.
///
/// A probe is one cache miss into the filter's bit array: well spent on a lookup of an absent
/// key (it saves a B-tree walk), wasted on one that finds its key. So each thread keeps a
/// score of its recent lookups (see [`learn`]): a lookup that found its key adds one, one
/// that found none takes off [`MISS_COST`]. At [`BYPASS_AT`] or more, the thread's lookups go
/// straight to the index — a hit-heavy thread, where fewer than about one lookup in
/// seventeen misses. Only the cost of a lookup depends on it, never its answer: the filter
/// is a shortcut for "absent", and the index answers every lookup without it.
pub(crate) fn worth_probing() -> bool {
    HIT_SCORE.with(|s| s.get() < BYPASS_AT)
}

/// Records the result of one of this thread's lookups (see [`worth_probing`]).
pub(crate) fn learn(found: bool) {
    HIT_SCORE.with(|s| s.set(next_score(s.get(), found)));
}

fn next_score(score: u32, found: bool) -> u32 {
    if found {
        (score + 1).min(HIT_SCORE_MAX)
    } else {
        score.saturating_sub(MISS_COST)
    }
}

/// A fixed-size blocked Bloom filter of key hashes; safe to read and insert concurrently.
pub(crate) struct KeyFilter {
    blocks: Box<[[AtomicU64; WORDS]]>,
    mask: u64,
    capacity: u64,
    inserted: AtomicU64,
}

impl KeyFilter {
    /// An empty filter sized for `capacity` keys (at least [`MIN_CAPACITY`]).
    pub fn with_capacity(capacity: u64) -> KeyFilter {
        let capacity = capacity.max(MIN_CAPACITY);
        let blocks = (capacity * BITS_PER_KEY)
            .div_ceil(64 * WORDS as u64)
            .next_power_of_two();
        KeyFilter {
            blocks: (0..blocks).map(|_| Default::default()).collect(),
            mask: blocks - 1,
            capacity,
            inserted: AtomicU64::new(0),
        }
    }

    /// Adds the key whose hash is `hash`. Counts it toward [`KeyFilter::is_full`] only if it
    /// set a bit: a key inserted again (claimed again, or both scanned and written during a
    /// build) is not counted twice. A new key whose bits were all set already (a false
    /// positive, ~1% at capacity) is not counted either, which only lets the filter run a
    /// little past its capacity before the rebuild.
    pub fn insert(&self, hash: u64) {
        let mut set_a_bit = false;
        if let Some(block) = self.block(hash) {
            for (word, bit) in probes(hash) {
                if let Some(w) = block.get(word) {
                    set_a_bit |= w.fetch_or(bit, Ordering::Relaxed) & bit == 0;
                }
            }
        }
        if set_a_bit {
            self.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// False only if the key whose hash is `hash` was never inserted.
    pub fn may_contain(&self, hash: u64) -> bool {
        let Some(block) = self.block(hash) else {
            return true;
        };
        probes(hash).all(|(word, bit)| {
            block
                .get(word)
                .is_none_or(|w| w.load(Ordering::Relaxed) & bit != 0)
        })
    }

    /// Whether more keys were inserted than the filter was sized for.
    pub fn is_full(&self) -> bool {
        self.inserted.load(Ordering::Relaxed) > self.capacity
    }

    /// The number of keys the filter was sized for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of memory the filter's bits take.
    pub fn bytes(&self) -> u64 {
        (self.blocks.len() * WORDS * 8) as u64
    }

    fn block(&self, hash: u64) -> Option<&[AtomicU64; WORDS]> {
        let at = usize::try_from(hash & self.mask).ok()?;
        self.blocks.get(at)
    }
}

/// The filters of one store: the one lookups consult and the one being built.
#[derive(Default)]
pub(crate) struct Filters {
    /// The filter lookups consult; `None` until the first build finishes. Lock-free for
    /// readers; replaced only under the `building` lock.
    ready: ArcSwapOption<KeyFilter>,
    /// A filter being built: every write inserts into it too.
    building: Mutex<Option<Arc<KeyFilter>>>,
    /// The thread scanning the index into `building`.
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: AtomicBool,
    builds: AtomicU64,
}

/// What [`Filters::stats`] reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FilterStats {
    pub ready: bool,
    pub capacity: u64,
    pub bytes: u64,
    pub builds: u64,
}

impl Filters {
    /// Records that `key` may exist from now on. Call before its change can be seen.
    pub fn insert(&self, key: &[u8]) {
        let hash = hash(key);
        // Both under the `building` lock, which a finished build holds while it replaces the
        // ready filter: else the key could miss both, the ready filter read before the swap
        // and the building one after it.
        let building = self.building.lock();
        if let Some(filter) = &*building {
            filter.insert(hash);
        }
        if let Some(filter) = &*self.ready.load() {
            filter.insert(hash);
        }
    }

    /// False only if `key` certainly has no entry (true while no filter is ready).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        match &*self.ready.load() {
            Some(filter) => filter.may_contain(hash(key)),
            None => true,
        }
    }

    /// Whether the ready filter holds more keys than it was sized for and no build runs.
    pub fn wants_rebuild(&self) -> bool {
        let full = self.ready.load().as_ref().is_some_and(|f| f.is_full());
        full && self.building.lock().is_none()
    }

    /// Starts a build sized for `capacity` keys, unless one is running: installs its empty
    /// filter, so that every write from now on inserts into it, and returns it. The caller
    /// holds the `core` lock, adds the keys in flight and in `recent`, and then hands an
    /// index snapshot taken after that to [`Filters::start_build`].
    pub fn begin_build(&self, capacity: u64) -> Option<Arc<KeyFilter>> {
        let mut building = self.building.lock();
        if building.is_some() || self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let filter = Arc::new(KeyFilter::with_capacity(capacity));
        *building = Some(filter.clone());
        Some(filter)
    }

    /// Scans `snapshot`'s keys into `filter`, then makes it the ready filter: in a thread of
    /// its own, or, without `in_thread`, before returning (see [`Storage::helper_threads`]).
    ///
    /// [`Storage::helper_threads`]: crate::storage::Storage::helper_threads
    ///
    /// With `warmer` (after an open), the same thread then warms the record cache from the
    /// same snapshot.
    pub fn start_build(
        self: &Arc<Filters>,
        filter: Arc<KeyFilter>,
        snapshot: Snapshot,
        warmer: Option<Warmer>,
        in_thread: bool,
    ) {
        if !in_thread {
            self.build(filter, snapshot, warmer);
            return;
        }
        let filters = self.clone();
        let spawned = thread::Builder::new()
            .name("idemstore-filter".into())
            .spawn(move || filters.build(filter, snapshot, warmer));
        match spawned {
            Ok(thread) => {
                if let Some(done) = self.thread.lock().replace(thread) {
                    let _ = done.join();
                }
            }
            Err(_) => self.cancel_build(),
        }
    }

    fn build(&self, filter: Arc<KeyFilter>, snapshot: Snapshot, warmer: Option<Warmer>) {
        let scanned = index::scan_keys(&snapshot, |key| {
            filter.insert(hash(key));
            !self.stop.load(Ordering::Relaxed)
        });
        {
            let mut building = self.building.lock();
            // On an index error or a stop, the ready filter (if any) stays: still correct.
            if matches!(scanned, Ok(true)) {
                self.ready.store(Some(filter));
                self.builds.fetch_add(1, Ordering::Relaxed);
            }
            *building = None;
        }
        if let Some(mut warmer) = warmer {
            // Best effort: an error here is the next lookup's to report. It gives way to a
            // new build, whose start (under `core`) joins this thread.
            let _ = index::scan_keys(&snapshot, |key| {
                warmer.offer(&snapshot, key)
                    && !self.stop.load(Ordering::Relaxed)
                    && self.building.lock().is_none()
            });
        }
    }

    /// Forgets a build begun with [`Filters::begin_build`] that will not be spawned.
    pub fn cancel_build(&self) {
        *self.building.lock() = None;
    }

    /// Stops a running build and waits for its thread (before the index is closed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }

    pub fn stats(&self) -> FilterStats {
        let ready = self.ready.load();
        FilterStats {
            ready: ready.is_some(),
            capacity: ready.as_ref().map_or(0, |f| f.capacity()),
            bytes: ready.as_ref().map_or(0, |f| f.bytes()),
            builds: self.builds.load(Ordering::Relaxed),
        }
    }
}

/// The (word, bit mask) pairs of `hash` within its block. The block index uses the low
/// bits of `hash`; the probes take 9 bits each from the high bits of a remix of it, which
/// depend on all of its bits.
fn probes(hash: u64) -> impl Iterator<Item = (usize, u64)> {
    let bits = hash.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 10;
    (0..PROBES).map(move |i| {
        let bit = (bits >> (9 * i)) & 511;
        ((bit >> 6) as usize, 1u64 << (bit & 63))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score after `lookups` (true: found) from `start`, and how many of them probed.
    fn run(start: u32, lookups: impl IntoIterator<Item = bool>) -> (u32, usize) {
        let mut score = start;
        let mut probed = 0;
        for found in lookups {
            probed += usize::from(score < BYPASS_AT);
            score = next_score(score, found);
        }
        (score, probed)
    }

    #[test]
    fn a_run_of_hits_bypasses_the_filter_and_two_misses_end_it() {
        let (score, probed) = run(0, std::iter::repeat_n(true, 100));
        assert_eq!(
            probed, BYPASS_AT as usize,
            "probes until the score reaches the bar"
        );
        assert_eq!(score, HIT_SCORE_MAX);
        let (score, _) = run(score, [false, false]);
        assert!(score < BYPASS_AT, "two misses in a row: probing again");
        let (score, _) = run(HIT_SCORE_MAX, [false]);
        assert!(score >= BYPASS_AT, "one miss among hits keeps the bypass");
    }

    #[test]
    fn lookups_that_mostly_miss_keep_probing() {
        // One hit in two, then one in ten: the filter saves a walk often enough to keep it.
        let half = (0..1000).map(|i| i % 2 == 0);
        assert_eq!(run(0, half).1, 1000);
        let tenth = (0..1000).map(|i| i % 10 != 0);
        let (_, probed) = run(0, tenth);
        assert!(probed > 900, "{probed} of 1000 probed with 10% misses");
        // One miss in 50: the bypass holds for nearly all of them.
        let fiftieth = (0..1000).map(|i| i % 50 != 0);
        let (_, probed) = run(0, fiftieth);
        assert!(probed < 100, "{probed} of 1000 probed with 2% misses");
    }

    #[test]
    fn the_score_is_per_thread() {
        for _ in 0..BYPASS_AT {
            learn(true);
        }
        assert!(!worth_probing(), "this thread bypasses after a run of hits");
        std::thread::spawn(|| assert!(worth_probing(), "a new thread probes"))
            .join()
            .unwrap();
        learn(false);
        learn(false);
        assert!(worth_probing());
    }

    fn key(n: u64) -> Vec<u8> {
        format!("client-{}|request-{n:012}|POST /v1/charges", n % 97).into_bytes()
    }

    #[test]
    fn inserted_keys_are_always_found() {
        let filter = KeyFilter::with_capacity(100_000);
        for n in 0..100_000 {
            filter.insert(hash(&key(n)));
        }
        assert!((0..100_000).all(|n| filter.may_contain(hash(&key(n)))));
        assert!(!filter.is_full());
        // Full after a few more distinct keys: those whose bits were all set are not counted.
        let more = (100_000..110_000)
            .position(|n| {
                filter.insert(hash(&key(n)));
                filter.is_full()
            })
            .expect("full within 10% more keys");
        assert!(more < 2_000, "full only after {more} more keys");
    }

    #[test]
    fn a_key_inserted_again_is_counted_once() {
        let filter = KeyFilter::with_capacity(0);
        // Each key three times, as a key both scanned by a build and claimed again would be.
        for _ in 0..3 {
            for n in 0..MIN_CAPACITY {
                filter.insert(hash(&key(n)));
            }
        }
        assert!(!filter.is_full(), "re-inserted keys counted again");
        let counted = filter.inserted.load(Ordering::Relaxed);
        assert!(
            counted > MIN_CAPACITY * 98 / 100,
            "{counted} of {MIN_CAPACITY}"
        );
    }

    #[test]
    fn absent_keys_are_mostly_rejected_at_capacity() {
        let filter = KeyFilter::with_capacity(100_000);
        for n in 0..100_000 {
            filter.insert(hash(&key(n)));
        }
        let false_positives = (100_000..300_000)
            .filter(|n| filter.may_contain(hash(&key(*n))))
            .count();
        // About 1% is expected; 2% leaves room for an unlucky layout, not for a broken hash.
        assert!(false_positives < 4_000, "{false_positives} of 200000");
    }

    #[test]
    fn an_empty_filter_rejects_everything_and_is_sized_up() {
        let filter = KeyFilter::with_capacity(0);
        assert_eq!(filter.capacity(), MIN_CAPACITY);
        assert!(filter.bytes() >= MIN_CAPACITY * BITS_PER_KEY / 8);
        assert!((0..10_000).all(|n| !filter.may_contain(hash(&key(n)))));
    }
}
