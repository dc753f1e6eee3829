"""Where a new table or a range split off by an operator goes: the group with a leader that
serves the fewest ranges (lowest id on ties). Pure: it reads the view only."""

from __future__ import annotations

from rangekv import errors
from rangekv.model import ClusterView, Group


def pick_group(view: ClusterView, *, group_size: int, exclude: int | None = None) -> Group:
    """The group with a leader that serves the fewest ranges (lowest id on ties), ``exclude``
    left out; ``Unavailable`` if no group has a leader."""
    counts = {gid: 0 for gid, g in view.groups.items()
              if g.leader is not None and gid != exclude}
    if not counts:
        raise errors.Unavailable(
            "no replication group has a leader yet (a group forms from "
            f"{group_size} live nodes)"
        )
    for ranges in view.ranges.values():
        for rng in ranges:
            if rng.group in counts:
                counts[rng.group] += 1
    gid = min(counts, key=lambda g: (counts[g], g))
    return view.groups[gid]
