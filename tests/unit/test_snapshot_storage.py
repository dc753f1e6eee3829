"""Snapshot files (storage/snapshot.py) with a real RocksDB and a real WAL.

* A RocksDB checkpoint streamed in chunks and received elsewhere is the same state machine.
* Every kind of bad chunk is refused with a clear error and changes nothing; a staged snapshot
  damaged on disk, or one that does not match its manifest, fails ``finish``.
* ``install`` survives a crash at every one of its file operations: after ``recover`` the node
  has either its old state machine and log, or the snapshot's state machine and an empty log
  under the snapshot's base; never a mix.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rangekv import sequencer
from rangekv.storage import hardstate, snapshot
from rangekv.storage import wal as wal_module
from rangekv.storage.engine import (
    StateMachine,
    checkpoint_applied_index,
    encode_command,
    open_rocks,
)
from rangekv.storage.memory import MemoryBackend
from rangekv.storage.snapshot import (
    CHUNK_BYTES_MAX,
    Chunk,
    Manifest,
    Receiver,
    SnapshotInvalid,
)
from rangekv.storage.wal import WAL, StorageCorrupt


def fill(engine: StateMachine, lo: int, hi: int, tag: str = "v", size: int = 100) -> None:
    """Apply entries lo..hi (the first one adds the table's range); values do not compress."""
    entries = []
    for i in range(lo, hi + 1):
        if i == 1:
            cmd = {"op": "add_range", "t": 1, "start": b"", "end": None, "s": sequencer.ZERO}
        else:
            value = tag.encode() + random.Random(i).randbytes(size)
            cmd = {"op": "put", "t": 1, "k": f"k{i:06d}".encode(), "v": value,
                   "s": sequencer.make(i, 0, 1), "c": None}
        entries.append((i, encode_command(cmd)))
    for start in range(0, len(entries), 500):
        engine.apply(entries[start:start + 500])


def node_dir(root: Path, applied: int, log_to: int, tag: str = "old") -> Path:
    """A node's data dir: index applied up to ``applied``, WAL entries 1..log_to (epoch 1)."""
    root.mkdir(parents=True)
    engine = open_rocks(root / "index")
    fill(engine, 1, applied, tag)
    engine.close()
    w = WAL.open(root / "wal")
    w.append([(1, i, b"e%d" % i) for i in range(1, log_to + 1)])
    w.sync()
    w.close()
    return root


def leader_snapshot(root: Path, entries: int = 3000) -> tuple[Path, snapshot.Manifest, str]:
    """A leader's checkpoint at ``entries``: (directory, manifest, content hash)."""
    root.mkdir(parents=True)
    engine = open_rocks(root / "index")
    fill(engine, 1, entries, "new")
    directory, index = snapshot.create(engine.checkpoint, root, seq=1)
    manifest = snapshot.describe(directory, index, 4)
    digest = engine.content_hash()
    engine.close()
    return directory, manifest, digest


def receive(data_dir: Path, directory: Path, manifest: snapshot.Manifest,
            chunk_bytes: int = 64 * 1024) -> Receiver:
    wire = Manifest.from_wire(manifest.to_wire())  # as it travels
    receiver = Receiver(data_dir, wire)
    for chunk in snapshot.chunks(directory, manifest, chunk_bytes):
        receiver.write(chunk)
    receiver.finish()
    return receiver


# -- making, streaming, receiving ---------------------------------------------------------


def test_checkpoint_streamed_and_installed_is_the_same_state(tmp_path: Path) -> None:
    directory, manifest, digest = leader_snapshot(tmp_path / "leader")
    assert manifest.index == 3000 and manifest.epoch == 4
    assert manifest.total_bytes > 64 * 1024  # several chunks
    assert sorted(os.listdir(directory)) == [name for name, _, _ in manifest.files]
    follower = node_dir(tmp_path / "follower", applied=10, log_to=12)
    receive(follower, directory, manifest)
    assert checkpoint_applied_index(follower / snapshot.INCOMING_NAME) == 3000
    w = WAL.open(follower / "wal")
    snapshot.install(follower, 3000, 4, w)
    assert (w.first_index, w.last_index, w.last_epoch) == (3001, 3000, 4)
    w.close()
    engine = open_rocks(follower / "index")
    assert engine.applied_index == 3000 and engine.content_hash() == digest
    engine.close()
    assert sorted(os.listdir(follower)) == ["index", "wal"]
    snapshot.remove_outgoing(directory)
    assert not directory.exists()


def test_chunks_are_at_most_one_mebibyte_and_cover_every_byte(tmp_path: Path) -> None:
    directory, manifest, _ = leader_snapshot(tmp_path / "leader", entries=20000)
    got: dict[int, int] = {}
    for chunk in snapshot.chunks(directory, manifest):
        assert 0 < len(chunk.data) <= CHUNK_BYTES_MAX
        assert chunk.offset == got.get(chunk.file, 0)
        got[chunk.file] = chunk.offset + len(chunk.data)
    assert max(size for _, size, _ in manifest.files) > CHUNK_BYTES_MAX
    assert [got.get(i, 0) for i in range(len(manifest.files))] == [
        size for _, size, _ in manifest.files]


def test_memory_backend_checkpoint(tmp_path: Path) -> None:
    engine = StateMachine(MemoryBackend())
    fill(engine, 1, 50)
    assert engine.checkpoint(str(tmp_path / "cp")) == 50
    loaded = StateMachine(MemoryBackend.load(tmp_path / "cp"))
    assert loaded.applied_index == 50 and loaded.content_hash() == engine.content_hash()


def test_a_directory_without_a_state_machine_is_not_a_checkpoint(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    options = Options(raw_mode=True)
    options.create_if_missing(True)
    db = Rdict(str(tmp_path / "other"), options)
    db[b"x"] = b"y"
    db.close()
    with pytest.raises(StorageCorrupt, match="not a state machine checkpoint"):
        checkpoint_applied_index(tmp_path / "other")


# -- refusing bad input -------------------------------------------------------------------


def small_manifest(tmp_path: Path) -> tuple[Path, Manifest]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.sst").write_bytes(b"A" * 1000)
    (src / "b").write_bytes(b"B" * 10)
    (src / "empty").write_bytes(b"")
    return src, snapshot.describe(src, 7, 2)


def test_bad_chunks_are_refused_and_change_nothing(tmp_path: Path) -> None:
    _, manifest = small_manifest(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    r = Receiver(dest, manifest)
    good = Chunk(0, 0, b"A" * 400, snapshot.crc32c.crc32c(b"A" * 400))

    def refused(chunk: Chunk, why: str) -> None:
        with pytest.raises(SnapshotInvalid, match=why):
            r.write(chunk)

    refused(Chunk(3, 0, b"x", snapshot.crc32c.crc32c(b"x")), "the snapshot has 3 files")
    refused(Chunk(-1, 0, b"x", snapshot.crc32c.crc32c(b"x")), "the snapshot has 3 files")
    refused(good._replace(crc=good.crc ^ 1), "checksum mismatch")
    refused(good._replace(offset=1), "at offset 1, expected 0")
    refused(good._replace(data=b""), "must carry")
    big = b"A" * (CHUNK_BYTES_MAX + 1)
    refused(Chunk(0, 0, big, snapshot.crc32c.crc32c(big)), "must carry")
    assert (dest / snapshot.INCOMING_NAME / "a.sst").read_bytes() == b""
    r.write(good)
    refused(good, "at offset 0, expected 400")  # a duplicate
    past = b"A" * 601
    refused(Chunk(0, 400, past, snapshot.crc32c.crc32c(past)), "runs past its size 1000")
    with pytest.raises(SnapshotInvalid, match="incomplete: a.sst has 400 of 1000"):
        r.finish()
    rest = b"A" * 600
    r.write(Chunk(0, 400, rest, snapshot.crc32c.crc32c(rest)))
    r.write(Chunk(1, 0, b"B" * 10, snapshot.crc32c.crc32c(b"B" * 10)))
    r.finish()
    assert (dest / snapshot.INCOMING_NAME / "a.sst").read_bytes() == b"A" * 1000
    assert (dest / snapshot.INCOMING_NAME / "empty").read_bytes() == b""


def test_a_staged_file_damaged_on_disk_fails_finish(tmp_path: Path) -> None:
    src, manifest = small_manifest(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    r = Receiver(dest, manifest)
    for chunk in snapshot.chunks(src, manifest):
        r.write(chunk)
    path = dest / snapshot.INCOMING_NAME / "a.sst"
    data = bytearray(path.read_bytes())
    data[500] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotInvalid, match="a.sst does not match its manifest"):
        r.finish()
    r.abort()
    assert not (dest / snapshot.INCOMING_NAME).exists()


def test_a_manifest_whose_digest_does_not_match_fails_finish(tmp_path: Path) -> None:
    src, manifest = small_manifest(tmp_path)
    lying = Manifest(manifest.index, manifest.epoch, manifest.files, "0" * 64)
    dest = tmp_path / "dest"
    dest.mkdir()
    r = Receiver(dest, lying)
    for chunk in snapshot.chunks(src, manifest):
        r.write(chunk)
    with pytest.raises(SnapshotInvalid, match="digest mismatch"):
        r.finish()


@pytest.mark.parametrize("change", [
    {"format": 2},
    {"index": -1},
    {"epoch": "1"},
    {"digest": "xyz"},
    {"files": []},
    {"files": [["../etc", 1, 1]]},
    {"files": [["a/b", 1, 1]]},
    {"files": [[".hidden", 1, 1]]},
    {"files": [["b", 1, 1], ["a", 1, 1]]},
    {"files": [["a", 1, 1], ["a", 1, 1]]},
    {"files": [["a", -1, 1]]},
    {"files": [["a", 1, 1 << 32]]},
    {"files": [["a", 1]]},
])
def test_malformed_manifests_are_refused(change: dict[str, Any]) -> None:
    raw = {"format": 1, "index": 5, "epoch": 1, "files": [["a", 1, 1]], "digest": "0" * 64}
    Manifest.from_wire(raw)
    with pytest.raises(SnapshotInvalid):
        Manifest.from_wire({**raw, **change})


# -- install, crashes, recovery -----------------------------------------------------------


class Crash(OSError):
    pass


class CrashingOS:
    """``os`` as snapshot.py, hardstate.py and wal.py see it, plus ``shutil.rmtree``: the
    ``at``-th change to the file system raises Crash, and so does every later one."""

    CHANGES = ("rename", "replace", "unlink", "rmdir", "pwrite", "write", "ftruncate", "mkdir")

    def __init__(self, at: int | None) -> None:
        self.at, self.count, self.crashed = at, 0, False

    def change(self, what: str) -> None:
        self.count += 1
        if self.crashed or (self.at is not None and self.count >= self.at):
            self.crashed = True
            raise Crash(f"crashed at {what}")

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name == "open":
            def opener(path: Any, flags: int, *args: Any) -> int:
                if flags & os.O_CREAT:
                    self.change(f"create {path}")
                return real(path, flags, *args)
            return opener
        if name in self.CHANGES:
            def change(*args: Any, **kwargs: Any) -> Any:
                self.change(f"{name} {args[0] if args else ''}")
                return real(*args, **kwargs)
            return change
        return real


@contextmanager
def crashing(monkeypatch: pytest.MonkeyPatch, at: int | None) -> Iterator[CrashingOS]:
    fake = CrashingOS(at)
    real_rmtree = shutil.rmtree
    real_fsync_dir = wal_module.fsync_dir

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        fake.change(f"rmtree {path}")
        real_rmtree(path, *args, **kwargs)

    def fsync_dir(directory: str) -> None:
        fake.change(f"fsync_dir {directory}")
        real_fsync_dir(directory)

    with monkeypatch.context() as m:
        for module in (snapshot, hardstate, wal_module):
            m.setattr(module, "os", fake)
            m.setattr(module, "fsync_dir", fsync_dir)
        m.setattr(snapshot.shutil, "rmtree", rmtree)
        yield fake


def test_crash_at_every_step_of_an_install(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    directory, manifest, new_digest = leader_snapshot(tmp_path / "leader", entries=500)
    outcomes = []
    at = 1
    while True:
        follower = node_dir(tmp_path / f"f{at}", applied=40, log_to=45)
        old_engine = open_rocks(follower / "index")
        old_digest = old_engine.content_hash()
        old_engine.close()
        receive(follower, directory, manifest)
        w = WAL.open(follower / "wal")
        w.sync()
        with crashing(monkeypatch, at) as fake:
            try:
                snapshot.install(follower, manifest.index, manifest.epoch, w)
                completed = True
            except Crash:
                completed = False
        w._close_fds()
        # Restart: open the log, recover, open the state machine.
        w = WAL.open(follower / "wal")
        recovered = snapshot.recover(follower, w)
        engine = open_rocks(follower / "index")
        state = (engine.applied_index, engine.content_hash(), w.first_index - 1, w.base_epoch,
                 w.last_index)
        engine.close()
        w.close()
        if state[0] == 500:
            assert state == (500, new_digest, 500, manifest.epoch, 500), (at, state)
            outcomes.append("new")
        else:
            assert not completed and recovered is None
            assert state == (40, old_digest, 0, 0, 45), (at, state)
            outcomes.append("old")
        # Nothing half made is left behind.
        assert sorted(os.listdir(follower)) == ["index", "wal"], (at, os.listdir(follower))
        if completed:
            assert not fake.crashed
            break
        at += 1
    assert outcomes[0] == "old" and "new" in outcomes and at > 8
    assert outcomes == sorted(outcomes, reverse=True)  # old ... old, new ... new


def test_recover_cleans_what_a_crash_left_half_made(tmp_path: Path) -> None:
    follower = node_dir(tmp_path / "f", applied=5, log_to=5)
    for name in (snapshot.INCOMING_NAME, snapshot.INDEX_OLD_NAME,
                 snapshot.OUTGOING_PREFIX + "3"):
        (follower / name).mkdir()
        (follower / name / "x").write_bytes(b"junk")
    (follower / (snapshot.MARKER_NAME + ".tmp")).write_bytes(b"half a marker")
    w = WAL.open(follower / "wal")
    assert snapshot.recover(follower, w) is None
    assert sorted(os.listdir(follower)) == ["index", "wal"]
    assert (w.first_index, w.last_index) == (1, 5)
    w.close()


def test_a_damaged_install_marker_is_corruption(tmp_path: Path) -> None:
    follower = node_dir(tmp_path / "f", applied=5, log_to=5)
    hardstate.save(follower / snapshot.MARKER_NAME, {"index": 9, "epoch": 1})
    data = bytearray((follower / snapshot.MARKER_NAME).read_bytes())
    data[-3] ^= 0x01
    (follower / snapshot.MARKER_NAME).write_bytes(bytes(data))
    w = WAL.open(follower / "wal")
    with pytest.raises(StorageCorrupt):
        snapshot.recover(follower, w)
    w.close()


def test_install_without_a_staged_snapshot_is_a_bug(tmp_path: Path) -> None:
    follower = node_dir(tmp_path / "f", applied=5, log_to=5)
    w = WAL.open(follower / "wal")
    with pytest.raises(AssertionError, match="nothing staged"):
        snapshot.install(follower, 9, 1, w)
    w.close()
