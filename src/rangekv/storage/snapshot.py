"""Snapshots of the state machine: made on the leader, streamed in chunks, installed on a follower.

Pure file logic: no networking and no replication decisions (the driver and the core make
those). A snapshot is a checkpoint of the state machine (RocksDB's: hard links to its SST files
plus copies of its small files) at the applied index ``index`` whose log entry has ``epoch``,
described by a :class:`Manifest`: every file's name, size and crc32c, and a sha256 ``digest``
over all of them.

Files in a node's data directory::

    index/                 the state machine (RocksDB)
    snapshot.out-N/        a checkpoint being sent to followers (removed once sent)
    snapshot.incoming/     the snapshot being received (the staging directory)
    snapshot-install       the install marker: {"index", "epoch"} (hardstate format)
    index.old/             the replaced state machine, during an install

Receiving (:class:`Receiver`): chunks of at most ``CHUNK_BYTES_MAX`` bytes arrive for one file at
a time, each with its crc32c; a chunk is refused (``SnapshotInvalid``, nothing written) unless it
continues its file exactly where the last one ended, stays within the file's size and matches its
checksum. ``finish`` then re-reads every file from disk and checks its size, its crc32c and the
digest, and fsyncs each file, the staging directory and the data directory.

Installing (:func:`install`) is all or nothing across a crash, with a redo marker:

1. write ``snapshot-install`` (index, epoch) durably: the point of no return (the staging
   directory was verified and made durable before);
2. rename ``index`` to ``index.old``, fsync the directory, rename ``snapshot.incoming`` to
   ``index``, fsync the directory;
3. reset the log: empty, with the base (index, epoch) (``WAL.reset``, durable);
4. remove ``index.old``; remove the marker and fsync the directory.

:func:`recover`, run on every start right after the WAL is opened and before the state machine
is, redoes steps 2–4 if the marker is there (each step checks what is already done), and
otherwise removes whatever a crash left half made (staging, outgoing checkpoints, ``index.old``).
Between steps 1 and 4 the node's state machine and log therefore never disagree after a
restart: without the marker, both are the old ones; with it, both become the snapshot's.
The caller closes the state machine before ``install`` and opens it again after.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import crc32c

from rangekv import errors, perms
from rangekv.storage import hardstate
from rangekv.storage.wal import WAL, StorageCorrupt, fsync_dir, sync_file

CHUNK_BYTES_MAX = 1024 * 1024
MANIFEST_FORMAT = 1
FILES_MAX = 100_000
INDEX_NAME = "index"
INDEX_OLD_NAME = "index.old"
INCOMING_NAME = "snapshot.incoming"
OUTGOING_PREFIX = "snapshot.out-"
MARKER_NAME = "snapshot-install"
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_READ_BYTES = 4 * 1024 * 1024


class SnapshotInvalid(errors.RangeKVError):
    """A snapshot chunk or manifest failed a check (nothing of it was written or kept)."""

    code = "snapshot_invalid"
    status = 400


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds: the state up to ``index`` (whose entry has ``epoch``)."""

    index: int
    epoch: int
    files: tuple[tuple[str, int, int], ...]  # (name, size in bytes, crc32c), sorted by name
    digest: str  # sha256 (hex) over every file: name, size, content, in order

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.files)

    def to_wire(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "index": self.index, "epoch": self.epoch,
                "files": [list(f) for f in self.files], "digest": self.digest}

    @staticmethod
    def from_wire(raw: Any) -> Manifest:
        """Decode and check a manifest; raises SnapshotInvalid."""
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise SnapshotInvalid(f"snapshot manifest must be a map of format {MANIFEST_FORMAT}")
        index, epoch, files, digest = (raw.get(k) for k in ("index", "epoch", "files", "digest"))
        if not (_uint(index) and _uint(epoch) and isinstance(files, list)
                and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise SnapshotInvalid("malformed snapshot manifest")
        if not 1 <= len(files) <= FILES_MAX:
            raise SnapshotInvalid(f"a snapshot has 1..{FILES_MAX} files, not {len(files)}")
        out = []
        for f in files:
            if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
                    and _FILE_NAME_RE.fullmatch(f[0]) and _uint(f[1]) and _uint(f[2])
                    and f[2] <= 0xFFFFFFFF):
                raise SnapshotInvalid(f"malformed snapshot file entry {str(f)[:200]}")
            out.append((f[0], f[1], f[2]))
        names = [f[0] for f in out]
        if names != sorted(set(names)):
            raise SnapshotInvalid("snapshot file names must be unique and sorted")
        return Manifest(index, epoch, tuple(out), digest)


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 64)


class Chunk(NamedTuple):
    file: int  # position in the manifest's files
    offset: int
    data: bytes
    crc: int  # crc32c of data


def describe(directory: str | os.PathLike[str], index: int, epoch: int) -> Manifest:
    """The manifest of the snapshot whose files are in ``directory`` (read whole)."""
    digest = hashlib.sha256()
    files = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or not _FILE_NAME_RE.fullmatch(name):
            raise StorageCorrupt(f"unexpected entry {name!r} in snapshot {directory}")
        size, crc = _digest_file(path, name, digest)
        files.append((name, size, crc))
    return Manifest(index, epoch, tuple(files), digest.hexdigest())


def _digest_file(path: str, name: str, digest: Any) -> tuple[int, int]:
    """(size, crc32c) of a file, fed into ``digest`` as name, size, content."""
    size = os.path.getsize(path)
    digest.update(len(name).to_bytes(2, "big") + name.encode() + size.to_bytes(8, "big"))
    crc = 0
    read = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            crc = crc32c.crc32c(block, crc)
            digest.update(block)
            read += len(block)
    if read != size:
        raise StorageCorrupt(f"{path} changed size while being read")
    return size, crc


def create(
    checkpoint: Callable[[str], int], data_dir: str | os.PathLike[str], seq: int
) -> tuple[Path, int]:
    """Make a snapshot to send: ``checkpoint(path)`` copies the state machine into the new
    directory ``snapshot.out-<seq>`` and returns the applied index the copy holds. Returns the
    directory and that index (``describe`` it once its epoch is known)."""
    directory = Path(data_dir) / f"{OUTGOING_PREFIX}{seq}"
    if directory.exists():
        shutil.rmtree(directory)
    return directory, checkpoint(str(directory))


def chunks(directory: str | os.PathLike[str], manifest: Manifest,
           chunk_bytes: int = CHUNK_BYTES_MAX) -> Iterator[Chunk]:
    """The chunks of a snapshot in order, read lazily (files are immutable while sent: SST
    files never change, and the checkpoint's own copies are ours alone)."""
    assert 1 <= chunk_bytes <= CHUNK_BYTES_MAX, chunk_bytes
    for position, (name, size, _) in enumerate(manifest.files):
        with open(os.path.join(directory, name), "rb") as f:
            offset = 0
            while offset < size:
                data = f.read(min(chunk_bytes, size - offset))
                if not data:
                    raise StorageCorrupt(f"{name} in {directory} is shorter than its manifest")
                yield Chunk(position, offset, data, crc32c.crc32c(data))
                offset += len(data)


def remove_outgoing(directory: str | os.PathLike[str]) -> None:
    shutil.rmtree(directory, ignore_errors=True)


class Receiver:
    """Writes one snapshot's chunks into ``snapshot.incoming`` (replacing any left there)."""

    def __init__(self, data_dir: str | os.PathLike[str], manifest: Manifest) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = manifest
        self.staging = self.data_dir / INCOMING_NAME
        self.received = [0] * len(manifest.files)
        self.finished = False
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(mode=perms.DIR_MODE)  # a checkpoint's files are data: 0700, 0600
        for name, _, _ in manifest.files:
            (self.staging / name).touch(mode=perms.FILE_MODE, exist_ok=False)

    def write(self, chunk: Chunk) -> None:
        """Write one chunk after checking it; raises SnapshotInvalid (and writes nothing)."""
        assert not self.finished
        files = self.manifest.files
        if not (isinstance(chunk.file, int) and 0 <= chunk.file < len(files)):
            raise SnapshotInvalid(f"chunk for file {chunk.file!r}: the snapshot has "
                                  f"{len(files)} files")
        name, size, _ = files[chunk.file]
        if not isinstance(chunk.data, bytes) or not 0 < len(chunk.data) <= CHUNK_BYTES_MAX:
            raise SnapshotInvalid(f"chunk of {name} must carry 1..{CHUNK_BYTES_MAX} bytes")
        if chunk.offset != self.received[chunk.file]:
            raise SnapshotInvalid(f"chunk of {name} at offset {chunk.offset}, expected "
                                  f"{self.received[chunk.file]}")
        if chunk.offset + len(chunk.data) > size:
            raise SnapshotInvalid(f"chunk of {name} runs past its size {size}")
        if crc32c.crc32c(chunk.data) != chunk.crc:
            raise SnapshotInvalid(f"chunk of {name} at offset {chunk.offset}: checksum mismatch")
        fd = os.open(self.staging / name, os.O_WRONLY)
        try:
            view = memoryview(chunk.data)
            offset = chunk.offset
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        finally:
            os.close(fd)
        self.received[chunk.file] += len(chunk.data)

    def finish(self) -> None:
        """Check the whole snapshot as it is on disk and make it durable; SnapshotInvalid if a
        file is short or does not match the manifest."""
        for (name, size, _), got in zip(self.manifest.files, self.received, strict=True):
            if got != size:
                raise SnapshotInvalid(f"snapshot incomplete: {name} has {got} of {size} bytes")
        digest = hashlib.sha256()
        for name, size, crc in self.manifest.files:
            path = str(self.staging / name)
            got_size, got_crc = _digest_file(path, name, digest)
            if (got_size, got_crc) != (size, crc):
                raise SnapshotInvalid(f"snapshot file {name} does not match its manifest")
            fd = os.open(path, os.O_RDONLY)
            try:
                sync_file(fd, path, data_only=False)
            finally:
                os.close(fd)
        if digest.hexdigest() != self.manifest.digest:
            raise SnapshotInvalid("snapshot digest mismatch")
        fsync_dir(str(self.staging))
        fsync_dir(str(self.data_dir))
        self.finished = True

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def install(data_dir: str | os.PathLike[str], index: int, epoch: int, wal: WAL,
            step: Callable[[str], None] | None = None) -> None:
    """Make the verified ``snapshot.incoming`` the state machine and empty the log under the
    base (index, epoch), all or nothing across a crash (see the module docstring). The state
    machine must be closed. ``step(name)`` is called after each durable step (the simulator
    crashes there)."""
    directory = Path(data_dir)
    assert (directory / INCOMING_NAME).is_dir(), "nothing staged to install"
    hardstate.save(directory / MARKER_NAME, {"index": index, "epoch": epoch})
    if step is not None:
        step("marker")
    _roll_forward(directory, index, epoch, wal, step)


def recover(data_dir: str | os.PathLike[str], wal: WAL) -> tuple[int, int] | None:
    """On start (after the WAL is opened, before the state machine): finish an install that a
    crash interrupted, returning its (index, epoch), else None; then remove what a crash left
    half made. Raises StorageCorrupt if the marker does not verify or cannot be finished."""
    directory = Path(data_dir)
    marker = hardstate.load(directory / MARKER_NAME)
    done = None
    if marker:
        index, epoch = marker.get("index"), marker.get("epoch")
        if not (_uint(index) and _uint(epoch)):
            raise StorageCorrupt(f"{directory / MARKER_NAME}: malformed install marker")
        if not (directory / INCOMING_NAME).is_dir() and not (directory / INDEX_NAME).is_dir():
            raise StorageCorrupt(f"{directory}: an install marker but no snapshot to install")
        _roll_forward(directory, index, epoch, wal, None)
        done = (index, epoch)
    for name in os.listdir(directory):
        if name in (INCOMING_NAME, INDEX_OLD_NAME) or name.startswith(OUTGOING_PREFIX):
            shutil.rmtree(directory / name, ignore_errors=True)
        elif name == MARKER_NAME + ".tmp":
            os.unlink(directory / name)  # a marker whose write did not finish: no install
    return done


def _roll_forward(directory: Path, index: int, epoch: int, wal: WAL,
                  step: Callable[[str], None] | None) -> None:
    """Steps 2-4 of an install; each one checks whether it was already done."""
    staging, current, old = (directory / INCOMING_NAME, directory / INDEX_NAME,
                             directory / INDEX_OLD_NAME)
    if staging.is_dir():
        if current.exists():
            if old.exists():
                shutil.rmtree(old)  # (cannot be this install's: staging is still there)
            os.rename(current, old)
            fsync_dir(str(directory))  # (each rename durable before the next: no reordering)
        os.rename(staging, current)
        fsync_dir(str(directory))
        if step is not None:
            step("swapped")
    if not (wal.first_index - 1 == index and wal.base_epoch == epoch
            and wal.last_index == index):
        wal.reset(index, epoch)
        if step is not None:
            step("log reset")
    if old.exists():
        shutil.rmtree(old)
    os.unlink(directory / MARKER_NAME)
    fsync_dir(str(directory))
    if step is not None:
        step("done")
