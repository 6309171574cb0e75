#!/usr/bin/env bash
# Exactly-once export under many kills: the end-to-end test that kills the exporting node with
# SIGKILL at random moments of a large export (24 times in the test suite), run with KILLS
# kills, then a replay from scratch with a database crash in the middle; every run must be in
# the `runs` table exactly once at the end. A real PostgreSQL cluster (Debian's, installed by
# scripts/setup.sh) is started in a temp dir by the test. Debug build, as the test suite.
#
# Usage: bench/export-kill-soak.sh [KILLS]     (default 200; the test reads EXPORT_SOAK_KILLS,
# not a RHIZOME_ variable, which every node would read as configuration)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-200}"
cargo build -p rhizome >&2
log="${CARGO_TARGET_DIR:-target}/export-kill-soak-$kills.log"
status=0
EXPORT_SOAK_KILLS="$kills" cargo nextest run -p rhizome-e2e --test export_postgres \
    -E 'test(kills_and_a_database_crash_during_a_large_export)' --no-capture >"$log" 2>&1 ||
    status=$?
grep -E "runs recorded|kill [0-9]+:|export finished|landed during|replay|PASS|FAIL|panicked" "$log" || true
echo "full output: $log"
exit "$status"
