"""A node's data belongs to one group (``node.group`` next to ``node.id``): a real ``Node`` on a
real data dir (WAL, hard state, RocksDB index), given meta's answers directly.

* a spare's empty data dir, or one older than ``node.group``, is adopted by the first group;
* told to take part in another group, the node discards that group's log, hard state and index
  and starts empty before it takes any append, and says so durably;
* told about its own group again, it keeps everything; removed from its group, it keeps its data;
* a discard a crash interrupted is finished on the next start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rangekv.node.server import GROUP_FILE, Node
from rangekv.storage import hardstate
from rangekv.storage.wal import WAL
from rangekv.testing.procs import free_port

NODE = 9


def seed_data(data_dir: Path, group: int | None, entries: int = 5) -> None:
    """A data dir as a member of ``group`` leaves it: log entries, a promise, the group id."""
    data_dir.mkdir(parents=True)
    hardstate.save(data_dir / "node.id", {"node_id": NODE})
    wal = WAL.open(data_dir / "wal")
    wal.append([(3, i, b"\x81\xa2op\xa4noop") for i in range(1, entries + 1)])
    wal.close()
    hardstate.save(data_dir / "hardstate", {"promised_epoch": 50, "promised_to": 2})
    if group is not None:
        hardstate.save(data_dir / GROUP_FILE, {"group": group})


def assignment(gid: int, *, learner: bool) -> dict[str, Any]:
    me = [{"id": NODE, "address": "127.0.0.1:9"}]
    others = [{"id": i, "address": f"127.0.0.1:{i}"} for i in (1, 2, 3)]
    return {"id": gid, "epoch": 4, "leader": 1, "members": others if learner else others[:2] + me,
            "learners": me if learner else [], "joint": []}


async def started(data_dir: Path) -> Node:
    node = Node(NODE, f"127.0.0.1:{free_port()}", data_dir, [f"127.0.0.1:{free_port()}"])
    await node.start()
    return node


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_another_groups_data_is_discarded_before_joining(tmp_path: Path) -> None:
    data = tmp_path / "node"
    seed_data(data, group=7)

    async def run() -> None:
        node = await started(data)
        try:
            assert node.replica is not None and node.replica.core.last_index == 5
            assert node.data_group == 7
            node._on_assignment(assignment(8, learner=True), None)
            assert node.replica is None  # no replica (so no append) until it is empty
            await until(lambda: node.replica is not None and not node._resetting)
            assert node.replica is not None
            core = node.replica.core
            assert (core.last_index, core.promised, core.commit) == (0, 0, 0)
            assert node.replica.engine.applied_index == 0
            assert hardstate.load(data / GROUP_FILE) == {"group": 8}
            assert hardstate.load(data / "hardstate") == {}
            assert not list(data.glob("discard-*"))
            # the next answer configures it as a learner of group 8
            node._on_assignment(assignment(8, learner=True), None)
            assert node.group == 8 and node.replica.core.learners == (NODE,)
        finally:
            await node.stop()

    asyncio.run(run())


def test_own_group_keeps_its_data_and_a_removed_member_too(tmp_path: Path) -> None:
    data = tmp_path / "node"
    seed_data(data, group=7)

    async def run() -> None:
        node = await started(data)
        try:
            replica = node.replica
            node._on_assignment(assignment(7, learner=False), None)
            assert node.replica is replica and node.group == 7
            assert replica is not None and replica.core.last_index == 5
            node._on_assignment(None, None)  # removed: idle, data kept
            assert node.replica is replica and replica.core.role == "idle"
            assert replica.core.last_index == 5 and node.data_group == 7
        finally:
            await node.stop()

    asyncio.run(run())


def test_data_without_a_group_is_adopted_by_the_first_group(tmp_path: Path) -> None:
    data = tmp_path / "node"
    seed_data(data, group=None)

    async def run() -> None:
        node = await started(data)
        try:
            replica = node.replica
            node._on_assignment(assignment(3, learner=False), None)
            assert node.replica is replica and replica is not None
            assert replica.core.last_index == 5 and replica.core.promised == 50
            assert hardstate.load(data / GROUP_FILE) == {"group": 3}
        finally:
            await node.stop()

    asyncio.run(run())


def test_an_interrupted_discard_is_finished_on_start(tmp_path: Path) -> None:
    data = tmp_path / "node"
    seed_data(data, group=7)
    leftover = data / "discard-1"
    leftover.mkdir()
    (data / "wal").rename(leftover / "wal")  # a crash after moving the log aside

    async def run() -> None:
        node = await started(data)
        try:
            assert not leftover.exists()
            assert node.replica is not None and node.replica.core.last_index == 0
            assert node.data_group == 7  # the new id was never made durable: discard again
        finally:
            await node.stop()

    asyncio.run(run())
