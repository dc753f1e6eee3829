"""The bounds an internal port keeps on what its peers send (``wire.serve_connection``).

Each test starts a real server on loopback with small limits and plays a misbehaving peer over
a raw socket: a request id of the wrong type, too many connections, a frame that never ends, a
frame trickled byte by byte, many unfinished big frames at once, replies never read. Waits are
for the server's answer or close, each bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import crc32c
import msgpack
import pytest

from rangekv import errors, wire

WAIT_S = 10.0


async def echo(body: dict[str, Any], conn: wire.ServerConnection) -> dict[str, Any]:
    if body.get("op") == "slow":
        await asyncio.sleep(body.get("s", 0.0))
    if body.get("op") == "big":
        return {"data": b"x" * int(body["n"])}
    return {"echo": body.get("x")}


@asynccontextmanager
async def server(limits: wire.ServerLimits) -> AsyncIterator[tuple[wire.ServerGuard, int]]:
    guard = wire.ServerGuard("test", limits)
    srv = await asyncio.start_server(
        lambda r, w: wire.serve_connection(r, w, echo, lambda m, c: None, guard),
        "127.0.0.1", 0)
    try:
        yield guard, srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


def frame(body: Any) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">II", len(payload), crc32c.crc32c(payload)) + payload


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (within WAIT_S)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                if not await reader.read(65536):
                    return True
            except ConnectionError:
                return True


async def reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        return await wire.read_frame(reader)


def test_a_request_id_of_the_wrong_type_is_answered_and_the_connection_goes_on() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits()) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for bad in ("7", [1], None, -1, 2**63, 1.5):
                writer.write(frame({"t": "req", "id": bad, "op": "echo", "x": 1}))
                got = await reply(reader)
                assert got["id"] is None and got["ok"] is False, got
                assert got["error"]["code"] == "invalid_argument"
                assert got["error"]["field"] == "id"
            writer.write(frame({"t": "req", "id": 5, "op": "echo", "x": 2}))
            assert (await reply(reader)) == {"t": "rep", "id": 5, "ok": True, "echo": 2}
            writer.close()

    asyncio.run(go())


def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits(connections_max=3)) as (guard, port):
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for r, w in held:  # all three are served
                w.write(frame({"t": "req", "id": 1, "op": "echo", "x": 1}))
                assert (await reply(r))["ok"]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert await closed(r)
            w.close()
            assert guard.refused == {"connections": 1}
            held[0][1].close()
            await held[0][1].wait_closed()
            async with asyncio.timeout(WAIT_S):
                while guard.connections > 2:
                    await asyncio.sleep(0.01)
            r, w = await asyncio.open_connection("127.0.0.1", port)  # room again
            w.write(frame({"t": "req", "id": 2, "op": "echo", "x": 3}))
            assert (await reply(r))["echo"] == 3
            for _, held_writer in [*held[1:], (r, w)]:
                held_writer.close()

    asyncio.run(go())


def test_a_frame_that_never_ends_is_cut_off_after_the_frame_timeout() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits(frame_timeout_s=0.3)) as (guard, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = frame({"t": "req", "id": 1, "op": "echo", "x": b"y" * 1000})
            writer.write(data[:100])  # and nothing more
            assert await closed(reader)
            writer.close()
            assert guard.refused.get("frame_timeout") == 1
            assert guard.connections == 0

    asyncio.run(go())


def test_a_trickled_frame_is_cut_off_even_though_bytes_keep_coming() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits(frame_timeout_s=0.3)) as (guard, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = frame({"t": "req", "id": 1, "op": "echo", "x": b"y" * 1000})
            cut = asyncio.ensure_future(closed(reader))
            for i in range(len(data)):  # a byte every 20 ms: a read never waits long
                if cut.done():
                    break
                try:
                    writer.write(data[i:i + 1])
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.02)
            assert await cut
            writer.close()
            assert guard.refused.get("frame_timeout") == 1

    asyncio.run(go())


def test_frames_back_to_back_for_longer_than_the_frame_timeout_are_not_cut_off() -> None:
    """The timeout is per frame: a busy peer whose reads always end inside a frame is fine."""
    async def go() -> None:
        async with server(wire.ServerLimits(frame_timeout_s=0.3)) as (guard, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0
            sent = 0
            while loop.time() < end:
                data = frame({"t": "req", "id": sent, "op": "echo", "x": sent})
                half = len(data) // 2
                writer.write(data[:half])
                await asyncio.sleep(0.01)
                writer.write(data[half:])
                sent += 1
            for _ in range(sent):
                assert (await reply(reader))["ok"]
            assert not guard.refused
            writer.close()

    asyncio.run(go())


def test_unfinished_big_frames_share_one_budget() -> None:
    """20 connections each start an 8 MiB frame: the server holds at most its budget of
    unfinished frames; the ones that cannot get room within the frame timeout are closed."""
    async def go() -> None:
        budget = 16 * 1024 * 1024
        lim = wire.ServerLimits(frame_timeout_s=0.5, frame_bytes_free=64 * 1024,
                                buffer_bytes_max=budget)
        async with server(lim) as (guard, port):
            big = frame({"t": "req", "id": 1, "op": "echo", "x": b"z" * (8 * 1024 * 1024 - 100)})
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            high = 0
            for _, w in conns:
                w.write(big[: len(big) // 2])  # half of it, and then nothing
            watch_until = asyncio.get_running_loop().time() + 0.4
            while asyncio.get_running_loop().time() < watch_until:
                high = max(high, guard.buffered_bytes)
                await asyncio.sleep(0.01)
            for r, w in conns:
                assert await closed(r)
                w.close()
            assert high <= budget, high
            assert guard.buffered_bytes == 0 and guard.connections == 0
            # each closed: for want of room, or (those that got room) for not finishing
            assert sum(guard.refused.values()) == 20, guard.refused
            assert guard.refused.get("buffer", 0) >= 10, guard.refused
            # and a whole big frame still goes through afterwards
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(big)
            assert (await reply(r))["ok"]
            w.close()

    asyncio.run(go())


def test_requests_in_flight_per_connection_are_bounded() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits(requests_in_flight_max=4)) as (_, port):
            conn = wire.Connection(f"127.0.0.1:{port}")
            seen: list[int] = []

            async def one(i: int) -> None:
                await conn.request("slow", s=0.05, x=i)
                seen.append(i)

            await asyncio.gather(*(one(i) for i in range(20)))  # all answered, 4 at a time
            assert sorted(seen) == list(range(20))
            await conn.close()

    asyncio.run(go())


def test_a_peer_that_never_reads_its_replies_is_closed() -> None:
    async def go() -> None:
        lim = wire.ServerLimits(out_bytes_max=8 * 1024 * 1024, buffer_bytes_max=64 * 1024 * 1024)
        async with server(lim) as (guard, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
            try:
                for i in range(200):  # 200 replies of 1 MiB asked for, none read
                    writer.write(frame({"t": "req", "id": i, "op": "big", "n": 1024 * 1024}))
                    await writer.drain()
                    if guard.refused:
                        break
            except ConnectionError:
                pass
            async with asyncio.timeout(WAIT_S):
                while not guard.refused:
                    await asyncio.sleep(0.01)
            assert guard.refused == {"unread_replies": 1}
            writer.close()

    asyncio.run(go())


def test_a_reply_with_an_id_of_the_wrong_type_does_not_break_the_client() -> None:
    async def go() -> None:
        async def bad_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            body = await wire.read_frame(reader)
            writer.write(frame({"t": "rep", "id": [body["id"]], "ok": True}))
            writer.write(frame({"t": "rep", "id": body["id"], "ok": True, "fine": 1}))
            await writer.drain()
            await reader.read()
            writer.close()

        srv = await asyncio.start_server(bad_server, "127.0.0.1", 0)
        conn = wire.Connection(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        assert (await conn.request("x", timeout_s=WAIT_S))["fine"] == 1
        await conn.close()
        srv.close()
        await srv.wait_closed()

    asyncio.run(go())


@pytest.mark.parametrize("limits", [dict(connections_max=0), dict(buffer_bytes_max=1024)])
def test_limits_are_checked(limits: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        wire.ServerLimits(**limits)


def test_a_map_with_too_many_keys_is_refused_before_it_costs_memory() -> None:
    payload = msgpack.packb({str(i): i for i in range(wire.MAP_LEN_MAX + 1)})
    with pytest.raises(errors.ProtocolError):
        wire.decode_body(payload)


@pytest.mark.parametrize("peer, address, ok", [
    (("10.0.0.2", 5123), "10.0.0.2:7000", True),
    (("10.0.0.3", 5123), "10.0.0.2:7000", False),  # another machine speaking for node at .2
    (("::ffff:10.0.0.2", 5123, 0, 0), "10.0.0.2:7000", True),  # IPv4 mapped into IPv6
    (("fd00::2", 5123, 0, 0), "[fd00::2]:7000", True),
    (("fd00::3", 5123, 0, 0), "[fd00::2]:7000", False),
    (("10.0.0.3", 5123), "node-2.internal:7000", True),  # a name: not checked here
    (("10.0.0.3", 5123), "0.0.0.0:7000", True),  # a wildcard says nothing
    (None, "10.0.0.2:7000", True),  # not an IP connection
])
def test_a_connection_speaks_only_for_the_address_it_comes_from(
        peer: Any, address: str, ok: bool) -> None:
    assert wire.address_matches(peer, address) is ok


def test_a_connection_from_an_address_not_of_this_machine_falls_back() -> None:
    async def go() -> None:
        async with server(wire.ServerLimits()) as (_, port):
            conn = wire.Connection(f"127.0.0.1:{port}", source="192.0.2.77")  # TEST-NET-1
            assert (await conn.request("echo", x=5, timeout_s=WAIT_S))["echo"] == 5
            await conn.close()
            conn = wire.Connection(f"127.0.0.1:{port}", source="127.0.0.1")
            assert (await conn.request("echo", x=6, timeout_s=WAIT_S))["echo"] == 6
            await conn.close()

    asyncio.run(go())
