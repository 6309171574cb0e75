#!/usr/bin/env bash
# What an idle node costs, and how much of it is the resource monitor: two nodes started side by
# side for the same time, each alone in a mesh of its own, one with the default configuration
# (the monitor samples every 5 s) and one with `[health] monitor_interval = "1h"` (the monitor
# takes its first sample and then sleeps: effectively off). Nothing scrapes them, nothing calls
# their API: idle stays idle. Release build, loopback only, mDNS off.
#
# For each node: RSS (VmRSS) after the "serving" line and at the end, the peak (VmHWM), and the
# CPU time (utime + stime of /proc/PID/stat) spent between the two, as seconds per hour and as
# percent of one core; then the ratio monitor on / off. The RSS at the end is split into
# anonymous memory (heap, stacks) and file pages (mostly the binary's own code, shared by every
# process that runs it and reclaimable). RSS and CPU are also sampled every
# 30 s into the raw log, to show whether either drifts.
#
# Usage: bench/idle-node.sh          IDLE_SECONDS (default 600) sets the duration.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${IDLE_SECONDS:-600}"
step=30
((secs > 0)) || { echo "IDLE_SECONDS must be positive" >&2; exit 2; }
. bench/node-lib.sh
node_bench idle
out="$target/bench/idle-node.txt"
raw="$target/bench/idle-node.samples.txt"


tck="$(getconf CLK_TCK)"
# A field of /proc/PID/status in KiB.
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

names=(monitor quiet)
for n in "${names[@]}"; do
    "$bin" --data-dir "$work/$n" init --name idle -q >/dev/null
done
toml="$work/quiet/rhizome.toml"
sed -i -E 's/^monitor_interval = .*/monitor_interval = "1h"/' "$toml"
grep -q '^monitor_interval = "1h"$' "$toml" || { echo "could not set monitor_interval in $toml" >&2; exit 1; }
grep -q '^monitor_interval = "5s"$' "$work/monitor/rhizome.toml" ||
    { echo "the default monitor_interval is no longer 5s: update this script" >&2; exit 1; }

declare -A pid t0 rss0
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${names[@]}"; do
    # No RHIZOME_* variable may change what the file says.
    env -u RHIZOME_HEALTH_MONITOR_INTERVAL \
        "$bin" --data-dir "$work/$n" start --no-mdns --listen 127.0.0.1:0 --http 127.0.0.1:0 \
        >"$work/$n.out" 2>"$work/$n.err" &
    pid[$n]=$!
    pids+=("$!")
done
for n in "${names[@]}"; do serving "$work/$n.out" "${pid[$n]}" >/dev/null; done
start_s=$(date +%s.%N)
for n in "${names[@]}"; do
    t0[$n]=$(ticks "${pid[$n]}")
    rss0[$n]=$(status_kib "${pid[$n]}" VmRSS)
done
echo "both nodes serving; idle for $secs s (samples every $step s in $raw)" >&2

{
    echo "# elapsed_s $(for n in "${names[@]}"; do printf '%s_rss_kib %s_cpu_ticks ' "$n" "$n"; done)load1"
    elapsed=0
    while ((elapsed < secs)); do
        sleep $((secs - elapsed < step ? secs - elapsed : step))
        elapsed=$((elapsed + step > secs ? secs : elapsed + step))
        line="$elapsed"
        for n in "${names[@]}"; do
            kill -0 "${pid[$n]}" 2>/dev/null || { echo "node $n exited:" >&2; cat "$work/$n.err" >&2; exit 1; }
            line+=" $(status_kib "${pid[$n]}" VmRSS) $(($(ticks "${pid[$n]}") - t0[$n]))"
        done
        echo "$line $(cut -d' ' -f1 /proc/loadavg)"
    done
} >"$raw"
end_s=$(date +%s.%N)
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

declare -A cpu_s rss1 hwm anon file
for n in "${names[@]}"; do
    anon[$n]=$(status_kib "${pid[$n]}" RssAnon)
    file[$n]=$(status_kib "${pid[$n]}" RssFile)
    cpu_s[$n]=$(awk -v a="$(ticks "${pid[$n]}")" -v b="${t0[$n]}" -v t="$tck" 'BEGIN { printf "%.2f", (a - b) / t }')
    rss1[$n]=$(status_kib "${pid[$n]}" VmRSS)
    hwm[$n]=$(status_kib "${pid[$n]}" VmHWM)
done
wall=$(awk -v a="$end_s" -v b="$start_s" 'BEGIN { printf "%.1f", a - b }')
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
per_hour() { awk -v c="$1" -v w="$wall" 'BEGIN { printf "%.1f", c * 3600 / w }'; }
pct() { awk -v c="$1" -v w="$wall" 'BEGIN { printf "%.3f", c * 100 / w }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- node mesh crdt-store agents || echo ' (node, mesh, crdt-store or agents modified)')"
    echo "cpus: $(nproc), load before: $load_before, after: $load_after, clock ticks: $tck/s"
    echo "idle node, release build, loopback, mDNS off, $wall s side by side"
    printf '  %-34s %12s %12s %10s\n' "" "monitor 5s" "monitor 1h" "ratio"
    printf '  %-34s %12s %12s %10s\n' "RSS after serving (MB)" "$(mb "${rss0[monitor]}")" "$(mb "${rss0[quiet]}")" "$(ratio "${rss0[monitor]}" "${rss0[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "RSS at the end (MB)" "$(mb "${rss1[monitor]}")" "$(mb "${rss1[quiet]}")" "$(ratio "${rss1[monitor]}" "${rss1[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "  of it anonymous, RssAnon (MB)" "$(mb "${anon[monitor]}")" "$(mb "${anon[quiet]}")" "$(ratio "${anon[monitor]}" "${anon[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "  of it file pages, RssFile (MB)" "$(mb "${file[monitor]}")" "$(mb "${file[quiet]}")" "$(ratio "${file[monitor]}" "${file[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "RSS peak, VmHWM (MB)" "$(mb "${hwm[monitor]}")" "$(mb "${hwm[quiet]}")" "$(ratio "${hwm[monitor]}" "${hwm[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "CPU seconds in the run" "${cpu_s[monitor]}" "${cpu_s[quiet]}" "$(ratio "${cpu_s[monitor]}" "${cpu_s[quiet]}")"
    printf '  %-34s %12s %12s %10s\n' "CPU seconds per hour" "$(per_hour "${cpu_s[monitor]}")" "$(per_hour "${cpu_s[quiet]}")" ""
    printf '  %-34s %12s %12s %10s\n' "% of one core" "$(pct "${cpu_s[monitor]}")" "$(pct "${cpu_s[quiet]}")" ""
    echo "  monitor's share: $(awk -v a="${cpu_s[monitor]}" -v b="${cpu_s[quiet]}" -v w="$wall" \
        'BEGIN { printf "%.1f CPU s/h, %.3f %% of a core", (a - b) * 3600 / w, (a - b) * 100 / w }')"
} | tee "$out"
