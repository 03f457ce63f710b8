//! The state of one key, and its checksummed, versioned encoding.
//!
//! The same bytes are stored as the index value and carried in log `Put` entries.
//!
//! ```text
//! offset  size  field                                         (integers little-endian)
//! 0       1     format version = 1
//! 1       1     state: 1 = in progress, 2 = completed
//! 2       32    request fingerprint (blake3)
//! 34      8     fencing token
//! 42      4     attempt
//! 46      8     at: lease expiry (in progress) or completion time (completed), ns since epoch
//! 54      8     expires_at: when the record leaves the store, ns since epoch
//! 62      4     outcome length n (0 while in progress)
//! 66      n     outcome
//! 66+n    4     CRC32 of (encoded key ++ bytes 0..66+n)
//! ```
//!
//! The checksum covers the key too, so a value stored under the wrong key does not verify.

use std::time::SystemTime;

use crate::clock::from_nanos;
use crate::error::{Error, Result};
use crate::key::{Fingerprint, Key};

pub(crate) const FORMAT_VERSION: u8 = 1;
const VERSION_AT: usize = 0;
const STATE_AT: usize = VERSION_AT + 1;
const FINGERPRINT_AT: usize = STATE_AT + 1;
const TOKEN_AT: usize = FINGERPRINT_AT + 32;
const ATTEMPT_AT: usize = TOKEN_AT + 8;
const AT_AT: usize = ATTEMPT_AT + 4;
const EXPIRES_AT: usize = AT_AT + 8;
const LEN_AT: usize = EXPIRES_AT + 8;
const OUTCOME_AT: usize = LEN_AT + 4;
/// Bytes of an encoded record besides its outcome.
pub(crate) const RECORD_OVERHEAD: usize = OUTCOME_AT + 4;

const STATE_IN_PROGRESS: u8 = 1;
const STATE_COMPLETED: u8 = 2;

/// A stored result of a completed operation, to be replayed to retries.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    pub(crate) data: Vec<u8>,
    pub(crate) completed_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
}

impl Outcome {
    /// The outcome bytes given to [`Store::complete`](crate::Store::complete).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The outcome bytes, by value.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// When the operation was completed (by the store's clock).
    pub fn completed_at(&self) -> SystemTime {
        from_nanos(self.completed_at)
    }

    /// When the record leaves the retention window: after this, the key is absent again.
    pub fn expires_at(&self) -> SystemTime {
        from_nanos(self.expires_at)
    }

    /// The fencing token of the claim that completed the operation.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The attempt of the claim that completed the operation (1 unless an earlier claim lapsed).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("len", &self.data.len())
            .field("token", &self.token)
            .field("attempt", &self.attempt)
            .field("completed_at", &self.completed_at())
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

/// The state of a key: claimed and running, or completed with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordState {
    /// A claim holds the key and has not completed or released it.
    InProgress {
        /// The claim's fencing token.
        token: u64,
        /// 1 for the first claim; more when earlier claims lapsed.
        attempt: u32,
        /// When the claim's lease lapses and another caller may take the key over.
        lease_expires_at: SystemTime,
    },
    /// The operation completed; retries replay this outcome.
    Completed(Outcome),
}

/// A key's current state, as returned by [`Store::get`](crate::Store::get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub(crate) key: Key,
    pub(crate) entry: Entry,
}

impl Record {
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fingerprint of the request that claimed the key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.entry.fingerprint
    }

    /// The state: in progress or completed.
    pub fn state(&self) -> RecordState {
        match &self.entry.body {
            Body::InProgress { lease_expires_at } => RecordState::InProgress {
                token: self.entry.token,
                attempt: self.entry.attempt,
                lease_expires_at: from_nanos(*lease_expires_at),
            },
            Body::Completed { completed_at, data } => {
                RecordState::Completed(self.entry.outcome_of(*completed_at, data.clone()))
            }
        }
    }

    /// The outcome, if the operation completed (a copy; see
    /// [`into_outcome`](Record::into_outcome) to take it without one).
    pub fn outcome(&self) -> Option<Outcome> {
        self.entry.outcome()
    }

    /// The outcome, if the operation completed, moved out of the record without a copy.
    pub fn into_outcome(self) -> Option<Outcome> {
        self.entry.into_outcome()
    }

    /// When the record leaves the store (for an in-progress record: its lease expiry plus the
    /// retention window, after which an abandoned claim is compacted away).
    pub fn expires_at(&self) -> SystemTime {
        from_nanos(self.entry.expires_at)
    }
}

/// A key's state without the key: what the index stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub fingerprint: Fingerprint,
    pub token: u64,
    pub attempt: u32,
    /// When the record becomes absent and may be compacted away (ns since epoch).
    pub expires_at: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    InProgress { lease_expires_at: u64 },
    Completed { completed_at: u64, data: Vec<u8> },
}

impl Entry {
    pub fn outcome(&self) -> Option<Outcome> {
        match &self.body {
            Body::Completed { completed_at, data } => {
                Some(self.outcome_of(*completed_at, data.clone()))
            }
            Body::InProgress { .. } => None,
        }
    }

    /// The outcome, moved out of the entry.
    pub fn into_outcome(mut self) -> Option<Outcome> {
        let Body::Completed { completed_at, data } = &mut self.body else {
            return None;
        };
        let (completed_at, data) = (*completed_at, std::mem::take(data));
        Some(self.outcome_of(completed_at, data))
    }

    fn outcome_of(&self, completed_at: u64, data: Vec<u8>) -> Outcome {
        Outcome {
            data,
            completed_at,
            expires_at: self.expires_at,
            token: self.token,
            attempt: self.attempt,
        }
    }

    /// Whether the record still exists at `now` (nanoseconds).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// Appends the encoding of this entry stored under `key` to `out`.
    pub fn encode_into(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let (state, at, data): (u8, u64, &[u8]) = match &self.body {
            Body::InProgress { lease_expires_at } => (STATE_IN_PROGRESS, *lease_expires_at, &[]),
            Body::Completed { completed_at, data } => (STATE_COMPLETED, *completed_at, data),
        };
        out.reserve(RECORD_OVERHEAD + data.len());
        out.push(FORMAT_VERSION);
        out.push(state);
        out.extend_from_slice(&self.fingerprint.0);
        out.extend_from_slice(&self.token.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        // Outcomes are bounded by `MAX_OUTCOME_LIMIT`, far below u32::MAX.
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(data);
        let crc = checksum(key, out.get(start..).unwrap_or_default());
        out.extend_from_slice(&crc.to_le_bytes());
    }

    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(key, &mut out);
        out
    }

    /// Decodes and verifies an entry stored under `key`. `location` names where the bytes came
    /// from, for the error message.
    pub fn decode(key: &[u8], bytes: &[u8], location: &dyn Fn() -> String) -> Result<Entry> {
        EntryRef::decode(key, bytes, location).map(|e| e.to_entry())
    }
}

/// An entry decoded in place: its outcome borrows the stored bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    pub fingerprint: Fingerprint,
    pub token: u64,
    pub attempt: u32,
    pub expires_at: u64,
    pub body: BodyRef<'a>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyRef<'a> {
    InProgress { lease_expires_at: u64 },
    Completed { completed_at: u64, data: &'a [u8] },
}

impl<'a> EntryRef<'a> {
    /// Decodes and verifies an entry stored under `key` without copying its outcome. The one
    /// decoder: [`Entry::decode`] is this plus a copy.
    pub fn decode(key: &[u8], bytes: &'a [u8], location: &dyn Fn() -> String) -> Result<Self> {
        let bad = |what: &str| Error::corruption(format!("record {what}"), location());
        if bytes.len() < RECORD_OVERHEAD {
            return Err(bad("shorter than its header"));
        }
        let body_len = bytes.len() - 4;
        let (body, crc) = bytes.split_at(body_len);
        if checksum(key, body) != le_u32(crc, 0) {
            return Err(bad("checksum mismatch"));
        }
        if body.get(VERSION_AT) != Some(&FORMAT_VERSION) {
            return Err(bad("has an unknown format version"));
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(body.get(FINGERPRINT_AT..TOKEN_AT).unwrap_or(&[0; 32]));
        let at = le_u64(body, AT_AT);
        let len = le_u32(body, LEN_AT) as usize;
        let data = body.get(OUTCOME_AT..).unwrap_or_default();
        if data.len() != len {
            return Err(bad("outcome length does not match"));
        }
        let body = match body.get(STATE_AT) {
            Some(&STATE_IN_PROGRESS) if len == 0 => BodyRef::InProgress {
                lease_expires_at: at,
            },
            Some(&STATE_COMPLETED) => BodyRef::Completed {
                completed_at: at,
                data,
            },
            _ => return Err(bad("has an unknown state")),
        };
        Ok(EntryRef {
            fingerprint: Fingerprint(fingerprint),
            token: le_u64(bytes, TOKEN_AT),
            attempt: le_u32(bytes, ATTEMPT_AT),
            expires_at: le_u64(bytes, EXPIRES_AT),
            body,
        })
    }

    /// Whether the record still exists at `now` (nanoseconds).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The owned entry (a copy of the outcome).
    pub fn to_entry(self) -> Entry {
        Entry {
            fingerprint: self.fingerprint,
            token: self.token,
            attempt: self.attempt,
            expires_at: self.expires_at,
            body: match self.body {
                BodyRef::InProgress { lease_expires_at } => Body::InProgress { lease_expires_at },
                BodyRef::Completed { completed_at, data } => Body::Completed {
                    completed_at,
                    data: data.to_vec(),
                },
            },
        }
    }
}

/// A key's current state, borrowed from the store for the length of a
/// [`Store::get_with`](crate::Store::get_with) callback: nothing is copied or allocated.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub(crate) entry: EntryRef<'a>,
}

impl<'a> RecordRef<'a> {
    /// The fingerprint of the request that claimed the key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.entry.fingerprint
    }

    /// The fencing token of the claim that holds or completed the key.
    pub fn token(&self) -> u64 {
        self.entry.token
    }

    /// The attempt number of that claim.
    pub fn attempt(&self) -> u32 {
        self.entry.attempt
    }

    /// When the record leaves the store.
    pub fn expires_at(&self) -> SystemTime {
        from_nanos(self.entry.expires_at)
    }

    /// The stored outcome's bytes, if the operation completed.
    pub fn outcome_data(&self) -> Option<&'a [u8]> {
        match self.entry.body {
            BodyRef::Completed { data, .. } => Some(data),
            BodyRef::InProgress { .. } => None,
        }
    }

    /// When the operation completed, if it did.
    pub fn completed_at(&self) -> Option<SystemTime> {
        match self.entry.body {
            BodyRef::Completed { completed_at, .. } => Some(from_nanos(completed_at)),
            BodyRef::InProgress { .. } => None,
        }
    }

    /// When the claim's lease lapses, if the key is in progress.
    pub fn lease_expires_at(&self) -> Option<SystemTime> {
        match self.entry.body {
            BodyRef::InProgress { lease_expires_at } => Some(from_nanos(lease_expires_at)),
            BodyRef::Completed { .. } => None,
        }
    }

    /// The owned record (copies the outcome): what [`Store::get`](crate::Store::get) returns.
    pub fn to_record(self, key: &Key) -> Record {
        Record {
            key: key.clone(),
            entry: self.entry.to_entry(),
        }
    }
}

fn checksum(key: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(body);
    h.finalize()
}

/// Reads a little-endian u32 at `at`; 0 if out of range (callers checked the length).
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at`; 0 if out of range (callers checked the length).
pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> Entry {
        Entry {
            fingerprint: Fingerprint::of(b"req"),
            token: 7,
            attempt: 2,
            expires_at: 1_000,
            body: Body::Completed {
                completed_at: 500,
                data: b"outcome".to_vec(),
            },
        }
    }

    #[test]
    fn round_trip() {
        let loc = || "test".to_string();
        for entry in [
            completed(),
            Entry {
                body: Body::InProgress {
                    lease_expires_at: 99,
                },
                ..completed()
            },
        ] {
            let bytes = entry.encode(b"key");
            assert_eq!(Entry::decode(b"key", &bytes, &loc).unwrap(), entry);
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let loc = || "test".to_string();
        let bytes = completed().encode(b"key");
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(matches!(
                Entry::decode(b"key", &damaged, &loc),
                Err(Error::Corruption { .. })
            ));
        }
        assert!(Entry::decode(b"other", &bytes, &loc).is_err(), "wrong key");
        for len in 0..bytes.len() {
            assert!(Entry::decode(b"key", &bytes[..len], &loc).is_err());
        }
    }
}
