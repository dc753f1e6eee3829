"""``rangekv restore`` of a cluster whose node ids are no longer 1..N (issue 16, part 5).

A real cluster (etcd, two metas with a 2 s replacement grace, one group of three and two
spares, two rms, HAProxy) takes writes; a follower is killed for good and the lowest spare
replaces it; the replaced node's record is removed (``rangekv nodes remove``). The group is
now made of, say, nodes 1, 2 and 4, and the cluster's nodes are 1, 2, 4 and 5: a gap where
the restore used to lay out nodes 1..N by number (bringing back the removed node 3 as a new
spare, and refusing any id above 29).

``rangekv backup`` (the real CLI) then ``rangekv restore`` into a new data dir: the restored
cluster runs exactly the backup's node ids, each in a place of the port layout, its group has
the same members, and every acknowledged write reads back with its value and seq; it takes
writes. The backup and both data dirs are private to their owner (0700 dirs, 0600 files).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rangekv.backup import manifest as mf
from rangekv.cluster.local import LocalCluster, find_free_base_port
from rangekv.testing.load import Writers, check_all_acked, cluster_info
from rangekv.testing.load import wait_for_cluster as poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

READY_TIMEOUT_S = 90.0
TABLE = "ids"
GRACE_S = 2.0
SETTLE_S = 60.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rangekv.cli.main", *args], text=True,
                          capture_output=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)


def group_of(endpoint: str) -> dict[str, object]:
    groups = cluster_info(endpoint)["groups"]
    assert len(groups) == 1, groups
    return groups[0]  # type: ignore[no-any-return]


def members(endpoint: str) -> list[int]:
    return sorted(int(m["id"]) for m in group_of(endpoint)["members"])  # type: ignore[attr-defined]


def assert_private(root: Path) -> None:
    for directory, _, files in os.walk(root):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in files:
            assert stat.S_IMODE(os.stat(Path(directory, name)).st_mode) == 0o600, name


def test_restore_keeps_the_node_ids_of_a_cluster_after_a_replacement(tmp_path: Path) -> None:
    data, data2, backup = tmp_path / "data", tmp_path / "data2", tmp_path / "bk"
    cluster = LocalCluster(data, find_free_base_port(5, 2), nodes=5,
                           meta_args=("--replace-grace-ms", str(int(GRACE_S * 1000))))
    try:
        cluster.start()
        cluster.wait_ready(READY_TIMEOUT_S)
        with cluster.logs_on_failure(lines=40):
            done = cli("create-table", TABLE, "--endpoint", cluster.endpoint)
            assert done.returncode == 0, done.stderr
            group = poll(lambda: group_of(cluster.endpoint) if not group_of(
                cluster.endpoint)["joint"] else None, SETTLE_S, "a settled group")
            before = members(cluster.endpoint)
            victim = next(m for m in before if m != group["leader"])
            with Writers(cluster.endpoint, TABLE, 4, "a", timeout_s=15,
                         pause_after_error_s=0.02) as w:
                poll(lambda: w.count() >= 400, 60, "400 acknowledged puts")
                cluster.kill(f"node-{victim}")
                killed = time.monotonic()
                poll(lambda: victim not in members(cluster.endpoint)
                     and not group_of(cluster.endpoint)["joint"], SETTLE_S,
                     f"node {victim} to be replaced")
                print(f"node {victim} replaced in {time.monotonic() - killed:.1f} s")
                poll(lambda: w.acked_since(time.monotonic() - 1) >= 50, 30,
                     "writes after the replacement")
            acked = w.acked
            after = members(cluster.endpoint)
            assert victim not in after and len(after) == 3, (before, after)
            done = poll(lambda: (d := cli("nodes", "remove", str(victim), "--endpoint",
                                          cluster.endpoint)).returncode == 0 and d, 30,
                        f"node {victim}'s record to be removed")
            ids = sorted(n["id"] for n in cluster_info(cluster.endpoint)["nodes"])
            assert victim not in ids and ids != list(range(1, len(ids) + 1)), ids
            done = cli("backup", str(backup), "--data-dir", str(data))
            assert done.returncode == 0, done.stderr
            print(done.stdout.strip())
    finally:
        cluster.stop()
    mf.verify(backup)
    assert_private(backup)

    done = cli("--json", "restore", str(backup), "--data-dir", str(data2))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["node_ids"] == ids and summary["groups"][0]["members"] == after
    assert sorted(p.name for p in data2.glob("node-*")) == sorted(f"node-{i}" for i in ids)
    restored = LocalCluster.open(data2)
    assert list(restored.node_ids) == ids
    assert stat.S_IMODE(os.stat(data2).st_mode) == 0o700
    try:
        restored.start()
        restored.wait_ready(READY_TIMEOUT_S)
        with restored.logs_on_failure(lines=40):
            assert members(restored.endpoint) == after
            info = cluster_info(restored.endpoint)
            assert sorted(n["id"] for n in info["nodes"]) == ids
            assert {n["id"]: n["address"] for n in info["nodes"]} == restored.node_addresses
            check_all_acked(restored.endpoint, TABLE, acked)
            print(f"{len(acked)} acknowledged writes read back after the restore")
            done = cli("put", TABLE, "after-restore", "v", "--endpoint", restored.endpoint)
            assert done.returncode == 0, done.stderr
    finally:
        restored.stop()
    for d in [data2, *data2.glob("node-*"), data2 / "logs", data2 / "run"]:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
