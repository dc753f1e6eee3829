"""Lag that stops shrinking: a pure watch over what members and learners report.

A follower or a learner that falls behind its leader either catches up (its lag shrinks) or is
stuck: a learner that can never get the snapshot it needs, a member cut off from its leader but
not from meta, a member whose disk cannot keep up. Before this watch, a stuck replacement was
silent (issue 16): the group ran on two of three replicas and nothing said so.

Rules, per node taking part in a group (member or learner, not the leader), measured while the
group's leader serves and the node heartbeats:

* its **lag** is ``leader commit index - its commit index`` (a learner's commit index counts
  only entries that match the leader's log), never below 0;
* an **episode** starts when its lag exceeds ``lag_entries_min``; during it, the lag's lowest
  value and when it was last lowered are kept;
* it is **stuck** once its lag has not gone below that lowest value for ``after_s``: the watch
  says so once (``LagEvent`` "stuck");
* the episode ends when its lag is back within ``lag_entries_min``, or the node leaves the group
  or stops heartbeating (a dead node is the replacement policy's business): a stuck node that
  recovers is said once too ("recovered"; one that left, "gone").

The meta records each event as a controller decision (``lag_stuck``, ``lag_recovered``) with a
WARNING log line, and exports every node's lag and whether it is stuck as metrics; the rms
show stuck nodes in ``rangekv status`` and on the dashboard from those decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LAG_ENTRIES_MIN = 1_000  # below this a node keeps up (heartbeats are 100 ms apart under load)
# A snapshot of a large range takes a while to arrive, during which a learner's lag stands
# still; a minute is above that for the sizes one node holds here, and far below the learner
# timeout (2 min) after which the replacement is abandoned and tried with another spare.
STUCK_AFTER_S = 60.0


@dataclass(frozen=True)
class Report:
    """What the watch needs of one node of a group, from its latest heartbeat."""

    node: int
    role: str  # "member" or "learner"
    commit_index: int
    live: bool


@dataclass(frozen=True)
class LagEvent:
    kind: str  # "stuck", "recovered" or "gone"
    group: int
    node: int
    role: str
    lag: int
    since_s: float  # when the episode began
    still_s: float  # how long the lag had not shrunk (stuck) or the episode lasted

    def reason(self) -> str:
        who = f"node {self.node} ({self.role} of group {self.group})"
        if self.kind == "stuck":
            return (f"{who} lags {self.lag} entries behind the leader's commit and has not "
                    f"caught up for {self.still_s:.0f} s: its lag stopped shrinking")
        if self.kind == "recovered":
            return f"{who} caught up again after {self.still_s:.0f} s behind"
        return f"{who} no longer lags: it left the group or stopped heartbeating"


@dataclass
class _Episode:
    role: str
    since_s: float
    lowest: int
    lowered_s: float
    lag: int
    stuck: bool = False


@dataclass
class LagWatch:
    lag_entries_min: int = LAG_ENTRIES_MIN
    after_s: float = STUCK_AFTER_S
    # (group, node) -> the episode under way
    episodes: dict[tuple[int, int], _Episode] = field(default_factory=dict)
    # (group, node) -> (role, lag) as of the last update, for metrics
    lags: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)

    # group -> the nodes it has in ``lags`` (kept with it)
    _lag_nodes: dict[int, set[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.lag_entries_min >= 0 and self.after_s > 0
        self._lag_nodes = {}
        for g, n in self.lags:
            self._lag_nodes.setdefault(g, set()).add(n)

    def stuck(self) -> list[tuple[int, int]]:
        return sorted(k for k, ep in self.episodes.items() if ep.stuck)

    def update(self, group: int, leader_commit: int | None, reports: Iterable[Report],
               now_s: float) -> list[LagEvent]:
        """Take one group's reports; ``leader_commit`` is None while no leader serves it (the
        episodes then wait: nothing can be judged). Returns what changed."""
        if leader_commit is None:
            return []
        events: list[LagEvent] = []
        seen = set()
        for r in reports:
            key = (group, r.node)
            if not r.live:
                continue
            seen.add(r.node)
            lag = max(0, leader_commit - r.commit_index)
            self.lags[key] = (r.role, lag)
            ep = self.episodes.get(key)
            if lag <= self.lag_entries_min:
                if ep is not None:
                    del self.episodes[key]
                    if ep.stuck:
                        events.append(LagEvent("recovered", group, r.node, r.role, lag,
                                               ep.since_s, now_s - ep.since_s))
                continue
            if ep is None:
                self.episodes[key] = _Episode(r.role, now_s, lag, now_s, lag)
                continue
            ep.lag, ep.role = lag, r.role
            if lag < ep.lowest:
                ep.lowest, ep.lowered_s = lag, now_s
            elif not ep.stuck and now_s - ep.lowered_s >= self.after_s:
                ep.stuck = True
                events.append(LagEvent("stuck", group, r.node, r.role, lag, ep.since_s,
                                       now_s - ep.lowered_s))
        for key in [k for k in self.episodes if k[0] == group and k[1] not in seen]:
            ep = self.episodes.pop(key)
            if ep.stuck:
                events.append(LagEvent("gone", group, key[1], ep.role, ep.lag, ep.since_s,
                                       now_s - ep.since_s))
        # the group's keys of ``lags`` from its index, not a scan of every group's: a thousand
        # groups are updated every formation tick
        for node in self._lag_nodes.get(group, set()) - seen:
            del self.lags[(group, node)]
        self._lag_nodes[group] = seen
        return events

    def forget_groups(self, groups: Iterable[int]) -> None:
        """Groups that are gone: their episodes end without a word (nothing to alert on)."""
        keep = set(groups)
        self.episodes = {k: v for k, v in self.episodes.items() if k[0] in keep}
        self.lags = {k: v for k, v in self.lags.items() if k[0] in keep}
        self._lag_nodes = {g: n for g, n in self._lag_nodes.items() if g in keep}
