#!/usr/bin/env python3
"""Bytes reaching the cloud with the hierarchy vs every node sending its results straight to it.

Two runs of the same workload, one after the other, on loopback with real `rhizome start`
processes (release build, mDNS off, `--peer`): a cloud peer and SITES sites of EDGES edge nodes;
a workflow every PERIOD on every edge for DURATION; then the runs stop and the cloud is given
time to hold everything (the fleet view counts every run the edges recorded). Measured: the
replication bytes the cloud received and sent (frames of summaries, catalogues and sync
messages, from its own per-peer counters), divided by the runs recorded.

  hierarchy: each edge's results go to its site's aggregator; rollups go to the cloud.
  direct:    `sync.results_to = "cloud"`: every edge's raw results go to the cloud.

Usage: bench/hierarchy.py [--sites 2] [--edges 3] [--duration 30] [--period 200ms]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "rhizome")


def rhizome(data_dir, *args, env=None):
    out = subprocess.run([BIN, "--data-dir", data_dir, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"rhizome {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def rjson(data_dir, *args):
    return json.loads(rhizome(data_dir, *args, "--json"))


class Node:
    def __init__(self, data_dir, peers, extra, env):
        args = [BIN, "--data-dir", data_dir, "start", "--listen", "127.0.0.1:0",
                "--http", "127.0.0.1:0", "--no-mdns", *extra]
        for p in peers:
            args += ["--peer", p]
        self.dir = data_dir
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        self.quic = line.split("quic ")[1].split(",")[0]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


def wait_until(what, seconds, check):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"{what}: not within {seconds}s")
        time.sleep(0.25)


def workflow(path, trigger, period):
    with open(path, "w") as f:
        f.write(f"id: probe\ntrigger: {trigger}\ntarget: {{tags: [sensor]}}\nsteps:\n"
                f"  - id: read\n    agent: sensor\n    config: {{seed: 3}}\n")


def run_mode(mode, args):
    work = tempfile.mkdtemp(prefix=f"rhizome-hier-{mode}-")
    env = dict(os.environ)
    env["RHIZOME_SYNC_RESULTS_TO"] = "cloud" if mode == "direct" else "aggregator"
    nodes = []
    try:
        cloud_dir = os.path.join(work, "cloud")
        rhizome(cloud_dir, "init", "--name", "cloud", "-q")
        mesh = os.path.join(cloud_dir, "mesh")
        edges = []
        for s in range(args.sites):
            for e in range(args.edges):
                d = os.path.join(work, f"s{s}e{e}")
                rhizome(d, "init", "--name", f"s{s}e{e}", "--zone", f"site-{s}", "--tag", "sensor",
                        "--mesh", mesh, "-q")
                edges.append((s, d))
        cloud = Node(cloud_dir, [], ["--role", "cloud"], env)
        nodes.append(cloud)
        by_site = {}
        for s, d in edges:
            peers = [cloud.quic] + [n.quic for n in by_site.get(s, [])]
            n = Node(d, peers, [], env)
            nodes.append(n)
            by_site.setdefault(s, []).append(n)
        ids = {n.dir: rjson(n.dir, "status")["node_id"] for n in nodes[1:]}

        def elected():
            for site in by_site.values():
                chains = [rjson(n.dir, "status")["hierarchy"]["chain"] for n in site]
                if any(len(c) != 2 or c != chains[0] or not c[0].get("aggregator") for c in chains):
                    return False
            return True
        wait_until("elections", 30, elected)
        yaml = os.path.join(work, "probe.yaml")
        workflow(yaml, f"{{every: {args.period}}}", args.period)
        rhizome(cloud_dir, "workflow", "apply", yaml)
        time.sleep(args.duration)
        workflow(yaml, "manual", args.period)
        rhizome(cloud_dir, "workflow", "apply", yaml)

        def recorded():
            return sum(len(rjson(n.dir, "results", "--workflow", "probe", "--node", ids[n.dir]))
                       for n in nodes[1:])

        def cloud_has_all():
            total = recorded()
            if mode == "direct":
                held = len(rjson(cloud_dir, "results", "--workflow", "probe"))
            else:
                held = rjson(cloud_dir, "status", "--fleet")["runs"]
            return total > 0 and held == total
        wait_until("the cloud holds every run", 120, cloud_has_all)
        runs = recorded()
        peers = rjson(cloud_dir, "peers")
        received = sum(p["sync"]["bytes_received"] for p in peers if p.get("sync"))
        sent = sum(p["sync"]["bytes_sent"] for p in peers if p.get("sync"))
        docs = rjson(cloud_dir, "doc", "list")
        stored = sum(d["bytes"] for d in docs)
        return {"mode": mode, "runs": runs, "received": received, "sent": sent, "stored": stored}
    finally:
        for n in nodes:
            try:
                n.stop()
            except Exception:
                n.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--edges", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--period", default="200ms")
    args = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "rhizome", "--bin", "rhizome"], cwd=ROOT, check=True)
    rows = [run_mode("hierarchy", args), run_mode("direct", args)]
    print(f"\n{args.sites} sites x {args.edges} edges, a run every {args.period} on each edge for "
          f"{args.duration:.0f}s; the cloud's replication bytes (frames) once it holds every run:\n")
    print(f"{'mode':<10} {'runs':>6} {'received B':>12} {'sent B':>10} {'recv B/run':>11} {'stored B':>10}")
    for r in rows:
        print(f"{r['mode']:<10} {r['runs']:>6} {r['received']:>12} {r['sent']:>10} "
              f"{r['received'] / r['runs']:>11.1f} {r['stored']:>10}")
    h, d = rows
    ratio = (h["received"] / h["runs"]) / (d["received"] / d["runs"])
    print(f"\nhierarchy / direct, bytes received by the cloud per run: {ratio:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
