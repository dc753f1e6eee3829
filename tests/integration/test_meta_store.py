"""The metadata store's two engines, held to the same tests: a real etcd (``EtcdClient``) and
etcd in memory (``MemoryEtcd``, for tests and the simulator). First the key-value semantics the
meta relies on (``rangekv.metadata.kv`` states them), then the typed compare-and-swap
operations of ``MetaStore`` over each, then random transactions run on both in lockstep, which
must answer alike.

One etcd member serves the whole module (each test wipes the keys it uses first); the
in-memory engine is fresh for each test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import errors, model
from rangekv.metadata.etcd import EtcdClient
from rangekv.metadata.kv import (
    Compare,
    EtcdError,
    KVClient,
    LeaseExpired,
    Op,
    WatchCompacted,
)
from rangekv.metadata.memory import MemoryEtcd, MemoryKV
from rangekv.metadata.store import MetaStore, decision_entry
from rangekv.model import Group, Node, Range, Table
from rangekv.testing.procs import free_port, start_etcd

pytestmark = pytest.mark.integration

Body = Callable[[KVClient], Awaitable[None]]


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_etcd(Path(tmp_path_factory.mktemp("etcd")) / "data", port, free_port())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()


@pytest.fixture(params=["etcd", "memory"])
def engine(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run a test body against a KVClient of the engine, with no key under / left."""

    def run(body: Body) -> None:
        async def main() -> None:
            client: Any
            if request.param == "etcd":
                client = EtcdClient([request.getfixturevalue("etcd_url")], timeout_s=5)
            else:
                client = MemoryEtcd(MemoryKV())
            try:
                await client.delete(b"/", prefix=True)
                await body(client)
            finally:
                await client.close()

        asyncio.run(main())

    return run


# -- the key-value semantics --------------------------------------------------------------------


def test_revisions_grow_by_one_per_write_and_not_without_a_change(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        _, r0 = await kv.get_prefix(b"/t/")
        r1 = await kv.put(b"/t/a", b"1")
        assert r1 == r0 + 1
        res = await kv.txn([], [Op.put(b"/t/b", b"2"), Op.put(b"/t/c", b"3")])
        assert res.succeeded and res.revision == r1 + 1  # one txn, one revision
        a, b = await kv.get(b"/t/a"), await kv.get(b"/t/b")
        assert a is not None and b is not None
        assert (a.mod_revision, b.mod_revision) == (r1, r1 + 1)
        assert (await kv.delete(b"/t/zz")) == r1 + 1  # deleting nothing changes nothing
        res = await kv.txn([], [Op.get(b"/t/a")])
        assert res.revision == r1 + 1 and [x.value for x in res.responses[0]] == [b"1"]
        kvs, rev = await kv.get_prefix(b"/t/")
        assert [x.key for x in kvs] == [b"/t/a", b"/t/b", b"/t/c"] and rev == r1 + 1

    engine(body)


def test_create_mod_revision_and_version(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        r1 = await kv.put(b"/t/k", b"1")
        r2 = await kv.put(b"/t/k", b"2")
        k = await kv.get(b"/t/k")
        assert k is not None and (k.create_revision, k.mod_revision, k.version) == (r1, r2, 2)
        await kv.delete(b"/t/k")
        assert await kv.get(b"/t/k") is None
        r4 = await kv.put(b"/t/k", b"3")
        k = await kv.get(b"/t/k")
        assert k is not None and (k.create_revision, k.mod_revision, k.version) == (r4, r4, 1)

    engine(body)


def test_compares_on_present_and_missing_keys(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        rev = await kv.put(b"/t/k", b"v")

        async def holds(c: Compare) -> bool:
            return (await kv.txn([c], [], [])).succeeded

        assert await holds(Compare.mod_revision(b"/t/k", "=", rev))
        assert not await holds(Compare.mod_revision(b"/t/k", "=", rev - 1))
        assert await holds(Compare.mod_revision(b"/t/k", ">", rev - 1))
        assert await holds(Compare.mod_revision(b"/t/k", "<", rev + 1))
        assert await holds(Compare.mod_revision(b"/t/k", "!=", 0))
        assert await holds(Compare.version(b"/t/k", "=", 1))
        assert await holds(Compare.create_revision(b"/t/k", "=", rev))
        assert await holds(Compare.value(b"/t/k", "=", b"v"))
        assert await holds(Compare.value(b"/t/k", ">", b"a"))
        # a missing key: revisions and version 0; a value comparison always fails
        assert await holds(Compare.mod_revision(b"/t/none", "=", 0))
        assert await holds(Compare.version(b"/t/none", "=", 0))
        assert await holds(Compare.create_revision(b"/t/none", "<", 1))
        assert not await holds(Compare.value(b"/t/none", "=", b""))
        assert not await holds(Compare.value(b"/t/none", "!=", b"x"))
        with pytest.raises(ValueError):
            Compare.version(b"/t/k", "==", 1)

    engine(body)


def test_a_txn_runs_one_branch_atomically_and_answers_per_op(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        await kv.put(b"/t/a", b"1")
        await kv.put(b"/t/b", b"2")
        res = await kv.txn([Compare.value(b"/t/a", "=", b"nope")],
                           [Op.put(b"/t/x", b"!")],
                           [Op.get(b"/t/", prefix=True), Op.delete(b"/t/a"),
                            Op.put(b"/t/c", b"3"), Op.get(b"/t/", prefix=True)])
        assert not res.succeeded
        first, deleted, put, last = res.responses
        assert [x.key for x in first] == [b"/t/a", b"/t/b"] and deleted == 1 and put is None
        # a get sees the branch's writes before it
        assert [x.key for x in last] == [b"/t/b", b"/t/c"]
        assert await kv.get(b"/t/x") is None
        kvs, rev = await kv.get_prefix(b"/t/")
        assert [x.key for x in kvs] == [b"/t/b", b"/t/c"] and res.revision == rev
        assert kvs[1].mod_revision == rev  # the delete and the put: one revision

    engine(body)


def test_a_key_written_twice_in_one_txn_is_refused(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        with pytest.raises(EtcdError):
            await kv.txn([], [Op.put(b"/t/k", b"1"), Op.put(b"/t/k", b"2")])
        with pytest.raises(EtcdError):
            await kv.txn([], [Op.delete(b"/t/", prefix=True), Op.put(b"/t/k", b"2")])
        assert await kv.get(b"/t/k") is None
        # a put and a delete of other keys, or a get of the same, are fine
        await kv.txn([], [Op.put(b"/t/k", b"1"), Op.delete(b"/t/l"), Op.get(b"/t/k")])

    engine(body)


def test_lease_keys_go_with_the_lease(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        lease = await kv.lease_grant(10)
        await kv.put(b"/t/leased", b"1", lease=lease)
        await kv.put(b"/t/kept", b"2")
        assert await kv.lease_keepalive(lease) >= 10
        _, before = await kv.get_prefix(b"/t/")
        await kv.lease_revoke(lease)
        kvs, after = await kv.get_prefix(b"/t/")
        assert [x.key for x in kvs] == [b"/t/kept"] and after == before + 1
        with pytest.raises(LeaseExpired):
            await kv.lease_keepalive(lease)
        with pytest.raises(LeaseExpired):
            await kv.put(b"/t/late", b"3", lease=lease)
        await kv.lease_revoke(lease)  # a lease already gone is no error
        # a lease that is not renewed ends by itself (etcd's shortest TTL is about 2 s)
        short = await kv.lease_grant(1)
        await kv.put(b"/t/short", b"4", lease=short)
        deadline = time.monotonic() + 10
        while await kv.get(b"/t/short") is not None:
            assert time.monotonic() < deadline, "a lease outlived its TTL"
            await asyncio.sleep(0.2)

    engine(body)


def test_a_watch_replays_from_its_start_and_a_compacted_start_fails(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        start = await kv.put(b"/t/a", b"1")
        await kv.put(b"/u/other", b"x")  # not under the prefix
        await kv.txn([], [Op.put(b"/t/b", b"2"), Op.delete(b"/t/a")])
        seen: list[tuple[str, bytes, int]] = []
        watch = kv.watch_prefix(b"/t/", start)
        async with asyncio.timeout(5):
            async for batch in watch:  # one revision or several, never part of one
                seen.extend((e.type, e.kv.key, e.kv.mod_revision) for e in batch)
                if seen[-1][2] == start + 2:
                    break
        await watch.aclose()
        assert seen == [("put", b"/t/a", start), ("put", b"/t/b", start + 2),
                        ("delete", b"/t/a", start + 2)]
        if isinstance(kv, EtcdClient):
            await kv.compact(start + 2)
        else:
            assert isinstance(kv, MemoryEtcd)
            kv.kv.compact(start + 2)
        with pytest.raises(WatchCompacted):
            async with asyncio.timeout(5):
                async for _ in kv.watch_prefix(b"/t/", start):
                    pass

    engine(body)


# -- the typed store over each engine -------------------------------------------------------------


def node(i: int, state: str = model.NODE_SPARE, group: int | None = None) -> Node:
    return Node(i, f"127.0.0.1:{9000 + i}", state, group)


def test_groups_form_and_elect_by_compare_and_swap(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        store = MetaStore(kv)
        revs = [await store.put_node(node(i), 0) for i in (1, 2, 3)]
        assert all(revs)
        assert await store.put_node(node(1), 0) is None  # 0: the key must not exist
        made = await store.create_group([(node(i), r) for i, r in zip((1, 2, 3), revs,
                                                                       strict=True)])
        assert made is not None
        group, written = made
        assert group == Group(1, 0, None, (1, 2, 3))
        view, vrevs = await store.load()
        assert view.groups[1] == group and view.revision == written
        assert all(view.nodes[i].state == model.NODE_MEMBER and view.nodes[i].group == 1
                   for i in (1, 2, 3))
        # the spares' records moved on: a second group of them is refused
        assert await store.create_group([(node(1), revs[0])]) is None
        grev = vrevs[model.group_key(1)]
        assert await store.set_group_leader(group, grev, 1, 2) is not None
        assert await store.set_group_leader(group, grev, 2, 3) is None  # decided on old
        view, _ = await store.load()
        assert (view.groups[1].epoch, view.groups[1].leader) == (1, 2)
        assert store.txn_conflicts == 3

    engine(body)


def test_a_reconfiguration_step_and_its_decision_land_together(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        store = MetaStore(kv)
        for i in (1, 2, 3, 4):
            await store.put_node(node(i), 0)
        view, revs = await store.load()
        made = await store.create_group([(view.nodes[i], revs[model.node_key(i)])
                                         for i in (1, 2, 3)])
        assert made is not None
        view, revs = await store.load()
        group = view.groups[1]
        step = group.with_learner(4, 2)
        joining = Node(4, view.nodes[4].address, model.NODE_JOINING, 1)
        decision, trim = decision_entry(view, 1_000, "replace_started", 1, "node 2 died", {})
        assert trim == []
        grev, nrev = revs[model.group_key(1)], revs[model.node_key(4)]
        written = await store.reconfigure((step, grev), [(joining, nrev)], decision, trim)
        assert written is not None
        view, _ = await store.load()
        assert view.groups[1] == step and view.nodes[4] == joining
        assert [d.kind for d in view.decisions] == ["replace_started"]
        # the same step again: every premise moved on, nothing is written
        again, _ = decision_entry(view, 1_000, "replace_started", 1, "again", {})
        assert again.at_ns == 1_001  # keyed after every decision held
        assert await store.reconfigure((step, grev), [(joining, nrev)], again, []) is None
        assert len((await store.load())[0].decisions) == 1

    engine(body)


def test_decisions_are_trimmed_in_the_transaction_that_adds_one(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        store = MetaStore(kv)
        for i in range(model.DECISIONS_KEPT + 3):
            view, _ = await store.load()
            decision, trim = decision_entry(view, 0, "split", None, f"#{i}", {})
            assert await store.reconfigure(None, [], decision, trim) is not None
        view, _ = await store.load()
        assert len(view.decision_log) == model.DECISIONS_KEPT
        assert view.decisions[-1].reason == f"#{model.DECISIONS_KEPT + 2}"

    engine(body)


def test_fenced_writes_fail_once_the_active_key_is_not_ours(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        store = MetaStore(kv)
        lease = await kv.lease_grant(10)
        won, fence, holder = await store.try_become_active(1, "a:1", lease)
        assert won and holder is None
        other = MetaStore(kv)
        lost, _, holder = await other.try_become_active(2, "b:2", await kv.lease_grant(10))
        assert not lost and holder == {"id": 1, "address": "a:1"}
        store.fence_revision = fence
        assert await store.put_node(node(1), 0) is not None
        assert await store.put_node(node(1), 0) is None  # a plain conflict
        await kv.lease_revoke(lease)  # the key goes: a successor may win
        won2, _, _ = await other.try_become_active(2, "b:2", await kv.lease_grant(10))
        assert won2
        with pytest.raises(errors.NotActive) as refused:
            await store.put_node(node(2), 0)
        assert refused.value.details["active_hint"] == "b:2"
        assert (await store.load())[0].nodes.keys() == {1}

    engine(body)


def test_tables_and_ranges(engine: Any) -> None:
    async def body(kv: KVClient) -> None:
        store = MetaStore(kv)
        made = await store.create_table("t", 7, 123)
        assert made is not None
        table, trev = made
        assert table == Table(1, "t", model.TABLE_CREATING, 123)
        assert await store.create_table("t", 7, 124) is None  # the name is taken
        made = await store.set_table_state(table, trev, model.TABLE_ACTIVE)
        assert made is not None
        table, trev = made
        assert await store.get_table("t") == (table, trev)
        [(whole, rev)] = await store.table_ranges_revs(table.id)
        assert whole == Range(1, b"", None, 7, 1)
        assert await store.split_range(whole, rev, b"m") is not None
        assert await store.split_range(whole, rev, b"m") is None
        lower, upper = await store.table_ranges_revs(table.id)
        assert (lower[0].end, upper[0].start, upper[0].version) == (b"m", b"m", 2)
        moving = Range(1, b"m", None, 7, 3, model.RANGE_MOVING, target=8)
        assert await store.put_range(moving, upper[1]) is not None
        found = await store.range_record(1, b"m")
        assert found is not None and found[0] == moving
        back = Range(1, b"m", None, 7, 4)
        assert await store.put_range(back, found[1]) is not None
        lower, upper = await store.table_ranges_revs(table.id)
        assert await store.merge_ranges(lower[0], lower[1], upper[0], upper[1]) is not None
        assert await store.table_ranges(table.id) == [Range(1, b"", None, 7, 5)]
        assert await store.delete_table(table, trev) is not None
        view, _ = await store.load()
        assert not view.tables and not view.ranges

    engine(body)


# -- both engines answer alike ------------------------------------------------------------------

KEYS = [b"/d/a", b"/d/b", b"/d/c"]


@st.composite
def txns(draw: st.DrawFn) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """A few transactions over three keys, as data (built into Compare/Op once the base
    revision is known)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        compares = draw(st.lists(st.tuples(
            st.sampled_from(KEYS), st.sampled_from(["MOD", "CREATE", "VERSION", "VALUE"]),
            st.sampled_from(["=", "!=", ">", "<"]), st.integers(0, 4)), max_size=2))
        ops = st.lists(st.tuples(
            st.sampled_from(["get", "put", "delete"]), st.sampled_from([*KEYS, b"/d/"]),
            st.sampled_from([b"", b"x", b"y"])), max_size=3)
        out.append((compares, draw(ops), draw(ops)))
    return out


def build(spec: tuple[list[Any], list[Any], list[Any]],
          base: int) -> tuple[list[Compare], list[Op], list[Op]]:
    compares = []
    for key, target, op, n in spec[0]:
        if target == "VALUE":
            compares.append(Compare.value(key, op, [b"", b"x", b"y", b"z", b"w"][n]))
        elif target == "VERSION":
            compares.append(Compare.version(key, op, n))
        else:  # a revision near the example's first
            compares.append(Compare(key, target, op, base + n if n else 0))

    def ops(raw: list[Any]) -> list[Op]:
        out = []
        for kind, key, value in raw:
            prefix = key == b"/d/"
            if kind == "put":
                out.append(Op.put(key if not prefix else b"/d/z", value))
            else:
                out.append(Op(kind, key, prefix=prefix))
        return out

    return compares, ops(spec[1]), ops(spec[2])


@settings(max_examples=60)
@given(txns())
def test_random_transactions_answer_alike_on_both(etcd_url: str,
                                                  spec: list[Any]) -> None:
    async def main() -> None:
        etcd = EtcdClient([etcd_url], timeout_s=5)
        try:
            await etcd.delete(b"/d/", prefix=True)
            _, base = await etcd.get_prefix(b"/d/")
            mem = MemoryKV()
            mem.revision = base  # the same revisions from here
            for one in spec:
                compares, success, failure = build(one, base)
                outcomes = []
                for run in (etcd.txn, lambda *a: _now(mem.txn, *a)):
                    try:
                        res = await run(compares, success, failure)
                        outcomes.append(("ok", res.succeeded, res.revision,
                                         _shape(res.responses)))
                    except EtcdError:
                        outcomes.append(("refused",))
                assert outcomes[0] == outcomes[1], (one, outcomes)
            assert _shape([(await etcd.get_prefix(b"/d/"))[0]]) == _shape(
                [mem.get_prefix(b"/d/")[0]])
        finally:
            await etcd.close()

    asyncio.run(main())


async def _now(call: Callable[..., Any], *args: Any) -> Any:
    return call(*args)


def _shape(responses: list[Any]) -> list[Any]:
    return [[(x.key, x.value, x.create_revision, x.mod_revision, x.version) for x in r]
            if isinstance(r, list) else r for r in responses]
