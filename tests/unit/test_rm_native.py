"""The native client protocol end to end: the real clients (``rangekv.Client`` and
``rangekv.AsyncClient`` over ``rangekv://``) against the rm's ``NativeServer`` and router, with
fake nodes speaking the real wire protocol (``test_rm_app``'s) and a routing view built by hand."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import crc32c
import msgpack
import pytest
from test_rm_app import RM_ID, FakeNode, build_view

from rangekv import AsyncClient, Client, errors, wire
from rangekv.model import ClusterView
from rangekv.request_manager.metrics import Metrics
from rangekv.request_manager.native import NativeServer
from rangekv.request_manager.routing import Router, StaticViewSource


class BatchNode(FakeNode):
    """A fake leader that also answers the batch ops, item by item over the single ones, and
    counts the frames it got."""

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        op = body["op"]
        if op == "batch_write":
            out = []
            for kind, key, value, if_seq, seq, _cseq in body["items"]:
                one = {"op": kind, "table_id": body["table_id"], "key": key, "value": value,
                       "if_seq": if_seq, "seq": seq}
                try:
                    out.append(await super().handle(one))
                except errors.RangeKVError as err:
                    out.append({"error": err.to_dict()})
            return {"results": out}
        if op == "batch_get":
            out = []
            for key in body["keys"]:
                got = await super().handle({"op": "get", "table_id": body["table_id"],
                                            "key": key})
                out.append({**got, "tombstone": False})
            return {"results": out}
        return await super().handle(body)


@asynccontextmanager
async def native(view: ClusterView) -> AsyncIterator[tuple[NativeServer, str]]:
    source = StaticViewSource(view)
    metrics = Metrics(RM_ID)
    router = Router(source, RM_ID, stats=metrics.router)
    server = NativeServer(router, source, RM_ID, metrics)
    await server.start("127.0.0.1", 0)
    try:
        yield server, f"rangekv://127.0.0.1:{server.port}"
    finally:
        await server.close()
        await router.close()


async def two_groups() -> tuple[list[BatchNode], ClusterView]:
    """Table T (id 5) split at "m": [.., m) on group 1, [m, ..) on group 2."""
    nodes = [BatchNode({5}), BatchNode({5})]
    for n in nodes:
        await n.start()
    view = build_view({1: nodes[0].address, 2: nodes[1].address},
                      {1: (1, [1], 1), 2: (2, [2], 1)},
                      {"T": (5, [(b"", b"m", 1), (b"m", None, 2)])})
    return nodes, view


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_the_async_client_over_the_native_protocol() -> None:
    async def main() -> None:
        nodes, view = await two_groups()
        async with native(view) as (_, url), AsyncClient(url, timeout_s=5) as db:
            assert db.native
            seq = await db.put("T", "b", "1")
            assert len(seq) == 32
            item = await db.get("T", "b")
            assert item is not None and (item.key, item.value, item.seq) == (b"b", b"1", seq)
            assert await db.get("T", "zz") is None and not await db.exists("T", "zz")
            assert await db.exists("T", "b")
            # conditional writes and the typed error attribute
            seq2 = await db.put("T", "b", "2", if_seq=seq)
            with pytest.raises(errors.PreconditionFailed) as failed:
                await db.put("T", "b", "3", if_seq=seq)
            assert failed.value.details["current_seq"] == seq2
            with pytest.raises(errors.PreconditionFailed):
                await db.put("T", "b", "3", if_absent=True)
            assert await db.delete("T", "b") and not await db.delete("T", "b")
            # a scan walks both groups' ranges in key order, page by page
            for k in ("a", "c", "m", "x", "z"):
                await db.put("T", k, k.upper())
            got = [(i.key, i.value) async for i in db.scan("T", page_size=2)]
            assert got == [(b"a", b"A"), (b"c", b"C"), (b"m", b"M"), (b"x", b"X"), (b"z", b"Z")]
            assert [i.key async for i in db.scan("T", start="c", end="y")] == [b"c", b"m", b"x"]
            # writes carried the client's session
            puts = nodes[0].ops("put")
            assert all(len(p["client"]) == 16 and p["cseq"] >= 1 for p in puts)
            assert len({p["cseq"] for p in puts}) == len(puts)
            # tables, ranges, errors with their codes
            assert await db.tables() == ["T"]
            assert [r["group"] for r in await db.ranges("T")] == [1, 2]
            with pytest.raises(errors.TableNotFound):
                await db.get("Nope", "k")
            with pytest.raises(errors.InvalidArgument):
                await db.put("bad name!", "k", "v")
        for n in nodes:
            await n.stop()

    run(main())


def test_batches_are_split_by_range_one_frame_per_leader() -> None:
    async def main() -> None:
        nodes, view = await two_groups()
        async with native(view) as (_, url), AsyncClient(url, timeout_s=5) as db:
            keys = [f"k{i:03d}" for i in range(0, 40)] + [f"z{i:03d}" for i in range(30)]
            seqs = await db.put_many("T", {k: k.upper() for k in keys})
            assert len(seqs) == len(keys) and all(len(s) == 32 for s in seqs)
            # one frame to each group's leader, with every key of its range
            assert [len(n.ops("batch_write")) for n in nodes] == [1, 1]
            assert len(nodes[0].ops("batch_write")[0]["items"]) == 40
            assert len(nodes[1].ops("batch_write")[0]["items"]) == 30
            # each item has its own session number: the session's block
            cseqs = sorted(i[5] for n in nodes for i in n.ops("batch_write")[0]["items"])
            assert cseqs == list(range(cseqs[0], cseqs[0] + len(keys)))
            got = await db.get_many("T", [*keys, "absent"])
            assert [i.value for i in got[:-1]] == [k.upper().encode() for k in keys]
            assert got[-1] is None
            assert [len(n.ops("batch_get")) for n in nodes] == [1, 1]
            assert await db.delete_many("T", ["k000", "absent"]) == [True, False]
            # a failed item: the others stay done, and BatchFailed says which
            with pytest.raises(errors.BatchFailed) as failed:
                await db.put_many("T", {"new": "1", "k001": "2"}, if_absent=True)
            ok, bad = failed.value.results
            assert isinstance(ok, str) and isinstance(bad, errors.PreconditionFailed)
            assert [i for i, _ in failed.value.errors] == [1]
            assert (await db.get("T", "new")) is not None
        for n in nodes:
            await n.stop()

    run(main())


def test_a_batch_item_the_map_misroutes_is_planned_again() -> None:
    """A leader that does not own an item answers range_not_here for it: the rm re-reads the
    map and sends that item again, in a frame to the group that owns it now; the rest of the
    frame stands."""
    async def main() -> None:
        nodes, view = await two_groups()
        wrong = build_view({1: nodes[0].address, 2: nodes[1].address},
                           {1: (1, [1], 1), 2: (2, [2], 1)},
                           {"T": (5, [(b"", None, 1)])})  # the rm's map predates the split

        real = nodes[0].handle

        async def refuse_upper(body: dict[str, Any]) -> dict[str, Any]:
            if body["op"] == "batch_write":
                out = []
                for item in body["items"]:
                    if item[1] >= b"m":
                        out.append({"error": errors.RangeNotHere("moved").to_dict()})
                    else:
                        out.append((await real({**body, "items": [item]}))["results"][0])
                return {"results": out}
            if body["op"] == "put" and body["key"] >= b"m":
                raise errors.RangeNotHere("moved")
            return await real(body)

        nodes[0].handle = refuse_upper  # type: ignore[method-assign]
        source = StaticViewSource(wrong, backing=view)
        router = Router(source, RM_ID)
        server = NativeServer(router, source, RM_ID)
        await server.start("127.0.0.1", 0)
        async with AsyncClient(f"rangekv://127.0.0.1:{server.port}", timeout_s=5) as db:
            seqs = await db.put_many("T", {"a": "1", "x": "2"})
            assert len(seqs) == 2
            again = nodes[1].ops("batch_write")  # after the re-read, to its owner
            assert [item[1] for item in again[0]["items"]] == [b"x"]
            assert not nodes[1].ops("put") and source.refreshes == 1
        await server.close()
        await router.close()
        for n in nodes:
            await n.stop()

    run(main())


def test_a_batch_frame_refused_for_its_routing_is_sent_again_as_a_frame() -> None:
    """A leader that refuses a whole frame (unavailable: nothing applied) gets the frame again
    after a pause, not its items one by one; one that keeps refusing it, past the rounds, gets
    them one by one (the single-key path and its own recovery)."""
    from rangekv.request_manager import batches

    async def main() -> None:
        nodes, view = await two_groups()
        real = nodes[0].handle
        refusals = {"left": 1}

        async def refuse(body: dict[str, Any]) -> dict[str, Any]:
            if body["op"] == "batch_write" and refusals["left"] > 0:
                refusals["left"] -= 1
                raise errors.Unavailable("electing")
            return await real(body)

        nodes[0].handle = refuse  # type: ignore[method-assign]
        async with native(view) as (_, url), AsyncClient(url, timeout_s=5) as db:
            assert len(await db.put_many("T", {"a": "1", "b": "2"})) == 2
            frames = nodes[0].ops("batch_write")
            assert len(frames) == 2  # refused, then sent again
            assert [i[1] for i in frames[1]["items"]] == [b"a", b"b"]
            refusals["left"] = batches.REPLAN_ROUNDS_MAX
            assert len(await db.put_many("T", {"c": "3"})) == 1
            # the rounds, then alone: the single-key path (which the rm's coalescer sends as a
            # frame of its own)
            assert len(nodes[0].ops("batch_write")) == 2 + batches.REPLAN_ROUNDS_MAX + 1
            assert (await db.get("T", "c")).value == b"3"
        for n in nodes:
            await n.stop()

    run(main())


def test_the_sync_client_over_the_native_protocol_from_threads() -> None:
    async def main() -> None:
        nodes, view = await two_groups()
        async with native(view) as (_, url):
            def work() -> None:
                from concurrent.futures import ThreadPoolExecutor

                with Client(url, timeout_s=5) as db:
                    def one(i: int) -> str:
                        return db.put("T", f"t{i}", str(i))

                    with ThreadPoolExecutor(8) as pool:
                        seqs = list(pool.map(one, range(64)))
                    assert len(set(seqs)) == 64
                    assert db.get("T", "t7").value == b"7"  # type: ignore[union-attr]
                    assert db.put_many("T", [("u1", "1"), ("u2", "2")])
                    assert [i.key for i in db.scan("T", start="u")] == [b"u1", b"u2"]

            await asyncio.to_thread(work)
        for n in nodes:
            await n.stop()

    run(main())


def _frame(body: Any) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">II", len(payload), crc32c.crc32c(payload)) + payload


def test_hostile_frames_get_typed_errors_and_never_a_crash() -> None:
    """Every field is checked before it is used; a bad frame closes only its connection."""
    async def main() -> None:
        nodes, view = await two_groups()
        async with native(view) as (server, url):
            port = server.port

            def exchange(frames: list[bytes]) -> list[dict[str, Any]]:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"".join(frames))
                    decoder = wire.FrameDecoder()
                    out: list[dict[str, Any]] = []
                    while len(out) < len(frames):
                        data = s.recv(65536)
                        if not data:
                            break
                        out += decoder.feed(data)
                    return out

            cases = [
                ({"t": "req", "id": 1, "op": "put", "table": "T", "key": b"", "value": b"v"},
                 "invalid_argument"),
                ({"t": "req", "id": 2, "op": "put", "table": "T", "key": b"k",
                  "value": b"x" * (1024 * 1024 + 1)}, "too_large"),
                ({"t": "req", "id": 3, "op": "put", "table": 7, "key": b"k", "value": b"v"},
                 "invalid_argument"),
                ({"t": "req", "id": 4, "op": "nope"}, "invalid_argument"),
                ({"t": "req", "id": 5, "op": "put", "table": "T", "key": b"k", "value": b"v",
                  "client": b"short", "cseq": 1}, "invalid_argument"),
                ({"t": "req", "id": 6, "op": "put", "table": "T", "key": b"k", "value": b"v",
                  "cseq": 1}, "invalid_argument"),
                ({"t": "req", "id": 7, "op": "put_many", "table": "T",
                  "items": [[b"k"]]}, "invalid_argument"),
                ({"t": "req", "id": 8, "op": "get_many", "table": "T",
                  "keys": [b"k"] * 10_001}, "invalid_argument"),
                ({"t": "req", "id": 9, "op": "list", "table": "T", "after": "garbage"},
                 "invalid_argument"),
                ({"t": "req", "id": 10, "op": "delete", "table": "T", "key": b"k",
                  "if_seq": bytes(16)}, "invalid_argument"),
            ]
            replies = await asyncio.to_thread(exchange, [_frame(b) for b, _ in cases])
            assert {r["id"]: r["error"]["code"] for r in replies} == {
                b["id"]: code for b, code in cases}
            assert not any(r["ok"] for r in replies)
            # a frame that is not msgpack, and one with a bad checksum: the connection ends
            bad = await asyncio.to_thread(exchange, [struct.pack(">II", 3, 0) + b"\xc1\xc1\xc1"])
            assert bad == []
            # the server still serves
            async with AsyncClient(url, timeout_s=5) as db:
                await db.put("T", "still", "here")
                assert (await db.get("T", "still")) is not None
        for n in nodes:
            await n.stop()

    run(main())


def test_a_connection_lost_mid_write_is_retried_as_the_same_session_write() -> None:
    """The leader's connection drops after the write was sent: the client resends it with the
    same client id and cseq, marked retry (the group would answer the first result)."""
    async def main() -> None:
        nodes, view = await two_groups()
        seen: list[dict[str, Any]] = []

        def fault(body: dict[str, Any]) -> Any:
            if body["op"] in ("put", "batch_write"):
                seen.append(body)
                if len(seen) == 1:
                    raise errors.OutcomeUnknown("the leader went away")
            return None

        def session_of(body: dict[str, Any]) -> tuple[bytes, int, bool]:
            if body["op"] == "batch_write":  # (the rm coalesces single writes into frames)
                return body["client"], body["items"][0][5], bool(body.get("retry"))
            return body["client"], body["cseq"], bool(body.get("retry"))

        nodes[0].fault = fault
        async with native(view) as (_, url), AsyncClient(url, timeout_s=5) as db:
            assert len(await db.put("T", "a", "1")) == 32
        assert len(seen) == 2
        a, b = map(session_of, seen)
        assert a[:2] == b[:2] and not a[2] and b[2]
        for n in nodes:
            await n.stop()

    run(main())


def test_concurrent_single_writes_and_reads_travel_to_the_leader_together() -> None:
    """64 tasks' puts and gets reach each leader as a few batch frames, each answer its own."""
    async def main() -> None:
        nodes, view = await two_groups()
        async with native(view) as (server, url), AsyncClient(url, timeout_s=5) as db:
            keys = [f"{c}{i:02d}" for c in "az" for i in range(32)]
            seqs = await asyncio.gather(*(db.put("T", k, k.upper()) for k in keys))
            assert len(set(seqs)) == 64
            frames = [len(n.ops("batch_write")) for n in nodes]
            assert all(1 <= f < 32 for f in frames), frames
            assert not any(n.ops("put") for n in nodes)
            got = await asyncio.gather(*(db.get("T", k) for k in keys))
            assert [i.value for i in got] == [k.upper().encode() for k in keys]
            assert [i.seq for i in got] == seqs
            assert all(1 <= len(n.ops("batch_get")) < 32 for n in nodes)
            coalescer = server.router.coalescer
            assert coalescer is not None and coalescer.items == 128
            assert coalescer.frames < 64
            # a conditional put that fails answers for itself; the others in its frame stand
            outs = await asyncio.gather(db.put("T", "a00", "x", if_seq=seqs[1]),
                                        db.put("T", "a01", "y", if_seq=seqs[1]),
                                        return_exceptions=True)
            assert isinstance(outs[0], errors.PreconditionFailed)
            assert isinstance(outs[1], str)
        for n in nodes:
            await n.stop()

    run(main())


def test_a_leader_without_batch_ops_gets_single_ops() -> None:
    """A node of an older version answers the batch ops "unknown op": the rm sends the same
    operations alone (a rolling upgrade loses nothing)."""
    async def main() -> None:
        node = FakeNode({5})
        await node.start()
        view = build_view({1: node.address}, {1: (1, [1], 1)}, {"T": (5, [(b"", None, 1)])})
        async with native(view) as (_, url), AsyncClient(url, timeout_s=5) as db:
            await asyncio.gather(*(db.put("T", f"k{i}", "v") for i in range(8)))
            assert (await db.put_many("T", {"x": "1"}))
            assert [i.value for i in await db.get_many("T", ["k1", "x"])] == [b"v", b"1"]
            assert len(node.ops("put")) == 9 and node.ops("batch_write")
        await node.stop()

    run(main())
