#!/usr/bin/env bash
# Chaos soak: many seeded schedules of tests/tests/netns_chaos.rs (two sites and a cloud of
# real processes in network namespaces; kill -9, partitions, a split site, the cloud isolated,
# multicast dropped, a disk filled, 10 % loss). Needs root, iproute2 and nft (scripts/setup.sh).
# Stops at the first failing schedule, which prints its replay command. Sums the per-schedule
# `chaos-result` lines at the end.
#
# Usage: bench/chaos-soak.sh [-n SCHEDULES] [-s FIRST_SEED]
#   -n SCHEDULES   how many schedules (default 50); each takes about 45 s
#   -s FIRST_SEED  first seed (default 1)
set -euo pipefail

cd "$(dirname "$0")/.."

count=50
first=1
while getopts "n:s:h" opt; do
    case "$opt" in
        n) count="$OPTARG" ;;
        s) first="$OPTARG" ;;
        *) sed -n '2,11p' "$0"; exit 2 ;;
    esac
done
last=$((first + count - 1))
log="${CHAOS_SOAK_LOG:-target/chaos-soak.log}"
mkdir -p "$(dirname "$log")"

# nft and iproute2 (the test skips without them, and a soak of skipped schedules proves nothing).
scripts/setup.sh
cargo build --workspace --bins --locked
echo "chaos soak: seeds $first to $last, log in $log"
status=0
RHIZOME_CHAOS_SEEDS="$first-$last" cargo nextest run -p rhizome-e2e --locked \
    -E 'binary(netns_chaos)' --no-capture 2>&1 | tee "$log" | grep --line-buffered -E '^chaos-result|FAILED|replay:' \
    || true
grep -q 'test result: ok' "$log" || status=1

# Sums over every chaos-result line: key=value pairs, numeric values added, timings as median/max.
grep '^chaos-result' "$log" | python3 -c '
import sys, statistics
rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in sys.stdin]
if not rows:
    sys.exit("no schedule finished")
keys = sorted({k for r in rows for k in r if k != "seed"})
timing = [k for k in keys if k.endswith("_ms")]
print(f"schedules: {len(rows)}")
for k in keys:
    vals = [int(r.get(k, 0)) for r in rows]
    if k in timing:
        print(f"{k}: median {statistics.median(vals):.0f}, max {max(vals)}")
    else:
        print(f"{k}: {sum(vals)}")
'
exit "$status"
