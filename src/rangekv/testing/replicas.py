"""Replicas of one group in one event loop, for tests of the asyncio driver.

Each replica has a real WAL and RocksDB index under ``root/n<ID>``; messages are delivered in
process (``loop.call_soon``), so a test covers the driver (the shared Ready loop over its
persist task: group commit, apply, read-index) without sockets. Messages from or to a node in
``cut`` are dropped.

Tests that need more (snapshot RPCs, compaction, an observer, a planted bug's
``core_factory``) pass ``Replica`` options through :meth:`LoopbackGroup.open`, or override
:meth:`storage` or :meth:`open`, building on :meth:`new_replica` and :meth:`start`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rangekv import sequencer
from rangekv.replication.driver import Replica
from rangekv.replication.messages import Msg
from rangekv.storage.engine import open_rocks
from rangekv.storage.wal import WAL

WAIT_S = 30.0  # how long wait_until waits by default: a bound on a stuck test, not a pause


async def wait_until(condition: Callable[[], object], what: str,
                     timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` every 10 ms until it is true; fail with ``what`` after
    ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        await asyncio.sleep(0.01)


class LoopbackGroup:
    def __init__(self, root: Path, ids: tuple[int, ...] = (1, 2, 3)) -> None:
        self.root = root
        self.ids = ids
        self.members = list(ids)  # the configuration each replica starts with
        self.replicas: dict[int, Replica] = {}
        self.cut: set[int] = set()  # nodes whose messages are dropped

    def deliver(self, msg: Msg) -> None:
        if msg.frm in self.cut or msg.to in self.cut:
            return
        target = self.replicas.get(msg.to)
        if target is not None:
            asyncio.get_running_loop().call_soon(target.step, msg)

    def storage(self, node_id: int) -> tuple[Path, WAL]:
        """Node ``node_id``'s directory (made if new) and its WAL, opened and synced."""
        d = self.root / f"n{node_id}"
        d.mkdir(parents=True, exist_ok=True)
        wal = WAL.open(d / "wal")
        wal.sync()
        return d, wal

    def new_replica(self, node_id: int, **options: Any) -> Replica:
        """Node ``node_id``'s replica on its storage, not started."""
        d, wal = self.storage(node_id)
        return Replica(node_id, wal, open_rocks(str(d / "index")), d / "hardstate",
                       self.deliver, **options)

    async def start(self, replica: Replica) -> Replica:
        await replica.start()
        replica.configure(list(self.members))
        self.replicas[replica.node_id] = replica
        return replica

    async def open(self, node_id: int, **options: Any) -> Replica:
        return await self.start(self.new_replica(node_id, **options))

    async def close(self, node_id: int) -> None:
        replica = self.replicas.pop(node_id)
        await replica.stop()
        replica.close_storage()

    async def close_all(self) -> None:
        for node_id in list(self.replicas):
            await self.close(node_id)

    async def elect(self, node_id: int, epoch: int, timeout_s: float = WAIT_S) -> Replica:
        """Ask node ``node_id`` to lead ``epoch``; return it once it serves."""
        leader = self.replicas[node_id]
        leader.campaign(epoch)
        try:
            await wait_until(lambda: leader.core.serving, f"node {node_id} to lead", timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {leader.status()}") from None
        return leader

    async def serve_table(self, table: int = 7) -> Replica:
        """Open every replica, elect node 1 for epoch 1 and give table ``table`` the whole key
        space; the leader."""
        for node_id in self.ids:
            await self.open(node_id)
        leader = await self.elect(1, epoch=1)
        await leader.propose({"op": "add_range", "t": table, "start": b"", "end": None,
                              "s": sequencer.ZERO})
        return leader
