"""An in-memory log and disk with a durable prefix, for tests and scripted runs (the simulator
uses the real WAL on a scratch disk).

``MemoryLog`` is the ``LogStore`` the replication core reads. ``items`` is what was written
after the base ``(base_index, base_epoch)`` (as in the WAL: the log holds ``base_index + 1 ..
last_index``); the entries up to ``durable`` survive ``crash()``. ``drop_prefix`` and ``reset``
are durable at once, as the WAL's are when they return.

``MemoryDisk`` is the ``Disk`` the replication loop (``rangekv.replication.loop``) writes to: a
``MemoryLog`` and a hard state, whose fsyncs complete when the test says (``sync_next``, oldest
first) or at once (``immediate``). Everything a sync covers is what was written before it was
asked for; a crash loses the rest, the hard state included. (Its methods take plain values:
storage knows nothing of the loop that calls them.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rangekv.storage.entry import Entry


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


@dataclass
class PendingSync:
    """A sync asked for and not yet done."""

    done: Callable[[], None]  # the caller's completion, called once durable
    durable_upto: int  # the log prefix it makes durable (lowered by a later cut)
    hardstate: dict[str, int] | None  # the hard state written before it, if any


class MemoryDisk:
    def __init__(self, log: MemoryLog | None = None, hardstate: dict[str, int] | None = None,
                 *, immediate: bool = False) -> None:
        self.log = log if log is not None else MemoryLog()
        self.hardstate: dict[str, int] = dict(hardstate or {})  # durable
        self.immediate = immediate  # every sync completes as it is asked for
        self.pending: list[PendingSync] = []  # oldest first
        self._hardstate_written: dict[str, int] | None = None  # not yet synced
        self.syncs = 0  # completed

    # -- the replication loop's Disk ------------------------------------------------------------
    def save_hardstate(self, hardstate: dict[str, int]) -> None:
        self._hardstate_written = dict(hardstate)

    def truncate(self, from_index: int) -> None:
        self.log.truncate(from_index)
        for p in self.pending:
            # A sync asked for before the cut must not make what replaced the cut entries
            # durable: those were written after it.
            p.durable_upto = min(p.durable_upto, from_index - 1)

    def append(self, entries: list[Entry]) -> None:
        self.log.append(entries)

    def compact(self, index: int) -> None:
        self.log.drop_prefix(index)

    def sync(self, done: Callable[[], None]) -> None:
        p = PendingSync(done, self.log.last_index, self._hardstate_written)
        self._hardstate_written = None
        if self.immediate:
            self._complete(p)
        else:
            self.pending.append(p)

    # -- the test's side ------------------------------------------------------------------------
    def sync_next(self) -> PendingSync | None:
        """Complete the oldest pending sync (None if there is none)."""
        if not self.pending:
            return None
        p = self.pending.pop(0)
        self._complete(p)
        return p

    def _complete(self, p: PendingSync) -> None:
        self.log.make_durable(p.durable_upto)
        if p.hardstate is not None:
            self.hardstate = p.hardstate
        self.syncs += 1
        p.done()

    def crash(self) -> tuple[list[Entry], bool]:
        """Lose everything no completed sync covers: (the entries lost, whether a hard state
        was lost). Pending syncs never complete."""
        hard_lost = self._hardstate_written is not None or any(
            p.hardstate is not None for p in self.pending)
        self.pending = []
        self._hardstate_written = None
        return self.log.crash(), hard_lost
