#!/usr/bin/env bash
# What a `GET /metrics` scrape costs on a node that knows 100 peers and 100 workflows, side by
# side with a fresh node that knows none (each alone in a mesh of its own).
#
# The busy node ("hub"): SCRAPE_WORKFLOWS workflows applied (manual trigger, a sensor step and a
# z-score step), each run SCRAPE_RUNS times through the running node (`rhizome run`), so that
# every per-workflow family has its series; and SCRAPE_PEERS nodes of its mesh
# (`init --mesh <hub>/mesh`), each started with `--peer <hub>` until `rhizome sync` says its
# documents (its registry entry among them) are identical with the hub's. A hundred live
# processes are too many for 2 cores: all but SCRAPE_LIVE of them are stopped again, so the hub
# ends up with SCRAPE_PEERS registry entries and peers, SCRAPE_LIVE of them connected and the
# others known but down (which it redials, back-off capped at 3 s).
#
# Then SCRAPE_COUNT scrapes of each node, alternating hub / fresh, back to back, with a monitor
# token (curl, `-w %{time_total}`): time per scrape (median, p90, max), bytes, series. Then
# SCRAPE_CPU_COUNT more of each the same way for the CPU a scrape costs the node: its utime +
# stime over them (10 ms ticks, hence the larger count), less what it spends in the same time
# without scrapes (measured for BASELINE_SECONDS before and after, averaged).
# Release build, loopback only, mDNS off.
#
# Usage: bench/scrape.sh
#   SCRAPE_PEERS (100) SCRAPE_LIVE (5) SCRAPE_WORKFLOWS (100) SCRAPE_RUNS (3)
#   SCRAPE_COUNT (50) SCRAPE_CPU_COUNT (500) BASELINE_SECONDS (30)
set -euo pipefail
cd "$(dirname "$0")/.."
n_peers="${SCRAPE_PEERS:-100}"
n_live="${SCRAPE_LIVE:-5}"
n_workflows="${SCRAPE_WORKFLOWS:-100}"
n_runs="${SCRAPE_RUNS:-3}"
n_scrapes="${SCRAPE_COUNT:-50}"
n_cpu="${SCRAPE_CPU_COUNT:-500}"
baseline_s="${BASELINE_SECONDS:-30}"
. bench/node-lib.sh
node_bench scrape
out="$target/bench/scrape.txt"


tck="$(getconf CLK_TCK)"
now() { date +%s.%N; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# start NAME [--peer ADDR]: starts the node of $work/NAME, sets NODE_PID and NODE_QUIC.
start() {
    local name="$1"
    shift
    "$bin" --data-dir "$work/$name" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    NODE_PID=$!
    pids+=("$NODE_PID")
    NODE_QUIC="$(serving "$work/$name.out" "$NODE_PID")"
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local kept=() p
    for p in "${pids[@]}"; do [[ "$p" == "$1" ]] || kept+=("$p"); done
    pids=("${kept[@]}")
}

# connected DIR: waits until the node of DIR has a connected peer.
connected() {
    local deadline=$(($(date +%s) + 30))
    until "$bin" --data-dir "$1" peers --json 2>/dev/null | jq -e 'any(.[]; .state == "connected")' >/dev/null; do
        (($(date +%s) < deadline)) || { echo "$1: no connected peer after 30 s" >&2; return 1; }
        sleep 0.05
    done
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for n in hub fresh; do "$bin" --data-dir "$work/$n" init --name "$n" -q >/dev/null; done
start hub
hub_pid=$NODE_PID hub_quic=$NODE_QUIC
start fresh
fresh_pid=$NODE_PID

log "applying $n_workflows workflows, $n_runs runs each"
for i in $(seq -f '%03g' "$n_workflows"); do
    cat >"$work/w-$i.yaml" <<EOF
id: bench-$i
description: scrape benchmark workflow $i
trigger: manual
steps:
  - id: read
    agent: sensor
    config: {seed: $((10#$i))}
  - id: score
    agent: zscore
    inputs: [read]
    config: {field: value, last: 20, threshold: 3}
EOF
    "$bin" --data-dir "$work/hub" workflow apply "$work/w-$i.yaml" -q >/dev/null
done
for _ in $(seq "$n_runs"); do
    for i in $(seq -f '%03g' "$n_workflows"); do
        "$bin" --data-dir "$work/hub" run "bench-$i" >/dev/null
    done
done

log "$n_peers peers join (each started until its documents are identical with the hub's; $n_live stay up)"
for k in $(seq -f '%03g' "$n_peers"); do
    "$bin" --data-dir "$work/p$k" init --name "p$k" --mesh "$work/hub/mesh" -q >/dev/null
    start "p$k" --peer "$hub_quic"
    connected "$work/p$k"
    ok=""
    for _ in 1 2 3; do
        if "$bin" --data-dir "$work/p$k" sync --timeout 20s >/dev/null 2>"$work/p$k.sync"; then ok=1; break; fi
    done
    [[ -n "$ok" ]] || { echo "p$k never in sync with the hub:" >&2; cat "$work/p$k.sync" >&2; exit 1; }
    ((10#$k <= n_live)) || stop "$NODE_PID"
    ((10#$k % 10)) || log "  $((10#$k)) joined"
done

hub_api="http://$(cat "$work/hub/node.http")"
fresh_api="http://$(cat "$work/fresh/node.http")"
token() { "$bin" --data-dir "$work/$1" token create --role monitor --name scrape-bench --json | jq -r .token; }
hub_token="$(token hub)"
fresh_token="$(token fresh)"
scrape() { curl -sS --fail -o "$3" -w '%{time_total} %{size_download}\n' -H "Authorization: Bearer $2" "$1/metrics"; }

# One scrape of each for the counts (and to warm up), and the hub's peer and registry counts.
scrape "$hub_api" "$hub_token" "$work/hub.metrics" >/dev/null
scrape "$fresh_api" "$fresh_token" "$work/fresh.metrics" >/dev/null
peers_json="$("$bin" --data-dir "$work/hub" peers --json)"
known=$(jq length <<<"$peers_json")
connected=$(jq '[.[] | select(.state == "connected")] | length' <<<"$peers_json")

# baseline SECONDS: CPU ticks of hub and fresh over an interval without scrapes.
baseline() {
    local h0 f0 t0 t1
    h0=$(ticks "$hub_pid") f0=$(ticks "$fresh_pid") t0=$(now)
    sleep "$1"
    t1=$(now)
    echo "$(($(ticks "$hub_pid") - h0)) $(($(ticks "$fresh_pid") - f0)) $(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')"
}
log "$n_scrapes scrapes of each (times); baseline ${baseline_s} s, $n_cpu scrapes of each (CPU), baseline ${baseline_s} s"
: >"$work/hub.times"
: >"$work/fresh.times"
t0=$(now)
for _ in $(seq "$n_scrapes"); do
    scrape "$hub_api" "$hub_token" "$work/hub.metrics" >>"$work/hub.times"
    scrape "$fresh_api" "$fresh_token" "$work/fresh.metrics" >>"$work/fresh.times"
done
tw=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
read -r bh1 bf1 bw1 < <(baseline "$baseline_s")
h0=$(ticks "$hub_pid") f0=$(ticks "$fresh_pid") t0=$(now)
for _ in $(seq "$n_cpu"); do
    scrape "$hub_api" "$hub_token" /dev/null >/dev/null
    scrape "$fresh_api" "$fresh_token" /dev/null >/dev/null
done
t1=$(now)
sh=$(($(ticks "$hub_pid") - h0)) sf=$(($(ticks "$fresh_pid") - f0))
sw=$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')
read -r bh2 bf2 bw2 < <(baseline "$baseline_s")
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# median p90 max of a column of seconds, in ms
times_ms() {
    awk '{ print $1 * 1000 }' "$1" | sort -n | awk '{ a[NR] = $1 }
        END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
              p = a[int(NR * 0.9 + 0.999)];
              printf "%8.2f %8.2f %8.2f", m, p, a[NR] }'
}
bytes() { awk '{ print $2 }' "$1" | sort -n | tail -1; }
series() { grep -cv '^#' "$1"; }
families() { grep -c '^# TYPE ' "$1"; }
# CPU ms per scrape: ticks over the scrapes less the baseline rate over the same time.
cpu_per_scrape() {
    awk -v s="$1" -v b1="$2" -v w1="$3" -v b2="$4" -v w2="$5" -v w="$6" -v n="$n_cpu" -v t="$tck" \
        'BEGIN { rate = (b1 + b2) / (w1 + w2); printf "%.2f", (s - rate * w) / t / n * 1000 }'
}
idle_pct() { awk -v b1="$1" -v w1="$2" -v b2="$3" -v w2="$4" -v t="$tck" 'BEGIN { printf "%.2f", (b1 + b2) / t / (w1 + w2) * 100 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

hub_med=$(times_ms "$work/hub.times" | awk '{ print $1 }')
fresh_med=$(times_ms "$work/fresh.times" | awk '{ print $1 }')
hub_cpu=$(cpu_per_scrape "$sh" "$bh1" "$bw1" "$bh2" "$bw2" "$sw")
fresh_cpu=$(cpu_per_scrape "$sf" "$bf1" "$bw1" "$bf2" "$bw2" "$sw")
wf_series=$(grep -c 'workflow="' "$work/hub.metrics" || true)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- node mesh crdt-store agents || echo ' (node, mesh, crdt-store or agents modified)')"
    echo "cpus: $(nproc), load at the start: $load_start, at the end: $load_end, clock ticks: $tck/s"
    echo "hub: $n_workflows workflows, $((n_workflows * n_runs)) runs, $known peers known ($connected connected); fresh: a new node alone"
    echo "$n_scrapes scrapes of each, alternating, back to back in $tw s (times); $n_cpu of each in $(printf '%.1f' "$sw") s (CPU)"
    printf '  %-36s %12s %12s %8s\n' "" hub fresh ratio
    read -r a b c <<<"$(times_ms "$work/hub.times")"
    read -r d e f <<<"$(times_ms "$work/fresh.times")"
    printf '  %-36s %12s %12s %8s\n' "time per scrape, median (ms)" "$a" "$d" "$(ratio "$a" "$d")"
    printf '  %-36s %12s %12s %8s\n' "time per scrape, p90 (ms)" "$b" "$e" "$(ratio "$b" "$e")"
    printf '  %-36s %12s %12s %8s\n' "time per scrape, max (ms)" "$c" "$f" "$(ratio "$c" "$f")"
    printf '  %-36s %12s %12s %8s\n' "response (bytes)" "$(bytes "$work/hub.times")" "$(bytes "$work/fresh.times")" "$(ratio "$(bytes "$work/hub.times")" "$(bytes "$work/fresh.times")")"
    printf '  %-36s %12s %12s %8s\n' "series (sample lines)" "$(series "$work/hub.metrics")" "$(series "$work/fresh.metrics")" "$(ratio "$(series "$work/hub.metrics")" "$(series "$work/fresh.metrics")")"
    printf '  %-36s %12s %12s %8s\n' "families" "$(families "$work/hub.metrics")" "$(families "$work/fresh.metrics")" ""
    printf '  %-36s %12s %12s %8s\n' "node CPU per scrape (ms)" "$hub_cpu" "$fresh_cpu" "$(ratio "$hub_cpu" "$fresh_cpu")"
    printf '  %-36s %12s %12s %8s\n' "node CPU without scrapes (% core)" "$(idle_pct "$bh1" "$bw1" "$bh2" "$bw2")" "$(idle_pct "$bf1" "$bw1" "$bf2" "$bw2")" ""
    echo "  hub series with a workflow label: $wf_series"
    echo "  hub series per family (largest first):"
    grep -v '^#' "$work/hub.metrics" | sed -E 's/[{ ].*//; s/_(bucket|sum|count)$//' | sort | uniq -c | sort -rn | head -12 |
        awk '{ printf "    %5d %s\n", $1, $2 }'
    echo "  baseline ticks (hub fresh seconds): before $bh1 $bf1 $bw1, after $bh2 $bf2 $bw2; during scrapes $sh $sf $sw"
} | tee "$out"
cp "$work/hub.metrics" "$target/bench/scrape.hub.metrics"
