"""The active meta's control loop: it asks the planner (``rangekv.controller.planner``) what to
do and performs each decision against etcd and the nodes. No policy lives here: what to decide
is the planner's; how a decision lands is this module's.

How a decision lands (invariants 2 and 5 of ``service.py``):

* only if the view still shows the records it was decided on (``before``), and then as one
  compare-and-swap transaction on their revisions, fenced on this meta's term (``store.py``);
  a decision whose premise changed is dropped and logged ("deciding again"), never forced;
* a new epoch is recorded before any node hears of it (nodes learn it from their heartbeat
  replies, which read the view: the loop waits for the view to show each write);
* every change is explained: its decision goes to etcd's decisions log in the same
  transaction (membership) or just after (elections, splits, moves), and to the log;
* a refused fenced write (``NotActive``) ends the term at once.

The loop ticks every ``election_interval_ms`` and also just after the last heartbeat of a
group's leader would expire, so a lost leader is judged lost one heartbeat timeout after its
last heartbeat, not up to a tick later. A tick that comes ``stall_ms`` late means this process
did not run for a while (CPU starvation, a pause): heartbeats that arrived meanwhile may still
be unread, so no leader is judged for ``stall_grace_ms`` (the planner keeps that rule).

Splits and merges run as a background task, one at a time (they talk to a group leader and may
take seconds); moves each run in a task of ``mover.py``, resumed by every tick that finds them
unfinished. A backup's pause is answered here too, once nothing changes the range map.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rangekv import errors, model
from rangekv.controller import move
from rangekv.controller.decisions import (
    DECISION_LEADER_ELECTED,
    DECISION_MERGE,
    DECISION_SPLIT,
    DECISION_SPLIT_SKIPPED,
    Decision,
    ElectLeader,
    FormGroup,
    MergeRanges,
    NoSpare,
    NoteLag,
    ReplacementStep,
    ResumeMove,
    SplitRange,
    WantGroup,
)
from rangekv.controller.planner import Seen
from rangekv.controller.split import MergePlan, SplitPlan
from rangekv.metadata import rangeops
from rangekv.metadata.store import Store, decision_entry
from rangekv.model import ClusterView, Group, Node, key_text

if TYPE_CHECKING:
    from rangekv.metadata.election import Term
    from rangekv.metadata.service import MetaService

LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


# -- how a decision's records land in the store (the meta's loop below; a simulator too) ---------


async def land(store: Store, view: ClusterView, revs: Mapping[bytes, int], decision: Decision,
               wall_ns: int) -> int | None:
    """Write what ``decision`` changes in the metadata, if ``view`` (with ``revs``, each key's
    mod revision, as current as the caller can make it) still shows the records it was decided
    on: one compare-and-swap transaction, with the decision's record where it has one in the
    same transaction (replacement steps, "no spare"); a decision that is only a record (lag,
    a group wanted) writes that. The revision written; None if a premise changed (the planner
    decides again) or there is nothing to write (splits, merges and moves talk to the groups
    first: ``ControlLoop.perform``; the meta also records elections once the view shows
    them, with ``record``)."""
    if isinstance(decision, ElectLeader):
        gid = decision.group.id
        if view.groups.get(gid) != decision.group:
            return None
        mod_revision = revs.get(model.group_key(gid))
        assert mod_revision, ("a group in the view has no revision", gid)
        return await store.set_group_leader(decision.group, mod_revision, decision.epoch,
                                            decision.leader)
    if isinstance(decision, FormGroup):
        formed = await form_group(store, view, revs, decision)
        return None if formed is None else formed[1]
    if isinstance(decision, ReplacementStep):
        gid = decision.group_id
        if view.groups.get(gid) != decision.before or any(
                view.nodes.get(n.id) != before for before, n in decision.nodes):
            return None
        mod_revision = revs.get(model.group_key(gid))
        assert mod_revision, ("a group in the view has no revision", gid)
        nodes = [(n, revs.get(model.node_key(n.id), 0)) for _, n in decision.nodes]
        details: dict[str, Any] = {"old": decision.old, "new": decision.new,
                                   "epoch": decision.after.epoch,
                                   "members": list(decision.after.members)}
        if decision.why:
            details["why"] = decision.why
        return await _write_step(store, view, (decision.after, mod_revision), nodes,
                                 decision.kind, gid, decision.reason, details, wall_ns)
    if isinstance(decision, NoSpare) and decision.record:
        return await _write_step(store, view, None, [], decision.kind, decision.group_id,
                                 decision.reason, {"old": decision.old, "why": decision.why},
                                 wall_ns)
    if isinstance(decision, WantGroup) or isinstance(decision, NoteLag) and decision.record:
        kind, reason, group, details = record_fields(decision)
        return await record(store, view, kind, reason, wall_ns, group, **details)
    return None


def record_fields(decision: NoteLag | WantGroup) -> tuple[str, str, int | None, dict[str, Any]]:
    """The decision record a lag note or a group wanted leaves: kind, reason, group, details."""
    if isinstance(decision, NoteLag):
        event = decision.event
        return (decision.kind, event.reason(), event.group,
                {"node": event.node, "role": event.role, "lag": event.lag})
    return decision.kind, decision.reason, decision.group, {"table": decision.table}


async def form_group(store: Store, view: ClusterView, revs: Mapping[bytes, int],
                     decision: FormGroup) -> tuple[Group, int] | None:
    """``land`` for a ``FormGroup``: the new group (its id issued by the store) and the
    revision, or None if a spare's record moved on."""
    chosen: list[tuple[Node, int]] = []
    for node in decision.members:
        if view.nodes.get(node.id) != node:
            return None
        rev = revs.get(model.node_key(node.id))
        assert rev, ("a node in the view has no revision", node.id)
        chosen.append((node, rev))
    return await store.create_group(chosen)


async def _write_step(store: Store, view: ClusterView, group: tuple[Group, int] | None,
                      nodes: list[tuple[Node, int]], kind: str, gid: int, reason: str,
                      details: dict[str, Any], wall_ns: int) -> int | None:
    """A reconfiguration step (or none) with its decision record, trimming the log of
    decisions to ``model.DECISIONS_KEPT``; the revision, or None on a conflict."""
    decision, trim = decision_entry(view, wall_ns, kind, gid, reason,
                                    {k: v for k, v in details.items() if v is not None})
    return await store.reconfigure(group, nodes, decision, trim)


async def record(store: Store, view: ClusterView, kind: str, reason: str, wall_ns: int,
                 group: int | None = None, **details: Any) -> int | None:
    """A decision record alone (an election, a split, a move, lag), after the step it
    explains; the revision, or None if the log moved on meanwhile."""
    decision, trim = decision_entry(view, wall_ns, kind, group, reason,
                                    {k: v for k, v in details.items() if v is not None})
    return await store.reconfigure(None, [], decision, trim)



class ControlLoop:
    """Runs the planner for the active term and performs its decisions."""

    def __init__(self, meta: MetaService) -> None:
        self.meta = meta
        self.split_task: asyncio.Task[None] | None = None  # an automatic split or merge
        self._backup_answered: Any = None  # the backup pause token answered

    def seen(self) -> Seen:
        meta = self.meta
        return Seen(meta.view, meta.beats, meta.range_reports,
                    splitting=self.split_task is not None and not self.split_task.done())

    async def run(self, term: Term) -> str:
        """Run the controller while ``term`` lasts; returns why it stopped."""
        meta = self.meta
        planner = meta.planner
        planner.begin_term(term.since_s * 1000)
        while not meta.stopping:
            if meta.active_term() is not term:
                return "the lease may have expired"
            if meta.revs.get(model.META_ACTIVE) != term.fence:
                return "the active-meta key in etcd is no longer ours"
            try:
                decisions = planner.tick(meta.clock() * 1000, self.seen())
                self._say_notes()
                for decision in decisions:
                    if meta.active_term() is not term:
                        break
                    await self.perform(decision)
                if meta.active_term() is term:  # a deposed meta speaks for no controller
                    await self.answer_backup()
                meta.clear("control")
            except errors.NotActive as exc:
                meta.term = None
                return f"a fenced write was refused: {exc.message}"
            except errors.RangeKVError as exc:
                meta.say("control", logging.WARNING, "controller step failed, retrying: %s: %s",
                         exc.code, exc.message)
            delay_ms = planner.next_tick_ms(meta.clock() * 1000, self.seen())
            await asyncio.sleep(delay_ms / 1000)
        return "the process is stopping"

    def _say_notes(self) -> None:
        for note in self.meta.planner.take_notes():
            if note.text is None:
                self.meta.clear(note.key)
            else:
                self.meta.say(note.key, LEVELS[note.level], "%s", note.text)

    # -- performing a decision ------------------------------------------------------------------

    async def perform(self, decision: Decision) -> None:
        meta = self.meta
        if isinstance(decision, ElectLeader):
            await self._elect(decision)
        elif isinstance(decision, FormGroup):
            await self._form_group(decision)
        elif isinstance(decision, ReplacementStep):
            await self._replacement_step(decision)
        elif isinstance(decision, NoSpare):
            meta.log.warning("%s", decision.reason)
            if decision.record:
                await self._replacement_step(decision)
        elif isinstance(decision, NoteLag):
            event = decision.event
            if event.kind == "stuck":
                meta.metrics.lag_stuck_episodes += 1
                meta.log.warning("%s", event.reason())
            else:
                meta.log.info("%s", event.reason())
            if decision.record:
                kind, reason, group, details = record_fields(decision)
                await self.record_decision(kind, reason, group=group, **details)
        elif isinstance(decision, WantGroup):
            kind, reason, group, details = record_fields(decision)
            await self.record_decision(kind, reason, group=group, **details)
        elif isinstance(decision, SplitRange):
            self.split_task = asyncio.ensure_future(self._split(decision.plan))
        elif isinstance(decision, MergeRanges):
            self.split_task = asyncio.ensure_future(self._merge(decision.plan))
        elif isinstance(decision, ResumeMove):
            meta.mover.ensure(decision.range, "resumed")
        else:
            raise AssertionError(f"a decision nobody performs: {decision!r}")

    async def _caught_up(self, revision: int) -> None:
        await self.meta.follower.catch_up(revision, self.meta.config.view_catch_up_ms / 1000)

    async def _elect(self, d: ElectLeader) -> None:
        meta = self.meta
        gid = d.group.id
        written = await land(meta.store, meta.view, meta.revs, d, meta.wall_ns())
        if written is None:
            meta.log.info("group %d changed while choosing its leader; deciding again", gid)
            meta.planner.done(d, False, meta.clock() * 1000)
            return
        meta.clear(f"group-{gid}")
        meta.metrics.elections += 1
        meta.planner.done(d, True, meta.clock() * 1000)
        meta.log.warning("group %d: epoch %d -> %d, leader %s -> %d: %s", gid, d.group.epoch,
                         d.epoch, d.group.leader, d.leader, d.reason)
        await self._caught_up(written)
        # Kept with the other decisions (after the catch-up: the new leader is told first),
        # so that the dashboard and `rangekv status` show every failover and its reason.
        await self.record_decision(DECISION_LEADER_ELECTED, d.reason, group=gid, epoch=d.epoch,
                                   leader=d.leader, previous=d.group.leader)

    async def _form_group(self, d: FormGroup) -> None:
        meta = self.meta
        formed = await form_group(meta.store, meta.view, meta.revs, d)
        if formed is None:
            meta.log.info("spares %s changed while forming a group; deciding again",
                          [n.id for n in d.members])
            return
        group, written = formed
        meta.metrics.groups_formed += 1
        meta.log.info("formed group %d with members %s: %s", group.id, list(group.members),
                      d.reason)
        await self._caught_up(written)

    async def _replacement_step(self, d: ReplacementStep | NoSpare) -> None:
        """One step of follower replacement (or a "no spare" said): one fenced CAS
        transaction with the decision that explains it."""
        meta = self.meta
        written = await land(meta.store, meta.view, meta.revs, d, meta.wall_ns())
        if written is not None:
            meta.metrics.decisions[d.kind] += 1
        if isinstance(d, NoSpare):
            return
        if written is None:
            meta.log.info("group %d changed while reconfiguring it; deciding again",
                          d.group_id)
            meta.planner.done(d, False, meta.clock() * 1000)
            return
        meta.log.warning("%s", d.reason)
        meta.planner.done(d, True, meta.clock() * 1000)
        await self._caught_up(written)

    async def record_decision(self, kind: str, reason: str, **details: Any) -> None:
        """A controller decision (a leader elected, a split, move, merge, a group formed) and
        why: logged, and written to the decisions log in etcd (``rangekv status``,
        /v1/cluster). Recording is best effort: the step it explains is already done."""
        meta = self.meta
        meta.log.info("decision %s: %s", kind, reason)
        meta.metrics.decisions[kind] += 1
        group = details.pop("group", None)
        try:
            await record(meta.store, meta.view, kind, reason, meta.wall_ns(),
                         group if isinstance(group, int) else None, **details)
        except errors.NotActive:
            raise
        except errors.RangeKVError as exc:
            meta.log.warning("decision %s not recorded in etcd: %s: %s", kind, exc.code,
                             exc.message)

    # -- splits and merges (controller/split.py decides them) -----------------------------------

    async def _split(self, plan: SplitPlan) -> None:
        meta = self.meta
        try:
            reply = await meta.leaders.tell(plan.group, "split_key", table_id=plan.table_id,
                                            start=plan.start, by=plan.by, fraction=plan.fraction)
            at = reply.get("at")
            if not isinstance(at, bytes) or at <= plan.start:
                await self.record_decision(
                    DECISION_SPLIT_SKIPPED, f"{plan.reason}; but its data cannot be divided "
                    "(one key, or no key above the start)", table=plan.table, group=plan.group)
                return
            await self.record_decision(DECISION_SPLIT, f"{plan.reason}; split at {key_text(at)}",
                                       table=plan.table, group=plan.group, at=at.hex(),
                                       target=plan.target)
            await meta.handlers.op_split_range({"name": plan.table, "at": at, "to": plan.target,
                                                "why": plan.reason})
        except errors.RangeKVError as exc:
            meta.say("split", logging.WARNING, "automatic split of table %s failed, to be "
                     "retried: %s: %s", plan.table, exc.code, exc.message)

    async def _merge(self, plan: MergePlan) -> None:
        """Merge two neighbouring ranges of one group: the group first (so that a request
        routed by either range, or by both, is served), then etcd."""
        meta = self.meta
        try:
            revision = await rangeops.merge_ranges(meta.store, meta.leaders.tell, plan)
            if revision is None:
                return  # retried at a later tick: the group's merge is idempotent
            meta.metrics.merges += 1
            meta.range_reports.pop(plan.group, None)  # its figures name the old ranges
            await self.record_decision(DECISION_MERGE, plan.reason, table=plan.table,
                                       group=plan.group, revision=revision)
        except errors.RangeKVError as exc:
            meta.say("merge", logging.WARNING, "merge of table %s ranges failed, to be "
                     "retried: %s: %s", plan.table, exc.code, exc.message)

    # -- backups (rangekv.backup) ---------------------------------------------------------------

    def range_change_in_flight(self) -> str | None:
        """What still changes the range map (None: nothing), as seen by this meta."""
        meta = self.meta
        if meta.handlers.name_locks:
            return f"table operations on {sorted(meta.handlers.name_locks)}"
        if self.split_task is not None and not self.split_task.done():
            return "an automatic split or merge"
        if meta.mover.tasks:
            return f"{len(meta.mover.tasks)} range move(s)"
        for ranges in meta.view.ranges.values():
            for rng in ranges:
                if move.moving(rng):
                    return f"the move of a range of table {meta.table_name(rng.table_id)}"
        return None

    async def answer_backup(self) -> None:
        """A backup asked for a pause (``/rangekv/backup/pause``): once no range change is in
        flight, say so under the backup's lease (``/rangekv/backup/paused``). New ones are
        refused from the moment the view shows the pause (``Handlers.refuse_while_paused``,
        the planner's splits), so none starts after the answer; moves found unfinished go on
        meanwhile, and the answer waits for them."""
        meta = self.meta
        pause = meta.view.backup_pause
        if pause is None:
            self._backup_answered = None
            return
        token, lease = pause.get("token"), pause.get("lease")
        if token == self._backup_answered or not isinstance(lease, int):
            return
        busy = self.range_change_in_flight()
        if busy is not None:
            meta.say("backup-pause", logging.INFO, "backup %s waits for %s", token, busy)
            return
        try:
            await meta.store.answer_backup_pause(token, lease)
        except errors.RangeKVError as exc:
            meta.say("backup-pause", logging.WARNING, "cannot answer backup %s (its lease may "
                     "have expired): %s", token, exc.message)
            return
        self._backup_answered = token
        meta.log.info("backup %s: range changes paused (none in flight)", token)
