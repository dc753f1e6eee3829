"""The routing map (``rangekv.model.rangemap``) against a plain sorted list, and
``ClusterView.apply``/``range_for`` against the list-rebuilding implementation they replace."""

from __future__ import annotations

import bisect
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import model
from rangekv.bench.main import main as bench_main
from rangekv.model import RANGE_MOVING, ClusterView, Range
from rangekv.model.rangemap import RangeMap, TableRanges

KEYS = [b"", b"a", b"ab", b"b", b"c", b"cz", b"d", b"m", b"m\x00", b"x", b"\xff"]


class SmallBlocks(RangeMap):
    """Blocks of at most 4 ranges, so that a few dozen changes split and join blocks, and a
    directory repacked often."""

    BLOCK_MAX = 4
    LOOSE_FRACTION = 2
    LOOSE_MIN = 0


def oracle_find(ranges: list[Range], key: bytes) -> Range | None:
    i = bisect.bisect_right([r.start for r in ranges], key) - 1
    return ranges[i] if i >= 0 and ranges[i].contains(key) else None


def assert_same(m: RangeMap, oracle: dict[bytes, Range], probes: list[bytes]) -> None:
    m.check()
    expected = [oracle[s] for s in sorted(oracle)]
    assert list(m) == expected and len(m) == len(expected) and bool(m) == bool(expected)
    assert m == expected and list(reversed(m)) == expected[::-1]
    assert [m[i] for i in range(len(m))] == expected
    assert [m[i] for i in range(-len(m), 0)] == expected
    assert m[1:-1] == expected[1:-1] and m[::2] == expected[::2]
    for i in (len(m), -len(m) - 1):
        with pytest.raises(IndexError):
            m[i]
    for key in probes:
        assert m.find(key) == oracle_find(expected, key), key
        assert m.get(key) == oracle.get(key), key


range_st = st.builds(
    lambda start, end, group: Range(1, start, end, group),
    st.sampled_from(KEYS) | st.binary(max_size=3),
    st.none() | st.sampled_from(KEYS) | st.binary(max_size=3),
    st.integers(1, 3),
)
op_st = st.lists(st.tuples(st.booleans(), range_st), max_size=120)


@pytest.mark.parametrize("cls", [RangeMap, SmallBlocks])
@given(ops=op_st, probes=st.lists(st.binary(max_size=3), max_size=12))
@settings(max_examples=150, deadline=None)
def test_puts_and_removes_agree_with_a_sorted_list(
    cls: type[RangeMap], ops: list[tuple[bool, Range]], probes: list[bytes]
) -> None:
    m = cls()
    oracle: dict[bytes, Range] = {}
    for put, rng in ops:
        if put:
            m.put(rng)
            oracle[rng.start] = rng
        else:
            assert m.remove(rng.start) == oracle.pop(rng.start, None)
        assert_same(m, oracle, probes + KEYS + [rng.start])


@given(seed=st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_a_table_split_many_times_in_any_order(seed: int) -> None:
    """Contiguous ranges inserted in any order: every lookup lands in the right one, and every
    split key is stored once (a range's end is its successor's start object)."""
    rnd = random.Random(seed)
    cuts = sorted({b"k%05d" % rnd.randrange(100_000) for _ in range(rnd.randrange(1, 200))})
    bounds: list[bytes | None] = [b"", *cuts, None]
    ranges = [Range(300, bytes(bytearray(s or b"")), None if e is None else bytes(bytearray(e)), 1)
              for s, e in zip(bounds, bounds[1:], strict=False)]
    order = ranges[:]
    rnd.shuffle(order)
    m = SmallBlocks(order)
    m.check()
    assert list(m) == ranges
    for a, b in zip(m, m[1:], strict=False):
        assert a.end is b.start
        assert a.table_id is b.table_id  # 300 is above the ints Python caches
    for _ in range(200):
        key = b"k%05d" % rnd.randrange(100_000)
        assert m.find(key) == oracle_find(ranges, key)


def test_loading_in_start_order_appends() -> None:
    m = SmallBlocks(Range(1, b"%03d" % i if i else b"", b"%03d" % (i + 1), 1) for i in range(50))
    m.check()
    assert len(m) == 50 and m.find(b"0205") is m[20]
    assert m.find(b"999") is None  # past the last end


def old_apply(ranges: dict[int, list[Range]], key: bytes, value: bytes | None) -> None:
    """``ClusterView.apply`` for range keys before the map (the whole list rebuilt)."""
    tid_hex, _, start_hex = key[len(model.RANGES):].decode().partition("/")
    table_id, start = int(tid_hex, 16), bytes.fromhex(start_hex)
    table = [r for r in ranges.get(table_id, []) if r.start != start]
    if value is not None:
        bisect.insort(table, Range.load(value), key=lambda r: r.start)
    if table:
        ranges[table_id] = table
    else:
        ranges.pop(table_id, None)


event_st = st.lists(st.tuples(st.sampled_from([1, 2]), st.sampled_from(KEYS),
                              st.none() | st.sampled_from(KEYS), st.booleans(),
                              st.sampled_from(["active", "moving"])), max_size=80)


@given(events=event_st, probes=st.lists(st.sampled_from(KEYS) | st.binary(max_size=2)))
@settings(max_examples=150, deadline=None)
def test_cluster_view_applies_range_events_as_before(
    events: list[tuple[int, bytes, bytes | None, bool, str]], probes: list[bytes]
) -> None:
    view, old = ClusterView(), {}  # type: ignore[var-annotated]
    for tid, start, end, put, state in events:
        key = model.range_key(tid, start)
        value = Range(tid, start, end, 2, 3, state).dumps() if put else None
        view.apply(key, value)
        old_apply(old, key, value)
        assert set(view.ranges) == set(old)
        for t, ranges in old.items():
            assert list(view.ranges[t]) == ranges
            view.ranges[t].check()
        for t in (1, 2, 3):
            for k in probes + KEYS:
                expected = oracle_find(old.get(t, []), k)
                assert view.range_for(t, k) == expected


def test_assigning_a_list_stores_a_map() -> None:
    view = ClusterView()
    view.ranges[1] = [Range(1, b"m", None, 2), Range(1, b"", b"m", 1)]
    assert isinstance(view.ranges, TableRanges) and isinstance(view.ranges[1], RangeMap)
    assert [r.start for r in view.ranges[1]] == [b"", b"m"]
    assert view.range_for(1, b"z") == Range(1, b"m", None, 2)
    view.ranges.update({2: [Range(2, b"", None, 1)]})
    assert view.ranges.setdefault(3, [Range(3, b"", None, 1)]) == [Range(3, b"", None, 1)]
    assert all(isinstance(m, RangeMap) for m in view.ranges.values())
    assert view.range_for(2, b"q") == view.ranges[2][0]


def test_range_is_compact_and_states_are_shared() -> None:
    rng = Range.load(Range(1, b"a", b"b", 2, 3, "moving", 4).dumps())
    assert not hasattr(rng, "__dict__")
    assert rng.state is RANGE_MOVING
    with pytest.raises(AttributeError):
        rng.group = 5  # type: ignore[misc]


@pytest.mark.parametrize("raw", [
    b'{"a":1}', b' {"a": 1} ', b'\xef\xbb\xbf{"a":1}', '{"a":"\u00e9"}'.encode(),
    b'{"a":1}x', b'{"a":1', b"\xff", b"", b'{"a":1}{"b":2}', '{"a":1}'.encode("utf-16"),
])
def test_compact_json_decoding_is_json_loads(raw: bytes) -> None:
    try:
        expected: object = json.loads(raw)
    except ValueError as exc:
        expected = type(exc)
    try:
        got: object = model._loads_compact(raw)
    except ValueError as exc:
        got = type(exc)
    assert got == expected


def test_routing_benchmark_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    assert bench_main(["routing", "--ranges", "300", "--lookups", "200", "--events", "8",
                       "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["ranges"] == 300 and figures["key_bytes"] == 16
    assert figures["bytes_method"] == "tracemalloc" and 50 < figures["bytes_per_range"] < 1000
    assert figures["lookups"] == 200 and figures["events"] >= 4 and figures["load_s"] > 0
    assert bench_main(["routing", "--ranges", "300", "--key-bytes", "6"]) == 2
