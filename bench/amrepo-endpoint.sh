#!/usr/bin/env bash
# A node's automerge-repo endpoint (`GET /automerge` of a real `rhizome start`) side by side with
# the JavaScript automerge-repo sync server, both serving the same clients on loopback: a fresh
# client fetching 1,000 documents × 10 changes and 1 document × 10,000 changes, and an edit by
# one client until a second client sees it. Release build.
#
# The JavaScript side (bench/js) is installed from npm into bench/js/node_modules (not committed)
# with the versions of bench/js/package-lock.json. It is the competitor and the default client,
# so node and npm are required. RHIZOME_BENCH_CLIENT=samod (or both) has samod repos in the
# benchmark process as the clients instead, whose own cost hides less of the servers'.
#
# Usage: bench/amrepo-endpoint.sh [cargo bench arguments]
# Every RHIZOME_BENCH_* variable reaches the benchmark (list at the top of
# node/benches/amrepo_endpoint.rs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export RHIZOME_BENCH_OUT="${RHIZOME_BENCH_OUT:-$target/bench/amrepo-endpoint.jsonl}"
table="${RHIZOME_BENCH_OUT%.jsonl}.txt"
mkdir -p "$(dirname "$RHIZOME_BENCH_OUT")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm are needed: the clients of both servers are JavaScript (bench/js)" >&2
    exit 1
fi
# `npm install --no-save` installs what the lock file says and leaves it as it is (`npm ci`
# refuses this lock: npm leaves cbor-extract's optional per-platform packages out of it).
(cd "$root/bench/js" && npm install --no-save --no-audit --no-fund --loglevel=error >&2)
export RHIZOME_BENCH_JS="$root/bench/js"
version() { node -p 'require("'"$root"'/bench/js/node_modules/'"$1"'/package.json").version'; }

cd "$root"
# The bench target runs the `rhizome` binary of its own profile (release settings); this build
# makes it and leaves target/release/rhizome current.
cargo build --release -p rhizome >&2

echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo ' (uncommitted changes)')"
    echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "JavaScript side: node $(node --version), automerge-repo $(version @automerge/automerge-repo), network-websocket $(version @automerge/automerge-repo-network-websocket), automerge $(version @automerge/automerge)"
    env | grep '^RHIZOME_BENCH_' | sort || true
} | tee "$table"

cargo bench -p rhizome --bench amrepo_endpoint "$@" | tee -a "$table"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$table"

echo
echo "figures (JSON lines): $RHIZOME_BENCH_OUT"
echo "table:                $table"
