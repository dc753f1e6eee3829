"""The controller's planner (``rangekv.controller.planner``) as a pure function of what it sees
and the time, driven the way a simulator drives it: its decisions land in etcd in memory
(``metadata.memory``, ``metadata.perform.land``), in simulated time, with no event loop.

First each rule of a tick by example, then a small cluster under random failures for many
seeds, checking after every decision what must always hold: a leader is chosen only with a
live majority and is the most up-to-date live member; a member is replaced only once its
successor has caught up, and only while a majority of the old and of the new members is live;
a group never has fewer members, nor two reconfigurations at once; epochs only grow.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import model
from rangekv.controller.decisions import (
    AddLearner,
    ClearJoint,
    Decision,
    DropLearner,
    ElectLeader,
    FormGroup,
    MergeRanges,
    NoSpare,
    NoteLag,
    PromoteLearner,
    ReplacementStep,
    ResumeMove,
    SplitRange,
)
from rangekv.controller.health import Beat
from rangekv.controller.nodes import node_record
from rangekv.controller.planner import Planner, PlannerConfig, Seen
from rangekv.controller.split import SplitConfig
from rangekv.metadata.memory import MemoryKV, MemoryStore, run_now
from rangekv.metadata.perform import land
from rangekv.metadata.store import apply_events
from rangekv.model import ClusterView, Group, Range, Table
from rangekv.model.status import NodeStatus

CONTROLLER = Path(__file__).resolve().parents[2] / "src" / "rangekv" / "controller"

CFG = PlannerConfig(groups_min=1, group_size=3, heartbeat_timeout_ms=600,
                    campaign_timeout_ms=2000, formation_interval_ms=200, replace_grace_ms=2000,
                    replace_lag_entries=100, catch_up_slack_entries=5, learner_timeout_ms=20_000,
                    lag_stuck_entries=50, lag_stuck_after_ms=3000)


# -- the controller is pure ----------------------------------------------------------------------

ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "itertools", "typing",
           "rangekv", "rangekv.errors", "rangekv.model", "rangekv.model.status"}


def test_the_controller_imports_no_io_no_clock_and_nothing_of_the_meta() -> None:
    """What a simulator runs must not wait, read a clock or reach a network: the controller
    imports the standard library's pure parts, the model and the error tree, and itself."""
    for path in sorted(CONTROLLER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module, (path.name, node.lineno)
                names = [node.module]
            for name in names:
                assert name in ALLOWED or name.startswith("rangekv.controller"), (
                    f"{path.name}:{node.lineno} imports {name}")


# -- a cluster in simulated time -----------------------------------------------------------------


@dataclass
class FakeNode:
    """What a node reports: the planner sees nothing else of it."""

    id: int
    up: bool = True
    broken: bool = False
    lagging: bool = False  # a member that stops receiving entries
    learn_rate: int = 200  # entries a learner catches up per step (0: stuck)
    epoch: int = 0  # the highest epoch it heard of
    leader_epoch: int = 0  # the epoch it serves as leader (0: none)
    last_epoch: int = 0
    last_index: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{9000 + self.id}"


@dataclass
class World:
    """Nodes, etcd in memory, the meta's view of it and its planner, on one clock."""

    nodes: dict[int, FakeNode]
    config: PlannerConfig = CFG
    now_ms: float = 0.0
    planner: Planner = field(init=False)
    kv: MemoryKV = field(init=False)
    store: MemoryStore = field(init=False)
    view: ClusterView = field(default_factory=ClusterView)
    revs: dict[bytes, int] = field(default_factory=dict)
    performed: list[tuple[Decision, Seen, int | None]] = field(default_factory=list)
    wall_ns: int = 1_000_000
    last_beats: dict[int, Beat] = field(default_factory=dict)  # a dead node's stays, as in meta

    def __post_init__(self) -> None:
        self.kv = MemoryKV(clock=lambda: self.now_ms / 1000)
        self.store = MemoryStore(self.kv)
        self.planner = Planner(self.config)
        self.planner.begin_term(self.now_ms)

    def sync(self) -> None:
        apply_events(self.view, self.revs, self.kv.events_since(self.view.revision + 1))

    def status(self, n: FakeNode) -> NodeStatus:
        group = self.view.group_of(n.id)
        if n.broken:
            return NodeStatus(broken=True, broken_reason="bad block")
        serving = group is not None and n.leader_epoch == group.epoch and group.leader == n.id
        return NodeStatus(group=group.id if group else None, epoch=n.epoch,
                          role="leader" if serving else "follower",
                          leader_epoch=n.leader_epoch, last_epoch=n.last_epoch,
                          last_index=n.last_index, commit_index=n.last_index,
                          applied_index=n.last_index)

    def beats(self) -> dict[int, Beat]:
        """Every node's latest heartbeat (a live one's now); a heartbeat also registers the
        node (the meta's heartbeat handler, ``controller.nodes.node_record``)."""
        out = self.last_beats
        for n in self.nodes.values():
            if not n.up:
                continue
            status = self.status(n)
            out[n.id] = Beat(self.now_ms / 1000, n.address, status)
            known = self.view.nodes.get(n.id)
            wanted, _ = node_record(n.id, n.address, known, status, self.view.group_of(n.id))
            if wanted != known:
                run_now(self.store.put_node(wanted, self.revs.get(model.node_key(n.id), 0)))
                self.sync()
        return dict(out)

    def step_nodes(self, writes: int) -> None:
        """The groups' replication, crudely: a live leader that holds its recorded epoch
        appends ``writes`` entries; live, sound, non-lagging members keep up; learners catch
        up at their rate."""
        for group in self.view.groups.values():
            for m in (*group.members, *group.learners, *group.joint):
                n = self.nodes[m]
                if n.up:
                    n.epoch = max(n.epoch, group.epoch)
            lead = self.nodes.get(group.leader) if group.leader is not None else None
            if lead is None or not lead.up or lead.broken:
                continue
            if lead.leader_epoch != group.epoch:
                lead.leader_epoch = lead.last_epoch = group.epoch  # its campaign won
                lead.last_index += 1  # its no-op
            lead.last_index += writes
            for m in group.members:
                n = self.nodes[m]
                if m != lead.id and n.up and not n.broken and not n.lagging:
                    n.last_epoch, n.last_index = lead.last_epoch, lead.last_index
                if m != lead.id and n.leader_epoch:
                    n.leader_epoch = 0
            for m in group.learners:
                n = self.nodes[m]
                if n.up and not n.broken:
                    n.last_index = min(lead.last_index, n.last_index + n.learn_rate)
                    n.last_epoch = lead.last_epoch if n.last_index == lead.last_index else 0

    def tick(self) -> list[Decision]:
        seen = Seen(self.view, self.beats())
        decisions = self.planner.tick(self.now_ms, seen)
        for d in decisions:
            written = run_now(land(self.store, self.view, self.revs, d, self.wall_ns))
            self.wall_ns += 1000
            self.planner.done(d, written is not None, self.now_ms)
            self.performed.append((d, seen, written))
            self.sync()
        self.planner.next_tick_ms(self.now_ms, seen)
        return decisions

    def run(self, ms: float, step_ms: float = 100.0, writes: int = 10) -> None:
        end = self.now_ms + ms
        while self.now_ms < end:
            self.step_nodes(writes)
            self.tick()
            self.now_ms += step_ms


def world(n: int = 5, **config: Any) -> World:
    w = World({i: FakeNode(i) for i in range(1, n + 1)},
              replace(CFG, **config) if config else CFG)
    w.run(1000)  # registration, a group of the three lowest, its first leader
    return w


def only_group(w: World) -> Group:
    (group,) = w.view.groups.values()
    return group


# -- each rule by example ------------------------------------------------------------------------


def test_a_group_forms_and_its_most_caught_up_member_leads() -> None:
    w = World({i: FakeNode(i, last_index=i * 10) for i in (1, 2, 3, 4)})
    w.run(1000)
    group = only_group(w)
    assert group.members == (1, 2, 3) and group.epoch == 1 and group.leader == 3
    kinds = [type(d) for d, _, written in w.performed if written]
    assert kinds[:2] == [FormGroup, ElectLeader]


def test_a_dead_leader_is_replaced_after_the_heartbeat_timeout_not_before() -> None:
    w = world()
    first = only_group(w)
    w.nodes[first.leader].up = False  # type: ignore[index]
    died = w.now_ms
    w.run(500)
    assert only_group(w).epoch == first.epoch  # not yet: 600 ms
    w.run(500)
    second = only_group(w)
    assert second.epoch == first.epoch + 1 and second.leader != first.leader
    elected = [d for d, _, ok in w.performed if ok and isinstance(d, ElectLeader)][-1]
    assert "not live" in elected.reason and w.now_ms - died <= 1000


def test_after_a_stall_nobody_is_judged_for_the_grace() -> None:
    w = world()
    first = only_group(w)
    w.nodes[first.leader].up = False  # type: ignore[index]
    w.now_ms += 1000  # its beat expired, but this tick comes a second late: a stall
    w.tick()
    notes = w.planner.take_notes()
    assert any(n.key == "stall" and n.text and "late" in n.text for n in notes)
    assert only_group(w).epoch == first.epoch
    w.run(1000)
    assert only_group(w).epoch == first.epoch + 1


def test_no_leader_without_a_live_majority() -> None:
    w = world()
    first = only_group(w)
    others = [m for m in first.members if m != first.leader]
    w.nodes[first.leader].up = w.nodes[others[0]].up = False  # type: ignore[index]
    w.run(2000)
    assert only_group(w) == first
    notes = [n.text for n in w.planner.take_notes() if n.text]
    assert any("no election" in t and "majority" in t for t in notes)


def test_a_chosen_leader_that_never_takes_up_its_epoch_is_replaced() -> None:
    w = world()
    first = only_group(w)
    w.nodes[first.leader].up = False  # type: ignore[index]
    w.run(800)
    chosen = only_group(w).leader
    assert chosen != first.leader
    w.nodes[chosen].broken = True  # type: ignore[index]
    w.run(300)
    assert only_group(w).leader not in (first.leader, chosen)


def test_a_dead_follower_is_replaced_by_the_lowest_spare_once_its_successor_caught_up() -> None:
    w = world(6)
    first = only_group(w)
    x = next(m for m in first.members if m != first.leader)
    w.nodes[x].up = False
    w.run(6000)  # the grace (2 s): a learner joins, catches up, is swapped in, joint cleared
    group = only_group(w)
    assert x not in group.members and 4 in group.members and not group.joint
    assert group.epoch > first.epoch and group.leader == first.leader
    steps = [d for d, _, ok in w.performed if ok and isinstance(d, ReplacementStep)]
    assert [type(d) for d in steps] == [AddLearner, PromoteLearner, ClearJoint]
    assert steps[0].new == 4 and steps[0].old == x  # the lowest live spare
    assert [d.kind for d in w.view.decisions] == [
        "replace_started", "replace_swapped", "joint_cleared"]
    assert w.view.nodes[x].state == model.NODE_FLAGGED
    assert w.view.nodes[x].flag == model.FLAG_REPLACED


def test_a_learner_that_never_catches_up_is_dropped_and_the_next_spare_tried() -> None:
    w = world(6, learner_timeout_ms=4000)
    first = only_group(w)
    x = next(m for m in first.members if m != first.leader)
    w.nodes[x].up = False
    w.nodes[4].learn_rate = 0
    w.run(7000)
    assert w.view.nodes[4].flag == model.FLAG_LEARNER_FAILED
    assert only_group(w).learners == (5,)
    assert any(isinstance(d, DropLearner) and ok for d, _, ok in w.performed)


def test_no_spare_is_said_once_per_episode_and_recorded_once() -> None:
    w = world(3)
    first = only_group(w)
    x = next(m for m in first.members if m != first.leader)
    w.nodes[x].up = False
    w.run(5000)
    said = [d for d, _, _ in w.performed if isinstance(d, NoSpare)]
    assert len(said) == 1 and said[0].record and said[0].old == x
    assert [d.kind for d in w.view.decisions] == ["no_spare"]
    # a new planner (another meta taking over) says it again but does not record it again
    w.planner = Planner(w.config)
    w.planner.begin_term(w.now_ms)
    w.run(2000)
    again = [d for d, _, _ in w.performed if isinstance(d, NoSpare)]
    assert len(again) == 2 and not again[1].record
    assert [d.kind for d in w.view.decisions] == ["no_spare"]


def test_two_groups_short_of_a_member_take_different_spares_in_one_tick() -> None:
    w = World({i: FakeNode(i) for i in range(1, 9)}, replace(CFG, groups_min=2))
    w.run(1500)
    assert len(w.view.groups) == 2
    for group in list(w.view.groups.values()):
        w.nodes[next(m for m in group.members if m != group.leader)].up = False
    w.run(2500)
    added = [d for d, _, ok in w.performed if ok and isinstance(d, AddLearner)]
    assert sorted(d.new for d in added) == [7, 8]  # type: ignore[type-var]
    assert not [d for d, _, ok in w.performed if isinstance(d, AddLearner) and not ok]


def test_a_decision_taken_on_records_that_moved_on_does_not_land() -> None:
    w = world()
    group = only_group(w)
    stale = ElectLeader(replace(group, epoch=group.epoch - 1), group.epoch + 5, group.members[0],
                        "on an old record")
    assert run_now(land(w.store, w.view, w.revs, stale, 1)) is None
    assert only_group(w) == group


def test_lag_that_stops_shrinking_is_said_and_recorded_once() -> None:
    w = world(replace_lag_entries=10**9)  # said, not replaced
    group = only_group(w)
    x = next(m for m in group.members if m != group.leader)
    w.nodes[x].lagging = True
    w.run(6000, writes=30)
    notes = [d for d, _, _ in w.performed if isinstance(d, NoteLag)]
    assert [(d.event.kind, d.event.node, d.record) for d in notes] == [("stuck", x, True)]
    w.nodes[x].lagging = False
    w.run(1000)
    notes = [d for d, _, _ in w.performed if isinstance(d, NoteLag)]
    assert [d.event.kind for d in notes] == ["stuck", "recovered"]


def test_next_tick_wakes_just_after_a_leader_heartbeat_expires() -> None:
    w = world()
    group = only_group(w)
    seen = Seen(w.view, {group.leader: Beat(w.now_ms / 1000 - 0.58, "a:1", NodeStatus())})
    delay = w.planner.next_tick_ms(w.now_ms, seen)
    assert 20 < delay < 22  # 600 ms after its beat, plus 1 ms; before the 50 ms interval
    assert w.planner.next_tick_ms(w.now_ms, Seen(w.view, {})) == pytest.approx(
        CFG.election_interval_ms)


def test_splits_merges_and_moves_are_planned_from_the_view_and_the_figures() -> None:
    planner = Planner(replace(CFG, split=SplitConfig(bytes_max=1000, cooldown_s=0.0)))
    planner.begin_term(0)
    view = ClusterView()
    view.groups[1] = Group(1, 1, 1, (1, 2, 3))
    view.groups[2] = Group(2, 1, 4, (4, 5, 6))
    view.tables["t"] = Table(1, "t")
    view.ranges[1] = [Range(1, b"", b"m", 1), Range(1, b"m", None, 1)]
    figures = [{"t": 1, "start": b"", "bytes": 5000, "counted": True},
               {"t": 1, "start": b"m", "bytes": 10, "counted": True}]
    decisions = planner.tick(1000, Seen(view, {}, {1: (1.0, figures)}))
    (split,) = [d for d in decisions if isinstance(d, SplitRange)]
    assert split.plan.target == 2 and split.plan.by == "size"
    # one at a time: while the driver's split runs, none; nor in the table's cooldown
    planner = Planner(replace(CFG, split=SplitConfig(bytes_max=1000, cooldown_s=100.0)))
    planner.begin_term(0)
    busy = planner.tick(1000, Seen(view, {}, {1: (1.0, figures)}, splitting=True))
    assert not [d for d in busy if isinstance(d, SplitRange | MergeRanges)]
    small = [{**f, "bytes": 10} for f in figures]
    (merge,) = [d for d in planner.tick(2100, Seen(view, {}, {1: (2.0, small)}))
                if isinstance(d, MergeRanges)]
    assert merge.plan.at == b"m"
    # an unfinished move is resumed on every tick
    view.ranges[1] = [Range(1, b"", b"m", 1), Range(1, b"m", None, 2, 3, model.RANGE_MOVING,
                                                    source=1)]
    resumed = [d for d in planner.tick(3200, Seen(view, {})) if isinstance(d, ResumeMove)]
    assert [d.range.start for d in resumed] == [b"m"]


# -- invariants under random failures ------------------------------------------------------------

EVENTS = ["kill", "revive", "break", "heal", "lag", "unlag", "stall_learner", "quiet"]


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, list[tuple[int, str, int]]]:
    n = draw(st.integers(3, 7))
    events = draw(st.lists(st.tuples(st.integers(0, 399), st.sampled_from(EVENTS),
                                     st.integers(1, n)), max_size=25))
    return n, sorted(events)


def check_decision(w: World, d: Decision, seen: Seen, written: int | None) -> None:
    now_s = w.now_ms / 1000
    hb_s = w.config.heartbeat_timeout_ms / 1000

    def sound(m: int) -> bool:
        b = seen.beats.get(m)
        return b is not None and now_s - b.at_s <= hb_s and not b.status.broken

    def majority(members: tuple[int, ...]) -> bool:
        return sum(sound(m) for m in members) >= len(members) // 2 + 1

    if isinstance(d, ElectLeader):
        group = d.group
        # a live majority (of the previous members too while joint, with sound logs)
        live = [m for m in group.members
                if m in seen.beats and now_s - seen.beats[m].at_s <= hb_s]
        assert len(live) >= len(group.members) // 2 + 1, d
        assert not group.joint or majority(group.joint), d
        assert sound(d.leader), d
        # the most up-to-date live sound member (but a leader that failed, if others can)
        def progress(m: int) -> tuple[int, int]:
            st_ = seen.beats[m].status
            return st_.last_epoch, st_.last_index

        rivals = [m for m in group.members if sound(m) and m != group.leader]
        assert all(progress(d.leader) >= progress(m) for m in rivals), (d, rivals)
        assert d.epoch > group.epoch
        assert all(seen.beats[m].status.epoch < d.epoch for m in group.members
                   if m in seen.beats and seen.beats[m].status.group == group.id
                   and now_s - seen.beats[m].at_s <= hb_s), d
    if isinstance(d, PromoteLearner):
        before, after = d.before, d.after
        (y,) = before.learners
        lead = seen.beats[before.leader]  # type: ignore[index]
        learner = seen.beats[y]
        # never before the successor caught up (within the slack of the serving leader)
        assert sound(y) and learner.status.commit_index + w.config.catch_up_slack_entries >= \
            lead.status.commit_index, d
        assert lead.status.role == "leader" and lead.status.leader_epoch == before.epoch
        # never fewer than a majority: of the old members and of the new
        assert majority(before.members) and majority(after.members), d
        assert len(after.members) == len(before.members) and after.joint == before.members
    if isinstance(d, AddLearner):
        assert not d.before.changing and d.old in d.before.members
        assert d.old != d.before.leader
    if isinstance(d, ReplacementStep) and written is not None:
        assert d.after.epoch >= d.before.epoch


def check_view(w: World, epochs: dict[int, int]) -> None:
    for gid, group in w.view.groups.items():
        assert len(group.members) == w.config.group_size, group
        assert len(group.learners) <= 1 and not (group.learners and group.joint), group
        assert group.epoch >= epochs.get(gid, 0), (group, epochs)
        epochs[gid] = group.epoch
        for m in group.members:
            assert w.view.nodes[m].group == gid or w.view.nodes[m].state == model.NODE_FLAGGED


@settings(max_examples=60, deadline=None)
@given(schedules())
def test_invariants_hold_under_random_failures(schedule: tuple[int, list[Any]]) -> None:
    n, events = schedule
    w = World({i: FakeNode(i, learn_rate=150) for i in range(1, n + 1)})
    epochs: dict[int, int] = {}
    for step in range(400):  # 40 s: several graces, learner timeouts and campaigns
        for _, kind, node_id in [e for e in events if e[0] == step]:
            node = w.nodes[node_id]
            if kind == "kill":
                node.up = False
            elif kind == "revive":
                node.up = True
            elif kind == "break":
                node.broken = True
            elif kind == "heal":
                node.broken = False
            elif kind in ("lag", "unlag"):
                node.lagging = kind == "lag"
            elif kind == "stall_learner":
                node.learn_rate = 0
        w.step_nodes(10)
        start = len(w.performed)
        decisions = w.tick()
        touched = [d.group_id for d in decisions if isinstance(d, ReplacementStep)]
        assert len(touched) == len(set(touched)), decisions  # one step per group per tick
        for d, seen, written in w.performed[start:]:
            check_decision(w, d, seen, written)
        check_view(w, epochs)
        w.now_ms += 100


class HastyPlanner(Planner):
    """A planted bug, in the one method of its rule: a learner counts as caught up at once."""

    def plan_replacement(self, group: Group, view: ClusterView, beats: Any, now_s: float,
                         lag_since: dict[int, float], learner_since_s: float,
                         learner_target: int) -> Any:
        from rangekv.controller.replace import plan_replacement

        policy = replace(self.config.replacement, catch_up_slack=10**9)
        return plan_replacement(group, view, beats, now_s, policy=policy,
                                judge_from_s=self.judge_from_s(), lag_since=lag_since,
                                learner_since_s=learner_since_s, learner_target=0)


def test_the_invariants_catch_a_member_replaced_before_its_successor_caught_up() -> None:
    w = world(6)
    w.planner = HastyPlanner(w.config)
    w.planner.begin_term(w.now_ms)
    group = only_group(w)
    w.nodes[next(m for m in group.members if m != group.leader)].up = False
    w.nodes[4].learn_rate = 1
    with pytest.raises(AssertionError, match="PromoteLearner"):
        for _ in range(60):
            w.step_nodes(10)
            start = len(w.performed)
            w.tick()
            for d, seen, written in w.performed[start:]:
                check_decision(w, d, seen, written)
            w.now_ms += 100
