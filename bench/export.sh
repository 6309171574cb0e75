#!/usr/bin/env bash
# Export throughput into PostgreSQL: N run records (default 200,000) recorded in a fresh store,
# then exported by the node's exporter (store reads, row mapping, batched upserts and the
# per-document checkpoints, as a running node does it) into a private local PostgreSQL cluster,
# once per method (multi-row VALUES upserts, binary COPY into a staging table then upsert),
# each into an empty schema; beside them PostgreSQL's own `COPY` of the same rows from a CSV
# file into an empty copy of the `runs` table (the ceiling: no conflict handling, no reading,
# no checkpoints). Prints rows/s of each and the ratio to the ceiling. Release build.
#
# Usage: bench/export.sh [RUNS] [BATCH]   (defaults: 200000, 1000)
#
# The cluster is Debian's PostgreSQL (scripts/setup.sh installs it) with its default settings
# (fsync on), run as `nobody` when this runs as root, on a free port of 127.0.0.1, in a temp dir
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-200000}"
batch="${2:-1000}"
target="${CARGO_TARGET_DIR:-$PWD/target}"

bin_dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin_dir" ] || [ ! -x "$bin_dir/initdb" ]; then
    echo "PostgreSQL's server binaries are missing: run scripts/setup.sh as root" >&2
    exit 1
fi

cargo build --release -p rhizome --example export_bench >&2
bench="$target/release/examples/export_bench"

work="$(mktemp -d "${TMPDIR:-/tmp}/rhizome-export.XXXXXX")"
chmod 755 "$work"
mkdir "$work/data" "$work/sock"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown nobody:nogroup "$work/data" "$work/sock"
    touch "$work/server.log" && chown nobody:nogroup "$work/server.log"
    as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_ctl() {
    (cd "$work" && "${as_pg[@]}" "$bin_dir/pg_ctl" -D "$work/data" -l "$work/server.log" \
        -o "-p $port -k $work/sock -c listen_addresses=127.0.0.1" "$@")
}
cleanup() {
    pg_ctl -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
(cd "$work" && "${as_pg[@]}" "$bin_dir/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 \
    --no-locale >/dev/null)
pg_ctl -w start >/dev/null
psql() { "$bin_dir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
url="postgres://postgres@127.0.0.1:$port"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

echo "PostgreSQL $(psql -d postgres -c 'SHOW server_version'), $runs runs, batch $batch, $(nproc) cores" >&2
declare -A rate
for method in values copy; do
    psql -d postgres -c "CREATE DATABASE bench_$method"
    csv=()
    [ "$method" = values ] && csv=(--csv "$work/runs.csv")
    line=$("$bench" --postgres "$url/bench_$method" --runs "$runs" --batch "$batch" \
        --method "$method" "${csv[@]}")
    echo "$line" >&2
    rate[$method]=$(sed -n 's/.*rows_per_s=\([0-9]*\).*/\1/p' <<<"$line")
    exported=$(psql -d "bench_$method" -c 'SELECT count(*) FROM rhizome.runs')
    [ "$exported" -eq "$runs" ] || { echo "$method: $exported rows in runs, not $runs" >&2; exit 1; }
done

# The ceiling: COPY of the same rows from CSV into an empty table with the same indexes.
psql -d bench_values -c 'CREATE TABLE ceiling (LIKE rhizome.runs INCLUDING ALL)'
cols="node, run_id, workflow, workflow_version, status, started_at, finished_at, duration_ms, output, error, steps"
start=$(now_ms)
psql -d bench_values -c "\\copy ceiling ($cols) FROM '$work/runs.csv' WITH (FORMAT csv)"
copy_ms=$(($(now_ms) - start))
copied=$(psql -d bench_values -c 'SELECT count(*) FROM ceiling')
[ "$copied" -eq "$runs" ] || { echo "COPY loaded $copied rows, not $runs" >&2; exit 1; }
rate[ceiling]=$((runs * 1000 / copy_ms))

echo
printf '%-42s %12s %10s\n' "export of $runs run records" "rows/s" "of COPY"
for method in values copy; do
    printf '%-42s %12s %9s%%\n' "exporter, $method (batch $batch)" "${rate[$method]}" \
        "$(awk "BEGIN { printf \"%.0f\", 100 * ${rate[$method]} / ${rate[ceiling]} }")"
done
printf '%-42s %12s %9s\n' "psql \\copy from CSV (the ceiling)" "${rate[ceiling]}" "100%"
