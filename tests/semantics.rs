//! Every row of the decision table, leases, takeover and fencing, through the public API.

mod common;

use std::time::Duration;

use common::{claim, clock, completed, key, sim_store};
use idemstore::storage::SimDisk;
use idemstore::{Begin, Error, Fingerprint, Key, RecordState};

#[test]
fn absent_key_is_claimed_with_attempt_one() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    assert_eq!(c.attempt(), 1);
    assert_eq!(c.key(), &key(1));
    assert_eq!(c.lease_expires_at(), clock.now_plus(10));
    assert_eq!(c.fingerprint(), Fingerprint::of(b"req"));
}

trait NowPlus {
    fn now_plus(&self, secs: u64) -> std::time::SystemTime;
}
impl NowPlus for idemstore::ManualClock {
    fn now_plus(&self, secs: u64) -> std::time::SystemTime {
        use idemstore::Clock;
        self.now() + Duration::from_secs(secs)
    }
}

#[test]
fn live_claim_same_request_is_in_progress_other_is_mismatch() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    match store.begin(&key(1), b"req").unwrap() {
        Begin::InProgress {
            lease_expires_at,
            attempt,
            ..
        } => {
            assert_eq!(lease_expires_at, c.lease_expires_at());
            assert_eq!(attempt, 1);
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
    match store.begin(&key(1), b"other").unwrap() {
        Begin::Mismatch { stored, .. } => assert_eq!(stored, Fingerprint::of(b"req")),
        other => panic!("expected Mismatch, got {other:?}"),
    }
}

#[test]
fn lapsed_claim_is_taken_over_with_new_token_and_next_attempt() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let first = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(10));
    assert!(matches!(
        store.begin(&key(1), b"other").unwrap(),
        Begin::Mismatch { .. }
    ));
    let second = claim(&store, &key(1), b"req");
    assert_eq!(second.attempt(), 2);
    assert!(second.token() > first.token());
    // The superseded holder can no longer act.
    assert!(matches!(
        store.complete(&first, b"late"),
        Err(Error::ClaimLost { token }) if token == first.token()
    ));
    assert!(matches!(
        store.release(&first),
        Err(Error::ClaimLost { .. })
    ));
    assert!(matches!(
        store.extend(&first, Duration::from_secs(5)),
        Err(Error::ClaimLost { .. })
    ));
    // ...and changed nothing: the new holder completes.
    let outcome = store.complete(&second, b"done").unwrap();
    assert_eq!(outcome.attempt(), 2);
    assert_eq!(completed(&store, &key(1), b"req").data(), b"done");
}

#[test]
fn completed_key_replays_same_request_and_rejects_other() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(1));
    let stored = store.complete(&c, b"outcome").unwrap();
    assert_eq!(stored.data(), b"outcome");
    assert_eq!(stored.completed_at(), clock.now_plus(0));
    assert_eq!(stored.expires_at(), clock.now_plus(100));
    let replay = completed(&store, &key(1), b"req");
    assert_eq!(replay, stored);
    assert!(matches!(
        store.begin(&key(1), b"other").unwrap(),
        Begin::Mismatch { .. }
    ));
    // `get` shows the same outcome, copied or moved out.
    let record = store.get(&key(1)).unwrap().expect("completed");
    assert_eq!(record.outcome().as_ref(), Some(&stored));
    assert_eq!(record.into_outcome(), Some(stored));
    let in_progress = claim(&store, &key(2), b"req");
    let record = store.get(&key(2)).unwrap().expect("claimed");
    assert_eq!(
        record.into_outcome(),
        None,
        "{in_progress:?} has no outcome yet"
    );
}

#[test]
fn complete_is_idempotent_and_writes_nothing_the_second_time() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    let first = store.complete(&c, b"first").unwrap();
    let lsn = store.stats().unwrap().last_lsn;
    clock.advance(Duration::from_secs(1));
    let again = store.complete(&c, b"second").unwrap();
    assert_eq!(again, first);
    assert_eq!(
        store.stats().unwrap().last_lsn,
        lsn,
        "a repeated complete wrote"
    );
}

#[test]
fn released_key_is_absent_and_claimed_again_with_attempt_one() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    store.release(&c).unwrap();
    assert_eq!(store.get(&key(1)).unwrap(), None);
    let again = claim(&store, &key(1), b"different request is fine now");
    assert_eq!(again.attempt(), 1);
    assert!(again.token() > c.token());
    assert!(matches!(store.release(&c), Err(Error::ClaimLost { .. })));
}

#[test]
fn extend_keeps_the_claim_past_its_first_lease() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(8));
    let lease = store.extend(&c, Duration::from_secs(10)).unwrap();
    assert_eq!(lease, clock.now_plus(10));
    clock.advance(Duration::from_secs(5)); // past the first lease, within the extended one
    assert!(matches!(
        store.begin(&key(1), b"req").unwrap(),
        Begin::InProgress { .. }
    ));
    match store.get(&key(1)).unwrap().unwrap().state() {
        RecordState::InProgress {
            lease_expires_at, ..
        } => assert_eq!(lease_expires_at, lease),
        other => panic!("expected in progress, got {other:?}"),
    }
    store.complete(&c, b"done").unwrap();
}

#[test]
fn a_lapsed_but_not_taken_over_claim_may_still_complete() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        store.complete(&c, b"late but current").unwrap().data(),
        b"late but current"
    );
}

#[test]
fn remove_makes_any_key_absent() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let c = claim(&store, &key(1), b"req");
    store.complete(&c, b"x").unwrap();
    assert!(store.remove(&key(1)).unwrap());
    assert!(!store.remove(&key(1)).unwrap());
    assert_eq!(store.get(&key(1)).unwrap(), None);
    let held = claim(&store, &key(2), b"req");
    assert!(store.remove(&key(2)).unwrap());
    assert!(matches!(
        store.complete(&held, b"x"),
        Err(Error::ClaimLost { .. })
    ));
    assert_eq!(claim(&store, &key(1), b"other").attempt(), 1);
}

#[test]
fn oversized_outcome_is_refused_and_the_claim_stays_valid() {
    let clock = clock();
    let store = common::options(&clock)
        .max_outcome_size(16)
        .open_storage(SimDisk::new("t"))
        .unwrap();
    let c = claim(&store, &key(1), b"req");
    assert!(matches!(
        store.complete(&c, &[0u8; 17]),
        Err(Error::OutcomeTooLarge {
            size: 17,
            limit: 16
        })
    ));
    assert_eq!(store.complete(&c, &[1u8; 16]).unwrap().data(), &[1u8; 16]);
}

#[test]
fn bad_keys_are_refused_with_invalid_key() {
    let long = vec![b'x'; 256];
    assert!(matches!(
        Key::new(&long, "r", "x"),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        Key::new("c", &long, "x"),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        Key::new("c", "r", &long),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        Key::new("c", "", "x"),
        Err(Error::InvalidKey { .. })
    ));
    assert!(Key::new("", "r", "").is_ok());
}

#[test]
fn tokens_strictly_increase_across_keys() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let mut last = 0;
    for n in 0..50 {
        let c = claim(&store, &key(n), b"req");
        assert!(c.token() > last);
        last = c.token();
        if n % 2 == 0 {
            store.release(&c).unwrap();
        }
    }
}

#[test]
fn in_progress_lists_claims_not_completed() {
    let clock = clock();
    let store = sim_store(&SimDisk::new("t"), &clock);
    let a = claim(&store, &key(1), b"req");
    let _b = claim(&store, &key(2), b"req");
    store.complete(&a, b"x").unwrap();
    let open: Vec<_> = store.in_progress().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].key(), &key(2));
    assert_eq!(store.stats().unwrap().in_progress, 1);
}

#[test]
fn get_with_borrows_what_get_returns() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    let view = |n: u64| {
        store
            .get_with(&key(n), |r| {
                r.map(|r| {
                    (
                        r.fingerprint(),
                        r.token(),
                        r.attempt(),
                        r.expires_at(),
                        r.outcome_data().map(<[u8]>::to_vec),
                        r.completed_at(),
                        r.lease_expires_at(),
                        r.to_record(&key(n)),
                    )
                })
            })
            .unwrap()
    };
    let check = |n: u64| {
        let owned = store.get(&key(n)).unwrap();
        match (view(n), owned) {
            (None, None) => {}
            (Some((fp, token, attempt, expires, data, completed, lease, record)), Some(o)) => {
                assert_eq!(record, o);
                assert_eq!(fp, o.fingerprint());
                assert_eq!(expires, o.expires_at());
                match o.state() {
                    RecordState::Completed(out) => {
                        assert_eq!(data.as_deref(), Some(out.data()));
                        assert_eq!(completed, Some(out.completed_at()));
                        assert_eq!((token, attempt, lease), (out.token(), out.attempt(), None));
                    }
                    RecordState::InProgress {
                        token: t,
                        attempt: a,
                        lease_expires_at,
                    } => {
                        assert_eq!((data, completed), (None, None));
                        assert_eq!((token, attempt, lease), (t, a, Some(lease_expires_at)));
                    }
                    other => panic!("{other:?}"),
                }
            }
            (v, o) => panic!("key {n}: get_with {v:?}, get {o:?}"),
        }
    };
    let done = claim(&store, &key(1), b"req");
    store.complete(&done, b"outcome").unwrap();
    let _running = claim(&store, &key(2), b"req");
    // Acknowledged but maybe not yet in the index, then all in the index.
    for n in 0..3 {
        check(n);
    }
    store.checkpoint().unwrap();
    for n in 0..3 {
        check(n);
    }
    assert!(view(1).is_some() && view(0).is_none());
    // Past retention both say absent.
    clock.advance(Duration::from_secs(1000));
    assert!(view(1).is_none());
    check(1);
    // A panic in the closure is the caller's: it is not turned into an error.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.get_with(&key(2), |_| panic!("the caller's bug"));
    }));
    assert!(panicked.is_err());
    // The closure may call the store.
    let nested = store
        .get_with(&key(2), |_| store.get(&key(2)).map(|r| r.is_some()))
        .unwrap();
    assert!(matches!(nested, Ok(false)), "expired by now: {nested:?}");
}
