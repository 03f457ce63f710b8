//! The I/O-fault model over fixed seeds: EIO and ENOSPC on writes, syncs, truncations,
//! removals, directory syncs and opens, against a model of what was acknowledged. The same
//! core runs under libFuzzer as `fuzz/fuzz_targets/io_faults.rs`.
//!
//! Run longer: `IDEMSTORE_MODEL_SEEDS=5000 cargo test --release --test io_fault_model`.

mod model;

/// The lengths of this test's inputs.
const LEN: std::ops::Range<usize> = 200..1200;

#[test]
fn injected_io_errors_fail_calls_poison_the_handle_and_lose_nothing() {
    let tally = model::run_seeds("io_fault_model", 60, LEN, model::io_faults);
    assert!(tally.runs > 0);
    assert!(
        tally.errors >= 2 * tally.runs,
        "too few faults fired: {tally:?}"
    );
    assert!(
        tally.asynchronous_failed > 0,
        "no asynchronous call met a fault: {tally:?}"
    );
    assert!(
        tally.refusals_checked >= tally.runs,
        "too few refusals checked: {tally:?}"
    );
    assert!(tally.restarts > 0 && tally.crashes > 0, "{tally:?}");
}

/// Found by the `io_faults` fuzzer once recovery stopped writing the index: a fault injected
/// for a recovery that recovery never reached fired in the checks after it, which read.
#[test]
fn a_fault_armed_for_recovery_is_disarmed_after_the_open() {
    let found = include_bytes!("../fuzz/corpus/io_faults/seed-fault-armed-after-open");
    assert_eq!(model::io_faults(found).runs, 1);
}
