"""Whether this group's state machine may serve a data request on a key: the checks a node makes
before it proposes a write or answers a read (the log decides in the end: a write proposed on a
range that moved away meanwhile is refused when applied). Shared by the node server and the
simulator's nodes, which run the same rules."""

from __future__ import annotations

from typing import Protocol

from rangekv import errors
from rangekv.storage.engine import StateMachine


class HasEngine(Protocol):
    @property
    def engine(self) -> StateMachine: ...


def check_owned(replica: HasEngine, table_id: int, key: bytes) -> None:
    """Raise ``table_not_found`` or ``range_not_here`` (with this group's ranges) unless a range
    of the table here holds ``key``."""
    if not replica.engine.owns(table_id, key):
        raise replica.engine.not_here(table_id)


def check_writable(replica: HasEngine, table_id: int, key: bytes) -> None:
    """As :func:`check_owned`, and refuse a key whose range is fenced (moving away)."""
    if not replica.engine.writable(table_id, key):
        raise replica.engine.not_here(table_id, moving=replica.engine.owns(table_id, key))


def check_current(replica: HasEngine, table_id: int, key: bytes, as_source: bool) -> None:
    """Refuse a read of a range fenced here (moving away) unless the caller reads it as the
    move's source (``as_source``: its map shows the switch, and it asked the target first).
    A caller whose map predates the switch would read this copy as the live one while the
    target already takes newer writes: a stale read. Refused (``range_not_here``, ``moving``),
    it waits for the map and reads the target, then this source."""
    if not as_source and replica.engine.fenced(table_id, key):
        raise errors.RangeNotHere(
            "the range holding that key is moving away and its copy here may be stale: read "
            "it from the group it moves to (with this one as its source)", table_id=table_id,
            moving=True)


def check_complete(replica: HasEngine, table_id: int, key: bytes) -> None:
    """Refuse a plain read of a range still being copied here: alone it would miss what the
    source holds. The caller's map is older than the move (``range_not_here``, ``moving``):
    with the current one it reads both groups."""
    if replica.engine.importing(table_id, key):
        raise errors.RangeNotHere(
            "the range holding that key is being moved here: read it with versions, "
            "together with its source group", table_id=table_id, moving=True)


def check_base(replica: HasEngine, table_id: int, key: bytes, has_base: bool) -> None:
    """A delete or conditional put of a key not yet copied into a range being moved here
    needs the source's version (``base``); a caller without it routes by an older map."""
    if (not has_base and replica.engine.importing(table_id, key)
            and replica.engine.get_version(table_id, key) is None):
        raise errors.RangeNotHere(
            "the range holding that key is being moved here and the key is not copied yet: "
            "send the source group's version of it along", table_id=table_id, moving=True)
