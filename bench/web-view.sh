#!/usr/bin/env bash
# The web view with a fleet: a cloud peer and N edges (real `rhizome` processes on loopback, mDNS
# off, in zones of ZONE_SIZE that meet through the registry), a workflow every 5 s on every
# edge; then headless Chromium loads the cloud's page with a monitor token and reports the
# first load (bytes over the wire, time to the fleet table drawn with every node), the time
# one redraw takes, and the time from a change in the store to the page redrawn.
#
# LIVE edges keep running while the page is measured; the others are stopped once the cloud
# holds every node (its registry, fleet view and results keep them; the page draws them as
# down). On a machine of 2 cores, 100 running nodes beside the browser measure the machine, not
# the page: the cloud answered in 9-13 s a request that way. LIVE = N measures that anyway.
#
# Usage: bench/web-view.sh [N] [ZONE_SIZE] [LIVE]   (default 100 edges in zones of 10, 10 live)
# Needs chromium and tests/js's npm packages (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/node-lib.sh

edges="${1:-100}"
zone_size="${2:-10}"
live="${3:-$zone_size}"
node_bench web-view

"$bin" --data-dir "$work/cloud" init --name cloud >/dev/null
for i in $(seq 1 "$edges"); do
    "$bin" --data-dir "$work/e$i" init --name "edge-$i" --mesh "$work/cloud/mesh" \
        --zone "site-$(((i - 1) / zone_size))" --tag sensor >/dev/null
done
"$bin" --data-dir "$work/cloud" start --role cloud --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    --no-mdns >"$work/cloud.out" 2>"$work/cloud.err" &
pids+=($!)
cloud_quic="$(serving "$work/cloud.out" "${pids[-1]}")"
cloud_http="$(sed -nE 's/.* http ([0-9.:]+),.*/\1/p' "$work/cloud.out" | head -1)"
# Applied before the edges start: they take it with the registry as they join.
printf 'id: probe\ntrigger: {every: 5s}\ntarget: {tags: [sensor]}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n' >"$work/probe.yaml"
"$bin" --data-dir "$work/cloud" workflow apply "$work/probe.yaml" >/dev/null
started=$(date +%s.%N)
for i in $(seq 1 "$edges"); do
    "$bin" --data-dir "$work/e$i" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns \
        --peer "$cloud_quic" >"$work/e$i.out" 2>"$work/e$i.err" &
    pids+=($!)
done
for i in $(seq 1 "$edges"); do serving "$work/e$i.out" "${pids[$i]}" >/dev/null; done
echo "$edges edges started; waiting for every node in the cloud's registry and fleet view" >&2
deadline=$(($(date +%s) + 600))
fleet_nodes() {
    "$bin" --data-dir "$work/cloud" status --fleet --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"])' 2>/dev/null || echo 0
}
until [ "$(fleet_nodes)" -ge "$edges" ]; do
    (($(date +%s) < deadline)) || { echo "the fleet view did not reach $edges nodes in 10 minutes" >&2; exit 1; }
    sleep 2
done
echo "every edge in the cloud's fleet view $(python3 -c "import time; print(round(time.time() - $started, 1))") s after the edges started" >&2
if ((live < edges)); then
    for i in $(seq $((live + 1)) "$edges"); do kill "${pids[$i]}" 2>/dev/null || true; done
    for i in $(seq $((live + 1)) "$edges"); do wait "${pids[$i]}" 2>/dev/null || true; done
    # Until the cloud has noticed every stopped edge, its page would show them up.
    down_peers() {
        "$bin" --data-dir "$work/cloud" peers --json 2>/dev/null |
            python3 -c 'import json,sys; print(sum(p["state"] != "connected" for p in json.load(sys.stdin)))' 2>/dev/null || echo 0
    }
    deadline=$(($(date +%s) + 300))
    until [ "$(down_peers)" -ge $((edges - live)) ]; do
        (($(date +%s) < deadline)) || { echo "the cloud did not see the stopped edges down in time" >&2; exit 1; }
        sleep 2
    done
    echo "$((edges - live)) edges stopped and seen down at the cloud; $live edges and the cloud run" >&2
fi
token="$("$bin" --data-dir "$work/cloud" token create --role monitor --name bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
node bench/web/load.mjs "http://$cloud_http/?token=$token" "$((edges + 1))"
