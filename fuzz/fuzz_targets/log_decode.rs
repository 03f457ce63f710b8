//! Arbitrary bytes as a log segment or as damage to a store directory: open or refuse with
//! Corruption/Io, never panic, never yield a record that was not written (see
//! `tests/model/decode.rs`).
//! The same core runs under `cargo test` over fixed seeds.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/model/mod.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    model::let_caught_panics_unwind();
    model::log_decode(data);
});
