"""Counters and latency histograms of one rm, exposed with prometheus_client at ``/metrics``.

Invariants: recording is O(log buckets) with no lock and no allocation on the hot path beyond
a dict entry for a new (op, status) pair (see ``rangekv.metrics`` for why the figures are
plain ints turned into metric families only when scraped); the label sets are bounded (ops are a
fixed list, statuses are HTTP codes, retry reasons are error codes), so the exposition stays
small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rangekv.metrics import (
    LATENCY_BUCKETS_S,
    FuncCollector,
    Histogram,
    histogram_family,
    new_registry,
    render,
)

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "RouterStats"]


@dataclass
class RouterStats:
    """What the router counts; read by ``/metrics``."""

    retries: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    refreshes: int = 0  # direct etcd re-reads of one table
    hints_followed: int = 0
    outcome_unknown: int = 0
    clock_offsets: int = 0  # writes a leader refused: this rm's clock is too far ahead
    seqs_ignored: int = 0  # seqs from nodes too far ahead of this rm's clock (not observed)

    def retry(self, reason: str) -> None:
        self.retries[reason] += 1


class Metrics:
    """The figures of one rm and the registry that exposes them (``render``)."""

    def __init__(self, rm_id: int) -> None:
        self.rm_id = rm_id
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, Histogram] = {}
        self.router = RouterStats()
        # Filled by the view source.
        self.view_reloads = 0
        self.watch_events = 0
        self.probe_failures = 0
        # The view's readiness and revision, as ``render`` was told them.
        self._ready = False
        self._revision = 0
        self.registry: CollectorRegistry = new_registry("rm", rm_id)
        self.registry.register(FuncCollector(self._collect))

    def observe(self, op: str, status: int, seconds: float) -> None:
        self.requests[(op, status)] += 1
        hist = self._latency.get(op)
        if hist is None:
            hist = self._latency[op] = Histogram(LATENCY_BUCKETS_S)
        hist.observe(seconds)

    def render(self, *, ready: bool, revision: int) -> str:
        """The exposition, with the view's readiness and revision as of now."""
        self._ready, self._revision = ready, revision
        return render(self.registry).decode("utf-8")

    def _collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "rangekv_rm_requests", "HTTP requests answered, by operation and status.",
            labels=["op", "status"])
        for (op, status), n in sorted(self.requests.items()):
            requests.add_metric([op, str(status)], n)
        yield requests
        yield histogram_family(
            "rangekv_rm_request_duration_seconds", "Time to answer, by operation.", ["op"],
            (([op], hist) for op, hist in sorted(self._latency.items())))
        retries = CounterMetricFamily(
            "rangekv_rm_routing_retries", "Retried attempts to reach a leader or meta.",
            labels=["reason"])
        for reason, n in sorted(self.router.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        for name, help_text, value in (
            ("rangekv_rm_routing_refreshes",
             "Direct etcd re-reads of a table the view did not know (or a node denied).",
             self.router.refreshes),
            ("rangekv_rm_leader_hints_followed",
             "not_leader answers whose hint was followed at once.", self.router.hints_followed),
            ("rangekv_rm_outcome_unknown", "Writes answered 504 outcome_unknown.",
             self.router.outcome_unknown),
            ("rangekv_rm_clock_offset_refusals",
             "Writes a leader refused because this rm's clock is ahead of it by more than the "
             "maximum offset (the rm then reports itself unhealthy for a while).",
             self.router.clock_offsets),
            ("rangekv_rm_seqs_ignored",
             "Seqs answered by nodes that were too far ahead of this rm's clock to be observed.",
             self.router.seqs_ignored),
            ("rangekv_rm_view_reloads", "Full reloads of the routing view from etcd.",
             self.view_reloads),
            ("rangekv_rm_etcd_probe_failures",
             "etcd probes not answered in time (each made the rm not ready until a reload).",
             self.probe_failures),
            ("rangekv_rm_watch_events", "etcd watch events applied to the routing view.",
             self.watch_events),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily("rangekv_rm_view_revision",
                                "etcd revision the routing view reflects.", value=self._revision)
        yield GaugeMetricFamily("rangekv_rm_ready",
                                "1 when the view is loaded and followed by a watch.",
                                value=int(self._ready))
