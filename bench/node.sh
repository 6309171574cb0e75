#!/usr/bin/env bash
# Start-up time and idle memory of a node: time from exec to the "serving" line (which comes
# after the store is open, the QUIC endpoint and HTTP API are bound), and RSS after a few
# seconds idle with two connected peers. Release build; mDNS off so the figure excludes the
# mDNS probe window; everything on loopback.
#
# Usage: bench/node.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
cargo build --release -p rhizome >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/rhizome"
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT

"$bin" --data-dir "$work/a" init --name a -q >/dev/null
"$bin" --data-dir "$work/b" init --name b --mesh "$work/a/mesh" -q >/dev/null
"$bin" --data-dir "$work/c" init --name c --mesh "$work/a/mesh" -q >/dev/null

start_ms=()
for _ in $(seq "$runs"); do
  t0=$(date +%s%N)
  coproc NODE { exec "$bin" --data-dir "$work/a" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns 2>/dev/null; }
  read -r line <&"${NODE[0]}"
  t1=$(date +%s%N)
  start_ms+=("$(( (t1 - t0) / 1000 ))")
  kill -TERM "$NODE_PID"; wait "$NODE_PID" || true
done
sorted=$(printf '%s\n' "${start_ms[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$sorted" | tail -1)
echo "start to serving (exec -> serving line), $runs runs: median ${median} us, max ${max} us"

coproc A { exec "$bin" --data-dir "$work/a" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns 2>/dev/null; }
read -r line <&"${A[0]}"
quic=$(echo "$line" | sed -E 's/.*quic ([0-9.:]+),.*/\1/')
pids+=("$A_PID")
"$bin" --data-dir "$work/b" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns --peer "$quic" >/dev/null 2>&1 &
pids+=("$!")
"$bin" --data-dir "$work/c" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns --peer "$quic" >/dev/null 2>&1 &
pids+=("$!")
sleep 5
peers=$("$bin" --data-dir "$work/a" peers --json | grep -c '"connected"' || true)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$A_PID/status")
echo "idle RSS with $peers connected peers after 5 s: ${rss} KiB"
kill -TERM "$A_PID"; wait "$A_PID" || true
