"""``rangekv restore DIR --data-dir D``: lay out a ``rangekv up`` data dir from a backup.

Order of work:

1. verify the whole backup (``manifest.verify``: every file's size and sha256, the groups'
   checkpoint manifests); refuse ``D`` if it holds anything. Nothing is written before both
   pass.
2. build the cluster in ``D.restoring`` (beside ``D``), then rename it to ``D`` at the end: an
   interrupted restore leaves no half cluster under ``D`` (``D.restoring`` is refused by the
   next restore until removed).

   * every member of group G (in the metadata of the backup): ``node.id``, ``node.group`` = G,
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from rangekv import errors
from rangekv.backup import manifest as mf
from rangekv.backup.take import PREFIX_BACKUP, dump_items
from rangekv.cluster.local import METAS, NODES_MAX, ClusterError, LocalCluster
from rangekv.metadata import model
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
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(_COPY_BYTES):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


def lay_out_member(node_dir: Path, node_id: int, group_id: int, checkpoint_dir: Path | None,
                   index: int, epoch: int) -> None:
    """One restored member's data dir (see the module docstring), every file durable."""
    node_dir.mkdir(parents=True)
    hardstate.save(node_dir / "node.id", {"node_id": node_id})
    hardstate.save(node_dir / GROUP_FILE, {"group": group_id})
    if checkpoint_dir is not None:
        target = node_dir / "index"
        target.mkdir()
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


async def _load_etcd(endpoint: str, items: list[tuple[bytes, bytes]]) -> int:
    etcd = EtcdClient([endpoint])
    try:
        existing, _ = await etcd.get_prefix(model.PREFIX)
        if existing:
            raise RestoreRefused(f"the new etcd already holds {len(existing)} rangekv keys")
        for i in range(0, len(items), TXN_OPS_MAX):
            await etcd.txn([], [Op.put(k, v) for k, v in items[i:i + TXN_OPS_MAX]])
        back, revision = await etcd.get_prefix(model.PREFIX)
        if sorted((kv.key, kv.value) for kv in back) != sorted(items):
            raise errors.Internal("etcd does not hold what the restore wrote")
        return revision
    finally:
        await etcd.close()


def restore(root: Path, data_dir: Path, *, base_port: int | None = None,
            say: Callable[[str], None] = lambda _: None,
            on_bytes: Callable[[int, int], None] = lambda _d, _t: None) -> dict[str, Any]:
    """Restore the backup in ``root`` into the new data dir ``data_dir``; a summary."""
    began = time.monotonic()
    root, data_dir = Path(root).absolute(), Path(data_dir).absolute()
    say("checking the target")
    staging = check_target(data_dir)
    say("verifying the backup")
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
    port = base_port if base_port is not None else shape.get("base_port")
    if not isinstance(port, int):
        raise RestoreRefused("the backup does not say which base port its cluster used: give "
                             "--base-port")
    nodes = max([int(shape.get("nodes") or 0), *view.nodes])
    if not 1 <= nodes <= NODES_MAX:
        raise RestoreRefused(f"the backup has {nodes} nodes; a local cluster has at most "
                             f"{NODES_MAX}")
    checkpoints = {g["id"]: mf.group_manifest(root, g["id"]) for g in manifest["groups"]}
    missing = sorted({r.group for rs in view.ranges.values() for r in rs} - set(checkpoints))
    if missing:
        raise mf.BackupInvalid(f"the metadata gives ranges to group(s) {missing} but the backup "
                               "holds no checkpoint of them")
    cluster = LocalCluster(staging, port, nodes, int(shape.get("rms") or 2),
                           groups=int(shape.get("groups") or 1))
    try:
        staging.mkdir(parents=True)
        say("laying out the nodes")
        copy_total = sum(c["checkpoint"].total_bytes * len(view.groups[g].members)
                         for g, c in checkpoints.items() if g in view.groups)
        copied = 0
        for node_id in range(1, nodes + 1):
            group = view.group_of(node_id)
            node_dir = staging / f"node-{node_id}"
            if group is None or node_id not in group.members:
                node_dir.mkdir()
                hardstate.save(node_dir / "node.id", {"node_id": node_id})
                continue
            info = checkpoints.get(group.id)
            if info is None:
                lay_out_member(node_dir, node_id, group.id, None, 0, 0)
                continue
            ck = info["checkpoint"]
            lay_out_member(node_dir, node_id, group.id,
                           root / mf.GROUPS_DIR / str(group.id) / mf.INDEX_DIR, ck.index,
                           ck.epoch)
            copied += ck.total_bytes
            on_bytes(copied, max(copy_total, 1))
        epochs = {g: c["checkpoint"].epoch for g, c in checkpoints.items()}
        metadata = restored_metadata(items, epochs, cluster.node_addresses)
        # shown by `rangekv status` with the controller's decisions
        now_ns = max(time.time_ns(), *(int(k[len(model.DECISIONS):]) + 1 for k, _ in metadata
                                       if k.startswith(model.DECISIONS)), 0)
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                              time.gmtime(int(manifest.get("finished_ns") or 0) / 1e9))
        note = model.Decision(now_ns, "restored", None,
                              f"restored from the backup {root} taken at {taken} (metadata at "
                              f"revision {manifest.get('revision')})",
                              {"groups": {str(g): c["checkpoint"].index
                                          for g, c in checkpoints.items()}})
        metadata.append((model.decision_key(note.at_ns), note.dumps()))
        say("loading the metadata into a new etcd")
        cluster.start(skip=[n for n in cluster.names if n != "etcd"])
        try:
            revision = asyncio.run(_load_etcd(cluster.etcd_endpoint, metadata))
        finally:
            cluster.stop(["etcd"])
        fsync_dir(str(staging))
        if data_dir.exists():
            data_dir.rmdir()  # (empty: checked above)
        os.rename(staging, data_dir)
        fsync_dir(str(data_dir.parent))
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
        "metas": METAS, "groups": [{"id": g, "applied_index": c["checkpoint"].index,
                                    "epoch": c["checkpoint"].epoch,
                                    "members": list(view.groups[g].members)
                                    if g in view.groups else []}
                                   for g, c in sorted(checkpoints.items())],
        "tables": sorted(view.tables), "metadata_keys": len(metadata),
        "etcd_revision": revision, "backup_revision": manifest.get("revision"),
        "bytes_verified": total, "seconds": round(time.monotonic() - began, 3),
    }
