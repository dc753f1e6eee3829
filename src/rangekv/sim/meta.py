"""The simulated metadata manager: the real controller (``rangekv.controller.planner``) over the
in-memory store (``rangekv.metadata.memory``), on the simulation's clock.

What runs is what the active meta runs (``metadata/perform.py``'s control loop, the heartbeat
handler of ``metadata/handlers.py``, the range changes of ``metadata/rangeops.py`` and the
moves of ``metadata/mover.py``), without an event loop:

* **a heartbeat** (``heartbeat``) records the node's ``Beat`` (and, from a group's leader, its
  range figures), writes the record the heartbeat calls for (``controller.nodes.node_record``:
  a new node a spare, a broken log flagged), and is answered from the view as
  ``Handlers._assignment`` answers it: the group the node takes part in (members, learners,
  joint voters) and the epoch to campaign for (``controller.nodes.campaign_epoch``). That
  answer is the only way a node learns its configuration or that it should lead;
* **a tick** (``tick``) asks the ``Planner`` for its decisions, lands each membership decision
  in the store with ``perform.land`` (one compare-and-swap on the records it was decided on),
  tells the planner (``done``) and brings the view forward from the store's events
  (``store.apply_events``), then sleeps ``next_tick_ms``. A split, a merge or the move of a
  range runs as a task (``sim/tasks.py``): production's coroutines (``rangeops.cut_range``,
  ``rangeops.merge_ranges``, ``rangeops.begin_move``, ``RangeMover.run``), stepped by hand,
  their requests to group leaders (``tell``) carried over the simulated network, retried
  within a budget as ``metadata/leaders.py`` retries them;
* **failover** (``die``, ``take_over``): the active meta dies with its planner, its tasks and
  every heartbeat it had (its memory is gone); after a lease-like delay a new one loads the
  view from the store and starts a new ``Planner`` with ``begin_term``, which judges nobody for
  one heartbeat timeout, and resumes every move the store shows unfinished. While no meta is
  active, heartbeats go unanswered and nothing is decided.

Invariants asserted: a tick belongs to the term that scheduled it (a dead meta never decides),
the view only moves forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rangekv import errors, model
from rangekv.controller.decisions import (
    DECISION_SPLIT,
    Decision,
    MergeRanges,
    NoSpare,
    ResumeMove,
    SplitRange,
)
from rangekv.controller.health import Beat
from rangekv.controller.nodes import campaign_epoch, node_record
from rangekv.controller.planner import Planner, PlannerConfig, Seen
from rangekv.controller.split import MergePlan, SplitPlan
from rangekv.metadata import rangeops
from rangekv.metadata.memory import MemoryKV, MemoryStore, run_now
from rangekv.metadata.mover import RETRY_S, RangeMover
from rangekv.metadata.mover_bugs import MoverFactory
from rangekv.metadata.perform import land, record
from rangekv.metadata.store import apply_events
from rangekv.model import ClusterView, Group, Node, key_text
from rangekv.model.status import ROLE_LEADER, NodeStatus
from rangekv.sim.tasks import SimTask, Wait

if TYPE_CHECKING:
    from rangekv.sim.cluster import Simulation

PlannerFactory = Callable[[PlannerConfig], Planner]
GROUP = 1  # the simulation's first group (every seed has it; range seeds have a second)
TABLE_NAME = "sim"
# (members, learners, joint): what a heartbeat's answer tells a node of its group
Config = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
NO_CONFIG: Config = ((), (), ())
LOG = logging.getLogger("rangekv.sim.meta")  # the mover's own lines (quiet in a simulation)
LOG.addHandler(logging.NullHandler())


def address(node_id: int) -> str:
    return f"n{node_id}"


class SimMeta:
    """The active meta of one simulation (or none, between a failover and the next term)."""

    def __init__(self, sim: Simulation, config: PlannerConfig, planner_factory: PlannerFactory,
                 groups: dict[int, list[int]], spares: list[int], *, table: bool = False,
                 mover_factory: MoverFactory = RangeMover, page_keys: int = 1000) -> None:
        self.sim = sim
        self.config = config
        self.planner_factory = planner_factory
        self.kv = MemoryKV(clock=lambda: sim.now / 1000)
        self.store = MemoryStore(self.kv)
        # The cluster as it starts: its groups with no epoch yet, the spares, and (range seeds)
        # the table, one range on the first group, as ``rangekv table create`` leaves it.
        for gid, members in groups.items():
            for i in members:
                self.kv.put(model.node_key(i),
                            model.dumps(Node(i, address(i), model.NODE_MEMBER, gid)))
            self.kv.put(model.group_key(gid),
                        model.dumps(Group(gid, 0, None, tuple(members)).to_json()))
        for i in spares:
            self.kv.put(model.node_key(i), model.dumps(Node(i, address(i), model.NODE_SPARE, None)))
        self.kv.put(b"/rangekv/counters/group_id", str(max(groups)).encode())
        if table:
            created = run_now(self.store.create_table(TABLE_NAME, GROUP, 0))
            assert created is not None
            assert run_now(self.store.set_table_state(created[0], created[1],
                                                      model.TABLE_ACTIVE)) is not None
        self.view: ClusterView = ClusterView()
        self.revs: dict[bytes, int] = {}
        self.view, self.revs = run_now(self.store.load())
        self.beats: dict[int, Beat] = {}  # this meta's: a new one starts without any
        self.reports: dict[int, tuple[float, list[dict[str, Any]]]] = {}  # group -> figures
        self.planner: Planner | None = None
        self.term = 0  # grows with each active meta; a tick carries the term that planned it
        self.wall_ns = 1_700_000_000_000_000_000  # decision records' wall time: only grows
        self.ticks = 0
        self.failovers = 0
        # this term's tasks: the split or merge under way, one per moving range
        self.mover = mover_factory(self.store, self.tell, self.record, self.catch_up, LOG,
                                   lambda: sim.now / 1000, page_keys=page_keys)
        self.split_task: SimTask | None = None
        self.moves: dict[tuple[int, bytes], SimTask] = {}
        self.move_failed_at: dict[tuple[int, bytes], float] = {}
        self.calls = 0  # requests told to group leaders (attempts)

    # -- the store ---------------------------------------------------------------------------

    def sync(self) -> None:
        """The view brought forward by the store's events, as the meta's view follower does."""
        before = self.view.revision
        events = self.kv.events_since(self.view.revision + 1)
        if not events:
            return
        apply_events(self.view, self.revs, events)
        assert self.view.revision >= before, (before, self.view.revision)
        self.sim.groups_changed(self.view.groups)
        if any(e.kv.key.startswith(model.RANGES) for e in events):
            self.sim.ranges_changed(self.view.revision, self.table_ranges())

    def table_ranges(self) -> tuple[model.Range, ...]:
        return tuple(self.view.ranges.get(self.table_id, ()))

    @property
    def table_id(self) -> int:
        table = self.view.tables.get(TABLE_NAME)
        return table.id if table is not None else 0

    @property
    def group(self) -> Group:
        return self.view.groups[GROUP]

    # -- the active meta's term ----------------------------------------------------------------

    def take_over(self) -> None:
        """A meta becomes active: it loads the view from the store and starts a new planner."""
        assert self.planner is None
        self.view, self.revs = run_now(self.store.load())
        self.beats = {}
        self.reports = {}
        self.term += 1
        self.planner = self.planner_factory(self.config)
        self.planner.begin_term(self.sim.now)
        self.sim.log(f"meta: term {self.term} begins (view at revision {self.view.revision})")
        self.sim.at(0, "meta_check", self.term)

    def die(self) -> None:
        """The active meta dies: its planner, its tasks, its memory and the heartbeats it had
        go (a move is resumed by the next one from the store)."""
        if self.planner is None:
            return
        self.planner = None
        self.beats = {}
        self.reports = {}
        for task in [self.split_task, *self.moves.values()]:
            if task is not None:
                task.cancel()
        self.split_task = None
        self.moves, self.move_failed_at = {}, {}
        self.failovers += 1
        self.sim.log(f"meta: the active meta of term {self.term} dies")

    @property
    def active(self) -> bool:
        return self.planner is not None

    @property
    def busy(self) -> bool:
        """A split, a merge or a move still runs, or the store shows a move unfinished."""
        if self.split_task is not None or self.moves:
            return True
        return any(r.state != model.RANGE_ACTIVE or r.source is not None
                   for r in self.table_ranges())

    # -- what the nodes send ---------------------------------------------------------------------

    def heartbeat(self, node_id: int, status: NodeStatus) -> tuple[Config, int | None] | None:
        """A node's heartbeat (``Handlers._op_heartbeat``): its answer, the node's config and
        the epoch to campaign for; None if no meta is active (the node hears nothing)."""
        if self.planner is None:
            return None
        now_s = self.sim.now / 1000
        self.beats[node_id] = Beat(now_s, address(node_id), status)
        if status.ranges is not None and status.group is not None:
            group = self.view.groups.get(status.group)
            if group is not None and group.leader == node_id and status.role == ROLE_LEADER:
                self.reports[status.group] = (now_s, list(status.ranges))
        known = self.view.nodes.get(node_id)
        record_, why = node_record(node_id, address(node_id), known, status,
                                   self.view.group_of(node_id))
        if record_ != known:
            rev = self.revs.get(model.node_key(node_id), 0)
            if run_now(self.store.put_node(record_, rev)) is not None:
                self.sync()
                self.sim.log(f"meta: {why}")
        return self.assignment(node_id, status)

    def assignment(self, node_id: int, status: NodeStatus) -> tuple[Config, int | None]:
        """The heartbeat's answer, as ``Handlers._assignment`` makes it from the view."""
        group = self.view.group_of(node_id)
        if group is None:
            return NO_CONFIG, None
        return (group.members, group.learners, group.joint), campaign_epoch(group, node_id,
                                                                            status)

    def config_of(self, node_id: int) -> Config:
        """What a starting node is told of its group (from the records, as a heartbeat's
        answer tells it)."""
        group = self.view.group_of(node_id)
        return NO_CONFIG if group is None else (group.members, group.learners, group.joint)

    def group_id_of(self, node_id: int) -> int | None:
        group = self.view.group_of(node_id)
        return None if group is None else group.id

    # -- the control loop ------------------------------------------------------------------------

    def tick(self, term: int) -> None:
        """One tick of the active meta's control loop (``perform.ControlLoop``): the planner's
        decisions, each landed by ``perform.land`` (or, a range change, run as a task) and
        reported back with ``done``."""
        planner = self.planner
        if planner is None or term != self.term:
            return  # planned by a meta that died since
        sim = self.sim
        now_ms = sim.now
        self.ticks += 1
        seen = Seen(self.view, self.beats, self.reports, self.split_task is not None)
        for d in planner.tick(now_ms, seen):
            if isinstance(d, SplitRange | MergeRanges | ResumeMove):
                self._range_change(d)
                continue
            written = run_now(land(self.store, self.view, self.revs, d, self.wall_ns))
            self.wall_ns += 1_000
            planner.done(d, written is not None, now_ms)
            if written is not None:
                self.sync()
            if written is not None or isinstance(d, NoSpare):
                sim.meta_decided(d)
        planner.take_notes()
        sim.at(planner.next_tick_ms(now_ms, seen), "meta_check", self.term)

    # -- range changes: production's coroutines as tasks ----------------------------------------

    def _range_change(self, d: SplitRange | MergeRanges | ResumeMove) -> None:
        """``ControlLoop.perform`` for the range decisions: a split or a merge starts its task
        (one at a time); a move etcd shows unfinished gets its task unless one runs or failed
        less than ``RETRY_S`` ago (``RangeMover.ensure``)."""
        if isinstance(d, ResumeMove):
            self.ensure_move(d.range)
            return
        if self.split_task is not None:
            return
        if isinstance(d, SplitRange):
            coro, name = self._split(d.plan), f"split {d.plan.table} at {key_text(d.plan.start)}"
        else:
            coro, name = self._merge(d.plan), f"merge {d.plan.table} at {key_text(d.plan.at)}"
        self.sim.log(f"meta: {name}: {d.plan.reason}")
        self.split_task = SimTask(name, coro, self._perform, self._split_done)
        self.split_task.start()

    def _split_done(self, task: SimTask, result: Any, error: errors.RangeKVError | None) -> None:
        if self.split_task is task:
            self.split_task = None
        self._task_done(task, error)

    def ensure_move(self, rng: model.Range) -> None:
        key = (rng.table_id, rng.start)
        if key in self.moves:
            return
        failed_at = self.move_failed_at.get(key)
        if failed_at is not None and self.sim.now / 1000 - failed_at < RETRY_S:
            return
        task = SimTask(f"move {key_text(rng.start)}", self.mover.run(rng.table_id, rng.start,
                                                                     "resumed"),
                       self._perform, self._move_done)
        self.moves[key] = task
        task.start()

    def _move_done(self, task: SimTask, result: Any, error: errors.RangeKVError | None) -> None:
        for key, t in list(self.moves.items()):
            if t is task:
                del self.moves[key]
                if error is not None:
                    self.move_failed_at[key] = self.sim.now / 1000
        self._task_done(task, error)

    def _task_done(self, task: SimTask, error: errors.RangeKVError | None) -> None:
        self.sync()
        if error is None:
            self.sim.log(f"meta: {task.name}: done")
        else:
            self.sim.log(f"meta: {task.name}: stopped, to be retried: {error.code}: "
                         f"{error.message}")
            self.sim.stats["range_tasks_failed"] += 1

    async def _split(self, plan: SplitPlan) -> None:
        """``ControlLoop._split`` and the request handlers' ``split_range`` and ``move_range``
        it calls: where to cut (the leader's figures), the cut, then the upper part's move."""
        reply = await self.tell(plan.group, "split_key", table_id=plan.table_id,
                                start=plan.start, by=plan.by, fraction=plan.fraction)
        at = reply.get("at")
        if not isinstance(at, bytes) or at <= plan.start:
            return  # its data cannot be divided
        await self.record(DECISION_SPLIT, f"{plan.reason}; split at {key_text(at)}",
                          group=plan.group)
        _, revision = await rangeops.cut_range(self.store, self.tell, plan.table_id, at)
        self.sync()
        if revision is not None:
            assert self.planner is not None
            self.planner.note_split(plan.table_id, self.sim.now)
            self.sim.stats["splits"] += 1
        if plan.target is not None:
            moving, started = await rangeops.begin_move(self.store, plan.table_id, at,
                                                        plan.target)
            self.sync()
            if started:
                self.sim.stats["moves"] += 1
                self.sim.log(f"meta: range at {key_text(at)} moves to group {plan.target}")
            self.ensure_move(moving)

    async def _merge(self, plan: MergePlan) -> None:
        """``ControlLoop._merge``."""
        revision = await rangeops.merge_ranges(self.store, self.tell, plan)
        self.sync()
        if revision is not None:
            self.reports.pop(plan.group, None)  # its figures name the old ranges
            self.sim.stats["merges"] += 1

    # -- what the tasks await ---------------------------------------------------------------------

    async def tell(self, group_id: int, op: str, **fields: Any) -> dict[str, Any]:
        """``Leaders.tell``: ``op`` to the group's leader until it answers, within the budget,
        retrying on not_leader, unavailable and no answer (every such op is idempotent) with a
        jittered exponential backoff; a ``range_not_here`` is raised at once."""
        sim = self.sim
        cfg = sim.cfg
        deadline = sim.now + cfg.node_request_budget_ms
        delay_ms = 50.0
        last = "no attempt made"
        while True:
            group = self.view.groups.get(group_id)
            leader = group.leader if group is not None else None
            if leader is None:
                last = f"group {group_id} has no leader"
            else:
                attempt_ms = max(50.0, min(cfg.node_request_attempt_ms, deadline - sim.now))
                self.calls += 1
                try:
                    reply: dict[str, Any] = await Wait(("call", leader, op, fields, attempt_ms))
                    return reply
                except errors.RangeNotHere:
                    raise
                except (errors.Unavailable, errors.OutcomeUnknown, errors.ProtocolError) as exc:
                    last = f"n{leader}: {exc.code}: {exc.message}"
            pause = delay_ms * sim.rng.uniform(0.5, 1.0)
            delay_ms = min(delay_ms * 2, 500.0)
            if sim.now + pause >= deadline:
                raise errors.Unavailable(f"group {group_id} did not acknowledge {op} within "
                                         f"{cfg.node_request_budget_ms:g} ms (last: {last})",
                                         group=group_id)
            await Wait(("sleep", pause))

    async def record(self, kind: str, reason: str, **details: Any) -> None:
        """``ControlLoop.record_decision``: the decision record (``perform.record``)."""
        group = details.pop("group", None)
        await record(self.store, self.view, kind, reason, self.wall_ns,
                     group if isinstance(group, int) else None, **details)
        self.wall_ns += 1_000
        self.sync()
        self.sim.log(f"meta: {kind}: {reason}")

    async def catch_up(self, revision: int) -> None:
        """The view follower catching up to a revision this meta wrote."""
        self.sync()
        assert self.view.revision >= revision, (self.view.revision, revision)

    def _perform(self, task: SimTask, wait: Wait) -> None:
        """Start what a task waits for: a request to a node, or a pause."""
        self.sync()  # (the task may have written the store before it suspended)
        kind = wait.what[0]
        if kind == "sleep":
            self.sim.at(wait.what[1], "meta_wake", wait)
        else:
            _, node_id, op, fields, attempt_ms = wait.what
            self.sim.meta_call(wait, node_id, op, fields, attempt_ms)

    def answer(self, wait: Wait, reply: dict[str, Any] | None,
               error: BaseException | None) -> None:
        """A node's answer to a request (or its timeout), back to the task that waits."""
        if wait.task is not None:
            wait.task.resume(wait, reply, error)


def decision_line(d: Decision) -> str:
    """A decision for the trace."""
    reason = getattr(d, "reason", "")
    return f"meta: {type(d).__name__}: {reason}" if reason else f"meta: {d}"
