"""The rm's etcd-backed routing view, against an in-memory fake of the etcd client's interface
(``get_prefix``, ``watch_prefix``, ``close``), and the router's backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest

from rangekv import errors, model, sequencer, wire
from rangekv.model import Group, Node, Range, Table
from rangekv.request_manager import routing
from rangekv.request_manager.metrics import Metrics
from rangekv.request_manager.routing import EtcdViewSource


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Event:
    type: str
    kv: KV


class Lost(errors.Unavailable):
    """Stands for rangekv.metadata.etcd.WatchLost."""


class FakeEtcd:
    def __init__(self) -> None:
        self.revision = 1
        self.kvs: dict[bytes, KV] = {}
        self.history: list[Event] = []
        self.down = False
        self._changed = asyncio.Event()
        self._generation = 0
        self.watches_opened = 0

    def _commit(self, ev: Event) -> int:
        self.history.append(ev)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.revision

    def put(self, key: bytes, value: bytes) -> int:
        self.revision += 1
        kv = self.kvs[key] = KV(key, value, self.revision)
        return self._commit(Event("put", kv))

    def delete(self, key: bytes) -> int:
        self.revision += 1
        del self.kvs[key]
        return self._commit(Event("delete", KV(key, b"", self.revision)))

    def lose_watches(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def get_prefix(self, prefix: bytes) -> tuple[list[KV], int]:
        if self.down:
            raise errors.Unavailable("etcd is down")
        return [kv for k, kv in sorted(self.kvs.items()) if k.startswith(prefix)], self.revision

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncGenerator[list[Event], None]:
        self.watches_opened += 1
        generation = self._generation
        next_rev = start_revision
        while True:
            if self._generation != generation or self.down:
                raise Lost("watch lost")
            batch = [
                e
                for e in self.history
                if e.kv.mod_revision >= next_rev and e.kv.key.startswith(prefix)
            ]
            if batch:
                next_rev = batch[-1].kv.mod_revision + 1
                yield batch
            else:
                await self._changed.wait()

    async def close(self) -> None:
        pass


def seed(etcd: FakeEtcd) -> None:
    etcd.put(model.node_key(1), model.dumps(Node(1, "127.0.0.1:9001", "member", 1)))
    etcd.put(model.group_key(1), model.dumps(Group(1, 1, 1, (1,))))
    etcd.put(model.table_key("t"), model.dumps(Table(1, "t")))
    etcd.put(model.range_key(1, b""), Range(1, b"", None, 1).dumps())


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_load_then_follow_the_watch() -> None:
    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        metrics = Metrics(1)
        source = EtcdViewSource(etcd, metrics)
        assert not source.ready
        await source.start()
        await until(lambda: source.ready)
        view = source.view
        assert view.table("t") == Table(1, "t")
        assert view.leader_address(1) == "127.0.0.1:9001"
        assert view.revision == etcd.revision

        rev = etcd.put(model.table_key("u"), model.dumps(Table(2, "u")))
        assert await source.wait_revision(rev, 2.0)
        assert source.view.table("u") == Table(2, "u")
        rev = etcd.delete(model.table_key("u"))
        assert await source.wait_revision(rev, 2.0)
        assert source.view.table("u") is None
        assert source.view.revision == rev
        assert not await source.wait_revision(rev + 10, 0.05)
        assert metrics.watch_events == 2 and metrics.view_reloads == 1
        await source.close()
        assert not source.ready

    run(main())


class SlowWatchEtcd(FakeEtcd):
    """Its watch delivers nothing while ``held`` is set: another rm's change the watch has not
    brought yet."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()
        self.released.set()

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncGenerator[list[Event], None]:
        async for batch in super().watch_prefix(prefix, start_revision):
            await self.released.wait()
            yield batch


def test_catch_up_waits_for_the_watch_to_reach_what_etcd_had_committed() -> None:
    """A table another rm just created is listed by the next ``tables`` here: the view catches
    up with etcd's revision first (CI saw ``create_table`` then ``tables() == []`` through
    HAProxy, the two calls on different rms)."""
    async def main() -> None:
        etcd = SlowWatchEtcd()
        seed(etcd)
        source = EtcdViewSource(etcd)
        await source.start()
        await until(lambda: source.ready)
        etcd.released.clear()
        etcd.put(model.table_key("u"), model.dumps(Table(2, "u")))
        assert not await source.catch_up(0.05)  # the watch is held: not caught up in time
        waiting = asyncio.ensure_future(source.catch_up(2.0))
        await asyncio.sleep(0.01)
        assert not waiting.done() and source.view.table("u") is None
        etcd.released.set()
        assert await waiting
        assert source.view.table("u") == Table(2, "u")
        etcd.down = True
        with pytest.raises(errors.Unavailable):
            await source.catch_up(1.0)
        await source.close()

    run(main())


def test_watch_lost_reloads() -> None:
    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        metrics = Metrics(1)
        source = EtcdViewSource(etcd, metrics, rand=lambda: 0.0)
        await source.start()
        await until(lambda: source.ready)
        etcd.down = True
        etcd.lose_watches()
        await until(lambda: not source.ready)
        etcd.down = False
        etcd.put(model.table_key("late"), model.dumps(Table(5, "late")))
        await until(lambda: source.ready and source.view.table("late") is not None)
        assert metrics.view_reloads >= 2 and etcd.watches_opened >= 2
        await source.close()

    run(main())


def test_refresh_reads_ahead_of_the_watch_and_skips_older_events() -> None:
    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        source = EtcdViewSource(etcd)
        await source._load()  # no watch: events are applied by hand below
        loaded = source.view.revision

        # Dropped and re-created with a new id while the watch lags behind.
        drop_rev = etcd.delete(model.table_key("t"))
        etcd.put(model.table_key("t"), model.dumps(Table(7, "t")))
        etcd.put(model.range_key(7, b""), Range(7, b"", None, 1).dumps())
        await source.refresh_table("t", since=0.0)
        assert source.view.table("t") == Table(7, "t")
        assert source.view.range_for(7, b"k") is not None
        assert source.view.revision == loaded  # only the watch moves the revision

        # The watch now delivers the old drop: it must not undo what the re-read showed.
        drop = next(e for e in etcd.history if e.kv.mod_revision == drop_rev)
        source._apply_events([drop])
        assert source.view.table("t") == Table(7, "t")
        rest = [e for e in etcd.history if e.kv.mod_revision > drop_rev]
        source._apply_events(rest)
        assert source.view.table("t") == Table(7, "t")
        assert source.view.revision == etcd.revision
        assert source._ahead == {}  # the watch caught up: nothing is ahead any more

        # A table that is gone from etcd is removed by a re-read.
        etcd.delete(model.table_key("t"))
        await source.refresh_table("t", since=0.0)
        assert source.view.table("t") is None

        # An unreadable etcd makes the re-read (and so a would-be 404) a 503.
        etcd.down = True
        with pytest.raises(errors.Unavailable):
            await source.refresh_table("t", since=0.0)

    run(main())


def test_concurrent_refreshes_of_one_table_are_joined() -> None:
    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        calls = 0
        real = etcd.get_prefix

        async def counting(prefix: bytes) -> tuple[list[KV], int]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return await real(prefix)

        etcd.get_prefix = counting  # type: ignore[method-assign]
        source = EtcdViewSource(etcd)
        await source._load()
        calls = 0
        since = time.monotonic()
        await asyncio.gather(*(source.refresh_table("t", since) for _ in range(10)))
        assert calls == 2  # one table read + one range read, shared by all ten
        # A request that began before the shared read started does not join it (it might
        # miss a table created just before that request), so it reads again.
        await asyncio.gather(source.refresh_table("t", since - 1.0))
        assert calls == 4

    run(main())


def test_undecodable_metadata_is_skipped() -> None:
    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        etcd.put(model.table_key("bad"), b"{not json")
        source = EtcdViewSource(etcd)
        await source._load()
        assert source.view.table("t") is not None and "bad" not in source.view.tables
        ev = Event("put", KV(model.group_key(2), b"[]", etcd.revision + 1))
        source._apply_events([ev])
        assert 2 not in source.view.groups and source.view.revision == etcd.revision + 1

    run(main())


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(30):
        delay = routing.backoff_s(attempt, rng.random)
        cap = min(routing.BACKOFF_S_MAX, routing.BACKOFF_S_MIN * 2**attempt)
        assert cap / 2 <= delay <= cap
    assert routing.backoff_s(0, lambda: 1.0) == routing.BACKOFF_S_MIN


def test_a_probe_etcd_does_not_answer_makes_the_source_unready_until_a_reload() -> None:
    """A watch with no events looks the same whether etcd is quiet or out of reach: the probe
    tells them apart."""

    async def main() -> None:
        etcd = FakeEtcd()
        seed(etcd)
        metrics = Metrics(1)
        source = EtcdViewSource(etcd, metrics, rand=lambda: 0.0)
        await source.start()
        await until(lambda: source.ready)
        real = etcd.get_prefix
        hung = asyncio.Event()

        async def unreachable(prefix: bytes) -> tuple[list[KV], int]:
            await hung.wait()  # packets dropped: no answer, no error
            return await real(prefix)

        etcd.get_prefix = unreachable  # type: ignore[method-assign]
        woke = asyncio.create_task(source.wait_changed(10.0))
        await until(lambda: not source.ready, timeout_s=routing.PROBE_INTERVAL_S
                    + routing.PROBE_TIMEOUT_S + 1.0)
        assert await woke  # waiters learn at once
        assert metrics.probe_failures == 1
        etcd.get_prefix = real  # type: ignore[method-assign]
        hung.set()
        await until(lambda: source.ready)
        assert metrics.view_reloads >= 2
        await source.close()

    run(main())


def test_a_packed_list_page_from_a_node_is_checked_before_the_rm_pages_on() -> None:
    """The rm passes a node's packed items on undecoded, but what it pages on (the count, the
    last key, the highest seq) it checks: a hostile or broken node gets ProtocolError."""
    from rangekv.wire import packed_page

    seq = sequencer.make(1_000_000, 0, 1)
    good = packed_page([(b"b", b"1", seq), (b"c", b"2", seq)], True)
    piece = routing._piece(good, b"a", b"z", 10)
    assert (piece.n, piece.last, piece.top, piece.nbytes, piece.more) == (2, b"c", seq, 4, True)
    plain = routing._piece({"items": [[b"b", b"1", seq]], "more": False}, b"a", None, 10)
    assert plain.packed == wire.pack_elements([(b"b", b"1", seq)]) and plain.last == b"b"
    for bad in ({**good, "n": 11}, {**good, "n": -1}, {**good, "n": True}, {**good, "last": None},
                {**good, "last": "c"}, {**good, "last": b"zz"}, {**good, "last": b"0"},
                {**good, "packed": "x"}, {**good, "nbytes": -1}, {**good, "top": b"short"},
                {**good, "n": 0}):
        with pytest.raises(errors.ProtocolError):
            routing._piece(bad, b"a", b"z", 10)
