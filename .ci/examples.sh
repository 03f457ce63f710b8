#!/usr/bin/env bash
# Runs every example (each checks its own result and exits non-zero on failure) and a smoke
# test of the `idemstore` CLI. Called from .ci/run; runnable alone: `bash .ci/examples.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "example: quickstart"
cargo run --example quickstart

step "example: execute"
cargo run --example execute

step "example: async_service"
cargo run --example async_service

step "example: payments (the README's demo command)"
cargo run --release --example payments

step "example: payments leaves a store that the CLI can read"
demo="$(mktemp -d)"
trap 'rm -rf "$demo"' EXIT
cargo run --release --example payments -- --dir "$demo" --clients 4 --charges 10 --kills 1
cargo run --features cli --bin idemstore -- --help
cli() { cargo run --quiet --features cli --bin idemstore -- "$@"; }
cli stats "$demo/store"
cli verify "$demo/store"
test "$(cli list "$demo/store" --state completed | wc -l)" -eq 40
