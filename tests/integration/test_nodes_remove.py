"""``rangekv nodes remove ID`` against real processes (issue 16, part 5).

One cluster (etcd, two metas, one group of three and two spares, two rms, HAProxy): a spare is
killed with ``kill -9`` for good, and the real CLI, through HAProxy, the rm and the active meta:

* refuses to remove a member (``node_in_use`` with its group) and a live spare
  (``node_in_use``, live), exit status 1, and removes nothing;
* removes the killed spare's record once its heartbeats have stopped: ``rangekv nodes`` no
  longer lists it, and the controller's decisions explain it (``node_removed``);
* and when that node is started again, it registers as a spare again, as a new node does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.testing.load import cluster_info
from rangekv.testing.load import wait_for_cluster as poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

READY_TIMEOUT_S = 90.0
SETTLE_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("nodes-remove") / "data"
    with running_cluster(data, READY_TIMEOUT_S, nodes=5) as c:
        yield c


def rangekv(c: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rangekv.cli.main", *args, "--endpoint",
                           c.endpoint, "--timeout", "15"], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def listed(c: LocalCluster) -> dict[int, dict[str, object]]:
    done = rangekv(c, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    return {int(n["id"]): n for n in json.loads(done.stdout)["nodes"]}


def test_a_killed_spare_is_removed_and_a_member_is_not(cluster: LocalCluster) -> None:
    c = cluster
    with c.logs_on_failure(lines=40):
        group = poll(lambda: next(iter(cluster_info(c.endpoint)["groups"]), None), SETTLE_S,
                     "a group")
        members = sorted(m["id"] for m in group["members"])
        spares = sorted(set(c.node_addresses) - set(members))
        assert len(spares) == 2, (members, spares)
        poll(lambda: set(listed(c)) == set(c.node_addresses) or None, SETTLE_S,
             "every node registered")

        refused = rangekv(c, "nodes", "remove", str(members[0]))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: node_in_use: node {members[0]} is a member "
                                         f"of group {group['id']}"), refused.stderr
        refused = rangekv(c, "nodes", "remove", str(spares[0]))
        assert refused.returncode == 1 and "is live" in refused.stderr, refused.stderr
        assert rangekv(c, "nodes", "remove", "999").stderr.startswith(
            "error: node_not_found: ")
        assert set(listed(c)) == set(c.node_addresses)  # nothing was removed

        victim = spares[-1]
        c.kill(f"node-{victim}")

        def removed() -> subprocess.CompletedProcess[str] | None:
            done = rangekv(c, "nodes", "remove", str(victim))
            if done.returncode == 1 and "is live" in done.stderr:
                return None  # its last heartbeat is not old enough yet
            return done

        done = poll(removed, SETTLE_S, f"node {victim}'s record to be removed")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"removed node {victim} ("), done.stdout
        nodes = listed(c)
        assert victim not in nodes and set(nodes) == set(c.node_addresses) - {victim}
        info = cluster_info(c.endpoint)
        assert [n["id"] for n in info["nodes"]] == sorted(nodes)
        [decision] = [d for d in info["decisions"] if d["kind"] == "node_removed"]
        assert decision["node"] == victim and decision["live"] is False
        assert sorted(m["id"] for m in info["groups"][0]["members"]) == members

        # started again, the node registers as a new spare would
        c.start()
        back = poll(lambda: listed(c).get(victim), SETTLE_S, f"node {victim} to register")
        assert back["state"] == "spare"


def test_the_data_dirs_are_private(cluster: LocalCluster) -> None:
    """``rangekv up``'s data dir and each process's dir in it: 0700 (issue 16, part 5)."""
    data = Path(cluster.data_dir)
    for d in [data, data / "logs", data / "run", data / "etcd", *data.glob("node-*")]:
        assert d.stat().st_mode & 0o777 == 0o700, d
