//! The asynchronous calls: the same answers as the blocking ones, resolved only once durable,
//! with many tasks on few executor threads sharing each sync, and failures reaching every
//! waiting task instead of leaving it pending.

mod common;

use std::time::Duration;

use common::{clock, key, options, sim_store};
use idemstore::Clock;
use idemstore::storage::{CrashMode, Fault, FaultError, Op, SimDisk};
use idemstore::{Begin, Durability, Error, ExecuteError, Execution, Fingerprint, Store};

/// A simulated disk, twice: where polls lead their commits themselves (the default, as
/// reproducible as the blocking calls), and where the committer thread leads them.
fn disks() -> [SimDisk; 2] {
    [SimDisk::new("t"), SimDisk::new("t").with_helper_threads()]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

#[test]
fn asynchronous_calls_answer_as_the_blocking_ones_do() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    runtime().block_on(async {
        let Begin::Claimed(claim) = store.begin_async(&key(1), b"req").await.unwrap() else {
            panic!("a new key is claimed");
        };
        assert!(matches!(
            store.begin_async(&key(1), b"req").await.unwrap(),
            Begin::InProgress { attempt: 1, .. }
        ));
        assert!(matches!(
            store.begin_async(&key(1), b"other").await.unwrap(),
            Begin::Mismatch { stored, .. } if stored == Fingerprint::of(b"req")
        ));
        let until = store
            .extend_async(&claim, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            until,
            clock.now() + Duration::from_secs(60),
            "the lease runs a minute from now"
        );
        let too_big = vec![0; (1 << 20) + 1]; // over the default limit
        assert!(matches!(
            store.complete_async(&claim, &too_big).await,
            Err(Error::OutcomeTooLarge { .. })
        ));
        let outcome = store.complete_async(&claim, b"done").await.unwrap();
        assert_eq!(outcome.data(), b"done");
        // Completing again replays the first outcome and writes nothing.
        let appended = store.stats().unwrap().appended;
        let again = store.complete_async(&claim, b"other").await.unwrap();
        assert_eq!(again.data(), b"done");
        assert_eq!(store.stats().unwrap().appended, appended);
        assert!(matches!(
            store.begin_async(&key(1), b"req").await.unwrap(),
            Begin::Completed(o) if o.data() == b"done"
        ));
        assert!(matches!(
            store.release_async(&claim).await,
            Err(Error::ClaimLost { .. })
        ));

        let Begin::Claimed(second) = store.begin_async(&key(2), b"req").await.unwrap() else {
            panic!("a new key is claimed");
        };
        store.release_async(&second).await.unwrap();
        assert!(store.get(&key(2)).unwrap().is_none(), "released");
        assert!(matches!(
            store.complete_async(&second, b"late").await,
            Err(Error::ClaimLost { .. })
        ));

        assert!(store.remove_async(&key(1)).await.unwrap());
        assert!(!store.remove_async(&key(1)).await.unwrap());
        assert!(store.get(&key(1)).unwrap().is_none());
    });
}

#[test]
fn what_an_asynchronous_call_acknowledged_survives_a_power_cut() {
    for disk in disks() {
        let clock = clock();
        let store = sim_store(&disk, &clock);
        runtime().block_on(async {
            for n in 0..20 {
                let Begin::Claimed(c) = store.begin_async(&key(n), b"req").await.unwrap() else {
                    panic!("a new key is claimed");
                };
                if n % 2 == 0 {
                    store.complete_async(&c, b"done").await.unwrap();
                }
            }
        });
        disk.power_cut(CrashMode::DropUnsynced);
        drop(store);
        let store = sim_store(&disk, &clock);
        for n in 0..20 {
            let record = store.get(&key(n)).unwrap().expect("acknowledged");
            assert_eq!(
                record.outcome().map(|o| o.data().to_vec()),
                (n % 2 == 0).then(|| b"done".to_vec()),
                "{disk:?}"
            );
        }
    }
}

#[test]
fn many_tasks_on_one_thread_share_each_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = options(&clock()).open(dir.path()).unwrap();
    const TASKS: u64 = 64;
    const ROUNDS: u64 = 10;
    runtime().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let store = store.clone();
            set.spawn(async move {
                for r in 0..ROUNDS {
                    let k = key(t * ROUNDS + r);
                    let Begin::Claimed(c) = store.begin_async(&k, b"req").await? else {
                        panic!("a new key is claimed");
                    };
                    store.complete_async(&c, b"done").await?;
                }
                Ok::<(), Error>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
    });
    let stats = store.stats().unwrap();
    assert_eq!(stats.appended, 2 * TASKS * ROUNDS);
    // One thread runs every task: a sync per change would mean no sharing at all.
    assert!(
        stats.syncs * 8 <= stats.appended,
        "{} syncs for {} changes",
        stats.syncs,
        stats.appended
    );
    drop(store);
    let store = options(&clock()).open(dir.path()).unwrap();
    for n in 0..TASKS * ROUNDS {
        let record = store.get(&key(n)).unwrap().expect("acknowledged");
        assert_eq!(
            record.outcome().map(|o| o.data().to_vec()),
            Some(b"done".to_vec())
        );
    }
}

#[test]
fn of_many_tasks_racing_for_one_key_exactly_one_claims_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| tokio::spawn(store.begin_async(&key(7), b"req")))
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap().unwrap());
        }
        answers
    });
    let claimed = answers
        .iter()
        .filter(|a| matches!(a, Begin::Claimed(_)))
        .count();
    assert_eq!(claimed, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Begin::Claimed(_) | Begin::InProgress { .. }))
    );
}

#[test]
fn a_failed_sync_reaches_every_waiting_task() {
    for disk in disks() {
        let clock = clock();
        let store = sim_store(&disk, &clock);
        runtime().block_on(async {
            let _ = store.begin_async(&key(0), b"req").await.unwrap();
            disk.inject(Fault {
                op: Op::Sync,
                skip: 0,
                error: FaultError::Eio,
                sticky: false,
            });
            let waiting: Vec<_> = (1..9).map(|n| store.begin_async(&key(n), b"req")).collect();
            for answer in waiting {
                // Whoever led the failed commit, each task reads its cause from the handle.
                // A task left pending would time out here instead of hanging the test.
                let answer = tokio::time::timeout(Duration::from_secs(30), answer).await;
                assert!(
                    matches!(answer, Ok(Err(Error::PreviousIo { .. }))),
                    "{disk:?}: {answer:?}"
                );
            }
            assert!(matches!(
                store.begin_async(&key(20), b"req").await,
                Err(Error::PreviousIo { .. })
            ));
        });
        assert!(store.get(&key(0)).unwrap().is_some(), "acknowledged before");
    }
}

#[test]
fn an_answer_resolves_after_every_handle_is_dropped_and_can_be_waited_for_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store.begin_async(&key(1), b"req");
    let second = store.begin_async(&key(2), b"req");
    drop(store);
    assert!(matches!(first.wait().unwrap(), Begin::Claimed(_)));
    assert!(matches!(
        runtime().block_on(second).unwrap(),
        Begin::Claimed(_)
    ));
    let store = Store::open(dir.path()).unwrap();
    assert!(store.get(&key(1)).unwrap().is_some());
    assert!(store.get(&key(2)).unwrap().is_some());
}

#[test]
fn a_read_only_store_answers_asynchronous_writes_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let store = idemstore::Options::new()
        .read_only(true)
        .open(dir.path())
        .unwrap();
    assert!(matches!(
        runtime().block_on(store.begin_async(&key(1), b"req")),
        Err(Error::ReadOnly)
    ));
}

#[test]
fn execute_async_runs_once_replays_and_releases_on_error() {
    let clock = clock();
    let disk = SimDisk::new("t");
    let store = sim_store(&disk, &clock);
    let runs = std::cell::Cell::new(0);
    runtime().block_on(async {
        let charge = |claim: idemstore::Claim| {
            runs.set(runs.get() + 1);
            async move { Ok::<_, String>(format!("charged, token {}", claim.token())) }
        };
        let ran = store.execute_async(&key(1), b"req", charge).await.unwrap();
        let Execution::Ran(outcome) = ran else {
            panic!("a new key runs: {ran:?}");
        };
        let again = store.execute_async(&key(1), b"req", charge).await.unwrap();
        assert_eq!(again, Execution::Replayed(outcome));
        assert_eq!(runs.get(), 1, "a replay does not run the operation");

        let failing = |_| async { Err::<Vec<u8>, _>("declined") };
        match store.execute_async(&key(2), b"req", failing).await {
            Err(ExecuteError::Operation {
                error: "declined",
                release: None,
            }) => {}
            other => panic!("the operation's error, claim released: {other:?}"),
        }
        assert!(store.get(&key(2)).unwrap().is_none(), "released");
        let ran = store.execute_async(&key(2), b"req", charge).await.unwrap();
        assert!(matches!(ran, Execution::Ran(_)), "a retry runs it: {ran:?}");
    });
}

#[test]
fn in_the_modes_that_do_not_sync_tasks_lead_their_own_commits_and_lose_nothing_to_a_kill() {
    for durability in [
        Durability::None,
        Durability::Periodic(Duration::from_secs(3600)),
    ] {
        let clock = clock();
        let disk = SimDisk::new("t").with_helper_threads();
        let store = options(&clock)
            .durability(durability)
            .open_storage(disk.clone())
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..16u64 {
                let store = store.clone();
                set.spawn(async move {
                    for r in 0..20 {
                        let Begin::Claimed(c) =
                            store.begin_async(&key(t * 100 + r), b"req").await?
                        else {
                            panic!("a new key is claimed");
                        };
                        store.complete_async(&c, b"done").await?;
                    }
                    Ok::<(), Error>(())
                });
            }
            // A task left pending fails here instead of hanging the test.
            let all = async {
                while let Some(done) = set.join_next().await {
                    done.unwrap().unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("every task finished");
        });
        // A process crash (the page cache survives): what was acknowledged was written.
        disk.power_cut(CrashMode::KeepAll);
        drop(store);
        let store = sim_store(&disk, &clock);
        for t in 0..16u64 {
            for r in 0..20 {
                let record = store.get(&key(t * 100 + r)).unwrap();
                let outcome = record.and_then(|r| r.into_outcome()).map(|o| o.into_data());
                assert_eq!(outcome.as_deref(), Some(&b"done"[..]), "{durability:?}");
            }
        }
    }
}
