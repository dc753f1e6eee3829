"""``rangekv rm`` as a real process against a real etcd: it loads and follows the metadata,
answers health checks, and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rangekv import model
from rangekv.metadata.etcd import EtcdClient
from rangekv.model import Group, Node, Range, Table
from rangekv.testing.procs import free_port, spawn, wait_until

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def _write(endpoint: str, items: list[tuple[bytes, bytes]]) -> None:
    client = EtcdClient([endpoint])
    try:
        for key, value in items:
            await client.put(key, value)
    finally:
        await client.close()


def test_rm_process_follows_etcd_and_exits_cleanly(etcd_endpoint: str, tmp_path: Path) -> None:
    asyncio.run(
        _write(
            etcd_endpoint,
            [
                (model.node_key(1), model.dumps(Node(1, f"127.0.0.1:{free_port()}", "member", 1))),
                (model.group_key(1), model.dumps(Group(1, 1, 1, (1,)))),
                (model.table_key("Stocks"), model.dumps(Table(1, "Stocks"))),
                (model.range_key(1, b""), Range(1, b"", None, 1).dumps()),
            ],
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = spawn(
        "rm",
        [
            sys.executable,
            "-m",
            "rangekv.request_manager.app",
            "--id",
            "3",
            "--listen",
            f"127.0.0.1:{port}",
            "--etcd",
            etcd_endpoint,
        ],
        tmp_path / "rm.log",
    )
    try:
        wait_until(lambda: _get(base + "/healthz")[0] == 200, 15, "rm healthy")
        status, body = _get(base + "/v1/tables")
        assert (status, body) == (200, {"tables": [{"name": "Stocks", "id": 1}]})

        # A table written later reaches the rm through the watch.
        late = [(model.table_key("Late"), model.dumps(Table(2, "Late")))]
        asyncio.run(_write(etcd_endpoint, late))
        wait_until(lambda: len(_get(base + "/v1/tables")[1]["tables"]) == 2, 5, "watch")

        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=10) == 0
        log = proc.log()
        assert "listening on" in log and "stopped" in log
        assert "Traceback" not in log, log
    finally:
        proc.kill()
