"""``rangekv restore DIR``: lay out a restored cluster from a backup, on one machine or on several.

Three modes, each verifying the whole backup first (nothing is written if a checksum fails):

* ``--data-dir D`` (:func:`restore`): a whole ``rangekv up`` data dir (below).
* ``--node ID --node-dir PATH`` (:func:`restore_node`): the data dir of one node of the
  several-machine layout (docs/operations.md), exactly as the one-machine restore lays out
  that node: a member of its group with the group's checkpoint, or a spare. Staged in
  ``PATH.restoring`` and renamed, like ``D``; run once per node, on its machine.
* ``--metadata --etcd URLS`` (:func:`restore_metadata`): the same edited metadata (and
  ``restored`` decision) the one-machine restore loads, into an etcd cluster the operator
  started fresh, with the backup's own node addresses (the machines are the same) or those
  given. Refused if that etcd holds any ``/rangekv/`` key.

A node dir and the metadata are built by the same functions in every mode
(:func:`lay_out_node`, :func:`restored_metadata`, :func:`restored_note`), so a cluster restored
on several machines is the one the one-machine restore would build, at other addresses.

Order of work for ``--data-dir D``:

1. verify the whole backup (``manifest.verify``: every file's size and sha256, the groups'
   checkpoint manifests); refuse ``D`` if it holds anything. Nothing is written before both
   pass.
2. build the cluster in ``D.restoring`` (beside ``D``), then rename it to ``D`` at the end: an
   interrupted restore leaves no half cluster under ``D`` (``D.restoring`` is refused by the
   next restore until removed).

   * one node dir for each node id the backup holds (its node records and its groups'
     members: after replacements and removals, say 1, 2, 4, 7; ``restored_node_ids``), each
     node keeping its id in a place of ``rangekv up``'s port layout (``LocalCluster.node_ids``).
     Every member of group G (in the metadata of the backup): ``node.id``, ``node.group`` = G,
     the group's checkpoint as ``index/`` (copied, fsynced), an empty ``wal/`` based at the
     checkpoint's (index, epoch) (``WAL.reset``, as a snapshot install does), and a hard
     state that promises that epoch. Every other node: ``node.id`` only (a spare).
   * etcd: started with ``rangekv up``'s own member name and URLs on ``D.restoring/etcd``, loaded
     from the logical dump with these edits: each group's epoch is
     ``max(recorded, checkpoint's)`` and it has no leader, no learners, no joint members (meta
     elects a leader at a higher epoch once a majority of the restored members heartbeat);
     each node's address follows the new base port; members are members of their group and
     every other node a spare, with no flag (its data dir is new); the active-meta key and
     backup keys are left out. Then etcd is stopped.
   * ``cluster.json`` with the backup's shape and the base port (``--base-port`` or the
     backup's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rangekv import errors, model, perms
from rangekv.backup import manifest as mf
from rangekv.backup.take import PREFIX_BACKUP, dump_items
from rangekv.cluster.local import METAS, NODES_MAX, ClusterError, LocalCluster
from rangekv.metadata.etcd import EtcdClient, Op
from rangekv.node.server import GROUP_FILE
from rangekv.storage import hardstate
from rangekv.storage.wal import WAL, fsync_dir

TXN_OPS_MAX = 100  # etcd refuses more than 128 ops in one txn
_COPY_BYTES = 4 * 1024 * 1024


class RestoreRefused(errors.RangeKVError):
    code = "restore_refused"
    status = 400


def check_target(data_dir: Path) -> Path:
    """Refuse a data dir that holds anything (a cluster, running or not); the staging dir."""
    if data_dir.exists():
        if not data_dir.is_dir():
            raise RestoreRefused(f"{data_dir} exists and is not a directory")
        if (data_dir / "cluster.json").exists() or (data_dir / "etcd").exists():
            running = LocalCluster.open(data_dir).running() if (
                data_dir / "cluster.json").exists() else []
            state = f"that is running ({', '.join(running)})" if running else "(stopped)"
            raise RestoreRefused(f"{data_dir} holds a cluster {state}: restore into a new "
                                 "data dir (or stop it with `rangekv down` and remove it)")
        if any(data_dir.iterdir()):
            raise RestoreRefused(f"{data_dir} is not empty: restore into a new or empty dir")
    staging = data_dir.with_name(data_dir.name + ".restoring")
    if staging.exists():
        raise RestoreRefused(f"{staging} is left from an interrupted restore: remove it first")
    return staging


def _copy_durably(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, perms.open_private(dst) as fout:
        while block := fin.read(_COPY_BYTES):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


def lay_out_member(node_dir: Path, node_id: int, group_id: int, checkpoint_dir: Path | None,
                   index: int, epoch: int) -> None:
    """One restored member's data dir (see the module docstring), every file durable."""
    perms.private_dir(node_dir)
    hardstate.save(node_dir / "node.id", {"node_id": node_id})
    hardstate.save(node_dir / GROUP_FILE, {"group": group_id})
    if checkpoint_dir is not None:
        target = perms.private_dir(node_dir / "index")
        for name in sorted(os.listdir(checkpoint_dir)):
            _copy_durably(checkpoint_dir / name, target / name)
        fsync_dir(str(target))
        wal = WAL.open(node_dir / "wal")
        try:
            wal.reset(index, epoch)
        finally:
            wal.close()
        # A promise of the checkpoint's epoch: the log's base is of that epoch, and meta's next
        # one for the group is above it (its record says at least this epoch).
        hardstate.save(node_dir / "hardstate", {"promised_epoch": epoch})
    fsync_dir(str(node_dir))


def restored_metadata(items: list[tuple[bytes, bytes]], epochs: dict[int, int],
                      addresses: dict[int, str]) -> list[tuple[bytes, bytes]]:
    """The backup's metadata as the restored cluster must find it (module docstring)."""
    view = model.ClusterView()
    for key, value in items:
        view.apply(key, value)
    members = {m: g.id for g in view.groups.values() for m in g.members}
    out = []
    for key, value in items:
        if key == model.META_ACTIVE or key.startswith(PREFIX_BACKUP):
            continue
        if key.startswith(model.GROUPS):
            group = model.Group.load(value)
            group = model.Group(group.id, max(group.epoch, epochs.get(group.id, 0)), None,
                                group.members)
            value = model.dumps(group.to_json())
        elif key.startswith(model.NODES):
            node = model.Node.load(value)
            if node.id not in addresses:
                raise RestoreRefused(f"node {node.id} of the backup has no place in the restored "
                                     f"cluster's {len(addresses)} nodes")
            gid = members.get(node.id)
            node = replace(node, address=addresses[node.id],
                           state=model.NODE_MEMBER if gid is not None else model.NODE_SPARE,
                           group=gid, reason="", flag="")
            value = model.dumps(node)
        out.append((key, value))
    return out


async def _load_etcd(endpoints: list[str], items: list[tuple[bytes, bytes]]) -> int:
    etcd = EtcdClient(endpoints)
    try:
        existing, _ = await etcd.get_prefix(model.PREFIX)
        if existing:
            raise RestoreRefused(f"the new etcd already holds {len(existing)} rangekv keys: "
                                 "restore into an etcd cluster started fresh (empty data "
                                 "dirs)")
        for i in range(0, len(items), TXN_OPS_MAX):
            await etcd.txn([], [Op.put(k, v) for k, v in items[i:i + TXN_OPS_MAX]])
        back, revision = await etcd.get_prefix(model.PREFIX)
        if sorted((kv.key, kv.value) for kv in back) != sorted(items):
            raise errors.Internal("etcd does not hold what the restore wrote")
        return revision
    finally:
        await etcd.close()


@dataclass
class Backup:
    """A verified backup, read: what every restore mode builds from."""

    root: Path
    manifest: dict[str, Any]
    shape: dict[str, Any]
    items: list[tuple[bytes, bytes]]  # the logical dump
    view: model.ClusterView  # of the dump
    checkpoints: dict[int, dict[str, Any]]  # group id -> mf.group_manifest(...)
    bytes_verified: int

    @property
    def epochs(self) -> dict[int, int]:
        return {g: c["checkpoint"].epoch for g, c in self.checkpoints.items()}

    def checkpoint_dir(self, group_id: int) -> Path:
        return self.root / mf.GROUPS_DIR / str(group_id) / mf.INDEX_DIR

    def groups_summary(self) -> list[dict[str, Any]]:
        return [{"id": g, "applied_index": c["checkpoint"].index,
                 "epoch": c["checkpoint"].epoch,
                 "members": list(self.view.groups[g].members) if g in self.view.groups else []}
                for g, c in sorted(self.checkpoints.items())]


def read_backup(root: Path, on_bytes: Callable[[int, int], None]) -> Backup:
    """Verify every file of the backup in ``root`` (``on_bytes`` follows), then read it."""
    manifest = mf.load_manifest(root)
    total = sum(size for _, size, _ in manifest["files"])
    done = 0

    def verified(n: int) -> None:
        nonlocal done
        done += n
        on_bytes(done, total)

    manifest = mf.verify(root, verified)
    shape = json.loads((root / mf.CLUSTER_NAME).read_bytes())
    dump = json.loads((root / mf.DUMP_PATH).read_bytes())
    items = dump_items(dump)
    view = model.ClusterView()
    for key, value in items:
        view.apply(key, value)
    checkpoints = {g["id"]: mf.group_manifest(root, g["id"]) for g in manifest["groups"]}
    missing = sorted({r.group for rs in view.ranges.values() for r in rs} - set(checkpoints))
    if missing:
        raise mf.BackupInvalid(f"the metadata gives ranges to group(s) {missing} but the backup "
                               "holds no checkpoint of them")
    return Backup(root, manifest, shape, items, view, checkpoints, total)


def restored_node_ids(backup: Backup) -> list[int]:
    """The node ids a restored one-machine cluster runs: every node the backup's metadata has
    a record of and every member of its groups, whatever the ids (gaps left by replaced and
    removed nodes, ids chosen for several machines). A backup without node records (made by
    hand, or before nodes registered) gets ``1..nodes`` of its shape, as ``rangekv up`` would."""
    view = backup.view
    ids = set(view.nodes) | {m for g in view.groups.values() for m in g.members}
    if not view.nodes:
        ids |= set(range(1, int(backup.shape.get("nodes") or 0) + 1))
    return sorted(ids)


def lay_out_node(backup: Backup, node_id: int, node_dir: Path) -> int:
    """Node ``node_id``'s restored data dir in the new dir ``node_dir``: a member of its group
    (in the backup's metadata) with the group's checkpoint, or else a spare (``node.id``
    only). The checkpoint bytes copied."""
    group = backup.view.group_of(node_id)
    if group is None or node_id not in group.members:
        perms.private_dir(node_dir)
        hardstate.save(node_dir / "node.id", {"node_id": node_id})
        fsync_dir(str(node_dir))
        return 0
    info = backup.checkpoints.get(group.id)
    if info is None:
        lay_out_member(node_dir, node_id, group.id, None, 0, 0)
        return 0
    ck = info["checkpoint"]
    lay_out_member(node_dir, node_id, group.id, backup.checkpoint_dir(group.id), ck.index,
                   ck.epoch)
    return int(ck.total_bytes)


def restored_note(backup: Backup, metadata: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The ``restored`` decision (key, value) to load with ``metadata``: shown by
    ``rangekv status`` with the controller's decisions, after every decision of the backup."""
    now_ns = max(time.time_ns(), *(int(k[len(model.DECISIONS):]) + 1 for k, _ in metadata
                                   if k.startswith(model.DECISIONS)), 0)
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                          time.gmtime(int(backup.manifest.get("finished_ns") or 0) / 1e9))
    note = model.Decision(now_ns, "restored", None,
                          f"restored from the backup {backup.root} taken at {taken} (metadata "
                          f"at revision {backup.manifest.get('revision')})",
                          {"groups": {str(g): c["checkpoint"].index
                                      for g, c in backup.checkpoints.items()}})
    return model.decision_key(note.at_ns), note.dumps()


def _staged_rename(staging: Path, target: Path) -> None:
    """Make the staged dir ``target``, durably (``target`` is absent or empty: checked)."""
    fsync_dir(str(staging))
    if target.exists():
        target.rmdir()
    os.rename(staging, target)
    fsync_dir(str(target.parent))


def restore(root: Path, data_dir: Path, *, base_port: int | None = None,
            say: Callable[[str], None] = lambda _: None,
            on_bytes: Callable[[int, int], None] = lambda _d, _t: None) -> dict[str, Any]:
    """Restore the backup in ``root`` into the new data dir ``data_dir``; a summary."""
    began = time.monotonic()
    root, data_dir = Path(root).absolute(), Path(data_dir).absolute()
    say("checking the target")
    staging = check_target(data_dir)
    say("verifying the backup")
    backup = read_backup(root, on_bytes)
    view, checkpoints = backup.view, backup.checkpoints
    port = base_port if base_port is not None else backup.shape.get("base_port")
    if not isinstance(port, int):
        raise RestoreRefused("the backup does not say which base port its cluster used: give "
                             "--base-port")
    node_ids = restored_node_ids(backup)
    if not 1 <= len(node_ids) <= NODES_MAX:
        raise RestoreRefused(f"the backup has {len(node_ids)} nodes; a cluster on one machine "
                             f"has 1 to {NODES_MAX} (restore it on several machines: "
                             "--metadata and --node, docs/operations.md)")
    nodes = len(node_ids)
    cluster = LocalCluster(staging, port, nodes, int(backup.shape.get("rms") or 2),
                           groups=int(backup.shape.get("groups") or 1), node_ids=node_ids)
    try:
        perms.private_dir(staging)  # the data dir to be: 0700, as `rangekv up` makes it
        say("laying out the nodes")
        copy_total = sum(c["checkpoint"].total_bytes * len(view.groups[g].members)
                         for g, c in checkpoints.items() if g in view.groups)
        copied = 0
        for node_id in cluster.node_ids:
            n = lay_out_node(backup, node_id, staging / f"node-{node_id}")
            if n:
                copied += n
                on_bytes(copied, max(copy_total, 1))
        metadata = restored_metadata(backup.items, backup.epochs, cluster.node_addresses)
        metadata.append(restored_note(backup, metadata))
        say("loading the metadata into a new etcd")
        cluster.start(skip=[n for n in cluster.names if n != "etcd"])
        try:
            revision = asyncio.run(_load_etcd([cluster.etcd_endpoint], metadata))
        finally:
            cluster.stop(["etcd"])
        _staged_rename(staging, data_dir)
    except BaseException as exc:
        # Nothing is left behind: not the staging dir, not the etcd started for it.
        with contextlib.suppress(ClusterError, OSError):
            cluster.stop(["etcd"])
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, ClusterError):
            raise RestoreRefused(f"cannot start etcd for the restore: {exc}") from None
        raise
    return {
        "data_dir": str(data_dir), "base_port": port, "nodes": nodes,
        "node_ids": list(cluster.node_ids),
        "metas": METAS, "groups": backup.groups_summary(),
        "tables": sorted(view.tables), "metadata_keys": len(metadata),
        "etcd_revision": revision, "backup_revision": backup.manifest.get("revision"),
        "bytes_verified": backup.bytes_verified, "seconds": round(time.monotonic() - began, 3),
    }


def check_node_target(node_dir: Path) -> Path:
    """Refuse a node dir that holds anything, or a staging dir left beside it; the staging
    dir."""
    if node_dir.exists():
        if not node_dir.is_dir():
            raise RestoreRefused(f"{node_dir} exists and is not a directory")
        if any(node_dir.iterdir()):
            raise RestoreRefused(f"{node_dir} is not empty: move the node's old data dir "
                                 "aside, or restore into a new or empty dir")
    staging = node_dir.with_name(node_dir.name + ".restoring")
    if staging.exists():
        raise RestoreRefused(f"{staging} is left from an interrupted restore: remove it first")
    return staging


def restore_node(root: Path, node_id: int, node_dir: Path, *,
                 say: Callable[[str], None] = lambda _: None,
                 on_bytes: Callable[[int, int], None] = lambda _d, _t: None) -> dict[str, Any]:
    """Lay out node ``node_id``'s data dir ``node_dir`` (new or empty) from the backup in
    ``root``, as :func:`restore` lays it out; a summary."""
    began = time.monotonic()
    root, node_dir = Path(root).absolute(), Path(node_dir).absolute()
    say("checking the target")
    staging = check_node_target(node_dir)
    say("verifying the backup")
    backup = read_backup(root, on_bytes)
    ids = set(backup.view.nodes) | {m for g in backup.view.groups.values() for m in g.members}
    if node_id not in ids:
        known = ", ".join(map(str, sorted(ids))) or "none"
        raise RestoreRefused(f"node {node_id} is not in the backup (its nodes: {known})")
    group = backup.view.group_of(node_id)
    member = group is not None and node_id in group.members
    try:
        say(f"laying out node {node_id}")
        copied = lay_out_node(backup, node_id, staging)
        on_bytes(copied, max(copied, 1))
        _staged_rename(staging, node_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ck = backup.checkpoints.get(group.id) if member and group is not None else None
    return {
        "node": node_id, "node_dir": str(node_dir),
        "state": model.NODE_MEMBER if member else model.NODE_SPARE,
        "group": group.id if member and group is not None else None,
        "applied_index": ck["checkpoint"].index if ck else None,
        "epoch": ck["checkpoint"].epoch if ck else None,
        "bytes_copied": copied, "backup_revision": backup.manifest.get("revision"),
        "bytes_verified": backup.bytes_verified, "seconds": round(time.monotonic() - began, 3),
    }


def parse_addresses(specs: list[str]) -> dict[int, str]:
    """``ID=HOST:PORT`` each (``--address``): node id -> address; clear refusals."""
    out: dict[int, str] = {}
    for spec in specs:
        ident, eq, address = spec.partition("=")
        host, colon, port = address.rpartition(":")
        if not (eq and ident.strip().isdigit() and int(ident) > 0 and colon and host
                and port.isdigit() and 1 <= int(port) <= 65535):
            raise RestoreRefused(f"--address {spec!r}: not ID=HOST:PORT (for example "
                                 "4=10.0.0.4:8431)")
        if int(ident) in out:
            raise RestoreRefused(f"--address: node {int(ident)} is given twice")
        out[int(ident)] = address
    return out


def restore_metadata(root: Path, endpoints: list[str], *, addresses: dict[int, str] | None = None,
                     say: Callable[[str], None] = lambda _: None,
                     on_bytes: Callable[[int, int], None] = lambda _d, _t: None
                     ) -> dict[str, Any]:
    """Load the backup's metadata, edited as :func:`restore` edits it, into the fresh etcd at
    ``endpoints``, each node at its backed-up address unless ``addresses`` moves it; a
    summary."""
    began = time.monotonic()
    root = Path(root).absolute()
    moved = dict(addresses or {})
    say("verifying the backup")
    backup = read_backup(root, on_bytes)
    recorded = backup.view.nodes
    unknown = sorted(set(moved) - set(recorded))
    if unknown:
        known = ", ".join(map(str, sorted(recorded))) or "none"
        raise RestoreRefused(f"--address names node(s) {unknown} that the backup does not have "
                             f"(its nodes: {known})")
    where = {i: n.address for i, n in recorded.items()} | moved
    taken = {}
    for node_id, address in sorted(where.items()):
        if address in taken and node_id in moved:
            raise RestoreRefused(f"--address {node_id}={address}: node {taken[address]} is "
                                 "at that address too")
        taken.setdefault(address, node_id)
    metadata = restored_metadata(backup.items, backup.epochs, where)
    metadata.append(restored_note(backup, metadata))
    say("loading the metadata into etcd")
    revision = asyncio.run(_load_etcd(endpoints, metadata))
    return {
        "etcd": endpoints, "nodes": {str(i): a for i, a in sorted(where.items())},
        "groups": backup.groups_summary(), "tables": sorted(backup.view.tables),
        "metadata_keys": len(metadata), "etcd_revision": revision,
        "backup_revision": backup.manifest.get("revision"),
        "bytes_verified": backup.bytes_verified, "seconds": round(time.monotonic() - began, 3),
    }
