//! The closure helper: begin, run the operation once, complete (or release on error).

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use crate::claim::{Begin, Claim};
use crate::error::Error;
use crate::key::{Fingerprint, Key};
use crate::record::Outcome;
use crate::store::Store;

/// What [`Store::execute`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// The operation ran now and its outcome was stored.
    Ran(Outcome),
    /// The operation had already completed: its stored outcome is replayed, it did not run.
    Replayed(Outcome),
    /// Another caller is running it now; nothing ran (HTTP 409).
    InProgress {
        /// When the holder's lease lapses.
        lease_expires_at: SystemTime,
    },
    /// The key was used with a different request; nothing ran (HTTP 422).
    Mismatch {
        /// The fingerprint stored with the key.
        stored: Fingerprint,
    },
}

impl Execution {
    /// The outcome, run now or replayed.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            Execution::Ran(o) | Execution::Replayed(o) => Some(o),
            _ => None,
        }
    }
}

/// Why [`Store::execute`] failed.
#[derive(Debug)]
pub enum ExecuteError<E> {
    /// The operation returned an error. The claim was released (the key is absent again and a
    /// retry will run it), unless `release` says the release itself failed — then the claim
    /// lapses with its lease and the next claim has `attempt() > 1`.
    Operation {
        /// The operation's error.
        error: E,
        /// The error of the release, if it failed.
        release: Option<Error>,
    },
    /// The store failed. If the operation had run (e.g. the outcome was too large, or the
    /// completion could not be made durable), the claim is left to lapse, not released: the
    /// side effect happened, and the next claim's `attempt() > 1` tells its caller so.
    Store(Error),
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Operation {
                error,
                release: None,
            } => write!(f, "operation failed (claim released): {error}"),
            ExecuteError::Operation {
                error,
                release: Some(r),
            } => write!(
                f,
                "operation failed: {error}; releasing its claim also failed: {r}"
            ),
            ExecuteError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Operation { error, .. } => Some(error),
            ExecuteError::Store(e) => Some(e),
        }
    }
}

impl<E> From<Error> for ExecuteError<E> {
    fn from(e: Error) -> Self {
        ExecuteError::Store(e)
    }
}

impl Store {
    /// Runs `operation` at most once per key: begins, runs it if claimed, stores its outcome,
    /// and tells whether it ran or was replayed. If the operation returns `Err`, the claim is
    /// released so that a retry runs it again.
    ///
    /// ```
    /// use idemstore::{Execution, Key, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let key = Key::new("client-1", "req-1", "POST /charges")?;
    /// let charge = |_: &idemstore::Claim| Ok::<_, std::io::Error>(b"charged 10 EUR".to_vec());
    /// assert!(matches!(store.execute(&key, b"10 EUR", charge)?, Execution::Ran(_)));
    /// let again = store.execute(&key, b"10 EUR", charge)?;
    /// assert!(matches!(&again, Execution::Replayed(o) if o.data() == b"charged 10 EUR"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute<T, E>(
        &self,
        key: &Key,
        request: &[u8],
        operation: impl FnOnce(&Claim) -> Result<T, E>,
    ) -> Result<Execution, ExecuteError<E>>
    where
        T: AsRef<[u8]>,
    {
        let claim = match claim_of(self.begin(key, request)?) {
            Ok(claim) => claim,
            Err(answer) => return Ok(answer),
        };
        match operation(&claim) {
            Ok(outcome) => Ok(Execution::Ran(self.complete(&claim, outcome.as_ref())?)),
            Err(error) => Err(ExecuteError::Operation {
                error,
                release: self.release(&claim).err(),
            }),
        }
    }

    /// [`execute`](Store::execute) for asynchronous callers: `operation` gets the claim and
    /// returns the future of its outcome. No executor thread waits for the disk (see
    /// [`Acknowledgement`](crate::Acknowledgement)).
    ///
    /// ```
    /// use idemstore::{Execution, Key, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let key = Key::new("client-1", "req-1", "POST /charges")?;
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// # runtime.block_on(async {
    /// let charge = |_claim| async { Ok::<_, std::io::Error>(b"charged 10 EUR".to_vec()) };
    /// let ran = store.execute_async(&key, b"10 EUR", charge).await?;
    /// assert!(matches!(ran, Execution::Ran(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn execute_async<T, E, Fut>(
        &self,
        key: &Key,
        request: &[u8],
        operation: impl FnOnce(Claim) -> Fut,
    ) -> Result<Execution, ExecuteError<E>>
    where
        T: AsRef<[u8]>,
        Fut: Future<Output = Result<T, E>>,
    {
        let claim = match claim_of(self.begin_async(key, request).await?) {
            Ok(claim) => claim,
            Err(answer) => return Ok(answer),
        };
        match operation(claim.clone()).await {
            Ok(outcome) => Ok(Execution::Ran(
                self.complete_async(&claim, outcome.as_ref()).await?,
            )),
            Err(error) => Err(ExecuteError::Operation {
                error,
                release: self.release_async(&claim).await.err(),
            }),
        }
    }
}

/// The claim to run the operation with, or what `execute` answers without running it.
fn claim_of(begin: Begin) -> Result<Claim, Execution> {
    match begin {
        Begin::Claimed(claim) => Ok(claim),
        Begin::Completed(outcome) => Err(Execution::Replayed(outcome)),
        Begin::InProgress {
            lease_expires_at, ..
        } => Err(Execution::InProgress { lease_expires_at }),
        Begin::Mismatch { stored, .. } => Err(Execution::Mismatch { stored }),
    }
}
