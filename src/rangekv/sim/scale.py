"""``rangekv sim-scale``: the real controller at scale, in simulated time, its ticks timed.

    rangekv sim-scale                                1,000 groups, 100,000 ranges, 60 s, seed 1
    rangekv sim-scale --groups 20 --ranges 500 --seed 7
    rangekv sim-scale --node-deaths 20 --leader-deaths 20 --laggards 10 --hot-ranges 5

What runs: the real ``Planner`` (``rangekv.controller.planner``) ticking as the active meta's
loop does (``planner.tick``, each decision landed, ``planner.next_tick_ms``), its decisions
landing in etcd in memory (``metadata.memory``) through ``metadata.perform.land``, the view
brought forward by the store's events (``metadata.store.apply_events``) as the meta's view
follower does. What is simulated: the nodes. Each node heartbeats every 100 ms (at a phase of
its own) with a ``NodeStatus`` computed from a crude model of its group's log: a serving leader
appends ``writes_per_s`` entries a second, members keep up unless lagging, a learner catches up
at ``learn_per_s``, a chosen leader takes up its epoch ``campaign_ms`` after the view shows it.
Group leaders report every range's figures with their beats, as ``node/stats.py`` does, so the
split planner reads 100,000 figures; splits and the moves they start are performed on the
store as the meta's split task and mover do (``split_range``, then each step of ``move.py``,
one step per ``ResumeMove``).

Events, injected at seeded random times into groups that are whole (one event per group at a
time), each followed until the cluster is whole again:

* **node death**: a follower stops; it is replaced from the spares (a learner added, caught up,
  promoted, joint cleared; the dead one flagged);
* **leader death**: a group's leader stops; a new leader is chosen after the heartbeat timeout,
  takes up its epoch, and the dead one is then replaced as a follower;
* **laggard**: a follower stops receiving entries; the lag watch says it is stuck, and it is
  replaced for lag once behind by more than ``replace_lag_entries`` for the grace;
* **hot range**: a range's leader reports it over ``ops_max``; it is split and its upper half
  moved to the group with room serving the fewest ranges;
* **meta failover**: a new ``Planner`` takes over (``begin_term``) as a group's leader dies.

A group is **whole** when its recorded leader is up and serves the group's epoch, it has
``group_size`` members, all up and keeping up, and no learner nor joint configuration. The
report: ticks, decisions per tick by kind, the wall time of ``Planner.tick`` (median, p99,
max; also of the ticks that ran the membership steps), and for each kind of event the time
from injection to whole again in simulated ms and in ticks. At the end: every group whole, no
node in two groups, every range on an existing group and none moving, every event healed.

The decisions are a function of the seed (printed); only the wall-clock figures vary.
The thresholds are the defaults but for the graces, shortened (``planner_config``) so that a
minute of simulated time sees every kind of event heal; the work of a tick does not depend on
them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rangekv import model
from rangekv.controller import move
from rangekv.controller.decisions import (
    Decision,
    ResumeMove,
    SplitRange,
)
from rangekv.controller.health import Beat
from rangekv.controller.planner import Planner, PlannerConfig, Seen
from rangekv.controller.split import SplitConfig
from rangekv.metadata.memory import MemoryKV, MemoryStore, run_now
from rangekv.metadata.perform import land
from rangekv.metadata.store import apply_events
from rangekv.model import ClusterView, Group, Node, Range, Table
from rangekv.model.status import NodeStatus

BEAT_MS = 100  # nodes heartbeat this often (rangekv.node.server.HEARTBEAT_MS)
EVENT_KINDS = ("node_death", "leader_death", "laggard", "hot_range", "meta_failover")
HEAL_AFTER_MS_MAX = 60_000  # an event not healed this long after the last injection fails


@dataclass(frozen=True)
class ScaleConfig:
    groups: int = 1000
    ranges: int = 100_000
    tables: int = 100
    spares: int = -1  # -1: a tenth of the groups, and at least one per replacement and two
    group_size: int = 3
    duration_ms: int = 60_000  # events are injected in [warmup_ms, duration_ms - settle_ms]
    warmup_ms: int = 2_000
    settle_ms: int = 20_000
    seed: int = 1
    node_deaths: int = 10
    leader_deaths: int = 10
    laggards: int = 5
    hot_ranges: int = 3
    failovers: int = 1
    writes_per_s: int = 1_000  # entries a group's leader appends a second
    learn_per_s: int = 50_000  # entries a learner catches up a second
    campaign_ms: int = 30  # from a leader recorded to it serving the epoch

    def __post_init__(self) -> None:
        assert self.groups >= 1 and self.ranges >= self.tables >= 1 and self.group_size >= 1
        assert self.warmup_ms < self.duration_ms - self.settle_ms, self
        events = (self.node_deaths + self.leader_deaths + self.laggards + self.hot_ranges
                  + self.failovers)
        assert events <= self.groups, ("one event per group at a time", self)
        assert min(self.node_deaths, self.leader_deaths, self.laggards, self.hot_ranges,
                   self.failovers) >= 0

    @property
    def spare_nodes(self) -> int:
        replacements = self.node_deaths + self.leader_deaths + self.laggards + self.failovers
        return self.spares if self.spares >= 0 else max(self.groups // 10, replacements + 2)


def planner_config(cfg: ScaleConfig) -> PlannerConfig:
    """The defaults, but graces short enough for every event to heal within a minute."""
    return PlannerConfig(groups_min=cfg.groups, group_size=cfg.group_size,
                         replace_grace_ms=3_000, replace_lag_entries=5_000,
                         learner_timeout_ms=30_000, lag_stuck_entries=1_000,
                         lag_stuck_after_ms=5_000, split=SplitConfig(cooldown_s=5.0))


@dataclass
class SimNode:
    id: int
    phase_ms: int  # beats at phase_ms + k * BEAT_MS
    up: bool = True
    lagging: bool = False
    epoch: int = 0  # the highest epoch it heard of
    leader_epoch: int = 0  # the epoch it serves as leader (0: none)
    take_up_at_ms: float = -1.0  # when it starts serving the recorded epoch (-1: not due)
    last_epoch: int = 0
    index: int = 0  # its log's last index (= its commit index here)

    @property
    def address(self) -> str:
        return f"10.{self.id // 65536}.{self.id // 256 % 256}.{self.id % 256}:7100"


@dataclass
class Event:
    kind: str
    at_ms: float
    group: int = 0
    node: int = 0
    tick: int = 0
    start: bytes = b""  # hot range: its start ...
    table_id: int = 0
    split_at: bytes | None = None  # ... and where it was split
    leader_ms: float | None = None  # leader death: a new leader serving
    healed_ms: float | None = None
    healed_tick: int = 0


@dataclass
class Result:
    seed: int
    ticks: int = 0
    tick_ms: list[float] = field(default_factory=list)  # wall time of Planner.tick
    membership_tick_ms: list[float] = field(default_factory=list)
    land_ms: float = 0.0
    sim_ms: float = 0.0
    decisions: Counter[str] = field(default_factory=Counter)
    decisions_max: Counter[str] = field(default_factory=Counter)  # in one tick
    not_landed: Counter[str] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    run_s: float = 0.0


class Scale:
    """One run: the cluster, etcd in memory, the active meta's planner, on one clock."""

    def __init__(self, cfg: ScaleConfig) -> None:
        self.cfg = cfg
        self.pcfg = planner_config(cfg)
        self.rng = random.Random(cfg.seed)
        self.now_ms = 0.0
        self.kv = MemoryKV(clock=lambda: self.now_ms / 1000)
        self.store = MemoryStore(self.kv)
        self.view = ClusterView()
        self.revs: dict[bytes, int] = {}
        self.nodes: dict[int, SimNode] = {}
        self.heads: dict[int, int] = {}  # group -> its leader's last index
        self.beats: dict[int, Beat] = {}
        self.reports: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self.figures: dict[int, list[dict[str, Any]]] = {}  # group -> its ranges' figures
        self.hot: dict[tuple[int, bytes], float] = {}  # (table, start) -> ops/s
        self.busy: set[int] = set()  # groups an event is under way in
        self.pending: list[Event] = []
        self.wall_ns = 1_700_000_000_000_000_000
        self.planner = Planner(self.pcfg)
        self.result = Result(cfg.seed)
        self._involved: dict[int, Group] = {}
        self._involved_rev = -1

    # -- the cluster as it starts: G whole groups, the spares, T tables of R ranges ---------------

    def build(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        nodes = cfg.groups * cfg.group_size + cfg.spare_nodes
        for i in range(1, nodes + 1):
            self.nodes[i] = SimNode(i, self.rng.randrange(BEAT_MS))
        put = self.kv.put
        for i in range(1, nodes + 1):
            gid = (i - 1) // cfg.group_size + 1 if i <= cfg.groups * cfg.group_size else None
            state = model.NODE_MEMBER if gid is not None else model.NODE_SPARE
            put(model.node_key(i), model.dumps(Node(i, self.nodes[i].address, state, gid)))
        for gid in range(1, cfg.groups + 1):
            members = tuple(range((gid - 1) * cfg.group_size + 1, gid * cfg.group_size + 1))
            leader = self.rng.choice(members)
            put(model.group_key(gid), model.dumps(Group(gid, 1, leader, members).to_json()))
            self.heads[gid] = 1
            for m in members:
                n = self.nodes[m]
                n.epoch = n.last_epoch = n.index = 1
                n.leader_epoch = 1 if m == leader else 0
        put(b"/rangekv/counters/group_id", str(cfg.groups).encode())
        per_table = cfg.ranges // cfg.tables
        for t in range(1, cfg.tables + 1):
            count = per_table + (1 if t <= cfg.ranges % cfg.tables else 0)
            put(model.table_key(f"t{t:04d}"), model.dumps(Table(t, f"t{t:04d}")))
            starts = [b""] + [f"{k:08d}".encode() for k in range(1, count)]
            for k, start in enumerate(starts):
                end = starts[k + 1] if k + 1 < count else None
                put(model.range_key(t, start),
                    Range(t, start, end, self.rng.randrange(cfg.groups) + 1).dumps())
        put(b"/rangekv/counters/table_id", str(cfg.tables).encode())
        self.view, self.revs = run_now(self.store.load())
        self._figures_all()
        self.planner.begin_term(self.now_ms)
        self._beat_all()
        self.result.setup_s = time.perf_counter() - t0

    def _figure(self, rng: Range) -> dict[str, Any]:
        ops = self.hot.get((rng.table_id, rng.start), 50.0)
        # a third of bytes_max each: no two neighbours are small enough to merge
        return {"t": rng.table_id, "start": rng.start, "bytes": 24 << 20, "keys": 20_000,
                "counted": True, "rps": ops / 2, "wps": ops / 2, "rbps": 0, "wbps": 0}

    def _figures_all(self) -> None:
        self.figures = {gid: [] for gid in self.view.groups}
        for tid in sorted(self.view.ranges):
            for rng in self.view.ranges[tid]:
                self.figures.setdefault(rng.group, []).append(self._figure(rng))

    def _figures_of(self, *groups: int) -> None:
        """Figures of these groups again (their ranges changed: a split or a move)."""
        for gid in groups:
            self.figures[gid] = []
        for tid in sorted(self.view.ranges):
            for rng in self.view.ranges[tid]:
                if rng.group in groups:
                    self.figures[rng.group].append(self._figure(rng))

    # -- the nodes ------------------------------------------------------------------------------

    def _group_of(self, node_id: int) -> Group | None:
        """The group the node takes part in (``ClusterView.group_of`` without its scan of every
        group for a node in none: a hundred spares beat ten times a second)."""
        if self._involved_rev != self.view.revision:
            self._involved = {m: g for g in self.view.groups.values()
                              for m in (*g.members, *g.learners, *g.joint)}
            self._involved_rev = self.view.revision
        return self._involved.get(node_id)

    def _status(self, n: SimNode) -> NodeStatus:
        group = self._group_of(n.id)
        if group is None:
            return NodeStatus()
        serving = group.leader == n.id and n.leader_epoch == group.epoch
        return NodeStatus(group=group.id, epoch=n.epoch, role="leader" if serving else "follower",
                          leader_epoch=n.leader_epoch, last_epoch=n.last_epoch,
                          last_index=n.index, commit_index=n.index, applied_index=n.index)

    def _beat(self, n: SimNode, at_ms: float) -> None:
        self.beats[n.id] = Beat(at_ms / 1000, n.address, self._status(n))
        group = self._group_of(n.id)
        if group is not None and group.leader == n.id and n.leader_epoch == group.epoch:
            self.reports[group.id] = (at_ms / 1000, self.figures.get(group.id, []))

    def _beat_all(self) -> None:
        for n in self.nodes.values():
            self._beat(n, self.now_ms)

    def step_nodes(self, since_ms: float) -> None:
        """The nodes from ``since_ms`` to now: the groups' logs, campaigns, learners, beats."""
        now, dt_s = self.now_ms, (self.now_ms - since_ms) / 1000
        writes = round(self.cfg.writes_per_s * dt_s)
        learn = round(self.cfg.learn_per_s * dt_s)
        for gid, group in self.view.groups.items():
            lead = self.nodes[group.leader] if group.leader is not None else None
            for m in (*group.members, *group.learners, *group.joint):
                n = self.nodes[m]
                if n.up and n.epoch < group.epoch:
                    n.epoch = group.epoch
            if lead is None or not lead.up:
                continue
            if lead.leader_epoch != group.epoch:
                if lead.take_up_at_ms < 0:
                    lead.take_up_at_ms = now + self.cfg.campaign_ms
                    continue
                if lead.take_up_at_ms > now:
                    continue
                lead.take_up_at_ms = -1.0
                lead.leader_epoch = lead.last_epoch = group.epoch  # its campaign won
                self.heads[gid] = lead.index = max(lead.index, self.heads[gid]) + 1  # no-op
            head = self.heads[gid] = lead.index = lead.index + writes
            for m in group.members:
                n = self.nodes[m]
                if m != lead.id:
                    n.leader_epoch = 0
                    if n.up and not n.lagging:
                        n.last_epoch, n.index = lead.last_epoch, head
            for m in group.learners:
                n = self.nodes[m]
                if n.up:
                    n.index = min(head, n.index + learn)
                    n.last_epoch = lead.last_epoch if n.index == head else 0
        for n in self.nodes.values():
            if not n.up:
                continue
            # its latest beat at or before now (phase_ms + k * BEAT_MS)
            at = now - (now - n.phase_ms) % BEAT_MS
            if at > since_ms or n.id not in self.beats:
                self._beat(n, at)

    # -- the events -----------------------------------------------------------------------------

    def schedule(self) -> list[Event]:
        cfg = self.cfg
        counts = dict(zip(EVENT_KINDS, (cfg.node_deaths, cfg.leader_deaths, cfg.laggards,
                                        cfg.hot_ranges, cfg.failovers), strict=True))
        lo, hi = cfg.warmup_ms, cfg.duration_ms - cfg.settle_ms
        out = [Event(kind, float(self.rng.randrange(lo, hi)))
               for kind in EVENT_KINDS for _ in range(counts[kind])]
        return sorted(out, key=lambda e: (e.at_ms, e.kind))

    def whole(self, gid: int) -> bool:
        group = self.view.groups.get(gid)
        if group is None or group.leader is None or group.learners or group.joint:
            return False
        if len(group.members) != self.cfg.group_size:
            return False
        lead = self.nodes[group.leader]
        if not lead.up or lead.leader_epoch != group.epoch:
            return False
        return all(self.nodes[m].up and not self.nodes[m].lagging for m in group.members)

    def inject(self, e: Event) -> None:
        """Into a whole group no other event is under way in (lowest-risk of a pile-up: the
        point is to time each kind of healing)."""
        e.tick = self.result.ticks
        candidates = [gid for gid in sorted(self.view.groups)
                      if gid not in self.busy and self.whole(gid)]
        assert candidates, "no whole group left to inject into"
        gid = e.group = self.rng.choice(candidates)
        group = self.view.groups[gid]
        followers = [m for m in group.members if m != group.leader]
        if e.kind == "node_death":
            e.node = self.rng.choice(followers)
            self.nodes[e.node].up = False
        elif e.kind in ("leader_death", "meta_failover"):
            assert group.leader is not None
            e.node = group.leader
            self.nodes[e.node].up = False
            if e.kind == "meta_failover":  # the active meta dies with it; a new one takes over
                self.planner = Planner(self.pcfg)
                self.planner.begin_term(self.now_ms)
        elif e.kind == "laggard":
            e.node = self.rng.choice(followers)
            self.nodes[e.node].lagging = True
        else:
            assert e.kind == "hot_range"
            ranges = [r for tid in sorted(self.view.ranges) for r in self.view.ranges[tid]
                      if r.group == gid and not move.moving(r) and r.end is not None]
            if not ranges:
                e.healed_ms, e.healed_tick = self.now_ms, e.tick  # nothing to heat
                return
            rng = self.rng.choice(ranges)
            e.table_id, e.start = rng.table_id, rng.start
            self.hot[(rng.table_id, rng.start)] = self.pcfg.split.ops_max * 1.5
            self._figures_of(gid)
        self.busy.add(gid)
        self.pending.append(e)

    def check_healed(self) -> None:
        for e in list(self.pending):
            if e.kind == "hot_range":
                done = e.split_at is not None and not any(
                    move.moving(r) for r in self.view.ranges[e.table_id])
            else:
                if e.kind == "leader_death" and e.leader_ms is None:
                    group = self.view.groups[e.group]
                    if group.leader != e.node and self.nodes[group.leader].leader_epoch == \
                            group.epoch:  # type: ignore[index]
                        e.leader_ms = self.now_ms - e.at_ms
                done = self.whole(e.group)
            if done:
                e.healed_ms, e.healed_tick = self.now_ms - e.at_ms, self.result.ticks - e.tick
                self.pending.remove(e)
                self.busy.discard(e.group)

    # -- performing what the planner decides (the meta's part) ----------------------------------

    def sync(self) -> None:
        apply_events(self.view, self.revs, self.kv.events_since(self.view.revision + 1))

    def perform(self, d: Decision) -> bool:
        if isinstance(d, SplitRange):
            return self._split(d)
        if isinstance(d, ResumeMove):
            return self._move_step(d.range)
        written = run_now(land(self.store, self.view, self.revs, d, self.wall_ns))
        self.wall_ns += 1_000
        if written is not None:
            self.sync()
        return written is not None

    def _split(self, d: SplitRange) -> bool:
        """The meta's split task: the range cut in two (etcd, then the group), the upper part
        moved to the plan's target."""
        plan = d.plan
        rng = self.view.ranges[plan.table_id].get(plan.start)
        assert rng is not None and rng.end is not None, plan
        at = rng.start + b"5" if rng.start else b"00000000"
        assert rng.start < at < rng.end, (rng, at)
        key = model.range_key(rng.table_id, rng.start)
        if run_now(self.store.split_range(rng, self.revs[key], at)) is None:
            return False
        self.sync()
        self.planner.note_split(rng.table_id, self.now_ms)
        heat = self.hot.pop((rng.table_id, rng.start), None)
        if heat is not None:  # half the load each (fraction_load 0.5): both below ops_max
            self.hot[(rng.table_id, rng.start)] = self.hot[(rng.table_id, at)] = heat / 2
            for e in self.pending:
                if e.kind == "hot_range" and (e.table_id, e.start) == (rng.table_id, rng.start):
                    e.split_at = at
        if plan.target is not None:
            upper = self.view.ranges[rng.table_id].get(at)
            assert upper is not None
            ukey = model.range_key(rng.table_id, at)
            assert run_now(self.store.put_range(move.started(upper, plan.target),
                                                self.revs[ukey])) is not None
            self.sync()
        self._figures_of(*{rng.group, plan.target or rng.group})
        return True

    def _move_step(self, rng: Range) -> bool:
        """The mover's next step of an unfinished move (each one put_range, as ``mover.py``)."""
        step = move.next_step(rng)
        new = {move.FENCE_AND_SWITCH: move.switched, move.COPY_AND_FINISH: move.copied,
               move.CLEANUP: move.cleaned}[step](rng) if step else None
        if new is None:
            return False
        key = model.range_key(rng.table_id, rng.start)
        written = run_now(self.store.put_range(new, self.revs[key]))
        if written is None:
            return False
        self.sync()
        if step == move.FENCE_AND_SWITCH:
            self._figures_of(rng.group, new.group)
        return True

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Result:
        cfg, res = self.cfg, self.result
        t0 = time.perf_counter()
        events = self.schedule()
        res.events = list(events)
        last_injection_ms = events[-1].at_ms if events else 0.0
        since_ms = self.now_ms
        while True:
            w0 = time.perf_counter()
            self.step_nodes(since_ms)
            while events and events[0].at_ms <= self.now_ms:
                self.inject(events.pop(0))
            seen = Seen(self.view, self.beats, self.reports)
            res.sim_ms += (time.perf_counter() - w0) * 1000
            membership = self.planner.membership_due(self.now_ms)
            t = time.perf_counter()
            decisions = self.planner.tick(self.now_ms, seen)
            tick_ms = (time.perf_counter() - t) * 1000
            res.tick_ms.append(tick_ms)
            if membership:
                res.membership_tick_ms.append(tick_ms)
            self.planner.take_notes()
            res.ticks += 1
            t = time.perf_counter()
            kinds: Counter[str] = Counter()
            for d in decisions:
                kind = type(d).__name__
                kinds[kind] += 1
                ok = self.perform(d)
                if not ok and not isinstance(d, ResumeMove):
                    res.not_landed[kind] += 1
                self.planner.done(d, ok, self.now_ms)
            res.land_ms += (time.perf_counter() - t) * 1000
            res.decisions.update(kinds)
            for kind, n in kinds.items():
                res.decisions_max[kind] = max(res.decisions_max[kind], n)
            self.check_healed()
            if self.now_ms >= cfg.duration_ms and not events and not self.pending:
                break
            if self.now_ms > max(cfg.duration_ms, last_injection_ms + HEAL_AFTER_MS_MAX):
                break
            since_ms = self.now_ms
            self.now_ms += self.planner.next_tick_ms(self.now_ms, Seen(self.view, self.beats,
                                                                        self.reports))
        res.run_s = time.perf_counter() - t0
        res.violations = self.invariants()
        return res

    def invariants(self) -> list[str]:
        out = []
        seen_in: dict[int, int] = {}
        for gid, group in sorted(self.view.groups.items()):
            if not self.whole(gid):
                out.append(f"group {gid} is not whole: {group}")
            for m in (*group.members, *group.learners, *group.joint):
                if m in seen_in and seen_in[m] != gid:
                    out.append(f"node {m} is in groups {seen_in[m]} and {gid}")
                seen_in[m] = gid
        for _tid, ranges in sorted(self.view.ranges.items()):
            for rng in ranges:
                if rng.group not in self.view.groups:
                    out.append(f"range {rng} is on a group that does not exist")
                if move.moving(rng):
                    out.append(f"range {rng} is still moving")
        for e in self.result.events:
            if e.healed_ms is None:
                out.append(f"{e.kind} at {e.at_ms:.0f} ms in group {e.group} never healed")
        return out


def run(cfg: ScaleConfig) -> Result:
    sim = Scale(cfg)
    sim.build()
    return sim.run()


# -- the report ----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def report(cfg: ScaleConfig, res: Result) -> str:
    lines = [f"seed {res.seed}: {cfg.groups} groups x {cfg.group_size} + {cfg.spare_nodes} "
             f"spares, {cfg.ranges} ranges in {cfg.tables} tables; setup {res.setup_s:.1f} s, "
             f"run {res.run_s:.1f} s (ticks {sum(res.tick_ms) / 1000:.1f} s, landing "
             f"{res.land_ms / 1000:.1f} s, nodes {res.sim_ms / 1000:.1f} s)"]
    t = res.tick_ms
    lines.append(f"ticks: {res.ticks}; Planner.tick ms median {statistics.median(t):.2f} "
                 f"p99 {_pct(t, 0.99):.2f} max {max(t):.2f}")
    m = res.membership_tick_ms
    if m:
        lines.append(f"  with the membership steps ({len(m)} ticks): median "
                     f"{statistics.median(m):.2f} p99 {_pct(m, 0.99):.2f} max {max(m):.2f}")
    lines.append("decisions (total, per tick, most in one tick):")
    for kind, n in sorted(res.decisions.items()):
        lines.append(f"  {kind:14} {n:6d}  {n / res.ticks:8.3f}  {res.decisions_max[kind]:4d}"
                     + (f"  ({res.not_landed[kind]} not landed)" if res.not_landed[kind] else ""))
    lines.append("events: injection to whole again, simulated ms (ticks): median / max")
    for kind in EVENT_KINDS:
        done = [e for e in res.events if e.kind == kind and e.healed_ms is not None]
        if not done:
            continue
        ms = [e.healed_ms for e in done if e.healed_ms is not None]
        ticks = [e.healed_tick for e in done]
        line = (f"  {kind:14} {len(done):3d}  {statistics.median(ms):8.0f} "
                f"({statistics.median(ticks):.0f}) / {max(ms):8.0f} ({max(ticks)})")
        leader = [e.leader_ms for e in done if e.leader_ms is not None]
        if leader:
            line += f"; a new leader serving after {statistics.median(leader):.0f} / " \
                    f"{max(leader):.0f} ms"
        lines.append(line)
    lines.append("invariants: " + ("hold" if not res.violations else
                                   f"{len(res.violations)} VIOLATED"))
    lines.extend("  " + v for v in res.violations[:20])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rangekv sim-scale", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    d = ScaleConfig()
    parser.add_argument("--groups", type=int, default=d.groups)
    parser.add_argument("--ranges", type=int, default=d.ranges)
    parser.add_argument("--tables", type=int, default=d.tables)
    parser.add_argument("--spares", type=int, default=d.spares,
                        help="spare nodes (default: a tenth of the groups, and at least one per "
                             "replacement and two)")
    parser.add_argument("--duration-ms", type=int, default=d.duration_ms,
                        help="simulated time (the run goes on until every event healed)")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1)")
    parser.add_argument("--seed", type=int, default=d.seed, help="first seed (default 1)")
    for kind, attr in (("node-deaths", "node_deaths"), ("leader-deaths", "leader_deaths"),
                       ("laggards", "laggards"), ("hot-ranges", "hot_ranges"),
                       ("failovers", "failovers")):
        parser.add_argument(f"--{kind}", type=int, default=getattr(d, attr))
    args = parser.parse_args(argv)
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        cfg = ScaleConfig(groups=args.groups, ranges=args.ranges, tables=args.tables,
                          spares=args.spares, duration_ms=args.duration_ms, seed=seed,
                          node_deaths=args.node_deaths, leader_deaths=args.leader_deaths,
                          laggards=args.laggards, hot_ranges=args.hot_ranges,
                          failovers=args.failovers)
        res = run(cfg)
        print(report(cfg, res), flush=True)
        failed += bool(res.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
