"""``rangekv backup DIR``: back up a live cluster (the design is in :mod:`rangekv.backup`).

Order of work (each step's failure ends the backup with an error and no ``backup.json``):

1. refuse a non-empty ``DIR``; create it;
2. pause range changes: ``/rangekv/backup/pause`` under a fresh lease (renewed every
   ``PAUSE_KEEPALIVE_S``), then wait for the active meta's ``/rangekv/backup/paused``;
3. read the metadata (revision R1); for every group holding ranges, ask its leader for a
   checkpoint (``backup_begin``: after a linearizable barrier) and copy it chunk by chunk,
   checking each chunk's crc32c and the whole checkpoint's digest (the snapshot ``Receiver``);
   a group whose leader changes or fails meanwhile is started again (``GROUP_ATTEMPTS_MAX``);
4. read the metadata again (R2): its tables, ranges and counters must be those of R1; write the
   logical dump at R2 and etcd's own snapshot (whose appended sha256 is checked);
5. end the pause (revoke the lease), then write ``backup.json`` last, atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rangekv import __version__, errors, model, perms, wire
from rangekv.backup import PAUSE_TIMEOUT_S_DEFAULT
from rangekv.backup import manifest as mf
from rangekv.metadata import backups as metadata_backups
from rangekv.metadata.backups import dump_items, dump_kvs  # noqa: F401  (named here too)
from rangekv.metadata.etcd import Compare, EtcdClient, Op
from rangekv.storage import snapshot
from rangekv.storage.snapshot import Chunk, Manifest, Receiver
from rangekv.storage.wal import fsync_dir

PAUSE_LEASE_TTL_S = 10  # a backup that died stops pausing the controller after this
PAUSE_KEEPALIVE_S = 2.0
GROUP_ATTEMPTS_MAX = 5
GROUP_RETRY_S = 0.5
GROUPS_AT_ONCE = 4
BEGIN_TIMEOUT_S = 600.0  # barrier, checkpoint, and the manifest's read of every byte of it
REQUEST_TIMEOUT_S = 30.0  # one chunk
_CHANGED_PREFIXES = (model.TABLES, model.RANGES, model.COUNTERS)


class BackupFailed(errors.RangeKVError):
    code = "backup_failed"
    status = 500


Report = Callable[[str, int, int], None]  # (what, done bytes, total bytes estimate)


def _fingerprint(kvs: list[Any]) -> dict[bytes, int]:
    return {kv.key: kv.mod_revision for kv in kvs if kv.key.startswith(_CHANGED_PREFIXES)}


def check_empty_target(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise errors.InvalidArgument(f"{directory} exists and is not a directory")
        if any(directory.iterdir()):
            raise errors.InvalidArgument(f"{directory} is not empty: a backup goes into a new "
                                         "or empty directory")


class _Pause:
    """The pause of range changes, held under a lease for the life of the backup."""

    def __init__(self, etcd: EtcdClient) -> None:
        self.etcd = etcd
        self.token = secrets.token_hex(8)
        self.lease = 0
        self.lost: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float, say: Callable[[str], None]) -> None:
        self.lease = await self.etcd.lease_grant(PAUSE_LEASE_TTL_S)
        self._task = asyncio.get_running_loop().create_task(self._keepalive())
        record = model.dumps({"token": self.token, "lease": self.lease,
                              "started_ns": time.time_ns(), "host": socket.gethostname(),
                              "pid": os.getpid()})
        # one backup at a time: the key is created only if absent
        created = await self.etcd.txn(
            [Compare.version(model.BACKUP_PAUSE, "=", 0)],
            [Op.put(model.BACKUP_PAUSE, record, lease=self.lease)],
            [Op.get(model.BACKUP_PAUSE)])
        if not created.succeeded:
            other = created.responses[0]
            held = other[0].value.decode(errors="replace")[:200] if other else "?"
            raise BackupFailed(f"another backup is running ({held}); try again once it ends")
        say("waiting for the meta to pause range changes")
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            answer = await self.etcd.get(model.BACKUP_PAUSED)
            if answer is not None and json.loads(answer.value).get("token") == self.token:
                return
            if time.monotonic() > deadline:
                raise BackupFailed(
                    f"the meta did not pause range changes within {timeout_s:g} s: is a meta "
                    "running (and of this version)? A range move that cannot finish also holds "
                    "it up: see `rangekv status`")
            await asyncio.sleep(0.1)

    def check(self) -> None:
        if self.lost is not None:
            raise BackupFailed(f"the backup's pause of range changes was lost: {self.lost}")

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(PAUSE_KEEPALIVE_S)
            try:
                await self.etcd.lease_keepalive(self.lease)
            except errors.RangeKVError as exc:
                # The meta may resume range changes now: the checkpoints taken so far may not
                # match the metadata any more (the final comparison would catch it; stop now).
                self.lost = exc.message
                return

    async def end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lease:
            with contextlib.suppress(errors.RangeKVError):
                await self.etcd.lease_revoke(self.lease)


class _Tally:
    """Bytes copied of bytes expected (the leaders tell the sizes as they answer)."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.done = self.total = 0
        self.report = report

    def add(self, done: int, total: int = 0) -> None:
        self.done += done
        self.total += total
        self.report(self.done, self.total)


async def _copy_group(root: Path, gid: int, etcd: EtcdClient, pause: _Pause,
                      tally: _Tally) -> dict[str, Any]:
    """Copy group ``gid``'s checkpoint from its leader into ``groups/G/``; its summary."""
    group_dir = root / mf.GROUPS_DIR / str(gid)
    perms.private_dir(root / mf.GROUPS_DIR)  # made here, not by mkdir -p: 0700 too
    perms.private_dir(group_dir)
    last = "no attempt"
    for attempt in range(1, GROUP_ATTEMPTS_MAX + 1):
        pause.check()
        if attempt > 1:
            await asyncio.sleep(GROUP_RETRY_S * attempt)
        record = await etcd.get(model.group_key(gid))
        if record is None:
            raise BackupFailed(f"group {gid} disappeared from the metadata during the backup")
        group = model.Group.load(record.value)
        if group.leader is None:
            last = f"group {gid} has no leader"
            continue
        node = await etcd.get(model.node_key(group.leader))
        if node is None:
            last = f"the leader of group {gid}, node {group.leader}, has no record"
            continue
        address = model.Node.load(node.value).address
        conn = wire.Connection(address)
        copied = expected = 0
        try:
            begin = await conn.request("backup_begin", timeout_s=BEGIN_TIMEOUT_S)
            if begin.get("group") != gid:
                raise BackupFailed(f"node {group.leader} answered for group "
                                   f"{begin.get('group')}, not {gid}")
            checkpoint = Manifest.from_wire(begin.get("manifest"))
            expected = checkpoint.total_bytes
            tally.add(0, expected)
            receiver = Receiver(group_dir, checkpoint)
            try:
                for position, (_, size, _) in enumerate(checkpoint.files):
                    offset = 0
                    while offset < size:
                        pause.check()
                        reply = await conn.request("backup_chunk", timeout_s=REQUEST_TIMEOUT_S,
                                                   handle=begin["handle"], file=position,
                                                   offset=offset)
                        data = reply.get("data")
                        if not isinstance(data, bytes) or not data:
                            raise errors.ProtocolError("backup_chunk answered no data")
                        await asyncio.to_thread(receiver.write,
                                                Chunk(position, offset, data, reply.get("crc")))
                        offset += len(data)
                        copied += len(data)
                        tally.add(len(data))
                await asyncio.to_thread(receiver.finish)
            except BaseException:
                receiver.abort()
                raise
            index_dir = group_dir / mf.INDEX_DIR
            os.rename(group_dir / snapshot.INCOMING_NAME, index_dir)
            fsync_dir(str(group_dir))
            with contextlib.suppress(errors.RangeKVError):
                await conn.request("backup_end", timeout_s=5.0, handle=begin["handle"])
            info = {
                "group": gid, "leader": group.leader, "address": address,
                "record": group.to_json(), "manifest": checkpoint.to_wire(),
                "ranges": [[t, s.hex(), None if e is None else e.hex()]
                           for t, s, e in begin.get("ranges") or []],
            }
            mf.write_json(group_dir / mf.GROUP_INFO_NAME, info)
            return {"id": gid, "applied_index": checkpoint.index, "epoch": checkpoint.epoch,
                    "bytes": checkpoint.total_bytes, "files": len(checkpoint.files),
                    "leader": group.leader, "attempts": attempt}
        except (errors.Unavailable, errors.OutcomeUnknown, errors.ProtocolError,
                snapshot.SnapshotInvalid, errors.InvalidArgument) as exc:
            last = f"node {group.leader} at {address}: {exc.code}: {exc.message}"
            tally.add(-copied, -expected)
        finally:
            await conn.close()
    raise BackupFailed(f"could not copy group {gid}'s checkpoint in {GROUP_ATTEMPTS_MAX} "
                       f"attempts (last: {last})")


async def etcd_snapshot(etcd: EtcdClient, path: Path) -> int:
    """etcd's own snapshot, streamed into ``path`` durably and checked against the sha256 etcd
    appends (``rangekv.metadata.backups.etcd_snapshot``); ``BackupFailed`` if it is not whole."""
    try:
        return await metadata_backups.etcd_snapshot(etcd, path)
    except metadata_backups.SnapshotFailed as exc:
        raise BackupFailed(exc.message) from None


async def take(root: Path, etcd_endpoints: list[str], **kwargs: Any) -> dict[str, Any]:
    """Back up the cluster whose etcd is at ``etcd_endpoints`` into the new or empty
    directory ``root`` (see :func:`_take`); a failed backup leaves ``root`` as it found it
    (so that the same command can be run again)."""
    check_empty_target(root)
    created = not root.exists()
    try:
        return await _take(root, etcd_endpoints, **kwargs)
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for entry in root.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


async def _take(root: Path, etcd_endpoints: list[str], *, cluster: dict[str, Any] | None,
               pause_timeout_s: float = PAUSE_TIMEOUT_S_DEFAULT,
               say: Callable[[str], None] = lambda _: None,
               on_bytes: Callable[[int, int], None] = lambda _d, _t: None) -> dict[str, Any]:
    """Back up the cluster whose etcd is at ``etcd_endpoints`` into the new directory
    ``root``; returns the manifest written. ``cluster`` is the shape (``cluster.json`` of a
    ``rangekv up`` data dir) if known, else derived from the metadata."""
    check_empty_target(root)
    perms.private_dir(root)  # 0700, every file 0600: it holds every key and value
    started_ns = time.time_ns()
    began = time.monotonic()
    etcd = EtcdClient(etcd_endpoints)
    pause = _Pause(etcd)
    try:
        say("pausing range changes")
        await pause.start(pause_timeout_s, say)
        pause_s = time.monotonic() - began
        kvs1, rev1 = await etcd.get_prefix(model.PREFIX)
        view = model.ClusterView()
        for kv in kvs1:
            view.apply(kv.key, kv.value)
        holding = sorted({rng.group for ranges in view.ranges.values() for rng in ranges})
        tally = _Tally(on_bytes)
        say(f"checkpointing {len(holding)} group(s)")
        sem = asyncio.Semaphore(GROUPS_AT_ONCE)

        async def one(gid: int) -> dict[str, Any]:
            async with sem:
                return await _copy_group(root, gid, etcd, pause, tally)

        groups = await asyncio.gather(*(one(g) for g in holding))
        kvs2, rev2 = await etcd.get_prefix(model.PREFIX)
        pause.check()
        if _fingerprint(kvs1) != _fingerprint(kvs2):
            raise BackupFailed("the tables or ranges changed during the backup although range "
                               "changes were paused (a meta of an older version?)")
        say("saving the metadata")
        perms.private_dir(root / "meta")
        kept = [kv for kv in kvs2 if not kv.key.startswith(PREFIX_BACKUP)]
        mf.write_json(root / mf.DUMP_PATH, dump_kvs(kept, rev2))
        etcd_bytes = await etcd_snapshot(etcd, root / mf.ETCD_SNAPSHOT_PATH)
        if cluster is None:
            cluster = shape_from_metadata(view)
        mf.write_json(root / mf.CLUSTER_NAME, cluster)
    finally:
        await pause.end()
        await etcd.close()
    say("writing the manifest")
    info = {
        "rangekv_version": __version__,
        "started_ns": started_ns,
        "finished_ns": time.time_ns(),
        "seconds": round(time.monotonic() - began, 3),
        "pause_wait_s": round(pause_s, 3),  # for the range changes in flight to finish
        "revision_paused": rev1,
        "revision": rev2,
        "cluster": cluster,
        "tables": sorted(t.name for t in view.tables.values()),
        "groups": groups,
        "etcd_snapshot_bytes": etcd_bytes,
    }
    manifest = await asyncio.to_thread(mf.build, root, info)
    mf.write_manifest(root, manifest)
    return manifest


PREFIX_BACKUP = model.PREFIX + b"backup/"


def shape_from_metadata(view: model.ClusterView) -> dict[str, Any]:
    """The cluster's shape when no ``cluster.json`` is at hand: its node ids and their count,
    groups by count, and the base port if every node's address fits ``rangekv up``'s port
    layout with one base (node ``i`` in place ``i``, or the ``k``-th id in place ``k``, as a
    restored cluster lays them out), else as node 1's port would say (a guess; restore takes
    ``--base-port``)."""
    from rangekv.cluster.local import NODES_MAX, node_port_offset

    ids = sorted(view.nodes)
    ports = {i: view.nodes[i].address.rpartition(":")[2] for i in ids}
    base_port = None
    for place in ({i: i for i in ids}, {i: k for k, i in enumerate(ids, start=1)}):
        bases = {int(ports[i]) - node_port_offset(place[i]) for i in ids
                 if ports[i].isdigit() and 1 <= place[i] <= NODES_MAX}
        if ids and len(bases) == 1 and all(ports[i].isdigit() and place[i] <= NODES_MAX
                                           for i in ids):
            base_port = bases.pop()
            break
    if base_port is None and 1 in ports and ports[1].isdigit():
        base_port = int(ports[1]) - node_port_offset(1)
    shape: dict[str, Any] = {"base_port": base_port, "nodes": len(ids) or 3, "rms": 2,
                             "groups": max(1, len(view.groups))}
    if ids and ids != list(range(1, len(ids) + 1)):
        shape["node_ids"] = ids
    return shape
