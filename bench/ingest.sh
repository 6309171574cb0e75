#!/usr/bin/env bash
# Runs the crdt-store ingest benchmark in release mode and says where its results went.
# Every RHIZOME_BENCH_* variable in the environment reaches the benchmark; the list is at the
# top of crdt-store/benches/ingest.rs. Extra arguments go to `cargo bench`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export RHIZOME_BENCH_OUT="${RHIZOME_BENCH_OUT:-$target/bench/ingest.jsonl}"
table="${RHIZOME_BENCH_OUT%.jsonl}.txt"
mkdir -p "$(dirname "$RHIZOME_BENCH_OUT")"

echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpus: $(nproc)"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "data dir: ${RHIZOME_BENCH_DIR:-$target/tmp} ($(df -T "${RHIZOME_BENCH_DIR:-$root}" | awk 'NR == 2 { print $2 }'))"
    env | grep '^RHIZOME_BENCH_' | sort || true
} | tee "$table"

cd "$root"
cargo bench -p crdt-store --bench ingest "$@" | tee -a "$table"

echo
echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
