"""Automatic splits with real processes: low thresholds (meta flags), a read+write load on one
table of a cluster of two groups and five spares. The table splits by itself and its parts
move to other groups, a new group is formed from spares when the others have no room, and no
acknowledged write is lost; every decision is logged with its reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.testing.load import Writers, check_all_acked, cluster_info, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("autosplit") / "data"
    meta_flags = ("--split-ops", "60", "--split-bytes", "200000", "--split-cooldown-s", "2",
                  "--group-ranges-max", "2")
    with running_cluster(data, 90, nodes=11, groups=2, extra_args={"meta": meta_flags}) as c:
        yield c


def test_a_busy_table_splits_over_three_groups_and_loses_nothing(cluster: LocalCluster) -> None:
    c = cluster
    with c.logs_on_failure(lines=80), httpx.Client(base_url=c.endpoint, timeout=15,
                                                   trust_env=False) as http:
        assert http.put("/v1/tables/hot").status_code == 201
        stop = threading.Event()
        reads = {"ok": 0, "bad": 0}

        def reader() -> None:
            with httpx.Client(base_url=c.endpoint, timeout=15, trust_env=False) as h:
                i = 0
                while not stop.is_set():
                    r = h.get(f"/v1/tables/hot/keys/r-w00-{i % 200:06d}")
                    reads["ok" if r.status_code in (200, 404) else "bad"] += 1
                    i += 1

        def spread() -> tuple[int, int]:
            mine = [r for r in cluster_info(c.endpoint)["ranges"] if r["table"] == "hot"]
            return len(mine), len({r["group"] for r in mine})

        threads = [threading.Thread(target=reader) for _ in range(2)]
        began = time.monotonic()
        with Writers(c.endpoint, "hot", 4, tag="r", timeout_s=15) as w1, \
                Writers(c.endpoint, "hot", 2, tag="x", timeout_s=15):
            for t in threads:
                t.start()
            try:
                wait_for(lambda: spread()[0] >= 4 and spread()[1] >= 3, 150,
                         "the table in at least 4 ranges over at least 3 groups")
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=30)
        took = time.monotonic() - began
        info = cluster_info(c.endpoint)
        mine = [(r["start"], r["end"], r["group"], r.get("state")) for r in info["ranges"]
                if r["table"] == "hot"]
        print(f"after {took:.0f} s: {len(mine)} ranges over {spread()[1]} groups: {mine}; "
              f"{len(info['groups'])} groups; reads {reads}")
        assert w1.errors == {}, w1.errors
        assert reads["bad"] == 0
        check_all_acked(c.endpoint, "hot", w1.acked)
        logs = "".join(p.read_text() for p in (c.data_dir / "logs").glob("meta-*.log"))
        assert "decision split:" in logs and "decision move_switch:" in logs
        assert "decision form_group:" in logs
        kinds = {d["kind"] for d in info["decisions"]}  # the decisions log in etcd, as served
        assert {"split", "move", "move_switch", "move_copied", "form_group"} <= kinds, kinds


def test_small_idle_neighbours_merge_back(cluster: LocalCluster) -> None:
    """Ranges split in place that stay small and idle are merged by the controller once the
    split is six cooldowns old; every key stays readable."""
    from rangekv.client import Client

    c = cluster
    with c.logs_on_failure(lines=60), Client(c.endpoint, timeout_s=15) as db:
        db.create_table("calm")
        for k in ("a", "h", "q", "z"):
            db.put("calm", k, f"v-{k}")
        db.split("calm", "h")
        db.split("calm", "q")
        assert len(db.ranges("calm")) == 3
        wait_for(lambda: len(db.ranges("calm")) == 1, 60, "the three ranges merged into one")
        assert [db.get("calm", k).value for k in ("a", "h", "q", "z")] == [  # type: ignore[union-attr]
            b"v-a", b"v-h", b"v-q", b"v-z"]
        logs = "".join(p.read_text() for p in (c.data_dir / "logs").glob("meta-*.log"))
        assert "decision merge:" in logs
