"""The load a chaos run applies, and the history it records.

Two workloads run side by side through the client endpoint (HAProxy's native port), with the
real :class:`rangekv.AsyncClient` (its native protocol, its retries and its exactly-once
writes included: what users run is what is tested):

* **register** (table ``chaos_reg``): independent keys, each worked on by several clients at
  once with get / put (a value never written before) / conditional put (``If-Match`` the last
  seq the client saw for the key: a compare-and-set) / delete, at most ``ops_per_key`` operations
  per key, then the key is retired and a fresh one takes its place. Every invocation and
  completion goes to the history with its monotonic time, in the JSON-lines format that
  ``rangekv check-history --model rangekv`` reads (:mod:`rangekv.check.main`).
* **set** (table ``chaos_set``): clients insert elements (keys never inserted before). At the end
  the whole table is listed: every acknowledged insert must be there, and nothing that was never
  attempted.

Most clients go through the load balancer; ``direct_clients`` of the register clients are each
pinned to one rm (round robin over ``direct_endpoints``), as Jepsen's clients each talk to one
node: a fault that leaves two rms with different views of a group (an rm cut off with a deposed
leader) then has clients on both sides working the same keys, which is where a stale read shows.
The first pinned client of each rm only reads: a client that also writes spends such a fault
waiting on a write that cannot commit, and reads nothing while a stale answer is possible.

Outcomes, by the client's error contract (:mod:`rangekv.errors`): an answer is ``ok``;
``precondition_failed`` is an ``ok`` cas that failed; ``unavailable`` (503: the request surely
did not take effect) and other 4xx are ``fail``; ``outcome_unknown`` / ``timeout`` (504), a
transport error after sending, or anything else is ``info`` — it may take effect at any time
after its call, or never. A client whose operation ended ``info`` continues as a new process id
(its old operation may still be in flight), as in Jepsen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rangekv import errors
from rangekv.client import AsyncClient

REG_TABLE = "chaos_reg"
SET_TABLE = "chaos_set"
OPS_PER_KEY_DEFAULT = 200
CLIENT_TIMEOUT_S = 10.0


class History:
    """Events in real-time order, written as JSON lines as they happen (so a crash of the
    harness still leaves what was recorded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.counts: dict[tuple[str, str], int] = {}  # (f, type) -> n
        self.events = 0

    def record(self, process: int, type_: str, f: str, key: str, **fields: Any) -> None:
        event = {"process": process, "type": type_, "f": f, "key": key,
                 "time": round(time.monotonic(), 6), **fields}
        self._fh.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.events += 1
        if type_ != "invoke":
            self.counts[(f, type_)] = self.counts.get((f, type_), 0) + 1

    def completed(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        self._fh.close()


@dataclass
class SetState:
    attempted: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)


def _outcome(err: BaseException) -> str:
    if isinstance(err, errors.OutcomeUnknown):
        return "info"
    if isinstance(err, errors.RangeKVError) and (
        isinstance(err, errors.Unavailable) or 400 <= err.status < 500
    ):
        return "fail"
    return "info"


class Workload:
    def __init__(
        self,
        endpoint: str,
        history: History,
        *,
        seed: int,
        clients: int = 10,
        set_clients: int = 2,
        ops_per_key: int = OPS_PER_KEY_DEFAULT,
        direct_endpoints: list[str] | None = None,
        direct_clients: int = 0,
    ) -> None:
        assert direct_clients <= clients and (direct_endpoints or not direct_clients)
        self.endpoint = endpoint
        self.direct_endpoints = list(direct_endpoints or [])
        self.direct_clients = direct_clients
        self.history = history
        self.rng = random.Random(seed)
        self.clients = clients
        self.set_clients = set_clients
        self.ops_per_key = ops_per_key
        self.active_keys = max(2, clients // 3)
        self._keys: list[str] = []
        self._key_ops: dict[str, int] = {}  # every key ever used, in order -> ops on it
        self._next_key = 0
        self._next_value = 0
        self._next_process = clients + set_clients
        self.seen_seq: dict[tuple[int, str], str] = {}  # (client, key) -> last seq it saw
        self.set = SetState()
        self._next_element = 0
        self.stop = asyncio.Event()

    # --- keys and values ----------------------------------------------------------------------

    @property
    def all_keys(self) -> list[str]:
        return list(self._key_ops)

    def _key(self) -> str:
        while len(self._keys) < self.active_keys:
            key = f"k{self._next_key:05d}"
            self._next_key += 1
            self._keys.append(key)
            self._key_ops[key] = 0
        key = self.rng.choice(self._keys)
        self._key_ops[key] += 1
        if self._key_ops[key] >= self.ops_per_key:
            self._keys.remove(key)  # retired: this was its last operation
        return key

    def _value(self, client: int) -> str:
        self._next_value += 1
        return f"v{self._next_value}-c{client}"

    def _new_process(self) -> int:
        """A process id never used: a client whose operation ended ``info`` continues as one."""
        self._next_process += 1
        return self._next_process - 1

    # --- register workload --------------------------------------------------------------------

    def is_reader(self, client: int) -> bool:
        """The first pinned client of each rm only reads (see the module docstring)."""
        n = len(self.direct_endpoints)
        return client < min(self.direct_clients, n)

    async def _register_client(self, client: int, db: AsyncClient) -> None:
        process = client
        reader = self.is_reader(client)
        while not self.stop.is_set():
            key = self._key()
            known = self.seen_seq.get((client, key))
            r = self.rng.random()
            if reader or r < 0.4:
                f = "get"
            elif r < 0.7:
                f = "put"
            elif r < 0.9 and known is not None:
                f = "cas"
            else:
                f = "delete"
            if not await self._register_op(process, client, db, f, key, known):
                process = self._new_process()  # the old operation may still be in flight

    async def _register_op(self, process: int, client: int, db: AsyncClient, f: str, key: str,
                           known: str | None) -> bool:
        """One operation, recorded; False if its outcome is unknown."""
        h = self.history
        value = self._value(client) if f in ("put", "cas") else None
        inv: dict[str, Any] = {}
        if value is not None:
            inv["value"] = value
        if f == "cas":
            inv["expect"] = known
        h.record(process, "invoke", f, key, **inv)
        try:
            if f == "get":
                item = await db.get(REG_TABLE, key)
                result: dict[str, Any] = (
                    {"value": None, "seq": None} if item is None
                    else {"value": item.value.decode(), "seq": item.seq})
                if item is not None:
                    self.seen_seq[(client, key)] = item.seq
            elif f == "put":
                assert value is not None
                seq = await db.put(REG_TABLE, key, value)
                result = {"seq": seq}
                self.seen_seq[(client, key)] = seq
            elif f == "cas":
                assert value is not None and known is not None
                try:
                    seq = await db.put(REG_TABLE, key, value, if_seq=known)
                except errors.PreconditionFailed:
                    result = {"failed": True}
                    self.seen_seq.pop((client, key), None)
                else:
                    result = {"seq": seq}
                    self.seen_seq[(client, key)] = seq
            else:
                deleted = await db.delete(REG_TABLE, key)
                result = {"deleted": deleted, "seq": None}
                self.seen_seq.pop((client, key), None)
        except (errors.RangeKVError, OSError) as err:
            outcome = _outcome(err)
            h.record(process, outcome, f, key, error=f"{type(err).__name__}: {err}"[:300])
            return outcome != "info"
        h.record(process, "ok", f, key, result=result)
        return True

    # --- set workload -------------------------------------------------------------------------

    async def _set_client(self, client: int, db: AsyncClient) -> None:
        while not self.stop.is_set():
            self._next_element += 1
            element = f"e{self._next_element:07d}"
            self.set.attempted.add(element)
            try:
                await db.put(SET_TABLE, element, f"c{client}")
            except (errors.RangeKVError, OSError) as err:
                if _outcome(err) == "info":
                    self.set.unknown.add(element)
                else:
                    self.set.failed.add(element)
            else:
                self.set.acked.add(element)

    # --- running ------------------------------------------------------------------------------

    async def setup(self) -> None:
        async with AsyncClient(self.endpoint, timeout_s=CLIENT_TIMEOUT_S) as db:
            for table in (REG_TABLE, SET_TABLE):
                try:
                    await db.create_table(table)
                except errors.TableExists:
                    pass

    async def run(self) -> None:
        """Run every client until ``stop`` is set; then wait for the operations in flight."""
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(
                AsyncClient(self.endpoint, timeout_s=CLIENT_TIMEOUT_S))
            pinned = [await stack.enter_async_context(AsyncClient(e, timeout_s=CLIENT_TIMEOUT_S))
                      for e in self.direct_endpoints]
            tasks = [asyncio.create_task(self._register_client(
                        i, pinned[i % len(pinned)] if i < self.direct_clients else db))
                     for i in range(self.clients)]
            tasks += [asyncio.create_task(self._set_client(self.clients + i, db))
                      for i in range(self.set_clients)]
            await asyncio.gather(*tasks)

    async def final_reads(self, *, attempts: int = 20) -> list[str]:
        """Read every register key once more (recorded like any get) and list the set table.

        Returns the set's elements. Retries a read that fails (the cluster has just healed)."""
        async with AsyncClient(self.endpoint, timeout_s=CLIENT_TIMEOUT_S) as db:
            process = self._new_process()
            for key in self.all_keys:
                for _ in range(attempts):
                    if await self._register_op(process, -1, db, "get", key, None):
                        break
                    process = self._new_process()
                    await asyncio.sleep(0.5)
            for attempt in range(attempts):
                try:
                    return [item.key.decode() async for item in db.scan(SET_TABLE)]
                except errors.RangeKVError:
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.5)
        raise AssertionError("unreachable")
