"""Deterministic simulation of one replication group, its metadata manager and its clients.

What runs is the production code for every decision: each node is the replication ``Core`` run
by production's own Ready loop (``rangekv.replication.loop.ReadyLoop``, the one the driver
runs), over the WAL (real segment files under a scratch directory, so CRCs, torn tails and
recovery are the real ones), the hard-state file and the state machine (over an in-memory
backend that loses what was not flushed, as RocksDB without its own WAL does): see
``sim/node.py``, which gives the loop its simulated disk, network, clock and snapshot
transfer. The meta is the real controller (``sim/meta.py``): production's ``Planner`` ticking
over the in-memory store, its decisions landed by ``perform.land``, the nodes told their group
and when to campaign by the heartbeat's answer made from the store's records, and the active
meta failing over to a new one in some seeds. Only time, the network, the disk's durability and
the clients are simulated, all from seeded random sources on a virtual clock, so a seed replays
exactly (the trace hash proves it). This module holds the rest: the clients, the faults and the
checkers across nodes.

Faults: messages dropped, duplicated, delayed and so reordered; partitions (one node, the
leader, a majority/minority split, a bridge) that also cut nodes off from meta; crashes that lose
every byte not fsynced and may keep a torn part of the unsynced tail; bit flips in the middle of
a log, which the CRC must catch (that node then refuses to serve, reports it and stays out);
state-machine flushes at random; crashes for good (the node never comes back).

Membership: the group starts with ``nodes`` members and ``spares`` idle spares. The planner
replaces a member dead, broken or lagging for longer than the grace by a spare that first
catches up as a learner (often by a snapshot: ``snapshots_to_learners``), while the faults go
on; and a staged race shows what the joint majority is for (``_race``; the controller's planted
bugs, ``controller/bugs.py``, are caught there). Nodes learn the group's members, learners and
joint voters from meta's heartbeat replies, as real nodes do. Half the seeds
(``SimConfig.membership``) have spares, crashes for good and the race; in the others a member
down too long is only a "no spare" decision.

After every event the checkers run: at most one leader per epoch, every replica applies the
same entry at each index, a new leader holds every committed entry, the state machine never
gets ahead of the log. Periodically, log matching across all pairs. At the end:
faults stop, everything heals and restarts, a leader must commit a new write within a bounded
simulated time (liveness), final reads are made, and the client history must be linearizable.

Compaction and snapshots: nodes compact their logs at random points (after flushing the state
machine, as the driver does), and leaders send snapshots to peers that fall behind their base,
as the driver does: a checkpoint of the state machine (``storage/snapshot.py``, a memory dump
here), offered, streamed in small chunks and ended, each request and answer crossing the
simulated network (dropped, delayed past the sender's timeout, cut by partitions; a chunk is
sometimes damaged in flight and must be refused), with a backoff between attempts. The
follower receives into a staging directory and installs with the real ``snapshot.install``; a
crash at any of its durable steps is injected, and the restart's ``snapshot.recover`` must
finish it or leave the old state. More checkers: replicas at the same applied index have the
same state-machine content (which also checks every installed snapshot), commit and applied
never go backward within a run of a node, and a snapshot is only installed above the applied
index.

Ranges (``SimConfig.ranges`` of the seeds, with a random source of their own, so the other
seeds run as before): a second group, and a table of a few more keys whose one range starts on
the first. The leaders report their ranges' figures with their heartbeats (production's
``node/stats.py`` over the real state machine); the planner splits a busy range by load against
small thresholds and moves its upper part to the other group, or splits in place when that one
is full, and merges cold small neighbours once the load cools. Each change runs as production's
coroutine in simulated time (``sim/meta.py``, ``sim/tasks.py``): the cut and merge of
``metadata/rangeops.py`` and the whole move of ``metadata/mover.py`` (fence, prepare, switch,
copy in pages, finish, cleanup), every request to a leader crossing the simulated network,
retried, and served by the node with the server's commands and checks (``node/commands.py``,
``node/ownership.py``); meta failovers stop them midway and the next meta resumes them. Each rm
routes by its own copy of the range map, delivered by its watch after a lag, so requests reach
groups by stale maps (refused as ``range_not_here``: not applied); during a move's copy a read
asks the target, then the source, and a delete or conditional put carries the source's version
(``base``), as ``request_manager/routing.py`` does. Once faults stop, every change must finish,
and the final reads go to the group the final map names.

Hostile actors (``sim/hostile.py``), in a share of the seeds (``SimConfig.hostile``): a bad rm
whose writes propose seqs no honest rm does (``ff...ff``, an hour ahead, just past the maximum
clock offset), which the leader's ``sequencer.assign`` must refuse; and a bad node that sends
the members forged replication messages, which the core must refuse or ignore without any
change to its state (checked for each one), or which the modelled address check drops.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rangekv import errors, sequencer
from rangekv.check.history import check_ops as check
from rangekv.check.keys import Op
from rangekv.controller.decisions import (
    AddLearner,
    Decision,
    DropLearner,
    ElectLeader,
    NoSpare,
    PromoteLearner,
)
from rangekv.controller.planner import Planner, PlannerConfig
from rangekv.controller.split import SplitConfig
from rangekv.metadata.mover import RangeMover
from rangekv.metadata.mover_bugs import MoverFactory
from rangekv.model import Group, Range
from rangekv.model.status import NodeStatus
from rangekv.node.ownership import check_base, check_current, check_owned, check_writable
from rangekv.replication.bugs import CoreFactory
from rangekv.replication.core import LEADER, Core, NotLeaderError
from rangekv.replication.loop import LoopFactory, ReadyLoop, compaction_target
from rangekv.replication.messages import Entry, Msg
from rangekv.sim import hostile
from rangekv.sim.meta import GROUP, NO_CONFIG, PlannerFactory, SimMeta, decision_line
from rangekv.sim.node import TABLE, SimNode
from rangekv.sim.tasks import Wait
from rangekv.storage.engine import encode_command

META = 0  # the metadata manager's network address in the simulation


NO_BASE = object()  # a write that carries no source version (``ClientOp.base``)


@dataclass
class GroupChecks:
    """What the checkers remember of one group's replicas."""

    leader_of_epoch: dict[int, int] = field(default_factory=dict)
    newest_serving_epoch: int = 0
    applied_at: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    committed: dict[int, Entry] = field(default_factory=dict)
    entry_at: dict[tuple[int, int], bytes] = field(default_factory=dict)
    state_at: dict[int, str] = field(default_factory=dict)  # applied index -> content hash


class SimFailure(AssertionError):
    """A checker found a violation (or the code under test asserted)."""


@dataclass
class SimConfig:
    nodes: int = 3
    keys: int = 3
    rms: int = 2  # routing caches clients arrive through
    arrival_ms: float = 40  # mean time between client arrivals
    in_flight_max: int = 12
    misroute: float = 0.05  # a request routed by a long-stale cache
    watch_lag_ms: tuple[float, float] = (1, 800)  # until an rm's view has a new leader
    fault_ms: float = 8_000  # simulated time with faults
    liveness_ms: float = 20_000  # bound for a new commit once faults stop
    tick_ms: float = 50
    heartbeat_ms: float = 250
    meta_check_ms: float = 100
    heartbeat_timeout_ms: float = 1_000
    campaign_timeout_ms: float = 3_000
    delay_ms: tuple[float, float] = (0.2, 4.0)
    disk_ms: tuple[float, float] = (0.3, 3.0)
    drop: float = 0.03
    dup: float = 0.02
    fault_every_ms: tuple[float, float] = (300, 1_500)
    client_timeout_ms: float = 2_000
    slow_fsync: float = 0.05
    slow_fsync_ms: tuple[float, float] = (20, 200)
    events_max: int = 100_000  # a run that needs more is stuck (livelock); normal: 3-6k
    segment_bytes_max: int = 4_096  # small, so segments roll and tear at their edges
    trace_lines_kept: int = 600
    compact_every_ms: tuple[float, float] = (100, 1_200)  # a node compacts its log
    compact_retain: tuple[int, ...] = (0, 1, 3, 10, 40)  # entries kept below applied
    snapshot_timeout_ms: float = 300  # a snapshot request unanswered this long: abort
    snapshot_idle_ms: float = 1_500  # a follower aborts an offer that went quiet this long
    snapshot_backoff_ms: tuple[float, float] = (20, 800)  # first retry, most
    snapshot_chunk_bytes: tuple[int, ...] = (48, 200, 4096)
    snapshot_damage: float = 0.02  # a chunk damaged in flight (its crc must catch it)
    install_crash: float = 0.12  # a crash at one of the install's durable steps
    # Chance that a seed exercises membership: spares, replacements, crashes for good, the
    # joint race, broken nodes that heartbeat. The other seeds run the simulation as it was
    # before membership changes existed, event for event (same trace hashes).
    membership: float = 0.5
    spares: int = 2  # idle nodes meta may use to replace a member (in membership seeds)
    replace_grace_ms: float = 1_500
    replace_lag_entries: int = 30
    learner_timeout_ms: float = 4_000
    catch_up_slack: tuple[int, ...] = (0, 2, 10)  # one per seed
    crash_for_good: float = 0.7  # chance of a member (or learner) crashed for good ...
    crash_for_good_ms: tuple[float, float] = (300, 3_000)  # ... at a time in this range
    crash_for_good_again: float = 0.3  # chance of a second one, later
    # chance of the race a reconfiguration's joint majority exists for (``_race``), instead
    race: float = 0.5
    # Chance that a seed has the hostile actors (``sim/hostile.py``): a bad rm and a bad node.
    # They draw from a random source of their own: the other seeds run as before they existed.
    hostile: float = 0.3
    hostile_rm: float = 0.15  # share of the writes the bad rm sends, in those seeds
    hostile_node_every_ms: tuple[float, float] = (5, 120)  # between the bad node's messages
    # Meta failover (``sim/meta.py``): in this share of the seeds the active meta dies once or
    # twice during the faults, and a new one takes over after a lease-like delay.
    meta_failover: float = 0.3
    meta_failover_again: float = 0.3
    meta_lease_ms: tuple[float, float] = (200, 2_000)
    # Ranges (``SimConfig.ranges`` of the seeds, a random source of their own): a second group
    # and a table of ``range_keys`` keys, one range on the first group at the start, whose
    # ranges the real controller splits (by the leaders' figures, ``node/stats.py``, against
    # these small thresholds), moves to the other group and merges, while the faults go on.
    # The load is hot for ``range_hot_ms`` (splits by load), then cools (clients arrive every
    # ``range_cool_arrival_ms``): cold small neighbours on one group merge. The figures' rates
    # react within about ``range_tau_s`` (production: 10 s); a group takes at most
    # ``group_ranges_max`` ranges from a split, so later splits stay in place.
    ranges: float = 0.3
    range_keys: int = 8
    split: SplitConfig = field(default_factory=lambda: SplitConfig(
        bytes_max=400, ops_max=4.0, bytes_per_s_max=1e9, cooldown_s=0.4, group_ranges_max=3))
    split_interval_ms: int = 300
    range_tau_s: float = 1.0
    range_hot_ms: float = 5_000
    range_cool_arrival_ms: float = 500
    move_page_keys: tuple[int, ...] = (1, 3, 1000)  # records per copied page, one per seed
    node_request_budget_ms: float = 3_000  # meta's requests to a group leader (``tell``) ...
    node_request_attempt_ms: float = 400  # ... and each attempt's timeout
    range_events_max: int = 300_000


@dataclass
class ClientOp:
    op: Op
    node: int
    token: Any = None
    rm: int = 0
    hostile: str | None = None  # sent by the bad rm: how its seq is bad (``hostile.RM_KINDS``)
    gid: int = 1  # the group the rm routed it to
    # range seeds, a range being copied (``Range.copying_from``): a get asks the target and then
    # this source group if the target has no record; a delete or conditional put first reads
    # this source group's version of the key and sends it along (``base``)
    source: int | None = None
    base: Any = NO_BASE


class Simulation:
    def __init__(self, seed: int, root: Path, config: SimConfig | None = None,
                 core_factory: CoreFactory = Core, loop_factory: LoopFactory = ReadyLoop,
                 planner_factory: PlannerFactory = Planner,
                 mover_factory: MoverFactory = RangeMover) -> None:
        self.seed = seed
        self.planner_factory = planner_factory  # Planner, or a planted bug's subclass
        self.cfg = config or SimConfig()
        self.core_factory = core_factory  # Core, or a planted bug's subclass
        self.loop_factory = loop_factory  # ReadyLoop, or a planted bug's subclass
        self.rng = random.Random(seed)
        # Appends of one entry at a time in some runs, batches in others: an old epoch's entry
        # and a new leader's no-op then reach a follower together or apart.
        self.append_bytes_max = self.rng.choice([1, 256, 2 * 1024 * 1024])
        self.root = root
        self.now = 0.0
        self._events: list[tuple[float, int, str, Any]] = []
        self._counter = itertools.count()
        self.trace: deque[str] = deque(maxlen=self.cfg.trace_lines_kept)
        self._hash = hashlib.sha256()
        self.events_run = 0
        ids = list(range(1, self.cfg.nodes + 1))
        # Membership faults and their schedule come from their own random source, so that a
        # seed's other faults start out as they would without them.
        self.mrng = random.Random(seed * 1_000_003 + 17)
        self.membership = self.mrng.random() < self.cfg.membership
        # The hostile actors and all their choices: a random source of their own too.
        self.hrng = random.Random(seed * 1_000_003 + 29)
        self.hostile = self.hrng.random() < self.cfg.hostile
        spare_count = self.cfg.spares if self.membership else 0
        spares = list(range(self.cfg.nodes + 1, self.cfg.nodes + spare_count + 1))
        # Ranges, and every choice about them: a random source of their own too.
        self.grng = random.Random(seed * 1_000_003 + 53)
        self.ranges = self.grng.random() < self.cfg.ranges
        first = self.cfg.nodes + spare_count + 1
        second = list(range(first, first + self.cfg.nodes)) if self.ranges else []
        groups = {GROUP: ids, **({2: second} if second else {})}
        self.keys = self.cfg.range_keys if self.ranges else self.cfg.keys
        self.nodes = {i: SimNode(self, i, root / f"n{i}") for i in ids + spares + second}
        for gid, members in groups.items():
            for i in members:
                self.nodes[i].group_id = gid
        self.cut: set[frozenset[int]] = set()  # pairs that cannot talk (META = 0)
        # meta: the real controller over the in-memory store (``sim/meta.py``); the group's
        # records, and so everything the nodes are told, are the store's
        cfg = self.cfg
        planner_config = PlannerConfig(
            groups_min=1, group_size=cfg.nodes,
            heartbeat_timeout_ms=int(cfg.heartbeat_timeout_ms),
            campaign_timeout_ms=int(cfg.campaign_timeout_ms),
            election_interval_ms=int(cfg.meta_check_ms),
            formation_interval_ms=int(cfg.meta_check_ms),
            replace_grace_ms=int(cfg.replace_grace_ms),
            replace_lag_entries=cfg.replace_lag_entries,
            catch_up_slack_entries=self.mrng.choice(cfg.catch_up_slack),
            learner_timeout_ms=int(cfg.learner_timeout_ms),
            **({"split": cfg.split, "split_interval_ms": cfg.split_interval_ms}
               if self.ranges else {}))
        self.meta = SimMeta(self, planner_config, planner_factory, groups, spares,
                            table=self.ranges, mover_factory=mover_factory,
                            page_keys=self.grng.choice(cfg.move_page_keys))
        # Meta failovers and their times: a random source of their own too.
        self.frng = random.Random(seed * 1_000_003 + 41)
        self.meta_failover = self.frng.random() < cfg.meta_failover
        self.race_cut: set[frozenset[int]] = set()  # the race's partition, beside ``cut``
        self.racing = False
        self.race_x = 0  # the follower the race took down, until it is back
        # checkers
        self.checks = {gid: GroupChecks() for gid in groups}
        self.broken_nodes: set[int] = set()
        # clients
        self.history: list[Op] = []
        self._op_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.faults_on = True
        self.seen_seqs: dict[str, bytes] = {}  # last seq a client saw per key, for cas
        # each rm's cached leader of each group, and (range seeds) its copy of the table's
        # ranges, as its etcd watch last delivered them: (revision, ranges)
        self.rm_cache: dict[tuple[int, int], int] = {}
        initial = (self.meta.view.revision, self.meta.table_ranges())
        self.rm_ranges: dict[int, tuple[int, tuple[Range, ...]]] = {
            rm: initial for rm in range(self.cfg.rms)}
        self._in_flight = 0
        self.table_ready = False
        self._transfers = itertools.count(1)
        self.stats = {"ops_ok": 0, "ops_failed": 0, "ops_unknown": 0, "crashes": 0,
                      "partitions": 0, "flips": 0, "leader_changes": 0, "torn_bytes": 0,
                      "compactions": 0, "snapshots_installed": 0, "snapshots_failed": 0,
                      "snapshot_answers_stale": 0, "chunks_damaged": 0, "install_crashes": 0,
                      "gone": 0, "learners": 0, "swaps": 0, "learners_dropped": 0,
                      "no_spare": 0, "snapshots_to_learners": 0, "meta_failovers": 0,
                      "meta_decisions": 0,
                      # range seeds: the controller's range changes, meta's requests to group
                      # leaders, client requests a group refused (its range is elsewhere)
                      "splits": 0, "merges": 0, "moves": 0, "range_tasks_failed": 0,
                      "meta_calls": 0, "ops_not_here": 0, "source_reads": 0, "discards": 0,
                      # the bad rm: writes that reached a node, refused by the seq bound
                      "hostile_rm_sent": 0, "hostile_rm_refused": 0,
                      # the bad node: messages sent; refused by the core (``core.refused``),
                      # ignored by it, dropped before it (malformed, or by the address check)
                      "hostile_node_sent": 0, "hostile_node_refused": 0,
                      "hostile_node_ignored": 0, "hostile_node_dropped": 0}
        self.hostile_kinds: dict[str, int] = {}  # what the hostile actors sent, by kind

    @property
    def group(self) -> Group:
        """The group's record in the store, as the active meta's view shows it."""
        return self.meta.group

    @property
    def members(self) -> tuple[int, ...]:
        return self.group.members

    def config_of(self, node_id: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """What meta tells the node about its group: (members, learners, joint)."""
        return self.meta.config_of(node_id)

    # ------------------------------------------------------------------ plumbing
    def log(self, line: str) -> None:
        text = f"{self.now:10.3f} {line}"
        self.trace.append(text)
        self._hash.update(text.encode())

    @property
    def trace_hash(self) -> str:
        return self._hash.hexdigest()[:16]

    def at(self, delay_ms: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._events, (self.now + delay_ms, next(self._counter), kind, payload))

    def fail(self, what: str) -> None:
        raise SimFailure(f"seed {self.seed}: {what}")

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    # ------------------------------------------------------------------ checks the nodes call
    def groups_changed(self, groups: dict[int, Group]) -> None:
        """The store's groups changed: each node involved in one is that group's, from now on
        (a learner from the moment the store adds it: only that group's leader sends it
        anything), until another group takes it (it then discards this one's data first)."""
        for gid, group in groups.items():
            for n in (*group.members, *group.learners, *group.joint):
                node = self.nodes.get(n)
                if node is not None:
                    node.group_id = gid

    def group_of(self, node: SimNode) -> int:
        """The group whose entries the node holds: the last one the store named it in (a node
        dropped or replaced keeps that group's log), else the first (a spare holds none)."""
        return node.group_id or GROUP

    def checks_of(self, node: SimNode) -> GroupChecks:
        """The checkers' memory of the node's group."""
        return self.checks[self.group_of(node)]

    def check_appended(self, node: SimNode, entries: list[Entry]) -> None:
        """Log matching, cheaply at every append: one entry per (epoch, index)."""
        entry_at = self.checks_of(node).entry_at
        for e in entries:
            seen = entry_at.setdefault((e.epoch, e.index), e.payload)
            if seen != e.payload:
                self.fail(f"n{node.id} holds a different entry {e.epoch}/{e.index} "
                          f"than another replica (two entries for one epoch and index)")

    def check_applied(self, node: SimNode, entries: list[Entry]) -> None:
        """Every replica applies the same entry at an index."""
        checks = self.checks_of(node)
        for e in entries:
            seen = checks.applied_at.get(e.index)
            if seen is None:
                checks.applied_at[e.index] = (e.epoch, e.payload)
            elif seen != (e.epoch, e.payload):
                self.fail(f"n{node.id} applied {e.epoch}/{e.index} but another replica applied "
                          f"{seen[0]}/{e.index} there (replicas diverged)")
            checks.committed.setdefault(e.index, e)

    def check_state(self, node: SimNode, how: str) -> None:
        """Replicas at the same applied index hold the same state."""
        assert node.engine is not None
        index, digest = node.engine.applied_index, node.engine.content_hash()
        seen = self.checks_of(node).state_at.setdefault(index, digest)
        group = self.meta.view.group_of(node.id)
        if how.startswith("installed") and group is not None and node.id in group.learners:
            self.stats["snapshots_to_learners"] += 1
        if seen != digest:
            self.fail(f"n{node.id} {how} up to {index} but its state differs from another "
                      f"replica's at that index")

    def check_new_leader(self, node: SimNode, epoch: int) -> None:
        """One leader per epoch, and it holds every committed entry."""
        core = node.core
        assert core is not None
        checks = self.checks_of(node)
        prior = checks.leader_of_epoch.setdefault(epoch, node.id)
        if prior != node.id:
            self.fail(f"two leaders in epoch {epoch}: n{prior} and n{node.id}")
        # Leader completeness: what was committed before must be in the log of the leader of
        # any later epoch. A leader of an older epoch may finish taking office late (it was
        # paused); entries a newer epoch committed meanwhile need not be in its log, and it can
        # neither commit nor confirm a read any more: a majority promised the newer epoch.
        newest = epoch > checks.newest_serving_epoch
        checks.newest_serving_epoch = max(checks.newest_serving_epoch, epoch)
        # (entries up to its base are in its state machine, checked by check_state)
        missing = [i for i, e in checks.committed.items()
                   if i > core.last_index
                   or (i >= core.base_index and core.epoch_at(i) != e.epoch)]
        if missing and newest:
            self.fail(f"n{node.id} leads epoch {epoch} without committed entries {missing[:5]}")

    def next_transfer(self) -> int:
        return next(self._transfers)

    def next_token(self) -> int:
        return next(self._tokens)

    # ------------------------------------------------------------------ network
    def send(self, msg: Msg) -> None:
        if self.faults_on and self.rng.random() < self.cfg.drop:
            return
        copies = 2 if self.faults_on and self.rng.random() < self.cfg.dup else 1
        for _ in range(copies):
            self.at(self.uniform(self.cfg.delay_ms), "msg", msg)

    def linked(self, a: int, b: int) -> bool:
        pair = frozenset((a, b))
        return pair not in self.cut and pair not in self.race_cut

    def _deliver(self, msg: Msg) -> None:
        node = self.nodes.get(msg.to)
        if node is None:
            return  # an answer to the bad node (to a message it forged in its own name)
        if not node.up or node.loop is None or not self.linked(msg.frm, msg.to):
            return
        core = node.loop.core
        refused = sum(core.refused.values())
        node.loop.step(msg)  # (a newer epoch fences an install under way: the loop's rule)
        if sum(core.refused.values()) > refused:
            # Every simulated node but the bad one (whose messages come as ``hostile_msg``)
            # is honest: a message the core refuses as implausible is a bug in the sender
            # (or in the rule that refused it).
            assert core.last_refused is not None
            why, refused_msg = core.last_refused
            raise SimFailure(f"node {msg.to} refused a message no honest peer sends ({why}): "
                             f"{refused_msg}")

    # ------------------------------------------------------------------ the bad node
    def _hostile_node(self) -> None:
        """The bad node forges one message to a member that is up (``hostile.forge``) and
        sends it; it stops with the faults."""
        if not self.faults_on:
            return
        self.at(self.hrng.uniform(*self.cfg.hostile_node_every_ms), "hostile_node")
        cores = {m: self.nodes[m].core for m in self.members
                 if self.nodes[m].up and self.nodes[m].core is not None}
        forgery = hostile.forge(self.hrng, cores, self.members)  # type: ignore[arg-type]
        if forgery is None:
            return
        self.stats["hostile_node_sent"] += 1
        self.hostile_kinds[f"node {forgery.kind}"] = \
            self.hostile_kinds.get(f"node {forgery.kind}", 0) + 1
        self.at(self.hrng.uniform(*self.cfg.delay_ms), "hostile_msg", forgery)

    def _hostile_msg(self, forgery: hostile.Forgery) -> None:
        """A forged message arrives: what the node server drops first (malformed; a claimed
        id whose address it does not come from), then the core, which must refuse or ignore
        it and change nothing of its state."""
        node = self.nodes[forgery.target]
        core = node.core
        if not node.up or node.loop is None or core is None:
            self.stats["hostile_node_dropped"] += 1  # nobody listens
            return
        try:
            msg = Msg.from_wire(forgery.wire)
        except ValueError:
            self.stats["hostile_node_dropped"] += 1  # as the node server drops it: malformed
            return
        if forgery.kind == "malformed":
            self.fail(f"Msg.from_wire took a malformed message: {forgery.wire!r}")
        if forgery.own_address and msg.frm != hostile.HOSTILE_NODE:
            # The node server's address check (``wire.address_matches``): the message claims
            # node ``msg.frm`` but comes from the bad node's own address, not from the one
            # ``msg.frm`` is registered at. Nothing else can tell a plausible forgery apart.
            self.stats["hostile_node_dropped"] += 1
            return
        before, refused = hostile.core_state(core), sum(core.refused.values())
        node.loop.step(msg)  # (its answers, if any: a stale epoch is answered with ours)
        after = hostile.core_state(core)
        if after != before:
            self.fail(f"n{node.id} took the bad node's {forgery.kind} message {msg}: its state "
                      f"went from {before} to {after}")
        if sum(core.refused.values()) > refused:
            self.stats["hostile_node_refused"] += 1
        else:
            self.stats["hostile_node_ignored"] += 1

    # ------------------------------------------------------------------ meta
    def _beat(self, node: SimNode) -> None:
        if node.core is None:
            assert node.broken is not None
            status = NodeStatus(broken=True, broken_reason=node.broken)
        else:
            st = node.core.status()
            # (the group the node was last told of, as a real node reports it)
            status = NodeStatus(group=node.assigned_group,
                                epoch=st["epoch"], role=st["role"],
                                leader_epoch=st["leader_epoch"], last_epoch=st["last_epoch"],
                                last_index=st["last_index"], commit_index=st["commit_index"],
                                applied_index=st["applied_index"],
                                ranges=node.range_figures() if st["role"] == LEADER else None)
        if self.linked(node.id, META) and not (self.faults_on and self.rng.random() < 0.02):
            self.at(self.uniform(self.cfg.delay_ms), "meta_beat", (node.id, status))
        self.at(self.cfg.heartbeat_ms, "beat", (node.id, node.incarnation))

    def _meta_beat(self, node_id: int, status: NodeStatus) -> None:
        """The heartbeat reaches the meta; its answer (``SimMeta.heartbeat``: the group's
        config in the store, and whether to campaign) goes back to the node."""
        answer = self.meta.heartbeat(node_id, status)
        if answer is None:
            return  # no active meta: nobody answers
        config, campaign = answer
        node = self.nodes[node_id]
        gid = self.meta.group_id_of(node_id) if config != NO_CONFIG else None
        # The reply carries the group's config; it is only worth an event when it changes
        # something (a real node gets it with every reply and ignores what it already has).
        core = node.core
        stale = core is not None and ((core.members, core.learners, core.joint) != config
                                      or node.assigned_group != gid)
        if (campaign is not None or stale) and self.linked(node_id, META):
            self.at(self.uniform(self.cfg.delay_ms), "assign", (node_id, gid, config, campaign))

    def meta_decided(self, d: Decision) -> None:
        """A decision of the planner landed in the store (or, "no spare", was said)."""
        self.stats["meta_decisions"] += 1
        self.log(decision_line(d))
        if isinstance(d, ElectLeader):
            for rm in range(self.cfg.rms):  # each rm's etcd watch delivers it after a lag
                self.at(self.uniform(self.cfg.watch_lag_ms), "rm_watch",
                        (rm, d.group.id, d.leader))
        elif isinstance(d, AddLearner):
            self.stats["learners"] += 1
            if self.racing and d.old == self.race_x:
                self.at(self.mrng.uniform(0, 100), "race_back", d.old)
        elif isinstance(d, DropLearner):
            self.stats["learners_dropped"] += 1
        elif isinstance(d, PromoteLearner):
            self.stats["swaps"] += 1
            if self.racing:
                self._race_swapped(d.before)
        elif isinstance(d, NoSpare):
            self.stats["no_spare"] += 1

    def meta_call(self, wait: Wait, node_id: int, op: str, fields: dict[str, Any],
                  attempt_ms: float) -> None:
        """A request of the meta's to a group leader (``SimMeta.tell``), over the network; no
        answer within ``attempt_ms``: outcome unknown (the meta retries)."""
        self.stats["meta_calls"] += 1
        self.at(attempt_ms, "meta_timeout", wait)
        if self.linked(META, node_id) and not (self.faults_on
                                               and self.rng.random() < self.cfg.drop):
            self.at(self.uniform(self.cfg.delay_ms), "meta_req", (wait, node_id, op, fields))

    def meta_reply(self, node_id: int, wait: Wait, reply: dict[str, Any] | None,
                   error: errors.RangeKVError | None) -> None:
        """A node's answer to the meta, over the network."""
        if self.linked(META, node_id) and not (self.faults_on
                                               and self.rng.random() < self.cfg.drop):
            self.at(self.uniform(self.cfg.delay_ms), "meta_rep", (wait, reply, error))

    def ranges_changed(self, revision: int, ranges: tuple[Range, ...]) -> None:
        """The table's ranges changed in the store: each rm's watch delivers them after a lag."""
        for rm in range(self.cfg.rms):
            self.at(self.grng.uniform(*self.cfg.watch_lag_ms), "rm_ranges",
                    (rm, revision, ranges))

    def _meta_die(self) -> None:
        """The active meta dies; another takes over once the lease runs out."""
        if not self.faults_on or not self.meta.active:
            return
        self.meta.die()
        self.stats["meta_failovers"] += 1
        self.at(self.frng.uniform(*self.cfg.meta_lease_ms), "meta_take_over")

    # ------------------------------------------------------------------ clients
    def _arrival(self) -> None:
        """Open-loop client arrivals, each through one of the rms' routing caches."""
        if not self.faults_on and self.now > self._liveness_deadline:
            return
        mean_ms = self.cfg.arrival_ms
        if self.ranges and self.now > self.cfg.range_hot_ms:
            mean_ms = self.cfg.range_cool_arrival_ms
        self.at(self.rng.expovariate(1 / mean_ms), "client")
        if not self.table_ready or self._in_flight >= self.cfg.in_flight_max:
            return
        op_id = next(self._op_ids)
        key = f"k{self.rng.randrange(self.keys)}"
        r = self.rng.random()
        kind = "put" if r < 0.4 else "get" if r < 0.7 else "cas" if r < 0.85 else "del"
        op = Op(op_id, op_id, key, kind, invoke_t=self.now)
        if kind in ("put", "cas"):
            op.value = f"v{op.id}".encode()
        if kind == "cas":
            seen = self.seen_seqs.get(key)
            op.expect = seen if seen and self.rng.random() < 0.8 else sequencer.make(
                1, self.rng.randrange(1000), 0)
        rm = self.rng.randrange(self.cfg.rms)
        cop = ClientOp(op, 0, rm=rm)
        if self.ranges and not self._route(cop):
            self.stats["ops_failed"] += 1  # the rm's map has no range for it: refused
            return
        group = self._asked(cop)  # (a delete or conditional put reads the source's first)
        members = self.members if group == GROUP else self.meta.view.groups[group].members
        target = self.rm_cache.get((rm, group))
        if self.faults_on and self.rng.random() < self.cfg.misroute:
            target = self.rng.choice(members)  # a cache stale since long ago
        if target is None:
            self.stats["ops_failed"] += 1  # no leader known: refused at the rm
            return
        cop.node = target
        if self.hostile and kind != "get" and self.hrng.random() < self.cfg.hostile_rm:
            cop.hostile = self.hrng.choice(hostile.RM_KINDS)  # the bad rm sends this one
        self._in_flight += 1
        self.history.append(op)
        self.at(self.cfg.client_timeout_ms, "client_timeout", cop)
        self.at(self.uniform(self.cfg.delay_ms), "request", cop)

    def _route(self, cop: ClientOp) -> bool:
        """Range seeds: the group the rm's copy of the map sends ``cop`` to (False: no range
        of the table holds its key there, as before the table's creation reached it)."""
        _, ranges = self.rm_ranges[cop.rm]
        key = cop.op.key.encode()
        rng = next((r for r in ranges if r.contains(key)), None)
        if rng is None:
            return False
        cop.gid = rng.group
        # a plain put needs nothing of the source: the target's seqs are above all of its
        cop.source = rng.copying_from if cop.op.kind != "put" else None
        return True

    def _group_leader(self, gid: int) -> int | None:
        group = self.meta.view.groups.get(gid)
        return group.leader if group is not None else None

    def _request(self, cop: ClientOp) -> None:
        op = cop.op
        leader = self.nodes[cop.node]
        if op.closed:
            return  # the client gave up before it arrived
        if not leader.up or leader.loop is None:
            self.history.remove(op)  # connection refused: surely not applied
            self._fall_back(cop)
            self._refuse(cop)
            return
        kind, key = op.kind, op.key
        reading = kind == "get" or (cop.source is not None and cop.base is NO_BASE)
        try:
            if self.ranges and leader.loop.core.serving:
                # the node server's checks before it proposes or reads (``node/ownership.py``),
                # once it serves as leader (else the loop says not_leader)
                if reading:
                    check_owned(leader, TABLE, key.encode())
                    check_current(leader, TABLE, key.encode(), self._as_source(cop))
                else:
                    check_writable(leader, TABLE, key.encode())
                    if kind != "put" or op.expect is not None:
                        check_base(leader, TABLE, key.encode(), cop.base is not NO_BASE)
            if reading:
                cop.token = next(self._tokens)
                leader.read_waiting[cop.token] = cop
                leader.loop.read(cop.token)
            else:
                cmd: dict[str, Any] = {"op": "put" if kind in ("put", "cas") else "del",
                                       "t": TABLE, "k": key.encode(), "c": op.expect}
                if kind in ("put", "cas"):
                    cmd["v"] = op.value
                if cop.base is not NO_BASE:
                    cmd["b"] = cop.base
                seq = self._assign_seq(leader, cop)
                if seq is None:
                    return  # refused: surely not applied
                leader.last_seq = seq
                cmd["s"] = seq
                epoch, index = leader.loop.propose(encode_command(cmd))
                leader.proposals[index] = (epoch, cop)
        except NotLeaderError as err:
            leader.read_waiting.pop(cop.token, None)
            self.history.remove(op)
            if err.leader is not None:
                self.rm_cache[(cop.rm, self._asked(cop))] = err.leader  # the node's hint
            self._refuse(cop)
            return
        except (errors.RangeNotHere, errors.TableNotFound):
            self.stats["ops_not_here"] += 1  # the rm's map is stale: surely not applied
            self.history.remove(op)
            self._refuse(cop)

    def _asked(self, cop: ClientOp) -> int:
        """The group ``cop`` is at now: its source's while it reads the source."""
        if cop.source is not None and (cop.op.kind == "get" and cop.base is not NO_BASE
                                       or cop.op.kind != "get" and cop.base is NO_BASE):
            return cop.source
        return cop.gid

    def _as_source(self, cop: ClientOp) -> bool:
        """``cop`` reads the source of a range being copied (the rm's map shows the switch)."""
        return cop.source is not None and self._asked(cop) == cop.source

    def _fall_back(self, cop: ClientOp) -> None:
        """The rm falls back to the watched view for the group it asked."""
        group = self._asked(cop)
        leader = self._group_leader(group)
        if leader is None:
            self.rm_cache.pop((cop.rm, group), None)  # (no leader known: the same as none)
        else:
            self.rm_cache[(cop.rm, group)] = leader

    def read_done(self, node: SimNode, cop: ClientOp) -> None:
        """A linearizable read on ``node`` is ready (its read index applied): answer it, or go
        on to the next step of a read across a move (``Router.get``, ``_source_version``)."""
        assert node.engine is not None
        key = cop.op.key.encode()
        if not self.ranges:
            found = node.engine.get(TABLE, key)
            self.complete(cop, {"value": None if found is None else found[0],
                                "seq": None if found is None else found[1]})
            return
        try:
            check_owned(node, TABLE, key)  # (the range may have moved away meanwhile)
            check_current(node, TABLE, key, self._as_source(cop))
        except (errors.RangeNotHere, errors.TableNotFound):
            self.stats["ops_not_here"] += 1
            if not cop.op.closed:
                self.history.remove(cop.op)
            self._refuse(cop)
            return
        if node.stats is not None:
            node.stats.read(TABLE, key, 1, 0)
        version = node.engine.get_version(TABLE, key)
        op = cop.op
        if op.kind == "get" and version is None and cop.source is not None \
                and cop.base is NO_BASE:
            # the target has no record of it: the source's copy (final since its fence) is
            # the newest
            cop.base = None  # (marks the second step: the source is asked)
            self._next_step(cop, cop.source)
            return
        if op.kind != "get":
            # the source's version of the key, for the write to the target (``base``)
            cop.base = None if version is None else [version[0], version[1], version[2]]
            self._next_step(cop, cop.gid)
            return
        live = version is not None and not version[1]
        self.complete(cop, {"value": version[2] if live else None,
                            "seq": version[0] if live else None})

    def _next_step(self, cop: ClientOp, group: int) -> None:
        """The rm sends the next request of a read across a move to ``group``'s leader."""
        self.stats["source_reads"] += 1
        target = self.rm_cache.get((cop.rm, group)) or self._group_leader(group)
        if target is None:
            self.history.remove(cop.op)
            self._refuse(cop)
            return
        cop.node = target
        self.at(self.uniform(self.cfg.delay_ms), "request", cop)

    def _assign_seq(self, leader: SimNode, cop: ClientOp) -> bytes | None:
        """The seq the leader gives a client's write, decided as the driver does
        (``sequencer.assign``: a proposal too far ahead of the leader's clock is refused), or
        None if it refused it (the op is then out of the history). Only the bad rm's writes
        may be refused, and every one of them must be."""
        op = cop.op
        now_ns = int(self.now * 1e6)  # the leader's clock: the simulated time
        if cop.hostile is None:
            proposed = sequencer.make(now_ns, op.id, op.client)
        else:
            self.stats["hostile_rm_sent"] += 1
            self.hostile_kinds[f"rm {cop.hostile}"] = \
                self.hostile_kinds.get(f"rm {cop.hostile}", 0) + 1
            proposed = hostile.poison_seq(cop.hostile, self.hrng, now_ns, op.client)
        try:
            seq = sequencer.assign(proposed, leader.last_seq, now_ns, from_client=True,
                                   ahead_ms_max=sequencer.SEQ_AHEAD_MS_MAX, node_id=leader.id)
        except errors.Unavailable as err:  # clock_offset (or no seq left above the last)
            if cop.hostile is None:
                self.fail(f"n{leader.id} refused an honest write's seq: {err}")
            self.stats["hostile_rm_refused"] += 1
            self.log(f"n{leader.id} refuses the bad rm's {cop.hostile} write "
                     f"#{op.id}: {err.code}")
            self.history.remove(op)
            self._refuse(cop)
            return None
        if cop.hostile is not None:
            self.fail(f"n{leader.id} took the bad rm's {cop.hostile} seq {proposed.hex()} "
                      f"(as {seq.hex()})")
        if sequencer.ahead_ns(seq, now_ns) > sequencer.SEQ_AHEAD_MS_MAX * 10**6:
            self.fail(f"n{leader.id} gave seq {seq.hex()}, more than the maximum clock offset "
                      f"ahead of its clock ({now_ns})")
        return seq

    def _refuse(self, cop: ClientOp) -> None:
        """Surely not applied: not part of the history."""
        if cop.op.closed:
            return
        cop.op.closed = True
        self._in_flight -= 1
        self.stats["ops_failed"] += 1

    def complete(self, cop: ClientOp, result: dict[str, Any] | None) -> None:
        op = cop.op
        if op.closed:
            return
        op.closed = True
        self._in_flight -= 1
        if result is None:
            self.stats["ops_unknown"] += 1  # stays unknown: may or may not take effect
        else:
            err = result.get("error")
            if err is not None:
                if err.get("code") == errors.PreconditionFailed.code and op.kind == "cas":
                    op.result = ("failed",)
                elif self.ranges and err.get("code") in (errors.RangeNotHere.code,
                                                         errors.TableNotFound.code):
                    # refused when applied: its range moved away meanwhile (not applied)
                    self.stats["ops_not_here"] += 1
                    self.stats["ops_failed"] += 1
                    self.history.remove(op)
                    self.log(f"client {op.describe()}: range_not_here")
                    return
                else:
                    self.fail(f"unexpected error result {err} for {op.describe()}")
            elif op.kind in ("put", "cas"):
                op.result = ("ok", result["seq"])
            elif op.kind == "del":
                op.result = ("ok", bool(result["deleted"]),
                             result["seq"] if result["deleted"] else None)
            else:
                op.result = ("ok", result["value"], result["seq"])
            op.complete_t = self.now
            self.stats["ops_ok"] += 1
            seq = op.result[2] if op.kind in ("get", "del") and len(op.result) > 2 else (
                op.result[1] if op.result[0] == "ok" and op.kind in ("put", "cas") else None)
            if isinstance(seq, bytes):
                self.seen_seqs[op.key] = seq
        self.log(f"client {op.describe()}")

    # ------------------------------------------------------------------ faults
    def _fault(self) -> None:
        if not self.faults_on:
            return
        r = self.rng.random()
        ids = self._fault_targets()
        if not ids or self.racing:
            self.at(self.uniform(self.cfg.fault_every_ms), "fault")
            return
        if r < 0.08:
            # Power loss of several machines at once; they come back one by one.
            victims = self.rng.sample(ids, self.rng.randrange(2, len(ids) + 1))
            self.log(f"power loss of {victims}")
            for v in victims:
                if self.nodes[v].up:
                    self.nodes[v].crash()
                    self.at(self.rng.uniform(100, 3_000), "restart", v)
        elif r < 0.30:
            node = self.nodes[self.rng.choice(ids)]
            # At most one log is corrupted per run: a group survives a minority of bad nodes.
            # Nor while a member is gone for good: two lost of three would stop the group for
            # good, rightly (a majority of the log is gone).
            flip = (not any(n.flipped for n in self.nodes.values())
                    and not any(self.nodes[m].gone for m in (*self.members, *self.group.joint))
                    and self.rng.random() < 0.15)
            if node.up:
                node.crash(flip=flip)
                self.at(self.rng.uniform(100, 2_000), "restart", node.id)
        elif r < 0.55:
            self.cut = set()
            self.stats["partitions"] += 1
            kind = self.rng.choice(["one", "leader", "majority", "bridge", "meta"])
            everyone = list(self.nodes) + [META]
            if kind == "one" or (kind == "leader" and self.group.leader is None):
                victim = self.rng.choice(ids)
                self.cut = {frozenset((victim, o)) for o in everyone if o != victim}
            elif kind == "leader":
                victim = self.group.leader
                assert victim is not None
                self.cut = {frozenset((victim, o)) for o in everyone if o != victim}
            elif kind == "majority":
                self.rng.shuffle(ids)
                minority = ids[: len(ids) // 2]
                self.cut = {frozenset((a, b)) for a in minority for b in everyone
                            if b not in minority}
            elif kind == "bridge" and len(ids) >= 3:
                self.rng.shuffle(ids)
                a, b = ids[0], ids[1]  # a and b cannot talk; the rest reach both
                self.cut = {frozenset((a, b))}
            else:
                victim = self.rng.choice(ids)
                self.cut = {frozenset((victim, META))}  # split at the metadata manager
            self.log(f"partition {kind}: {sorted(tuple(sorted(c)) for c in self.cut)}")
        elif r < 0.75:
            if self.cut:
                self.log("heal")
            self.cut = set()
        elif r < 0.85:
            node = self.nodes[self.rng.choice(ids)]
            if node.up and node.engine is not None:
                node.engine.flush()
        elif r < 0.95:
            # SIGSTOP, usually of the leader, long enough for meta to replace it.
            victim = self.group.leader if self.rng.random() < 0.7 else self.rng.choice(ids)
            node = self.nodes.get(victim or 0)
            if node is not None and node.up and node.paused_until <= self.now:
                pause_ms = self.rng.uniform(500, 4_000)
                node.paused_until = self.now + pause_ms
                self.at(pause_ms, "resume", node.id)
                self.log(f"n{node.id} paused for {pause_ms:.0f} ms")
        self.at(self.uniform(self.cfg.fault_every_ms), "fault")

    # ------------------------------------------------------------------ compaction, snapshots
    def _compact(self) -> None:
        """A node compacts its log, as the driver does: flush the state machine, then compact
        up to production's target (``loop.compaction_target``: a live peer close behind keeps
        its entries, a snapshot being sent pins its index) with a retain drawn per compaction,
        never past what the flush made durable (all of it here)."""
        self.at(self.uniform(self.cfg.compact_every_ms), "compact")
        pool = self.members if not self.ranges else [
            m for _, g in sorted(self.meta.view.groups.items()) for m in g.members]
        node = self.nodes[self.rng.choice(pool)]
        if not node.up or node.loop is None or node.engine is None \
                or node.paused_until > self.now:
            return
        core = node.loop.core
        if core.installing is not None:
            return
        node.engine.flush()
        pins = [t["manifest"].index for t in node.sending.values() if "manifest" in t]
        target = compaction_target(core, self.rng.choice(self.cfg.compact_retain), pins)
        if target > core.base_index:
            self.stats["compactions"] += 1
            self.log(f"n{node.id} compacts its log to {target}")
            node.loop.compact(target)

    def snapshot_net(self, frm: int, to: int, direction: str, tid: int, seq: int, op: str,
                     fields: dict[str, Any]) -> None:
        """A snapshot request or answer on the network: lost, late, or (a chunk) damaged."""
        if not self.linked(frm, to) or (self.faults_on and self.rng.random() < self.cfg.drop):
            return
        delay = self.uniform(self.cfg.delay_ms)
        if self.faults_on and self.rng.random() < 0.03:
            delay += self.rng.uniform(100, 600)  # slow: maybe past the sender's timeout
        if (op == "snapshot_chunk" and direction == "req" and self.faults_on
                and self.rng.random() < self.cfg.snapshot_damage):
            data = bytearray(fields["data"])
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
            fields = {**fields, "data": bytes(data)}
            self.stats["chunks_damaged"] += 1
        self.at(delay, "snap_net", (frm, to, direction, tid, seq, op, fields))

    def _snapshot_arrived(self, frm: int, to: int, direction: str, tid: int, seq: int, op: str,
                          fields: dict[str, Any]) -> None:
        node = self.nodes[to]
        if not node.up or node.loop is None or not self.linked(frm, to):
            return
        if direction == "req":
            reply = node.snapshot_serve(op, fields)
            self.snapshot_net(to, frm, "rep", tid, seq, op, reply)
        else:
            node.snapshot_answer(frm, tid, seq, op, fields)

    def _fault_targets(self) -> list[int]:
        """The nodes faults hit: the group's members and learners that still exist."""
        groups = [self.group] if not self.ranges else [
            g for _, g in sorted(self.meta.view.groups.items())]
        return [i for g in groups for i in (*g.members, *g.learners) if not self.nodes[i].gone]

    def _crash_for_good(self) -> None:
        """A member or learner dies and never comes back, unless a member or a voter of
        ``joint`` is lost already (gone or with a damaged log): two of three lost would stop
        the group for good, rightly (a majority of its log is gone)."""
        if not self.faults_on:
            return
        g = self.group
        lost = {i for i in (*g.members, *g.joint)
                if self.nodes[i].gone or self.nodes[i].broken is not None or self.nodes[i].flipped}
        if lost:
            self.log(f"no crash for good: {sorted(lost)} already gone or broken")
            return
        victim = self.mrng.choice([*g.members, *g.learners])
        node = self.nodes[victim]
        self.log(f"n{victim} crashes for good")
        if node.up:
            node.crash()
        node.gone = True
        self.stats["gone"] += 1

    def _race(self) -> None:
        """The race a reconfiguration's joint majority exists for (docs/decisions.md,
        "Membership"), staged: follower x is down long enough for meta to start replacing it by
        a spare y, then comes back while y catches up, and the other follower b is cut off from
        leader a. Once meta swaps y in (in a new epoch), a is cut off from y and from meta too:
        it never hears of the new epoch and goes on committing entries with x, a majority of
        the old members. Those entries are on a and x only. When meta replaces a (it stopped
        heartbeating), a campaign that won with the new members alone (b and y) would lose
        them; one that also needs a majority of the old members hears from x and adopts its
        log. Random faults pause while the race is on (a few seconds), so that it plays out."""
        g = self.group
        lead = self.meta.beats.get(g.leader or 0)
        calm = (lead is not None and lead.status.role == LEADER
                and lead.status.leader_epoch == g.epoch and not g.changing
                and all(self.nodes[m].up for m in g.members))
        followers = [m for m in g.members if m != g.leader]
        if not self.faults_on or self.now > self.cfg.fault_ms - 4_000:
            return
        if not calm or len(followers) < 2:
            self.at(300, "race")  # try again once the group is back to normal
            return
        self.racing = True
        self.cut = set()
        x = self.mrng.choice(followers)
        self.log(f"race: n{x} down until it is being replaced")
        self.nodes[x].crash()
        self.race_x = x
        self.at(self.cfg.replace_grace_ms + 2_000, "race_back", x)  # if meta never replaces it

    def _race_back(self, x: int) -> None:
        if self.race_x != x:
            return  # brought back already
        self.race_x = 0
        node = self.nodes[x]
        if not node.up and node.broken is None and not node.gone:
            node.start()
        g = self.group
        others = [m for m in g.members if m not in (x, g.leader)]
        if not self.racing or g.leader is None or not others:
            self.racing = False
            return
        self.race_cut = {frozenset((g.leader, others[0]))}
        self.log(f"race: n{x} is back; n{others[0]} cut off from leader n{g.leader}")
        self.at(4_000, "race_end")  # if meta never swaps

    def _race_swapped(self, old: Group) -> None:
        """Meta swapped the learner in: cut the old leader off from it and from meta."""
        a, y = old.leader, old.learners[0]
        if a is None:
            return
        self.race_cut |= {frozenset((a, y)), frozenset((a, META))}
        self.log(f"race: n{a} cut off from n{y} and from meta too")

    def _race_end(self) -> None:
        if self.racing:
            self.racing = False
            self.race_cut = set()
            self.log("race: over, healed")

    # ------------------------------------------------------------------ checks
    def check_logs(self) -> None:
        """Log matching: two logs with the same epoch at an index agree on all before it."""
        cores = [n.core for n in self.nodes.values() if n.up and n.core is not None]
        for i, a in enumerate(cores):
            for b in cores[i + 1:]:
                if self.group_of(self.nodes[a.id]) != self.group_of(self.nodes[b.id]):
                    continue  # two groups' logs have nothing in common
                # (compared where both still hold entries: below, they hold snapshots)
                lo = max(a.first_index, b.first_index)
                top = min(a.last_index, b.last_index)
                idx = top
                while idx >= lo and a.epoch_at(idx) != b.epoch_at(idx):
                    idx -= 1
                if idx < lo:
                    continue
                ea = a.entries(lo, idx + 1, 1 << 40)
                eb = b.entries(lo, idx + 1, 1 << 40)
                if ea != eb:
                    first = next(k for k, (x, y) in enumerate(zip(ea, eb, strict=False)) if x != y)
                    self.fail(f"log matching broken between n{a.id} and n{b.id}: both have "
                              f"epoch {a.epoch_at(idx)} at {idx} but differ at {first + lo}")

    # ------------------------------------------------------------------ running
    def run(self) -> dict[str, Any]:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        for node in self.nodes.values():
            node.start()
        if not self.membership:
            pass
        elif self.mrng.random() < self.cfg.race:
            self.at(self.mrng.uniform(*self.cfg.crash_for_good_ms), "race")
        elif self.mrng.random() < self.cfg.crash_for_good:
            self.at(self.mrng.uniform(*self.cfg.crash_for_good_ms), "crash_for_good")
            if self.mrng.random() < self.cfg.crash_for_good_again:
                self.at(self.mrng.uniform(self.cfg.crash_for_good_ms[1], self.cfg.fault_ms),
                        "crash_for_good")
        self.meta.take_over()
        if self.meta_failover:
            self.at(self.frng.uniform(500, self.cfg.fault_ms - 1_000), "meta_die")
            if self.frng.random() < self.cfg.meta_failover_again:
                self.at(self.frng.uniform(500, self.cfg.fault_ms - 1_000), "meta_die")
        self.at(self.uniform(self.cfg.fault_every_ms), "fault")
        self.at(self.uniform(self.cfg.compact_every_ms), "compact")
        self.at(self.uniform((200, 600)), "client")
        if self.hostile:
            self.log("hostile actors: a bad rm and a bad node")
            self.at(self.hrng.uniform(*self.cfg.hostile_node_every_ms), "hostile_node")
        self._liveness_deadline = math.inf
        try:
            self._run_until(self.cfg.fault_ms)
            self._heal_everything()
            self._liveness()
            self._final_reads()
            self.check_logs()
            ok, why = check(self.history)
            if not ok:
                self.fail(f"history not linearizable: {why}")
        except SimFailure:
            raise
        except AssertionError as err:
            raise SimFailure(
                f"seed {self.seed}: assertion in the code under test: {err!r}") from err
        finally:
            for node in self.nodes.values():
                if node.wal is not None:
                    node.wal._close_fds()
        if self.hostile:
            self._check_hostile()
        return {"seed": self.seed, "trace_hash": self.trace_hash, "events": self.events_run,
                "ops": len(self.history), "sim_ms": round(self.now), "hostile": self.hostile,
                **self.stats}

    def _check_hostile(self) -> None:
        """Everything the hostile actors sent was refused, ignored or dropped (each one was
        checked as it arrived; a message still in flight at the end is not counted)."""
        st = self.stats
        handled = (st["hostile_node_refused"] + st["hostile_node_ignored"]
                   + st["hostile_node_dropped"])
        if handled > st["hostile_node_sent"]:
            self.fail(f"the bad node's messages: {handled} handled of {st['hostile_node_sent']}")
        if st["hostile_rm_refused"] != st["hostile_rm_sent"]:
            self.fail(f"the bad rm's writes: {st['hostile_rm_refused']} refused of "
                      f"{st['hostile_rm_sent']} that reached a leader")

    def _run_until(self, until_ms: float, stop: Any = None) -> bool:
        while self._events:
            t, _, kind, payload = self._events[0]
            if t > until_ms:
                return False
            heapq.heappop(self._events)
            self.now = t
            self.events_run += 1
            if self.events_run > (self.cfg.range_events_max if self.ranges
                                  else self.cfg.events_max):
                self.fail(f"more than {self.cfg.events_max} events: the group is stuck "
                          f"(epoch {self.group.epoch}, leader {self.group.leader})")
            target = self._target(kind, payload)
            node = self.nodes.get(target) if target is not None else None
            if node is not None and node.paused_until > t:
                node.deferred.append((kind, payload))
                continue
            self._dispatch(kind, payload)
            if self.events_run % 500 == 0:
                self.check_logs()
            if stop is not None and stop():
                return True
        return False

    def _target(self, kind: str, payload: Any) -> int | None:
        """The node an event happens on (None: meta, clients, the fault injector)."""
        if kind == "msg":
            return int(payload.to)
        if kind in ("sync", "tick", "beat", "assign"):
            return int(payload[0])
        if kind == "request":
            return int(payload.node)
        if kind in ("snap_start", "snap_timeout"):
            return int(payload[0])
        if kind == "hostile_msg":
            return int(payload.target)
        if kind == "meta_req":
            return int(payload[1])
        if kind == "snap_net":
            return int(payload[1])
        return None

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "msg":
            self._deliver(payload)
        elif kind == "sync":
            node_id, inc = payload
            node = self.nodes[node_id]
            if node.up and node.incarnation == inc and node.disk is not None:
                node.disk.fsync()
        elif kind == "tick":
            node_id, inc = payload
            node = self.nodes[node_id]
            if node.up and node.incarnation == inc and node.loop is not None:
                node.loop.tick()  # (and gives up an install that went quiet)
                self.at(self.cfg.tick_ms, "tick", payload)
        elif kind == "beat":
            node_id, inc = payload
            node = self.nodes[node_id]
            if (node.up or node.broken is not None) and node.incarnation == inc:
                self._beat(node)
        elif kind == "meta_beat":
            self._meta_beat(*payload)
        elif kind == "assign":
            node_id, gid, config, epoch = payload
            node = self.nodes[node_id]
            if node.up and node.loop is not None and self.linked(node_id, META):
                if gid is not None and node.data_group not in (None, gid):
                    # the node server's rule: another group's data is discarded first, and
                    # the node starts empty (it hears of its group again at its next beat)
                    node.discard(gid)
                    return
                if gid is not None:
                    node.data_group = gid
                node.assigned_group = gid
                node.loop.configure(*config)
                if epoch is not None:
                    node.loop.campaign(epoch)
        elif kind == "crash_for_good":
            self._crash_for_good()
        elif kind == "race":
            self._race()
        elif kind == "race_back":
            self._race_back(payload)
        elif kind == "race_end":
            self._race_end()
        elif kind == "meta_check":
            self.meta.tick(payload)
        elif kind == "meta_die":
            self._meta_die()
        elif kind == "meta_take_over":
            self.meta.take_over()
        elif kind == "client":
            self._arrival()
        elif kind == "request":
            self._request(payload)
        elif kind == "rm_watch":
            rm, gid, leader = payload
            self.rm_cache[(rm, gid)] = leader
        elif kind == "rm_ranges":
            rm, revision, ranges = payload
            if revision > self.rm_ranges[rm][0]:  # (a watch delivers in revision order)
                self.rm_ranges[rm] = (revision, ranges)
        elif kind == "meta_req":
            wait, node_id, op, fields = payload
            node = self.nodes[node_id]
            if node.up and node.loop is not None and self.linked(META, node_id):
                node.serve_meta(wait, op, fields)
        elif kind == "meta_rep":
            wait, reply, error = payload
            self.meta.answer(wait, reply, error)
        elif kind == "meta_timeout":
            self.meta.answer(payload, None, errors.OutcomeUnknown("no answer in time"))
        elif kind == "meta_wake":
            self.meta.answer(payload, None, None)
        elif kind == "resume":
            node = self.nodes[payload]
            node.paused_until = 0.0
            deferred, node.deferred = node.deferred, []
            # After SIGCONT each connection's buffered input is read in its own order, but the
            # connections are served in any order.
            by_source: dict[Any, list[tuple[str, Any]]] = {}
            for k, p in deferred:
                source = p.frm if k == "msg" else ("client" if k == "request" else "local")
                by_source.setdefault(source, []).append((k, p))
            sources = sorted(by_source, key=str)
            self.rng.shuffle(sources)
            self.log(f"n{node.id} resumed with {len(deferred)} events waiting")
            for source in sources:
                for k, p in by_source[source]:
                    self.at(0, k, p)
        elif kind == "client_timeout":
            cop: ClientOp = payload
            if not cop.op.closed:
                self._fall_back(cop)
            node = self.nodes.get(cop.node)
            if node is not None:
                node.read_waiting.pop(cop.token, None)
            self.complete(cop, None)
        elif kind == "fault":
            self._fault()
        elif kind == "hostile_node":
            self._hostile_node()
        elif kind == "hostile_msg":
            self._hostile_msg(payload)
        elif kind == "compact":
            self._compact()
        elif kind == "snap_start":
            node_id, *rest = payload
            self.nodes[node_id].snapshot_start(*rest)
        elif kind == "snap_net":
            self._snapshot_arrived(*payload)
        elif kind == "snap_timeout":
            node_id, *rest = payload
            self.nodes[node_id].snapshot_timeout(*rest)
        elif kind == "restart":
            node = self.nodes[payload]
            if not node.up and node.broken is None and not node.gone:
                node.start()
                if node.flipped and node.broken is None:
                    self.fail(f"n{node.id}: a bit flipped in the middle of its log and the "
                              f"WAL did not notice")
        else:
            raise AssertionError(kind)

    def _heal_everything(self) -> None:
        self.faults_on = False
        self.cut = set()
        self.race_cut = set()
        self.racing = False
        self.log("faults stop; everything heals")
        for node in self.nodes.values():
            if node.paused_until > self.now:
                node.paused_until = self.now
                self.at(0, "resume", node.id)
        for node in self.nodes.values():
            if not node.up and node.broken is None and not node.gone:
                node.start()

    def _serving(self, gid: int) -> bool:
        leader = self.nodes.get(self._group_leader(gid) or 0)
        return leader is not None and leader.core is not None and leader.core.serving

    def _liveness(self) -> None:
        """With faults stopped, a leader must commit a new entry within the bound (range
        seeds: a leader of either group, the clients' keys may all be on one; and every group
        has a serving leader, and every split, merge and move the controller started is
        finished)."""
        start = self.now
        targets = {g: max(c.committed, default=0) for g, c in self.checks.items()}

        def committed_new() -> bool:
            if not any(self._serving(g) and max(c.committed, default=0) > targets[g]
                       for g, c in self.checks.items()):
                return False
            return not self.ranges or (self.meta.active and not self.meta.busy
                                       and all(self._serving(g) for g in self.meta.view.groups))

        self._liveness_deadline = start + self.cfg.liveness_ms
        if not self._run_until(start + self.cfg.liveness_ms, committed_new):
            self.fail(f"no new commit within {self.cfg.liveness_ms:.0f} ms after faults "
                      f"stopped (leader {self.group.leader}, epoch {self.group.epoch})")
        self.log(f"liveness: committed again after {self.now - start:.0f} ms")

    def _final_reads(self) -> None:
        """Let the clients' last operations settle, then read every key."""
        self._liveness_deadline = self.now  # no new client operations
        self._run_until(self.now + 3 * self.cfg.client_timeout_ms)
        ranges = self.meta.table_ranges()
        for k in range(self.keys):
            op = Op(next(self._op_ids), -1, f"k{k}", "get", invoke_t=self.now)
            gid = GROUP
            if self.ranges:  # the store's final map: every range active on one group
                gid = next(r.group for r in ranges if r.contains(op.key.encode()))
            leader = self.nodes[self._group_leader(gid) or 0]
            cop = ClientOp(op, leader.id, gid=gid)
            self.history.append(op)
            assert leader.loop is not None
            cop.token = next(self._tokens)
            leader.read_waiting[cop.token] = cop
            leader.loop.read(cop.token)
        self._run_until(self.now + self.cfg.client_timeout_ms,
                        lambda: all(o.known for o in self.history if o.client == -1))
        final = [o for o in self.history if o.client == -1]
        if len(final) != self.keys or not all(o.known for o in final):
            self.fail(f"final reads did not complete ({sum(o.known for o in final)} of "
                      f"{self.keys})")


def run_seed(seed: int, root: Path, config: SimConfig | None = None,
             core_factory: CoreFactory = Core, loop_factory: LoopFactory = ReadyLoop,
             planner_factory: PlannerFactory = Planner,
             mover_factory: MoverFactory = RangeMover) -> dict[str, Any]:
    return Simulation(seed, root, config, core_factory, loop_factory, planner_factory,
                      mover_factory).run()
