"""Counters and latency histograms of one rm, rendered as Prometheus text exposition (0.0.4).

Invariants: recording is O(log buckets) with no allocation on the hot path beyond a dict entry
for a new (op, status) pair; the label sets are bounded (ops are a fixed list, statuses are
HTTP codes, retry reasons are error codes), so the exposition stays small.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

# Upper bounds of the latency buckets, in seconds (the +Inf bucket is implicit).
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class RouterStats:
    """What the router counts; read by ``/metrics``."""

    retries: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    refreshes: int = 0  # direct etcd re-reads of one table
    hints_followed: int = 0
    outcome_unknown: int = 0

    def retry(self, reason: str) -> None:
        self.retries[reason] += 1


class _Histogram:
    __slots__ = ("counts", "total_s", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.total_s = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds
        self.n += 1


class Metrics:
    def __init__(self, rm_id: int) -> None:
        self.rm_id = rm_id
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self.router = RouterStats()
        # Filled by the view source.
        self.view_reloads = 0
        self.watch_events = 0
        self.probe_failures = 0

    def observe(self, op: str, status: int, seconds: float) -> None:
        self.requests[(op, status)] += 1
        hist = self._latency.get(op)
        if hist is None:
            hist = self._latency[op] = _Histogram()
        hist.observe(seconds)

    def render(self, *, ready: bool, revision: int) -> str:
        lines: list[str] = []
        add = lines.append
        add("# HELP rangekv_rm_requests_total HTTP requests answered, by operation and status.")
        add("# TYPE rangekv_rm_requests_total counter")
        for (op, status), n in sorted(self.requests.items()):
            add(f'rangekv_rm_requests_total{{op="{op}",status="{status}"}} {n}')
        add("# HELP rangekv_rm_request_duration_seconds Time to answer, by operation.")
        add("# TYPE rangekv_rm_request_duration_seconds histogram")
        for op, hist in sorted(self._latency.items()):
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_S, hist.counts, strict=False):
                cumulative += count
                add(
                    f'rangekv_rm_request_duration_seconds_bucket{{op="{op}",le="{bound}"}} '
                    f"{cumulative}"
                )
            add(f'rangekv_rm_request_duration_seconds_bucket{{op="{op}",le="+Inf"}} {hist.n}')
            add(f'rangekv_rm_request_duration_seconds_sum{{op="{op}"}} {hist.total_s:.9f}')
            add(f'rangekv_rm_request_duration_seconds_count{{op="{op}"}} {hist.n}')
        add("# HELP rangekv_rm_routing_retries_total Retried attempts to reach a leader or meta.")
        add("# TYPE rangekv_rm_routing_retries_total counter")
        for reason, n in sorted(self.router.retries.items()):
            add(f'rangekv_rm_routing_retries_total{{reason="{reason}"}} {n}')
        scalars = (
            (
                "rangekv_rm_routing_refreshes_total",
                "counter",
                "Direct etcd re-reads of a table the view did not know (or a node denied).",
                self.router.refreshes,
            ),
            (
                "rangekv_rm_leader_hints_followed_total",
                "counter",
                "not_leader answers whose hint was followed at once.",
                self.router.hints_followed,
            ),
            (
                "rangekv_rm_outcome_unknown_total",
                "counter",
                "Writes answered 504 outcome_unknown.",
                self.router.outcome_unknown,
            ),
            (
                "rangekv_rm_view_reloads_total",
                "counter",
                "Full reloads of the routing view from etcd.",
                self.view_reloads,
            ),
            (
                "rangekv_rm_etcd_probe_failures_total",
                "counter",
                "etcd probes not answered in time (each made the rm not ready until a reload).",
                self.probe_failures,
            ),
            (
                "rangekv_rm_watch_events_total",
                "counter",
                "etcd watch events applied to the routing view.",
                self.watch_events,
            ),
            (
                "rangekv_rm_view_revision",
                "gauge",
                "etcd revision the routing view reflects.",
                revision,
            ),
            (
                "rangekv_rm_ready",
                "gauge",
                "1 when the view is loaded and followed by a watch.",
                int(ready),
            ),
        )
        for name, kind, help_text, value in scalars:
            add(f"# HELP {name} {help_text}")
            add(f"# TYPE {name} {kind}")
            add(f"{name} {value}")
        return "\n".join(lines) + "\n"
