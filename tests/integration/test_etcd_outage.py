"""Reads and writes go on through HAProxy while etcd is out of reach.

With etcd paused (SIGSTOP: it holds its connections and answers nothing, as a machine that hangs),
every rm stops being ready (``/healthz`` 503: it cannot follow the routing map), and HAProxy,
finding no ready rm, sends requests to the rms that still hold a map (``/livez``). Those serve
existing tables from it: the test checks puts and gets through HAProxy during the outage, that
table creation fails with a JSON error (it needs the meta, which needs etcd), and that
everything is ready again, with every acknowledged write, once etcd is resumed.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from rangekv.cluster.local import running_cluster
from rangekv.testing.load import wait_for_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

READY_TIMEOUT_S = 90.0
WAIT_S = 30.0
HAPROXY_DOWN_AFTER_S = 1.0  # haproxy_config: check inter 500ms fall 2


def test_reads_and_writes_go_on_while_etcd_is_down(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "data", READY_TIMEOUT_S, nodes=3, groups=1) as c, \
            httpx.Client(base_url=c.endpoint, timeout=10, trust_env=False) as http:
        assert http.put("/v1/tables/kv").status_code == 201
        acked: dict[str, str] = {}
        for i in range(10):
            r = http.put(f"/v1/tables/kv/keys/before-{i}", content=f"v{i}")
            assert r.status_code == 200, r.text
            acked[f"before-{i}"] = f"v{i}"

        c.pause("etcd")
        try:
            def no_rm_ready() -> bool:
                return all(httpx.get(f"{u}/healthz", timeout=5, trust_env=False).status_code
                           == 503 for u in c.rm_endpoints)

            wait_for_cluster(no_rm_ready, WAIT_S, "every rm to stop being ready")
            for u in c.rm_endpoints:
                live = httpx.get(f"{u}/livez", timeout=5, trust_env=False)
                assert live.status_code == 200 and live.json()["ready"] is False, live.text

            # HAProxy notices the rms' /healthz (500 ms checks, fall 2) and moves to the
            # backend of rms holding a map: the first put that succeeds shows it
            def put_during(i: int) -> bool:
                r = http.put(f"/v1/tables/kv/keys/during-{i}", content=f"d{i}")
                if r.status_code == 200:
                    acked[f"during-{i}"] = f"d{i}"
                    return True
                return False

            counter = iter(range(100_000))
            wait_for_cluster(lambda: put_during(next(counter)), WAIT_S,
                             "a put through HAProxy with etcd down")
            # and every one after it, for longer than HAProxy takes to see that no rm is ready
            # (checks every 500 ms, down after 2 failures): it must never answer its own 503
            until = time.monotonic() + 3 * HAPROXY_DOWN_AFTER_S
            while time.monotonic() < until:
                i = next(counter)
                assert put_during(i), f"put during-{i} failed with etcd down"
            for key, value in acked.items():
                r = http.get(f"/v1/tables/kv/keys/{key}")
                assert (r.status_code, r.text) == (200, value), (key, r.status_code, r.text)

            # what needs the meta cannot be done: an error from an rm, in JSON (503, or 504
            # outcome_unknown if the meta's etcd write was sent before it stepped down: etcd
            # may still apply it once resumed)
            r = http.put("/v1/tables/new-during-outage")
            assert r.status_code in (503, 504), r.text
            assert r.json()["error"]["code"] in ("unavailable", "outcome_unknown"), r.text
        finally:
            c.resume("etcd")

        wait_for_cluster(lambda: all(httpx.get(f"{u}/healthz", timeout=5, trust_env=False)
                                     .status_code == 200 for u in c.rm_endpoints),
                         WAIT_S, "every rm to be ready again")
        for key, value in acked.items():
            r = http.get(f"/v1/tables/kv/keys/{key}")
            assert (r.status_code, r.text) == (200, value), (key, r.status_code, r.text)
