"""The benchmark suites of issue 6, one system at a time, all driven by ``rangekv.bench.load``.

For each system (in the order etcd-http, rangekv, etcd-py, redis, so that etcd's maximum rate is
known before the others' open-loop runs) the suite starts it fresh, runs the chosen suites, and
stops it:

* ``closed``: loads ``get_records`` keys, then closed-loop puts (new keys) and gets (of the
  loaded keys: no 404s) at each concurrency, 256-byte values.
* ``open``: open-loop puts and gets at fractions of that system's best closed-loop rate, and at
  half of etcd's (JSON gateway) best rate, so that every system is compared at the same load.
  Latencies from the intended send time.
* ``ycsb``: loads ``ycsb_records`` records of 1 KB, then workloads A-F (closed loop).
* ``scan``: loads ``scan_records`` keys, then paginates the whole table in pages of ``page``
  keys, over and over: keys per second.

Every measurement is repeated ``runs`` times; the run with the median throughput is kept (with
the others' throughputs beside it). Around each run's window the suite reads every server
process's CPU time (``/proc/PID/stat``) and, when the workload writes, the system's fsync
counters; the generator reports its own CPU. Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rangekv.bench.load import Phase, Workload, run_phase
from rangekv.bench.systems import LABELS, System, available, make_system, proc_cpu_s

SUITES = ("closed", "open", "ycsb", "scan")
ORDER = ("etcd-http", "rangekv", "etcd-py", "redis")
REFERENCE = "etcd-http"  # the open loop compares every system at half of its best rate
WRITES = frozenset({"put", "update", "insert", "rmw"})

# YCSB core workloads (operation mix, request distribution); E's scans are 1..100 keys.
YCSB: dict[str, tuple[tuple[tuple[str, float], ...], str]] = {
    "a": ((("read", 0.5), ("update", 0.5)), "zipfian"),
    "b": ((("read", 0.95), ("update", 0.05)), "zipfian"),
    "c": ((("read", 1.0),), "zipfian"),
    "d": ((("read", 0.95), ("insert", 0.05)), "latest"),
    "e": ((("scan", 0.95), ("insert", 0.05)), "zipfian"),
    "f": ((("read", 0.5), ("rmw", 0.5)), "zipfian"),
}


@dataclass
class Config:
    systems: tuple[str, ...] = ORDER
    suites: tuple[str, ...] = SUITES
    seconds: float = 5.0
    warmup_s: float = 1.0
    runs: int = 3
    processes: int = 2
    concurrency: tuple[int, ...] = (1, 4, 16, 64, 256)
    value_bytes: int = 256
    get_records: int = 2000
    open_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    open_connections: int = 256
    ycsb_records: int = 10_000
    ycsb_value_bytes: int = 1024
    ycsb_connections: int = 64
    ycsb_workloads: str = "abcdef"
    scan_records: int = 20_000
    scan_page: int = 1000
    scan_connections: tuple[int, ...] = (1, 4, 8)
    load_connections: int = 64
    dir: str | None = None

    def __post_init__(self) -> None:
        assert set(self.suites) <= set(SUITES), self.suites
        assert self.runs >= 1 and self.seconds > 0 and self.processes >= 1
        assert set(self.ycsb_workloads) <= set(YCSB), self.ycsb_workloads

    def ordered_systems(self) -> list[str]:
        return [s for s in ORDER if s in self.systems]

    def steps(self) -> int:
        """How many progress steps ``run_suites`` takes (an estimate for the open loop)."""
        per = 1
        if "closed" in self.suites:
            per += 1 + 2 * len(self.concurrency) * self.runs
        if "open" in self.suites:
            per += 2 * (len(self.open_fractions) + 1) * self.runs
            if "closed" not in self.suites:
                per += 3
        if "ycsb" in self.suites:
            per += 1 + len(self.ycsb_workloads) * self.runs
        if "scan" in self.suites:
            per += 1 + len(self.scan_connections) * self.runs
        return per * len(self.ordered_systems())


@dataclass
class Bench:
    """Runs phases against one started system, with server CPU and fsync samples."""

    system: System
    config: Config
    progress: Callable[[str], None]
    results: list[dict[str, Any]] = field(default_factory=list)

    seed: int = 0

    def phase(self, wl: Workload, mode: str, connections: int, rate: float = 0.0) -> Phase:
        c = self.config
        self.seed += 1  # also names the keys of put runs: every run writes new keys
        return Phase(self.system.target(), wl, mode, connections, c.processes, rate,
                     c.warmup_s, c.seconds, seed=self.seed)

    def load(self, wl: Workload, suite: str) -> dict[str, Any]:
        self.progress(f"{self.system.name}: load {wl.records:,} keys into {wl.table}")
        phase = Phase(self.system.target(), wl, "load", self.config.load_connections,
                      self.config.processes)
        result = run_phase(phase)
        result["suite"] = "load"
        result["of"] = suite
        if result["errors"]:
            raise RuntimeError(f"{self.system.name}: loading {wl.table} failed: "
                               f"{result['errors']}")
        self.results.append(result)
        return result

    def measure(self, suite: str, what: str, phase: Phase) -> dict[str, Any]:
        runs = []
        writes = any(op in WRITES for op, _ in phase.workload.mix)
        for i in range(self.config.runs):
            self.progress(f"{self.system.name}: {what} run {i + 1}/{self.config.runs}")
            pids = self.system.pids()

            def sample(pids: dict[str, int] = pids) -> dict[str, Any]:
                return {"cpu": {n: proc_cpu_s(p) for n, p in pids.items()},
                        "fsync": self.system.fsyncs() if writes else None}

            r = run_phase(phase, sample, sample)
            r.update(_servers(r, writes))
            runs.append(r)
        ordered = sorted(runs, key=lambda r: r["ops_per_s"])
        best = ordered[len(ordered) // 2]
        best["runs_ops_per_s"] = [round(r["ops_per_s"], 1) for r in runs]
        best["suite"] = suite
        self.results.append(best)
        return best


def _servers(r: dict[str, Any], writes: bool) -> dict[str, Any]:
    """Server CPU per process and fsyncs per acknowledged write, from the window's samples."""
    start, end = r["samples"].pop("start", None), r["samples"].pop("end", None)
    r.pop("samples", None)
    out: dict[str, Any] = {"servers": {}, "fsync": None}
    if not start or not end:
        return out
    ops = r["ops"]
    for name, before in start["cpu"].items():
        after = end["cpu"].get(name)
        if before is None or after is None:
            continue
        cpu = after - before
        out["servers"][name] = {"cpu_s": round(cpu, 3),
                                "cpu_s_per_1000_ops": 1000 * cpu / ops if ops else None}
    if writes and start.get("fsync") is not None and end.get("fsync") is not None:
        acked = sum(v["count"] for op, v in r["by_op"].items() if op in WRITES)
        nodes = {}
        for name, b in start["fsync"].items():
            e = end["fsync"].get(name)
            if e is None:
                continue
            syncs = e["syncs"] - b["syncs"]
            node = {"syncs": syncs, "per_write": syncs / acked if acked else None}
            for k in ("role", "group"):
                if k in e:
                    node[k] = e[k]
            if "backend_commits" in e:
                node["backend_commits"] = e["backend_commits"] - b["backend_commits"]
            nodes[name] = node
        total = sum(n["syncs"] for n in nodes.values())
        leader = [n for n in nodes.values() if n.get("role") == "leader"]
        out["fsync"] = {
            "acked_writes": acked, "nodes": nodes,
            "total_per_write": total / acked if acked else None,
            "node_max_per_write": (max(n["syncs"] for n in nodes.values()) / acked
                                   if acked and nodes else None),
            "leader_per_write": (leader[0]["syncs"] / acked if leader and acked else None),
        }
    return out


def best_rate(results: list[dict[str, Any]], system: str, op: str) -> float | None:
    rates = [r["ops_per_s"] for r in results if r.get("suite") == "closed"
             and r["system"] == system and r["workload"] == op]
    return max(rates) if rates else None


def _closed(b: Bench) -> None:
    c = b.config
    b.system.create_table("bench")
    b.load(Workload("get", (("get", 1.0),), "bench", c.value_bytes, c.get_records), "closed")
    for op in ("put", "get"):
        wl = Workload(op, ((op, 1.0),), "bench", c.value_bytes, c.get_records)
        for conns in c.concurrency:
            b.measure("closed", f"closed {op} x{conns}", b.phase(wl, "closed", conns))


def _open(b: Bench, earlier: list[dict[str, Any]]) -> None:
    c = b.config
    name = b.system.name
    if "closed" not in c.suites:
        b.system.create_table("bench")
        b.load(Workload("get", (("get", 1.0),), "bench", c.value_bytes, c.get_records), "open")
    for op in ("put", "get"):
        wl = Workload(op, ((op, 1.0),), "bench", c.value_bytes, c.get_records)
        top = best_rate(b.results, name, op)
        if top is None:  # no closed loop in this run: find the best rate once, at 64
            b.progress(f"{name}: best closed-loop {op} rate")
            top = run_phase(b.phase(wl, "closed", min(64, max(c.concurrency))))["ops_per_s"]
        rates = {f"{int(f * 100)}% of own best": f * top for f in c.open_fractions}
        ref = best_rate(earlier + b.results, REFERENCE, op)
        if ref is not None:
            rates[f"50% of {REFERENCE} best"] = 0.5 * ref
        for label, rate in rates.items():
            if rate < 1:
                continue
            r = b.measure("open", f"open {op} {rate:,.0f}/s",
                          b.phase(wl, "open", c.open_connections, rate))
            r["rate_label"] = label


def _ycsb(b: Bench) -> None:
    c = b.config
    b.system.create_table("ycsb")
    base = Workload("load", (("insert", 1.0),), "ycsb", c.ycsb_value_bytes, c.ycsb_records,
                    key_prefix="user")
    b.load(base, "ycsb")
    for letter in c.ycsb_workloads:
        mix, dist = YCSB[letter]
        wl = Workload(f"ycsb-{letter}", mix, "ycsb", c.ycsb_value_bytes, c.ycsb_records,
                      dist, key_prefix="user")
        b.measure("ycsb", f"YCSB {letter.upper()}", b.phase(wl, "closed", c.ycsb_connections))


def _scan(b: Bench) -> None:
    c = b.config
    b.system.create_table("scan")
    b.load(Workload("load", (("insert", 1.0),), "scan", c.value_bytes, c.scan_records), "scan")
    wl = Workload("scan", (("page", 1.0),), "scan", c.value_bytes, c.scan_records,
                  page=c.scan_page)
    for conns in c.scan_connections:
        b.measure("scan", f"scan x{conns}", b.phase(wl, "closed", conns))


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}


def run_suites(config: Config, progress: Callable[[str], None] = lambda _: None,
               calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs ``config``'s suites on each of its systems; returns everything as JSON-ready data."""
    out: dict[str, Any] = {
        "meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
                 "config": asdict(config), "versions": {}, "labels": {}},
        "calibration": calibration, "skipped": {}, "failed": {}, "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="rangekv-bench-", dir=config.dir) as tmp:
        for name in config.ordered_systems():
            why = available(name)
            if why is not None:
                out["skipped"][name] = why
                progress(f"{name}: skipped ({why})")
                continue
            system = make_system(name)
            progress(f"{name}: start")
            b = Bench(system, config, progress)
            try:
                system.start(Path(tmp))
                out["meta"]["versions"][name] = system.version()
                out["meta"]["labels"][name] = LABELS[name]
                if "closed" in config.suites:
                    _closed(b)
                if "open" in config.suites:
                    _open(b, out["results"])
                if "ycsb" in config.suites:
                    _ycsb(b)
                if "scan" in config.suites:
                    _scan(b)
            except Exception as exc:  # noqa: BLE001 (one system's failure keeps the others)
                out["failed"][name] = f"{type(exc).__name__}: {exc}"
                progress(f"{name}: failed ({type(exc).__name__})")
            finally:
                out["results"].extend(b.results)
                system.stop()
    out["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return out
