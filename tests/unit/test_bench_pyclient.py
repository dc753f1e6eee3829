"""``rangekv bench client``'s pure parts: figures of several runs, ratios, the report's tables
and verdicts, and the generator's loops against in-memory fake clients (no servers, no
processes). Nothing here times anything: counts and shapes only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from rangekv.bench import pyclient, report
from rangekv.bench.main import client_data, main
from rangekv.cli.load import parse_lines


def test_median_and_ratio_ignore_what_is_missing() -> None:
    assert pyclient.median([3.0, None, 1.0, 2.0]) == 2.0
    assert pyclient.median([1.0, 2.0]) == 1.5
    assert pyclient.median([None]) is None
    assert pyclient.ratio(3.0, 2.0) == 1.5
    assert pyclient.ratio(None, 2.0) is None
    assert pyclient.ratio(1.0, None) is None
    assert pyclient.ratio(1.0, 0.0) is None


def test_aggregate_takes_each_figure_s_median_and_keeps_the_runs() -> None:
    runs = [
        {"ops_per_s": 300.0, "p99_ms": 9.0, "client_cpu_ms_per_op": 0.3, "errors": {"x": 1},
         "servers": {"rm-1": {"cpu_ms_per_op": 0.5}, "node-1": {"cpu_ms_per_op": 1.0}}},
        {"ops_per_s": 100.0, "p99_ms": 30.0, "client_cpu_ms_per_op": None, "errors": {},
         "servers": {"rm-1": {"cpu_ms_per_op": 0.7}}},
        {"ops_per_s": 200.0, "p99_ms": 10.0, "client_cpu_ms_per_op": 0.1,
         "errors": {"x": 2, "y": 1}, "servers": {"rm-1": {"cpu_ms_per_op": 0.6}}},
    ]
    fig = pyclient.aggregate(runs, "ops_per_s")
    assert fig["ops_per_s"] == 200.0
    assert fig["p99_ms"] == 10.0  # each figure on its own: not the p99 of the median run
    assert fig["client_cpu_ms_per_op"] == pytest.approx(0.2)  # None is left out
    assert fig["errors"] == {"x": 3, "y": 1}
    assert fig["runs"] == [300.0, 100.0, 200.0]  # in run order
    assert fig["servers"] == {"node-1": {"cpu_ms_per_op": 1.0}, "rm-1": {"cpu_ms_per_op": 0.6}}
    assert "keys_per_s" not in fig  # no run has it
    with pytest.raises(AssertionError):
        pyclient.aggregate([], "ops_per_s")


def test_server_figures_are_per_operation() -> None:
    r = {"servers": {"a": {"cpu_s": 1.0, "cpu_s_per_1000_ops": 2.0},
                     "b": {"cpu_s": 0.5, "cpu_s_per_1000_ops": 1.0}},
         "fsync": {"node_max_per_write": 0.25}}
    got = pyclient.server_figures(r, 500)
    assert got["servers"]["a"]["cpu_ms_per_op"] == 2.0
    assert got["server_cpu_ms_per_op"] == 3.0
    assert got["fsync_per_write"] == 0.25
    assert pyclient.server_figures({}, 500)["server_cpu_ms_per_op"] is None
    assert pyclient.server_figures(r, 0)["server_cpu_ms_per_op"] is None


class FakeRpcError(Exception):
    def code(self) -> Any:
        class Status:
            name = "UNAVAILABLE"

        return Status()


class FakeBatchFailed(Exception):
    def __init__(self, results: list[Any]) -> None:
        super().__init__("some items failed")
        self.results = results


def test_error_kinds_and_failed_items() -> None:
    assert pyclient.error_kind(FakeRpcError()) == "grpc_unavailable"
    assert pyclient.error_kind(TimeoutError()) == "TimeoutError"
    assert pyclient.failed_items(["s1", ValueError(), "s3"]) == 1
    assert pyclient.failed_items(None) == 0
    exc = FakeBatchFailed(["s1", TimeoutError(), KeyError()])
    assert pyclient.item_error_kinds(exc) == ["item_TimeoutError", "item_KeyError"]
    assert pyclient.item_error_kinds(ValueError()) == []


def test_config_steps_and_timed_measurements() -> None:
    c = pyclient.Config(runs=2)
    assert c.timed() == [("async", "put", 64), ("async", "get", 64), ("async", "put", 1),
                         ("async", "get", 1), ("sync", "put", 16), ("sync", "get", 16)]
    # per system: start + runs x (load, scan, 6 timed); rangekv's command loads: runs more
    assert c.steps() == 2 * (1 + 2 * 8) + 2
    # etcd's loads keep as many items in flight as rangekv's batches: 4 x 1000 / 128, rounded up
    assert pyclient.Config().etcd_inflight() == 32
    assert pyclient.Config(load_batch=256, load_inflight=1).etcd_inflight() == 2
    assert pyclient.Config(tasks=1).timed()[:2] == [("async", "put", 1), ("async", "get", 1)]
    assert len(pyclient.Config(tasks=1).timed()) == 4
    with pytest.raises(AssertionError):
        pyclient.Config(etcd_txn_ops=129)  # etcd refuses a transaction of more
    with pytest.raises(AssertionError):
        pyclient.Config(systems=("redis",))
    with pytest.raises(AssertionError):  # gets read loaded keys: they need some
        pyclient.Spec(system="rangekv", endpoints=("x",), kind="ops", table="t", op="get")


def test_the_command_reads_the_file_the_suite_writes(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    pyclient.write_jsonl(path, 25_003, 256)
    items = parse_lines(path.read_bytes())
    assert len(items) == 25_003
    assert items[0] == (pyclient.key_of(0), b"v" * 256)
    assert items[-1][0] == pyclient.key_of(25_002)


class FakeAsync:
    """An in-memory client with the generator's interface."""

    def __init__(self, batched: bool = True, fail_first_batches: int = 0) -> None:
        self.batched = batched
        self.data: dict[bytes, bytes] = {}
        self.fail_first_batches = fail_first_batches
        self.calls = 0

    async def put(self, w: int, key: bytes, value: bytes) -> None:
        await asyncio.sleep(0)
        self.data[key] = value

    async def get(self, w: int, key: bytes) -> None:
        await asyncio.sleep(0)
        if key not in self.data:
            raise pyclient.Missing(key)

    async def put_batch(self, w: int, items: list[tuple[bytes, bytes]]) -> int:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0)
        if call <= self.fail_first_batches:
            raise FakeBatchFailed([TimeoutError()] + ["seq"] * (len(items) - 1))
        self.data.update(items)
        return 0

    def load_path(self, spec: pyclient.Spec) -> str:
        return "fake batches" if self.batched else "fake puts"

    async def scan(self, page: int) -> tuple[int, int]:
        return len(self.data), sum(map(len, self.data.values()))


def _spec(**kw: Any) -> pyclient.Spec:
    base: dict[str, Any] = {"system": "rangekv", "endpoints": ("fake",), "table": "t"}
    return pyclient.Spec(**{**base, **kw})


def test_load_and_scan_against_a_fake_client() -> None:
    said: list[str] = []
    client = FakeAsync(fail_first_batches=2)
    got = asyncio.run(pyclient.load(_spec(kind="load", records=2500, batch=1000, inflight=2,
                                          value_bytes=8), client, said.append))
    assert said == ["start", "end"]
    assert got["keys"] == 2500 and len(client.data) == 2500  # the failed batches went again
    assert got["requests"] == 3 + 2
    assert got["errors"] == {"FakeBatchFailed": 2, "item_TimeoutError": 2}
    assert got["keys_per_s"] > 0 and got["path"] == "fake batches"
    single = FakeAsync(batched=False)
    got = asyncio.run(pyclient.load(_spec(kind="load", records=300, tasks=7, value_bytes=8),
                                    single, lambda _: None))
    assert got["keys"] == 300 == got["requests"] and got["path"] == "fake puts"
    got = asyncio.run(pyclient.scan(_spec(kind="scan", op="get"), single, lambda _: None))
    assert got["keys"] == 300 and got["value_bytes"] == 300 * 8


def test_a_load_that_always_fails_gives_up_and_says_so() -> None:
    client = FakeAsync(fail_first_batches=10**9)
    got = asyncio.run(pyclient.load(_spec(kind="load", records=10, batch=4, inflight=1),
                                    client, lambda _: None))
    assert got["keys"] == 0
    assert got["errors"]["gave_up_items"] == 10
    assert got["errors"]["FakeBatchFailed"] == 3 * pyclient.LOAD_RETRIES


def test_timed_loop_counts_the_window_only() -> None:
    client = FakeAsync()
    for i in range(10):
        client.data[pyclient.key_of(i)] = b"v"
    said: list[str] = []
    got = asyncio.run(pyclient.timed_async(
        _spec(kind="ops", op="get", tasks=3, records=10, warmup_s=0.05, seconds=0.2), client,
        said.append))
    assert said == ["start", "end"]
    assert got["ops"] > 0 and not got["errors"]
    assert got["ops_per_s"] == pytest.approx(got["ops"] / got["seconds"], rel=1e-3)
    assert 0 < got["p50_ms"] <= got["p99_ms"] <= got["max_ms"]
    missing = asyncio.run(pyclient.timed_async(
        _spec(kind="ops", op="get", tasks=2, records=1000, warmup_s=0.0, seconds=0.1),
        FakeAsync(), lambda _: None))
    assert missing["ops"] == 0 and missing["errors"]["Missing"] > 0  # never a success


def _figure(system: str, what: str, **kw: Any) -> dict[str, Any]:
    base = {"system": system, "what": what, "errors": {}, "runs": [1.0], "servers": {}}
    return {**base, **kw}


def _ops(system: str, api: str, op: str, conc: int, ops_s: float, p50: float,
         cpu: float) -> dict[str, Any]:
    return _figure(system, f"{api} {op} x{conc}", kind="ops", api=api, op=op, concurrency=conc,
                   ops_per_s=ops_s, p50_ms=p50, p99_ms=3 * p50, client_cpu_ms_per_op=cpu,
                   server_cpu_ms_per_op=0.5,
                   servers={"rm-1": {"cpu_ms_per_op": 0.25}} if conc == 64 else {})


def client_figures() -> dict[str, Any]:
    results = [
        _ops("rangekv", "async", "put", 64, 4000.0, 10.0, 0.08),
        _ops("rangekv", "async", "get", 64, 3000.0, 10.0, 0.05),
        _ops("rangekv", "async", "put", 1, 1000.0, 0.7, 0.2),
        _ops("rangekv", "async", "get", 1, 1500.0, 0.5, 0.2),
        _ops("rangekv", "sync", "put", 16, 900.0, 10.0, 0.3),
        _ops("etcd", "async", "put", 64, 2000.0, 20.0, 0.4),
        _ops("etcd", "async", "get", 64, 2500.0, 20.0, 0.4),
        _ops("etcd", "async", "put", 1, 300.0, 3.0, 1.0),
        _ops("etcd", "async", "get", 1, 800.0, 1.0, 1.0),
        _figure("rangekv", "load", kind="load", keys=1000, keys_per_s=60_000.0,
                path="AsyncClient.put_many"),
        _figure("rangekv", "rangekv load", kind="cli_load", keys=1000, keys_per_s=40_000.0,
                path="rangekv load TABLE FILE --create"),
        _figure("etcd", "load", kind="load", keys=1000, keys_per_s=20_000.0,
                path="aetcd transaction"),
        _figure("rangekv", "scan", kind="scan", keys=1000, keys_per_s=350_000.0, page=500),
        _figure("etcd", "scan", kind="scan", keys=1000, keys_per_s=70_000.0, page=500),
    ]
    return {"config": {"tasks": 64, "threads": 16, "records": 1000, "runs": 1, "seconds": 1.0,
                       "warmup_s": 0.5},
            "versions": {"rangekv": "rangekv 0", "etcd": "etcd 3.4"},
            "labels": pyclient.LABELS, "skipped": {}, "failed": {},
            "notes": ["etcd's sync figures are missing: a reason"], "results": results,
            "started": "s", "finished": "f"}


def test_targets_give_verdicts_against_etcd() -> None:
    rows = {r[0].split(",")[0]: r for r in report.client_targets(client_figures())}
    assert rows["puts/s"][3] == "2.00x: met, goal met"
    assert rows["linearizable gets/s"][3] == "1.20x: not met"
    assert rows["client CPU per put"][1:] == ["0.080 ms", "0.400 ms", "met"]
    assert rows["one task: put p50 <= etcd's (goal 0.75 ms)"][3] == "met, goal met"
    load = next(r for k, r in rows.items() if k.startswith("`rangekv load`"))
    assert "measured at 1,000" in load[0] and load[3] == "not met"  # the command's 40,000
    scan = next(r for k, r in rows.items() if k.startswith("full scan"))
    assert scan[3] == "met"


def test_the_report_shows_the_client_tables_and_ratios() -> None:
    md = report.markdown(client_data(client_figures()), plot_name=None)
    for heading in ("## Python clients, one process", "### Targets",
                    "### Throughput and CPU per operation", "### One task: latency",
                    "### Batch loading and full scans", "### Server CPU per operation"):
        assert heading in md, heading
    assert "| put | async, 64 tasks | 4,000 | 2,000 | 2.00x |" in md
    assert "| get | 0.50 | 1.50 | 1.00 | 3.00 | 0.50x |" in md  # one task: rangekv/etcd p50
    # the sync put has no etcd figure: the row says so rather than vanish
    assert "| put | sync, 16 threads | 900 | n/a | n/a |" in md
    assert "| full scan | rangekv | page of 500 | 1,000 | 350,000 | 5.00x |" in md
    assert "note: etcd's sync figures are missing" in md
    assert "## Closed loop" not in md and "Redis is an upper reference" not in md


def test_report_command_writes_the_client_sections(tmp_path: Path) -> None:
    results = tmp_path / "client.json"
    results.write_text(json.dumps(client_data(client_figures())))
    assert main(["report", str(results), "--out", str(tmp_path / "docs")]) == 0
    assert "## Python clients, one process" in (tmp_path / "docs" / "benchmarks.md").read_text()


def test_report_takes_the_client_figures_from_another_file(tmp_path: Path) -> None:
    suites = client_data(client_figures())
    suites["client"] = None  # an `all` run with --client-records 0
    (tmp_path / "all.json").write_text(json.dumps(suites))
    (tmp_path / "client.json").write_text(json.dumps(client_data(client_figures())))
    assert main(["report", str(tmp_path / "all.json"), "--out", str(tmp_path / "a")]) == 0
    assert "## Python clients" not in (tmp_path / "a" / "benchmarks.md").read_text()
    assert main(["report", str(tmp_path / "all.json"), "--client", str(tmp_path / "client.json"),
                 "--out", str(tmp_path / "b")]) == 0
    assert "## Python clients" in (tmp_path / "b" / "benchmarks.md").read_text()
    assert main(["report", str(tmp_path / "all.json"), "--client", str(tmp_path / "all.json"),
                 "--out", str(tmp_path / "c")]) == 2


def test_bad_client_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "--systems", "rangekv,redis"]) == 2
    assert "unknown system" in capsys.readouterr().err
    assert main(["client", "--etcd-txn-ops", "500"]) == 2
