//! The answers of `begin`, and the claim a caller holds while it runs the operation.

use std::time::SystemTime;

use crate::clock::from_nanos;
use crate::key::{Fingerprint, Key};
use crate::record::Outcome;

/// The answer of [`Store::begin`](crate::Store::begin).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a claim must be completed or released, and a replay must be returned"]
pub enum Begin {
    /// Run the operation: the caller now holds the key until its lease expires. Then
    /// [`complete`](crate::Store::complete) or [`release`](crate::Store::release) it.
    Claimed(Claim),
    /// The operation already completed: replay this outcome, don't run it again.
    Completed(Outcome),
    /// Another claim holds the key and its lease is live (answer HTTP 409 and let the client
    /// retry later).
    #[non_exhaustive]
    InProgress {
        /// When the holder's lease lapses, unless extended.
        lease_expires_at: SystemTime,
        /// The holder's attempt number.
        attempt: u32,
    },
    /// The key was used with a different request (answer HTTP 422).
    #[non_exhaustive]
    Mismatch {
        /// The fingerprint stored with the key.
        stored: Fingerprint,
    },
}

/// The right to run one operation: proof that the caller's `begin` claimed the key.
///
/// A claim is a plain value (it can be sent to another thread or kept across an `await`).
/// Only the key's current claim can complete, release or extend it: once its lease lapses and
/// another caller takes the key over, this claim gets [`Error::ClaimLost`](crate::Error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub(crate) key: Key,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) lease_expires_at: u64,
}

impl Claim {
    /// The claimed key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fencing token: unique in the store and strictly increasing, across restarts too.
    /// Pass it to downstream systems that can reject writes from a superseded holder.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// 1 for a first claim. More than 1 means an earlier claim of this key lapsed without being
    /// completed or released: the operation may have partly run, and the caller may need to
    /// reconcile before running it again.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the lease lapses (as granted by `begin`; [`Store::extend`](crate::Store::extend)
    /// returns the new one).
    pub fn lease_expires_at(&self) -> SystemTime {
        from_nanos(self.lease_expires_at)
    }

    /// The fingerprint of the request that claimed the key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}
