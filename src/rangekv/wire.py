"""The internal TCP protocol: length- and checksum-prefixed msgpack frames.

    frame  = length (u32, big-endian) | crc32c(body) (u32) | body
    body   = a msgpack map

A reader learns a frame's length from its first 4 bytes and refuses anything above
``FRAME_BYTES_MAX`` before reading the body, so a peer cannot make us buffer an arbitrary amount.
A checksum mismatch or undecodable body is a ``ProtocolError`` and the connection is closed.

Two kinds of body travel on these connections:

* requests and replies (rm → node, node → meta, rm → meta): ``{"t": "req", "id": n, "op": ...}``
  answered by ``{"t": "rep", "id": n, "ok": true, ...}`` or
  ``{"t": "rep", "id": n, "ok": false, "error": {code, message, retryable, ...}}``.
  Many requests may be in flight on one connection; replies may come in any order.
* one-way replication messages between the nodes of a group: ``{"t": "raft", "m": {...}}``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import crc32c
import msgpack

from rangekv import errors, sequencer
from rangekv.limits import FRAME_BYTES_MAX

log = logging.getLogger("rangekv.wire")

# Dead peers are noticed in seconds, not minutes. A partition drops packets silently: without
# this, a connection with unacknowledged data waits out TCP's exponential retransmission backoff
# (up to ~15 minutes), and one that is idle, such as a watch, never notices at all; after the
# partition heals, the old connection can still sit seconds away from its next retransmission.
# With these options the kernel closes the connection after USER_TIMEOUT_MS without an
# acknowledgement (keepalive probes count), the next request opens a fresh one.
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
USER_TIMEOUT_MS = 2500


def tune_socket(sock: Any) -> None:
    """Keepalive and a user timeout on a TCP socket (no-op for other sockets / platforms)."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except OSError as err:  # a socket that is already closing
        log.debug("could not tune socket: %s", err)


def tuned_socket(addr_info: Any) -> socket.socket:
    """A ``socket_factory`` for aiohttp's TCPConnector: a new socket with ``tune_socket``."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family, type_, proto)
    tune_socket(sock)
    return sock


# No map in the protocol has more than a few dozen keys; a frame of nested maps would cost far
# more memory decoded than its bytes (arrays are bounded by the frame's length).
MAP_LEN_MAX = 4096

HEADER = struct.Struct(">II")
HEADER_BYTES = HEADER.size


def encode(body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > FRAME_BYTES_MAX:
        raise errors.TooLarge(f"frame of {len(payload)} bytes is over {FRAME_BYTES_MAX}")
    return HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def decode_body(payload: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                               max_map_len=MAP_LEN_MAX)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise errors.ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise errors.ProtocolError("frame body is not a map")
    return body


# -- packed lists: a page of items that travels node -> rm -> client without being decoded and
# encoded again in the rm. ``pack_elements`` gives the msgpack encodings of the elements one
# after the other, without the array header: pieces from several nodes join by concatenation,
# and ``unpack_elements`` decodes n of them at once (in C) with the header put in front.


def _array_header(n: int) -> bytes:
    """msgpack's header of an array of ``n`` elements (fixarray, array 16, array 32)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_elements(items: list[Any]) -> bytes:
    """The msgpack encodings of ``items``, concatenated (bytes as bin)."""
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed[len(_array_header(len(items))):]


def packed_page(items: list[tuple[bytes, bytes, bytes]], more: bool) -> dict[str, Any]:
    """A list page (live ``(key, value, seq)`` items) as a node answers it with ``packed``, for
    the rm to pass on undecoded: the items' encodings joined, how many, the last key (the rm's
    cursor), the highest seq (what the rm has observed) and the bytes of keys and values (the
    rm's page bound)."""
    return {"packed": pack_elements(items), "n": len(items),
            "last": items[-1][0] if items else None,
            "top": max((s for _, _, s in items), default=sequencer.ZERO),
            "nbytes": sum(len(k) + len(v) for k, v, _ in items), "more": more}


def unpack_elements(blob: bytes, n: int) -> list[Any]:
    """The ``n`` elements of a ``pack_elements`` blob (or of several joined); raises
    ProtocolError unless the blob holds exactly ``n`` well-formed elements."""
    if not 0 <= n <= len(blob):  # every element takes at least one byte
        raise errors.ProtocolError(f"a packed list of {len(blob)} bytes cannot hold {n} items")
    try:
        items = msgpack.unpackb(_array_header(n) + blob, raw=False,
                                strict_map_key=False, max_map_len=MAP_LEN_MAX)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise errors.ProtocolError(f"undecodable packed list: {type(exc).__name__}") from None
    if not isinstance(items, list):  # (the header makes it one)
        raise errors.ProtocolError("a packed list did not decode to a list")
    return items


def check_header(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int]:
    """(length, checksum) of the frame header at ``buf[pos:]``; refuses an oversized frame."""
    length, checksum = HEADER.unpack_from(buf, pos)
    if length > FRAME_BYTES_MAX:
        raise errors.ProtocolError(f"frame of {length} bytes is over {FRAME_BYTES_MAX}")
    return length, checksum


class FrameDecoder:
    """Sans-IO decoder: feed bytes, take whole frames out. Raises ProtocolError on bad input.

    One ``feed`` decodes every whole frame its bytes complete (a busy connection delivers many
    per read), without copying a payload out of the buffer first.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held back (0 at a frame boundary)."""
        return len(self._buf)

    @property
    def pending_bytes(self) -> int:
        """The whole size of the unfinished frame (header included) once its header is in,
        else what is buffered."""
        if len(self._buf) < HEADER_BYTES:
            return len(self._buf)
        return HEADER_BYTES + HEADER.unpack_from(self._buf, 0)[0]

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        buf += data
        out: list[dict[str, Any]] = []
        pos, size = 0, len(buf)
        with memoryview(buf) as view:
            while size - pos >= HEADER_BYTES:
                length, checksum = check_header(buf, pos)
                end = pos + HEADER_BYTES + length
                if end > size:
                    break
                payload = view[pos + HEADER_BYTES:end]
                if crc32c.crc32c(payload) != checksum:
                    raise errors.ProtocolError("frame checksum mismatch")
                out.append(decode_body(payload))
                payload.release()
                pos = end
        if pos:
            del buf[:pos]
        return out


READ_CHUNK_BYTES = 256 * 1024


async def read_frames(reader: asyncio.StreamReader, decoder: FrameDecoder) -> list[dict[str, Any]]:
    """The next frames on ``reader`` (at least one); raises EOFError at a clean end of stream
    and ProtocolError on bad input or an end of stream inside a frame."""
    while True:
        data = await reader.read(READ_CHUNK_BYTES)
        if not data:
            if decoder.buffered:
                raise errors.ProtocolError("connection closed inside a frame")
            raise EOFError
        frames = decoder.feed(data)
        if frames:
            return frames


class FrameWriter:
    """Frames written in one turn of the event loop leave together, in one ``send``.

    Under load a node answers many requests and sends many replication messages per turn;
    one system call (and one loopback wake-up of the peer) for all of them instead of one
    each is most of what batching saves. Order is kept: every frame of a connection goes
    through its writer. Frames still held when the connection closes are dropped, as they
    would be by the socket.
    """

    __slots__ = ("writer", "_pending")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    @property
    def pending_bytes(self) -> int:
        """Bytes of frames written this turn, not yet handed to the transport."""
        return sum(map(len, self._pending))

    def write(self, frame: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(frame)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self.writer.is_closing():
            self.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def is_closing(self) -> bool:
        return self.writer.is_closing()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one frame; raises EOFError at a clean end of stream, ProtocolError on bad input."""
    try:
        header = await reader.readexactly(HEADER_BYTES)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise errors.ProtocolError("connection closed inside a frame header") from None
        raise EOFError from None
    length, checksum = check_header(header)
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise errors.ProtocolError("connection closed inside a frame") from None
    if crc32c.crc32c(payload) != checksum:
        raise errors.ProtocolError("frame checksum mismatch")
    return decode_body(payload)


def reply_ok(req_id: int, **fields: Any) -> dict[str, Any]:
    return {"t": "rep", "id": req_id, "ok": True, **fields}


def reply_error(req_id: int, err: errors.RangeKVError) -> dict[str, Any]:
    return {"t": "rep", "id": req_id, "ok": False, "error": err.to_dict()}


class Connection:
    """A client connection that multiplexes requests; one per (process, peer address).

    ``request`` sends ``{"t": "req", "id": n, "op": op, **fields}`` and waits for the matching
    reply, raising the error it carries. Connection failures raise ``Unavailable`` when the
    request surely was not sent and ``OutcomeUnknown`` when it may have been.
    """

    def __init__(self, address: str, connect_timeout_s: float = 2.0,
                 source: str | None = None) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._connect_timeout_s = connect_timeout_s
        # connect from this IP (a node's own advertised address, so that its peers see the
        # address it is registered with: ``address_matches``); None: the kernel's choice
        self._source = source if source is not None and ip_literal(source) else None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tags: dict[int, Any] = {}  # request id -> the caller's tag (see fail_tagged)
        self._writer: asyncio.StreamWriter | None = None
        self._out: FrameWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.on_message: Callable[[dict[str, Any]], None] | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _ensure(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    reader, writer = await self._open()
                tune_socket(writer.get_extra_info("socket"))
            except (TimeoutError, OSError) as exc:
                raise errors.Unavailable(
                    f"cannot connect to {self.address}: {exc or type(exc).__name__}",
                    address=self.address,
                ) from None
            self._writer = writer
            self._out = FrameWriter(writer)
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(reader, writer)
            )
            return writer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._source is not None:
            try:
                return await asyncio.open_connection(self._host, self._port,
                                                     local_addr=(self._source, 0))
            except OSError as err:
                if err.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
                    raise
                # not an address of this machine (behind NAT, say): connect as the kernel
                # chooses from now on
                log.info("cannot connect from %s (%s); connecting from any address",
                         self._source, err.strerror)
                self._source = None
        return await asyncio.open_connection(self._host, self._port)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        pending = self._pending
        try:
            while True:
                for body in await read_frames(reader, decoder):
                    if body.get("t") == "rep":
                        req_id = body.get("id")
                        fut = pending.pop(req_id, None) if isinstance(req_id, int) else None
                        if fut is not None and not fut.done():
                            fut.set_result(body)
                    elif self.on_message is not None:
                        self.on_message(body)
        except (EOFError, OSError, errors.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
                self._out = None
            failed = list(self._pending.items())
            self._pending.clear()
            for _, fut in failed:
                if not fut.done():
                    fut.set_exception(
                        errors.OutcomeUnknown(
                            f"connection to {self.address} lost", address=self.address
                        )
                    )

    async def request(
        self, op: str, timeout_s: float = 5.0, tag: Any = None, **fields: Any
    ) -> dict[str, Any]:
        """Send ``op`` and wait for its answer. ``tag`` (not sent) lets the caller end every
        request it tagged alike at once with :meth:`fail_tagged`."""
        await self._ensure()
        out = self._out
        assert out is not None
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[req_id] = fut
        if tag is not None:
            self._tags[req_id] = tag
        # A bare timer (not asyncio.timeout's context machinery): this runs once per request.
        timer = loop.call_at(loop.time() + timeout_s, self._time_out, fut, op, timeout_s)
        try:
            out.write(encode({"t": "req", "id": req_id, "op": op, **fields}))
            body = await fut
        finally:
            timer.cancel()
            self._pending.pop(req_id, None)
            if tag is not None:
                self._tags.pop(req_id, None)
        if body.get("ok"):
            return body
        raise errors.from_dict(body.get("error") or {})

    def _time_out(self, fut: asyncio.Future[dict[str, Any]], op: str, timeout_s: float) -> None:
        if not fut.done():
            fut.set_exception(errors.Timeout(
                f"no answer from {self.address} to {op} within {timeout_s}s",
                address=self.address,
            ))

    def fail_tagged(self, tag: Any, exc: BaseException) -> int:
        """End every request in flight tagged ``tag`` with ``exc`` (its answer, if it comes
        later, is dropped); returns how many."""
        n = 0
        for req_id, t in list(self._tags.items()):
            if t == tag:
                fut = self._pending.get(req_id)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                    n += 1
        return n

    def send(self, body: dict[str, Any]) -> bool:
        """Fire-and-forget a message on an open connection; False if it is not open."""
        out = self._out
        if out is None or out.is_closing():
            return False
        out.write(encode(body))
        return True

    async def connect(self) -> None:
        await self._ensure()

    async def close(self) -> None:
        writer, task = self._writer, self._reader_task
        self._writer = None
        self._out = None
        if writer is not None:
            writer.close()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


# ---------------------------------------------------------------------------------- the server
#
# Every bound a server keeps on what its peers send (units last; see ``ServerLimits``):
#
# * a frame is at most ``FRAME_BYTES_MAX`` (refused from its header, before its body is read);
# * a frame that has begun must end within ``frame_timeout_s`` (a peer trickling a frame, or
#   stopping inside one, holds a connection and its buffer no longer than that);
# * unfinished frames above ``frame_bytes_free`` draw on a budget shared by all the server's
#   connections (``buffer_bytes_max``): a connection waits (reads nothing more) until its frame
#   fits, and is closed if it cannot within the frame timeout; 20 connections each holding an
#   unfinished 8 MiB frame cost at most the budget, not 170 MB;
# * at most ``requests_in_flight_max`` requests per connection are being answered; beyond
#   that the connection is not read (TCP pushes back on the sender);
# * replies a peer does not read pile up at most ``out_bytes_max`` before the connection is
#   closed;
# * at most ``connections_max`` connections; one more is closed at once (and logged, at most
#   once every ``REFUSED_LOG_INTERVAL_S``);
# * a request whose ``id`` is not an integer in 0..2**63-1 is answered ``invalid_argument``
#   with a null id (its sender cannot match it, but sees the error); nothing is raised.

REQUEST_ID_MAX = 2**63 - 1


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, or None (a name, or empty)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_matches(peer: Any, address: str) -> bool:
    """Whether a connection from ``peer`` (a peername) may speak for the process registered
    at ``address`` (HOST:PORT): the same IP, when the registered host is an IP that is not a
    wildcard; anything else (a name, no peer) is not checked.

    Without TLS (certificates that name a node) a node's address is what ties a message to the
    node it claims to come from: a process elsewhere cannot speak for node 2 by writing
    ``frm: 2``. Nodes connect to their peers and to meta from their advertised IP
    (``Connection(source=...)``) so that the check holds on machines with several addresses."""
    claimed = ip_literal(address.rpartition(":")[0])
    if claimed is None or claimed.is_unspecified:
        return True
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return True  # not an IP connection (a test's socket pair)
    came = ip_literal(peer[0])
    return came is None or came == claimed
REFUSED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class ServerLimits:
    connections_max: int = 1024
    frame_timeout_s: float = 30.0
    frame_bytes_free: int = 256 * 1024
    buffer_bytes_max: int = 64 * 1024 * 1024
    requests_in_flight_max: int = 1024
    out_bytes_max: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        assert self.connections_max >= 1 and self.frame_timeout_s > 0
        assert 0 <= self.frame_bytes_free <= self.buffer_bytes_max
        assert self.buffer_bytes_max >= FRAME_BYTES_MAX, "one maximal frame must always fit"
        assert self.requests_in_flight_max >= 1 and self.out_bytes_max >= FRAME_BYTES_MAX


class ServerGuard:
    """The bounds one server keeps across its connections (``ServerLimits``), and what they
    refused, for its logs and metrics."""

    def __init__(self, name: str, limits: ServerLimits | None = None) -> None:
        self.name = name
        self.limits = limits if limits is not None else ServerLimits()
        self.connections = 0
        self.buffered_bytes = 0  # reserved by unfinished frames above frame_bytes_free
        self._freed = asyncio.Event()
        self.refused: dict[str, int] = {}  # why -> count (connections closed, frames refused)
        self._refused_logged_at = -REFUSED_LOG_INTERVAL_S

    def refuse(self, why: str, peer: Any, detail: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL_S:
            self._refused_logged_at = now
            log.warning("%s: closed a connection from %s: %s (refused so far: %s)", self.name,
                        peer, detail, self.refused)

    async def reserve(self, nbytes: int, deadline: float) -> bool:
        """Take ``nbytes`` of the shared budget, waiting until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while self.buffered_bytes + nbytes > self.limits.buffer_bytes_max:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._freed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._freed.wait()
            except TimeoutError:
                return False
        self.buffered_bytes += nbytes
        return True

    def release(self, nbytes: int) -> None:
        if nbytes:
            self.buffered_bytes -= nbytes
            assert self.buffered_bytes >= 0, self.buffered_bytes
            self._freed.set()


class ServerConnection:
    """The server side of one accepted connection. ``identity`` is who the peer said it is
    (the node id a heartbeat or a replication message first named on it): set once, and a
    later message naming another is refused (see the node and meta servers)."""

    def __init__(self, writer: asyncio.StreamWriter, guard: ServerGuard | None = None) -> None:
        self.writer = writer
        self.out = FrameWriter(writer)
        self.peer = writer.get_extra_info("peername")
        self.identity: int | None = None
        self._guard = guard
        self._out_bytes_max = guard.limits.out_bytes_max if guard is not None else 0

    def send(self, body: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        frame = encode(body)
        if self._out_bytes_max and (self.writer.transport.get_write_buffer_size()
                                    + self.out.pending_bytes + len(frame) > self._out_bytes_max):
            # the peer does not read its replies: drop it rather than hold them without end
            assert self._guard is not None
            self._guard.refuse("unread_replies", self.peer,
                               f"over {self._out_bytes_max} bytes of replies it does not read")
            self.writer.transport.abort()
            return
        self.out.write(frame)


RequestHandler = Callable[[dict[str, Any], ServerConnection], Awaitable[dict[str, Any]]]
MessageHandler = Callable[[dict[str, Any], ServerConnection], None]


def _request_id(body: dict[str, Any]) -> int | None:
    req_id = body.get("id")
    if isinstance(req_id, int) and not isinstance(req_id, bool) and 0 <= req_id <= REQUEST_ID_MAX:
        return req_id
    return None


def _crash_on_invariant(what: str) -> None:
    # A broken invariant: never keep serving on state we no longer trust.
    log.critical("invariant violated while %s", what, exc_info=True)
    logging.shutdown()
    os._exit(70)


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_request: RequestHandler,
    on_message: MessageHandler,
    guard: ServerGuard | None = None,
) -> None:
    """Read frames until the peer goes; answer requests concurrently, pass other messages on,
    within ``guard``'s bounds (see the top of this section).

    ``on_request(body, conn)`` returns the reply fields (without ``t``/``id``) or raises a
    RangeKVError; ``on_message(body, conn)`` takes a one-way message."""
    guard = guard if guard is not None else ServerGuard("server")
    lim = guard.limits
    peer = writer.get_extra_info("peername")
    if guard.connections >= lim.connections_max:
        guard.refuse("connections", peer, f"{lim.connections_max} connections are open")
        writer.close()
        return
    guard.connections += 1
    tune_socket(writer.get_extra_info("socket"))
    conn = ServerConnection(writer, guard)
    tasks: set[asyncio.Task[None]] = set()
    slot_free = asyncio.Event()

    def task_done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slot_free.set()

    async def answer(body: dict[str, Any], req_id: int) -> None:
        try:
            fields = await on_request(body, conn)
            conn.send(reply_ok(req_id, **fields))
        except errors.RangeKVError as err:
            conn.send(reply_error(req_id, err))
        except asyncio.CancelledError:
            raise
        except AssertionError:
            _crash_on_invariant(f"serving {str(body.get('op'))[:100]!r}")
        except Exception as exc:
            log.exception("request %r failed", str(body.get("op"))[:100])
            conn.send(reply_error(req_id, errors.Internal(f"{type(exc).__name__}: {exc}")))

    decoder = FrameDecoder()
    loop = asyncio.get_running_loop()
    reserved = 0  # budget held by the frame in progress
    frame_deadline = 0.0  # loop time by which the frame in progress must be complete
    try:
        while True:
            while len(tasks) >= lim.requests_in_flight_max:
                slot_free.clear()
                await slot_free.wait()
            if decoder.buffered == 0:
                frame_deadline = 0.0
                data = await reader.read(READ_CHUNK_BYTES)
            else:
                if frame_deadline == 0.0:
                    frame_deadline = loop.time() + lim.frame_timeout_s
                need = decoder.pending_bytes
                if need > lim.frame_bytes_free and reserved < need:
                    if not await guard.reserve(need - reserved, frame_deadline):
                        guard.refuse("buffer", peer, f"no room for a frame of {need} bytes "
                                     f"within {lim.frame_timeout_s:g} s (the server holds "
                                     f"{guard.buffered_bytes} bytes of unfinished frames)")
                        return
                    reserved = need
                try:
                    async with asyncio.timeout_at(frame_deadline):
                        data = await reader.read(READ_CHUNK_BYTES)
                except TimeoutError:
                    guard.refuse("frame_timeout", peer, f"a frame unfinished after "
                                 f"{lim.frame_timeout_s:g} s ({decoder.buffered} bytes of it)")
                    return
            if not data:
                if decoder.buffered:
                    raise errors.ProtocolError("connection closed inside a frame")
                return
            frames = decoder.feed(data)
            if frames:  # the frame in progress is done: the next one has a budget of its own
                guard.release(reserved)
                reserved, frame_deadline = 0, 0.0
            for body in frames:
                if body.get("t") == "req":
                    req_id = _request_id(body)
                    if req_id is None:
                        conn.send({"t": "rep", "id": None, "ok": False,
                                   "error": errors.InvalidArgument(
                                       "a request id is an integer in 0..2**63-1",
                                       field="id").to_dict()})
                        continue
                    task = loop.create_task(answer(body, req_id))
                    tasks.add(task)
                    task.add_done_callback(task_done)
                else:
                    try:
                        on_message(body, conn)
                    except AssertionError:
                        _crash_on_invariant("handling a message")
    except (EOFError, OSError, errors.ProtocolError, asyncio.CancelledError):
        pass
    finally:
        guard.release(reserved)
        guard.connections -= 1
        for task in list(tasks):
            task.cancel()
        writer.close()
