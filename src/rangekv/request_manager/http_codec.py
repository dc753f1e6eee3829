"""Pure HTTP codecs of the request manager: what the user sends, decoded and checked; what we
answer, encoded. No IO here, so all of it is unit-tested without a server.

Invariants:

* A decoder either returns a value that passed every limit of ``rangekv.limits`` or raises
  ``InvalidArgument``/``TooLarge``; nothing half-checked reaches the router, so bad input changes
  nothing.
* Keys are bytes end to end. In a path a key is percent-encoded bytes (normally UTF-8), taken
  from the raw, undecoded request target so that ``%2F`` ("/") and ``%25`` ("%") survive; with
  ``key_encoding=base64`` the segment is base64url (padding optional). Query values are
  percent-decoded to bytes with ``+`` meaning a space (the form-encoding convention).
* Every part of a target is percent-decoded by ``percent_decode`` alone, strictly: a ``%`` not
  followed by two hex digits (``a%zz``, a trailing ``%4``) or a byte outside ASCII is a 400,
  never taken literally (a key ``a%zz`` stored as those four bytes would be a key the client
  never meant, and ``%4`` one byte short of what it did).
* A list cursor is opaque to the user and self-contained: ``base64url(version | msgpack map)``
  carrying the table id, the last key returned and the end bound, so a client resumes with
  ``after=<cursor>`` alone. A cursor never grows past ``CURSOR_BYTES_MAX``, and any cursor that
  does not decode exactly is a 400.
* In list pages with ``encoding=utf8`` (the default), a key or value that is not valid UTF-8 is
  sent as ``key_base64``/``value_base64`` (standard base64) instead of ``key``/``value``; with
  ``encoding=base64`` every key and value is standard base64. Seqs are always 32 hex digits.

Cursor layout (version 1)::

    base64url-no-padding( 0x01 | msgpack {"t": table_id, "a": last_key, "e": end | nil} )

(or ``"s": start`` instead of ``"a"``: resume at ``start`` inclusive, used only when one page
walked the most ranges it may without finding a key.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import msgpack
import orjson

from rangekv import errors, limits, sequencer

CURSOR_VERSION = 1
ENCODING_UTF8 = "utf8"
ENCODING_BASE64 = "base64"
ENCODINGS = (ENCODING_UTF8, ENCODING_BASE64)
KEY_ENCODINGS = (ENCODING_UTF8, ENCODING_BASE64)

_JSON_SEPARATORS = (",", ":")
_OWS = " \t"  # HTTP's optional whitespace around a header value (RFC 9110 5.6.3)
_SEQ_HEX_RE = re.compile(r"[0-9a-fA-F]{32}")
_LIMIT_DIGITS_MAX = 9  # a longer number is far above LIST_LIMIT_MAX anyway
_ESCAPE_BAD_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a "%" not followed by two hex digits


# ---------------------------------------------------------------------------------------------
# Query strings and path segments


def percent_decode(raw: str, field: str) -> bytes:
    """The bytes a raw (still percent-encoded) part of a request target stands for; 400 for a
    malformed escape or a character outside ASCII (a URL carries other bytes percent-encoded,
    and HAProxy refuses them unencoded: an rm must not take them otherwise)."""
    if "%" not in raw and raw.isascii():
        return raw.encode("ascii")
    if not raw.isascii():
        raise errors.InvalidArgument(
            f"{field} has a character outside ASCII: percent-encode it (UTF-8 as %E2%82%AC ...)",
            field=field)
    bad = _ESCAPE_BAD_RE.search(raw)
    if bad is not None:
        raise errors.InvalidArgument(
            f"{field} has a malformed percent-escape {raw[bad.start():bad.start() + 3]!r}: a % "
            f"must be followed by two hex digits (a literal % is %25)", field=field)
    return unquote_to_bytes(raw)


def parse_query(raw_query: str) -> dict[str, bytes]:
    """Decode a raw query string to ``name -> bytes`` (the first occurrence of a name wins).

    Values are bytes, not text, so that ``start=%FF`` reaches the router as the byte 0xFF
    instead of a replacement character. A malformed escape is a 400 (``percent_decode``).
    """
    out: dict[str, bytes] = {}
    if not raw_query:
        return out
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name_text = percent_decode(name.replace("+", " "), "query").decode("utf-8", "replace")
        if name_text not in out:
            out[name_text] = percent_decode(value.replace("+", " "), name_text[:40])
    return out


def query_text(query: dict[str, bytes], name: str) -> str | None:
    """A query parameter as ASCII text (for flags and numbers); 400 if it is not ASCII."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise errors.InvalidArgument(
            f"query parameter {name!r} must be ASCII", field=name
        ) from None


def decode_table_segment(raw: str) -> str:
    """The table name from its raw path segment; 400 unless it matches the table name rule."""
    try:
        name = percent_decode(raw, "table").decode("utf-8")
    except UnicodeDecodeError:
        name = raw
    return limits.check_table_name(name)


def decode_path_key(raw: str, key_encoding: str | None) -> bytes:
    """The key from its raw (still percent-encoded) path segment, checked against the limits."""
    if key_encoding is None or key_encoding == ENCODING_UTF8:
        key = percent_decode(raw, "key")
    elif key_encoding == ENCODING_BASE64:
        key = b64url_decode(percent_decode(raw, "key"), field="key")
    else:
        raise errors.InvalidArgument("key_encoding must be utf8 or base64", field="key_encoding")
    return limits.check_key(key)


def b64url_decode(text: bytes, field: str) -> bytes:
    """Strict base64url with optional padding."""
    if b"+" in text or b"/" in text:
        raise errors.InvalidArgument(f"{field} is not base64url", field=field)
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgument(f"{field} is not base64url", field=field) from None


def b64_decode(text: bytes, field: str) -> bytes:
    """Strict standard base64; a space is taken as the ``+`` a form encoder turned into one."""
    try:
        return base64.b64decode(text.replace(b" ", b"+"), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgument(f"{field} is not standard base64", field=field) from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Conditional writes


def parse_seq_tag(text: str, header: str) -> bytes:
    """A seq from an entity tag: 32 hex digits, quotes optional."""
    tag = text.strip(_OWS)
    if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"':
        tag = tag[1:-1]
    try:
        # The pattern first: bytes.fromhex skips whitespace, so "aa bb ..." would be a short seq.
        if not _SEQ_HEX_RE.fullmatch(tag):
            raise ValueError(tag)
        seq = sequencer.from_hex(tag)
    except ValueError:
        raise errors.InvalidArgument(
            f"{header} must be one seq of 32 hex digits (quotes optional)", field=header
        ) from None
    if seq == sequencer.ZERO:
        raise errors.InvalidArgument(f"{header} must not be the zero seq", field=header)
    return seq


def parse_conditions(if_match: str | None, if_none_match: str | None) -> bytes | None:
    """The node's ``if_seq`` from the request headers.

    ``None`` = unconditional; the zero seq = only if absent (``If-None-Match: *``); otherwise
    only if the current seq equals it (``If-Match: <seq>``).
    """
    if if_match is not None and if_none_match is not None:
        raise errors.InvalidArgument(
            "send If-Match or If-None-Match, not both", field="If-None-Match"
        )
    if if_none_match is not None:
        if if_none_match.strip(_OWS) != "*":
            raise errors.InvalidArgument(
                "If-None-Match supports only '*' (create only if absent)", field="If-None-Match"
            )
        return sequencer.ZERO
    if if_match is not None:
        if if_match.strip(_OWS) == "*":
            raise errors.InvalidArgument(
                "If-Match: * is not supported; send the seq you read", field="If-Match"
            )
        return parse_seq_tag(if_match, "If-Match")
    return None


def etag(seq: bytes) -> str:
    return f'"{seq.hex()}"'


# ---------------------------------------------------------------------------------------------
# List cursors and queries


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: strictly after ``after``, or (rarely: a page that walked many
    empty ranges) at ``start`` inclusive. Exactly one of the two is set."""

    table_id: int
    after: bytes | None
    end: bytes | None
    start: bytes | None = None

    def __post_init__(self) -> None:
        assert (self.after is None) != (self.start is None), self


def encode_cursor(cursor: Cursor) -> str:
    body: dict[str, Any] = {"t": cursor.table_id, "e": cursor.end}
    if cursor.after is not None:
        body["a"] = cursor.after
    else:
        body["s"] = cursor.start
    text = b64url_encode(bytes([CURSOR_VERSION]) + msgpack.packb(body, use_bin_type=True))
    assert len(text) <= limits.CURSOR_BYTES_MAX, len(text)
    return text


def decode_cursor(raw: bytes) -> Cursor:
    """The cursor a previous page returned as ``next``; 400 on anything else."""

    def bad(why: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"malformed cursor: {why}", field="after")

    if len(raw) > limits.CURSOR_BYTES_MAX:
        raise bad("too long")
    data = b64url_decode(raw, field="after")
    if not data or data[0] != CURSOR_VERSION:
        raise bad("unknown version")
    try:
        body = msgpack.unpackb(data[1:], raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types on bad input
        raise bad("undecodable") from None
    if not isinstance(body, dict) or set(body) not in ({"t", "a", "e"}, {"t", "s", "e"}):
        raise bad("wrong fields")
    table_id, end = body["t"], body["e"]
    if not isinstance(table_id, int) or isinstance(table_id, bool) or table_id < 0:
        raise bad("bad table id")
    if end is not None and (not isinstance(end, bytes) or len(end) > limits.KEY_BYTES_MAX):
        raise bad("bad end")
    if "a" in body:
        after = body["a"]
        if not isinstance(after, bytes) or not (
            limits.KEY_BYTES_MIN <= len(after) <= limits.KEY_BYTES_MAX
        ):
            raise bad("bad key")
        return Cursor(table_id, after, end)
    start = body["s"]
    if not isinstance(start, bytes) or len(start) > limits.KEY_BYTES_MAX:
        raise bad("bad start")
    return Cursor(table_id, None, end, start)


@dataclass(frozen=True)
class ListQuery:
    start: bytes
    end: bytes | None
    cursor: Cursor | None
    limit: int
    encoding: str


def parse_limit(text: str | None) -> int:
    """The page size: default 100 when absent, at most 1000 (larger values, however long, are
    reduced to 1000 as documented). ``limit=`` (empty) is not a number: 400."""
    if text is None:
        return limits.check_list_limit(None)
    if not (text.isascii() and text.isdigit()):
        raise errors.InvalidArgument("limit must be a positive integer", field="limit")
    digits = text.lstrip("0")
    if len(digits) > _LIMIT_DIGITS_MAX:
        return limits.LIST_LIMIT_MAX
    return limits.check_list_limit(int(digits or "0"))


def _bound(query: dict[str, bytes], name: str, encoding: str) -> bytes | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = b64_decode(raw, field=name) if encoding == ENCODING_BASE64 else raw
    if len(value) > limits.KEY_BYTES_MAX:
        raise errors.InvalidArgument(
            f"{name} is {len(value)} bytes; the limit is {limits.KEY_BYTES_MAX}",
            field=name,
            limit=limits.KEY_BYTES_MAX,
        )
    return value


def parse_list_query(query: dict[str, bytes]) -> ListQuery:
    """``start``, ``end``, ``after``, ``limit`` and ``encoding`` of a list request.

    An empty or absent ``start`` means the table's first key; an absent ``end`` means no upper
    bound (an empty ``end`` is an empty range). With a cursor, its end bound applies; an
    explicit ``end`` must then agree with it.
    """
    encoding = query_text(query, "encoding")
    if encoding is None:
        encoding = ENCODING_UTF8
    elif encoding not in ENCODINGS:  # "encoding=" too: it names neither
        raise errors.InvalidArgument("encoding must be utf8 or base64", field="encoding")
    start = _bound(query, "start", encoding) or b""
    end = _bound(query, "end", encoding)
    cursor = None
    raw_after = query.get("after")
    if raw_after:
        cursor = decode_cursor(raw_after)
        if end is not None and end != cursor.end:
            raise errors.InvalidArgument(
                "end does not match the cursor's end; omit end when passing after", field="end"
            )
        end = cursor.end
    limit = parse_limit(query_text(query, "limit"))
    return ListQuery(start, end, cursor, limit, encoding)


def encode_items(items: list[tuple[bytes, bytes, bytes]], encoding: str) -> list[dict[str, Any]]:
    """List items for JSON: see the module docstring for the utf8/base64 rules."""
    out: list[dict[str, Any]] = []
    if encoding == ENCODING_BASE64:
        for key, value, seq in items:
            out.append({"key": b64_encode(key), "value": b64_encode(value), "seq": seq.hex()})
        return out
    assert encoding == ENCODING_UTF8, encoding
    try:  # the common page: every key and value is UTF-8 (one comprehension, no per-item try)
        return [{"key": key.decode("utf-8"), "value": value.decode("utf-8"), "seq": seq.hex()}
                for key, value, seq in items]
    except UnicodeDecodeError:
        pass
    for key, value, seq in items:
        item: dict[str, Any] = {}
        try:
            item["key"] = key.decode("utf-8")
        except UnicodeDecodeError:
            item["key_base64"] = b64_encode(key)
        try:
            item["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            item["value_base64"] = b64_encode(value)
        item["seq"] = seq.hex()
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# JSON bodies


def _json_safe(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dump_json(body: Any) -> bytes:
    """Compact UTF-8 JSON. orjson (20x the standard library's speed on a list page of 1,000
    items, where the standard encoder was the rm's largest cost); the standard library for
    what orjson refuses (integers beyond 64 bits), with the same output otherwise."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=_JSON_SEPARATORS, ensure_ascii=False).encode("utf-8")


def error_body(err: errors.RangeKVError) -> dict[str, Any]:
    """``{"error": {"code", "message", "retryable", ...details}}``; bytes details become hex."""
    return {"error": _json_safe(err.to_dict())}


def raw_error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """An error body for a code with no class in ``rangekv.errors`` (405)."""
    return {"error": {"code": code, "message": message, "retryable": False, **details}}


# --- batches (POST /v1/tables/{table}/batch) ---------------------------------------------------

# a batch's JSON body: its keys and values (base64 makes them a third larger) and the syntax
BATCH_BODY_BYTES_MAX = 2 * limits.BATCH_BYTES_MAX
BATCH_KINDS = ("put", "get", "delete")


@dataclass(frozen=True, slots=True)
class BatchOp:
    kind: str
    key: bytes
    value: bytes = b""
    if_seq: bytes | None = None


def parse_batch(body: bytes) -> tuple[list[BatchOp], str]:
    """``{"encoding": "utf8"|"base64", "ops": [{"op": "put"|"get"|"delete", "key", "value",
    "if_seq", "if_absent"}, ...]}`` → the ops, checked, and the encoding of keys and values."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidArgument("a batch is a JSON object", field="body") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ops"), list):
        raise errors.InvalidArgument('a batch is {"ops": [...]}', field="ops")
    encoding = doc.get("encoding", ENCODING_UTF8)
    if encoding not in ENCODINGS:
        raise errors.InvalidArgument("encoding must be utf8 or base64", field="encoding")
    raw_ops = doc["ops"]
    limits.check_batch(len(raw_ops), 0)

    def data(item: dict[str, Any], name: str) -> bytes:
        text = item.get(name, "" if name == "value" else None)
        if not isinstance(text, str):
            raise errors.InvalidArgument(f"ops[].{name} must be a string", field=name)
        if encoding == ENCODING_BASE64:
            return b64_decode(text.encode("ascii", "replace"), field=name)
        return text.encode("utf-8", "surrogatepass")

    ops = []
    nbytes = 0
    for item in raw_ops:
        if not isinstance(item, dict) or item.get("op") not in BATCH_KINDS:
            raise errors.InvalidArgument('each op is {"op": "put"|"get"|"delete", "key": ...}',
                                         field="op")
        kind = item["op"]
        key = limits.check_key(data(item, "key"))
        value = limits.check_value(data(item, "value")) if kind == "put" else b""
        if_seq = None
        if kind != "get":
            tag = item.get("if_seq")
            if tag is not None:
                if not isinstance(tag, str):
                    raise errors.InvalidArgument("if_seq is 32 hex digits", field="if_seq")
                if_seq = parse_seq_tag(tag, "if_seq")
            if item.get("if_absent") is True:
                if kind != "put" or if_seq is not None:
                    raise errors.InvalidArgument("if_absent is for puts without if_seq",
                                                 field="if_absent")
                if_seq = bytes(16)
        nbytes += len(key) + len(value)
        ops.append(BatchOp(kind, key, value, if_seq))
    limits.check_batch(len(ops), nbytes)
    return ops, encoding


def batch_write_result(kind: str, outcome: Any) -> dict[str, Any]:
    if isinstance(outcome, errors.RangeKVError):
        return {"error": _json_safe(outcome.to_dict())}
    if kind == "put":
        return {"seq": outcome.seq.hex()}
    return {"deleted": outcome.deleted, "seq": outcome.seq.hex() if outcome.deleted else None}


def batch_get_result(outcome: Any, encoding: str) -> dict[str, Any]:
    if isinstance(outcome, errors.RangeKVError):
        return {"error": _json_safe(outcome.to_dict())}
    if not outcome.found:
        return {"found": False}
    value = (b64_encode(outcome.value) if encoding == ENCODING_BASE64
             else outcome.value.decode("utf-8", "replace"))
    return {"found": True, "value": value, "seq": outcome.seq.hex()}
