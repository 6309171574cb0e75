#!/usr/bin/env bash
# Runs the crdt-store security cost benchmark in release mode (encryption at rest and write rules,
# each off and on in one run) and says where its results went.
# Every RHIZOME_BENCH_* variable in the environment reaches the benchmark; the list is at the
# top of crdt-store/benches/security_cost.rs. Extra arguments go to `cargo bench`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export RHIZOME_BENCH_OUT="${RHIZOME_BENCH_OUT:-$target/bench/security_cost.jsonl}"
table="${RHIZOME_BENCH_OUT%.jsonl}.txt"
data_dir="${RHIZOME_BENCH_DIR:-$target/tmp}"
mkdir -p "$(dirname "$RHIZOME_BENCH_OUT")" "$data_dir"

echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- crdt-store mesh || echo ' (crdt-store or mesh modified)')"
    echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "data dir: $data_dir ($(df -T "$data_dir" | awk 'NR == 2 { print $2 }'))"
    env | grep '^RHIZOME_BENCH_' | sort || true
} | tee "$table"

cd "$root"
cargo bench -p crdt-store --bench security_cost "$@" | tee -a "$table"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$table"

echo
echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
