"""``rangekv bench`` end to end on real systems, tiny: a closed loop at 4 connections and a scan
against a fresh rangekv cluster and a 3-member etcd (and Redis when it is installed), then the
report. Checks that the figures are there and plausible, never how fast anything is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rangekv.bench import pyclient, suite
from rangekv.bench.main import client_data, main
from rangekv.bench.systems import redis_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_closed_loop_scan_and_report(tmp_path: Path) -> None:
    systems = ("rangekv", "etcd-http") + (("redis",) if redis_binary() else ())
    config = suite.Config(systems=systems, suites=("closed", "scan"), seconds=1.5,
                          warmup_s=0.5, runs=1, concurrency=(4,), get_records=100,
                          scan_records=500, scan_page=100, scan_connections=(1,),
                          load_connections=8, dir=str(tmp_path))
    steps: list[str] = []
    data = suite.run_suites(config, steps.append)
    assert not data["failed"], data["failed"]
    assert steps and len(steps) <= config.steps()
    results = {(r["system"], r["suite"], r["workload"]): r for r in data["results"]}
    for system in systems:
        for op in ("put", "get"):
            r = results[(system, "closed", op)]
            assert r["ops"] > 0 and r["ops_per_s"] > 0, r
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
            assert not r["errors"], r["errors"]  # gets read loaded keys: no 404
            assert r["connections"] == 4 and r["runs_ops_per_s"] == [round(r["ops_per_s"], 1)]
            assert all(c >= 0 for c in r["generator"]["cpu_s"])
            assert r["servers"] and all(v["cpu_s"] >= 0 for v in r["servers"].values())
        scan = results[(system, "scan", "scan")]
        assert scan["items_per_s"] > scan["ops_per_s"] > 0 and not scan["errors"]
    put = results[("rangekv", "closed", "put")]
    assert {"haproxy", "rm-1", "node-1"} <= set(put["servers"])
    fs = put["fsync"]
    assert fs["acked_writes"] == put["ops"]
    assert sum(1 for n in fs["nodes"].values() if n["role"] == "leader") == 1
    assert 0 < fs["leader_per_write"] <= 1.5 and fs["total_per_write"] > 0
    etcd_fs = results[("etcd-http", "closed", "put")]["fsync"]
    assert len(etcd_fs["nodes"]) == 3 and etcd_fs["total_per_write"] > 0
    assert results[("rangekv", "closed", "get")]["fsync"] is None  # reads: no fsync figure

    out = tmp_path / "results.json"
    out.write_text(json.dumps(data))
    assert main(["report", str(out), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "benchmarks.md").read_text()
    for heading in ("## Closed loop", "## Ratios rangekv / etcd", "## fsyncs per acknowledged",
                    "## CPU seconds per 1000", "## Scan throughput"):
        assert heading in md, heading
    assert "| rangekv | put | 4 |" in md and "| etcd-http | get | 4 |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = tmp_path / "docs" / "benchmarks-throughput-p99.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_client_suite_and_report(tmp_path: Path) -> None:
    """``rangekv bench client`` tiny, on rangekv (and etcd when its Python client is installed):
    every figure is there and positive, no operation failed, the report shows them."""
    systems = ("rangekv",) + (("etcd",) if pyclient.available("etcd") is None else ())
    config = pyclient.Config(systems=systems, seconds=1.0, warmup_s=0.3, runs=1, tasks=4,
                             threads=2, records=300, load_batch=100, load_inflight=2,
                             etcd_txn_ops=50, scan_page=100, dir=str(tmp_path))
    steps: list[str] = []
    client = pyclient.run_client(config, steps.append)
    assert not client["failed"], client["failed"]
    assert steps and len(steps) <= config.steps()
    sync_etcd = pyclient.sync_etcd_missing() is None
    for system in systems:
        for api, op, conc in config.timed():
            r = pyclient.find(client, system, f"{api} {op} x{conc}")
            if api == "sync" and system == "etcd" and not sync_etcd:
                assert r is None
                continue
            assert r is not None, (system, api, op, conc)
            assert r["ops"] > 0 and r["ops_per_s"] > 0 and not r["errors"], r
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
            assert r["client_cpu_ms_per_op"] > 0 and r["server_cpu_ms_per_op"] > 0
            assert r["servers"] and r["runs"] == [round(r["ops_per_s"], 4)]
        for what in ("load", "scan"):
            r = pyclient.find(client, system, what)
            assert r is not None and not r["errors"], (system, what, r)
            assert r["keys"] == config.records and r["keys_per_s"] > 0
    assert pyclient.find(client, "rangekv", "load")["path"].startswith("AsyncClient.")
    put = pyclient.find(client, "rangekv", "async put x4")
    assert {"haproxy", "rm-1", "node-1"} <= set(put["servers"])
    assert put["fsync_per_write"] > 0  # the busiest replica synced for the puts
    command = pyclient.find(client, "rangekv", "rangekv load")
    assert command["keys"] == config.records and command["keys_per_s"] > 0

    out = tmp_path / "client.json"
    out.write_text(json.dumps(client_data(client)))
    assert main(["report", str(out), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "benchmarks.md").read_text()
    for heading in ("## Python clients, one process", "### Targets",
                    "### Throughput and CPU per operation", "### One task: latency",
                    "### Batch loading and full scans"):
        assert heading in md, heading
