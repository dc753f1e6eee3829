"""A node's side of ``rangekv backup`` (``rangekv.node.backup``) on real replicas.

Three replicas with real WALs and RocksDB indexes in one event loop (messages delivered
in-process). Only the serving leader makes a backup checkpoint; it holds every write
acknowledged before the request; read out in chunks it verifies (crc32c of every chunk, the
digest) and opens to the leader's state; bad requests are refused; a handle is released by
``backup_end`` or when left unused, and its checkpoint directory goes with it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rangekv import errors, sequencer
from rangekv.node.backup import HANDLE_IDLE_S, BackupServer
from rangekv.replication import driver
from rangekv.replication.driver import Replica
from rangekv.replication.messages import Msg
from rangekv.storage import snapshot
from rangekv.storage.engine import open_rocks
from rangekv.storage.snapshot import Chunk, Manifest, Receiver
from rangekv.storage.wal import WAL


@pytest.fixture(autouse=True)
def no_process_exit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    stops: list[int] = []
    monkeypatch.setattr(driver, "_exit_process", stops.append)
    yield
    assert not stops, f"a replica stopped the process (status {stops})"


async def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def three_replicas(root: Path) -> dict[int, Replica]:
    replicas: dict[int, Replica] = {}

    def deliver(msg: Msg) -> None:
        target = replicas.get(msg.to)
        if target is not None:
            asyncio.get_running_loop().call_soon(target.step, msg)

    for i in (1, 2, 3):
        d = root / f"n{i}"
        d.mkdir(parents=True)
        wal = WAL.open(d / "wal")
        replicas[i] = Replica(i, wal, open_rocks(str(d / "index")), d / "hardstate", deliver)
        await replicas[i].start()
        replicas[i].configure([1, 2, 3])
    replicas[1].campaign(1)
    await wait_until(lambda: replicas[1].core.serving, "node 1 to lead")
    await replicas[1].propose({"op": "add_range", "t": 7, "start": b"", "end": None,
                               "s": sequencer.ZERO})
    return replicas


def test_a_backup_checkpoint_holds_every_acknowledged_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        replicas = await three_replicas(tmp_path / "group")
        leader = replicas[1]
        try:
            for start in range(0, 300, 20):
                await asyncio.gather(*[
                    leader.propose({"op": "put", "t": 7, "k": b"k%04d" % i,
                                    "v": os.urandom(64), "s": sequencer.make(i + 1, 0, 1),
                                    "c": None})
                    for i in range(start, start + 20)])
            acknowledged = leader.core.applied
            server = BackupServer()
            with pytest.raises(errors.NotLeader):
                await server.serve(replicas[2], "backup_begin", {}, 1)
            with pytest.raises(errors.Unavailable, match="no group"):
                await server.serve(leader, "backup_begin", {}, None)

            begin = await server.serve(leader, "backup_begin", {}, 1)
            manifest = Manifest.from_wire(begin["manifest"])
            assert manifest.index >= acknowledged and begin["group"] == 1
            assert begin["ranges"] == [[7, b"", None]]
            handle = begin["handle"]
            with pytest.raises(errors.InvalidArgument, match="offset"):
                await server.serve(leader, "backup_chunk",
                                   {"handle": handle, "file": 0, "offset": -1}, 1)
            with pytest.raises(errors.InvalidArgument, match="no backup checkpoint"):
                await server.serve(leader, "backup_chunk",
                                   {"handle": handle + 1, "file": 0, "offset": 0}, 1)
            (tmp_path / "copy").mkdir()
            receiver = Receiver(tmp_path / "copy", manifest)
            for position, (_, size, _) in enumerate(manifest.files):
                offset = 0
                while offset < size:
                    reply = await server.serve(leader, "backup_chunk", {
                        "handle": handle, "file": position, "offset": offset}, 1)
                    receiver.write(Chunk(position, offset, reply["data"], reply["crc"]))
                    offset += len(reply["data"])
            receiver.finish()  # every file and the digest verified
            copy = open_rocks(str(tmp_path / "copy" / snapshot.INCOMING_NAME))
            try:
                assert copy.applied_index == manifest.index
                assert copy.content_hash() == leader.engine.content_hash()
                assert copy.get(7, b"k0299") == leader.engine.get(7, b"k0299")
            finally:
                copy.close()

            outgoing = list(leader.data_dir.glob(snapshot.OUTGOING_PREFIX + "*"))
            assert outgoing, "the checkpoint is kept while its handle is open"
            assert await server.serve(leader, "backup_end", {"handle": handle}, 1) == {}
            assert not list(leader.data_dir.glob(snapshot.OUTGOING_PREFIX + "*"))

            # a handle left unused is released, and its checkpoint removed
            begin = await server.serve(leader, "backup_begin", {}, 1)
            assert list(leader.data_dir.glob(snapshot.OUTGOING_PREFIX + "*"))
            server.expire(asyncio.get_running_loop().time() + HANDLE_IDLE_S + 1)
            assert not list(leader.data_dir.glob(snapshot.OUTGOING_PREFIX + "*"))
            with pytest.raises(errors.InvalidArgument, match="no backup checkpoint"):
                await server.serve(leader, "backup_chunk",
                                   {"handle": begin["handle"], "file": 0, "offset": 0}, 1)
        finally:
            for replica in replicas.values():
                await replica.stop()
                replica.close_storage()

    asyncio.run(scenario())
