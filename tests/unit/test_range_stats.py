"""Range figures of a node (node/stats.py): sizes counted by a scan and kept current by what
is applied, load rates that decay, and split keys by size and by load."""

from __future__ import annotations

import asyncio
from typing import Any

from rangekv.node.stats import RangeStats
from rangekv.storage.engine import StateMachine, encode_command, open_memory

T = 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def apply(sm: StateMachine, *cmds: dict[str, Any]) -> list[dict[str, Any]]:
    first = sm.applied_index + 1
    return sm.apply([(first + i, encode_command(c)) for i, c in enumerate(cmds)])


def seq(n: int) -> bytes:
    return n.to_bytes(16, "big")


def put(sm: StateMachine, key: bytes, value: bytes, n: int) -> None:
    apply(sm, {"op": "put", "t": T, "k": key, "v": value, "s": seq(n), "c": None})


def fig(stats: RangeStats, start: bytes = b"") -> dict[str, Any]:
    return next(f for f in stats.report() if f["t"] == T and f["start"] == start)


def recount(sm: StateMachine, clock: Clock) -> RangeStats:
    fresh = RangeStats(sm, clock)

    async def count() -> None:
        for key in list(fresh.ranges):
            await fresh.count(key)

    asyncio.run(count())
    return fresh


def test_sizes_follow_writes_and_agree_with_a_recount() -> None:
    sm, clock = open_memory(), Clock()
    apply(sm, {"op": "add_range", "t": T, "start": b"", "end": None, "s": seq(1)})
    stats = RangeStats(sm, clock)
    stats.attach()
    asyncio.run(stats.count((T, b"")))
    assert fig(stats)["counted"] and fig(stats)["keys"] == 0
    n = 2
    for i in range(100):
        put(sm, b"k%03d" % i, b"x" * i, n)
        n += 1
    for i in range(0, 100, 3):  # overwrite, and delete some (tombstones stay stored)
        put(sm, b"k%03d" % i, b"y" * 7, n)
        n += 1
    for i in range(0, 100, 5):
        apply(sm, {"op": "del", "t": T, "k": b"k%03d" % i, "s": seq(n), "c": None})
        n += 1
    want = fig(recount(sm, clock))
    got = fig(stats)
    assert (got["keys"], got["bytes"]) == (want["keys"], want["bytes"]) == (100, want["bytes"])
    assert got["wps"] > 0 and got["rps"] == 0


def test_a_split_counts_both_parts_again_and_starts_their_load_afresh() -> None:
    sm, clock = open_memory(), Clock()
    apply(sm, {"op": "add_range", "t": T, "start": b"", "end": None, "s": seq(1)})
    stats = RangeStats(sm, clock)
    stats.attach()
    for i in range(50):
        put(sm, b"k%03d" % i, b"v", 2 + i)
    apply(sm, {"op": "split_range", "t": T, "at": b"k030", "s": seq(99)})
    assert {f["start"] for f in stats.report()} == {b"", b"k030"}
    assert not fig(stats, b"k030")["counted"]
    assert fig(stats, b"")["wps"] == 0 and fig(stats, b"k030")["wps"] == 0

    async def settle() -> None:
        task = asyncio.ensure_future(stats.run())
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(settle())
    assert fig(stats, b"")["keys"] == 30 and fig(stats, b"k030")["keys"] == 20


def test_load_rates_decay_and_split_keys() -> None:
    sm, clock = open_memory(), Clock()
    apply(sm, {"op": "add_range", "t": T, "start": b"", "end": None, "s": seq(1)})
    stats = RangeStats(sm, clock, tau_s=10.0)
    stats.attach()
    for i in range(100):
        put(sm, b"k%03d" % i, b"v" * 100, 2 + i)
    for _ in range(200):
        stats.read(T, b"k090", 1, 100)
    busy = fig(stats)["rps"]
    assert 19 <= busy <= 21  # 200 reads over tau = 10 s
    clock.now += 30
    assert fig(stats)["rps"] < busy * 0.06  # e^-3
    by_size = asyncio.run(stats.split_key(T, b"", "size", 0.7))
    assert by_size == b"k070"
    by_load = asyncio.run(stats.split_key(T, b"", "load", 0.5))
    assert by_load == b"k090"  # most recent operations were reads of k090
    assert asyncio.run(stats.split_key(T, b"zz", "size", 0.7)) is None
