//! EIO and ENOSPC on every mutating call, against a model of what was acknowledged; a failed
//! handle must refuse writes (see `tests/model/harness.rs`).
//! The same core runs under `cargo test` over fixed seeds.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/model/mod.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    model::let_caught_panics_unwind();
    model::io_faults(data);
});
