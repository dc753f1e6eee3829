"""The rm's routing map at scale (issue 6): memory per range, lookup, watch events, full load.

One table of ``ranges`` ranges, split at realistic keys (``user`` + digits: 16 bytes unless
``key_bytes`` says otherwise; evenly spread), as etcd holds them (``model.range_key`` →
``Range.dumps()``; groups 1..3, versions 1..20). Measured, in this order:

* **load**: ``EtcdViewSource._load`` (the rm's start and every reload) over all the range kvs
  (etcd itself faked: its answer is built before the clock starts). Wall time, and the RSS growth
  across it (``/proc/self/statm``; a cross-check only: the allocator keeps freed memory).
* **bytes per range**: the same load again under ``tracemalloc``; the bytes still allocated
  afterwards (the view), divided by ``ranges``. These are Python's own allocations: the routing
  map's keys, ``Range`` objects and lists, nothing of the faked etcd answer.
* **lookup**: ``ClusterView.range_for`` (the call ``Router._route`` makes for every request) for
  ``lookups`` random keys of the table; each call timed alone (``perf_counter_ns``, so each
  figure includes one timer read), median and p99, and the mean over all of them.
* **apply**: ``ClusterView.apply`` of one range event at this size, as the watch delivers them:
  ``events`` events of splits at random points (the lower half rewritten, the upper half added)
  and as many of merges back (the upper half deleted, the lower one rewritten). Each timed alone.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from rangekv import model
from rangekv.model import ClusterView, Range, Table
from rangekv.request_manager.routing import EtcdViewSource

STEPS = 4
TABLE_ID = 7
KEY_PREFIX = b"user"
KEY_BYTES = 16
BYTES_PER_RANGE_MAX = 200  # the targets of issue 6 for 1,000,000 ranges
LOOKUP_US_MAX = 5.0


@dataclass
class RoutingFigures:
    ranges: int
    key_example: str
    key_bytes: int
    load_s: float
    rss_bytes_per_range: float
    bytes_per_range: float  # tracemalloc: what the loaded view holds
    lookup_us_median: float
    lookup_us_p99: float
    lookup_us_mean: float
    lookups: int
    apply_us_median: float
    apply_us_p99: float
    apply_us_max: float
    events: int

    @property
    def met(self) -> bool:
        return (self.bytes_per_range <= BYTES_PER_RANGE_MAX
                and self.lookup_us_median <= LOOKUP_US_MAX)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_method": "tracemalloc",
                "targets": {"bytes_per_range_max": BYTES_PER_RANGE_MAX,
                            "lookup_us_max": LOOKUP_US_MAX},
                "met": self.met}

    def table(self) -> str:
        def ok(good: bool) -> str:
            return "ok" if good else "OVER TARGET"

        return "\n".join([
            f"routing map: {self.ranges:,} ranges of one table, split at keys like "
            f"{self.key_example} ({self.key_bytes} bytes)",
            f"  {'full load (EtcdViewSource._load)':<36} {self.load_s:10.2f} s",
            f"  {'memory per range (tracemalloc)':<36} {self.bytes_per_range:10.1f} B     "
            f"target <= {BYTES_PER_RANGE_MAX} B: {ok(self.bytes_per_range <= BYTES_PER_RANGE_MAX)}",
            f"  {'  (RSS growth during the load)':<36} {self.rss_bytes_per_range:10.1f} B",
            f"  {'lookup (range_for), median':<36} {self.lookup_us_median:10.2f} us    "
            f"target <= {LOOKUP_US_MAX} us: {ok(self.lookup_us_median <= LOOKUP_US_MAX)}",
            f"  {'lookup p99 / mean':<36} {self.lookup_us_p99:10.2f} us / "
            f"{self.lookup_us_mean:.2f} us  (n={self.lookups:,})",
            f"  {'apply of one range event, median':<36} {self.apply_us_median:10.1f} us",
            f"  {'apply p99 / max':<36} {self.apply_us_p99:10.1f} us / "
            f"{self.apply_us_max:.1f} us  (n={self.events:,})",
        ])


def split_key(n: int, key_bytes: int = KEY_BYTES) -> bytes:
    return KEY_PREFIX + b"%0*d" % (key_bytes - len(KEY_PREFIX), n)


def key_space(key_bytes: int = KEY_BYTES) -> int:
    return 10 ** (key_bytes - len(KEY_PREFIX))


def key_number(key: bytes) -> int:
    return int(key[len(KEY_PREFIX):])


def table_ranges(n: int, key_bytes: int = KEY_BYTES) -> Iterator[Range]:
    """``n`` ranges covering the whole table, cut at evenly spread ``user…`` keys."""
    assert 1 <= n < key_space(key_bytes), n
    step = key_space(key_bytes) // n
    start = b""
    for i in range(n):
        end = split_key((i + 1) * step, key_bytes) if i + 1 < n else None
        yield Range(TABLE_ID, start, end, group=1 + i % 3, version=1 + i % 20)
        assert end is not None or i + 1 == n
        start = end or b""


@dataclass
class _KV:
    key: bytes
    value: bytes
    mod_revision: int = 1


class _FakeEtcd:
    """Answers the rm's one prefix read with prepared kvs."""

    def __init__(self, kvs: list[_KV]) -> None:
        self.kvs = kvs

    async def get_prefix(self, prefix: bytes) -> tuple[list[Any], int]:
        assert prefix == model.PREFIX, prefix
        return self.kvs, 1

    def watch_prefix(self, prefix: bytes, start_revision: int) -> Any:
        raise NotImplementedError("the benchmark only loads")


def _load(kvs: list[_KV]) -> ClusterView:
    source = EtcdViewSource(_FakeEtcd(kvs))
    asyncio.run(source._load())
    return source.view


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _lookups(view: ClusterView, count: int, rng: random.Random, key_bytes: int) -> list[float]:
    keys = [split_key(rng.randrange(key_space(key_bytes)), key_bytes) for _ in range(count)]
    range_for, clock = view.range_for, time.perf_counter_ns
    out = []
    for key in keys:
        t0 = clock()
        found = range_for(TABLE_ID, key)
        out.append((clock() - t0) / 1000)
        assert found is not None and found.contains(key), (key, found)
    return out


def _events(view: ClusterView, count: int, rng: random.Random, key_bytes: int) -> list[float]:
    """Split ``count // 4`` random ranges and merge them back: one event per range key."""
    ranges = view.ranges[TABLE_ID]
    out: list[float] = []
    clock = time.perf_counter_ns

    def apply(key: bytes, value: bytes | None) -> None:
        t0 = clock()
        view.apply(key, value)
        out.append((clock() - t0) / 1000)

    splits: list[tuple[Range, Range]] = []
    chosen: set[int] = set()
    while len(chosen) < max(1, count // 4):
        i = rng.randrange(1, len(ranges) - 1)  # both bounds are user keys
        if i not in chosen and i - 1 not in chosen and i + 1 not in chosen:
            chosen.add(i)
    for r in [ranges[i] for i in sorted(chosen)]:  # picked before the map changes
        assert r.end is not None, r
        lo, hi = key_number(r.start), key_number(r.end)
        if hi - lo < 2:
            continue
        at = split_key((lo + hi) // 2, key_bytes)
        lower = Range(r.table_id, r.start, at, r.group, r.version + 1)
        upper = Range(r.table_id, at, r.end, r.group, r.version + 1)
        splits.append((r, upper))
        apply(model.range_key(TABLE_ID, lower.start), lower.dumps())
        apply(model.range_key(TABLE_ID, upper.start), upper.dumps())
    for r, upper in splits:
        joined = Range(r.table_id, r.start, r.end, r.group, r.version + 2)
        apply(model.range_key(TABLE_ID, upper.start), None)
        apply(model.range_key(TABLE_ID, joined.start), joined.dumps())
    return out


def measure(n_ranges: int = 1_000_000, lookups: int = 100_000, events: int = 1000,
            step: Callable[[str], None] = lambda what: None, seed: int = 1,
            key_bytes: int = KEY_BYTES) -> RoutingFigures:
    assert n_ranges >= 3 and lookups >= 1 and events >= 4, (n_ranges, lookups, events)
    assert key_space(key_bytes) > 4 * n_ranges, ("keys too short for so many ranges", key_bytes)
    rng = random.Random(seed)
    step(f"encoding {n_ranges:,} ranges")
    table = Table(TABLE_ID, "bench")
    kvs = [_KV(model.table_key(table.name), model.dumps(table))]
    kvs += [_KV(model.range_key(TABLE_ID, r.start), r.dumps())
            for r in table_ranges(n_ranges, key_bytes)]

    step("full load")
    gc.collect()
    rss0, t0 = _rss_bytes(), time.perf_counter()
    view = _load(kvs)
    load_s = time.perf_counter() - t0
    rss_per_range = (_rss_bytes() - rss0) / n_ranges
    assert len(view.ranges[TABLE_ID]) == n_ranges, len(view.ranges[TABLE_ID])
    del view
    gc.collect()

    step("memory (tracemalloc load)")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        view = _load(kvs)
        gc.collect()
        per_range = (tracemalloc.get_traced_memory()[0] - before) / n_ranges
    finally:
        tracemalloc.stop()
    del kvs
    gc.collect()

    step(f"{lookups:,} lookups, {events:,} events")
    lookup_us = sorted(_lookups(view, lookups, rng, key_bytes))
    apply_us = sorted(_events(view, events, rng, key_bytes))
    assert len(view.ranges[TABLE_ID]) == n_ranges, "the merges undo the splits"
    return RoutingFigures(
        ranges=n_ranges,
        key_example=model.key_text(split_key(key_space(key_bytes) // 2, key_bytes)),
        key_bytes=key_bytes,
        load_s=load_s,
        rss_bytes_per_range=rss_per_range,
        bytes_per_range=per_range,
        lookup_us_median=statistics.median(lookup_us),
        lookup_us_p99=_percentile(lookup_us, 0.99),
        lookup_us_mean=statistics.fmean(lookup_us),
        lookups=len(lookup_us),
        apply_us_median=statistics.median(apply_us),
        apply_us_p99=_percentile(apply_us, 0.99),
        apply_us_max=apply_us[-1],
        events=len(apply_us),
    )
