"""The simulated metadata manager: the real controller (``rangekv.controller.planner``) over the
in-memory store (``rangekv.metadata.memory``), on the simulation's clock.

What runs is what the active meta runs (``metadata/perform.py``'s control loop, the heartbeat
handler of ``metadata/handlers.py``), without an event loop:

* **a heartbeat** (``heartbeat``) records the node's ``Beat``, writes the record the heartbeat
  calls for (``controller.nodes.node_record``: a new node a spare, a broken log flagged), and
  is answered from the view as ``Handlers._assignment`` answers it: the group the node takes
  part in (members, learners, joint voters) and the epoch to campaign for if the record names
  it leader and it does not serve that epoch. That answer is the only way a node learns its
  configuration or that it should lead, as in production;
* **a tick** (``tick``) asks the ``Planner`` for its decisions, lands each one in the store with
  ``perform.land`` (one compare-and-swap on the records it was decided on), tells the planner
  (``done``) and brings the view forward from the store's events (``store.apply_events``), then
  sleeps ``next_tick_ms``. Splits, merges and moves are not planned here: one group, one range,
  no range figures reported;
* **failover** (``die``, ``take_over``): the active meta dies with its planner and every
  heartbeat it had (its memory is gone); after a lease-like delay a new one loads the view from
  the store and starts a new ``Planner`` with ``begin_term``, which judges nobody for one
  heartbeat timeout. While no meta is active, heartbeats go unanswered and nothing is decided.

Invariants asserted: a tick belongs to the term that scheduled it (a dead meta never decides),
the view only moves forward, and the planner never plans what this simulation cannot perform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rangekv import model
from rangekv.controller.decisions import (
    Decision,
    MergeRanges,
    NoSpare,
    ResumeMove,
    SplitRange,
)
from rangekv.controller.health import Beat
from rangekv.controller.nodes import node_record
from rangekv.controller.planner import Planner, PlannerConfig, Seen
from rangekv.metadata.memory import MemoryKV, MemoryStore, run_now
from rangekv.metadata.perform import land
from rangekv.metadata.store import apply_events
from rangekv.model import ClusterView, Group, Node
from rangekv.model.status import NodeStatus

if TYPE_CHECKING:
    from rangekv.sim.cluster import Simulation

PlannerFactory = Callable[[PlannerConfig], Planner]
GROUP = 1  # the simulation's one group
# (members, learners, joint): what a heartbeat's answer tells a node of its group
Config = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
NO_CONFIG: Config = ((), (), ())


def address(node_id: int) -> str:
    return f"n{node_id}"


class SimMeta:
    """The active meta of one simulation (or none, between a failover and the next term)."""

    def __init__(self, sim: Simulation, config: PlannerConfig, planner_factory: PlannerFactory,
                 members: list[int], spares: list[int]) -> None:
        self.sim = sim
        self.config = config
        self.planner_factory = planner_factory
        self.kv = MemoryKV(clock=lambda: sim.now / 1000)
        self.store = MemoryStore(self.kv)
        # The cluster as it starts: one group of ``members`` with no epoch yet, the spares.
        for i in members:
            self.kv.put(model.node_key(i),
                        model.dumps(Node(i, address(i), model.NODE_MEMBER, GROUP)))
        for i in spares:
            self.kv.put(model.node_key(i), model.dumps(Node(i, address(i), model.NODE_SPARE, None)))
        self.kv.put(model.group_key(GROUP),
                    model.dumps(Group(GROUP, 0, None, tuple(members)).to_json()))
        self.kv.put(b"/rangekv/counters/group_id", str(GROUP).encode())
        self.view: ClusterView = ClusterView()
        self.revs: dict[bytes, int] = {}
        self.view, self.revs = run_now(self.store.load())
        self.beats: dict[int, Beat] = {}  # this meta's: a new one starts without any
        self.planner: Planner | None = None
        self.term = 0  # grows with each active meta; a tick carries the term that planned it
        self.wall_ns = 1_700_000_000_000_000_000  # decision records' wall time: only grows
        self.ticks = 0
        self.failovers = 0

    # -- the store ---------------------------------------------------------------------------

    def sync(self) -> None:
        """The view brought forward by the store's events, as the meta's view follower does."""
        before = self.view.revision
        apply_events(self.view, self.revs, self.kv.events_since(self.view.revision + 1))
        assert self.view.revision >= before, (before, self.view.revision)

    @property
    def group(self) -> Group:
        return self.view.groups[GROUP]

    # -- the active meta's term ----------------------------------------------------------------

    def take_over(self) -> None:
        """A meta becomes active: it loads the view from the store and starts a new planner."""
        assert self.planner is None
        self.view, self.revs = run_now(self.store.load())
        self.beats = {}
        self.term += 1
        self.planner = self.planner_factory(self.config)
        self.planner.begin_term(self.sim.now)
        self.sim.log(f"meta: term {self.term} begins (view at revision {self.view.revision})")
        self.sim.at(0, "meta_check", self.term)

    def die(self) -> None:
        """The active meta dies: its planner, its memory and the heartbeats it had go."""
        if self.planner is None:
            return
        self.planner = None
        self.beats = {}
        self.failovers += 1
        self.sim.log(f"meta: the active meta of term {self.term} dies")

    @property
    def active(self) -> bool:
        return self.planner is not None

    # -- what the nodes send ---------------------------------------------------------------------

    def heartbeat(self, node_id: int, status: NodeStatus) -> tuple[Config, int | None] | None:
        """A node's heartbeat (``Handlers._op_heartbeat``): its answer, the node's config and
        the epoch to campaign for; None if no meta is active (the node hears nothing)."""
        if self.planner is None:
            return None
        self.beats[node_id] = Beat(self.sim.now / 1000, address(node_id), status)
        known = self.view.nodes.get(node_id)
        record, why = node_record(node_id, address(node_id), known, status,
                                  self.view.group_of(node_id))
        if record != known:
            rev = self.revs.get(model.node_key(node_id), 0)
            if run_now(self.store.put_node(record, rev)) is not None:
                self.sync()
                self.sim.log(f"meta: {why}")
        return self.assignment(node_id, status)

    def assignment(self, node_id: int, status: NodeStatus) -> tuple[Config, int | None]:
        """The heartbeat's answer, as ``Handlers._assignment`` makes it from the view."""
        group = self.view.group_of(node_id)
        if group is None:
            return NO_CONFIG, None
        campaign = None
        if group.leader == node_id and not (status.role == "leader"
                                            and status.leader_epoch == group.epoch):
            assert group.epoch > 0, group
            campaign = group.epoch
        return (group.members, group.learners, group.joint), campaign

    def config_of(self, node_id: int) -> Config:
        """What a starting node is told of its group (from the records, as a heartbeat's
        answer tells it)."""
        group = self.view.group_of(node_id)
        return NO_CONFIG if group is None else (group.members, group.learners, group.joint)

    # -- the control loop ------------------------------------------------------------------------

    def tick(self, term: int) -> None:
        """One tick of the active meta's control loop (``perform.ControlLoop``): the planner's
        decisions, each landed by ``perform.land`` and reported back with ``done``."""
        planner = self.planner
        if planner is None or term != self.term:
            return  # planned by a meta that died since
        sim = self.sim
        now_ms = sim.now
        self.ticks += 1
        seen = Seen(self.view, self.beats)
        for d in planner.tick(now_ms, seen):
            assert not isinstance(d, SplitRange | MergeRanges | ResumeMove), d
            written = run_now(land(self.store, self.view, self.revs, d, self.wall_ns))
            self.wall_ns += 1_000
            planner.done(d, written is not None, now_ms)
            if written is not None:
                self.sync()
            if written is not None or isinstance(d, NoSpare):
                sim.meta_decided(d)
        planner.take_notes()
        sim.at(planner.next_tick_ms(now_ms, seen), "meta_check", self.term)


def decision_line(d: Decision) -> str:
    """A decision for the trace."""
    reason = getattr(d, "reason", "")
    return f"meta: {type(d).__name__}: {reason}" if reason else f"meta: {d}"
