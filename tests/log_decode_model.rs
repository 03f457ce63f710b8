//! Arbitrary bytes as a log segment and as damage to a store directory, over fixed seeds: the
//! store opens or refuses with `Corruption`/`Io`, never panics, and never yields a record that
//! was not written. The same core runs under libFuzzer as `fuzz/fuzz_targets/log_decode.rs`.
//!
//! Run longer: `IDEMSTORE_MODEL_SEEDS=50000 cargo test --release --test log_decode_model`.

mod model;

/// The lengths of this test's inputs.
const LEN: std::ops::Range<usize> = 0..600;

#[test]
fn arbitrary_logs_and_damaged_directories_open_or_are_refused() {
    let tally = model::run_seeds("log_decode_model", 400, LEN, model::log_decode);
    assert!(tally.runs > 0);
    assert!(
        tally.opened * 10 > tally.runs,
        "too few inputs opened: {tally:?}"
    );
    assert!(
        tally.refused * 10 > tally.runs,
        "too few inputs refused: {tally:?}"
    );
    assert!(
        tally.keys_checked > 0,
        "no record was ever read back: {tally:?}"
    );
}

/// Found by the `log_decode` fuzz target in its first minute (also seed 584 here): a store
/// directory whose `index.redb` is damaged so that `verify` (and then `open`) makes redb panic
/// outside the index's panic guard. Both must return `Error::Corruption` instead.
#[test]
fn a_damaged_index_found_by_the_fuzzer_is_refused_not_a_panic() {
    let tally = model::log_decode(&DAMAGED_INDEX);
    assert_eq!(tally.runs, 1);
}

/// `fuzz/corpus/log_decode/seed-verify-damaged-index`.
const DAMAGED_INDEX: [u8; 84] = [
    0xaf, 0xf4, 0x4f, 0xec, 0xc9, 0xc9, 0xc9, 0xc9, 0x37, 0x3b, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9,
    0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc1, 0x67, 0x5e,
    0x0b, 0xb9, 0x80, 0xa5, 0x75, 0xa8, 0xc7, 0x61, 0xfe, 0xc0, 0x8a, 0xa8, 0x3b, 0x63, 0xf1, 0xee,
    0x08, 0x46, 0x9c, 0xcd, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0xc9, 0x2f,
    0xc9, 0xc9, 0xd7, 0xf2, 0x09, 0xb1, 0x79, 0x6e, 0x5c, 0x40, 0xa8, 0x3e, 0xc2, 0x4b, 0xae, 0xf8,
    0x81, 0x90, 0xf2, 0x51,
];

/// Found by the fuzzer and by seeds 10,655 and 15,278 of this test: damaged table definitions
/// in `index.redb` that redb reports as a missing table or a changed table type. `verify` and
/// `open` must call them `Error::Corruption` (the model checks the error kinds).
#[test]
fn damaged_table_definitions_found_by_the_fuzzer_are_corruption() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-table-missing");
    assert_eq!(model::log_decode(found).runs, 1);
    for seed in [584, 10_655, 15_278] {
        assert_eq!(model::log_decode(&model::seed_input(seed, LEN)).runs, 1);
    }
}

/// Found by the `log_decode` fuzzer: a damaged `index.redb` whose `meta` table still opened
/// but gave `next_token` 1 where tokens up to 2 were stored, so the next claim reused a
/// fencing token. The checkpoint row now carries a checksum: the damage is corruption, and
/// with the whole log beside it the index is rebuilt (the model checks the next token).
#[test]
fn a_damaged_next_token_never_hands_out_a_token_again() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-damaged-next-token");
    assert_eq!(model::log_decode(found).runs, 1);
}

/// Found by the `log_decode` fuzzer: a log whose records are well-formed (valid checksums)
/// but carry the fencing token `u64::MAX`. Recovery computed the next token as that plus one:
/// an overflow panic in a debug build, and in a release build a wrap to token 1, handed out
/// again. A token or LSN at the end of the u64 space is now `Error::Corruption`.
#[test]
fn a_fencing_token_at_the_end_of_the_u64_space_is_refused_not_wrapped() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-token-at-u64-max");
    let tally = model::log_decode(found);
    assert_eq!((tally.runs, tally.refused), (1, 1), "{tally:?}");
}

/// Found by the `log_decode` fuzzer (in CI's 60 s): a damaged index whose `meta` rows were
/// gone while its records stayed. It read as a new index (next token 0) and handed out token 1
/// beside a record holding token 3. An index with records but no checkpoint, or missing a
/// table (which the open used to recreate empty), is now `Error::Corruption`.
#[test]
fn records_without_a_checkpoint_are_refused_not_given_old_tokens() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-records-without-checkpoint");
    let tally = model::log_decode(found);
    assert_eq!((tally.runs, tally.refused), (1, 1), "{tally:?}");
}

/// Found by the `log_decode` fuzzer (in CI's 60 s): a damaged `index.redb` header whose commit
/// slot names redb's file format 2. `verify` returned redb's "upgrade required" as
/// `Error::Index`; no idemstore ever wrote that format, so it is now `Error::Corruption`.
#[test]
fn an_index_naming_an_old_redb_format_is_corruption() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-old-redb-format");
    assert_eq!(model::log_decode(found).runs, 1);
}

/// Found by the fuzzer in CI's 60 s (`docs/reliability.md`, finding 17): an `index.redb`,
/// left by a power cut and then damaged, whose freed-page list names a page beyond its
/// region.
/// Opened plainly, redb trusts it, and the first commit that frees pages panics inside redb
/// and again while unwinding, which aborts the process. Opened with
/// `Options::verify_index_on_open`, as the model opens every damaged index, redb's check finds
/// the damage and the index is rebuilt from the log. Without the check this test aborts.
#[test]
fn a_damaged_freed_page_list_is_found_on_a_verified_open_not_an_abort() {
    let found = include_bytes!("../fuzz/corpus/log_decode/seed-redb-freed-page-out-of-range");
    let tally = model::log_decode(found);
    assert_eq!(
        (tally.runs, tally.opened, tally.rebuilt, tally.refused),
        (1, 1, 1, 0)
    );
}
