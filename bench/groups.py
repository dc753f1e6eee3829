"""Groups: aggregate put throughput with 1, 2 and 4 replication groups, and CPU per process.

    .venv/bin/python bench/groups.py [--groups 1,2,4] [--clients 64] [--seconds 10] [--runs 3]

For each group count N it starts a fresh local cluster (``LocalCluster(groups=N)``: etcd, two
metas, 3N + 2 nodes, 2 rms, HAProxy) on free ports, creates 2N tables (the meta puts a new table
on the group with the fewest ranges, so each group gets two; checked), and drives closed-loop
puts of unique keys with 256-byte values through HAProxy, spread evenly over the tables, from
``--clients`` workers in ``--procs`` generator processes (each with its own event loop and
keep-alive connections). Every put is a replicated write: fsync on a majority of three.

Reported per N, median of ``--runs`` runs: puts/s, p50 and p99 latency, errors, and CPU
seconds per second of run (= cores used) of each kind of process: each group's three nodes
together, the rms, HAProxy, etcd, the metas and the generators, read from
``/proc/PID/stat``. On a machine with few cores the groups share them: the figure to read is
how throughput and CPU per group change with N, not the absolute rate.

A program that prints figures, never a timed assertion. Everything stays on 127.0.0.1 and stops
by itself (every process by its pid, in a ``finally``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from rangekv.cluster.local import LocalCluster, find_free_base_port, nodes_for

VALUE = b"v" * 256
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def _load(endpoint: str, tables: list[str], clients: int, seconds: float,
                tag: str) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal errors
        table = tables[w % len(tables)]  # workers spread evenly over the tables
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            i = 0
            while time.monotonic() < deadline:
                url = f"{endpoint}/v1/tables/{table}/keys/{tag}-{w:03d}-{i:08d}"
                i += 1
                t0 = time.perf_counter()
                try:
                    async with session.put(url, data=VALUE) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    await asyncio.gather(*(worker(w) for w in range(clients)))
    return latencies, errors


def _generator(endpoint: str, tables: list[str], clients: int, seconds: float, tag: str,
               out: Any) -> None:
    cpu0 = time.process_time()
    latencies, errors = asyncio.run(_load(endpoint, tables, clients, seconds, tag))
    out.put((latencies, errors, time.process_time() - cpu0))


def run_once(cluster: LocalCluster, groups_of: dict[str, int], tables: list[str], clients: int,
             procs: int, seconds: float, tag: str) -> dict[str, Any]:
    names = cluster.running()
    pids = {n: cluster.pid(n) for n in names}
    cpu0 = {n: cpu_s(p) for n, p in pids.items() if p}
    out: Any = mp.get_context("spawn").Queue()
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [mp.get_context("spawn").Process(
        target=_generator, args=(cluster.endpoint, tables, n, seconds, f"{tag}p{i}", out))
        for i, n in enumerate(per) if n]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    used = {n: cpu_s(p) - cpu0.get(n, 0.0) for n, p in pids.items() if p}
    latencies = sorted(x for r in results for x in r[0])
    cores: dict[str, float] = {}
    for name, s in used.items():
        if name.startswith("node-"):
            gid = groups_of.get(name)
            kind = f"group {gid}" if gid is not None else "spares"
        else:
            kind = name.split("-")[0] + "s" if "-" in name else name
        cores[kind] = cores.get(kind, 0.0) + s / elapsed
    cores["generators"] = sum(r[2] for r in results) / elapsed
    return {
        "puts_per_s": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": sum(r[1] for r in results),
        "cores": {k: round(v, 3) for k, v in sorted(cores.items())},
    }


def measure(groups: int, clients: int, procs: int, seconds: float, runs: int,
            root: Path) -> dict[str, Any]:
    cluster = LocalCluster(root / f"g{groups}", find_free_base_port(nodes_for(groups)),
                           nodes=nodes_for(groups), groups=groups)
    try:
        cluster.start()
        info = cluster.wait_ready(180)
        tables = [f"bench{i}" for i in range(2 * groups)]
        for t in tables:
            urllib.request.urlopen(urllib.request.Request(
                f"{cluster.endpoint}/v1/tables/{t}", method="PUT"), timeout=30).read()
        with urllib.request.urlopen(f"{cluster.rm_endpoints[0]}/v1/cluster", timeout=10) as r:
            info = json.loads(r.read())
        placed = {r["table"]: r["group"] for r in info["ranges"]}
        per_group = {g["id"]: sum(1 for t in tables if placed.get(t) == g["id"])
                     for g in info["groups"]}
        assert len(per_group) == groups and set(per_group.values()) == {2}, per_group
        groups_of = {f"node-{m['id']}": g["id"] for g in info["groups"] for m in g["members"]}
        run_once(cluster, groups_of, tables, clients, procs, 2.0, "warm")
        rounds = [run_once(cluster, groups_of, tables, clients, procs, seconds, f"r{i}")
                  for i in range(runs)]
    finally:
        cluster.stop()
    rounds.sort(key=lambda r: r["puts_per_s"])
    median = dict(rounds[len(rounds) // 2])
    median["runs_puts_per_s"] = [round(r["puts_per_s"]) for r in rounds]
    median["groups"] = groups
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="1,2,4", help="group counts, comma-separated")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    counts = [int(x) for x in args.groups.split(",") if x.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rangekv-bench-groups-") as tmp:
        for n in counts:
            print(f"measuring {n} group(s) ...", file=sys.stderr)
            rows.append(measure(n, args.clients, args.procs, args.seconds, args.runs, Path(tmp)))
    print(f"\nputs through HAProxy, {args.clients} clients in {args.procs} generator processes, "
          f"256-byte values, 2 tables per group, {args.seconds:.0f} s per run, median of "
          f"{args.runs}; {os.cpu_count()} CPUs shared by everything")
    print(f"{'groups':>6} {'puts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  "
          f"cores used (CPU s per s)  runs (puts/s)")
    for r in rows:
        groups_cores = [v for k, v in r["cores"].items() if k.startswith("group ")]
        others = ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items()
                           if not k.startswith("group "))
        print(f"{r['groups']:>6} {r['puts_per_s']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{r['errors']:6d}  per group {statistics.mean(groups_cores):.2f} "
              f"(all groups {sum(groups_cores):.2f}); {others}  {r['runs_puts_per_s']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
