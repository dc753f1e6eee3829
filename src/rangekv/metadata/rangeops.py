"""The range changes the active meta makes, over a ``Store`` and a way to tell a group's leader
(``Tell``): cut a range in two, merge two, record the start of a move. Each writes etcd with a
compare-and-swap and tells the group an idempotent op, so a retry after a failure anywhere
finishes the job. The meta's request handlers (``rangekv split``, ``rangekv move``) and its
control loop (automatic splits and merges) call these, and so does the simulator's meta
(``rangekv.sim.meta``), in simulated time: one code path for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rangekv import errors, model
from rangekv.controller import move
from rangekv.controller.split import MergePlan
from rangekv.metadata.store import Store
from rangekv.model import Range

CAS_ATTEMPTS_MAX = 8  # a compare-and-swap that lost a race is redone this often at most
Tell = Callable[..., Awaitable[dict[str, Any]]]  # (group, op, **fields) -> the leader's reply


async def holder(store: Store, table_id: int, key: bytes) -> tuple[Range, int]:
    """The range of the table holding ``key``, with its record's revision (for a CAS)."""
    ranges = await store.table_ranges_revs(table_id)
    found = [(r, rev) for r, rev in ranges if r.contains(key)]
    if len(found) != 1:
        # etcd's records are checked, not trusted: the ranges of a table must tile its keys
        raise errors.Unavailable(f"table {table_id}: {len(found)} ranges hold key {key!r} "
                                 "in etcd (they must tile the table's keys)", table=table_id)
    return found[0]


async def cut_range(store: Store, tell: Tell, table_id: int, at: bytes
                    ) -> tuple[Range, int | None]:
    """Cut the range holding ``at`` in two at ``at``, both parts on its group: etcd first, then
    the group. The range that was cut and the revision of the cut (None: a range already
    started at ``at``, cut by an earlier attempt; the group is told again all the same)."""
    for _ in range(CAS_ATTEMPTS_MAX):
        rng, rev = await holder(store, table_id, at)
        if rng.state != model.RANGE_ACTIVE or rng.source is not None:
            raise errors.Unavailable("the range holding that key is being moved; split it "
                                     "once the move is done", table=table_id)
        if rng.start == at:
            revision = None
            break
        revision = await store.split_range(rng, rev, at)
        if revision is not None:
            break
    else:
        raise errors.Unavailable(f"the ranges kept changing ({CAS_ATTEMPTS_MAX} attempts); "
                                 "retry", table=table_id)
    await tell(rng.group, "split_range", table_id=table_id, at=at)
    return rng, revision


async def merge_ranges(store: Store, tell: Tell, plan: MergePlan) -> int | None:
    """Merge the two neighbouring ranges of one group that meet at ``plan.at``: the group
    first (so that a request routed by either range, or by both, is served), then etcd. The
    revision, or None if the ranges changed meanwhile (the group's merge is idempotent: the
    controller may plan it again)."""
    ranges = await store.table_ranges_revs(plan.table_id)
    pair = [(r, rev) for r, rev in ranges if r.end == plan.at or r.start == plan.at]
    if len(pair) != 2 or any(r.group != plan.group or r.state != model.RANGE_ACTIVE
                             or r.source is not None for r, _ in pair):
        return None
    (lower, lower_rev), (upper, upper_rev) = pair
    await tell(plan.group, "merge_range", table_id=plan.table_id, at=plan.at)
    return await store.merge_ranges(lower, lower_rev, upper, upper_rev)


async def begin_move(store: Store, table_id: int, at: bytes, to: int) -> tuple[Range, bool]:
    """Record that the range holding ``at`` moves to group ``to`` (step 1 of
    ``controller/move.py``): the range's record and whether this call started the move (False:
    it was moving there already, or is on ``to``). Raises ``Unavailable`` if it is moving
    elsewhere or its record changed meanwhile."""
    rng, rev = await holder(store, table_id, at)
    if move.moving(rng):
        heading = rng.target if rng.target is not None else rng.group
        if heading != to:
            raise errors.Unavailable(f"that range is already moving to group {heading}; move "
                                     "it again once that is done", table=table_id)
        return rng, False
    if rng.group == to:
        return rng, False
    moving = move.started(rng, to)
    if await store.put_range(moving, rev) is None:
        raise errors.Unavailable("the table's ranges changed meanwhile; retry", table=table_id)
    return moving, True
