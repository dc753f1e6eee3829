"""One table's ranges in start order, for routing at a million ranges (issue 6).

Invariants (asserted by ``check``; the unit tests run it after every change):

* ``_starts[i] is _ranges[i].start`` and ``_starts`` is strictly increasing: a lookup is one
  ``bisect`` on a plain list of bytes, compared in C, with no key function.
* One range per start. Overlaps are not refused: the map holds what etcd holds, event by event
  (a split writes its halves as two events; between them the map shows the old range and the
  new upper half). A lookup answers the range with the greatest start ``<= key`` if it holds
  the key, as the sorted list did before.

Memory (measured by ``rangekv bench routing``): a range costs its ``Range`` object (slots, 96
bytes), two list slots, and one key object: where a range's ``end`` equals its successor's
``start``, the inserted range is given the neighbour's bytes object (equal bytes, so no caller
can tell), so each split key is stored once instead of twice.

Cost: a lookup is O(log n); ``put``/``remove`` are O(log n) plus a memmove of the pointers after
the position (about 1 ms at a million ranges in the worst case, much less in practice); a put
after the last start (a load in etcd's key order, which is start order) is an append.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from rangekv.metadata.model import Range


def _share(rng: Range, field: str, value: object) -> None:
    """Give the freshly stored ``rng`` an equal, already-stored object for ``field`` (a key or
    the table id), so that the map keeps one copy. The values are equal and immutable, so this
    changes nothing any caller can observe; it is how a frozen dataclass sets its own fields."""
    object.__setattr__(rng, field, value)


class RangeMap(Sequence["Range"]):
    """A table's ``Range``s sorted by start: a read-only sequence (iterate, ``len``, index,
    slice) plus ``find`` by key, ``get`` by start, and in-place ``put`` and ``remove``."""

    __slots__ = ("_starts", "_ranges")

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._starts: list[bytes] = []
        self._ranges: list[Range] = []
        for rng in ranges:
            self.put(rng)

    # -- lookups (the rm's hot path) --------------------------------------------------------

    def find(self, key: bytes) -> Range | None:
        """The range holding ``key``, or None if no range does."""
        i = bisect_right(self._starts, key) - 1
        if i < 0:
            return None
        rng = self._ranges[i]
        end = rng.end
        return rng if end is None or key < end else None

    def get(self, start: bytes) -> Range | None:
        """The range starting exactly at ``start``."""
        i = bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start:
            return self._ranges[i]
        return None

    # -- changes (one watch event each) -----------------------------------------------------

    def put(self, rng: Range) -> None:
        """Store ``rng``, replacing the range with the same start if there is one."""
        starts, ranges = self._starts, self._ranges
        start, n = rng.start, len(starts)
        if n == 0 or start > starts[-1]:
            i, replacing = n, False  # the load path: etcd sends ranges in start order
        else:
            i = bisect_left(starts, start)
            replacing = starts[i] == start
        j = i + 1 if replacing else i  # the successor
        if type(start) is bytes:
            stored = starts[i] if replacing else ranges[i - 1].end if i > 0 else None
            if stored is not start and stored == start:
                _share(rng, "start", stored)
        if j < n and type(rng.end) is bytes and rng.end is not starts[j] and rng.end == starts[j]:
            _share(rng, "end", starts[j])
        neighbour = ranges[i - 1] if i > 0 else ranges[j] if j < n else None
        if neighbour is not None and neighbour.table_id is not rng.table_id \
                and neighbour.table_id == rng.table_id:
            _share(rng, "table_id", neighbour.table_id)  # ids above 256 are not cached by Python
        if replacing:
            starts[i], ranges[i] = rng.start, rng
        else:
            starts.insert(i, rng.start)
            ranges.insert(i, rng)

    def remove(self, start: bytes) -> Range | None:
        """Drop the range starting at ``start``; the range dropped, or None."""
        i = bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start:
            del self._starts[i]
            return self._ranges.pop(i)
        return None

    def check(self) -> None:
        """Assert the invariants (for tests; O(n))."""
        assert len(self._starts) == len(self._ranges), (len(self._starts), len(self._ranges))
        for i, (s, r) in enumerate(zip(self._starts, self._ranges, strict=True)):
            assert s is r.start, (i, s, r)
            assert i == 0 or self._starts[i - 1] < s, (i, self._starts[i - 1], s)

    # -- the read-only sequence -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[Range]:
        return iter(self._ranges)

    def __reversed__(self) -> Iterator[Range]:
        return reversed(self._ranges)

    @overload
    def __getitem__(self, i: int) -> Range: ...

    @overload
    def __getitem__(self, i: slice) -> list[Range]: ...

    def __getitem__(self, i: int | slice) -> Range | list[Range]:
        return self._ranges[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeMap):
            return self._ranges == other._ranges
        if isinstance(other, list | tuple):
            return self._ranges == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeMap({self._ranges!r})"


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
