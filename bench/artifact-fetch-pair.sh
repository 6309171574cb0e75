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

bin_a="$1" bin_b="$2" rounds="${3:-4}" mb="${4:-200}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rhizome-fetch-pair.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
head -c "$((mb * 1000 * 1000))" /dev/urandom >"$work/file"

# CPU seconds and minor faults of a process so far (fields 14, 15 and 10 of its stat line).
usage() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f %d", ($14 + $15) / hz, $10 }' "/proc/$1/stat"; }

# Prints: seconds of the fetch, CPU seconds of sender and receiver, their minor faults.
one_fetch() {
    local bin="$1" dir="$work/run" id quic a b
    rm -rf "$dir"
    "$bin" --data-dir "$dir/a" init --name a >/dev/null
    "$bin" --data-dir "$dir/b" init --name b --mesh "$dir/a/mesh" >/dev/null
    id="$("$bin" --data-dir "$dir/a" artifact add "$work/file" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    "$bin" --data-dir "$dir/a" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns >"$dir/a.out" 2>/dev/null &
    a=$!
    pids+=("$a")
    until grep -q ' serving: ' "$dir/a.out" 2>/dev/null; do sleep 0.01; done
    quic="$(sed -nE 's/.* serving: quic ([0-9.:]+),.*/\1/p' "$dir/a.out" | head -1)"
    "$bin" --data-dir "$dir/b" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns --peer "$quic" >"$dir/b.out" 2>/dev/null &
    b=$!
    pids+=("$b")
    until "$bin" --data-dir "$dir/b" peers --json 2>/dev/null | grep -q '"connected"'; do sleep 0.05; done
    sync
    read -r a_cpu0 a_flt0 <<<"$(usage "$a")"
    read -r b_cpu0 b_flt0 <<<"$(usage "$b")"
    local started ended
    started=$(date +%s.%N)
    "$bin" --data-dir "$dir/b" artifact fetch "$id" --json >/dev/null
    ended=$(date +%s.%N)
    read -r a_cpu1 a_flt1 <<<"$(usage "$a")"
    read -r b_cpu1 b_flt1 <<<"$(usage "$b")"
    kill "$a" "$b"
    wait "$a" "$b" 2>/dev/null || true
    pids=()
    python3 -c "print(f'{$ended - $started:.2f} s, CPU {$a_cpu1 - $a_cpu0:.2f} + {$b_cpu1 - $b_cpu0:.2f} s, faults {$a_flt1 - $a_flt0} + {$b_flt1 - $b_flt0}')"
}

echo "A: $bin_a"
echo "B: $bin_b"
echo "$mb MB per fetch; time, CPU of sender + receiver, minor faults of sender + receiver"
for round in $(seq 1 "$rounds"); do
    echo "round $round  A: $(one_fetch "$bin_a")"
    echo "round $round  B: $(one_fetch "$bin_b")"
done
