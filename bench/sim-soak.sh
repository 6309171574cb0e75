#!/usr/bin/env bash
# Simulator soak: every scenario in simulator/scenarios over many seeds, on the release binary,
# in parallel. Prints pass/fail counts per scenario and the replay command of every failing
# seed; exits non-zero if any seed failed.
#
# Usage: bench/sim-soak.sh [-n SEEDS] [-s FIRST_SEED] [-j JOBS] [-c CHUNK] [SCENARIO...]
#   -n SEEDS       seeds per scenario (default: $SIM_SOAK_SEEDS, else 10000)
#   -s FIRST_SEED  first seed (default 1)
#   -j JOBS        parallel simulator processes (default 2)
#   -c CHUNK       consecutive seeds per process (default 100)
#   SCENARIO       scenario names (default: every simulator/scenarios/*.toml)
#
# Each process runs one chunk of seeds at one node count (`--seeds CHUNK --keep-going --brief`);
# chunks cycle through the node counts of the scenario (NODES_<scenario> below, overridable
# from the environment, e.g. NODES_churn="5 10"), so that odd and even meshes and several
# sizes run. The two large scenarios run at the sizes of the test suite: thousands of seeds at
# their full size would take days.
#
#   bench/sim-soak.sh -n 200                 # a quick pass, a few minutes
#   bench/sim-soak.sh churn                  # 10,000 seeds of churn only
set -euo pipefail

cd "$(dirname "$0")/.."

seeds="${SIM_SOAK_SEEDS:-10000}"
first=1
jobs=2
chunk=100
while getopts "n:s:j:c:h" opt; do
    case "$opt" in
        n) seeds="$OPTARG" ;;
        s) first="$OPTARG" ;;
        j) jobs="$OPTARG" ;;
        c) chunk="$OPTARG" ;;
        *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if [ "$#" -gt 0 ]; then
    scenarios=("$@")
else
    scenarios=()
    for f in simulator/scenarios/*.toml; do
        scenarios+=("$(basename "$f" .toml)")
    done
fi

# Node counts per scenario, cycled over chunks.
nodes_for() {
    local var="NODES_${1//-/_}"
    if [ -n "${!var:-}" ]; then
        echo "${!var}"
        return
    fi
    case "$1" in
        fleet-1000) echo "40" ;;
        hierarchy-500) echo "60" ;;
        long-offline) echo "3" ;;
        *) echo "5 6 8 10" ;;
    esac
}

cargo build --release -p simulator >&2
bin="$PWD/target/release/simulator"
out="$(mktemp -d "${TMPDIR:-/tmp}/sim-soak.XXXXXX")"
echo "sim soak: ${#scenarios[@]} scenarios x $seeds seeds from $first, $jobs jobs, chunks of $chunk; output in $out" >&2

# One line per chunk: scenario, nodes, first seed, count.
plan="$out/plan"
: >"$plan"
for sc in "${scenarios[@]}"; do
    read -r -a sizes <<<"$(nodes_for "$sc")"
    k=0
    s="$first"
    end=$((first + seeds))
    while [ "$s" -lt "$end" ]; do
        n=$((end - s < chunk ? end - s : chunk))
        echo "$sc ${sizes[$((k % ${#sizes[@]}))]} $s $n" >>"$plan"
        s=$((s + n))
        k=$((k + 1))
    done
done

started=$(date +%s)
export bin out
# A failing chunk exits non-zero by design; the counts below come from its output.
xargs -P "$jobs" -L 1 sh -c '
    "$bin" --scenario "$0" --nodes "$1" --seed "$2" --seeds "$3" --keep-going --brief \
        >"$out/$0.$1.$2.log" 2>&1 || true
' <"$plan"
wall=$(($(date +%s) - started))

failed=0
printf '%-18s %8s %8s %8s\n' scenario seeds passed failed
for sc in "${scenarios[@]}"; do
    pass=$(cat "$out/$sc".*.log | grep -c '^pass seed ' || true)
    fail=$(cat "$out/$sc".*.log | grep -c '^FAIL seed .*: replay with: ' || true)
    printf '%-18s %8d %8d %8d\n' "$sc" $((pass + fail)) "$pass" "$fail"
    failed=$((failed + fail))
    # A process that died without a verdict per seed (a panic) counts as a failure.
    for log in "$out/$sc".*.log; do
        if grep -q "panicked" "$log"; then
            echo "  a process panicked: $log" >&2
            failed=$((failed + 1))
        fi
    done
done
echo "wall time ${wall} s"
if [ "$failed" -gt 0 ]; then
    echo
    echo "failing seeds:"
    cat "$out"/*.log | grep -h '^FAIL seed ' | sed 's/^FAIL seed [0-9]*: //' || true
    exit 1
fi
