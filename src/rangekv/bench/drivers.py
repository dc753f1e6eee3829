"""How one generator process talks to each system: a lean connection and four operations.

Every driver offers ``put``, ``insert`` (a put that also keeps the system's ordered index when
it needs one: Redis), ``get`` (raises ``OpError("not_found")`` for a missing key) and ``scan``
(up to ``limit`` keys from ``start``, or from a cursor of an earlier page, within the table;
returns the number of keys and the next page's cursor, ``None`` at the end). An operation that
fails raises ``OpError(kind)``; the generator counts errors by kind and never mixes them with
successes.

* ``rangekv``: HTTP/1.1 to HAProxy. ``PUT``/``GET /v1/tables/T/keys/K``, pages of
  ``GET /v1/tables/T/keys?start=K&limit=N`` then ``?after=<cursor>``.
* ``etcd-http``: etcd's v3 JSON gateway (``/v3/kv/put``, ``/v3/kv/range``; linearizable reads,
  etcd's default), base64 keys and values, connections spread over the members. A table is a
  key prefix ``T/``.
* ``etcd-py``: the ``aetcd`` package (asyncio gRPC): one channel per member per generator
  process, shared by that process's workers (gRPC multiplexes). Pages use aetcd's ``kvstub``
  directly, since its ``get_range`` has no limit.
* ``redis``: RESP. ``SET``/``GET``; ``insert`` also adds the key to a sorted set ``T:idx``
  (pipelined with the SET), which pages read with ``ZRANGE ... BYLEX LIMIT`` then ``MGET``.

Connections (``Conn``) carry one request at a time in practice (the generator's workers are
closed loops) but queue pipelined replies in order. A per-process watchdog aborts a connection
whose oldest request is older than the timeout; its waiter fails with ``timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from rangekv.bench.proto import (
    HttpResponseParser,
    ProtocolError,
    RespError,
    RespParser,
    http_request,
    resp_command,
)

SYSTEMS = ("rangekv", "etcd-http", "etcd-py", "redis")
TIMEOUT_S_DEFAULT = 10.0


class OpError(Exception):
    """One operation failed; ``kind`` is what the error counts are keyed by."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """A system as the generator processes see it (picklable: sent to spawned processes)."""

    kind: str
    addresses: tuple[tuple[str, int], ...]
    timeout_s: float = TIMEOUT_S_DEFAULT

    def __post_init__(self) -> None:
        assert self.kind in SYSTEMS, self.kind
        assert self.addresses, "a target has at least one address"


class Conn(asyncio.Protocol):
    """One keep-alive connection; ``request`` returns a future of the next ``replies``
    messages that the parser frames."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[asyncio.Future[list[Any]], int, list[Any], float]] = deque()
        self.closed = False
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except (ProtocolError, ValueError):
            self._fail(OpError("protocol"))
            self.abort()
            return
        for msg in messages:
            if not self.waiters:
                self._fail(OpError("protocol"))  # an answer nobody asked for
                self.abort()
                return
            fut, n, got, _ = self.waiters[0]
            got.append(msg)
            if len(got) == n:
                self.waiters.popleft()
                if not fut.done():
                    fut.set_result(got)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(OpError("timeout" if self.timed_out else "connection"))

    def _fail(self, exc: Exception) -> None:
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)

    def request(self, data: bytes, replies: int = 1) -> asyncio.Future[list[Any]]:
        if self.closed or self.transport is None:
            raise OpError("connection")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((fut, replies, [], time.monotonic()))
        self.transport.write(data)
        return fut

    def overdue(self, now: float, timeout_s: float) -> bool:
        return bool(self.waiters) and now - self.waiters[0][3] > timeout_s

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Driver:
    """The base of the per-system drivers: connections and the watchdog."""

    def __init__(self, target: Target, table: str) -> None:
        self.target = target
        self.table = table
        self.conns: list[Conn] = []

    async def _connect(self, slot: int, parser: Any) -> Conn:
        host, port = self.target.addresses[slot % len(self.target.addresses)]
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Conn(parser), host, port), self.target.timeout_s)
        except (TimeoutError, OSError):
            raise OpError("connect") from None
        self.conns = [c for c in self.conns if not c.closed]
        self.conns.append(conn)
        return conn

    async def open(self, slot: int) -> Any:
        raise NotImplementedError

    def watchdog(self) -> None:
        now = time.monotonic()
        for c in self.conns:
            if c.overdue(now, self.target.timeout_s):
                c.timed_out = True
                c.abort()

    async def close(self) -> None:
        for c in self.conns:
            c.abort()
        self.conns = []

    async def put(self, c: Any, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    async def insert(self, c: Any, key: bytes, value: bytes) -> None:
        await self.put(c, key, value)

    async def get(self, c: Any, key: bytes) -> bytes:
        raise NotImplementedError

    async def scan(self, c: Any, start: bytes, limit: int,
                   cursor: Any = None) -> tuple[int, Any]:
        raise NotImplementedError


def _http_check(status: int) -> None:
    if status == 404:
        raise OpError("not_found")
    if status != 200:
        raise OpError(f"http_{status}")


class RangeKVDriver(Driver):
    async def open(self, slot: int) -> Conn:
        return await self._connect(slot, HttpResponseParser())

    async def put(self, c: Conn, key: bytes, value: bytes) -> None:
        path = f"/v1/tables/{self.table}/keys/{quote(key, safe='')}"
        (status, _), = await c.request(http_request("PUT", path, "rangekv", value))
        _http_check(status)

    async def get(self, c: Conn, key: bytes) -> bytes:
        path = f"/v1/tables/{self.table}/keys/{quote(key, safe='')}"
        (status, body), = await c.request(http_request("GET", path, "rangekv"))
        _http_check(status)
        return body

    async def scan(self, c: Conn, start: bytes, limit: int,
                   cursor: Any = None) -> tuple[int, Any]:
        query = (f"after={cursor}" if cursor is not None
                 else f"start={quote(start, safe='')}")
        path = f"/v1/tables/{self.table}/keys?{query}&limit={limit}"
        (status, body), = await c.request(http_request("GET", path, "rangekv"))
        _http_check(status)
        page = json.loads(body)
        return len(page["items"]), page.get("next")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    assert prefix and prefix[-1] != 0xFF, prefix
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdHttpDriver(Driver):
    HEADERS = "Content-Type: application/json\r\n"

    def __init__(self, target: Target, table: str) -> None:
        super().__init__(target, table)
        self.prefix = table.encode() + b"/"
        self.end_b64 = _b64(prefix_end(self.prefix))

    async def open(self, slot: int) -> Conn:
        return await self._connect(slot, HttpResponseParser())

    async def _post(self, c: Conn, path: str, body: dict[str, Any]) -> bytes:
        (status, answer), = await c.request(
            http_request("POST", path, "etcd", json.dumps(body).encode(), self.HEADERS))
        if status != 200:
            raise OpError(f"http_{status}")
        return answer

    async def put(self, c: Conn, key: bytes, value: bytes) -> None:
        await self._post(c, "/v3/kv/put", {"key": _b64(self.prefix + key), "value": _b64(value)})

    async def get(self, c: Conn, key: bytes) -> bytes:
        answer = json.loads(await self._post(c, "/v3/kv/range", {"key": _b64(self.prefix + key)}))
        kvs = answer.get("kvs")
        if not kvs:
            raise OpError("not_found")
        return base64.b64decode(kvs[0].get("value", ""))

    async def scan(self, c: Conn, start: bytes, limit: int,
                   cursor: Any = None) -> tuple[int, Any]:
        first = cursor if cursor is not None else self.prefix + start
        answer = json.loads(await self._post(c, "/v3/kv/range", {
            "key": _b64(first), "range_end": self.end_b64, "limit": limit}))
        kvs = answer.get("kvs") or []
        if not answer.get("more") or not kvs:
            return len(kvs), None
        return len(kvs), base64.b64decode(kvs[-1]["key"]) + b"\x00"


class EtcdPyDriver(Driver):
    """aetcd: one client (gRPC channel) per member in this process, shared by the workers."""

    def __init__(self, target: Target, table: str) -> None:
        super().__init__(target, table)
        self.prefix = table.encode() + b"/"
        self.end = prefix_end(self.prefix)
        self.clients: dict[int, Any] = {}

    async def open(self, slot: int) -> Any:
        import aetcd

        i = slot % len(self.target.addresses)
        if i not in self.clients:
            host, port = self.target.addresses[i]
            client = aetcd.Client(host, port, timeout=int(self.target.timeout_s))
            try:
                await client.connect()
            except Exception as exc:
                raise OpError("connect") from exc
            self.clients[i] = client
        return self.clients[i]

    def watchdog(self) -> None:
        pass  # every aetcd call carries its own timeout

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.clients = {}

    @staticmethod
    def _kind(exc: Exception) -> OpError:
        """gRPC errors by status code (``grpc_unavailable``...), others by type."""
        code = getattr(exc, "code", None)
        status = code() if callable(code) else None
        name = getattr(status, "name", None)
        return OpError(f"grpc_{name.lower()}" if isinstance(name, str) else type(exc).__name__)

    async def put(self, c: Any, key: bytes, value: bytes) -> None:
        try:
            await c.put(self.prefix + key, value)
        except Exception as exc:  # noqa: BLE001 (any client error is counted by kind)
            raise self._kind(exc) from None

    async def get(self, c: Any, key: bytes) -> bytes:
        try:
            got = await c.get(self.prefix + key)
        except Exception as exc:  # noqa: BLE001 (any client error is counted by kind)
            raise self._kind(exc) from None
        if got is None:
            raise OpError("not_found")
        return bytes(got.value)

    async def scan(self, c: Any, start: bytes, limit: int,
                   cursor: Any = None) -> tuple[int, Any]:
        from aetcd import rpc

        first = cursor if cursor is not None else self.prefix + start
        request = rpc.RangeRequest(key=first, range_end=self.end, limit=limit)
        try:
            answer = await c.kvstub.Range(request, timeout=self.target.timeout_s)
        except Exception as exc:  # noqa: BLE001 (any client error is counted by kind)
            raise self._kind(exc) from None
        kvs = answer.kvs
        if not answer.more or not kvs:
            return len(kvs), None
        return len(kvs), bytes(kvs[-1].key) + b"\x00"


class RedisDriver(Driver):
    def __init__(self, target: Target, table: str) -> None:
        super().__init__(target, table)
        self.prefix = table.encode() + b"/"
        self.index = table.encode() + b":idx"

    async def open(self, slot: int) -> Conn:
        return await self._connect(slot, RespParser())

    @staticmethod
    def _check(reply: Any) -> Any:
        if isinstance(reply, RespError):
            raise OpError("redis_" + str(reply).split(" ", 1)[0].lower())
        return reply

    async def put(self, c: Conn, key: bytes, value: bytes) -> None:
        reply, = await c.request(resp_command(b"SET", self.prefix + key, value))
        self._check(reply)

    async def insert(self, c: Conn, key: bytes, value: bytes) -> None:
        k = self.prefix + key
        replies = await c.request(resp_command(b"SET", k, value)
                                  + resp_command(b"ZADD", self.index, 0, k), replies=2)
        for r in replies:
            self._check(r)

    async def get(self, c: Conn, key: bytes) -> bytes:
        reply, = await c.request(resp_command(b"GET", self.prefix + key))
        if self._check(reply) is None:
            raise OpError("not_found")
        return bytes(reply)

    async def scan(self, c: Conn, start: bytes, limit: int,
                   cursor: Any = None) -> tuple[int, Any]:
        low = cursor if cursor is not None else b"[" + self.prefix + start
        keys, = await c.request(resp_command(b"ZRANGE", self.index, low, b"+", b"BYLEX",
                                             b"LIMIT", 0, limit))
        self._check(keys)
        if not keys:
            return 0, None
        values, = await c.request(resp_command(b"MGET", *keys))
        self._check(values)
        if len(keys) < limit:
            return len(keys), None
        return len(keys), b"(" + keys[-1]


DRIVERS: dict[str, type[Driver]] = {
    "rangekv": RangeKVDriver, "etcd-http": EtcdHttpDriver, "etcd-py": EtcdPyDriver,
    "redis": RedisDriver,
}


def make_driver(target: Target, table: str) -> Driver:
    return DRIVERS[target.kind](target, table)
