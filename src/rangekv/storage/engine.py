"""The state machine: deterministic command semantics over a small ordered key-value backend.

Invariants:

* Determinism: the result of ``apply`` and the stored state depend only on the entries applied,
  in log order, never on the backend, the clock or the node. Replicas that applied the same
  entries have the same ``content_hash``.
* Atomicity: all writes of one ``apply`` call, together with the new ``applied_index`` and
  ``last_seq``, go to the backend in ONE atomic batch. After a crash the backend holds the state
  after some whole ``apply`` call, and the node replays its WAL from ``applied_index + 1``.
* Entries are applied exactly once and in order: ``index == applied_index + 1``, asserted.
* ``last_seq`` never decreases; every command with a seq ``s`` raises it to at least ``s``, even
  a command whose result is an error (its seq was consumed by the log).
* Conditional writes are decided here, at apply time, in log order (docs/internals.md).

Commands are msgpack maps (see docs/internals.md, "Log entries and the state machine")::

    {"op": "noop"}                                              -> {}
    {"op": "put", "t": table_id, "k": key, "v": value, "s": seq, "c": if_seq|None}
                                                                -> {"seq": s} | {"error": ...}
    {"op": "del", "t": table_id, "k": key, "s": seq, "c": if_seq|None}
                                                -> {"deleted": bool, "seq": s|zero} | {"error"}
    {"op": "batch", "t": table_id, "items": [[kind "put"|"del", key, value|None, if_seq|None,
     seq, cseq|None], ...], "s": seq}                 -> {"results": [one result per item]}
    {"op": "add_range", "t": table_id, "start": bytes, "end": bytes|None, "s": seq} -> {}
    {"op": "split_range", "t": table_id, "at": bytes, "s": seq}   -> {} | {"error": ...}
    {"op": "merge_range", "t": table_id, "at": bytes, "s": seq}   -> {} | {"error": ...}
    {"op": "drop_table", "t": table_id, "s": seq}                                   -> {}

Moving a range [a, b) from group S to group D (docs/internals.md, "Moving a range")::

    {"op": "fence_range", "t", "start", "end", "s"}      on S  -> {"seq": H} | {"error"}
    {"op": "unfence_range", "t", "start", "end", "s"}    on S  -> {}   (an aborted move)
    {"op": "add_range", ..., "st": "importing", "s": H}  on D  -> {}   (D's seqs now exceed H)
    {"op": "import", "t", "items": [[k, seq, tomb, v], ...], "s"} on D -> {"imported": n}
    {"op": "finish_import", "t", "start", "end", "s"}    on D  -> {}
    {"op": "drop_range", "t", "start", "end", "s"}       on S  -> {}   (its data deleted)

A put or del (and a batch, for all its items) may carry its client's session: ``"ci"``
client id (16 bytes), ``"cn"`` cseq (a batch: each item's), ``"cf"`` floor, ``"cr"`` retry.
A (client, cseq) applied before answers its first result again and applies nothing; a retry
whose first result is no longer held answers ``session_expired`` (``storage/sessions.py`` has
the rules and bounds). A range moving here takes the source's sessions before finish_import::

    {"op": "import_sessions", "t", "start", "end", "items": [[client, mark, top, last_seq,
     [[cseq, result], ...]], ...], "done": bool, "s"}  on D  -> {"imported": n}

Until one with ``done``, a retried write to the importing range answers ``unavailable``.

A *fenced* range refuses writes (``range_not_here`` with ``moving``) and still serves reads:
its content is final, H is above every seq in it. An *importing* range takes writes whose seqs
are above H, and imported versions merge by seq (the higher seq wins; tombstones included). A
delete or a conditional put of a key that an importing range holds no record of needs the
source's version of the key: the command carries it as ``"b"`` (``[seq, tomb, value]`` or nil
for none), applied first as an import, and is refused (``unavailable``) without it.

``c`` (if_seq): None = unconditional; 16 zero bytes = only if no live version exists; any other
seq = only if the live version has exactly that seq. Errors are ``{"error": err.to_dict()}``
with ``table_not_found`` (no range of the table here at all), ``range_not_here`` (ranges of the
table are here, none contains the key: with ``ranges``, this group's view), ``precondition_failed``
(with ``current_seq``: hex or None) or ``invalid_argument`` (a field of the wrong type: a bug
upstream, but one that every replica answers the same way instead of crash-looping). An unknown
``op`` is an AssertionError: a node must never skip a command it does not understand.

Storage layout in the backend (bytewise key order)::

    b"\\x00c" .. b"\\x00e"                  -> client sessions (storage/sessions.py)
    b"\\x00m" + name                      -> metadata: format, applied_index (u64), last_seq (16)
    b"\\x00q" + table_id u64 + start      -> state (1 byte: 1 fenced, 2 importing) | H (16)
                                           [| 1 (1 byte): importing, the sessions copied]
    b"\\x00r" + table_id u64 + start      -> b"\\x00" (end = None) | b"\\x01" + end
    b"\\x01"  + table_id u64 + key        -> seq (16) | flags (1; bit 0 = tombstone) | value

State written before client sessions existed has no session records and no 18-byte range
state: it opens as it is (FORMAT_VERSION stays 1; only a binary older than sessions fails on
the flag, and only mid-move).

Ranges are keyed by (table, start): adding a range with a start already present replaces its
end. Tombstones are kept (they carry the seq that must win when versions meet: docs/architecture.md,
"The sequencer"); reads hide them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgpack

from rangekv import errors, sequencer
from rangekv.storage import sessions
from rangekv.storage.wal import StorageCorrupt

if TYPE_CHECKING:
    import os

SEQ_BYTES = sequencer.SEQ_BYTES
ZERO_SEQ = sequencer.ZERO
FORMAT_VERSION = 1
TABLE_ID_MAX = (1 << 64) - 1

_META = b"\x00m"
KEY_FORMAT = _META + b"format"
KEY_APPLIED_INDEX = _META + b"applied_index"
KEY_LAST_SEQ = _META + b"last_seq"
_MARK = b"\x00q"  # a range's move state, when it is not plain active
_MARK_END = b"\x00r"
_RANGE = b"\x00r"
_RANGE_END = b"\x00s"  # just past every range record
_DATA = b"\x01"
_DATA_END = b"\x02"  # just past every data record
_FLAG_TOMBSTONE = 0x01
_VALUE_HEADER_BYTES = SEQ_BYTES + 1

# Backend write operations, applied in order within one atomic batch.
Op = tuple[str, bytes, bytes]  # ("put", key, value) | ("del", key, b"") | ("del_range", lo, hi)


class Backend(Protocol):
    """An ordered map of bytes to bytes with atomic batches (RocksDB, or memory for tests)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with lo <= key < hi in ascending key order (the caller does not write while
        iterating)."""
        ...

    def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, all or nothing."""
        ...

    def flush(self) -> None:
        """Make every write so far survive a crash (RocksDB: flush the memtable)."""
        ...

    def checkpoint(self, path: str) -> None:
        """A consistent copy of the whole state (at a batch boundary) in the new directory
        ``path``, which ``open_checkpoint`` can read (RocksDB: a checkpoint, hard links)."""
        ...

    def close(self) -> None: ...


def encode_command(cmd: dict[str, Any]) -> bytes:
    assert isinstance(cmd, dict) and isinstance(cmd.get("op"), str), cmd
    payload: bytes = msgpack.packb(cmd, use_bin_type=True)
    return payload


def decode_command(payload: bytes) -> dict[str, Any]:
    """The command in a log entry. An undecodable payload is a bug (the WAL checksums it)."""
    try:
        cmd = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
        raise AssertionError(f"undecodable command: {type(exc).__name__}: {exc}") from None
    assert isinstance(cmd, dict), f"command is not a map: {type(cmd).__name__}"
    return cmd


def table_prefix(table_id: int) -> bytes:
    assert 0 <= table_id <= TABLE_ID_MAX, table_id
    return _DATA + table_id.to_bytes(8, "big")


def _table_data_bounds(table_id: int) -> tuple[bytes, bytes]:
    lo = table_prefix(table_id)
    hi = table_prefix(table_id + 1) if table_id < TABLE_ID_MAX else _DATA_END
    return lo, hi


def _table_range_bounds(table_id: int) -> tuple[bytes, bytes]:
    lo = _RANGE + table_id.to_bytes(8, "big")
    hi = _RANGE + (table_id + 1).to_bytes(8, "big") if table_id < TABLE_ID_MAX else _RANGE_END
    return lo, hi


def _data_key(table_id: int, key: bytes) -> bytes:
    return table_prefix(table_id) + key


def _encode_value(seq: bytes, tombstone: bool, value: bytes) -> bytes:
    assert len(seq) == SEQ_BYTES, len(seq)
    return seq + bytes([_FLAG_TOMBSTONE if tombstone else 0]) + value


def _decode_value(raw: bytes) -> tuple[bytes, bool, bytes]:
    """(seq, tombstone, value) of a stored data record."""
    if len(raw) < _VALUE_HEADER_BYTES:
        raise StorageCorrupt(f"data record of {len(raw)} bytes is shorter than its header")
    return raw[:SEQ_BYTES], bool(raw[SEQ_BYTES] & _FLAG_TOMBSTONE), raw[_VALUE_HEADER_BYTES:]


def _encode_range_end(end: bytes | None) -> bytes:
    return b"\x00" if end is None else b"\x01" + end


def _decode_range_end(raw: bytes) -> bytes | None:
    if raw == b"\x00":
        return None
    if raw[:1] != b"\x01":
        raise StorageCorrupt("malformed range record")
    return raw[1:]


Ranges = dict[int, dict[bytes, bytes | None]]  # table_id -> start -> end (None = unbounded)

FENCED = "fenced"
IMPORTING = "importing"
_MARK_CODES = {FENCED: 1, IMPORTING: 2}
_MARK_NAMES = {v: k for k, v in _MARK_CODES.items()}
Marks = dict[tuple[int, bytes], tuple[str, bytes]]  # (table_id, start) -> (state, H)


def _mark_key(table_id: int, start: bytes) -> bytes:
    return _MARK + table_id.to_bytes(8, "big") + start


def _encode_mark(state: str, seq: bytes, copied: bool = False) -> bytes:
    return bytes([_MARK_CODES[state]]) + seq + (b"\x01" if copied else b"")


def _decode_mark(raw: bytes) -> tuple[str, bytes, bool]:
    """(state, H, sessions copied) of a range state record (17 bytes, or 18 with the flag)."""
    if (len(raw) not in (1 + SEQ_BYTES, 2 + SEQ_BYTES) or raw[0] not in _MARK_NAMES
            or raw[1 + SEQ_BYTES:] not in (b"", b"\x01")):
        raise StorageCorrupt("malformed range state record")
    return _MARK_NAMES[raw[0]], raw[1:1 + SEQ_BYTES], len(raw) == 2 + SEQ_BYTES


def _range_contains(start: bytes, end: bytes | None, key: bytes) -> bool:
    return start <= key and (end is None or key < end)


class _Malformed(Exception):
    """A command field of the wrong type or size: answered as invalid_argument."""


def _field_table(cmd: dict[str, Any]) -> int:
    t = cmd.get("t")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= TABLE_ID_MAX:
        raise _Malformed("t (table id) must be an integer in [0, 2**64)")
    return t


def _field_bytes(cmd: dict[str, Any], name: str, optional: bool = False) -> bytes | None:
    value = cmd.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, bytes):
        raise _Malformed(f"{name} must be bytes" + (" or nil" if optional else ""))
    return value


def _field_seq(cmd: dict[str, Any], name: str, optional: bool = False) -> bytes | None:
    value = _field_bytes(cmd, name, optional)
    if value is not None and len(value) != SEQ_BYTES:
        raise _Malformed(f"{name} must be a {SEQ_BYTES}-byte seq")
    return value


def _field_version(raw: Any) -> tuple[bytes, bool, bytes] | None:
    """A copied version ``[seq, tombstone, value]`` (None: the source has no record)."""
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        raise _Malformed("a version is [seq, tombstone, value]")
    seq, tombstone, value = raw
    if not isinstance(seq, bytes) or len(seq) != SEQ_BYTES or seq == ZERO_SEQ:
        raise _Malformed("a version's seq must be 16 bytes, not zero")
    if not isinstance(tombstone, bool) or not isinstance(value, bytes):
        raise _Malformed("a version is [seq, tombstone: bool, value: bytes]")
    return seq, tombstone, value


class _Tx:
    """The writes of one ``apply`` call: an ordered op list plus an overlay so that later
    commands in the same call read what earlier ones wrote (``sessions.Writes``)."""

    def __init__(self, backend: Backend, ranges: Ranges, marks: Marks,
                 copied: frozenset[tuple[int, bytes]], session_count: int,
                 session_oldest_ns: int = 0) -> None:
        self._backend = backend
        self.ops: list[Op] = []
        self._overlay: dict[bytes, bytes | None] = {}
        self._cleared: list[tuple[bytes, bytes]] = []
        # keys written with put_ordered/delete_ordered (the session records): what ``scan``
        # merges with the backend's items (sorted when a scan needs them: few do)
        self._ordered: list[bytes] = []
        self._ordered_keys: set[bytes] = set()
        self._ordered_sorted = True
        self.ranges = ranges
        self.ranges_copied = False
        self.marks = marks
        self.marks_copied = False
        self.copied = copied  # importing ranges whose client sessions are copied here
        self.session_count = session_count
        self.session_oldest_ns = session_oldest_ns  # (sessions.expire's shortcut)
        self.session_heads: dict[bytes, tuple[bytes | None, sessions.Head]] = {}
        self.data_deltas: list[tuple[bytes, int, int]] = []  # (data key, +keys, +bytes)

    def get(self, key: bytes) -> bytes | None:
        if key in self._overlay:
            return self._overlay[key]
        for lo, hi in self._cleared:
            if lo <= key < hi:
                return None
        return self._backend.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", key, value))
        self._overlay[key] = value

    def delete(self, key: bytes) -> None:
        self.ops.append(("del", key, b""))
        self._overlay[key] = None

    def _note_ordered(self, key: bytes) -> None:
        if key not in self._ordered_keys:
            self._ordered_keys.add(key)
            if self._ordered_sorted and self._ordered and key < self._ordered[-1]:
                self._ordered_sorted = False
            self._ordered.append(key)

    def put_ordered(self, key: bytes, value: bytes) -> None:
        """``put``, and ``scan`` sees it."""
        self._note_ordered(key)
        self.put(key, value)

    def delete_ordered(self, key: bytes) -> None:
        """``delete``, and ``scan`` sees it."""
        self._note_ordered(key)
        self.delete(key)

    def scan(self, lo: bytes, hi: bytes, limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Items with lo <= key < hi in key order, as this batch sees them: the backend's,
        with the batch's own ``put_ordered``/``delete_ordered`` writes over them (only those:
        a plain ``put`` in the span is not seen). At most ``limit`` items."""
        assert lo <= hi and (limit is None or limit >= 1), (lo, hi, limit)
        assert not any(c_lo < hi and lo < c_hi for c_lo, c_hi in self._cleared), \
            "scan of a span this batch deleted with delete-range"
        if not self._ordered_sorted:
            self._ordered.sort()
            self._ordered_sorted = True
        mine = self._ordered[bisect.bisect_left(self._ordered, lo):
                             bisect.bisect_left(self._ordered, hi)]
        out: list[tuple[bytes, bytes]] = []
        j = 0
        for key, value in self._backend.iterate(lo, hi):
            while j < len(mine) and mine[j] <= key:
                if mine[j] < key:
                    written = self._overlay.get(mine[j])
                    if written is not None:
                        out.append((mine[j], written))
                j += 1
                if limit is not None and len(out) >= limit:
                    return out
            if key in self._overlay:
                written = self._overlay[key]
                if written is None:
                    continue
                value = written
            out.append((key, value))
            if limit is not None and len(out) >= limit:
                return out
        for key in mine[j:]:
            written = self._overlay.get(key)
            if written is not None:
                out.append((key, written))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def put_data(self, dkey: bytes, value: bytes, old: bytes | None) -> None:
        """Write a data record over ``old`` (the record it replaces), noting the change in
        stored size for an :class:`Observer`."""
        self.put(dkey, value)
        self.data_deltas.append((dkey, 0 if old is not None else 1,
                                 len(value) - (len(old) if old is not None else -len(dkey))))

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        self.ops.append(("del_range", lo, hi))
        for key in [k for k in self._overlay if lo <= k < hi]:
            del self._overlay[key]
        self._cleared.append((lo, hi))

    def cleared_data(self) -> list[tuple[bytes, bytes]]:
        """The spans of data records this batch deleted with delete-range."""
        return [(lo, hi) for lo, hi in self._cleared if lo.startswith(_DATA)]

    def writable_ranges(self) -> Ranges:
        """Copy-on-write: the state machine's ranges change only if the batch is written."""
        if not self.ranges_copied:
            self.ranges = {t: dict(by_start) for t, by_start in self.ranges.items()}
            self.ranges_copied = True
        return self.ranges

    def set_mark(self, table_id: int, start: bytes, mark: tuple[str, bytes] | None,
                 copied: bool = False) -> None:
        """Set (or clear, None) the move state of a range, in memory and in the batch;
        ``copied``: an importing range that has its source's client sessions."""
        assert not copied or (mark is not None and mark[0] == IMPORTING), mark
        if not self.marks_copied:
            self.marks = dict(self.marks)
            self.marks_copied = True
        if mark is None:
            self.marks.pop((table_id, start), None)
            self.delete(_mark_key(table_id, start))
        else:
            self.marks[(table_id, start)] = mark
            self.put(_mark_key(table_id, start), _encode_mark(*mark, copied=copied))
        if copied:
            self.copied = self.copied | {(table_id, start)}
        elif (table_id, start) in self.copied:
            self.copied = self.copied - {(table_id, start)}


class Observer(Protocol):
    """Told what each ``apply`` changed (for statistics; never part of the replicated state)."""

    def applied(self, deltas: list[tuple[int, bytes, int, int]], ranges_changed: bool) -> None:
        """``deltas``: (table_id, key, +keys, +bytes) of each data record written, in order;
        ``ranges_changed``: ranges were added, split or dropped."""


class StateMachine:
    """Applies committed commands to a backend and serves reads from it. Not thread-safe."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.closed = False
        self.observer: Observer | None = None
        self.to_compact: list[tuple[bytes, bytes]] = []  # spans deleted, not yet compacted
        fmt = backend.get(KEY_FORMAT)
        if fmt is None:
            assert backend.get(KEY_APPLIED_INDEX) is None, "state without a format version"
            backend.write([("put", KEY_FORMAT, FORMAT_VERSION.to_bytes(4, "big"))])
        elif int.from_bytes(fmt, "big") != FORMAT_VERSION:
            raise StorageCorrupt(f"state machine format {fmt.hex()}, expected {FORMAT_VERSION}")
        applied = backend.get(KEY_APPLIED_INDEX)
        self.applied_index = int.from_bytes(applied, "big") if applied is not None else 0
        last_seq = backend.get(KEY_LAST_SEQ)
        self.last_seq: bytes = last_seq if last_seq is not None else ZERO_SEQ
        if len(self.last_seq) != SEQ_BYTES:
            raise StorageCorrupt(f"last_seq of {len(self.last_seq)} bytes")
        self._ranges: Ranges = {}
        for key, raw in backend.iterate(_RANGE, _RANGE_END):
            table_id = int.from_bytes(key[2:10], "big")
            self._ranges.setdefault(table_id, {})[key[10:]] = _decode_range_end(raw)
        self._marks: Marks = {}
        copied = set()
        for key, raw in backend.iterate(_MARK, _MARK_END):
            state, high, sessions_copied = _decode_mark(raw)
            where = (int.from_bytes(key[2:10], "big"), key[10:])
            self._marks[where] = (state, high)
            if sessions_copied:
                copied.add(where)
        self._copied: frozenset[tuple[int, bytes]] = frozenset(copied)
        # (state written before sessions existed has none: it opens as it did)
        self._session_count = sessions.count(backend.iterate)
        self._session_oldest_ns = 0  # unknown until the first expiry scan

    # -- applying -----------------------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """Apply committed (index, payload) entries in log order; one result per entry."""
        assert not self.closed, "state machine used after close"
        if not entries:
            return []
        tx = _Tx(self._backend, self._ranges, self._marks, self._copied, self._session_count,
                 self._session_oldest_ns)
        applied_index, last_seq = self.applied_index, self.last_seq
        results: list[dict[str, Any]] = []
        for index, payload in entries:
            assert index == applied_index + 1, f"apply of {index} after {applied_index}"
            cmd = decode_command(payload)
            seq = cmd.get("s")
            if isinstance(seq, bytes) and len(seq) == SEQ_BYTES and seq > last_seq:
                last_seq = seq
            results.append(self._apply_one(tx, cmd))
            applied_index = index
        sessions.flush(tx)
        tx.put(KEY_APPLIED_INDEX, applied_index.to_bytes(8, "big"))
        tx.put(KEY_LAST_SEQ, last_seq)
        self._backend.write(tx.ops)
        # The batch is durable in the backend's sense; only now does the in-memory view move.
        assert last_seq >= self.last_seq
        self.applied_index, self.last_seq = applied_index, last_seq
        if tx.ranges_copied:
            self._ranges = tx.ranges
        if tx.marks_copied:
            self._marks = tx.marks
        self._copied = tx.copied
        self._session_count = tx.session_count
        self._session_oldest_ns = tx.session_oldest_ns
        self.to_compact.extend(tx.cleared_data())
        if self.observer is not None and (tx.data_deltas or tx.ranges_copied):
            prefix = len(_DATA) + 8
            self.observer.applied(
                [(int.from_bytes(dkey[1:prefix], "big"), dkey[prefix:], n, size)
                 for dkey, n, size in tx.data_deltas], tx.ranges_copied)
        return results

    def _apply_one(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        try:
            if op == "noop":
                return {}
            apply = self._APPLY.get(op) if isinstance(op, str) else None
            if apply is not None:
                return apply(self, tx, cmd)
        except (_Malformed, sessions.Malformed) as exc:
            return {"error": errors.InvalidArgument(f"malformed {op} command: {exc}").to_dict()}
        raise AssertionError(f"unknown command op {op!r}")

    # -- client sessions (storage/sessions.py) --------------------------------------------------

    def _write(self, tx: _Tx, cmd: dict[str, Any],
               apply: Callable[[_Tx, dict[str, Any]], dict[str, Any]],
               batched: sessions.Request | None = None) -> dict[str, Any]:
        """A put or del (``apply``), with the rules of its client session if it has one
        (``sessions.py``). ``batched``: the item of a batch whose session is this (parsed
        once, and its expired sessions dropped once, by the batch)."""
        req = sessions.parse(cmd) if batched is None else batched
        if req is None:
            return apply(tx, cmd)
        seq = _field_seq(cmd, "s")
        assert seq is not None
        if batched is None:
            sessions.expire(tx, seq)
        head = sessions.head(tx, req.client)
        # (a result is only ever stored for a cseq at or below the session's top: a write above
        # it is new, and its lookup, a backend read per write, is skipped)
        if head is not None and req.cseq <= head.top:
            first = sessions.stored(tx, req.client, req.cseq)
            if first is not None:  # rule 1: applied before, answered as then
                sessions.record(tx, req, head, seq, None)
                return {**first, "dup": True}
        if req.retry and self._sessions_pending(tx, cmd):
            # the first attempt may have been applied by the source group before the range
            # moved here: its result arrives with the source's sessions, before finish_import
            err = errors.Unavailable(
                "the range is being moved here and its client sessions are not copied yet: a "
                "retried write waits for them; retry", table_id=cmd.get("t"))
            return {"error": err.to_dict()}
        if sessions.refuses(req, head):  # rule 2
            return sessions.expired_error()
        result = apply(tx, cmd)
        if sessions.decided(result):  # rule 3
            sessions.record(tx, req, head, seq, result)
        return result

    def _sessions_pending(self, tx: _Tx, cmd: dict[str, Any]) -> bool:
        """Whether the key of a write is in a range being moved here whose source's client
        sessions are not copied yet."""
        table_id = _field_table(cmd)
        key = _field_bytes(cmd, "k")
        assert key is not None
        start = self._holder(tx.ranges, table_id, key)
        if start is None:
            return False
        mark = tx.marks.get((table_id, start))
        return mark is not None and mark[0] == IMPORTING and (table_id, start) not in tx.copied

    def _check_write(
        self, tx: _Tx, cmd: dict[str, Any]
    ) -> tuple[int, bytes, bytes, bytes | None, dict[str, Any] | None, bytes | None]:
        """Common part of put and del: (table, key, seq, live seq, error result or None, the
        stored record)."""
        table_id = _field_table(cmd)
        key = _field_bytes(cmd, "k")
        seq = _field_seq(cmd, "s")
        if_seq = _field_seq(cmd, "c", optional=True)
        assert key is not None and seq is not None
        start = self._holder(tx.ranges, table_id, key)
        if start is None:
            err: errors.RangeKVError = self._not_here(tx.ranges, table_id)
            return table_id, key, seq, None, {"error": err.to_dict()}, None
        mark = tx.marks.get((table_id, start))
        if mark is not None and mark[0] == FENCED:
            err = self._not_here(tx.ranges, table_id, moving=True)
            return table_id, key, seq, None, {"error": err.to_dict()}, None
        dkey = _data_key(table_id, key)
        raw = tx.get(dkey)
        if mark is not None and mark[0] == IMPORTING:
            assert seq > mark[1], ("a write below the handed-over seq", seq.hex(), mark[1].hex())
            if raw is None and "b" in cmd:
                base = _field_version(cmd.get("b"))
                if base is not None and base[0] > mark[1]:
                    # the source's content is final below the handed-over seq: a base above it
                    # is not the source's (a bad or confused sender); taken, it would win
                    err = errors.InvalidArgument(
                        "the source's version of the key has a seq above the one the range "
                        "was handed over at: it cannot be the source's", field="base",
                        table_id=table_id)
                    return table_id, key, seq, None, {"error": err.to_dict()}, None
                raw = self._merge_version(tx, dkey, None, base)
            elif raw is None and (if_seq is not None or cmd.get("op") == "del"):
                err = errors.Unavailable(
                    "the range is being moved here and the key is not copied yet: a delete or "
                    "a conditional put needs the source's version of it; retry",
                    table_id=table_id)
                return table_id, key, seq, None, {"error": err.to_dict()}, None
        live_seq: bytes | None = None
        if raw is not None:
            stored_seq, tombstone, _ = _decode_value(raw)
            live_seq = None if tombstone else stored_seq
        if if_seq is not None and (
            (if_seq == ZERO_SEQ and live_seq is not None)
            or (if_seq != ZERO_SEQ and live_seq != if_seq)
        ):
            current = sequencer.to_hex(live_seq) if live_seq is not None else None
            wanted = "no version" if if_seq == ZERO_SEQ else f"seq {if_seq.hex()}"
            err = errors.PreconditionFailed(
                f"wanted {wanted}, found {current or 'no version'}", current_seq=current
            )
            return table_id, key, seq, live_seq, {"error": err.to_dict()}, raw
        return table_id, key, seq, live_seq, None, raw

    @staticmethod
    def _merge_version(
        tx: _Tx, dkey: bytes, raw: bytes | None, version: tuple[bytes, bool, bytes] | None
    ) -> bytes | None:
        """Merge an imported version into the record ``raw`` of ``dkey``: the higher seq
        wins. Returns the record now stored."""
        if version is None:
            return raw
        seq, tombstone, value = version
        if raw is not None and raw[:SEQ_BYTES] >= seq:
            return raw
        merged = _encode_value(seq, tombstone, value)
        tx.put_data(dkey, merged, raw)
        return merged

    def _apply_put(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._write(tx, cmd, self._put)

    def _apply_del(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._write(tx, cmd, self._del)

    def _put(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        value = _field_bytes(cmd, "v")
        assert value is not None
        table_id, key, seq, _, error, raw = self._check_write(tx, cmd)
        if error is not None:
            return error
        tx.put_data(_data_key(table_id, key), _encode_value(seq, False, value), raw)
        return {"seq": seq}

    def _del(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id, key, seq, live_seq, error, raw = self._check_write(tx, cmd)
        if error is not None:
            return error
        if live_seq is None:
            return {"deleted": False, "seq": ZERO_SEQ}
        tx.put_data(_data_key(table_id, key), _encode_value(seq, True, b""), raw)
        return {"deleted": True, "seq": seq}

    def _apply_batch(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Writes to one table proposed together (the node's ``batch_write``): each item a put
        or del applied as it would be alone, in item order, all in this one entry; one result
        per item. Not a transaction: an item's error leaves the others as they are."""
        table_id = _field_table(cmd)
        seq = _field_seq(cmd, "s")
        assert seq is not None
        items = cmd.get("items")
        if not isinstance(items, list):
            raise _Malformed("items must be a list")
        # the batch's session, checked once (its items' cseqs one by one)
        try:
            session = sessions.parse_batch(cmd)
        except sessions.Malformed as exc:  # each item answers it, as a write of it alone would
            err = errors.InvalidArgument(f"malformed batch item: {exc}", table_id=table_id)
            return {"results": [{"error": err.to_dict()} for _ in items]}
        if session is not None:
            sessions.expire(tx, seq)  # once for the whole batch, by its own seq
        results = []
        for item in items:
            try:
                results.append(self._batch_item(tx, table_id, seq, item, session))
            except (_Malformed, sessions.Malformed) as exc:
                err = errors.InvalidArgument(f"malformed batch item: {exc}", table_id=table_id)
                results.append({"error": err.to_dict()})
        return {"results": results}

    def _batch_item(self, tx: _Tx, table_id: int, batch_seq: bytes, item: Any,
                    session: sessions.Request | None) -> dict[str, Any]:
        if not isinstance(item, (list, tuple)) or len(item) != 6:
            raise _Malformed("an item is [kind, key, value, if_seq, seq, cseq]")
        kind, key, value, if_seq, seq, cseq = item
        if kind not in ("put", "del"):
            raise _Malformed("an item's kind is 'put' or 'del'")
        sub = {"op": kind, "t": table_id, "k": key, "v": value, "s": seq, "c": if_seq}
        item_seq = _field_seq(sub, "s")
        assert item_seq is not None
        if item_seq >= batch_seq:
            # the leader gives the items seqs below the batch's own, which raises last_seq
            # above all of them
            raise _Malformed("an item's seq must be below its batch's")
        req = None
        if session is not None:
            req = session.for_cseq(cseq)
        elif cseq is not None:
            raise _Malformed("an item's cseq needs the batch's client (ci)")
        return self._write(tx, sub, self._put if kind == "put" else self._del, req)

    def _apply_import_sessions(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Merge client sessions copied from the source group of a range moving here
        (``sessions.merge``: idempotent). With ``done``, the importing range [start, end) has
        them all: from then on a retried write to it applies (it waits until then)."""
        table_id, start, _, present = self._exact_range(tx, cmd)
        items = cmd.get("items")
        if not isinstance(items, list):
            raise _Malformed("items must be a list")
        done = cmd.get("done")
        if done is not None and not isinstance(done, bool):
            raise _Malformed("done must be a bool")
        copies = [sessions.parse_export_item(item) for item in items]  # all checked first
        for client, head, results in copies:
            sessions.merge(tx, client, head, results)
        mark = tx.marks.get((table_id, start))
        if (done and present and mark is not None and mark[0] == IMPORTING
                and (table_id, start) not in tx.copied):
            tx.set_mark(table_id, start, mark, copied=True)
        return {"imported": len(copies)}

    def _apply_add_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Add a range (a new table's, or with ``"st": "importing"`` one moving here: its
        writes will carry seqs above this command's seq, H). Idempotent."""
        table_id = _field_table(cmd)
        start = _field_bytes(cmd, "start")
        end = _field_bytes(cmd, "end", optional=True)
        assert start is not None
        state = cmd.get("st")
        if state not in (None, IMPORTING):
            raise _Malformed("st must be nil or 'importing'")
        by_start = tx.ranges.get(table_id) or {}
        if start in by_start and by_start[start] == end:
            return {}  # already there (an import may have finished since): write nothing
        for s, e in by_start.items() if state == IMPORTING else ():
            if s < (end if end is not None else s + b"\x00") and (e is None or start < e):
                err = errors.InvalidArgument(
                    f"range [{start!r}, {end!r}) overlaps [{s!r}, {e!r}) here",
                    table_id=table_id)
                return {"error": err.to_dict()}
        ranges = tx.writable_ranges()
        ranges.setdefault(table_id, {})[start] = end
        tx.put(_table_range_bounds(table_id)[0] + start, _encode_range_end(end))
        if state == IMPORTING:
            seq = _field_seq(cmd, "s")
            assert seq is not None
            tx.set_mark(table_id, start, (IMPORTING, seq))
        return {}

    def _apply_split_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Cut the range holding ``at`` into [start, at) and [at, end): the keys this group
        holds do not change, only the bounds it reports (``range_not_here``) and later moves
        by. Idempotent: a range already starting at ``at`` is left as it is."""
        table_id = _field_table(cmd)
        at = _field_bytes(cmd, "at")
        assert at is not None
        by_start = tx.ranges.get(table_id) or {}
        if at in by_start:
            return {}
        start = self._holder(tx.ranges, table_id, at)
        if start is None:
            return {"error": self._not_here(tx.ranges, table_id).to_dict()}
        end = by_start[start]
        ranges = tx.writable_ranges()
        ranges[table_id][start] = at
        ranges[table_id][at] = end
        lo = _table_range_bounds(table_id)[0]
        tx.put(lo + start, _encode_range_end(at))
        tx.put(lo + at, _encode_range_end(end))
        return {}

    def _apply_merge_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Join the range starting at ``at`` to the one ending there: the reverse of a split.
        Idempotent: if one range here already spans across ``at``, nothing changes."""
        table_id = _field_table(cmd)
        at = _field_bytes(cmd, "at")
        assert at is not None
        by_start = tx.ranges.get(table_id) or {}
        lower = next((s for s, e in by_start.items() if e == at), None)
        if at not in by_start or lower is None:
            holder = self._holder(tx.ranges, table_id, at)
            if holder is not None and holder < at:
                return {}  # merged before
            return {"error": self._not_here(tx.ranges, table_id).to_dict()}
        if (table_id, at) in tx.marks or (table_id, lower) in tx.marks:
            err = errors.Unavailable("a range being moved is not merged", table_id=table_id)
            return {"error": err.to_dict()}
        ranges = tx.writable_ranges()
        end = ranges[table_id].pop(at)
        ranges[table_id][lower] = end
        lo = _table_range_bounds(table_id)[0]
        tx.delete(lo + at)
        tx.put(lo + lower, _encode_range_end(end))
        return {}

    def _apply_drop_table(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id = _field_table(cmd)
        tx.delete_range(*_table_data_bounds(table_id))
        tx.delete_range(*_table_range_bounds(table_id))
        tx.writable_ranges().pop(table_id, None)
        for mark_key in [k for k in tx.marks if k[0] == table_id]:
            tx.set_mark(*mark_key, None)
        return {}

    def _exact_range(self, tx: _Tx, cmd: dict[str, Any]) -> tuple[int, bytes, bytes | None, bool]:
        """(table, start, end, present) of a move command naming the range [start, end)."""
        table_id = _field_table(cmd)
        start = _field_bytes(cmd, "start")
        end = _field_bytes(cmd, "end", optional=True)
        assert start is not None
        by_start = tx.ranges.get(table_id) or {}
        return table_id, start, end, start in by_start and by_start[start] == end

    def _apply_fence_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Stop writes to a range about to move; its final content is below the returned seq
        H (this command's own seq, above every seq in the log before it)."""
        table_id, start, _, present = self._exact_range(tx, cmd)
        if not present:
            return {"error": self._not_here(tx.ranges, table_id).to_dict()}
        mark = tx.marks.get((table_id, start))
        if mark is not None and mark[0] == FENCED:
            return {"seq": mark[1]}  # fenced before: the same H
        if mark is not None:
            err = errors.Unavailable("the range is still being moved here; it cannot move on "
                                     "before that finishes", table_id=table_id)
            return {"error": err.to_dict()}
        seq = _field_seq(cmd, "s")
        assert seq is not None
        tx.set_mark(table_id, start, (FENCED, seq))
        return {"seq": seq}

    def _apply_unfence_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id, start, _, present = self._exact_range(tx, cmd)
        mark = tx.marks.get((table_id, start))
        if present and mark is not None and mark[0] == FENCED:
            tx.set_mark(table_id, start, None)
        return {}

    def _apply_import(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Merge versions copied from the source into an importing range (higher seq wins).
        Into a range here that is no longer importing (finished), nothing is written."""
        table_id = _field_table(cmd)
        items = cmd.get("items")
        if not isinstance(items, list):
            raise _Malformed("items must be a list")
        versions = []
        for item in items:
            if not isinstance(item, (list, tuple)) or len(item) != 4:
                raise _Malformed("an item is [key, seq, tombstone, value]")
            key = item[0]
            if not isinstance(key, bytes):
                raise _Malformed("an item's key must be bytes")
            version = _field_version(item[1:])
            assert version is not None
            versions.append((key, version))
        wanted = []  # every item checked before anything of the import is written
        for key, version in versions:
            start = self._holder(tx.ranges, table_id, key)
            if start is None:
                return {"error": self._not_here(tx.ranges, table_id).to_dict()}
            mark = tx.marks.get((table_id, start))
            if mark is None or mark[0] != IMPORTING:
                continue
            if version[0] > mark[1]:
                # the source's content is final below the handed-over seq: a copy above it
                # cannot be the source's (a bad or confused sender); taken, it would win
                err = errors.InvalidArgument(
                    "a copied version has a seq above the one the range was handed over at: "
                    "it cannot come from the source", field="items", table_id=table_id)
                return {"error": err.to_dict()}
            wanted.append((key, version))
        imported = 0
        for key, version in wanted:
            dkey = _data_key(table_id, key)
            raw = tx.get(dkey)
            if self._merge_version(tx, dkey, raw, version) is not raw:
                imported += 1
        return {"imported": imported}

    def _apply_finish_import(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id, start, _, present = self._exact_range(tx, cmd)
        mark = tx.marks.get((table_id, start))
        if not present:
            return {"error": self._not_here(tx.ranges, table_id).to_dict()}
        if mark is not None and mark[0] == IMPORTING:
            tx.set_mark(table_id, start, None)
        return {}

    def _apply_drop_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        """Delete a moved-away (fenced) or abandoned (importing) range and its data. An active
        range is never dropped this way; one already gone is nothing to do."""
        table_id, start, end, present = self._exact_range(tx, cmd)
        if not present:
            return {}
        if (table_id, start) not in tx.marks:
            err = errors.InvalidArgument("only a range that moved away (or an abandoned import) "
                                         "can be dropped", table_id=table_id)
            return {"error": err.to_dict()}
        hi = _data_key(table_id, end) if end is not None else _table_data_bounds(table_id)[1]
        tx.delete_range(_data_key(table_id, start), hi)
        tx.delete(_table_range_bounds(table_id)[0] + start)
        ranges = tx.writable_ranges()
        del ranges[table_id][start]
        if not ranges[table_id]:
            del ranges[table_id]
        tx.set_mark(table_id, start, None)
        return {}


    _APPLY: ClassVar[dict[str, Callable[[StateMachine, _Tx, dict[str, Any]], dict[str, Any]]]] = {
        "put": _apply_put, "del": _apply_del, "add_range": _apply_add_range,
        "split_range": _apply_split_range, "merge_range": _apply_merge_range,
        "drop_table": _apply_drop_table, "fence_range": _apply_fence_range,
        "unfence_range": _apply_unfence_range, "import": _apply_import,
        "finish_import": _apply_finish_import, "drop_range": _apply_drop_range,
        "batch": _apply_batch, "import_sessions": _apply_import_sessions,
    }

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _holder(ranges: Ranges, table_id: int, key: bytes) -> bytes | None:
        """The start of the range of ``table_id`` here that holds ``key`` (they never
        overlap), or None."""
        for start, end in (ranges.get(table_id) or {}).items():
            if _range_contains(start, end, key):
                return start
        return None

    @classmethod
    def _owns(cls, ranges: Ranges, table_id: int, key: bytes) -> bool:
        return cls._holder(ranges, table_id, key) is not None

    @staticmethod
    def _not_here(ranges: Ranges, table_id: int, moving: bool = False) -> errors.RangeKVError:
        """The error for a key or span of ``table_id`` that no range here holds (or, with
        ``moving``, whose range here is fenced: it is moving to another group)."""
        by_start = ranges.get(table_id)
        if not by_start:
            return errors.TableNotFound(f"table {table_id} has no range here",
                                        table_id=table_id)
        what = ("the range holding that key is moving to another group" if moving
                else "no range of table {table_id} here holds that key or span")
        return errors.RangeNotHere(
            what.format(table_id=table_id), table_id=table_id, moving=moving,
            ranges=[[s, e] for s, e in sorted(by_start.items())])

    def not_here(self, table_id: int, moving: bool = False) -> errors.RangeKVError:
        """What to answer for a key or span of ``table_id`` that :meth:`owns`,
        :meth:`writable` or :meth:`covers` refused: ``table_not_found`` or ``range_not_here``
        with the ranges."""
        return self._not_here(self._ranges, table_id, moving)

    def writable(self, table_id: int, key: bytes) -> bool:
        """Whether a range here holds ``key`` and takes writes (it is not fenced)."""
        state = self._state_of(table_id, key)
        return state is not None and state != FENCED

    def fenced(self, table_id: int, key: bytes) -> bool:
        """Whether the range here holding ``key`` is fenced: it is moving away, and a write
        taken by the target may already be newer than anything here."""
        return self._state_of(table_id, key) == FENCED

    def importing(self, table_id: int, key: bytes) -> bool:
        """Whether the range here holding ``key`` is being moved here (copy unfinished): its
        reads must go with the source's (``versions``)."""
        return self._state_of(table_id, key) == IMPORTING

    def _state_of(self, table_id: int, key: bytes) -> str | None:
        """The move state of the range here holding ``key`` ("active" if none), or None if no
        range here holds it."""
        start = self._holder(self._ranges, table_id, key)
        if start is None:
            return None
        mark = self._marks.get((table_id, start))
        return "active" if mark is None else mark[0]

    def mark(self, table_id: int, start: bytes) -> tuple[str, bytes] | None:
        """The move state of the range starting at ``start`` ((state, H)) or None: active."""
        return self._marks.get((table_id, start))

    def covers(self, table_id: int, start: bytes, end: bytes | None) -> bool:
        """Whether one range here holds all of ``[start, end)`` (``end`` None: unbounded)."""
        for s, e in (self._ranges.get(table_id) or {}).items():
            if s <= start and (e is None or (end is not None and end <= e)):
                return True
        return False

    def has_table(self, table_id: int) -> bool:
        return bool(self._ranges.get(table_id))

    def owns(self, table_id: int, key: bytes) -> bool:
        """Whether some added range of the table contains ``key``."""
        return self._owns(self._ranges, table_id, key)

    def ranges(self) -> list[tuple[int, bytes, bytes | None]]:
        """Every added range as (table_id, start, end), in (table_id, start) order."""
        return [
            (table_id, start, end)
            for table_id in sorted(self._ranges)
            for start, end in sorted(self._ranges[table_id].items())
        ]

    def get(self, table_id: int, key: bytes) -> tuple[bytes, bytes] | None:
        """(value, seq) of the live version of ``key``; None if absent or deleted."""
        version = self.get_version(table_id, key)
        if version is None or version[1]:
            return None
        return version[2], version[0]

    def get_version(self, table_id: int, key: bytes) -> tuple[bytes, bool, bytes] | None:
        """(seq, tombstone, value) of the record of ``key``, tombstones included; None if
        there is none (what a move's reader compares across source and target)."""
        assert not self.closed, "state machine used after close"
        raw = self._backend.get(_data_key(table_id, key))
        return None if raw is None else _decode_value(raw)

    def scan(
        self,
        table_id: int,
        start: bytes,
        end: bytes | None,
        after: bytes | None,
        limit: int,
        bytes_max: int,
    ) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
        """Live (key, value, seq) with start <= key < end and key > after, in key order.

        At most ``limit`` items; stops early once the keys and values returned reach
        ``bytes_max`` (but returns at least one item if there is any). The flag says whether
        more live items follow the last one returned.
        """
        items, more = self._scan(table_id, start, end, after, limit, bytes_max, False)
        return items, more

    def scan_versions(
        self,
        table_id: int,
        start: bytes,
        end: bytes | None,
        after: bytes | None,
        limit: int,
        bytes_max: int,
    ) -> tuple[list[tuple[bytes, bytes, bytes, bool]], bool]:
        """As :meth:`scan`, tombstones included: (key, value, seq, tombstone)."""
        return self._scan(table_id, start, end, after, limit, bytes_max, True)

    def _scan(
        self,
        table_id: int,
        start: bytes,
        end: bytes | None,
        after: bytes | None,
        limit: int,
        bytes_max: int,
        tombstones: bool,
    ) -> tuple[list[Any], bool]:
        """(key, value, seq, tombstone) items with ``tombstones``, else live (key, value, seq)."""
        assert not self.closed, "state machine used after close"
        assert limit >= 1 and bytes_max >= 0, (limit, bytes_max)
        lo = _data_key(table_id, start)
        if after is not None:
            lo = max(lo, _data_key(table_id, after + b"\x00"))  # the smallest key above `after`
        hi = _data_key(table_id, end) if end is not None else _table_data_bounds(table_id)[1]
        items: list[Any] = []
        if lo >= hi:
            return items, False
        prefix_bytes = len(table_prefix(table_id))
        total_bytes = 0
        append = items.append
        # (_decode_value inlined: this loop is most of a list page's cost on the node)
        header, seq_end, flag = _VALUE_HEADER_BYTES, SEQ_BYTES, _FLAG_TOMBSTONE
        for dkey, raw in self._backend.iterate(lo, hi):
            if len(raw) < header:
                raise StorageCorrupt(f"data record of {len(raw)} bytes is shorter than its header")
            tombstone = bool(raw[seq_end] & flag)
            if tombstone and not tombstones:
                continue
            if len(items) >= limit or (items and total_bytes >= bytes_max):
                return items, True
            key, value = dkey[prefix_bytes:], raw[header:]
            append((key, value, raw[:seq_end], tombstone) if tombstones
                   else (key, value, raw[:seq_end]))
            total_bytes += len(key) + len(value)
        return items, False

    def content_hash(self) -> str:
        """A digest of every client session, range and data record (key, seq, tombstone flag,
        value) in key order. Replicas that applied the same entries agree; the metadata is left
        out."""
        assert not self.closed, "state machine used after close"
        digest = hashlib.sha256()
        for lo, hi in (sessions.SPAN, (_MARK, _MARK_END), (_RANGE, _RANGE_END),
                       (_DATA, _DATA_END)):
            digest.update(lo)
            for key, raw in self._backend.iterate(lo, hi):
                digest.update(len(key).to_bytes(4, "big"))
                digest.update(key)
                digest.update(len(raw).to_bytes(4, "big"))
                digest.update(raw)
        return digest.hexdigest()

    @property
    def session_count(self) -> int:
        """Client sessions held (at most ``sessions.CLIENTS_MAX``)."""
        return self._session_count

    def sessions_copied(self, table_id: int, start: bytes) -> bool:
        """Whether the importing range starting at ``start`` has its source's client
        sessions (``import_sessions`` with ``done``)."""
        return (table_id, start) in self._copied

    def export_sessions(self, after: bytes | None,
                        limit: int = sessions.EXPORT_CLIENTS_MAX) -> tuple[list[Any], bool]:
        """A page of this group's client sessions for a move's copy (``sessions.export_page``):
        read once a read here is linearizable, after the range's fence."""
        assert not self.closed, "state machine used after close"
        return sessions.export_page(self._backend.iterate, after, limit)

    def compact_pending(self) -> int:
        """Reclaim the space of data deleted by ``drop_table``/``drop_range`` since the last
        call (RocksDB compaction of those spans; a backend without it keeps nothing to
        reclaim). Slow: call it off the hot path. Returns the spans compacted."""
        spans, self.to_compact = self.to_compact, []
        compact = getattr(self._backend, "compact", None)
        if compact is not None and not self.closed:
            for lo, hi in spans:
                compact(lo, hi)
        return len(spans)

    def flush(self) -> None:
        """Make the applied state survive a crash (before the WAL prefix may be dropped)."""
        assert not self.closed, "state machine used after close"
        self._backend.flush()

    def checkpoint(self, path: str) -> int:
        """Copy the state into the new directory ``path`` (a snapshot); returns the applied index
        the copy holds, read back from the copy itself (applies may run meanwhile: the copy is at
        some batch boundary, and each batch carries its applied index)."""
        assert not self.closed, "state machine used after close"
        self._backend.checkpoint(path)
        return checkpoint_applied_index(path)

    def close(self) -> None:
        """Flush and close the backend. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._backend.close()


def open_rocks(path: str | os.PathLike[str]) -> StateMachine:
    """The state machine on a RocksDB directory (created if missing)."""
    from rangekv.storage.rocks import RocksBackend

    return StateMachine(RocksBackend(path))


MEMORY_DUMP_NAME = "memory.dump"  # a MemoryBackend's checkpoint (one msgpack file)


def checkpoint_applied_index(path: str | os.PathLike[str]) -> int:
    """The applied index held by a checkpoint directory (RocksDB, or a memory backend's dump),
    opened read-only. Raises StorageCorrupt if it holds no state machine of our format."""
    from pathlib import Path

    if (Path(path) / MEMORY_DUMP_NAME).exists():
        from rangekv.storage.memory import MemoryBackend

        backend: Backend = MemoryBackend.load(path)
    else:
        from rangekv.storage.rocks import RocksBackend

        backend = RocksBackend(path, read_only=True)
    try:
        fmt = backend.get(KEY_FORMAT)
        if fmt is None or int.from_bytes(fmt, "big") != FORMAT_VERSION:
            raise StorageCorrupt(f"{path}: not a state machine checkpoint of format "
                                 f"{FORMAT_VERSION}")
        applied = backend.get(KEY_APPLIED_INDEX)
        return int.from_bytes(applied, "big") if applied is not None else 0
    finally:
        backend.close()


def open_memory() -> StateMachine:
    """A state machine on a fresh in-memory backend."""
    from rangekv.storage.memory import MemoryBackend

    return StateMachine(MemoryBackend())
