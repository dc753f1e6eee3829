"""Snapshots: what one costs, step by step, for a state machine of a given size.

    .venv/bin/python bench/snapshot.py [--mib 64] [--value-bytes 1024] [--dir /tmp]

Fills a RocksDB state machine (through ``StateMachine.apply``, values that do not compress)
with about ``--mib`` MiB, then times what the leader and a follower do for one snapshot, with
the real code of ``storage/snapshot.py`` and the driver's wire framing (no sockets):

* checkpoint (RocksDB flush of the memtable + hard links), and how long another thread (the
  event loop, when the driver takes it in a worker thread) could not run meanwhile;
* manifest (reading every file for its crc32c and the sha256);
* chunks read, framed as ``snapshot_chunk`` requests (``wire.encode``) and decoded;
* receive (checked writes), finish (re-read, verify, fsync), install (marker, swap, WAL reset);
* reopen of the installed state machine, and a content hash check against the source.

A program that prints figures, never a timed assertion. Everything is in a scratch directory
that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from rangekv import sequencer, wire
from rangekv.storage import snapshot
from rangekv.storage.engine import StateMachine, encode_command, open_rocks
from rangekv.storage.wal import WAL


def fill(path: Path, mib: int, value_bytes: int) -> tuple[StateMachine, int]:
    """The state machine, left open with its last writes in the memtable (as a live node's)."""
    engine = open_rocks(path)
    count = mib * 1024 * 1024 // value_bytes
    engine.apply([(1, encode_command({"op": "add_range", "t": 1, "start": b"", "end": None,
                                      "s": sequencer.ZERO}))])
    index = 1
    for start in range(0, count, 1000):
        batch = []
        for i in range(start, min(start + 1000, count)):
            index += 1
            batch.append((index, encode_command({
                "op": "put", "t": 1, "k": b"k%09d" % i, "v": os.urandom(value_bytes),
                "s": sequencer.make(index, 0, 1), "c": None})))
        engine.apply(batch)
    return engine, index


def stalled(fn: object) -> tuple[float, float]:
    """(seconds fn took in a worker thread, longest gap of a 1 ms ticker in this thread)."""
    result: list[float] = []

    def run() -> None:
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        result.append(time.perf_counter() - t)

    worker = threading.Thread(target=run)
    worker.start()
    gap, last = 0.0, time.perf_counter()
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    worker.join()
    return result[0], gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="scratch parent directory (default: tmp)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rangekv-bench-snapshot-", dir=args.dir))
    try:
        leader, follower = root / "leader", root / "follower"
        leader.mkdir()
        follower.mkdir()
        t = time.perf_counter()
        engine, index = fill(leader / "index", args.mib, args.value_bytes)
        print(f"filled {index} entries in {time.perf_counter() - t:.1f} s")
        out: dict[str, object] = {}

        def take() -> None:
            out["cp"] = snapshot.create(engine.checkpoint, leader, 1)

        took, gap = stalled(take)
        directory, at = out["cp"]  # type: ignore[misc]
        print(f"checkpoint at {at}: {took * 1000:.0f} ms; the caller's thread stalled up to "
              f"{gap * 1000:.0f} ms")
        t = time.perf_counter()
        manifest = snapshot.describe(directory, at, 1)
        mib = manifest.total_bytes / 2**20
        print(f"manifest: {len(manifest.files)} files, {mib:.1f} MiB, "
              f"{time.perf_counter() - t:.2f} s")
        source_hash = engine.content_hash()
        engine.close()

        w = WAL.open(follower / "wal")
        w.append([(1, i, b"x") for i in range(1, 11)])
        w.sync()
        receiver = snapshot.Receiver(follower, snapshot.Manifest.from_wire(manifest.to_wire()))
        t = time.perf_counter()
        chunks = 0
        decoder = wire.FrameDecoder()
        for chunk in snapshot.chunks(directory, manifest):
            frame = wire.encode({"t": "req", "id": chunks, "op": "snapshot_chunk",
                                 "file": chunk.file, "offset": chunk.offset,
                                 "data": chunk.data, "crc": chunk.crc})
            (body,) = decoder.feed(frame)
            receiver.write(snapshot.Chunk(body["file"], body["offset"], body["data"],
                                          body["crc"]))
            chunks += 1
        streamed = time.perf_counter() - t
        print(f"streamed {chunks} chunks (framed, checked, written): {streamed:.2f} s, "
              f"{mib / streamed:.0f} MiB/s")
        t = time.perf_counter()
        receiver.finish()
        print(f"finish (re-read, verify, fsync): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        snapshot.install(follower, at, 1, w)
        print(f"install (marker, swap, WAL reset): {(time.perf_counter() - t) * 1000:.0f} ms")
        w.close()
        t = time.perf_counter()
        installed = open_rocks(follower / "index")
        print(f"reopen: {(time.perf_counter() - t) * 1000:.0f} ms; applied "
              f"{installed.applied_index}; same content: "
              f"{installed.content_hash() == source_hash}")
        installed.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
