"""What the controller knows of the nodes: each one's latest heartbeat, and what follows from
it (live, a spare to draw on, a leader serving its epoch). Pure: times are passed in.

Liveness is judged on the meta's own clock: a node is **live** if its last heartbeat arrived
within the heartbeat timeout (nodes beat every 100 ms; the default timeout is 600 ms, see
``rangekv.controller.planner``). A **live spare** is a node recorded as ``spare``, in no group
(not even as a learner or a voter of ``joint``), live and reporting a sound log. A **serving
leader** is a group's recorded leader that is live, sound, and reports leading the group's
recorded epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rangekv import model
from rangekv.model import ClusterView, Group
from rangekv.model.status import ROLE_LEADER, NodeStatus


@dataclass(frozen=True)
class Beat:
    """The latest heartbeat of a node, as received (``at_s`` on this process's clock)."""

    at_s: float
    address: str
    status: NodeStatus


def is_live(beat: Beat | None, now_s: float, heartbeat_timeout_s: float) -> bool:
    return beat is not None and now_s - beat.at_s <= heartbeat_timeout_s


def serving_leader(group: Group, beats: Mapping[int, Beat], now_s: float,
                   heartbeat_timeout_s: float) -> Beat | None:
    """The recorded leader's heartbeat if it is live, sound and serves the group's epoch."""
    if group.leader is None:
        return None
    beat = beats.get(group.leader)
    if beat is None or not is_live(beat, now_s, heartbeat_timeout_s) or beat.status.broken:
        return None
    st = beat.status
    return beat if st.role == ROLE_LEADER and st.leader_epoch == group.epoch else None


def live_spares(
    view: ClusterView, beats: Mapping[int, Beat], now_s: float, heartbeat_timeout_s: float
) -> list[int]:
    """The nodes that may join a group, lowest id first: recorded as ``spare``, in no group
    (not even as a learner or a voter of ``joint``), live, and reporting a sound log."""
    involved = {m for g in view.groups.values() for ids in (g.members, g.learners, g.joint)
                for m in ids}  # once, not per node: a thousand groups are read every tick
    return sorted(
        n.id
        for n in view.nodes.values()
        if n.state == model.NODE_SPARE
        and n.group is None
        and n.id not in involved
        and is_live(beats.get(n.id), now_s, heartbeat_timeout_s)
        and not beats[n.id].status.broken
    )
