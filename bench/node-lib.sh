# Shared by the node benchmarks (sourced, not run): a release build of `rhizome` only (the
# simulator binary in target/release may be in use by a soak), a scratch dir removed at exit
# with every node the script started, and the wait for a node's "serving" line.
#
# After `node_bench NAME`: $bin is the binary, $target the target dir, $work the scratch dir;
# append the pid of every node started to `pids`.

node_bench() {
    target="${CARGO_TARGET_DIR:-$PWD/target}"
    mkdir -p "$target/bench"
    cargo build --release -p rhizome >&2
    bin="$target/release/rhizome"
    work="$(mktemp -d "${TMPDIR:-/tmp}/rhizome-$1.XXXXXX")"
    pids=()
    trap node_bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

node_bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

# utime + stime of a process, in clock ticks (fields 14 and 15; the name in field 2 has no
# spaces here).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Minor page faults of a process so far (field 10).
minor_faults() { awk '{ print $10 }' "/proc/$1/stat"; }

# Waits for the "serving" line of a node started with its stdout in $1 (its stderr beside it,
# `.err` for `.out`); prints its QUIC address.
serving() {
    local file="$1" pid="$2" deadline=$(($(date +%s) + 30))
    until grep -q ' serving: ' "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "node $pid exited before serving:" >&2; cat "${file%.out}.err" >&2; return 1; }
        (($(date +%s) < deadline)) || { echo "node $pid not serving after 30 s" >&2; return 1; }
        sleep 0.002
    done
    sed -nE 's/.* serving: quic ([0-9.:]+),.*/\1/p' "$file" | head -1
}
