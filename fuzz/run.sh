#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) seconds each and fails on any crash.
# Installs cargo-fuzz if it is missing. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1
# lets a stable toolchain accept them. No sanitizer: the crate forbids unsafe code, and
# AddressSanitizer would cut the executions per second several-fold.
#
#   bash fuzz/run.sh                          # 60 s per target, as CI runs it
#   FUZZ_SECONDS=1200 bash fuzz/run.sh        # longer
#   FUZZ_TARGETS="log_decode" bash fuzz/run.sh
#
# A crash leaves its input in fuzz/artifacts/<target>/. Replay it with a plain backtrace:
#   IDEMSTORE_MODEL_INPUT=fuzz/artifacts/<target>/<file> cargo test --test <model test>
# (crash_recovery: crash_model, io_faults: io_fault_model, log_decode: log_decode_model).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-crash_recovery io_faults log_decode}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

for target in $targets; do
    echo "=== fuzz $target for ${seconds}s ==="
    # New corpus entries land beside the checked-in seed-* files (.gitignore keeps only those).
    work="corpus/$target"
    mkdir -p "$work"
    # -timeout: an input that runs this long is a hang. -rss_limit_mb: a damaged length that
    # makes something allocate wildly is a crash, not a swap storm.
    cargo fuzz run "$target" --release --sanitizer none "$work" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzzing passed: $targets"
