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
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv import errors, sequencer
from rangekv.node.backup import HANDLE_IDLE_S, BackupServer
from rangekv.replication import driver
from rangekv.storage import snapshot
from rangekv.storage.engine import open_rocks
from rangekv.storage.snapshot import Chunk, Manifest, Receiver
from rangekv.testing.replicas import LoopbackGroup


@pytest.fixture(autouse=True)
def no_process_exit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    stops: list[int] = []
    monkeypatch.setattr(driver, "_exit_process", stops.append)
    yield
    assert not stops, f"a replica stopped the process (status {stops})"


def test_a_backup_checkpoint_holds_every_acknowledged_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = LoopbackGroup(tmp_path / "group")
        leader = await g.serve_table()
        replicas = g.replicas
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
            await g.close_all()

    asyncio.run(scenario())
