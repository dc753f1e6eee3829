"""Exactly-once writes with real processes (etcd, two metas, two groups of three nodes and two
spares, two rms, HAProxy): a write of a client session (``client``, ``cseq``, ``floor``,
``retry``, sent to a group leader as an rm sends it) applies once, however it is retried.

* A put and a delete applied by the leader, the leader killed (``kill -9``) right after, the
  key written again by another writer, then both retried (``retry``) to the new leader: the
  put answers its first seq, the delete its first answer, and neither applies again (the
  re-created key stays). The sessions were in the replicated state, not the dead leader's
  memory. A retry of a client the group never saw is ``session_expired``.
* A put applied by a range's group, the range moved to the other group (the HTTP move API),
  the key overwritten there, then the put retried to the new group: its first seq, the
  overwrite stays. The move copied the source's sessions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rangekv import errors, sequencer
from rangekv.cluster.local import LocalCluster, nodes_for, running_cluster
from rangekv.testing.load import cluster_info, request, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READY_TIMEOUT_S = 90.0
FAILOVER_WAIT_S = 30.0  # generous: a failover normally takes about a second
MOVE_WAIT_S = 60.0
RM_ID = 4000  # the seqs below come from an "rm" of this id (no real rm has it)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("exactly_once") / "data"
    with running_cluster(data, READY_TIMEOUT_S, nodes=nodes_for(2), groups=2) as c:
        yield c


_counter = iter(range(1, 1 << 30))


def seq() -> bytes:
    """A fresh proposed seq, as an rm's sequencer gives one (every attempt gets its own)."""
    return sequencer.make(time.time_ns(), next(_counter), RM_ID)


def session(client: bytes, cseq: int, retry: bool = False) -> dict[str, Any]:
    return {"client": client, "cseq": cseq, "floor": 1, "retry": retry}


def create_table(c: LocalCluster, name: str) -> int:
    r = httpx.put(f"{c.endpoint}/v1/tables/{name}", timeout=30, trust_env=False)
    assert r.status_code == 201, r.text
    tables = httpx.get(f"{c.endpoint}/v1/tables", timeout=10, trust_env=False).json()["tables"]
    return int(next(t["id"] for t in tables if t["name"] == name))


def group_of(c: LocalCluster, table: str) -> dict[str, Any]:
    """The group holding ``table``'s one range, once it has a leader."""
    def find() -> dict[str, Any] | None:
        info = cluster_info(c.endpoint)
        (gid,) = {r["group"] for r in info["ranges"] if r["table"] == table}
        group = next(g for g in info["groups"] if g["id"] == gid)
        return group if group["leader"] is not None else None
    return wait_for(find, FAILOVER_WAIT_S, f"a leader of {table}'s group", (httpx.HTTPError,))


def seq_of(r: httpx.Response) -> str:
    """The seq (hex) an rm answered a put or a get with."""
    return r.headers.get("x-rangekv-seq") or r.headers.get("etag", "").strip('"')


def http_put(c: LocalCluster, table: str, key: str, value: str) -> str:
    """Put through the rms (another writer); returns the seq (hex), retrying until it is
    acknowledged."""
    def put() -> str | None:
        r = httpx.put(f"{c.endpoint}/v1/tables/{table}/keys/{key}", content=value, timeout=15,
                      trust_env=False)
        return seq_of(r) if r.status_code == 200 else None
    return wait_for(put, FAILOVER_WAIT_S, f"a put of {key}", (httpx.HTTPError,))


def http_get(c: LocalCluster, table: str, key: str) -> str | None:
    r = httpx.get(f"{c.endpoint}/v1/tables/{table}/keys/{key}", timeout=15, trust_env=False)
    assert r.status_code in (200, 404), r.text
    return r.text if r.status_code == 200 else None


def to_leader(c: LocalCluster, group: dict[str, Any], op: str, **fields: Any) -> dict[str, Any]:
    return request(c.node_addresses[group["leader"]], op, **fields)


def test_a_retry_after_the_leader_dies_applies_nothing_twice(cluster: LocalCluster) -> None:
    c = cluster
    client = os.urandom(16)
    with c.logs_on_failure(lines=60):
        tid = create_table(c, "once")
        http_put(c, "once", "d", "v0")
        g0 = group_of(c, "once")
        put = to_leader(c, g0, "put", table_id=tid, key=b"k", value=b"first", seq=seq(),
                        **session(client, 1))
        deleted = to_leader(c, g0, "delete", table_id=tid, key=b"d", seq=seq(),
                            **session(client, 2))
        assert deleted["deleted"] is True
        # the answers are "lost": the leader dies right after giving them
        c.kill(f"node-{g0['leader']}")

        def new_leader() -> dict[str, Any] | None:
            g = group_of(c, "once")
            return g if g["epoch"] > g0["epoch"] and g["leader"] != g0["leader"] else None

        g1 = wait_for(new_leader, FAILOVER_WAIT_S, "a new leader", (httpx.HTTPError,))
        # meanwhile another writer writes both keys again
        second = http_put(c, "once", "k", "second")
        http_put(c, "once", "d", "again")
        again = to_leader(c, g1, "put", table_id=tid, key=b"k", value=b"first", seq=seq(),
                          **session(client, 1, retry=True))
        assert again == put, (again, put)
        again = to_leader(c, g1, "delete", table_id=tid, key=b"d", seq=seq(),
                          **session(client, 2, retry=True))
        assert again == deleted, (again, deleted)
        assert http_get(c, "once", "k") == "second"
        assert http_get(c, "once", "d") == "again"  # not deleted a second time
        r = httpx.get(f"{c.endpoint}/v1/tables/once/keys/k", timeout=15, trust_env=False)
        assert seq_of(r) == second
        # a retry of a client this group never saw: its outcome cannot be known, nothing done
        with pytest.raises(errors.SessionExpired):
            to_leader(c, g1, "put", table_id=tid, key=b"k", value=b"lost", seq=seq(),
                      **session(os.urandom(16), 7, retry=True))
        assert http_get(c, "once", "k") == "second"
        c.start()  # the killed node comes back as a follower
        c.wait_ready(READY_TIMEOUT_S)


def test_a_retry_after_the_range_moved_finds_its_first_result(cluster: LocalCluster) -> None:
    c = cluster
    client = os.urandom(16)
    with c.logs_on_failure(lines=60):
        tid = create_table(c, "moving")
        src = group_of(c, "moving")
        first = to_leader(c, src, "put", table_id=tid, key=b"m", value=b"first", seq=seq(),
                          **session(client, 1))
        dst_id = next(g["id"] for g in cluster_info(c.endpoint)["groups"] if g["id"] != src["id"])
        r = httpx.post(f"{c.endpoint}/v1/tables/moving/move/m", params={"to": dst_id},
                       timeout=60, trust_env=False)
        assert r.status_code == 200, r.text

        def moved() -> bool:
            mine = httpx.get(f"{c.endpoint}/v1/tables/moving/ranges", timeout=10,
                             trust_env=False).json()["ranges"]
            return all(x["group"] == dst_id and x["state"] == "active" and "moving" not in x
                       for x in mine)

        wait_for(moved, MOVE_WAIT_S, "the move done", (httpx.HTTPError,))
        http_put(c, "moving", "m", "other")
        dst = group_of(c, "moving")
        assert dst["id"] == dst_id
        again = to_leader(c, dst, "put", table_id=tid, key=b"m", value=b"first", seq=seq(),
                          **session(client, 1, retry=True))
        assert again == first, (again, first)
        assert http_get(c, "moving", "m") == "other"
