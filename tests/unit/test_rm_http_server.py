"""The rm's HTTP/1.1 server (``http_server``) on raw bytes: framing, keep-alive, pipelining,
chunked bodies cut anywhere, Expect: 100-continue, HEAD, and what it refuses; its limits (head
and body deadlines against a trickling client, requests in flight, connections held), with
bounds of a fraction of a second so that each test waits for its bound to pass in little time.
Waits are for an event (an answer, a close) with a generous upper bound, never a bare sleep,
except where the point is that nothing happens (an idle connection outliving a head deadline)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import errors
from rangekv.http_server import (
    BadRequest,
    Dispatch,
    HttpServer,
    Request,
    Response,
    parse_head,
)
from rangekv.request_manager import app

WAIT_S = 10.0  # an upper bound on any wait for an answer or a close: only turns a hang into a failure


async def echo(req: Request) -> Response:
    """Answers with what it saw: method, target, body length, a header; reads 100 bytes at most."""
    body = await req.read_body(100) if req.method in ("PUT", "POST") else b""
    info = {"method": req.method, "target": req.raw_path, "version": req.version,
            "body": body.decode("latin-1"), "x": req.headers.get("X-Test")}
    return Response(json.dumps(info).encode(), 200, "application/json", {"X-Echo": "1"})


def refuse(status: int, message: str) -> Response:
    resp = Response(json.dumps({"error": message, "status": status}).encode(), status,
                    "application/json", {"Retry-After": "1"} if status == 503 else None)
    resp.close = status != 503
    return resp


@asynccontextmanager
async def server(dispatch: Dispatch = echo, **limits: Any) -> AsyncIterator[tuple[str, int]]:
    srv = HttpServer(dispatch, refuse, request_line_max=200, **limits)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        yield host, port
    finally:
        await srv.close(1.0)


@asynccontextmanager
async def served(dispatch: Dispatch = echo, **limits: Any) -> AsyncIterator[HttpServer]:
    """Like ``server``, but yields the server itself (its address is ``srv.address``)."""
    srv = HttpServer(dispatch, refuse, request_line_max=200, **limits)
    srv.address = await srv.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        await srv.close(1.0)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    n = int(headers["content-length"])
    body = await reader.readexactly(n) if n else b""
    return int(status_line.split()[1]), headers, body


async def exchange(data: bytes, answers: int = 1, half_close: bool = False,
                   ) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send ``data``; read ``answers`` answers; and whether the server closed afterwards."""
    async with server() as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        if half_close:
            writer.transport.write_eof()
        out = [await asyncio.wait_for(read_answer(reader), 5) for _ in range(answers)]
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
        writer.close()
        return out, closed


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_keep_alive_and_pipelining_answer_in_order() -> None:
    data = (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Test: one\r\n\r\n"
            b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    answers, closed = run(exchange(data, answers=3))  # type: ignore[misc]
    bodies = [json.loads(b) for _, _, b in answers]
    assert [b["target"] for b in bodies] == ["/a", "/b", "/c"]
    assert bodies[0]["x"] == "one" and bodies[1]["body"] == "abc"
    assert all(s == 200 and h["x-echo"] == "1" and "date" in h for s, h, _ in answers)
    assert not closed  # HTTP/1.1: kept open


def test_http_1_0_closes_unless_keep_alive_and_connection_close_is_honoured() -> None:
    (answer,), closed = run(exchange(b"GET /a HTTP/1.0\r\n\r\n"))  # type: ignore[misc]
    assert answer[0] == 200 and closed and answer[1]["connection"] == "close"
    _, closed = run(exchange(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))  # type: ignore[misc]
    assert not closed
    _, closed = run(exchange(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"))  # type: ignore[misc]
    assert closed


def test_head_gets_the_get_headers_without_a_body() -> None:
    data = b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"

    async def main() -> None:
        async with server() as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Content-Length: " in head and not head.endswith(b"}")
            # the next bytes are the second answer, not a body
            status, _, body = await read_answer(reader)
            assert status == 200 and json.loads(body)["target"] == "/b"
            writer.close()

    run(main())


def test_expect_100_continue_is_answered_when_the_handler_reads() -> None:
    async def main() -> None:
        async with server() as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hi")
            status, _, body = await read_answer(reader)
            assert status == 200 and json.loads(body)["body"] == "hi"
            writer.close()

    run(main())


def test_an_answer_in_hand_survives_the_client_half_closing() -> None:
    (answer,), closed = run(exchange(  # type: ignore[misc]
        b"PUT /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nz", half_close=True))
    assert answer[0] == 200 and json.loads(answer[2])["body"] == "z" and closed


def test_a_body_not_read_to_its_end_closes_the_connection() -> None:
    body = b"x" * 300  # the handler reads at most 101 bytes of it
    (answer,), closed = run(exchange(  # type: ignore[misc]
        b"PUT /a HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + body))
    assert answer[0] == 200 and len(json.loads(answer[2])["body"]) == 101 and closed


def test_refused_requests_get_the_malformed_answer_and_a_closed_connection() -> None:
    for data in [
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n",  # request line over the limit
        b"GET /a HTTP/9.9\r\n\r\n",
        b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ]:
        (answer,), closed = run(exchange(data))  # type: ignore[misc]
        assert answer[0] == 400 and closed, data[:40]


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, i = bytearray(), 0
    for n in sizes:
        if i >= len(body):
            break
        piece = body[i:i + max(1, n)]
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        i += len(piece)
    if i < len(body):
        out += b"%X\r\n" % (len(body) - i) + body[i:] + b"\r\n"
    return bytes(out + b"0\r\nTrailer: t\r\n\r\n")


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=90), sizes=st.lists(st.integers(1, 40), max_size=8),
       cuts=st.lists(st.integers(1, 30), max_size=20))
def test_chunked_bodies_cut_anywhere_arrive_whole(body: bytes, sizes: list[int],
                                                  cuts: list[int]) -> None:
    request = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    request += b"GET /after HTTP/1.1\r\n\r\n"

    async def main() -> None:
        async with server() as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            i = 0
            for n in cuts:
                writer.write(request[i:i + n])
                await writer.drain()
                await asyncio.sleep(0)
                i += n
            writer.write(request[i:])
            first = await asyncio.wait_for(read_answer(reader), 5)
            second = await asyncio.wait_for(read_answer(reader), 5)
            assert first[0] == 200 and json.loads(first[2])["body"].encode("latin-1") == body
            assert second[0] == 200 and json.loads(second[2])["target"] == "/after"
            writer.close()

    run(main())


def test_bad_chunking_is_refused() -> None:
    for bad in [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabX\r\n0\r\n\r\n", b"-1\r\n"]:
        async def main(bad: bytes = bad) -> None:
            async with server() as (host, port):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + bad)
                # the handler's read raises BadRequest: a bug answer (500), and the connection
                # closes; the rm turns it into a 400 (see read_value)
                status, _, _ = await asyncio.wait_for(read_answer(reader), 5)
                assert status in (400, 500), bad
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()

        run(main())


def test_parse_head_keeps_repeated_headers_and_lowercases_names() -> None:
    method, target, version, headers = parse_head(
        b"GET /x?y HTTP/1.1\r\nA: 1\r\na: 2\r\nB:\t3 ", 100)
    assert (method, target, version) == ("GET", "/x?y", "1.1")
    assert headers["A"] == "1, 2" and headers.get("b") == "3" and "B" in headers
    for bad in [b"GET /x HTTP/1.1\r\n folded: x", b"GET  /x HTTP/1.1", b"G(T /x HTTP/1.1"]:
        try:
            parse_head(bad, 100)
        except BadRequest:
            continue
        raise AssertionError(bad)


# --- limits ----------------------------------------------------------------------------------


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` a byte at a time, one every ``every_s``, until done or the peer is gone."""
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, RuntimeError):
        pass  # the server closed: what the tests wait for


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed (EOF or a reset), reading whatever comes before."""
    try:
        await asyncio.wait_for(reader.read(), WAIT_S)
    except ConnectionResetError:
        pass
    return True


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_a_trickled_head_gets_408_and_a_close_at_the_head_deadline() -> None:
    """A byte every 50 ms does not keep a head alive: the deadline is a total, not idle time."""
    head_timeout_s = 0.4

    async def main() -> None:
        async with server(head_timeout_s=head_timeout_s) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            t0 = time.monotonic()
            sending = asyncio.create_task(
                trickle(writer, b"GET /a HTTP/1.1\r\nX-Test: " + b"y" * 10_000, 0.05))
            status, headers, body = await asyncio.wait_for(read_answer(reader), WAIT_S)
            assert status == 408 and headers["connection"] == "close", (status, headers)
            assert "head" in json.loads(body)["error"]
            assert await closed(reader)
            assert time.monotonic() - t0 > head_timeout_s / 2  # at the deadline, not at once
            assert not sending.done()  # the client was still sending: its bytes reset nothing
            sending.cancel()
            writer.close()

    run(main())


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline_without_answer() -> None:
    async def main() -> None:
        async with server(head_timeout_s=0.3) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # no 408: nobody asked
            writer.close()

    run(main())


def test_an_idle_keep_alive_connection_outlives_the_head_deadline() -> None:
    """Between requests the idle time (KEEPALIVE_S) applies; a head deadline only runs from a
    request's first byte, and again for each request on the connection."""
    head_timeout_s = 0.3

    async def main() -> None:
        async with server(head_timeout_s=head_timeout_s) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /one HTTP/1.1\r\n\r\n")
            assert (await asyncio.wait_for(read_answer(reader), WAIT_S))[0] == 200
            await asyncio.sleep(2 * head_timeout_s)  # the point: nothing happens meanwhile
            writer.write(b"GET /two HTTP/1.1\r\n\r\n")
            status, _, body = await asyncio.wait_for(read_answer(reader), WAIT_S)
            assert status == 200 and json.loads(body)["target"] == "/two"
            writer.write(b"GET /three HTTP/1.1\r\n")  # and the next head has its own deadline
            assert (await asyncio.wait_for(read_answer(reader), WAIT_S))[0] == 408
            assert await closed(reader)
            writer.close()

    run(main())


def test_a_trickled_body_gets_408_and_a_close_at_the_body_deadline() -> None:
    """Slow POST: the head is whole, the body comes a byte every 50 ms; the handler's read
    raises BodyTimeout at the deadline, the server answers 408 and closes."""
    body_timeout_s = 0.4

    async def main() -> None:
        async with server(body_timeout_s=body_timeout_s) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"PUT /a HTTP/1.1\r\nContent-Length: 10000\r\n\r\n")
            t0 = time.monotonic()
            sending = asyncio.create_task(trickle(writer, b"z" * 10_000, 0.05))
            status, headers, body = await asyncio.wait_for(read_answer(reader), WAIT_S)
            assert status == 408 and headers["connection"] == "close", (status, headers)
            assert "body" in json.loads(body)["error"]
            assert await closed(reader)
            assert time.monotonic() - t0 > body_timeout_s / 2
            assert not sending.done()
            sending.cancel()
            writer.close()

    run(main())


async def put_value(req: Request) -> Response:
    """The rm's own body reading (``app.read_value``) and error answers."""
    try:
        value = await app.read_value(req)
    except errors.RangeKVError as err:
        return app.error_response(err)
    return Response(value, 200, "application/octet-stream")


def test_the_rm_answers_a_slow_body_with_its_json_408() -> None:
    async def main() -> None:
        async with server(put_value, body_timeout_s=0.3) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            # with Expect: 100-continue the deadline runs from the go-ahead
            writer.write(b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ab")  # and then nothing
            status, headers, body = await asyncio.wait_for(read_answer(reader), WAIT_S)
            error = json.loads(body)["error"]
            assert status == 408 and headers["connection"] == "close"
            assert error["code"] == "request_timeout" and error["retryable"] is True
            assert error["field"] == "value"
            assert await closed(reader)
            writer.close()

    run(main())


def test_a_body_that_arrives_in_time_is_not_cut_by_the_deadline() -> None:
    async def main() -> None:
        async with server(put_value, body_timeout_s=WAIT_S) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"PUT /k HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
            await trickle(writer, b"abc", 0.05)
            status, _, body = await asyncio.wait_for(read_answer(reader), WAIT_S)
            assert (status, body) == (200, b"abc")
            writer.close()

    run(main())


def test_requests_beyond_the_in_flight_bound_get_503_at_once_but_health_checks_do_not() -> None:
    gate = asyncio.Event()

    async def slow(req: Request) -> Response:
        if req.raw_path == "/slow":
            await gate.wait()
        return await echo(req)

    async def main() -> None:
        async with served(slow, requests_in_flight_max=1,
                          in_flight_exempt_paths=frozenset({"/healthz"})) as srv:
            host, port = srv.address  # type: ignore[attr-defined]
            r1, w1 = await asyncio.open_connection(host, port)
            w1.write(b"GET /slow HTTP/1.1\r\n\r\n")
            await wait_until(lambda: srv.in_flight == 1, "the slow request to be in hand")

            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(b"GET /b HTTP/1.1\r\n\r\n")
            status, headers, body = await asyncio.wait_for(read_answer(r2), WAIT_S)
            assert status == 503 and headers["retry-after"] == "1", (status, headers)
            assert "in flight" in json.loads(body)["error"]
            # the connection stays usable; a pipelined flood is answered in order, 503 each
            w2.write(b"GET /healthz HTTP/1.1\r\n\r\n" + b"GET /x HTTP/1.1\r\n\r\n" * 300)
            health = await asyncio.wait_for(read_answer(r2), WAIT_S)
            assert health[0] == 200 and json.loads(health[2])["target"] == "/healthz"
            for _ in range(300):
                assert (await asyncio.wait_for(read_answer(r2), WAIT_S))[0] == 503
            # a refused request with a body closes the connection (the body is never read)
            r3, w3 = await asyncio.open_connection(host, port)
            w3.write(b"PUT /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            status, headers, _ = await asyncio.wait_for(read_answer(r3), WAIT_S)
            assert status == 503 and headers["connection"] == "close"
            assert await closed(r3)

            gate.set()
            assert (await asyncio.wait_for(read_answer(r1), WAIT_S))[0] == 200
            assert srv.in_flight == 0
            w2.write(b"GET /c HTTP/1.1\r\n\r\n")
            assert (await asyncio.wait_for(read_answer(r2), WAIT_S))[0] == 200
            for w in (w1, w2, w3):
                w.close()

    run(main())


def test_connections_beyond_the_bound_get_503_and_are_closed() -> None:
    async def main() -> None:
        async with served(connections_max=2) as srv:
            host, port = srv.address  # type: ignore[attr-defined]
            held = [await asyncio.open_connection(host, port) for _ in range(2)]
            await wait_until(lambda: len(srv.connections) == 2, "two connections")

            r3, w3 = await asyncio.open_connection(host, port)
            status, headers, body = await asyncio.wait_for(read_answer(r3), WAIT_S)
            assert status == 503 and headers["retry-after"] == "1"
            assert headers["connection"] == "close" and "connections" in json.loads(body)["error"]
            w3.write(b"GET /a HTTP/1.1\r\n\r\n")  # never answered: dropped, then closed
            assert await closed(r3)
            assert len(srv.connections) == 2

            held[0][1].close()
            await wait_until(lambda: len(srv.connections) == 1, "a connection to close")
            r4, w4 = await asyncio.open_connection(host, port)
            w4.write(b"GET /again HTTP/1.1\r\n\r\n")
            assert (await asyncio.wait_for(read_answer(r4), WAIT_S))[0] == 200
            for _, w in [*held[1:], (r4, w4)]:
                w.close()
            w3.close()

    run(main())


def test_refused_connections_lingering_are_bounded_too() -> None:
    """Beyond connections_max refused ones still lingering, a connection is reset at once."""

    async def main() -> None:
        async with served(connections_max=1) as srv:
            host, port = srv.address  # type: ignore[attr-defined]
            _, w1 = await asyncio.open_connection(host, port)
            r2, w2 = await asyncio.open_connection(host, port)  # refused, lingering (kept open)
            assert (await asyncio.wait_for(read_answer(r2), WAIT_S))[0] == 503
            await wait_until(lambda: len(srv.refused) == 1, "the refused one to linger")
            r3, w3 = await asyncio.open_connection(host, port)
            try:
                got = await asyncio.wait_for(r3.read(), WAIT_S)
            except ConnectionResetError:
                got = b""
            assert got == b""  # reset or closed, without an answer
            assert len(srv.refused) == 1
            for w in (w1, w2, w3):
                w.close()

    run(main())


def test_the_rms_refusals_are_its_json_errors() -> None:
    for status, code, closes in [(400, "invalid_argument", True), (408, "request_timeout", True),
                                 (503, "unavailable", False), (500, "internal", False)]:
        resp = app.refusal_response(status, "why")
        error = json.loads(resp.body)["error"]
        assert (resp.status, error["code"], resp.close) == (status, code, closes)
        assert resp.content_type == "application/json"
        assert (resp.headers or {}).get("Retry-After") == ("1" if status == 503 else None)


def test_the_connection_bound_fits_under_the_open_files_limit(monkeypatch: Any) -> None:
    """The soft limit is raised toward the hard one; what still does not fit lowers the bound."""
    import resource

    limits_now = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit",
                        lambda _: (limits_now["soft"], limits_now["hard"]))

    def setrlimit(_: int, pair: tuple[int, int]) -> None:
        assert pair[0] <= pair[1] or pair[1] == resource.RLIM_INFINITY, pair
        limits_now["soft"], limits_now["hard"] = pair

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert app._connections_within_fd_limit(1024) == 1024
    assert limits_now["soft"] == 1024 + app.FDS_RESERVED
    limits_now.update(soft=512, hard=512)
    assert app._connections_within_fd_limit(1024) == 512 - app.FDS_RESERVED
    limits_now.update(soft=resource.RLIM_INFINITY, hard=resource.RLIM_INFINITY)
    assert app._connections_within_fd_limit(1024) == 1024
