"""Moving a range from one replication group to another, live (docs/internals.md, "Moving a range").

The move of range R = [a, b) of table T from group S to group D is a sequence of idempotent
steps, each recorded in etcd before the next begins, so that the active meta (this one, or the
next after a failover) can always finish it from what etcd says:

1. **record** (``Range``: state moving, group S, target D): rms still route R to S.
2. **fence**: S replicates ``fence_range``: from then on S refuses writes to R
   (``range_not_here`` with ``moving``; the rm waits for the map to change and retries) and
   hands over H, a seq above every seq in R.
3. **prepare**: D replicates ``add_range`` of R as *importing* with seq H, so every seq D gives
   from then on is above H: D's writes win over every version S holds.
4. **switch** (state moving, group D, source S): rms write to D; a read asks D and, if D holds no
   record of the key (not copied yet), S, whose copy is final; a delete or a conditional put
   carries S's version of its key (``base``). Writes to R were refused only between 2 and 4:
   that is the write pause, measured and logged here.
5. **copy**: S's client sessions are merged into D's (a write S applied before the fence and
   retried now finds its result on D; D holds retries to R back until then), then pages of
   every record of R on S, tombstones included, are imported into D, which merges them by seq
   (the higher wins), so the copy may race with D's writes and may be repeated from the start
   after a failover.
6. **finish**: D replicates ``finish_import``; etcd: state active, group D, source S (rms
   route to D only).
7. **cleanup**: S replicates ``drop_range`` (its copy of R deleted: RocksDB delete-range); etcd:
   source cleared. The move is done.

If D cannot take R (step 3 fails within the budget), the move is abandoned: S unfences R and
the record goes back to active on S. After step 4 it only goes forward.

This module is the plan, pure: which step a range's record calls for next (``next_step``) and
the record each step writes. ``rangekv.metadata.mover`` performs the steps against the groups
and etcd; the planner resumes every move etcd shows unfinished on each tick (``ResumeMove``).
"""


from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from rangekv.model import RANGE_ACTIVE, RANGE_MOVING, ClusterView, Range

EXPORT_PAGE_KEYS = 1000  # records per page copied from S to D (step 5)

# The steps, as ``next_step`` names them.
FENCE_AND_SWITCH = "fence_and_switch"  # steps 2-4
COPY_AND_FINISH = "copy_and_finish"  # steps 5-6
CLEANUP = "cleanup"  # step 7


def moving(rng: Range) -> bool:
    """The range's move is unfinished (any phase, cleanup included)."""
    return rng.state == RANGE_MOVING or rng.source is not None


def next_step(rng: Range) -> str | None:
    """The step the range's record calls for next; None once the move is done (or none)."""
    if rng.state == RANGE_MOVING and rng.target is not None:
        return FENCE_AND_SWITCH
    if rng.state == RANGE_MOVING:
        return COPY_AND_FINISH
    if rng.source is not None:
        return CLEANUP
    return None


def unfinished(view: ClusterView) -> Iterator[Range]:
    """Every range whose move etcd shows unfinished, in table and key order."""
    # ``moving`` inlined: every range is read on every tick
    state = RANGE_MOVING
    for tid in sorted(view.ranges):
        for rng in view.ranges[tid]:
            if rng.state == state or rng.source is not None:
                yield rng


def started(rng: Range, to: int) -> Range:
    """Step 1: the record of a range about to move to group ``to``."""
    assert not moving(rng) and rng.group != to, (rng, to)
    return replace(rng, state=RANGE_MOVING, target=to, version=rng.version + 1)


def switched(rng: Range) -> Range:
    """Step 4: writes go to the target, reads fall back to the source."""
    assert next_step(rng) == FENCE_AND_SWITCH and rng.target != rng.group, rng
    return replace(rng, group=rng.target, source=rng.group, target=None, version=rng.version + 1)


def abandoned(rng: Range) -> Range:
    """The target could not take the range (before step 4): it stays where it was."""
    assert next_step(rng) == FENCE_AND_SWITCH, rng
    return replace(rng, state=RANGE_ACTIVE, target=None, version=rng.version + 1)


def copied(rng: Range) -> Range:
    """Step 6: the target alone serves the range; the source still holds its copy."""
    assert next_step(rng) == COPY_AND_FINISH, rng
    return replace(rng, state=RANGE_ACTIVE, version=rng.version + 1)


def cleaned(rng: Range) -> Range:
    """Step 7: the source dropped its copy; the move is done."""
    assert next_step(rng) == CLEANUP, rng
    return replace(rng, source=None, version=rng.version + 1)


def missed_splits(rng: Range, table_ranges: Iterable[Range]) -> list[bytes]:
    """Where the source must cut its range before it is fenced: it may have missed a split
    that etcd records (a meta crashed in between), so the fence would name a range the source
    does not have. A cut where a neighbour of ``rng`` is also on the source (idempotent)."""
    src = rng.group
    cuts = []
    for neighbour in table_ranges:
        if neighbour.group == src and neighbour.end == rng.start:
            cuts.append(rng.start)
        elif neighbour.group == src and neighbour.start == rng.end and rng.end is not None:
            cuts.append(rng.end)
    return cuts
