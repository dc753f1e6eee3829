"""Real processes configured without flags: ``rangekv rm`` from a TOML file plus the
environment, logging JSON lines; ``rangekv node`` from the environment plus a file, logging
text at DEBUG. Each must listen where its configuration says, and its log must be what the
configuration asked for."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from rangekv.testing.procs import free_port, spawn, wait_until

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "rangekv.cli.main"]


def _healthz(url: str) -> int:
    with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
        return int(resp.status)


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def test_rm_from_a_toml_file_and_env_logs_json_lines(etcd_endpoint: str, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "rangekv.toml"
    path.write_text(
        f'[rm]\nid = 3\nlisten = "127.0.0.1:{port}"\netcd = "http://127.0.0.1:1"\n'
        '[log]\nformat = "json"\n'
    )
    # the environment wins over the file: the rm must reach the real etcd to serve
    proc = spawn("rm", [*CLI, "rm", "--config", str(path)], tmp_path / "rm.log",
                 env={"RANGEKV_RM_ETCD": etcd_endpoint})
    try:
        wait_until(lambda: _healthz(f"http://127.0.0.1:{port}") == 200, 30,
                   f"rm healthy on port {port} (log: {proc.log_path})")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0, proc.log()
    finally:
        proc.stop()
    lines = proc.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records, "no log lines"
    for r in records:
        assert {"ts", "level", "component", "logger", "msg", "pid"} <= r.keys(), r
        assert r["component"] == "rm-3" and r["pid"] == proc.pid, r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]), r
    msgs = [r["msg"] for r in records]
    assert f"rm 3 listening on 127.0.0.1:{port} (native: off), etcd {etcd_endpoint}" in msgs, msgs
    assert "stopped" in msgs, msgs


def test_node_from_env_and_a_toml_file_logs_text_at_debug(tmp_path: Path) -> None:
    port, meta_port = free_port(), free_port()  # nothing listens on the meta port
    path = tmp_path / "rangekv.toml"
    path.write_text(f'[node]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "n7"}"\n'
                    '[log]\nlevel = "INFO"\n')
    env = {"RANGEKV_CONFIG": str(path), "RANGEKV_NODE_ID": "7",
           "RANGEKV_NODE_META": f"127.0.0.1:{meta_port}", "RANGEKV_LOG_LEVEL": "debug"}
    proc = spawn("node", [*CLI, "node"], tmp_path / "node.log", env=env)
    try:
        wait_until(lambda: _connects(port), 30, f"node listening on {port}")
        # DEBUG (from the environment, over the file's INFO): failed heartbeats are logged
        wait_until(lambda: "DEBUG node-7" in proc.log(), 30, "a DEBUG line")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0, proc.log()
    finally:
        proc.stop()
    log = proc.log()
    assert f"node 7 listening on 127.0.0.1:{port}" in log, log
    assert (tmp_path / "n7").is_dir()
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+ INFO node-7 rangekv\.", log, re.MULTILINE), log


def test_a_typo_in_the_file_stops_the_process_with_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "rangekv.toml"
    path.write_text('[node]\nid = 1\nlisten = "127.0.0.1:1"\ndata_dir = "d"\nmeta = "m:1"\n'
                    "compact_entrys = 5\n")
    proc = spawn("node", [*CLI, "node", "--config", str(path)], tmp_path / "node.log")
    assert proc.popen.wait(timeout=60) == 2
    assert "unknown key 'compact_entrys' in [node]" in proc.log(), proc.log()
    assert not (tmp_path / "d").exists()
