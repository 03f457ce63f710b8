//! The decision table, as pure functions: given a key's current entry, a request and the time,
//! what happens. No I/O here, so that any backend (this crate's log and index today, others
//! later) makes the same decisions.
//!
//! | state of the key | same fingerprint | other fingerprint |
//! |---|---|---|
//! | absent (never seen, released, removed, or past `expires_at`) | claim, attempt 1 | claim, attempt 1 |
//! | in progress, lease live | in progress | mismatch |
//! | in progress, lease lapsed (or the claim is from before an open that lapsed claims) | take over: attempt + 1 | mismatch |
//! | completed, within retention | replay | mismatch |

use crate::key::Fingerprint;
use crate::record::{Body, Entry, Outcome};

/// Lease and retention, in nanoseconds; and the first fencing token of this handle when the
/// claims of earlier handles lapsed at open (`Options::lapse_claims_on_open`), else 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub lease: u64,
    pub retention: u64,
    pub lapsed_below: u64,
}

/// What `begin` decides.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BeginDecision {
    /// Write a new claim with this attempt number.
    Claim { attempt: u32 },
    /// Replay the stored outcome.
    Replay(Outcome),
    /// Another claim holds the key.
    InProgress { lease_expires_at: u64, attempt: u32 },
    /// The key was used with another request.
    Mismatch { stored: Fingerprint },
}

/// The live entry, or `None` if there is none or it has expired at `now`.
pub(crate) fn live(current: Option<&Entry>, now: u64) -> Option<&Entry> {
    current.filter(|e| e.is_live(now))
}

pub(crate) fn begin(
    current: Option<&Entry>,
    request: Fingerprint,
    now: u64,
    policy: Policy,
) -> BeginDecision {
    let Some(entry) = live(current, now) else {
        return BeginDecision::Claim { attempt: 1 };
    };
    if entry.fingerprint != request {
        return BeginDecision::Mismatch {
            stored: entry.fingerprint,
        };
    }
    match &entry.body {
        Body::InProgress { lease_expires_at }
            if now < *lease_expires_at && entry.token >= policy.lapsed_below =>
        {
            BeginDecision::InProgress {
                lease_expires_at: *lease_expires_at,
                attempt: entry.attempt,
            }
        }
        Body::InProgress { .. } => BeginDecision::Claim {
            attempt: entry.attempt.saturating_add(1),
        },
        Body::Completed { .. } => match entry.outcome() {
            Some(outcome) => BeginDecision::Replay(outcome),
            None => BeginDecision::Claim { attempt: 1 },
        },
    }
}

/// The entry a new claim writes.
pub(crate) fn claim_entry(
    request: Fingerprint,
    token: u64,
    attempt: u32,
    now: u64,
    policy: Policy,
) -> Entry {
    let lease_expires_at = now.saturating_add(policy.lease);
    Entry {
        fingerprint: request,
        token,
        attempt,
        expires_at: lease_expires_at.saturating_add(policy.retention),
        body: Body::InProgress { lease_expires_at },
    }
}

/// What a claim holder's `complete`, `release` or `extend` does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HolderDecision {
    /// Write this entry (`None`: delete the key).
    Write(Option<Entry>),
    /// `complete` was already applied with this token: return its outcome, write nothing.
    AlreadyCompleted(Outcome),
    /// The token is not the key's current claim.
    Lost,
}

/// The entry of the live claim held by `token`, if that is the key's current state.
fn held(current: Option<&Entry>, token: u64, now: u64) -> Option<(&Entry, u64)> {
    match live(current, now) {
        Some(
            e @ Entry {
                body: Body::InProgress { lease_expires_at },
                ..
            },
        ) if e.token == token => Some((e, *lease_expires_at)),
        _ => None,
    }
}

pub(crate) fn complete(
    current: Option<&Entry>,
    token: u64,
    outcome: &[u8],
    now: u64,
    policy: Policy,
) -> HolderDecision {
    if let Some((entry, _)) = held(current, token, now) {
        return HolderDecision::Write(Some(Entry {
            fingerprint: entry.fingerprint,
            token,
            attempt: entry.attempt,
            expires_at: now.saturating_add(policy.retention),
            body: Body::Completed {
                completed_at: now,
                data: outcome.to_vec(),
            },
        }));
    }
    match live(current, now) {
        Some(entry) if entry.token == token => match entry.outcome() {
            Some(outcome) => HolderDecision::AlreadyCompleted(outcome),
            None => HolderDecision::Lost,
        },
        _ => HolderDecision::Lost,
    }
}

pub(crate) fn release(current: Option<&Entry>, token: u64, now: u64) -> HolderDecision {
    match held(current, token, now) {
        Some(_) => HolderDecision::Write(None),
        None => HolderDecision::Lost,
    }
}

/// The lease runs until `now + by`, never shorter than it already was.
pub(crate) fn extend(
    current: Option<&Entry>,
    token: u64,
    by: u64,
    now: u64,
    policy: Policy,
) -> HolderDecision {
    match held(current, token, now) {
        Some((entry, lease)) => {
            let lease_expires_at = lease.max(now.saturating_add(by));
            HolderDecision::Write(Some(Entry {
                expires_at: lease_expires_at.saturating_add(policy.retention),
                body: Body::InProgress { lease_expires_at },
                ..entry.clone()
            }))
        }
        None => HolderDecision::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        lease: 10,
        retention: 100,
        lapsed_below: 0,
    };

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::of(s.as_bytes())
    }

    #[test]
    fn claims_from_before_an_open_that_lapsed_them_are_taken_over_at_once() {
        let old = claim_entry(fp("a"), 5, 1, 0, POLICY);
        let lapsing = Policy {
            lapsed_below: 6,
            ..POLICY
        };
        assert_eq!(
            begin(Some(&old), fp("a"), 1, lapsing),
            BeginDecision::Claim { attempt: 2 },
            "token 5 is from before the open: its live lease no longer holds the key"
        );
        let new = claim_entry(fp("a"), 6, 2, 1, POLICY);
        assert!(matches!(
            begin(Some(&new), fp("a"), 2, lapsing),
            BeginDecision::InProgress { attempt: 2, .. }
        ));
        assert!(matches!(
            begin(Some(&old), fp("b"), 1, lapsing),
            BeginDecision::Mismatch { .. }
        ));
        // Its holder may still finish it until someone takes the key over.
        assert!(matches!(
            complete(Some(&old), 5, b"out", 1, lapsing),
            HolderDecision::Write(Some(_))
        ));
    }

    #[test]
    fn table() {
        let claim = claim_entry(fp("a"), 5, 1, 0, POLICY);
        assert_eq!(
            begin(None, fp("a"), 0, POLICY),
            BeginDecision::Claim { attempt: 1 }
        );
        assert_eq!(
            begin(Some(&claim), fp("a"), 9, POLICY),
            BeginDecision::InProgress {
                lease_expires_at: 10,
                attempt: 1
            }
        );
        assert!(matches!(
            begin(Some(&claim), fp("b"), 9, POLICY),
            BeginDecision::Mismatch { .. }
        ));
        assert_eq!(
            begin(Some(&claim), fp("a"), 10, POLICY),
            BeginDecision::Claim { attempt: 2 }
        );
        assert!(matches!(
            begin(Some(&claim), fp("b"), 10, POLICY),
            BeginDecision::Mismatch { .. }
        ));
        // An abandoned claim leaves the store lease + retention after it was taken.
        assert_eq!(
            begin(Some(&claim), fp("b"), 110, POLICY),
            BeginDecision::Claim { attempt: 1 }
        );

        let HolderDecision::Write(Some(done)) = complete(Some(&claim), 5, b"out", 3, POLICY) else {
            panic!("holder could not complete");
        };
        assert!(
            matches!(begin(Some(&done), fp("a"), 102, POLICY), BeginDecision::Replay(o) if o.data() == b"out")
        );
        assert!(matches!(
            begin(Some(&done), fp("b"), 102, POLICY),
            BeginDecision::Mismatch { .. }
        ));
        assert_eq!(
            begin(Some(&done), fp("b"), 103, POLICY),
            BeginDecision::Claim { attempt: 1 }
        );
    }

    #[test]
    fn only_the_current_token_may_act() {
        let claim = claim_entry(fp("a"), 5, 1, 0, POLICY);
        assert_eq!(
            complete(Some(&claim), 4, b"x", 1, POLICY),
            HolderDecision::Lost
        );
        assert_eq!(release(Some(&claim), 6, 1), HolderDecision::Lost);
        assert_eq!(extend(Some(&claim), 4, 5, 1, POLICY), HolderDecision::Lost);
        assert_eq!(release(Some(&claim), 5, 1), HolderDecision::Write(None));
        assert_eq!(release(None, 5, 1), HolderDecision::Lost);
    }

    #[test]
    fn complete_twice_returns_the_first_outcome() {
        let claim = claim_entry(fp("a"), 5, 1, 0, POLICY);
        let HolderDecision::Write(Some(done)) = complete(Some(&claim), 5, b"first", 1, POLICY)
        else {
            panic!("holder could not complete");
        };
        match complete(Some(&done), 5, b"second", 2, POLICY) {
            HolderDecision::AlreadyCompleted(o) => assert_eq!(o.data(), b"first"),
            other => panic!("expected AlreadyCompleted, got {other:?}"),
        }
        assert_eq!(release(Some(&done), 5, 2), HolderDecision::Lost);
    }

    #[test]
    fn extend_never_shortens_a_lease() {
        let claim = claim_entry(fp("a"), 5, 1, 0, POLICY);
        let HolderDecision::Write(Some(longer)) = extend(Some(&claim), 5, 50, 5, POLICY) else {
            panic!("holder could not extend");
        };
        assert_eq!(
            longer.body,
            Body::InProgress {
                lease_expires_at: 55
            }
        );
        assert_eq!(longer.expires_at, 155);
        let HolderDecision::Write(Some(same)) = extend(Some(&longer), 5, 1, 6, POLICY) else {
            panic!("holder could not extend");
        };
        assert_eq!(
            same.body,
            Body::InProgress {
                lease_expires_at: 55
            }
        );
    }
}
