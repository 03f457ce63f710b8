//! The record cache: encoded entries of recently read keys, kept current by their writes and
//! in memory in front of the index, so that a lookup that hits it walks no B-tree and reads no
//! page.
//!
//! It holds copies of index values, never anything the index does not hold: records enter it
//! when they are read from the index (and when an open warms it), and a write to a cached key
//! replaces or removes it when the write is applied to the index
//! ([`Index::apply`](crate::index::Index::apply)), after the acknowledged layer (`recent`)
//! that readers consult first has served it.
//!
//! # Staleness
//!
//! A reader that missed the cache reads an index snapshot and then *fills* the cache with
//! what it read. Meanwhile the index may have moved on, so a fill must never overwrite a newer
//! write. Each published snapshot has a generation; every write to a shard records the
//! generation of the snapshot that holds it (the shard's `mark`). A fill carries the
//! generation of the snapshot it read, taken before the snapshot itself (so the data is at
//! least that new), and goes in only if the shard's mark is not newer. A fill that came
//! before the write of its key is overwritten by that write; one that comes after it finds
//! the newer mark and is dropped.
//!
//! # Eviction
//!
//! CLOCK (second chance) per shard: a queue of keys in insertion order and a referenced bit
//! set by each hit. Over its budget, a shard takes keys from the front of the queue: a
//! referenced one loses its bit and goes to the back, an unreferenced one is evicted.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::hash;

/// Shards, each with its own lock: readers on different keys rarely share one.
const SHARDS: usize = 64;

/// A full shard admits one in this many fills of [`WhenFull::AdmitSome`].
const ADMIT_WHEN_FULL: u64 = 8;

/// What a fill does when its shard is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// A lookup's fill: one in [`ADMIT_WHEN_FULL`] goes in and evicts. Where lookups range
    /// over more records than fit, each admitted fill costs an eviction and an allocation and
    /// buys a hit only as often as the cache is a share of the store; admitting fewer keeps
    /// that share (the content stays a sample of what is read) at a fraction of the cost.
    AdmitSome,
    /// The warming at open: it never evicts.
    Refuse,
}

/// Bytes charged for a record beyond its key and entry: the map and queue slots, the `Arc`
/// header and the allocator's rounding, roughly.
const RECORD_OVERHEAD: usize = 80;

pub(crate) struct RecordCache {
    shards: [Mutex<Shard>; SHARDS],
    /// Each shard's budget in bytes; 0 turns the cache off.
    shard_budget: usize,
}

/// A cached record: its key and encoded entry in one allocation, so that a hit touches one
/// block of memory beside the map's own (on a machine where every random access is a cache
/// and TLB miss, the count of blocks touched is the cost of a lookup).
#[derive(Clone)]
pub(crate) struct Cached {
    bytes: Arc<[u8]>,
    key_len: usize,
}

impl Cached {
    fn new(key: &[u8], entry: &[u8]) -> Cached {
        let mut bytes = Vec::with_capacity(key.len() + entry.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(entry);
        Cached {
            bytes: bytes.into(),
            key_len: key.len(),
        }
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        self.bytes
            .split_at_checked(self.key_len)
            .unwrap_or_default()
    }

    fn key(&self) -> &[u8] {
        self.parts().0
    }

    /// The encoded entry.
    pub fn entry(&self) -> &[u8] {
        self.parts().1
    }

    fn charge(&self) -> usize {
        self.bytes.len() + RECORD_OVERHEAD
    }
}

#[derive(Default)]
struct Shard {
    /// Keyed by the key's hash; the record holds the key, compared on each hit. Two keys of
    /// one hash share a slot: the later evicts the earlier, which is only a miss.
    map: HashMap<u64, Slot, Remix>,
    /// Hashes in insertion order. A record removed from `map` leaves a stale entry here,
    /// skipped when it reaches the front; every record in `map` has at least one entry.
    queue: VecDeque<u64>,
    bytes: usize,
    /// The generation of the newest snapshot whose writes reached this shard.
    mark: u64,
    /// Fills that found the shard full (see [`ADMIT_WHEN_FULL`]).
    refused: u64,
}

struct Slot {
    record: Cached,
    referenced: bool,
}

/// The map's hasher for key hashes, which are already well mixed: a rotation moves the
/// shard bits (the top ones, equal across a shard) out of the top, where the map takes its
/// tags, and out of the bottom, where it takes its bucket.
#[derive(Default, Clone, Copy)]
struct Remix;

impl BuildHasher for Remix {
    type Hasher = RemixHasher;

    fn build_hasher(&self) -> RemixHasher {
        RemixHasher(0)
    }
}

struct RemixHasher(u64);

impl Hasher for RemixHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash::hash(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.rotate_right(6);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl RecordCache {
    /// A cache of at most about `budget` bytes (0: off).
    pub fn new(budget: usize) -> RecordCache {
        RecordCache {
            shards: std::array::from_fn(|_| Mutex::default()),
            shard_budget: budget / SHARDS,
        }
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "the top six bits of a u64 index an array of 64"
    )]
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 58) as usize]
    }

    /// Whether the cache is off (a budget of 0).
    fn is_off(&self) -> bool {
        self.shard_budget == 0
    }

    /// The cached record of `key`, whose [`hash::hash`] is `hash`, if any.
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Cached> {
        if self.is_off() {
            return None;
        }
        let mut shard = self.shard(hash).lock();
        let slot = shard.map.get_mut(&hash)?;
        if slot.record.key() != key {
            return None;
        }
        slot.referenced = true;
        Some(slot.record.clone())
    }

    /// Caches `entry` for `key` (whose [`hash::hash`] is `hash`) as read from the snapshot of
    /// `generation`, unless a newer write reached the shard since (see the module docs) or
    /// the key is cached already. `when_full` says what a full shard does. Returns false if
    /// the shard had no room for it.
    pub fn fill(
        &self,
        hash: u64,
        key: &[u8],
        entry: &[u8],
        generation: u64,
        when_full: WhenFull,
    ) -> bool {
        if self.is_off() {
            return false;
        }
        let mut shard = self.shard(hash).lock();
        let full = shard.bytes + key.len() + entry.len() + RECORD_OVERHEAD > self.shard_budget;
        if shard.mark > generation || shard.map.contains_key(&hash) {
            return !full;
        }
        if full {
            match when_full {
                WhenFull::Refuse => return false,
                WhenFull::AdmitSome => {
                    shard.refused += 1;
                    if !shard.refused.is_multiple_of(ADMIT_WHEN_FULL) {
                        return false;
                    }
                }
            }
        }
        shard.insert(hash, Cached::new(key, entry), self.shard_budget);
        true
    }

    /// Records the write of `key` (its new entry, or `None`: deleted) that the snapshot of
    /// `generation` holds. Called for every key a published snapshot changed, after it is
    /// published. A cached key takes its new entry; a key not cached stays out (it enters
    /// when it is read): on a write-heavy load, inserting every new key would cost an
    /// eviction per write for records that may never be read.
    pub fn write(&self, key: &[u8], entry: Option<&[u8]>, generation: u64) {
        if self.is_off() {
            return;
        }
        let hash = hash::hash(key);
        let mut shard = self.shard(hash).lock();
        shard.mark = shard.mark.max(generation);
        if !shard.map.contains_key(&hash) {
            return;
        }
        match entry.map(|entry| Cached::new(key, entry)) {
            Some(record) if record.charge() <= self.shard_budget => {
                shard.insert(hash, record, self.shard_budget);
            }
            // Deleted, or too large to cache: whatever the slot holds is older.
            _ => shard.remove(hash),
        }
    }

    /// Records the removal of `key` that the snapshot of `generation` holds.
    pub fn forget(&self, key: &[u8], generation: u64) {
        self.write(key, None, generation);
    }

    /// Records held, and the bytes charged for them.
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.lock();
            (n + s.map.len(), b + s.bytes)
        })
    }
}

impl Shard {
    fn insert(&mut self, hash: u64, record: Cached, budget: usize) {
        self.bytes += record.charge();
        let slot = Slot {
            record,
            referenced: false,
        };
        match self.map.insert(hash, slot) {
            Some(old) => self.bytes -= old.record.charge(),
            None => self.queue.push_back(hash),
        }
        self.evict(budget);
    }

    fn remove(&mut self, hash: u64) {
        if let Some(slot) = self.map.remove(&hash) {
            self.bytes -= slot.record.charge();
        }
        // Deletions without evictions would let stale queue entries pile up.
        if self.queue.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.queue.retain(|h| map.contains_key(h));
        }
    }

    /// Second chance: evicts unreferenced records from the front until within `budget`.
    fn evict(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some(hash) = self.queue.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&hash) else {
                continue; // stale: removed earlier
            };
            if slot.referenced {
                slot.referenced = false;
                self.queue.push_back(hash);
            } else if let Some(slot) = self.map.remove(&hash) {
                self.bytes -= slot.record.charge();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Vec<u8> {
        format!("client|request-{n:08}|resource").into_bytes()
    }

    fn entry(n: u32) -> Vec<u8> {
        vec![n as u8; 200]
    }

    fn cached(cache: &RecordCache, key: &[u8]) -> Option<Vec<u8>> {
        cache.get(hash::hash(key), key).map(|c| c.entry().to_vec())
    }

    /// A lookup's fill.
    fn fill(cache: &RecordCache, key: &[u8], entry: &[u8], generation: u64) {
        cache.fill(hash::hash(key), key, entry, generation, WhenFull::AdmitSome);
    }

    #[test]
    fn a_fill_never_overwrites_a_newer_write() {
        let cache = RecordCache::new(1 << 20);
        let k = key(1);
        // A reader of generation 4 races a write that generation 5 holds.
        cache.write(&k, Some(&entry(5)), 5);
        fill(&cache, &k, &entry(4), 4);
        assert_eq!(cached(&cache, &k), None);
        fill(&cache, &k, &entry(5), 5);
        assert_eq!(cached(&cache, &k), Some(entry(5)));
        // A delete, then a stale fill of what it deleted.
        cache.write(&k, None, 6);
        fill(&cache, &k, &entry(5), 5);
        assert_eq!(cached(&cache, &k), None);
        // A fill from the snapshot that holds the delete's successor goes in.
        fill(&cache, &k, &entry(7), 7);
        assert_eq!(cached(&cache, &k), Some(entry(7)));
    }

    #[test]
    fn a_write_leaves_an_uncached_key_out() {
        let cache = RecordCache::new(1 << 20);
        cache.write(&key(8), Some(&entry(8)), 1);
        assert_eq!(cached(&cache, &key(8)), None);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_write_overwrites_an_older_fill() {
        let cache = RecordCache::new(1 << 20);
        let k = key(2);
        fill(&cache, &k, &entry(1), 1);
        cache.write(&k, Some(&entry(2)), 2);
        assert_eq!(cached(&cache, &k), Some(entry(2)));
        cache.write(&k, None, 3);
        assert_eq!(cached(&cache, &k), None);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn it_stays_within_its_budget_and_keeps_what_is_read() {
        let budget = SHARDS * 4096;
        let cache = RecordCache::new(budget);
        let hot = key(0);
        fill(&cache, &hot, &entry(0), 1);
        for n in 1..20_000 {
            fill(&cache, &key(n), &entry(n), 1);
            // The hot key is read between writes: its referenced bit saves it each sweep.
            assert!(
                cached(&cache, &hot).is_some(),
                "hot key evicted after {n} writes"
            );
            let (_, bytes) = cache.usage();
            assert!(bytes <= budget, "{bytes} bytes over a budget of {budget}");
        }
        let (entries, _) = cache.usage();
        assert!(entries > 100, "only {entries} entries kept");
    }

    #[test]
    fn deletes_do_not_let_the_queue_grow_without_bound() {
        let cache = RecordCache::new(1 << 20);
        let k = key(3);
        for generation in 0..10_000 {
            fill(&cache, &k, &entry(3), generation);
            cache.write(&k, None, generation);
        }
        let queued: usize = cache.shards.iter().map(|s| s.lock().queue.len()).sum();
        assert!(
            queued <= 64 + 1,
            "{queued} queue entries for an empty cache"
        );
    }

    #[test]
    fn a_key_sharing_another_keys_hash_is_a_miss() {
        let cache = RecordCache::new(1 << 20);
        fill(&cache, &key(6), &entry(6), 1);
        let hash = hash::hash(&key(6));
        assert!(cache.get(hash, &key(6)).is_some());
        assert!(cache.get(hash, &key(7)).is_none());
    }

    #[test]
    fn warming_fills_only_room_and_never_over_a_newer_write() {
        let cache = RecordCache::new(SHARDS * 4096);
        fill(&cache, &key(0), &entry(9), 5);
        // A write newer than the warming snapshot: its shard takes no warm fill.
        cache.write(&key(1), None, 5);
        let mut refused = 0;
        for n in 0..2000 {
            let k = key(n);
            refused += u32::from(!cache.fill(hash::hash(&k), &k, &entry(n), 4, WhenFull::Refuse));
        }
        // key 0 keeps what it held; the shards filled up and refused the rest.
        assert_eq!(cached(&cache, &key(0)), Some(entry(9)));
        assert_eq!(cached(&cache, &key(1)), None);
        let (entries, bytes) = cache.usage();
        assert!(
            bytes <= SHARDS * 4096 && entries > 500,
            "{entries} entries, {bytes} bytes"
        );
        assert!(refused > 0);
        let mut warmed = 0;
        for n in 1..2000 {
            if let Some(found) = cached(&cache, &key(n)) {
                assert_eq!(found, entry(n), "key {n}");
                warmed += 1;
            }
        }
        assert_eq!(warmed + 1, entries);
    }

    #[test]
    fn a_zero_budget_turns_it_off() {
        let cache = RecordCache::new(0);
        cache.write(&key(4), Some(&entry(4)), 1);
        fill(&cache, &key(5), &entry(5), 1);
        assert_eq!(
            (cached(&cache, &key(4)), cached(&cache, &key(5))),
            (None, None)
        );
    }
}
