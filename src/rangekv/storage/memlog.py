"""An in-memory log with a durable prefix: the ``LogStore`` the replication core reads, for
tests and scripted runs (the simulator uses the real WAL on a scratch disk).

``items`` is what was written; the first ``durable`` of them survive ``crash()``.
"""

from __future__ import annotations

from rangekv.replication.messages import Entry


class MemoryLog:
    def __init__(self) -> None:
        self.items: list[Entry] = []
        self.durable = 0

    @property
    def first_index(self) -> int:
        return 1

    @property
    def last_index(self) -> int:
        return len(self.items)

    def epoch_at(self, index: int) -> int:
        return 0 if index == 0 else self.items[index - 1].epoch

    def entries(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Entry]:
        """Entries lo <= index < hi: at least one, stopping once ``bytes_max`` is reached."""
        out: list[Entry] = []
        size = 0
        for e in self.items[lo - 1 : hi - 1]:
            if out and bytes_max is not None and size >= bytes_max:
                break
            out.append(e)
            size += len(e.payload)
        return out

    def append(self, entries: list[Entry]) -> None:
        for e in entries:
            assert e.index == len(self.items) + 1, (e.index, len(self.items))
            self.items.append(e)

    def truncate(self, from_index: int) -> None:
        """Cut every entry at or after ``from_index`` (durably, as the WAL does)."""
        del self.items[from_index - 1 :]
        self.durable = min(self.durable, from_index - 1)

    def make_durable(self, upto: int) -> None:
        self.durable = max(self.durable, min(upto, len(self.items)))

    def crash(self) -> list[Entry]:
        """Lose what was not durable; returns the lost entries."""
        lost = self.items[self.durable :]
        del self.items[self.durable :]
        return lost
