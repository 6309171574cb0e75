#!/usr/bin/env bash
# Join time of a new node, enrolment included: a node `cloud` (its own mesh, so it holds the CA)
# runs with one workflow applied; each run makes a join token on it, then on a new data dir
# times `rhizome join ADDR --token T` and `rhizome start` until `rhizome workflow show probe`
# finds the workflow there (the first synced document). Release build, loopback only, mDNS off.
#
# Usage: bench/join.sh [RUNS]   (default: RHIZOME_BENCH_RUNS or 10)
#
# The new node's document is polled with `workflow show` calls back to back, so the
# start-to-document figure is late by up to one call (printed below the table). The cloud
# node keeps running across runs and its registry gains one entry per joined node.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-${RHIZOME_BENCH_RUNS:-10}}"
. bench/node-lib.sh
node_bench join
out="$target/bench/join.txt"


now_us() { echo $(($(date +%s%N) / 1000)); }

cloud="$work/cloud"
"$bin" --data-dir "$cloud" init --name cloud -q >/dev/null
"$bin" --data-dir "$cloud" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    >"$work/cloud.out" 2>"$work/cloud.err" &
pids+=("$!")
addr="$(serving "$work/cloud.out" "$!")"
printf 'id: probe\ntrigger: manual\nsteps:\n  - id: s\n    agent: noop\n' >"$work/probe.yaml"
"$bin" --data-dir "$cloud" workflow apply "$work/probe.yaml" -q >/dev/null

join_ms=() serving_ms=() doc_ms=() total_ms=() polls=()
for i in $(seq "$runs"); do
    token="$("$bin" --data-dir "$cloud" mesh token create --json |
        sed -nE 's/^ *"token": *"([^"]+)".*/\1/p')"
    [[ -n "$token" ]] || { echo "no token from mesh token create" >&2; exit 1; }
    edge="$work/edge-$i"

    t0=$(now_us)
    "$bin" --data-dir "$edge" join "$addr" --token "$token" --name edge -q >/dev/null
    t1=$(now_us)
    "$bin" --data-dir "$edge" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 \
        >"$work/edge-$i.out" 2>"$work/edge-$i.err" &
    edge_pid=$!
    pids+=("$edge_pid")
    serving "$work/edge-$i.out" "$edge_pid" >/dev/null
    t2=$(now_us)
    n=0
    until "$bin" --data-dir "$edge" workflow show probe --json >/dev/null 2>&1; do
        n=$((n + 1))
        kill -0 "$edge_pid" 2>/dev/null || { echo "edge exited:" >&2; cat "$work/edge-$i.err" >&2; exit 1; }
        ((n < 3000)) || { echo "no workflow on the edge after $n polls" >&2; exit 1; }
    done
    t3=$(now_us)

    join_ms+=("$(((t1 - t0) / 1000))")
    serving_ms+=("$(((t2 - t1) / 1000))")
    doc_ms+=("$(((t3 - t1) / 1000))")
    total_ms+=("$(((t3 - t0) / 1000))")
    polls+=("$((n + 1))")
    echo "run $i: join $(((t1 - t0) / 1000)) ms, start -> serving $(((t2 - t1) / 1000)) ms, start -> first document $(((t3 - t1) / 1000)) ms ($((n + 1)) polls)" >&2

    kill -TERM "$edge_pid"
    wait "$edge_pid" || true
    kept=()
    for p in "${pids[@]}"; do [[ "$p" == "$edge_pid" ]] || kept+=("$p"); done
    pids=("${kept[@]}")
    rm -rf "$edge"
done

# A `workflow show` that fails, as the polls do before the document arrives: the resolution.
poll_ms=()
for _ in 1 2 3 4 5; do
    t0=$(now_us)
    "$bin" --data-dir "$work/none" workflow show probe --json >/dev/null 2>&1 || true
    poll_ms+=("$((($(now_us) - t0) / 1000))")
done

# median min max of the arguments
stats() {
    printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 }
        END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
              printf "%8s %8s %8s", m, a[1], a[NR] }'
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- node mesh crdt-store agents || echo ' (node, mesh, crdt-store or agents modified)')"
    echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "join time of a new node on loopback, $runs runs (ms)"
    printf '  %-42s %8s %8s %8s\n' "" median min max
    printf '  %-42s %s\n' "rhizome join (enrolment at the CA node)" "$(stats "${join_ms[@]}")"
    printf '  %-42s %s\n' "rhizome start -> serving line" "$(stats "${serving_ms[@]}")"
    printf '  %-42s %s\n' "rhizome start -> first document (probe)" "$(stats "${doc_ms[@]}")"
    printf '  %-42s %s\n' "total (join + start -> first document)" "$(stats "${total_ms[@]}")"
    printf '  %-42s %s\n' "polls per run" "$(stats "${polls[@]}")"
    echo "  one workflow show call (poll resolution): median $(stats "${poll_ms[@]}" | awk '{ print $1 }') ms"
} | tee "$out"
