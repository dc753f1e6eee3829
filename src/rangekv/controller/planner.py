"""The control loop's decisions: given what the active meta sees (the records in etcd, every
node's latest heartbeat, the leaders' range figures) and the time, the ``Planner`` returns the
typed decisions to perform (``decisions.py``). It does no IO and never waits: the meta performs
the decisions against etcd and the nodes (``rangekv.metadata.perform``), a simulator can perform
the same ones against an in-memory store in simulated time.

Theory of operation
-------------------
The driver calls ``begin_term`` when its meta becomes active, then, for as long as it stays
active::

    decisions = planner.tick(now_ms, seen)      # what to do, in this order
    for d in decisions:
        ok = perform(d)                         # a CAS that lost its premise: ok False
        planner.done(d, ok, now_ms)
    sleep(planner.next_tick_ms(now_ms, seen))   # the interval, or when a leader's beat expires

Each tick, in order (each one a pure function of its own module):

1. **leaders** (every tick): ``leader.choose_leader`` for each group;
2. **moves** (every tick): every move etcd shows unfinished is resumed (``move``);
3. **splits** (every ``split_interval_ms``): one automatic split or merge at a time
   (``split``), none while a backup pauses range changes or one still runs;
4. **membership** (every ``formation_interval_ms``): a group formed from spares while there are
   too few (``replace.plan_group``), the next step of each group's follower replacement
   (``replace.plan_replacement``), and lag that stopped shrinking (``lag.LagWatch``).

Later decisions of a tick are planned on a working copy of the view with the earlier ones
applied, as if each had landed: the spare one group takes is not offered to the next. Each
decision carries the records it was planned on, and the performer drops a decision whose
records its view no longer shows (the planner decides again on its next tick).

The planner's memory between ticks (none of it in etcd; a new active meta starts afresh and
waits one heartbeat timeout before judging anyone): when each group's epoch was first seen
(campaign timeouts), since when members lag, when a learner was first seen and the leader's
commit index then (its catch-up target), which "no spare" episodes were said, the lag watch,
when each table was last split, and how many groups splits asked for.

Times: ``now_ms`` is the driver's monotonic clock in milliseconds (the simulator's time); the
pure functions underneath take seconds (``now_s``), as heartbeats' ``Beat.at_s`` do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rangekv import model
from rangekv.controller import move
from rangekv.controller.decisions import (
    DECISION_LAG_STUCK,
    DECISION_NO_SPARE,
    STEPS,
    Decision,
    ElectLeader,
    FormGroup,
    MergeRanges,
    NoSpare,
    Note,
    NoteLag,
    PromoteLearner,
    ResumeMove,
    SplitRange,
    WantGroup,
)
from rangekv.controller.health import Beat, is_live, live_spares, serving_leader
from rangekv.controller.lag import LAG_ENTRIES_MIN, STUCK_AFTER_S, LagWatch, Report
from rangekv.controller.leader import LeaderChoice, choose_leader
from rangekv.controller.replace import (
    CATCH_UP_SLACK_DEFAULT,
    LEARNER_TIMEOUT_MS_DEFAULT,
    REPLACE_GRACE_MS_DEFAULT,
    REPLACE_LAG_ENTRIES_DEFAULT,
    ReplacementPlan,
    ReplacementPolicy,
    plan_group,
    plan_replacement,
    track_lag,
)
from rangekv.controller.split import SplitConfig, plan_merge, plan_split
from rangekv.model import ClusterView, Group, Node

# Nodes heartbeat every 100 ms (rangekv.node.server.HEARTBEAT_MS): a leader is lost after six
# missed beats. Failover (kill -9 of a leader to the next acknowledged write) then takes about
# this timeout, less the time since its last beat, plus a few tens of ms for the campaign: a
# median of 0.58 s on a 2-core loopback cluster under load (bench/failover.py). Under the same
# load with CPU hogs added, no leader was ever judged lost without being killed.
HEARTBEAT_TIMEOUT_MS_DEFAULT = 600

# Range figures by group: (when the leader's heartbeat brought them, in seconds; the figures).
Reports = Mapping[int, tuple[float, list[dict[str, Any]]]]


@dataclass(frozen=True)
class PlannerConfig:
    """The controller's thresholds and cadences (``rangekv meta`` flags; ``MetaConfig``)."""

    groups_min: int = 1
    group_size: int = 3
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS_DEFAULT  # live: heartbeated within this
    campaign_timeout_ms: int = 3000  # a chosen leader must report serving its epoch within this
    election_interval_ms: int = 50  # and at the moment a leader's last heartbeat expires
    stall_ms: int = 150  # a tick this late means the driver's process was stalled ...
    stall_grace_ms: int = 250  # ... so no leader is judged until heartbeats had this long
    formation_interval_ms: int = 200  # and reconfiguration (replacement) steps
    split_interval_ms: int = 1000  # how often to look for a range to split or merge
    replace_grace_ms: int = REPLACE_GRACE_MS_DEFAULT
    replace_lag_entries: int = REPLACE_LAG_ENTRIES_DEFAULT
    catch_up_slack_entries: int = CATCH_UP_SLACK_DEFAULT
    learner_timeout_ms: int = LEARNER_TIMEOUT_MS_DEFAULT
    # lag that stops shrinking (lag.py): above this many entries, for this long
    lag_stuck_entries: int = LAG_ENTRIES_MIN
    lag_stuck_after_ms: int = int(STUCK_AFTER_S * 1000)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        assert self.group_size >= 1 and self.groups_min >= 0
        assert self.heartbeat_timeout_ms > 0 and self.campaign_timeout_ms > 0
        assert self.election_interval_ms > 0 and self.formation_interval_ms > 0
        assert self.replace_grace_ms > 0 and self.replace_lag_entries > 0
        assert self.catch_up_slack_entries >= 0 and self.learner_timeout_ms > 0
        assert self.lag_stuck_entries >= 0 and self.lag_stuck_after_ms > 0

    @property
    def replacement(self) -> ReplacementPolicy:
        return ReplacementPolicy(
            heartbeat_timeout_s=self.heartbeat_timeout_ms / 1000,
            grace_s=self.replace_grace_ms / 1000,
            lag_entries=self.replace_lag_entries,
            catch_up_slack=self.catch_up_slack_entries,
            learner_timeout_s=self.learner_timeout_ms / 1000,
        )


@dataclass
class Seen:
    """What the planner decides on: the view of etcd, every node's latest heartbeat, the group
    leaders' range figures, and whether a split or merge the driver started still runs."""

    view: ClusterView
    beats: Mapping[int, Beat]
    reports: Reports = field(default_factory=dict)
    splitting: bool = False


class _Working:
    """The view as the tick's earlier decisions would leave it (copied on the first change):
    the records only, for the planning of the later ones."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self._copied = False

    def _copy(self) -> None:
        if not self._copied:
            self.view = replace(self.view, groups=dict(self.view.groups),
                                nodes=dict(self.view.nodes))
            self._copied = True

    def put_group(self, group: Group) -> None:
        self._copy()
        self.view.groups[group.id] = group

    def put_node(self, node: Node) -> None:
        self._copy()
        self.view.nodes[node.id] = node


class Planner:
    """The controller of one meta process (see the module docstring)."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self.lag_watch = LagWatch(config.lag_stuck_entries, config.lag_stuck_after_ms / 1000)
        self.last_split_s: dict[int, float] = {}  # table id -> when it was last split
        self.groups_wanted = 0  # groups to form beyond groups_min (for splits), at least
        self.notes: list[Note] = []  # log lines for the driver (``take_notes``)
        self._term_since_s = 0.0  # when this meta became active
        self._judge_after_s = 0.0  # no leader is judged lost before this (after a stall)
        self._planned_ms: float | None = None  # when the driver planned this tick
        self._next_formation_s = 0.0
        self._next_split_s = 0.0
        self._epoch_seen: dict[int, tuple[int, float]] = {}  # group -> (epoch, first seen at)
        self._lag_since: dict[int, dict[int, float]] = {}  # group -> member -> lagging since
        # group -> (learner, since, the serving leader's commit index then: its target)
        self._learner_seen: dict[int, tuple[int, float, int]] = {}
        self._no_spare: dict[int, int] = {}  # group -> member: a "no spare" episode was told

    # -- the driver's calls ---------------------------------------------------------------------

    def begin_term(self, now_ms: float) -> None:
        """This meta became active at ``now_ms``: nobody is judged for one heartbeat timeout,
        and the membership steps run at the first tick."""
        self._term_since_s = now_ms / 1000
        self._planned_ms = now_ms
        self._next_formation_s = 0.0

    def tick(self, now_ms: float, seen: Seen) -> list[Decision]:
        """The decisions to perform now, in order (see the module docstring)."""
        cfg = self.config
        now_s = now_ms / 1000
        if self._planned_ms is not None and now_ms - self._planned_ms > cfg.stall_ms:
            self._judge_after_s = now_s + cfg.stall_grace_ms / 1000
            self._say("stall", "warning",
                      f"the controller ran {round(now_ms - self._planned_ms)} ms late (this "
                      f"process was stalled): no leader is judged lost for the next "
                      f"{cfg.stall_grace_ms} ms")
        self._planned_ms = None  # until the driver asks when to tick next
        work = _Working(seen.view)
        out: list[Decision] = []
        for gid in sorted(seen.view.groups):
            self._elect(gid, work, seen, now_s, out)
        out.extend(ResumeMove(rng) for rng in move.unfinished(seen.view))
        if now_s >= self._next_split_s:
            self._next_split_s = now_s + cfg.split_interval_ms / 1000
            self._split(work.view, seen, now_s, out)
        if now_s >= self._next_formation_s:
            self._next_formation_s = now_s + cfg.formation_interval_ms / 1000
            self._form_group(work, seen, now_s, out)
            for gid in sorted(work.view.groups):
                self._reconfigure(gid, work, seen, now_s, out)
            self._watch_lag(work.view, seen, now_s, out)
        return out

    def done(self, decision: Decision, ok: bool, now_ms: float) -> None:
        """``decision`` was performed (``ok``: its write landed) at ``now_ms``."""
        if not ok:
            return
        if isinstance(decision, ElectLeader):
            self._epoch_seen[decision.group.id] = (decision.epoch, now_ms / 1000)
        elif isinstance(decision, PromoteLearner):
            self._epoch_seen[decision.group_id] = (decision.after.epoch, now_ms / 1000)

    def next_tick_ms(self, now_ms: float, seen: Seen) -> float:
        """Milliseconds to the next tick: the election interval, or sooner if a group leader's
        last heartbeat expires before that (just after, so that it counts as expired). A tick
        that comes ``stall_ms`` later than planned here means the driver's process stalled."""
        cfg = self.config
        now_s = now_ms / 1000
        wake_s = now_s + cfg.election_interval_ms / 1000
        timeout_s = cfg.heartbeat_timeout_ms / 1000
        for group in seen.view.groups.values():
            beat = seen.beats.get(group.leader) if group.leader is not None else None
            if beat is not None:
                expiry_s = beat.at_s + timeout_s + 0.001
                if now_s < expiry_s < wake_s:
                    wake_s = expiry_s
        delay_ms = max(0.0, wake_s - now_s) * 1000
        self._planned_ms = now_ms + delay_ms
        return delay_ms

    def membership_due(self, now_ms: float) -> bool:
        """A tick at ``now_ms`` runs the membership steps (formation, replacement, the lag
        watch): for a driver that reports on its ticks."""
        return now_ms / 1000 >= self._next_formation_s

    def judge_from_s(self) -> float:
        """Since when a node's silence counts against it (a heartbeat timeout is waited from
        there): this meta's becoming active, or the end of a stall's grace."""
        return max(self._term_since_s,
                   self._judge_after_s - self.config.heartbeat_timeout_ms / 1000)

    def note_split(self, table_id: int, now_ms: float) -> None:
        """A range of the table was split (by an operator): no merge or split of it for a
        while (``split.py``'s cooldowns)."""
        self.last_split_s[table_id] = now_ms / 1000

    def take_notes(self) -> list[Note]:
        notes, self.notes = self.notes, []
        return notes

    # -- the rules (one method each: a planted bug overrides one, as the core's do) -------------

    def choose_leader(self, group: Group, beats: Mapping[int, Beat], now_s: float,
                      campaign_since_s: float) -> LeaderChoice:
        """``leader.choose_leader`` with this planner's thresholds."""
        cfg = self.config
        return choose_leader(group, beats, now_s,
                             heartbeat_timeout_s=cfg.heartbeat_timeout_ms / 1000,
                             campaign_timeout_s=cfg.campaign_timeout_ms / 1000,
                             judge_from_s=self.judge_from_s(), campaign_since_s=campaign_since_s)

    def plan_replacement(self, group: Group, view: ClusterView, beats: Mapping[int, Beat],
                         now_s: float, lag_since: dict[int, float], learner_since_s: float,
                         learner_target: int) -> ReplacementPlan:
        """``replace.plan_replacement`` with this planner's policy."""
        return plan_replacement(group, view, beats, now_s, policy=self.config.replacement,
                                judge_from_s=self.judge_from_s(), lag_since=lag_since,
                                learner_since_s=learner_since_s, learner_target=learner_target)

    # -- the steps of a tick ----------------------------------------------------------------------

    def _say(self, key: str, level: str, text: str) -> None:
        self.notes.append(Note(key, level, text))

    def _quiet(self, key: str) -> None:
        self.notes.append(Note(key))

    def _elect(self, gid: int, work: _Working, seen: Seen, now_s: float,
               out: list[Decision]) -> None:
        group = work.view.groups[gid]
        first = self._epoch_seen.get(gid)
        if first is None or first[0] != group.epoch:
            assert first is None or group.epoch > first[0], ("epoch went back", gid, first,
                                                              group)
            first = self._epoch_seen[gid] = (group.epoch, now_s)
        choice = self.choose_leader(group, seen.beats, now_s,
                                    max(first[1], self._term_since_s))
        key = f"group-{gid}"
        if choice.action in ("keep", "wait"):
            self._quiet(key)
        elif choice.action == "stuck":
            self._say(key, "warning", f"group {gid}: no election: {choice.reason}")
        else:
            assert choice.action == "elect" and choice.leader is not None
            out.append(ElectLeader(group, choice.epoch, choice.leader, choice.reason))
            work.put_group(replace(group, epoch=choice.epoch, leader=choice.leader))

    def _split(self, view: ClusterView, seen: Seen, now_s: float, out: list[Decision]) -> None:
        """An automatic split (and move) of a range that is too big or too busy, or a merge of
        two small ones (``split.py``)."""
        cfg = self.config
        if view.backup_pause is not None or seen.splitting:
            return  # a backup holds the range map still; one split or merge at a time
        spares = live_spares(view, seen.beats, now_s, cfg.heartbeat_timeout_ms / 1000)
        plan, _ = plan_split(view, seen.reports, now_s, cfg.split, self.last_split_s,
                             len(spares), cfg.group_size)
        if plan is None:
            merge = plan_merge(view, seen.reports, now_s, cfg.split, self.last_split_s)
            if merge is not None:
                out.append(MergeRanges(merge))
            return
        if plan.form_group:
            wanted = len(view.groups) + 1
            if self.groups_wanted < wanted:
                self.groups_wanted = wanted
                out.append(WantGroup(wanted, plan.table, plan.group, plan.reason))
            return
        self.last_split_s[plan.table_id] = now_s
        out.append(SplitRange(plan))

    def _form_group(self, work: _Working, seen: Seen, now_s: float,
                    out: list[Decision]) -> None:
        cfg = self.config
        groups_min = max(cfg.groups_min, self.groups_wanted)
        members, reason = plan_group(work.view, seen.beats, now_s,
                                     heartbeat_timeout_s=cfg.heartbeat_timeout_ms / 1000,
                                     groups_min=groups_min, group_size=cfg.group_size)
        if members is None:
            if len(work.view.groups) < cfg.groups_min:
                self._say("formation", "info", f"no group formed yet: {reason}")
            return
        self._quiet("formation")
        records = tuple(work.view.nodes[m] for m in members)
        out.append(FormGroup(records, reason))
        for node in records:  # taken: no other step of this tick offers them
            work.put_node(replace(node, state=model.NODE_MEMBER))

    def _reconfigure(self, gid: int, work: _Working, seen: Seen, now_s: float,
                     out: list[Decision]) -> None:
        """The next step of follower replacement in the group (``replace.py``)."""
        cfg = self.config
        hb_s = cfg.heartbeat_timeout_ms / 1000
        group = work.view.groups[gid]
        lag_since = self._lag_since[gid] = track_lag(
            group, seen.beats, now_s, self._lag_since.get(gid, {}),
            heartbeat_timeout_s=hb_s, lag_entries=cfg.replace_lag_entries)
        learner = (0, now_s, 0)
        if group.learners:
            learner = self._learner_seen.get(gid, learner)
            if learner[0] != group.learners[0] or not learner[2]:
                # the target is known once a serving leader has reported its commit index
                lead = serving_leader(group, seen.beats, now_s, hb_s)
                target = lead.status.commit_index if lead is not None else 0
                since_s = now_s if learner[0] != group.learners[0] else learner[1]
                learner = self._learner_seen[gid] = (group.learners[0], since_s, target)
        else:
            self._learner_seen.pop(gid, None)
        plan = self.plan_replacement(group, work.view, seen.beats, now_s, lag_since,
                                     learner[1], learner[2])
        key = f"replace-{gid}"
        if plan.action == "keep":
            self._quiet(key)
            self._no_spare.pop(gid, None)
            return
        if plan.action == "wait":
            self._say(key, "info", plan.reason)
            return
        if plan.action == "no_spare":
            assert plan.old is not None
            if self._no_spare.get(gid) == plan.old:
                return
            self._no_spare[gid] = plan.old
            last = next((d for d in reversed(seen.view.decisions) if d.group == gid), None)
            recorded = (last is not None and last.kind == DECISION_NO_SPARE
                        and last.details.get("old") == plan.old)  # by an earlier active meta
            out.append(NoSpare(gid, plan.old, plan.why, plan.reason, not recorded))
            return
        self._no_spare.pop(gid, None)
        self._quiet(key)
        assert plan.group is not None
        step = STEPS[plan.action](group, plan.group,
                                  tuple((work.view.nodes.get(n.id), n) for n in plan.nodes),
                                  plan.old, plan.new, plan.reason, plan.why)
        out.append(step)
        work.put_group(plan.group)
        for node in plan.nodes:
            work.put_node(node)

    def _watch_lag(self, view: ClusterView, seen: Seen, now_s: float,
                   out: list[Decision]) -> None:
        """Say (once per episode) when a member's or learner's lag stops shrinking, and when
        it recovers (``lag.py``)."""
        hb_s = self.config.heartbeat_timeout_ms / 1000
        self.lag_watch.forget_groups(view.groups)
        for gid in sorted(view.groups):
            group = view.groups[gid]
            lead = serving_leader(group, seen.beats, now_s, hb_s)
            reports = []
            for role, ids in (("member", group.members), ("learner", group.learners)):
                for n in ids:
                    if n == group.leader:
                        continue
                    beat = seen.beats.get(n)
                    reports.append(Report(n, role, beat.status.commit_index if beat else 0,
                                          is_live(beat, now_s, hb_s)))
            events = self.lag_watch.update(
                gid, lead.status.commit_index if lead is not None else None, reports, now_s)
            for event in events:
                last = next((d for d in reversed(seen.view.decisions)
                             if d.kind in (DECISION_LAG_STUCK, model.LAG_RECOVERED)
                             and d.details.get("node") == event.node), None)
                stuck_recorded = last is not None and last.kind == DECISION_LAG_STUCK
                if event.kind == "stuck":
                    # said in any case; recorded unless an earlier active meta did
                    out.append(NoteLag(event, not stuck_recorded))
                elif stuck_recorded:
                    out.append(NoteLag(event, True))
                # else its stuck episode was never recorded: nothing to take back
