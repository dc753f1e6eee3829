"""The asyncio driver with real WALs and RocksDB indexes, three replicas in one event loop.

Messages are delivered in-process (``loop.call_soon``) so the test covers the driver's Ready
handling, group commit, apply and read-index without sockets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rangekv import errors, sequencer
from rangekv.replication.driver import Replica
from rangekv.replication.messages import Msg
from rangekv.storage.engine import open_rocks
from rangekv.storage.wal import WAL


class Group:
    def __init__(self, root: Path, ids: tuple[int, ...] = (1, 2, 3)) -> None:
        self.root = root
        self.ids = ids
        self.replicas: dict[int, Replica] = {}
        self.cut: set[int] = set()  # nodes whose messages are dropped

    def _deliver(self, msg: Msg) -> None:
        if msg.frm in self.cut or msg.to in self.cut:
            return
        target = self.replicas.get(msg.to)
        if target is not None:
            asyncio.get_running_loop().call_soon(target.step, msg)

    async def open(self, node_id: int) -> Replica:
        d = self.root / f"n{node_id}"
        d.mkdir(parents=True, exist_ok=True)
        wal = WAL.open(d / "wal")
        wal.sync()
        engine = open_rocks(str(d / "index"))
        replica = Replica(node_id, wal, engine, d / "hardstate", self._deliver)
        await replica.start()
        replica.configure(list(self.ids))
        self.replicas[node_id] = replica
        return replica

    async def close(self, node_id: int) -> None:
        replica = self.replicas.pop(node_id)
        await replica.stop()
        replica.engine.close()
        replica.wal.close()

    async def elect(self, node_id: int, epoch: int) -> Replica:
        leader = self.replicas[node_id]
        leader.campaign(epoch)
        for _ in range(200):
            if leader.core.serving:
                return leader
            await asyncio.sleep(0.01)
        raise AssertionError(f"node {node_id} did not become a serving leader: "
                             f"{leader.status()}")


def seq(n: int) -> bytes:
    return sequencer.make(n, 0, 9)


def test_replicated_writes_reads_and_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        for i in g.ids:
            await g.open(i)
        leader = await g.elect(1, epoch=1)
        await leader.propose({"op": "add_range", "t": 7, "start": b"", "end": None,
                              "s": sequencer.ZERO})
        seqs = []
        # Concurrent writers share fsyncs (group commit).
        results = await asyncio.gather(*[
            leader.propose({"op": "put", "t": 7, "k": f"k{i:03d}".encode(),
                            "v": f"v{i}".encode(), "s": seq(1000 + i), "c": None})
            for i in range(100)
        ])
        seqs = [r["seq"] for r in results]
        assert len(set(seqs)) == 100
        assert leader.stats["fsyncs"] < 100, leader.stats
        await leader.linearizable()
        assert leader.engine.get(7, b"k042") == (b"v42", seqs[42])
        # The leader makes seqs increase even if an rm clock lags behind.
        late = await leader.propose({"op": "put", "t": 7, "k": b"late", "v": b"x",
                                     "s": seq(1), "c": None})
        assert late["seq"] > max(seqs)
        # Conditional put decided at apply time.
        with pytest.raises(errors.PreconditionFailed):
            await leader.propose({"op": "put", "t": 7, "k": b"k001", "v": b"no",
                                  "s": seq(5), "c": seq(123)})
        # Followers applied the same entries.
        for _ in range(100):
            if all(r.engine.applied_index == leader.engine.applied_index
                   for r in g.replicas.values()):
                break
            await asyncio.sleep(0.01)
        hashes = {r.engine.content_hash() for r in g.replicas.values()}
        assert len(hashes) == 1
        # A follower refuses client work and names the leader.
        with pytest.raises(errors.NotLeader) as info:
            await g.replicas[2].propose({"op": "noop"})
        assert info.value.leader_hint == 1
        # Stop everything; start again; a new epoch leads with all the data.
        for i in list(g.replicas):
            await g.close(i)
        for i in g.ids:
            await g.open(i)
        leader = await g.elect(2, epoch=2)
        await leader.linearizable()
        assert leader.engine.get(7, b"k042") == (b"v42", seqs[42])
        again = await leader.propose({"op": "put", "t": 7, "k": b"after", "v": b"y",
                                      "s": seq(2), "c": None})
        assert again["seq"] > late["seq"]
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())


def test_minority_leader_cannot_write_or_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        for i in g.ids:
            await g.open(i)
        leader = await g.elect(1, epoch=1)
        await leader.propose({"op": "add_range", "t": 1, "start": b"", "end": None,
                              "s": sequencer.ZERO})
        g.cut = {1}
        with pytest.raises(errors.OutcomeUnknown):
            await leader.propose({"op": "put", "t": 1, "k": b"k", "v": b"v", "s": seq(1),
                                  "c": None})
        with pytest.raises((errors.Unavailable, errors.NotLeader)):
            await leader.linearizable()
        # The majority side elects epoch 2 and serves.
        new = await g.elect(2, epoch=2)
        await new.linearizable()
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())
