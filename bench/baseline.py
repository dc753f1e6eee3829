"""Baseline: puts/s and gets/s with 32 concurrent clients, rangekv through HAProxy and etcd.

    .venv/bin/python bench/baseline.py [--clients 32] [--seconds 10] [--runs 3] [--no-etcd]

Starts a fresh local rangekv cluster (``LocalCluster``: etcd, meta, 3+2 nodes, 2 rms, HAProxy)
and, for comparison in the same run, a 3-member etcd cluster (fsync on, its defaults) reached
through its v3 JSON gateway. The same asyncio load generator drives both: ``--clients``
closed-loop workers, each with its own keep-alive connection, 256-byte values, unique keys for
puts, gets of keys written before. Latency is measured per request. Each system is measured
``--runs`` times and the median run is reported, with the load generator's own CPU use, so a
saturated generator is visible. Everything is on loopback and stops by itself.

This is a baseline, not a target: figures depend on the machine (2 cores here, shared by the
cluster and the load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from rangekv.bench.systems import start_etcd_cluster
from rangekv.cluster.local import LocalCluster, find_free_base_port

VALUE = b"v" * 256


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values))) - 1))
    return sorted_values[k]


class Target:
    name: str

    def put_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        raise NotImplementedError

    def get_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        raise NotImplementedError


class RangeKV(Target):
    def __init__(self, endpoint: str, table: str) -> None:
        self.name = "rangekv (3 replicas, via HAProxy)"
        self.base = f"{endpoint}/v1/tables/{table}/keys/"

    def put_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        return "PUT", self.base + key, VALUE, {}

    def get_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        return "GET", self.base + key, b"", {}


class Etcd(Target):
    def __init__(self, endpoints: list[str]) -> None:
        self.name = "etcd 3.4 (3 members, JSON gateway)"
        self.endpoints = endpoints
        self._i = 0

    def _ep(self) -> str:
        self._i += 1
        return self.endpoints[self._i % len(self.endpoints)]

    def put_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(VALUE).decode()}).encode()
        return "POST", self._ep() + "/v3/kv/put", body, {"Content-Type": "application/json"}

    def get_request(self, key: str) -> tuple[str, str, bytes, dict[str, str]]:
        # Linearizable read (serializable=false is the default).
        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        return "POST", self._ep() + "/v3/kv/range", body, {"Content-Type": "application/json"}


async def run_phase(target: Target, op: str, clients: int, seconds: float,
                    key_space: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.monotonic() + seconds
    cpu0 = time.process_time()

    async def worker(w: int) -> None:
        nonlocal errors, counter
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            i = 0
            while time.monotonic() < deadline:
                if op == "put":
                    key = f"k{w:03d}-{i:08d}"
                    method, url, body, headers = target.put_request(key)
                else:
                    key = f"k{(w + i) % clients:03d}-{i % key_space:08d}"
                    method, url, body, headers = target.get_request(key)
                i += 1
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                dt = time.perf_counter() - t0
                if ok:
                    latencies.append(dt)
                    counter += 1
                else:
                    errors += 1

    t_start = time.monotonic()
    await asyncio.gather(*[worker(w) for w in range(clients)])
    elapsed = time.monotonic() - t_start
    latencies.sort()
    return {
        "op": op,
        "ops_per_s": counter / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
        "ops": counter,
        "generator_cpu_pct": 100 * (time.process_time() - cpu0) / elapsed,
    }


async def measure(target: Target, clients: int, seconds: float, runs: int) -> list[dict]:
    results = []
    # Keys for the get phase: written by a short put phase first.
    await run_phase(target, "put", clients, 2.0, 1)
    for op in ("put", "get"):
        rounds = [await run_phase(target, op, clients, seconds, 200) for _ in range(runs)]
        rounds.sort(key=lambda r: r["ops_per_s"])
        median = dict(rounds[len(rounds) // 2])
        median["runs_ops_per_s"] = [round(r["ops_per_s"]) for r in rounds]
        results.append(median)
    return results


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'system':38} {'op':4} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'gen CPU':>8}  runs (ops/s)")
    for name, r in rows:
        print(f"{name:38} {r['op']:4} {r['ops_per_s']:8.0f} {r['p50_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['errors']:6d} {r['generator_cpu_pct']:7.0f}%  "
              f"{r['runs_ops_per_s']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-etcd", action="store_true", help="skip the etcd comparison")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="rangekv-bench-") as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root / "rangekv", find_free_base_port())
        try:
            cluster.start()
            cluster.wait_ready(120)
            urllib.request.urlopen(urllib.request.Request(
                f"{cluster.endpoint}/v1/tables/bench", method="PUT"), timeout=30).read()
            target = RangeKV(cluster.endpoint, "bench")
            print(f"measuring {target.name} ...", file=sys.stderr)
            for r in asyncio.run(measure(target, args.clients, args.seconds, args.runs)):
                rows.append((target.name, r))
        finally:
            cluster.stop()
        if not args.no_etcd:
            procs, endpoints = start_etcd_cluster(root / "etcd")
            try:
                target_e = Etcd(endpoints)
                print(f"measuring {target_e.name} ...", file=sys.stderr)
                for r in asyncio.run(measure(target_e, args.clients, args.seconds, args.runs)):
                    rows.append((target_e.name, r))
            finally:
                for p in procs:
                    p.kill()
    print(f"\n{args.clients} concurrent clients, 256-byte values, {args.seconds:.0f} s per run, "
          f"median of {args.runs} runs; {os.cpu_count()} CPUs shared by servers and generator")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([{"system": n, **r} for n, r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
