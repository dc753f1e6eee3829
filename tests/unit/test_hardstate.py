"""The hard state: atomic, checksummed, and never returned unverified."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import crc32c
import pytest

from rangekv.storage import hardstate
from rangekv.storage.hardstate import HardStateCorrupt
from rangekv.storage.wal import StorageCorrupt


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "hardstate"
    hardstate.save(path, {"promised_epoch": 3, "node_id": 7})
    assert hardstate.load(path) == {"promised_epoch": 3, "node_id": 7}
    hardstate.save(path, {"promised_epoch": 4, "node_id": 7, "note": "ünïcode"})
    assert hardstate.load(path) == {"promised_epoch": 4, "node_id": 7, "note": "ünïcode"}
    assert not (tmp_path / "hardstate.tmp").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hardstate"]


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    assert hardstate.load(tmp_path / "nothing-here") == {}


def test_leftover_temp_file_from_a_crash_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "hardstate"
    (tmp_path / "hardstate.tmp").write_bytes(b"half a wri")
    assert hardstate.load(path) == {}
    hardstate.save(path, {"promised_epoch": 1})
    assert hardstate.load(path) == {"promised_epoch": 1}


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),  # flipped bit in the body
        lambda d: d[:-2],  # truncated
        lambda d: d + b" ",  # extended
        lambda d: b"",  # empty
        lambda d: d.replace(b"rangekv-hardstate", b"rangekv-hardstatf"),  # bad magic
        lambda d: d.replace(b"rangekv-hardstate 1 ", b"rangekv-hardstate 2 "),  # unknown version
        lambda d: d.split(b"\n", 1)[1],  # no header
        lambda d: b"\xff" * 3_000_000,  # huge garbage
    ],
)
def test_damaged_file_is_refused(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hardstate"
    hardstate.save(path, {"promised_epoch": 12, "node_id": 2})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(HardStateCorrupt) as info:
        hardstate.load(path)
    assert isinstance(info.value, StorageCorrupt)
    assert info.value.to_dict()["code"] == "hardstate_corrupt"


def test_valid_checksum_over_a_non_object_is_refused() -> None:
    body = b"[1,2]"
    data = b"rangekv-hardstate 1 %08x %d\n" % (crc32c.crc32c(body), len(body)) + body
    with pytest.raises(HardStateCorrupt):
        hardstate.decode(data)
    assert hardstate.decode(hardstate.encode({"a": [1, 2]})) == {"a": [1, 2]}


def test_a_failed_fsync_of_the_new_state_names_the_file_and_keeps_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller stops the process on this error (see replication/driver.py), so what matters
    is that the error says what failed and that the old state is still the one in place."""
    path = tmp_path / "hardstate"
    hardstate.save(path, {"promised_epoch": 3})

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as info:
        hardstate.save(path, {"promised_epoch": 4})
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert "fsync failed" in str(info.value) and "hardstate.tmp" in str(info.value)
    assert hardstate.load(path) == {"promised_epoch": 3}


def test_a_failed_fsync_of_the_directory_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the rename only the directory fsync is left: if it fails, the new state is visible
    but perhaps not durable, and either state is safe to find on restart (nothing acted on the
    new one)."""
    path = tmp_path / "hardstate"
    real_fsync = os.fsync

    def fsync_files_only(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_files_only)
    with pytest.raises(OSError, match="fsync failed") as info:
        hardstate.save(path, {"promised_epoch": 5})
    monkeypatch.undo()
    assert str(tmp_path) in str(info.value)
    assert hardstate.load(path) in ({}, {"promised_epoch": 5})
