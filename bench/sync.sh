#!/usr/bin/env bash
# Document sync benchmarks: sync lag between two nodes, throughput and bytes on the wire side by
# side with JavaScript automerge-repo, reconnect traffic, then a node's start-up time and idle
# memory (bench/node.sh). Release builds, everything on loopback.
#
# The JavaScript side (bench/js: an automerge-repo WebSocket sync server and client) is installed
# from npm into bench/js/node_modules (not committed) with the versions of bench/js/package-lock.json.
# Without node and npm it is skipped and said so.
#
# Usage: bench/sync.sh [cargo bench arguments]
# Every RHIZOME_BENCH_* variable reaches the benchmark (list at the top of node/benches/sync.rs);
# RHIZOME_BENCH_SECTIONS may also name `node` (start-up and idle memory; default: all sections).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export RHIZOME_BENCH_OUT="${RHIZOME_BENCH_OUT:-$target/bench/sync.jsonl}"
table="${RHIZOME_BENCH_OUT%.jsonl}.txt"
mkdir -p "$(dirname "$RHIZOME_BENCH_OUT")"
sections="${RHIZOME_BENCH_SECTIONS:-lag,throughput,reconnect,node}"

if command -v node >/dev/null && command -v npm >/dev/null; then
    # `npm install --no-save` installs what the lock file says and leaves it as it is (`npm ci`
    # refuses this lock: npm leaves cbor-extract's optional per-platform packages out of it).
    (cd "$root/bench/js" && npm install --no-save --no-audit --no-fund --loglevel=error >&2)
    export RHIZOME_BENCH_JS="$root/bench/js"
    js="node $(node --version), automerge-repo $(node -p 'require("'"$root"'/bench/js/node_modules/@automerge/automerge-repo/package.json").version'), automerge $(node -p 'require("'"$root"'/bench/js/node_modules/@automerge/automerge/package.json").version')"
else
    js="not run (node or npm missing)"
fi

echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo ' (modified)')"
    echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "JavaScript side: $js"
    env | grep '^RHIZOME_BENCH_' | sort || true
} | tee "$table"

cd "$root"
bench_sections="$(echo "$sections" | tr ',' '\n' | grep -v '^node$' | paste -sd, || true)"
if [ -n "$bench_sections" ]; then
    RHIZOME_BENCH_SECTIONS="$bench_sections" cargo bench -p rhizome --bench sync "$@" | tee -a "$table"
fi
if echo "$sections" | tr ',' '\n' | grep -qx node; then
    echo | tee -a "$table"
    echo "## Node start-up and idle memory (bench/node.sh 10)" | tee -a "$table"
    "$root/bench/node.sh" 10 | tee -a "$table"
fi

echo
echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
