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
