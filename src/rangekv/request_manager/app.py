"""``rangekv rm``: the stateless request manager's HTTP front.

Theory of operation
-------------------

An rm holds no durable state. It serves the public HTTP API (described in ``openapi.py``) from
an in-memory routing view kept current by an etcd watch (``routing.EtcdViewSource``) and sends
each operation, already checked, to the leader of the right replication group
(``routing.Router``). The load balancer health-checks ``/healthz``, which is 200 only while the
view is loaded and followed. For operators: ``/v1/cluster/status`` (``live.py``: the view joined
with each node's own status, probed at most about once a second) and the dashboard that shows
it at ``/ui/`` (``ui.py``: static files shipped in the package; not part of the OpenAPI API).

Request flow of a put::

    raw path ─▶ route (by hand, on the undecoded path) ─▶ decode + check table, key, conditions
      ─▶ Content-Length over the limit? 413 before reading ─▶ read at most limit + 1 bytes
      ─▶ Router.put (stamps a seq, finds the leader, retries what is safe) ─▶ {"seq": hex}

Invariants:

* Every limit of ``rangekv.limits`` is checked here before anything is sent, so bad input
  changes nothing; a request body is never read beyond ``VALUE_BYTES_MAX + 1`` bytes.
* Routing uses the raw request target, never a decoded or normalized path, so keys containing
  "/", "%", "." or ".." mean exactly what the client encoded.
* Every error answer is ``{"error": {"code", "message", "retryable", ...}}`` with the status of
  the error's class; a 503 carries ``Retry-After: 1``; a bug is a 500 and is logged.
* The hot path (get/put/delete) does no etcd call and no JSON encoding of values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rangekv import aio, config, errors, limits, sequencer
from rangekv import log as rangekv_log
from rangekv import metrics as metrics_exposition
from rangekv.http_server import (
    BadRequest,
    BodyTimeout,
    HttpServer,
    Request,
    Response,
)
from rangekv.request_manager import batches, live, openapi, ui
from rangekv.request_manager import http_codec as codec
from rangekv.request_manager.metrics import Metrics
from rangekv.request_manager.native import NativeServer
from rangekv.request_manager.ops import Session
from rangekv.request_manager.routing import EtcdViewSource, Router, ViewSource

log = logging.getLogger("rangekv.rm")

RETRY_AFTER_S = 1
# Room for the longest request line the API allows: a list with start and end of KEY_BYTES_MAX
# bytes each (as base64, percent-encoded: at most 3 characters for each of 4/3 as many), a cursor
# of CURSOR_BYTES_MAX and the rest (8190, a common default, refused some of those); a longer
# line is a 400 (JSON, like every other error).
REQUEST_LINE_BYTES_MAX = 16 * 1024
_BOUND_CHARS_MAX = 3 * 4 * (limits.KEY_BYTES_MAX + 2) // 3
assert REQUEST_LINE_BYTES_MAX > 2 * _BOUND_CHARS_MAX + limits.CURSOR_BYTES_MAX + 1024
SHUTDOWN_TIMEOUT_S = 2.0
# Answered from memory, at once: never refused for being busy. HAProxy would take a merely busy
# rm out (and with every rm busy answer its own 503 to everyone until the next checks), and a
# refused scrape would show the rm as down exactly when its figures matter.
IN_FLIGHT_EXEMPT_PATHS = frozenset({"/healthz", "/livez", "/metrics"})
# File descriptors kept for what is not a client connection (node and etcd connections, logs):
# --connections-max is lowered to fit under the process's limit on open files.
FDS_RESERVED = 128
# per etcd endpoint and call: the rm only reads, and a member that does not answer this fast is
# skipped for the next (the default 5 s kept an rm cut off for 15 s and more after a partition)
ETCD_TIMEOUT_S = 2.0

_TABLES_PREFIX = "/v1/tables/"
_NODES_PREFIX = "/v1/cluster/nodes/"
_JSON = "application/json"
_OCTETS = "application/octet-stream"

Handler = Callable[[], Awaitable[Response]]


class _NoRoute(Exception):
    pass


class _BadMethod(Exception):
    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__(", ".join(allow))
        self.allow = allow


def _origin_form(target: str) -> str:
    """The path and query of an absolute-form request target (``http://host/path?q``)."""
    scheme_end = target.find("://")
    slash = target.find("/", scheme_end + 3) if scheme_end >= 0 else -1
    return target[slash:] if slash >= 0 else "/"


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(codec.dump_json(body), status, _JSON, headers)


def error_response(err: errors.RangeKVError) -> Response:
    headers = None
    if err.status == 503:  # "retry elsewhere": another rm can answer now, no need to wait
        headers = {"Retry-After": "0" if err.details.get("retry_elsewhere") else
                   str(RETRY_AFTER_S)}
    return _json_response(codec.error_body(err), err.status, headers)


def refusal_response(status: int, message: str) -> Response:
    """The answer to a request the HTTP server refuses itself (``http_server``), a JSON error
    like every other: 400 a malformed or overlong request line or header, or not HTTP at all;
    408 a head or body that did not arrive in time (both close the connection); 503 too many
    requests in flight or connections open (Retry-After); 500 a bug in a handler."""
    err: errors.RangeKVError
    if status == 400:
        err = errors.InvalidArgument(f"malformed HTTP request: {message}")
    elif status == 408:
        err = errors.RequestTimeout(message)
    elif status == 503:
        err = errors.Unavailable(message)
    else:
        assert status == 500, status
        err = errors.Internal(message)
    response = error_response(err)
    response.close = status in (400, 408)
    return response


class RequestManager:
    """The HTTP handlers of one rm. ``server()`` builds the HTTP server around them."""

    def __init__(
        self,
        router: Router,
        source: ViewSource,
        rm_id: int,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.source = source
        self.rm_id = rm_id
        self.metrics = metrics if metrics is not None else Metrics(rm_id)
        self._monotonic = monotonic
        self._openapi = codec.dump_json(openapi.document())
        self.live = live.LiveStatus(lambda: self.source.view, self._node_status)
        self._ui = ui.load()

    async def _node_status(self, address: str) -> dict[str, Any]:
        """A node's own status with its ranges' figures, over the router's pooled connection."""
        conn = self.router.pool.get(address)
        return await conn.request("status", timeout_s=live.PROBE_TIMEOUT_S, ranges=True)

    async def close(self) -> None:
        await self.live.close()

    def server(
        self,
        *,
        head_timeout_s: float = limits.HTTP_HEAD_TIMEOUT_S,
        body_timeout_s: float = limits.HTTP_BODY_TIMEOUT_S,
        connections_max: int = limits.HTTP_CONNECTIONS_MAX,
        requests_in_flight_max: int = limits.HTTP_REQUESTS_IN_FLIGHT_MAX,
    ) -> HttpServer:
        """The HTTP server around ``dispatch`` (we route on the raw path ourselves)."""
        return HttpServer(self.dispatch, self._refused,
                          request_line_max=REQUEST_LINE_BYTES_MAX,
                          head_timeout_s=head_timeout_s, body_timeout_s=body_timeout_s,
                          connections_max=connections_max,
                          requests_in_flight_max=requests_in_flight_max,
                          in_flight_exempt_paths=IN_FLIGHT_EXEMPT_PATHS)

    def _refused(self, status: int, message: str) -> Response:
        self.metrics.observe("refused", status, 0.0)
        return refusal_response(status, message)

    # -- dispatch ----------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        t0 = self._monotonic()
        op = "other"
        try:
            op, handler = self._route(request)
            response = await handler()
        except errors.RangeKVError as err:
            response = error_response(err)
        except _NoRoute:
            response = _json_response(
                codec.error_body(
                    errors.NotFound(f"no route {request.method} {request.raw_path[:200]}")
                ),
                404,
            )
        except _BadMethod as bad:
            response = _json_response(
                codec.raw_error_body(
                    "method_not_allowed",
                    f"{request.method} is not allowed here; allowed: {', '.join(bad.allow)}",
                    allow=list(bad.allow),
                ),
                405,
                {"Allow": ", ".join(bad.allow)},
            )
        except asyncio.CancelledError:
            self.metrics.observe(op, 499, self._monotonic() - t0)
            raise
        except Exception:
            log.exception("bug answering %s %s", request.method, request.raw_path[:200])
            response = error_response(errors.Internal("internal error; please report it"))
        self.metrics.observe(op, response.status, self._monotonic() - t0)
        return response

    def _route(self, request: Request) -> tuple[str, Handler]:
        """(metrics op name, handler) for a request, by its raw, undecoded path."""
        raw = request.raw_path
        if raw[:1] != "/":
            raw = _origin_form(raw)
        path, _, raw_query = raw.partition("?")
        method = request.method
        if method == "HEAD":
            method = "GET"  # the server sends the headers of the GET answer without its body
        if path.startswith(_TABLES_PREFIX):
            table_raw, sep, tail = path[len(_TABLES_PREFIX) :].partition("/")
            if not table_raw:
                raise _NoRoute
            if not sep:
                if method == "PUT":
                    return "create_table", lambda: self.create_table(table_raw)
                if method == "DELETE":
                    return "drop_table", lambda: self.drop_table(table_raw)
                raise _BadMethod(("PUT", "DELETE"))
            if tail == "keys":
                if method == "GET":
                    return "list", lambda: self.list_keys(table_raw, raw_query)
                raise _BadMethod(("GET", "HEAD"))
            if tail == "ranges":
                if method == "GET":
                    return "ranges", lambda: self.table_ranges(table_raw)
                raise _BadMethod(("GET", "HEAD"))
            if tail == "batch":
                if method == "POST":
                    return "batch", lambda: self.batch(request, table_raw)
                raise _BadMethod(("POST",))
            if tail.startswith("split/"):
                key_raw = tail[len("split/") :]
                if method == "POST":
                    return "split", lambda: self.split(table_raw, key_raw, raw_query)
                raise _BadMethod(("POST",))
            if tail.startswith("move/"):
                key_raw = tail[len("move/") :]
                if method == "POST":
                    return "move", lambda: self.move(table_raw, key_raw, raw_query)
                raise _BadMethod(("POST",))
            if tail.startswith("keys/"):
                key_raw = tail[len("keys/") :]
                if method == "GET":
                    return "get", lambda: self.get_key(table_raw, key_raw, raw_query)
                if method == "PUT":
                    return "put", lambda: self.put_key(request, table_raw, key_raw, raw_query)
                if method == "DELETE":
                    return "delete", lambda: self.delete_key(request, table_raw, key_raw, raw_query)
                raise _BadMethod(("GET", "HEAD", "PUT", "DELETE"))
            raise _NoRoute
        if path.startswith(_NODES_PREFIX) and "/" not in path[len(_NODES_PREFIX):]:
            node_raw = path[len(_NODES_PREFIX):]
            if not node_raw:
                raise _NoRoute
            if method == "DELETE":
                return "remove_node", lambda: self.remove_node(node_raw)
            raise _BadMethod(("DELETE",))
        if path == "/v1/cluster/status":
            if method != "GET":
                raise _BadMethod(("GET", "HEAD"))
            return "cluster_status", lambda: self.cluster_status(raw_query)
        if path == "/ui" or path.startswith("/ui/"):
            if method != "GET":
                raise _BadMethod(("GET", "HEAD"))
            return "ui", lambda: self.ui_file(path)
        simple = {
            "/v1/tables": ("list_tables", self.list_tables),
            "/v1/cluster": ("cluster", self.cluster),
            "/v1/openapi.json": ("openapi", self.openapi),
            "/healthz": ("health", self.health),
            "/livez": ("live", self.liveness),
            "/metrics": ("metrics", self.render_metrics),
        }.get(path)
        if simple is None:
            raise _NoRoute
        if method != "GET":
            raise _BadMethod(("GET", "HEAD"))
        return simple

    # -- keys --------------------------------------------------------------------------------

    @staticmethod
    def _key(key_raw: str, raw_query: str) -> bytes:
        key_encoding = None
        if raw_query:
            key_encoding = codec.query_text(codec.parse_query(raw_query), "key_encoding")
        return codec.decode_path_key(key_raw, key_encoding)

    async def get_key(self, table_raw: str, key_raw: str, raw_query: str) -> Response:
        table = codec.decode_table_segment(table_raw)
        key = self._key(key_raw, raw_query)
        result = await self.router.get(table, key)
        if not result.found:
            raise errors.KeyNotFound("no such key", table=table)
        seq_hex = result.seq.hex()
        return Response(result.value, 200, _OCTETS,
                        {"ETag": f'"{seq_hex}"', "X-Rangekv-Seq": seq_hex})

    async def put_key(
        self, request: Request, table_raw: str, key_raw: str, raw_query: str
    ) -> Response:
        table = codec.decode_table_segment(table_raw)
        key = self._key(key_raw, raw_query)
        if_seq = codec.parse_conditions(
            request.headers.get("If-Match"), request.headers.get("If-None-Match")
        )
        value = await read_value(request)
        seq = await self.router.put(table, key, value, if_seq, session_of(request.headers))
        return _json_response({"seq": seq.hex()}, headers={"ETag": codec.etag(seq)})

    async def delete_key(
        self, request: Request, table_raw: str, key_raw: str, raw_query: str
    ) -> Response:
        table = codec.decode_table_segment(table_raw)
        key = self._key(key_raw, raw_query)
        if request.headers.get("If-None-Match") is not None:
            raise errors.InvalidArgument(
                "If-None-Match is not supported on delete; use If-Match", field="If-None-Match"
            )
        if_seq = codec.parse_conditions(request.headers.get("If-Match"), None)
        seq = await self.router.delete(table, key, if_seq, session_of(request.headers))
        return _json_response(
            {"deleted": seq is not None, "seq": None if seq is None else seq.hex()}
        )

    async def list_keys(self, table_raw: str, raw_query: str) -> Response:
        table = codec.decode_table_segment(table_raw)
        query = codec.parse_list_query(codec.parse_query(raw_query))
        page = await self.router.list(table, query.start, query.end, query.cursor, query.limit)
        return _json_response(
            {
                "items": codec.encode_items(page.items, query.encoding),
                "next": None if page.next is None else codec.encode_cursor(page.next),
            }
        )

    async def batch(self, request: Request, table_raw: str) -> Response:
        """``POST /v1/tables/{table}/batch``: puts, gets and deletes of many keys, one result
        each in order (``http_codec.parse_batch``; not a transaction)."""
        table = codec.decode_table_segment(table_raw)
        if (request.headers.get("Content-Type") or "").split(";")[0].strip() not in (
                "application/json", ""):
            raise errors.InvalidArgument("a batch is a JSON body (application/json)",
                                         field="Content-Type")
        body = await read_value(request, codec.BATCH_BODY_BYTES_MAX)
        ops, encoding = codec.parse_batch(body)
        session = session_of(request.headers)
        writes = [i for i, op in enumerate(ops) if op.kind != "get"]
        reads = [i for i, op in enumerate(ops) if op.kind == "get"]
        results: list[dict[str, Any]] = [{}] * len(ops)
        if writes:
            items = [batches.Write(ops[i].kind, ops[i].key, ops[i].value, ops[i].if_seq)
                     for i in writes]
            out = await batches.write_many(self.router, table, items, session)
            for i, o in zip(writes, out, strict=True):
                results[i] = codec.batch_write_result(ops[i].kind, o)
        if reads:
            got = await batches.get_many(self.router, table, [ops[i].key for i in reads])
            for i, g in zip(reads, got, strict=True):
                results[i] = codec.batch_get_result(g, encoding)
        return _json_response({"results": results})

    # -- tables ------------------------------------------------------------------------------

    async def list_tables(self) -> Response:
        return _json_response(
            {"tables": [{"name": t.name, "id": t.id} for t in await self.router.tables()]}
        )

    async def create_table(self, table_raw: str) -> Response:
        name = codec.decode_table_segment(table_raw)
        table = await self.router.create_table(name)
        return _json_response({"table": {"name": table.name, "id": table.id}}, 201)

    async def table_ranges(self, table_raw: str) -> Response:
        table, ranges = await self.router.current_ranges(codec.decode_table_segment(table_raw))
        return _json_response({"table": table.name, "ranges": [r.describe() for r in ranges]})

    async def split(self, table_raw: str, key_raw: str, raw_query: str) -> Response:
        name = codec.decode_table_segment(table_raw)
        at = self._key(key_raw, raw_query)
        to_raw = codec.query_text(codec.parse_query(raw_query), "to") if raw_query else None
        to: int | str | None = None
        if to_raw == "auto":
            to = "auto"
        elif to_raw is not None:
            to = _group_id(to_raw)
            if to is None:
                raise errors.InvalidArgument("to must be a group id or auto", field="to")
        ranges = await self.router.split(name, at, to)
        return _json_response({"table": name, "ranges": [r.describe() for r in ranges]})

    async def move(self, table_raw: str, key_raw: str, raw_query: str) -> Response:
        name = codec.decode_table_segment(table_raw)
        at = self._key(key_raw, raw_query)
        to_raw = codec.query_text(codec.parse_query(raw_query), "to") if raw_query else None
        to = _group_id(to_raw)
        if to is None:
            raise errors.InvalidArgument("to must be the id of the group to move to",
                                         field="to")
        ranges, done = await self.router.move(name, at, to)
        return _json_response({"table": name, "ranges": [r.describe() for r in ranges],
                               "done": done})

    async def drop_table(self, table_raw: str) -> Response:
        name = codec.decode_table_segment(table_raw)
        await self.router.drop_table(name)
        return _json_response({"dropped": name})

    # -- operations --------------------------------------------------------------------------

    async def cluster(self) -> Response:
        return _json_response(self.source.view.to_json())

    async def remove_node(self, node_raw: str) -> Response:
        """Remove a dead or flagged node's record (``rangekv nodes remove``): 200 with the
        record removed; 409 ``node_in_use`` while it takes part in a group or is live and not
        flagged; 404 ``node_not_found``."""
        node_id = _node_id(node_raw)
        if node_id is None:
            raise errors.InvalidArgument(
                f"a node id is an integer in 1..{openapi.NODE_ID_MAX}", field="id")
        return _json_response(await self.router.remove_node(node_id))

    async def cluster_status(self, raw_query: str) -> Response:
        table = None
        if raw_query:
            table = codec.query_text(codec.parse_query(raw_query), "table")
        if table is not None:
            await self.router.current_ranges(table)  # 400 for a bad name, 404 for an unknown table
        body = await self.live.get(table)
        # always fresh: the rm caches for about a second itself; caches between must not
        return _json_response(body, headers={"Cache-Control": "no-store"})

    async def ui_file(self, path: str) -> Response:
        if path == "/ui":  # relative links of the page resolve under /ui/
            return Response(b"", 301, None, {"Location": "/ui/", "Cache-Control": "no-cache"})
        found = self._ui.get(path[len("/ui/"):] or "index.html")
        if found is None:
            raise _NoRoute
        return Response(found.body, 200, found.content_type, ui.HEADERS)

    async def openapi(self) -> Response:
        return Response(self._openapi, 200, _JSON)

    async def health(self) -> Response:
        revision = self.source.view.revision
        if self.source.ready and self.router.clock_sound():
            return _json_response({"ok": True, "rm": self.rm_id, "revision": revision})
        if self.source.ready:
            err: errors.RangeKVError = errors.ClockOffset(
                "a group leader refused this rm's seqs as too far ahead of its clock: check "
                "this machine's clock (time sync)")
        else:
            err = errors.Unavailable("the routing map is not loaded or not followed")
        return _json_response(
            {"ok": False, "rm": self.rm_id, "revision": revision, **codec.error_body(err)},
            503,
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    async def liveness(self) -> Response:
        """200 while this rm holds a routing map, followed or not. With etcd out of reach no rm
        is ready (``/healthz``), yet each still serves from the map it holds: the groups do not
        need etcd, the map cannot change without etcd, and a node refuses a route that is
        stale. HAProxy sends to these rms only when none is ready (``haproxy_config``)."""
        revision = self.source.view.revision
        body = {"ok": revision > 0, "rm": self.rm_id, "revision": revision,
                "ready": self.source.ready}
        if revision > 0:
            return _json_response(body)
        err = errors.Unavailable("no routing map loaded yet")
        return _json_response({**body, **codec.error_body(err)}, 503,
                              {"Retry-After": str(RETRY_AFTER_S)})

    async def render_metrics(self) -> Response:
        text = self.metrics.render(ready=self.source.ready, revision=self.source.view.revision)
        return Response(text.encode("utf-8"), 200, metrics_exposition.CONTENT_TYPE,
                        {"X-Prometheus-Format": "0.0.4"})


async def read_value(request: Request, limit: int = limits.VALUE_BYTES_MAX) -> bytes:
    """The request body, at most ``limit`` bytes; 413 without reading past the limit."""
    length = request.content_length
    if length is not None and length > limit:
        raise errors.TooLarge(
            f"value is {length} bytes; the limit is {limit}", field="value", limit=limit
        )
    expect = request.headers.get("Expect")
    if request.version == "1.1" and expect is not None and expect.lower() != "100-continue":
        raise errors.InvalidArgument("only Expect: 100-continue is supported", field="Expect")
    # With Expect: 100-continue the client waits for our go-ahead before sending the body
    # (curl does for bodies over 1 KiB): the first read gives it, only now, after every check,
    # so a refused body is never sent.
    try:
        body = await request.read_body(limit)
    except BodyTimeout as exc:  # a slow or stalled sender: 408, and the connection closes
        raise errors.RequestTimeout(str(exc), field="value") from None
    except ConnectionError as exc:  # the client went away
        raise errors.InvalidArgument(
            f"the request body could not be read: {exc}", field="value") from None
    except BadRequest as exc:
        raise errors.InvalidArgument(f"malformed request body: {exc}", field="value") from None
    if len(body) > limit:
        raise errors.TooLarge(
            f"value is over {limit} bytes; the limit is {limit}", field="value", limit=limit
        )
    return body


SESSION_HEADER = "X-Rangekv-Session"
_SESSION_RE = re.compile(openapi.SESSION_PATTERN)


def session_of(headers: Any) -> Session | None:
    """The client session a write's headers carry (``X-Rangekv-Session: CLIENT:CSEQ:FLOOR``,
    and ``X-Rangekv-Retry: 1`` on a resend), or None."""
    retry = headers.get("X-Rangekv-Retry")
    if retry is not None and retry != "1":
        raise errors.InvalidArgument("X-Rangekv-Retry is 1 when present",
                                     field="X-Rangekv-Retry")
    raw = headers.get(SESSION_HEADER)
    if raw is None:
        return None
    if not _SESSION_RE.fullmatch(raw.lower()):
        raise errors.InvalidArgument(f"{SESSION_HEADER} is CLIENT:CSEQ:FLOOR (32 hex digits, "
                                     "a number from 1, a number)", field=SESSION_HEADER)
    client, cseq, floor = raw.lower().split(":")
    return Session(bytes.fromhex(client), int(cseq), int(floor), retry == "1")


# ---------------------------------------------------------------------------------------------
# The process


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rangekv rm", description="rangekv request manager")
    p.add_argument("--id", type=int, required=True, help="rm id (0..2^32-1), part of every seq")
    p.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT",
                   help="where the HTTP API listens (HOST empty: every address)")
    p.add_argument("--native-listen", type=parse_address, default=None, metavar="HOST:PORT",
                   help="where the native client protocol listens (binary frames: "
                        "request_manager/native.py); default: not served")
    p.add_argument("--etcd", required=True, metavar="URL[,URL]", help="etcd client endpoints")
    p.add_argument("--head-timeout-s", type=_positive_float,
                   default=limits.HTTP_HEAD_TIMEOUT_S, metavar="SECONDS",
                   help="a request's head must arrive whole within this (from its first byte), "
                        "else 408 and the connection closes")
    p.add_argument("--body-timeout-s", type=_positive_float,
                   default=limits.HTTP_BODY_TIMEOUT_S, metavar="SECONDS",
                   help="a request's body must arrive whole within this (from when the rm "
                        "starts reading it), else 408 and the connection closes")
    p.add_argument("--connections-max", type=_positive_int, default=limits.HTTP_CONNECTIONS_MAX,
                   metavar="N", help="client connections held open; one more is answered 503 "
                                     "(Retry-After) and closed")
    p.add_argument("--requests-in-flight-max", type=_positive_int,
                   default=limits.HTTP_REQUESTS_IN_FLIGHT_MAX, metavar="N",
                   help="requests handled at once; one more is answered 503 (Retry-After) at "
                        "once instead of waiting (health checks and /metrics are never "
                        "refused)")
    p.add_argument("--max-clock-offset-ms", type=int, default=sequencer.SEQ_AHEAD_MS_MAX,
                   metavar="MS",
                   help="ignore seqs answered by nodes that are more than this far ahead of "
                        f"this rm's clock (default {sequencer.SEQ_AHEAD_MS_MAX}; leaders refuse "
                        "proposals that far ahead of theirs)")
    args = config.parse(p, "rm", argv)
    if args.max_clock_offset_ms < 1:
        p.error("--max-clock-offset-ms must be at least 1")
    if not 0 <= args.id < 2**32:
        p.error("--id must be in 0..2^32-1")
    args.etcd = [u.strip() for u in args.etcd.split(",") if u.strip()]
    if not args.etcd:
        p.error("--etcd needs at least one URL")
    return args


async def _serve(args: argparse.Namespace) -> int:
    from rangekv.metadata.etcd import EtcdClient  # only the real process needs etcd

    host, port = args.listen
    client = EtcdClient(args.etcd, timeout_s=ETCD_TIMEOUT_S)
    metrics = Metrics(args.id)
    source = EtcdViewSource(client, metrics)
    router = Router(source, args.id, stats=metrics.router,
                    max_clock_offset_ms=args.max_clock_offset_ms)
    manager = RequestManager(router, source, args.id, metrics)
    server = manager.server(head_timeout_s=args.head_timeout_s,
                            body_timeout_s=args.body_timeout_s,
                            connections_max=_connections_within_fd_limit(args.connections_max),
                            requests_in_flight_max=args.requests_in_flight_max)
    native = NativeServer(router, source, args.id, metrics, live_status=manager.live.get)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await server.start(host, port)
            if args.native_listen is not None:
                await native.start(*args.native_listen)
        except OSError as exc:
            log.error("cannot listen on %s:%d (or the native port %s): %s", host, port,
                      args.native_listen, exc)
            return 1
        await source.start()
        log.info("rm %d listening on %s:%d (native: %s), etcd %s", args.id, host, port,
                 "{}:{}".format(*args.native_listen) if args.native_listen else "off",
                 ",".join(args.etcd))
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        await server.close(SHUTDOWN_TIMEOUT_S)
        await native.close()
        await manager.close()
        await source.close()
        await router.close()
        await client.close()
        log.info("stopped")


def _connections_within_fd_limit(connections_max: int) -> int:
    """``connections_max``, with room for it and ``FDS_RESERVED`` under the process's limit on
    open files: the soft limit is raised as far as the hard one allows (as Go's runtime does;
    a common soft limit is 1024), and if that is not enough ``connections_max`` is lowered,
    with a warning: a bound above the limit is no bound (accept would fail first, unanswered)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = connections_max + FDS_RESERVED
        if soft != resource.RLIM_INFINITY and soft < needed:
            raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    except (ImportError, OSError, ValueError):
        return connections_max
    if soft == resource.RLIM_INFINITY or connections_max + FDS_RESERVED <= soft:
        return connections_max
    lowered = max(1, soft - FDS_RESERVED)
    log.warning("--connections-max %d lowered to %d: the limit on open files is %d (raise it, "
                "e.g. LimitNOFILE= in the unit file)", connections_max, lowered, soft)
    return lowered


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    rangekv_log.setup(f"rm-{args.id}", args.log_level, args.log_format)
    try:
        return aio.run(_serve(args))
    except KeyboardInterrupt:
        return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _node_id(raw: str) -> int | None:
    """A node id from the path (1 to 2^32 - 1, decimal digits), or None if it is not one."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        return None
    value = int(raw)
    return value if 1 <= value <= openapi.NODE_ID_MAX else None


def _group_id(raw: str | None) -> int | None:
    """A group id from the query (1 to 2^32 - 1), or None if it is not one."""
    if raw is None or not raw.isdigit() or len(raw) > 10:
        return None
    value = int(raw)
    return value if 1 <= value <= openapi.GROUP_ID_MAX else None


# Last, so that everything above is defined when run as ``python -m ...app`` (the helpers below
# main were not: the rm died parsing its options, and split/move answered 500).
if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
