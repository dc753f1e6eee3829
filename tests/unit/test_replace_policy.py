"""``plan_replacement``, ``track_lag`` and the record transitions of a follower replacement
(docs/internals.md, "Membership"): every rule by example, then invariants over generated
cluster states."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import model
from rangekv.controller.decisions import DECISION_REPLACE_STARTED
from rangekv.controller.health import Beat
from rangekv.controller.leader import choose_leader
from rangekv.controller.nodes import node_record
from rangekv.controller.replace import ReplacementPolicy, plan_replacement, track_lag
from rangekv.model import ClusterView, Decision, Group, Node
from rangekv.model.status import NodeStatus

HB = 0.6
POLICY = ReplacementPolicy(heartbeat_timeout_s=HB, grace_s=10.0, lag_entries=100,
                           catch_up_slack=5, learner_timeout_s=60.0)
NOW = 1000.0


def beat(group: int | None = 1, *, at: float = NOW, role: str = "follower", epoch: int = 3,
         leader_epoch: int = 0, last: int = 500, commit: int = 500,
         broken: str = "") -> Beat:
    return Beat(at, "127.0.0.1:1", NodeStatus(
        group=group, epoch=epoch, role=role, leader_epoch=leader_epoch, last_epoch=epoch,
        last_index=last, commit_index=commit, applied_index=commit, broken=bool(broken),
        broken_reason=broken))


def cluster(group: Group, spares: tuple[int, ...] = (4, 5)) -> ClusterView:
    view = ClusterView()
    view.groups[group.id] = group
    for m in group.members:
        view.nodes[m] = Node(m, f"127.0.0.1:{m}", model.NODE_MEMBER, group.id)
    for m in group.learners:
        view.nodes[m] = Node(m, f"127.0.0.1:{m}", model.NODE_JOINING, group.id)
    for s in spares:
        view.nodes[s] = Node(s, f"127.0.0.1:{s}", model.NODE_SPARE, None)
    return view


GROUP = Group(1, 3, 1, (1, 2, 3))


def healthy(group: Group = GROUP, spares: tuple[int, ...] = (4, 5)) -> dict[int, Beat]:
    beats = {m: beat() for m in (*group.members, *group.learners)}
    assert group.leader is not None
    beats[group.leader] = beat(role="leader", leader_epoch=group.epoch, epoch=group.epoch)
    for s in spares:
        beats[s] = beat(None, epoch=0, last=0, commit=0)
    return beats


def plan(group: Group = GROUP, beats: dict[int, Beat] | None = None, *,
         view: ClusterView | None = None, now: float = NOW, judge_from: float = 0.0,
         lag_since: dict[int, float] | None = None, learner_since: float = NOW - 1.0,
         target: int = 0, policy: ReplacementPolicy = POLICY) -> object:
    return plan_replacement(
        group, view or cluster(group), healthy(group) if beats is None else beats, now,
        policy=policy, judge_from_s=judge_from, lag_since=lag_since or {},
        learner_since_s=learner_since, learner_target=target)


# -- steady state: when is a member replaced, and by whom --------------------------------------


def test_healthy_group_is_kept() -> None:
    p = plan()
    assert p.action == "keep" and p.group is None and not p.nodes


def test_nobody_is_judged_in_the_first_heartbeat_timeout() -> None:
    beats = healthy()
    del beats[2]
    assert plan(beats=beats, judge_from=NOW - HB / 2).action == "wait"


@pytest.mark.parametrize("silent_s, action", [(9.9, "keep"), (10.1, "add_learner")])
def test_a_dead_follower_is_replaced_after_the_grace(silent_s: float, action: str) -> None:
    beats = healthy()
    beats[2] = beat(at=NOW - silent_s)
    p = plan(beats=beats)
    assert p.action == action
    if action == "add_learner":
        assert p.old == 2 and p.new == 4 and "no heartbeat for 10.1 s (grace 10 s)" in p.reason
        assert p.group == replace(GROUP, learners=(4,), replacing=2)
        assert p.nodes == (Node(4, "127.0.0.1:4", model.NODE_JOINING, 1),)
        assert p.why.startswith("no heartbeat")


def test_a_member_never_heard_counts_from_when_this_meta_became_active() -> None:
    beats = healthy()
    del beats[3]
    assert plan(beats=beats, judge_from=NOW - 9.0).action == "keep"
    p = plan(beats=beats, judge_from=NOW - 11.0)
    assert p.action == "add_learner" and p.old == 3 and "no heartbeat heard" in p.reason


def test_a_dead_leader_is_not_replaced_here() -> None:
    """choose_leader moves leadership first; only a non-leader member is ever replaced."""
    beats = healthy()
    beats[1] = beat(at=NOW - 60, role="leader", leader_epoch=3)
    p = plan(beats=beats)
    assert p.action == "keep"


def test_a_broken_follower_is_replaced_at_once() -> None:
    beats = healthy()
    beats[3] = beat(broken="wal/000.wal at offset 7: checksum mismatch")
    p = plan(beats=beats)
    assert p.action == "add_learner" and p.old == 3
    assert "reports a broken log: wal/000.wal at offset 7" in p.reason


def test_a_lagging_follower_is_replaced_after_the_grace() -> None:
    beats = healthy()
    beats[1] = beat(role="leader", leader_epoch=3, commit=1000, last=1000)
    beats[2] = beat(last=800)
    assert plan(beats=beats, lag_since={2: NOW - 9}).action == "keep"
    p = plan(beats=beats, lag_since={2: NOW - 11})
    assert p.action == "add_learner" and p.old == 2
    assert "200 entries behind the leader's commit (more than 100) for 11.0 s" in p.reason


def test_broken_before_dead_before_lagging_and_lowest_id_first() -> None:
    group = Group(1, 3, 1, (1, 2, 3, 4, 5))
    view = cluster(group, spares=(6,))
    beats = healthy(group, spares=(6,))
    beats[5] = beat(at=NOW - 20)
    beats[4] = beat(at=NOW - 20)
    lag = {2: NOW - 30, 3: NOW - 30}
    assert plan(group, beats, view=view, lag_since=lag).old == 4
    beats[3] = beat(broken="bad")
    assert plan(group, beats, view=view, lag_since=lag).old == 3
    del beats[3], beats[4], beats[5]
    beats[3], beats[4], beats[5] = beat(), beat(), beat()
    assert plan(group, beats, view=view, lag_since=lag).old == 2


def test_never_without_a_serving_leader() -> None:
    beats = healthy()
    beats[2] = beat(at=NOW - 20)
    beats[1] = beat(role="candidate", epoch=3)
    p = plan(beats=beats)
    assert p.action == "wait" and "no serving leader" in p.reason and p.group is None


def test_spares_must_be_live_sound_spare_and_in_no_group() -> None:
    group = GROUP
    beats = healthy(group, spares=(4, 5, 6, 7, 8, 9))
    beats[2] = beat(at=NOW - 20)
    view = cluster(group, spares=(4, 5, 6, 7, 8, 9))
    beats[4] = beat(None, at=NOW - 5)  # not live
    beats[5] = beat(None, broken="bad log")  # broken
    view.nodes[6] = replace(view.nodes[6], state=model.NODE_FLAGGED, flag=model.FLAG_REPLACED)
    view.nodes[7] = replace(view.nodes[7], group=2)  # recorded in a group
    view.groups[2] = Group(2, 1, 10, (10, 11, 12), learners=(8,), replacing=10)  # a learner
    assert plan(group, beats, view=view).new == 9
    del beats[9]
    p = plan(group, beats, view=view)
    assert p.action == "no_spare" and p.old == 2 and p.group is None and not p.nodes
    assert "no spare available for group 1: member 2 no heartbeat" in p.reason


# -- the learner phase --------------------------------------------------------------------------

LEARNING = Group(1, 3, 1, (1, 2, 3), learners=(4,), replacing=2)


def learning(**learner: object) -> dict[int, Beat]:
    beats = healthy(LEARNING, spares=(5,))
    beats[1] = beat(role="leader", leader_epoch=3, commit=1000, last=1000)
    beats[2] = beat(at=NOW - 30)
    beats[4] = beat(**learner)  # type: ignore[arg-type]
    return beats


def started_view() -> ClusterView:
    view = cluster(LEARNING, spares=(5,))
    view.decision_log[1] = Decision(1, DECISION_REPLACE_STARTED, 1, "...",
                                    {"old": 2, "new": 4, "why": "no heartbeat for 12.0 s"})
    return view


def test_a_caught_up_learner_is_swapped_in_a_new_epoch_with_joint() -> None:
    p = plan(LEARNING, learning(commit=996, last=1000), view=started_view(), target=900)
    assert p.action == "swap" and p.old == 2 and p.new == 4
    assert p.group == Group(1, 4, 1, (1, 3, 4), (), (1, 2, 3), None)
    joined, flagged = p.nodes
    assert joined == Node(4, "127.0.0.1:4", model.NODE_MEMBER, 1)
    assert flagged.state == model.NODE_FLAGGED and flagged.group is None
    assert flagged.flag == model.FLAG_REPLACED and flagged.sticky_flag
    assert flagged.reason == "replaced in group 1 by node 4: no heartbeat for 12.0 s"


def test_the_swap_epoch_is_above_every_promise() -> None:
    beats = learning(commit=1000)
    beats[3] = beat(epoch=7)
    p = plan(LEARNING, beats, view=started_view())
    assert p.action == "swap" and p.group is not None and p.group.epoch == 8


@pytest.mark.parametrize("commit, target, action", [
    (994, 0, "wait"),  # beyond the slack
    (995, 0, "swap"),
    (995, 996, "wait"),  # not yet holding what was committed when it started
])
def test_caught_up_means_the_target_and_within_the_slack(commit: int, target: int,
                                                         action: str) -> None:
    p = plan(LEARNING, learning(commit=commit), view=started_view(), target=target)
    assert p.action == action


@pytest.mark.parametrize("reported_group", [None, 2])
def test_a_learner_reporting_another_groups_log_has_not_caught_up(
        reported_group: int | None) -> None:
    """A spare that was a learner of another group reports that group's commit index (or no
    group yet) until it hears it is in this one and discards that log: that index says nothing
    of this group's entries. (The simulator with two groups promoted such a spare at once:
    "learner 5 caught up (commit index 36, the leader's 19)".)"""
    p = plan(LEARNING, learning(group=reported_group, commit=5000, last=5000),
             view=started_view())
    assert p.action == "wait" and p.new == 4, p


def test_a_learner_not_caught_up_in_time_is_dropped_and_flagged() -> None:
    p = plan(LEARNING, learning(commit=10), view=started_view(), learner_since=NOW - 61)
    assert p.action == "drop_learner" and p.group == GROUP
    (record,) = p.nodes
    assert record.state == model.NODE_FLAGGED and record.flag == model.FLAG_LEARNER_FAILED
    assert record.group is None and "did not catch up within 60 s" in record.reason


def test_a_dead_learner_is_dropped_and_flagged() -> None:
    beats = learning()
    beats[4] = beat(at=NOW - 11)
    p = plan(LEARNING, beats, view=started_view())
    assert p.action == "drop_learner" and p.nodes[0].flag == model.FLAG_LEARNER_FAILED
    assert "no heartbeat from node 4 for 11.0 s" in p.reason
    beats[4] = beat(at=NOW - 9)
    assert plan(LEARNING, beats, view=started_view()).action == "wait"


def test_a_learner_with_a_broken_log_is_dropped_keeping_its_broken_flag() -> None:
    view = started_view()
    view.nodes[4] = replace(view.nodes[4], state=model.NODE_FLAGGED, reason="bad",
                            flag=model.FLAG_BROKEN_LOG)
    p = plan(LEARNING, learning(broken="bad"), view=view)
    assert p.action == "drop_learner"
    assert p.nodes == (replace(view.nodes[4], group=None),)


def test_the_replacement_is_abandoned_if_the_old_member_leads() -> None:
    group = replace(LEARNING, leader=2, epoch=4)
    beats = learning(commit=1000)
    beats[2] = beat(role="leader", leader_epoch=4, epoch=4)
    p = plan(group, beats, view=started_view())
    assert p.action == "drop_learner" and p.group == replace(group, learners=(), replacing=None)
    assert p.nodes == (Node(4, "127.0.0.1:4", model.NODE_SPARE, None),)


def test_the_swap_waits_for_live_majorities_of_old_and_new_members() -> None:
    beats = learning(commit=1000)
    beats[3] = beat(at=NOW - 5)  # old members live: 1 only (2 dead); new: 1, 4
    p = plan(LEARNING, beats, view=started_view())
    assert p.action == "wait" and "of the old members" in p.reason


def test_the_learner_waits_for_a_serving_leader() -> None:
    beats = learning(commit=1000)
    beats[1] = beat(role="candidate", epoch=4)
    assert plan(LEARNING, beats, view=started_view()).action == "wait"


# -- the joint phase ----------------------------------------------------------------------------

JOINT = Group(1, 4, 1, (1, 3, 4), joint=(1, 2, 3))


def test_joint_is_cleared_once_the_leader_serves_the_epoch() -> None:
    beats = healthy(JOINT, spares=())
    p = plan(JOINT, beats, view=cluster(JOINT, ()))
    assert p.action == "clear_joint" and p.group == Group(1, 4, 1, (1, 3, 4))
    beats[1] = beat(role="leader", leader_epoch=3, epoch=4)  # still taking up epoch 4
    assert plan(JOINT, beats, view=cluster(JOINT, ())).action == "wait"


def test_one_reconfiguration_at_a_time() -> None:
    """A dead member of a group whose reconfiguration is unfinished waits for it."""
    beats = healthy(JOINT, spares=(5,))
    beats[1] = beat(role="candidate", epoch=4)
    beats[3] = beat(at=NOW - 30)
    p = plan(JOINT, beats, view=cluster(JOINT, (5,)))
    assert p.action == "wait" and p.group is None


def test_choose_leader_needs_a_live_majority_of_joint_too() -> None:
    beats = healthy(JOINT, spares=())
    beats[1] = beat(at=NOW - 5, role="leader", leader_epoch=4)
    beats[2] = beat(at=NOW - 30)
    kw = {"heartbeat_timeout_s": HB, "campaign_timeout_s": 3.0, "judge_from_s": 0.0,
          "campaign_since_s": 0.0}
    choice = choose_leader(JOINT, beats, NOW, **kw)  # type: ignore[arg-type]
    assert choice.action == "stuck" and "previous members [1, 2, 3]" in choice.reason
    beats[2] = beat()
    choice = choose_leader(JOINT, beats, NOW, **kw)  # type: ignore[arg-type]
    assert choice.action == "elect" and choice.leader in (3, 4) and choice.epoch == 5


# -- track_lag ----------------------------------------------------------------------------------


def test_track_lag_records_when_a_lag_began_and_forgets_it_once_caught_up() -> None:
    beats = healthy()
    beats[1] = beat(role="leader", leader_epoch=3, commit=1000)
    beats[2] = beat(last=899)
    beats[3] = beat(last=900)
    kw = {"heartbeat_timeout_s": HB, "lag_entries": 100}
    since = track_lag(GROUP, beats, NOW, {}, **kw)  # type: ignore[arg-type]
    assert since == {2: NOW}
    earlier = {2: NOW - 5}
    assert track_lag(GROUP, beats, NOW, earlier, **kw) == earlier  # type: ignore[arg-type]
    beats[2] = beat(last=990)
    assert track_lag(GROUP, beats, NOW, earlier, **kw) == {}  # type: ignore[arg-type]
    # without a serving leader nothing is measured and nothing forgotten
    beats[1] = beat(role="candidate")
    assert track_lag(GROUP, beats, NOW, earlier, **kw) == earlier  # type: ignore[arg-type]
    # a dead member is judged dead, not lagging
    beats[1] = beat(role="leader", leader_epoch=3, commit=1000)
    beats[2] = beat(at=NOW - 20, last=0)
    assert track_lag(GROUP, beats, NOW, since, **kw) == {}  # type: ignore[arg-type]


# -- sticky flags -------------------------------------------------------------------------------


def test_a_replaced_node_stays_flagged_whatever_it_reports() -> None:
    node = Node(2, "a:1", model.NODE_FLAGGED, None, "replaced in group 1 by node 4: ...",
                model.FLAG_REPLACED)
    assert node_record(2, "a:1", node, NodeStatus())[0] == node
    assert node_record(2, "a:1", node, NodeStatus(broken=True, broken_reason="x"))[0] == node
    moved, why = node_record(2, "a:2", node, NodeStatus())
    assert moved == replace(node, address="a:2") and "moved" in why


def test_a_broken_log_flag_is_lifted_by_a_sound_log() -> None:
    member = Node(2, "a:1", model.NODE_MEMBER, 1)
    flagged, _ = node_record(2, "a:1", member, NodeStatus(broken=True, broken_reason="bad"))
    assert flagged.state == model.NODE_FLAGGED and flagged.flag == model.FLAG_BROKEN_LOG
    assert not flagged.sticky_flag
    assert node_record(2, "a:1", flagged, NodeStatus())[0] == member
    # a learner's comes back as joining; a legacy record without a flag kind lifts too
    learner = Group(1, 1, 1, (1, 3, 5), learners=(2,), replacing=5)
    assert node_record(2, "a:1", flagged, NodeStatus(), learner)[0].state == model.NODE_JOINING
    legacy = Node(2, "a:1", model.NODE_FLAGGED, None, "bad")
    assert node_record(2, "a:1", legacy, NodeStatus())[0].state == model.NODE_SPARE


# -- invariants over generated states -----------------------------------------------------------


@st.composite
def states(draw: st.DrawFn) -> tuple[Group, ClusterView, dict[int, Beat], dict[int, float]]:
    members = (1, 2, 3)
    leader = draw(st.sampled_from([None, 1, 2, 3]))
    phase = draw(st.sampled_from(["steady", "learner", "joint"]))
    group = Group(1, 5, leader, members)
    if phase == "learner":
        group = group.with_learner(4, draw(st.sampled_from(members)))
    elif phase == "joint":
        group = Group(1, 5, leader, (1, 2, 4), joint=(1, 2, 3))
    view = cluster(group, spares=tuple(s for s in (4, 5, 6) if not group.involves(s)))
    beats: dict[int, Beat] = {}
    for n in range(1, 7):
        if draw(st.booleans()) or n == leader and draw(st.booleans()):
            continue  # never heard
        role = draw(st.sampled_from(["follower", "leader", "candidate"]))
        beats[n] = beat(group=1 if group.involves(n) else None,
                        at=NOW - draw(st.sampled_from([0.0, 1.0, 9.0, 30.0])), role=role,
                        leader_epoch=draw(st.sampled_from([0, 5])) if role == "leader" else 0,
                        epoch=draw(st.integers(4, 6)), last=draw(st.integers(0, 2000)),
                        commit=draw(st.integers(0, 2000)),
                        broken=draw(st.sampled_from(["", "", "", "bad"])))
    if phase == "learner" and draw(st.booleans()):  # often a caught-up learner
        beats[4] = beat(commit=1000, last=1000)
    if leader is not None and draw(st.booleans()):  # often a serving leader, to get further
        beats[leader] = beat(role="leader", leader_epoch=5, epoch=5, commit=1000, last=1000)
    lag = {m: NOW - draw(st.sampled_from([1.0, 20.0])) for m in members if draw(st.booleans())}
    return group, view, beats, lag


@settings(max_examples=600)
@given(states(), st.sampled_from([1.0, 100.0]), st.sampled_from([0, 999, 2000]))
def test_plan_invariants(state: tuple[Group, ClusterView, dict[int, Beat], dict[int, float]],
                         learner_age: float, target: int) -> None:
    group, view, beats, lag = state
    p = plan_replacement(group, view, beats, NOW, policy=POLICY, judge_from_s=0.0,
                         lag_since=lag, learner_since_s=NOW - learner_age,
                         learner_target=target)
    lead = beats.get(group.leader or 0)
    serving = (lead is not None and lead.at_s > NOW - HB and not lead.status.broken
               and lead.status.role == "leader" and lead.status.leader_epoch == group.epoch)
    if p.action in ("keep", "wait", "no_spare"):
        assert p.group is None and not p.nodes
        return
    new = p.group
    assert new is not None and new.id == group.id
    # one reconfiguration at a time, each step from the phase it belongs to
    phase = "steady" if not group.changing else "learner" if group.learners else "joint"
    assert p.action in {"steady": {"add_learner"}, "learner": {"swap", "drop_learner"},
                        "joint": {"clear_joint"}}[phase]
    if p.action == "add_learner":
        assert not group.changing and serving
        assert p.old in group.members and p.old != group.leader
        spare = beats[new.learners[0]]
        assert view.nodes[new.learners[0]].state == model.NODE_SPARE
        assert spare.at_s > NOW - HB and not spare.status.broken
    elif p.action == "swap":
        assert group.learners and serving
        assert new.epoch > group.epoch and new.leader == group.leader
        assert new.joint == group.members and group.leader in new.members
        assert set(new.members) == set(group.members) - {group.replacing} | {group.learners[0]}
        # the old members and the new both have a live, sound majority
        for voters in (new.members, new.joint):
            up = [m for m in voters if m in beats and beats[m].at_s > NOW - HB
                  and not beats[m].status.broken]
            assert len(up) >= 2
    elif p.action == "clear_joint":
        assert group.joint and serving and new == replace(group, joint=())
    else:
        assert p.action == "drop_learner" and group.learners
        assert new == replace(group, learners=(), replacing=None)
