"""The etcd client against a real etcd 3.4 (its JSON gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from rangekv import errors
from rangekv.metadata.etcd import (
    Compare,
    EtcdClient,
    Event,
    LeaseExpired,
    Op,
    WatchCompacted,
    WatchLost,
    prefix_end,
)
from rangekv.testing.procs import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(scenario: Callable[[EtcdClient], Awaitable[T]], endpoints: list[str], **kw: float) -> T:
    async def main() -> T:
        client = EtcdClient(endpoints, **kw)  # type: ignore[arg-type]
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


def test_put_get_and_paginated_prefix(etcd_endpoint: str) -> None:
    async def scenario(c: EtcdClient) -> None:
        rev = await c.put(b"/p/a", b"\x00binary\xff")
        kv = await c.get(b"/p/a")
        assert kv is not None and kv.value == b"\x00binary\xff"
        assert kv.mod_revision == kv.create_revision == rev and kv.version == 1
        assert await c.get(b"/p/missing") is None
        for i in range(7):
            await c.put(b"/p/k%02d" % i, b"" if i == 3 else b"v%d" % i)
        await c.put(b"/q/outside", b"x")
        kvs, at = await c.get_prefix(b"/p/")  # page size 3: three pages, one snapshot
        assert [k.key for k in kvs] == [b"/p/a"] + [b"/p/k%02d" % i for i in range(7)]
        assert kvs[4].value == b""
        assert at == max(k.mod_revision for k in kvs) + 1  # the /q/ put came last
        assert await c.delete(b"/p/k", prefix=True) > at
        kvs, _ = await c.get_prefix(b"/p/")
        assert [k.key for k in kvs] == [b"/p/a"]

    run(scenario, [etcd_endpoint], page_kvs_max=3)


def test_txn_compare_and_swap(etcd_endpoint: str) -> None:
    async def scenario(c: EtcdClient) -> None:
        # create-if-absent succeeds once
        res = await c.txn(
            [Compare.version(b"/t/x", "=", 0)], [Op.put(b"/t/x", b"1")], [Op.get(b"/t/x")]
        )
        assert res.succeeded and res.responses == [None]
        first = res.revision
        res = await c.txn(
            [Compare.version(b"/t/x", "=", 0)],
            [Op.put(b"/t/x", b"2")],
            [Op.get(b"/t/x"), Op.get(b"/t/", prefix=True)],
        )
        assert not res.succeeded
        assert [kv.value for kv in res.responses[0]] == [b"1"]
        assert len(res.responses[1]) == 1
        # CAS on mod_revision: a stale revision fails, the current one wins
        stale = await c.txn(
            [Compare.mod_revision(b"/t/x", "=", first - 1)], [Op.put(b"/t/x", b"3")]
        )
        assert not stale.succeeded and stale.responses == []
        ok = await c.txn(
            [
                Compare.mod_revision(b"/t/x", "=", first),
                Compare.value(b"/t/x", "=", b"1"),
                Compare.create_revision(b"/t/x", "<", first + 1),
                Compare.mod_revision(b"/t/absent", "=", 0),
            ],
            [Op.put(b"/t/x", b"4"), Op.put(b"/t/y", b"y"), Op.delete(b"/t/absent")],
        )
        assert ok.succeeded and ok.revision == first + 1 and ok.responses == [None, None, 0]
        got = await c.get(b"/t/x")
        assert got is not None and got.value == b"4" and got.version == 2
        with pytest.raises(ValueError):
            Compare.version(b"/t/x", "==", 1)

    run(scenario, [etcd_endpoint])


def test_watch_from_a_start_revision_sees_puts_and_deletes_in_order(
    etcd_endpoint: str,
) -> None:
    async def scenario(c: EtcdClient) -> None:
        start = await c.put(b"/w/a", b"1")  # before the watch starts: must still be seen
        await c.put(b"/other", b"not watched")
        seen: list[Event] = []

        async def consume() -> None:
            async with contextlib.aclosing(c.watch_prefix(b"/w/", start)) as batches:
                async for batch in batches:
                    seen.extend(batch)
                    if len(seen) >= 5:
                        return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        await c.put(b"/w/b", b"2")
        await c.delete(b"/w/a")
        await c.txn([], [Op.put(b"/w/c", b"3"), Op.delete(b"/w/b")])
        await asyncio.wait_for(task, 5)
        assert [(e.type, e.kv.key, e.kv.value) for e in seen] == [
            ("put", b"/w/a", b"1"),
            ("put", b"/w/b", b"2"),
            ("delete", b"/w/a", b""),
            ("put", b"/w/c", b"3"),
            ("delete", b"/w/b", b""),
        ]
        revs = [e.kv.mod_revision for e in seen]
        assert revs == sorted(revs) and revs[0] == start
        assert revs[3] == revs[4]  # one txn, one revision

    run(scenario, [etcd_endpoint])


def test_watch_on_a_compacted_revision_raises(etcd_endpoint: str) -> None:
    async def scenario(c: EtcdClient) -> None:
        first = await c.put(b"/c/a", b"1")
        last = await c.put(b"/c/a", b"2")
        await c.compact(last)
        with pytest.raises(WatchCompacted) as info:
            async with contextlib.aclosing(c.watch_prefix(b"/c/", first)) as batches:
                async for _ in batches:
                    pass
        assert info.value.details["compact_revision"] == last
        assert isinstance(info.value, WatchLost) and info.value.retryable

    run(scenario, [etcd_endpoint])


def test_lease_expiry_deletes_the_leased_key(etcd_endpoint: str) -> None:
    async def scenario(c: EtcdClient) -> None:
        lease = await c.lease_grant(1)  # etcd rounds up to its minimum TTL
        await c.put(b"/l/leased", b"x", lease=lease)
        kv = await c.get(b"/l/leased")
        assert kv is not None and kv.lease == lease
        assert await c.lease_keepalive(lease) >= 1
        deadline = time.monotonic() + 10
        while await c.get(b"/l/leased") is not None:
            assert time.monotonic() < deadline, "leased key outlived its lease"
            await asyncio.sleep(0.1)
        with pytest.raises(LeaseExpired):
            await c.lease_keepalive(lease)
        # revoke deletes at once, and revoking twice is fine
        other = await c.lease_grant(30)
        await c.put(b"/l/other", b"y", lease=other)
        await c.lease_revoke(other)
        assert await c.get(b"/l/other") is None
        await c.lease_revoke(other)

    run(scenario, [etcd_endpoint])


def test_fails_over_past_a_dead_endpoint(etcd_endpoint: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario(c: EtcdClient) -> None:
        assert c.endpoints[0] == dead
        await c.put(b"/f/a", b"1")
        kv = await c.get(b"/f/a")
        assert kv is not None and kv.value == b"1"
        lease = await c.lease_grant(5)
        assert await c.lease_keepalive(lease) > 0
        res = await c.txn([Compare.version(b"/f/a", "=", 1)], [Op.delete(b"/f/a")])
        assert res.succeeded and res.responses == [1]
        async with contextlib.aclosing(c.watch_prefix(b"/f/", kv.mod_revision)) as batches:
            batch = await asyncio.wait_for(anext(batches), 5)
        assert batch[0].kv.key == b"/f/a"

    run(scenario, [dead, etcd_endpoint])


def test_no_endpoint_answering_is_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]

    async def scenario(c: EtcdClient) -> None:
        for call in (c.get(b"/x"), c.put(b"/x", b"1"), c.lease_grant(2)):
            with pytest.raises(errors.Unavailable) as info:
                await call
            assert info.value.retryable and all(d in info.value.message for d in dead)
        with pytest.raises(errors.Unavailable):
            async with contextlib.aclosing(c.watch_prefix(b"/x", 1)) as batches:
                async for _ in batches:
                    pass

    run(scenario, dead, timeout_s=1.0)
