"""Several replication groups with real processes (etcd, two metas, 8 nodes, 2 rms, HAProxy).

* ``LocalCluster(groups=2)`` (what ``rangekv up --groups 2`` starts): the meta forms two groups
  of three from the spares and leaves two spares; new tables go to the group with the fewest
  ranges, so four tables land two on each group, and every key operation and listing works on
  each of them.
* Groups fail independently: ``kill -9`` of group 2's leader under a write load on a table of
  each group. The group-1 writers see no error at all while group 2 changes leader; group 2's
  writes succeed again under its new leader; every acknowledged write of both reads back.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rangekv.cluster.local import LocalCluster, nodes_for, running_cluster
from rangekv.testing.load import Writers, check_all_acked, cluster_info, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READY_TIMEOUT_S = 90.0
FAILOVER_WAIT_S = 20.0  # generous: a failover normally takes about a second
TABLES = ["t1", "t2", "t3", "t4"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("groups") / "data"
    with running_cluster(data, READY_TIMEOUT_S, nodes=nodes_for(2), groups=2) as c:
        for t in TABLES:
            r = httpx.put(f"{c.endpoint}/v1/tables/{t}", timeout=30, trust_env=False)
            assert r.status_code == 201, r.text
        yield c


def group_of(info: dict[str, Any], table: str) -> int:
    (group,) = {r["group"] for r in info["ranges"] if r["table"] == table}
    return int(group)


def test_two_groups_of_three_and_two_spares_with_tables_spread(cluster: LocalCluster) -> None:
    c = cluster
    with c.logs_on_failure(lines=40):
        info = cluster_info(c.endpoint)
        groups = {g["id"]: sorted(m["id"] for m in g["members"]) for g in info["groups"]}
        assert len(groups) == 2 and all(len(m) == 3 for m in groups.values()), groups
        in_groups = {m for ms in groups.values() for m in ms}
        spares = {n["id"] for n in info["nodes"] if n["state"] == "spare"}
        assert len(in_groups) == 6 and len(spares) == 2 and not in_groups & spares
        placed = {t: group_of(info, t) for t in TABLES}
        assert sorted(placed.values()) == sorted(list(groups) * 2), placed
        with httpx.Client(base_url=c.endpoint, timeout=15, trust_env=False) as http:
            for t in TABLES:
                for i in range(20):
                    r = http.put(f"/v1/tables/{t}/keys/k{i:02d}", content=f"{t}-{i}")
                    assert r.status_code == 200, r.text
                r = http.get(f"/v1/tables/{t}/keys/k07")
                assert r.status_code == 200 and r.content == f"{t}-7".encode()
                r = http.get(f"/v1/tables/{t}/keys", params={"limit": 8})
                body = r.json()
                keys = [item["key"] for item in body["items"]]
                assert keys == [f"k{i:02d}" for i in range(8)], body
                r = http.delete(f"/v1/tables/{t}/keys/k07")
                assert r.status_code == 200
                assert http.get(f"/v1/tables/{t}/keys/k07").status_code == 404


def test_groups_fail_independently(cluster: LocalCluster) -> None:
    c = cluster
    with c.logs_on_failure(lines=60):
        info = cluster_info(c.endpoint)
        placed = {t: group_of(info, t) for t in TABLES}
        t1 = next(t for t, g in placed.items() if g == 1)
        t2 = next(t for t, g in placed.items() if g == 2)
        g2 = next(g for g in info["groups"] if g["id"] == 2)
        leader, epoch = g2["leader"], g2["epoch"]

        def new_leader() -> bool:
            g = next(g for g in cluster_info(c.endpoint)["groups"] if g["id"] == 2)
            return g["epoch"] > epoch and g["leader"] not in (None, leader)

        with Writers(c.endpoint, t1, 2, tag="g1", timeout_s=15) as w1, \
                Writers(c.endpoint, t2, 2, tag="g2", timeout_s=15,
                        pause_after_error_s=0.02) as w2:
            wait_for(lambda: w1.count() >= 30 and w2.count() >= 30, 30, "30 puts on each group")
            c.kill(f"node-{leader}")
            killed_at = time.monotonic()
            wait_for(new_leader, FAILOVER_WAIT_S, "a new leader of group 2")
            wait_for(lambda: w2.acked_since(killed_at) >= 30, FAILOVER_WAIT_S,
                     "30 puts on group 2 acknowledged after the kill")
            wait_for(lambda: w1.acked_since(killed_at) >= 30, FAILOVER_WAIT_S,
                     "30 puts on group 1 acknowledged after the kill")
        assert w1.errors == {}, f"group 1 writes failed while group 2 failed over: {w1.errors}"
        check_all_acked(c.endpoint, t1, w1.acked)
        check_all_acked(c.endpoint, t2, w2.acked)
        c.start()  # the killed node comes back as a follower
        c.wait_ready(READY_TIMEOUT_S)
        check_all_acked(c.endpoint, t2, w2.acked)


def test_split_by_hand_keeps_every_key_and_the_order(cluster: LocalCluster) -> None:
    """``rangekv split t --at KEY``: the range is cut in two on its group; every key stays
    readable and writable on both sides, and a listing walks both ranges in key order with
    one cursor. Splitting again at the same key changes nothing."""
    from rangekv.client import Client

    c = cluster
    with c.logs_on_failure(lines=40), Client(c.endpoint, timeout_s=15) as db:
        db.create_table("split_me")
        keys = [f"k{i:03d}" for i in range(200)]
        for k in keys:
            db.put("split_me", k, f"v-{k}")
        before = db.ranges("split_me")
        assert len(before) == 1 and before[0]["start"] == "" and before[0]["end"] is None
        group = before[0]["group"]
        after = db.split("split_me", "k100")
        assert [(r["start"], r["end"], r["group"]) for r in after] == [
            ("", "k100", group), ("k100", None, group)]
        assert all(r["version"] == before[0]["version"] + 1 for r in after)
        assert db.split("split_me", "k100") == after  # idempotent
        assert db.ranges("split_me") == after
        for k in ("k000", "k099", "k100", "k199"):
            item = db.get("split_me", k)
            assert item is not None and item.value == f"v-{k}".encode()
        db.put("split_me", "k0995", "lower")
        db.put("split_me", "zzz", "upper")
        listed: list[str] = []
        after_key = None
        while True:  # pages of 7: the cursor crosses the range boundary mid-page
            page = db.list("split_me", limit=7, after=after_key)
            listed += [it.key.decode() for it in page.items]
            if page.next is None:
                break
            after_key = page.next
        assert listed == sorted([*keys, "k0995", "zzz"])
        info = cluster_info(c.endpoint)
        mine = [r for r in info["ranges"] if r["table"] == "split_me"]
        assert [(r["start"], r["end"]) for r in mine] == [("", "k100"), ("k100", None)]


def test_move_by_hand_under_writes_loses_nothing(cluster: LocalCluster) -> None:
    """``rangekv move TABLE KEY --to GROUP`` while writers keep putting keys into the moving
    range and a client deletes and conditionally updates keys written before the move: no
    write fails, the writers pause only for the handover (measured), every acknowledged key
    reads back from the new group, deletes and conditional puts made during the copy hold, and
    a listing returns every key in order across both ranges."""
    from concurrent.futures import ThreadPoolExecutor

    from rangekv.client import Client

    c = cluster
    with c.logs_on_failure(lines=60), Client(c.endpoint, timeout_s=15) as db:
        db.create_table("move_me")
        keys = [f"k{i:04d}" for i in range(2000)]
        pad = "x" * 4000  # about 4 MB in the range that moves: a copy of several pages
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: db.put("move_me", k, f"v-{k}{pad}"), keys))
        (first,) = db.ranges("move_me")
        src = first["group"]
        dst = next(g["id"] for g in cluster_info(c.endpoint)["groups"] if g["id"] != src)
        db.split("move_me", "k1000")
        with Writers(c.endpoint, "move_me", 4, tag="w", timeout_s=15) as w:
            wait_for(lambda: w.count() >= 50, 30, "50 puts before the move")
            changed: list[int] = []

            def change_old_keys() -> None:
                # during the copy: delete old keys, and update others only if unchanged
                with Client(c.endpoint, timeout_s=15) as db2:
                    for i in range(1000, 2000, 10):
                        assert db2.delete("move_me", f"k{i:04d}") is True
                        old = db2.get("move_me", f"k{i + 1:04d}")
                        assert old is not None and old.value == f"v-k{i + 1:04d}{pad}".encode()
                        db2.put("move_me", f"k{i + 1:04d}", "updated", if_seq=old.seq)
                        assert db2.get("move_me", f"k{i:04d}") is None
                        changed.append(i)

            began = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                changing = pool.submit(change_old_keys)
                result = db.move("move_me", "k1500", dst)
                moved = time.monotonic()
                changing.result()
            print(f"{len(changed)} keys deleted and updated; the move "
                  f"answered after {(moved - began) * 1000:.0f} ms")
            wait_for(lambda: all(r["state"] == "active" and "moving" not in r
                                 for r in db.ranges("move_me")), 60, "the move done")
            ended = time.monotonic()
            wait_for(lambda: w.acked_since(ended) >= 50, 30, "50 puts after the move")
        assert w.errors == {}, f"writes failed during the move: {w.errors}"
        done = sorted(x.done for x in w.writes if x.status == 200)
        gaps = [b - a for a, b in itertools.pairwise(done) if a >= began - 1]
        pause_ms = max(gaps) * 1000
        print(f"move: done={result['done']} in {(ended - began) * 1000:.0f} ms; longest gap "
              f"between acknowledged writes {pause_ms:.0f} ms")
        ranges = db.ranges("move_me")
        assert [(r["start"], r["end"], r["group"]) for r in ranges] == [
            ("", "k1000", src), ("k1000", None, dst)]
        check_all_acked(c.endpoint, "move_me", w.acked)
        expected = {k: f"v-{k}{pad}" for k in keys}
        for i in changed:
            del expected[f"k{i:04d}"]
            expected[f"k{i + 1:04d}"] = "updated"
        for k, (v, _) in w.acked.items():
            expected[k] = v
        listed: dict[str, str] = {}
        after_key = None
        while True:
            page = db.list("move_me", limit=500, after=after_key)
            for it in page.items:
                listed[it.key.decode()] = it.value.decode()
            if page.next is None:
                break
            after_key = page.next
        assert list(listed) == sorted(listed)
        assert listed.keys() == expected.keys()
        assert listed == expected
        assert pause_ms < 5000


def test_cli_split_moves_the_upper_part_to_another_group(cluster: LocalCluster) -> None:
    """``rangekv split t --at KEY`` on a table of a few thousand keys: the upper part moves to
    the other group; every key stays readable; a listing returns all keys in order."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from rangekv.client import Client

    c = cluster
    with c.logs_on_failure(lines=40), Client(c.endpoint, timeout_s=15) as db:
        db.create_table("cli_split")
        keys = [f"key{i:05d}" for i in range(3000)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: db.put("cli_split", k, f"v-{k}"), keys))
        (only,) = db.ranges("cli_split")
        out = subprocess.run(
            [sys.executable, "-m", "rangekv.cli.main", "--endpoint", c.endpoint, "split", "cli_split",
             "--at", "key02100"], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        print(out.stdout)
        ranges = db.ranges("cli_split")
        assert [(r["start"], r["end"]) for r in ranges] == [("", "key02100"),
                                                             ("key02100", None)]
        assert ranges[0]["group"] == only["group"] and ranges[1]["group"] != only["group"]
        assert f"{ranges[1]['group']:>5}" in out.stdout
        with ThreadPoolExecutor(8) as pool:
            values = list(pool.map(lambda k: db.get("cli_split", k), keys))
        assert [v.value.decode() if v else None for v in values] == [f"v-{k}" for k in keys]
        listed: list[str] = []
        after_key = None
        while True:
            page = db.list("cli_split", limit=1000, after=after_key)
            listed += [it.key.decode() for it in page.items]
            if page.next is None:
                break
            after_key = page.next
        assert listed == keys


def test_drop_table_reclaims_the_space_on_every_group(cluster: LocalCluster) -> None:
    """A table spread over both groups (about 30 MB, on disk on every member) is dropped: its
    ranges are gone from the map and every member's index shrinks back (RocksDB delete-range,
    then compaction of the span)."""
    import asyncio
    import os

    from rangekv import wire
    from rangekv.client import Client

    c = cluster

    def index_bytes() -> dict[str, int]:
        sizes = {}
        for node_dir in sorted(c.data_dir.glob("node-*")):
            files = (node_dir / "index").glob("*.sst")
            sizes[node_dir.name] = sum(f.stat().st_size for f in files)
        return sizes

    async def flush_all() -> None:
        info = cluster_info(c.endpoint)
        for g in info["groups"]:
            for m in g["members"]:
                conn = wire.Connection(m["address"])
                try:
                    await conn.request("flush", timeout_s=30)
                finally:
                    await conn.close()

    with c.logs_on_failure(lines=40), Client(c.endpoint, timeout_s=30) as db:
        db.create_table("big")
        for i in range(500):  # incompressible: RocksDB compresses what it stores
            db.put("big", f"b{i:04d}", os.urandom(60_000))
        db.split("big", "b0250", to="auto")
        assert len({r["group"] for r in db.ranges("big")}) == 2
        asyncio.run(flush_all())
        before = index_bytes()
        db.drop_table("big")
        assert not [r for r in cluster_info(c.endpoint)["ranges"] if r["table"] == "big"]

        def reclaimed() -> bool:
            asyncio.run(flush_all())
            now = index_bytes()
            return sum(now.values()) < sum(before.values()) / 20

        wait_for(reclaimed, 30, "95% of the dropped table's 90 MB (3 copies) reclaimed")
        print(f"index bytes before the drop {sum(before.values()):,}, after "
              f"{sum(index_bytes().values()):,}")
