"""What the sync and async clients share: requests as data, answers to results, retry rules.

Theory of operation. A client method builds a :class:`Call` (method, percent-encoded path,
headers, body, whether it writes, how to parse a 2xx answer). The driver (``_sync.Client`` or
``_async.AsyncClient``) sends it to the current endpoint and hands whatever came back to
:func:`settle`, which returns the result or a :class:`Failure`. A failure goes to a
:class:`Retrier`, which says how long to wait before trying again, or that the error is final.
Only the drivers do IO; everything here is pure and tested without a network.

Retry rules (the contract users rely on; ``tests/unit/test_client.py`` pins each one):

* **Reads** (get, list, tables, cluster) retry any retryable error: connection failures,
  timeouts, lost connections, 503 (unavailable, not_leader), 502/504 from a proxy.
* **Writes** (put, delete, create_table, drop_table) retry only when the request surely was
  not processed: the connection could not be made, or the server answered 503 (unavailable,
  not_leader, not_active). Never after a timeout, a lost connection or 504 outcome_unknown:
  the write may have happened, and doing it twice is not the same as doing it once
  (a conditional put would fail against its own first attempt).
* A transport failure moves to the next endpoint (failover is sticky). A connection failure
  (surely not sent) tries the next endpoint at once, without sleeping, until every endpoint
  has failed in this round; other failures end the round.
* Between rounds we back off: equal jitter over ``min(delay_s_max, delay_s_min * 2**(n-1))``,
  and at least ``Retry-After`` when the server sent one (bounded by ``retry_after_s_max``).
* At most ``retries + 1`` rounds; then the last error is raised.
* **One deadline per call**: ``timeout_s`` bounds the whole call, every attempt and every wait
  between them. Each attempt gets what remains (its connection part at most
  ``connect_timeout_s``); no wait is started that would end past the deadline, and once it has
  passed the last error is raised (for a write whose outcome is unknown: that one).

Errors raised are always from :mod:`rangekv.errors`:

    connection refused / connect timeout      Unavailable      (surely not processed)
    read/write timeout                        Timeout          (outcome unknown for writes)
    connection lost mid-request, 502, 504     OutcomeUnknown   for writes, Unavailable for reads
    JSON error body {"error": {...}}          errors.from_dict(body["error"])
    native error answer                       errors.from_dict(answer["error"])
    any other status without a JSON body      by status (400, 404, 409, 412, 413, 5xx)
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from rangekv import __version__, errors, limits, wire

DEFAULT_ENDPOINT = "rangekv://127.0.0.1:8401"  # HAProxy's native port of `rangekv up`
NATIVE_SCHEME = "rangekv://"
USER_AGENT = f"rangekv-python/{__version__}"

TIMEOUT_S_DEFAULT = 10.0
CONNECT_TIMEOUT_S_DEFAULT = 3.0
RETRIES_DEFAULT = 3
RETRIES_MAX = 100
SCAN_PAGE_SIZE_DEFAULT = 1000  # the largest page (limits.LIST_LIMIT_MAX): a scan is round trips


class Item(NamedTuple):
    """One stored version: the key, its value and the seq (32 hex digits) that wrote it.
    (A named tuple: a scan makes hundreds of thousands a second, and a tuple is the cheapest
    immutable record to make; ``key, value, seq = item`` works too.)"""

    key: bytes
    value: bytes
    seq: str


_new_item = tuple.__new__  # Item(...) without the named tuple's keyword-handling __new__


@dataclass(frozen=True, slots=True)
class Page:
    """A page of :meth:`Client.list`; pass ``next`` back as ``after`` for the following page."""

    items: list[Item]
    next: str | None


# --- arguments --------------------------------------------------------------------------------


def to_bytes(data: str | bytes, what: str) -> bytes:
    """Keys and values are bytes on the wire; ``str`` is encoded as UTF-8."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be str or bytes, not {type(data).__name__}")


def check_seq(seq: str) -> str:
    if not isinstance(seq, str) or len(seq) != 32:
        raise errors.InvalidArgument("a seq is 32 hex digits", field="if_seq")
    try:
        bytes.fromhex(seq)
    except ValueError:
        raise errors.InvalidArgument("a seq is 32 hex digits", field="if_seq") from None
    return seq.lower()


def normalize_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["http://a:1/", ...]`` → ``["http://a:1", ...]``; ``rangekv://``
    endpoints (the native protocol) stay as they are. One protocol for all."""
    raw = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise TypeError(f"an endpoint is a URL string, not {type(item).__name__}")
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        if not url.startswith(("http://", "https://", NATIVE_SCHEME)):
            raise errors.InvalidArgument(
                f"endpoint {item!r} is not rangekv://HOST:PORT or an http(s) URL")
        out.append(url)
    if not out:
        raise errors.InvalidArgument("at least one endpoint is needed")
    if len({u.startswith(NATIVE_SCHEME) for u in out}) > 1:
        raise errors.InvalidArgument("endpoints are all rangekv:// or all http(s)://")
    return out


def is_native(endpoints: Sequence[str]) -> bool:
    return endpoints[0].startswith(NATIVE_SCHEME)


def final_error(failure: Failure, maybe_applied: bool) -> errors.RangeKVError:
    """The error a call raises when it stops retrying: after a write that may have been
    applied, "unavailable" would say nothing happened; it is ``OutcomeUnknown``."""
    err = failure.error
    if maybe_applied and isinstance(err, errors.Unavailable):
        return errors.OutcomeUnknown(
            f"the write may or may not have taken effect (an earlier attempt's outcome is "
            f"unknown; the last attempt: {err.message})", **err.details)
    return err


def check_client_config(timeout_s: float, connect_timeout_s: float, retries: int) -> None:
    if not timeout_s > 0:
        raise errors.InvalidArgument("timeout_s must be positive")
    if not connect_timeout_s > 0:
        raise errors.InvalidArgument("connect_timeout_s must be positive")
    if not isinstance(retries, int) or not 0 <= retries <= RETRIES_MAX:
        raise errors.InvalidArgument(f"retries must be an integer in 0..{RETRIES_MAX}")


def http_timeout(timeout_s: float, connect_timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=min(timeout_s, connect_timeout_s))


def quote_segment(data: bytes | str) -> str:
    """Percent-encode one path segment; "." and ".." are escaped so no one normalizes them."""
    seg = quote(data, safe="")
    if seg in (".", ".."):
        seg = seg.replace(".", "%2E")
    return seg


def _query(params: Sequence[tuple[str, bytes | str | int]]) -> str:
    parts = []
    for name, value in params:
        text = str(value) if isinstance(value, int) else value
        parts.append(f"{name}={quote(text, safe='')}")
    return ("?" + "&".join(parts)) if parts else ""


# --- calls ------------------------------------------------------------------------------------

_MISSING: Any = object()


def _no_reply(reply: dict[str, Any]) -> Any:
    return None


@dataclass(frozen=True, slots=True)
class Call:
    """One API request as data, in both protocols: HTTP (``method``, ``path``, ``headers``,
    ``content``; ``parse`` turns a 2xx answer into the method's result) and native (``op``,
    ``fields``; ``reply`` turns the answer's fields into the same result)."""

    method: str
    route: str | Callable[[], str]  # the path (or how to make it: only HTTP needs it)
    write: bool
    parse: Callable[[httpx.Response], Any]
    op: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    reply: Callable[[dict[str, Any]], Any] = _no_reply
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    # When the answer is KeyNotFound, return this instead of raising (get → None, delete →
    # False). _MISSING: raise.
    if_key_not_found: Any = _MISSING
    # a write that carries the client's session (applied at most once, so retried when its
    # outcome is unknown); ``cseqs``: how many session numbers it takes (one per batch item)
    session: bool = False
    cseqs: int = 1

    @property
    def path(self) -> str:
        """The HTTP path, percent-encoded, with its query string."""
        route = self.route
        return route if isinstance(route, str) else route()


def _table_path(table: str) -> str:
    return "/v1/tables/" + quote_segment(limits.check_table_name(table))


def _key_path(table: str, key: str | bytes) -> tuple[bytes, Callable[[], str]]:
    """The key, checked, and how to make its HTTP path (not made for the native protocol)."""
    raw = limits.check_key(to_bytes(key, "key"))
    limits.check_table_name(table)
    return raw, lambda: _table_path(table) + "/keys/" + quote_segment(raw)


def _native_field(reply: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = reply.get(name)
    if not isinstance(value, kind):
        raise errors.ProtocolError(f"unexpected answer: {name} is {type(value).__name__}")
    return value


def _hex_seq(value: Any) -> str:
    if not isinstance(value, bytes) or len(value) != 16:
        raise errors.ProtocolError("unexpected answer: a seq is 16 bytes")
    return value.hex()


def call_tables() -> Call:
    def parse(resp: httpx.Response) -> list[str]:
        body = json_body(resp)
        try:
            return [str(t["name"]) for t in body["tables"]]
        except (KeyError, TypeError) as exc:
            raise _bad_shape(resp, "tables", exc) from None

    def reply(body: dict[str, Any]) -> list[str]:
        try:
            return [str(t["name"]) for t in _native_field(body, "tables", list)]
        except (KeyError, TypeError) as exc:
            raise errors.ProtocolError(f"unexpected tables answer: {exc}") from None

    return Call("GET", "/v1/tables", write=False, parse=parse, op="tables", reply=reply)


def call_create_table(name: str) -> Call:
    return Call("PUT", _table_path(name), write=True, parse=lambda resp: None,
                op="create_table", fields={"table": name})


def call_drop_table(name: str) -> Call:
    return Call("DELETE", _table_path(name), write=True, parse=lambda resp: None,
                op="drop_table", fields={"table": name})


def _parse_ranges(resp: httpx.Response) -> list[dict[str, Any]]:
    body = json_body(resp)
    try:
        return list(body["ranges"])
    except (KeyError, TypeError) as exc:
        raise _bad_shape(resp, "ranges", exc) from None


def _reply_ranges(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_native_field(body, "ranges", list))


def call_ranges(table: str) -> Call:
    return Call("GET", _table_path(table) + "/ranges", write=False, parse=_parse_ranges,
                op="ranges", fields={"table": table}, reply=_reply_ranges)


def call_split(table: str, at: str | bytes, to: int | str | None = None) -> Call:
    raw = limits.check_key(to_bytes(at, "at"))
    path = _table_path(table) + "/split/" + quote_segment(raw)
    if to is not None:
        if to != "auto" and (not isinstance(to, int) or isinstance(to, bool) or to <= 0):
            raise errors.InvalidArgument("to must be a group id or 'auto'", field="to")
        path += f"?to={to}"
    return Call("POST", path, write=True, parse=_parse_ranges, op="split",
                fields={"table": table, "at": raw, "to": to}, reply=_reply_ranges)


def _parse_move(resp: httpx.Response) -> dict[str, Any]:
    body = json_body(resp)
    try:
        return {"ranges": list(body["ranges"]), "done": bool(body["done"])}
    except (KeyError, TypeError) as exc:
        raise _bad_shape(resp, "ranges", exc) from None


def call_move(table: str, at: str | bytes, to: int) -> Call:
    raw = limits.check_key(to_bytes(at, "at"))
    if not isinstance(to, int) or isinstance(to, bool) or to <= 0:
        raise errors.InvalidArgument("to must be a group id", field="to")
    path = _table_path(table) + "/move/" + quote_segment(raw) + f"?to={to}"

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return {"ranges": _reply_ranges(body), "done": bool(body.get("done"))}

    return Call("POST", path, write=True, parse=_parse_move, op="move",
                fields={"table": table, "at": raw, "to": to}, reply=reply)


def _condition(if_seq: str | None, if_absent: bool) -> bytes | None:
    if if_seq is not None and if_absent:
        raise errors.InvalidArgument("if_seq and if_absent exclude each other")
    if if_seq is not None:
        return bytes.fromhex(check_seq(if_seq))
    return bytes(16) if if_absent else None


def _reply_put(body: dict[str, Any]) -> str:
    return _hex_seq(body.get("seq"))


def call_put(
    table: str,
    key: str | bytes,
    value: str | bytes,
    *,
    if_seq: str | None = None,
    if_absent: bool = False,
) -> Call:
    raw, path = _key_path(table, key)
    content = limits.check_value(to_bytes(value, "value"))
    condition = _condition(if_seq, if_absent)
    headers = {"Content-Type": "application/octet-stream"}
    if if_seq is not None:
        headers["If-Match"] = check_seq(if_seq)
    if if_absent:
        headers["If-None-Match"] = "*"

    def parse(resp: httpx.Response) -> str:
        body = json_body(resp)
        seq = body.get("seq") if isinstance(body, dict) else None
        if not isinstance(seq, str):
            raise _bad_shape(resp, "put", None)
        return seq

    return Call("PUT", path, write=True, parse=parse, op="put",
                fields={"table": table, "key": raw, "value": content, "if_seq": condition},
                reply=_reply_put, headers=headers, content=content, session=True)


def seq_of(resp: httpx.Response) -> str:
    """The seq of a GET answer: ``X-Rangekv-Seq``, else the (quoted, maybe weak) ``ETag``."""
    seq: str | None = resp.headers.get("x-rangekv-seq")
    if seq is None:
        etag = resp.headers.get("etag", "")
        if etag.startswith("W/"):
            etag = etag[2:]
        seq = etag.strip('"') or None
    if seq is None:
        raise _bad_shape(resp, "get (no ETag)", None)
    return seq


def _reply_item(key: bytes, body: dict[str, Any]) -> Item | None:
    if not body.get("found"):
        return None
    value = body.get("value")
    if not isinstance(value, bytes):
        raise errors.ProtocolError("unexpected get answer: value is not bytes")
    return Item(key, value, _hex_seq(body.get("seq")))


def call_get(table: str, key: str | bytes) -> Call:
    raw, path = _key_path(table, key)

    def parse(resp: httpx.Response) -> Item:
        return Item(raw, resp.content, seq_of(resp))

    return Call("GET", path, write=False, parse=parse, op="get",
                fields={"table": table, "key": raw},
                reply=lambda body: _reply_item(raw, body), if_key_not_found=None)


def call_delete(table: str, key: str | bytes, *, if_seq: str | None = None) -> Call:
    raw, path = _key_path(table, key)
    headers = {} if if_seq is None else {"If-Match": check_seq(if_seq)}

    def parse(resp: httpx.Response) -> bool:
        body = json_body(resp)
        deleted = body.get("deleted") if isinstance(body, dict) else None
        if not isinstance(deleted, bool):
            raise _bad_shape(resp, "delete", None)
        return deleted

    return Call("DELETE", path, write=True, parse=parse, op="delete",
                fields={"table": table, "key": raw,
                        "if_seq": None if if_seq is None else bytes.fromhex(if_seq)},
                reply=lambda body: bool(_native_field(body, "deleted", bool)),
                headers=headers, if_key_not_found=False, session=True)


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def _reply_page(body: dict[str, Any]) -> Page:
    if "packed" in body:  # (the items as the nodes encoded them: one C call decodes them)
        n = body.get("n")
        if not isinstance(n, int) or isinstance(n, bool):
            raise errors.ProtocolError("unexpected list answer: n is not an integer")
        raw = wire.unpack_elements(_native_field(body, "packed", bytes), n)
    else:
        raw = _native_field(body, "items", list)
    nxt = body.get("next")
    if nxt is not None and not isinstance(nxt, str):
        raise errors.ProtocolError("unexpected list answer: next is not a string")
    try:
        items = [_new_item(Item, (k, v, s.hex())) for k, v, s in raw]
        ok = all(type(k) is bytes and type(v) is bytes and len(s) == 32 for k, v, s in items)
    except (TypeError, ValueError, AttributeError) as exc:
        raise errors.ProtocolError(f"unexpected list answer: {exc}") from None
    if not ok:
        raise errors.ProtocolError("unexpected list answer: an item is not [key, value, seq] "
                                   "bytes with a 16-byte seq")
    return Page(items, nxt or None)


def call_list(
    table: str,
    *,
    start: str | bytes | None = None,
    end: str | bytes | None = None,
    limit: int = limits.LIST_LIMIT_DEFAULT,
    after: str | None = None,
) -> Call:
    # With encoding=base64 the rm reads start and end as standard base64 too: binary-safe both
    # ways, whatever a proxy or form decoder would make of "+", "%" or bytes that are not UTF-8.
    params: list[tuple[str, bytes | str | int]] = []
    start_raw = None if start is None else to_bytes(start, "start")
    end_raw = None if end is None else to_bytes(end, "end")
    if start_raw is not None:
        params.append(("start", base64.b64encode(start_raw).decode()))
    if end_raw is not None:
        params.append(("end", base64.b64encode(end_raw).decode()))
    if after is not None:
        if not isinstance(after, str):
            raise TypeError("after is the cursor string of Page.next")
        params.append(("after", after))
    limit = limits.check_list_limit(limit)
    params.append(("limit", limit))
    params.append(("encoding", "base64"))

    def parse(resp: httpx.Response) -> Page:
        body = json_body(resp)
        try:
            items = [
                Item(b64decode(i["key"]), b64decode(i["value"]), str(i["seq"]))
                for i in body["items"]
            ]
            nxt = body.get("next")
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise _bad_shape(resp, "list", exc) from None
        if nxt is not None and not isinstance(nxt, str):
            raise _bad_shape(resp, "list (next)", None)
        return Page(items, nxt or None)

    path = _table_path(table) + "/keys" + _query(params)
    return Call("GET", path, write=False, parse=parse, op="list",
                fields={"table": table, "start": start_raw, "end": end_raw, "after": after,
                        "limit": limit, "packed": True}, reply=_reply_page)


# --- batches ----------------------------------------------------------------------------------


def _batch_error(results: list[Any], what: str) -> errors.BatchFailed:
    failed = [r for r in results if isinstance(r, errors.RangeKVError)]
    codes = sorted({e.code for e in failed})
    return errors.BatchFailed(
        f"{len(failed)} of {len(results)} {what} failed ({', '.join(codes)}); the others "
        "succeeded (a batch is not a transaction): see .results", results=results)


def _settle_batch(results: list[Any], what: str) -> list[Any]:
    if any(isinstance(r, errors.RangeKVError) for r in results):
        raise _batch_error(results, what)
    return results


def _batch_results(body: dict[str, Any], n: int,
                   one: Callable[[int, dict[str, Any]], Any]) -> list[Any]:
    raw = _native_field(body, "results", list)
    if len(raw) != n:
        raise errors.ProtocolError(f"a batch of {n} answered with {len(raw)} results")
    out: list[Any] = []
    for i, res in enumerate(raw):
        if not isinstance(res, dict):
            raise errors.ProtocolError("unexpected batch answer: a result is not a map")
        err = res.get("error")
        out.append(errors.from_dict(err) if isinstance(err, dict) else one(i, res))
    return out


def _batch_http(table: str, ops: list[dict[str, Any]], n: int, write: bool,
                one: Callable[[int, dict[str, Any]], Any], what: str,
                reply: Callable[[dict[str, Any]], Any], op: str,
                fields: dict[str, Any]) -> Call:
    content = json.dumps({"encoding": "base64", "ops": ops}).encode()

    def parse(resp: httpx.Response) -> list[Any]:
        body = json_body(resp)
        try:
            results = _batch_results(body, n, one)
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as exc:
            raise _bad_shape(resp, "batch", exc) from None
        return _settle_batch(results, what)

    return Call("POST", _table_path(table) + "/batch", write=write, parse=parse, op=op,
                fields=fields, reply=reply, headers={"Content-Type": "application/json"},
                content=content, session=write, cseqs=n)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call_put_many(table: str, items: Any, *, if_absent: bool = False) -> Call:
    """``items``: a mapping or (key, value) pairs."""
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    keys = [limits.check_key(to_bytes(k, "key")) for k, _ in pairs]
    values = [limits.check_value(to_bytes(v, "value")) for _, v in pairs]
    limits.check_batch(len(keys), sum(map(len, keys)) + sum(map(len, values)))
    limits.check_table_name(table)
    cond = bytes(16) if if_absent else None
    wire_items = [[k, v, cond] if cond is not None else [k, v]
                  for k, v in zip(keys, values, strict=True)]

    def one_native(i: int, res: dict[str, Any]) -> str:
        return _hex_seq(res.get("seq"))

    def one_http(i: int, res: dict[str, Any]) -> str:
        seq = res.get("seq")
        if not isinstance(seq, str):
            raise errors.ProtocolError("unexpected put_many answer")
        return seq

    def reply(body: dict[str, Any]) -> list[Any]:
        return _settle_batch(_batch_results(body, len(keys), one_native), "puts")

    ops = [{"op": "put", "key": _b64(k), "value": _b64(v), **({"if_absent": True}
                                                                if if_absent else {})}
           for k, v in zip(keys, values, strict=True)]
    return _batch_http(table, ops, len(keys), True, one_http, "puts", reply, "put_many",
                       {"table": table, "items": wire_items})


def call_get_many(table: str, keys: Any) -> Call:
    raw_keys = [limits.check_key(to_bytes(k, "key")) for k in keys]
    limits.check_batch(len(raw_keys), sum(map(len, raw_keys)))
    limits.check_table_name(table)

    def one_native(i: int, res: dict[str, Any]) -> Item | None:
        return _reply_item(raw_keys[i], res)

    def one_http(i: int, res: dict[str, Any]) -> Item | None:
        if not res.get("found"):
            return None
        return Item(raw_keys[i], b64decode(res["value"]), str(res["seq"]))

    def reply(body: dict[str, Any]) -> list[Any]:
        return _settle_batch(_batch_results(body, len(raw_keys), one_native), "gets")

    ops = [{"op": "get", "key": _b64(k)} for k in raw_keys]
    return _batch_http(table, ops, len(raw_keys), False, one_http, "gets", reply, "get_many",
                       {"table": table, "keys": raw_keys})


def call_delete_many(table: str, keys: Any) -> Call:
    raw_keys = [limits.check_key(to_bytes(k, "key")) for k in keys]
    limits.check_batch(len(raw_keys), sum(map(len, raw_keys)))
    limits.check_table_name(table)

    def one(i: int, res: dict[str, Any]) -> bool:
        deleted = res.get("deleted")
        if not isinstance(deleted, bool):
            raise errors.ProtocolError("unexpected delete_many answer")
        return deleted

    def reply(body: dict[str, Any]) -> list[Any]:
        return _settle_batch(_batch_results(body, len(raw_keys), one), "deletes")

    ops = [{"op": "delete", "key": _b64(k)} for k in raw_keys]
    return _batch_http(table, ops, len(raw_keys), True, one, "deletes", reply, "delete_many",
                       {"table": table, "keys": raw_keys})


def _reply_map(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body)


def call_cluster() -> Call:
    def parse(resp: httpx.Response) -> dict[str, Any]:
        body = json_body(resp)
        if not isinstance(body, dict):
            raise _bad_shape(resp, "cluster", None)
        return body

    return Call("GET", "/v1/cluster", write=False, parse=parse, op="cluster",
                reply=lambda body: {k: v for k, v in body.items() if k not in _FRAME_KEYS})


_FRAME_KEYS = frozenset({"t", "id", "ok"})


def call_cluster_status(table: str | None = None) -> Call:
    def parse(resp: httpx.Response) -> dict[str, Any]:
        body = json_body(resp)
        if not isinstance(body, dict) or not isinstance(body.get("groups"), list):
            raise _bad_shape(resp, "cluster status", None)
        return body

    path = "/v1/cluster/status" + (_query([("table", table)]) if table is not None else "")
    return Call("GET", path, write=False, parse=parse, op="cluster_status",
                fields={"table": table},
                reply=lambda body: {k: v for k, v in body.items() if k not in _FRAME_KEYS})


NODE_ID_MAX = 2**32 - 1


def call_remove_node(node_id: int) -> Call:
    if not isinstance(node_id, int) or isinstance(node_id, bool) or not (
            1 <= node_id <= NODE_ID_MAX):
        raise errors.InvalidArgument(f"a node id is an integer in 1..{NODE_ID_MAX}", field="id")

    def parse(resp: httpx.Response) -> dict[str, Any]:
        body = json_body(resp)
        if not isinstance(body, dict) or not isinstance(body.get("node"), dict):
            raise _bad_shape(resp, "remove node", None)
        return body

    return Call("DELETE", f"/v1/cluster/nodes/{node_id}", write=True, parse=parse,
                op="remove_node", fields={"node_id": node_id},
                reply=lambda body: {"node": body.get("node"), "live": bool(body.get("live"))})


# --- answers ----------------------------------------------------------------------------------


def json_body(resp: httpx.Response) -> Any:
    try:
        return json.loads(resp.content)
    except ValueError:
        raise _bad_shape(resp, "JSON", None) from None


def _bad_shape(resp: httpx.Response, what: str, exc: BaseException | None) -> errors.ProtocolError:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return errors.ProtocolError(
        f"unexpected {what} answer from {resp.request.url.host}:{resp.request.url.port} "
        f"(status {resp.status_code}){detail}"
    )


@dataclass(frozen=True)
class Failure:
    """An attempt that did not produce a result, and what it means for retrying."""

    error: errors.RangeKVError
    not_sent: bool  # surely not processed: safe to retry even a write
    failover: bool  # move to the next endpoint
    retry_after_s: float | None = None
    cause: BaseException | None = None


_BY_STATUS: dict[int, type[errors.RangeKVError]] = {
    400: errors.InvalidArgument,
    404: errors.NotFound,
    409: errors.TableExists,
    412: errors.PreconditionFailed,
    413: errors.TooLarge,
    429: errors.Unavailable,
    500: errors.Internal,
    503: errors.Unavailable,
}


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def error_of_response(resp: httpx.Response, write: bool) -> tuple[errors.RangeKVError, bool]:
    """The error an error answer carries, and whether it came as a rangekv JSON error body."""
    try:
        body = json.loads(resp.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return errors.from_dict(body["error"]), True
    # Not from an rm: a proxy (HAProxy) or something else in the way.
    text = resp.content[:200].decode("utf-8", "replace").strip()
    where = f"{resp.request.url.host}:{resp.request.url.port}"
    message = f"HTTP {resp.status_code} from {where}" + (f": {text}" if text else "")
    status = resp.status_code
    if status in (502, 504) or (status >= 500 and status not in _BY_STATUS):
        cls: type[errors.RangeKVError] = errors.OutcomeUnknown if write else errors.Unavailable
    else:
        cls = _BY_STATUS.get(status, errors.InvalidArgument if status < 500 else errors.Internal)
    return cls(message, status=status), False


def settle(call: Call, resp: httpx.Response) -> Any:
    """The result of ``call`` from its answer, or a :class:`Failure`."""
    if 200 <= resp.status_code < 300:
        try:
            return call.parse(resp)
        except errors.ProtocolError as exc:
            return Failure(exc, not_sent=False, failover=True)
    err, from_rm = error_of_response(resp, call.write)
    if call.if_key_not_found is not _MISSING and isinstance(err, errors.KeyNotFound):
        return call.if_key_not_found
    return Failure(
        err,
        not_sent=isinstance(err, errors.Unavailable),
        failover=not from_rm and err.retryable,
        retry_after_s=parse_retry_after(resp.headers.get("retry-after")),
    )


def failure_of_exception(exc: httpx.HTTPError, call: Call, endpoint: str) -> Failure:
    """Translate an httpx exception at the boundary (httpx never leaks out of the client)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        # The connection was never made (or no pooled connection was free): nothing was sent.
        return Failure(
            errors.Unavailable(
                f"cannot connect to {endpoint}: {exc or type(exc).__name__}", endpoint=endpoint
            ),
            not_sent=True,
            failover=True,
            cause=exc,
        )
    if isinstance(exc, httpx.TimeoutException):
        return Failure(
            errors.Timeout(
                f"no answer from {endpoint} in time ({type(exc).__name__})", endpoint=endpoint
            ),
            not_sent=False,
            failover=True,
            cause=exc,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Failure(
            errors.InvalidArgument(f"bad endpoint {endpoint}: {exc}"),
            not_sent=True,
            failover=False,
            cause=exc,
        )
    message = f"connection to {endpoint} failed during the request: {exc or type(exc).__name__}"
    cls = errors.OutcomeUnknown if call.write else errors.Unavailable
    return Failure(cls(message, endpoint=endpoint), not_sent=False, failover=True, cause=exc)


# --- retrying ---------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with equal jitter; a floor of ``Retry-After``, itself bounded."""

    delay_s_min: float = 0.05
    delay_s_max: float = 2.0
    retry_after_s_max: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, round_n: int, retry_after_s: float | None = None) -> float:
        assert round_n >= 1, round_n
        cap_s = min(self.delay_s_max, self.delay_s_min * float(2 ** min(round_n - 1, 30)))
        delay_s = cap_s / 2 + self.rng.uniform(0, cap_s / 2)
        if retry_after_s is not None:
            delay_s = max(delay_s, min(retry_after_s, self.retry_after_s_max))
        return delay_s


class Session:
    """The client's session for exactly-once writes: a random 16-byte id, and a number for
    each write (``cseq``, a block of them for a batch). A write's number stays the same
    through its retries; the group keeps each (id, cseq)'s result and applies a resent write
    at most once. ``floor`` (the lowest number still awaiting its answer) lets the group forget
    the results below it. Thread-safe."""

    __slots__ = ("client", "_next", "_in_flight", "_lock")

    def __init__(self, client: bytes | None = None) -> None:
        self.client = client if client is not None else os.urandom(16)
        self._next = 1
        self._in_flight: dict[int, None] = {}  # cseqs awaiting answers, in increasing order
        self._lock = threading.Lock()

    def begin(self, n: int = 1) -> int:
        with self._lock:
            cseq = self._next
            self._next += n
            self._in_flight[cseq] = None
        return cseq

    def end(self, cseq: int) -> None:
        with self._lock:
            self._in_flight.pop(cseq, None)

    def floor(self) -> int:
        with self._lock:
            return next(iter(self._in_flight), self._next)

    def fields(self, cseq: int, retry: bool) -> dict[str, Any]:
        """What a native request carries."""
        out: dict[str, Any] = {"client": self.client, "cseq": cseq, "floor": self.floor()}
        if retry:
            out["retry"] = True
        return out

    def headers(self, cseq: int, retry: bool) -> dict[str, str]:
        """What an HTTP request carries (``X-Rangekv-Session``, docs/api.md)."""
        out = {"X-Rangekv-Session": f"{self.client.hex()}:{cseq}:{self.floor()}"}
        if retry:
            out["X-Rangekv-Retry"] = "1"
        return out


# One attempt's share of the call's deadline: an rm that is connected but does not answer
# (hung, or cut off behind a proxy) is left for another before the call's time is all spent.
# Above the rm's own deadline for a data operation (5 s), which it spends retrying for us.
ATTEMPT_TIMEOUT_S_MAX = 6.0


class Retrier:
    """Decides, failure by failure, whether one call is tried again and after how long, within
    the call's deadline (``timeout_s`` from now on ``clock``).

    A write of a session (``session``) is retried like a read: whatever became of an earlier
    attempt, the group applies it at most once; and once an attempt's outcome is unknown it is
    retried until the deadline, whatever ``retries`` says, so that ``OutcomeUnknown`` reaches
    the caller only when there is no time left to learn the outcome."""

    def __init__(self, *, retries: int, endpoints_n: int, backoff: Backoff, write: bool,
                 timeout_s: float, connect_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic, session: bool = False) -> None:
        assert retries >= 0 and endpoints_n >= 1 and timeout_s > 0
        self._clock = clock
        self._deadline_s = clock() + timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._retries = retries
        self._endpoints_n = endpoints_n
        self._backoff = backoff
        self._write = write and not session
        self._session = write and session
        self._unknown = False  # an attempt of this session write may have been applied
        self._rounds = 0  # rounds that ended in failure
        self._failed_in_round = 0  # endpoints that refused connections in this round

    def attempt_timeout(self) -> httpx.Timeout:
        """The next attempt's timeouts: what remains of the call's deadline (a little at least,
        so that an attempt started just before the deadline fails as a timeout)."""
        remaining_s = max(0.001, self._deadline_s - self._clock())
        return http_timeout(remaining_s, self._connect_timeout_s)

    def remaining_s(self) -> float:
        """The next attempt's time: what remains of the deadline, at most
        ``ATTEMPT_TIMEOUT_S_MAX`` (and a little at least)."""
        return min(ATTEMPT_TIMEOUT_S_MAX, max(0.001, self._deadline_s - self._clock()))

    def may_retry(self, failure: Failure) -> bool:
        if self._write:
            return failure.not_sent
        return failure.error.retryable

    def next_delay_s(self, failure: Failure) -> float | None:
        """Seconds to wait before the next attempt, or None: raise ``failure.error``."""
        if not self.may_retry(failure):
            return None
        if failure.not_sent and failure.failover:
            self._failed_in_round += 1
            if self._failed_in_round < self._endpoints_n:
                return 0.0  # another endpoint has not been tried in this round yet
        self._failed_in_round = 0
        self._rounds += 1
        if self._session and not failure.not_sent:
            self._unknown = True
        if self._rounds > self._retries and not self._unknown:
            return None
        # (a session write whose outcome is unknown goes on until the deadline: the group
        # applies it at most once, and "unknown" is the answer of last resort)
        delay_s = self._backoff.delay_s(self._rounds, failure.retry_after_s)
        if self._clock() + delay_s >= self._deadline_s:
            return None  # the call's deadline would pass before the next attempt
        return delay_s


class Sending:
    """One call's attempts: what the sync and the async driver share, so that they differ only
    in awaiting. It holds the call's client-session number (for the call's life), whether an
    attempt may have been applied (the next attempt then says it retries), the call's
    ``Retrier``, and turns the client to its next endpoint after a failure that asks for it.
    ``client`` is the ``Client`` or ``AsyncClient`` (its endpoints, settings and session)."""

    def __init__(self, client: Any, call: Call) -> None:
        self._client = client
        self.call = call
        self.session: Session | None = client.session if call.session else None
        self.retrier = Retrier(
            retries=client.retries, endpoints_n=len(client.endpoints), backoff=client._backoff,
            write=call.write, timeout_s=client.timeout_s,
            connect_timeout_s=client.connect_timeout_s, clock=client._clock,
            session=self.session is not None)
        self.cseq = self.session.begin(call.cseqs) if self.session is not None else 0
        self.maybe_applied = False

    @property
    def endpoint(self) -> str:
        return str(self._client.endpoints[self._client._current])

    def native_fields(self) -> dict[str, Any] | None:
        """The session fields of the next native attempt (None without a session)."""
        if self.session is None:
            return None
        return self.session.fields(self.cseq, self.maybe_applied)

    def http_headers(self) -> Mapping[str, str]:
        """The headers of the next HTTP attempt (the call's, and its session's)."""
        if self.session is None:
            return self.call.headers
        return {**self.call.headers, **self.session.headers(self.cseq, self.maybe_applied)}

    def after(self, failure: Failure) -> float:
        """Seconds to wait before the next attempt; raises the call's error if there is none."""
        self.maybe_applied = self.maybe_applied or (self.call.write and not failure.not_sent)
        if failure.failover:
            self._client._current = (self._client._current + 1) % len(self._client.endpoints)
        delay_s = self.retrier.next_delay_s(failure)
        if delay_s is None:
            raise final_error(failure, self.maybe_applied) from failure.cause
        return delay_s

    def end(self) -> None:
        if self.session is not None:
            self.session.end(self.cseq)
