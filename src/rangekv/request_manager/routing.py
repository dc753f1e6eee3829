"""Routing: the rm's in-memory copy of the metadata, and sending each operation where it belongs.

Theory of operation
-------------------

The rm keeps all of the metadata in memory (seed: "keep all the data of MM in RM") as a
``ClusterView``. A ``ViewSource`` owns that view: ``EtcdViewSource`` loads everything under
``/rangekv/`` with one prefix read and then follows it with a watch from the next revision,
applying events in order; when the watch is lost it reloads with backoff. A watch that carries
no events looks the same whether etcd is quiet or out of reach, so the source also *probes*
etcd (a linearizable read of an empty prefix every ``PROBE_INTERVAL_S``, answered within
``PROBE_TIMEOUT_S``): a probe that fails means the view may be stale, and the source stops
being ``ready`` (``/healthz`` answers 503, the load balancer drains this rm) and reloads. The
watch itself asks etcd to cancel it when its member loses its leader (``hasleader``).
``StaticViewSource`` holds a view built by hand (tests, tools). Nothing on the hot path talks to
etcd.

The ``Router`` turns ``(table, key)`` into an address with three lookups in that view (table name
→ id, id + key → range → group, group → leader → node address) and sends the node op over a pooled
``wire.Connection`` (one per address, requests multiplexed). When the view is wrong it recovers:

=========================================  ===================================================
what happened                              what the router does
=========================================  ===================================================
no leader known / cannot connect           wait for the view to change or a backoff, retry
``not_leader`` with a hint                 go to the hinted node at once (once per request),
                                           remember the hint for the group until the view's
                                           epoch catches up; later: wait, then retry
table unknown, or ``table_not_found``      re-read that table's keys from etcd once (the watch
                                           may lag a table created through another rm), retry;
                                           then 404
``range_not_here`` (the group does not     re-read the table's ranges at once (once), then
own the key or span: split or moved)       wait for the watch or a backoff, retry; 503 at
                                           the deadline
``outcome_unknown`` / ``timeout`` on a     never retried: the write may have happened; 504
write (put, delete, create/drop table)     ``outcome_unknown``; except a write of a client
                                           session: retried with ``retry`` (the group applies
                                           it at most once: ``storage/sessions``)
the same on a read                         retried
=========================================  ===================================================

Invariants:

* A write is sent again only if the previous attempt surely did not take effect: the node
  refused it (``not_leader``, ``unavailable``, ``table_not_found``) or it was never sent
  (``Unavailable`` from connecting). Anything else ends the request, unless the write carries
  a client session (``Session``): the group then keeps its result by (client, cseq) and a
  resend marked ``retry`` returns the first attempt's result instead of applying it again.
* An rm that cannot follow the map (not ``ready``) does not wait out a request that needs a
  retry: the retry fails at once with 503 ``retry_elsewhere`` (and ``Retry-After: 0``), so the
  client retries through another rm instead of waiting on one that is cut off.
* Every request ends within its deadline (``request_deadline_s``; ``meta_deadline_s`` for table
  creation and drop); every wait is bounded by what remains of it.
* Every write carries a fresh seq from this rm's ``Sequencer``; every seq a node returns is
  ``observe``d, so this rm's seqs stay above any it has seen (a hybrid logical clock).
* A list page walks the table's ranges in key order with one cursor: each range is asked for
  keys in ``[max(start, range.start), min(end, range.end))`` strictly after the cursor key, and
  the page moves to the next range only when a range is exhausted.

Bounds (units last) are the module constants below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rangekv import errors, limits, model, sequencer, wire
from rangekv.model import ClusterView, Range, Table
from rangekv.request_manager.coalesce import Coalescer, SendAlone
from rangekv.request_manager.http_codec import Cursor
from rangekv.request_manager.metrics import Metrics, RouterStats
from rangekv.request_manager.ops import GetResult, Session, check_seq

log = logging.getLogger("rangekv.rm.routing")

REQUEST_DEADLINE_S = 5.0  # a data op, all retries included
META_DEADLINE_S = 10.0  # create/drop table: the meta must also set up the table's range
READ_ATTEMPT_TIMEOUT_S_MAX = 2.0  # one read attempt; a slow node is then retried
CONNECT_TIMEOUT_S = 1.0
BACKOFF_S_MIN = 0.02
BACKOFF_S_MAX = 0.5
TABLE_VISIBLE_TIMEOUT_S = 2.0  # after create/drop, wait this long for the watch to show it
RELOAD_BACKOFF_S_MIN = 0.05
RELOAD_BACKOFF_S_MAX = 1.0  # an rm that reloads late serves no one: retry often
REFRESH_CONCURRENCY_MAX = 8  # direct etcd re-reads in flight at once
PROBE_INTERVAL_S = 0.5  # how often the source checks that etcd answers
PROBE_TIMEOUT_S = 1.0  # a probe not answered within this means "cut off from etcd"
PROBE_PREFIX = b"/rangekv-probe/"  # read by the probe: nothing is ever stored there
LIST_RANGES_PER_PAGE_MAX = 64  # ranges one list page may walk (empty ranges included)
# after a leader refused one of our seqs as too far ahead of its clock (clock_offset), /healthz
# answers 503 this long, so that the load balancer sends the writes to rms with sound clocks
CLOCK_OFFSET_UNHEALTHY_S = 10.0
LIST_MOVING_ROUNDS_MAX = 16  # sub-pages of tombstones only, in a range being moved, per page
SESSION_EXPIRED = "session_expired"  # a retry the group can no longer match to its first try


def backoff_s(attempt: int, rand: Callable[[], float]) -> float:
    """Exponential backoff with equal jitter: in [d/2, d], d = min(max, min * 2**attempt)."""
    delay = min(BACKOFF_S_MAX, BACKOFF_S_MIN * float(1 << min(attempt, 16)))
    return delay / 2 + rand() * delay / 2


# ---------------------------------------------------------------------------------------------
# View sources


class ViewSource(Protocol):
    """Owns the ClusterView the router reads. ``view`` may be replaced by a new object."""

    @property
    def view(self) -> ClusterView: ...

    @property
    def ready(self) -> bool:
        """The view is loaded and being kept current."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_changed(self, timeout_s: float) -> bool:
        """Wait until the view changes (True) or ``timeout_s`` passes (False)."""
        ...

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (synchronously) each time the view changes."""
        ...

    async def wait_revision(self, revision: int, timeout_s: float) -> bool:
        """Wait until the view reflects ``revision`` (True) or ``timeout_s`` passes (False)."""
        ...

    async def catch_up(self, timeout_s: float) -> bool:
        """Wait until the view reflects everything the store of record had committed when the
        call began (True), or ``timeout_s`` passes (False): what a linearizable read of the
        view needs, since another rm may have just changed it."""
        ...

    async def refresh_table(self, name: str, since: float) -> None:
        """Re-read one table's keys (table and ranges) from the store of record.

        ``since`` is the ``time.monotonic()`` at which the caller's request began: a re-read
        already in flight that started after it is joined instead of repeated. Raises
        ``Unavailable`` if the store cannot be read.
        """
        ...


class _Notifier:
    """Wakes waiters whenever the view changes."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (synchronously) each time the view changes."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for fn in self._listeners:
            fn()

    async def wait_changed(self, timeout_s: float) -> bool:
        if timeout_s <= 0:
            return False
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_revision(self, revision: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.view.revision < revision:  # type: ignore[attr-defined]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await self.wait_changed(remaining)
        return True


class StaticViewSource(_Notifier):
    """A view built by hand. ``backing`` stands for etcd: ``refresh_table`` copies one table
    (and its ranges) from it into the served view, as a direct etcd read would."""

    def __init__(self, view: ClusterView, backing: ClusterView | None = None) -> None:
        super().__init__()
        self._view = view
        self.backing = backing
        self.refreshes = 0

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def ready(self) -> bool:
        return True

    async def catch_up(self, timeout_s: float) -> bool:
        return True  # built by hand: nothing is committed that it does not show

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def changed(self) -> None:
        """Call after mutating ``view`` in place so that waiters look again."""
        self._notify()

    def set_view(self, view: ClusterView) -> None:
        self._view = view
        self._notify()

    async def refresh_table(self, name: str, since: float) -> None:
        self.refreshes += 1
        if self.backing is None:
            return
        table = self.backing.tables.get(name)
        if table is None:
            self._view.tables.pop(name, None)
        else:
            self._view.tables[name] = table
            if table.id in self.backing.ranges:
                self._view.ranges[table.id] = list(self.backing.ranges[table.id])
        self._notify()


class EtcdKV(Protocol):
    key: bytes
    value: bytes
    mod_revision: int


class EtcdEvent(Protocol):
    type: str
    kv: EtcdKV


class EtcdLike(Protocol):
    """The part of ``rangekv.metadata.etcd.EtcdClient`` the rm uses."""

    async def get_prefix(self, prefix: bytes) -> tuple[list[Any], int]: ...

    def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Any]]: ...

    async def close(self) -> None: ...


class EtcdViewSource(_Notifier):
    """Loads ``/rangekv/`` from etcd and follows it with a watch; reloads when the watch is lost.

    A direct re-read of one table (``refresh_table``) may put keys in the view at a revision the
    watch has not reached yet; ``_ahead`` remembers those keys with that revision so that the
    watch's older events for them are skipped until the watch catches up. ``view.revision`` is
    only ever advanced by the watch (or a reload), so ``wait_revision`` means "the watch got
    there".
    """

    def __init__(
        self,
        client: EtcdLike,
        metrics: Metrics | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        self._client = client
        self._metrics = metrics
        self._sleep = sleep
        self._rand = rand
        self._view = ClusterView()
        self._ready = False
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._ahead: dict[bytes, int] = {}
        self._refreshing: dict[str, tuple[float, asyncio.Task[None]]] = {}
        self._refresh_slots = asyncio.Semaphore(REFRESH_CONCURRENCY_MAX)

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def ready(self) -> bool:
        return self._ready

    async def catch_up(self, timeout_s: float) -> bool:
        try:
            _, revision = await asyncio.wait_for(self._client.get_prefix(PROBE_PREFIX), timeout_s)
        except TimeoutError:
            return False
        return await self.wait_revision(revision, timeout_s)

    async def start(self) -> None:
        assert self._task is None, "started twice"
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._probe_task = loop.create_task(self._probe())

    async def close(self) -> None:
        task, self._task = self._task, None
        probe, self._probe_task = self._probe_task, None
        self._ready = False
        for _, t in list(self._refreshing.values()):
            t.cancel()
        for t in (probe, task):
            if t is not None:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass

    async def _probe(self) -> None:
        """While ready, check every ``PROBE_INTERVAL_S`` that etcd answers a linearizable read
        within ``PROBE_TIMEOUT_S``; if it does not, stop being ready and reload (see the module
        docstring)."""
        while True:
            await self._sleep(PROBE_INTERVAL_S)
            if not self._ready:
                continue  # the run loop is reloading: its own failures say enough
            try:
                await asyncio.wait_for(self._client.get_prefix(PROBE_PREFIX), PROBE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._ready or self._task is None:
                    continue
                reason = "no answer" if isinstance(exc, TimeoutError) else str(exc)
                log.warning("etcd did not answer a probe within %.1f s (%s); the routing map "
                            "may be stale: not ready until it is reloaded",
                            PROBE_TIMEOUT_S, reason[:200])
                if self._metrics is not None:
                    self._metrics.probe_failures += 1
                self._ready = False
                self._notify()
                old, self._task = self._task, asyncio.get_running_loop().create_task(self._run())
                old.cancel()

    async def _load(self) -> int:
        kvs, revision = await self._client.get_prefix(model.PREFIX)
        view = ClusterView(revision=revision)
        for kv in kvs:
            try:
                view.apply(kv.key, kv.value)
            except Exception as exc:  # one bad metadata value must not stop routing
                log.error("skipping undecodable metadata key %r: %r", kv.key, exc)
        self._view = view
        self._ahead.clear()
        if self._metrics is not None:
            self._metrics.view_reloads += 1
        self._notify()
        log.info(
            "view loaded at revision %d: %d tables, %d groups, %d nodes",
            revision,
            len(view.tables),
            len(view.groups),
            len(view.nodes),
        )
        return revision

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                revision = await self._load()
                watch = self._client.watch_prefix(model.PREFIX, revision + 1)
                self._ready = True
                try:
                    async for events in watch:
                        self._apply_events(events)
                        attempt = 0
                finally:
                    aclose = getattr(watch, "aclose", None)  # release the stream at once
                    if aclose is not None:
                        await aclose()
                log.warning("metadata watch ended; reloading")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # WatchLost, etcd down, compaction: all mean "reload"
                log.warning("metadata watch lost (%s: %s); reloading", type(exc).__name__, exc)
            self._ready = False
            delay = min(RELOAD_BACKOFF_S_MAX, RELOAD_BACKOFF_S_MIN * 2 ** min(attempt, 16))
            attempt += 1
            await self._sleep(delay / 2 + self._rand() * delay / 2)

    def _apply_events(self, events: list[Any]) -> None:
        view = self._view
        if not events:
            return
        batch_revision = max(int(ev.kv.mod_revision or 0) for ev in events)
        for ev in events:
            key = bytes(ev.kv.key)
            revision = int(ev.kv.mod_revision or 0) or batch_revision
            ahead = self._ahead.get(key)
            if ahead is not None and revision <= ahead:
                continue  # a direct re-read already showed this key at a later revision
            try:
                view.apply(key, None if ev.type == "delete" else bytes(ev.kv.value))
            except Exception as exc:  # one bad metadata value must not stop routing
                log.error("skipping undecodable metadata event for %r: %r", key, exc)
        if batch_revision > view.revision:
            view.revision = batch_revision
        if self._ahead:
            self._ahead = {k: r for k, r in self._ahead.items() if r > view.revision}
        if self._metrics is not None:
            self._metrics.watch_events += len(events)
        self._notify()

    async def refresh_table(self, name: str, since: float) -> None:
        current = self._refreshing.get(name)
        if current is not None and current[0] >= since and not current[1].done():
            await asyncio.shield(current[1])
            return
        task = asyncio.get_running_loop().create_task(self._refresh(name))
        entry = (time.monotonic(), task)
        self._refreshing[name] = entry

        def forget(done: asyncio.Task[None]) -> None:
            if self._refreshing.get(name) is entry:
                del self._refreshing[name]
            if not done.cancelled():
                done.exception()  # retrieved: every waiter has (or had) its own copy

        task.add_done_callback(forget)
        await asyncio.shield(task)

    async def _refresh(self, name: str) -> None:
        async with self._refresh_slots:
            try:
                tkey = model.table_key(name)
                kvs, revision = await self._client.get_prefix(tkey)
                table_kv = next((kv for kv in kvs if bytes(kv.key) == tkey), None)
                read: dict[bytes, Any] = {}
                table_id = None
                if table_kv is not None:
                    table_id = model.Table.load(bytes(table_kv.value)).id
                    read[tkey] = table_kv
                    prefix = model.RANGES + f"{table_id:08x}/".encode()
                    range_kvs, revision2 = await self._client.get_prefix(prefix)
                    revision = min(revision, revision2)
                    for kv in range_kvs:
                        read[bytes(kv.key)] = kv
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise errors.Unavailable(
                    f"cannot read table {name!r} from etcd: {type(exc).__name__}: {exc}"
                ) from None
        self._merge_read(name, table_id, read, revision)

    def _merge_read(
        self, name: str, table_id: int | None, read: dict[bytes, Any], revision: int
    ) -> None:
        """Put what a direct read saw into the view, key by key, unless the view is newer."""
        view = self._view
        keys = {model.table_key(name)}
        if table_id is not None:
            keys.update(model.range_key(table_id, r.start) for r in view.ranges.get(table_id, []))
        keys.update(read)
        changed = False
        for key in keys:
            known = self._ahead.get(key, view.revision)
            kv = read.get(key)
            at = int(kv.mod_revision) if kv is not None else revision
            if at <= known:
                continue
            try:
                view.apply(key, None if kv is None else bytes(kv.value))
            except Exception as exc:  # one bad metadata value must not stop routing
                log.error("skipping undecodable metadata key %r: %r", key, exc)
                continue
            self._ahead[key] = at
            changed = True
        if changed:
            self._notify()


# ---------------------------------------------------------------------------------------------
# Connections


class ConnectionPool:
    """One multiplexed ``wire.Connection`` per address, created on first use."""

    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._conns: dict[str, wire.Connection] = {}
        self._connect_timeout_s = connect_timeout_s

    def get(self, address: str) -> wire.Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = wire.Connection(address, self._connect_timeout_s)
        return conn

    def peek(self, address: str) -> wire.Connection | None:
        """The connection to ``address`` if one was made, without making one."""
        return self._conns.get(address)

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()


# ---------------------------------------------------------------------------------------------
# The router


@dataclass(frozen=True)
class ListPage:
    """A page of a listing as the nodes sent it: ``parts`` are ``wire.pack_elements``
    encodings of ``(key, value, seq)`` items, in key order, ``count`` of them in all. The
    native protocol passes them on joined, undecoded; ``items`` decodes them (HTTP)."""

    table_id: int
    parts: list[bytes]
    count: int
    next: Cursor | None  # where the next page starts; None when the listing is complete

    @property
    def items(self) -> list[tuple[bytes, bytes, bytes]]:
        if not self.count:
            return []
        return _items(wire.unpack_elements(b"".join(self.parts), self.count))


@dataclass(frozen=True, slots=True)
class _Piece:
    """One node's answer to a list, checked: its items packed, how many, the last key, the
    highest seq, their keys' and values' bytes, and whether the range has more."""

    packed: bytes
    n: int
    last: bytes | None
    top: bytes
    nbytes: int
    more: bool


def _piece(reply: dict[str, Any], lower: bytes, end: bytes | None, limit: int) -> _Piece:
    """A node's list answer, packed (``wire.packed_page``) or as ``items`` (a
    moving range's merged page, or a node that does not pack), checked enough to page on:
    what is in the packed items the client checks when it decodes them."""
    more = bool(reply.get("more"))
    if "packed" not in reply:  # (items checked by ``_items``; a merged page may pass limit)
        page = wire.packed_page(_items(reply.get("items") or ()), more)
        return _Piece(page["packed"], page["n"], page["last"], page["top"], page["nbytes"], more)
    packed, n, last, nbytes = reply["packed"], reply.get("n"), reply.get("last"), \
        reply.get("nbytes")
    if (not isinstance(packed, bytes) or type(n) is not int or not 0 <= n <= limit
            or type(nbytes) is not int or nbytes < 0
            or (last is None) != (n == 0) or (last is not None and not isinstance(last, bytes))):
        raise errors.ProtocolError("a node answered a list with a malformed packed page")
    if last is not None and (last < lower or (end is not None and last >= end)):
        raise errors.ProtocolError("a node answered a list with a key outside the span asked")
    return _Piece(packed, n, last, _seq(reply.get("top")), nbytes, more)


class _MoveDone(Exception):
    """The range is no longer being copied: its target alone has every version."""


class _Attempt:
    """Retry state of one request: its deadline, backoff count and whether the one-off
    recoveries (following a hint at once, re-reading the table) were used."""

    __slots__ = ("deadline", "n", "refreshed", "hint_followed", "override", "since", "last",
                 "ranges_reread", "maybe_applied")

    def __init__(self, now: float, deadline_s: float) -> None:
        self.since = now
        self.deadline = now + deadline_s
        self.n = 0
        self.refreshed = False
        self.hint_followed = False
        self.override: str | None = None
        self.last: errors.RangeKVError | None = None
        self.ranges_reread = False
        self.maybe_applied = False  # a write of a session sent, its outcome unknown


class Router:
    """Sends node ops to group leaders and table ops to the active meta."""

    def __init__(
        self,
        source: ViewSource,
        rm_id: int,
        *,
        pool: ConnectionPool | None = None,
        stats: RouterStats | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        meta_deadline_s: float = META_DEADLINE_S,
        max_clock_offset_ms: int = sequencer.SEQ_AHEAD_MS_MAX,
        coalesce: bool = True,
    ) -> None:
        self.source = source
        self.rm_id = rm_id
        self.sequencer = sequencer.Sequencer(rm_id, clock_ns, max_clock_offset_ms)
        # monotonic time until which this rm's clock is known to be ahead (see clock_sound)
        self._clock_offset_until = 0.0
        self.pool = pool if pool is not None else ConnectionPool()
        self.stats = stats if stats is not None else RouterStats()
        self._monotonic = monotonic
        self._rand = rand
        self.request_deadline_s = request_deadline_s
        self.meta_deadline_s = meta_deadline_s
        # group id -> (leader address, epoch) learned from not_leader hints newer than the view
        self._hints: dict[int, tuple[str, int]] = {}
        # group id -> (epoch, leader address) as of the last view change (see _leaders_changed)
        self._leaders: dict[int, tuple[int, str | None]] = {}
        # single-key operations to the same leader travel together (``coalesce``)
        self.coalescer: Coalescer | None = Coalescer(self) if coalesce else None
        self._leaders_changed()
        source.add_listener(self._leaders_changed)

    def _leaders_changed(self) -> None:
        """On a view change: a group whose epoch moved on has a new leader (or none), and the
        requests still waiting on its old one would wait for an answer that may never come (a
        deposed leader cut off by a partition answers nothing until TCP gives up). End them
        now: a read is retried at the new leader; a write answers ``outcome_unknown`` at once
        instead of seconds later (it was that already: the old leader may have replicated it)."""
        view = self.source.view
        for gid, group in view.groups.items():
            now = (group.epoch, view.leader_address(gid))
            before = self._leaders.get(gid)
            self._leaders[gid] = now
            if before is None or before[0] >= now[0] or before[1] in (None, now[1]):
                continue
            conn = self.pool.peek(before[1])
            if conn is not None:
                n = conn.fail_tagged(gid, errors.OutcomeUnknown(
                    f"group {gid} moved to epoch {now[0]} while this request waited on its old "
                    f"leader at {before[1]}", address=before[1]))
                if n:
                    self.stats.retry("leader_moved")
                    log.info("group %d: epoch %d -> %d; ended %d request(s) waiting on %s",
                             gid, before[0], now[0], n, before[1])

    async def close(self) -> None:
        await self.pool.close()

    # -- public operations -------------------------------------------------------------------

    async def _caught_up(self) -> None:
        """Another rm may have just created, dropped, split or moved: a listing answered from
        this rm's view first catches up with etcd (one read of its revision)."""
        if not await self.source.catch_up(TABLE_VISIBLE_TIMEOUT_S):
            raise errors.Unavailable("the routing map could not catch up with the metadata "
                                     "store; retry")

    async def tables(self) -> list[Table]:
        """The active tables, as of now."""
        await self._caught_up()
        view = self.source.view
        return sorted(
            (t for t in view.tables.values() if t.state == model.TABLE_ACTIVE),
            key=lambda t: t.name,
        )

    async def put(self, table: str, key: bytes, value: bytes, if_seq: bytes | None,
                  session: Session | None = None) -> bytes:
        if self.coalescer is not None:
            reply, session = await self._coalesced(
                self.coalescer.write(table, "put", key, value, if_seq, session), session)
            if reply is not None:
                return _seq(reply.get("seq"))
        # a conditional put into a moving range needs the source's version of the key
        fields = {"key": key, "value": value, "if_seq": if_seq}
        if session is not None:
            fields.update(session.fields())
        reply = await self._data_op("put", table, key, write=True, fields=fields,
                                    needs_base=if_seq is not None)
        seq = _seq(reply.get("seq"))
        self._observe(seq)
        return seq

    async def get(self, table: str, key: bytes) -> GetResult:
        """The live version of ``key``. While its range is being copied to another group, the
        target's record (written there, or already copied) is the newest; without one, the
        source's (final since its fence) is."""
        if self.coalescer is not None:
            try:
                got = await self.coalescer.get(table, key)
            except SendAlone:
                got = None
            if got is not None:
                return got
        st = _Attempt(self._monotonic(), self.request_deadline_s)
        fields = {"key": key, "versions": True}
        while True:
            reply, rng = await self._route("get", table, key, fields, write=False, st=st)
            if reply.get("found") or rng.copying_from is None:
                break
            source = await self._source_get(st, table, key)
            if source is not None:
                reply = source
                break
            # else the copy finished meanwhile: the target now has everything
        if not reply.get("found") or reply.get("tombstone"):
            return GetResult(False, b"", sequencer.ZERO)
        seq = _seq(reply.get("seq"))
        self._observe(seq)
        return GetResult(True, bytes(reply.get("value") or b""), seq)

    async def delete(self, table: str, key: bytes, if_seq: bytes | None,
                     session: Session | None = None) -> bytes | None:
        """The tombstone's seq, or None if there was nothing to delete."""
        if self.coalescer is not None:
            reply, session = await self._coalesced(
                self.coalescer.write(table, "delete", key, b"", if_seq, session), session)
            if reply is not None:
                return _seq(reply.get("seq")) if reply.get("deleted") else None
        fields = {"key": key, "if_seq": if_seq}
        if session is not None:
            fields.update(session.fields())
        reply = await self._data_op("delete", table, key, write=True, fields=fields,
                                    needs_base=True)
        seq = _seq(reply.get("seq") or sequencer.ZERO)
        if not reply.get("deleted"):
            return None
        self._observe(seq)
        return seq

    async def _coalesced(self, pending: Awaitable[Any], session: Session | None
                         ) -> tuple[dict[str, Any] | None, Session | None]:
        """A coalesced write's reply, or (None, the session to send it alone with: marked
        retry if its frame's outcome is unknown)."""
        try:
            return await pending, session
        except SendAlone as alone:
            if alone.retry and session is not None and not session.retry:
                session = dataclasses.replace(session, retry=True)
            return None, session

    def _nested(self, st: _Attempt) -> _Attempt:
        """A sub-request's retry state, within what remains of the request's deadline."""
        now = self._monotonic()
        return _Attempt(now, max(0.0, st.deadline - now))

    async def _source_get(self, st: _Attempt, table: str, key: bytes) -> dict[str, Any] | None:
        """The record of ``key`` (tombstones included) on the group its range is being copied
        from; None once the map shows the copy finished."""
        try:
            reply, _ = await self._route("get", table, key, {"key": key, "versions": True},
                                         write=False, st=self._nested(st), to_source=True)
        except _MoveDone:
            return None
        return reply

    async def _source_version(self, st: _Attempt, table: str, key: bytes,
                              rng: Range) -> dict[str, Any]:
        """``{"base": version}``: the source's record of ``key`` while ``rng`` is being
        copied (nothing once the copy is done)."""
        reply = None if rng.copying_from is None else await self._source_get(st, table, key)
        if reply is None:
            return {}
        if not reply.get("found"):
            return {"base": None}
        return {"base": [_seq(reply.get("seq")), bool(reply.get("tombstone")),
                         bytes(reply.get("value") or b"")]}

    async def list(
        self,
        table: str,
        start: bytes,
        end: bytes | None,
        cursor: Cursor | None,
        limit: int,
    ) -> ListPage:
        """One page of keys in ``[start, end)``, resuming at ``cursor`` (whose end applies)."""
        assert 1 <= limit <= limits.LIST_LIMIT_MAX, limit
        after: bytes | None = None
        if cursor is not None:
            end = cursor.end
            if cursor.after is not None:
                after = cursor.after
            else:
                assert cursor.start is not None
                start = max(start, cursor.start)
        st = _Attempt(self._monotonic(), self.request_deadline_s)
        t = await self._resolve(st, table)
        if cursor is not None and cursor.table_id != t.id:
            raise errors.InvalidArgument(
                "the cursor belongs to another table (was it dropped and re-created?)",
                field="after",
            )
        parts: list[bytes] = []
        count = page_bytes = 0
        for _ in range(LIST_RANGES_PER_PAGE_MAX):
            lower = start if after is None or after < start else after + b"\x00"
            if end is not None and lower >= end:
                return ListPage(t.id, parts, count, None)
            fields = {"start": start, "end": end, "after": after, "limit": limit - count,
                      "packed": True}
            reply, rng = await self._list_range(st, table, t.id, lower, fields)
            got = _piece(reply, lower, end, limit - count)
            if got.more and not got.n:
                raise errors.ProtocolError("a node answered a list with more=true and no items")
            if got.n:
                parts.append(got.packed)
                count += got.n
                after = got.last
                self._observe(got.top)
                page_bytes += got.nbytes
            last_range = rng.end is None or (end is not None and rng.end >= end)
            if got.more or count >= limit or page_bytes >= limits.LIST_BYTES_MAX:
                if (not got.more and last_range) or after is None:
                    return ListPage(t.id, parts, count, None)
                return ListPage(t.id, parts, count, Cursor(t.id, after, end))
            if last_range:
                return ListPage(t.id, parts, count, None)
            # This range is exhausted: continue at the next one, from its first key.
            if rng.end is None or (after is not None and after >= rng.end):
                raise errors.ProtocolError("a node answered a list with a key past its range")
            start, after = rng.end, None
        # Many empty ranges in a row: resume where this page stopped.
        if after is not None:
            return ListPage(t.id, parts, count, Cursor(t.id, after, end))
        return ListPage(t.id, parts, count, Cursor(t.id, None, end, start))

    async def _list_range(self, st: _Attempt, table: str, table_id: int, lower: bytes,
                          fields: dict[str, Any]) -> tuple[dict[str, Any], Range]:
        """One node-shaped list answer (``items``, ``more``) for the range holding ``lower``.
        While that range is being copied, both groups are read with tombstones and merged,
        the higher seq winning per key, up to the first point where either answer stops."""
        rng = self.source.view.range_for(table_id, lower)
        if rng is None or rng.copying_from is None:
            # (if a copy has begun meanwhile, the target refuses: range_not_here, re-read)
            return await self._route("list", table, lower, fields, write=False,
                                     table_id=table_id, clip=True, st=st)
        after = fields["after"]
        for _ in range(LIST_MOVING_ROUNDS_MAX):
            asked = dict(fields, after=after, versions=True)
            reply, rng = await self._route("list", table, lower, asked, write=False,
                                           table_id=table_id, clip=True, st=st)
            newest = {bytes(k): (bytes(v), _seq(s), bool(tomb))
                      for k, v, s, tomb in reply.get("items") or ()}
            bound = bytes(reply["items"][-1][0]) if reply.get("more") else None
            if rng.copying_from is not None:
                try:
                    old, _ = await self._route("list", table, lower, asked, write=False,
                                               table_id=table_id, clip=True,
                                               st=self._nested(st), to_source=True)
                except _MoveDone:
                    continue  # the copy finished meanwhile: the target alone is complete
                if old.get("more"):
                    last = bytes(old["items"][-1][0])
                    bound = last if bound is None else min(bound, last)
                for k, v, s, tomb in old.get("items") or ():
                    key, version = bytes(k), (bytes(v), _seq(s), bool(tomb))
                    if key not in newest or newest[key][1] < version[1]:
                        newest[key] = version
            live = [(k, v, s) for k, (v, s, tomb) in sorted(newest.items())
                    if not tomb and (bound is None or k <= bound)]
            if live or bound is None:
                return {"items": live, "more": bound is not None}, rng
            after = bound  # only tombstones so far: read on
        raise errors.Unavailable("too many deleted keys in a row in a range being moved; "
                                 "retry (the listing resumes where it stopped)")

    async def create_table(self, name: str) -> Table:
        limits.check_table_name(name)
        reply = await self._meta_op("create_table", name=name)
        info = reply.get("table") or {}
        table = Table(int(info["id"]), str(info.get("name", name)), str(info.get("state", "")))
        await self._await_table_change(name, int(reply.get("revision", 0)), present=True)
        return table

    async def drop_table(self, name: str) -> None:
        limits.check_table_name(name)
        reply = await self._meta_op("drop_table", name=name)
        await self._await_table_change(name, int(reply.get("revision", 0)), present=False)

    async def current_ranges(self, name: str) -> tuple[Table, list[Range]]:
        """The table's ranges in key order, as of now."""
        limits.check_table_name(name)
        await self._caught_up()
        return self.ranges(name)

    def ranges(self, name: str) -> tuple[Table, list[Range]]:
        """The table's ranges in key order, as this rm's map has them."""
        limits.check_table_name(name)
        view = self.source.view
        table = view.table(name)
        if table is None:
            raise errors.TableNotFound(f"no table named {name!r}", table=name)
        return table, list(view.ranges.get(table.id, []))

    async def split(self, name: str, at: bytes, to: int | str | None = None) -> list[Range]:
        """Cut the range of ``name`` holding ``at`` in two (both on its group, unless ``to``
        names a group, or "auto", for the upper part to move to); the table's ranges
        afterwards, once this rm's map shows them."""
        limits.check_table_name(name)
        if not at:
            raise errors.InvalidArgument("cannot split at the empty key: every table's first "
                                         "range starts there", field="at")
        limits.check_key(at)
        reply = await self._meta_op("split_range", name=name, at=at, to=to)
        return await self._ranges_after(name, reply)

    async def move(self, name: str, at: bytes, to: int) -> tuple[list[Range], bool]:
        """Move the range of ``name`` holding ``at`` to group ``to``; the table's ranges once
        this rm's map shows the answer, and whether the move is done (else it goes on)."""
        limits.check_table_name(name)
        limits.check_key(at)
        reply = await self._meta_op("move_range", name=name, at=at, to=to)
        return await self._ranges_after(name, reply), bool(reply.get("done"))

    async def remove_node(self, node_id: int) -> dict[str, Any]:
        """Remove the record of a dead or flagged node in no group (the meta decides: see
        ``plan_node_removal``): ``{"node": the record removed, "live": bool}``, once this rm's
        map no longer shows it."""
        reply = await self._meta_op("remove_node", node_id=node_id)
        revision = int(reply.get("revision", 0))
        if revision > 0:
            await self.source.wait_revision(revision, TABLE_VISIBLE_TIMEOUT_S)
        return {"node": reply.get("node"), "live": bool(reply.get("live"))}

    async def _ranges_after(self, name: str, reply: dict[str, Any]) -> list[Range]:
        """The table's ranges once this rm's map shows the revision a meta op answered with
        (re-read from etcd if the watch is slow to bring it)."""
        revision = int(reply.get("revision", 0))
        if revision > 0 and not await self.source.wait_revision(revision,
                                                                TABLE_VISIBLE_TIMEOUT_S):
            self.stats.refreshes += 1
            await self.source.refresh_table(name, self._monotonic())
        return self.ranges(name)[1]

    # -- data ops ----------------------------------------------------------------------------

    async def _data_op(
        self, op: str, table: str, key: bytes, *, write: bool, fields: dict[str, Any],
        needs_base: bool = False,
    ) -> dict[str, Any]:
        st = _Attempt(self._monotonic(), self.request_deadline_s)
        st.maybe_applied = bool(fields.get("retry"))  # an earlier attempt's outcome is unknown

        async def base(rng: Range) -> dict[str, Any]:
            return await self._source_version(st, table, key, rng)

        try:
            reply, _ = await self._route(op, table, key, fields, write=write, st=st,
                                         prepare=base if needs_base else None)
        except errors.Unavailable as err:
            if not st.maybe_applied:
                raise
            # an earlier attempt may have been applied: "nothing happened" would be a lie
            self.stats.outcome_unknown += 1
            raise errors.OutcomeUnknown(
                f"{op} may or may not have taken effect (retried until: {err.message})"
            ) from None
        return reply

    async def _resolve(self, st: _Attempt, table: str) -> Table:
        """The active table named ``table``; re-reads it from etcd once before a 404."""
        while True:
            t = self.source.view.table(table)
            if t is not None:
                return t
            if not self.source.ready:
                await self._backoff(st, errors.Unavailable("routing map not loaded yet"))
                continue
            await self._refresh_once(st, table)

    async def _route(
        self,
        op: str,
        table: str,
        key: bytes,
        fields: dict[str, Any],
        *,
        write: bool,
        table_id: int | None = None,
        clip: bool = False,
        st: _Attempt | None = None,
        to_source: bool = False,
        prepare: Callable[[Range], Awaitable[dict[str, Any]]] | None = None,
    ) -> tuple[dict[str, Any], Range]:
        """Send ``op`` for ``key`` to the leader of its range's group, retrying as the module
        docstring says. ``table_id`` pins the table (a list page must not switch to a table
        re-created under the same name); ``clip`` clips ``start``/``end`` to the range.

        ``to_source``: send to the group the range is being copied from instead (raises
        ``_MoveDone`` once the map shows the copy finished). ``prepare(range)`` adds fields
        to each attempt (the source's version of a key, for a write into a moving range).
        Every request carries the range's version it was routed by (``rv``)."""
        if st is None:
            st = _Attempt(self._monotonic(), self.request_deadline_s)
        while True:
            t = await self._resolve(st, table)
            if table_id is not None and t.id != table_id:
                raise errors.TableNotFound(f"table {table!r} was dropped", table=table)
            view = self.source.view
            rng = view.range_for(t.id, key)
            if rng is None:
                if not st.refreshed:
                    await self._refresh_once(st, table)
                    continue
                await self._backoff(st, errors.Unavailable(f"no range of {table!r} holds the key"))
                continue
            group = rng.group
            if to_source:
                if rng.copying_from is None:
                    raise _MoveDone
                group = rng.copying_from
            address = st.override or self._leader_address(view, group)
            st.override = None
            if address is None:
                await self._backoff(
                    st, errors.Unavailable(f"no leader known for group {group}")
                )
                continue
            send = dict(fields)
            send["rv"] = rng.version
            if to_source:
                send["as_source"] = True  # (a fenced source serves only such reads)
            if clip:
                send["start"] = max(fields["start"], rng.start)
                send["end"] = _min_end(fields["end"], rng.end)
            if prepare is not None:
                send.update(await prepare(rng))
            if write:
                send["seq"] = self.sequencer.next()
                if st.maybe_applied:
                    send["retry"] = True
            timeout_s = st.deadline - self._monotonic()
            if not write:
                timeout_s = min(timeout_s, READ_ATTEMPT_TIMEOUT_S_MAX)
            if timeout_s <= 0:
                raise _exhausted(st)
            try:
                reply = await self.pool.get(address).request(
                    op, timeout_s=timeout_s, tag=group, table_id=t.id, **send
                )
                return reply, rng
            except errors.NotLeader as err:
                self._on_not_leader(st, view, group, address, err)
                if st.override is not None and not st.hint_followed:
                    st.hint_followed = True
                    self.stats.hints_followed += 1
                    self.stats.retry("not_leader")
                    continue
                await self._backoff(st, err)
            except errors.RangeNotHere as err:
                # the map is stale (a split or a move): re-read the table's ranges once at
                # once, then wait for the watch (bounded by the deadline); nothing was applied
                self.stats.retry("range_not_here")
                if not st.ranges_reread:
                    st.ranges_reread = True
                    self.stats.refreshes += 1
                    await self.source.refresh_table(table, self._monotonic())
                    continue
                await self._backoff(st, err)
            except errors.TableNotFound:
                await self._refresh_once(st, table)
            except (errors.OutcomeUnknown, errors.ProtocolError) as err:  # incl. Timeout
                if write and "client" in fields and err.code != SESSION_EXPIRED:
                    # the group keeps this write's result: resend it, marked as a retry (an
                    # rm giving up from here on answers outcome_unknown: see _data_op)
                    st.maybe_applied = True
                    await self._backoff(st, err)
                    continue
                if write:
                    self.stats.outcome_unknown += 1
                    raise errors.OutcomeUnknown(
                        f"{op} may or may not have taken effect: {err.message}"
                    ) from None
                await self._backoff(st, errors.Unavailable(err.message))
            except errors.ClockOffset as err:
                # Our clock is ahead of the leader's by more than the maximum offset: every
                # seq we propose would be refused. Nothing was written; step aside (health)
                # and send the client to another rm at once.
                raise self._clock_offset(address, err) from None
            except errors.Unavailable as err:
                hint = self._hints.get(group)
                if hint is not None and hint[0] == address:
                    del self._hints[group]  # the hinted leader is unreachable: trust the view
                await self._backoff(st, err)
            except errors.PreconditionFailed as err:
                cur = err.details.get("current_seq")
                if isinstance(cur, (bytes, bytearray)):
                    err.details["current_seq"] = bytes(cur).hex() if any(cur) else None
                raise

    def clock_sound(self) -> bool:
        """False for a while after a leader refused a seq of ours as too far ahead of its
        clock (``/healthz`` then answers 503)."""
        return self._monotonic() >= self._clock_offset_until

    def _clock_offset(self, address: str, err: errors.ClockOffset) -> errors.ClockOffset:
        self.stats.clock_offsets += 1
        if self.clock_sound():
            log.warning("the leader at %s refused a write: %s; this rm reports itself "
                        "unhealthy for %g s (check this machine's clock)", address,
                        err.message, CLOCK_OFFSET_UNHEALTHY_S)
        self._clock_offset_until = self._monotonic() + CLOCK_OFFSET_UNHEALTHY_S
        return errors.ClockOffset(
            f"this request manager's clock is ahead of the group's leader ({err.message}); "
            "nothing was written: retry through another request manager",
            retry_elsewhere=True, ahead_ms=err.details.get("ahead_ms"),
            max_offset_ms=err.details.get("max_offset_ms"))

    def _observe(self, seq: bytes) -> None:
        """Keep our seqs above one a node answered, unless it is too far in the future."""
        if not self.sequencer.observe(seq):
            self.stats.seqs_ignored += 1

    def _leader_address(self, view: ClusterView, group_id: int) -> str | None:
        hint = self._hints.get(group_id)
        if hint is not None:
            group = view.groups.get(group_id)
            if group is not None and hint[1] > group.epoch:
                return hint[0]
            del self._hints[group_id]
        return view.leader_address(group_id)

    def _on_not_leader(
        self,
        st: _Attempt,
        view: ClusterView,
        group_id: int,
        address: str,
        err: errors.NotLeader,
    ) -> None:
        hint = err.leader_hint
        node = view.nodes.get(hint) if hint is not None else None
        if node is None or node.address == address:
            self._hints.pop(group_id, None)
            return
        st.override = node.address
        epoch = err.details.get("epoch")
        group = view.groups.get(group_id)
        if isinstance(epoch, int) and group is not None and epoch > group.epoch:
            self._hints[group_id] = (node.address, epoch)

    async def _refresh_once(self, st: _Attempt, table: str) -> None:
        if st.refreshed:
            raise errors.TableNotFound(f"no table named {table!r}", table=table)
        st.refreshed = True
        self.stats.refreshes += 1
        await self.source.refresh_table(table, st.since)

    async def _backoff(self, st: _Attempt, err: errors.RangeKVError) -> None:
        """Wait for the view to change or a jittered backoff; raise when the deadline is near."""
        st.last = err
        self.stats.retry(err.code)
        remaining = st.deadline - self._monotonic()
        if remaining <= 0:
            raise _exhausted(st)
        self._fail_if_cut_off(err)
        delay = min(remaining, backoff_s(st.n, self._rand))
        st.n += 1
        await self.source.wait_changed(delay)
        self._fail_if_cut_off(err)
        if self._monotonic() >= st.deadline:
            raise _exhausted(st)

    def _fail_if_cut_off(self, err: errors.RangeKVError) -> None:
        """A retry is due but this rm cannot follow the map: let the client go to another rm
        (nothing of this request took effect, or it would not be retried)."""
        if not self.source.ready:
            self.stats.retry("cut_off")
            raise errors.Unavailable(
                "this request manager cannot follow the routing map (etcd is out of reach or "
                f"it is still loading); retry through another one (last error: {err.message})",
                retry_elsewhere=True,
            )

    # -- meta ops ----------------------------------------------------------------------------

    async def _meta_op(self, op: str, **fields: Any) -> dict[str, Any]:
        st = _Attempt(self._monotonic(), self.meta_deadline_s)
        while True:
            active = self.source.view.active_meta or {}
            address = st.override or active.get("address")
            st.override = None
            if not address:
                await self._backoff(st, errors.Unavailable("no active metadata manager known"))
                continue
            timeout_s = st.deadline - self._monotonic()
            if timeout_s <= 0:
                raise _exhausted(st)
            try:
                return await self.pool.get(str(address)).request(op, timeout_s=timeout_s, **fields)
            except errors.NotActive as err:
                hint = err.details.get("active_hint")
                if isinstance(hint, dict):
                    hint = hint.get("address")
                if isinstance(hint, str) and hint and hint != address and not st.hint_followed:
                    st.hint_followed = True
                    st.override = hint
                    self.stats.hints_followed += 1
                    self.stats.retry("not_active")
                    continue
                await self._backoff(st, err)
            except (errors.OutcomeUnknown, errors.ProtocolError) as err:
                self.stats.outcome_unknown += 1
                raise errors.OutcomeUnknown(
                    f"{op} may or may not have taken effect: {err.message}"
                ) from None
            except errors.Unavailable as err:
                await self._backoff(st, err)

    async def _await_table_change(self, name: str, revision: int, *, present: bool) -> None:
        """Let this rm route the change at once: wait for the watch, else re-read the table."""
        if revision > 0 and await self.source.wait_revision(revision, TABLE_VISIBLE_TIMEOUT_S):
            return
        if (self.source.view.table(name) is not None) == present:
            return
        self.stats.refreshes += 1
        try:
            await self.source.refresh_table(name, self._monotonic())
        except errors.Unavailable as err:
            log.warning("table %r changed but cannot be re-read: %s", name, err.message)


def _items(raw: Any) -> list[tuple[bytes, bytes, bytes]]:
    """A node's list items as (key, value, seq), checked (the hot path of a list page: no
    copies of what msgpack already made ``bytes``)."""
    items = []
    for item in raw:
        k, v, s = item
        if type(k) is not bytes or type(v) is not bytes or type(s) is not bytes or (
                len(s) != sequencer.SEQ_BYTES):
            k, v, s = bytes(k), bytes(v), _seq(s)
        items.append((k, v, s))
    return items


_seq = check_seq


def _min_end(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _exhausted(st: _Attempt) -> errors.RangeKVError:
    """The 503 of a request that ran out of time retrying (internal hints are not passed on)."""
    last = st.last
    if last is None:
        return errors.Unavailable("no time left to retry")
    return errors.Unavailable(f"gave up retrying: {last.message}", cause=last.code)
