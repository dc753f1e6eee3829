"""The dashboard at ``/ui/`` in a real headless Chromium, against a real cluster.

One cluster (etcd, two metas, 8 nodes in two groups and two spares, 2 rms, HAProxy) with two
tables holding keys, one of them split across both groups. Chromium (Debian's ``chromium``,
which ``scripts/bootstrap test`` installs) loads ``http://<HAProxy>/ui/`` and the test drives
it over the DevTools protocol (a websocket, aiohttp's client) so that one page stays open
throughout:

* the page shows what the cluster says: every group with the leader its nodes report (the
  same as the metadata's), the tables with their ranges, groups and sizes, the spare nodes,
  the controller's decisions; a screenshot is saved in the test's tmp dir (and to
  ``docs/dashboard.png`` with ``RANGEKV_UPDATE_SCREENSHOT=1``);
* it refreshes by itself: a table created after the page loaded appears, and so does a range
  split at a key that looks like HTML (shown as text: no element of it gets into the page);
  after ``kill -9`` of a group's leader the page shows the node unreachable and the new
  leader; all with no reload;
* a poll that fails shows the error banner (the browser taken offline), and the next good poll
  clears it.

Skipped, with the reason, only when no ``chromium`` is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from rangekv.cluster.local import LocalCluster, nodes_for, running_cluster
from rangekv.testing.browser import CHROMIUM, DevTools, chromium, with_page
from rangekv.testing.load import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap "
                                                "test installs it)"),
]

READY_TIMEOUT_S = 90.0
FAILOVER_WAIT_S = 30.0
MARKUP_KEY = 'order-030<img id="pwn" src="x"><script>document.title="pwn"</script>'
SCREENSHOT_DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("dashboard") / "data"
    with running_cluster(data, READY_TIMEOUT_S, nodes=nodes_for(2), groups=2) as c:
        yield c


def live_status(c: LocalCluster) -> dict[str, Any]:
    r = httpx.get(f"{c.endpoint}/v1/cluster/status", timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_dashboard_shows_the_cluster_and_follows_it(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    c = cluster
    url = f"{c.endpoint}/ui/"
    with c.logs_on_failure(lines=40), httpx.Client(base_url=c.endpoint, timeout=15,
                                                     trust_env=False) as http:
        for table, n in (("orders", 40), ("users", 12)):
            assert http.put(f"/v1/tables/{table}").status_code == 201
            for i in range(n):
                key = f"order-{i:03d}" if table == "orders" else f"user/{i}"
                r = http.put(f"/v1/tables/{table}/keys/{key}", content=f"{table} {i} " * 8)
                assert r.status_code == 200, r.text
        r = http.post("/v1/tables/orders/split/order-020", params={"to": "auto"})
        assert r.status_code == 200, r.text
        # the cluster's own answer: every group led, the leaders as the metadata records them,
        # and each range's size counted by its leader
        st = wait_for(lambda: (s := live_status(c))["summary"]["groups_ok"] == 2 and all(
            r["keys"] is not None for t in s["tables"] for r in t["ranges"]) and s,
            READY_TIMEOUT_S, "both groups led and every range counted")
        recorded = {g["id"]: g["leader"] for g in http.get("/v1/cluster").json()["groups"]}
        leaders = {g["id"]: g["leader"] for g in st["groups"]}
        assert leaders == recorded, (leaders, recorded)
        spares = {n["id"]: n["address"] for n in st["nodes"] if n["state"] == "spare"}
        assert len(spares) == 2, st["nodes"]
        for i in range(20):  # some load for the screenshot (rates decay over ~10 s)
            http.get(f"/v1/tables/users/keys/user/{i % 12}")
            http.put(f"/v1/tables/orders/keys/order-{i:03d}", content=b"again")

        async def drive(page: DevTools) -> None:
            shown = await page.until("both groups with their leaders and both tables", lambda s:
                                     {g["id"]: g["leader"] for g in s["groups"]}
                                     == {str(k): str(v) for k, v in leaders.items()}
                                     and {t["name"] for t in s["tables"]} == {"orders", "users"}
                                     and all(k for t in s["tables"] for k in t["keys"])
                                     # the gets below count as load on the range they read
                                     and any(float(r or 0) > 0 for t in s["tables"]
                                             if t["name"] == "users" for r in t["rps"]))
            for g in shown["groups"]:
                assert f"Group {g['id']}" in g["text"] and "ok" in g["health"].split(), g
                assert f"leader node {leaders[int(g['id'])]}" in g["text"], g["text"]
            orders = next(t for t in shown["tables"] if t["name"] == "orders")
            assert '"order-020"' in orders["text"] and "2 ranges" in orders["text"], orders
            assert {o["id"]: o["state"] for o in shown["others"]} == {
                str(i): "spare" for i in spares}
            for o in shown["others"]:
                assert spares[int(o["id"])] in o["text"], o
            assert "move" in shown["decisions"] and "order-020" in shown["decisions"]
            assert shown["banner"] is None and shown["refreshed"].startswith("refreshed")
            shot = tmp_path / "dashboard.png"
            await page.screenshot(shot)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("RANGEKV_UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(shot, SCREENSHOT_DOC)

            # refreshing by itself: a new table appears without a reload
            assert (await asyncio.to_thread(http.put, "/v1/tables/events")).status_code == 201
            await page.until("the table created after the page loaded",
                             lambda s: "events" in {t["name"] for t in s["tables"]})
            # keys are shown as text, never as markup: a split at a key that looks like HTML
            r = await asyncio.to_thread(http.post, f"/v1/tables/orders/split/{quote(MARKUP_KEY)}")
            assert r.status_code == 200, r.text
            state = await page.until("the range starting at a key that looks like markup",
                                     lambda s: any(json.dumps(MARKUP_KEY) in t["text"]
                                                   for t in s["tables"]))
            assert state["injected"] == 0, state

            # ... and a failover: the killed leader unreachable, another member leading
            old = leaders[1]
            assert c.kill(f"node-{old}")
            state = await page.until(
                "group 1 with a new leader and the old one unreachable",
                lambda s: any(g["id"] == "1" and g["leader"] not in ("", str(old))
                              and str(old) in g["down"] for g in s["groups"]),
                FAILOVER_WAIT_S)
            (g1,) = (g for g in state["groups"] if g["id"] == "1")
            assert "degraded" in g1["health"], g1
            await page.screenshot(tmp_path / "dashboard-failover.png")

            # a failed poll shows the banner; the next good one clears it
            await page.call("Network.enable")
            await page.call("Network.emulateNetworkConditions", offline=True, latency=0,
                            downloadThroughput=-1, uploadThroughput=-1)
            state = await page.until("the error banner", lambda s: s["banner"] is not None)
            assert "Cannot refresh" in state["banner"], state["banner"]
            await page.call("Network.emulateNetworkConditions", offline=False, latency=0,
                            downloadThroughput=-1, uploadThroughput=-1)
            await page.until("the banner cleared", lambda s: s["banner"] is None)

        with chromium(tmp_path / "profile") as port:
            asyncio.run(with_page(port, url, drive))
        c.start()  # the killed node comes back (the module's cluster is stopped next anyway)
