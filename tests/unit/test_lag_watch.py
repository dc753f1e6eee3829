"""Lag that stops shrinking (rangekv.controller.lag), and how status shows it."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rangekv.cli.ops import format_status
from rangekv.controller.lag import LagWatch, Report
from rangekv.model import ClusterView, Decision, Group
from rangekv.request_manager.live import summarize


def follower(lag_commit: int, node: int = 2, role: str = "member", live: bool = True) -> Report:
    return Report(node, role, lag_commit, live)


def test_a_learner_whose_lag_stands_still_is_said_stuck_once_then_recovered() -> None:
    w = LagWatch(lag_entries_min=1000, after_s=60)
    assert w.update(1, 15_000, [follower(0, 4, "learner")], 0.0) == []  # episode begins
    assert w.update(1, 15_000, [follower(0, 4, "learner")], 59.0) == []
    [ev] = w.update(1, 15_100, [follower(0, 4, "learner")], 60.0)
    assert (ev.kind, ev.node, ev.role, ev.lag) == ("stuck", 4, "learner", 15_100)
    assert "stopped shrinking" in ev.reason() and "learner of group 1" in ev.reason()
    assert w.stuck() == [(1, 4)]
    assert w.update(1, 15_200, [follower(0, 4, "learner")], 200.0) == []  # said once
    [ev] = w.update(1, 15_300, [follower(15_000, 4, "learner")], 210.0)
    assert ev.kind == "recovered" and w.stuck() == []


def test_a_lag_that_keeps_shrinking_is_never_stuck_however_long_it_takes() -> None:
    w = LagWatch(lag_entries_min=1000, after_s=60)
    lag = 100_000
    for t in range(0, 3600, 30):  # an hour, a little better every 30 s
        assert w.update(1, 200_000, [follower(200_000 - lag)], float(t)) == []
        lag -= 25
    assert w.stuck() == []


def test_within_the_threshold_there_is_no_episode() -> None:
    w = LagWatch(lag_entries_min=1000, after_s=60)
    for t in range(0, 1000, 10):
        assert w.update(1, 5_000, [follower(4_000)], float(t)) == []
    assert w.episodes == {} and w.lags == {(1, 2): ("member", 1000)}


def test_without_a_serving_leader_nothing_is_judged() -> None:
    w = LagWatch(lag_entries_min=10, after_s=5)
    w.update(1, 1000, [follower(0)], 0.0)
    assert w.update(1, None, [follower(0)], 100.0) == []
    [ev] = w.update(1, 1000, [follower(0)], 101.0)  # judged again once a leader serves
    assert ev.kind == "stuck"


def test_a_stuck_node_that_dies_or_leaves_is_said_gone() -> None:
    w = LagWatch(lag_entries_min=10, after_s=5)
    w.update(1, 1000, [follower(0)], 0.0)
    w.update(1, 1000, [follower(0)], 5.0)
    [ev] = w.update(1, 1000, [follower(0, live=False)], 6.0)
    assert ev.kind == "gone" and w.episodes == {} and w.lags == {}


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=60), st.integers(1, 20))
def test_stuck_means_no_new_low_for_the_whole_window(lags: list[int], after: int) -> None:
    """Against a naive oracle: at each step, stuck is said exactly when the lag is above the
    threshold throughout, and no value in the last ``after`` seconds went below every earlier
    one of the episode."""
    w = LagWatch(lag_entries_min=1000, after_s=float(after))
    said = False
    for t, lag in enumerate(lags):
        events = w.update(1, 100_000, [follower(100_000 - lag)], float(t))
        kinds = [e.kind for e in events]
        if lag <= 1000:
            assert kinds in ([], ["recovered"]) and (kinds == ["recovered"]) == said
            said = False
            continue
        # the oracle: the episode is the run of lags above 1000 ending now
        start = t
        while start > 0 and lags[start - 1] > 1000:
            start -= 1
        episode = lags[start:t + 1]
        lowered = start + max(i for i in range(len(episode))
                              if episode[i] < min(episode[:i] or [10**9]))
        should = t - lowered >= after
        if should and not said:
            assert kinds == ["stuck"], (lags, t)
            said = True
        else:
            assert kinds == [], (lags, t, kinds)


def view_with_stuck(kind_last: str) -> ClusterView:
    view = ClusterView(revision=1)
    view.groups[1] = Group(1, 3, 1, (1, 2, 3), learners=(4,), replacing=2)
    view.decision_log[10**9] = Decision(10**9, "lag_stuck", 1, "node 4 ... stopped shrinking",
                                        {"node": 4, "role": "learner", "lag": 15000})
    if kind_last == "lag_recovered":
        view.decision_log[2 * 10**9] = Decision(2 * 10**9, "lag_recovered", 1, "caught up",
                                                {"node": 4, "role": "learner", "lag": 0})
    return view


def test_status_shows_a_stuck_learner_and_the_group_is_degraded() -> None:
    info = view_with_stuck("lag_stuck").to_json()
    assert [d["node"] for d in info["lag_stuck"]] == [4]
    probes: dict[int, Any] = {
        1: {"role": "leader", "epoch": 3, "last_index": 16000, "commit_index": 16000,
            "applied_index": 16000, "match": {"2": 16000, "3": 16000, "4": 0}},
        2: {"role": "follower", "last_index": 16000, "commit_index": 16000},
        3: {"role": "follower", "last_index": 16000, "commit_index": 16000},
        4: {"role": "follower", "last_index": 0, "commit_index": 0},
    }
    doc = summarize(info, probes)
    g = doc["groups"][0]
    row = next(m for m in g["members"] if m["id"] == 4)
    assert row["stuck"]["lag"] == 15000 and "stopped shrinking" in row["stuck"]["reason"]
    assert g["health"] == "degraded"
    text = format_status(doc)
    assert "4: 16000 STUCK" in text and "lag that stopped shrinking:" in text
    # once it recovered, nothing says stuck any more
    info = view_with_stuck("lag_recovered").to_json()
    assert info["lag_stuck"] == []
    probes[4] = {"role": "follower", "last_index": 16000, "commit_index": 16000}
    probes[1]["match"]["4"] = 16000
    doc = summarize(info, probes)
    assert doc["groups"][0]["health"] == "ok" and "STUCK" not in format_status(doc)
