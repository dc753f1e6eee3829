"""The native client protocol: the HTTP API's operations as binary frames on a port of their own.

Frames are ``rangekv.wire``'s (length, crc32c, msgpack body), the same as inside the cluster:
a request ``{"t": "req", "id": n, "op": ..., fields}`` is answered by
``{"t": "rep", "id": n, "ok": true, ...}`` or ``{..., "ok": false, "error": {code, message,
retryable, ...}}`` with the HTTP API's error codes. A client keeps a few connections and has
many requests in flight on each (pipelined, answered in any order). Keys, values and seqs
travel as bytes (a seq as its 16 bytes); nothing is base64'd or percent-encoded.

Every request's fields are declared below (``OPS``) and checked before any is used, exactly as
the HTTP API checks its own (the same limits, the same errors). The semantics are the HTTP
API's: a ``get`` is linearizable, a ``put`` answers the new seq, ``if_seq`` of 16 zero bytes is
If-None-Match: *, ``list`` pages take and give the HTTP API's cursors. Writes may carry a
client session (``client``, ``cseq``, ``floor``, ``retry``: ``ops.Session``); the group then
applies each (client, cseq) at most once.

Batches (``put_many``, ``get_many``, ``delete_many``) answer ``{"results": [...]}``, one per
item in order, each a result or ``{"error": ...}``: not a transaction (``batches``).

The server is ``wire.serve_connection`` with its bounds (frame size, unfinished frames,
requests in flight per connection, unread replies, connections).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rangekv import errors, limits, sequencer, wire
from rangekv import fields as f
from rangekv.request_manager import batches
from rangekv.request_manager import http_codec as codec
from rangekv.request_manager.metrics import Metrics
from rangekv.request_manager.ops import GetResult, Session
from rangekv.request_manager.routing import Router, ViewSource

log = logging.getLogger("rangekv.rm.native")

CLIENT_ID_BYTES = 16
GROUP_ID_MAX = f.U32_MAX


def _batch_keys(name: str, raw: Any) -> list[bytes]:
    check = f.key().check
    if not isinstance(raw, list):
        raise errors.InvalidArgument(f"{name}: must be a list of keys", field=name)
    limits.check_batch(len(raw), 0)
    keys = [check(name, k) for k in raw]
    limits.check_batch(len(keys), sum(map(len, keys)))
    return keys


def _batch_puts(name: str, raw: Any) -> list[tuple[bytes, bytes, bytes | None]]:
    """``[[key, value], ...]`` or ``[[key, value, if_seq], ...]``."""
    key_check, value_check, cond_check = f.key().check, f.value().check, f.condition().check
    if not isinstance(raw, list):
        raise errors.InvalidArgument(f"{name}: must be a list of [key, value(, if_seq)]",
                                     field=name)
    limits.check_batch(len(raw), 0)
    out = []
    nbytes = 0
    for item in raw:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise errors.InvalidArgument(f"{name}: an item is [key, value] or "
                                         "[key, value, if_seq]", field=name)
        k, v = key_check(name, item[0]), value_check(name, item[1])
        c = cond_check(name, item[2]) if len(item) == 3 and item[2] is not None else None
        nbytes += len(k) + len(v)
        out.append((k, v, c))
    limits.check_batch(len(out), nbytes)
    return out


def _group_or_auto(name: str, raw: Any) -> int | str:
    if raw == "auto":
        return "auto"
    return int(f.uint(GROUP_ID_MAX, 1).check(name, raw))


def _nonzero_seq(name: str, raw: Any) -> bytes:
    value: bytes = f.condition().check(name, raw)
    if value == sequencer.ZERO:
        raise errors.InvalidArgument(f"{name}: a delete's condition is a seq, not zero "
                                     "(only a put can be made if absent)", field=name)
    return value


TABLE = f.text(128)
IF_SEQ_DELETE = f.any_of("seq (16 bytes, not zero)", _nonzero_seq,
                         ((bytes(16), f.INVALID), (b"\x01", f.INVALID)))
GROUP_OR_AUTO = f.any_of("group id or 'auto'", _group_or_auto, (("x", f.INVALID),
                                                               (0, f.INVALID)))
SESSION = {"client": f.optional(f.blob(CLIENT_ID_BYTES, CLIENT_ID_BYTES, kind="client id")),
           "cseq": f.optional(f.uint(min_value=1)), "floor": f.optional(f.uint()),
           "retry": f.optional(f.boolean())}
KEYS = f.any_of(f"list of ≤ {limits.BATCH_ITEMS_MAX} keys", _batch_keys,
                (("k", f.INVALID), ([b""], f.INVALID)))
PUTS = f.any_of(f"list of ≤ {limits.BATCH_ITEMS_MAX} [key, value(, if_seq)]", _batch_puts,
                (("k", f.INVALID), ([[b"k"]], f.INVALID)))
CLIENT = "clients"

OPS = f.registry(
    f.Op("put", {"table": TABLE, "key": f.key(), "value": f.value(),
                 "if_seq": f.optional(f.condition()), **SESSION}, CLIENT),
    f.Op("get", {"table": TABLE, "key": f.key()}, CLIENT),
    f.Op("delete", {"table": TABLE, "key": f.key(), "if_seq": f.optional(IF_SEQ_DELETE),
                    **SESSION},
         CLIENT),
    f.Op("list", {"table": TABLE, "start": f.optional(f.bound()), "end": f.optional(f.bound()),
                  "after": f.optional(f.text(limits.CURSOR_BYTES_MAX)),
                  "limit": f.optional(f.uint(2**31 - 1, 1)), "packed": f.optional(f.boolean())},
         CLIENT,
         f"a `limit` above {limits.LIST_LIMIT_MAX} is taken as {limits.LIST_LIMIT_MAX}; with "
         "`packed` the items come as `packed` (their msgpack encodings joined, as the nodes "
         "sent them) and `n` (how many) instead of `items`"),
    f.Op("put_many", {"table": TABLE, "items": PUTS, **SESSION}, CLIENT),
    f.Op("get_many", {"table": TABLE, "keys": KEYS}, CLIENT),
    f.Op("delete_many", {"table": TABLE, "keys": KEYS, **SESSION}, CLIENT),
    f.Op("tables", {}, CLIENT),
    f.Op("create_table", {"table": TABLE}, CLIENT),
    f.Op("drop_table", {"table": TABLE}, CLIENT),
    f.Op("ranges", {"table": TABLE}, CLIENT),
    f.Op("split", {"table": TABLE, "at": f.key(), "to": f.optional(GROUP_OR_AUTO)}, CLIENT),
    f.Op("move", {"table": TABLE, "at": f.key(), "to": f.uint(GROUP_ID_MAX, 1)}, CLIENT),
    f.Op("cluster", {}, CLIENT),
    f.Op("cluster_status", {"table": f.optional(TABLE)}, CLIENT),
    f.Op("remove_node", {"node_id": f.uint(f.ID_MAX, 1)}, CLIENT),
    f.Op("health", {}, CLIENT),
)


def _session(req: dict[str, Any]) -> Session | None:
    client = req["client"]
    if client is None:
        if req["cseq"] is not None:
            raise errors.InvalidArgument("cseq without client", field="cseq")
        return None
    if req["cseq"] is None:
        raise errors.InvalidArgument("a client session needs cseq", field="cseq")
    return Session(client, req["cseq"], req["floor"] or 0, bool(req["retry"]))


def _get_reply(result: GetResult) -> dict[str, Any]:
    if not result.found:
        return {"found": False}
    return {"found": True, "value": result.value, "seq": result.seq}


def _item(outcome: Any, ok: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    if isinstance(outcome, errors.RangeKVError):
        return {"error": outcome.to_dict()}
    return ok(outcome)


class NativeServer:
    """Serves ``OPS`` over ``wire`` frames with the rm's router (see the module docstring)."""

    def __init__(self, router: Router, source: ViewSource, rm_id: int,
                 metrics: Metrics | None = None, *,
                 live_status: Callable[[str | None], Awaitable[dict[str, Any]]] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 limits_: wire.ServerLimits | None = None) -> None:
        self.router = router
        self.source = source
        self.rm_id = rm_id
        self.metrics = metrics if metrics is not None else Metrics(rm_id)
        self._monotonic = monotonic
        self._live_status = live_status
        self.guard = wire.ServerGuard(f"rm-{rm_id} native", limits_)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "put": self._put, "get": self._get, "delete": self._delete, "list": self._list,
            "put_many": self._put_many, "get_many": self._get_many,
            "delete_many": self._delete_many, "tables": self._tables,
            "create_table": self._create_table, "drop_table": self._drop_table,
            "ranges": self._ranges, "split": self._split, "move": self._move,
            "cluster": self._cluster, "cluster_status": self._cluster_status,
            "remove_node": self._remove_node, "health": self._health,
        }
        assert set(self._handlers) == set(OPS), set(OPS) ^ set(self._handlers)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True,
                                                  limit=wire.READ_CHUNK_BYTES)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # (Server.close_clients is Python 3.13's)
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await wire.serve_connection(reader, writer, self.on_request, self._on_message,
                                        self.guard)
        finally:
            self._writers.discard(writer)

    def _on_message(self, body: dict[str, Any], conn: wire.ServerConnection) -> None:
        self.guard.refuse("message", conn.peer, "a one-way message on the client port")
        conn.writer.transport.abort()

    async def on_request(self, body: dict[str, Any],
                         conn: wire.ServerConnection | None = None) -> dict[str, Any]:
        t0 = self._monotonic()
        op = body.get("op")
        spec = OPS.get(op) if isinstance(op, str) else None
        name = op if spec is not None else "other"
        status = 200
        try:
            if spec is None:
                raise errors.InvalidArgument(f"unknown op {str(op)[:100]!r}", field="op")
            req = spec.parse(body)
            return await self._handlers[spec.name](req)
        except errors.RangeKVError as err:
            status = err.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self.metrics.observe(f"native_{name}", status, self._monotonic() - t0)

    # -- keys --------------------------------------------------------------------------------

    async def _put(self, req: dict[str, Any]) -> dict[str, Any]:
        seq = await self.router.put(req["table"], req["key"], req["value"], req["if_seq"],
                                    _session(req))
        return {"seq": seq}

    async def _get(self, req: dict[str, Any]) -> dict[str, Any]:
        return _get_reply(await self.router.get(req["table"], req["key"]))

    async def _delete(self, req: dict[str, Any]) -> dict[str, Any]:
        seq = await self.router.delete(req["table"], req["key"], req["if_seq"], _session(req))
        return {"deleted": seq is not None, "seq": seq if seq is not None else sequencer.ZERO}

    async def _list(self, req: dict[str, Any]) -> dict[str, Any]:
        cursor = None
        end = req["end"]
        if req["after"]:
            cursor = codec.decode_cursor(req["after"].encode("ascii", "replace"))
            if end is not None and end != cursor.end:
                raise errors.InvalidArgument(
                    "end does not match the cursor's end; omit end when passing after",
                    field="end")
            end = cursor.end
        limit = min(req["limit"] or limits.LIST_LIMIT_DEFAULT, limits.LIST_LIMIT_MAX)
        page = await self.router.list(req["table"], req["start"] or b"", end, cursor, limit)
        nxt = None if page.next is None else codec.encode_cursor(page.next)
        if req["packed"]:
            return {"packed": b"".join(page.parts), "n": page.count, "next": nxt}
        return {"items": page.items, "next": nxt}

    async def _put_many(self, req: dict[str, Any]) -> dict[str, Any]:
        items = [batches.Write(batches.PUT, k, v, c) for k, v, c in req["items"]]
        out = await batches.write_many(self.router, req["table"], items, _session(req))
        return {"results": [_item(o, lambda r: {"seq": r.seq}) for o in out]}

    async def _get_many(self, req: dict[str, Any]) -> dict[str, Any]:
        out = await batches.get_many(self.router, req["table"], req["keys"])
        return {"results": [_item(o, _get_reply) for o in out]}

    async def _delete_many(self, req: dict[str, Any]) -> dict[str, Any]:
        items = [batches.Write(batches.DELETE, k) for k in req["keys"]]
        out = await batches.write_many(self.router, req["table"], items, _session(req))
        return {"results": [_item(o, lambda r: {"deleted": r.deleted, "seq": r.seq})
                            for o in out]}

    # -- tables and the cluster ------------------------------------------------------------------

    async def _tables(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"tables": [{"name": t.name, "id": t.id} for t in await self.router.tables()]}

    async def _create_table(self, req: dict[str, Any]) -> dict[str, Any]:
        table = await self.router.create_table(req["table"])
        return {"table": {"name": table.name, "id": table.id}}

    async def _drop_table(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.router.drop_table(req["table"])
        return {"dropped": req["table"]}

    async def _ranges(self, req: dict[str, Any]) -> dict[str, Any]:
        table, ranges = await self.router.current_ranges(req["table"])
        return {"table": table.name, "ranges": [r.describe() for r in ranges]}

    async def _split(self, req: dict[str, Any]) -> dict[str, Any]:
        ranges = await self.router.split(req["table"], req["at"], req["to"])
        return {"table": req["table"], "ranges": [r.describe() for r in ranges]}

    async def _move(self, req: dict[str, Any]) -> dict[str, Any]:
        ranges, done = await self.router.move(req["table"], req["at"], req["to"])
        return {"table": req["table"], "ranges": [r.describe() for r in ranges], "done": done}

    async def _cluster_status(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._live_status is None:
            raise errors.Unavailable("this server has no live status")
        if req["table"] is not None:
            await self.router.current_ranges(req["table"])  # invalid_argument, table_not_found
        return await self._live_status(req["table"])

    async def _remove_node(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.router.remove_node(req["node_id"])

    async def _cluster(self, req: dict[str, Any]) -> dict[str, Any]:
        return dict(self.source.view.to_json())

    async def _health(self, req: dict[str, Any]) -> dict[str, Any]:
        ready = self.source.ready and self.router.clock_sound()
        return {"ok": ready, "rm": self.rm_id, "revision": self.source.view.revision}
