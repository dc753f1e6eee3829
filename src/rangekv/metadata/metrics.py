"""The ``/metrics`` of one meta (``rangekv meta --metrics-listen HOST:PORT``).

Counted as it happens (plain ints, see ``rangekv.metrics``): heartbeats received, leaders
elected (epochs recorded), groups formed, splits and merges done, decisions recorded by kind,
and the store's etcd transactions that lost their compare (a conflict: decide again) or failed.
Moves and replacements are counted from their decisions: a move starts with ``move`` and ends
with ``move_copied`` (the target alone serves the range) or ``move_abandoned``; a replacement
starts with ``replace_started`` and ends with ``joint_cleared`` (completed) or
``replace_abandoned``.

Read at scrape time from the meta's view: whether this meta is the active one, nodes by state,
groups, tables, and the view's etcd revision. A standby meta counts nothing but heartbeats
(answered ``not_active``) and shows the same view.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rangekv import model
from rangekv.metrics import FuncCollector, new_registry

if TYPE_CHECKING:
    from rangekv.metadata.service import MetaService

NODE_STATES = (model.NODE_MEMBER, model.NODE_SPARE, model.NODE_JOINING, model.NODE_FLAGGED)
# (metric name without _total, help, label value -> decision kind)
FROM_DECISIONS = (
    ("rangekv_meta_moves_started", "Range moves decided.", {"": "move"}),
    ("rangekv_meta_moves_finished",
     "Range moves ended: copied (the target group alone serves the range) or abandoned.",
     {"copied": "move_copied", "abandoned": "move_abandoned"}),
    ("rangekv_meta_replacements_started",
     "Follower replacements started (a spare added as a learner).", {"": "replace_started"}),
    ("rangekv_meta_replacements_finished",
     "Follower replacements ended: completed (joint configuration cleared) or abandoned.",
     {"completed": "joint_cleared", "abandoned": "replace_abandoned"}),
)


class MetaMetrics:
    """The figures of one meta and the registry that exposes them."""

    def __init__(self, service: MetaService) -> None:
        self.service = service
        self.heartbeats = 0
        self.heartbeats_refused = 0  # for another node than the connection speaks for
        self.lag_stuck_episodes = 0  # members or learners whose lag stopped shrinking
        self.elections = 0
        self.groups_formed = 0
        self.splits = 0
        self.merges = 0
        self.decisions: defaultdict[str, int] = defaultdict(int)
        self.registry = new_registry("meta", service.config.id)
        self.registry.register(FuncCollector(self._collect))

    def _collect(self) -> Iterator[Metric]:
        service = self.service
        for name, help_text, value in (
            ("rangekv_meta_heartbeats", "Node heartbeats received (active or not).",
             self.heartbeats),
            ("rangekv_meta_heartbeats_refused",
             "Heartbeats refused: for another node than the one that heartbeats on the "
             "connection, or for a node heartbeating live on another connection.",
             self.heartbeats_refused),
            ("rangekv_meta_leader_elections",
             "Group leaders chosen: a new epoch recorded in etcd for a group.", self.elections),
            ("rangekv_meta_groups_formed", "Replication groups formed from spares.",
             self.groups_formed),
            ("rangekv_meta_splits", "Ranges cut in two (asked by an operator, or automatic).",
             self.splits),
            ("rangekv_meta_merges", "Pairs of neighbouring ranges merged.", self.merges),
            ("rangekv_meta_lag_stuck_episodes",
             "Times a member's or learner's lag (entries behind its leader's commit) stopped "
             "shrinking for a minute while above 1000 entries (also a lag_stuck decision).",
             self.lag_stuck_episodes),
            ("rangekv_meta_etcd_txn_conflicts",
             "etcd transactions whose compare failed (the state changed: decide again).",
             service.store.txn_conflicts),
            ("rangekv_meta_etcd_txn_errors", "etcd transactions that failed (no answer, an error).",
             service.store.txn_errors),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        decisions = CounterMetricFamily("rangekv_meta_decisions",
                                        "Controller decisions recorded, by kind.",
                                        labels=["kind"])
        for kind, n in sorted(self.decisions.items()):
            decisions.add_metric([kind], n)
        yield decisions
        for name, help_text, kinds in FROM_DECISIONS:
            if list(kinds) == [""]:
                yield CounterMetricFamily(name, help_text,
                                          value=self.decisions.get(kinds[""], 0))
                continue
            family = CounterMetricFamily(name, help_text, labels=["outcome"])
            for outcome, kind in kinds.items():
                family.add_metric([outcome], self.decisions.get(kind, 0))
            yield family
        yield GaugeMetricFamily("rangekv_meta_active", "1 while this meta is the active one.",
                                value=int(service.is_active))
        view = service.view
        nodes = GaugeMetricFamily("rangekv_meta_nodes", "Registered nodes by state.",
                                  labels=["state"])
        counts: defaultdict[str, int] = defaultdict(int)
        for node in view.nodes.values():
            counts[node.state] += 1
        for state in sorted({*NODE_STATES, *counts}):
            nodes.add_metric([state], counts.get(state, 0))
        yield nodes
        # every member's and learner's lag as the active meta sees it, and whether it is stuck
        lag = GaugeMetricFamily("rangekv_meta_node_lag_entries",
                                "Entries a member or learner is behind its leader's commit "
                                "(active meta only).", labels=["group", "node", "role"])
        stuck = GaugeMetricFamily("rangekv_meta_node_lag_stuck",
                                  "1 while a member's or learner's lag has stopped shrinking "
                                  "(see rangekv_meta_lag_stuck_episodes).",
                                  labels=["group", "node", "role"])
        watch = service.lag_watch
        stuck_now = set(watch.stuck())
        for (gid, node), (role, entries) in sorted(watch.lags.items()):
            labels = [str(gid), str(node), role]
            lag.add_metric(labels, entries)
            stuck.add_metric(labels, int((gid, node) in stuck_now))
        yield lag
        yield stuck
        yield GaugeMetricFamily("rangekv_meta_groups", "Replication groups.",
                                value=len(view.groups))
        yield GaugeMetricFamily("rangekv_meta_tables", "Tables (in any state).",
                                value=len(view.tables))
        yield GaugeMetricFamily("rangekv_meta_view_revision",
                                "etcd revision this meta's view reflects.", value=view.revision)
