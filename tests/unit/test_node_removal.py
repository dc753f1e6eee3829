"""When the meta removes a node's record (``rangekv nodes remove``): ``plan_node_removal``, rule
by rule. The meta op against a real etcd is in tests/integration/test_meta.py, the whole path
through real processes in tests/integration/test_nodes_remove.py."""

from __future__ import annotations

import pytest

from rangekv import errors, model
from rangekv.controller.health import Beat
from rangekv.controller.nodes import plan_node_removal
from rangekv.model import ClusterView, Group, Node
from rangekv.model.status import NodeStatus

HB_S = 0.6
NOW_S = 100.0


def view_of(*groups: Group, nodes: dict[int, Node] | None = None) -> ClusterView:
    view = ClusterView(revision=7)
    for g in groups:
        view.groups[g.id] = g
    for nid, node in (nodes or {}).items():
        view.nodes[nid] = node
    return view


def spare(nid: int, **kw: object) -> Node:
    return Node(nid, f"10.0.0.{nid}:8431", **kw)  # type: ignore[arg-type]


def beat(ago_s: float) -> Beat:
    return Beat(NOW_S - ago_s, "10.0.0.9:8431", NodeStatus())


def plan(view: ClusterView, nid: int, last: Beat | None = None) -> tuple[Node, bool]:
    return plan_node_removal(view, nid, last, NOW_S, heartbeat_timeout_s=HB_S)


def test_a_dead_spare_goes_and_a_live_one_stays() -> None:
    view = view_of(nodes={5: spare(5)})
    assert plan(view, 5, None) == (view.nodes[5], False)  # never heard of since this meta acts
    assert plan(view, 5, beat(HB_S + 0.1)) == (view.nodes[5], False)
    with pytest.raises(errors.NodeInUse, match="is live") as refused:
        plan(view, 5, beat(0.1))
    assert refused.value.details == {"node": 5, "live": True}


def test_a_flagged_node_may_go_even_while_it_runs() -> None:
    """An operator's way to put an inspected node back: it registers again at once."""
    replaced = spare(3, state=model.NODE_FLAGGED, reason="replaced in group 1 by node 4",
                     flag=model.FLAG_REPLACED)
    view = view_of(Group(1, 4, 1, (1, 2, 4)), nodes={3: replaced})
    assert plan(view, 3, beat(0.05)) == (replaced, True)
    assert plan(view, 3, None) == (replaced, False)


@pytest.mark.parametrize("group,role", [
    (Group(1, 3, 1, (1, 2, 3)), "a member"),
    (Group(1, 3, 1, (1, 2, 4), (3,), (), 4), "a learner"),
    (Group(1, 4, 1, (1, 2, 4), (), (1, 2, 3)), "a voter of its old configuration"),
])
def test_a_node_in_a_group_stays_whatever_its_state(group: Group, role: str) -> None:
    """A member, a learner, an old-configuration voter: dead or flagged or not, it counts in a
    quorum or a reconfiguration (plan_replacement replaces it; its record goes after)."""
    for state, flag in ((model.NODE_MEMBER, ""), (model.NODE_FLAGGED, model.FLAG_REPLACED),
                        (model.NODE_FLAGGED, model.FLAG_BROKEN_LOG)):
        view = view_of(group, nodes={3: spare(3, state=state, flag=flag)})
        with pytest.raises(errors.NodeInUse, match=f"node 3 is {role}") as refused:
            plan(view, 3, None)
        assert refused.value.details == {"node": 3, "group": 1}


def test_a_record_that_names_a_group_stays() -> None:
    """Joining or leaving: the record and the group are written together, but the view may
    hold one before the other; wait for the reconfiguration, never guess."""
    view = view_of(Group(1, 3, 1, (1, 2, 3)),
                   nodes={6: spare(6, state=model.NODE_JOINING, group=1)})
    with pytest.raises(errors.NodeInUse, match="names group 1") as refused:
        plan(view, 6, None)
    assert refused.value.details == {"node": 6, "group": 1}


def test_an_unknown_node_is_not_found() -> None:
    view = view_of(nodes={1: spare(1)})
    with pytest.raises(errors.NodeNotFound, match="there is no node 9") as refused:
        plan(view, 9, None)
    assert refused.value.status == 404 and refused.value.code == "node_not_found"


def test_codes_and_statuses_stay() -> None:
    """Over HTTP, the wire and in the Python client alike."""
    assert (errors.NodeInUse.code, errors.NodeInUse.status) == ("node_in_use", 409)
    assert (errors.NodeNotFound.code, errors.NodeNotFound.status) == ("node_not_found", 404)
    assert not errors.NodeInUse.retryable
    back = errors.from_dict(errors.NodeInUse("x", node=3, group=1).to_dict())
    assert isinstance(back, errors.NodeInUse) and back.details == {"node": 3, "group": 1}
    assert isinstance(errors.from_dict({"code": "node_not_found"}), errors.NotFound)
