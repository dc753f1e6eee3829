"""Durability under kill -9, with real processes (etcd, meta, nodes, rms, HAProxy).

* All three nodes of the group are killed with SIGKILL while 16 writers put unique keys; the
  cluster is started again and every put that was acknowledged reads back with its value and
  its seq. Writes that failed or timed out are allowed either way (unknown outcome).
* One follower is killed: writes go on, and the restarted follower catches up.
* The leader is killed: meta chooses a new one and writes go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rangekv import errors
from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.testing.load import Writers, check_all_acked, group_members, wait_for

pytestmark = pytest.mark.integration

WRITERS = 16
LOAD_BEFORE_KILL_S = 2.0
LOAD_AFTER_KILL_S = 1.5
READY_TIMEOUT_S = 90.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path / "data", READY_TIMEOUT_S) as c, c.logs_on_failure():
        yield c


def test_kill_whole_group_during_writes_loses_no_acknowledged_put(cluster: LocalCluster) -> None:
    endpoint = cluster.endpoint
    httpx.put(f"{endpoint}/v1/tables/crash", timeout=30).raise_for_status()
    _, members = group_members(endpoint)
    with Writers(endpoint, "crash", WRITERS) as writers:
        wait_for(lambda: writers.count() >= 200, 60, "200 acknowledged puts")
        time.sleep(LOAD_BEFORE_KILL_S)
        for m in members:
            cluster.kill(f"node-{m}")
        time.sleep(LOAD_AFTER_KILL_S)
    acked = dict(writers.acked)
    print(f"acknowledged {len(acked)} puts, {len(writers.errors)} failed or unknown")
    assert len(acked) >= 200
    cluster.start()
    cluster.wait_ready(READY_TIMEOUT_S)
    check_all_acked(endpoint, "crash", acked)
    # And the group takes writes again.
    r = httpx.put(f"{endpoint}/v1/tables/crash/keys/after-restart", content="ok", timeout=30)
    assert r.status_code == 200


def test_kill_follower_writes_go_on_and_it_catches_up(cluster: LocalCluster) -> None:
    endpoint = cluster.endpoint
    httpx.put(f"{endpoint}/v1/tables/f", timeout=30).raise_for_status()
    leader, members = group_members(endpoint)
    follower = next(m for m in members if m != leader)
    with Writers(endpoint, "f", 4) as writers:
        wait_for(lambda: writers.count() >= 50, 60, "50 acknowledged puts")
        cluster.kill(f"node-{follower}")
        at_kill = writers.count()
        wait_for(lambda: writers.count() >= at_kill + 200, 30,
                 "writes to go on with one follower down")
    assert group_members(endpoint)[0] == leader  # no election was needed
    check_all_acked(endpoint, "f", dict(writers.acked))
    cluster.start()  # the follower comes back and catches up from the leader

    def caught_up() -> bool:
        try:
            st = [_node_status(cluster, m) for m in members]
        except errors.Unavailable:
            return False  # the restarted node is not listening yet
        return len({s["applied_index"] for s in st}) == 1

    wait_for(caught_up, 60, "the restarted follower to catch up")


def test_kill_leader_new_leader_takes_over(cluster: LocalCluster) -> None:
    endpoint = cluster.endpoint
    httpx.put(f"{endpoint}/v1/tables/l", timeout=30).raise_for_status()
    leader, _ = group_members(endpoint)
    with Writers(endpoint, "l", 4) as writers:
        wait_for(lambda: writers.count() >= 50, 60, "50 acknowledged puts")
        cluster.kill(f"node-{leader}")
        at_kill = writers.count()
        wait_for(lambda: writers.count() >= at_kill + 100, 30, "writes under a new leader")
    new_leader, _ = group_members(endpoint)
    assert new_leader is not None and new_leader != leader
    check_all_acked(endpoint, "l", dict(writers.acked))


def _node_status(cluster: LocalCluster, node: int) -> dict:  # type: ignore[type-arg]
    """Ask a node for its status over the internal protocol."""
    import asyncio

    from rangekv import wire

    async def ask() -> dict:  # type: ignore[type-arg]
        conn = wire.Connection(cluster.node_addresses[node])
        try:
            return await conn.request("status", timeout_s=5)
        finally:
            await conn.close()

    return asyncio.run(ask())
