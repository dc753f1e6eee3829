"""The pure parts of ``rangekv chaos``: nemesis names, the set check, log patterns, the net plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rangekv import errors
from rangekv.chaos import checks
from rangekv.chaos.nemesis import ALL_FAULTS, FAMILIES, parse_nemesis
from rangekv.chaos.net import Net
from rangekv.chaos.workload import _outcome


def test_parse_nemesis_families_names_all_and_none() -> None:
    assert parse_nemesis("all") == ALL_FAULTS
    assert parse_nemesis("none") == []
    assert parse_nemesis("kill,loss") == [*FAMILIES["kill"], "loss"]
    assert parse_nemesis("kill-leader, kill") == ["kill-leader", "kill-follower", "kill-group"]
    with pytest.raises(ValueError, match="unknown nemesis 'kill-everything'"):
        parse_nemesis("kill-everything")


def test_set_check_finds_lost_phantom_revived_and_duplicates() -> None:
    ok = checks.set_check({"a", "b", "c"}, {"a", "b"}, set(), ["a", "b", "c"])
    assert ok.ok, ok.summary  # c: unknown outcome, present: allowed
    lost = checks.set_check({"a", "b"}, {"a", "b"}, set(), ["a"])
    assert not lost.ok and "1 lost" in lost.summary and "lost: b" in lost.details
    phantom = checks.set_check({"a"}, {"a"}, set(), ["a", "z"])
    assert not phantom.ok and "never written: z" in phantom.details
    revived = checks.set_check({"a", "b"}, {"a"}, {"b"}, ["a", "b"])
    assert not revived.ok and "failed but present: b" in revived.details
    dup = checks.set_check({"a"}, {"a"}, set(), ["a", "a"])
    assert not dup.ok and "1 listed twice" in dup.summary


def test_outcomes_follow_the_error_contract() -> None:
    assert _outcome(errors.Unavailable("no leader")) == "fail"  # 503: surely not applied
    assert _outcome(errors.NotLeader("x")) == "fail"
    assert _outcome(errors.InvalidArgument("bad")) == "fail"
    assert _outcome(errors.OutcomeUnknown("?")) == "info"
    assert _outcome(errors.Timeout("slow")) == "info"
    assert _outcome(errors.Internal("500")) == "info"  # not promised either way
    assert _outcome(OSError("reset")) == "info"


def test_log_check_patterns(tmp_path: Path) -> None:
    class Fake:
        log_dir = tmp_path

    (tmp_path / "node-1.log").write_text(
        "2026-11-22T05:40:13.755 INFO node-1 rangekv.node: fine\n"
        "2026-11-22T05:40:13.756 WARNING node-1 rangekv.node: a warning is fine\n")
    (tmp_path / "etcd-1.log").write_text('{"level":"warn","msg":"slow"}\n'
                                         '{"level":"error","msg":"lost peer"}\n')
    (tmp_path / "haproxy.log").write_text(
        "[ALERT]    (11619) : backend 'rms' has no server available!\n")
    assert checks.logs(Fake()).ok  # type: ignore[arg-type]
    (tmp_path / "rm-1.log").write_text(
        "2026-11-22T05:40:13.755 ERROR rm-1 rangekv.rm: boom\n"
        "Traceback (most recent call last):\n")
    (tmp_path / "etcd-2.log").write_text('{"level":"panic","msg":"bad"}\n')
    (tmp_path / "haproxy.log").write_text("[ALERT]    (1) : config : parsing error\n")
    bad = checks.logs(Fake())  # type: ignore[arg-type]
    assert not bad.ok
    assert len(bad.details) == 4, bad.details


def test_availability_figures(tmp_path: Path) -> None:
    events = [
        {"process": 0, "type": "invoke", "f": "get", "key": "k", "time": 100.0},
        {"process": 0, "type": "ok", "f": "get", "key": "k", "time": 100.5},
        {"process": 0, "type": "invoke", "f": "put", "key": "k", "time": 100.6},
        {"process": 0, "type": "info", "f": "put", "key": "k", "time": 103.0},
        {"process": 1, "type": "invoke", "f": "get", "key": "k", "time": 103.1},
        {"process": 1, "type": "ok", "f": "get", "key": "k", "time": 103.5},
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    av = checks.availability(path, 100.0)
    assert av["ok_fraction"] == pytest.approx(2 / 3, abs=1e-3)
    assert av["longest_gap_s"] == 3.0 and av["longest_gap_at_s"] == 0.5
    assert av["seconds_without_ok"] == 2  # seconds 1 and 2
    # the load phase only: what follows (the final reads) does not count
    early = checks.availability(path, 100.0, until_s=3.2)
    assert early["ok_fraction"] == 0.5 and early["longest_gap_s"] == 0.0


def test_net_plan_validation() -> None:
    net = Net("rkvx", "10.9.8", {"a": 11, "b": 12})
    assert net.ip("a") == "10.9.8.11" and net.netns("b") == "rkvx-b"
    assert net.exec_prefix("a") == ("ip", "netns", "exec", "rkvx-a")
    with pytest.raises(ValueError):
        Net("much-too-long-prefix", "10.9.8", {"a": 11})
    with pytest.raises(ValueError):
        Net("rkvx", "10.9.8", {"a": 11, "b": 11})
    with pytest.raises(ValueError):
        Net("rkvx", "10.9.300", {"a": 11})
