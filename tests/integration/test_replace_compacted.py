"""Replacing a failed follower once the group's log has been compacted (issue 16, failure 1).

Every earlier replacement test used less data than one compaction (10,000 entries by default),
so the learner always caught up by ordinary appends from index 1. Past a compaction the only
way to catch up is a snapshot, and the leader could not send one to a learner: it looked the
peer up among the members only ("node N is not a member of this group", every 5 s, forever).

A real cluster (etcd, two metas with a 2 s replacement grace, one group of three plus two
spares, two rms, HAProxy) at the size that shows it:

1. ``rangekv load --batch 1`` puts 15,000 keys (the real CLI, through HAProxy), a log entry
   each: the leader's log is compacted (its first index is above 1);
2. a follower is killed for good: the lowest spare joins as a learner, catches up by a
   snapshot (it installed one) and is swapped in;
3. a second original member is killed: the leader and the replacement, two of three, still
   serve every key with its value (a full listing, page by page, compared with what was
   loaded), and take writes.

Then the same after ``rangekv backup`` and ``rangekv restore`` of that cluster into a new data
dir: a restored node's log starts at the backup's checkpoint, so any new member needs a
snapshot at once.

Every wait polls with a deadline; the figures measured are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rangekv.cluster.local import LocalCluster, find_free_base_port
from rangekv.testing.load import cluster_info, member_ids, only_group, request, serving_group
from rangekv.testing.load import wait_for_cluster as poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEYS = 15_000  # more than one compaction (COMPACT_ENTRIES_DEFAULT = 10,000)
TABLE = "big"
GRACE_S = 2.0
READY_TIMEOUT_S = 120.0
REPLACE_WITHIN_S = 90.0  # a snapshot of 15,000 keys on a loaded 2-core machine, with margin
SETTLE_S = 60.0
CLI_TIMEOUT_S = 300.0
META_ARGS = ("--replace-grace-ms", str(int(GRACE_S * 1000)))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rangekv.cli.main", *args], text=True,
                          capture_output=True, timeout=CLI_TIMEOUT_S, check=False,
                          stdin=subprocess.DEVNULL)


def the_group(c: LocalCluster) -> dict[str, Any]:
    return only_group(c.endpoint)


def node_request(c: LocalCluster, node: int, op: str) -> dict[str, Any]:
    return request(c.node_addresses[node], op)


def serving(c: LocalCluster) -> dict[str, Any] | None:
    return serving_group(c.endpoint, c.node_addresses)


def listing(endpoint: str) -> dict[str, str]:
    """Every key of the table with its value: a linearizable listing, page by page."""
    out: dict[str, str] = {}
    after: str | None = None
    with httpx.Client(base_url=endpoint, timeout=30, trust_env=False) as http:
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            r = http.get(f"/v1/tables/{TABLE}/keys", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            out.update((item["key"], item["value"]) for item in page["items"])
            after = page.get("next")
            if not after:
                return out


def replace_twice(c: LocalCluster, loaded: dict[str, str], what: str) -> None:
    """Kill a follower for good, see a spare replace it by snapshot, kill a second original
    member, and read everything back from the leader and the replacement."""
    g0 = poll(lambda: serving(c), SETTLE_S, "a serving leader")
    members0 = member_ids(g0)
    leader = g0["leader"]
    lead_status = node_request(c, leader, "status")
    print(f"{what}: leader {leader}, log {lead_status['log_first_index']}.."
          f"{lead_status['last_index']}")
    assert lead_status["log_first_index"] > 1, "the log was never compacted: the test is moot"
    spares = sorted(n["id"] for n in cluster_info(c.endpoint)["nodes"]
                    if n["state"] == "spare")
    assert spares, cluster_info(c.endpoint)["nodes"]
    first, second = [m for m in members0 if m != leader]

    c.kill(f"node-{first}")
    killed = time.monotonic()

    def swapped_in() -> int | None:
        g = the_group(c)
        new = set(member_ids(g)) - set(members0)
        return new.pop() if new and first not in member_ids(g) and not g["joint"] else None

    replacement = poll(swapped_in, GRACE_S + REPLACE_WITHIN_S,
                       f"a spare to replace node {first} and the reconfiguration to finish")
    replaced_s = time.monotonic() - killed
    assert replacement == spares[0], "the lowest-id live spare is taken"
    new_status = node_request(c, replacement, "status")
    assert new_status["snapshots_installed"] >= 1, ("caught up without a snapshot?", new_status)
    print(f"{what}: node {first} killed, node {replacement} swapped in after "
          f"{replaced_s:.1f} s (grace {GRACE_S:g} s), by a snapshot "
          f"(its log starts at {new_status['log_first_index']})")

    c.kill(f"node-{second}")  # now only the leader and the replacement are left of the three

    def both_serve() -> dict[str, str] | None:
        g = serving(c) if leader in member_ids(the_group(c)) else None
        return listing(c.endpoint) if g is not None else None

    began = time.monotonic()
    got = poll(both_serve, SETTLE_S, "the leader and the replacement to serve")
    missing = loaded.keys() - got.keys()
    wrong = [k for k in loaded.keys() & got.keys() if got[k] != loaded[k]]
    assert not missing, f"{len(missing)} keys gone, e.g. {sorted(missing)[:5]}"
    assert not wrong, f"{len(wrong)} keys changed, e.g. {sorted(wrong)[:5]}"
    r = httpx.put(f"{c.endpoint}/v1/tables/{TABLE}/keys/after-{what}", content=b"x",
                  timeout=30, trust_env=False)
    assert r.status_code == 200, r.text
    print(f"{what}: with node {second} killed too, {len(got)} keys listed in "
          f"{time.monotonic() - began:.1f} s and a write acknowledged")
    # the replacement holds what the leader holds
    lead = node_request(c, leader, "content_hash")
    new = node_request(c, replacement, "content_hash")
    if lead["applied"] == new["applied"]:
        assert lead["hash"] == new["hash"], (lead, new)


def test_replacement_past_compaction_and_after_restore(tmp_path: Path) -> None:
    base_port = find_free_base_port(5, 2)
    data, data2, backup = tmp_path / "data", tmp_path / "data2", tmp_path / "backup"
    items = tmp_path / "items.jsonl"
    loaded = {f"k{i:06d}": f"value-{i}-{'x' * 64}" for i in range(KEYS)}
    items.write_text("".join(json.dumps({"key": k, "value": v}) + "\n"
                             for k, v in loaded.items()))
    cluster = LocalCluster(data, base_port, nodes=5, groups=1, meta_args=META_ARGS)
    try:
        with cluster.logs_on_failure(lines=80):
            cluster.start()
            cluster.wait_ready(READY_TIMEOUT_S)
            began = time.monotonic()
            # one item a batch: a log entry per key (batches of 1,000 would be 15 entries,
            # never a compaction)
            done = cli("load", TABLE, str(items), "--create", "--endpoint", cluster.endpoint,
                       "--batch", "1", "--concurrency", "16")
            assert done.returncode == 0, done.stderr
            print(f"loaded {KEYS} keys with rangekv load in {time.monotonic() - began:.1f} s")
            done = cli("backup", str(backup), "--data-dir", str(data), "--json")
            assert done.returncode == 0, done.stderr
            replace_twice(cluster, loaded, "live")
    finally:
        cluster.stop()

    done = cli("restore", str(backup), "--data-dir", str(data2))
    assert done.returncode == 0, done.stderr
    restored = LocalCluster.open(data2, meta_args=META_ARGS)
    try:
        with restored.logs_on_failure(lines=80):
            restored.start()
            restored.wait_ready(READY_TIMEOUT_S)
            replace_twice(restored, loaded, "restored")
    finally:
        restored.stop()
