"""Typed checks of every field of every internal request: the boundary between processes.

Each internal request type declares its fields once, as an :class:`Op` of :class:`Field`
checks; the server parses a request with ``OP.parse(body)`` before it reads a single field,
and gets the values checked (type, range, size) or one typed error that names the field:

* a field of the wrong type, missing, or out of its range -> ``invalid_argument`` (400)
  with ``field``;
* bytes over their size limit -> ``too_large`` (413) for a value, ``invalid_argument`` for the
  rest, with ``field`` and ``limit``.

Nothing another process sends reaches an assertion: invariants are asserted on our own state,
never on a field. Fields the op does not declare are ignored (a newer peer may send more),
but the frame that carries them is bounded (``wire.FRAME_BYTES_MAX``) and so are lists and maps
inside it (``wire``'s decoder limits).

The declarations double as documentation: :func:`describe` renders them as the table in
``docs/internals.md`` ("Every internal request checked"), and the tests send each declared
field's bad examples (:attr:`Field.bad`) to a real process and expect exactly the error
declared.

Theory: a declared field is ``Field(kind, check, bad)``; ``check(name, value)`` returns the
value to use or raises; ``bad`` lists (value, expected error code) pairs that exercise each way
the check refuses (wrong type, out of range, oversized).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rangekv import errors, limits, sequencer

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
ID_MAX = U32_MAX  # node, rm and group ids (an rm id is 4 bytes of every seq)

INVALID = errors.InvalidArgument.code
TOO_LARGE = errors.TooLarge.code

Check = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Field:
    """One declared field: what it is (``kind``, for the docs), how it is checked, and
    examples of bad values with the error code each must get."""

    kind: str
    check: Check
    bad: tuple[tuple[Any, str], ...] = ()
    optional: bool = False


def _invalid(name: str, message: str, **details: Any) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{name}: {message}", field=name, **details)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def uint(max_value: int = U64_MAX, min_value: int = 0) -> Field:
    """An integer in ``[min_value, max_value]``."""
    def check(name: str, value: Any) -> int:
        if not _is_int(value):
            raise _invalid(name, "must be an integer")
        if not min_value <= value <= max_value:
            raise _invalid(name, f"must be in {min_value}..{max_value}")
        return int(value)

    # (msgpack carries integers in -2**63..2**64-1: a u64's only out-of-range value is < 0)
    bad: tuple[tuple[Any, str], ...] = (("1", INVALID), (True, INVALID), (1.0, INVALID),
                                        (min_value - 1, INVALID))
    if max_value < U64_MAX:
        bad += ((max_value + 1, INVALID),)
    return Field(f"int {min_value}..{_power(max_value)}", check, bad)


def _power(n: int) -> str:
    """2^64-1 for 18446744073709551615: readable bounds in the docs."""
    for bits in (64, 63, 32, 31):
        if n == (1 << bits) - 1:
            return f"2^{bits}-1"
    return str(n)


def boolean() -> Field:
    def check(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _invalid(name, "must be true or false")
        return value

    return Field("bool", check, ((1, INVALID), ("yes", INVALID)))


def blob(max_bytes: int, min_bytes: int = 0, *, kind: str = "bytes",
         too_large: bool = False) -> Field:
    """Bytes of ``min_bytes..max_bytes``; longer is ``too_large`` if ``too_large`` (a value)
    and ``invalid_argument`` otherwise."""
    def check(name: str, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise _invalid(name, "must be bytes")
        if len(value) > max_bytes:
            cls = errors.TooLarge if too_large else errors.InvalidArgument
            raise cls(f"{name}: {len(value)} bytes; the limit is {max_bytes}", field=name,
                      limit=max_bytes)
        if len(value) < min_bytes:
            raise _invalid(name, f"must be at least {min_bytes} byte(s)")
        return value

    bad: tuple[tuple[Any, str], ...] = (
        ("text", INVALID), (7, INVALID),
        (b"x" * (max_bytes + 1), TOO_LARGE if too_large else INVALID))
    if min_bytes:
        bad += ((b"", INVALID),)
    return Field(f"{kind} {min_bytes}..{max_bytes} bytes", check, bad)


def key() -> Field:
    return blob(limits.KEY_BYTES_MAX, limits.KEY_BYTES_MIN, kind="key")


def bound() -> Field:
    """A span's start (empty: the table's beginning) or a cursor key."""
    return blob(limits.KEY_BYTES_MAX, 0, kind="key")


def value() -> Field:
    return blob(limits.VALUE_BYTES_MAX, 0, kind="value", too_large=True)


def seq() -> Field:
    """A 16-byte seq below the top of the range (no seq can follow ff...ff)."""
    def check(name: str, value: Any) -> bytes:
        if not isinstance(value, bytes) or len(value) != sequencer.SEQ_BYTES:
            raise _invalid(name, f"must be a {sequencer.SEQ_BYTES}-byte seq")
        if value == sequencer.MAX:
            raise _invalid(name, "is the highest seq there is (ff...ff): no write can follow "
                                 "it, so no process may propose it")
        return value

    return Field("seq (16 bytes, below ff...ff)", check,
                 (("00" * 16, INVALID), (b"\x01" * 15, INVALID), (b"\x01" * 17, INVALID),
                  (sequencer.MAX, INVALID)))


def condition() -> Field:
    """``if_seq``: any 16 bytes (zero: only if absent; compared, never issued)."""
    def check(name: str, value: Any) -> bytes:
        if not isinstance(value, bytes) or len(value) != sequencer.SEQ_BYTES:
            raise _invalid(name, f"must be a {sequencer.SEQ_BYTES}-byte seq")
        return value

    return Field("seq (16 bytes)", check, ((1, INVALID), (b"\x01" * 15, INVALID)))


def text(max_chars: int, min_chars: int = 1) -> Field:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(name, "must be a string")
        if not min_chars <= len(value) <= max_chars:
            raise _invalid(name, f"must be {min_chars}..{max_chars} characters",
                           limit=max_chars)
        return value

    return Field(f"str {min_chars}..{max_chars}", check,
                 ((b"bytes", INVALID), (5, INVALID), ("x" * (max_chars + 1), INVALID)))


def choice(*options: Any) -> Field:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            raise _invalid(name, f"must be one of {', '.join(map(repr, options))}")
        return value

    return Field(" or ".join(map(repr, options)), check, (("nonsense", INVALID), (3, INVALID)))


def fraction() -> Field:
    """A float strictly between 0 and 1."""
    def check(name: str, value: Any) -> float:
        if not isinstance(value, float) or not 0.0 < value < 1.0:
            raise _invalid(name, "must be a float in (0, 1)")
        return value

    return Field("float in (0, 1)", check, (("0.5", INVALID), (1.5, INVALID), (0.0, INVALID)))


def any_of(kind: str, check: Check, bad: Iterable[tuple[Any, str]] = ()) -> Field:
    """A field checked by code of its own (a snapshot manifest, a heartbeat's status)."""
    return Field(kind, check, tuple(bad))


def version() -> Field:
    """A copied version ``[seq, tombstone, value]`` or nil (a moving range's base)."""
    seq_check, value_check = seq().check, value().check

    def check(name: str, raw: Any) -> list[Any] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or len(raw) != 3:
            raise _invalid(name, "must be [seq, tombstone, value] or nil")
        s, tomb, v = raw
        if s == sequencer.ZERO:
            raise _invalid(name, "a version's seq is not zero")
        seq_check(name, s)
        if not isinstance(tomb, bool):
            raise _invalid(name, "a version's tombstone is true or false")
        value_check(name, v)
        return [s, tomb, v]

    return Field("[seq, bool, value]", check,
                 (("v", INVALID), ([b"\x01" * 16, True], INVALID),
                  ([bytes(16), False, b""], INVALID), ([sequencer.MAX, False, b""], INVALID),
                  ([b"\x01" * 16, 1, b""], INVALID)))


def items(max_items: int, max_bytes: int) -> Field:
    """An import's copied records ``[[key, seq, tombstone, value], ...]``: at most
    ``max_items`` of them and ``max_bytes`` of keys and values (what one log entry holds)."""
    key_check, version_check = key().check, version().check

    def check(name: str, raw: Any) -> list[tuple[bytes, list[Any]]]:
        if not isinstance(raw, list):
            raise _invalid(name, "must be a list of [key, seq, tombstone, value]")
        if len(raw) > max_items:
            raise _invalid(name, f"{len(raw)} items; the limit is {max_items}", limit=max_items)
        out = []
        nbytes = 0
        for item in raw:
            if not isinstance(item, list) or len(item) != 4:
                raise _invalid(name, "an item is [key, seq, tombstone, value]")
            got = version_check(name, item[1:])
            k = key_check(name, item[0])
            nbytes += len(k) + len(got[2])
            if nbytes > max_bytes:
                raise errors.TooLarge(f"{name}: over {max_bytes} bytes of keys and values",
                                      field=name, limit=max_bytes)
            out.append((k, got))
        return out

    return Field(f"list of ≤ {max_items} [key, seq, bool, value], ≤ {max_bytes} bytes", check,
                 (({}, INVALID), ([[b"k", b"\x01" * 16, False]], INVALID),
                  ([[b"", b"\x01" * 16, False, b""]], INVALID),
                  ([[b"k", sequencer.MAX, False, b""]], INVALID),
                  ([[b"k", b"\x01" * 16, False, b""]] * (max_items + 1), INVALID),
                  # an entry bigger than the log takes crashed the node on an assertion
                  ([[b"k", b"\x01" * 16, False, b"v" * limits.VALUE_BYTES_MAX]]
                   * (max_bytes // limits.VALUE_BYTES_MAX + 1), TOO_LARGE)))


def optional(f: Field) -> Field:
    """``f``, or nil / absent."""
    return Field(f"{f.kind}, or nil", f.check, tuple(b for b in f.bad if b[0] is not None),
                 optional=True)


@dataclass(frozen=True)
class Op:
    """An internal request type and its fields (see the module docs)."""

    name: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    sender: str = ""  # who sends it, for the docs
    note: str = ""  # what else is checked, for the docs

    def parse(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The declared fields of ``body``, checked; absent optional ones are None."""
        out: dict[str, Any] = {}
        for name, f in self.fields.items():
            raw = body.get(name)
            if raw is None:
                if not f.optional:
                    raise _invalid(name, "is required")
                out[name] = None
                continue
            out[name] = f.check(name, raw)
        return out


def registry(*ops: Op) -> dict[str, Op]:
    out = {}
    for op in ops:
        assert op.name not in out, op.name
        out[op.name] = op
    return out


def describe(ops: Iterable[Op]) -> str:
    """The ops as a Markdown table: every field with its type and range, and what a bad
    field gets."""
    lines = ["| request | from | fields (type, range, size) | a bad field gets |",
             "|---|---|---|---|"]
    for op in ops:
        cells = [f"`{name}`: {f.kind}" for name, f in op.fields.items()] or ["none"]
        codes = sorted({code for f in op.fields.values() for _, code in f.bad})
        answer = ", ".join(f"`{c}`" for c in codes) if codes else "nothing to check"
        if op.note:
            answer += f"; {op.note}"
        lines.append(f"| `{op.name}` | {op.sender} | {'; '.join(cells)} | {answer} |")
    return "\n".join(lines) + "\n"
