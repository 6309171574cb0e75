#!/usr/bin/env bash
# Crash soak: the crash-safety test (tests/tests/crash.rs) with many more SIGKILLs, in release.
#
# Usage: bench/crash-soak.sh [ITERATIONS]
#   ITERATIONS            rounds of kills (default: $RHIZOME_CRASH_ITERATIONS, else 200)
#   RHIZOME_CRASH_SEED    seed of the kill delays (default: the current time; printed on
#                         success and in any failure, to repeat a run)
set -euo pipefail

cd "$(dirname "$0")/.."
export RHIZOME_CRASH_ITERATIONS="${1:-${RHIZOME_CRASH_ITERATIONS:-200}}"
export RHIZOME_CRASH_SEED="${RHIZOME_CRASH_SEED:-$(date +%s)}"
echo "crash soak: ${RHIZOME_CRASH_ITERATIONS} rounds, seed ${RHIZOME_CRASH_SEED}" >&2
exec cargo test -p rhizome-e2e --release --test crash -- --nocapture
