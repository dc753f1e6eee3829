"""``request_manager.live``: the join of the topology with each node's own status (pure), and
the probe's bounds (a late or refusing node is unreachable, never waited for)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rangekv import errors
from rangekv.model import ClusterView, Group, Node, Range, Table
from rangekv.request_manager import live


def topology() -> dict[str, Any]:
    view = ClusterView(revision=7)
    for i in range(1, 6):
        state = "member" if i <= 3 else "spare" if i == 4 else "flagged"
        view.nodes[i] = Node(i, f"127.0.0.1:90{i:02d}", state, 1 if i <= 3 else None,
                             "no heartbeat for 12 s" if i == 5 else "")
    view.groups[1] = Group(1, epoch=3, leader=1, members=(1, 2, 3))
    view.tables["a"] = Table(1, "a")
    view.tables["b"] = Table(2, "b")
    view.ranges[1] = [Range(1, b"", b"m", 1), Range(1, b"m", None, 1)]
    view.ranges[2] = [Range(2, b"", None, 1)]
    return view.to_json()


def test_without_probes_everything_live_is_unknown() -> None:
    st = live.summarize(topology(), None)
    (g,) = st["groups"]
    assert (g["leader"], g["leader_live"], g["health"]) == (1, False, "unknown")
    assert all(m["reachable"] is None and m["lag"] is None for m in g["members"])
    assert [t["ranges_total"] for t in st["tables"]] == [2, 1]
    assert st["summary"] == {"groups": 1, "groups_ok": 0, "groups_without_leader": 0,
                             "nodes": 5, "nodes_unreachable": 0, "members": 3, "spares": 1,
                             "flagged": 1, "tables": 2, "ranges": 3}
    assert st["nodes"][4]["reason"] == "no heartbeat for 12 s" and not st["probed"]


def test_the_leader_is_the_member_leading_at_the_highest_epoch() -> None:
    probes: dict[int, live.Probe] = {
        1: {"role": "leader", "epoch": 3, "last_index": 10, "commit_index": 10},  # deposed
        2: {"role": "leader", "epoch": 4, "last_index": 12, "commit_index": 11},
        3: {"role": "follower", "epoch": 4, "last_index": 9, "commit_index": 9},
    }
    (g,) = live.summarize(topology(), probes)["groups"]
    assert (g["leader"], g["leader_recorded"], g["leader_epoch"]) == (2, 1, 4)
    # no match figures: lag = the leader's commit - the member's last, never below 0
    assert [m["lag"] for m in g["members"]] == [1, 0, 2]
    assert g["health"] == "ok"


def test_lag_uses_the_leaders_match_and_health_follows_it() -> None:
    probes: dict[int, live.Probe] = {
        1: {"role": "leader", "epoch": 3, "last_index": 5000, "commit_index": 5000,
            "match": {"2": 5000, "3": 3000}},
        2: {"role": "follower", "epoch": 3, "last_index": 5000},
        3: {"role": "follower", "epoch": 3, "last_index": 4990},  # its own view is newer
    }
    (g,) = live.summarize(topology(), probes)["groups"]
    assert [m["lag"] for m in g["members"]] == [0, 0, 2000]
    assert g["health"] == "degraded"  # over LAG_WARN_ENTRIES
    probes[1] = "Timeout: no answer within 1 s"
    (g,) = live.summarize(topology(), probes)["groups"]
    assert g["health"] == "no_leader" and g["leader"] == 1 and not g["leader_live"]
    assert g["members"][0]["error"] == "Timeout: no answer within 1 s"


def test_range_figures_come_from_the_leader_and_tables_can_be_picked() -> None:
    fig = {"keys": 3, "bytes": 300, "counted": True, "rps": 1.5, "wps": 0.25}
    probes: dict[int, live.Probe] = {
        1: {"role": "leader", "epoch": 3, "last_index": 1, "commit_index": 1,
            "ranges": [{"t": 1, "start": b"m", **fig}, {"t": 2, "start": b"", **fig}]},
        2: {"role": "follower", "ranges": [{"t": 1, "start": b"", "keys": 99}]},  # ignored
    }
    st = live.summarize(topology(), probes)
    a, b = st["tables"]
    assert [(r["start"], r["keys"], r["leader"]) for r in a["ranges"]] == [
        ("", None, 1), ("m", 3, 1)]
    assert (a["keys"], a["bytes"], b["keys"], st["groups"][0]["keys"]) == (3, 300, 3, 6)
    assert [t["name"] for t in live.summarize(topology(), probes, table="b")["tables"]] == ["b"]


def test_ranges_listed_per_table_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "RANGES_PER_TABLE_MAX", 1)
    a, b = live.summarize(topology(), None)["tables"]
    assert (len(a["ranges"]), a["ranges_total"], len(b["ranges"])) == (1, 2, 1)


def test_probe_bounds_each_node_and_reports_why() -> None:
    async def ask(address: str) -> dict[str, Any]:
        if address.endswith("1"):
            return {"role": "leader"}
        if address.endswith("2"):
            raise errors.Unavailable("connection refused")
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    async def main() -> None:
        began = time.monotonic()
        got = await live.probe([(1, "h:1"), (2, "h:2"), (3, "h:3")], ask, timeout_s=0.2)
        assert time.monotonic() - began < 30  # not the 60 s of the slow one
        assert got[1] == {"role": "leader"}
        assert got[2] == "Unavailable: connection refused"
        assert str(got[3]).startswith("Timeout")

    asyncio.run(main())


def test_probe_refuses_the_answer_of_another_node_at_the_address() -> None:
    """Node 3 was flagged and its machine runs node 6 at the same address now: node 3's row
    must say so, not show node 6's role and indexes as node 3's."""

    async def ask(address: str) -> dict[str, Any]:
        return {"node_id": 6 if address == "c:8431" else 1, "role": "follower"}

    async def main() -> None:
        got = await live.probe([(1, "a:8431"), (3, "c:8431"), (6, "c:8431")], ask)
        assert got[1] == {"node_id": 1, "role": "follower"}
        assert got[6] == {"node_id": 6, "role": "follower"}
        assert got[3] == "node 6 answers at c:8431 now, not node 3"
        status = live.summarize(
            {"nodes": [{"id": 3, "address": "c:8431", "state": "flagged", "group": None}]},
            {3: got[3]})
        row = status["nodes"][0]
        assert (row["reachable"], row["role"]) == (False, None)
        assert row["error"] == "node 6 answers at c:8431 now, not node 3"

    asyncio.run(main())


def test_live_status_probes_once_per_ttl_and_follows_the_view() -> None:
    view = ClusterView(revision=1)
    view.nodes[1] = Node(1, "h:1", "member", 1)
    view.groups[1] = Group(1, epoch=1, leader=1, members=(1,))
    now = [0.0]
    asked = []

    async def ask(address: str) -> dict[str, Any]:
        asked.append(address)
        await asyncio.sleep(0)
        return {"role": "leader", "epoch": 1, "last_index": len(asked)}

    async def main() -> None:
        status = live.LiveStatus(lambda: view, ask, ttl_s=1.0, monotonic=lambda: now[0])
        first = await asyncio.gather(*(status.get() for _ in range(5)))
        assert len(asked) == 1 and all(s is first[0] for s in first)
        view.tables["t"] = Table(1, "t")
        view.revision = 2  # the view changed: a new summary, the same probe
        st = await status.get()
        assert [t["name"] for t in st["tables"]] == ["t"] and len(asked) == 1
        now[0] = 1.5
        st = await status.get()
        assert len(asked) == 2 and st["groups"][0]["last_index"] == 2
        await status.close()

    asyncio.run(main())


def test_a_learner_replacing_a_member_is_listed_with_its_lag() -> None:
    view = ClusterView(revision=3)
    for i in (1, 2, 3, 4):
        view.nodes[i] = Node(i, f"127.0.0.1:90{i:02d}", "member" if i < 4 else "joining", 1)
    view.groups[1] = Group(1, epoch=5, leader=1, members=(1, 2, 3), learners=(4,), replacing=3)
    probes: dict[int, live.Probe] = {
        1: {"role": "leader", "epoch": 5, "last_index": 900, "commit_index": 900,
            "match": {"2": 900, "4": 100}},
        2: {"role": "follower", "epoch": 5, "last_index": 900},
        3: "OSError: connection refused",
        4: {"role": "follower", "epoch": 5, "last_index": 100},
    }
    (g,) = live.summarize(view.to_json(), probes)["groups"]
    assert [(m["id"], m["learner"], m["lag"], m["state"]) for m in g["members"]] == [
        (1, False, 0, "member"), (2, False, 0, "member"), (3, False, None, "member"),
        (4, True, 800, "joining")]
    assert (g["replacing"], g["health"]) == (3, "degraded")
