#!/usr/bin/env bash
# Builds and runs the comparison harness (issue 4). Arguments are passed on, e.g.
#   benches/compare/run.sh --quick
#   benches/compare/run.sh --keys 1M --big-index 10M --data-dir /work/benchdata
#
# PostgreSQL: IDEMSTORE_POSTGRES_URL (default: the local server on 127.0.0.1:5432, db test).
# Redis: IDEMSTORE_REDIS_URL if set; otherwise, when redis-server is installed, a private
# server with `appendonly yes, appendfsync always` (the durable configuration the issue compares
# against) is started on 127.0.0.1:6390 for the run and stopped afterwards.
# Only loopback servers are ever contacted; the harness refuses other hosts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../target/compare}"
export IDEMSTORE_POSTGRES_URL="${IDEMSTORE_POSTGRES_URL:-host=127.0.0.1 port=5432 user=postgres dbname=test}"

data="${TMPDIR:-/tmp}/idemstore-bench"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[$i]}" == "--data-dir" ]]; then data="${args[$((i + 1))]}"; fi
done
mkdir -p "$data"

redis_pid=""
cleanup() {
    if [[ -n "$redis_pid" ]]; then kill "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

if [[ -z "${IDEMSTORE_REDIS_URL:-}" ]] && command -v redis-server >/dev/null; then
    port=6390
    rdir="$data/redis-always"
    rm -rf "$rdir" && mkdir -p "$rdir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$rdir" --appendonly yes \
        --appendfsync always --save '' --daemonize no --logfile "$rdir/redis.log" &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    export IDEMSTORE_REDIS_URL="redis://127.0.0.1:$port"
    echo "run.sh: started a private Redis (appendfsync always) at $IDEMSTORE_REDIS_URL, pid $redis_pid" >&2
fi

cargo build --release --manifest-path "$here/Cargo.toml"
"$CARGO_TARGET_DIR/release/idemstore-bench-compare" "$@"
