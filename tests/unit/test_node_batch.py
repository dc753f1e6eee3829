"""The node's batch ops and client sessions, through ``Node._on_request`` over a real replica
(one member, its WAL and RocksDB index, the asyncio driver): ``batch_write`` proposes every item
that passes the single-op checks in ONE log entry and answers each item for itself;
``batch_get`` reads many keys after one linearizable barrier; put/delete carry a client
session; ``export_sessions``/``import_sessions`` move sessions; hostile fields get typed
errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rangekv import errors, sequencer
from rangekv.node.server import Node
from rangekv.replication.driver import Replica
from rangekv.testing.replicas import LoopbackGroup

T = 7
ZERO = bytes(16)
A = b"A" * 16


def seq() -> bytes:
    return sequencer.make(time.time_ns(), 1, 99)


def run(tmp_path: Path, scenario: Callable[[Node, Replica], Awaitable[None]]) -> None:
    """``scenario(node, leader)`` on a one-member group serving table T's range [b"", b"m")
    (and no other), the node's replica being that leader."""
    async def go() -> None:
        group = LoopbackGroup(tmp_path / "group", ids=(1,))
        await group.open(1)
        leader = await group.elect(1, epoch=1)
        await leader.propose({"op": "add_range", "t": T, "start": b"", "end": b"m",
                              "s": sequencer.ZERO})
        node = Node(1, "127.0.0.1:1", tmp_path / "node", ["127.0.0.1:2"])
        node.replica = leader
        try:
            await scenario(node, leader)
        finally:
            node.replica = None
            await group.close_all()

    asyncio.run(go())


async def ask(node: Node, op: str, **fields: Any) -> dict[str, Any]:
    return await node._on_request({"op": op, **fields})


def codes(reply: dict[str, Any]) -> list[str | None]:
    return [r["error"]["code"] if "error" in r else None for r in reply["results"]]


def test_batch_write_proposes_its_items_in_one_entry(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        first = await ask(node, "put", table_id=T, key=b"b", value=b"0", seq=seq())
        before = leader.engine.applied_index
        reply = await ask(node, "batch_write", table_id=T, rv=4, items=[
            ["put", b"a", b"1", None, seq(), None],
            ["delete", b"b", None, None, seq(), None],
            ["put", b"c", b"1", first["seq"], seq(), None],  # its condition fails
            ["put", b"z", b"1", None, seq(), None],  # not in this group's range
            ["delete", b"gone", None, None, seq(), None],
            ["put", b"a", b"2", None, seq(), None],  # items apply in order
        ])
        assert codes(reply) == [None, None, "precondition_failed", "range_not_here", None,
                                None]
        assert leader.engine.applied_index == before + 1  # ONE entry for all of them
        res = reply["results"]
        assert res[1]["deleted"] is True and res[4] == {"deleted": False, "seq": ZERO}
        assert res[3]["error"]["your_version"] == 4
        assert res[0]["seq"] < res[1]["seq"] < res[5]["seq"]  # consecutive, in item order
        assert leader.engine.last_seq > res[5]["seq"]
        assert leader.engine.get(T, b"a") == (b"2", res[5]["seq"])
        assert leader.engine.get(T, b"b") is None
        # a put after the batch gets a seq above all of the batch's
        after = await ask(node, "put", table_id=T, key=b"d", value=b"x", seq=seq())
        assert after["seq"] > leader.engine.get(T, b"a")[1]
        # nothing passes the checks: nothing proposed
        applied = leader.engine.applied_index
        none = await ask(node, "batch_write", table_id=T,
                         items=[["put", b"y", b"1", None, seq(), None]])
        assert codes(none) == ["range_not_here"] and leader.engine.applied_index == applied
        assert await ask(node, "batch_write", table_id=T, items=[]) == {"results": []}

    run(tmp_path, scenario)


def test_a_batch_item_too_far_ahead_is_refused_alone(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        hour = sequencer.make(time.time_ns() + 3600 * 10**9, 1, 99)
        reply = await ask(node, "batch_write", table_id=T, items=[
            ["put", b"a", b"1", None, hour, None], ["put", b"b", b"1", None, seq(), None]])
        assert codes(reply) == ["clock_offset", None]
        assert leader.engine.get(T, b"a") is None and leader.engine.get(T, b"b") is not None

    run(tmp_path, scenario)


def test_batch_write_items_of_a_range_moving_here(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        high = seq()
        await ask(node, "add_range", table_id=T, start=b"m", end=None, importing=True,
                  seq=high)
        reply = await ask(node, "batch_write", table_id=T, items=[
            ["put", b"n", b"1", None, seq(), None],  # a plain put needs no base
            ["delete", b"o", None, None, seq(), None],  # needs the source's version
            ["put", b"p", b"1", ZERO, seq(), None],  # so does a conditional put
        ])
        assert codes(reply) == [None, "range_not_here", "range_not_here"]
        assert reply["results"][1]["error"]["moving"] is True

    run(tmp_path, scenario)


def test_a_session_batch_retried_applies_nothing_twice(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        items = [["put", b"a", b"1", None, seq(), 1], ["delete", b"a", None, None, seq(), 2],
                 ["put", b"b", b"1", ZERO, seq(), 3]]
        first = await ask(node, "batch_write", table_id=T, items=items, client=A, floor=1)
        assert codes(first) == [None, None, None]
        await ask(node, "put", table_id=T, key=b"a", value=b"other", seq=seq())
        again = await ask(node, "batch_write", table_id=T, client=A, floor=1, retry=True,
                          items=[[*it[:4], seq(), it[5]] for it in items])
        assert again == first
        assert leader.engine.get(T, b"a")[0] == b"other"
        # one item of it alone, as the rm sends what a frame could not settle
        alone = await ask(node, "delete", table_id=T, key=b"a", seq=seq(), client=A,
                          cseq=2, floor=1, retry=True)
        assert alone == first["results"][1]
        assert leader.engine.get(T, b"a")[0] == b"other"

    run(tmp_path, scenario)


def test_put_and_delete_with_a_session(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        base = (await ask(node, "put", table_id=T, key=b"k", value=b"0", seq=seq()))["seq"]
        put = await ask(node, "put", table_id=T, key=b"k", value=b"1", seq=seq(),
                        if_seq=base, client=A, cseq=1, floor=1)
        again = await ask(node, "put", table_id=T, key=b"k", value=b"1", seq=seq(),
                          if_seq=base, client=A, cseq=1, floor=1, retry=True)
        assert again == put  # success with the first seq, not 412
        with pytest.raises(errors.SessionExpired) as info:
            await ask(node, "delete", table_id=T, key=b"k", seq=seq(), client=b"B" * 16,
                      cseq=3, floor=1, retry=True)
        assert info.value.code == "session_expired" and not info.value.retryable
        assert isinstance(info.value, errors.OutcomeUnknown)
        assert leader.engine.get(T, b"k") == (b"1", put["seq"])

    run(tmp_path, scenario)


def test_sessions_leave_and_arrive_by_node_ops(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        put = await ask(node, "put", table_id=T, key=b"k", value=b"1", seq=seq(), client=A,
                        cseq=1, floor=1)
        page = await ask(node, "export_sessions")
        assert page["more"] is False and [it[0] for it in page["items"]] == [A]
        assert await ask(node, "export_sessions", after=A) == {"items": [], "more": False}
        high = seq()
        await ask(node, "add_range", table_id=T, start=b"m", end=None, importing=True,
                  seq=high)
        # a retry into the importing range waits for the sessions
        with pytest.raises(errors.Unavailable):
            await ask(node, "put", table_id=T, key=b"n", value=b"1", seq=seq(), client=A,
                      cseq=2, floor=1, retry=True)
        assert await ask(node, "import_sessions", table_id=T, start=b"m", end=None,
                         items=page["items"], done=True) == {"imported": 1}
        assert leader.engine.sessions_copied(T, b"m")
        # what the page held merged idempotently: the first result still answers
        assert (await ask(node, "put", table_id=T, key=b"k", value=b"1", seq=seq(), client=A,
                          cseq=1, floor=1, retry=True)) == put
        with pytest.raises(errors.InvalidArgument) as info:
            await ask(node, "import_sessions", table_id=T, items=[[A, 0, 1, ZERO, [[1, b"x"]]]])
        assert info.value.details["field"] == "items"

    run(tmp_path, scenario)


def test_batch_get_reads_many_keys_after_one_barrier(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        put = await ask(node, "put", table_id=T, key=b"a", value=b"1", seq=seq())
        gone = await ask(node, "delete", table_id=T, key=b"b", seq=seq())
        await ask(node, "put", table_id=T, key=b"b", value=b"x", seq=seq())
        gone = await ask(node, "delete", table_id=T, key=b"b", seq=seq())
        reads = []
        real = leader.linearizable

        async def counted() -> None:
            reads.append(1)
            await real()

        leader.linearizable = counted  # type: ignore[method-assign]
        reply = await ask(node, "batch_get", table_id=T, keys=[b"a", b"b", b"c", b"z"], rv=9)
        assert len(reads) == 1
        a, b, c, z = reply["results"]
        assert a == {"found": True, "value": b"1", "seq": put["seq"], "tombstone": False}
        assert b == {"found": True, "value": b"", "seq": gone["seq"], "tombstone": True}
        assert c == {"found": False, "value": b"", "seq": ZERO, "tombstone": False}
        assert z["error"]["code"] == "range_not_here" and z["error"]["your_version"] == 9
        # a range fenced here (moving away) is read only as the source
        await ask(node, "split_range", table_id=T, at=b"f")
        await ask(node, "fence_range", table_id=T, start=b"", end=b"f")
        fenced = await ask(node, "batch_get", table_id=T, keys=[b"a", b"g"])
        assert codes(fenced) == ["range_not_here", None]
        as_source = await ask(node, "batch_get", table_id=T, keys=[b"a"], as_source=True)
        assert as_source["results"][0]["value"] == b"1"

    run(tmp_path, scenario)


BAD_REQUESTS = [
    ("put", {"cseq": 1}, "cseq"),  # a cseq without its client
    ("put", {"client": A}, "cseq"),  # a client without the cseq
    ("delete", {"client": A, "cseq": 2, "floor": 3}, "floor"),  # floor above the write
    ("put", {"client": b"short"}, "client"),
    ("put", {"client": A, "cseq": 0}, "cseq"),
    ("put", {"client": A, "cseq": 1, "retry": 1}, "retry"),
    ("batch_write", {"items": [["put", b"a", b"1", None, b"s" * 16, 1]]}, "items"),
    ("batch_write", {"client": A, "items": [["put", b"a", b"1", None, b"s" * 16, None]]},
     "items"),
    ("batch_write", {"client": A, "floor": 5, "items": [["put", b"a", b"1", None,
                                                          b"s" * 16, 4]]}, "floor"),
    ("batch_write", {"items": [["put", b"a", None, None, b"s" * 16, None]]}, "items"),
    ("batch_write", {"items": [["delete", b"a", b"v", None, b"s" * 16, None]]}, "items"),
    ("batch_write", {"items": "nope"}, "items"),
    ("batch_write", {"items": [["delete", b"a", None, None, b"s" * 16, None]] * 10_001},
     "items"),
    ("batch_get", {"keys": [b"a", 5]}, "keys"),
    ("batch_get", {"keys": [b"a"] * 10_001}, "keys"),
    ("export_sessions", {"after": b"x"}, "after"),
]


def test_hostile_fields_get_typed_errors(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        applied = leader.engine.applied_index
        for op, fields, field in BAD_REQUESTS:
            body = {"table_id": T, **fields}
            if op in ("put", "delete"):
                body = {"key": b"k", "value": b"v", "seq": seq(), **body}
            with pytest.raises(errors.InvalidArgument) as info:
                await ask(node, op, **body)
            assert info.value.details.get("field") == field, (op, fields, info.value)
        assert leader.engine.applied_index == applied  # nothing proposed

    run(tmp_path, scenario)


def test_a_batch_is_bounded_by_what_one_entry_and_one_frame_carry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        big = b"v" * (1024 * 1024)
        with pytest.raises(errors.TooLarge) as info:
            await ask(node, "batch_write", table_id=T,
                      items=[["put", b"k%d" % i, big, None, seq(), None] for i in range(5)])
        assert info.value.details["field"] == "items"
        for key in (b"a", b"b", b"c"):
            await ask(node, "put", table_id=T, key=key, value=b"0123456789", seq=seq())
        monkeypatch.setattr("rangekv.limits.LIST_BYTES_MAX", 15)
        reply = await ask(node, "batch_get", table_id=T, keys=[b"a", b"b", b"c"])
        assert codes(reply) == [None, None, "unavailable"]  # the rest: read alone

    run(tmp_path, scenario)


def test_only_the_leader_takes_a_batch(tmp_path: Path) -> None:
    async def scenario(node: Node, leader: Replica) -> None:
        leader.configure([2])  # no longer a member: it steps down
        with pytest.raises(errors.NotLeader):
            await ask(node, "batch_write", table_id=T,
                      items=[["put", b"a", b"1", None, seq(), None]])

    run(tmp_path, scenario)
