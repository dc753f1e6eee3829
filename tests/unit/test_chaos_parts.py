"""The pure parts of ``rangekv chaos``: nemesis names, the set check, log patterns, the net plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rangekv import errors
from rangekv.chaos import checks, hostile
from rangekv.chaos.nemesis import ALL_FAULTS, FAMILIES, Nemesis, parse_nemesis
from rangekv.chaos.net import Net
from rangekv.chaos.netcluster import NetCluster
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


# --- the hostile nemesis (rangekv.chaos.hostile) -------------------------------------------------

def _actor(role: str) -> hostile.Actor:
    """An actor that has done its reconnaissance of a two-group cluster (no network used)."""
    nodes = {i: f"10.9.8.{100 + i}:84{30 + i}" for i in range(1, 8)}
    actor = hostile.Actor({
        "role": role, "seed": 7, "until": 0, "own_ip": "10.9.8.250", "nodes": nodes,
        "metas": ["10.9.8.21:8420", "10.9.8.22:8421"],
        "info": {"meta": {"id": 1, "address": "10.9.8.21:8420"},
                 "nodes": [{"id": i, "address": a} for i, a in nodes.items()],
                 "ranges": [{"table": "chaos_reg", "table_id": 1, "start_hex": "", "group": 1},
                            {"table": "chaos_set", "table_id": 2, "start_hex": "6b37",
                             "group": 2}]}})
    for i in range(1, 7):
        group = 1 if i <= 3 else 2
        actor.status[i] = {"group": group, "role": "leader" if i in (1, 4) else "follower",
                           "epoch": 5, "last_epoch": 5, "last_index": 120, "commit_index": 118,
                           "members": [1, 2, 3] if group == 1 else [4, 5, 6]}
    actor.status[7] = {"group": None, "role": "idle", "epoch": 0, "members": []}
    return actor


@pytest.mark.parametrize("role", hostile.FAULTS)
def test_hostile_actor_builds_every_kind(role: str) -> None:
    """Every kind has a target in a healthy cluster, and every frame it builds encodes."""
    actor = _actor(role)
    assert actor.leaders() == {1: 1, 2: 4}
    assert actor.live_members() == [1, 2, 3, 4, 5, 6]
    for kind in hostile.kinds_of(role):
        for _ in range(20):  # the kinds draw their variants at random
            assert actor._sender(kind) is not None, kind


def test_hostile_writes_are_never_well_formed() -> None:
    """Each bad write spoils its body, and the key is one no client uses."""
    actor = _actor("bad-rm")
    for _ in range(50):
        node, body = actor._write_target()  # type: ignore[misc]
        assert node in (1, 4) and body["key"].endswith(b"\x00hostile")
        assert (node, body["table_id"]) in ((1, 1), (4, 2))


def test_hostile_counter_deltas_skip_restarts() -> None:
    before = {"nodes": {"1": {"requests": 2, "messages": 5, "connections": 0},
                        "2": {"requests": 9, "messages": 9, "connections": 0}, "3": None},
              "metas": {"meta-1": 4, "meta-2": 0}}
    after = {"nodes": {"1": {"requests": 12, "messages": 30, "connections": 1},
                       "2": {"requests": 0, "messages": 0, "connections": 0},  # restarted
                       "3": {"requests": 1, "messages": 1, "connections": 0}},
             "metas": {"meta-1": 10, "meta-2": None}}
    d = hostile.deltas(before, after)
    assert d["requests"] == {"1": 10} and d["messages"] == {"1": 25}
    assert d["heartbeats"] == 6 and d["metas_measured"] == 1
    assert sorted(d["unmeasured"]) == ["meta-2", "node 2", "node 3"]


def test_hostile_check_verdicts() -> None:
    good = {"role": "bad-node", "sent": {"raft_two_leaders": 3, "heartbeat_member_here": 2},
            "outcomes": {"raft_two_leaders": {"delivered": 3},
                         "heartbeat_member_here": {"invalid_argument": 1, "ok": 1}},
            "raft_delivered": {"2": 3}, "parse_refused": {}, "heartbeats_refused": 1,
            "refused": {"requests": {}, "messages": {"2": 3}, "connections": {},
                        "heartbeats": 1, "metas_measured": 2, "unmeasured": []}}
    ok = checks.hostile([good])
    assert ok.ok, ok.details
    assert any("accepted" in line for line in ok.details)  # noted, not failed
    short = {**good, "refused": {**good["refused"], "messages": {"2": 2}}}
    assert "node 2 counted 2" in "\n".join(checks.hostile([short]).details)
    taken = {**good, "outcomes": {"raft_two_leaders": {"delivered": 3},
                                  "put_seq_max": {"ok": 1}}}
    assert not checks.hostile([taken]).ok
    assert not checks.hostile([{**good, "sent": {}}]).ok
    unread = {**good, "refused": {**good["refused"], "heartbeats": 0, "metas_measured": 0,
                                  "unmeasured": ["meta-1", "meta-2"]}}
    assert "no meta's refused-heartbeats counter" in "\n".join(checks.hostile([unread]).details)
    assert not checks.hostile([{"role": "bad-rm", "error": "the actor exited 1"}]).ok
    assert not checks.hostile([]).ok


def test_hostile_family_is_in_all_and_off_the_partitions(tmp_path: Path) -> None:
    assert parse_nemesis("hostile") == ["bad-rm", "bad-node"]
    assert {"bad-rm", "bad-node"} <= set(parse_nemesis("all"))
    c = NetCluster(tmp_path, 18000, nodes=8, rms=2, prefix="rkvt", subnet="10.9.8",
                   hostile=True, groups=2)
    assert c.net.ip(hostile.HOST) == "10.9.8.250" and hostile.HOST not in c.names
    hosts = Nemesis(c, ["bad-rm"], 1, 0.0)._hosts()
    assert hostile.HOST not in hosts and "node-8" in hosts and "etcd-3" in hosts
