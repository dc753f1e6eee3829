"""The state machine: the same suite against the RocksDB and the in-memory backends, plus a
hypothesis comparison of both against a plain-dict oracle."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.storage import engine
from rangekv.storage.engine import StateMachine, encode_command
from rangekv.storage.memory import MemoryBackend
from rangekv.storage.rocks import RocksBackend

ZERO = bytes(16)
MiB = 1024 * 1024


def seq(n: int) -> bytes:
    return n.to_bytes(16, "big")


class Node:
    """One state machine plus a little log: apply commands as consecutive entries, restart."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.memory = MemoryBackend()
        self.seq_next = 1
        self.sm = self._open()

    def _open(self) -> StateMachine:
        if self.kind == "rocks":
            return StateMachine(RocksBackend(self.directory / "rocks"))
        return StateMachine(self.memory)

    def restart(self) -> None:
        self.sm.close()
        self.sm = self._open()

    def next_seq(self) -> bytes:
        self.seq_next += 1
        return seq(self.seq_next)

    def apply(self, *cmds: dict[str, Any]) -> list[dict[str, Any]]:
        first = self.sm.applied_index + 1
        return self.sm.apply([(first + i, encode_command(c)) for i, c in enumerate(cmds)])

    def one(self, cmd: dict[str, Any]) -> dict[str, Any]:
        (result,) = self.apply(cmd)
        return result

    # command builders that draw increasing seqs, as a leader would
    def put(self, t: int, k: bytes, v: bytes, c: bytes | None = None) -> dict[str, Any]:
        return {"op": "put", "t": t, "k": k, "v": v, "s": self.next_seq(), "c": c}

    def delete(self, t: int, k: bytes, c: bytes | None = None) -> dict[str, Any]:
        return {"op": "del", "t": t, "k": k, "s": self.next_seq(), "c": c}

    def add_range(self, t: int, start: bytes = b"", end: bytes | None = None) -> dict[str, Any]:
        return {"op": "add_range", "t": t, "start": start, "end": end, "s": self.next_seq()}

    def drop_table(self, t: int) -> dict[str, Any]:
        return {"op": "drop_table", "t": t, "s": self.next_seq()}

    def scan_all(self, t: int, **kw: Any) -> list[tuple[bytes, bytes, bytes]]:
        args: dict[str, Any] = {
            "start": b"",
            "end": None,
            "after": None,
            "limit": 10**6,
            "bytes_max": 10**9,
        }
        args.update(kw)
        items, more = self.sm.scan(t, **args)
        assert not more
        return items


@pytest.fixture(params=["memory", "rocks"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    n = Node(request.param, tmp_path)
    yield n
    n.sm.close()


def error_code(result: dict[str, Any]) -> str | None:
    return result["error"]["code"] if "error" in result else None


# -- basic reads and writes -----------------------------------------------------------------


def test_fresh_state_machine(node: Node) -> None:
    assert node.sm.applied_index == 0
    assert node.sm.last_seq == ZERO
    assert node.sm.ranges() == []
    assert not node.sm.has_table(1)
    assert node.sm.get(1, b"k") is None
    assert node.sm.apply([]) == []


def test_put_get_overwrite_delete(node: Node) -> None:
    assert node.apply({"op": "noop"}, node.add_range(1)) == [{}, {}]
    put = node.put(1, b"k", b"v1")
    assert node.one(put) == {"seq": put["s"]}
    assert node.sm.get(1, b"k") == (b"v1", put["s"])
    put2 = node.put(1, b"k", b"v2")
    assert node.one(put2) == {"seq": put2["s"]}
    assert node.sm.get(1, b"k") == (b"v2", put2["s"])
    delete = node.delete(1, b"k")
    assert node.one(delete) == {"deleted": True, "seq": delete["s"]}
    assert node.sm.get(1, b"k") is None
    assert node.scan_all(1) == []
    # deleting again: nothing to delete, nothing written
    before = node.sm.content_hash()
    assert node.one(node.delete(1, b"k")) == {"deleted": False, "seq": ZERO}
    assert node.one(node.delete(1, b"never")) == {"deleted": False, "seq": ZERO}
    assert node.sm.content_hash() == before
    # a put over a tombstone brings the key back
    put3 = node.put(1, b"k", b"v3")
    node.one(put3)
    assert node.sm.get(1, b"k") == (b"v3", put3["s"])


def test_tombstones_are_hidden_but_kept(node: Node) -> None:
    node.apply(node.add_range(1), *(node.put(1, bytes([c]), b"v") for c in b"abcde"))
    before = node.sm.content_hash()
    node.apply(node.delete(1, b"b"), node.delete(1, b"d"), node.delete(1, b"e"))
    assert [k for k, _, _ in node.scan_all(1)] == [b"a", b"c"]
    assert node.sm.scan(1, b"", None, b"a", 1, 10**6) == (node.scan_all(1)[1:], False)
    assert node.sm.get(1, b"b") is None
    # the tombstones are part of the state (their seqs must win when versions meet)
    assert node.sm.content_hash() != before


def test_read_your_writes_within_one_apply(node: Node) -> None:
    p1 = node.put(1, b"k", b"v1")
    results = node.apply(
        node.add_range(1),
        p1,
        node.put(1, b"k", b"v2", c=p1["s"]),  # sees p1
        node.put(1, b"k", b"v3", c=p1["s"]),  # p2 replaced it
        node.delete(1, b"k"),
        node.put(1, b"k", b"v4", c=ZERO),  # the delete in the same batch counts
    )
    assert [error_code(r) for r in results] == [None, None, None, "precondition_failed", None, None]
    assert node.sm.get(1, b"k")[0] == b"v4"  # type: ignore[index]


# -- conditional writes ---------------------------------------------------------------------


def test_conditional_put(node: Node) -> None:
    node.one(node.add_range(1))
    create = node.put(1, b"k", b"v1", c=ZERO)
    assert node.one(create) == {"seq": create["s"]}
    again = node.one(node.put(1, b"k", b"v2", c=ZERO))
    assert again["error"]["code"] == "precondition_failed"
    assert again["error"]["current_seq"] == create["s"].hex()
    assert node.sm.get(1, b"k") == (b"v1", create["s"])

    match = node.put(1, b"k", b"v3", c=create["s"])
    assert node.one(match) == {"seq": match["s"]}
    stale = node.one(node.put(1, b"k", b"v4", c=create["s"]))
    assert stale["error"]["current_seq"] == match["s"].hex()
    assert node.sm.get(1, b"k") == (b"v3", match["s"])

    absent = node.one(node.put(1, b"nope", b"v", c=seq(5)))
    assert absent["error"]["code"] == "precondition_failed"
    assert absent["error"]["current_seq"] is None
    assert node.sm.get(1, b"nope") is None


def test_conditional_delete(node: Node) -> None:
    node.one(node.add_range(1))
    put = node.put(1, b"k", b"v")
    node.one(put)
    wrong = node.one(node.delete(1, b"k", c=seq(1)))
    assert wrong["error"]["code"] == "precondition_failed"
    assert wrong["error"]["current_seq"] == put["s"].hex()
    exists = node.one(node.delete(1, b"k", c=ZERO))
    assert exists["error"]["code"] == "precondition_failed"
    assert node.sm.get(1, b"k") == (b"v", put["s"])
    right = node.delete(1, b"k", c=put["s"])
    assert node.one(right) == {"deleted": True, "seq": right["s"]}
    # after the delete: the tombstone's seq is not a live version
    gone = node.one(node.delete(1, b"k", c=right["s"]))
    assert gone["error"]["code"] == "precondition_failed"
    assert gone["error"]["current_seq"] is None
    assert node.one(node.delete(1, b"k", c=ZERO)) == {"deleted": False, "seq": ZERO}
    create = node.put(1, b"k", b"again", c=ZERO)
    assert node.one(create) == {"seq": create["s"]}


# -- tables and ranges ----------------------------------------------------------------------


def test_unknown_table_and_keys_outside_the_ranges(node: Node) -> None:
    result = node.one(node.put(7, b"k", b"v"))
    assert result["error"]["code"] == "table_not_found"
    assert result["error"]["table_id"] == 7
    assert error_code(node.one(node.delete(7, b"k"))) == "table_not_found"
    node.apply(node.add_range(7, b"b", b"d"), node.add_range(7, b"m"))
    assert node.sm.has_table(7) and not node.sm.has_table(8)
    assert [node.sm.owns(7, k) for k in (b"a", b"b", b"cz", b"d", b"l", b"m", b"\xff" * 9)] == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    # ranges of the table are here, none holds the key: range_not_here, with this group's view
    outside = node.one(node.put(7, b"a", b"v"))
    assert error_code(outside) == "range_not_here"
    assert outside["error"]["ranges"] == [[b"b", b"d"], [b"m", None]]
    assert error_code(node.one(node.put(7, b"d", b"v"))) == "range_not_here"
    assert error_code(node.one(node.put(7, b"c", b"v"))) is None
    assert error_code(node.one(node.put(7, b"zz", b"v"))) is None
    assert node.sm.ranges() == [(7, b"b", b"d"), (7, b"m", None)]
    # a span is covered only if one range holds all of it
    assert node.sm.covers(7, b"b", b"d") and node.sm.covers(7, b"bb", b"c")
    assert node.sm.covers(7, b"m", None) and node.sm.covers(7, b"x", b"y")
    assert not node.sm.covers(7, b"b", None) and not node.sm.covers(7, b"c", b"n")
    assert not node.sm.covers(7, b"a", b"c") and not node.sm.covers(8, b"", None)
    assert node.sm.not_here(8).code == "table_not_found"
    assert node.sm.not_here(7).code == "range_not_here"


def test_add_range_is_idempotent(node: Node) -> None:
    node.apply(node.add_range(3, b"a", b"z"), node.put(3, b"k", b"v"))
    before = node.sm.content_hash()
    assert node.one(node.add_range(3, b"a", b"z")) == {}
    assert node.sm.content_hash() == before
    assert node.sm.ranges() == [(3, b"a", b"z")]
    assert node.sm.get(3, b"k") is not None


def test_drop_table_removes_its_data_and_ranges_only(node: Node) -> None:
    node.apply(node.add_range(1), node.add_range(2), node.add_range(3))
    for t in (1, 2, 3):
        node.apply(*(node.put(t, b"k%d" % i, b"v%d" % i) for i in range(50)))
    node.one(node.delete(2, b"k3"))
    node.apply(
        node.put(3, b"", b"empty key, right at table 2's upper bound"), node.put(2, b"", b"")
    )
    keep1, keep3 = node.scan_all(1), node.scan_all(3)
    assert node.one(node.drop_table(2)) == {}
    assert not node.sm.has_table(2)
    assert node.sm.ranges() == [(1, b"", None), (3, b"", None)]
    assert node.scan_all(2) == []
    assert node.sm.get(2, b"k1") is None
    assert node.scan_all(1) == keep1 and node.scan_all(3) == keep3
    assert error_code(node.one(node.put(2, b"k1", b"v"))) == "table_not_found"
    # the same id re-created starts empty, even for the tombstone
    node.one(node.add_range(2))
    assert node.scan_all(2) == []
    fresh = Node("memory", node.directory)
    fresh.apply(fresh.add_range(1), fresh.add_range(2), fresh.add_range(3))
    for t in (1, 3):
        fresh.apply(*(fresh.put(t, b"k%d" % i, b"v%d" % i) for i in range(50)))
    fresh.one(fresh.put(3, b"", b"empty key, right at table 2's upper bound"))
    assert [(k, v) for k, v, _ in fresh.scan_all(3)] == [(k, v) for k, v, _ in keep3]
    assert [(k, v) for k, v, _ in fresh.scan_all(1)] == [(k, v) for k, v, _ in keep1]
    # dropping a table that does not exist is fine
    assert node.one(node.drop_table(99)) == {}


def test_drop_table_and_put_in_one_batch(node: Node) -> None:
    node.apply(node.add_range(1), node.put(1, b"a", b"old"), node.put(1, b"b", b"old"))
    results = node.apply(
        node.put(1, b"c", b"old"),
        node.drop_table(1),
        node.put(1, b"a", b"lost"),  # no range any more
        node.add_range(1),
        node.put(1, b"b", b"new", c=ZERO),  # the old b is gone
    )
    assert [error_code(r) for r in results] == [None, None, "table_not_found", None, None]
    assert [(k, v) for k, v, _ in node.scan_all(1)] == [(b"b", b"new")]


def test_extreme_table_ids(node: Node) -> None:
    top = engine.TABLE_ID_MAX
    node.apply(
        node.add_range(0),
        node.add_range(top),
        node.put(0, b"k", b"zero"),
        node.put(top, b"k", b"top"),
        node.put(top, b"\xff" * 20, b"top2"),
    )
    assert [v for _, v, _ in node.scan_all(top)] == [b"top", b"top2"]
    assert [v for _, v, _ in node.scan_all(0)] == [b"zero"]
    node.one(node.drop_table(top))
    assert node.scan_all(top) == [] and node.sm.get(0, b"k") is not None


# -- scans ----------------------------------------------------------------------------------


def test_scan_bounds_after_limit_bytes_and_more(node: Node) -> None:
    node.one(node.add_range(1))
    keys = [b"a", b"b", b"c", b"d", b"e", b"f"]
    node.apply(*(node.put(1, k, k * 10) for k in keys))
    node.one(node.delete(1, b"c"))
    node.apply(node.add_range(2), node.put(2, b"a", b"other table"))

    def scan(**kw: Any) -> tuple[list[bytes], bool]:
        args: dict[str, Any] = {
            "start": b"",
            "end": None,
            "after": None,
            "limit": 100,
            "bytes_max": 10**6,
        }
        args.update(kw)
        items, more = node.sm.scan(1, **args)
        return [k for k, _, _ in items], more

    assert scan() == ([b"a", b"b", b"d", b"e", b"f"], False)
    assert scan(start=b"b", end=b"e") == ([b"b", b"d"], False)
    assert scan(start=b"bb", end=b"f") == ([b"d", b"e"], False)
    assert scan(after=b"b") == ([b"d", b"e", b"f"], False)
    assert scan(after=b"a\x00") == ([b"b", b"d", b"e", b"f"], False)
    assert scan(start=b"d", after=b"a") == ([b"d", b"e", b"f"], False)
    assert scan(after=b"f") == ([], False)
    assert scan(start=b"e", end=b"b") == ([], False)
    assert scan(limit=2) == ([b"a", b"b"], True)
    assert scan(limit=2, after=b"b") == ([b"d", b"e"], True)
    assert scan(limit=3, after=b"b") == ([b"d", b"e", b"f"], False)
    assert scan(limit=2, end=b"d") == ([b"a", b"b"], False)  # only the tombstone c follows
    # bytes: each item is 1 + 10 bytes; stop once 22 are reached
    assert scan(bytes_max=22) == ([b"a", b"b"], True)
    assert scan(bytes_max=23) == ([b"a", b"b", b"d"], True)
    assert scan(bytes_max=0) == ([b"a"], True)
    items, _ = node.sm.scan(1, b"", None, None, 1, 10)
    assert items == [(b"a", b"a" * 10, node.sm.get(1, b"a")[1])]  # type: ignore[index]
    # paging through with the cursor sees every live key exactly once
    seen, after, more = [], None, True
    while more:
        page, more = node.sm.scan(1, b"", None, after, 2, 10**6)
        seen += [k for k, _, _ in page]
        after = page[-1][0] if page else None
    assert seen == [b"a", b"b", b"d", b"e", b"f"]


def test_scan_more_skips_trailing_tombstones(node: Node) -> None:
    node.one(node.add_range(1))
    node.apply(*(node.put(1, b"k%02d" % i, b"v") for i in range(20)))
    node.apply(*(node.delete(1, b"k%02d" % i) for i in range(5, 20)))
    items, more = node.sm.scan(1, b"", None, None, 5, 10**6)
    assert len(items) == 5 and not more


# -- binary safety and limits ---------------------------------------------------------------


def test_binary_keys_and_values(node: Node) -> None:
    node.one(node.add_range(1))
    keys = [b"\x00", b"\x00\x00", b"\x00\xff", b"\x01", b"\xff", b"\xff" * 1024, bytes(range(256))]
    values = [b"", b"\x00", b"\xff" * 3, os.urandom(1000), bytes(MiB), os.urandom(MiB), b"x"]
    node.apply(*(node.put(1, k, v) for k, v in zip(keys, values, strict=True)))
    node.restart()
    for k, v in zip(keys, values, strict=True):
        assert node.sm.get(1, k)[0] == v  # type: ignore[index]
    assert [k for k, _, _ in node.scan_all(1)] == sorted(keys)
    assert node.sm.get(1, b"") is None
    # big values stop a page early, but a page always has one item
    items, more = node.sm.scan(1, b"", None, b"\x00\xff", 100, MiB)
    assert [k for k, _, _ in items] == [b"\x01", b"\xff"] and more


def test_odd_but_well_formed_commands_do_not_crash(node: Node) -> None:
    node.one(node.add_range(1, b"", None))
    odd = [
        node.put(1, b"", b"empty key"),  # the leader validates; the state machine just applies
        node.put(1, b"k" * 5000, b"v"),
        node.add_range(4, b"z", b"a"),  # an empty range: owns nothing
        node.delete(1, b""),
    ]
    results = node.apply(*odd)
    assert [error_code(r) for r in results] == [None, None, None, None]
    assert not node.sm.owns(4, b"m")
    malformed: list[dict[str, Any]] = [
        {"op": "put", "t": "1", "k": b"k", "v": b"v", "s": node.next_seq(), "c": None},
        {"op": "put", "t": 1, "k": "str", "v": b"v", "s": node.next_seq(), "c": None},
        {"op": "put", "t": 1, "k": b"k", "v": None, "s": node.next_seq(), "c": None},
        {"op": "put", "t": 1, "k": b"k", "v": b"v", "s": b"short", "c": None},
        {"op": "del", "t": 1, "k": b"k", "s": node.next_seq(), "c": b"short"},
        {"op": "del", "t": -1, "k": b"k", "s": node.next_seq()},
        {"op": "add_range", "t": 1.5, "start": b"", "end": None, "s": node.next_seq()},
        {"op": "drop_table", "t": True, "s": node.next_seq()},
    ]
    before = node.sm.content_hash()
    results = node.apply(*malformed)
    assert [error_code(r) for r in results] == ["invalid_argument"] * len(malformed)
    assert node.sm.content_hash() == before


def test_unknown_op_is_a_programmer_error(node: Node) -> None:
    node.one(node.add_range(1))
    applied = node.sm.applied_index
    with pytest.raises(AssertionError):
        node.apply(node.put(1, b"k", b"v"), {"op": "frobnicate"})
    assert node.sm.applied_index == applied  # nothing of the batch was applied
    assert node.sm.get(1, b"k") is None
    with pytest.raises(AssertionError):
        node.sm.apply([(applied + 1, b"\xc1 not msgpack")])


def test_entries_must_come_in_order(node: Node) -> None:
    node.one({"op": "noop"})
    with pytest.raises(AssertionError):
        node.sm.apply([(3, encode_command({"op": "noop"}))])
    with pytest.raises(AssertionError):
        node.sm.apply([(2, encode_command({"op": "noop"})), (4, encode_command({"op": "noop"}))])
    assert node.sm.applied_index == 1


# -- durability of the applied index and last_seq -------------------------------------------


def test_applied_index_and_last_seq_survive_a_restart(node: Node) -> None:
    node.apply({"op": "noop"}, node.add_range(1), node.put(1, b"k", b"v"))
    failed = node.put(1, b"k", b"v", c=seq(12345))
    assert error_code(node.one(failed)) == "precondition_failed"
    assert node.sm.last_seq == failed["s"]  # consumed even though it failed
    unknown = node.put(9, b"k", b"v")
    node.one(unknown)
    assert node.sm.last_seq == unknown["s"]
    # an older seq does not move last_seq back
    node.one({"op": "put", "t": 1, "k": b"old", "v": b"v", "s": seq(1), "c": None})
    assert node.sm.last_seq == unknown["s"]
    applied, digest = node.sm.applied_index, node.sm.content_hash()
    node.restart()
    assert node.sm.applied_index == applied == 6
    assert node.sm.last_seq == unknown["s"]
    assert node.sm.content_hash() == digest
    assert node.sm.ranges() == [(1, b"", None)]
    assert node.one({"op": "noop"}) == {}
    assert node.sm.applied_index == 7


def test_memory_backend_crash_loses_only_whole_unflushed_batches(tmp_path: Path) -> None:
    node = Node("memory", tmp_path)
    node.apply(node.add_range(1), node.put(1, b"a", b"1"))
    node.sm.flush()
    flushed = (node.sm.applied_index, node.sm.last_seq, node.sm.content_hash())
    node.apply(node.put(1, b"b", b"2"), node.drop_table(1))
    node.memory.crash()
    node.sm = StateMachine(node.memory)
    assert (node.sm.applied_index, node.sm.last_seq, node.sm.content_hash()) == flushed


def test_rocks_crash_keeps_a_prefix_of_whole_batches(tmp_path: Path) -> None:
    """A process killed without closing RocksDB (its WAL off) comes back at a whole batch."""
    script = textwrap.dedent(
        f"""
        import os
        from rangekv.storage.engine import open_rocks, encode_command
        sm = open_rocks({str(tmp_path / "rocks")!r})
        index = 0
        def apply(*cmds):
            global index
            sm.apply([(index + 1 + i, encode_command(c)) for i, c in enumerate(cmds)])
            index += len(cmds)
        apply({{"op": "add_range", "t": 1, "start": b"", "end": None, "s": bytes(16)}})
        for batch in range(30):
            apply(*({{"op": "put", "t": 1, "k": b"k%d" % i, "v": b"%d" % batch,
                     "s": (batch * 100 + i + 1).to_bytes(16, "big"), "c": None}}
                    for i in range(10)))
            if batch == 9:
                sm.flush()
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    sm = engine.open_rocks(tmp_path / "rocks")
    try:
        applied = sm.applied_index
        assert applied >= 1 + 10 * 10 and (applied - 1) % 10 == 0
        batch = (applied - 1) // 10 - 1
        items, _ = sm.scan(1, b"", None, None, 100, 10**6)
        assert {v for _, v, _ in items} == {b"%d" % batch}
        assert sm.last_seq == (batch * 100 + 10).to_bytes(16, "big")
    finally:
        sm.close()


# -- agreement between replicas -------------------------------------------------------------


def test_content_hash_agrees_across_backends_and_differs_on_any_change(tmp_path: Path) -> None:
    def build(kind: str, sub: str, value: bytes = b"v", tombstone: bool = True) -> str:
        (tmp_path / sub).mkdir()
        n = Node(kind, tmp_path / sub)
        n.apply(
            n.add_range(1, b"", b"m"), n.add_range(2), n.put(1, b"a", value), n.put(2, b"b", b"w")
        )
        n.one(n.put(1, b"c", b"x"))
        if tombstone:
            n.one(n.delete(1, b"c"))
        digest = n.sm.content_hash()
        n.sm.close()
        return digest

    base = build("rocks", "r1")
    assert build("memory", "m1") == base
    assert build("rocks", "r2") == base
    assert build("memory", "m2", value=b"V") != base
    assert build("memory", "m3", tombstone=False) != base
    assert engine.open_memory().content_hash() != base


# -- random command sequences against a dict oracle -----------------------------------------

TABLES = [1, 2]
KEYS = [b"", b"a", b"ab", b"b", b"m", b"z\xff"]
SEQ_POOL = [None, ZERO, seq(3), seq(5)]


class Oracle:
    """The command semantics written as plainly as possible."""

    def __init__(self) -> None:
        self.ranges: dict[int, dict[bytes, bytes | None]] = {}
        self.data: dict[tuple[int, bytes], tuple[bytes, bytes | None]] = {}  # -> (seq, value)

    def owns(self, t: int, k: bytes) -> bool:
        return any(s <= k and (e is None or k < e) for s, e in self.ranges.get(t, {}).items())

    def live(self, t: int, k: bytes) -> tuple[bytes, bytes] | None:
        version = self.data.get((t, k))
        if version is None or version[1] is None:
            return None
        return version[1], version[0]

    def apply(self, cmd: dict[str, Any]) -> str | dict[str, Any]:
        op = cmd["op"]
        if op == "add_range":
            self.ranges.setdefault(cmd["t"], {})[cmd["start"]] = cmd["end"]
            return {}
        if op == "drop_table":
            self.ranges.pop(cmd["t"], None)
            self.data = {tk: v for tk, v in self.data.items() if tk[0] != cmd["t"]}
            return {}
        t, k, s, c = cmd["t"], cmd["k"], cmd["s"], cmd["c"]
        if not self.owns(t, k):
            return "range_not_here" if self.ranges.get(t) else "table_not_found"
        live = self.live(t, k)
        if c == ZERO and live is not None:
            return "precondition_failed"
        if c is not None and c != ZERO and (live is None or live[1] != c):
            return "precondition_failed"
        if op == "put":
            self.data[(t, k)] = (s, cmd["v"])
            return {"seq": s}
        if live is None:
            return {"deleted": False, "seq": ZERO}
        self.data[(t, k)] = (s, None)
        return {"deleted": True, "seq": s}


commands = st.lists(
    st.one_of(
        st.builds(
            lambda t, k, v, c: {"op": "put", "t": t, "k": k, "v": v, "c": c},
            st.sampled_from(TABLES),
            st.sampled_from(KEYS),
            st.binary(max_size=8),
            st.sampled_from(SEQ_POOL),
        ),
        st.builds(
            lambda t, k, c: {"op": "del", "t": t, "k": k, "c": c},
            st.sampled_from(TABLES),
            st.sampled_from(KEYS),
            st.sampled_from(SEQ_POOL),
        ),
        st.builds(
            lambda t, s, e: {"op": "add_range", "t": t, "start": s, "end": e},
            st.sampled_from(TABLES),
            st.sampled_from(KEYS),
            st.sampled_from([None, b"b", b"n"]),
        ),
        st.builds(lambda t: {"op": "drop_table", "t": t}, st.sampled_from(TABLES)),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.lists(st.integers(1, 6), min_size=1), st.data())
def test_backends_match_a_dict_oracle(
    cmds: list[dict[str, Any]], batch_sizes: list[int], data: st.DataObject
) -> None:
    for i, cmd in enumerate(cmds):
        # seqs increase in log order as a leader makes them; 3 and 5 are in the pool of if_seqs
        cmd["s"] = seq(2 * i + 3)
    oracle = Oracle()
    want = [oracle.apply(c) for c in cmds]
    with tempfile.TemporaryDirectory() as directory:
        machines = [engine.open_memory(), engine.open_rocks(os.path.join(directory, "rocks"))]
        try:
            for sm in machines:
                position, b = 0, 0
                got: list[dict[str, Any]] = []
                while position < len(cmds):  # apply in batches of varying size
                    size = batch_sizes[b % len(batch_sizes)]
                    batch = cmds[position : position + size]
                    got += sm.apply(
                        [(position + 1 + j, encode_command(c)) for j, c in enumerate(batch)]
                    )
                    position, b = position + len(batch), b + 1
                assert [r["error"]["code"] if "error" in r else r for r in got] == want
                assert sm.applied_index == len(cmds)
                assert sm.last_seq == (cmds[-1]["s"] if cmds else ZERO)
                for t in TABLES:
                    assert sm.has_table(t) == bool(oracle.ranges.get(t))
                    expected = sorted(
                        (k, v, s)
                        for (tt, k), (s, v) in oracle.data.items()
                        if tt == t and v is not None
                    )
                    assert sm.scan(t, b"", None, None, 1000, 10**6) == (expected, False)
                    for k in KEYS:
                        assert sm.get(t, k) == oracle.live(t, k)
                        assert sm.owns(t, k) == oracle.owns(t, k)
                    start = data.draw(st.sampled_from(KEYS))
                    after = data.draw(st.sampled_from([None, *KEYS]))
                    limit = data.draw(st.integers(1, 4))
                    items, more = sm.scan(t, start, None, after, limit, 10**6)
                    window = [
                        x for x in expected if x[0] >= start and (after is None or x[0] > after)
                    ]
                    assert items == window[:limit]
                    assert more == (len(window) > limit)
            assert machines[0].content_hash() == machines[1].content_hash()
        finally:
            for sm in machines:
                sm.close()
