"""The node's write-ahead log: the only durable log of a storage node (RocksDB's own WAL is off).

Invariants (asserted on append, verified on open, checked again on every read):

* Indexes are contiguous: the log holds entries ``first_index .. last_index`` and nothing else
  (``first_index`` is the base + 1, see "The log base" below);
  each segment file holds a contiguous run and is named after its first index
  (``00000000000000000001.wal``); the next segment starts at the previous one's last index + 1.
* Epochs never decrease along the log.
* Every record carries a crc32c; a record is trusted only once its checksum matches.
* Nothing is silently skipped: damage anywhere except a torn tail of the last segment is
  ``WALCorrupt`` and the node must refuse to serve the log (the controller replaces it).
* Once ``truncate_suffix`` returns, the cut is durable: no record after the cut can come back,
  not even after a power loss, so a new record written at the same offset can never be mixed
  with stale ones.

Record format (big-endian)::

    length u32 | crc32c u32 | epoch u64 | index u64 | payload
                 `--------------- length bytes ---------------'
                   crc32c covers exactly those ``length`` bytes

``length`` counts the bytes after the 8-byte ``length | crc32c`` prefix, i.e. 16 + len(payload),
so both header fields describe the same span. While scanning, a length is trusted only if it is
at least 16, at most ``16 + PAYLOAD_BYTES_MAX`` and fits in the file: a garbage length never
makes us allocate or read past the end.

Theory of operation:

* ``append`` encodes all records of one call into one buffer and writes it with one ``pwrite``
  (two when the batch crosses into a new segment). It does not fsync: the driver groups many
  appends and then calls ``sync`` (in a worker thread) once — group commit.
* A new segment starts when a record would push the current one over ``segment_bytes_max``
  (a record larger than that gets a segment of its own). Before the first byte goes into the new
  segment, the old one is fdatasync'ed: otherwise a power loss could keep the new segment and
  lose the old one's tail, which would look like damage in the middle of the log.
* ``sync`` fdatasyncs every segment written since the last sync, then the directory if a
  segment was created or removed.
* ``truncate_suffix`` removes whole segments from the end (fsyncing the directory after each
  removal, so only ever a suffix disappears), truncates the segment holding the cut and fsyncs
  it before returning. Truncation is rare (a new leader overwriting uncommitted entries), so it
  pays for its own fsyncs rather than risk resurrecting stale records: the new entries at the
  cut may carry a *lower* epoch than the stale ones after it, so a stale record following a new
  one could otherwise read as a perfectly valid log.
* ``open`` scans every segment, verifies every checksum, contiguity and epoch order, and builds
  an in-memory index (per segment, the file offset of each record; per epoch run, its first
  index), so reads are one ``pread`` per segment touched. A bounded cache keeps the payloads of
  the most recent appends, the entries a leader ships to its followers.
* After ``open``, the first ``sync`` fdatasyncs the last segment and the directory even though
  this process wrote nothing yet: a predecessor killed between a write and its fsync left those
  records in the page cache (a process crash does not lose them), the scan accepted them, and
  the replication core takes the whole log at open as durable. (Earlier segments are durable:
  each was synced before the next one started.)
* A torn tail is a bad record in the last segment (incomplete, a length out of bounds, or a
  checksum mismatch) with no valid record of this log anywhere after it: the remains of a write
  that a crash cut short. It is truncated away (and fsynced) on open. To decide "anywhere after"
  without trying every offset in Python, a regular expression finds the offsets whose header
  could start a record that continues the log (length in bounds, epoch at least the last one,
  index in the only window it could have) and only those are checksummed.
* Threads: one writer at a time (``append``, ``truncate_suffix``, ``sync``, ``close``: in
  practice the driver's persist thread), concurrently with readers in other threads
  (``entries``, ``epoch_at``, ``first_index``/``last_index``/``last_epoch``). A lock guards the
  in-memory index; a writer does its slow I/O (write, fsync) outside it and publishes the new
  records only after they are in the file, so a reader never sees a record that is not there.
  Only ``truncate_suffix`` (rare) holds the lock across its I/O, so no reader can be inside a
  record, or a file, while it disappears.
* Any I/O error while writing or syncing leaves the WAL unusable (``failed``), and the error
  names the call and the file. After a failed fsync the page cache cannot be trusted (the
  PostgreSQL "fsyncgate" lesson): the kernel may have dropped the pages it could not write back,
  or kept them and marked them clean, so a retried fsync "succeeds" without making anything
  durable. So nothing is retried: the process must stop without acknowledging anything written
  since the last successful ``sync``, and reopen the log when it restarts.
* Restarting does not empty the page cache, so the records written after the last successful
  sync may still read back perfectly although they never reached the disk. On a failure the WAL
  therefore leaves a note, ``sync-failed``, with the last index it had synced (written, never
  fsynced: it only has to outlive the process, as the page cache does; after a reboot the disk
  is the truth again and the note may be gone). ``open`` cuts the log after that index (durably)
  before it removes the note (durably). Nothing after it was ever acknowledged as durable, so
  this is exactly a crash that lost unsynced bytes, and the group's leader sends them again.
  (Without the note, e.g. when even writing it failed, the log is trusted as it reads.)

The log base (prefix compaction and snapshots)
---------------------------------------------
The log holds the entries after its **base** ``(base_index, base_epoch)``: ``first_index`` is
``base_index + 1`` and ``epoch_at(base_index)`` answers ``base_epoch`` (the entry itself may be
gone). A fresh log has the base (0, 0). The entries up to the base are covered by a snapshot of
the state machine (the node's RocksDB index, or a snapshot installed from the leader).

* The base is persisted in the file ``base``, written whole and crash-safely (a temp file,
  fsync, rename, fsync of the directory) and checksummed (``encode_base``); without the file the
  base is (0, 0). A ``base`` that does not verify is ``WALCorrupt``.
* ``drop_prefix(index)`` makes ``index`` the base: it writes the new ``base`` first, then removes
  the segments whose entries are all at or below it, oldest first, fsyncing the directory after
  each removal. The segment holding ``index + 1`` stays whole (segments are dropped whole), so
  the first segment may begin with records at or below the base: they are verified on open like
  any other, and never served. A crash anywhere leaves the old base with the whole log, or the
  new base with some dead segments still there; ``open`` finishes their removal.
* ``reset(base_index, base_epoch)`` empties the log and gives it a new base (installing a
  snapshot): it removes every segment, newest first (a durable step each, so a crash leaves a
  prefix of the old log, never a log with a hole), then writes the new ``base``, then creates the
  empty segment ``base_index + 1``. A crash leaves a prefix of the old log under the old base or
  the empty log under the new one; a caller that needs all or nothing (``storage/snapshot.py``)
  records its intent first and calls ``reset`` again after a crash, which is idempotent.
* On open, the live segments are the last one named at or before ``base_index + 1`` and all
  after it; earlier ones are dead leftovers of an interrupted ``drop_prefix`` and are removed.
  It is ``WALCorrupt`` if no segment is named at or before ``base_index + 1`` (entries after the
  base are lost), if the log ends before the base, if a record at the base has another epoch
  than the base, or if the first entry after the base has a lower epoch. Without a ``base`` file
  the first segment must start at index 1.
* Nothing at or below the base is read: ``entries`` and ``epoch_at`` refuse indexes below
  ``first_index`` (except ``epoch_at(base_index)``). Like ``truncate_suffix``, ``drop_prefix`` and
  ``reset`` are writer operations (the driver's persist thread) and are durable when they return.
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import mmap
import os
import re
import struct
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import crc32c

from rangekv import errors
from rangekv.limits import FRAME_BYTES_MAX
from rangekv.perms import FILE_MODE  # segments hold keys and values: 0600

RECORD = struct.Struct(">IIQQ")  # length, crc32c, epoch, index
RECORD_HEADER_BYTES = RECORD.size  # 24
_PREFIX_BYTES = 8  # length + crc32c: the bytes that `length` does not count
_COVERED_HEADER = struct.Struct(">QQ")  # epoch, index: the first bytes the crc covers
PAYLOAD_BYTES_MAX = FRAME_BYTES_MAX  # a payload never needs more than one frame carries
_LENGTH_MIN = _COVERED_HEADER.size
_LENGTH_MAX = _COVERED_HEADER.size + PAYLOAD_BYTES_MAX
_U64_MAX = (1 << 64) - 1

SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
CACHE_BYTES_MAX_DEFAULT = 8 * 1024 * 1024
SEGMENT_SUFFIX = ".wal"
LOCK_NAME = "wal.lock"
SYNC_FAILED_NAME = "sync-failed"  # see "Restarting does not empty the page cache" above
SYNC_FAILED_MAGIC = "rangekv-wal-sync-failed"
SYNC_FAILED_BYTES_MAX = 256
BASE_NAME = "base"  # see "The log base" above
BASE_MAGIC = "rangekv-wal-base"
BASE_BYTES_MAX = 256
_SEGMENT_NAME_RE = re.compile(r"^(\d{20})\.wal$")


class StorageCorrupt(errors.RangeKVError):
    """Durable local state failed verification; the node must not serve it."""

    code = "storage_corrupt"
    status = 500


class WALCorrupt(StorageCorrupt):
    """The WAL is damaged somewhere other than a torn tail. Details: path, offset, reason."""

    code = "wal_corrupt"


class WALInUse(errors.RangeKVError):
    """Another open WAL (in this or another process) holds the directory's lock."""

    code = "wal_in_use"
    status = 500


def segment_name(first_index: int) -> str:
    assert 1 <= first_index <= _U64_MAX, first_index
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def encode_record(epoch: int, index: int, payload: bytes) -> bytes:
    """One record, header and payload (the tests use this to build damaged files)."""
    covered = _COVERED_HEADER.pack(epoch, index)
    checksum = crc32c.crc32c(payload, crc32c.crc32c(covered))
    return struct.pack(">II", len(covered) + len(payload), checksum) + covered + payload


def _corrupt(path: str, offset: int, reason: str) -> WALCorrupt:
    return WALCorrupt(
        f"{path} at offset {offset}: {reason}", path=path, offset=offset, reason=reason
    )


def sync_file(fd: int, path: str, *, data_only: bool = True) -> None:
    """fdatasync (or, with ``data_only=False``, fsync) one open file.

    An error names the call and the file, because it is what the dying node logs: the caller
    must treat it as final and never retry (see "Any I/O error" in the module docstring).
    The call is looked up at call time so that tests can make it fail.
    """
    call = "fdatasync" if data_only and hasattr(os, "fdatasync") else "fsync"
    try:
        getattr(os, call)(fd)
    except OSError as err:
        raise OSError(err.errno, f"{call} failed: {err.strerror}", path) from err


def fsync_dir(directory: str) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync_file(fd, directory, data_only=False)
    finally:
        os.close(fd)


def encode_sync_failed(synced_index: int) -> bytes:
    """The ``sync-failed`` note: the last index synced before a write or sync failed.

    It carries a checksum because it is never fsynced: after a power loss its name may survive
    without its content, and a note that does not verify is ignored (the disk is then the truth).
    """
    assert 0 <= synced_index <= _U64_MAX, synced_index
    body = f"{SYNC_FAILED_MAGIC} {synced_index}"
    return f"{body} {crc32c.crc32c(body.encode()):08x}\n".encode()


def decode_sync_failed(data: bytes) -> int | None:
    """The index of a ``sync-failed`` note, or None if it does not verify."""
    body, _, checksum = data.rstrip(b"\n").rpartition(b" ")
    fields = body.split(b" ")
    if len(fields) != 2 or fields[0] != SYNC_FAILED_MAGIC.encode() or not fields[1].isdigit():
        return None
    if checksum != b"%08x" % crc32c.crc32c(body):
        return None
    index = int(fields[1])
    return index if index <= _U64_MAX else None


def encode_base(base_index: int, base_epoch: int) -> bytes:
    """The ``base`` file: the log's base (index, epoch), with a checksum of the line."""
    assert 0 <= base_index <= _U64_MAX and 0 <= base_epoch <= _U64_MAX, (base_index, base_epoch)
    body = f"{BASE_MAGIC} 1 {base_index} {base_epoch}"
    return f"{body} {crc32c.crc32c(body.encode()):08x}\n".encode()


def decode_base(data: bytes) -> tuple[int, int] | None:
    """(base_index, base_epoch) of a ``base`` file, or None if it does not verify."""
    if not data.endswith(b"\n"):
        return None
    body, _, checksum = data[:-1].rpartition(b" ")
    fields = body.split(b" ")
    if (
        len(fields) != 4
        or fields[0] != BASE_MAGIC.encode()
        or fields[1] != b"1"
        or not fields[2].isdigit()
        or not fields[3].isdigit()
        or checksum != b"%08x" % crc32c.crc32c(body)
    ):
        return None
    index, epoch = int(fields[2]), int(fields[3])
    return (index, epoch) if index <= _U64_MAX and epoch <= _U64_MAX else None


def write_file_durably(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a temp file, fsync, rename over
    ``path``, fsync of the directory. After a crash the file holds the old content or the new,
    and once this returns, the new."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        _write_all(fd, data, 0)
        sync_file(fd, tmp, data_only=False)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        offset += written
        view = view[written:]


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


# -- finding a valid record after damage ------------------------------------------------------


def _lit(byte: int) -> bytes:
    return b"\\x%02x" % byte


def _any(count: int) -> bytes:
    return b"[\\x00-\\xff]{%d}" % count if count else b""


def _range_pattern(lo: bytes, hi: bytes) -> bytes:
    """A regex matching exactly the len(lo)-byte big-endian numbers in [lo, hi]."""
    assert len(lo) == len(hi) and lo <= hi, (lo, hi)
    width = len(lo)
    if width == 0:
        return b""
    if lo[1:] == bytes(width - 1) and hi[1:] == b"\xff" * (width - 1):
        head = _lit(lo[0]) if lo[0] == hi[0] else b"[%s-%s]" % (_lit(lo[0]), _lit(hi[0]))
        return head + _any(width - 1)
    if lo[0] == hi[0]:
        return _lit(lo[0]) + _range_pattern(lo[1:], hi[1:])
    parts = [_lit(lo[0]) + _range_pattern(lo[1:], b"\xff" * (width - 1))]
    if hi[0] - lo[0] >= 2:
        parts.append(b"[%s-%s]" % (_lit(lo[0] + 1), _lit(hi[0] - 1)) + _any(width - 1))
    parts.append(_lit(hi[0]) + _range_pattern(bytes(width - 1), hi[1:]))
    return b"(?:" + b"|".join(parts) + b")"


def range_pattern(lo: int, hi: int, width: int) -> bytes:
    """Regex over ``width``-byte big-endian unsigned integers in [lo, hi] (exposed for tests)."""
    assert 0 <= lo <= hi < (1 << (8 * width)), (lo, hi, width)
    return _range_pattern(lo.to_bytes(width, "big"), hi.to_bytes(width, "big"))


def _valid_record_after(
    data: Any, bad_offset: int, size: int, expected_index: int, last_epoch: int
) -> int | None:
    """The offset of a valid record after ``bad_offset`` that could belong to this log, or None.

    Any record we wrote after the damaged one has an index in [expected_index, expected_index +
    records that fit] and an epoch >= last_epoch, and a length in bounds. The regex finds
    exactly the offsets whose header bytes satisfy that (so zero-filled or random tails yield
    almost no candidates); each candidate is then checked in full.
    """
    records_fit = (size - bad_offset) // RECORD_HEADER_BYTES + 1
    index_hi = min(expected_index + records_fit, _U64_MAX)
    header = (
        range_pattern(_LENGTH_MIN, _LENGTH_MAX, 4)
        + _any(4)
        + range_pattern(last_epoch, _U64_MAX, 8)
        + range_pattern(expected_index, index_hi, 8)
    )
    pattern = re.compile(b"(?=" + header + b")")
    for match in pattern.finditer(data, bad_offset + 1):
        offset = match.start()
        length, checksum, _, _ = RECORD.unpack_from(data, offset)
        end = offset + _PREFIX_BYTES + length
        if end <= size and crc32c.crc32c(data[offset + _PREFIX_BYTES : end]) == checksum:
            return offset
    return None


# -- segments ---------------------------------------------------------------------------------


@dataclass
class _Segment:
    first_index: int
    path: str
    fd: int
    size_bytes: int
    # offsets[i] is the file offset of the record of index first_index + i
    offsets: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1

    def record_span(self, index: int) -> tuple[int, int]:
        """(offset, bytes) of the record of ``index`` in this segment."""
        i = index - self.first_index
        assert 0 <= i < len(self.offsets), (index, self.first_index, len(self.offsets))
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size_bytes
        return self.offsets[i], end - self.offsets[i]


class WAL:
    """See the module docstring: one writer thread, any number of reader threads."""

    def __init__(
        self, directory: str, segment_bytes_max: int, cache_bytes_max: int, lock_fd: int
    ) -> None:
        assert segment_bytes_max >= RECORD_HEADER_BYTES, segment_bytes_max
        assert cache_bytes_max >= 0, cache_bytes_max
        self.directory = directory
        self.segment_bytes_max = segment_bytes_max
        self.cache_bytes_max = cache_bytes_max
        self._lock_fd: int | None = lock_fd
        # Guards everything below that readers look at (segments, runs, cache, last_*).
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._segment_firsts: list[int] = []  # parallel to _segments, for bisect
        # Epoch runs: the entries from _run_starts[k] up to the next run's start have epoch
        # _run_epochs[k]. Epochs change only at leader changes, so this stays tiny.
        self._run_starts: list[int] = []
        self._run_epochs: list[int] = []
        # Payloads of the newest entries: indexes _cache_first .. last_index.
        self._cache: collections.deque[bytes] = collections.deque()
        self._cache_first = 1
        self._cache_bytes = 0
        self._dirty_fds: set[int] = set()
        self._dir_dirty = False
        self.failed: BaseException | None = None
        self.closed = False
        self.first_index = 1  # base_index + 1 (see "The log base")
        self.base_epoch = 0
        self.last_index = 0
        self.last_epoch = 0
        # Every entry up to here is durable or was found at open (which the first sync makes
        # durable): never below an index this node acknowledged. The sync-failed note holds it.
        self.synced_index = 0
        # metrics
        self.syncs = 0
        self.bytes_written = 0
        # Appended since the last sync: what the next fdatasync makes durable.
        self._unsynced_entries = 0
        self._unsynced_bytes = 0
        # Told (entries, bytes, seconds) after every sync that called fdatasync (node metrics);
        # runs in the syncing thread, so it must be cheap and must not raise.
        self.on_sync: Callable[[int, int, float], None] | None = None
        self.torn_bytes_truncated = 0  # found and cut on open; > 0 means the last run crashed
        self.unsynced_entries_cut = 0  # cut on open after the last run's sync failed

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        cache_bytes_max: int = CACHE_BYTES_MAX_DEFAULT,
    ) -> WAL:
        """Open (creating if needed) the WAL in ``directory``, which it must have to itself.

        Raises WALCorrupt if the log is damaged anywhere but a torn tail, WALInUse if another
        WAL object has it open, OSError if the disk fails (cutting a torn tail, or what the
        last run wrote after its last successful sync, fsyncs).
        """
        path = os.fspath(directory)
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise WALInUse(f"the WAL in {path} is already open", path=path) from None
        wal = cls(path, segment_bytes_max, cache_bytes_max, lock_fd)
        try:
            wal._load()
            wal._cut_after_failed_sync()
        except BaseException:
            wal._close_fds()
            raise
        return wal

    def _load(self) -> None:
        base_index, base_epoch = self._load_base()
        firsts = sorted(
            int(m.group(1))
            for name in os.listdir(self.directory)
            if (m := _SEGMENT_NAME_RE.match(name)) is not None
        )
        if not firsts:
            self._set_base(base_index, base_epoch)
            self._create_segment(base_index + 1)
            fsync_dir(self.directory)
            self._dir_dirty = False
            self.synced_index = self.last_index
            return
        if base_index == 0 and firsts[0] != 1:
            raise _corrupt(
                os.path.join(self.directory, segment_name(firsts[0])),
                0,
                f"the first segment starts at index {firsts[0]}, not 1: the log's start is lost",
            )
        live = bisect.bisect_right(firsts, base_index + 1) - 1
        if live < 0:
            raise _corrupt(
                os.path.join(self.directory, segment_name(firsts[0])),
                0,
                f"the first segment starts at index {firsts[0]}, after the base {base_index} + 1:"
                " entries after the base are lost",
            )
        # Segments before the live one hold only entries at or below the base: the leftovers
        # of a drop_prefix that a crash interrupted. Finish it (oldest first, durably).
        for first in firsts[:live]:
            os.unlink(os.path.join(self.directory, segment_name(first)))
            fsync_dir(self.directory)
        firsts = firsts[live:]
        self.last_index = firsts[0] - 1
        for position, first in enumerate(firsts):
            seg_path = os.path.join(self.directory, segment_name(first))
            if first != self.last_index + 1:
                raise _corrupt(
                    seg_path,
                    0,
                    f"segment starts at index {first} but the log so far ends at {self.last_index}",
                )
            fd = os.open(seg_path, os.O_RDWR)
            segment = _Segment(first, seg_path, fd, 0)
            self._segments.append(segment)
            self._segment_firsts.append(first)
            self._scan(segment, is_last=position == len(firsts) - 1)
        self._check_base(base_index, base_epoch)
        self._set_base(base_index, base_epoch)
        self._cache_first = self.last_index + 1
        # The first sync makes durable what a crashed predecessor wrote but did not sync (see
        # the module docstring); until then nothing here was acknowledged by this process.
        self._dirty_fds.add(self._segments[-1].fd)
        self._dir_dirty = True
        self.synced_index = self.last_index

    def _load_base(self) -> tuple[int, int]:
        """The persisted base, (0, 0) without a ``base`` file; removes a leftover temp file."""
        path = os.path.join(self.directory, BASE_NAME)
        if os.path.exists(path + ".tmp"):
            os.unlink(path + ".tmp")  # a write_file_durably that did not reach its rename
        try:
            with open(path, "rb") as f:
                data = f.read(BASE_BYTES_MAX + 1)
        except FileNotFoundError:
            return 0, 0
        base = decode_base(data)
        if base is None:
            raise _corrupt(path, 0, "the base file does not verify")
        return base

    def _check_base(self, base_index: int, base_epoch: int) -> None:
        """After the scan: the live entries must follow the base (see "The log base")."""
        segment = self._segments[0]
        if self.last_index < base_index:
            raise _corrupt(
                segment.path, segment.size_bytes,
                f"the log ends at {self.last_index}, before its base {base_index}",
            )
        if base_index >= segment.first_index and self._epoch_of_record(base_index) != base_epoch:
            raise _corrupt(
                segment.path, segment.record_span(base_index)[0],
                f"record {base_index} has epoch {self._epoch_of_record(base_index)}, "
                f"not the base's {base_epoch}",
            )
        if self.last_index > base_index and self._epoch_of_record(base_index + 1) < base_epoch:
            position = self._segment_of(base_index + 1)
            raise _corrupt(
                position.path, position.record_span(base_index + 1)[0],
                f"record {base_index + 1} has epoch {self._epoch_of_record(base_index + 1)}, "
                f"below the base's {base_epoch}",
            )

    def _epoch_of_record(self, index: int) -> int:
        """The epoch of a record in the files, the base's or below it too (runs are kept)."""
        run = bisect.bisect_right(self._run_starts, index) - 1
        assert run >= 0, (index, self._run_starts)
        return self._run_epochs[run]

    def _set_base(self, base_index: int, base_epoch: int) -> None:
        """Publish a new base in memory (the caller holds the lock or is still opening): drop
        the cached payloads and epoch runs that end at or below it."""
        self.first_index = base_index + 1
        self.base_epoch = base_epoch
        while len(self._run_starts) > 1 and self._run_starts[1] <= self.first_index:
            del self._run_starts[0]
            del self._run_epochs[0]
        if self.last_index <= base_index:
            self.last_index = base_index
            self.last_epoch = base_epoch
        while self._cache and self._cache_first < self.first_index:
            self._cache_bytes -= len(self._cache.popleft())
            self._cache_first += 1
        if not self._cache:
            self._cache_first = max(self._cache_first, self.first_index)

    def _cut_after_failed_sync(self) -> None:
        """Cut what the last run wrote after its last successful sync if a write or sync of it
        failed (its ``sync-failed`` note says so); then remove the note, durably."""
        note = os.path.join(self.directory, SYNC_FAILED_NAME)
        try:
            with open(note, "rb") as f:
                synced = decode_sync_failed(f.read(SYNC_FAILED_BYTES_MAX))
        except FileNotFoundError:
            return
        if synced is not None and synced < self.last_index:
            # Never below the base: the base is written only once everything up to it was
            # synced, so a note below it is older than the base and cuts nothing below it.
            synced = max(synced, self.first_index - 1)
            cut = self.last_index - synced
            with self._lock:
                self._truncate_checked(synced + 1)  # durable before the note goes
            self.unsynced_entries_cut = cut
        os.unlink(note)
        fsync_dir(self.directory)

    def _scan(self, segment: _Segment, is_last: bool) -> None:
        """Verify one segment and index it; cut a torn tail if this is the last segment."""
        size = os.fstat(segment.fd).st_size
        offset = 0
        torn_at: int | None = None
        if size > 0:
            with mmap.mmap(segment.fd, size, access=mmap.ACCESS_READ) as data:
                while offset < size:
                    reason = self._check_record(data, offset, size)
                    if reason is None:
                        _, _, epoch, index = RECORD.unpack_from(data, offset)
                        if index != self.last_index + 1:
                            raise _corrupt(
                                segment.path,
                                offset,
                                f"record has index {index}, expected {self.last_index + 1}",
                            )
                        if epoch < self.last_epoch:
                            raise _corrupt(
                                segment.path,
                                offset,
                                f"record {index} has epoch {epoch}, below the previous "
                                f"{self.last_epoch}",
                            )
                        length = RECORD.unpack_from(data, offset)[0]
                        segment.offsets.append(offset)
                        self._note_appended(epoch, index)
                        offset += _PREFIX_BYTES + length
                        continue
                    if not is_last:
                        raise _corrupt(segment.path, offset, f"{reason} (not the last segment)")
                    found = _valid_record_after(
                        data, offset, size, self.last_index + 1, self.last_epoch
                    )
                    if found is not None:
                        raise _corrupt(
                            segment.path,
                            offset,
                            f"{reason}, and a valid record follows at offset {found}",
                        )
                    torn_at = offset
                    break
        if torn_at is not None:
            # A torn tail: the remains of a write cut short by a crash. Cut it durably before
            # anything new is written after it.
            os.ftruncate(segment.fd, torn_at)
            sync_file(segment.fd, segment.path, data_only=False)
            self.torn_bytes_truncated += size - torn_at
            size = torn_at
        segment.size_bytes = size

    @staticmethod
    def _check_record(data: Any, offset: int, size: int) -> str | None:
        """None if a whole record with a matching checksum starts at ``offset``, else why not."""
        if size - offset < RECORD_HEADER_BYTES:
            return f"incomplete record header ({size - offset} bytes)"
        length, checksum, _, _ = RECORD.unpack_from(data, offset)
        if not _LENGTH_MIN <= length <= _LENGTH_MAX:
            return f"record length {length} out of bounds"
        end = offset + _PREFIX_BYTES + length
        if end > size:
            return f"record of {length} bytes runs {end - size} bytes past the end of the file"
        if crc32c.crc32c(data[offset + _PREFIX_BYTES : end]) != checksum:
            return "checksum mismatch"
        return None

    # -- reading ------------------------------------------------------------------------------

    def epoch_at(self, index: int) -> int:
        """The epoch of entry ``index``; the base's epoch for the base index (0 for index 0 of
        a log that was never compacted). IndexError outside [base_index, last_index]."""
        with self._lock:
            return self._epoch_at(index)

    @property
    def base_index(self) -> int:
        return self.first_index - 1

    def _epoch_at(self, index: int) -> int:
        if index == self.first_index - 1:
            return self.base_epoch
        if not self.first_index <= index <= self.last_index:
            raise IndexError(f"index {index} outside [{self.first_index}, {self.last_index}]")
        run = bisect.bisect_right(self._run_starts, index) - 1
        assert run >= 0, (index, self._run_starts)
        return self._run_epochs[run]

    def entries(
        self, lo: int, hi: int, bytes_max: int | None = None
    ) -> list[tuple[int, int, bytes]]:
        """(epoch, index, payload) for lo <= index < hi, in order.

        With ``bytes_max``, stops before the entry that would take the payload total over it,
        but always returns at least one entry when lo < hi.
        """
        with self._lock:
            self._check_usable()
            assert self.first_index <= lo <= hi <= self.last_index + 1, (
                lo,
                hi,
                self.first_index,
                self.last_index,
            )
            if lo == hi:
                return []
            return self._entries(lo, hi, bytes_max)

    def _entries(self, lo: int, hi: int, bytes_max: int | None) -> list[tuple[int, int, bytes]]:
        hi = self._cut_at_bytes(lo, hi, bytes_max)
        out: list[tuple[int, int, bytes]] = []
        disk_hi = min(hi, self._cache_first)
        index = lo
        while index < disk_hi:
            segment = self._segment_of(index)
            run_hi = min(disk_hi, segment.last_index + 1)
            out.extend(self._read_run(segment, index, run_hi))
            index = run_hi
        for index in range(max(lo, self._cache_first), hi):
            out.append((self._epoch_at(index), index, self._cache[index - self._cache_first]))
        assert len(out) == hi - lo and out[0][1] == lo, (lo, hi, len(out))
        return out

    def _cut_at_bytes(self, lo: int, hi: int, bytes_max: int | None) -> int:
        """The end of the range [lo, hi) that fits ``bytes_max`` of payload (at least lo + 1)."""
        if bytes_max is None:
            return hi
        total = 0
        for index in range(lo, hi):
            if index >= self._cache_first:
                size = len(self._cache[index - self._cache_first])
            else:
                size = self._segment_of(index).record_span(index)[1] - RECORD_HEADER_BYTES
            if index > lo and total + size > bytes_max:
                return index
            total += size
        return hi

    def _segment_of(self, index: int) -> _Segment:
        position = bisect.bisect_right(self._segment_firsts, index) - 1
        segment = self._segments[position]
        assert segment.first_index <= index <= segment.last_index, (index, segment.first_index)
        return segment

    def _read_run(self, segment: _Segment, lo: int, hi: int) -> list[tuple[int, int, bytes]]:
        """Entries [lo, hi) of one segment with one pread, every checksum verified."""
        start, _ = segment.record_span(lo)
        last_start, last_bytes = segment.record_span(hi - 1)
        end = last_start + last_bytes
        data = _read_exact(segment.fd, end - start, start)
        if len(data) != end - start:
            raise _corrupt(segment.path, start + len(data), "segment shorter than indexed")
        out: list[tuple[int, int, bytes]] = []
        for index in range(lo, hi):
            offset, record_bytes = segment.record_span(index)
            rel = offset - start
            length, checksum, epoch, found_index = RECORD.unpack_from(data, rel)
            body = data[rel + _PREFIX_BYTES : rel + record_bytes]
            if (
                length != record_bytes - _PREFIX_BYTES
                or crc32c.crc32c(body) != checksum
                or found_index != index
                or epoch != self._epoch_at(index)
            ):
                raise _corrupt(segment.path, offset, f"record {index} changed on disk since open")
            out.append((epoch, index, body[_COVERED_HEADER.size :]))
        return out

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Append (epoch, index, payload) records after the last one; written, not fsynced.

        Indexes must continue last_index + 1 contiguously and epochs must not decrease.
        """
        self._check_usable()
        if not records:
            return
        index_next, epoch_prev = self.last_index + 1, self.last_epoch
        for epoch, index, payload in records:
            assert index == index_next, f"append of index {index}, expected {index_next}"
            assert epoch_prev <= epoch <= _U64_MAX, f"epoch {epoch} after {epoch_prev}"
            assert len(payload) <= PAYLOAD_BYTES_MAX, f"payload of {len(payload)} bytes"
            index_next, epoch_prev = index + 1, epoch
        try:
            self._append_checked(records)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _append_checked(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        segment = self._segments[-1]
        buffer = bytearray()
        offsets: list[int] = []
        chunk_first = 0  # position in `records` of the first record in `buffer`
        for position, (epoch, index, payload) in enumerate(records):
            record = encode_record(epoch, index, payload)
            size = segment.size_bytes + len(buffer)
            if size > 0 and size + len(record) > self.segment_bytes_max:
                self._write_chunk(segment, buffer, offsets, records[chunk_first:position])
                segment = self._roll(index)
                buffer, offsets, chunk_first = bytearray(), [], position
            offsets.append(segment.size_bytes + len(buffer))
            buffer += record
        self._write_chunk(segment, buffer, offsets, records[chunk_first:])

    def _write_chunk(
        self,
        segment: _Segment,
        buffer: bytearray,
        offsets: list[int],
        records: Sequence[tuple[int, int, bytes]],
    ) -> None:
        """One write for the records headed to one segment; then, and only then, index them."""
        assert len(offsets) == len(records)
        if not records:
            return
        _write_all(segment.fd, buffer, segment.size_bytes)
        with self._lock:  # publish: from here on readers may read these records
            segment.size_bytes += len(buffer)
            segment.offsets.extend(offsets)
            self._dirty_fds.add(segment.fd)
            self.bytes_written += len(buffer)
            self._unsynced_bytes += len(buffer)
            self._unsynced_entries += len(records)
            for epoch, index, payload in records:
                self._note_appended(epoch, index)
                self._cache.append(bytes(payload))
                self._cache_bytes += len(payload)
            while self._cache and self._cache_bytes > self.cache_bytes_max:
                self._cache_bytes -= len(self._cache.popleft())
                self._cache_first += 1
            assert self._cache_first + len(self._cache) == self.last_index + 1

    def _note_appended(self, epoch: int, index: int) -> None:
        assert index == self.last_index + 1 and epoch >= self.last_epoch, (index, epoch)
        if not self._run_epochs or self._run_epochs[-1] != epoch:
            self._run_starts.append(index)
            self._run_epochs.append(epoch)
        self.last_index = index
        self.last_epoch = epoch

    def _create_segment(self, first_index: int) -> _Segment:
        with self._lock:
            return self._create_segment_locked(first_index)

    def _create_segment_locked(self, first_index: int) -> _Segment:
        path = os.path.join(self.directory, segment_name(first_index))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        segment = _Segment(first_index, path, fd, 0)
        self._segments.append(segment)
        self._segment_firsts.append(first_index)
        self._dir_dirty = True
        return segment

    def _roll(self, first_index: int) -> _Segment:
        """Start a new segment, after making the old one durable (see the module docstring)."""
        old = self._segments[-1]
        assert first_index == old.last_index + 1, (first_index, old.last_index)
        if old.fd in self._dirty_fds:
            sync_file(old.fd, old.path)
            with self._lock:
                self._dirty_fds.discard(old.fd)
        return self._create_segment(first_index)

    def truncate_suffix(self, from_index: int) -> None:
        """Drop every entry with index >= from_index; durable when this returns."""
        self._check_usable()
        assert self.first_index <= from_index <= self.last_index + 1, (
            from_index,
            self.first_index,
            self.last_index,
        )
        if from_index == self.last_index + 1:
            return
        with self._lock:
            try:
                self._truncate_checked(from_index)
            except BaseException as exc:
                self._fail(exc)
                raise

    def _truncate_checked(self, from_index: int) -> None:
        # Remove whole segments from the end, one durable step at a time, so that a crash
        # leaves a prefix of the old log, never a log with a hole.
        while len(self._segments) > 1 and self._segments[-1].first_index >= from_index:
            segment = self._segments.pop()
            self._segment_firsts.pop()
            self._dirty_fds.discard(segment.fd)
            os.close(segment.fd)
            os.unlink(segment.path)
            fsync_dir(self.directory)
        segment = self._segments[-1]
        keep = from_index - segment.first_index
        assert 0 <= keep <= len(segment.offsets), (from_index, segment.first_index)
        size = segment.offsets[keep] if keep < len(segment.offsets) else segment.size_bytes
        os.ftruncate(segment.fd, size)
        sync_file(segment.fd, segment.path, data_only=False)
        if self._dir_dirty:
            fsync_dir(self.directory)
            self._dir_dirty = False
        self._dirty_fds.discard(segment.fd)
        segment.size_bytes = size
        del segment.offsets[keep:]

        while self._run_starts and self._run_starts[-1] >= from_index:
            self._run_starts.pop()
            self._run_epochs.pop()
        self.last_index = from_index - 1
        if self.last_index < self.first_index:
            self.last_epoch = self.base_epoch
        else:
            self.last_epoch = self._run_epochs[-1]
        self.synced_index = min(self.synced_index, self.last_index)
        while self._cache and self._cache_first + len(self._cache) > from_index:
            self._cache_bytes -= len(self._cache.pop())
        if not self._cache:
            self._cache_first = from_index
        assert self._cache_first + len(self._cache) == self.last_index + 1
        assert segment.last_index == self.last_index

    def drop_prefix(self, index: int) -> None:
        """Make ``index`` the log's base: forget every entry up to it; durable when this returns.

        ``index`` must be durable here (at most ``synced_index``): the base promises that the
        log continues after it. The caller has made the state up to ``index`` durable elsewhere
        (the state machine flushed), since these entries can no longer be replayed.
        """
        self._check_usable()
        assert self.first_index - 1 <= index <= min(self.last_index, self.synced_index), (
            index, self.first_index, self.last_index, self.synced_index)
        if index == self.first_index - 1:
            return
        epoch = self.epoch_at(index)
        try:
            # 1. The new base, durably: from here on the entries up to it are dead.
            write_file_durably(os.path.join(self.directory, BASE_NAME), encode_base(index, epoch))
            # 2. Publish it: no reader gets past the lock to an entry at or below it any more.
            with self._lock:
                dead: list[_Segment] = []
                while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
                    dead.append(self._segments.pop(0))
                    self._segment_firsts.pop(0)
                for segment in dead:
                    self._dirty_fds.discard(segment.fd)
                self._set_base(index, epoch)
            # 3. Remove the dead segments, oldest first, each durably (so that what a crash
            #    leaves is always a suffix of the segments: open removes the rest).
            for segment in dead:
                os.close(segment.fd)
                os.unlink(segment.path)
                fsync_dir(self.directory)
        except BaseException as exc:
            self._fail(exc)
            raise

    def reset(self, base_index: int, base_epoch: int) -> None:
        """Discard every entry; the log becomes empty with the base (base_index, base_epoch).
        Durable when this returns. Used to install a snapshot of the state up to the base.

        Not atomic across a crash (see "The log base"): a crash leaves a prefix of the old log
        under the old base, or the new empty log. Calling it again is harmless.
        """
        self._check_usable()
        assert base_index >= self.first_index - 1, (base_index, self.first_index)
        assert base_index > self.first_index - 1 or base_epoch == self.base_epoch, (
            base_index, base_epoch, self.base_epoch)
        assert base_epoch >= self.base_epoch, (base_epoch, self.base_epoch)
        with self._lock:
            try:
                self._reset_checked(base_index, base_epoch)
            except BaseException as exc:
                self._fail(exc)
                raise

    def _reset_checked(self, base_index: int, base_epoch: int) -> None:
        # 1. Remove every segment, newest first, each durably: a crash leaves a prefix.
        while self._segments:
            segment = self._segments.pop()
            self._segment_firsts.pop()
            self._dirty_fds.discard(segment.fd)
            os.close(segment.fd)
            os.unlink(segment.path)
            fsync_dir(self.directory)
        self._run_starts.clear()
        self._run_epochs.clear()
        self._cache.clear()
        self._cache_bytes = 0
        # 2. The new base, durably. 3. Its empty first segment, durably.
        write_file_durably(os.path.join(self.directory, BASE_NAME),
                           encode_base(base_index, base_epoch))
        self.first_index, self.base_epoch = base_index + 1, base_epoch
        self.last_index, self.last_epoch = base_index, base_epoch
        self._cache_first = base_index + 1
        segment = self._create_segment_locked(base_index + 1)
        fsync_dir(self.directory)
        self._dir_dirty = False
        self.synced_index = base_index
        assert self._segments == [segment]

    def sync(self) -> None:
        """Make every append so far durable: fdatasync the segments written, then the
        directory if segments were created or removed."""
        self._check_usable()
        with self._lock:
            fds, dir_dirty = sorted(self._dirty_fds), self._dir_dirty
            paths = {segment.fd: segment.path for segment in self._segments}
        if not fds and not dir_dirty:
            self.synced_index = self.last_index
            return
        started_s = time.perf_counter()
        try:
            for fd in fds:
                sync_file(fd, paths[fd])
            if dir_dirty:
                fsync_dir(self.directory)
        except BaseException as exc:
            self._fail(exc)
            raise
        with self._lock:  # the writer is this thread, so nothing became dirty meanwhile
            self._dirty_fds.difference_update(fds)
            self._dir_dirty = self._dir_dirty and not dir_dirty
        self.synced_index = self.last_index
        self.syncs += 1
        entries, nbytes = self._unsynced_entries, self._unsynced_bytes
        self._unsynced_entries = self._unsynced_bytes = 0
        if self.on_sync is not None:
            self.on_sync(entries, nbytes, time.perf_counter() - started_s)

    def _fail(self, exc: BaseException) -> None:
        """Make the WAL unusable after an error while writing, and leave the ``sync-failed``
        note for the next open (best effort: the disk is failing, and without the note the
        next open merely trusts the page cache, as it would have anyway)."""
        if self.failed is None:
            self.failed = exc
        try:
            fd = os.open(
                os.path.join(self.directory, SYNC_FAILED_NAME),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                FILE_MODE,
            )
            try:
                view = memoryview(encode_sync_failed(self.synced_index))
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError:
            pass

    def close(self) -> None:
        """Sync (unless the WAL failed) and release the files. Idempotent."""
        if self.closed:
            return
        try:
            if self.failed is None:
                self.sync()
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        with self._lock:
            self.closed = True
            for segment in self._segments:
                os.close(segment.fd)
            self._segments.clear()
            self._segment_firsts.clear()
            self._dirty_fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _check_usable(self) -> None:
        assert not self.closed, "WAL used after close"
        if self.failed is not None:
            raise OSError(
                errno.EIO,
                f"WAL in {self.directory} unusable after an earlier error: "
                f"{self.failed!r}; the process must stop, and reopen it when it restarts",
            )

    def __repr__(self) -> str:
        return (
            f"WAL({self.directory!r}, entries {self.first_index}..{self.last_index}, "
            f"last_epoch {self.last_epoch}, segments {len(self._segments)})"
        )
