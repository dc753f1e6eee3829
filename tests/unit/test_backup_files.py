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

from rangekv import errors
from rangekv.backup import manifest as mf
from rangekv.backup.restore import RestoreRefused, check_target, restore, restored_metadata
from rangekv.backup.take import check_empty_target, dump_items, dump_kvs
from rangekv.metadata import model
from rangekv.metadata.etcd import KV
from rangekv.storage import snapshot


def make_backup(root: Path, *, complete: bool = True) -> Path:
    """A small but well-formed backup of one group (index 7, epoch 2)."""
    index = root / "groups" / "1" / "index"
    index.mkdir(parents=True)
    (index / "000008.sst").write_bytes(os.urandom(5000))
    (index / "CURRENT").write_bytes(b"MANIFEST-000005\n")
    checkpoint = snapshot.describe(index, 7, 2)
    mf.write_json(root / "groups" / "1" / "group.json",
                  {"group": 1, "manifest": checkpoint.to_wire(), "ranges": []})
    (root / "meta").mkdir()
    group = model.Group(1, 2, 1, (1, 2, 3))
    kvs = [KV(model.group_key(1), model.dumps(group.to_json()), 1, 1, 1, 0),
           KV(model.table_key("t"), model.dumps(model.Table(1, "t")), 2, 2, 1, 0)]
    mf.write_json(root / mf.DUMP_PATH, dump_kvs(kvs, 9))
    mf.write_json(root / mf.CLUSTER_NAME, {"base_port": 14100, "nodes": 5, "rms": 2,
                                           "groups": 1})
    if complete:
        mf.write_manifest(root, mf.build(root, {"groups": [{"id": 1}], "revision": 9}))
    return root


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
