#!/usr/bin/env bash
# Artifact fan-out, release build, in two parts:
#
# 1. Two sites and a cloud in network namespaces (tests/tests/netns_artifact_fanout.rs, root
#    only; skipped otherwise): a 50 MB artifact added at the cloud, fetched by all six edges at
#    once; the bytes over each site's uplink (the router's `tx_bytes` into the site) and the
#    copies the cloud served; a second version 1 MB different; a fetch cut by an unplugged
#    uplink, resumed. The test's figure lines are printed.
# 2. Loopback: one `rhizome artifact fetch` of a 200 MB random artifact from one node to
#    another (two `rhizome start`, `--no-mdns`, 127.0.0.1), timed; MB/s printed. The fetched
#    file is written out afterwards and compared with the original (not timed).
#
# Usage: bench/artifact-fanout.sh [MB]   (loopback size; default RHIZOME_BENCH_MB or 200)
#
# The test finds the `rhizome` binary of its own profile (tests/src/lib.rs: target/release for
# `cargo test --release`) and does not rebuild it when present: the release build below comes
# first. `cargo bench -p rhizome --bench artifact_transfer` compares the loopback fetch with a
# plain QUIC file copy, over several repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
mb="${1:-${RHIZOME_BENCH_MB:-200}}"
. bench/node-lib.sh
node_bench artifact-fanout
out="$target/bench/artifact-fanout.txt"

echo "== two sites and a cloud, network namespaces (release)" | tee "$out"
test_log="$work/netns.log"
if ! cargo test --release -p rhizome-e2e --test netns_artifact_fanout -- --nocapture \
    >"$test_log" 2>&1; then
    cat "$test_log" >&2
    echo "the namespace test failed" >&2
    exit 1
fi
if grep -q '^skipped:' "$test_log"; then
    grep '^skipped:' "$test_log" | tee -a "$out"
else
    grep -E '^(the cloud served|50 MB|a 1 MB|fetch with|resumed)' "$test_log" | tee -a "$out"
fi

echo "== loopback: one ${mb} MB artifact from one node to another (release)" | tee -a "$out"
now_us() { echo $(($(date +%s%N) / 1000)); }
head -c "$((mb * 1024 * 1024))" /dev/urandom >"$work/artifact.bin"
a="$work/a" b="$work/b"
"$bin" --data-dir "$a" init --name a -q >/dev/null
"$bin" --data-dir "$b" init --name b --mesh "$a/mesh" -q >/dev/null
id="$("$bin" --data-dir "$a" artifact add "$work/artifact.bin" --json |
    sed -nE 's/^ *"id": *"([0-9a-f]{64})".*/\1/p')"
[[ -n "$id" ]] || { echo "no id from artifact add" >&2; exit 1; }
"$bin" --data-dir "$a" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    >"$work/a.out" 2>"$work/a.err" &
pids+=("$!")
a_quic="$(serving "$work/a.out" "$!")"
"$bin" --data-dir "$b" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    --peer "$a_quic" >"$work/b.out" 2>"$work/b.err" &
pids+=("$!")
serving "$work/b.out" "$!" >/dev/null
# Until b is connected to a, a fetch fails at once (no peer to ask): the one that succeeds
# is timed.
deadline=$(($(date +%s) + 30))
while :; do
    t0=$(now_us)
    if "$bin" --data-dir "$b" artifact fetch "$id" --json >"$work/fetch.json" 2>"$work/fetch.err"; then
        t1=$(now_us)
        break
    fi
    (($(date +%s) < deadline)) || { cat "$work/fetch.err" >&2; exit 1; }
    sleep 0.05
done
"$bin" --data-dir "$b" artifact fetch "$id" --output "$work/fetched.bin" >/dev/null
cmp -s "$work/artifact.bin" "$work/fetched.bin" || { echo "the fetched file differs" >&2; exit 1; }
blobs="$(sed -nE 's/^ *"blobs_fetched": *([0-9]+).*/\1/p' "$work/fetch.json")"
awk -v us="$((t1 - t0))" -v mb="$mb" -v blobs="$blobs" 'BEGIN {
    printf "%d MB node to node: %.2f s, %.0f MB/s (%s blobs; the CLI'"'"'s own start included)\n",
        mb, us / 1e6, mb / (us / 1e6), blobs
}' | tee -a "$out"
echo "figures in $out" >&2
