"""The node registry's rules: what a heartbeat does to a node's record, what its answer tells
the node, and when an operator may remove one (``rangekv nodes remove``). Pure decisions on the
records and heartbeats.

* a new node registers as a spare; a moved one gets its new address;
* a node reporting a broken log is flagged (it keeps its group: it is still a member whose
  vote the group lacks, and the replacement policy replaces it); a sound log again lifts that
  flag, and only that one (``Node.sticky_flag``);
* the answer names the node's group (members, learners, joint voters) and, if the group's
  record names it leader and it does not serve that epoch yet, the epoch to campaign for;
* a record is removed only if it takes part in no group and its node is dead or flagged.
"""

from __future__ import annotations

from dataclasses import replace

from rangekv import errors, model
from rangekv.controller.health import Beat, is_live
from rangekv.model import ClusterView, Group, Node
from rangekv.model.status import ROLE_LEADER, NodeStatus


def campaign_epoch(group: Group, node_id: int, status: NodeStatus) -> int | None:
    """The epoch the heartbeat's answer tells ``node_id`` to campaign for: its group's record
    names it leader (of an epoch the controller chose) and it does not serve that epoch yet.
    None otherwise: the only way a node is told to lead."""
    if group.leader != node_id or group.epoch <= 0:
        return None
    if status.role == ROLE_LEADER and status.leader_epoch == group.epoch:
        return None
    return group.epoch


def node_record(
    node_id: int, address: str, known: Node | None, status: NodeStatus,
    group: Group | None = None,
) -> tuple[Node, str]:
    """The record of a node that its heartbeat calls for, and what changed ("" if nothing).

    A new node is registered as a spare; a moved one gets its new address. A node that reports a
    broken log is ``flagged`` with its reason, so that ``GET /v1/cluster`` and ``rangekv
    cluster`` show it; it keeps its group (it is still a member, whose vote the group lacks, and
    ``plan_replacement`` replaces it), and ``choose_leader`` and ``plan_group`` pass it over.
    When it reports a sound log again (its data was repaired) it is a ``member``, ``joining``
    (a learner of ``group``) or ``spare`` again. A node flagged for any other reason (it was
    replaced, or failed as a learner: ``Node.sticky_flag``) stays flagged whatever it reports.
    """
    changes: list[str] = []
    if known is None:
        node = Node(node_id, address, model.NODE_SPARE, None)
        changes.append(f"node {node_id} at {address} is new: registering it as a spare")
    else:
        node = known
        if known.address != address:
            node = replace(node, address=address)
            changes.append(f"node {node_id} moved from {known.address} to {address}")
    if node.sticky_flag:
        pass
    elif status.broken:
        reason = status.broken_reason or "it reports a broken log"
        if node.state != model.NODE_FLAGGED or node.reason != reason:
            node = replace(node, state=model.NODE_FLAGGED, reason=reason,
                           flag=model.FLAG_BROKEN_LOG)
            changes.append(f"node {node_id} reports a broken log, flagged: {reason}")
    elif node.state == model.NODE_FLAGGED:
        if node.group is None:
            state = model.NODE_SPARE
        elif group is not None and node_id in group.learners:
            state = model.NODE_JOINING
        else:
            state = model.NODE_MEMBER
        node = replace(node, state=state, reason="", flag="")
        changes.append(f"node {node_id} reports a sound log again: {state} again")
    return node, "; ".join(changes)


def plan_node_removal(
    view: ClusterView, node_id: int, beat: Beat | None, now_s: float, *,
    heartbeat_timeout_s: float,
) -> tuple[Node, bool]:
    """Whether node ``node_id``'s record may be removed (``rangekv nodes remove``): the record
    and whether the node is live, or the refusal raised.

    * ``NodeNotFound``: no record.
    * ``NodeInUse`` with ``group``: the node takes part in a group (a member, a learner, a voter
      of ``joint``, or its record names a group). Its vote or its
      catch-up is part of a quorum or of a reconfiguration; the controller replaces a dead
      member from the pool (``plan_replacement``), and its record can go after that.
    * ``NodeInUse`` with ``live``: it heartbeats and is not flagged. A live node registers again
      at its next heartbeat, so removing a healthy one would only hide it for 100 ms.

    A live flagged node may be removed: that is how an operator returns an inspected node to
    the pool (it registers again as a spare, or is flagged again if its log is still broken).
    A dead one, or a forged record that no process stands behind, is simply gone; should it
    heartbeat again one day, it registers as a new node does.
    """
    node = view.nodes.get(node_id)
    if node is None:
        raise errors.NodeNotFound(f"there is no node {node_id} (nodes: "
                                  f"{sorted(view.nodes)})", node=node_id)
    for gid in sorted(view.groups):
        g = view.groups[gid]
        role = ("a member" if node_id in g.members else "a learner" if node_id in g.learners
                else "a voter of its old configuration (joint)" if node_id in g.joint
                else None)
        if role is not None:
            raise errors.NodeInUse(
                f"node {node_id} is {role} of group {gid}: its record stays while it takes "
                "part in the group (a dead member is replaced from the spare pool after the "
                "grace; remove it once it is flagged as replaced)", node=node_id, group=gid)
    if node.group is not None:
        raise errors.NodeInUse(f"node {node_id}'s record names group {node.group} "
                               f"({node.state}): it is joining or leaving it; try again once "
                               "the reconfiguration is over", node=node_id, group=node.group)
    live = is_live(beat, now_s, heartbeat_timeout_s)
    if live and node.state != model.NODE_FLAGGED:
        assert beat is not None
        raise errors.NodeInUse(
            f"node {node_id} at {node.address} is live (it heartbeat "
            f"{(now_s - beat.at_s) * 1000:.0f} ms ago) and not flagged: stop it first (a live "
            "node registers again at its next heartbeat)", node=node_id, live=True)
    return node, live
