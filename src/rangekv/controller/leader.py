"""Choosing a group's leader (docs/architecture.md, "Choosing a leader"): a pure decision on
the group's record and its members' latest heartbeats.

Rules (each one a line of ``choose_leader``):

* nobody is judged before one heartbeat timeout since this meta became active (or since a
  stall of its process): heartbeats sent to a previous meta are not here yet;
* a new leader is needed when there is none, when it is not live, when it reports a broken log,
  or when it has not reported serving the recorded epoch within the campaign timeout;
* **no leader without a live majority** of the members (and, while a reconfiguration is
  unfinished, of the previous members, ``joint``): the group stays unavailable, never
  inconsistent;
* the choice is the live member with the highest (last_epoch, last_index), lowest id on ties,
  skipping broken logs and (if anyone else is eligible) the leader that failed;
* the new epoch is above the recorded one and every epoch a live member reports having promised
  (epochs only grow; the meta records it by compare-and-swap before any node hears of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rangekv.controller.health import Beat, is_live
from rangekv.model import Group
from rangekv.model.status import ROLE_LEADER


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
    beats: Mapping[int, Beat],
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
    lead = beats.get(group.leader) if group.leader is not None else None
    if (lead is not None and is_live(lead, now_s, heartbeat_timeout_s) and not lead.status.broken
            and lead.status.role == ROLE_LEADER and lead.status.leader_epoch == group.epoch):
        # the common case, first: a thousand groups are judged every tick
        return LeaderChoice("keep", f"leader {group.leader} serves epoch {group.epoch}")
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
        if st.group != group.id:
            return (-1, -1, -m)  # its log is not this group's (yet): it holds none of it
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
