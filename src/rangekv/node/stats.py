"""Size and load of each range of one node's state machine, for the controller's splits.

Not replicated state: every node keeps its own from what it applies and serves, and only the
leader's (which serves every read and write) is reported to meta, about once a second.

* **Size** (keys and bytes stored, tombstones included): counted once per range by a scan in
  slices (``rescan``, cooperative: it yields to the event loop between slices), then kept
  current from what each apply writes (``Observer.applied``). A range that is new here (added,
  split off, moved in) is counted again. The figures are approximate: writes that land in a
  range while it is being counted may be counted twice or not at all.
* **Load** (reads and writes, operations and bytes per second) as exponentially decaying rates
  with time constant ``tau_s``: a burst is forgotten within a few ``tau_s``.
* **Where the load is**: the keys of the last ``SAMPLE_KEYS`` operations on each range; a
  quantile of them is a split key that divides the recent load.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rangekv.storage.engine import StateMachine

TAU_S = 10.0
SAMPLE_KEYS = 512
SCAN_SLICE_KEYS = 2000
SCAN_BYTES_MAX = 1 << 30  # one slice's bytes_max: the key count bounds a slice


class _Rate:
    """An exponentially decaying event rate (events per second over about ``tau_s``)."""

    __slots__ = ("at", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.at = 0.0

    def add(self, now: float, amount: float, tau_s: float) -> None:
        self.value = self.rate(now, tau_s) * tau_s + amount
        self.at = now

    def rate(self, now: float, tau_s: float) -> float:
        return self.value * math.exp(-max(0.0, now - self.at) / tau_s) / tau_s


@dataclass
class _RangeStats:
    end: bytes | None
    keys: int = 0
    size: int = 0  # bytes stored
    counted: bool = False  # its size was counted by a scan (else keys/bytes are partial)
    reads: _Rate = field(default_factory=_Rate)
    writes: _Rate = field(default_factory=_Rate)
    read_bytes: _Rate = field(default_factory=_Rate)
    write_bytes: _Rate = field(default_factory=_Rate)
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=SAMPLE_KEYS))


class RangeStats:
    """Per-range size and load of ``engine`` (install with :meth:`attach`)."""

    def __init__(self, engine: StateMachine, clock: Callable[[], float],
                 tau_s: float = TAU_S) -> None:
        self.engine = engine
        self.clock = clock
        self.tau_s = tau_s
        self.ranges: dict[tuple[int, bytes], _RangeStats] = {}
        self._rescan = asyncio.Event()
        self._sync_ranges()

    def attach(self) -> None:
        self.engine.observer = self

    # -- what the state machine tells ----------------------------------------------------------

    def applied(self, deltas: list[tuple[int, bytes, int, int]], ranges_changed: bool) -> None:
        if ranges_changed:
            self._sync_ranges()
        now = self.clock()
        for table_id, key, n, size in deltas:
            st = self._holder(table_id, key)
            if st is None:
                continue
            st.keys += n
            st.size += size
            st.writes.add(now, 1, self.tau_s)
            st.write_bytes.add(now, max(size, 0) + len(key), self.tau_s)
            st.recent.append(key)

    def read(self, table_id: int, key: bytes, count: int, nbytes: int) -> None:
        """``count`` records of ``nbytes`` read, starting at ``key`` (a get, or a list page)."""
        st = self._holder(table_id, key)
        if st is None:
            return
        now = self.clock()
        st.reads.add(now, max(count, 1), self.tau_s)
        st.read_bytes.add(now, nbytes, self.tau_s)
        st.recent.append(key)

    def _holder(self, table_id: int, key: bytes) -> _RangeStats | None:
        for (_tid, start), st in self._by_table.get(table_id, ()):
            if start <= key and (st.end is None or key < st.end):
                return st
        return None

    def _sync_ranges(self) -> None:
        """Follow the engine's ranges: new or changed ones (added, split, moved in) are
        counted again and their load starts from nothing."""
        current = {(t, s): e for t, s, e in self.engine.ranges()}
        kept: dict[tuple[int, bytes], _RangeStats] = {}
        for key, end in current.items():
            old = self.ranges.get(key)
            if old is not None and old.end == end:
                kept[key] = old
            else:
                # new here, or cut by a split: counted again, and its load starts afresh (the
                # old figures belong to keys that may now be elsewhere)
                kept[key] = _RangeStats(end)
                self._rescan.set()
        self.ranges = kept
        by_table: dict[int, list[tuple[tuple[int, bytes], _RangeStats]]] = {}
        for key, st in kept.items():
            by_table.setdefault(key[0], []).append((key, st))
        self._by_table = by_table

    # -- counting sizes ------------------------------------------------------------------------

    async def run(self) -> None:
        """Count the size of every range not counted yet; again after each range change."""
        while True:
            for key in [k for k, st in self.ranges.items() if not st.counted]:
                await self.count(key)
            self._rescan.clear()
            if any(not st.counted for st in self.ranges.values()):
                continue
            await self._rescan.wait()

    async def count(self, key: tuple[int, bytes]) -> None:
        """Count the size of the range at ``key`` (by a scan in slices)."""
        table_id, start = key
        st = self.ranges.get(key)
        if st is None:
            return
        keys = size = 0
        after: bytes | None = None
        while True:
            if self.engine.closed or self.ranges.get(key) is not st:
                return  # the range changed meanwhile: counted again from the start
            items, more = self.engine.scan_versions(table_id, start, st.end, after,
                                                    SCAN_SLICE_KEYS, SCAN_BYTES_MAX)
            for k, v, _, _ in items:
                keys += 1
                size += 9 + len(k) + 17 + len(v)  # stored key (0x01|table|key) + record
            if not more or not items:
                break
            after = items[-1][0]
            await asyncio.sleep(0)
        st.keys, st.size, st.counted = keys, size, True

    # -- what the leader reports ---------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Each range's figures, for the heartbeat (see docs/internals.md)."""
        now, tau = self.clock(), self.tau_s
        return [
            {"t": table_id, "start": start, "keys": st.keys, "bytes": st.size,
             "counted": st.counted,
             "rps": round(st.reads.rate(now, tau), 2), "wps": round(st.writes.rate(now, tau), 2),
             "rbps": round(st.read_bytes.rate(now, tau)),
             "wbps": round(st.write_bytes.rate(now, tau))}
            for (table_id, start), st in sorted(self.ranges.items())
        ]

    async def split_key(self, table_id: int, start: bytes, by: str,
                        fraction: float) -> bytes | None:
        """A key dividing the range at ``start``: below it ``fraction`` of the bytes stored
        (``by="size"``, from a scan) or of the recent operations (``by="load"``). None if
        the range cannot be divided (one key, or no data)."""
        st = self.ranges.get((table_id, start))
        if st is None:
            return None
        if by == "load":
            keys = sorted(st.recent)
            candidates = [k for k in keys if k > start]
            if not candidates:
                return None
            at = keys[min(len(keys) - 1, int(len(keys) * fraction))]
            return at if at > start else candidates[0]
        total = st.size if st.counted else None
        if total is None or total <= 0:
            await self.count((table_id, start))
            total = st.size
        goal = total * fraction
        seen = 0
        after: bytes | None = None
        while not self.engine.closed:
            items, more = self.engine.scan_versions(table_id, start, st.end, after,
                                                    SCAN_SLICE_KEYS, SCAN_BYTES_MAX)
            for k, v, _, _ in items:
                if seen >= goal and k > start:
                    return k
                seen += 9 + len(k) + 17 + len(v)
            if not more or not items:
                return None
            after = items[-1][0]
            await asyncio.sleep(0)
        return None
