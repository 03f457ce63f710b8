//! Exactly-once results for side-effecting operations: a crash-safe, embedded
//! idempotency-key store.
//!
//! Before a service runs an operation with side effects (charge a card, send a message,
//! create an order) it asks the store about the operation's [`Key`]. The answer is a
//! [`Begin`]: *run it* (you hold a [`Claim`]), *already done* (replay the stored
//! [`Outcome`]), *someone is running it now*, or *this key was used with a different request*.
//!
//! ```
//! use idemstore::{Begin, Key, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//! let key = Key::new("client-42", "9f1c-idempotency-key", "POST /v1/charges")?;
//! let request = br#"{"amount": 1000, "currency": "EUR"}"#;
//!
//! let response = match store.begin(&key, request)? {
//!     Begin::Claimed(claim) => {
//!         let response = b"charge ch_1 created".to_vec(); // the side effect, run once
//!         store.complete(&claim, &response)?.into_data()  // durable before it returns
//!     }
//!     Begin::Completed(outcome) => outcome.into_data(),   // a retry: replay, don't re-run
//!     Begin::InProgress { .. } => panic!("409: someone is running it now"),
//!     Begin::Mismatch { .. } => panic!("422: same key, different request"),
//! };
//!
//! // The client retries: the stored response is replayed and nothing runs again.
//! assert!(matches!(store.begin(&key, request)?, Begin::Completed(o) if o.data() == response));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Async services
//!
//! Every write has an asynchronous twin ([`Store::begin_async`], [`Store::complete_async`],
//! [`Store::release_async`], [`Store::extend_async`], [`Store::remove_async`],
//! [`Store::execute_async`]) that decides at once and returns an [`Acknowledgement`], a
//! future that resolves when the answer is durable. A store thread leads the group commits
//! for them, so no executor thread waits for the disk and many tasks share each sync. No
//! runtime is required.
//!
//! # Guarantees
//!
//! - Everything acknowledged in [`Durability::Immediate`] (the default) survives kill -9 and
//!   power loss: an append-only, CRC-framed log is synced before a call returns, and many
//!   concurrent callers share one sync (group commit).
//! - Of any number of concurrent `begin` calls for one key, exactly one claims it. Fencing
//!   tokens are strictly increasing across the store and restarts.
//! - Every stored record is checksummed and verified on every read: damage is
//!   [`Error::Corruption`], never a wrong outcome. A torn log tail is cut off and reported.
//! - Outcomes are kept for a retention window and then compacted away, at a cost proportional
//!   to what expires.
//!
//! The on-disk format and the recovery algorithm are described in `docs/design.md`.

#![deny(unsafe_code)]
#![warn(missing_docs)]
// Data read from disk must never panic the library: index and unwrap only where proven.
#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

mod acknowledgement;
mod cache;
mod claim;
mod clock;
mod commit;
mod decide;
mod error;
mod execute;
mod filter;
mod hash;
mod index;
mod key;
mod log;
mod maintenance;
mod options;
mod record;
mod recovery;
mod stats;
pub mod storage;
mod store;
mod verify;
mod writeback;

pub use acknowledgement::Acknowledgement;
pub use claim::{Begin, Claim};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use execute::{ExecuteError, Execution};
pub use key::{Fingerprint, Key, MAX_KEY_PART};
pub use log::frame::MAX_OUTCOME_LIMIT;
pub use options::{Durability, Options};
pub use record::{Outcome, Record, RecordRef, RecordState};
pub use stats::{RecoveryReport, Stats, TornTail};
pub use store::Store;
pub use verify::{Problem, VerifyReport, verify, verify_dir};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
