"""``rangekv restore DIR --metadata --etcd URL`` against a real etcd.

The backup is the hand-made one of :mod:`rangekv.testing.backups` (group 1 of nodes 1-3, a
spare, a flagged node, the several-machine addresses); the restore runs through the CLI and
what etcd then holds is compared with what the one-machine restore would load
(``restored_metadata`` at the same addresses, plus one ``restored`` decision). A second run,
on an etcd that is no longer empty, is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from rangekv import model
from rangekv.backup.restore import restored_metadata
from rangekv.backup.take import dump_items
from rangekv.cli import Context
from rangekv.cli.main import run
from rangekv.metadata.etcd import EtcdClient
from rangekv.testing.backups import make_backup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    rc = run(argv, Context(stdout=out, stderr=err, stdin=io.BytesIO()))
    return rc, out.getvalue().decode(), err.getvalue()


async def etcd_items(endpoint: str) -> list[tuple[bytes, bytes]]:
    etcd = EtcdClient([endpoint])
    try:
        kvs, _ = await etcd.get_prefix(model.PREFIX)
        return sorted((kv.key, kv.value) for kv in kvs)
    finally:
        await etcd.close()


def test_restore_metadata_into_a_fresh_etcd(etcd_endpoint: str, tmp_path: Path) -> None:
    root = make_backup(tmp_path / "bk", nodes=True)
    rc, out, err = cli(["--json", "restore", str(root), "--metadata", "--etcd",
                        f"{etcd_endpoint},", "--address", "4=10.0.0.9:8432"])
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["nodes"] == {"1": "10.0.0.1:8431", "2": "10.0.0.2:8431",
                                "3": "10.0.0.3:8431", "4": "10.0.0.9:8432",
                                "5": "10.0.0.5:8431"}
    assert summary["groups"] == [{"id": 1, "applied_index": 7, "epoch": 2,
                                  "members": [1, 2, 3]}]

    held = asyncio.run(etcd_items(etcd_endpoint))
    items = dump_items(json.loads((root / "meta" / "dump.json").read_text()))
    want = restored_metadata(items, {1: 2}, {int(i): a for i, a in summary["nodes"].items()})
    decisions = [(k, v) for k, v in held if k.startswith(model.DECISIONS)]
    assert sorted(want + decisions) == held and len(held) == summary["metadata_keys"]
    (note,) = [model.Decision.load(v) for _, v in decisions]
    assert note.kind == "restored" and str(root) in note.reason
    group = model.Group.load(dict(held)[model.group_key(1)])
    assert (group.epoch, group.leader, group.members) == (2, None, (1, 2, 3))
    nodes = {i: model.Node.load(dict(held)[model.node_key(i)]) for i in range(1, 6)}
    assert [(n.address, n.state, n.group, n.flag) for n in nodes.values()] == [
        ("10.0.0.1:8431", "member", 1, ""), ("10.0.0.2:8431", "member", 1, ""),
        ("10.0.0.3:8431", "member", 1, ""), ("10.0.0.9:8432", "spare", None, ""),
        ("10.0.0.5:8431", "spare", None, "")]

    # etcd is no longer empty: refused, and it holds exactly what it held
    rc, out, err = cli(["restore", str(root), "--metadata", "--etcd", etcd_endpoint])
    assert rc == 1 and not out
    assert f"already holds {len(held)} rangekv keys" in err, err
    assert asyncio.run(etcd_items(etcd_endpoint)) == held

    # the human summary line
    async def wipe() -> None:
        etcd = EtcdClient([etcd_endpoint])
        try:
            await etcd.delete(model.PREFIX, prefix=True)
        finally:
            await etcd.close()

    asyncio.run(wipe())
    rc, out, err = cli(["restore", str(root), "--metadata", "--etcd", etcd_endpoint])
    assert rc == 0, err
    assert out.startswith(f"restored the metadata of {root} into etcd (revision ")
    assert "1 table(s), 1 group(s) (applied index: 1@7), 5 nodes" in out


def test_a_one_machine_restore_keeps_any_node_ids(tmp_path: Path) -> None:
    """Node ids with gaps and above the 29 places of the port layout (a cluster after
    replacements and removals, or one whose ids were chosen for several machines): the
    restored data dir has exactly those nodes, each with its own id, members with the group's
    checkpoint; ``rangekv up`` finds them again from cluster.json."""
    from rangekv.backup.restore import restore
    from rangekv.cluster.local import LocalCluster, find_free_base_port
    from rangekv.node.server import GROUP_FILE
    from rangekv.storage import hardstate

    ids = [11, 12, 13, 21, 101]
    root = make_backup(tmp_path / "bk", nodes=True, node_ids=ids)
    target = tmp_path / "d"
    summary = restore(root, target, base_port=find_free_base_port(5, 2))
    assert summary["nodes"] == 5 and summary["node_ids"] == ids
    assert sorted(p.name for p in target.glob("node-*")) == sorted(f"node-{i}" for i in ids)
    for i in ids:
        assert hardstate.load(target / f"node-{i}" / "node.id") == {"node_id": i}
        assert (target / f"node-{i}" / GROUP_FILE).exists() == (i in ids[:3])
    cluster = LocalCluster.open(target)
    assert list(cluster.node_ids) == ids
    assert [n for n in cluster.names if n.startswith("node-")] == [f"node-{i}" for i in ids]
