"""Fuzz the WAL reader with damaged segment files (issue 4, item 5).

Whatever happens to the bytes on disk, opening the log either refuses it (``StorageCorrupt``)
or yields a prefix of exactly what was written: never an entry that was not written, never an
entry changed, never another exception, never an unbounded allocation or a hang.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.storage.wal import WAL, StorageCorrupt

RECORDS = [(1 + i // 7, i + 1, bytes([i % 251]) * (i * 13 % 90)) for i in range(40)]

mutation = st.one_of(
    st.tuples(st.just("overwrite"), st.integers(0, 10_000), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(b"")),
    st.tuples(st.just("append"), st.just(0), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
)


def _damage(path: Path, kind: str, pos: int, data: bytes | int) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if kind == "append":
            f.seek(0, os.SEEK_END)
            f.write(data)  # type: ignore[arg-type]
        elif size == 0:
            return
        elif kind == "truncate":
            f.truncate(pos % size)
        elif kind == "overwrite":
            f.seek(pos % size)
            f.write(data)  # type: ignore[arg-type]
        else:
            f.seek(pos % size)
            byte = f.read(1)[0]
            f.seek(pos % size)
            f.write(bytes([byte ^ (1 << int(data))]))  # type: ignore[arg-type]


@settings(max_examples=150)
@given(st.lists(st.tuples(st.integers(0, 100), mutation), min_size=1, max_size=3),
       st.sampled_from([512, 4096, 1 << 20]))
def test_damaged_log_is_refused_or_a_prefix_of_what_was_written(
        mutations: list[tuple[int, tuple]], segment_bytes_max: int) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "wal"
        wal = WAL.open(d, segment_bytes_max=segment_bytes_max)
        wal.append(RECORDS)
        wal.sync()
        wal.close()
        segments = sorted(p for p in d.iterdir() if p.suffix == ".wal")
        for which, (kind, pos, data) in mutations:
            _damage(segments[which % len(segments)], kind, pos, data)
        try:
            wal = WAL.open(d, segment_bytes_max=segment_bytes_max)
        except StorageCorrupt:
            return  # refused, and it says so: the controller replaces the node
        try:
            got = wal.entries(1, wal.last_index + 1) if wal.last_index else []
            assert [tuple(e) for e in got] == RECORDS[: len(got)], "not a prefix of the writes"
            # What remains is a working log: it takes the next entries.
            nxt = len(got) + 1
            epoch = got[-1][0] if got else 1
            wal.append([(epoch, nxt, b"after")])
            wal.sync()
        finally:
            wal.close()
