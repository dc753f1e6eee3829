"""The native client protocol on a real cluster (``rangekv up``'s processes, HAProxy's native
port): the Python clients by default, batches over two groups, the HTTP batch route, and writes
that go on, each applied once, while an rm is killed under them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rangekv import AsyncClient, Client, errors
from rangekv.cluster.local import LocalCluster, running_cluster

READY_TIMEOUT_S = 90.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("native"), READY_TIMEOUT_S, groups=2,
                         nodes=6) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_the_clients_speak_the_native_port_by_default_shape(cluster: LocalCluster) -> None:
    with cluster.logs_on_failure(lines=40), Client(cluster.native_endpoint) as db:
        assert db.native
        table = unique("Stocks")
        db.create_table(table)
        try:
            seq = db.put(table, "B", "100")
            assert db.get(table, "B").seq == seq  # type: ignore[union-attr]
            assert db.put(table, "B", "101", if_seq=seq) != seq
            with pytest.raises(errors.PreconditionFailed) as failed:
                db.put(table, "B", "102", if_seq=seq)
            assert failed.value.details["current_seq"] == db.get(table, "B").seq  # type: ignore[union-attr]
            assert db.exists(table, "B") and not db.exists(table, "Z")
            for k in "ACD":
                db.put(table, k, k)
            assert [i.key for i in db.scan(table, page_size=2)] == [b"A", b"B", b"C", b"D"]
            assert db.delete(table, "A") and not db.delete(table, "A")
        finally:
            db.drop_table(table)


def test_batches_across_two_groups_and_the_http_batch_route(cluster: LocalCluster) -> None:
    with cluster.logs_on_failure(lines=40), Client(cluster.native_endpoint) as db:
        table = unique("Batch")
        db.create_table(table)
        try:
            db.split(table, "m", to="auto")  # the upper half moves to the other group
            groups = {r["group"] for r in db.ranges(table)}
            assert len(groups) == 2, db.ranges(table)
            items = {f"{c}{i:04d}": f"v{i}" for c in "az" for i in range(500)}
            seqs = db.put_many(table, items)
            assert len(seqs) == 1000 and len(set(seqs)) == 1000
            got = db.get_many(table, [*items, "absent"])
            assert [i.value.decode() for i in got[:-1]] == list(items.values())
            assert got[-1] is None
            assert db.delete_many(table, ["a0000", "z0499", "absent"]) == [True, True, False]
            assert sum(1 for _ in db.scan(table)) == 998
            with pytest.raises(errors.BatchFailed) as failed:
                db.put_many(table, {"a0001": "x", "n": "y"}, if_absent=True)
            assert isinstance(failed.value.results[0], errors.PreconditionFailed)
            assert isinstance(failed.value.results[1], str)
            # the same over HTTP, for curl and other languages
            resp = httpx.post(f"{cluster.endpoint}/v1/tables/{table}/batch", json={"ops": [
                {"op": "put", "key": "h1", "value": "1"}, {"op": "get", "key": "h1"},
                {"op": "get", "key": "nope"}, {"op": "delete", "key": "a0002"},
                {"op": "put", "key": "a0003", "value": "x", "if_absent": True}]}, timeout=30)
            assert resp.status_code == 200, resp.text
            r = resp.json()["results"]
            assert len(r[0]["seq"]) == 32 and r[1] == {"found": True, "value": "1",
                                                       "seq": r[0]["seq"]}
            assert r[2] == {"found": False} and r[3]["deleted"] is True
            assert r[4]["error"]["code"] == "precondition_failed"
        finally:
            db.drop_table(table)


def test_cas_chains_go_on_through_an_rm_kill_each_step_applied_once(
        cluster: LocalCluster) -> None:
    """Tasks advance counters by conditional puts (each If-Match the last seq) through the
    native port while rm-1 is SIGKILLed. Writes caught on the dying rm are resent as the same
    session writes: none fails (a resent conditional put applied twice would answer 412
    against itself), and every counter ends at the number of steps taken."""
    async def main() -> None:
        table = unique("Cas")
        steps = 40
        async with AsyncClient(cluster.native_endpoint, timeout_s=20) as db:
            await db.create_table(table)
            try:
                async def chain(n: int) -> None:
                    key = f"c{n}"
                    seq = await db.put(table, key, "0", if_absent=True)
                    for i in range(1, steps + 1):
                        seq = await db.put(table, key, str(i), if_seq=seq)
                        if n == 0 and i == steps // 4:
                            assert cluster.kill("rm-1") is True

                await asyncio.gather(*(chain(n) for n in range(16)))
                for n in range(16):
                    item = await db.get(table, f"c{n}")
                    assert item is not None and item.value == str(steps).encode()
            finally:
                cluster.start()
                await asyncio.to_thread(cluster.wait_ready, READY_TIMEOUT_S)
                await db.drop_table(table)

    with cluster.logs_on_failure(lines=60):
        asyncio.run(main())


def test_an_unreachable_native_endpoint_fails_fast_and_typed(tmp_path: Path) -> None:
    with Client("rangekv://127.0.0.1:9", timeout_s=1, retries=1) as db:
        with pytest.raises(errors.Unavailable):
            db.get("T", "k")
