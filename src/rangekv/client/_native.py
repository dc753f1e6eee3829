"""The native protocol's connections: ``rangekv://HOST:PORT`` endpoints (an rm's native port, or
HAProxy's native frontend in front of several).

Frames are ``rangekv.wire``'s: length, crc32c, msgpack. The async side keeps ``connections``
connections per endpoint (HAProxy spreads them over the rms) with any number of requests in
flight on each, answered in any order by id; the frames of one event-loop turn leave in one
write. The sync side keeps a pool of blocking sockets, one request at a time on each, so that
threads never wait on each other's answers.

An attempt ends in the answer's fields, or a :class:`~rangekv.client._common.Failure` that says
whether the request surely was not sent (the connection could not be made) and that the next
attempt should go to another endpoint (any connection failure or timeout: the connection is
dropped, and a new one may reach another rm).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
import weakref
from typing import Any

from rangekv import errors, wire
from rangekv.client._common import _MISSING, Call, Failure

CONNECTIONS_DEFAULT = 2
SWEEP_S = 0.05  # how often requests past their time are ended (a timeout is late by at most this)
SCHEME = "rangekv://"


def parse_endpoint(url: str) -> tuple[str, int]:
    """``rangekv://HOST:PORT`` → (host, port)."""
    rest = url[len(SCHEME):] if url.startswith(SCHEME) else url
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise errors.InvalidArgument(f"endpoint {url!r} is not rangekv://HOST:PORT")
    return host.strip("[]"), int(port)


def _not_sent(endpoint: str, exc: BaseException) -> Failure:
    return Failure(errors.Unavailable(f"cannot connect to {endpoint}: "
                                      f"{exc or type(exc).__name__}", endpoint=endpoint),
                   not_sent=True, failover=True, cause=exc)


def _lost(endpoint: str, call: Call, why: str) -> Failure:
    cls = errors.OutcomeUnknown if call.write else errors.Unavailable
    return Failure(cls(f"connection to {endpoint} {why}", endpoint=endpoint), not_sent=False,
                   failover=True)


def _timed_out(endpoint: str, timeout_s: float) -> Failure:
    return Failure(errors.Timeout(f"no answer from {endpoint} within {timeout_s:.3g} s",
                                  endpoint=endpoint), not_sent=False, failover=True)


def settle_reply(call: Call, body: dict[str, Any]) -> Any:
    """The result of ``call`` from its answer frame, or a :class:`Failure`."""
    if body.get("ok") is True:
        try:
            return call.reply(body)
        except errors.BatchFailed:
            raise
        except errors.ProtocolError as exc:
            return Failure(exc, not_sent=False, failover=True)
    raw = body.get("error")
    err = errors.from_dict(raw if isinstance(raw, dict) else {})
    if call.if_key_not_found is not _MISSING and isinstance(err, errors.KeyNotFound):
        return call.if_key_not_found
    elsewhere = bool(err.details.get("retry_elsewhere"))
    return Failure(err, not_sent=isinstance(err, errors.Unavailable), failover=elsewhere)


def _frame(req_id: int, call: Call, extra: dict[str, Any] | None) -> bytes:
    body = {"t": "req", "id": req_id, "op": call.op, **call.fields}
    if extra:
        body.update(extra)
    return wire.encode(body)


# --- asyncio ----------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One connection: requests in flight by id; a reply resolves its future."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.FrameDecoder()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.closed = False
        self.retired = False
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        wire.tune_socket(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except errors.ProtocolError:
            self.abort()
            return
        pending = self.pending
        for body in frames:
            fut = pending.pop(body.get("id"), None)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(body)
        if self.retired and not pending and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection lost"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def retire(self) -> None:
        """Close once the requests in flight are answered (none new are sent here)."""
        self.retired = True
        if not self.pending and self.transport is not None:
            self.transport.close()

    def send(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


class AsyncNative:
    """The async client's native transport: ``connections`` per endpoint, used in turn."""

    def __init__(self, connections: int = CONNECTIONS_DEFAULT) -> None:
        if not isinstance(connections, int) or connections < 1:
            raise errors.InvalidArgument("connections must be a positive integer")
        self.connections = connections
        self._conns: dict[str, list[_Conn | None]] = {}
        self._turn = itertools.count()
        self._connecting: dict[tuple[str, int], asyncio.Future[_Conn]] = {}
        self._deadlines: list[tuple[float, asyncio.Future[dict[str, Any]]]] = []
        self._opened: weakref.WeakSet[_Conn] = weakref.WeakSet()  # retired ones too
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def _conn(self, endpoint: str, connect_timeout_s: float) -> _Conn:
        slots = self._conns.get(endpoint)
        if slots is None:
            slots = self._conns[endpoint] = [None] * self.connections
        i = next(self._turn) % self.connections
        conn = slots[i]
        if conn is not None and not conn.closed:
            return conn
        key = (endpoint, i)
        waiting = self._connecting.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()
        self._connecting[key] = fut
        try:
            host, port = parse_endpoint(endpoint)
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Conn(endpoint), host, port)
            if self._closed:  # the client was closed while this connection was being made
                conn.abort()
                raise errors.Unavailable("the client is closed")
            slots[i] = conn
            self._opened.add(conn)
            fut.set_result(conn)
            return conn
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when no one waited
            raise
        finally:
            del self._connecting[key]

    async def attempt(self, endpoint: str, call: Call, extra: dict[str, Any] | None,
                      timeout_s: float, connect_timeout_s: float) -> Any:
        """The call's result, or a Failure."""
        try:
            conn = await self._conn(endpoint, min(timeout_s, connect_timeout_s))
        except errors.InvalidArgument:
            raise
        except (OSError, TimeoutError) as exc:
            return _not_sent(endpoint, exc)
        req_id = next(conn.ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        conn.pending[req_id] = fut
        conn.send(_frame(req_id, call, extra))
        self._expire_at(fut, loop.time() + timeout_s)
        try:
            body = await fut
        except ConnectionResetError:
            return _lost(endpoint, call, "was lost during the request")
        except TimeoutError:
            conn.pending.pop(req_id, None)
            return _timed_out(endpoint, timeout_s)
        outcome = settle_reply(call, body)
        if isinstance(outcome, Failure) and outcome.error.details.get("retry_elsewhere"):
            self._retire(endpoint, conn)
        return outcome

    def _retire(self, endpoint: str, conn: _Conn) -> None:
        """The rm behind ``conn`` asks to be left (it cannot follow the map, or its clock is
        off): new requests take a new connection, which the balancer may send to another rm;
        the requests in flight on this one finish (aborting it would lose them all, most of
        them through a healthy rm's turn of the slot)."""
        slots = self._conns.get(endpoint, [])
        for i, c in enumerate(slots):
            if c is conn:
                slots[i] = None
        conn.retire()

    def _expire_at(self, fut: asyncio.Future[dict[str, Any]], when: float) -> None:
        """Time ``fut`` out at loop time ``when``. One sweep every ``SWEEP_S`` ends what is
        due, instead of a timer per request (arming and cancelling a timer for each of many
        requests in flight was a tenth of the client's CPU)."""
        self._deadlines.append((when, fut))
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        keep = []
        for when, fut in self._deadlines:
            if fut.done():
                continue
            if when <= now:
                fut.set_exception(TimeoutError())
            else:
                keep.append((when, fut))
        self._deadlines = keep
        self._sweeper = loop.call_later(SWEEP_S, self._sweep) if keep else None

    def drop(self, endpoint: str) -> None:
        """Close the endpoint's connections (the next request opens new ones, which HAProxy
        may send to another rm)."""
        for conn in self._conns.pop(endpoint, []):
            if conn is not None:
                conn.abort()

    async def close(self) -> None:
        for endpoint in list(self._conns):
            self.drop(endpoint)
        self._closed = True
        for conn in list(self._opened):  # (retired connections still finishing)
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        # an aborted transport closes its socket in a callback of the next turn: let it run
        # (a loop that stops first leaves the socket open)
        await asyncio.sleep(0)


# --- blocking sockets ---------------------------------------------------------------------------


class SyncNative:
    """The sync client's native transport: a pool of blocking sockets per endpoint."""

    def __init__(self, pool_max: int = 64) -> None:
        self.pool_max = pool_max
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _take(self, endpoint: str, connect_timeout_s: float) -> socket.socket:
        with self._lock:
            idle = self._idle.get(endpoint)
            if idle:
                return idle.pop()
        host, port = parse_endpoint(endpoint)
        sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.tune_socket(sock)
        return sock

    def _give_back(self, endpoint: str, sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) < self.pool_max:
                idle.append(sock)
                return
        sock.close()

    def attempt(self, endpoint: str, call: Call, extra: dict[str, Any] | None,
                timeout_s: float, connect_timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        try:
            sock = self._take(endpoint, min(timeout_s, connect_timeout_s))
        except OSError as exc:
            return _not_sent(endpoint, exc)
        req_id = next(self._ids)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(_frame(req_id, call, extra))
            decoder = wire.FrameDecoder()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(wire.READ_CHUNK_BYTES)
                if not data:
                    raise ConnectionResetError("closed by the server")
                frames = decoder.feed(data)
                body = next((b for b in frames if b.get("id") == req_id), None)
                if body is not None:
                    break
        except TimeoutError:
            sock.close()
            return _timed_out(endpoint, timeout_s)
        except (OSError, errors.ProtocolError) as exc:
            sock.close()
            return _lost(endpoint, call, f"failed during the request: {exc}")
        err = body.get("error") if body.get("ok") is not True else None
        if decoder.buffered or (isinstance(err, dict) and err.get("retry_elsewhere")):
            # a stray partial frame (the connection's state is unknown), or an rm that asks to
            # be left: a new connection may reach another rm
            sock.close()
        else:
            self._give_back(endpoint, sock)
        return settle_reply(call, body)  # (may raise BatchFailed: the socket is settled first)

    def drop(self, endpoint: str) -> None:
        with self._lock:
            idle = self._idle.pop(endpoint, [])
        for sock in idle:
            sock.close()

    def close(self) -> None:
        for endpoint in list(self._idle):
            self.drop(endpoint)
