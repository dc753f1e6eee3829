"""The in-memory backend of the state machine, for tests and the simulator.

A dict plus a sorted list of its keys (bisect), so iteration is in bytewise key order like
RocksDB. Batches apply in order and all at once (nothing else runs in between).

To model RocksDB with its WAL off, the backend keeps the state as of the last ``flush()``:
``crash()`` reverts to it, losing the batches written since, exactly what a real crash may do.
The same ``MemoryBackend`` object can then be handed to a new ``StateMachine`` ("restart").
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence

import msgpack

from rangekv.storage.engine import MEMORY_DUMP_NAME, Op


class MemoryBackend:
    def __init__(self) -> None:
        self._items: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []  # sorted; the keys of _items
        self._durable: tuple[dict[bytes, bytes], list[bytes]] = ({}, [])

    def get(self, key: bytes) -> bytes | None:
        return self._items.get(key)

    def iterate(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        position = bisect.bisect_left(self._keys, lo)
        while position < len(self._keys):
            key = self._keys[position]
            if key >= hi:
                return
            yield key, self._items[key]
            position += 1

    def write(self, ops: Sequence[Op]) -> None:
        for kind, a, b in ops:
            if kind == "put":
                if a not in self._items:
                    bisect.insort(self._keys, a)
                self._items[a] = b
            elif kind == "del":
                if self._items.pop(a, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, a)]
            elif kind == "del_range":
                first = bisect.bisect_left(self._keys, a)
                last = bisect.bisect_left(self._keys, b, lo=first)
                for key in self._keys[first:last]:
                    del self._items[key]
                del self._keys[first:last]
            else:
                raise AssertionError(f"unknown backend op {kind!r}")
        assert len(self._keys) == len(self._items)

    def flush(self) -> None:
        self._durable = (dict(self._items), list(self._keys))

    def crash(self) -> None:
        """Lose every write since the last flush (what RocksDB without its WAL may lose)."""
        items, keys = self._durable
        self._items, self._keys = dict(items), list(keys)

    def checkpoint(self, path: str) -> None:
        """Write the whole state into a new directory (one msgpack file), as RocksDB's
        checkpoint does, flushing first (a RocksDB checkpoint flushes the memtable too)."""
        self.flush()
        os.mkdir(path)
        with open(os.path.join(path, MEMORY_DUMP_NAME), "wb") as f:
            f.write(msgpack.packb([[k, self._items[k]] for k in self._keys], use_bin_type=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MemoryBackend:
        """A backend holding a checkpoint's state, all of it durable."""
        with open(os.path.join(path, MEMORY_DUMP_NAME), "rb") as f:
            items = msgpack.unpackb(f.read(), raw=False)
        backend = cls()
        backend.write([("put", bytes(k), bytes(v)) for k, v in items])
        backend.flush()
        return backend

    def close(self) -> None:
        # The data stays: a new StateMachine over this backend is a clean restart.
        self.flush()
