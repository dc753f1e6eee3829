"""The automatic split decision (controller/split.py) on hand-made views and reports."""

from __future__ import annotations

from typing import Any

from rangekv.controller.split import SplitConfig, plan_split
from rangekv.model import ClusterView, Group, Range, Table

CFG = SplitConfig(bytes_max=1000, ops_max=100, bytes_per_s_max=10_000, cooldown_s=5,
                  group_ranges_max=3)


def view(ranges: list[Range], groups: int = 3) -> ClusterView:
    v = ClusterView()
    v.tables["t"] = Table(1, "t")
    v.groups = {g: Group(g, 1, g * 10, (g * 10, g * 10 + 1, g * 10 + 2))
                for g in range(1, groups + 1)}
    v.ranges[1] = ranges
    return v


def fig(start: bytes, **kw: Any) -> dict[str, Any]:
    return {"t": 1, "start": start, "keys": 10, "bytes": 0, "counted": True, "rps": 0,
            "wps": 0, "rbps": 0, "wbps": 0, **kw}


def test_nothing_over_a_threshold() -> None:
    v = view([Range(1, b"", None, 1)])
    plan, why = plan_split(v, {1: (100.0, [fig(b"", bytes=999, rps=99)])}, 100.0, CFG, {}, 0, 3)
    assert plan is None and "no range" in why


def test_big_range_moves_its_upper_thirty_percent_to_the_emptiest_group() -> None:
    v = view([Range(1, b"", b"m", 1), Range(1, b"m", None, 2)])
    plan, _ = plan_split(v, {1: (100.0, [fig(b"", bytes=5000)]),
                             2: (100.0, [fig(b"m", bytes=10)])}, 100.5, CFG, {}, 0, 3)
    assert plan is not None
    assert (plan.start, plan.group, plan.by, plan.fraction, plan.target) == (b"", 1, "size",
                                                                             0.7, 3)
    assert "5,000 bytes" in plan.reason and "group 3" in plan.reason


def test_busiest_range_wins_and_load_splits_in_half() -> None:
    v = view([Range(1, b"", b"m", 1), Range(1, b"m", None, 2)])
    reports = {1: (100.0, [fig(b"", rps=150, wps=10)]), 2: (100.0, [fig(b"m", wps=400)])}
    plan, _ = plan_split(v, reports, 100.0, CFG, {}, 0, 3)
    assert plan is not None and plan.start == b"m" and plan.by == "load"
    assert plan.fraction == 0.5 and plan.target == 3  # group 3 serves no range yet
    assert "400 ops/s" in plan.reason


def test_no_decision_on_stale_reports_during_a_move_or_in_cooldown() -> None:
    v = view([Range(1, b"", None, 1)])
    reports = {1: (100.0, [fig(b"", bytes=5000)])}
    assert plan_split(v, reports, 104.0, CFG, {}, 0, 3)[0] is None  # 4 s old
    assert plan_split(v, reports, 100.0, CFG, {1: 97.0}, 0, 3)[0] is None  # split 3 s ago
    assert plan_split(v, reports, 100.0, CFG, {1: 94.0}, 0, 3)[0] is not None
    moving = view([Range(1, b"", b"m", 1), Range(1, b"m", None, 2, state="moving", source=1)])
    plan, why = plan_split(moving, reports, 100.0, CFG, {}, 0, 3)
    assert plan is None and "unfinished" in why
    # a report from a group that no longer serves the range is ignored
    assert plan_split(view([Range(1, b"", None, 2)]), reports, 100.0, CFG, {}, 0, 3)[0] is None


def test_no_room_forms_a_group_from_spares_or_splits_in_place() -> None:
    full = [Range(1, bytes([i]), bytes([i + 1]), 1 + i % 2) for i in range(6)]
    full[-1] = Range(1, bytes([5]), None, 2)
    v = view(full, groups=2)  # 3 ranges each: no room anywhere
    reports = {1: (100.0, [fig(bytes([0]), bytes=5000)])}
    plan, _ = plan_split(v, reports, 100.0, CFG, {}, 3, 3)
    assert plan is not None and plan.form_group and plan.target is None
    plan, _ = plan_split(v, reports, 100.0, CFG, {}, 2, 3)
    assert plan is not None and not plan.form_group and plan.target is None
    assert "in place" in plan.reason


def test_small_neighbours_on_one_group_merge_unless_split_lately() -> None:
    from rangekv.controller.split import plan_merge

    v = view([Range(1, b"", b"g", 1), Range(1, b"g", b"p", 1), Range(1, b"p", None, 2)])
    reports = {1: (100.0, [fig(b"", bytes=100, rps=5), fig(b"g", bytes=100)]),
               2: (100.0, [fig(b"p", bytes=0)])}
    plan = plan_merge(v, reports, 100.0, CFG, {})
    assert plan is not None and (plan.at, plan.group) == (b"g", 1)
    assert "200 bytes" in plan.reason
    assert plan_merge(v, reports, 100.0, CFG, {1: 80.0}) is None  # split 20 s ago (< 6 x 5)
    busy = {1: (100.0, [fig(b"", bytes=100, rps=30), fig(b"g", bytes=100)]), 2: reports[2]}
    assert plan_merge(v, busy, 100.0, CFG, {}) is None  # 30 ops/s >= 100 / 4
    big = {1: (100.0, [fig(b"", bytes=200), fig(b"g", bytes=100)]), 2: reports[2]}
    assert plan_merge(v, big, 100.0, CFG, {}) is None  # 300 bytes >= 1000 / 4


def test_heartbeat_range_figures_keep_only_well_formed_entries() -> None:
    from rangekv.model.status import NodeStatus

    good = fig(b"a", bytes=5, rps=1.5)
    st = NodeStatus.parse({"role": "leader", "ranges": [
        good, {"t": "x", "start": b""}, {"t": 1, "start": "not bytes"}, "junk",
        {**good, "wps": "fast"}]})
    assert st.ranges == (good,)
    assert NodeStatus.parse({"role": "follower"}).ranges is None
