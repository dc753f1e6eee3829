"""The rm's HTTP/1.1 server: an ``asyncio.Protocol`` that parses requests itself.

Why not aiohttp's server: per request it built a request object, a payload stream, a response
object with a multidict of headers and a task, and cost about four times the CPU of this parser
for the rm's small requests; the rm was then the most expensive process of a put. This module
does only what the rm's API needs, strictly:

* HTTP/1.0 and 1.1; keep-alive (1.1 unless ``Connection: close``, 1.0 only with
  ``Connection: keep-alive``); pipelined requests are answered in order, one at a time.
* Request bodies by ``Content-Length`` or ``Transfer-Encoding: chunked`` (both at once is
  refused: request smuggling), read only when the handler asks (``Request.read_body``), so a
  handler can refuse a body before it is sent. ``Expect: 100-continue`` gets its go-ahead only
  when the handler first reads.
* ``HEAD`` is answered with the headers of the ``GET`` answer and no body.
* A request the parser cannot accept (a request line over ``request_line_max`` bytes, a header
  line over ``HEADER_LINE_BYTES_MAX``, more than ``HEADERS_MAX`` headers, a malformed line, an
  unknown HTTP version, not HTTP at all) gets the answer ``malformed(message)`` makes, and the
  connection is closed: its parser state cannot be trusted.
* A body the handler did not read to its end makes the connection close after the answer
  (the unread bytes cannot be told apart from the next request).
* An idle connection is closed after ``KEEPALIVE_S``; a handler is never cancelled because its
  client went away (a write must run its course: the outcome is the node's, not the client's).

Invariants: bytes are buffered only while a request is being handled or its head is incomplete,
at most ``BUFFER_BYTES_MAX`` before reading pauses; answers on a connection go out in the order
the requests came; every answer carries ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

log = logging.getLogger("rangekv.rm.http")

HEADER_LINE_BYTES_MAX = 8190
HEADERS_MAX = 100
BUFFER_BYTES_MAX = 4 * 1024 * 1024  # reading pauses above this (a body nobody reads yet)
KEEPALIVE_S = 75.0
CHUNK_SIZE_LINE_BYTES_MAX = 1024
LINGER_S = 2.0  # after answering a request whose body is still coming (see _linger)

# (compiled patterns, not loops over characters: these run on every request and header)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f]")  # no space, control character or DEL
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class BadRequest(Exception):
    """The request cannot be parsed; the connection closes after the answer."""


class Headers(dict[str, str]):
    """Request headers by lower-case name (repeated headers joined with ", ")."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Response:
    """An answer: status, body, content type and extra headers."""

    __slots__ = ("status", "body", "content_type", "headers", "close")

    def __init__(self, body: bytes = b"", status: int = 200, content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = False  # close the connection after this answer


class Request:
    """One request: method, raw target, version, headers; the body is read on demand."""

    __slots__ = ("method", "raw_path", "version", "headers", "remote", "content_length",
                 "chunked", "_conn", "_expect_continue", "_body_done")

    def __init__(self, conn: HttpProtocol, method: str, raw_path: str, version: str,
                 headers: Headers, content_length: int | None, chunked: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version  # "1.1" or "1.0"
        self.headers = headers
        self.remote = conn.remote
        self.content_length = content_length
        self.chunked = chunked
        self._conn = conn
        expect = headers.get("expect")
        self._expect_continue = (version == "1.1" and expect is not None
                                 and expect.lower() == "100-continue")
        self._body_done = not chunked and not content_length

    async def read_body(self, limit: int) -> bytes:
        """The body, or its first ``limit + 1`` bytes if it is longer (the caller refuses it:
        the rest is never read, and the connection closes after the answer). Raises
        ``ConnectionError`` if the client goes away first, ``BadRequest`` for bad chunking."""
        if self._body_done:
            return b""
        if self._expect_continue:
            self._expect_continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await self._conn.read_body(self, limit)

    @property
    def body_done(self) -> bool:
        return self._body_done


Dispatch = Callable[[Request], Awaitable[Response]]
Malformed = Callable[[str], Response]


class _DateCache:
    """The ``Date`` header's value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


_DATE = _DateCache()


def encode_response(resp: Response, head_only: bool, close: bool) -> bytes:
    body = resp.body
    parts = [b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Length: %d\r\n" % (
        resp.status, _REASONS.get(resp.status, "Unknown").encode("ascii"), _DATE.get(),
        len(body))]
    if resp.content_type is not None:
        parts.append(b"Content-Type: %s\r\n" % resp.content_type.encode("latin-1"))
    if resp.headers:
        for name, value in resp.headers.items():
            parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only and body:
        parts.append(body)
    return b"".join(parts)


def parse_head(head: bytes, request_line_max: int) -> tuple[str, str, str, Headers]:
    """(method, raw target, version, headers) of a request head (without its final CRLFCRLF)."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > request_line_max:
        raise BadRequest(f"request line of {len(line)} bytes is over {request_line_max}")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method_b, target_b, version_b = parts
    if not _TOKEN.fullmatch(method_b):
        raise BadRequest("malformed method")
    if version_b == b"HTTP/1.1":
        version = "1.1"
    elif version_b == b"HTTP/1.0":
        version = "1.0"
    else:
        raise BadRequest(f"unsupported HTTP version {version_b[:20]!r}")
    if not target_b or _TARGET_BAD.search(target_b):
        raise BadRequest("malformed request target")
    if len(lines) - 1 > HEADERS_MAX:
        raise BadRequest(f"more than {HEADERS_MAX} headers")
    headers = Headers()
    for raw in lines[1:]:
        if len(raw) > HEADER_LINE_BYTES_MAX:
            raise BadRequest(f"header line over {HEADER_LINE_BYTES_MAX} bytes")
        name_b, sep, value_b = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name_b):
            raise BadRequest("malformed header line")
        name = name_b.decode("ascii").lower()
        value_b = value_b.strip(b" \t")
        if _VALUE_BAD.search(value_b):
            raise BadRequest("control character in a header value")
        value = value_b.decode("latin-1")
        old = dict.get(headers, name)
        dict.__setitem__(headers, name, value if old is None else f"{old}, {value}")
    return method_b.decode("ascii"), target_b.decode("latin-1"), version, headers


def body_framing(headers: Headers) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a request, checked."""
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if te.strip().lower() != "chunked":
            raise BadRequest(f"unsupported Transfer-Encoding {te[:40]!r}")
        return None, True
    if cl is None:
        return None, False
    cl = cl.strip()
    if not cl.isdigit() or not cl.isascii() or len(cl) > 18:
        raise BadRequest("malformed Content-Length")
    return int(cl), False


class HttpProtocol(asyncio.Protocol):
    """One connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._buf = bytearray()
        self._req: Request | None = None  # the request being handled
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # read_body waiting for bytes
        self._paused = False
        self._closed = False
        self._idle: asyncio.TimerHandle | None = None
        self._lingering = False
        self._eof = False  # the client closed its side (answer what is in hand, then close)
        # chunked body state of the current request
        self._chunk_left = 0  # data bytes left in the current chunk
        self._chunk_crlf = False  # the CRLF after a chunk's data is next
        self._chunks_done = False  # the last (empty) chunk came: trailers follow

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody reads: dropped (see _linger)
        self._buf += data
        if self._req is None:
            self._next_request()
        else:
            self._wake()
        if not self._paused and len(self._buf) > BUFFER_BYTES_MAX and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        if self._req is None:
            return None  # nothing in hand: close
        return True  # keep our side open for the answer in hand (see _finish)

    # -- requests -----------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._req is None and self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _next_request(self) -> None:
        """Start on the next request if its head is complete (called with none in hand)."""
        if self._closed or self.transport is None or self.transport.is_closing():
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            limit = self.server.request_line_max + HEADERS_MAX * (HEADER_LINE_BYTES_MAX + 2)
            if len(buf) > limit or (buf.find(b"\r\n") < 0 and
                                    len(buf) > self.server.request_line_max):
                self._refuse("request line or headers too long")
            return
        head = bytes(buf[:end])
        del buf[:end + 4]
        try:
            method, target, version, headers = parse_head(head, self.server.request_line_max)
            content_length, chunked = body_framing(headers)
        except BadRequest as exc:
            self._refuse(str(exc))
            return
        except UnicodeDecodeError:
            self._refuse("malformed request head")
            return
        req = Request(self, method, target, version, headers, content_length, chunked)
        self._req = req
        self._chunk_left, self._chunk_crlf, self._chunks_done = 0, False, False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._task = asyncio.get_running_loop().create_task(self._handle(req))

    def _refuse(self, message: str) -> None:
        log.info("malformed request from %s: %s", self.remote, message)
        resp = self.server.malformed(message[:200])
        self.write(encode_response(resp, head_only=False, close=True))
        assert self.transport is not None
        self.transport.close()
        self._closed = True

    async def _handle(self, req: Request) -> None:
        try:
            resp = await self.server.dispatch(req)
        except Exception:  # dispatch answers every error itself: a bug; never hang
            log.exception("bug answering %s %s", req.method, req.raw_path[:200])
            resp = self.server.malformed("internal error")
            resp.status = 500
            resp.close = True
        self._finish(req, resp)

    def _finish(self, req: Request, resp: Response) -> None:
        transport = self.transport
        if self._closed or transport is None or transport.is_closing():
            return
        conn_header = (req.headers.get("connection") or "").lower()
        if req.version == "1.1":
            keep = "close" not in conn_header
        else:
            keep = "keep-alive" in conn_header
        keep = keep and not resp.close and req.body_done and not self._eof
        self.write(encode_response(resp, head_only=req.method == "HEAD", close=not keep))
        self._req = None
        self._task = None
        if not keep:
            if req.body_done or self._eof:
                transport.close()
            else:
                self._linger(transport)
            self._closed = True
            return
        self._resume_reading()
        self._arm_idle()
        if self._buf:
            self._next_request()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after an answer to a request whose body is still coming: shut our side,
        drop what arrives for a moment, then close. Closing at once with unread bytes makes
        the kernel reset the connection, and a reset can destroy the answer before the client
        reads it (a 413 would arrive as a connection error)."""
        self._lingering = True
        self._buf.clear()
        self._resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def _resume_reading(self) -> None:
        """Read again after ``data_received`` paused at ``BUFFER_BYTES_MAX``."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- bodies -------------------------------------------------------------------------------
    async def _more(self) -> None:
        """Wait for more bytes; ConnectionError if the client went away."""
        if self._closed or self._eof:
            raise ConnectionError("the client closed the connection")
        self._resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._closed:
            raise ConnectionError("the client closed the connection")
        # (after an EOF the bytes already buffered are still read; _more raises next time)

    async def read_body(self, req: Request, limit: int) -> bytes:
        if req.chunked:
            return await self._read_chunked(req, limit)
        length = req.content_length or 0
        want = min(length, limit + 1)
        while len(self._buf) < want:
            await self._more()
        body = bytes(self._buf[:want])
        del self._buf[:want]
        if want == length:
            req._body_done = True
        return body

    async def _read_chunked(self, req: Request, limit: int) -> bytes:
        out = bytearray()
        buf = self._buf
        while len(out) <= limit and not req._body_done:
            if self._chunk_left:  # inside a chunk's data
                if not buf:
                    await self._more()
                    continue
                take = min(self._chunk_left, len(buf), limit + 1 - len(out))
                out += buf[:take]
                del buf[:take]
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_crlf = True
                continue
            if self._chunk_crlf:  # the CRLF after a chunk's data
                if len(buf) < 2:
                    await self._more()
                    continue
                if buf[:2] != b"\r\n":
                    raise BadRequest("chunk data not followed by CRLF")
                del buf[:2]
                self._chunk_crlf = False
                continue
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > CHUNK_SIZE_LINE_BYTES_MAX:
                    raise BadRequest("chunk size or trailer line too long")
                await self._more()
                continue
            line = bytes(buf[:nl])
            del buf[:nl + 2]
            if self._chunks_done:  # trailers, up to an empty line
                if not line:
                    req._body_done = True
                continue
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                raise BadRequest("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                self._chunks_done = True
            else:
                self._chunk_left = size
        return bytes(out[:limit + 1])


class HttpServer:
    """Serves ``dispatch`` on a socket; ``malformed(message)`` answers unparsable requests."""

    def __init__(self, dispatch: Dispatch, malformed: Malformed, *,
                 request_line_max: int = 8190) -> None:
        self.dispatch = dispatch
        self.malformed = malformed
        self.request_line_max = request_line_max
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self), host, port,
                                                reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self, timeout_s: float) -> None:
        """Stop accepting; let the requests in hand finish (at most ``timeout_s``); close."""
        if self._server is not None:
            self._server.close()
        tasks = [c._task for c in self.connections if c._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
