"""Every process's /metrics on a real local cluster (etcd, two metas, 5 nodes, 2 rms, HAProxy).

Scrapes every node, meta and rm and HAProxy's endpoint (which forwards to one rm), does puts,
and checks that the figures moved: requests counted by the rms, fsyncs and follower lag on the
leader, heartbeats and elections on the active meta; then kills the leader and checks that a
new leader counts its leader change and the meta its election.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import rangekv
from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.testing import scrape
from rangekv.testing.load import wait_for_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

READY_TIMEOUT_S = 90.0
WAIT_S = 30.0
TABLE = "metrics"
PUTS = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("metrics") / "data", READY_TIMEOUT_S) as c:
        yield c


def group(c: LocalCluster) -> dict[str, Any]:
    r = httpx.get(f"{c.endpoint}/v1/cluster", timeout=5, trust_env=False)
    r.raise_for_status()
    return r.json()["groups"][0]


def scrape_all(c: LocalCluster, skip: tuple[str, ...] = ()) -> dict[str, scrape.Samples]:
    return {name: scrape.scrape(url) for name, url in c.metrics_urls.items() if name not in skip}


def test_every_process_serves_metrics_that_follow_the_cluster(cluster: LocalCluster) -> None:
    c = cluster
    with c.logs_on_failure(lines=40):
        before = scrape_all(c)
        for name, samples in before.items():
            component = "rm" if name == "lb" else name.partition("-")[0]
            ids = [dict(labels)["id"] for (n, labels) in samples if n == "rangekv_build_info"]
            assert len(ids) == 1, (name, ids)
            assert scrape.value(samples, "rangekv_build_info", version=rangekv.__version__,
                                component=component, id=ids[0]) == 1, name
            if name != "lb":
                assert ids[0] == name.partition("-")[2], name
            assert scrape.total(samples, "process_resident_memory_bytes") > 0, name

        with httpx.Client(base_url=c.endpoint, timeout=15, trust_env=False) as http:
            assert http.put(f"/v1/tables/{TABLE}").status_code == 201
            for i in range(PUTS):
                assert http.put(f"/v1/tables/{TABLE}/keys/k{i}", content=b"v").status_code == 200

        g = group(c)
        leader = g["leader"]
        members = [m["id"] for m in g["members"]]
        after = scrape_all(c)

        def puts(samples: scrape.Samples) -> float:
            return scrape.value(samples, "rangekv_rm_requests_total", op="put", status="200")

        # every put went through HAProxy to one of the two rms, which counted it
        assert sum(puts(after[f"rm-{i}"]) - puts(before[f"rm-{i}"]) for i in (1, 2)) == PUTS
        assert scrape.value(after["lb"], "rangekv_rm_ready") == 1
        assert scrape.total(after["rm-1"], "rangekv_rm_request_duration_seconds_count",
                            op="put") == puts(after["rm-1"])

        lead = after[f"node-{leader}"]
        assert scrape.value(lead, "rangekv_node_role", role="leader") == 1
        assert scrape.value(lead, "rangekv_node_epoch") == g["epoch"]
        assert (scrape.value(lead, "rangekv_node_wal_fsyncs_total")
                > scrape.value(before[f"node-{leader}"], "rangekv_node_wal_fsyncs_total"))
        assert scrape.value(lead, "rangekv_node_wal_fsync_batch_entries_sum") > PUTS
        assert scrape.value(lead, "rangekv_node_proposals_total", result="ok") >= PUTS
        followers = sorted(str(m) for m in members if m != leader)
        lagging = sorted(dict(labels)["follower"] for (n, labels) in lead
                         if n == "rangekv_node_follower_lag_entries")
        assert lagging == followers
        for m in members:
            if m != leader:
                assert scrape.value(after[f"node-{m}"], "rangekv_node_role", role="follower") == 1
                assert not [k for k in after[f"node-{m}"]
                            if k[0] == "rangekv_node_follower_lag_entries"]

        metas = [after["meta-1"], after["meta-2"]]
        assert sorted(scrape.value(m, "rangekv_meta_active") for m in metas) == [0, 1]
        active = next(m for m in metas if scrape.value(m, "rangekv_meta_active") == 1)
        assert scrape.value(active, "rangekv_meta_heartbeats_total") > 0
        assert scrape.value(active, "rangekv_meta_groups") == 1
        assert scrape.value(active, "rangekv_meta_nodes", state="member") == 3
        assert scrape.value(active, "rangekv_meta_nodes", state="spare") == 2

        # the leader dies: a follower takes over and counts it; the meta counts its election
        def changes(samples: dict[str, scrape.Samples]) -> float:
            return sum(scrape.value(samples[f"node-{m}"], "rangekv_node_leader_changes_total")
                       for m in members if m != leader)

        def elections() -> float:
            return sum(scrape.value(scrape.scrape(c.metrics_urls[f"meta-{i}"]),
                                    "rangekv_meta_leader_elections_total") for i in (1, 2))

        elections_before = elections()
        c.kill(f"node-{leader}")

        def new_leader() -> dict[str, Any] | None:
            now = group(c)
            return now if now["epoch"] > g["epoch"] and now["leader"] not in (None, leader) \
                else None

        g1 = wait_for_cluster(new_leader, WAIT_S, "a new leader")
        wait_for_cluster(
            lambda: changes(scrape_all(c, skip=(f"node-{leader}",))) > changes(after), WAIT_S,
            "a follower to count becoming leader")
        new = scrape.scrape(c.metrics_urls[f"node-{g1['leader']}"])
        assert scrape.value(new, "rangekv_node_role", role="leader") == 1
        assert scrape.value(new, "rangekv_node_epoch_changes_total") >= 1
        assert elections() > elections_before
        with httpx.Client(base_url=c.endpoint, timeout=15, trust_env=False) as http:
            wait_for_cluster(lambda: http.put(f"/v1/tables/{TABLE}/keys/after",
                                              content=b"v").status_code == 200,
                             WAIT_S, "a put after failover")

