"""The HTTP/1.1 server of the rm's API and of every process's /metrics: an ``asyncio.Protocol``
that parses requests itself. It sits below both (:mod:`rangekv.metrics` serves with it, and the
rm imports :mod:`rangekv.metrics`), so it is a module of its own, not the rm's.

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
  unknown HTTP version, not HTTP at all) gets the answer ``refuse(400, message)`` makes, and the
  connection is closed: its parser state cannot be trusted.
* A body the handler did not read to its end makes the connection close after the answer
  (the unread bytes cannot be told apart from the next request).
* A handler is never cancelled because its client went away (a write must run its course: the
  outcome is the node's, not the client's).

Limits (``rangekv.limits.HTTP_*`` by default; every one is on). The server answers these
itself, with the response ``refuse(status, message)`` makes:

=====================  ========================================================================
what                   rule
=====================  ========================================================================
idle connection        no byte of a next request within ``KEEPALIVE_S``: closed, no answer
head deadline          a head must arrive whole within ``head_timeout_s`` of its first byte (of
                       the accept, for a connection's first request): else 408 and close (a
                       connection that never sent a byte is closed without an answer)
body deadline          a body must arrive whole within ``body_timeout_s`` of the handler's first
                       ``read_body`` (when ``Expect: 100-continue`` gets its go-ahead): else
                       ``read_body`` raises ``BodyTimeout``, the handler answers 408 (the server
                       does if the handler lets it through) and the connection closes
requests in flight     a head that completes while ``requests_in_flight_max`` requests are being
                       handled is answered 503 at once, never queued (``in_flight_exempt_paths``,
                       the health checks, are neither refused nor counted)
connections            an accepted connection beyond ``connections_max`` gets a 503 at once and
                       is closed (see ``HttpProtocol.connection_made`` for why not stop accepting)
=====================  ========================================================================

Deadlines are totals, never idle timers that each byte resets: a client trickling a byte every
few seconds (slowloris, slow POST) runs out of time like a silent one. A connection the server
closes with unread bytes coming is closed gently (``_linger``): the answer is sent, our side is
shut, what arrives is dropped, and the socket is closed at the client's EOF or ``LINGER_S``.

Invariants: bytes are buffered only while a request is being handled or its head is incomplete,
at most ``BUFFER_BYTES_MAX`` before reading pauses; answers on a connection go out in the order
the requests came; every answer carries ``Content-Length``; at most one timer per connection is
armed (idle, head or body deadline, or linger); open connections never exceed
``connections_max`` plus the refused ones lingering, themselves at most ``connections_max``.
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

from rangekv import limits

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


class BodyTimeout(Exception):
    """The body did not arrive whole within ``body_timeout_s``; the connection closes after the
    answer (a 408: the handler's, or the server's if the handler lets this through)."""


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

    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = False  # close the connection after this answer


class Request:
    """One request: method, raw target, version, headers; the body is read on demand."""

    __slots__ = (
        "_body_clock",
        "_body_done",
        "_conn",
        "_expect_continue",
        "chunked",
        "content_length",
        "headers",
        "method",
        "raw_path",
        "remote",
        "version",
    )

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
        self._body_clock = False  # the body deadline runs (from the first read_body)

    async def read_body(self, limit: int) -> bytes:
        """The body, or its first ``limit + 1`` bytes if it is longer (the caller refuses it:
        the rest is never read, and the connection closes after the answer). Raises
        ``ConnectionError`` if the client goes away first, ``BadRequest`` for bad chunking,
        ``BodyTimeout`` if the body is not whole within the server's ``body_timeout_s`` of
        the first call."""
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
# The server's own answers: (status, message) -> response. Statuses: 400 (malformed request),
# 408 (head or body too slow), 503 (requests in flight or connections at their bound), 500 (a
# handler raised: a bug).
Refuse = Callable[[int, str], Response]


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
        self._timer: asyncio.TimerHandle | None = None  # idle, head, body or linger (one at most)
        self._head_started = False  # the head deadline runs (bytes of a head, or a new connection)
        self._body_late = False  # the body deadline passed: read_body raises BodyTimeout
        self._lingering = False
        self._counted = False  # in server.connections (else: refused, or never accepted)
        self._refused = False  # over connections_max: answered 503, lingering, then closed
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
        server = self.server
        if len(server.connections) >= server.connections_max:
            # Over the bound: accept, answer 503 with Retry-After, close. Not accepting instead
            # (as HAProxy's maxconn does) would leave the client's connect hanging in the
            # kernel's backlog until its own timeout, then failing with no reason given; this
            # costs an accept and one write, and tells it at once to come back (or HAProxy to
            # try another rm). The refused ones linger at most LINGER_S, and at most
            # connections_max of them: beyond that a connection is reset without an answer.
            self._closed = True
            if len(server.refused) >= server.connections_max:
                self.transport.abort()
                return
            self._refused = True
            server.refused.add(self)
            log.warning("refusing a connection from %s: %d open, the most this server holds",
                        self.remote, len(server.connections))
            resp = server.refuse(503, f"{len(server.connections)} connections open, the most "
                                      f"this server holds; retry")
            self.write(encode_response(resp, head_only=False, close=True))
            self._linger(self.transport)
            return
        self._counted = True
        server.connections.add(self)
        # the first request's head is due within the head deadline from now; a connection
        # that sends nothing at all is closed then, without an answer
        self._head_started = True
        self._arm(server.head_timeout_s, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._counted:
            self._counted = False
            self.server.connections.discard(self)
        if self._refused:
            self._refused = False
            self.server.refused.discard(self)
        self._disarm()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody reads: dropped (see _linger)
        self._buf += data
        if self._req is None:
            if not self._head_started:  # the first bytes of a next request: its deadline runs
                self._head_started = True
                self._arm(self.server.head_timeout_s, self._head_expired)
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

    # -- timers -------------------------------------------------------------------------------
    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Make ``callback`` the one timer of this connection, due in ``delay_s``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_timeout(self) -> None:
        self._timer = None
        if self._req is None and self.transport is not None:
            self.transport.close()

    def _head_expired(self) -> None:
        self._timer = None
        if self._req is not None or self._closed or self.transport is None:
            return
        if not self._buf:  # not a byte: nobody is waiting for an answer
            self.transport.close()
            self._closed = True
            return
        self._refuse(408, f"the request head did not arrive whole within "
                          f"{self.server.head_timeout_s:g} s")

    def _body_expired(self) -> None:
        self._timer = None
        self._body_late = True
        self._wake()

    # -- requests -----------------------------------------------------------------------------
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
                self._refuse(400, "request line or headers too long")
            return
        head = bytes(buf[:end])
        del buf[:end + 4]
        try:
            method, target, version, headers = parse_head(head, self.server.request_line_max)
            content_length, chunked = body_framing(headers)
        except BadRequest as exc:
            self._refuse(400, str(exc))
            return
        except UnicodeDecodeError:
            self._refuse(400, "malformed request head")
            return
        req = Request(self, method, target, version, headers, content_length, chunked)
        self._req = req
        self._chunk_left, self._chunk_crlf, self._chunks_done = 0, False, False
        self._head_started = False
        self._body_late = False
        self._disarm()
        server = self.server
        refusal = None
        counted = target.partition("?")[0] not in server.in_flight_exempt_paths
        if counted and server.in_flight >= server.requests_in_flight_max:
            # Saturated: say so now, with Retry-After, rather than queue without end behind
            # the requests in hand (the client or HAProxy can go elsewhere or come back).
            counted = False
            refusal = server.refuse(503, f"{server.in_flight} requests in flight, the most "
                                         f"this server takes at once; retry")
        if counted:
            server.in_flight += 1
        # (a task even for a refusal: answers stay in order, and a pipelined flood of refused
        # requests is answered one loop turn each, not by recursion)
        self._task = asyncio.get_running_loop().create_task(self._handle(req, counted, refusal))

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the server refuses before any handler sees it, and close."""
        log.info("refused a request from %s: %d %s", self.remote, status, message)
        resp = self.server.refuse(status, message[:200])
        self.write(encode_response(resp, head_only=False, close=True))
        assert self.transport is not None
        self._closed = True
        self._linger(self.transport)

    async def _handle(self, req: Request, counted: bool, refusal: Response | None) -> None:
        if refusal is not None:
            self._finish(req, refusal)
            return
        try:
            resp = await self.server.dispatch(req)
        except BodyTimeout as exc:  # the handler let it through: the server's own 408
            resp = self.server.refuse(408, str(exc))
        except Exception:  # dispatch answers every error itself: a bug; never hang
            log.exception("bug answering %s %s", req.method, req.raw_path[:200])
            resp = self.server.refuse(500, "internal error")
            resp.close = True
        finally:
            if counted:
                self.server.in_flight -= 1
                assert self.server.in_flight >= 0, self.server.in_flight
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
        self._disarm()
        if not keep:
            if req.body_done or self._eof:
                transport.close()
            else:
                self._linger(transport)
            self._closed = True
            return
        self._resume_reading()
        if self._buf:  # a pipelined request's head (or part of it) is here: its deadline runs
            self._head_started = True
            self._arm(self.server.head_timeout_s, self._head_expired)
            self._next_request()
        else:
            self._arm(KEEPALIVE_S, self._idle_timeout)

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
        self._arm(LINGER_S, transport.close)

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
        """Wait for more bytes; ConnectionError if the client went away, BodyTimeout once the
        body deadline has passed."""
        self._check_body_deadline()
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
        self._check_body_deadline()
        # (after an EOF the bytes already buffered are still read; _more raises next time)

    def _check_body_deadline(self) -> None:
        if self._body_late:
            raise BodyTimeout(f"the request body did not arrive whole within "
                              f"{self.server.body_timeout_s:g} s")

    def _start_body_deadline(self, req: Request) -> None:
        """At the handler's first read (for Expect: 100-continue, when the go-ahead is sent:
        the client sends nothing before it)."""
        if not req._body_clock:
            req._body_clock = True
            self._arm(self.server.body_timeout_s, self._body_expired)

    def _body_complete(self, req: Request) -> None:
        req._body_done = True
        self._disarm()  # the body deadline: nothing more to wait for

    async def read_body(self, req: Request, limit: int) -> bytes:
        self._start_body_deadline(req)
        if req.chunked:
            return await self._read_chunked(req, limit)
        length = req.content_length or 0
        want = min(length, limit + 1)
        while len(self._buf) < want:
            await self._more()
        body = bytes(self._buf[:want])
        del self._buf[:want]
        if want == length:
            self._body_complete(req)
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
                    self._body_complete(req)
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
    """Serves ``dispatch`` on a socket; ``refuse(status, message)`` makes the answers the
    server gives itself (see the module docstring for when). Every limit is on by default."""

    def __init__(
        self,
        dispatch: Dispatch,
        refuse: Refuse,
        *,
        request_line_max: int = 8190,
        head_timeout_s: float = limits.HTTP_HEAD_TIMEOUT_S,
        body_timeout_s: float = limits.HTTP_BODY_TIMEOUT_S,
        connections_max: int = limits.HTTP_CONNECTIONS_MAX,
        requests_in_flight_max: int = limits.HTTP_REQUESTS_IN_FLIGHT_MAX,
        in_flight_exempt_paths: frozenset[str] = frozenset(),
    ) -> None:
        assert request_line_max > 0, request_line_max
        assert head_timeout_s > 0 and body_timeout_s > 0, (head_timeout_s, body_timeout_s)
        assert connections_max >= 1 and requests_in_flight_max >= 1, (
            connections_max, requests_in_flight_max)
        self.dispatch = dispatch
        self.refuse = refuse
        self.request_line_max = request_line_max
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.connections_max = connections_max
        self.requests_in_flight_max = requests_in_flight_max
        # Paths answered from memory at once (health checks): never refused for being busy,
        # nor counted, so that a burst does not make HAProxy take a healthy rm out.
        self.in_flight_exempt_paths = in_flight_exempt_paths
        self.connections: set[HttpProtocol] = set()
        self.refused: set[HttpProtocol] = set()  # over connections_max, answered, lingering
        self.in_flight = 0  # requests being handled (but exempt ones)
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
        for conn in [*self.connections, *self.refused]:
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
