#!/usr/bin/env bash
# Two builds of `rhizome` side by side on one artifact fetch: for each round, a fresh pair of
# nodes of build A, then of build B (loopback, mDNS off), a random file added on the first and
# `rhizome artifact fetch` timed on the second, with the CPU seconds and page faults both nodes
# spent. Alternating the builds in one run is how code changes are compared on this kind of
# shared VM, whose whole-run figures swing with the memory state (see BENCHMARKS, "Artifact
# transfer").
#
# Usage: bench/artifact-fetch-pair.sh BIN_A BIN_B [ROUNDS] [MB]   (default 4 rounds of 200 MB)
set -euo pipefail
bin_a="$(realpath "$1")" bin_b="$(realpath "$2")" rounds="${3:-4}" mb="${4:-200}"
cd "$(dirname "$0")/.."
source bench/node-lib.sh

# No build here: the two binaries are given. The scratch dir and the nodes go as node_bench's do.
work="$(mktemp -d "${TMPDIR:-/tmp}/rhizome-fetch-pair.XXXXXX")"
pids=()
trap node_bench_cleanup EXIT
head -c "$((mb * 1000 * 1000))" /dev/urandom >"$work/file"
hz="$(getconf CLK_TCK)"

# Prints: seconds of the fetch, CPU seconds of sender and receiver, their minor faults.
one_fetch() {
    local bin="$1" dir="$work/run" id quic a b
    rm -rf "$dir"
    "$bin" --data-dir "$dir/a" init --name a >/dev/null
    "$bin" --data-dir "$dir/b" init --name b --mesh "$dir/a/mesh" >/dev/null
    id="$("$bin" --data-dir "$dir/a" artifact add "$work/file" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    "$bin" --data-dir "$dir/a" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns >"$dir/a.out" 2>"$dir/a.err" &
    a=$!
    pids=("$a")
    quic="$(serving "$dir/a.out" "$a")"
    "$bin" --data-dir "$dir/b" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns --peer "$quic" >"$dir/b.out" 2>"$dir/b.err" &
    b=$!
    pids+=("$b")
    until "$bin" --data-dir "$dir/b" peers --json 2>/dev/null | grep -q '"connected"'; do sleep 0.05; done
    sync
    local a_ticks=$(ticks "$a") b_ticks=$(ticks "$b") a_faults=$(minor_faults "$a") b_faults=$(minor_faults "$b")
    local started ended
    started=$(date +%s.%N)
    "$bin" --data-dir "$dir/b" artifact fetch "$id" --json >/dev/null
    ended=$(date +%s.%N)
    a_ticks=$(($(ticks "$a") - a_ticks)) b_ticks=$(($(ticks "$b") - b_ticks))
    a_faults=$(($(minor_faults "$a") - a_faults)) b_faults=$(($(minor_faults "$b") - b_faults))
    kill "$a" "$b"
    wait "$a" "$b" 2>/dev/null || true
    pids=()
    python3 -c "print(f'{$ended - $started:.2f} s, CPU {$a_ticks / $hz:.2f} + {$b_ticks / $hz:.2f} s, faults $a_faults + $b_faults')"
}

echo "A: $bin_a"
echo "B: $bin_b"
echo "$mb MB per fetch; time, CPU of sender + receiver, minor faults of sender + receiver"
for round in $(seq 1 "$rounds"); do
    echo "round $round  A: $(one_fetch "$bin_a")"
    echo "round $round  B: $(one_fetch "$bin_b")"
done
