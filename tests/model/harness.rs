//! The crash and I/O-fault model. Logical clients drive a store on a [`SimDisk`] while the
//! model (a `BTreeMap` of what was acknowledged) predicts every answer. Power cuts and injected
//! errors strike where the input says; after every reopen the store must hold exactly what the
//! model holds, except that a key whose write returned an error may show that write's effect.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Duration;

use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{
    Acknowledgement, Begin, Claim, Clock, Durability, Error, Key, ManualClock, Options, Outcome,
    Record, Store,
};

use super::Tally;
use super::format::nanos;
use super::input::Input;
use super::store_model::{self as m, BeginExpect, Body, HolderExpect, State};

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Power cuts between and inside operations (a sticky fault stops the disk mid-call, then
    /// the power goes), sometimes again during recovery.
    Crash,
    /// EIO and ENOSPC, sticky or once, on every mutating call; the handle must refuse writes
    /// after a failure; then a restart with or without a power cut.
    IoFaults,
}

const KEYS: usize = 6;
const CLIENTS: usize = 3;
const MAX_HELD: usize = 3;
/// Operations per run, so that a long input cannot run for long.
const MAX_OPS: u64 = 250;
const FAULT_OPS: [Op; 6] = [
    Op::Write,
    Op::Sync,
    Op::SetLen,
    Op::Remove,
    Op::SyncDir,
    Op::Open,
];

#[derive(Debug, Clone, Copy)]
enum Action {
    Begin,
    Complete,
    Release,
    Extend,
    Remove,
    Purge,
    Advance,
    Sync,
    Checkpoint,
    Get,
    Crash,
    Fault,
    Burst,
    Restart,
}

const CRASH_MIX: [(Action, u8); 14] = [
    (Action::Begin, 50),
    (Action::Complete, 45),
    (Action::Release, 12),
    (Action::Extend, 12),
    (Action::Remove, 10),
    (Action::Purge, 8),
    (Action::Advance, 24),
    (Action::Sync, 8),
    (Action::Checkpoint, 12),
    (Action::Get, 16),
    (Action::Crash, 16),
    (Action::Fault, 14),
    (Action::Burst, 14),
    (Action::Restart, 6),
];

const IO_MIX: [(Action, u8); 14] = [
    (Action::Begin, 50),
    (Action::Complete, 45),
    (Action::Release, 12),
    (Action::Extend, 12),
    (Action::Remove, 10),
    (Action::Purge, 8),
    (Action::Advance, 24),
    (Action::Sync, 8),
    (Action::Checkpoint, 12),
    (Action::Get, 10),
    (Action::Crash, 6),
    (Action::Fault, 32),
    (Action::Burst, 14),
    (Action::Restart, 6),
];

/// What may have become of a key whose write returned an error.
#[derive(Debug, Clone)]
enum InFlight {
    /// The write's new state (`None`: absent), had it reached the disk.
    Exactly(Option<State>),
    /// A claim whose token the caller never learned: `state` with any token above `above`.
    Claim { state: State, above: u64 },
}

impl InFlight {
    fn admits(&self, got: Option<&State>, now: u64) -> bool {
        match self {
            InFlight::Exactly(s) => s.as_ref().filter(|s| s.live(now)) == got,
            InFlight::Claim { state, above } => got.is_some_and(|g| {
                g.token > *above
                    && *g
                        == State {
                            token: g.token,
                            ..state.clone()
                        }
            }),
        }
    }
}

/// Runs the model over `data`; panics on the first disagreement.
pub fn run(flavor: Flavor, data: &[u8]) -> Tally {
    let mut h = Harness::new(flavor, data);
    h.recover();
    while !h.input.is_empty() && h.tally.ops < MAX_OPS {
        h.step();
    }
    h.finish();
    h.tally
}

struct Harness<'a> {
    input: Input<'a>,
    flavor: Flavor,
    disk: SimDisk,
    clock: ManualClock,
    options: Options,
    /// `Durability::Immediate`: acknowledged writes survive power loss, not just a kill.
    power_safe: bool,
    store: Option<Store>,
    keys: Vec<Key>,
    /// Every key's acknowledged state (expired ones until purged).
    model: BTreeMap<Key, State>,
    /// Writes that returned an error since the last recovery.
    in_flight: Vec<(Key, InFlight)>,
    clients: Vec<Vec<Claim>>,
    /// The highest fencing token any caller has seen.
    max_token: u64,
    /// Whether an injected fault may still fire.
    faults: bool,
    /// Whether the index holds no expired record the model does not know of (false after a
    /// reopen: compaction is not logged, so a crash brings purged records back, expired).
    purge_exact: bool,
    fresh: u64,
    tally: Tally,
    /// `IDEMSTORE_MODEL_TRACE=1`: print every step, to turn a failing seed into a repro.
    trace: bool,
}

impl<'a> Harness<'a> {
    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[model] {}", what());
        }
    }

    fn new(flavor: Flavor, data: &'a [u8]) -> Harness<'a> {
        let mut input = Input::new(data);
        let clock = ManualClock::new(m::start_time());
        let power_safe = input.chance(224);
        let options = super::options(&clock)
            .durability(if power_safe {
                Durability::Immediate
            } else {
                Durability::None
            })
            .checkpoint_bytes(input.pick(&[700, 4096, 1 << 20]))
            .segment_size(input.pick(&[4096, 8192, 1 << 20]));
        let keys = (0..KEYS)
            .map(|k| Key::new("model", format!("key-{k}"), "POST /op").expect("valid key"))
            .collect();
        Harness {
            input,
            flavor,
            disk: SimDisk::new("model"),
            clock,
            options,
            power_safe,
            store: None,
            keys,
            model: BTreeMap::new(),
            in_flight: Vec::new(),
            clients: vec![Vec::new(); CLIENTS],
            max_token: 0,
            faults: false,
            purge_exact: false,
            fresh: 0,
            tally: Tally {
                runs: 1,
                ..Tally::default()
            },
            trace: std::env::var_os("IDEMSTORE_MODEL_TRACE").is_some(),
        }
    }

    fn now(&self) -> u64 {
        nanos(self.clock.now())
    }

    fn store(&self) -> Store {
        self.store.clone().expect("the store is open")
    }

    /// Makes a store call the blocking way or, every other operation (no input is spent on
    /// the choice, so a seed means what it meant before), the asynchronous way: the answers
    /// and the disk's calls must be the same.
    fn call<T>(
        &mut self,
        blocking: impl FnOnce(&Store) -> Result<T, Error>,
        asynchronous: impl FnOnce(&Store) -> Acknowledgement<T>,
    ) -> Result<T, Error> {
        let store = self.store();
        if self.tally.ops.is_multiple_of(2) {
            blocking(&store)
        } else {
            self.tally.asynchronous += 1;
            let got = super::block_on(asynchronous(&store));
            self.tally.asynchronous_failed += u64::from(got.is_err());
            got
        }
    }

    fn step(&mut self) {
        self.tally.ops += 1;
        let mix: &[(Action, u8)] = match self.flavor {
            Flavor::Crash => &CRASH_MIX,
            Flavor::IoFaults => &IO_MIX,
        };
        let total: usize = mix.iter().map(|(_, w)| usize::from(*w)).sum();
        let mut roll = self.input.below(total);
        let mut action = Action::Begin;
        for (a, w) in mix {
            if roll < usize::from(*w) {
                action = *a;
                break;
            }
            roll -= usize::from(*w);
        }
        self.trace(|| format!("{action:?}"));
        let result = match action {
            Action::Begin => self.begin(),
            Action::Complete => self.complete(),
            Action::Release => self.release(),
            Action::Extend => self.extend(),
            Action::Remove => self.remove(),
            Action::Purge => self.purge(),
            Action::Advance => {
                let secs = self
                    .input
                    .pick(&[0, 1, 2, 5, 9, 10, 11, 30, 60, 99, 101, 250]);
                self.clock.advance(Duration::from_secs(secs));
                Ok(())
            }
            Action::Sync => self.store().sync(),
            Action::Checkpoint => self.store().checkpoint(),
            Action::Get => self.get(),
            Action::Crash => {
                self.crash();
                Ok(())
            }
            Action::Fault => {
                self.inject_fault();
                Ok(())
            }
            Action::Burst => self.burst(),
            Action::Restart => {
                self.store = None; // a clean drop: checkpoints unless a fault stops it
                self.tally.restarts += 1;
                self.recover();
                Ok(())
            }
        };
        if let Err(e) = result {
            self.failed(&e, action);
        }
    }

    fn inject_fault(&mut self) {
        let sticky = self.flavor == Flavor::Crash || self.input.chance(128);
        let skip = self.input.below(if sticky { 8 } else { 24 }) as u64;
        let fault = Fault {
            op: self.input.pick(&FAULT_OPS),
            skip,
            error: self.input.pick(&[FaultError::Eio, FaultError::Enospc]),
            sticky,
        };
        self.trace(|| format!("inject {fault:?}"));
        self.disk.inject(fault);
        self.faults = true;
    }

    /// An operation failed: it must have been an injected fault, reported as I/O.
    fn failed(&mut self, e: &Error, action: Action) {
        self.trace(|| format!("{action:?} failed: {e}"));
        assert!(
            self.faults,
            "{action:?} failed though no fault was injected: {e}"
        );
        assert!(
            e.is_fatal(),
            "{action:?}: an injected I/O error surfaced as {e:?}"
        );
        self.tally.errors += 1;
        if self.flavor == Flavor::IoFaults && !matches!(action, Action::Purge | Action::Get) {
            self.check_refuses_writes(action, e);
        }
        if self.flavor == Flavor::Crash || self.input.chance(128) {
            self.crash();
        } else {
            self.store = None; // the process restarts; the page cache survives
            if self.input.chance(128) {
                self.disk.clear_faults();
                self.faults = false;
            }
            self.tally.restarts += 1;
            self.recover();
        }
    }

    /// After a failed write or sync, the handle writes nothing until reopened.
    fn check_refuses_writes(&mut self, action: Action, e: &Error) {
        let store = self.store();
        let key = self.fresh_key();
        let begun = store.begin(&key, &m::request(0));
        assert!(
            matches!(begun, Err(Error::PreviousIo { .. })),
            "after {action:?} failed with {e}, a new claim was not refused: {begun:?}"
        );
        let synced = store.sync();
        assert!(
            matches!(synced, Err(Error::PreviousIo { .. })),
            "after {action:?} failed with {e}, sync was not refused: {synced:?}"
        );
        let checkpointed = store.checkpoint();
        assert!(
            matches!(checkpointed, Err(Error::PreviousIo { .. })),
            "after {action:?} failed with {e}, checkpoint was not refused: {checkpointed:?}"
        );
        self.tally.refusals_checked += 1;
    }

    fn crash_mode(&mut self) -> CrashMode {
        if !self.power_safe {
            return CrashMode::KeepAll; // only a kill is survivable without syncs
        }
        match self.input.below(4) {
            0 => CrashMode::KeepAll,
            1 => CrashMode::DropUnsynced,
            _ => CrashMode::Random(self.input.u64()),
        }
    }

    /// Power fails now: the old handle fails every call, and the disk keeps what the mode says.
    fn crash(&mut self) {
        let mode = self.crash_mode();
        self.trace(|| format!("power cut {mode:?}"));
        self.disk.power_cut(mode);
        self.store = None;
        self.disk.clear_faults();
        self.faults = false;
        self.tally.crashes += 1;
        // A power cut damages nothing: `verify`, which checks the store as its recovery
        // will find it, must find it clean.
        match idemstore::verify(self.disk.clone()) {
            Ok(report) => assert!(report.is_clean(), "verify after {mode:?}: {report:?}"),
            Err(e) => panic!("verify after {mode:?} failed: {e}"),
        }
        self.recover();
    }

    /// Opens the store (sometimes crashing again while it recovers), checks it against the
    /// model, and checks that reopening again changes nothing.
    fn recover(&mut self) {
        // Not while the store is created: a crash there is `crash_model.rs`'s
        // `a_store_whose_creation_was_cut_short_opens_again`.
        if self.tally.opens > 0 && self.input.chance(48) {
            self.inject_fault();
        }
        let store = loop {
            self.tally.opens += 1;
            match self.options.clone().open_storage(self.disk.clone()) {
                // A fault injected for recovery that recovery did not reach is disarmed: the
                // checks below read, and a scan first applies the replayed log to the index.
                Ok(store) => {
                    self.disk.clear_faults();
                    self.faults = false;
                    break store;
                }
                Err(e) => {
                    self.trace(|| format!("open failed: {e}; files {:?}", self.disk.file_names()));
                    assert!(self.faults, "reopen failed with no fault injected: {e}");
                    assert!(
                        e.is_fatal(),
                        "reopen: an injected I/O error surfaced as {e:?}"
                    );
                    self.tally.recovery_crashes += 1;
                    if self.input.chance(160) {
                        let mode = self.crash_mode();
                        self.trace(|| format!("power cut during recovery {mode:?}"));
                        self.disk.power_cut(mode);
                    }
                    self.disk.clear_faults();
                    self.faults = false;
                }
            }
        };
        if store.recovery_report().torn_tail.is_some() {
            self.tally.torn_tails += 1;
        }
        self.trace(|| format!("opened: {:?}", store.recovery_report()));
        let report = store.recovery_report();
        assert_eq!(
            report.replayed,
            report.last_lsn.saturating_sub(report.checkpoint_lsn),
            "recovery replayed records the checkpoint covers, or skipped some: {report:?}"
        );
        // Every durable index commit saves redb's allocator state, and a crash rolls back to
        // one: no crash may cost a walk of the
        // whole index file on open.
        assert!(
            !report.index_repaired,
            "redb had to repair the whole index: {report:?}"
        );
        self.store = Some(store);
        self.check_against_model();
        if !self.faults && self.input.chance(96) {
            self.check_reopen_is_stable();
        }
    }

    /// The recovered store against the model: acknowledged state exactly, in-flight writes
    /// either way, nothing else; fencing tokens ahead of every token handed out.
    fn check_against_model(&mut self) {
        let store = self.store();
        let now = self.now();
        let found = dump(&store);
        let keys: BTreeSet<Key> = self
            .model
            .keys()
            .chain(found.keys())
            .chain(self.in_flight.iter().map(|(k, _)| k))
            .cloned()
            .collect();
        for key in keys {
            let got = found.get(&key).map(|r| {
                State::of(r).unwrap_or_else(|| panic!("{key}: a record no client wrote: {r:?}"))
            });
            let acknowledged = self.model.get(&key).filter(|s| s.live(now)).cloned();
            self.tally.keys_checked += 1;
            if got == acknowledged {
                continue;
            }
            let candidates: Vec<&InFlight> = self
                .in_flight
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, f)| f)
                .collect();
            assert!(
                candidates.iter().any(|c| c.admits(got.as_ref(), now)),
                "after recovery {key} is {got:?}; acknowledged: {acknowledged:?}; \
                 writes in flight: {candidates:?}"
            );
            self.tally.in_flight_applied += 1;
            match got {
                Some(s) => {
                    self.max_token = self.max_token.max(s.token);
                    self.model.insert(key, s);
                }
                None => {
                    self.model.remove(&key);
                }
            }
        }
        self.in_flight.clear();
        self.purge_exact = false;

        let next_token = store.stats().expect("stats").next_token;
        assert!(
            next_token > self.max_token,
            "the next fencing token {next_token} is not above {} already handed out",
            self.max_token
        );
        let open: BTreeSet<Key> = store
            .in_progress()
            .expect("in_progress")
            .iter()
            .map(|r| r.key().clone())
            .collect();
        let expected: BTreeSet<Key> = self
            .model
            .iter()
            .filter(|(_, s)| s.live(now) && s.is_in_progress())
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(open, expected, "in_progress() disagrees with the model");
    }

    /// Recovery is idempotent: a second power cut right after it brings back the same state,
    /// replaying the same records (recovery applies them to the index only afterwards, and
    /// not durably before a checkpoint) and cutting nothing.
    fn check_reopen_is_stable(&mut self) {
        let first = self.store().recovery_report();
        let before = dump(&self.store());
        let mode = self.crash_mode();
        self.disk.power_cut(mode);
        self.store = None;
        self.tally.opens += 1;
        let store = self
            .options
            .clone()
            .open_storage(self.disk.clone())
            .unwrap_or_else(|e| panic!("reopening a recovered store failed: {e}"));
        let report = store.recovery_report();
        assert_eq!(
            (report.replayed, report.last_lsn, report.checkpoint_lsn),
            (first.replayed, first.last_lsn, first.checkpoint_lsn),
            "a second recovery read another log: {report:?} after {first:?}"
        );
        assert!(
            report.torn_tail.is_none(),
            "a second recovery found a torn tail: {report:?}"
        );
        assert_eq!(dump(&store), before, "reopening twice differs from once");
        self.store = Some(store);
        self.tally.stable_reopens += 1;
    }

    /// The end of a run: one more power cut, then a clean close that must replay nothing.
    fn finish(&mut self) {
        self.crash();
        self.disk.clear_faults();
        self.faults = false;
        let store = self.store.take().expect("open");
        store.close().expect("close after recovery");
        let store = self
            .options
            .clone()
            .open_storage(self.disk.clone())
            .expect("reopen after close");
        assert_eq!(
            store.recovery_report().replayed,
            0,
            "a clean close left log to replay"
        );
        self.store = Some(store);
        self.check_against_model();
    }

    fn fresh_key(&mut self) -> Key {
        self.fresh += 1;
        Key::new("model", format!("fresh-{}", self.fresh), "POST /op").expect("valid key")
    }

    fn outcome_data(&mut self) -> Vec<u8> {
        self.fresh += 1;
        let len = match self.input.below(8) {
            0 => 0,
            1..=4 => 1 + self.input.below(40),
            5 | 6 => 100 + self.input.below(400),
            _ => 1000 + self.input.below(3000),
        };
        let pattern = format!("outcome-{}-", self.fresh);
        pattern.bytes().cycle().take(len).collect()
    }

    fn key(&mut self) -> Key {
        let k = self.input.below(KEYS);
        self.keys.get(k).expect("key index in range").clone()
    }

    /// A claim some client holds: (client, index).
    fn held_claim(&mut self) -> Option<(usize, usize)> {
        let client = self.input.below(CLIENTS);
        let held = self.clients.get(client)?.len();
        (held > 0).then(|| (client, self.input.below(held)))
    }

    fn claim_at(&self, (client, i): (usize, usize)) -> Claim {
        self.clients[client][i].clone()
    }

    fn drop_claim(&mut self, (client, i): (usize, usize)) {
        self.clients[client].remove(i);
    }

    fn begin(&mut self) -> Result<(), Error> {
        let client = self.input.below(CLIENTS);
        let key = self.key();
        let request = self.input.below(m::REQUESTS) as u8;
        let now = self.now();
        let expect = m::begin(self.model.get(&key), request, now);
        let request_bytes = m::request(request);
        let got = self.call(
            |s| s.begin(&key, &request_bytes),
            |s| s.begin_async(&key, &request_bytes),
        );
        match (got, &expect) {
            (Ok(Begin::Claimed(c)), BeginExpect::Claim { attempt }) => {
                assert_eq!(
                    c.attempt(),
                    *attempt,
                    "{key}: claimed with the wrong attempt"
                );
                self.handed_out(c.token());
                let state = m::claim(request, c.token(), *attempt, now);
                let Body::InProgress { lease_expires_at } = state.body else {
                    unreachable!("a claim is in progress")
                };
                assert_eq!(nanos(c.lease_expires_at()), lease_expires_at);
                self.model.insert(key, state);
                let held = &mut self.clients[client];
                if held.len() == MAX_HELD {
                    held.remove(0); // this client abandons its oldest claim
                }
                held.push(c);
            }
            (Ok(Begin::Completed(o)), BeginExpect::Replay(s)) => {
                assert_eq!(&State::of_outcome(&o, request), s, "{key}: wrong replay");
            }
            (
                Ok(Begin::InProgress {
                    lease_expires_at,
                    attempt,
                    ..
                }),
                BeginExpect::InProgress {
                    lease_expires_at: lease,
                    attempt: a,
                },
            ) => {
                assert_eq!((nanos(lease_expires_at), attempt), (*lease, *a), "{key}");
            }
            (Ok(Begin::Mismatch { stored, .. }), BeginExpect::Mismatch { stored: r }) => {
                assert_eq!(
                    m::request_of(stored),
                    Some(*r),
                    "{key}: wrong stored request"
                );
            }
            (Err(e), expect) if e.is_fatal() => {
                if let BeginExpect::Claim { attempt } = expect {
                    let state = m::claim(request, 0, *attempt, now);
                    let above = self.max_token;
                    self.in_flight.push((key, InFlight::Claim { state, above }));
                }
                return Err(e);
            }
            (got, expect) => panic!("begin {key}: the store answered {got:?}, expected {expect:?}"),
        }
        Ok(())
    }

    fn handed_out(&mut self, token: u64) {
        assert!(
            token > self.max_token,
            "fencing token {token} handed out after {}",
            self.max_token
        );
        self.max_token = token;
    }

    fn complete(&mut self) -> Result<(), Error> {
        let Some(at) = self.held_claim() else {
            return self.begin();
        };
        let claim = self.claim_at(at);
        let data = self.outcome_data();
        let now = self.now();
        let key = claim.key().clone();
        let expect = m::complete(self.model.get(&key), claim.token(), &data, now);
        let got = self.call(
            |s| s.complete(&claim, &data),
            |s| s.complete_async(&claim, &data),
        );
        match (got, expect) {
            (Ok(o), HolderExpect::Write(Some(s))) => {
                assert_eq!(State::of_outcome(&o, s.request), s, "{key}: wrong outcome");
                self.model.insert(key, s);
            }
            (Ok(o), HolderExpect::Already(s)) => {
                assert_eq!(
                    State::of_outcome(&o, s.request),
                    s,
                    "{key}: not the first outcome"
                );
            }
            (Err(Error::ClaimLost { token }), HolderExpect::Lost) => {
                assert_eq!(token, claim.token());
            }
            (Err(e), expect) if e.is_fatal() => {
                if let HolderExpect::Write(s) = expect {
                    self.in_flight.push((key, InFlight::Exactly(s)));
                }
                return Err(e);
            }
            (got, expect) => {
                panic!("complete {key}: the store answered {got:?}, expected {expect:?}")
            }
        }
        if self.input.chance(192) {
            self.drop_claim(at);
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), Error> {
        let Some(at) = self.held_claim() else {
            return Ok(());
        };
        let claim = self.claim_at(at);
        let key = claim.key().clone();
        let expect = m::release(self.model.get(&key), claim.token(), self.now());
        let got = self.call(|s| s.release(&claim), |s| s.release_async(&claim));
        self.holder_result(key, got.map(|()| None), expect, "release")?;
        self.drop_claim(at);
        Ok(())
    }

    fn extend(&mut self) -> Result<(), Error> {
        let Some(at) = self.held_claim() else {
            return Ok(());
        };
        let claim = self.claim_at(at);
        let key = claim.key().clone();
        let by = Duration::from_secs(self.input.pick(&[1, 5, 30]));
        let expect = m::extend(self.model.get(&key), claim.token(), by, self.now());
        let got = self.call(|s| s.extend(&claim, by), |s| s.extend_async(&claim, by));
        self.holder_result(key, got.map(|t| Some(nanos(t))), expect, "extend")
    }

    /// Checks the answer of `release` (`Ok(None)`) or `extend` (`Ok(Some(lease))`).
    fn holder_result(
        &mut self,
        key: Key,
        got: Result<Option<u64>, Error>,
        expect: HolderExpect,
        what: &str,
    ) -> Result<(), Error> {
        match (got, expect) {
            (Ok(None), HolderExpect::Write(None)) => {
                self.model.remove(&key);
            }
            (Ok(Some(lease)), HolderExpect::Write(Some(s))) => {
                assert_eq!(
                    s.body,
                    Body::InProgress {
                        lease_expires_at: lease
                    },
                    "{what} {key}: wrong lease"
                );
                self.model.insert(key, s);
            }
            (Err(Error::ClaimLost { .. }), HolderExpect::Lost) => {}
            (Err(e), expect) if e.is_fatal() => {
                if let HolderExpect::Write(s) = expect {
                    self.in_flight.push((key, InFlight::Exactly(s)));
                }
                return Err(e);
            }
            (got, expect) => {
                panic!("{what} {key}: the store answered {got:?}, expected {expect:?}")
            }
        }
        Ok(())
    }

    fn remove(&mut self) -> Result<(), Error> {
        let key = self.key();
        let now = self.now();
        let live = self.model.get(&key).is_some_and(|s| s.live(now));
        match self.call(|s| s.remove(&key), |s| s.remove_async(&key)) {
            Ok(removed) => {
                assert_eq!(removed, live, "remove {key}");
                if removed {
                    self.model.remove(&key);
                }
                Ok(())
            }
            Err(e) => {
                if live {
                    self.in_flight.push((key, InFlight::Exactly(None)));
                }
                Err(e)
            }
        }
    }

    fn purge(&mut self) -> Result<(), Error> {
        let now = self.now();
        let expired = self.model.values().filter(|s| !s.live(now)).count() as u64;
        let purged = match self.store().purge_expired() {
            Ok(purged) => purged,
            Err(e) => {
                // A purge that failed part-way may have removed any of the records expired
                // now, for good if a checkpoint or clean close followed: they are invisible
                // either way, and the next purge may count fewer (or, after a replay, more).
                self.model.retain(|_, s| s.live(now));
                self.purge_exact = false;
                return Err(e);
            }
        };
        if self.purge_exact {
            assert_eq!(purged, expired, "purge_expired removed the wrong number");
        } else {
            assert!(purged >= expired, "purge_expired missed expired records");
        }
        self.model.retain(|_, s| s.live(now));
        self.purge_exact = true;
        Ok(())
    }

    fn get(&mut self) -> Result<(), Error> {
        let key = self.key();
        let now = self.now();
        let got = self.store().get(&key)?;
        let expected = self.model.get(&key).filter(|s| s.live(now));
        assert_eq!(
            got.as_ref().and_then(State::of).as_ref(),
            expected,
            "get {key}"
        );
        Ok(())
    }

    /// Several threads claim and complete fresh keys at once: group commit under faults.
    fn burst(&mut self) -> Result<(), Error> {
        let n = 2 + self.input.below(4);
        let now = self.now();
        let jobs: Vec<(Key, Vec<u8>)> = (0..n)
            .map(|_| (self.fresh_key(), self.outcome_data()))
            .collect();
        let store = self.store();
        type Answer = (Result<Begin, Error>, Option<Result<Outcome, Error>>);
        let answers: Vec<Answer> = thread::scope(|s| {
            let threads: Vec<_> = jobs
                .iter()
                .map(|(key, data)| {
                    let store = &store;
                    s.spawn(move || {
                        let begun = store.begin(key, &m::request(0));
                        let completed = match &begun {
                            Ok(Begin::Claimed(c)) => Some(store.complete(c, data)),
                            _ => None,
                        };
                        (begun, completed)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("burst thread"))
                .collect()
        });
        drop(store);
        let above = self.max_token;
        let mut tokens = BTreeSet::new();
        let mut failure = None;
        for ((key, data), (begun, completed)) in jobs.into_iter().zip(answers) {
            match begun {
                Ok(Begin::Claimed(c)) => {
                    assert!(c.token() > above, "burst token {} after {above}", c.token());
                    assert!(
                        tokens.insert(c.token()),
                        "token {} handed out twice",
                        c.token()
                    );
                    assert_eq!(c.attempt(), 1);
                    let claimed = m::claim(0, c.token(), 1, now);
                    let done = m::completed(&claimed, &data, now);
                    match completed.expect("a claim is completed") {
                        Ok(o) => {
                            assert_eq!(State::of_outcome(&o, 0), done, "{key}: wrong outcome");
                            self.model.insert(key, done);
                        }
                        Err(e) => {
                            self.model.insert(key.clone(), claimed);
                            self.in_flight.push((key, InFlight::Exactly(Some(done))));
                            failure.get_or_insert(e);
                        }
                    }
                }
                Ok(other) => panic!("a fresh key {key} was not claimed: {other:?}"),
                Err(e) => {
                    let state = m::claim(0, 0, 1, now);
                    self.in_flight.push((key, InFlight::Claim { state, above }));
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(last) = tokens.last() {
            self.max_token = self.max_token.max(*last);
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Every live record, by key.
pub fn dump(store: &Store) -> BTreeMap<Key, Record> {
    let mut out = BTreeMap::new();
    store
        .for_each(|r| {
            out.insert(r.key().clone(), r);
        })
        .expect("for_each");
    out
}
