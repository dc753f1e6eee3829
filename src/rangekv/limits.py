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

# Internal frames: a frame announces its length first; anything above this is refused before a
# byte of its body is read. Large enough for an append batch carrying one maximal value.
FRAME_BYTES_MAX = 8 * 1024 * 1024
APPEND_BYTES_MAX = 2 * 1024 * 1024  # entries per APPEND message (at least one is always sent)


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
