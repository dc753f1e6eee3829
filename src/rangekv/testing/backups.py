"""A small, well-formed backup directory made by hand, for tests of verification and restore.

It has the layout ``rangekv backup`` writes (see :mod:`rangekv.backup`) with a real checkpoint
manifest of a fake RocksDB checkpoint (two files), so every restore mode can run on it without
a cluster; the round trip through real processes is tests/integration/test_backup.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rangekv import model
from rangekv.backup import manifest as mf
from rangekv.backup.take import dump_kvs
from rangekv.metadata.etcd import KV
from rangekv.storage import snapshot


def make_backup(root: Path, *, complete: bool = True, nodes: bool = False,
                node_ids: Sequence[int] = (1, 2, 3, 4, 5)) -> Path:
    """A small but well-formed backup of one group (index 7, epoch 2) of the first three of
    ``node_ids``; with ``nodes``, node records too: the three members of group 1 (the
    several-machine addresses 10.0.0.N:8431), then a spare, then a flagged node."""
    index = root / "groups" / "1" / "index"
    index.mkdir(parents=True)
    (index / "000008.sst").write_bytes(os.urandom(5000))
    (index / "CURRENT").write_bytes(b"MANIFEST-000005\n")
    checkpoint = snapshot.describe(index, 7, 2)
    mf.write_json(root / "groups" / "1" / "group.json",
                  {"group": 1, "manifest": checkpoint.to_wire(), "ranges": []})
    (root / "meta").mkdir()
    ids = list(node_ids)
    assert len(ids) == 5 and len(set(ids)) == 5, ids
    group = model.Group(1, 2, ids[0], tuple(ids[:3]))
    kvs = [KV(model.group_key(1), model.dumps(group.to_json()), 1, 1, 1, 0),
           KV(model.table_key("t"), model.dumps(model.Table(1, "t")), 2, 2, 1, 0)]
    if nodes:
        for k, (i, state) in enumerate(zip(ids, ("member", "member", "member", "spare",
                                                  "flagged"), strict=True)):
            node = model.Node(i, f"10.0.0.{i % 250}:8431", state,
                              1 if state == "member" else None,
                              "gone" if state == "flagged" else "",
                              model.FLAG_REPLACED if state == "flagged" else "")
            kvs.append(KV(model.node_key(i), model.dumps(node), 3 + k, 3 + k, 1, 0))
    mf.write_json(root / mf.DUMP_PATH, dump_kvs(kvs, 9))
    mf.write_json(root / mf.CLUSTER_NAME, {"base_port": 14100, "nodes": 5, "rms": 2,
                                           "groups": 1})
    if complete:
        mf.write_manifest(root, mf.build(root, {"groups": [{"id": 1}], "revision": 9}))
    return root
