"""Planted bugs in the controller: ``Planner`` subclasses that each break one rule, in the one
method of that rule (as the core's planted bugs do, ``rangekv.replication.bugs``). The simulator
must catch each one (``rangekv sim --bug NAME``, tests/sim/test_sim_controller.py); a meta runs
one with its hidden ``--planted-bug NAME`` option (``rangekv chaos --planted-bug`` passes it).

Both break what the joint step of a replacement is for (docs/internals.md, "Membership"): until
the new epoch's leader serves, a campaign must win a majority of the previous members too, so
that it hears from whoever holds what the old members committed. Without it, a leader cut off
from the meta goes on committing with a majority of the old members while the new members
elect a leader without those entries: acknowledged writes are lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from rangekv.controller.health import Beat
from rangekv.controller.planner import Planner, PlannerConfig
from rangekv.controller.replace import ReplacementPlan
from rangekv.model import ClusterView, Group


class SwapWithoutJoint(Planner):
    """The swap makes the learner a member in a new epoch without ``joint``: campaigns need a
    majority of the new members only, at once."""

    def plan_replacement(self, group: Group, view: ClusterView, beats: Mapping[int, Beat],
                         now_s: float, lag_since: dict[int, float], learner_since_s: float,
                         learner_target: int) -> ReplacementPlan:
        plan = super().plan_replacement(group, view, beats, now_s, lag_since, learner_since_s,
                                        learner_target)
        if plan.action == "swap" and plan.group is not None:
            plan = replace(plan, group=replace(plan.group, joint=()))
        return plan


class ClearJointEarly(Planner):
    """The joint step is cleared at the next step, without waiting for the new epoch's leader
    to serve (its no-op committed on a majority of the new members)."""

    def plan_replacement(self, group: Group, view: ClusterView, beats: Mapping[int, Beat],
                         now_s: float, lag_since: dict[int, float], learner_since_s: float,
                         learner_target: int) -> ReplacementPlan:
        plan = super().plan_replacement(group, view, beats, now_s, lag_since, learner_since_s,
                                        learner_target)
        if group.joint and plan.action == "wait":
            plan = ReplacementPlan("clear_joint", f"group {group.id}: joint cleared at once "
                                   "(planted bug)", group.joint_cleared())
        return plan


PlannerFactory = Callable[[PlannerConfig], Planner]

# name -> the planner a meta runs instead of ``Planner`` (``--planted-bug NAME``)
BUGS: dict[str, PlannerFactory] = {
    "swap-without-joint": SwapWithoutJoint,
    "clear-joint-early": ClearJointEarly,
}
