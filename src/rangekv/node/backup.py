"""A node's side of ``rangekv backup``: checkpoints of its group's state machine, read out in
chunks by the backup process (see :mod:`rangekv.backup` for the whole design).

Ops (internal protocol):

* ``backup_begin`` (leader only): a linearizable barrier, then a checkpoint (the snapshot
  code's: RocksDB hard links and copies, a :class:`~rangekv.storage.snapshot.Manifest` with
  sizes, crc32c and a sha256 digest) at the applied index or later. So the checkpoint holds
  every write acknowledged before the request reached the node. Answers a ``handle``, the
  manifest, the group and the ranges the state machine holds.
* ``backup_chunk`` {handle, file, offset}: at most ``CHUNK_BYTES_MAX`` bytes of one file with
  their crc32c (the caller checks each chunk and the digest as a snapshot follower does).
* ``backup_end`` {handle}: release the checkpoint.

Invariants: a checkpoint is removed only when its last user releases it (shared with snapshot
sends, see ``Replica._release_checkpoint``); a handle unused for ``HANDLE_IDLE_S`` is released
(a backup process that died never pins a checkpoint, and so disk space, for long); at most
``HANDLES_MAX`` handles at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

import crc32c

from rangekv import errors
from rangekv.replication.driver import Replica
from rangekv.storage.snapshot import CHUNK_BYTES_MAX

log = logging.getLogger("rangekv.node.backup")

HANDLE_IDLE_S = 60.0
HANDLES_MAX = 8


@dataclass
class _Handle:
    replica: Replica
    outgoing: Any  # driver._Outgoing
    used_s: float


class BackupServer:
    """The backup handles of one node."""

    def __init__(self) -> None:
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count(1)

    def expire(self, now_s: float) -> None:
        """Release the handles idle for ``HANDLE_IDLE_S`` (called on every op and every
        second by the node)."""
        for handle_id, handle in list(self._handles.items()):
            if now_s - handle.used_s > HANDLE_IDLE_S:
                log.warning("backup checkpoint %d unused for %.0f s: released", handle_id,
                            HANDLE_IDLE_S)
                self._release(handle_id)

    def release_all(self) -> None:
        for handle_id in list(self._handles):
            self._release(handle_id)

    def _release(self, handle_id: int) -> None:
        handle = self._handles.pop(handle_id, None)
        if handle is not None:
            handle.replica.release_backup(handle.outgoing)

    async def serve(self, replica: Replica, op: str, body: dict[str, Any],
                    group: int | None) -> dict[str, Any]:
        now_s = asyncio.get_running_loop().time()
        self.expire(now_s)
        if op == "backup_begin":
            if group is None:
                raise errors.Unavailable("this node is in no group")
            if len(self._handles) >= HANDLES_MAX:
                raise errors.Unavailable(f"{HANDLES_MAX} backup checkpoints are open here "
                                         "already; retry once one ends")
            outgoing = await replica.backup_checkpoint()
            handle_id = next(self._ids)
            self._handles[handle_id] = _Handle(replica, outgoing, now_s)
            log.info("backup checkpoint %d of group %d at index %d (%d files, %d bytes)",
                     handle_id, group, outgoing.manifest.index, len(outgoing.manifest.files),
                     outgoing.manifest.total_bytes)
            return {"handle": handle_id, "group": group, "manifest": outgoing.manifest.to_wire(),
                    "ranges": [[t, s, e] for t, s, e in replica.engine.ranges()]}
        handle_id = body.get("handle")
        handle = self._handles.get(handle_id) if isinstance(handle_id, int) else None
        if op == "backup_end":
            if handle is not None:
                self._release(handle_id)
            return {}
        if handle is None:
            raise errors.InvalidArgument(f"no backup checkpoint {handle_id!r} here (released "
                                         f"after {HANDLE_IDLE_S:g} s unused?)", field="handle")
        if op != "backup_chunk":
            raise errors.InvalidArgument(f"unknown op {op!r}")
        handle.used_s = now_s
        files = handle.outgoing.manifest.files
        position, offset = body.get("file"), body.get("offset")
        if not (isinstance(position, int) and 0 <= position < len(files)):
            raise errors.InvalidArgument(f"file must be in 0..{len(files) - 1}", field="file")
        name, size, _ = files[position]
        if not (isinstance(offset, int) and 0 <= offset < size):
            raise errors.InvalidArgument(f"offset must be in 0..{size - 1}", field="offset")
        path = str(handle.outgoing.directory / name)
        data = await asyncio.to_thread(_pread, path, min(CHUNK_BYTES_MAX, size - offset), offset)
        return {"data": data, "crc": crc32c.crc32c(data)}


def _pread(path: str, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise errors.Internal(f"{path} is shorter than its checkpoint manifest")
    return data
