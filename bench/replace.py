"""Follower replacement: how long from ``kill -9`` of a follower to a caught-up spare in its place.

    .venv/bin/python bench/replace.py [--keys 20000] [--writers 8] [--grace-ms 2000] [--json F]

Starts a fresh local cluster (etcd, two metas with ``--replace-grace-ms``, one group of three
and two spares, two rms, HAProxy) in a temporary directory on free ports, loads ``--keys`` keys
with ``--writers`` threads, then keeps those writers running and kills a follower with
``kill -9``. It prints, from the kill: when the spare was recorded as a learner, when it was
swapped in (the new epoch), when the reconfiguration finished (``joint`` cleared), the time
after the grace, and how fast the learner caught up (entries per second, from its status).
Then it stops the writers and compares the new member's content hash with the leader's.

A program that prints figures, never a timed assertion; every process stops by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from rangekv import errors, wire
from rangekv.cluster.local import running_cluster

POLL_S = 0.02
TABLE = "bench"


def cluster(endpoint: str) -> dict[str, Any]:
    return httpx.get(f"{endpoint}/v1/cluster", timeout=5, trust_env=False).json()


def node_op(address: str, op: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        conn = wire.Connection(address, connect_timeout_s=1.0)
        try:
            return await conn.request(op, timeout_s=10.0)
        finally:
            await conn.close()

    return asyncio.run(ask())


class Load:
    def __init__(self, endpoint: str, writers: int) -> None:
        self.endpoint, self.acked, self.failed = endpoint, 0, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(writers)]

    def _run(self, w: int) -> None:
        with httpx.Client(base_url=self.endpoint, timeout=15, trust_env=False) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    ok = http.put(f"/v1/tables/{TABLE}/keys/w{w}-{i:08d}",
                                  content=b"x" * 100).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    self.acked += ok
                    self.failed += not ok

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--grace-ms", type=int, default=2_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    meta_args = ("--replace-grace-ms", str(args.grace_ms))
    with tempfile.TemporaryDirectory(prefix="rangekv-bench-replace-") as tmp, \
            running_cluster(Path(tmp) / "data", 90, nodes=5, meta_args=meta_args) as c:
        httpx.put(f"{c.endpoint}/v1/tables/{TABLE}", timeout=30, trust_env=False)
        load = Load(c.endpoint, args.writers)
        load.start()
        t_load = time.monotonic()
        while load.acked < args.keys:
            time.sleep(0.1)
        rate = load.acked / (time.monotonic() - t_load)
        g0 = cluster(c.endpoint)["groups"][0]
        victim = next(m["id"] for m in g0["members"] if m["id"] != g0["leader"])
        c.kill(f"node-{victim}")
        t0 = time.monotonic()
        learner = learner_at = swapped_at = done_at = None
        samples: list[tuple[float, int]] = []
        while done_at is None and time.monotonic() - t0 < 300:
            g = cluster(c.endpoint)["groups"][0]
            now = time.monotonic() - t0
            if learner is None and g["learners"]:
                learner, learner_at = g["learners"][0]["id"], now
            if learner is not None and swapped_at is None:
                with contextlib.suppress(OSError, errors.RangeKVError):  # a missed sample
                    samples.append((now, node_op(c.node_addresses[learner], "status")
                                    ["commit_index"]))
            if swapped_at is None and victim not in [m["id"] for m in g["members"]]:
                swapped_at = now
            if swapped_at is not None and not g["joint"]:
                done_at = now
            time.sleep(POLL_S)
        load.stop()
        assert learner is not None and learner_at is not None and swapped_at is not None
        moved = [s for s in samples if s[1] > 0]
        catch_up = ((moved[-1][1] - moved[0][1]) / (moved[-1][0] - moved[0][0])
                    if len(moved) > 1 and moved[-1][0] > moved[0][0] else float("nan"))
        leader = cluster(c.endpoint)["groups"][0]["leader"]
        deadline = time.monotonic() + 30
        while True:
            lead = node_op(c.node_addresses[leader], "content_hash")
            new = node_op(c.node_addresses[learner], "content_hash")
            if lead["applied"] == new["applied"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out = {
            "keys_before_kill": args.keys, "write_rate_per_s": round(rate),
            "grace_s": args.grace_ms / 1000, "learner_s": round(learner_at, 2),
            "swapped_s": round(swapped_at, 2), "joint_cleared_s": round(done_at or -1, 2),
            "after_grace_s": round(swapped_at - args.grace_ms / 1000, 2),
            "learner_catch_up_entries_per_s": round(catch_up),
            "applied": lead["applied"], "hash_equal": lead["hash"] == new["hash"],
            "writes_acked": load.acked, "writes_failed": load.failed,
        }
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
