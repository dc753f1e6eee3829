"""Sans-IO wire codecs of the load generator: HTTP/1.1 responses and RESP (Redis) replies.

Both parsers take bytes as they arrive (``feed``), in chunks cut anywhere, and return the
complete messages found so far, in order; what is left of an unfinished message waits for the
next ``feed``. They are lean on purpose: one generator process must drive a server faster than
a general-purpose client library would let it.

HTTP: a response is ``(status, body)``. The body is delimited by ``Content-Length`` or by
``Transfer-Encoding: chunked`` (etcd's gateway streams large pages chunked); 1xx, 204 and 304
have none. A response without either (read to close) is refused: the servers we measure keep
connections alive. Each response's headers must fit in ``HEAD_BYTES_MAX``.

RESP (version 2): ``+simple``, ``-error`` (returned as ``RespError``), ``:integer``,
``$bulk`` (``None`` when ``$-1``) and ``*arrays`` (nested).
"""

from __future__ import annotations

from typing import Any

HEAD_BYTES_MAX = 64 * 1024
CRLF = b"\r\n"


class ProtocolError(Exception):
    """The peer sent something the parser cannot frame: the connection must be dropped."""


class HttpResponseParser:
    def __init__(self) -> None:
        self.buf = bytearray()
        self._status = 0
        self._length = -1  # body bytes still expected when known; -1: reading the head
        self._chunked = False
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            got = self._step()
            if got is None:
                return out
            out.append(got)

    def _step(self) -> tuple[int, bytes] | None:
        if self._length < 0 and not self._chunked:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > HEAD_BYTES_MAX:
                    raise ProtocolError("response head too long")
                return None
            self._head(bytes(self.buf[:end]))
            del self.buf[:end + 4]
            if self._length == 0:
                self._length = -1
                return self._status, b""
        if self._chunked:
            return self._chunk()
        if len(self.buf) < self._length:
            return None
        body = bytes(self.buf[:self._length])
        del self.buf[:self._length]
        self._length = -1
        return self._status, body

    def _head(self, head: bytes) -> None:
        lines = head.split(CRLF)
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self._status = int(parts[1])
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if self._status < 200 or self._status in (204, 304):
            self._length = 0
        elif chunked:
            self._chunked = True
            self._chunks = []
        elif length is not None:
            self._length = length
        else:
            raise ProtocolError("response without Content-Length or chunked encoding")

    def _chunk(self) -> tuple[int, bytes] | None:
        while True:
            end = self.buf.find(CRLF)
            if end < 0:
                return None
            size_text = bytes(self.buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # the last chunk, then optional trailers, then an empty line
                trailer_end = self.buf.find(b"\r\n\r\n", end)
                if self.buf[end:end + 4] == b"\r\n\r\n":
                    trailer_end = end
                if trailer_end < 0:
                    return None
                del self.buf[:trailer_end + 4]
                body = b"".join(self._chunks)
                self._chunked, self._chunks = False, []
                self._length = -1
                return self._status, body
            if len(self.buf) < end + 2 + size + 2:
                return None
            self._chunks.append(bytes(self.buf[end + 2:end + 2 + size]))
            del self.buf[:end + 2 + size + 2]


def http_request(method: str, path: str, host: str, body: bytes = b"",
                 headers: str = "") -> bytes:
    """One HTTP/1.1 keep-alive request; ``headers`` are extra ``Name: value\\r\\n`` lines."""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode("latin-1") + body


class RespError(Exception):
    """A ``-ERR ...`` reply (returned as a value by the parser, not raised by it)."""


_INCOMPLETE = object()


class RespParser:
    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buf += data
        out: list[Any] = []
        while self.buf:
            value, pos = self._parse(0)
            if value is _INCOMPLETE:
                break
            del self.buf[:pos]
            out.append(value)
        return out

    def _parse(self, pos: int) -> tuple[Any, int]:
        end = self.buf.find(CRLF, pos)
        if end < 0:
            return _INCOMPLETE, pos
        kind = self.buf[pos:pos + 1]
        line = bytes(self.buf[pos + 1:end])
        nxt = end + 2
        if kind == b"+":
            return line.decode(), nxt
        if kind == b"-":
            return RespError(line.decode(errors="replace")), nxt
        if kind == b":":
            return int(line), nxt
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, nxt
            if len(self.buf) < nxt + n + 2:
                return _INCOMPLETE, pos
            return bytes(self.buf[nxt:nxt + n]), nxt + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, nxt
            items = []
            for _ in range(n):
                item, nxt = self._parse(nxt)
                if item is _INCOMPLETE:
                    return _INCOMPLETE, pos
                items.append(item)
            return items, nxt
        raise ProtocolError(f"bad RESP type byte {kind!r}")


def resp_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)
