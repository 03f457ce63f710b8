//! The closure helper: runs once, replays, releases on error.

mod common;

use std::cell::Cell;

use common::{clock, key, sim_store};
use idemstore::storage::SimDisk;
use idemstore::{Begin, ExecuteError, Execution};

#[test]
fn runs_once_then_replays() {
    let store = sim_store(&SimDisk::new("t"), &clock());
    let runs = Cell::new(0);
    let op = |_: &idemstore::Claim| {
        runs.set(runs.get() + 1);
        Ok::<_, std::io::Error>(b"result".to_vec())
    };
    assert!(
        matches!(store.execute(&key(1), b"req", op).unwrap(), Execution::Ran(o) if o.data() == b"result")
    );
    assert!(
        matches!(store.execute(&key(1), b"req", op).unwrap(), Execution::Replayed(o) if o.data() == b"result")
    );
    assert!(matches!(
        store.execute(&key(1), b"other", op).unwrap(),
        Execution::Mismatch { .. }
    ));
    assert_eq!(runs.get(), 1);
}

#[test]
fn an_operation_error_releases_the_claim_so_a_retry_runs() {
    let store = sim_store(&SimDisk::new("t"), &clock());
    let failed = store.execute(&key(1), b"req", |_| Err::<Vec<u8>, _>("card declined"));
    assert!(matches!(
        failed,
        Err(ExecuteError::Operation {
            error: "card declined",
            release: None
        })
    ));
    assert_eq!(store.get(&key(1)).unwrap(), None);
    let retried = store
        .execute(&key(1), b"req", |claim| {
            assert_eq!(claim.attempt(), 1);
            Ok::<_, &str>(b"ok")
        })
        .unwrap();
    assert!(matches!(retried, Execution::Ran(_)));
}

#[test]
fn a_running_operation_makes_others_see_in_progress() {
    let store = sim_store(&SimDisk::new("t"), &clock());
    let Begin::Claimed(_held) = store.begin(&key(1), b"req").unwrap() else {
        panic!("not claimed");
    };
    let result = store
        .execute(&key(1), b"req", |_| -> Result<Vec<u8>, ()> {
            panic!("must not run while another claim holds the key")
        })
        .unwrap();
    assert!(matches!(result, Execution::InProgress { .. }));
}

#[test]
fn an_oversized_outcome_is_a_store_error_and_the_claim_is_left_to_lapse() {
    let clock = clock();
    let store = common::options(&clock)
        .max_outcome_size(4)
        .open_storage(SimDisk::new("t"))
        .unwrap();
    let result = store.execute(&key(1), b"req", |_| Ok::<_, ()>(b"too large".to_vec()));
    assert!(matches!(
        result,
        Err(ExecuteError::Store(
            idemstore::Error::OutcomeTooLarge { .. }
        ))
    ));
    assert!(matches!(
        store.begin(&key(1), b"req").unwrap(),
        Begin::InProgress { .. }
    ));
}
