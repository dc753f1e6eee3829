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
    {"op": "add_range", "t": table_id, "start": bytes, "end": bytes|None, "s": seq} -> {}
    {"op": "split_range", "t": table_id, "at": bytes, "s": seq}   -> {} | {"error": ...}
    {"op": "drop_table", "t": table_id, "s": seq}                                   -> {}

``c`` (if_seq): None = unconditional; 16 zero bytes = only if no live version exists; any other
seq = only if the live version has exactly that seq. Errors are ``{"error": err.to_dict()}``
with ``table_not_found`` (no range of the table here at all), ``range_not_here`` (ranges of the
table are here, none contains the key: with ``ranges``, this group's view), ``precondition_failed``
(with ``current_seq``: hex or None) or ``invalid_argument`` (a field of the wrong type: a bug
upstream, but one that every replica answers the same way instead of crash-looping). An unknown
``op`` is an AssertionError: a node must never skip a command it does not understand.

Storage layout in the backend (bytewise key order)::

    b"\\x00m" + name                      -> metadata: format, applied_index (u64), last_seq (16)
    b"\\x00r" + table_id u64 + start      -> b"\\x00" (end = None) | b"\\x01" + end
    b"\\x01"  + table_id u64 + key        -> seq (16) | flags (1; bit 0 = tombstone) | value

Ranges are keyed by (table, start): adding a range with a start already present replaces its
end. Tombstones are kept (they carry the seq that must win when versions meet, DESIGN §3);
reads hide them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from rangekv import errors, sequencer
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


class _Tx:
    """The writes of one ``apply`` call: an ordered op list plus an overlay so that later
    commands in the same call read what earlier ones wrote."""

    def __init__(self, backend: Backend, ranges: Ranges) -> None:
        self._backend = backend
        self.ops: list[Op] = []
        self._overlay: dict[bytes, bytes | None] = {}
        self._cleared: list[tuple[bytes, bytes]] = []
        self.ranges = ranges
        self.ranges_copied = False

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

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        self.ops.append(("del_range", lo, hi))
        for key in [k for k in self._overlay if lo <= k < hi]:
            del self._overlay[key]
        self._cleared.append((lo, hi))

    def writable_ranges(self) -> Ranges:
        """Copy-on-write: the state machine's ranges change only if the batch is written."""
        if not self.ranges_copied:
            self.ranges = {t: dict(by_start) for t, by_start in self.ranges.items()}
            self.ranges_copied = True
        return self.ranges


class StateMachine:
    """Applies committed commands to a backend and serves reads from it. Not thread-safe."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.closed = False
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

    # -- applying -----------------------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """Apply committed (index, payload) entries in log order; one result per entry."""
        assert not self.closed, "state machine used after close"
        if not entries:
            return []
        tx = _Tx(self._backend, self._ranges)
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
        tx.put(KEY_APPLIED_INDEX, applied_index.to_bytes(8, "big"))
        tx.put(KEY_LAST_SEQ, last_seq)
        self._backend.write(tx.ops)
        # The batch is durable in the backend's sense; only now does the in-memory view move.
        assert last_seq >= self.last_seq
        self.applied_index, self.last_seq = applied_index, last_seq
        if tx.ranges_copied:
            self._ranges = tx.ranges
        return results

    def _apply_one(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        try:
            if op == "noop":
                return {}
            if op == "put":
                return self._apply_put(tx, cmd)
            if op == "del":
                return self._apply_del(tx, cmd)
            if op == "add_range":
                return self._apply_add_range(tx, cmd)
            if op == "split_range":
                return self._apply_split_range(tx, cmd)
            if op == "drop_table":
                return self._apply_drop_table(tx, cmd)
        except _Malformed as exc:
            return {"error": errors.InvalidArgument(f"malformed {op} command: {exc}").to_dict()}
        raise AssertionError(f"unknown command op {op!r}")

    def _check_write(
        self, tx: _Tx, cmd: dict[str, Any]
    ) -> tuple[int, bytes, bytes, bytes | None, dict[str, Any] | None]:
        """Common part of put and del: (table, key, seq, live seq, error result or None)."""
        table_id = _field_table(cmd)
        key = _field_bytes(cmd, "k")
        seq = _field_seq(cmd, "s")
        if_seq = _field_seq(cmd, "c", optional=True)
        assert key is not None and seq is not None
        if not self._owns(tx.ranges, table_id, key):
            err: errors.RangeKVError = self._not_here(tx.ranges, table_id)
            return table_id, key, seq, None, {"error": err.to_dict()}
        raw = tx.get(_data_key(table_id, key))
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
            return table_id, key, seq, live_seq, {"error": err.to_dict()}
        return table_id, key, seq, live_seq, None

    def _apply_put(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        value = _field_bytes(cmd, "v")
        assert value is not None
        table_id, key, seq, _, error = self._check_write(tx, cmd)
        if error is not None:
            return error
        tx.put(_data_key(table_id, key), _encode_value(seq, False, value))
        return {"seq": seq}

    def _apply_del(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id, key, seq, live_seq, error = self._check_write(tx, cmd)
        if error is not None:
            return error
        if live_seq is None:
            return {"deleted": False, "seq": ZERO_SEQ}
        tx.put(_data_key(table_id, key), _encode_value(seq, True, b""))
        return {"deleted": True, "seq": seq}

    def _apply_add_range(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id = _field_table(cmd)
        start = _field_bytes(cmd, "start")
        end = _field_bytes(cmd, "end", optional=True)
        assert start is not None
        ranges = tx.writable_ranges()
        by_start = ranges.setdefault(table_id, {})
        if start in by_start and by_start[start] == end:
            return {}  # already there: write nothing
        by_start[start] = end
        tx.put(_table_range_bounds(table_id)[0] + start, _encode_range_end(end))
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

    def _apply_drop_table(self, tx: _Tx, cmd: dict[str, Any]) -> dict[str, Any]:
        table_id = _field_table(cmd)
        tx.delete_range(*_table_data_bounds(table_id))
        tx.delete_range(*_table_range_bounds(table_id))
        tx.writable_ranges().pop(table_id, None)
        return {}

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
    def _not_here(ranges: Ranges, table_id: int) -> errors.RangeKVError:
        """The error for a key or span of ``table_id`` that no range here holds."""
        by_start = ranges.get(table_id)
        if not by_start:
            return errors.TableNotFound(f"table {table_id} has no range here",
                                        table_id=table_id)
        return errors.RangeNotHere(
            f"no range of table {table_id} here holds that key or span",
            table_id=table_id, ranges=[[s, e] for s, e in sorted(by_start.items())])

    def not_here(self, table_id: int) -> errors.RangeKVError:
        """What to answer for a key or span of ``table_id`` that :meth:`owns` or
        :meth:`covers` refused: ``table_not_found`` or ``range_not_here`` with the ranges."""
        return self._not_here(self._ranges, table_id)

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
        assert not self.closed, "state machine used after close"
        raw = self._backend.get(_data_key(table_id, key))
        if raw is None:
            return None
        seq, tombstone, value = _decode_value(raw)
        return None if tombstone else (value, seq)

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
        assert not self.closed, "state machine used after close"
        assert limit >= 1 and bytes_max >= 0, (limit, bytes_max)
        lo = _data_key(table_id, start)
        if after is not None:
            lo = max(lo, _data_key(table_id, after + b"\x00"))  # the smallest key above `after`
        hi = _data_key(table_id, end) if end is not None else _table_data_bounds(table_id)[1]
        items: list[tuple[bytes, bytes, bytes]] = []
        if lo >= hi:
            return items, False
        prefix_bytes = len(table_prefix(table_id))
        total_bytes = 0
        for dkey, raw in self._backend.iterate(lo, hi):
            seq, tombstone, value = _decode_value(raw)
            if tombstone:
                continue
            if len(items) >= limit or (items and total_bytes >= bytes_max):
                return items, True
            key = dkey[prefix_bytes:]
            items.append((key, value, seq))
            total_bytes += len(key) + len(value)
        return items, False

    def content_hash(self) -> str:
        """A digest of every range and every data record (key, seq, tombstone flag, value) in
        key order. Replicas that applied the same entries agree; the metadata is left out."""
        assert not self.closed, "state machine used after close"
        digest = hashlib.sha256()
        for lo, hi in ((_RANGE, _RANGE_END), (_DATA, _DATA_END)):
            digest.update(lo)
            for key, raw in self._backend.iterate(lo, hi):
                digest.update(len(key).to_bytes(4, "big"))
                digest.update(key)
                digest.update(len(raw).to_bytes(4, "big"))
                digest.update(raw)
        return digest.hexdigest()

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
