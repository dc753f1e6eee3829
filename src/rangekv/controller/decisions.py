"""What the controller decides, as data: the planner (``planner.py``) returns these, the meta
performs them against etcd and the nodes (``rangekv.metadata.perform``), and the simulator
can perform the same ones against an in-memory store.

Each decision that changes a record carries the records it was decided on (``before``): the
performer writes it only if its view still shows them (and then by compare-and-swap on their
revisions), so a decision taken on a view that has moved on is dropped, never applied to
records it was not meant for, and the planner decides again on its next tick.

Every kind below is also the ``kind`` of the record the decision leaves in etcd's decisions log
(``model.Decision``, shown by ``rangekv status`` and ``GET /v1/cluster``), where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rangekv import model
from rangekv.controller.lag import LagEvent
from rangekv.controller.split import MergePlan, SplitPlan
from rangekv.model import Group, Node, Range

# Kinds of decision records (model.Decision.kind).
DECISION_LEADER_ELECTED = "leader_elected"  # a new epoch and its leader
DECISION_REPLACE_STARTED = "replace_started"
DECISION_REPLACE_SWAPPED = "replace_swapped"
DECISION_JOINT_CLEARED = "joint_cleared"
DECISION_REPLACE_ABANDONED = "replace_abandoned"
DECISION_NO_SPARE = "no_spare"
DECISION_NODE_REMOVED = "node_removed"  # an operator removed a dead or flagged node's record
DECISION_LAG_STUCK = model.LAG_STUCK  # a member or learner whose lag stopped shrinking
DECISION_LAG_RECOVERED = model.LAG_RECOVERED  # ... caught up again, or left its group
DECISION_FORM_GROUP = "form_group"  # a split needs a group with room: one more is formed
DECISION_SPLIT = "split"
DECISION_SPLIT_SKIPPED = "split_skipped"
DECISION_MERGE = "merge"
DECISION_MOVE = "move"
DECISION_MOVE_SWITCH = "move_switch"
DECISION_MOVE_COPIED = "move_copied"
DECISION_MOVE_ABANDONED = "move_abandoned"


@dataclass(frozen=True)
class ElectLeader:
    """Record ``leader`` for ``epoch`` (above ``group.epoch``) in ``group``'s record; the
    leader learns it from its next heartbeat's reply (``campaign``)."""

    group: Group  # the record as decided on
    epoch: int
    leader: int
    reason: str
    kind: ClassVar[str] = DECISION_LEADER_ELECTED

    def __post_init__(self) -> None:
        assert self.epoch > self.group.epoch, self
        assert self.leader in self.group.members, self


@dataclass(frozen=True)
class FormGroup:
    """A new group (epoch 0, no leader) of these spares; the store issues its id."""

    members: tuple[Node, ...]  # the spares' records as decided on
    reason: str

    def __post_init__(self) -> None:
        assert self.members and all(n.state == model.NODE_SPARE and n.group is None
                                    for n in self.members), self


@dataclass(frozen=True)
class ReplacementStep:
    """One step of replacing a failing follower (docs/internals.md, "Membership"): the group's
    new record and the node records it changes, written in one transaction with the decision
    that explains it (``kind``, ``reason``; ``old``/``new``/``why`` in its details)."""

    before: Group  # the group's record as decided on
    after: Group
    nodes: tuple[tuple[Node | None, Node], ...]  # (record as decided on or None, new record)
    old: int | None
    new: int | None
    reason: str
    why: str = ""  # what is wrong with ``old`` (AddLearner)
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        assert self.before.id == self.after.id, self
        assert all(b is None or b.id == n.id for b, n in self.nodes), self

    @property
    def group_id(self) -> int:
        return self.after.id


@dataclass(frozen=True)
class AddLearner(ReplacementStep):
    """(a) A live spare becomes a learner of the group, to replace member ``old``."""

    kind: ClassVar[str] = DECISION_REPLACE_STARTED


@dataclass(frozen=True)
class PromoteLearner(ReplacementStep):
    """(b) The caught-up learner becomes a member in place of ``old`` in a new epoch whose
    campaign also needs the previous members (``joint``); ``old`` is flagged."""

    kind: ClassVar[str] = DECISION_REPLACE_SWAPPED


@dataclass(frozen=True)
class ClearJoint(ReplacementStep):
    """(c) The leader serves the new epoch: campaigns need the new members only again."""

    kind: ClassVar[str] = DECISION_JOINT_CLEARED


@dataclass(frozen=True)
class DropLearner(ReplacementStep):
    """The replacement is abandoned: the learner leaves (back to the pool, or flagged)."""

    kind: ClassVar[str] = DECISION_REPLACE_ABANDONED


@dataclass(frozen=True)
class NoSpare:
    """Member ``old`` of the group needs replacing and no spare is left: said once per
    episode (a WARNING), and recorded unless an earlier meta recorded this episode already."""

    group_id: int
    old: int
    why: str
    reason: str
    record: bool
    kind: ClassVar[str] = DECISION_NO_SPARE


@dataclass(frozen=True)
class NoteLag:
    """A member's or learner's lag stopped shrinking ("stuck"), or it recovered: said, and
    recorded unless already recorded (a stuck episode an earlier meta recorded)."""

    event: LagEvent
    record: bool

    @property
    def kind(self) -> str:
        return DECISION_LAG_STUCK if self.event.kind == "stuck" else DECISION_LAG_RECOVERED


@dataclass(frozen=True)
class WantGroup:
    """A split needs a group with room and there is none: the planner forms groups until
    there are ``wanted`` (it raised its own target); recorded as ``form_group``."""

    wanted: int
    table: str
    group: int
    reason: str
    kind: ClassVar[str] = DECISION_FORM_GROUP


@dataclass(frozen=True)
class SplitRange:
    """Split a range that is too big or too busy, and move its upper part (``plan.target``)."""

    plan: SplitPlan


@dataclass(frozen=True)
class MergeRanges:
    """Merge two small neighbouring ranges of one group."""

    plan: MergePlan


@dataclass(frozen=True)
class ResumeMove:
    """Finish the move of ``range`` that etcd shows unfinished (``controller.move``)."""

    range: Range


Decision = (ElectLeader | FormGroup | AddLearner | PromoteLearner | ClearJoint | DropLearner
            | NoSpare | NoteLag | WantGroup | SplitRange | MergeRanges | ResumeMove)

# A replacement plan's action -> the step that performs it (``replace.plan_replacement``).
STEPS: dict[str, type[ReplacementStep]] = {
    "add_learner": AddLearner,
    "swap": PromoteLearner,
    "clear_joint": ClearJoint,
    "drop_learner": DropLearner,
}


@dataclass(frozen=True)
class Note:
    """A condition worth a log line that may hold on every tick (no majority, a learner that
    waits): ``key`` names it so that the driver says it at most once in a while; ``level`` is
    "info" or "warning"; ``text`` None means the condition ended (forget ``key``)."""

    key: str
    level: str = "info"
    text: str | None = None
