"""The ``rangekv meta`` process: metadata manager plus the simplest controller duties.

Invariants (each is relied on elsewhere; break one and data can be lost or served stale)
------------------------------------------------------------------------------------------
1. **One active meta acts at a time.** A meta acts only while it holds
   ``/rangekv/meta/active`` under a live etcd lease, and stops acting (answers ``not_active``,
   stops its controller) as soon as its lease may have run out: at the time it *sent* its last
   successful renewal plus the TTL, less a safety margin, whether or not etcd said so; and as
   soon as its view shows the key is no longer the one it created. Every write it makes is also
   fenced on that key's create revision (see ``store.py``), so a deposed meta's late write can
   never land.
2. **Epochs only grow**, and a group's leader for epoch ``e`` is recorded in etcd by
   compare-and-swap *before* any node hears of ``e`` (the ``campaign`` field of a heartbeat
   reply). Two metas can therefore never hand out the same epoch to two nodes.
3. **No leader is chosen without a live majority** of the group's members (and, while a
   reconfiguration is unfinished, of its previous members, ``joint``); without one the group
   stays unavailable (never inconsistent), and that is logged.
4. **Decisions are made on a view at least as new as the takeover**: a newly active meta waits
   until its watched view has reached the revision at which it won, and waits one heartbeat
   timeout to hear from the nodes before judging any leader dead.
5. Every change is a compare-and-swap on the revision the decision was based on; a conflict
   means "decide again", never "overwrite".

Theory of operation
-------------------
Three background tasks run for the life of the process:

* the **view loop** keeps a ``model.ClusterView`` (plus each key's mod revision) current: one
  consistent prefix read of ``/rangekv/``, then a watch from the next revision; when the watch is
  lost (compaction, etcd restart) it reloads, and when the view fails to reach a revision this
  meta just wrote within ``view_catch_up_ms`` the watch is presumed stuck and restarted.
* the **election loop** tries to create the active key (a txn that requires version 0) under a
  fresh lease. If another meta holds it, this one stands by: it answers every request with
  ``not_active{active_hint}`` and tries again as soon as its view shows the key gone (or every
  ``standby_poll_ms``). Once active it renews the lease every ``keepalive_interval_ms`` and runs
  the controller until the lease is lost.
* the **TCP server** answers the meta ops of ``docs/internals.md``: ``heartbeat``,
  ``create_table``, ``drop_table``.
* with ``--metrics-listen``, an HTTP server answers Prometheus ``/metrics``
  (``metadata/metrics.py``), on the same event loop.

The controller (active only) ticks every ``election_interval_ms``: for each group it applies
``choose_leader`` (a pure function below: live majority, most caught-up member wins, reasons
spelled out) and, every ``formation_interval_ms``, ``plan_group`` (three lowest-id live spares
form a new group while there are fewer than ``groups_min``) and ``plan_replacement`` (a dead,
broken or lagging follower is replaced by a spare: learner, swap in a new epoch whose campaign
also needs the previous members, then ``joint`` cleared; each step one CAS with the decision
that explains it, kept under ``/rangekv/decisions/``). Nodes learn everything from their
heartbeat replies; the meta never calls a node except to push ``add_range`` / ``drop_table`` to a
group leader during table creation and removal.

Table creation is resumable: the record is written as ``creating`` together with its range, the
group leader is told (``add_range``, idempotent), then the record becomes ``active``. A meta
crash anywhere in between leaves a ``creating`` record that the next ``create_table`` of that name
finishes. Dropping is the mirror image through ``dropping``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rangekv import aio, errors, limits, model, wire
from rangekv import config as rangekv_config
from rangekv import log as rangekv_log
from rangekv.controller.lag import LAG_ENTRIES_MIN, STUCK_AFTER_S, LagEvent, LagWatch, Report
from rangekv.controller.move import RangeMover
from rangekv.controller.split import MergePlan, SplitConfig, SplitPlan, plan_merge, plan_split
from rangekv.limits import check_table_name
from rangekv.metadata.etcd import EtcdClient, LeaseExpired, WatchLost
from rangekv.metadata.metrics import MetaMetrics
from rangekv.metadata.requests import (
    ADDRESS_BYTES_MAX,
    NODE_ID_MAX,
    OPS,
    ROLE_LEADER,
    NodeStatus,
    split_host_port,
)
from rangekv.metadata.store import MetaStore
from rangekv.metrics import MetricsServer, listen_address
from rangekv.model import ClusterView, Group, Node, Table, key_text, span_text

CAS_ATTEMPTS_MAX = 8  # a compare-and-swap that lost a race on a shared counter is redone
LOG_REPEAT_S = 5.0  # a repeated warning (no majority, etcd down) is logged at most this often
MOVE_WAIT_S = 8.0  # move_range answers by then (an rm gives meta ops 10 s); the move goes on
LEASE_REVOKE_TIMEOUT_S = 1.0
KEEPALIVE_RETRY_S = 0.05  # after a renewal every endpoint refused
# Nodes heartbeat every 100 ms (rangekv.node.server.HEARTBEAT_MS): a leader is lost after six
# missed beats. Failover (kill -9 of a leader to the next acknowledged write) then takes about
# this timeout, less the time since its last beat, plus a few tens of ms for the campaign: a
# median of 0.58 s on a 2-core loopback cluster under load (bench/failover.py). Under the same
# load with CPU hogs added, no leader was ever judged lost without being killed.
HEARTBEAT_TIMEOUT_MS_DEFAULT = 600
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

# Decision kinds of the replacement controller (model.Decision.kind).
DECISION_LEADER_ELECTED = "leader_elected"  # a new epoch and its leader
DECISION_REPLACE_STARTED = "replace_started"
DECISION_REPLACE_SWAPPED = "replace_swapped"
DECISION_JOINT_CLEARED = "joint_cleared"
DECISION_REPLACE_ABANDONED = "replace_abandoned"
DECISION_NO_SPARE = "no_spare"
DECISION_NODE_REMOVED = "node_removed"  # an operator removed a dead or flagged node's record
DECISION_LAG_STUCK = model.LAG_STUCK  # a member or learner whose lag stopped shrinking
DECISION_LAG_RECOVERED = model.LAG_RECOVERED  # ... caught up again, or left its group
DECISIONS_TRIMMED_MAX = 50  # oldest decisions deleted per txn (etcd caps ops per txn)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaConfig:
    id: int
    listen: str
    etcd: tuple[str, ...]
    groups_min: int = 1
    group_size: int = 3
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS_DEFAULT  # live: heartbeated within this
    campaign_timeout_ms: int = 3000  # a chosen leader must report serving its epoch within this
    lease_ttl_s: int = 2  # the active-meta lease
    keepalive_interval_ms: int = 500
    lease_safety_fraction: float = 0.1  # step down this fraction of the TTL before it can end
    standby_poll_ms: int = 1000  # a standby retries at least this often even without a watch
    election_interval_ms: int = 50  # and at the moment a leader's last heartbeat expires
    stall_ms: int = 150  # a controller tick this late means this process was stalled ...
    stall_grace_ms: int = 250  # ... so no leader is judged until heartbeats had this long
    formation_interval_ms: int = 200  # and reconfiguration (replacement) steps
    replace_grace_ms: int = REPLACE_GRACE_MS_DEFAULT
    replace_lag_entries: int = REPLACE_LAG_ENTRIES_DEFAULT
    catch_up_slack_entries: int = CATCH_UP_SLACK_DEFAULT
    learner_timeout_ms: int = LEARNER_TIMEOUT_MS_DEFAULT
    # lag that stops shrinking (controller/lag.py): above this many entries, for this long
    lag_stuck_entries: int = LAG_ENTRIES_MIN
    lag_stuck_after_ms: int = int(STUCK_AFTER_S * 1000)
    node_request_budget_ms: int = 10_000  # add_range / drop_table retries at most this long
    node_request_attempt_ms: int = 2000  # one add_range / drop_table request
    view_catch_up_ms: int = 5000  # a new active waits at most this for its view
    # per etcd endpoint and call: a member cut off by a partition must cost less than the
    # lease (5 s made a meta on the healthy side lose its lease after a partition healed)
    etcd_timeout_ms: int = 2000
    split: SplitConfig = field(default_factory=SplitConfig)  # automatic splits
    split_interval_ms: int = 1000  # how often the controller looks for a range to split
    # rolling metadata backups (rangekv.backup.metabackup); off without a directory
    backup_dir: str | None = None
    backup_min_interval_s: float = 5.0
    backup_interval_s: float = 300.0
    backup_keep: int = 20
    metrics_listen: tuple[str, int] | None = None  # serve Prometheus /metrics here
    log_format: str = "text"  # how the process logs (rangekv.log): text or json
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        assert self.id > 0, self.id
        assert self.etcd, "at least one etcd endpoint"
        assert self.group_size >= 1 and self.groups_min >= 0
        assert self.keepalive_interval_ms < self.lease_ttl_s * 1000 / 2, "renew well within TTL"
        assert 0 <= self.lease_safety_fraction < 0.5
        assert self.replace_grace_ms > 0 and self.replace_lag_entries > 0
        assert self.catch_up_slack_entries >= 0 and self.learner_timeout_ms > 0
        assert self.lag_stuck_entries >= 0 and self.lag_stuck_after_ms > 0


# -- what a node reports, and the pure decisions taken on it ----------------------------------


@dataclass(frozen=True)
class Beat:
    """The latest heartbeat of a node, as received (``at_s`` on this process's clock)."""

    at_s: float
    address: str
    status: NodeStatus


def node_record(
    node_id: int, address: str, known: Node | None, status: NodeStatus,
    group: Group | None = None,
) -> tuple[Node, str]:
    """The record of a node that its heartbeat calls for, and what changed ("" if nothing).

    A new node is registered as a spare; a moved one gets its new address. A node that reports a
    broken log is ``flagged`` with its reason, so that ``GET /v1/cluster`` and ``rangekv
    cluster`` show it; it keeps its group (it is still a member, whose vote the group lacks, and
    ``plan_replacement`` replaces it), and ``choose_leader`` and ``plan_group`` pass it over.
    When it reports a sound log again (its data was repaired) it is a ``member``, ``joining``
    (a learner of ``group``) or ``spare`` again. A node flagged for any other reason (it was
    replaced, or failed as a learner: ``Node.sticky_flag``) stays flagged whatever it reports.
    """
    changes: list[str] = []
    if known is None:
        node = Node(node_id, address, model.NODE_SPARE, None)
        changes.append(f"node {node_id} at {address} is new: registering it as a spare")
    else:
        node = known
        if known.address != address:
            node = replace(node, address=address)
            changes.append(f"node {node_id} moved from {known.address} to {address}")
    if node.sticky_flag:
        pass
    elif status.broken:
        reason = status.broken_reason or "it reports a broken log"
        if node.state != model.NODE_FLAGGED or node.reason != reason:
            node = replace(node, state=model.NODE_FLAGGED, reason=reason,
                           flag=model.FLAG_BROKEN_LOG)
            changes.append(f"node {node_id} reports a broken log, flagged: {reason}")
    elif node.state == model.NODE_FLAGGED:
        if node.group is None:
            state = model.NODE_SPARE
        elif group is not None and node_id in group.learners:
            state = model.NODE_JOINING
        else:
            state = model.NODE_MEMBER
        node = replace(node, state=state, reason="", flag="")
        changes.append(f"node {node_id} reports a sound log again: {state} again")
    return node, "; ".join(changes)


def is_live(beat: Beat | None, now_s: float, heartbeat_timeout_s: float) -> bool:
    return beat is not None and now_s - beat.at_s <= heartbeat_timeout_s


def plan_node_removal(
    view: ClusterView, node_id: int, beat: Beat | None, now_s: float, *,
    heartbeat_timeout_s: float,
) -> tuple[Node, bool]:
    """Whether node ``node_id``'s record may be removed (``rangekv nodes remove``): the record
    and whether the node is live, or the refusal raised.

    * ``NodeNotFound``: no record.
    * ``NodeInUse`` with ``group``: the node takes part in a group (a member, a learner, a voter
      of ``joint``, or its record names a group). Its vote or its
      catch-up is part of a quorum or of a reconfiguration; the controller replaces a dead
      member from the pool (``plan_replacement``), and its record can go after that.
    * ``NodeInUse`` with ``live``: it heartbeats and is not flagged. A live node registers again
      at its next heartbeat, so removing a healthy one would only hide it for 100 ms.

    A live flagged node may be removed: that is how an operator returns an inspected node to
    the pool (it registers again as a spare, or is flagged again if its log is still broken).
    A dead one, or a forged record that no process stands behind, is simply gone; should it
    heartbeat again one day, it registers as a new node does.
    """
    node = view.nodes.get(node_id)
    if node is None:
        raise errors.NodeNotFound(f"there is no node {node_id} (nodes: "
                                  f"{sorted(view.nodes)})", node=node_id)
    for gid in sorted(view.groups):
        g = view.groups[gid]
        role = ("a member" if node_id in g.members else "a learner" if node_id in g.learners
                else "a voter of its old configuration (joint)" if node_id in g.joint
                else None)
        if role is not None:
            raise errors.NodeInUse(
                f"node {node_id} is {role} of group {gid}: its record stays while it takes "
                "part in the group (a dead member is replaced from the spare pool after the "
                "grace; remove it once it is flagged as replaced)", node=node_id, group=gid)
    if node.group is not None:
        raise errors.NodeInUse(f"node {node_id}'s record names group {node.group} "
                               f"({node.state}): it is joining or leaving it; try again once "
                               "the reconfiguration is over", node=node_id, group=node.group)
    live = is_live(beat, now_s, heartbeat_timeout_s)
    if live and node.state != model.NODE_FLAGGED:
        assert beat is not None
        raise errors.NodeInUse(
            f"node {node_id} at {node.address} is live (it heartbeat "
            f"{(now_s - beat.at_s) * 1000:.0f} ms ago) and not flagged: stop it first (a live "
            "node registers again at its next heartbeat)", node=node_id, live=True)
    return node, live


@dataclass(frozen=True)
class LeaderChoice:
    """``action``: "keep" (nothing to do), "wait" (too early to judge), "stuck" (a new leader
    is needed but cannot be chosen), "elect" (record ``leader`` for ``epoch``)."""

    action: str
    reason: str
    leader: int | None = None
    epoch: int = 0


def choose_leader(
    group: Group,
    beats: dict[int, Beat],
    now_s: float,
    *,
    heartbeat_timeout_s: float,
    campaign_timeout_s: float,
    judge_from_s: float,
    campaign_since_s: float,
) -> LeaderChoice:
    """Decide whether ``group`` needs a new leader and whom (docs/architecture.md, "Choosing a
    leader").

    ``judge_from_s``: when this meta became active; nobody is judged before one heartbeat
    timeout has passed since. ``campaign_since_s``: since when the recorded leader has had to
    take up ``group.epoch``. A new leader is needed when there is none, when it is not live,
    when it reports a broken log, or when it has not reported serving the epoch within
    ``campaign_timeout_s``. The choice is the live member with the highest (last_epoch,
    last_index), lowest id on ties, skipping broken logs and (if anyone else is eligible) the
    leader that failed; the new epoch is above the recorded one and every epoch a live member
    reports having promised.
    """
    members = group.members
    assert members, group
    hb_ms = round(heartbeat_timeout_s * 1000)
    if now_s < judge_from_s + heartbeat_timeout_s:
        return LeaderChoice("wait", f"active for under one heartbeat timeout ({hb_ms} ms)")
    live = [m for m in members if is_live(beats.get(m), now_s, heartbeat_timeout_s)]
    majority = len(members) // 2 + 1
    leader, epoch = group.leader, group.epoch
    failed: int | None = None
    if leader is None:
        why = f"group {group.id} has no leader"
    elif leader not in live:
        beat = beats.get(leader)
        ago = (
            "no heartbeat heard"
            if beat is None
            else f"last heartbeat {round((now_s - beat.at_s) * 1000)} ms ago"
        )
        why = f"leader {leader} of epoch {epoch} is not live ({ago}; timeout {hb_ms} ms)"
    else:
        st = beats[leader].status
        if st.broken:
            why = f"leader {leader} of epoch {epoch} reports a broken log"
            failed = leader
        elif st.role == ROLE_LEADER and st.leader_epoch == epoch:
            return LeaderChoice("keep", f"leader {leader} serves epoch {epoch}")
        else:
            waited_s = now_s - campaign_since_s
            if waited_s < campaign_timeout_s:
                return LeaderChoice(
                    "keep",
                    f"leader {leader} is taking up epoch {epoch} "
                    f"({round(waited_s * 1000)} of {round(campaign_timeout_s * 1000)} ms)",
                )
            why = (
                f"leader {leader} has not taken up epoch {epoch} within "
                f"{round(campaign_timeout_s * 1000)} ms (it reports role {st.role}, "
                f"leader_epoch {st.leader_epoch})"
            )
            failed = leader
    if len(live) < majority:
        return LeaderChoice(
            "stuck",
            f"{why}; only {len(live)} of {len(members)} members are live "
            f"({live}), a majority is {majority}: the group stays unavailable",
        )
    if group.joint:
        # The campaign must also win a majority of the previous members (joint).
        voters = [m for m in group.joint if is_live(beats.get(m), now_s, heartbeat_timeout_s)
                  and not beats[m].status.broken]
        if len(voters) < len(group.joint) // 2 + 1:
            return LeaderChoice(
                "stuck",
                f"{why}; the reconfiguration of epoch {epoch} is unfinished and only "
                f"{voters} of the previous members {list(group.joint)} are live with a sound "
                f"log: a campaign needs a majority of them too, the group stays unavailable",
            )
    candidates = [m for m in live if not beats[m].status.broken]
    if failed is not None and any(m != failed for m in candidates):
        candidates = [m for m in candidates if m != failed]
    if not candidates:
        return LeaderChoice("stuck", f"{why}; no live member has a sound log")

    def progress(m: int) -> tuple[int, int, int]:
        st = beats[m].status
        return (st.last_epoch, st.last_index, -m)

    best = max(candidates, key=progress)
    promised = max(
        (beats[m].status.epoch for m in live if beats[m].status.group == group.id), default=0
    )
    new_epoch = max(epoch, promised) + 1
    assert new_epoch > epoch
    st = beats[best].status
    return LeaderChoice(
        "elect",
        f"{why}; chose {best} (last entry {st.last_epoch}/{st.last_index}) as the most "
        f"caught-up of live members {candidates}",
        best,
        new_epoch,
    )


def plan_group(
    view: ClusterView,
    beats: dict[int, Beat],
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


def live_spares(
    view: ClusterView, beats: dict[int, Beat], now_s: float, heartbeat_timeout_s: float
) -> list[int]:
    """The nodes that may join a group, lowest id first: recorded as ``spare``, in no group
    (not even as a learner or a voter of ``joint``), live, and reporting a sound log."""
    return sorted(
        n.id
        for n in view.nodes.values()
        if n.state == model.NODE_SPARE
        and n.group is None
        and not any(g.involves(n.id) for g in view.groups.values())
        and is_live(beats.get(n.id), now_s, heartbeat_timeout_s)
        and not beats[n.id].status.broken
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
    beats: dict[int, Beat],
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


def _serving_leader(group: Group, beats: dict[int, Beat], now_s: float,
                    heartbeat_timeout_s: float) -> Beat | None:
    """The recorded leader's heartbeat if it is live, sound and serves the group's epoch."""
    if group.leader is None:
        return None
    beat = beats.get(group.leader)
    if beat is None or not is_live(beat, now_s, heartbeat_timeout_s) or beat.status.broken:
        return None
    st = beat.status
    return beat if st.role == ROLE_LEADER and st.leader_epoch == group.epoch else None


def _started_reason(view: ClusterView, group_id: int, old: int) -> str:
    """Why the replacement of ``old`` in the group was started (its decision), if recorded."""
    for d in reversed(view.decisions):
        if d.group == group_id and d.kind == DECISION_REPLACE_STARTED and d.details.get(
                "old") == old:
            return str(d.details.get("why") or d.reason)
    return "replacement started by an earlier meta"


def plan_replacement(
    group: Group,
    view: ClusterView,
    beats: dict[int, Beat],
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
    lead = _serving_leader(group, beats, now_s, hb_s)

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
        yc = ybeat.status.commit_index if ybeat is not None and down is None else 0
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
        why_x = _started_reason(view, gid, x)
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


# -- the service -------------------------------------------------------------------------------


@dataclass
class _Term:
    """One period of being active, from winning the election key to losing its lease."""

    lease_id: int
    fence: int  # create revision of the active key
    since_s: float  # when this meta started acting
    deadline_s: float  # acting past this could overlap a successor; renewals push it out


class _Backoff:
    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._next_s = first_s

    def next(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next_s = self.first_s


async def _wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; False on timeout.

    (``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter can swallow a
    cancellation that arrives just as the awaited thing completes, and a loop around it then
    never stops.)
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False


class MetaService:
    """One meta process (active or standby). ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        config: MetaConfig,
        etcd: EtcdClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.log = logging.getLogger(f"rangekv.meta.{config.id}")
        self._owns_etcd = etcd is None
        self.etcd = etcd or EtcdClient(list(config.etcd), timeout_s=config.etcd_timeout_ms / 1000)
        self.store = MetaStore(self.etcd)
        self._clock = clock
        self._wall_ns = wall_ns
        self.address = config.listen
        self.view = ClusterView()
        self._revs: dict[bytes, int] = {}  # key -> mod_revision, for CAS on what the view shows
        self._view_loaded = False
        self._view_changed = asyncio.Event()
        self._beats: dict[int, Beat] = {}
        # node id -> the connection its heartbeats come on (see _bind_heartbeat)
        self._heartbeat_conns: dict[int, wire.ServerConnection] = {}
        self.guard = wire.ServerGuard(f"meta {config.id}")
        self._term: _Term | None = None
        self._active_hint: str | None = None
        self._epoch_seen: dict[int, tuple[int, float]] = {}  # group -> (epoch, first seen at)
        self._judge_after_s = 0.0  # no leader is judged lost before this (after a stall)
        self._lag_since: dict[int, dict[int, float]] = {}  # group -> member -> lagging since
        # lag that stops shrinking (controller/lag.py)
        self.lag_watch = LagWatch(config.lag_stuck_entries, config.lag_stuck_after_ms / 1000)
        # group -> (learner, since, the serving leader's commit index then: its target)
        self._learner_seen: dict[int, tuple[int, float, int]] = {}
        self._no_spare: dict[int, int] = {}  # group -> member: a "no spare" episode was told
        self._registering: set[int] = set()
        self._range_reports: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self._last_split_s: dict[int, float] = {}  # table id -> when this meta last split it
        self._split_task: asyncio.Task[None] | None = None
        self._backup_answered: Any = None  # the backup pause token answered
        self._meta_backups: Any = None  # rolling metadata backups (--backup-dir)
        self._next_split_check_s = 0.0
        self._groups_wanted = 0  # groups to form beyond groups_min (for splits), at least
        self._name_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._conns: dict[str, wire.Connection] = {}
        self._said: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._election_task: asyncio.Task[None] | None = None
        self._view_task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._kick_reason = ""
        self._held_lease: int | None = None  # the lease of the active key while we hold it
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self.exit_code = 0
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "heartbeat": self._op_heartbeat,
            "create_table": self._op_create_table,
            "drop_table": self._op_drop_table,
            "split_range": self._op_split_range,
            "move_range": self._op_move_range,
            "remove_node": self._op_remove_node,
        }
        self.metrics = MetaMetrics(self)
        self._metrics_server: MetricsServer | None = None
        self.mover = RangeMover(
            self.store, self._tell_leader, self._record_decision,
            lambda revision: self._catch_up(revision, self.config.view_catch_up_ms / 1000),
            self.log, self._clock, self._table_name)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_host_port(self.config.listen)
        self._server = await asyncio.start_server(self._accept, host, port)
        bound_port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{bound_port}"
        self.log.info(
            "meta %d listening on %s; etcd %s; want %d group(s) of %d",
            self.config.id,
            self.address,
            ",".join(self.config.etcd),
            self.config.groups_min,
            self.config.group_size,
        )
        if self.config.metrics_listen is not None:
            self._metrics_server = MetricsServer(self.metrics.registry)
            await self._metrics_server.start(*self.config.metrics_listen)
            self.log.info("meta %d serves /metrics on %s:%d", self.config.id,
                          *self.config.metrics_listen)
        self._view_task = self._spawn(self._view_loop(), "view")
        self._election_task = self._spawn(self._election_loop(), "election")
        if self.config.backup_dir:
            from pathlib import Path

            from rangekv.backup.metabackup import MetaBackups

            self._meta_backups = MetaBackups(
                self.etcd, Path(self.config.backup_dir), active=lambda: self.is_active,
                min_interval_s=self.config.backup_min_interval_s,
                interval_s=self.config.backup_interval_s, keep=self.config.backup_keep)
            self._spawn(self._meta_backups.run(), "metadata-backups")

    def request_stop(self, why: str = "requested") -> None:
        if not self._stop_requested.is_set():
            self.log.info("stopping: %s", why)
        self._stop_requested.set()

    async def run(self) -> int:
        """Serve until ``request_stop`` (or a fatal error), then stop; the exit code."""
        await self._stop_requested.wait()
        await self.stop()
        return self.exit_code

    async def stop(self, revoke: bool = True) -> None:
        """Stop serving. ``revoke=False`` leaves the lease to expire (a simulated crash)."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._stop_requested.set()
        self._term = None  # stop acting at once
        await self.mover.cancel_all()
        for task in (self._election_task, self._view_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._election_task, self._view_task) if t), return_exceptions=True
        )
        lease_id, self._held_lease = self._held_lease, None
        if lease_id is not None and revoke:
            await self._revoke_quietly(lease_id)
            self.log.info("gave up the active role (lease %x revoked)", lease_id)
        if self._server is not None:
            self._server.close()
        for task in list(self._conn_tasks):
            task.cancel()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._metrics_server is not None:
            await self._metrics_server.close()
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
        if self._owns_etcd:
            await self.etcd.close()
        self.log.info("meta %d stopped", self.config.id)
        self._stopped.set()

    @property
    def is_active(self) -> bool:
        return self._active_term() is not None

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"meta{self.config.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.critical(
                "task %s failed; the process must stop", task.get_name(), exc_info=exc
            )
            self._fatal(f"task {task.get_name()} failed: {exc!r}")

    def _fatal(self, why: str) -> None:
        """A bug: stop acting at once and shut the process down (exit code 70)."""
        self._term = None
        self.exit_code = 70  # EX_SOFTWARE
        self.request_stop(why)
        if not self._stopping:
            self._spawn(self.stop(), "fatal-stop")

    def _say(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log a condition that may repeat every tick at most once per ``LOG_REPEAT_S``."""
        now = self._clock()
        last = self._said.get(key)
        if last is None or now - last >= LOG_REPEAT_S:
            self._said[key] = now
            self.log.log(level, msg, *args)

    def _clear(self, key: str) -> None:
        self._said.pop(key, None)

    # -- the view -------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._view_changed.set()
        if self._meta_backups is not None:
            self._meta_backups.changed()
        self._view_changed = asyncio.Event()

    async def _view_loop(self) -> None:
        backoff = _Backoff(0.05, 2.0)
        while not self._stopping:
            try:
                view, revs = await self.store.load()
            except errors.RangeKVError as exc:
                self._say(
                    "view-load",
                    logging.WARNING,
                    "cannot read metadata from etcd, retrying: %s",
                    exc.message,
                )
                await asyncio.sleep(backoff.next())
                continue
            self._clear("view-load")
            assert view.revision >= self.view.revision or not self._view_loaded, (
                "etcd revisions went backwards",
                view.revision,
                self.view.revision,
            )
            self.view, self._revs, self._view_loaded = view, revs, True
            self._notify()
            self.log.info(
                "metadata loaded at revision %d: %d tables, %d groups, %d nodes",
                view.revision,
                len(view.tables),
                len(view.groups),
                len(view.nodes),
            )
            # The watch runs as its own task so that _kick_view can restart it (a stream that
            # hangs without breaking would otherwise freeze the view for good).
            watcher = asyncio.ensure_future(self._follow(view, revs, backoff))
            self._watcher = watcher
            try:
                await asyncio.wait({watcher})
            finally:
                self._watcher = None
                if not watcher.done():
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
            if watcher.cancelled():
                self.log.warning("metadata watch restarted: %s", self._kick_reason)
            else:
                failure = watcher.exception()
                if isinstance(failure, WatchLost):
                    self.log.warning("metadata watch lost, reloading: %s", failure.message)
                elif isinstance(failure, errors.RangeKVError):
                    self._say(
                        "view-watch",
                        logging.WARNING,
                        "cannot watch metadata in etcd, retrying: %s",
                        failure.message,
                    )
                elif failure is not None:
                    raise failure
            await asyncio.sleep(backoff.next())

    async def _follow(self, view: ClusterView, revs: dict[bytes, int], backoff: _Backoff) -> None:
        """Apply watch events to ``view`` until the watch fails (it always ends by raising)."""
        watch = self.etcd.watch_prefix(model.PREFIX, view.revision + 1)
        async with contextlib.aclosing(watch) as batches:
            async for batch in batches:
                for event in batch:
                    rev = event.kv.mod_revision
                    assert rev > view.revision, ("watch events out of order", rev, view.revision)
                    if event.type == "put":
                        view.apply(event.kv.key, event.kv.value)
                        revs[event.kv.key] = rev
                    else:
                        view.apply(event.kv.key, None)
                        revs.pop(event.kv.key, None)
                view.revision = max(view.revision, batch[-1].kv.mod_revision)
                self._notify()
                self._clear("view-watch")
                backoff.reset()
        raise WatchLost("the watch ended")

    def _kick_view(self, why: str) -> None:
        """Restart the metadata watch from a fresh read (it is stuck or behind)."""
        if self._watcher is not None and not self._watcher.done():
            self._kick_reason = why
            self._watcher.cancel()

    async def _catch_up(self, revision: int, timeout_s: float) -> bool:
        """Wait for the view to reach ``revision``; restart the watch if it does not in time."""
        if await self._wait_view(revision, timeout_s):
            return True
        self._kick_view(f"the view stayed below revision {revision} for {timeout_s:g} s")
        return False

    async def _wait_view(self, revision: int, timeout_s: float) -> bool:
        """Wait until the view reflects ``revision``; False on timeout."""
        deadline = self._clock() + timeout_s
        while not self._view_loaded or self.view.revision < revision:
            changed = self._view_changed
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            if not await _wait_event(changed, remaining):
                return False
        return True

    # -- active / standby -----------------------------------------------------------------------

    def _active_term(self) -> _Term | None:
        term = self._term
        if term is None or self._clock() >= term.deadline_s:
            return None
        return term

    def _require_active(self) -> _Term:
        term = self._active_term()
        if term is None:
            hint = self.view.active_meta.get("address") if self.view.active_meta else None
            if hint is None or hint == self.address:
                hint = self._active_hint if self._active_hint != self.address else None
            raise errors.NotActive(f"meta {self.config.id} is a standby", active_hint=hint)
        return term

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            async with asyncio.timeout(LEASE_REVOKE_TIMEOUT_S):
                await self.etcd.lease_revoke(lease_id)
        except (errors.RangeKVError, TimeoutError) as exc:
            self.log.info("could not revoke lease %x (it will expire): %s", lease_id, exc)

    async def _election_loop(self) -> None:
        cfg = self.config
        backoff = _Backoff(0.1, 2.0)
        while not self._stopping:
            sent_s = self._clock()
            try:
                lease_id = await self.etcd.lease_grant(cfg.lease_ttl_s)
            except errors.RangeKVError as exc:
                self._say(
                    "election",
                    logging.WARNING,
                    "cannot campaign for the active role, etcd: %s",
                    exc.message,
                )
                await asyncio.sleep(backoff.next())
                continue
            try:
                won, revision, holder = await self.store.try_become_active(
                    cfg.id, self.address, lease_id
                )
            except errors.RangeKVError as exc:
                await self._revoke_quietly(lease_id)
                self._say(
                    "election",
                    logging.WARNING,
                    "cannot campaign for the active role, etcd: %s",
                    exc.message,
                )
                await asyncio.sleep(backoff.next())
                continue
            self._clear("election")
            if not won:
                await self._revoke_quietly(lease_id)
                hint = holder.get("address") if holder else None
                if hint != self._active_hint:
                    self.log.info(
                        "standing by: meta %s at %s is active",
                        holder.get("id") if holder else "?",
                        hint,
                    )
                self._active_hint = hint
                await self._wait_for_vacancy(cfg.standby_poll_ms / 1000)
                continue
            backoff.reset()
            self._held_lease = lease_id
            ttl_s = cfg.lease_ttl_s * (1 - cfg.lease_safety_fraction)
            term = _Term(lease_id, revision, since_s=sent_s, deadline_s=sent_s + ttl_s)
            reason = await self._serve_term(term)
            self.log.warning("stepped down from the active role: %s", reason)
            self._held_lease = None
            await self._revoke_quietly(lease_id)
            await asyncio.sleep(backoff.next())

    async def _wait_for_vacancy(self, timeout_s: float) -> None:
        """Return when the view shows no active meta, or after ``timeout_s``."""
        deadline = self._clock() + timeout_s
        await asyncio.sleep(0.02)  # never spin, even when the view lags the txn that lost
        while not self._view_loaded or self.view.active_meta is not None:
            changed = self._view_changed
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            if not await _wait_event(changed, remaining):
                return

    async def _serve_term(self, term: _Term) -> str:
        """Act as the active meta for ``term``; returns why the term ended."""
        cfg = self.config
        keepalive = self._spawn(self._keepalive(term), "keepalive")
        control: asyncio.Task[Any] | None = None
        try:
            caught_up = await self._catch_up(term.fence, cfg.view_catch_up_ms / 1000)
            if keepalive.done():
                return str(keepalive.result())
            if not caught_up:
                return (
                    f"the metadata view did not reach revision {term.fence} within "
                    f"{cfg.view_catch_up_ms} ms"
                )
            self.store.fence_revision = term.fence
            term.since_s = self._clock()
            self._term = term
            self._active_hint = self.address
            self.log.info(
                "active (lease %x, fence revision %d): serving; judging leaders after %d ms of "
                "heartbeats",
                term.lease_id,
                term.fence,
                cfg.heartbeat_timeout_ms,
            )
            control = self._spawn(self._control_loop(term), "control")
            await asyncio.wait({keepalive, control}, return_when=asyncio.FIRST_COMPLETED)
            ended = keepalive if keepalive.done() else control
            if ended.exception() is not None:  # already logged and made fatal by _task_done
                return f"{ended.get_name()} failed"
            return str(ended.result())
        finally:
            if self._term is term:
                self._term = None
            for task in (keepalive, control):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (keepalive, control) if t), return_exceptions=True)

    async def _keepalive(self, term: _Term) -> str:
        """Renew the lease until it is lost; returns why it was lost."""
        cfg = self.config
        interval_s = cfg.keepalive_interval_ms / 1000
        failed = False
        while not self._stopping:
            if not failed:  # after a failed attempt, try again at once (the next endpoint)
                await asyncio.sleep(max(0.0, min(interval_s, term.deadline_s - self._clock())))
            failed = True
            sent_s = self._clock()
            if sent_s >= term.deadline_s:
                return "the lease may have expired: no renewal succeeded in time"
            try:
                # one attempt gets one interval: an endpoint that a partition cut off (its TCP
                # connection silently dead) must not take the whole lease with it; the etcd
                # client tries another endpoint first next time
                async with asyncio.timeout(min(interval_s, term.deadline_s - sent_s)):
                    ttl_s = await self.etcd.lease_keepalive(term.lease_id)
            except LeaseExpired:
                return f"lease {term.lease_id:x} expired in etcd"
            except TimeoutError:
                continue  # the loop head decides whether the deadline has passed
            except errors.RangeKVError as exc:
                self._say(
                    "keepalive",
                    logging.WARNING,
                    "lease renewal failed (%d ms left): %s",
                    round((term.deadline_s - self._clock()) * 1000),
                    exc.message,
                )
                # every endpoint refused at once: a short pause, not a busy loop
                await asyncio.sleep(min(KEEPALIVE_RETRY_S, max(0.0, term.deadline_s -
                                                              self._clock())))
                continue
            failed = False
            self._clear("keepalive")
            new_deadline = sent_s + ttl_s * (1 - cfg.lease_safety_fraction)
            term.deadline_s = max(term.deadline_s, new_deadline)
        return "the process is stopping"

    # -- the controller -------------------------------------------------------------------------

    async def _control_loop(self, term: _Term) -> str:
        """Run the controller while ``term`` lasts; returns why it stopped.

        It ticks every ``election_interval_ms`` and also just after the last heartbeat of a
        group's leader would expire, so a lost leader is judged lost one heartbeat timeout after
        its last heartbeat, not up to a tick later. A tick that comes ``stall_ms`` late means
        this process did not run for a while (CPU starvation, a pause): heartbeats that arrived
        meanwhile may still be unread, so no leader is judged for ``stall_grace_ms``.
        """
        cfg = self.config
        next_formation_s = 0.0
        planned_s = self._clock()
        while not self._stopping:
            late_s = self._clock() - planned_s
            if late_s > cfg.stall_ms / 1000:
                self._judge_after_s = self._clock() + cfg.stall_grace_ms / 1000
                self._say(
                    "stall",
                    logging.WARNING,
                    "the controller ran %d ms late (this process was stalled): no leader is "
                    "judged lost for the next %d ms",
                    round(late_s * 1000),
                    cfg.stall_grace_ms,
                )
            if self._active_term() is not term:
                return "the lease may have expired"
            if self._revs.get(model.META_ACTIVE) != term.fence:
                return "the active-meta key in etcd is no longer ours"
            try:
                await self._elect_leaders(term)
                self._resume_moves()
                await self._answer_backup()
                if self._clock() >= self._next_split_check_s:
                    self._next_split_check_s = self._clock() + cfg.split_interval_ms / 1000
                    await self._auto_split()
                if self._clock() >= next_formation_s:
                    next_formation_s = self._clock() + cfg.formation_interval_ms / 1000
                    await self._form_group(term)
                    await self._reconfigure(term)
                    await self._watch_lag(term)
                self._clear("control")
            except errors.NotActive as exc:
                self._term = None
                return f"a fenced write was refused: {exc.message}"
            except errors.RangeKVError as exc:
                self._say(
                    "control",
                    logging.WARNING,
                    "controller step failed, retrying: %s: %s",
                    exc.code,
                    exc.message,
                )
            delay_s = self._next_tick_s()
            planned_s = self._clock() + delay_s
            await asyncio.sleep(delay_s)
        return "the process is stopping"

    def _next_tick_s(self) -> float:
        """Seconds to the next controller tick: the interval, or sooner if a group leader's
        last heartbeat expires before that (just after, so that it counts as expired)."""
        cfg = self.config
        now_s = self._clock()
        wake_s = now_s + cfg.election_interval_ms / 1000
        timeout_s = cfg.heartbeat_timeout_ms / 1000
        for group in self.view.groups.values():
            beat = self._beats.get(group.leader) if group.leader is not None else None
            if beat is not None:
                expiry_s = beat.at_s + timeout_s + 0.001
                if now_s < expiry_s < wake_s:
                    wake_s = expiry_s
        return max(0.0, wake_s - now_s)

    async def _elect_leaders(self, term: _Term) -> None:
        cfg = self.config
        for gid in sorted(self.view.groups):
            group = self.view.groups.get(gid)
            if group is None or self._active_term() is not term:
                continue
            now_s = self._clock()
            seen = self._epoch_seen.get(gid)
            if seen is None or seen[0] != group.epoch:
                assert seen is None or group.epoch > seen[0], ("epoch went back", gid, seen, group)
                seen = self._epoch_seen[gid] = (group.epoch, now_s)
            heartbeat_timeout_s = cfg.heartbeat_timeout_ms / 1000
            choice = choose_leader(
                group,
                self._beats,
                now_s,
                heartbeat_timeout_s=heartbeat_timeout_s,
                campaign_timeout_s=cfg.campaign_timeout_ms / 1000,
                judge_from_s=max(term.since_s, self._judge_after_s - heartbeat_timeout_s),
                campaign_since_s=max(seen[1], term.since_s),
            )
            key = f"group-{gid}"
            if choice.action in ("keep", "wait"):
                self._clear(key)
                continue
            if choice.action == "stuck":
                self._say(key, logging.WARNING, "group %d: no election: %s", gid, choice.reason)
                continue
            assert choice.action == "elect" and choice.leader is not None
            assert choice.epoch > group.epoch
            mod_revision = self._revs.get(model.group_key(gid))
            assert mod_revision, ("a group in the view has no revision", gid)
            written = await self.store.set_group_leader(
                group, mod_revision, choice.epoch, choice.leader
            )
            if written is None:
                self.log.info("group %d changed while choosing its leader; deciding again", gid)
                continue
            self._clear(key)
            self.metrics.elections += 1
            self._epoch_seen[gid] = (choice.epoch, self._clock())
            self.log.warning(
                "group %d: epoch %d -> %d, leader %s -> %d: %s",
                gid,
                group.epoch,
                choice.epoch,
                group.leader,
                choice.leader,
                choice.reason,
            )
            await self._catch_up(written, cfg.view_catch_up_ms / 1000)
            # Kept with the other decisions (after the catch-up: the new leader is told first),
            # so that the dashboard and `rangekv status` show every failover and its reason.
            await self._record_decision(
                DECISION_LEADER_ELECTED, choice.reason, group=gid, epoch=choice.epoch,
                leader=choice.leader, previous=group.leader)

    # -- backups (rangekv.backup) -------------------------------------------------------------

    def _refuse_while_paused(self, what: str) -> None:
        """While a backup runs, no table is created or dropped and no range split, merged or
        moved: its group checkpoints and its metadata must describe the same range map."""
        if self.view.backup_pause is not None:
            raise errors.Unavailable(f"a backup is running: cannot {what} until it ends; retry "
                                     "in a moment")

    def _range_change_in_flight(self) -> str | None:
        """What still changes the range map (None: nothing), as seen by this meta."""
        if self._name_locks:
            return f"table operations on {sorted(self._name_locks)}"
        if self._split_task is not None and not self._split_task.done():
            return "an automatic split or merge"
        if self.mover.tasks:
            return f"{len(self.mover.tasks)} range move(s)"
        for ranges in self.view.ranges.values():
            for rng in ranges:
                if rng.state == model.RANGE_MOVING or rng.source is not None:
                    return f"the move of a range of table {self._table_name(rng.table_id)}"
        return None

    async def _answer_backup(self) -> None:
        """A backup asked for a pause (``/rangekv/backup/pause``): once no range change is in
        flight, say so under the backup's lease (``/rangekv/backup/paused``). New ones are
        refused from the moment the view shows the pause (``_refuse_while_paused``,
        ``_auto_split``), so none starts after the answer; moves found unfinished go on
        meanwhile, and the answer waits for them."""
        pause = self.view.backup_pause
        if pause is None:
            self._backup_answered = None
            return
        token, lease = pause.get("token"), pause.get("lease")
        if token == self._backup_answered or not isinstance(lease, int):
            return
        busy = self._range_change_in_flight()
        if busy is not None:
            self._say("backup-pause", logging.INFO, "backup %s waits for %s", token, busy)
            return
        try:
            await self.etcd.put(model.BACKUP_PAUSED, model.dumps({"token": token}), lease=lease)
        except errors.RangeKVError as exc:
            self._say("backup-pause", logging.WARNING, "cannot answer backup %s (its lease may "
                      "have expired): %s", token, exc.message)
            return
        self._backup_answered = token
        self.log.info("backup %s: range changes paused (none in flight)", token)

    def _table_name(self, table_id: int) -> str:
        return next((t.name for t in self.view.tables.values() if t.id == table_id),
                    str(table_id))

    def _resume_moves(self) -> None:
        """Finish every move etcd shows unfinished (after a failover, or a failed step)."""
        for ranges in self.view.ranges.values():
            for rng in ranges:
                if rng.state == model.RANGE_MOVING or rng.source is not None:
                    self.mover.ensure(rng, "resumed")

    async def _auto_split(self) -> None:
        """Split (and move) a range that is too big or too busy (controller/split.py)."""
        if self.view.backup_pause is not None:
            return  # a backup is running: the range map holds still (see _answer_backup)
        if self._split_task is not None and not self._split_task.done():
            return
        plan, _ = plan_split(self.view, self._range_reports, self._clock(), self.config.split,
                               self._last_split_s,
                               len(live_spares(self.view, self._beats, self._clock(),
                                               self.config.heartbeat_timeout_ms / 1000)),
                               self.config.group_size)
        if plan is None:
            merge = plan_merge(self.view, self._range_reports, self._clock(),
                               self.config.split, self._last_split_s)
            if merge is not None:
                self._split_task = asyncio.ensure_future(self._merge(merge))
            return
        if plan.form_group:
            wanted = len(self.view.groups) + 1
            if self._groups_wanted < wanted:
                self._groups_wanted = wanted
                await self._record_decision("form_group", plan.reason, table=plan.table,
                                            group=plan.group)
            return
        self._split_task = asyncio.ensure_future(self._split(plan))

    async def _split(self, plan: SplitPlan) -> None:
        self._last_split_s[plan.table_id] = self._clock()
        try:
            reply = await self._tell_leader(plan.group, "split_key", table_id=plan.table_id,
                                            start=plan.start, by=plan.by, fraction=plan.fraction)
            at = reply.get("at")
            if not isinstance(at, bytes) or at <= plan.start:
                await self._record_decision(
                    "split_skipped", f"{plan.reason}; but its data cannot be divided (one key, "
                    "or no key above the start)", table=plan.table, group=plan.group)
                return
            await self._record_decision("split", f"{plan.reason}; split at {key_text(at)}",
                                        table=plan.table, group=plan.group, at=at.hex(),
                                        target=plan.target)
            await self._op_split_range({"name": plan.table, "at": at, "to": plan.target,
                                        "why": plan.reason})
        except errors.RangeKVError as exc:
            self._say("split", logging.WARNING, "automatic split of table %s failed, to be "
                      "retried: %s: %s", plan.table, exc.code, exc.message)

    async def _merge(self, plan: MergePlan) -> None:
        """Merge two neighbouring ranges of one group: the group first (so that a request
        routed by either range, or by both, is served), then etcd."""
        try:
            ranges = await self.store.table_ranges_revs(plan.table_id)
            pair = [(r, rev) for r, rev in ranges if r.end == plan.at or r.start == plan.at]
            if len(pair) != 2 or any(r.group != plan.group or r.state != model.RANGE_ACTIVE
                                     or r.source is not None for r, _ in pair):
                return  # the ranges changed meanwhile
            (lower, lower_rev), (upper, upper_rev) = pair
            await self._tell_leader(plan.group, "merge_range", table_id=plan.table_id,
                                    at=plan.at)
            revision = await self.store.merge_ranges(lower, lower_rev, upper, upper_rev)
            if revision is None:
                return  # retried at a later tick: the group's merge is idempotent
            self.metrics.merges += 1
            self._range_reports.pop(plan.group, None)  # its figures name the old ranges
            await self._record_decision("merge", plan.reason, table=plan.table,
                                        group=plan.group, revision=revision)
        except errors.RangeKVError as exc:
            self._say("merge", logging.WARNING, "merge of table %s ranges failed, to be "
                      "retried: %s: %s", plan.table, exc.code, exc.message)

    async def _watch_lag(self, term: _Term) -> None:
        """Say (once per episode: a WARNING line and a decision) when a member's or learner's
        lag stops shrinking, and when it recovers (``controller.lag``)."""
        hb_s = self.config.heartbeat_timeout_ms / 1000
        now_s = self._clock()
        self.lag_watch.forget_groups(self.view.groups)
        for gid in sorted(self.view.groups):
            group = self.view.groups[gid]
            if self._active_term() is not term:
                return
            lead = _serving_leader(group, self._beats, now_s, hb_s)
            reports = []
            for role, ids in (("member", group.members), ("learner", group.learners)):
                for n in ids:
                    if n == group.leader:
                        continue
                    beat = self._beats.get(n)
                    reports.append(Report(n, role, beat.status.commit_index if beat else 0,
                                          is_live(beat, now_s, hb_s)))
            events = self.lag_watch.update(
                gid, lead.status.commit_index if lead is not None else None, reports, now_s)
            for event in events:
                await self._say_lag(event)

    async def _say_lag(self, event: LagEvent) -> None:
        kind = DECISION_LAG_STUCK if event.kind == "stuck" else DECISION_LAG_RECOVERED
        last = next((d for d in reversed(self.view.decisions)
                     if d.kind in (DECISION_LAG_STUCK, DECISION_LAG_RECOVERED)
                     and d.details.get("node") == event.node), None)
        if event.kind != "stuck" and (last is None or last.kind != DECISION_LAG_STUCK):
            return  # its stuck episode was never recorded: nothing to take back
        if event.kind == "stuck":
            self.metrics.lag_stuck_episodes += 1
            self.log.warning("%s", event.reason())
            if last is not None and last.kind == DECISION_LAG_STUCK:
                return  # recorded by an earlier active meta in this episode
        else:
            self.log.info("%s", event.reason())
        await self._record_decision(kind, event.reason(), group=event.group, node=event.node,
                                    role=event.role, lag=event.lag)

    async def _record_decision(self, kind: str, reason: str, **details: Any) -> None:
        """A controller decision (a leader elected, a split, move, merge, a group formed) and why:
        logged, and written to the decisions log in etcd (``rangekv status``, /v1/cluster).
        Recording is best effort: the step it explains is already done."""
        self.log.info("decision %s: %s", kind, reason)
        self.metrics.decisions[kind] += 1
        group = details.pop("group", None)
        log_keys = sorted(self.view.decision_log)
        at_ns = max(self._wall_ns(), (log_keys[-1] + 1) if log_keys else 0)
        decision = model.Decision(at_ns, kind, group if isinstance(group, int) else None, reason,
                                  {k: v for k, v in details.items() if v is not None})
        excess = len(log_keys) + 1 - model.DECISIONS_KEPT
        trim = log_keys[:max(0, min(excess, DECISIONS_TRIMMED_MAX))]
        try:
            await self.store.reconfigure(None, [], decision, trim)
        except errors.NotActive:
            raise
        except errors.RangeKVError as exc:
            self.log.warning("decision %s not recorded in etcd: %s: %s", kind, exc.code,
                             exc.message)

    async def _form_group(self, term: _Term) -> None:
        cfg = self.config
        members, reason = plan_group(
            self.view,
            self._beats,
            self._clock(),
            heartbeat_timeout_s=cfg.heartbeat_timeout_ms / 1000,
            groups_min=max(cfg.groups_min, self._groups_wanted),
            group_size=cfg.group_size,
        )
        if members is None:
            if len(self.view.groups) < cfg.groups_min:
                self._say("formation", logging.INFO, "no group formed yet: %s", reason)
            return
        self._clear("formation")
        chosen = []
        for m in members:
            rev = self._revs.get(model.node_key(m))
            assert rev, ("a node in the view has no revision", m)
            chosen.append((self.view.nodes[m], rev))
        created = await self.store.create_group(chosen)
        if created is None:
            self.log.info("spares %s changed while forming a group; deciding again", members)
            return
        group, written = created
        self.metrics.groups_formed += 1
        self.log.info("formed group %d with members %s: %s", group.id, list(group.members), reason)
        await self._catch_up(written, cfg.view_catch_up_ms / 1000)

    async def _reconfigure(self, term: _Term) -> None:
        """Take the next step of follower replacement in each group (``plan_replacement``):
        each step is one fenced CAS transaction with the decision that explains it."""
        cfg = self.config
        hb_s = cfg.heartbeat_timeout_ms / 1000
        policy = ReplacementPolicy(
            heartbeat_timeout_s=hb_s,
            grace_s=cfg.replace_grace_ms / 1000,
            lag_entries=cfg.replace_lag_entries,
            catch_up_slack=cfg.catch_up_slack_entries,
            learner_timeout_s=cfg.learner_timeout_ms / 1000,
        )
        for gid in sorted(self.view.groups):
            group = self.view.groups.get(gid)
            if group is None or self._active_term() is not term:
                continue
            now_s = self._clock()
            judge_from_s = max(term.since_s, self._judge_after_s - hb_s)
            self._lag_since[gid] = lag_since = track_lag(
                group, self._beats, now_s, self._lag_since.get(gid, {}),
                heartbeat_timeout_s=hb_s, lag_entries=cfg.replace_lag_entries)
            seen = (0, now_s, 0)
            if group.learners:
                seen = self._learner_seen.get(gid, seen)
                if seen[0] != group.learners[0] or not seen[2]:
                    # the target is known once a serving leader has reported its commit index
                    lead = _serving_leader(group, self._beats, now_s, hb_s)
                    target = lead.status.commit_index if lead is not None else 0
                    since_s = now_s if seen[0] != group.learners[0] else seen[1]
                    seen = self._learner_seen[gid] = (group.learners[0], since_s, target)
            else:
                self._learner_seen.pop(gid, None)
            plan = plan_replacement(
                group, self.view, self._beats, now_s, policy=policy,
                judge_from_s=judge_from_s, lag_since=lag_since, learner_since_s=seen[1],
                learner_target=seen[2])
            key = f"replace-{gid}"
            if plan.action == "keep":
                self._clear(key)
                self._no_spare.pop(gid, None)
                continue
            if plan.action == "wait":
                self._say(key, logging.INFO, "%s", plan.reason)
                continue
            if plan.action == "no_spare":
                assert plan.old is not None
                if self._no_spare.get(gid) == plan.old:
                    continue
                self._no_spare[gid] = plan.old
                self.log.warning("%s", plan.reason)
                last = next((d for d in reversed(self.view.decisions) if d.group == gid), None)
                if last is not None and last.kind == DECISION_NO_SPARE and last.details.get(
                        "old") == plan.old:
                    continue  # recorded by an earlier active meta in this episode
                await self._decide(gid, None, [], plan, {"old": plan.old, "why": plan.why})
                continue
            self._no_spare.pop(gid, None)
            self._clear(key)
            mod_revision = self._revs.get(model.group_key(gid))
            assert mod_revision, ("a group in the view has no revision", gid)
            assert plan.group is not None
            nodes = [(n, self._revs.get(model.node_key(n.id), 0)) for n in plan.nodes]
            details: dict[str, Any] = {"old": plan.old, "new": plan.new,
                                       "epoch": plan.group.epoch,
                                       "members": list(plan.group.members)}
            if plan.why:
                details["why"] = plan.why
            written = await self._decide(gid, (plan.group, mod_revision), nodes, plan, details)
            if written is None:
                self.log.info("group %d changed while reconfiguring it; deciding again", gid)
                continue
            self.log.warning("%s", plan.reason)
            if plan.action == "swap":
                self._epoch_seen[gid] = (plan.group.epoch, self._clock())
            await self._catch_up(written, cfg.view_catch_up_ms / 1000)

    async def _decide(
        self,
        gid: int,
        group: tuple[Group, int] | None,
        nodes: list[tuple[Node, int]],
        plan: ReplacementPlan,
        details: dict[str, Any],
    ) -> int | None:
        """Write a reconfiguration step (or none) with its decision record, trimming the log of
        decisions to ``model.DECISIONS_KEPT``; the revision, or None on a conflict."""
        log_keys = sorted(self.view.decision_log)
        at_ns = max(self._wall_ns(), (log_keys[-1] + 1) if log_keys else 0)
        decision = model.Decision(at_ns, plan.decision_kind, gid, plan.reason,
                                  {k: v for k, v in details.items() if v is not None})
        excess = len(log_keys) + 1 - model.DECISIONS_KEPT
        trim = log_keys[:max(0, min(excess, DECISIONS_TRIMMED_MAX))]
        written = await self.store.reconfigure(group, nodes, decision, trim)
        if written is not None:
            self.metrics.decisions[plan.decision_kind] += 1
        return written

    # -- the server -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            await wire.serve_connection(reader, writer, self._on_request, self._on_message,
                                        self.guard)
        finally:
            self._conn_tasks.discard(task)

    def _on_message(self, body: dict[str, Any], conn: wire.ServerConnection) -> None:
        self.log.debug("ignoring a one-way message of type %r", str(body.get("t"))[:40])

    async def _on_request(self, body: dict[str, Any],
                          conn: wire.ServerConnection | None = None) -> dict[str, Any]:
        op = body.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        spec = OPS.get(op) if isinstance(op, str) else None
        if handler is None or spec is None:
            raise errors.InvalidArgument(f"unknown meta op {str(op)[:100]!r}", field="op")
        spec.parse(body)  # every field checked before a handler reads it
        try:
            if op == "heartbeat" and conn is not None:
                self._require_active()
                if not wire.address_matches(conn.peer, body["address"]):
                    self.metrics.heartbeats_refused += 1
                    raise errors.InvalidArgument(
                        f"a heartbeat comes from the address it registers ({body['address']}),"
                        f" not from {conn.peer}", field="address")
                self._bind_heartbeat(body["node_id"], conn)
            return await handler(body)
        except errors.RangeKVError:
            raise
        except AssertionError as exc:
            self.log.critical("invariant broken while serving %s", op, exc_info=exc)
            self._fatal(f"invariant broken while serving {op}: {exc!r}")
            raise errors.Internal(f"invariant broken while serving {op}") from None
        except Exception as exc:
            self.log.exception("bug while serving %s", op)
            raise errors.Internal(f"{op} failed: {type(exc).__name__}: {exc}") from None

    # -- heartbeat ------------------------------------------------------------------------------

    def _bind_heartbeat(self, node_id: int, conn: wire.ServerConnection) -> None:
        """A heartbeat speaks only for the node that first heartbeat on its connection, and
        not for a node heartbeating live on another open connection: a forged heartbeat can
        neither flag a healthy member nor move its address (the real node heartbeats every
        100 ms). A node that restarts or reconnects gets its id back once its old connection
        is closed or has been silent for the heartbeat timeout."""
        if conn.identity is not None:
            if conn.identity != node_id:
                self.metrics.heartbeats_refused += 1
                raise errors.InvalidArgument(
                    f"this connection heartbeats for node {conn.identity}, not {node_id}",
                    field="node_id")
            return
        holder = self._heartbeat_conns.get(node_id)
        if holder is not None and holder is not conn and not holder.writer.is_closing():
            beat = self._beats.get(node_id)
            timeout_s = self.config.heartbeat_timeout_ms / 1000
            if beat is not None and self._clock() - beat.at_s < timeout_s:
                self.metrics.heartbeats_refused += 1
                raise errors.InvalidArgument(
                    f"node {node_id} heartbeats on another connection (from {holder.peer}); "
                    "this one cannot speak for it", field="node_id")
        if len(self._heartbeat_conns) >= 2 * self.guard.limits.connections_max:
            self._heartbeat_conns = {n: c for n, c in self._heartbeat_conns.items()
                                     if not c.writer.is_closing()}
        conn.identity = node_id
        self._heartbeat_conns[node_id] = conn

    async def _op_heartbeat(self, req: dict[str, Any]) -> dict[str, Any]:
        self.metrics.heartbeats += 1
        self._require_active()
        node_id = req.get("node_id")
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
            raise errors.InvalidArgument("node_id must be a positive integer", field="node_id")
        address = req.get("address")
        if not isinstance(address, str) or len(address) > ADDRESS_BYTES_MAX:
            raise errors.InvalidArgument("address must be HOST:PORT", field="address")
        try:
            split_host_port(address)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc), field="address") from None
        status = NodeStatus.parse(req.get("status"))
        self._beats[node_id] = Beat(self._clock(), address, status)
        if status.ranges is not None and status.group is not None:
            group = self.view.groups.get(status.group)
            if group is not None and group.leader == node_id and status.role == ROLE_LEADER:
                self._range_reports[status.group] = (self._clock(), list(status.ranges))
        known = self.view.nodes.get(node_id)
        record, why = node_record(node_id, address, known, status, self.view.group_of(node_id))
        if record != known and node_id not in self._registering:
            await self._register(record, why)
        return self._assignment(node_id, status)

    async def _register(self, node: Node, why: str) -> None:
        """Write the record a heartbeat called for (``node_record``), if nothing changed it."""
        self._registering.add(node.id)
        try:
            rev = self._revs.get(model.node_key(node.id), 0)
            written = await self.store.put_node(node, rev)
            if written is None:
                self.log.info(
                    "%s: its record changed meanwhile; retrying on its next heartbeat", why
                )
                return
            level = logging.WARNING if node.state == model.NODE_FLAGGED else logging.INFO
            self.log.log(level, "%s", why)
            await self._wait_view(written, 1.0)
        finally:
            self._registering.discard(node.id)

    def _assignment(self, node_id: int, status: NodeStatus) -> dict[str, Any]:
        """The heartbeat's answer: the group the node takes part in (as a member, a learner or
        a voter of ``joint``), with every address it needs, and whether to campaign."""
        view = self.view
        group = view.group_of(node_id)
        if group is None:
            return {"group": None, "campaign": None}
        campaign = None
        if group.leader == node_id and not (
            status.role == ROLE_LEADER and status.leader_epoch == group.epoch
        ):
            assert group.epoch > 0, group
            campaign = group.epoch

        def refs(ids: tuple[int, ...]) -> list[dict[str, Any]]:
            return [{"id": m, "address": view.nodes[m].address if m in view.nodes else None}
                    for m in ids]

        return {
            "group": {
                "id": group.id,
                "epoch": group.epoch,
                "leader": group.leader,
                "members": refs(group.members),
                "learners": refs(group.learners),
                "joint": refs(group.joint),
            },
            "campaign": campaign,
        }

    # -- nodes ----------------------------------------------------------------------------------

    async def _op_remove_node(self, req: dict[str, Any]) -> dict[str, Any]:
        """Remove the record of a dead or flagged node that takes part in no group (``rangekv
        nodes remove``; ``plan_node_removal`` says when), with a ``node_removed`` decision, in
        one fenced CAS transaction: ``{"node": the record removed, "live", "revision"}``."""
        node_id = req.get("node_id")
        if not isinstance(node_id, int) or isinstance(node_id, bool):
            raise errors.InvalidArgument("node_id must be an integer", field="node_id")
        if not 1 <= node_id <= NODE_ID_MAX:
            raise errors.InvalidArgument(f"node_id must be in 1..{NODE_ID_MAX}",
                                         field="node_id")
        term = self._require_active()
        hb_s = self.config.heartbeat_timeout_ms / 1000
        judge_from_s = max(term.since_s, self._judge_after_s - hb_s)
        if self._clock() - judge_from_s < hb_s:
            # heartbeats go to the active meta only: until one timeout has passed, a node
            # that has not beaten here yet may be alive
            raise errors.Unavailable("this meta became active a moment ago and cannot tell "
                                     "yet whether the node is live; retry")
        for _ in range(CAS_ATTEMPTS_MAX):
            node, live = plan_node_removal(self.view, node_id, self._beats.get(node_id),
                                           self._clock(), heartbeat_timeout_s=hb_s)
            rev = self._revs.get(model.node_key(node_id))
            assert rev, ("a node in the view has no revision", node_id)
            what = (f"{node.state} ({node.flag}: {node.reason})" if node.flag or node.reason
                    else node.state)
            reason = (f"node {node_id} at {node.address}, {what}, removed by an operator"
                      + ("; it still heartbeats: it registers again as a spare (or flagged, "
                         "if its log is still broken)" if live else ""))
            log_keys = sorted(self.view.decision_log)
            at_ns = max(self._wall_ns(), (log_keys[-1] + 1) if log_keys else 0)
            decision = model.Decision(at_ns, DECISION_NODE_REMOVED, None, reason, {
                "node": node_id, "address": node.address, "state": node.state,
                "flag": node.flag or None, "live": live})
            excess = len(log_keys) + 1 - model.DECISIONS_KEPT
            trim = log_keys[:max(0, min(excess, DECISIONS_TRIMMED_MAX))]
            written = await self.store.remove_node(node_id, rev, decision, trim)
            if written is None:  # the record (or the decision log) moved on: decide again
                await self._wait_view(self.view.revision + 1, 1.0)
                continue
            self.metrics.decisions[DECISION_NODE_REMOVED] += 1
            self._beats.pop(node_id, None)
            self.log.warning("decision %s: %s", DECISION_NODE_REMOVED, reason)
            await self._catch_up(written, self.config.view_catch_up_ms / 1000)
            return {"node": {"id": node.id, "address": node.address, "state": node.state,
                             "group": node.group, "reason": node.reason, "flag": node.flag},
                    "live": live, "revision": written}
        raise errors.Unavailable(f"node {node_id}'s record kept changing; retry")

    # -- tables ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _name_lock(self, name: str) -> AsyncIterator[None]:
        """Serialize create/drop of one table name inside this process."""
        lock, users = self._name_locks.get(name, (asyncio.Lock(), 0))
        self._name_locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._name_locks[name]
            if users <= 1:
                del self._name_locks[name]
            else:
                self._name_locks[name] = (lock, users - 1)

    def _pick_group(self, exclude: int | None = None) -> Group:
        """The group with a leader that serves the fewest ranges (lowest id on ties)."""
        counts = {gid: 0 for gid, g in self.view.groups.items()
                  if g.leader is not None and gid != exclude}
        if not counts:
            raise errors.Unavailable(
                "no replication group has a leader yet (a group forms from "
                f"{self.config.group_size} live nodes)"
            )
        for ranges in self.view.ranges.values():
            for rng in ranges:
                if rng.group in counts:
                    counts[rng.group] += 1
        gid = min(counts, key=lambda g: (counts[g], g))
        return self.view.groups[gid]

    async def _op_create_table(self, req: dict[str, Any]) -> dict[str, Any]:
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        self._require_active()
        self._refuse_while_paused("create a table")
        async with self._name_lock(name):
            for _ in range(CAS_ATTEMPTS_MAX):
                found = await self.store.get_table(name)
                if found is not None:
                    break
                group = self._pick_group()
                created = await self.store.create_table(name, group.id, self._wall_ns())
                if created is not None:  # else another table took the next id: go again
                    table, mod_revision = created
                    self.log.info(
                        "create_table %s: recorded id %d as creating on group %d "
                        "(fewest ranges among groups with a leader)",
                        name,
                        table.id,
                        group.id,
                    )
                    break
            else:
                raise errors.Unavailable(
                    f"the table id counter kept changing ({CAS_ATTEMPTS_MAX} attempts); retry",
                    table=name,
                )
            if found is not None:
                table, mod_revision = found
                if table.state == model.TABLE_ACTIVE:
                    raise errors.TableExists(f"table {name!r} already exists", table=name)
                if table.state == model.TABLE_DROPPING:
                    raise errors.TableExists(
                        f"table {name!r} is being dropped; retry drop_table to finish it",
                        table=name,
                        state=table.state,
                    )
                if table.state != model.TABLE_CREATING:
                    raise errors.Internal(f"table {name!r} has unknown state {table.state!r}")
                self.log.info(
                    "create_table %s: resuming the unfinished creation of id %d", name, table.id
                )
            ranges = await self.store.table_ranges(table.id)
            assert ranges, ("a table without ranges", table)
            for rng in ranges:
                await self._tell_leader(
                    rng.group, "add_range", table_id=table.id, start=rng.start, end=rng.end
                )
            done = await self.store.set_table_state(table, mod_revision, model.TABLE_ACTIVE)
            if done is None:
                raise errors.Unavailable(
                    f"table {name!r} changed while being created; retry", table=name
                )
            table, revision = done
            self.log.info(
                "create_table %s: id %d is active at revision %d", name, table.id, revision
            )
            return {
                "table": {"id": table.id, "name": table.name, "state": table.state},
                "revision": revision,
            }

    async def _op_drop_table(self, req: dict[str, Any]) -> dict[str, Any]:
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        self._require_active()
        self._refuse_while_paused("drop a table")
        async with self._name_lock(name):
            found = await self.store.get_table(name)
            if found is None:
                raise errors.TableNotFound(f"table {name!r} does not exist", table=name)
            table, mod_revision = found
            if table.state != model.TABLE_DROPPING:
                marked = await self.store.set_table_state(table, mod_revision, model.TABLE_DROPPING)
                if marked is None:
                    raise errors.Unavailable(
                        f"table {name!r} changed while being dropped; retry", table=name
                    )
                table, mod_revision = marked
                self.log.info("drop_table %s: id %d marked dropping", name, table.id)
            else:
                self.log.info(
                    "drop_table %s: resuming the unfinished drop of id %d", name, table.id
                )
            ranges = await self.store.table_ranges(table.id)
            # a range being moved has data on its source (and target) too
            groups = {g for r in ranges for g in (r.group, r.source, r.target) if g is not None}
            for gid in sorted(groups):
                await self._tell_leader(gid, "drop_table", table_id=table.id)
            revision = await self.store.delete_table(table, mod_revision)
            if revision is None:
                raise errors.Unavailable(
                    f"table {name!r} changed while being dropped; retry", table=name
                )
            self.log.info(
                "drop_table %s: id %d and its %d range(s) deleted at revision %d",
                name,
                table.id,
                len(ranges),
                revision,
            )
            return {"revision": revision}

    async def _op_split_range(self, req: dict[str, Any]) -> dict[str, Any]:
        """Cut the range of table ``name`` holding key ``at`` in two, on the same group
        (``rangekv split``): etcd first (CAS), then the group's leader (idempotent), so a retry
        after a failure anywhere finishes the job. With ``to`` (a group id, or "auto": the
        group with the fewest ranges), the upper part then moves there (``move_range``)."""
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        at = req.get("at")
        if not isinstance(at, bytes) or not at:
            raise errors.InvalidArgument("at must be a non-empty key", field="at")
        limits.check_key(at)
        self._require_active()
        self._refuse_while_paused("split a range")
        to = req.get("to")
        if to is not None and to != "auto" and (not isinstance(to, int) or isinstance(to, bool)):
            raise errors.InvalidArgument("to must be a group id or 'auto'", field="to")
        if isinstance(to, int):
            self._check_group(to)
        async with self._name_lock(name):
            table = await self._active_table(name)
            for _ in range(CAS_ATTEMPTS_MAX):
                ranges = await self.store.table_ranges_revs(table.id)
                holder = [(r, rev) for r, rev in ranges if r.contains(at)]
                assert len(holder) == 1, ("ranges of a table must tile its keys", ranges, at)
                rng, rev = holder[0]
                if rng.state != model.RANGE_ACTIVE or rng.source is not None:
                    raise errors.Unavailable(
                        f"the range of {name!r} holding that key is being moved; split it "
                        "once the move is done", table=name)
                if rng.start == at:
                    self.log.info("split_range %s at %r: a range already starts there",
                                  name, at)
                    break
                revision = await self.store.split_range(rng, rev, at)
                if revision is not None:
                    self.metrics.splits += 1
                    self._last_split_s[table.id] = self._clock()  # no merge back at once
                    self.log.info(
                        "split_range %s at %r: range [%r, %r) of group %d cut in two, both "
                        "on group %d (asked by an operator) at revision %d",
                        name, at, rng.start, rng.end, rng.group, rng.group, revision)
                    break
            else:
                raise errors.Unavailable(
                    f"the ranges of {name!r} kept changing ({CAS_ATTEMPTS_MAX} attempts); retry",
                    table=name)
            await self._tell_leader(rng.group, "split_range", table_id=table.id, at=at)
        if to is None:
            return await self._ranges_reply(table.id)
        if to == "auto":
            try:
                to = self._pick_group(exclude=rng.group).id
            except errors.Unavailable:
                await self._record_decision(
                    "split", f"table {name} split at {key_text(at)}; the upper part stays on group "
                    f"{rng.group}: no other group has a leader", table=name, group=rng.group)
                return await self._ranges_reply(table.id)
            why = (f"split at {key_text(at)} by an operator; the upper part goes to group {to}, "
                   "the group with a leader serving the fewest ranges")
        else:
            why = (req.get("why")
                   or f"split at {key_text(at)} by an operator, upper part to group {to}")
        return await self._op_move_range({"name": name, "at": at, "to": to, "why": why})

    def _check_group(self, group_id: int) -> None:
        if group_id not in self.view.groups:
            raise errors.GroupNotFound(
                f"there is no group {group_id} (groups: {sorted(self.view.groups)})",
                group=group_id)

    async def _active_table(self, name: str) -> Table:
        found = await self.store.get_table(name)
        if found is None or found[0].state != model.TABLE_ACTIVE:
            raise errors.TableNotFound(f"table {name!r} does not exist", table=name)
        return found[0]

    async def _op_move_range(self, req: dict[str, Any]) -> dict[str, Any]:
        """Move the range of table ``name`` holding key ``at`` to group ``to`` (``rangekv
        move``; see :mod:`rangekv.controller.move`). Answers once the move is done, or after
        ``MOVE_WAIT_S`` with ``done`` false while it goes on in the background."""
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        at = req.get("at")
        if not isinstance(at, bytes):
            raise errors.InvalidArgument("at must be a key (bytes)", field="at")
        if at:
            limits.check_key(at)
        to = req.get("to")
        if not isinstance(to, int) or isinstance(to, bool):
            raise errors.InvalidArgument("to must be a group id", field="to")
        self._require_active()
        self._refuse_while_paused("move a range")
        self._check_group(to)
        async with self._name_lock(name):
            table = await self._active_table(name)
            ranges = await self.store.table_ranges_revs(table.id)
            holder = [(r, rev) for r, rev in ranges if r.contains(at)]
            assert len(holder) == 1, ("ranges of a table must tile its keys", ranges, at)
            rng, rev = holder[0]
            if rng.state == model.RANGE_MOVING or rng.source is not None:
                heading = rng.target if rng.target is not None else rng.group
                if heading != to:
                    raise errors.Unavailable(
                        f"that range of {name!r} is already moving to group {heading}; move it "
                        "again once that is done", table=name)
            elif rng.group == to:
                return await self._ranges_reply(table.id, done=True)
            else:
                moving = replace(rng, state=model.RANGE_MOVING, target=to,
                                 version=rng.version + 1)
                revision = await self.store.put_range(moving, rev)
                if revision is None:
                    raise errors.Unavailable(f"the ranges of {name!r} changed meanwhile; retry",
                                             table=name)
                await self._record_decision(
                    "move", f"table {name} range {span_text(rng.start, rng.end)} moves from group "
                    f"{rng.group} to group {to}: {req.get('why') or 'asked by an operator'}",
                    table=name, group=rng.group, target=to)
                rng = moving
        task = self.mover.ensure(rng, "asked")
        done = False
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), MOVE_WAIT_S)
                done = True
            except TimeoutError:
                pass
            except errors.RangeKVError as exc:
                raise errors.Unavailable(f"the move stopped: {exc.message}; it is resumed "
                                         "automatically", table=name) from None
        return await self._ranges_reply(table.id, done=done)

    async def _ranges_reply(self, table_id: int, **extra: Any) -> dict[str, Any]:
        """A table's ranges and the revision an rm waits for before it routes by them."""
        after = await self.store.table_ranges_revs(table_id)
        return {"ranges": [r.to_json() for r, _ in after],
                "revision": max(rev for _, rev in after), **extra}

    def _conn(self, address: str) -> wire.Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = wire.Connection(address)
        return conn

    async def _tell_leader(self, group_id: int, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` to ``group_id``'s leader until it answers, within the request budget;
        its reply.

        Retries on not_leader / unavailable / outcome unknown (the ops are idempotent), with
        jittered exponential backoff; raises Unavailable when the budget runs out.
        """
        cfg = self.config
        budget_s = cfg.node_request_budget_ms / 1000
        deadline_s = self._clock() + budget_s
        backoff = _Backoff(0.05, 0.5)
        last = "no attempt made"
        while True:
            self._require_active()
            address = self.view.leader_address(group_id)
            if address is None:
                last = f"group {group_id} has no leader"
            else:
                remaining_s = deadline_s - self._clock()
                attempt_s = max(0.05, min(cfg.node_request_attempt_ms / 1000, remaining_s))
                try:
                    return await self._conn(address).request(op, timeout_s=attempt_s, **fields)
                except errors.RangeNotHere:
                    raise  # the group's ranges are not what the caller thought: no retry helps
                except (errors.Unavailable, errors.OutcomeUnknown, errors.ProtocolError) as exc:
                    last = f"{address}: {exc.code}: {exc.message}"
            delay_s = backoff.next()
            if self._clock() + delay_s >= deadline_s:
                self.log.warning(
                    "group %d did not acknowledge %s within %g s: %s", group_id, op, budget_s, last
                )
                raise errors.Unavailable(
                    f"group {group_id} did not acknowledge {op} within {budget_s:g}s "
                    f"(last: {last})",
                    group=group_id,
                )
            await asyncio.sleep(delay_s)


# -- the process --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> MetaConfig:
    parser = argparse.ArgumentParser(
        prog="rangekv meta", description="rangekv metadata manager and controller"
    )
    parser.add_argument("--id", type=int, required=True, help="this meta's id (positive)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for the meta ops")
    parser.add_argument("--etcd", required=True, help="etcd client URL[,URL...]")
    parser.add_argument(
        "--groups-min",
        type=int,
        default=1,
        help="form groups from spares until there are this many",
    )
    parser.add_argument(
        "--heartbeat-timeout-ms",
        type=int,
        default=HEARTBEAT_TIMEOUT_MS_DEFAULT,
        help="a node is live if it heartbeated within this "
        f"(default {HEARTBEAT_TIMEOUT_MS_DEFAULT})",
    )
    parser.add_argument("--backup-dir", help="keep rolling backups of the metadata here (off "
                        "by default): after changes and on a schedule, the newest --backup-keep")
    parser.add_argument("--backup-min-interval-s", type=float, default=5.0,
                        help="at most one metadata backup per this many seconds (default 5)")
    parser.add_argument("--backup-interval-s", type=float, default=300.0,
                        help="a metadata backup at least this often (default 300)")
    parser.add_argument("--backup-keep", type=int, default=20,
                        help="metadata backups kept (default 20)")
    defaults = SplitConfig()
    parser.add_argument("--split-bytes", type=int, default=defaults.bytes_max,
                        help="split a range storing more than this many bytes "
                        f"(default {defaults.bytes_max})")
    parser.add_argument("--split-ops", type=float, default=defaults.ops_max,
                        help="split a range serving more reads+writes per second than this "
                        f"(default {defaults.ops_max:g})")
    parser.add_argument("--split-bytes-per-s", type=float, default=defaults.bytes_per_s_max,
                        help="split a range reading+writing more bytes per second than this "
                        f"(default {defaults.bytes_per_s_max:g})")
    parser.add_argument("--split-cooldown-s", type=float, default=defaults.cooldown_s,
                        help="do not split a table again sooner than this after a split "
                        f"(default {defaults.cooldown_s:g})")
    parser.add_argument("--group-ranges-max", type=int, default=defaults.group_ranges_max,
                        help="a group serving this many ranges has no room for a moved one; "
                        "with none left, splits form a new group from spares "
                        f"(default {defaults.group_ranges_max})")
    parser.add_argument("--no-auto-split", action="store_true",
                        help="never split or move ranges by itself")
    parser.add_argument(
        "--replace-grace-ms",
        type=int,
        default=REPLACE_GRACE_MS_DEFAULT,
        help="replace a follower that has been dead or lagging this long "
        f"(default {REPLACE_GRACE_MS_DEFAULT})",
    )
    parser.add_argument(
        "--replace-lag-entries",
        type=int,
        default=REPLACE_LAG_ENTRIES_DEFAULT,
        help="a follower this far behind the leader's commit index is lagging "
        f"(default {REPLACE_LAG_ENTRIES_DEFAULT})",
    )
    parser.add_argument(
        "--catch-up-slack-entries",
        type=int,
        default=CATCH_UP_SLACK_DEFAULT,
        help="a learner this close to the leader's commit index is caught up "
        f"(default {CATCH_UP_SLACK_DEFAULT})",
    )
    parser.add_argument("--metrics-listen", type=listen_address, metavar="HOST:PORT",
                        help="serve Prometheus /metrics on this address (default: none)")
    parser.add_argument(
        "--learner-timeout-ms",
        type=int,
        default=LEARNER_TIMEOUT_MS_DEFAULT,
        help="drop (and flag) a learner not caught up within this "
        f"(default {LEARNER_TIMEOUT_MS_DEFAULT})",
    )
    parser.add_argument(
        "--lag-stuck-entries", type=int, default=LAG_ENTRIES_MIN,
        help="a member or learner further than this behind its leader's commit whose lag "
        "stops shrinking is reported stuck (a lag_stuck decision, a WARNING, metrics; default "
        f"{LAG_ENTRIES_MIN})")
    parser.add_argument(
        "--lag-stuck-after-ms", type=int, default=int(STUCK_AFTER_S * 1000),
        help="... once its lag has not shrunk for this long (default "
        f"{int(STUCK_AFTER_S * 1000)})")
    ns = rangekv_config.parse(parser, "meta", argv)
    if ns.lag_stuck_entries < 0 or ns.lag_stuck_after_ms <= 0:
        parser.error("--lag-stuck-entries must be >= 0 and --lag-stuck-after-ms > 0")
    if ns.id <= 0:
        parser.error("--id must be positive")
    try:
        split_host_port(ns.listen)
    except ValueError as exc:
        parser.error(str(exc))
    endpoints = tuple(e.strip() for e in ns.etcd.split(",") if e.strip())
    if not endpoints:
        parser.error("--etcd needs at least one URL")
    if ns.groups_min < 0 or ns.heartbeat_timeout_ms <= 0:
        parser.error("--groups-min must be >= 0 and --heartbeat-timeout-ms > 0")
    if ns.replace_grace_ms <= 0 or ns.replace_lag_entries <= 0 or ns.learner_timeout_ms <= 0:
        parser.error("--replace-grace-ms, --replace-lag-entries and --learner-timeout-ms "
                     "must be positive")
    if ns.catch_up_slack_entries < 0:
        parser.error("--catch-up-slack-entries must be >= 0")
    if ns.backup_min_interval_s < 0 or ns.backup_interval_s <= 0 or ns.backup_keep < 1:
        parser.error("--backup-min-interval-s must be >= 0, --backup-interval-s > 0 and "
                     "--backup-keep >= 1")
    return MetaConfig(
        id=ns.id,
        listen=ns.listen,
        etcd=endpoints,
        groups_min=ns.groups_min,
        heartbeat_timeout_ms=ns.heartbeat_timeout_ms,
        split=SplitConfig(
            bytes_max=ns.split_bytes, ops_max=ns.split_ops,
            bytes_per_s_max=ns.split_bytes_per_s, cooldown_s=ns.split_cooldown_s,
            group_ranges_max=ns.group_ranges_max, enabled=not ns.no_auto_split),
        replace_grace_ms=ns.replace_grace_ms,
        replace_lag_entries=ns.replace_lag_entries,
        catch_up_slack_entries=ns.catch_up_slack_entries,
        learner_timeout_ms=ns.learner_timeout_ms,
        lag_stuck_entries=ns.lag_stuck_entries,
        lag_stuck_after_ms=ns.lag_stuck_after_ms,
        backup_dir=ns.backup_dir,
        backup_min_interval_s=ns.backup_min_interval_s,
        backup_interval_s=ns.backup_interval_s,
        backup_keep=ns.backup_keep,
        metrics_listen=ns.metrics_listen,
        log_format=ns.log_format,
        log_level=ns.log_level,
    )


# the text layout meta logs have always had (tests and operators grep it)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _setup_logging(config: MetaConfig) -> None:
    rangekv_log.setup(f"meta-{config.id}", config.log_level, config.log_format, _TEXT_FORMAT)


async def run(config: MetaConfig) -> int:
    """Run one meta until SIGTERM/SIGINT; the exit code."""
    service = MetaService(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop, f"got {sig.name}")
    try:
        await service.start()
    except OSError as exc:
        service.log.error("cannot listen on %s: %s", config.listen, exc)
        await service.stop()
        return 1
    return await service.run()


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    _setup_logging(config)
    try:
        return aio.run(run(config))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
