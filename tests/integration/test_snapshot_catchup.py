"""Catching up by snapshot, with real processes and a low compaction threshold.

Nodes run with ``--compact-entries 200 --compact-retain 100``. A follower is killed (SIGKILL)
while thousands of puts commit, so the leader compacts its log far past the follower's last
entry; restarted, the follower cannot get those entries any more and must install a snapshot.
Then: its ``content_hash`` equals the leader's at the same applied index, every acknowledged
put reads back, no node would replay more than about retain + compact-entries entries on a
restart (``replay_entries``) nor keeps much more in its log, and a node killed (SIGKILL) under
load and restarted replays at most about that many (``replayed_on_start``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rangekv import errors, wire
from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.testing.load import Writers, check_all_acked, group_members, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

READY_TIMEOUT_S = 90.0
COMPACT_ENTRIES = 200
COMPACT_RETAIN = 100
# What a restart may replay: one compaction period (each one flushes the state machine), the
# retained entries, and what lands while a compaction runs (16 writers).
REPLAY_BOUND = COMPACT_RETAIN + COMPACT_ENTRIES + 100
# What a log may hold: the same, and on a leader up to one more retain window for a live peer
# a little behind (cheaper to send entries than a snapshot).
LOG_BOUND = 2 * COMPACT_RETAIN + COMPACT_ENTRIES + 100
TABLE = "snap"
WRITES = 3000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path / "data", READY_TIMEOUT_S, compact_entries=COMPACT_ENTRIES,
                         compact_retain=COMPACT_RETAIN) as c, c.logs_on_failure():
        yield c


def node_op(cluster: LocalCluster, node: int, op: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        conn = wire.Connection(cluster.node_addresses[node], connect_timeout_s=1.0)
        try:
            return await conn.request(op, timeout_s=5.0)
        finally:
            await conn.close()

    return asyncio.run(ask())


def status(cluster: LocalCluster, node: int) -> dict[str, Any] | None:
    """The node's status, or None while it does not answer (not started yet)."""
    try:
        return node_op(cluster, node, "status")
    except errors.RangeKVError:
        return None


def test_a_follower_far_behind_catches_up_by_snapshot(cluster: LocalCluster) -> None:
    endpoint = cluster.endpoint
    httpx.put(f"{endpoint}/v1/tables/{TABLE}", timeout=30, trust_env=False).raise_for_status()
    leader, members = group_members(endpoint)
    assert leader is not None
    follower = next(m for m in members if m != leader)
    other = next(m for m in members if m not in (leader, follower))
    with Writers(endpoint, TABLE, 16, tag="before") as writers:
        wait_for(lambda: writers.count() >= 100, 60, "100 acknowledged puts")
    before = status(cluster, follower)
    assert before is not None
    cluster.kill(f"node-{follower}")
    follower_last = before["last_index"]

    with Writers(endpoint, TABLE, 16, tag="during") as more:
        wait_for(lambda: more.count() >= WRITES, 180, f"{WRITES} acknowledged puts")
    acked = {**writers.acked, **more.acked}

    def leader_compacted_past() -> bool:
        st = status(cluster, leader)
        return st is not None and st["log_first_index"] > follower_last + 1

    wait_for(leader_compacted_past, 30, "the leader to compact past the killed follower")
    assert group_members(endpoint)[0] == leader  # (the test assumes no failover happened)

    cluster.start()  # the follower comes back; the entries it lacks are gone from every log

    def follower_caught_up() -> dict[str, Any] | None:
        st, lead = status(cluster, follower), status(cluster, leader)
        if st is None or lead is None:
            return None
        done = st["applied_index"] == lead["applied_index"] and not st["installing_snapshot"]
        return st if done else None

    st = wait_for(follower_caught_up, 120, "the restarted follower to catch up")
    assert st["snapshots_installed"] >= 1, st
    assert st["log_first_index"] > follower_last + 1, st
    leader_status = status(cluster, leader)
    assert leader_status is not None and leader_status["snapshots_sent"] >= 1
    print(f"follower {follower}: last index {follower_last} when killed; caught up at "
          f"{st['applied_index']} by snapshot, log now starts at {st['log_first_index']}")

    hashes = {m: node_op(cluster, m, "content_hash") for m in (leader, follower)}
    assert hashes[leader]["applied"] == hashes[follower]["applied"], hashes
    assert hashes[leader]["hash"] == hashes[follower]["hash"], hashes
    check_all_acked(endpoint, TABLE, acked)

    # Every log is short, and so is what a restart would replay.
    for m in members:
        s = status(cluster, m)
        assert s is not None
        entries = s["last_index"] - s["log_first_index"] + 1
        print(f"node {m}: log {s['log_first_index']}..{s['last_index']} ({entries} entries), "
              f"replay_entries {s['replay_entries']}")
        assert entries <= LOG_BOUND, (m, s)
        assert s["replay_entries"] <= REPLAY_BOUND, (m, s)

    # A node killed under load and restarted replays at most about that much.
    with Writers(endpoint, TABLE, 8, tag="after") as last:
        wait_for(lambda: last.count() >= 500, 60, "500 more acknowledged puts")
        cluster.kill(f"node-{other}")
    cluster.start()
    restarted = wait_for(lambda: status(cluster, other), 60, f"node {other} to restart")
    print(f"node {other} replayed {restarted['replayed_on_start']} entries on restart")
    assert restarted["replayed_on_start"] <= REPLAY_BOUND, restarted
    check_all_acked(endpoint, TABLE, last.acked)
