//! The crate's one error type.

use std::io;

/// What went wrong in a store operation.
///
/// The normal answers of [`Store::begin`](crate::Store::begin) — *already completed*, *in
/// progress*, *mismatch* — are not errors: they are variants of [`Begin`](crate::Begin).
/// `Error` is for what the caller did wrong or what went wrong underneath.
///
/// # What an `Err` from a write means
///
/// A write (`begin` that claims, `complete`, `release`, `extend`, `remove`) that returns
/// [`Error::Io`] or [`Error::PreviousIo`] may or may not have become durable: the log record
/// may have reached the disk before the sync failed. After such an error the store refuses every
/// further write with [`Error::PreviousIo`] until it is reopened, and recovery then decides from
/// what is really on disk. Errors raised before anything is written ([`Error::InvalidKey`],
/// [`Error::OutcomeTooLarge`], [`Error::ClaimLost`]) change nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key part is too long, or the request id is empty.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Which rule the key broke.
        reason: String,
    },

    /// An outcome is larger than [`Options::max_outcome_size`](crate::Options::max_outcome_size).
    /// The claim stays valid: the caller may complete it with a smaller outcome or release it.
    #[error("outcome of {size} bytes exceeds the limit of {limit} bytes")]
    OutcomeTooLarge {
        /// The size of the rejected outcome in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// The claim is no longer the key's current claim: its lease lapsed and another caller took
    /// the key over, or it was released, removed, purged or completed under another token.
    /// Nothing was changed.
    #[error("claim with token {token} is no longer current for its key")]
    ClaimLost {
        /// The fencing token of the stale claim.
        token: u64,
    },

    /// Another handle, in this process or another, holds the store's directory.
    #[error("store directory {path} is locked by another handle")]
    Locked {
        /// The directory (or, for a simulated disk, its name).
        path: String,
    },

    /// Stored bytes failed a checksum or did not decode. Nothing was guessed: the store
    /// refuses to return or replay damaged data.
    #[error("corruption in {location}: {what}")]
    Corruption {
        /// What is damaged, e.g. `frame checksum mismatch`.
        what: String,
        /// Where, e.g. `log segment 00000000000000000001.log at offset 4096`.
        location: String,
    },

    /// An option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// An earlier write or sync failed; the store refuses writes until it is reopened.
    ///
    /// Retrying a failed fsync and reporting success could acknowledge data the kernel already
    /// dropped (PostgreSQL's "fsyncgate"), so the handle stays failed instead.
    #[error("an earlier I/O error made the store read-only until reopened: {cause}")]
    PreviousIo {
        /// The message of the original error.
        cause: String,
    },

    /// The store was closed through another clone of the handle.
    #[error("store is closed")]
    Closed,

    /// The store was opened with [`Options::read_only`](crate::Options::read_only) and the
    /// call would have written: a `begin` that would claim, a `complete`, `release`, `extend`
    /// or `remove` that would change a record, `purge_expired`, `checkpoint`. Nothing was
    /// changed. Calls that find nothing to write answer as on a writable store (a `begin` that
    /// replays, `remove` of an absent key, a lost claim).
    #[error("the store was opened read-only; this call would write")]
    ReadOnly,

    /// A read-only open found no store: the directory does not exist or holds no
    /// `index.redb`. A read-only open never creates a directory or a store; a writable open
    /// creates them instead of returning this.
    #[error("no store at {path}: no index.redb found")]
    NotFound {
        /// The directory (or, for a simulated disk, its name).
        path: String,
    },

    /// An operating-system I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// An error from the redb index that is neither I/O nor corruption.
    #[error("index error: {0}")]
    Index(#[source] Box<redb::Error>),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corruption(what: impl Into<String>, location: impl Into<String>) -> Self {
        Error::Corruption {
            what: what.into(),
            location: location.into(),
        }
    }

    pub(crate) fn invalid_key(reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            reason: reason.into(),
        }
    }

    /// Whether this error leaves the handle unable to write until it is reopened.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::PreviousIo { .. } | Error::Index(_)
        )
    }
}

impl From<redb::Error> for Error {
    fn from(err: redb::Error) -> Self {
        match err {
            redb::Error::Io(io) => Error::Io(io),
            redb::Error::Corrupted(what) => Error::corruption(what, "index"),
            redb::Error::PreviousIo => Error::PreviousIo {
                cause: "an earlier index write failed".into(),
            },
            redb::Error::DatabaseAlreadyOpen => Error::Locked {
                path: "index".into(),
            },
            other => Error::Index(Box::new(other)),
        }
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(err: $ty) -> Self {
                Error::from(redb::Error::from(err))
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::CursorError
);
