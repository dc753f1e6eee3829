"""The ``/metrics`` of one node (``rangekv node --metrics-listen HOST:PORT``).

What is counted as it happens (cheaply, see ``rangekv.metrics``):

* every WAL sync that called fdatasync (``WAL.on_sync``, in the thread that syncs): its
  latency, and the entries and bytes it made durable (the group-commit batch);
* what the replica reports (``replication.driver.Observer``): apply batch sizes, proposals by
  result, times this node became leader, epoch changes it persisted, snapshots sent, failed and
  installed, log compactions.

What is read at scrape time from the live replica (nothing on the hot path): role, epoch,
group, log indexes (last, commit, applied), and on a leader each follower's match index and
lag (entries between the leader's last index and the follower's match index) from the core's
progress tracking.

Invariant: the counts live in this object, which lives as long as the process, so they never go
back when the node discards its data and opens a new replica (a group change).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rangekv.metrics import (
    BYTES_BUCKETS,
    COUNT_BUCKETS,
    FuncCollector,
    Histogram,
    histogram_family,
    new_registry,
)
from rangekv.replication.core import CANDIDATE, FOLLOWER, IDLE, LEADER
from rangekv.replication.driver import Observer, Replica

# What the node is now: its replica (None while it has none), its group, why it is broken.
NodeState = Callable[[], tuple[Replica | None, int | None, str | None]]

ROLES = (LEADER, CANDIDATE, FOLLOWER, IDLE)
# fdatasync on a fast SSD takes tens of µs; on a busy disk, tens of ms
FSYNC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
EVENTS = {  # Observer.event name -> (metric name without _total, help)
    "leader_changes": ("rangekv_node_leader_changes",
                       "Times this node became the serving leader of its group."),
    "snapshots_sent": ("rangekv_node_snapshots_sent", "Snapshots sent to a follower."),
    "snapshots_failed": ("rangekv_node_snapshots_failed",
                         "Snapshot transfers to a follower that failed (retried)."),
    "snapshots_installed": ("rangekv_node_snapshots_installed",
                            "Snapshots received from a leader and installed."),
    "compactions": ("rangekv_node_log_compactions", "Compactions of the log's prefix."),
}


class NodeMetrics(Observer):
    """The figures of one node and the registry that exposes them."""

    def __init__(self, node_id: int, state: NodeState) -> None:
        self.state = state
        self.fsync_seconds = Histogram(FSYNC_BUCKETS_S)
        self.fsync_entries = Histogram(COUNT_BUCKETS)
        self.fsync_bytes = Histogram(BYTES_BUCKETS)
        self.apply_entries = Histogram(COUNT_BUCKETS)
        self.events: defaultdict[str, int] = defaultdict(int)
        self.proposals: defaultdict[str, int] = defaultdict(int)
        self.epoch_changes = 0
        self._epoch = 0  # the last promised epoch persisted (see ``opened``)
        # what the node's boundary refused (the node shares its own counters here): requests
        # by op, replication messages and connections by why
        self.requests_refused: defaultdict[str, int] = defaultdict(int)
        self.messages_dropped: Callable[[], dict[str, int]] = dict
        self.connections_refused: dict[str, int] = {}
        self.registry = new_registry("node", node_id)
        self.registry.register(FuncCollector(self._collect))

    # -- counted as it happens -------------------------------------------------------------

    def on_sync(self, entries: int, nbytes: int, seconds: float) -> None:
        """``WAL.on_sync``: one fdatasync batch."""
        self.fsync_seconds.observe(seconds)
        self.fsync_entries.observe(entries)
        self.fsync_bytes.observe(nbytes)

    def event(self, name: str) -> None:
        self.events[name] += 1

    def applied(self, entries: int) -> None:
        self.apply_entries.observe(entries)

    def proposed(self, result: str) -> None:
        self.proposals[result] += 1

    def opened(self, promised_epoch: int) -> None:
        """A replica was opened with this promised epoch: changes are counted from it."""
        self._epoch = promised_epoch

    def hardstate(self, promised_epoch: int) -> None:
        if promised_epoch != self._epoch:
            self.epoch_changes += 1
            self._epoch = promised_epoch

    # -- the scrape ------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        for name, help_text, label, counts in (
            ("rangekv_node_requests_refused",
             "Requests refused for a malformed, oversized or out-of-range field, by op.", "op",
             self.requests_refused),
            ("rangekv_node_replication_messages_dropped",
             "Replication messages dropped at the boundary (malformed, not from a peer, "
             "another node's id on a connection, an epoch too far ahead), by reason.",
             "reason", self.messages_dropped()),
            ("rangekv_node_connections_refused",
             "Connections closed by the internal port's bounds (connections, unfinished "
             "frames, replies not read), by reason.", "reason", self.connections_refused),
        ):
            family = CounterMetricFamily(name, help_text, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            yield family
        yield CounterMetricFamily("rangekv_node_wal_fsyncs",
                                  "WAL syncs that called fdatasync (group-commit batches).",
                                  value=self.fsync_seconds.n)
        yield histogram_family("rangekv_node_wal_fsync_duration_seconds",
                               "Time of one WAL sync (the fdatasync of every segment written).",
                               [], [([], self.fsync_seconds)])
        yield histogram_family("rangekv_node_wal_fsync_batch_entries",
                               "Log entries made durable by one WAL sync.",
                               [], [([], self.fsync_entries)])
        yield histogram_family("rangekv_node_wal_fsync_batch_bytes",
                               "Bytes made durable by one WAL sync.",
                               [], [([], self.fsync_bytes)])
        yield histogram_family("rangekv_node_apply_batch_entries",
                               "Committed entries applied to the state machine in one batch.",
                               [], [([], self.apply_entries)])
        proposals = CounterMetricFamily("rangekv_node_proposals",
                                        "Writes proposed as leader, by result (ok or error code).",
                                        labels=["result"])
        for result, n in sorted(self.proposals.items()):
            proposals.add_metric([result], n)
        yield proposals
        yield CounterMetricFamily("rangekv_node_epoch_changes",
                                  "Changes of the epoch this node promised (each election it "
                                  "took part in).", value=self.epoch_changes)
        for event, (name, help_text) in EVENTS.items():
            yield CounterMetricFamily(name, help_text, value=self.events.get(event, 0))
        yield from self._state()

    def _state(self) -> Iterator[Metric]:
        replica, group, broken = self.state()
        core = replica.core if replica is not None else None
        role = core.role if core is not None else IDLE
        roles = GaugeMetricFamily("rangekv_node_role", "1 for this node's role in its group.",
                                  labels=["role"])
        for name in ROLES:
            roles.add_metric([name], int(role == name))
        yield roles
        yield GaugeMetricFamily("rangekv_node_group", "The group this node belongs to (0: none).",
                                value=group or 0)
        yield GaugeMetricFamily("rangekv_node_broken",
                                "1 when local data failed verification and the node refuses "
                                "to serve.", value=int(broken is not None))
        figures = (
            ("rangekv_node_epoch", "The highest epoch this node has promised.",
             core.promised if core else 0),
            ("rangekv_node_last_index", "Index of the last entry in the log.",
             core.last_index if core else 0),
            ("rangekv_node_commit_index", "Highest index known committed.",
             core.commit if core else 0),
            ("rangekv_node_applied_index", "Highest index applied to the state machine.",
             core.applied if core else 0),
        )
        for name, help_text, value in figures:
            yield GaugeMetricFamily(name, help_text, value=value)
        lag = GaugeMetricFamily("rangekv_node_follower_lag_entries",
                                "On the leader: entries of its log a follower does not have "
                                "yet (last index minus the follower's match index).",
                                labels=["follower"])
        match = GaugeMetricFamily("rangekv_node_follower_match_index",
                                  "On the leader: the highest index known to be in a "
                                  "follower's log.", labels=["follower"])
        if core is not None and core.role == LEADER:
            for peer, progress in sorted(core.progress.items()):
                lag.add_metric([str(peer)], max(0, core.last_index - progress.match))
                match.add_metric([str(peer)], progress.match)
        yield lag
        yield match
