//! What the store must answer: the decision table of the crate documentation restated over the
//! model's view of one key, written without looking at the store's own code paths.
//!
//! | state of the key | same request | other request |
//! |---|---|---|
//! | absent (never seen, released, removed, past `expires_at`) | claim, attempt 1 | claim, attempt 1 |
//! | in progress, lease live | in progress | mismatch |
//! | in progress, lease lapsed | take over: attempt + 1 | mismatch |
//! | completed, within retention | replay | mismatch |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idemstore::{Fingerprint, Outcome, Record, RecordState};

use super::format::nanos;

/// The lease every model store is opened with.
pub const LEASE: Duration = Duration::from_secs(10);
/// The retention every model store is opened with.
pub const RETENTION: Duration = Duration::from_secs(100);
/// Requests are `request-0` .. `request-{REQUESTS - 1}`.
pub const REQUESTS: usize = 3;
/// Where the model clock starts.
pub const START: Duration = Duration::from_secs(1_700_000_000);

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("durations fit u64 nanoseconds")
}

pub fn start_time() -> SystemTime {
    UNIX_EPOCH + START
}

/// The request bytes a model client sends.
pub fn request(r: u8) -> Vec<u8> {
    format!("request-{r}").into_bytes()
}

/// Which model request has this fingerprint.
pub fn request_of(fingerprint: Fingerprint) -> Option<u8> {
    (0..REQUESTS as u8).find(|r| Fingerprint::of(&request(*r)) == fingerprint)
}

/// One key's state as the model holds it. Times are ns since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub request: u8,
    pub token: u64,
    pub attempt: u32,
    pub expires_at: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    InProgress { lease_expires_at: u64 },
    Completed { at: u64, data: Vec<u8> },
}

impl State {
    pub fn live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The model's view of a record the store returned (`None`: a request no client sent).
    pub fn of(record: &Record) -> Option<State> {
        let request = request_of(record.fingerprint())?;
        let expires_at = nanos(record.expires_at());
        Some(match record.state() {
            RecordState::InProgress {
                token,
                attempt,
                lease_expires_at,
            } => State {
                request,
                token,
                attempt,
                expires_at,
                body: Body::InProgress {
                    lease_expires_at: nanos(lease_expires_at),
                },
            },
            RecordState::Completed(o) => State {
                request,
                ..State::of_outcome(&o, request)
            },
            other => panic!("a record state the model does not know: {other:?}"),
        })
    }

    /// The state an outcome stands for, given the request it answered.
    pub fn of_outcome(o: &Outcome, request: u8) -> State {
        State {
            request,
            token: o.token(),
            attempt: o.attempt(),
            expires_at: nanos(o.expires_at()),
            body: Body::Completed {
                at: nanos(o.completed_at()),
                data: o.data().to_vec(),
            },
        }
    }

    pub fn is_in_progress(&self) -> bool {
        matches!(self.body, Body::InProgress { .. })
    }
}

/// What `begin` must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginExpect {
    Claim { attempt: u32 },
    Replay(State),
    InProgress { lease_expires_at: u64, attempt: u32 },
    Mismatch { stored: u8 },
}

pub fn begin(current: Option<&State>, request: u8, now: u64) -> BeginExpect {
    let Some(s) = current.filter(|s| s.live(now)) else {
        return BeginExpect::Claim { attempt: 1 };
    };
    if s.request != request {
        return BeginExpect::Mismatch { stored: s.request };
    }
    match s.body {
        Body::InProgress { lease_expires_at } if now < lease_expires_at => {
            BeginExpect::InProgress {
                lease_expires_at,
                attempt: s.attempt,
            }
        }
        Body::InProgress { .. } => BeginExpect::Claim {
            attempt: s.attempt.saturating_add(1),
        },
        Body::Completed { .. } => BeginExpect::Replay(s.clone()),
    }
}

/// The state a new claim writes.
pub fn claim(request: u8, token: u64, attempt: u32, now: u64) -> State {
    let lease_expires_at = now + ns(LEASE);
    State {
        request,
        token,
        attempt,
        expires_at: lease_expires_at + ns(RETENTION),
        body: Body::InProgress { lease_expires_at },
    }
}

/// What a claim holder's call must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderExpect {
    /// Write this state (`None`: the key becomes absent).
    Write(Option<State>),
    /// `complete` again: return the stored outcome, write nothing.
    Already(State),
    Lost,
}

/// The live claim `token` holds, if it is the key's current state.
fn held(current: Option<&State>, token: u64, now: u64) -> Option<&State> {
    current.filter(|s| s.live(now) && s.token == token && s.is_in_progress())
}

pub fn complete(current: Option<&State>, token: u64, data: &[u8], now: u64) -> HolderExpect {
    if let Some(s) = held(current, token, now) {
        return HolderExpect::Write(Some(completed(s, data, now)));
    }
    match current.filter(|s| s.live(now) && s.token == token) {
        Some(s) if !s.is_in_progress() => HolderExpect::Already(s.clone()),
        _ => HolderExpect::Lost,
    }
}

/// The state `claim` is completed into.
pub fn completed(claim: &State, data: &[u8], now: u64) -> State {
    State {
        request: claim.request,
        token: claim.token,
        attempt: claim.attempt,
        expires_at: now + ns(RETENTION),
        body: Body::Completed {
            at: now,
            data: data.to_vec(),
        },
    }
}

pub fn release(current: Option<&State>, token: u64, now: u64) -> HolderExpect {
    match held(current, token, now) {
        Some(_) => HolderExpect::Write(None),
        None => HolderExpect::Lost,
    }
}

/// The lease runs until `now + by`, never shorter than it was.
pub fn extend(current: Option<&State>, token: u64, by: Duration, now: u64) -> HolderExpect {
    let Some(s) = held(current, token, now) else {
        return HolderExpect::Lost;
    };
    let Body::InProgress { lease_expires_at } = s.body else {
        return HolderExpect::Lost;
    };
    let lease_expires_at = lease_expires_at.max(now + ns(by));
    HolderExpect::Write(Some(State {
        expires_at: lease_expires_at + ns(RETENTION),
        body: Body::InProgress { lease_expires_at },
        ..s.clone()
    }))
}
