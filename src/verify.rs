//! Offline verification of a store: every log frame and index record checksum, the index's
//! own tables, every page checksum of the index (redb's integrity check, run over a
//! copy-on-write view), and the agreement of the index with the log. Writes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use crate::clock::to_nanos;
use crate::error::{Error, Result};
use crate::index::{self, INDEX_FILE};
use crate::key::describe;
use crate::log::{reader, segment};
use crate::record::Entry;
use crate::stats::TornTail;
use crate::storage::{FsStorage, Overlay, Storage};

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Log segments read.
    pub segments: u64,
    /// Log frames checked.
    pub frames: u64,
    /// Index records checked.
    pub records: u64,
    /// The index's checkpoint.
    pub checkpoint_lsn: u64,
    /// The last valid LSN in the log.
    pub last_lsn: u64,
    /// A torn log tail that the next open will cut off. Normal after a crash; listed in
    /// `problems` too when the index checkpoint covers the damaged record.
    pub torn_tail: Option<TornTail>,
    /// The index was not closed cleanly; the next open recovers it. It was checked as that
    /// recovery leaves it (recovered in memory; nothing is written).
    pub index_needs_recovery: bool,
    /// Every damage or disagreement found. Empty means the store verified.
    pub problems: Vec<Problem>,
}

/// One thing wrong in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a file and offset, or a key.
    pub location: String,
    /// What is wrong.
    pub what: String,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the store in directory `dir`. Takes the store's lock, so it fails with
/// [`Error::Locked`] while the store is open.
pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a directory", dir.display()),
        )));
    }
    verify(FsStorage::new(dir)?)
}

/// Verifies the store on `storage`; see [`verify_dir`].
pub fn verify(storage: impl Storage) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // Before the lock, whose file a directory that holds no store should not gain.
    if !storage.list()?.iter().any(|n| n == INDEX_FILE) {
        report.problems.push(Problem {
            location: storage.describe(),
            what: format!("no {INDEX_FILE}: not a store, or its index was lost"),
        });
        return Ok(report);
    }
    // Every file read through an overlay: opened read-only, nothing written (the lock file
    // included, where none exists on a read-only file system).
    let storage = Overlay::new(storage);
    let _lock = storage.try_lock()?.ok_or_else(|| Error::Locked {
        path: storage.describe(),
    })?;

    let mut indexed: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let check = index::check(storage.open(INDEX_FILE, false)?, |key, value| {
        indexed.insert(key.to_vec(), value.to_vec());
    })?;
    report.records = check.records;
    report.index_needs_recovery = check.needs_recovery;
    let checkpoint = check.checkpoint.map_or(0, |c| c.lsn);
    report.checkpoint_lsn = checkpoint;
    for (key, what) in check.problems {
        report.problems.push(Problem {
            location: format!("{INDEX_FILE} key {}", describe(&key)),
            what,
        });
    }
    if let Some(what) = check.pages {
        report.problems.push(Problem {
            location: INDEX_FILE.into(),
            what: format!("redb's integrity check failed: {what}"),
        });
    }

    // The latest record per key among the log records the checkpoint covers.
    let mut covered: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut frames = 0u64;
    let read = reader::read(&storage, Some(checkpoint), true, |lsn, e, location| {
        frames += 1;
        if let Some(bytes) = e.entry {
            Entry::decode(e.key, bytes, location)?;
        }
        if lsn <= checkpoint {
            covered.insert(e.key.to_vec(), e.entry.map(<[u8]>::to_vec));
        }
        Ok(())
    });
    report.frames = frames;
    // Only a log read to its end says what the index must hold.
    let mut log_complete = false;
    match read {
        Err(Error::Corruption { what, location }) => {
            report.problems.push(Problem { location, what });
        }
        Err(e) => return Err(e),
        Ok(log) => {
            log_complete = true;
            report.segments = log.segments_read;
            report.last_lsn = log.last_lsn.unwrap_or(0);
            // A tear cuts records the checkpoint includes only if its segment could hold
            // some: not a segment whose creation after the checkpoint was cut short (a
            // checkpoint starts a new segment, which may hold nothing yet).
            if let Some(torn) = &log.torn
                && log.last_lsn.unwrap_or(0) < checkpoint
                && segment::parse_name(&torn.segment).is_none_or(|first| first <= checkpoint)
            {
                report.problems.push(Problem {
                    location: format!("{} at offset {}", torn.segment, torn.offset),
                    what: format!(
                        "{}: the log ends at LSN {} but the index checkpoint includes LSN {checkpoint}",
                        torn.reason,
                        log.last_lsn.unwrap_or(0)
                    ),
                });
            }
            report.torn_tail = log.torn;
        }
    }

    // Recovered or not, the index holds its checkpoint's state (a crash rolls it back to
    // its last durable commit, which is a checkpoint).
    if log_complete {
        let now = to_nanos(SystemTime::now());
        for (key, logged) in covered {
            let location = format!("{INDEX_FILE} key {}", describe(&key));
            match (logged, indexed.get(&key)) {
                (Some(logged), Some(stored)) if &logged == stored => {}
                (None, None) => {}
                (Some(logged), None) => {
                    // TTL compaction removes expired records without logging it.
                    let expired = Entry::decode(&key, &logged, &|| location.clone())
                        .map(|e| !e.is_live(now))
                        .unwrap_or(false);
                    if !expired {
                        report.problems.push(Problem {
                            location,
                            what: "a live record in the log is missing from the index".into(),
                        });
                    }
                }
                (None, Some(_)) => report.problems.push(Problem {
                    location,
                    what: "the log deleted this key but the index still holds it".into(),
                }),
                (Some(_), Some(_)) => report.problems.push(Problem {
                    location,
                    what: "the index record differs from the last logged state".into(),
                }),
            }
        }
    }
    Ok(report)
}
