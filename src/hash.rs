//! Fast hashing of encoded keys, for the key filter and the in-memory maps keyed by them.
//!
//! Not cryptographic. The maps seed it per map from the standard library's random keys, so
//! that clients choosing keys cannot aim at one bucket.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A fast 64-bit hash of a key's bytes (not cryptographic: the filter only needs spread).
pub(crate) fn hash(key: &[u8]) -> u64 {
    seeded(0, key)
}

/// [`hash`] from `seed`.
fn seeded(seed: u64, key: &[u8]) -> u64 {
    let mut h = (seed ^ key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word.iter_mut().zip(rest).for_each(|(w, b)| *w = *b);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    // splitmix64's finalizer: every input bit affects every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// A `BuildHasher` for maps keyed by encoded keys: [`hash`] with a random seed per map.
#[derive(Debug, Clone)]
pub(crate) struct KeyHashBuilder(u64);

impl Default for KeyHashBuilder {
    fn default() -> KeyHashBuilder {
        KeyHashBuilder(RandomState::new().hash_one(0u64))
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// The hasher of [`KeyHashBuilder`]: folds each write into the state with [`seeded`].
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = seeded(self.0, bytes);
    }

    fn write_usize(&mut self, n: usize) {
        // The length prefix of a slice: the bytes that follow carry their length anyway.
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_hash_depends_on_every_byte_and_the_length() {
        let base = b"client-7|request-000000000007|POST /v1/charges".to_vec();
        let h = hash(&base);
        for i in 0..base.len() {
            let mut changed = base.clone();
            changed[i] ^= 1;
            assert_ne!(hash(&changed), h, "byte {i}");
        }
        assert_ne!(hash(&base[..base.len() - 1]), h);
        assert_ne!(hash(b""), hash(&[0]));
    }

    #[test]
    fn maps_seed_differently_and_still_find_their_keys() {
        let (a, b) = (KeyHashBuilder::default(), KeyHashBuilder::default());
        assert_ne!(a.hash_one(b"key".as_slice()), b.hash_one(b"key".as_slice()));
        let mut map: HashMap<Vec<u8>, u64, KeyHashBuilder> = HashMap::default();
        for n in 0..10_000u64 {
            map.insert(n.to_le_bytes().to_vec(), n);
        }
        assert!((0..10_000u64).all(|n| map.get(n.to_le_bytes().as_slice()) == Some(&n)));
    }
}
