"""The WAL: round trips, segment rolling, truncation, torn tails, and damage that must be refused."""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangekv.storage import wal as wal_module
from rangekv.storage.wal import (
    RECORD_HEADER_BYTES,
    WAL,
    WALCorrupt,
    WALInUse,
    encode_record,
    range_pattern,
    segment_name,
)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def payload(index: int, size: int = 20) -> bytes:
    return (f"entry-{index}-".encode() * size)[:size]


def fill(
    directory: Path, count: int, epoch: int = 1, size: int = 20, **open_args: int
) -> list[tuple[int, int, bytes]]:
    """Write entries 1..count of one epoch, synced and closed; return them."""
    records = [(epoch, i, payload(i, size)) for i in range(1, count + 1)]
    w = WAL.open(directory, **open_args)
    w.append(records)
    w.sync()
    w.close()
    return records


def read_all(w: WAL) -> list[tuple[int, int, bytes]]:
    return w.entries(w.first_index, w.last_index + 1)


def record_offsets(path: Path) -> list[int]:
    """Offsets of the records of a well-formed segment file."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 8 + length
    return offsets


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# -- round trips ----------------------------------------------------------------------------


def test_fresh_log_is_empty(tmp_path: Path) -> None:
    w = WAL.open(tmp_path / "wal")
    assert (w.first_index, w.last_index, w.last_epoch) == (1, 0, 0)
    assert w.epoch_at(0) == 0
    assert w.entries(1, 1) == []
    w.close()
    assert [p.name for p in segments(tmp_path / "wal")] == [segment_name(1)]


def test_round_trip_across_segments(tmp_path: Path) -> None:
    w = WAL.open(tmp_path, segment_bytes_max=300)
    records: list[tuple[int, int, bytes]] = []
    index = 1
    for batch, epoch in enumerate([1, 1, 2, 2, 2, 5, 7]):
        batch_records = [
            (epoch, index + j, payload(index + j, 10 + 7 * j)) for j in range(batch + 1)
        ]
        w.append(batch_records)
        records += batch_records
        index += len(batch_records)
    w.sync()
    assert w.syncs == 1
    assert w.bytes_written == sum(p.stat().st_size for p in segments(tmp_path))
    assert read_all(w) == records
    w.close()

    files = segments(tmp_path)
    assert len(files) >= 4
    for path in files:  # every segment is named after its first entry and within its bound
        assert path.stat().st_size <= 300
        first_index = struct.unpack_from(">Q", path.read_bytes(), 16)[0]
        assert path.name == segment_name(first_index)

    w = WAL.open(tmp_path, segment_bytes_max=300)
    assert (w.first_index, w.last_index, w.last_epoch) == (1, len(records), 7)
    assert read_all(w) == records
    for epoch, index, _ in records:
        assert w.epoch_at(index) == epoch
    assert w.torn_bytes_truncated == 0
    # appending after a reopen continues the log
    w.append([(8, len(records) + 1, b"after reopen")])
    w.close()
    w = WAL.open(tmp_path, segment_bytes_max=300)
    assert w.entries(len(records) + 1, len(records) + 2) == [(8, len(records) + 1, b"after reopen")]
    w.close()


def test_record_larger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    big = b"x" * 500
    w = WAL.open(tmp_path, segment_bytes_max=100)
    w.append([(1, 1, big)])  # into the empty first segment
    w.append([(1, 2, b"a"), (1, 3, big), (1, 4, b"b")])
    w.close()
    assert len(segments(tmp_path)) == 4
    w = WAL.open(tmp_path, segment_bytes_max=100)
    assert [p for _, _, p in read_all(w)] == [big, b"a", big, b"b"]
    w.close()


def test_one_append_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_pwrite = os.pwrite

    def counting_pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(wal_module.os, "pwrite", counting_pwrite)
    w = WAL.open(tmp_path)
    w.append([(1, i, payload(i)) for i in range(1, 201)])
    assert len(calls) == 1
    w.close()


def test_epoch_at_and_entries_bounds(tmp_path: Path) -> None:
    w = WAL.open(tmp_path, segment_bytes_max=200, cache_bytes_max=0)
    w.append([(1, 1, b"a"), (1, 2, b"bb"), (3, 3, b"ccc"), (3, 4, b"dddd"), (4, 5, b"eeeee")])
    assert [w.epoch_at(i) for i in range(6)] == [0, 1, 1, 3, 3, 4]
    for bad in (-1, 6):
        with pytest.raises(IndexError):
            w.epoch_at(bad)
    with pytest.raises(AssertionError):
        w.entries(0, 2)
    with pytest.raises(AssertionError):
        w.entries(2, 7)
    assert w.entries(3, 3) == []
    assert w.entries(2, 4) == [(1, 2, b"bb"), (3, 3, b"ccc")]
    # bytes_max: stop before the entry that would go over, but always return one
    assert [i for _, i, _ in w.entries(1, 6, bytes_max=6)] == [1, 2, 3]
    assert [i for _, i, _ in w.entries(1, 6, bytes_max=5)] == [1, 2]
    assert [i for _, i, _ in w.entries(4, 6, bytes_max=1)] == [4]
    assert [i for _, i, _ in w.entries(1, 6, bytes_max=0)] == [1]
    assert [i for _, i, _ in w.entries(1, 6, bytes_max=10**9)] == [1, 2, 3, 4, 5]
    w.close()


def test_cache_and_disk_agree(tmp_path: Path) -> None:
    records = [(1 + i // 7, i, payload(i, 1 + i % 13)) for i in range(1, 60)]
    cached = WAL.open(tmp_path / "a", segment_bytes_max=250, cache_bytes_max=10**6)
    uncached = WAL.open(tmp_path / "b", segment_bytes_max=250, cache_bytes_max=0)
    partly = WAL.open(tmp_path / "c", segment_bytes_max=250, cache_bytes_max=100)
    for w in (cached, uncached, partly):
        w.append(records)
    for lo in range(1, 60, 5):
        for hi in (lo, lo + 1, lo + 9, 60):
            for bytes_max in (None, 1, 40):
                want = cached.entries(lo, min(hi, 60), bytes_max)
                assert uncached.entries(lo, min(hi, 60), bytes_max) == want
                assert partly.entries(lo, min(hi, 60), bytes_max) == want
    for w in (cached, uncached, partly):
        w.close()


def test_second_open_of_a_directory_is_refused(tmp_path: Path) -> None:
    w = WAL.open(tmp_path)
    with pytest.raises(WALInUse):
        WAL.open(tmp_path)
    w.close()
    WAL.open(tmp_path).close()


# -- truncation -----------------------------------------------------------------------------


def test_truncate_then_append_lower_epoch_over_stale_entries(tmp_path: Path) -> None:
    """A new leader may overwrite uncommitted entries of a HIGHER epoch with entries of a lower
    one; the stale records must never come back, across segments and reopens."""
    w = WAL.open(tmp_path, segment_bytes_max=200)
    w.append([(1, i, payload(i)) for i in range(1, 6)])
    w.append([(5, i, payload(i)) for i in range(6, 21)])
    w.sync()
    assert len(segments(tmp_path)) >= 3
    w.truncate_suffix(6)
    assert (w.last_index, w.last_epoch) == (5, 1)
    with pytest.raises(IndexError):
        w.epoch_at(6)
    new = [(4, i, b"new-%d" % i) for i in range(6, 9)]
    w.append(new)
    w.sync()
    assert read_all(w)[5:] == new
    w.close()

    w = WAL.open(tmp_path, segment_bytes_max=200)
    assert (w.last_index, w.last_epoch) == (8, 4)
    assert read_all(w) == [(1, i, payload(i)) for i in range(1, 6)] + new
    w.close()


def test_truncate_everything_and_nothing(tmp_path: Path) -> None:
    fill(tmp_path, 30, segment_bytes_max=200)
    w = WAL.open(tmp_path, segment_bytes_max=200)
    w.truncate_suffix(31)  # nothing to drop
    assert w.last_index == 30
    w.truncate_suffix(1)
    assert (w.first_index, w.last_index, w.last_epoch) == (1, 0, 0)
    assert [p.name for p in segments(tmp_path)] == [segment_name(1)]
    with pytest.raises(AssertionError):
        w.truncate_suffix(2)
    w.append([(9, 1, b"fresh")])
    w.close()
    w = WAL.open(tmp_path, segment_bytes_max=200)
    assert read_all(w) == [(9, 1, b"fresh")]
    w.close()


def test_truncation_is_durable_without_sync(tmp_path: Path) -> None:
    """truncate_suffix makes the cut itself durable: the files already reflect it."""
    fill(tmp_path, 20, segment_bytes_max=200)
    w = WAL.open(tmp_path, segment_bytes_max=200)
    w.truncate_suffix(4)
    files = segments(tmp_path)
    assert [p.name for p in files] == [segment_name(1)]
    assert len(record_offsets(files[0])) == 3
    w.close()


def test_append_asserts_contiguity_and_epoch_order(tmp_path: Path) -> None:
    w = WAL.open(tmp_path)
    w.append([(2, 1, b"a")])
    with pytest.raises(AssertionError):
        w.append([(2, 3, b"gap")])
    with pytest.raises(AssertionError):
        w.append([(1, 2, b"epoch went down")])
    with pytest.raises(AssertionError):
        w.append([(2, 2, b"ok"), (2, 2, b"duplicate")])
    assert w.last_index == 1  # nothing of a refused batch was written
    w.close()


# -- torn tails -----------------------------------------------------------------------------


def test_torn_tail_cut_mid_record_is_truncated(tmp_path: Path) -> None:
    records = fill(tmp_path, 30, segment_bytes_max=400)
    last = segments(tmp_path)[-1]
    offsets = record_offsets(last)
    cut = offsets[-1] + RECORD_HEADER_BYTES + 3  # inside the last record's payload
    with open(last, "r+b") as f:
        f.truncate(cut)
    w = WAL.open(tmp_path, segment_bytes_max=400)
    assert w.last_index == 29
    assert w.torn_bytes_truncated == cut - offsets[-1]
    assert last.stat().st_size == offsets[-1]
    assert read_all(w) == records[:29]
    w.append([(2, 30, b"rewritten")])
    w.close()
    w = WAL.open(tmp_path, segment_bytes_max=400)
    assert read_all(w) == records[:29] + [(2, 30, b"rewritten")]
    assert w.torn_bytes_truncated == 0
    w.close()


def test_torn_tail_cut_inside_header_empties_the_last_segment(tmp_path: Path) -> None:
    records = fill(tmp_path, 30, segment_bytes_max=200)
    last = segments(tmp_path)[-1]
    offsets = record_offsets(last)
    with open(last, "r+b") as f:
        f.truncate(offsets[0] + 5)
    w = WAL.open(tmp_path, segment_bytes_max=200)
    kept = 30 - len(offsets)
    assert w.last_index == kept
    assert last.exists() and last.stat().st_size == 0
    w.append([(1, kept + 1, b"x")])
    w.close()
    w = WAL.open(tmp_path, segment_bytes_max=200)
    assert read_all(w) == records[:kept] + [(1, kept + 1, b"x")]
    w.close()


def test_torn_tail_bad_checksum_on_last_record_is_truncated(tmp_path: Path) -> None:
    records = fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    offsets = record_offsets(path)
    flip_byte(path, offsets[-1] + RECORD_HEADER_BYTES + 1)
    w = WAL.open(tmp_path)
    assert read_all(w) == records[:9]
    w.append([(1, 10, b"again")])
    w.close()


def test_torn_tail_zero_filled_is_truncated(tmp_path: Path) -> None:
    """A crash can leave a file extended with zeros where a write did not land."""
    records = fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(5000))
    w = WAL.open(tmp_path)
    assert read_all(w) == records
    assert w.torn_bytes_truncated == 5000
    w.close()


def test_torn_multi_record_write_with_garbage_is_truncated(tmp_path: Path) -> None:
    records = fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    tail = b"".join(encode_record(1, i, payload(i)) for i in range(11, 14))
    with open(path, "ab") as f:  # the first page of the write landed as garbage, rest missing
        f.write(b"\xde\xad" * 20 + tail[40:50])
    w = WAL.open(tmp_path)
    assert read_all(w) == records
    w.close()


# -- damage that must be refused ------------------------------------------------------------


def test_flipped_bit_in_a_middle_record_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    offsets = record_offsets(path)
    flip_byte(path, offsets[4] + RECORD_HEADER_BYTES + 2)
    size = path.stat().st_size
    with pytest.raises(WALCorrupt) as info:
        WAL.open(tmp_path)
    assert info.value.details["offset"] == offsets[4]
    assert info.value.details["path"] == str(path)
    assert "checksum" in info.value.details["reason"]
    assert info.value.to_dict()["code"] == "wal_corrupt"
    assert path.stat().st_size == size  # nothing was "repaired"
    with pytest.raises(WALCorrupt):  # still refused, and the failed open released its lock
        WAL.open(tmp_path)


@pytest.mark.parametrize("field_offset", [8, 16, 23])  # epoch, index (high and low bytes)
def test_flipped_header_field_in_a_middle_record_is_corruption(
    tmp_path: Path, field_offset: int
) -> None:
    fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    flip_byte(path, record_offsets(path)[3] + field_offset)
    with pytest.raises(WALCorrupt):
        WAL.open(tmp_path)


def test_garbage_length_field_is_corruption_without_a_huge_allocation(tmp_path: Path) -> None:
    fill(tmp_path, 10, size=1000)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">I", data, record_offsets(path)[2], 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(WALCorrupt) as info:
            WAL.open(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "out of bounds" in info.value.details["reason"]
    assert peak < 4 * 1024 * 1024


def test_plausible_wrong_length_in_a_middle_record_is_corruption(tmp_path: Path) -> None:
    """The length no longer says where the next record starts: the search must still find it."""
    fill(tmp_path, 10)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    offset = record_offsets(path)[5]
    (length,) = struct.unpack_from(">I", data, offset)
    struct.pack_into(">I", data, offset, length - 3)
    path.write_bytes(bytes(data))
    with pytest.raises(WALCorrupt) as info:
        WAL.open(tmp_path)
    assert "valid record follows" in info.value.details["reason"]


def test_zeroed_block_in_the_middle_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 40)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    offset = record_offsets(path)[10]
    data[offset : offset + 200] = bytes(200)  # several records gone, later ones intact
    path.write_bytes(bytes(data))
    with pytest.raises(WALCorrupt):
        WAL.open(tmp_path)


def test_damage_in_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 30, segment_bytes_max=200)
    first = segments(tmp_path)[0]
    offsets = record_offsets(first)
    with open(first, "r+b") as f:  # even a "torn" tail is damage when more segments follow
        f.truncate(offsets[-1] + 10)
    with pytest.raises(WALCorrupt) as info:
        WAL.open(tmp_path, segment_bytes_max=200)
    assert "not the last segment" in info.value.details["reason"]


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 30, segment_bytes_max=200)
    files = segments(tmp_path)
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(WALCorrupt):
        WAL.open(tmp_path, segment_bytes_max=200)


def test_missing_first_segment_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 30, segment_bytes_max=200)
    segments(tmp_path)[0].unlink()
    with pytest.raises(WALCorrupt):
        WAL.open(tmp_path, segment_bytes_max=200)


def test_valid_records_out_of_order_are_corruption(tmp_path: Path) -> None:
    cases = {
        "epoch goes down": [(2, 1), (1, 2)],
        "index repeats": [(1, 1), (1, 1)],
        "index skips": [(1, 1), (1, 3)],
        "segment name lies": [(1, 2)],
    }
    for name, pairs in cases.items():
        directory = tmp_path / name.replace(" ", "-")
        directory.mkdir()
        data = b"".join(encode_record(e, i, b"p") for e, i in pairs)
        (directory / segment_name(1)).write_bytes(data)
        with pytest.raises(WALCorrupt):
            WAL.open(directory)


def test_damage_after_open_is_detected_on_read(tmp_path: Path) -> None:
    fill(tmp_path, 10)
    w = WAL.open(tmp_path, cache_bytes_max=0)
    (path,) = segments(tmp_path)
    flip_byte(path, record_offsets(path)[7] + RECORD_HEADER_BYTES)
    assert len(w.entries(1, 8)) == 7
    with pytest.raises(WALCorrupt):
        w.entries(1, 11)
    w.close()


def test_a_failed_write_makes_the_wal_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = fill(tmp_path, 5)
    w = WAL.open(tmp_path)

    def failing_pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal_module.os, "pwrite", failing_pwrite)
    with pytest.raises(OSError):
        w.append([(1, 6, b"x")])
    monkeypatch.undo()
    assert w.failed is not None
    with pytest.raises(OSError, match="unusable"):
        w.append([(1, 6, b"x")])
    with pytest.raises(OSError, match="unusable"):
        w.sync()
    w.close()
    w = WAL.open(tmp_path)
    assert read_all(w) == records
    w.close()


# -- disk faults: failed fsyncs (see "Any I/O error" in the wal module docstring) ------------


class FailingSync:
    """Stands in for os.fdatasync / os.fsync: records the path of every call (so a test can see
    that nothing is retried) and, once ``failing``, fails each with EIO as a dying disk does."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failing = False
        self.calls: list[str] = []

    def __call__(self, fd: int) -> None:
        self.calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        self.real(fd)


def test_a_failed_fdatasync_is_final_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = fill(tmp_path, 5)
    w = WAL.open(tmp_path)
    w.sync()
    w.append([(1, i, payload(i)) for i in (6, 7, 8)])  # written, never made durable
    fdatasync = FailingSync(os.fdatasync)
    fdatasync.failing = True
    monkeypatch.setattr(wal_module.os, "fdatasync", fdatasync)
    with pytest.raises(OSError) as info:
        w.sync()
    assert info.value.errno == errno.EIO
    assert "fdatasync failed" in str(info.value)
    assert str(segments(tmp_path)[0]) in str(info.value)
    assert w.failed is not None
    # Never retried, not even by a later sync or close: the page cache cannot be trusted.
    with pytest.raises(OSError, match="unusable"):
        w.sync()
    with pytest.raises(OSError, match="unusable"):
        w.append([(1, 9, b"x")])
    w.close()
    assert len(fdatasync.calls) == 1
    note = tmp_path / wal_module.SYNC_FAILED_NAME
    assert wal_module.decode_sync_failed(note.read_bytes()) == 5
    monkeypatch.undo()

    # The restarted process does not trust what read back from the page cache after the last
    # successful sync: entries 6..8 were never acknowledged, so they are cut, durably.
    w = WAL.open(tmp_path)
    assert w.unsynced_entries_cut == 3
    assert read_all(w) == records
    assert not note.exists()
    assert len(record_offsets(segments(tmp_path)[0])) == 5
    w.append([(2, 6, b"from the new leader")])
    w.sync()
    w.close()
    w = WAL.open(tmp_path)
    assert read_all(w) == [*records, (2, 6, b"from the new leader")]
    assert w.unsynced_entries_cut == 0
    w.close()


def test_a_failed_fdatasync_when_rolling_a_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old segment is made durable before the next one starts; if that fails, the append
    fails, naming the old segment, and nothing after the last sync survives a restart."""
    records = fill(tmp_path, 4, segment_bytes_max=200)
    w = WAL.open(tmp_path, segment_bytes_max=200)
    w.sync()
    fdatasync = FailingSync(os.fdatasync)
    fdatasync.failing = True
    monkeypatch.setattr(wal_module.os, "fdatasync", fdatasync)
    with pytest.raises(OSError, match="fdatasync failed") as info:
        w.append([(1, i, payload(i)) for i in range(5, 30)])
    # Entries 1..4 fill the first segment; 5.. start a new one, whose fdatasync fails as it
    # fills in turn, before anything is written to the third.
    assert str(tmp_path / segment_name(5)) in str(info.value)
    assert len(segments(tmp_path)) == 2
    w.close()
    monkeypatch.undo()
    w = WAL.open(tmp_path, segment_bytes_max=200)
    assert read_all(w) == records
    w.close()


def test_a_sync_that_fails_right_after_open_cuts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a log holds at open may all have been acknowledged by the run before (whose last
    syncs are unknown): a failure before this run's first sync must never cut any of it."""
    records = fill(tmp_path, 6)
    w = WAL.open(tmp_path)
    fdatasync = FailingSync(os.fdatasync)
    fdatasync.failing = True
    monkeypatch.setattr(wal_module.os, "fdatasync", fdatasync)
    with pytest.raises(OSError, match="fdatasync failed"):
        w.sync()
    w.close()
    monkeypatch.undo()
    w = WAL.open(tmp_path)
    assert read_all(w) == records
    assert w.unsynced_entries_cut == 0
    w.close()


def test_open_makes_what_a_crashed_run_left_unsynced_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 between a write and its fsync leaves the records in the page cache; the next run
    reads them and takes them as durable, so its first sync must fsync them (and the directory,
    which may hold a segment created just before the crash)."""
    w = WAL.open(tmp_path)
    w.append([(1, 1, b"written")])
    w._close_fds()  # the process dies: no sync, no close
    fdatasync = FailingSync(os.fdatasync)
    fsync = FailingSync(os.fsync)
    monkeypatch.setattr(wal_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(wal_module.os, "fsync", fsync)
    w = WAL.open(tmp_path)
    assert read_all(w) == [(1, 1, b"written")]
    w.sync()
    assert fdatasync.calls == [str(segments(tmp_path)[0])]
    assert fsync.calls == [str(tmp_path)]
    assert w.syncs == 1
    w.sync()  # nothing new: no more calls
    assert len(fdatasync.calls) == 1
    w.close()


@pytest.mark.parametrize(
    "note",
    [
        b"",  # created, content lost (a power loss: the page cache went with it)
        b"rangekv-wal-sync-failed 2 00000000\n",  # checksum mismatch
        b"garbage",
        wal_module.encode_sync_failed(7),  # at or past the end of the log: nothing to cut
    ],
)
def test_a_sync_failed_note_that_does_not_apply_cuts_nothing(tmp_path: Path, note: bytes) -> None:
    records = fill(tmp_path, 7)
    (tmp_path / wal_module.SYNC_FAILED_NAME).write_bytes(note)
    w = WAL.open(tmp_path)
    assert read_all(w) == records
    assert w.unsynced_entries_cut == 0
    assert not (tmp_path / wal_module.SYNC_FAILED_NAME).exists()
    w.close()


def test_sync_failed_note_round_trip() -> None:
    for index in (0, 1, 12345, 2**64 - 1):
        assert wal_module.decode_sync_failed(wal_module.encode_sync_failed(index)) == index
    assert wal_module.decode_sync_failed(wal_module.encode_sync_failed(12)[:-4]) is None


def test_a_sync_failed_note_cuts_across_segments(tmp_path: Path) -> None:
    records = fill(tmp_path, 30, segment_bytes_max=200)
    assert len(segments(tmp_path)) > 2
    (tmp_path / wal_module.SYNC_FAILED_NAME).write_bytes(wal_module.encode_sync_failed(3))
    w = WAL.open(tmp_path, segment_bytes_max=200)
    assert w.unsynced_entries_cut == 27
    assert read_all(w) == records[:3]
    assert [p.name for p in segments(tmp_path)] == [segment_name(1)]
    w.close()


# -- the torn-tail search pattern -----------------------------------------------------------


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.lists(st.integers(0, 0xFFFF), max_size=50),
)
def test_range_pattern_matches_exactly_the_range(a: int, b: int, probes: list[int]) -> None:
    lo, hi = min(a, b), max(a, b)
    pattern = re.compile(range_pattern(lo, hi, 2))
    for value in probes + [lo, hi, lo - 1, hi + 1, 0, 0xFFFF]:
        if 0 <= value <= 0xFFFF:
            matched = pattern.fullmatch(value.to_bytes(2, "big")) is not None
            assert matched == (lo <= value <= hi), (lo, hi, value)


def test_range_pattern_wide() -> None:
    pattern = re.compile(range_pattern(300, 70_000, 8))
    for value, inside in [
        (299, False),
        (300, True),
        (65_535, True),
        (70_000, True),
        (70_001, False),
        (1 << 40, False),
        (0, False),
    ]:
        assert (pattern.fullmatch(value.to_bytes(8, "big")) is not None) == inside


# -- against a list oracle ------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.integers(0, 2),  # epoch increase
            st.lists(st.integers(0, 120), min_size=1, max_size=8),  # payload sizes
        ),
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("sync")),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_wal_matches_a_list_oracle(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as directory:
        open_args = {"segment_bytes_max": 180, "cache_bytes_max": 90}
        w = WAL.open(directory, **open_args)
        oracle: list[tuple[int, int, bytes]] = []
        try:
            for op in ops:
                if op[0] == "append":
                    _, bump, sizes = op
                    epoch = (oracle[-1][0] if oracle else 1) + bump
                    new = [
                        (epoch, len(oracle) + 1 + j, os.urandom(size))
                        for j, size in enumerate(sizes)
                    ]
                    w.append(new)
                    oracle += new
                elif op[0] == "truncate":
                    from_index = 1 + int(op[1] * len(oracle))
                    w.truncate_suffix(from_index)
                    del oracle[from_index - 1 :]
                elif op[0] == "sync":
                    w.sync()
                else:
                    w.close()
                    w = WAL.open(directory, **open_args)
                    assert w.torn_bytes_truncated == 0
                assert (w.first_index, w.last_index) == (1, len(oracle))
                assert w.last_epoch == (oracle[-1][0] if oracle else 0)
                assert read_all(w) == oracle
                for epoch, index, _ in oracle:
                    assert w.epoch_at(index) == epoch
            for lo in range(1, len(oracle) + 1, 3):
                got = w.entries(lo, len(oracle) + 1, bytes_max=150)
                assert got == oracle[lo - 1 : lo - 1 + len(got)] and got
                if lo - 1 + len(got) < len(oracle):
                    total = sum(len(p) for _, _, p in got)
                    assert len(got) == 1 or total <= 150
                    assert total + len(oracle[lo - 1 + len(got)][2]) > 150
        finally:
            w.close()


# -- one writer thread, readers elsewhere ---------------------------------------------------


def test_readers_in_another_thread_see_consistent_entries(tmp_path: Path) -> None:
    """The driver appends and syncs in a worker thread while the event loop reads the entries
    it knows to be written: every read must return exactly what was appended."""
    w = WAL.open(tmp_path, segment_bytes_max=2000, cache_bytes_max=300)
    expected: dict[int, tuple[int, int, bytes]] = {}
    written = 0  # entries 1..written are fully appended; readers stay within them
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        nonlocal written
        try:
            for batch in range(300):
                first = written + 1
                records = [
                    (1 + batch // 50, first + j, os.urandom(1 + (first + j) % 97))
                    for j in range(1 + batch % 5)
                ]
                for record in records:
                    expected[record[1]] = record
                w.append(records)
                written = records[-1][1]
                if batch % 7 == 0:
                    w.sync()
        except Exception as exc:  # noqa: BLE001 - handed to the main thread
            failures.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                last = written
                if last == 0:
                    continue
                lo = max(1, last - 12)
                got = w.entries(lo, last + 1)
                assert got == [expected[i] for i in range(lo, last + 1)]
                assert w.epoch_at(last) == expected[last][0]
        except Exception as exc:  # noqa: BLE001 - handed to the main thread
            failures.append(exc)
            stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    w.close()
    assert not failures, failures[0]
