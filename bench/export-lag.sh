#!/usr/bin/env bash
# Export lag at a steady fleet load, and the catch-up after the database was away. A fleet of
# real `rhizome` processes on loopback (mDNS off): EDGES edges in ZONES zones running the
# `probe` workflow (the `sensor` agent) on TRIGGER, and one cloud peer per export interval of
# EXPORT_INTERVALS, every node with `sync.results_to = "cloud"` so that every raw run record
# reaches every cloud peer, each cloud peer exporting into its own database of one private
# PostgreSQL cluster. The cloud peers take the same runs at the same moment, so their lags
# compare the intervals under one load.
#
# Phases: warm-up (every edge's runs in every table), STEADY_S seconds of steady load, an
# outage (`pg_ctl stop -m fast`, OUTAGE_S seconds while the edges go on running, then a start),
# the catch-up (until every run a cloud peer held at the restart is in its table; its
# `export status` is watched 60 s more for "up to date" with 0 documents pending, which a
# pass slower than the documents change may never show), 60 s of steady load after it, then
# the workflow is stopped and every table is checked against the runs the cloud peers and the
# edges hold: count(*), count(DISTINCT (node, run_id)), and the run ids themselves.
#
# The lag of a run is the commit time of the transaction that wrote its row (the cluster runs
# with `track_commit_timestamp = on`; each row's `xmin` names its transaction) minus the run's
# `finished_at`: what a reader of the table sees, without the resolution of a poll. The
# script also polls every table every POLL_MS and records when each run first appears, as a
# check of the commit times. The time to the cloud peer is sampled for one edge's runs (the
# first cloud peer's `GET /results?node=...` every POLL_MS), which splits the lag into sync
# and export.
#
# Usage: bench/export-lag.sh [EDGES] [TRIGGER] [OUTAGE_S] [STEADY_S]
#        (defaults: 8 edges, 200ms, 600 s, 180 s; OUTAGE_S 0 skips the outage)
# Environment: ZONES (2), EXPORT_INTERVALS ("2s 200ms"; the first is the cloud peer that
# creates the mesh), POLL_MS (200). Release build; PostgreSQL is Debian's (scripts/setup.sh),
# default settings (fsync on) plus track_commit_timestamp, run as `nobody` when this runs as
# root. Figures: printed, and kept in target/bench/export-lag-<UTC time>.json with every
# run's times.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/node-lib.sh

edges="${1:-8}"
trigger="${2:-200ms}"
outage="${3:-600}"
steady="${4:-180}"
zones="${ZONES:-2}"
read -r -a intervals <<<"${EXPORT_INTERVALS:-2s 200ms}"
poll_ms="${POLL_MS:-200}"

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    echo "PostgreSQL's server binaries are missing: run scripts/setup.sh as root" >&2
    exit 1
fi

node_bench export-lag
out="$target/bench/export-lag-$(date -u +%Y%m%dT%H%M%SZ).json"

# The cluster's user (nobody, as root) must reach its dirs through the scratch dir.
chmod 755 "$work"
mkdir "$work/pg" "$work/pg/data" "$work/pg/sock"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown nobody:nogroup "$work/pg/data" "$work/pg/sock"
    touch "$work/pg/server.log" && chown nobody:nogroup "$work/pg/server.log"
    as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_ctl() {
    (cd "$work/pg" && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" \
        -o "-p $port -k $work/pg/sock -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on" \
        "$@")
}
cleanup() {
    pg_ctl -m fast -w stop >/dev/null 2>&1 || true
    node_bench_cleanup
}
trap cleanup EXIT
(cd "$work/pg" && "${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust \
    -E UTF8 --no-locale >/dev/null)
pg_ctl -w start >/dev/null
psql() { "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
# The measuring loop stops and starts the server through these.
declare -f pg_ctl >"$work/pg/ctl.sh"
{
    echo "work='$work' pg_bin='$pg_bin' port='$port'"
    echo "as_pg=(${as_pg[*]})"
} >>"$work/pg/ctl.sh"

clouds=()
for i in "${!intervals[@]}"; do
    iv="${intervals[$i]}"
    db="lag_$(tr -c 'a-z0-9\n' '_' <<<"$iv")"
    psql -d postgres -c "CREATE DATABASE $db"
    dir="$work/c$i"
    if [ "$i" -eq 0 ]; then
        "$bin" --data-dir "$dir" init --name "cloud-$iv" >/dev/null
    else
        "$bin" --data-dir "$dir" init --name "cloud-$iv" --mesh "$work/c0/mesh" >/dev/null
    fi
    "$bin" --data-dir "$dir" config set export.postgres "postgres://postgres@127.0.0.1:$port/$db" >/dev/null
    "$bin" --data-dir "$dir" config set export.interval "$iv" >/dev/null
    clouds+=("$dir|$db|$iv")
done
for i in $(seq 1 "$edges"); do
    "$bin" --data-dir "$work/e$i" init --name "edge-$i" --mesh "$work/c0/mesh" \
        --zone "site-$(((i - 1) % zones))" --tag sensor >/dev/null
done
for dir in "$work"/c* "$work"/e*; do
    "$bin" --data-dir "$dir" config set sync.results_to cloud >/dev/null
done

# The exporter's passes (documents, rows, time taken) are debug lines of rhizome::export.
cloud_quic=()
cloud_specs=()
for i in "${!clouds[@]}"; do
    IFS='|' read -r dir db iv <<<"${clouds[$i]}"
    peers=()
    [ "$i" -gt 0 ] && peers=(--peer "${cloud_quic[0]}")
    RHIZOME_LOG="info,rhizome::export=debug" "$bin" --data-dir "$dir" --log-format json start \
        --role cloud --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns "${peers[@]}" \
        >"$dir.out" 2>"$dir.err" &
    pids+=($!)
    cloud_quic+=("$(serving "$dir.out" "${pids[-1]}")")
    http="$(sed -nE 's/.* http ([0-9.:]+),.*/\1/p' "$dir.out" | head -1)"
    cloud_specs+=("$dir|$db|$iv|$http|${pids[-1]}")
done
printf 'id: probe\ntrigger: {every: %s}\ntarget: {tags: [sensor]}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n' \
    "$trigger" >"$work/probe.yaml"
"$bin" --data-dir "$work/c0" workflow apply "$work/probe.yaml" >/dev/null
peer_args=()
for q in "${cloud_quic[@]}"; do peer_args+=(--peer "$q"); done
edge_specs=()
for i in $(seq 1 "$edges"); do
    "$bin" --data-dir "$work/e$i" start --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-mdns \
        "${peer_args[@]}" >"$work/e$i.out" 2>"$work/e$i.err" &
    pids+=($!)
    serving "$work/e$i.out" "${pids[-1]}" >/dev/null
    http="$(sed -nE 's/.* http ([0-9.:]+),.*/\1/p' "$work/e$i.out" | head -1)"
    edge_specs+=("$work/e$i|$http|${pids[-1]}")
done

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' plus uncommitted')"
    echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "PostgreSQL $(psql -d postgres -c 'SHOW server_version'), $edges edges in $zones zones, trigger every $trigger, export intervals ${intervals[*]}, steady ${steady}s, outage ${outage}s"
} >&2

export BENCH_BIN="$bin" BENCH_WORK="$work" BENCH_PSQL="$pg_bin/psql" BENCH_PORT="$port" \
    BENCH_STEADY="$steady" BENCH_OUTAGE="$outage" BENCH_POLL_MS="$poll_ms" BENCH_OUT="$out" \
    BENCH_TRIGGER="$trigger"
BENCH_CLOUDS="$(printf '%s\n' "${cloud_specs[@]}")" BENCH_EDGES="$(printf '%s\n' "${edge_specs[@]}")" \
    python3 - <<'PY'
import calendar
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

BIN = os.environ["BENCH_BIN"]
WORK = os.environ["BENCH_WORK"]
PSQL = os.environ["BENCH_PSQL"]
PORT = os.environ["BENCH_PORT"]
STEADY = float(os.environ["BENCH_STEADY"])
OUTAGE = float(os.environ["BENCH_OUTAGE"])
POLL = int(os.environ["BENCH_POLL_MS"]) / 1000
OUT = os.environ["BENCH_OUT"]
AFTER = min(STEADY, 60.0)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


class Node:
    def __init__(self, spec, cloud):
        parts = spec.split("|")
        self.dir = parts[0]
        if cloud:
            self.db, self.interval, self.http, self.pid = parts[1:]
        else:
            self.http, self.pid = parts[1:]
        self.token = open(os.path.join(self.dir, "api.token")).read().strip()
        self.name = f"cloud {self.interval}" if cloud else os.path.basename(self.dir)

    def get(self, path, timeout=30):
        req = urllib.request.Request(f"http://{self.http}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def status(self):
        return json.loads(subprocess.run(
            [BIN, "--data-dir", self.dir, "status", "--json"],
            capture_output=True, text=True, check=True).stdout)

    def ticks(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])


clouds = [Node(s, True) for s in os.environ["BENCH_CLOUDS"].splitlines() if s]
edges = [Node(s, False) for s in os.environ["BENCH_EDGES"].splitlines() if s]
TICK = os.sysconf("SC_CLK_TCK")


def postgres_ticks():
    """CPU of the cluster: the postmaster and its children (backends, writers)."""
    with open(f"{WORK}/pg/data/postmaster.pid") as f:
        master = int(f.readline())
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == master or int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])
    return total


class Psql:
    """One psql session fed through a pipe: no process start per query."""

    def __init__(self, db):
        self.p = subprocess.Popen(
            [PSQL, "-X", "-q", "-A", "-t", "-F", "|", "-h", "127.0.0.1", "-p", PORT,
             "-U", "postgres", "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(f"{WORK}/psql.err", "a"), text=True, bufsize=1)

    def query(self, sql):
        self.p.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo __end__\n")
        self.p.stdin.flush()
        rows = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise ConnectionError("psql exited")
            line = line.rstrip("\n")
            if line == "__end__":
                return rows
            if line:
                rows.append(line.split("|"))

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        self.p.kill()
        self.p.wait()


ROWS_SQL = """SELECT node, run_id, (extract(epoch FROM finished_at) * 1000)::bigint,
    (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint, xmin::text::bigint
    FROM rhizome.runs WHERE xmin::text::bigint > {last}"""


class Table:
    """What one cloud peer's database holds, polled: each run's finish, commit and first sight.

    The exporter of a database is one session whose transactions follow each other, so a
    transaction id above the last one seen names rows not seen yet."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.db = cloud.db
        self.session = None
        self.last_xid = 0
        self.runs = {}  # (node, run_id) -> [finished_ms, commit_ms, seen_ms]

    def poll(self):
        if self.session is None:
            self.session = Psql(self.db)
        try:
            rows = self.session.query(
                "SELECT to_regclass('rhizome.runs') IS NOT NULL")
            if rows != [["t"]]:
                return
            rows = self.session.query(ROWS_SQL.format(last=self.last_xid))
        except (ConnectionError, BrokenPipeError):
            self.session.close()
            self.session = None
            return
        seen = now_ms()
        for node, run_id, finished, commit, xid in rows:
            self.last_xid = max(self.last_xid, int(xid))
            key = (node, run_id)
            if key in self.runs:
                # Rewritten (a changed record): the first sight counts.
                continue
            self.runs[key] = [int(finished), int(commit), seen]

    def close(self):
        if self.session:
            self.session.close()
            self.session = None


tables = [Table(c) for c in clouds]


def export_status(cloud):
    try:
        return cloud.get("/export", timeout=5)
    except Exception as e:  # the node busy or the call timing out: a gap in the samples
        return {"error": str(e)}


samples = {c.name: [] for c in clouds}  # (ms, state, pending, lag_seconds)
# run_id of the sampled edge -> (previous answer, first answer listing it) at the first cloud peer
arrivals = {}
arrivals_prev = [0]
arrival_calls = []  # ms each GET /results took
sampled_edge = None
last_status = 0.0
last_arrival = 0.0


def tick(status_every=1.0, arrivals_on=True):
    """One round of polling: the tables, the exporters' status, the sampled edge's runs."""
    global last_status, last_arrival
    for t in tables:
        t.poll()
    now = time.monotonic()
    if now - last_status >= status_every:
        last_status = now
        for c in clouds:
            s = export_status(c)
            samples[c.name].append((now_ms(), s.get("state"), s.get("documents_pending"),
                                    s.get("lag_seconds"), s.get("last_success_ms")))
    if arrivals_on and sampled_edge and now - last_arrival >= POLL:
        last_arrival = now
        asked = now_ms()
        try:
            recs = clouds[0].get(f"/results?node={sampled_edge}&since_ms={asked - 15000}",
                                 timeout=5)
        except Exception:
            recs = None
        seen = now_ms()
        if recs is not None:
            arrival_calls.append(seen - asked)
            # A run first listed now arrived after the previous answer was read.
            for r in recs:
                arrivals.setdefault(r["run_id"], (arrivals_prev[0], seen))
            arrivals_prev[0] = seen


def run_for(seconds, **kw):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.monotonic()
        tick(**kw)
        time.sleep(max(0.0, POLL - (time.monotonic() - began)))


def q(values, p):
    """The p-th percentile (nearest rank) of values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(values):
    return {"n": len(values), "median": q(values, 50), "p90": q(values, 90),
            "p99": q(values, 99), "max": max(values) if values else float("nan"),
            "min": min(values) if values else float("nan")}


def fmt(s, unit=1000):
    return (f"median {s['median'] / unit:.2f} s, p90 {s['p90'] / unit:.2f}, "
            f"p99 {s['p99'] / unit:.2f}, max {s['max'] / unit:.2f} (n={s['n']})")


def exporter_passes(cloud, since_ms, until_ms):
    """The exporter's passes in [since, until): (ms, took_ms, reading_ms, documents, rows)."""
    out = []
    with open(cloud.dir + ".err") as f:
        for line in f:
            if '"export pass"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            fields = e.get("fields", e)
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", e.get("timestamp", ""))
            if not m:
                continue
            at = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            at_ms = int((at + float("0" + (m.group(2) or ""))) * 1000)
            if since_ms <= at_ms < until_ms:
                out.append((at_ms, int(fields.get("took_ms", 0)), int(fields.get("reading_ms", 0)),
                            int(fields.get("documents", 0)), int(fields.get("rows", 0))))
    return out


report = {"phases": {}, "clouds": [c.name for c in clouds], "edges": len(edges),
          "trigger": os.environ["BENCH_TRIGGER"]}


def phase(name, start_ms, end_ms, cpu=None):
    """Lag of the runs that finished in [start, end), per cloud peer."""
    result = {"from_ms": start_ms, "to_ms": end_ms, "clouds": {}}
    secs = (end_ms - start_ms) / 1000
    for t in tables:
        runs = [v for v in t.runs.values() if start_ms <= v[0] < end_ms]
        lag = [v[1] - v[0] for v in runs]
        seen = [v[2] - v[0] for v in runs]
        poll_gap = [v[2] - v[1] for v in runs]
        st = [s for s in samples[t.cloud.name] if start_ms <= s[0] < end_ms and s[3] is not None]
        passes = exporter_passes(t.cloud, start_ms, end_ms)
        r = {
            "runs": len(runs), "runs_per_s": len(runs) / secs,
            "lag_ms": summary(lag), "seen_lag_ms": summary(seen),
            "seen_after_commit_ms": summary(poll_gap),
            "status_lag_s": summary([s[3] for s in st]),
            "status_pending": summary([s[2] for s in st]),
            "passes": len(passes),
            "pass_took_ms": summary([p[1] for p in passes if p[3] > 0]),
            "pass_reading_ms": summary([p[2] for p in passes if p[3] > 0]),
            "pass_list": passes,
        }
        # A long phase in slices: results documents grow over their window (an hour), and
        # the exporter reads each changed one whole.
        step = 60_000 if secs <= 600 else 300_000
        r["slices"] = []
        for at in range(start_ms, end_ms, step):
            part = [v[1] - v[0] for v in runs if at <= v[0] < at + step]
            took = [p[1] for p in passes if at <= p[0] < at + step and p[3] > 0]
            r["slices"].append({"from_ms": at, "lag_ms": summary(part),
                                "pass_took_ms": summary(took)})
        if cpu:
            r["cpu_percent"] = cpu.get(t.cloud.name)
        result["clouds"][t.cloud.name] = r
        log(f"{name}, {t.cloud.name}: {len(runs)} runs ({len(runs) / secs:.1f}/s), lag {fmt(summary(lag))}")
        log(f"    first seen by the poll: {fmt(summary(seen))}; status lag_seconds median "
            f"{r['status_lag_s']['median']}, max {r['status_lag_s']['max']}; passes {len(passes)}, "
            f"each median {r['pass_took_ms']['median']} ms, max {r['pass_took_ms']['max']} ms")
        for sl in r["slices"]:
            log(f"    from {time.strftime('%H:%M:%S', time.gmtime(sl['from_ms'] / 1000))} UTC: lag "
                f"{fmt(sl['lag_ms'])}; pass median {sl['pass_took_ms']['median']} ms, max "
                f"{sl['pass_took_ms']['max']} ms")
    if cpu:
        result["cpu_percent"] = cpu
    report["phases"][name] = result
    return result


def cpu_snapshot():
    snap = {c.name: c.ticks() for c in clouds}
    snap["edges"] = sum(e.ticks() for e in edges)
    snap["postgres"] = postgres_ticks()
    return snap, time.monotonic()


def cpu_since(before):
    snap, at = cpu_snapshot()
    secs = at - before[1]
    return {k: round(100 * (snap[k] - before[0][k]) / TICK / secs, 1) for k in snap}


def held_runs(node, since_ms=None):
    path = "/results" + (f"?since_ms={since_ms}" if since_ms is not None else "")
    return {(r["node"], r["run_id"]) for r in node.get(path, timeout=300)}


# ---- warm-up: every edge's runs in every table
edge_ids = [e.status()["node_id"] for e in edges]
sampled_edge = edge_ids[0]
log(f"warm-up: waiting for runs of all {len(edges)} edges in every table")
deadline = time.monotonic() + 300
while True:
    run_for(2)
    nodes_in = [len({k[0] for k in t.runs}) for t in tables]
    if all(n >= len(edges) for n in nodes_in):
        break
    if time.monotonic() > deadline:
        sys.exit(f"warm-up: edges in the tables {nodes_in} of {len(edges)} after 300 s")
# Sessions settle, the rollups of the first minutes are written.
run_for(20)

# ---- steady load
log(f"steady load for {STEADY:.0f} s")
cpu0 = cpu_snapshot()
start = now_ms()
run_for(STEADY)
end = now_ms()
steady_cpu = cpu_since(cpu0)
run_for(30)  # the runs of the last seconds reach the tables
phase("steady", start, end, steady_cpu)
first = tables[0]
sampled = [(first.runs[k][0], arrivals[k[1]]) for k in first.runs
           if k[0] == sampled_edge and k[1] in arrivals and start <= first.runs[k][0] < end]
# Between the answer before and the answer that listed it; never before the run finished.
sync_hi = [hi - f for f, (lo, hi) in sampled]
sync_lo = [max(lo, f) - f for f, (lo, hi) in sampled]
report["phases"]["steady"]["sync_to_cloud_ms"] = {"upper": summary(sync_hi),
                                                  "lower": summary(sync_lo),
                                                  "call_ms": summary(arrival_calls)}
log(f"    one edge's runs at the first cloud peer (GET /results every {POLL * 1000:.0f} ms, "
    f"each took median {q(arrival_calls, 50)} ms): by {fmt(summary(sync_hi))}; "
    f"after {fmt(summary(sync_lo))}")

# ---- outage
if OUTAGE > 0:
    log(f"stopping PostgreSQL for {OUTAGE:.0f} s")
    for t in tables:
        t.close()
    t_stop = now_ms()
    subprocess.run(["bash", "-c", f"source {WORK}/pg/ctl.sh; pg_ctl -w -m fast stop"],
                   check=True, stdout=subprocess.DEVNULL)
    t_stopped = now_ms()
    end_at = time.monotonic() + OUTAGE
    while time.monotonic() < end_at:
        for c in clouds:
            s = export_status(c)
            samples[c.name].append((now_ms(), s.get("state"), s.get("documents_pending"),
                                    s.get("lag_seconds"), s.get("last_success_ms")))
        time.sleep(min(5.0, max(0.0, end_at - time.monotonic())))
    # The backlog: what each cloud peer holds that its table lacks.
    t_restart = now_ms()
    backlog = {}
    for t in tables:
        held = held_runs(t.cloud, since_ms=t_stop - 600_000)
        missing = {k for k in held if k not in t.runs}
        s = export_status(t.cloud)
        backlog[t.cloud.name] = {"runs": len(missing), "keys": missing,
                                 "documents_pending": s.get("documents_pending"),
                                 "lag_seconds": s.get("lag_seconds"), "state": s.get("state"),
                                 "last_error_reason": s.get("last_error_reason")}
        log(f"{t.cloud.name}: {len(missing)} runs held but not in the table; export status "
            f"{s.get('state')}, {s.get('documents_pending')} documents pending, lag "
            f"{s.get('lag_seconds')} s")
    subprocess.run(["bash", "-c", f"source {WORK}/pg/ctl.sh; pg_ctl -w -t 60 start"],
                   check=True, stdout=subprocess.DEVNULL)
    t_up = now_ms()
    cpu0 = cpu_snapshot()
    log(f"PostgreSQL back after {(t_up - t_stop) / 1000:.0f} s; waiting for the catch-up")
    # Done when every run held at the restart is in the table. The status is watched for 60 s
    # more: while documents keep changing during a pass, it may go on counting them pending.
    deadline = time.monotonic() + 1800
    while True:
        tick(status_every=0.2, arrivals_on=False)
        for t in tables:
            b = backlog[t.cloud.name]
            if "table_at" not in b and all(k in t.runs for k in b["keys"]):
                b["table_at"] = now_ms()
            at, state, pending, _, success = samples[t.cloud.name][-1]
            if (success or 0) > t_up and state == "up to date":
                b.setdefault("status_at", at)
                if pending == 0:
                    b.setdefault("zero_pending_at", at)
            if "table_at" in b and (success or 0) > t_up and pending is not None:
                b.setdefault("pending_seen", []).append(pending)
        backlogs = list(backlog.values())
        if all("table_at" in b for b in backlogs) and (
                all("zero_pending_at" in b for b in backlogs)
                or now_ms() > max(b["table_at"] for b in backlogs) + 60_000):
            break
        if time.monotonic() > deadline:
            log("no catch-up within 30 minutes")
            break
        time.sleep(POLL)
    catch_cpu = cpu_since(cpu0)
    t_caught = now_ms()
    report["outage"] = {"stop_ms": t_stop, "stopped_ms": t_stopped, "restart_ms": t_restart,
                        "up_ms": t_up, "cpu_percent": catch_cpu, "clouds": {}}
    for t in tables:
        name = t.cloud.name
        b = backlog[name]
        # Rows committed between the last poll and the stop are not backlog.
        keys = {k for k in b.pop("keys") if k not in t.runs or t.runs[k][1] >= t_up}
        b["runs"] = len(keys)
        commits = [t.runs[k][1] for k in keys if k in t.runs]
        first_commit = min((v[1] for v in t.runs.values() if v[1] >= t_up), default=None)
        last_backlog_commit = max(commits) if commits else None
        b.update({
            "reconnected_after_s": (first_commit - t_up) / 1000 if first_commit else None,
            "backlog_in_table_after_s": (last_backlog_commit - t_up) / 1000 if commits else None,
            "backlog_missing": len(keys) - len(commits),
            "table_seen_after_s": (b["table_at"] - t_up) / 1000 if "table_at" in b else None,
            "status_up_to_date_after_s": (b["status_at"] - t_up) / 1000 if "status_at" in b else None,
            "zero_pending_after_s": ((b["zero_pending_at"] - t_up) / 1000
                                     if "zero_pending_at" in b else None),
            "pending_after_the_backlog": summary(b.pop("pending_seen", [])),
            "rows_per_s": (len(commits) / ((last_backlog_commit - first_commit) / 1000)
                           if commits and last_backlog_commit > first_commit else None),
            # The passes that wrote the backlog.
            "passes": [p for p in exporter_passes(t.cloud, t_up, t_caught + 60_000)
                       if p[3] > 0 and p[0] - p[1] <= (last_backlog_commit or t_caught)],
        })
        ps = b["passes"]
        b["pass_rows"] = sum(p[4] for p in ps)
        b["pass_took_ms"] = sum(p[1] for p in ps)
        b["pass_reading_ms"] = sum(p[2] for p in ps)
        report["outage"]["clouds"][name] = b
        log(f"{name}: backlog {b['runs']} runs ({b['documents_pending']} documents); reconnected "
            f"{b['reconnected_after_s']} s after the start, backlog committed by "
            f"{b['backlog_in_table_after_s']} s, status up to date at "
            f"{b['status_up_to_date_after_s']} s, 0 pending at {b['zero_pending_after_s']} s "
            f"(pending after the backlog: median {b['pending_after_the_backlog']['median']}, "
            f"min {b['pending_after_the_backlog']['min']}); "
            f"{b['rows_per_s']} rows/s; {len(ps)} passes wrote {b['pass_rows']} rows in "
            f"{b['pass_took_ms']} ms ({b['pass_reading_ms']} ms reading the store)")
    log(f"steady load after the catch-up for {AFTER:.0f} s")
    cpu0 = cpu_snapshot()
    start = now_ms()
    run_for(AFTER)
    end = now_ms()
    after_cpu = cpu_since(cpu0)
    run_for(30)
    phase("after the catch-up", start, end, after_cpu)

# ---- the fleet stops; every run once in every table
log("stopping the workflow; checking every table against the cloud peers and the edges")
with open(f"{WORK}/probe.yaml") as f:
    manual = re.sub(r"trigger: .*", "trigger: manual", f.read())
with open(f"{WORK}/manual.yaml", "w") as f:
    f.write(manual)
subprocess.run([BIN, "--data-dir", clouds[0].dir, "workflow", "apply", f"{WORK}/manual.yaml"],
               check=True, stdout=subprocess.DEVNULL)
time.sleep(5)
at_edges = set()
for e in edges:
    at_edges |= held_runs(e)
deadline = time.monotonic() + 300
final = {}
while True:
    run_for(3)
    at_edges_now = set()
    for e in edges:
        at_edges_now |= held_runs(e)
    ok = at_edges_now == at_edges
    at_edges = at_edges_now
    for t in tables:
        held = held_runs(t.cloud)
        s = export_status(t.cloud)
        counts = t.session.query(
            "SELECT count(*), count(DISTINCT (node, run_id)) FROM rhizome.runs")[0]
        final[t.cloud.name] = {"table_rows": int(counts[0]), "table_distinct": int(counts[1]),
                               "cloud_holds": len(held), "edges_hold": len(at_edges),
                               "state": s.get("state"),
                               "documents_pending": s.get("documents_pending"),
                               "missing": len(held - set(t.runs)),
                               "extra": len(set(t.runs) - held)}
        ok = ok and held == at_edges and s.get("state") == "up to date" \
            and s.get("documents_pending") == 0 and int(counts[0]) == len(held)
    if ok or time.monotonic() > deadline:
        break
# Every row seen by the poll, so the lags above cover every run.
for t in tables:
    rows = t.session.query(ROWS_SQL.format(last=0))
    final[t.cloud.name]["rows_the_poll_missed"] = sum(1 for r in rows if (r[0], r[1]) not in t.runs)
report["final"] = final
for name, f in final.items():
    log(f"{name}: table {f['table_rows']} rows, {f['table_distinct']} distinct; the cloud peer "
        f"holds {f['cloud_holds']}, the edges {f['edges_hold']}; export {f['state']}, "
        f"{f['documents_pending']} pending; rows the poll missed {f['rows_the_poll_missed']}")
report["runs"] = {t.cloud.name: [[k[0], k[1], *v] for k, v in t.runs.items()] for t in tables}
with open(OUT, "w") as f:
    json.dump(report, f)
for t in tables:
    t.close()

# ---- the table
print()
print(f"{len(edges)} edges, trigger {report['trigger']}; lag = commit of the run's row - its finished_at")
print(f"| phase | export.interval | runs/s | lag median | p90 | p99 | max | status lag_seconds median / max | pass median / max | cloud CPU |")
print("|---|---|---|---|---|---|---|---|---|---|")
for pname, p in report["phases"].items():
    for name, r in p["clouds"].items():
        l = r["lag_ms"]
        print(f"| {pname} | {name.split()[-1]} | {r['runs_per_s']:.1f} | {l['median'] / 1000:.2f} s "
              f"| {l['p90'] / 1000:.2f} s | {l['p99'] / 1000:.2f} s | {l['max'] / 1000:.2f} s "
              f"| {r['status_lag_s']['median']:.1f} / {r['status_lag_s']['max']:.1f} s "
              f"| {r['pass_took_ms']['median']} / {r['pass_took_ms']['max']} ms "
              f"| {r.get('cpu_percent', '')} % |")
if "sync_to_cloud_ms" in report["phases"]["steady"]:
    sy = report["phases"]["steady"]["sync_to_cloud_ms"]
    print(f"edge -> first cloud peer (one edge's runs, GET /results every {POLL * 1000:.0f} ms, "
          f"median call {sy['call_ms']['median']} ms): there by {fmt(sy['upper'])}; "
          f"not before {fmt(sy['lower'])}")
for pname, p in report["phases"].items():
    if "cpu_percent" in p:
        print(f"CPU during '{pname}' (% of one core): {p['cpu_percent']}")
if "outage" in report:
    o = report["outage"]
    print(f"outage: {(o['up_ms'] - o['stop_ms']) / 1000:.0f} s; CPU during the catch-up: {o['cpu_percent']}")
    print("| export.interval | backlog runs | documents pending | reconnected after | backlog in the table after | status 'up to date' / 0 pending after | rows/s | passes: rows in ms (reading) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, b in o["clouds"].items():
        print(f"| {name.split()[-1]} | {b['runs']} | {b['documents_pending']} | {b['reconnected_after_s']} s "
              f"| {b['backlog_in_table_after_s']} s | {b['status_up_to_date_after_s']} / {b['zero_pending_after_s']} s "
              f"| {b['rows_per_s'] and round(b['rows_per_s'])} "
              f"| {len(b['passes'])}: {b['pass_rows']} in {b['pass_took_ms']} ({b['pass_reading_ms']}) |")
for name, f in final.items():
    print(f"{name}: count(*) {f['table_rows']}, count(distinct (node, run_id)) {f['table_distinct']}, "
          f"cloud holds {f['cloud_holds']}, edges hold {f['edges_hold']}, missing {f['missing']}, "
          f"extra {f['extra']}, not seen by the poll {f['rows_the_poll_missed']}")
print(f"figures: {OUT}")
PY
