"""Limits on everything a user can send, checked at the edge (rm) and again at the node.

Names carry their unit last (``key_bytes_max``), as everywhere in rangekv.
"""

from __future__ import annotations

import re

from rangekv.errors import InvalidArgument, TooLarge

KEY_BYTES_MIN = 1
KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1024 * 1024  # the seed's 1 MB cap; larger objects belong in blob storage
TABLE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000
LIST_BYTES_MAX = 4 * 1024 * 1024  # a list page stops early once it carries this much
CURSOR_BYTES_MAX = 4096
# put_many / get_many / delete_many: items in one call, and the keys and values they carry
BATCH_ITEMS_MAX = 10_000
BATCH_BYTES_MAX = 4 * 1024 * 1024

# Internal frames: a frame announces its length first; anything above this is refused before a
# byte of its body is read. Large enough for an append batch carrying one maximal value.
FRAME_BYTES_MAX = 8 * 1024 * 1024
APPEND_BYTES_MAX = 2 * 1024 * 1024  # entries per APPEND message (at least one is always sent)

# The HTTP edge (the rm's server, ``http_server.py``; also the /metrics servers).
# Each is a default: ``rangekv rm --head-timeout-s`` etc. (env RANGEKV_RM_*, [rm] in TOML).
# Deadlines are totals, not idle timers: a client sending a byte every few seconds (slowloris,
# slow POST) still runs out of time. HAProxy's own ``timeout http-request`` is this head
# deadline, and its ``timeout server`` is above the body deadline plus the longest rm deadline
# (``cluster.local.haproxy_config`` checks both).
HTTP_HEAD_TIMEOUT_S = 10.0  # a request head (line and headers) must arrive whole within this
HTTP_BODY_TIMEOUT_S = 20.0  # a body, from the handler's first read (1 MiB needs ~52 KB/s)
HTTP_CONNECTIONS_MAX = 1024  # open connections; one more is answered 503 and closed
HTTP_REQUESTS_IN_FLIGHT_MAX = 256  # requests being handled; one more is answered 503 at once


def check_table_name(name: str) -> str:
    if not isinstance(name, str) or not TABLE_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            "table name must match [A-Za-z0-9_.-]{1,128}", field="table", value=str(name)[:200]
        )
    return name


def check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise InvalidArgument("key must be bytes")
    if len(key) < KEY_BYTES_MIN:
        raise InvalidArgument("key must not be empty", field="key")
    if len(key) > KEY_BYTES_MAX:
        raise InvalidArgument(
            f"key is {len(key)} bytes; the limit is {KEY_BYTES_MAX}",
            field="key",
            limit=KEY_BYTES_MAX,
        )
    return bytes(key)


def check_value(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidArgument("value must be bytes")
    if len(value) > VALUE_BYTES_MAX:
        raise TooLarge(
            f"value is {len(value)} bytes; the limit is {VALUE_BYTES_MAX}",
            field="value",
            limit=VALUE_BYTES_MAX,
        )
    return bytes(value)


def check_list_limit(limit: int | None) -> int:
    if limit is None:
        return LIST_LIMIT_DEFAULT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidArgument("limit must be a positive integer", field="limit")
    return min(limit, LIST_LIMIT_MAX)


def check_batch(n_items: int, n_bytes: int) -> None:
    """A batch call's size: at most ``BATCH_ITEMS_MAX`` items and ``BATCH_BYTES_MAX`` bytes of
    keys and values (one maximal value always fits)."""
    if n_items > BATCH_ITEMS_MAX:
        raise InvalidArgument(f"a batch holds at most {BATCH_ITEMS_MAX} items, not {n_items}",
                              field="items", limit=BATCH_ITEMS_MAX)
    if n_bytes > max(BATCH_BYTES_MAX, VALUE_BYTES_MAX + KEY_BYTES_MAX):
        raise TooLarge(f"a batch carries at most {BATCH_BYTES_MAX} bytes of keys and values, "
                       f"not {n_bytes}", field="items", limit=BATCH_BYTES_MAX)
