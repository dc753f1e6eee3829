"""etcd in memory: the same key-value semantics as a real etcd (``kv.py`` lists them), for tests
and the simulator. ``MemoryStore`` is the meta's typed store (``store.MetaStore``: every
compare-and-swap, the fencing, the decisions log) over it, so the typed operations are one
code for both; only the key-value engine differs, and the tests hold the two engines to the
same results (``tests/integration/test_meta_store.py``).

* ``MemoryKV`` is the engine, synchronous: a sorted keyspace with revisions, transactions,
  leases that end when the injected clock passes their deadline (checked at every call), and a
  bounded history of events for watches. A simulator drives it directly, in its own time.
* ``MemoryEtcd`` puts ``EtcdClient``'s calls over one ``MemoryKV`` (``kv.KVClient``), so that
  a ``MetaService`` can run against it, and several against one ``MemoryKV``; ``down`` makes
  every call fail as an unreachable etcd does. Its calls never wait except a watch for its next
  event, so ``run_now`` runs any other of them (and the store's) to completion without an event
  loop: ``run_now(store.set_group_leader(...))``.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

from rangekv import errors
from rangekv.metadata.kv import (
    KV,
    Compare,
    EtcdError,
    Event,
    LeaseExpired,
    Op,
    TxnResult,
    WatchCompacted,
    WatchLost,
    prefix_end,
)
from rangekv.metadata.store import MetaStore

T = TypeVar("T")

HISTORY_EVENTS_MAX = 100_000  # events kept for watches; older revisions are compacted away
LEASE_ID_FIRST = 0x694D_0000_0001  # lease ids look like etcd's (large), and differ from 0
TXN_OPS_MAX = 128  # etcd's --max-txn-ops default: compares, and ops of either branch


def _revision_of(event: Event) -> int:
    return event.kv.mod_revision


class MemoryKV:
    """An etcd keyspace in memory (see the module docstring). ``clock``: seconds, monotonic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 history_events_max: int = HISTORY_EVENTS_MAX) -> None:
        assert history_events_max > 0
        self.clock = clock
        self.revision = 1  # etcd starts at 1: a fresh cluster's first write is revision 2
        self.compacted = 0  # events of revisions up to this are gone
        self.history_events_max = history_events_max
        self._keys: list[bytes] = []  # sorted
        self._kvs: dict[bytes, KV] = {}
        self._events: list[Event] = []  # in revision order, since ``compacted``
        self._leases: dict[int, tuple[float, int]] = {}  # id -> (deadline s, ttl s)
        self._next_lease = LEASE_ID_FIRST
        self.changed: Callable[[], None] | None = None  # called after each new revision

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: bytes) -> KV | None:
        self._expire()
        return self._kvs.get(key)

    def range(self, key: bytes, end: bytes | None = None) -> list[KV]:
        """The key alone (``end`` None), or every key in ``[key, end)`` in key order (``end``
        ``b"\\0"``: to the end of the keyspace, as etcd's range_end)."""
        self._expire()
        if end is None:
            kv = self._kvs.get(key)
            return [] if kv is None else [kv]
        lo = bisect.bisect_left(self._keys, key)
        hi = len(self._keys) if end == b"\x00" else bisect.bisect_left(self._keys, end)
        return [self._kvs[k] for k in self._keys[lo:hi]]

    def get_prefix(self, prefix: bytes) -> tuple[list[KV], int]:
        return self.range(prefix, prefix_end(prefix)), self.revision

    def events_since(self, revision: int) -> list[Event]:
        """Every event of revision ``revision`` or later, in order; ``WatchCompacted`` if some
        of those revisions are no longer kept."""
        self._expire()
        if revision <= self.compacted:
            raise WatchCompacted(f"watch from revision {revision} is compacted (oldest is "
                                 f"{self.compacted + 1})", compact_revision=self.compacted + 1)
        at = bisect.bisect_left(self._events, revision, key=_revision_of)
        return self._events[at:]

    # -- writes -----------------------------------------------------------------------------

    def txn(self, compares: list[Compare], success: list[Op],
            failure: list[Op] | None = None) -> TxnResult:
        self._expire()
        if max(len(compares), len(success), len(failure or [])) > TXN_OPS_MAX:
            raise EtcdError("etcd /v3/kv/txn: etcdserver: too many operations in txn request")
        self._check_disjoint(success)  # both branches, before either runs, as etcd
        self._check_disjoint(failure or [])
        succeeded = all(c.holds(self._kvs.get(c.key)) for c in compares)
        ops = success if succeeded else (failure or [])
        for op in ops:
            if op.kind == "put" and op.lease and op.lease not in self._leases:
                raise LeaseExpired(f"etcd /v3/kv/txn: etcdserver: requested lease not found "
                                   f"({op.lease:x})")
        events: list[Event] = []
        responses: list[Any] = []
        rev = self.revision + 1
        for op in ops:
            if op.kind == "get":  # it sees this branch's writes before it, as in etcd
                responses.append(self.range(op.key, op.end))
            elif op.kind == "put":
                old = self._kvs.get(op.key)
                if old is None:
                    bisect.insort(self._keys, op.key)
                    kv = KV(op.key, op.value, rev, rev, 1, op.lease)
                else:
                    kv = KV(op.key, op.value, old.create_revision, rev, old.version + 1,
                            op.lease)
                self._kvs[op.key] = kv
                events.append(Event("put", kv))
                responses.append(None)
            else:
                gone = [kv.key for kv in self.range(op.key, op.end)]
                for key in gone:
                    self._delete(key, rev, events)
                responses.append(len(gone))
        if events:
            self._commit(events)
        return TxnResult(succeeded, self.revision, responses)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return self.txn([], [Op.put(key, value, lease)]).revision

    def delete(self, key: bytes, prefix: bool = False) -> int:
        return self.txn([], [Op.delete(key, prefix)]).revision

    def compact(self, revision: int) -> None:
        """Forget the events of revisions below ``revision`` (watches from there fail)."""
        if revision > self.revision:
            raise EtcdError(f"etcd /v3/kv/compaction: etcdserver: mvcc: required revision is a "
                            f"future revision ({revision} > {self.revision})")
        self.compacted = max(self.compacted, revision - 1)
        at = bisect.bisect_right(self._events, self.compacted, key=_revision_of)
        del self._events[:at]

    # -- leases -----------------------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> int:
        assert ttl_s > 0, ttl_s
        self._expire()
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = (self.clock() + ttl_s, ttl_s)
        return lease_id

    def lease_keepalive(self, lease_id: int) -> int:
        self._expire()
        found = self._leases.get(lease_id)
        if found is None:
            raise LeaseExpired(f"lease {lease_id:x} has expired or was revoked")
        ttl_s = found[1]
        self._leases[lease_id] = (self.clock() + ttl_s, ttl_s)
        return ttl_s

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys (one revision); a lease gone is no error."""
        self._expire()
        if self._leases.pop(lease_id, None) is not None:
            self._drop_keys_of(lease_id)

    def leases(self) -> dict[int, float]:
        """Live lease id -> seconds left."""
        self._expire()
        now = self.clock()
        return {lease: deadline - now for lease, (deadline, _) in self._leases.items()}

    # -- inside -----------------------------------------------------------------------------

    def _check_disjoint(self, ops: list[Op]) -> None:
        """etcd refuses a branch that writes a key twice (two puts, or a put in a deleted
        range): ``duplicate key given in txn request``."""
        puts = [op.key for op in ops if op.kind == "put"]
        deleted = [(op.key, op.end) for op in ops if op.kind == "delete"]
        clash = len(set(puts)) != len(puts) or any(
            key == start if end is None else start <= key and (end == b"\x00" or key < end)
            for key in puts for start, end in deleted)
        if clash:
            raise EtcdError("etcd /v3/kv/txn: etcdserver: duplicate key given in txn request")

    def _delete(self, key: bytes, rev: int, events: list[Event]) -> None:
        del self._kvs[key]
        del self._keys[bisect.bisect_left(self._keys, key)]
        events.append(Event("delete", KV(key, b"", 0, rev, 0, 0)))

    def _commit(self, events: list[Event]) -> None:
        self.revision += 1
        assert all(e.kv.mod_revision == self.revision for e in events), events
        self._events.extend(events)
        if len(self._events) > self.history_events_max:
            self.compact(self._events[len(self._events) - self.history_events_max]
                         .kv.mod_revision)
        if self.changed is not None:
            self.changed()

    def _drop_keys_of(self, lease_id: int) -> None:
        keys = [k for k, kv in self._kvs.items() if kv.lease == lease_id]
        if keys:
            events: list[Event] = []
            for key in sorted(keys):
                self._delete(key, self.revision + 1, events)
            self._commit(events)

    def _expire(self) -> None:
        """Leases whose deadline has passed end now, each deleting its keys in a revision."""
        if not self._leases:
            return
        now = self.clock()
        for lease_id, (deadline, _) in sorted(self._leases.items()):
            if deadline <= now:
                del self._leases[lease_id]
                self._drop_keys_of(lease_id)


class MemoryEtcd:
    """``EtcdClient``'s calls over a ``MemoryKV`` (see the module docstring)."""

    def __init__(self, kv: MemoryKV | None = None) -> None:
        self.kv = kv if kv is not None else MemoryKV()
        self.down = False  # every call fails as when no endpoint answers
        self.closed = False
        self._wakeups: list[asyncio.Event] = []
        previous = self.kv.changed

        def changed() -> None:
            if previous is not None:
                previous()
            for event in self._wakeups:
                event.set()

        self.kv.changed = changed

    def _check(self, what: str) -> None:
        if self.closed:
            raise errors.Unavailable("etcd client is closed")
        if self.down:
            raise errors.Unavailable(f"no etcd endpoint answered {what}: etcd (in memory) is "
                                     "down", endpoints=["memory"])

    async def get(self, key: bytes) -> KV | None:
        self._check("/v3/kv/range")
        return self.kv.get(key)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KV], int]:
        self._check("/v3/kv/range")
        return self.kv.get_prefix(prefix)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        self._check("/v3/kv/put")
        return self.kv.put(key, value, lease)

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        self._check("/v3/kv/deleterange")
        return self.kv.delete(key, prefix)

    async def txn(self, compares: list[Compare], success: list[Op],
                  failure: list[Op] | None = None) -> TxnResult:
        self._check("/v3/kv/txn")
        return self.kv.txn(compares, success, failure)

    async def compact(self, revision: int) -> None:
        self._check("/v3/kv/compaction")
        self.kv.compact(revision)

    async def lease_grant(self, ttl_s: int) -> int:
        self._check("/v3/lease/grant")
        return self.kv.lease_grant(ttl_s)

    async def lease_keepalive(self, lease_id: int) -> int:
        self._check("/v3/lease/keepalive")
        return self.kv.lease_keepalive(lease_id)

    async def lease_revoke(self, lease_id: int) -> None:
        self._check("/v3/lease/revoke")
        self.kv.lease_revoke(lease_id)

    async def watch_prefix(self, prefix: bytes,
                           start_revision: int) -> AsyncGenerator[list[Event], None]:
        """Batches of the events under ``prefix`` from ``start_revision`` on, a revision at a
        time, as etcd's watch; ``WatchLost`` once ``down`` or closed."""
        assert start_revision > 0, start_revision
        self._check("/v3/watch")
        end = prefix_end(prefix)
        wakeup = asyncio.Event()
        self._wakeups.append(wakeup)
        next_rev = start_revision
        try:
            while True:
                wakeup.clear()
                if self.down or self.closed:
                    raise WatchLost("etcd closed the watch stream")
                batch: list[Event] = []
                for event in self.kv.events_since(next_rev):
                    if batch and event.kv.mod_revision != batch[-1].kv.mod_revision:
                        break
                    batch.append(event)
                if batch:
                    next_rev = batch[-1].kv.mod_revision + 1
                    mine = [e for e in batch if prefix <= e.kv.key < end]
                    if mine:
                        yield mine
                    continue
                await wakeup.wait()
        finally:
            self._wakeups.remove(wakeup)

    def wake_watches(self) -> None:
        """Let watches notice ``down`` (or a lease that ended with no call since)."""
        self.kv._expire()
        for event in self._wakeups:
            event.set()

    async def close(self) -> None:
        self.closed = True
        self.wake_watches()


class MemoryStore(MetaStore):
    """The meta's typed store over etcd in memory (``MemoryEtcd`` over ``kv``)."""

    def __init__(self, kv: MemoryKV | None = None) -> None:
        super().__init__(MemoryEtcd(kv))

    @property
    def kv(self) -> MemoryKV:
        etcd = self.etcd
        assert isinstance(etcd, MemoryEtcd)
        return etcd.kv


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (any call of ``MemoryEtcd`` but a watch, and so any
    of ``MemoryStore``) to its end, without an event loop; its result, or its exception."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError(f"{coro!r} waited: only calls that never wait run here")
