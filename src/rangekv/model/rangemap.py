"""One table's ranges in start order, for routing at a million ranges (issue 6).

A ``RangeMap`` is a list of blocks, each a sorted run of at most ``BLOCK_MAX`` ranges, with
a directory of copies of the blocks' first starts. A lookup bisects the directory, then one
block: both plain lists of bytes, compared in C with no key function.

Why: at a million ranges one bisect of one list reads ~20 keys scattered over ~64 MB of heap,
and its deep steps miss the caches and the TLB; lookups cost 4-5 us here, mostly waiting for
memory. The directory holds ~1/32 of the keys as *copies made together* (so they sit next to
each other in a few MB that stay cached), and a block's keys were allocated next to each other
(one page or two). Copies made one at a time, as blocks split, land anywhere: once an eighth of
the directory is such, it is copied again as a whole (``_maybe_pack``; amortized O(1) per change). A
change touches one block: a memmove of at most ``BLOCK_MAX`` pointers, not of up to a million.

Invariants (``check`` asserts them; the unit tests run it after every change):

* no block is empty or longer than ``BLOCK_MAX``; ``_firsts[d] == _starts[d][0]``;
  ``_starts[d][k] is _ranges[d][k].start``; starts strictly increase across all blocks;
  ``_len`` is the number of ranges.
* One range per start. Overlaps are not refused: the map holds what etcd holds, event by event
  (a split writes its halves as two events; between them the map shows the old range and the
  new upper half). A lookup answers the range with the greatest start ``<= key`` if it holds
  the key, as the sorted list did before.

Memory (measured by ``rangekv bench routing``): a range costs its ``Range`` object (slots, 96
bytes), two list slots, a share of its block, and one key object: where a range's ``end``
equals its successor's ``start``, the stored range is given the neighbour's bytes object (equal
bytes, so no caller can tell), so each split key is stored once instead of twice.

Positional access (``m[i]``) bisects cumulative block sizes, rebuilt after a change (O(n /
BLOCK_MAX)); iteration, ``find``, ``get``, ``put`` and ``remove`` never need it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from rangekv.model import Range


def _share(rng: Range, field: str, value: object) -> None:
    """Give the freshly stored ``rng`` an equal, already-stored object for ``field`` (a key or
    the table id), so that the map keeps one copy. The values are equal and immutable, so this
    changes nothing any caller can observe; it is how a frozen dataclass sets its own fields."""
    object.__setattr__(rng, field, value)


def _copy(key: bytes) -> bytes:
    """A new bytes object equal to ``key`` (``bytes(key)`` would return ``key`` itself)."""
    return bytes(memoryview(key))


class RangeMap(Sequence["Range"]):
    """A table's ``Range``s sorted by start: a read-only sequence (iterate, ``len``, index,
    slice) plus ``find`` by key, ``get`` by start, and in-place ``put`` and ``remove``."""

    BLOCK_MAX = 64  # a block splits in halves above this
    LOOSE_FRACTION = 8  # repack the directory once 1/8 of its copies were made one by one
    LOOSE_MIN = 64  # ... and more than this many (a small directory stays cached anyway)
    __slots__ = ("_firsts", "_starts", "_ranges", "_len", "_offsets", "_loose")

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._firsts: list[bytes] = []  # a copy of the first start of each block
        self._starts: list[list[bytes]] = []  # each block's starts
        self._ranges: list[list[Range]] = []  # each block's ranges
        self._len = 0
        self._offsets: list[int] | None = None  # index of each block's first range
        self._loose = 0  # directory copies made one by one since the last repack
        for rng in ranges:
            self.put(rng)

    # -- lookups (the rm's hot path) --------------------------------------------------------

    def find(self, key: bytes) -> Range | None:
        """The range holding ``key``, or None if no range does."""
        d = bisect_right(self._firsts, key) - 1
        if d < 0:
            return None
        rng = self._ranges[d][bisect_right(self._starts[d], key) - 1]
        end = rng.end
        return rng if end is None or key < end else None

    def get(self, start: bytes) -> Range | None:
        """The range starting exactly at ``start``."""
        d = bisect_right(self._firsts, start) - 1
        if d < 0:
            return None
        starts = self._starts[d]
        k = bisect_left(starts, start)
        return self._ranges[d][k] if k < len(starts) and starts[k] == start else None

    # -- changes (one watch event each) -----------------------------------------------------

    def put(self, rng: Range) -> None:
        """Store ``rng``, replacing the range with the same start if there is one."""
        start, firsts = rng.start, self._firsts
        if not firsts:
            self._firsts, self._starts, self._ranges = [_copy(start)], [[start]], [[rng]]
            self._len, self._offsets = 1, None
            return
        last = self._starts[-1]
        if start > last[-1]:  # the load path: etcd sends ranges in start order
            d, k, replacing = len(firsts) - 1, len(last), False
        else:
            d = max(0, bisect_right(firsts, start) - 1)
            starts = self._starts[d]
            k = bisect_left(starts, start)
            replacing = k < len(starts) and starts[k] == start
        self._share_with_neighbours(rng, d, k, replacing)
        starts, ranges = self._starts[d], self._ranges[d]
        if replacing:
            starts[k], ranges[k] = rng.start, rng
            return
        starts.insert(k, rng.start)
        ranges.insert(k, rng)
        if k == 0:
            firsts[d] = self._loose_copy(start)
        self._len += 1
        self._offsets = None
        if len(starts) > self.BLOCK_MAX:
            self._split(d)
        self._maybe_pack()

    def remove(self, start: bytes) -> Range | None:
        """Drop the range starting at ``start``; the range dropped, or None."""
        d = bisect_right(self._firsts, start) - 1
        if d < 0:
            return None
        starts, ranges = self._starts[d], self._ranges[d]
        k = bisect_left(starts, start)
        if k == len(starts) or starts[k] != start:
            return None
        del starts[k]
        rng = ranges.pop(k)
        self._len -= 1
        self._offsets = None
        if not starts:
            del self._firsts[d], self._starts[d], self._ranges[d]
            return rng
        if k == 0:
            self._firsts[d] = self._loose_copy(starts[0])
        if len(starts) <= self.BLOCK_MAX // 4 and len(self._starts) > 1:
            # Join a small block with a neighbour, so that deletes do not leave many tiny blocks
            # (a directory as long as the map); the join splits again if it is too long.
            d = d if d + 1 < len(self._starts) else d - 1
            self._starts[d] += self._starts.pop(d + 1)
            self._ranges[d] += self._ranges.pop(d + 1)
            del self._firsts[d + 1]
            if len(self._starts[d]) > self.BLOCK_MAX:
                self._split(d)
        self._maybe_pack()
        return rng

    def _split(self, d: int) -> None:
        starts, ranges = self._starts[d], self._ranges[d]
        half = len(starts) // 2
        self._firsts.insert(d + 1, self._loose_copy(starts[half]))
        self._starts.insert(d + 1, starts[half:])
        self._ranges.insert(d + 1, ranges[half:])
        del starts[half:], ranges[half:]

    def _loose_copy(self, key: bytes) -> bytes:
        """A directory copy of ``key`` made alone (counted: see ``_maybe_pack``)."""
        self._loose += 1
        return _copy(key)

    def _maybe_pack(self) -> None:
        """Once many directory copies were made one by one, copy the whole directory at once,
        so that its keys sit together in memory again (after a change, never during one)."""
        if self._loose * self.LOOSE_FRACTION > len(self._firsts) + self.LOOSE_MIN:
            self._firsts = [_copy(starts[0]) for starts in self._starts]
            self._loose = 0

    def _share_with_neighbours(self, rng: Range, d: int, k: int, replacing: bool) -> None:
        """Before ``rng`` is stored at block ``d``, position ``k``: give it the stored objects
        equal to its start (the one it replaces, or its predecessor's end), its end (its
        successor's start) and its table id, so that the map keeps one of each."""
        starts, ranges = self._starts[d], self._ranges[d]
        prev = ranges[k - 1] if k > 0 else self._ranges[d - 1][-1] if d > 0 else None
        start = rng.start
        if type(start) is bytes:
            stored = starts[k] if replacing else prev.end if prev is not None else None
            if stored is not start and stored == start:
                _share(rng, "start", stored)
        j = k + 1 if replacing else k  # the successor's position
        succ = starts[j] if j < len(starts) else \
            self._starts[d + 1][0] if d + 1 < len(self._starts) else None
        end = rng.end
        if succ is not None and type(end) is bytes and end is not succ and end == succ:
            _share(rng, "end", succ)
        other = prev if prev is not None else ranges[0]
        if other.table_id is not rng.table_id and other.table_id == rng.table_id:
            _share(rng, "table_id", other.table_id)  # ids above 256 are not cached by Python

    def check(self) -> None:
        """Assert the invariants (for tests; O(n))."""
        assert len(self._firsts) == len(self._starts) == len(self._ranges), self
        assert self._len == sum(map(len, self._starts)), (self._len, self)
        previous: bytes | None = None
        for first, starts, ranges in zip(self._firsts, self._starts, self._ranges, strict=True):
            assert 0 < len(starts) <= self.BLOCK_MAX and len(starts) == len(ranges), self
            assert first == starts[0] and type(first) is bytes, (first, starts)
            for s, r in zip(starts, ranges, strict=True):
                assert s is r.start, (s, r)
                assert previous is None or previous < s, (previous, s)
                previous = s

    # -- the read-only sequence -------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Range]:
        return chain.from_iterable(self._ranges)

    def __reversed__(self) -> Iterator[Range]:
        return chain.from_iterable(reversed(b) for b in reversed(self._ranges))

    @overload
    def __getitem__(self, i: int) -> Range: ...

    @overload
    def __getitem__(self, i: slice) -> list[Range]: ...

    def __getitem__(self, i: int | slice) -> Range | list[Range]:
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("RangeMap index out of range")
        offsets = self._offsets
        if offsets is None:
            offsets = self._offsets = [0, *accumulate(map(len, self._ranges[:-1]))]
        d = bisect_right(offsets, i) - 1
        return self._ranges[d][i - offsets[d]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeMap | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeMap({list(self)!r})"


class TableRanges(dict[int, RangeMap]):
    """``ClusterView.ranges``: table id -> its ``RangeMap``. Assigning any iterable of ranges
    (``view.ranges[t] = [Range(...), ...]``, as tests and a static view source do) stores a
    ``RangeMap`` of them, so every value answers ``find``."""

    def __setitem__(self, table_id: int, ranges: Iterable[Range]) -> None:
        if not isinstance(ranges, RangeMap):
            ranges = RangeMap(ranges)
        super().__setitem__(table_id, ranges)

    def setdefault(self, table_id: int, default: Any = None) -> RangeMap:
        if table_id not in self:
            self[table_id] = () if default is None else default
        return self[table_id]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for table_id, ranges in dict(*args, **kwargs).items():
            self[table_id] = ranges
