"""Backup manifests and their verification, the restore's refusals and its metadata edits.

A backup directory is made here by hand (the layout ``rangekv backup`` writes, with a real
checkpoint manifest); restore is then refused for every kind of damage before it writes
anything (the real-process round trip is in tests/integration/test_backup.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rangekv import errors, model
from rangekv.backup import manifest as mf
from rangekv.backup.restore import (
    RestoreRefused,
    check_target,
    parse_addresses,
    read_backup,
    restore,
    restore_metadata,
    restore_node,
    restored_metadata,
    restored_node_ids,
)
from rangekv.backup.take import check_empty_target, dump_items, dump_kvs, shape_from_metadata
from rangekv.cluster.local import ClusterError, LocalCluster, node_port_offset
from rangekv.metadata.etcd import KV
from rangekv.node.server import GROUP_FILE
from rangekv.storage import hardstate
from rangekv.storage.wal import WAL
from rangekv.testing.backups import make_backup


def refused_without_writing(backup: Path, tmp_path: Path, match: str) -> None:
    target = tmp_path / "restored"
    with pytest.raises(errors.RangeKVError, match=match):
        restore(backup, target, base_port=14100)
    assert not target.exists()
    assert not (tmp_path / "restored.restoring").exists()


def test_a_complete_backup_verifies(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk")
    manifest = mf.verify(root)
    assert manifest["revision"] == 9
    assert [f[0] for f in manifest["files"]] == sorted(f[0] for f in manifest["files"])
    assert "groups/1/index/000008.sst" in {f[0] for f in manifest["files"]}


def test_a_corrupt_byte_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk")
    sst = root / "groups" / "1" / "index" / "000008.sst"
    data = bytearray(sst.read_bytes())
    data[1234] ^= 0x01
    sst.write_bytes(bytes(data))
    with pytest.raises(mf.BackupInvalid, match="000008.sst is corrupt"):
        mf.verify(root)
    refused_without_writing(root, tmp_path, "corrupt")


def test_a_backup_without_its_manifest_is_refused(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk", complete=False)
    with pytest.raises(mf.BackupInvalid, match="no backup.json: the backup is incomplete"):
        mf.verify(root)
    refused_without_writing(root, tmp_path, "incomplete")


@pytest.mark.parametrize("damage", ["missing", "extra", "truncated", "manifest"])
def test_other_damage_is_refused(tmp_path: Path, damage: str) -> None:
    root = make_backup(tmp_path / "bk")
    if damage == "missing":
        (root / "groups" / "1" / "index" / "CURRENT").unlink()
        match = "missing"
    elif damage == "extra":
        (root / "groups" / "1" / "index" / "stray").write_bytes(b"x")
        match = "not part of the backup"
    elif damage == "truncated":
        os.truncate(root / mf.DUMP_PATH, 10)
        match = "has 10 bytes"
    else:
        (root / mf.MANIFEST_NAME).write_text('{"format": 1, "files": "all"}')
        match = "files must be a list"
    with pytest.raises(mf.BackupInvalid, match=match):
        mf.verify(root)
    refused_without_writing(root, tmp_path, match)


def test_group_files_must_match_the_checkpoint_manifest(tmp_path: Path) -> None:
    """A file dropped from both the directory and backup.json still fails: the group's own
    checkpoint manifest names it."""
    root = make_backup(tmp_path / "bk")
    (root / "groups" / "1" / "index" / "CURRENT").unlink()
    mf.write_manifest(root, mf.build(root, {"groups": [{"id": 1}], "revision": 9}))
    with pytest.raises(mf.BackupInvalid, match="do not match"):
        mf.verify(root)


def test_restore_refuses_a_data_dir_that_holds_anything(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "d1"
    cluster_dir.mkdir()
    (cluster_dir / "etcd").mkdir()
    with pytest.raises(RestoreRefused, match="holds a cluster"):
        check_target(cluster_dir)
    other = tmp_path / "d2"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RestoreRefused, match="not empty"):
        check_target(other)
    (tmp_path / "d3.restoring").mkdir()
    with pytest.raises(RestoreRefused, match="interrupted restore"):
        check_target(tmp_path / "d3")
    assert check_target(tmp_path / "d4") == tmp_path / "d4.restoring"


def test_backup_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(errors.InvalidArgument, match="not empty"):
        check_empty_target(tmp_path)
    check_empty_target(tmp_path / "new")


def test_dump_round_trip() -> None:
    kvs = [KV(b"/rangekv/a", b'{"b":1,"a":[1,2]}', 1, 1, 1, 0),
           KV(b"/rangekv/bin", b"\xff\x00", 2, 2, 1, 0),
           KV(b"/rangekv/counters/table_id", b"17", 3, 3, 1, 0)]
    dump = json.loads(json.dumps(dump_kvs(kvs, 3)))
    assert dump_items(dump) == [(kv.key, kv.value) for kv in kvs]


def test_restored_metadata_makes_groups_and_nodes_fit_the_restored_nodes() -> None:
    group = model.Group(1, 5, 2, (1, 2, 4), (3,), (), 4)
    items = [
        (model.group_key(1), model.dumps(group.to_json())),
        (model.node_key(1), model.dumps(model.Node(1, "10.0.0.1:9", model.NODE_MEMBER, 1))),
        (model.node_key(3), model.dumps(model.Node(3, "10.0.0.3:9", model.NODE_JOINING, 1))),
        (model.node_key(5), model.dumps(model.Node(5, "10.0.0.5:9", model.NODE_FLAGGED, None,
                                                   "broken", model.FLAG_REPLACED))),
        (model.META_ACTIVE, b'{"id":1}'),
        (model.BACKUP_PAUSE, b'{"token":"x"}'),
        (model.table_key("t"), model.dumps(model.Table(1, "t"))),
    ]
    addresses = {i: f"127.0.0.1:{14030 + i}" for i in range(1, 6)}
    out = dict(restored_metadata(items, {1: 7}, addresses))
    assert model.META_ACTIVE not in out and model.BACKUP_PAUSE not in out
    restored = model.Group.load(out[model.group_key(1)])
    # the checkpoint's epoch (7) is above the record's (5): never back in epochs
    assert (restored.epoch, restored.leader, restored.members) == (7, None, (1, 2, 4))
    assert not restored.learners and not restored.joint and restored.replacing is None
    node1, node3, node5 = (model.Node.load(out[model.node_key(i)]) for i in (1, 3, 5))
    assert (node1.address, node1.state, node1.group) == ("127.0.0.1:14031", "member", 1)
    assert (node3.state, node3.group) == (model.NODE_SPARE, None)  # was a learner
    assert (node5.state, node5.flag, node5.reason) == (model.NODE_SPARE, "", "")
    assert out[model.table_key("t")] == items[-1][1]
    # a lower checkpoint epoch keeps the record's
    assert model.Group.load(dict(restored_metadata(items, {1: 3}, addresses))[
        model.group_key(1)]).epoch == 5


def test_the_cli_says_why_it_refuses(tmp_path: Path) -> None:
    import io

    from rangekv.cli import Context
    from rangekv.cli.main import run

    root = make_backup(tmp_path / "bk")
    (root / mf.DUMP_PATH).write_text("{}")
    out, err = io.BytesIO(), io.StringIO()
    rc = run(["restore", str(root), "--data-dir", str(tmp_path / "d")],
             Context(stdout=out, stderr=err, stdin=io.BytesIO()))
    assert rc == 1
    assert "error: backup_invalid: " in err.getvalue() and "dump.json" in err.getvalue()
    assert not (tmp_path / "d").exists()
    rc = run(["backup", str(root), "--etcd", "http://127.0.0.1:9"],
             Context(stdout=out, stderr=err, stdin=io.BytesIO()))
    assert rc == 1 and "is not empty" in err.getvalue()


# --- the several-machine modes: --node ID --node-dir PATH, --metadata --etcd URLS -------------


def test_restore_node_lays_out_a_member_with_the_group_checkpoint(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk", nodes=True)
    node_dir = tmp_path / "var" / "node-2"
    seen: list[tuple[int, int]] = []
    summary = restore_node(root, 2, node_dir, on_bytes=lambda d, t: seen.append((d, t)))
    assert (summary["state"], summary["group"], summary["applied_index"], summary["epoch"]) == (
        "member", 1, 7, 2)
    assert seen and seen[-1][0] == summary["bytes_copied"] > 5000
    assert hardstate.load(node_dir / "node.id") == {"node_id": 2}
    assert hardstate.load(node_dir / GROUP_FILE) == {"group": 1}
    assert hardstate.load(node_dir / "hardstate") == {"promised_epoch": 2}
    src = root / "groups" / "1" / "index"
    assert sorted(os.listdir(node_dir / "index")) == sorted(os.listdir(src))
    for name in os.listdir(src):
        assert (node_dir / "index" / name).read_bytes() == (src / name).read_bytes()
    wal = WAL.open(node_dir / "wal")
    try:  # an empty log based at the checkpoint, as a snapshot install leaves it
        assert (wal.base_index, wal.last_index, wal.epoch_at(7)) == (7, 7, 2)
    finally:
        wal.close()
    assert not (tmp_path / "var" / "node-2.restoring").exists()


@pytest.mark.parametrize("node_id", [4, 5])
def test_restore_node_lays_out_a_spare(tmp_path: Path, node_id: int) -> None:
    """Every node that is not a member of a group (a spare, a flagged node) starts as a new
    spare: its id and nothing else."""
    root = make_backup(tmp_path / "bk", nodes=True)
    node_dir = tmp_path / f"node-{node_id}"
    node_dir.mkdir()  # an empty dir is fine (systemd may have created it)
    summary = restore_node(root, node_id, node_dir)
    assert (summary["state"], summary["group"], summary["bytes_copied"]) == ("spare", None, 0)
    assert os.listdir(node_dir) == ["node.id"]
    assert hardstate.load(node_dir / "node.id") == {"node_id": node_id}


def test_restore_node_refusals_write_nothing(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk", nodes=True)
    busy = tmp_path / "node-1"
    busy.mkdir()
    (busy / "node.id").write_text("old")
    with pytest.raises(RestoreRefused, match="is not empty: move the node's old data dir"):
        restore_node(root, 1, busy)
    assert os.listdir(busy) == ["node.id"] and (busy / "node.id").read_text() == "old"
    with pytest.raises(RestoreRefused, match=r"node 9 is not in the backup \(its nodes: "
                                             r"1, 2, 3, 4, 5\)"):
        restore_node(root, 9, tmp_path / "node-9")
    (tmp_path / "node-3.restoring").mkdir()
    with pytest.raises(RestoreRefused, match="interrupted restore"):
        restore_node(root, 3, tmp_path / "node-3")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RestoreRefused, match="not a directory"):
        restore_node(root, 2, tmp_path / "a-file")
    sst = root / "groups" / "1" / "index" / "000008.sst"
    data = bytearray(sst.read_bytes())
    data[10] ^= 0x01
    sst.write_bytes(bytes(data))
    with pytest.raises(mf.BackupInvalid, match="corrupt"):
        restore_node(root, 2, tmp_path / "node-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "bk", "node-1",
                                                           "node-3.restoring"]


def test_parse_addresses() -> None:
    assert parse_addresses([]) == {}
    assert parse_addresses(["4=10.0.0.9:8432", "1=db-a.internal:8431"]) == {
        4: "10.0.0.9:8432", 1: "db-a.internal:8431"}
    for bad in ["4", "4=", "x=10.0.0.1:1", "0=h:1", "4=10.0.0.1", "4=:8431", "4=h:0",
                "4=h:65536", "4=h:port"]:
        with pytest.raises(RestoreRefused, match="not ID=HOST:PORT"):
            parse_addresses([bad])
    with pytest.raises(RestoreRefused, match="node 4 is given twice"):
        parse_addresses(["4=h:1", "4=h:2"])


def test_restore_metadata_refuses_bad_addresses_before_touching_etcd(tmp_path: Path) -> None:
    """Refused before any connection: nothing listens at port 9."""
    root = make_backup(tmp_path / "bk", nodes=True)
    nowhere = ["http://127.0.0.1:9"]
    with pytest.raises(RestoreRefused, match=r"names node\(s\) \[7\] that the backup does not "
                                             r"have \(its nodes: 1, 2, 3, 4, 5\)"):
        restore_metadata(root, nowhere, addresses={7: "10.0.0.7:8431"})
    with pytest.raises(RestoreRefused, match="4=10.0.0.1:8431: node 1 is at that address too"):
        restore_metadata(root, nowhere, addresses={4: "10.0.0.1:8431"})


def _cli(argv: list[str]) -> tuple[int, str, str]:
    import io

    from rangekv.cli import Context
    from rangekv.cli.main import run

    out, err = io.BytesIO(), io.StringIO()
    rc = run(argv, Context(stdout=out, stderr=err, stdin=io.BytesIO()))
    return rc, out.getvalue().decode(), err.getvalue()


@pytest.mark.parametrize(("args", "message"), [
    ([], "give one of --data-dir D"),
    (["--data-dir", "D", "--node", "1", "--node-dir", "P"], "not --data-dir and --node together"),
    (["--node", "1", "--metadata", "--etcd", "http://h:1"], "not --node and --metadata together"),
    (["--node", "1"], "--node ID needs --node-dir PATH"),
    (["--node", "0", "--node-dir", "P"], "--node must be a node id"),
    (["--node", "1", "--node-dir", "P", "--etcd", "http://h:1"], "--etcd do(es) not go with --node"),
    (["--node", "1", "--node-dir", "P", "--base-port", "14000"], "--base-port do(es) not go"),
    (["--metadata"], "--metadata needs --etcd URL"),
    (["--metadata", "--etcd", "http://h:1", "--node-dir", "P"], "--node-dir do(es) not go"),
    (["--data-dir", "D", "--address", "1=h:1"], "--address do(es) not go with --data-dir"),
    (["--metadata", "--etcd", "http://h:1", "--address", "1=h"], "not ID=HOST:PORT"),
])
def test_the_cli_refuses_mixed_or_incomplete_restore_modes(tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    root = make_backup(tmp_path / "bk", nodes=True)
    args = [str(tmp_path / a) if a in ("D", "P") else a for a in args]
    rc, out, err = _cli(["restore", str(root), *args])
    assert rc == 1 and message in err and not out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk"]


def test_the_cli_restores_a_node(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk", nodes=True)
    rc, out, err = _cli(["restore", str(root), "--node", "3", "--node-dir",
                         str(tmp_path / "node-3")])
    assert rc == 0, err
    assert out.startswith(f"restored node 3 from {root} into {tmp_path / 'node-3'}: a member "
                          "of group 1 at applied index 7 (epoch 2, ")
    rc, out, err = _cli(["--json", "restore", str(root), "--node", "4", "--node-dir",
                         str(tmp_path / "node-4")])
    assert rc == 0, err
    assert json.loads(out)["state"] == "spare"


# --- any node ids: a cluster after replacements and removals, ids chosen for several machines --


@pytest.mark.parametrize("ids", [(1, 2, 4, 5, 7), (11, 12, 13, 21, 22), (101, 102, 103, 104, 105)])
def test_a_restore_runs_exactly_the_node_ids_of_the_backup(tmp_path: Path,
                                                           ids: tuple[int, ...]) -> None:
    """Not 1..N by number: a gap (a replaced node removed) is not filled with a node that no
    longer exists, and ids above the 29 places of the port layout are kept, each in a place."""
    root = make_backup(tmp_path / "bk", nodes=True, node_ids=ids)
    backup = read_backup(root, lambda _d, _t: None)
    assert restored_node_ids(backup) == list(ids)
    cluster = LocalCluster(tmp_path / "d", 14100, len(ids), node_ids=restored_node_ids(backup))
    assert [n for n in cluster.names if n.startswith("node-")] == [f"node-{i}" for i in ids]
    assert list(cluster.node_addresses.values()) == [f"127.0.0.1:{14130 + k}"
                                                      for k in range(1, 6)]
    assert cluster.spec(f"node-{ids[3]}").argv[4:6] == ("--id", str(ids[3]))
    items = restored_metadata(backup.items, backup.epochs, cluster.node_addresses)
    nodes = {model.Node.load(v).id: model.Node.load(v) for k, v in items
             if k.startswith(model.NODES)}
    assert {i: n.address for i, n in nodes.items()} == cluster.node_addresses
    assert [i for i, n in nodes.items() if n.state == model.NODE_MEMBER] == list(ids[:3])


def test_a_backup_without_node_records_restores_the_nodes_of_its_shape(tmp_path: Path) -> None:
    backup = read_backup(make_backup(tmp_path / "bk"), lambda _d, _t: None)
    assert restored_node_ids(backup) == [1, 2, 3, 4, 5]  # cluster.json says 5 nodes


def test_restored_ids_survive_a_later_up(tmp_path: Path) -> None:
    """cluster.json keeps the ids, so `rangekv up` and `down` find the same processes; asking
    for more groups later adds new ids above them."""
    first = LocalCluster(tmp_path, 14100, 4, node_ids=[1, 2, 4, 7])
    first.data_dir.mkdir(exist_ok=True)
    first._save_settings()
    assert json.loads((tmp_path / "cluster.json").read_text())["node_ids"] == [1, 2, 4, 7]
    again = LocalCluster.open(tmp_path)
    assert again.node_ids == (1, 2, 4, 7) and again.node_addresses == first.node_addresses
    assert LocalCluster.open(tmp_path, groups=2).node_ids == (1, 2, 4, 7, 8, 9, 10, 11)
    plain = LocalCluster(tmp_path / "p", 14100, 5)
    plain.data_dir.mkdir()
    plain._save_settings()
    assert "node_ids" not in json.loads((tmp_path / "p" / "cluster.json").read_text())
    with pytest.raises(ClusterError, match="distinct"):
        LocalCluster(tmp_path, 14100, node_ids=[3, 3, 4])


@pytest.mark.parametrize("ids,place", [((1, 2, 3, 4, 5), "id"), ((1, 2, 4, 7), "rank"),
                                       ((11, 12, 13, 21), "rank")])
def test_the_shape_of_a_cluster_from_its_metadata(ids: tuple[int, ...], place: str) -> None:
    """``rangekv backup --etcd URL`` (no cluster.json): the ids and the base port, from the
    nodes' addresses in either layout of ``rangekv up``."""
    view = model.ClusterView()
    for k, i in enumerate(ids, start=1):
        port = 9000 + node_port_offset(i if place == "id" else k)
        view.nodes[i] = model.Node(i, f"127.0.0.1:{port}")
    shape = shape_from_metadata(view)
    assert shape["base_port"] == 9000 and shape["nodes"] == len(ids)
    assert shape.get("node_ids", list(range(1, len(ids) + 1))) == list(ids)
    view.nodes[ids[-1]] = model.Node(ids[-1], "10.0.0.9:8431")  # another machine's
    assert shape_from_metadata(view)["base_port"] == (9000 if ids[0] == 1 else None)
