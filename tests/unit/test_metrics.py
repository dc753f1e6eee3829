"""The /metrics collectors of every process, read back through prometheus_client's parser.

Each test makes the thing happen for real (WAL appends and syncs, proposals through a group
of three real replicas, an election, a meta's counters) and checks that the exposition moved.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ClientHistogram

import rangekv
from rangekv import metrics, model, sequencer
from rangekv.metadata.etcd import EtcdClient
from rangekv.metadata.service import MetaConfig, MetaService
from rangekv.node.metrics import NodeMetrics
from rangekv.replication.driver import Replica
from rangekv.request_manager.metrics import Metrics
from rangekv.storage.wal import WAL
from rangekv.testing import scrape
from rangekv.testing.replicas import LoopbackGroup, wait_until

# -- the shared histogram -------------------------------------------------------------------


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_matches_prometheus_clients_own(values: list[float]) -> None:
    """Oracle: prometheus_client's Histogram with the same buckets exposes the same samples."""
    ours = metrics.Histogram(metrics.LATENCY_BUCKETS_S)
    registry = CollectorRegistry()
    theirs = ClientHistogram("h", "h", buckets=metrics.LATENCY_BUCKETS_S, registry=registry)
    for v in values:
        ours.observe(v)
        theirs.observe(v)
    mine = CollectorRegistry()
    mine.register(metrics.FuncCollector(
        lambda: [metrics.histogram_family("h", "h", [], [([], ours)])]))
    want = {k: v for k, v in scrape.parse(metrics.render(registry).decode()).items()
            if not k[0].endswith("_created")}
    got = scrape.parse(metrics.render(mine).decode())
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_registries_are_per_process_object_and_name_the_process() -> None:
    a, b = Metrics(1), Metrics(2)
    a.observe("get", 200, 0.001)
    sa = scrape.parse(a.render(ready=True, revision=3))
    sb = scrape.parse(b.render(ready=False, revision=0))
    assert scrape.value(sa, "rangekv_rm_requests_total", op="get", status="200") == 1
    assert scrape.value(sb, "rangekv_rm_requests_total", op="get", status="200") == 0
    assert scrape.value(sb, "rangekv_build_info", version=rangekv.__version__, component="rm",
                        id="2") == 1
    assert scrape.total(sa, "process_cpu_seconds_total") > 0
    assert scrape.value(sa, "rangekv_rm_ready") == 1 and scrape.value(sb, "rangekv_rm_ready") == 0


def test_rm_observe_costs_about_a_microsecond() -> None:
    """Not a timing assertion: prints what one request's recording costs, ours against
    prometheus_client's own labelled children (cached per (op, status), as one would)."""
    n = 200_000
    m = Metrics(1)
    ops = [("get", 200), ("put", 200), ("get", 404), ("put", 412)]
    durations = [random.Random(7).random() / 100 for _ in range(1024)]
    t0 = time.perf_counter()
    for i in range(n):
        op, status = ops[i & 3]
        m.observe(op, status, durations[i & 1023])
    ours_us = (time.perf_counter() - t0) / n * 1e6

    registry = CollectorRegistry()
    counter = ClientHistogram("x_seconds", "x", ["op"], buckets=metrics.LATENCY_BUCKETS_S,
                              registry=registry)
    from prometheus_client import Counter

    requests = Counter("x_requests", "x", ["op", "status"], registry=registry)
    children = {(op, st_): (requests.labels(op, str(st_)), counter.labels(op))
                for op, st_ in ops}
    t0 = time.perf_counter()
    for i in range(n):
        c, h = children[ops[i & 3]]
        c.inc()
        h.observe(durations[i & 1023])
    theirs_us = (time.perf_counter() - t0) / n * 1e6
    print(f"\nper-request metrics cost: rangekv.Metrics.observe {ours_us:.2f} us; "
          f"prometheus_client cached children {theirs_us:.2f} us")
    assert sum(m.requests.values()) == n


# -- WAL syncs ------------------------------------------------------------------------------


def test_wal_reports_each_fdatasync_with_its_entries_and_bytes(tmp_path: Path) -> None:
    wal = WAL.open(tmp_path / "wal")
    wal.sync()  # the first sync after open (nothing appended: nothing reported below)
    node = NodeMetrics(1, lambda: (None, None, None))
    wal.on_sync = node.on_sync
    wal.sync()  # nothing written since: no fdatasync, nothing reported
    batches = [3, 1, 17]
    index = 0
    for size in batches:
        wal.append([(1, index + j + 1, b"x" * (10 + j)) for j in range(size)])
        index += size
        wal.sync()
    samples = scrape.parse(metrics.render(node.registry).decode())
    assert scrape.value(samples, "rangekv_node_wal_fsyncs_total") == len(batches)
    assert scrape.value(samples, "rangekv_node_wal_fsync_batch_entries_sum") == sum(batches)
    assert scrape.value(samples, "rangekv_node_wal_fsync_batch_entries_count") == len(batches)
    assert scrape.value(samples, "rangekv_node_wal_fsync_batch_bytes_sum") == wal.bytes_written
    assert scrape.value(samples, "rangekv_node_wal_fsync_batch_entries_bucket", le="1.0") == 1
    assert scrape.value(samples, "rangekv_node_wal_fsync_batch_entries_bucket", le="16.0") == 2
    assert scrape.value(samples, "rangekv_node_wal_fsync_duration_seconds_count") == 3
    assert scrape.value(samples, "rangekv_node_wal_fsync_duration_seconds_sum") > 0
    # a replica-less node is idle and in no group
    assert scrape.value(samples, "rangekv_node_role", role="idle") == 1
    assert scrape.value(samples, "rangekv_node_group") == 0
    assert scrape.value(samples, "rangekv_build_info", version=rangekv.__version__,
                        component="node", id="1") == 1
    wal.close()


# -- a group of three real replicas ---------------------------------------------------------


class Group(LoopbackGroup):
    """Three replicas (real WAL and RocksDB) in one loop, each with its node's metrics."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.metrics: dict[int, NodeMetrics] = {}

    async def open(self, node_id: int, **options: Any) -> Replica:
        node = self.metrics[node_id] = NodeMetrics(
            node_id, lambda: (self.replicas.get(node_id), 1, None))
        replica = self.new_replica(node_id, observer=node, **options)
        replica.wal.on_sync = node.on_sync
        node.opened(replica.core.promised)
        return await self.start(replica)

    def scrape(self, node_id: int) -> scrape.Samples:
        return scrape.parse(metrics.render(self.metrics[node_id].registry).decode())


def put(key: bytes, n: int) -> dict[str, object]:
    return {"op": "put", "t": 7, "k": key, "v": b"v", "s": sequencer.make(n, 0, 9), "c": None}


def test_node_metrics_follow_proposals_lag_and_leader_changes(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        for i in g.ids:
            await g.open(i)
        try:
            leader = await g.elect(1, epoch=1)
            await leader.propose({"op": "add_range", "t": 7, "start": b"", "end": None,
                                  "s": sequencer.ZERO})
            await asyncio.gather(*[leader.propose(put(b"k%d" % i, 100 + i)) for i in range(20)])
            with pytest.raises(rangekv.errors.PreconditionFailed):
                await leader.propose({**put(b"k1", 200), "c": sequencer.make(5, 0, 9)})
            s = g.scrape(1)
            assert scrape.value(s, "rangekv_node_proposals_total", result="ok") == 21
            assert scrape.value(s, "rangekv_node_proposals_total",
                                result="precondition_failed") == 1
            assert scrape.value(s, "rangekv_node_leader_changes_total") == 1
            assert scrape.value(s, "rangekv_node_epoch_changes_total") == 1
            assert scrape.value(s, "rangekv_node_role", role="leader") == 1
            assert scrape.value(s, "rangekv_node_epoch") == 1
            last = leader.core.last_index
            assert scrape.value(s, "rangekv_node_last_index") == last
            # every entry in the log went through exactly one fdatasync batch
            assert scrape.value(s, "rangekv_node_wal_fsync_batch_entries_sum") == last
            assert scrape.value(s, "rangekv_node_wal_fsyncs_total") >= 1
            assert scrape.value(s, "rangekv_node_apply_batch_entries_sum") == leader.core.applied
            # the followers' progress: both caught up once they answered
            await wait_until(lambda: all(p.match == leader.core.last_index
                                         for p in leader.core.progress.values()), "caught up")
            s = g.scrape(1)
            for follower in ("2", "3"):
                assert scrape.value(s, "rangekv_node_follower_lag_entries",
                                    follower=follower) == 0
                assert scrape.value(s, "rangekv_node_follower_match_index",
                                    follower=follower) == leader.core.last_index
            # a follower cut off falls behind, and only it
            g.cut.add(3)
            await asyncio.gather(*[leader.propose(put(b"j%d" % i, 300 + i)) for i in range(5)])
            s = g.scrape(1)
            assert scrape.value(s, "rangekv_node_follower_lag_entries", follower="3") >= 5
            assert scrape.value(s, "rangekv_node_follower_lag_entries", follower="2") == 0
            follower = g.scrape(2)
            assert scrape.value(follower, "rangekv_node_role", role="follower") == 1
            assert scrape.total(follower, "rangekv_node_follower_lag_entries") == 0
            assert not [k for k in follower if k[0] == "rangekv_node_follower_lag_entries"]
            # node 2 takes over: it counts a leader change, node 1 a second epoch change
            g.cut.clear()
            await g.elect(2, epoch=2)
            s2 = g.scrape(2)
            assert scrape.value(s2, "rangekv_node_leader_changes_total") == 1
            assert scrape.value(s2, "rangekv_node_epoch_changes_total") == 2
            await wait_until(lambda: g.replicas[1].core.promised == 2, "node 1 hears of epoch 2")
            await wait_until(
                lambda: scrape.value(g.scrape(1), "rangekv_node_epoch_changes_total") == 2,
                "node 1 persists epoch 2")
            assert scrape.value(g.scrape(1), "rangekv_node_role", role="follower") == 1
        finally:
            await g.close_all()

    asyncio.run(scenario())


# -- the meta ---------------------------------------------------------------------------------


def test_meta_metrics_count_decisions_and_read_the_view() -> None:
    """A meta that was never started (no etcd needed): its counters and view, exposed."""

    async def scenario() -> None:
        etcd = EtcdClient(["http://127.0.0.1:1"], timeout_s=0.1)
        service = MetaService(MetaConfig(id=4, listen="127.0.0.1:0",
                                         etcd=("http://127.0.0.1:1",)), etcd=etcd)
        try:
            m = service.metrics
            for kind in ("move", "move", "move_copied", "replace_started", "joint_cleared",
                         "split"):
                m.decisions[kind] += 1
            m.elections += 2
            m.heartbeats += 5
            service.store.txn_conflicts += 1
            for node_id, state in ((1, model.NODE_MEMBER), (2, model.NODE_MEMBER),
                                   (3, model.NODE_SPARE), (4, model.NODE_FLAGGED)):
                service.view.nodes[node_id] = model.Node(node_id, f"127.0.0.1:{9000 + node_id}",
                                                         state=state)
            s = scrape.parse(metrics.render(m.registry).decode())
            assert scrape.value(s, "rangekv_meta_moves_started_total") == 2
            assert scrape.value(s, "rangekv_meta_moves_finished_total", outcome="copied") == 1
            assert scrape.value(s, "rangekv_meta_moves_finished_total", outcome="abandoned") == 0
            assert scrape.value(s, "rangekv_meta_replacements_started_total") == 1
            assert scrape.value(s, "rangekv_meta_replacements_finished_total",
                                outcome="completed") == 1
            assert scrape.value(s, "rangekv_meta_decisions_total", kind="split") == 1
            assert scrape.value(s, "rangekv_meta_leader_elections_total") == 2
            assert scrape.value(s, "rangekv_meta_heartbeats_total") == 5
            assert scrape.value(s, "rangekv_meta_etcd_txn_conflicts_total") == 1
            assert scrape.value(s, "rangekv_meta_nodes", state="member") == 2
            assert scrape.value(s, "rangekv_meta_nodes", state="spare") == 1
            assert scrape.value(s, "rangekv_meta_nodes", state="flagged") == 1
            assert scrape.value(s, "rangekv_meta_nodes", state="joining") == 0
            assert scrape.value(s, "rangekv_meta_active") == 0
            assert scrape.value(s, "rangekv_build_info", version=rangekv.__version__,
                                component="meta", id="4") == 1
        finally:
            await etcd.close()

    asyncio.run(scenario())


# -- the HTTP server ------------------------------------------------------------------------


def test_metrics_server_serves_get_and_head_only_on_metrics() -> None:
    async def scenario() -> None:
        m = Metrics(9)
        server = metrics.MetricsServer(m.registry)
        host, port = await server.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as c:
                resp = await c.get("/metrics")
                assert resp.status_code == 200
                assert resp.headers["content-type"] == metrics.CONTENT_TYPE
                assert scrape.value(scrape.parse(resp.text), "rangekv_build_info",
                                    version=rangekv.__version__, component="rm", id="9") == 1
                head = await c.head("/metrics")
                assert head.status_code == 200 and head.content == b""
                assert (await c.get("/other")).status_code == 404
                post = await c.post("/metrics")
                assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        finally:
            await server.close()

    asyncio.run(scenario())


def test_listen_address_is_checked() -> None:
    assert metrics.listen_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert metrics.listen_address(":9100") == ("0.0.0.0", 9100)
    assert metrics.listen_address("[::1]:9100") == ("::1", 9100)
    import argparse

    for bad in ("9100", "host:", "host:99999", "host:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            metrics.listen_address(bad)
