"""An in-memory log with a durable prefix: the ``LogStore`` the replication core reads, for
tests and scripted runs (the simulator uses the real WAL on a scratch disk).

``items`` is what was written after the base ``(base_index, base_epoch)`` (as in the WAL: the
log holds ``base_index + 1 .. last_index``); the entries up to ``durable`` survive ``crash()``.
``drop_prefix`` and ``reset`` are durable at once, as the WAL's are when they return.
"""

from __future__ import annotations

from rangekv.replication.messages import Entry


class MemoryLog:
    def __init__(self) -> None:
        self.items: list[Entry] = []
        self.base_index = 0
        self.base_epoch = 0
        self.durable = 0  # an index: entries up to it survive a crash

    @property
    def first_index(self) -> int:
        return self.base_index + 1

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.items)

    def epoch_at(self, index: int) -> int:
        if index == self.base_index:
            return self.base_epoch
        assert self.base_index < index <= self.last_index, (index, self.base_index)
        return self.items[index - self.base_index - 1].epoch

    def entries(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Entry]:
        """Entries lo <= index < hi: at least one, stopping once ``bytes_max`` is reached."""
        assert lo >= self.first_index, (lo, self.first_index)
        out: list[Entry] = []
        size = 0
        for e in self.items[lo - self.first_index : hi - self.first_index]:
            if out and bytes_max is not None and size >= bytes_max:
                break
            out.append(e)
            size += len(e.payload)
        return out

    def append(self, entries: list[Entry]) -> None:
        for e in entries:
            assert e.index == self.last_index + 1, (e.index, self.last_index)
            self.items.append(e)

    def truncate(self, from_index: int) -> None:
        """Cut every entry at or after ``from_index`` (durably, as the WAL does)."""
        assert from_index > self.base_index, (from_index, self.base_index)
        del self.items[from_index - self.first_index :]
        self.durable = min(self.durable, from_index - 1)

    def drop_prefix(self, index: int) -> None:
        """Make ``index`` (durable) the base, forgetting the entries up to it."""
        assert self.base_index <= index <= min(self.durable, self.last_index), (
            index, self.base_index, self.durable)
        if index > self.base_index:
            self.base_epoch = self.epoch_at(index)
            del self.items[: index - self.base_index]
            self.base_index = index

    def reset(self, base_index: int, base_epoch: int) -> None:
        """Empty the log under a new base (a snapshot was installed)."""
        assert base_index >= self.base_index, (base_index, self.base_index)
        self.items = []
        self.base_index, self.base_epoch = base_index, base_epoch
        self.durable = base_index

    def make_durable(self, upto: int) -> None:
        self.durable = max(self.durable, min(upto, self.last_index))

    def crash(self) -> list[Entry]:
        """Lose what was not durable; returns the lost entries."""
        keep = max(self.durable - self.base_index, 0)
        lost = self.items[keep:]
        del self.items[keep:]
        return lost
