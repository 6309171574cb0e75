#!/usr/bin/env python3
"""Alert latency: from a condition on an edge to the alert at the cloud, through the aggregator.

Three release-built nodes on loopback, mDNS off: a cloud peer, edge `agg` (mains power, dialled
by the cloud's address) and edge `edge` (battery power, which loses the election, dialled only
to `agg`; a node dials registry addresses of its own zone only, so `edge` never meets the cloud
and its alerts documents reach the cloud only as `agg` relays them). `edge` has a health check
over a flag file and a rule `check:flag`. Each round creates the flag and times until the
cloud's `rhizome alerts --fleet --json` lists the alert firing, then removes it and times until
it lists it resolved. Run with each `alerts.interval` given (the default 5 s, and 1 s).

Usage: bench/alert-latency.py [ROUNDS] [INTERVAL...]    (defaults: 10 rounds; 5s 1s)
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = str(TARGET / "release" / "rhizome")
CHECK_INTERVAL = "1s"


def rhizome(data_dir, *args, check=True):
    out = subprocess.run(
        [BIN, "--data-dir", str(data_dir), *args], capture_output=True, text=True
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"rhizome {' '.join(args)}: {out.stderr}")
    return out


def start(data_dir, peers, extra=()):
    log = open(str(data_dir) + ".log", "a")
    cmd = [BIN, "--data-dir", str(data_dir), "start", "--no-mdns",
           "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", *extra]
    for p in peers:
        cmd += ["--peer", p]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    if " serving: " not in line:
        raise RuntimeError(f"{data_dir} did not start: {line!r}")
    quic = line.split("quic ")[1].split(",")[0]
    return proc, quic


def set_config(data_dir, old, new, append=""):
    path = pathlib.Path(data_dir) / "rhizome.toml"
    text = path.read_text()
    if old not in text:
        raise RuntimeError(f"{path}: no {old!r}")
    path.write_text(text.replace(old, new) + append)


def wait(what, check, within=120.0):
    began = time.monotonic()
    while time.monotonic() - began < within:
        if check():
            return time.monotonic() - began
        time.sleep(0.05)
    raise RuntimeError(f"timed out: {what}")


def cloud_alerts(cloud_dir, edge_id):
    out = rhizome(cloud_dir, "alerts", "--fleet", "--json", "--since", "1d", check=False)
    if out.returncode != 0:
        return []
    return [a for a in json.loads(out.stdout)["alerts"]
            if a["node"] == edge_id and a["rule"] == "flag"]


def run(rounds, interval, work):
    cloud, agg, edge = (work / f"{interval}-{n}" for n in ("cloud", "agg", "edge"))
    rhizome(cloud, "init", "--name", "cloud")
    mesh = str(cloud / "mesh")
    rhizome(agg, "init", "--name", "agg", "--mesh", mesh, "--zone", "site-a")
    rhizome(edge, "init", "--name", "edge", "--mesh", mesh, "--zone", "site-a")
    flag = work / f"{interval}-flag"
    set_config(agg, 'power = "auto"', 'power = "mains"')
    set_config(
        edge, 'power = "auto"', 'power = "battery"',
        f'\n[[health.checks]]\nname = "flag"\ncommand = "test ! -e {flag}"\n'
        f'interval = "{CHECK_INTERVAL}"\n\n[[alerts.rules]]\nname = "flag"\nwhen = "check:flag"\n',
    )
    set_config(edge, '[alerts]\ninterval = "5s"', f'[alerts]\ninterval = "{interval}"')
    procs = []
    try:
        p, cloud_quic = start(cloud, [], ["--role", "cloud"])
        procs.append(p)
        p, agg_quic = start(agg, [cloud_quic])
        procs.append(p)
        p, _ = start(edge, [agg_quic])
        procs.append(p)
        edge_id = json.loads(rhizome(edge, "status", "--json").stdout)["node_id"]
        agg_id = json.loads(rhizome(agg, "status", "--json").stdout)["node_id"]

        def settled():
            st = json.loads(rhizome(edge, "status", "--json").stdout)
            chain = [c.get("aggregator") for c in st.get("hierarchy", {}).get("chain", [])]
            return agg_id in chain and len(chain) == 2

        wait("the site elects agg under the cloud", settled, 60)
        peers = json.loads(rhizome(edge, "peers", "--json").stdout)
        connected = {p["node_id"] for p in peers if p["state"] == "connected"}
        cloud_id = json.loads(rhizome(cloud, "status", "--json").stdout)["node_id"]
        if cloud_id in connected:
            raise RuntimeError("the edge reached the cloud directly: not a relay measurement")
        fired, resolved = [], []
        for _ in range(rounds):
            flag.write_text("")
            fired.append(wait("firing at the cloud", lambda: any(
                a["state"] == "firing" for a in cloud_alerts(cloud, edge_id))))
            flag.unlink()
            resolved.append(wait("resolved at the cloud", lambda: all(
                a["state"] == "resolved" for a in cloud_alerts(cloud, edge_id))))
        return fired, resolved
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def summary(xs):
    return (f"median {statistics.median(xs):.2f} s, min {min(xs):.2f} s, "
            f"max {max(xs):.2f} s")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    intervals = sys.argv[2:] or ["5s", "1s"]
    subprocess.run(["cargo", "build", "--release", "-p", "rhizome"], cwd=ROOT, check=True)
    print(f"date {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
          f"load {open('/proc/loadavg').read().split()[:3]}, "
          f"health check every {CHECK_INTERVAL}, {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="rhizome-alerts.") as tmp:
        for interval in intervals:
            fired, resolved = run(rounds, interval, pathlib.Path(tmp))
            print(f"alerts.interval {interval}: flag -> firing at the cloud: {summary(fired)}")
            print(f"alerts.interval {interval}: flag gone -> resolved at the cloud: "
                  f"{summary(resolved)}")


if __name__ == "__main__":
    main()
