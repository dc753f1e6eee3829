"""Prometheus metrics of every rangekv process (rm, node, meta): registry, histograms, server.

Theory of operation
-------------------
Each process owns one ``prometheus_client.CollectorRegistry`` (``new_registry``), never the
library's global one, so that tests which build several rms, nodes or metas in one Python
process keep their figures apart. A registry holds:

* the standard process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
  open fds, start time: ``prometheus_client.ProcessCollector``);
* ``rangekv_build_info{version, component, id} 1``, which names the process;
* the component's own collector, whose ``collect()`` turns plain counters and ``Histogram``\\ s
  into metric families only when ``/metrics`` is scraped, and reads gauges (role, indexes,
  replication lag, nodes by state) from the live state at that moment.

Hot path: counting is an ``int += 1`` on an attribute or dict, or ``Histogram.observe`` (a
bisect and three additions, no lock: every caller runs on the process's event loop, or in the
one persist thread, which is the only writer of what it counts). Nothing of prometheus_client
runs per request; its own ``Histogram.labels(...).observe`` takes a lock and costs several
times more (``tests/unit/test_metrics.py`` measures both and prints the figures).

Invariants: counters only grow for the life of the process (a component that replaces an
object it counts in, such as a node reopening its replica, keeps the counts in an object that
lives as long as the process); label values come from bounded sets (operations, HTTP statuses,
error codes, decision kinds, member ids of a group), so an exposition stays small.

``MetricsServer`` serves ``GET /metrics`` (and ``HEAD``) of a registry over HTTP/1.1 on the
process's own event loop with the rm's small HTTP server: no thread, no extra dependency. A
node and a meta start one when given ``--metrics-listen HOST:PORT``; the rm answers
``/metrics`` on its API port.
"""

from __future__ import annotations

import argparse
import bisect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import rangekv
from rangekv.http_server import HttpServer, Request, Response

log = logging.getLogger("rangekv.metrics")

# Upper bounds of latency buckets, in seconds (the +Inf bucket is implicit): 0.5 ms .. 10 s.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Upper bounds of count buckets (entries per fsync, per apply batch): powers of two to 4096.
COUNT_BUCKETS = tuple(float(1 << i) for i in range(13))
# Upper bounds of byte buckets (bytes per fsync): 256 B .. 64 MiB, by factors of four.
BYTES_BUCKETS = tuple(float(256 << (2 * i)) for i in range(10))
METRICS_SHUTDOWN_TIMEOUT_S = 1.0
# The text format ``generate_latest`` writes; every rangekv name is a legacy (ASCII) name, so
# the classic version applies, which every Prometheus release reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """A cumulative histogram recorded cheaply, exposed by ``histogram_family`` at scrape time."""

    __slots__ = ("bounds", "counts", "n", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        assert list(bounds) == sorted(set(bounds)) and bounds, bounds
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is the +Inf bucket
        self.sum = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=")
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, ``+Inf`` last, as the exposition wants them.

        ``+Inf`` (and so ``_count``) is the sum of the buckets, not ``n``: a scrape that runs
        while another thread is in ``observe`` (the WAL's persist thread) still sees buckets
        that never exceed the count; only ``_sum`` may miss that one observation."""
        out: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            out.append((floatToGoString(bound), cumulative))
        out.append(("+Inf", cumulative + self.counts[-1]))
        return out


def histogram_family(
    name: str, documentation: str, labels: Sequence[str],
    items: Iterable[tuple[Sequence[str], Histogram]],
) -> HistogramMetricFamily:
    """One histogram metric family from (label values, histogram) pairs."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, hist in items:
        family.add_metric(list(values), hist.buckets(), hist.sum)
    return family


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class FuncCollector(Collector):
    """A collector whose ``collect`` is a function (the component's scrape-time view)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def new_registry(component: str, process_id: int | str) -> CollectorRegistry:
    """A registry with the process metrics and ``rangekv_build_info`` of one process."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    info = GaugeMetricFamily(
        "rangekv_build_info", "Which rangekv process this is (always 1).",
        labels=["version", "component", "id"])
    info.add_metric([rangekv.__version__, component, str(process_id)], 1)
    registry.register(FuncCollector(lambda: [info]))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition (format 0.0.4) of everything in ``registry``."""
    return _generate_latest(registry)


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` for argparse (``--metrics-listen``); an empty host means every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _text(body: str, status: int) -> Response:
    return Response(body.encode(), status, "text/plain; charset=utf-8")


class MetricsServer:
    """``GET /metrics`` of one registry, served on the running event loop."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._http = HttpServer(self._dispatch,
                                lambda status, message: _text(message + "\n", status))
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.address = await self._http.start(host, port)
        return self.address

    async def close(self) -> None:
        await self._http.close(METRICS_SHUTDOWN_TIMEOUT_S)

    async def _dispatch(self, request: Request) -> Response:
        path = request.raw_path.partition("?")[0]
        if path != "/metrics":
            return _text("only /metrics is served here\n", 404)
        if request.method not in ("GET", "HEAD"):
            response = _text("use GET\n", 405)
            response.headers = {"Allow": "GET, HEAD"}
            return response
        try:
            body = render(self.registry)
        except Exception:  # a bug in a collector must not take the process down
            log.exception("rendering /metrics failed")
            return _text("internal error rendering metrics\n", 500)
        return Response(body, 200, CONTENT_TYPE)
