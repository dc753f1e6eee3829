"""Replacing a failing follower by a spare, and forming groups from spares: pure decisions on
the cluster's records and the nodes' latest heartbeats (docs/internals.md, "Membership";
docs/decisions.md, "Membership").

A replacement is three steps, each one compare-and-swap with the decision that explains it,
one reconfiguration per group at a time (``plan_replacement`` says which step is next):

(a) **add a learner**: a live spare receives the log, counted in no quorum;
(b) **swap** once it has caught up: a new epoch, the learner a member in place of the failing
    one (flagged), and ``joint`` = the previous members, so that a campaign needs a majority of
    both;
(c) **clear joint** once the leader serves the new epoch: its no-op, and everything before it,
    is then on a majority of the new members.

Invariants the planner's tests check on generated states: a member is never removed before its
successor has caught up (the swap needs the learner's commit index at the target and within the
slack of the serving leader's); a swap never starts without a live, sound majority of the old
and of the new members; nothing changes while the group has no serving leader, but for clearing
a learner that died, broke or timed out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from rangekv import model
from rangekv.controller.decisions import (
    DECISION_JOINT_CLEARED,
    DECISION_NO_SPARE,
    DECISION_REPLACE_ABANDONED,
    DECISION_REPLACE_STARTED,
    DECISION_REPLACE_SWAPPED,
)
from rangekv.controller.health import Beat, is_live, live_spares, serving_leader
from rangekv.model import ClusterView, Group, Node
from rangekv.model.status import ROLE_LEADER

# Follower replacement (docs/internals.md, "Membership"), see plan_replacement and docs/decisions.md
# ("Membership"): a member is replaced once it has been dead, or behind the leader's commit by
# more than REPLACE_LAG_ENTRIES_DEFAULT entries, for longer than the grace. 10 s is above a
# process restart with WAL replay and the partitions and pauses a healthy node rides out (each
# replacement copies a whole replica and spends a spare), and far below the 5-30 min after
# which TiKV and CockroachDB re-replicate: our spares are idle and waiting. 50,000 entries is
# well above what a healthy follower shows after a restart or a pause of a few seconds under
# full load, so only a follower that does not catch up is replaced for lag.
REPLACE_GRACE_MS_DEFAULT = 10_000
REPLACE_LAG_ENTRIES_DEFAULT = 50_000
# A learner is caught up when its commit index (which only counts entries matching the
# leader's log) is within this of the leader's: heartbeats are 100 ms apart, so a learner that
# keeps up under load reads this far behind in meta's view. Safety does not depend on it.
CATCH_UP_SLACK_DEFAULT = 1_000
# A learner that has not caught up within this is dropped (and flagged), and another spare
# tried. Catch-up is by ordinary appends from index 1 until snapshots land.
LEARNER_TIMEOUT_MS_DEFAULT = 120_000


def plan_group(
    view: ClusterView,
    beats: Mapping[int, Beat],
    now_s: float,
    *,
    heartbeat_timeout_s: float,
    groups_min: int,
    group_size: int,
) -> tuple[list[int] | None, str]:
    """The members of a group to form now (the lowest-id live spares), or None; and why."""
    if len(view.groups) >= groups_min:
        return None, f"{len(view.groups)} groups exist, at least {groups_min} wanted"
    spares = live_spares(view, beats, now_s, heartbeat_timeout_s)
    if len(spares) < group_size:
        return None, (
            f"{len(view.groups)} of {groups_min} groups exist but only {len(spares)} "
            f"live spares {spares}; a group needs {group_size}"
        )
    return spares[:group_size], (
        f"{len(view.groups)} of {groups_min} groups exist; live spares {spares}"
    )


@dataclass(frozen=True)
class ReplacementPolicy:
    """The thresholds of ``plan_replacement`` (seconds and entries; see the defaults above)."""

    heartbeat_timeout_s: float
    grace_s: float = REPLACE_GRACE_MS_DEFAULT / 1000
    lag_entries: int = REPLACE_LAG_ENTRIES_DEFAULT
    catch_up_slack: int = CATCH_UP_SLACK_DEFAULT
    learner_timeout_s: float = LEARNER_TIMEOUT_MS_DEFAULT / 1000


@dataclass(frozen=True)
class ReplacementPlan:
    """One step of a follower replacement (docs/internals.md, "Membership") for one group.

    ``action``: "keep" (nothing to do), "wait" (a step is due but cannot be taken yet),
    "no_spare" (a member needs replacing and no spare is left: nothing is written but the
    decision), "add_learner" (a), "swap" (b), "clear_joint" (d), "drop_learner" (the
    replacement is abandoned). ``group`` and ``nodes`` are the records to write in one CAS
    transaction (``group`` None: unchanged); ``old`` is the member being replaced and ``new``
    the spare taking its place.
    """

    action: str
    reason: str
    group: Group | None = None
    nodes: tuple[Node, ...] = ()
    old: int | None = None
    new: int | None = None
    why: str = ""  # what is wrong with ``old`` (add_learner, no_spare)

    @property
    def decision_kind(self) -> str:
        """The kind of decision record this step writes ("" for none)."""
        return {
            "add_learner": DECISION_REPLACE_STARTED,
            "swap": DECISION_REPLACE_SWAPPED,
            "clear_joint": DECISION_JOINT_CLEARED,
            "drop_learner": DECISION_REPLACE_ABANDONED,
            "no_spare": DECISION_NO_SPARE,
        }.get(self.action, "")


def track_lag(
    group: Group,
    beats: Mapping[int, Beat],
    now_s: float,
    since: dict[int, float],
    *,
    heartbeat_timeout_s: float,
    lag_entries: int,
) -> dict[int, float]:
    """Since when each member has lagged more than ``lag_entries`` behind the leader's commit
    index without a break (``since`` is the previous answer). Measured only while the leader
    is live and serving; a member that is not live is judged dead instead (it leaves the map)."""
    leader = group.leader
    beat = beats.get(leader) if leader is not None else None
    if beat is None or not is_live(beat, now_s, heartbeat_timeout_s) or not (
        beat.status.role == ROLE_LEADER and beat.status.leader_epoch == group.epoch
    ):
        return {m: t for m, t in since.items() if m in group.members and m != leader}
    out: dict[int, float] = {}
    for m in group.members:
        mb = beats.get(m)
        if m == leader or not is_live(mb, now_s, heartbeat_timeout_s):
            continue
        assert mb is not None
        if beat.status.commit_index - mb.status.last_index > lag_entries:
            out[m] = since.get(m, now_s)
    return out


def started_reason(view: ClusterView, group_id: int, old: int) -> str:
    """Why the replacement of ``old`` in the group was started (its decision), if recorded."""
    for d in reversed(view.decisions):
        if d.group == group_id and d.kind == DECISION_REPLACE_STARTED and d.details.get(
                "old") == old:
            return str(d.details.get("why") or d.reason)
    return "replacement started by an earlier meta"


def plan_replacement(
    group: Group,
    view: ClusterView,
    beats: Mapping[int, Beat],
    now_s: float,
    *,
    policy: ReplacementPolicy,
    judge_from_s: float,
    lag_since: dict[int, float],
    learner_since_s: float,
    learner_target: int = 0,
) -> ReplacementPlan:
    """The next step of replacing a failing follower of ``group`` by a spare (docs/internals.md,
    "Membership").

    Rules, in order (one reconfiguration per group at a time):

    * **joint**: once the recorded leader serves the group's epoch (its no-op is committed on a
      majority of the new members, so they hold everything the previous ones committed), clear
      ``joint``; until then, wait.
    * **learner** ``y`` replacing ``x``: abandoned (``y`` back to the pool) if ``x`` now leads;
      dropped and flagged if ``y`` has had no heartbeat for longer than the grace, reports a
      broken log, or has not caught up within ``learner_timeout_s`` of ``learner_since_s``
      (when this meta first saw it); swapped in once its commit index (which counts only
      entries matching the leader's log) has reached ``learner_target`` (the leader's commit
      index when this meta first saw the learner: everything committed before the replacement
      started) and is within ``catch_up_slack`` of the serving leader's, and a majority of the
      old and of the new members are live with a sound log: a new epoch, ``members - x + y``,
      ``joint`` = the old members, the same leader (it is live and serving, or we would
      wait), and ``x`` flagged with the reason.
    * **steady**: a non-leader member that reports a broken log, or has had no heartbeat
      (since ``judge_from_s`` if never heard) or has lagged (``lag_since``, see ``track_lag``)
      for longer than the grace, is replaced (broken first, then dead, then lagging; lowest id
      first) by the lowest-id live spare (``live_spares``), which becomes a learner. Never
      while the group has no serving leader; with no spare left, say so ("no_spare").

    Nobody is judged before one heartbeat timeout since ``judge_from_s`` (this meta's start).
    """
    hb_s, grace_s = policy.heartbeat_timeout_s, policy.grace_s
    gid, epoch = group.id, group.epoch
    if now_s < judge_from_s + hb_s:
        return ReplacementPlan("wait", f"active for under one heartbeat timeout "
                                       f"({round(hb_s * 1000)} ms)")
    lead = serving_leader(group, beats, now_s, hb_s)

    def silent_s(node: int, since_s: float) -> float | None:
        """Seconds without a heartbeat, or None if the node is live."""
        beat = beats.get(node)
        if is_live(beat, now_s, hb_s):
            return None
        return now_s - (beat.at_s if beat is not None else since_s)

    if group.joint:
        if lead is None:
            return ReplacementPlan(
                "wait", f"group {gid}: the reconfiguration of epoch {epoch} is unfinished "
                        f"(previous members {list(group.joint)}); waiting for leader "
                        f"{group.leader} to serve it")
        return ReplacementPlan(
            "clear_joint",
            f"group {gid}: leader {group.leader} serves epoch {epoch}, so its no-op and "
            f"everything before it are on a majority of members {list(group.members)}: "
            f"campaigns no longer need the previous members {list(group.joint)}",
            group.joint_cleared())

    if group.learners:
        y, x = group.learners[0], group.replacing
        assert x is not None, group
        ynode = view.nodes.get(y)
        yaddr = ynode.address if ynode is not None else ""

        def drop(why: str, flag: str) -> ReplacementPlan:
            if flag:
                record = Node(y, yaddr, model.NODE_FLAGGED, None,
                              f"learner of group {gid} dropped: {why}", flag)
            elif ynode is not None and ynode.state == model.NODE_FLAGGED:
                record = replace(ynode, group=None)  # its broken log keeps it flagged
            else:
                record = Node(y, yaddr, model.NODE_SPARE, None)
            return ReplacementPlan(
                "drop_learner", f"group {gid}: replacement of member {x} by node {y} "
                                f"abandoned: {why}", group.without_learner(), (record,), x, y)

        if x == group.leader:
            return drop(f"member {x} leads the group now", "")
        ybeat = beats.get(y)
        if ybeat is not None and ybeat.status.broken:
            return drop(f"node {y} reports a broken log", "")
        down = silent_s(y, max(judge_from_s, learner_since_s))
        if down is not None and down > grace_s:
            return drop(f"no heartbeat from node {y} for {down:.1f} s (grace {grace_s:g} s)",
                        model.FLAG_LEARNER_FAILED)
        if lead is None:
            if now_s - learner_since_s > policy.learner_timeout_s:
                return drop(f"node {y} did not catch up within "
                            f"{policy.learner_timeout_s:g} s", model.FLAG_LEARNER_FAILED)
            return ReplacementPlan("wait", f"group {gid}: learner {y} waits for a serving "
                                           f"leader", old=x, new=y)
        lc = lead.status.commit_index
        # (only a beat about this group's log counts: a spare that was in another group still
        # reports that group's commit index until it hears of this one and discards that log)
        yc = (ybeat.status.commit_index
              if ybeat is not None and down is None and ybeat.status.group == gid else 0)
        if (ybeat is None or down is not None or yc < learner_target
                or yc + policy.catch_up_slack < lc):
            if now_s - learner_since_s > policy.learner_timeout_s:
                return drop(f"node {y} did not catch up within {policy.learner_timeout_s:g} s "
                            f"(its commit index {yc}, the leader's {lc})",
                            model.FLAG_LEARNER_FAILED)
            return ReplacementPlan(
                "wait", f"group {gid}: learner {y} at commit index {yc} of the leader's {lc} "
                        f"(caught up at {learner_target} and within {policy.catch_up_slack})",
                old=x, new=y)
        swapped_members = tuple(sorted({*group.members} - {x} | {y}))
        for voters, which in ((group.members, "old"), (swapped_members, "new")):
            up = [m for m in voters if is_live(beats.get(m), now_s, hb_s)
                  and not beats[m].status.broken]
            if len(up) < len(voters) // 2 + 1:
                # The new epoch's campaign needs both majorities: do not start what would stall.
                return ReplacementPlan(
                    "wait", f"group {gid}: learner {y} caught up, but only {up} of the {which} "
                            f"members {list(voters)} are live with a sound log", old=x, new=y)
        promised = max((b.status.epoch for m in {*group.members, y}
                        if (b := beats.get(m)) is not None and b.status.group == gid
                        and is_live(b, now_s, hb_s)), default=0)
        new_epoch = max(epoch, promised) + 1
        assert group.leader is not None
        swapped = group.swapped(new_epoch, group.leader)
        xnode = view.nodes.get(x)
        why_x = started_reason(view, gid, x)
        flagged = Node(x, xnode.address if xnode is not None else "", model.NODE_FLAGGED, None,
                       f"replaced in group {gid} by node {y}: {why_x}", model.FLAG_REPLACED)
        joined = Node(y, yaddr, model.NODE_MEMBER, gid)
        return ReplacementPlan(
            "swap",
            f"group {gid}: learner {y} caught up (commit index {yc}, the leader's {lc}): "
            f"epoch {epoch} -> {new_epoch}, members {list(group.members)} -> "
            f"{list(swapped.members)} led by {group.leader}; a campaign needs a majority of "
            f"both until the new epoch serves; node {x} flagged ({why_x})",
            swapped, (joined, flagged), x, y)

    # steady state: does a non-leader member need replacing?
    trouble: list[tuple[int, int, str]] = []  # (rank, member, why)
    for m in group.members:
        if m == group.leader:
            continue
        beat = beats.get(m)
        down = silent_s(m, judge_from_s)
        if beat is not None and down is None and beat.status.broken:
            why = beat.status.broken_reason or "it reports a broken log"
            trouble.append((0, m, f"reports a broken log: {why}"))
        elif down is not None and down > grace_s:
            heard = "no heartbeat" if beat is not None else "no heartbeat heard"
            trouble.append((1, m, f"{heard} for {down:.1f} s (grace {grace_s:g} s)"))
        elif m in lag_since and now_s - lag_since[m] > grace_s:
            lag = "?"
            if lead is not None and beat is not None:
                lag = str(lead.status.commit_index - beat.status.last_index)
            why = (f"{lag} entries behind the leader's commit (more than {policy.lag_entries}) "
                   f"for {now_s - lag_since[m]:.1f} s (grace {grace_s:g} s)")
            trouble.append((2, m, why))
    if not trouble:
        return ReplacementPlan("keep", f"group {gid}: every member is healthy")
    _, x, why = min(trouble)
    if lead is None:
        return ReplacementPlan("wait", f"group {gid}: member {x} {why}, but the group has no "
                                       f"serving leader to catch a spare up", old=x)
    spares = live_spares(view, beats, now_s, hb_s)
    if not spares:
        return ReplacementPlan(
            "no_spare", f"no spare available for group {gid}: member {x} {why}; the group "
                        f"goes on without a replacement", old=x, why=why)
    y = spares[0]
    ynode = view.nodes[y]
    return ReplacementPlan(
        "add_learner",
        f"group {gid}: member {x} {why}; spare {y} (lowest id of live spares {spares}) joins "
        f"as a learner to replace it",
        group.with_learner(y, x), (Node(y, ynode.address, model.NODE_JOINING, gid),), x, y, why)
