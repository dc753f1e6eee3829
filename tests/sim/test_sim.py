"""The deterministic simulation in the test suite (``rangekv sim`` runs the same code).

* 500 seeds of the real code under faults, each checked after every event and for
  linearizability at the end; a failure names the seed to replay with ``rangekv sim``.
* The same seed gives the same run (trace hash).
* The faults were really injected: over those seeds, every kind happened (FoundationDB's rule:
  a rare path that is never taken proves nothing), compaction and snapshot installs included
  (failed transfers, stale offers, damaged chunks, crashes during an install), and so did
  follower replacements (a spare caught up as a learner and swapped in, learners dropped, "no
  spare left").
* Each planted bug is caught within a bounded number of seeds: the simulator can fail.
* The hostile actors (a bad rm, a bad node; ``rangekv.sim.hostile``) sent every kind of bad
  message and every one was refused, ignored or dropped, none taken.
* Every Ready of every simulated node is taken and performed by production's Ready loop
  (``rangekv.replication.loop``), checked on the code path itself.
* Range seeds (``SimConfig.ranges``, ``test_sim_ranges.py``): two groups, and the controller
  splits, moves and merges a table's ranges while the faults go on.
* The meta is the real controller (``rangekv.sim.meta``: the ``Planner`` over the in-memory
  store, failing over in some seeds); ``test_sim_controller.py`` checks that code path and
  catches the controller's planted bugs.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from rangekv.replication.core import Core, Ready
from rangekv.replication.loop import ReadyLoop
from rangekv.sim import hostile
from rangekv.sim.bugs import BUGS
from rangekv.sim.cluster import SimConfig, SimFailure, Simulation, run_seed

SEEDS = 500
CHUNK = 50
# Seeds needed today (caught at): measured again after the merge of snapshots and membership,
# see the bounds below.
BUG_SEEDS_MAX = {
    "ack-before-fsync": 400,
    "accept-lower-epoch": 150,
    "skip-log-matching": 150,
    "read-without-quorum": 600,
    "apply-before-commit": 100,
    "install-stale-snapshot": 150,
    "campaign-without-joint": 150,
}

# Where the search starts for the two bugs that take hundreds of seeds from 0 (caught today at
# seeds 228 and 382: `rangekv sim --bug NAME --seeds 600` shows the count from 0), to keep the
# suite inside CI's time; the window still has to hold their catching seed. (Measured again
# with the range seeds: the others are caught today at accept-lower-epoch 7, skip-log-matching
# 31, apply-before-commit 1, install-stale-snapshot 87, campaign-without-joint 15.)
BUG_SEEDS_FROM = {"ack-before-fsync": 150, "read-without-quorum": 300}

_totals: Counter[str] = Counter()



@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_seeds(start: int, scratch: Path) -> None:
    for seed in range(start, start + CHUNK):
        try:
            result = run_seed(seed, scratch)
        except SimFailure as failure:
            pytest.fail(f"{failure}\nreplay: rangekv sim --seeds 1 --start {seed} -v")
        for key in ("crashes", "partitions", "flips", "leader_changes", "ops_unknown",
                    "torn_bytes", "ops_ok", "compactions", "snapshots_installed",
                    "snapshots_failed", "snapshot_answers_stale", "chunks_damaged",
                    "install_crashes", "gone", "learners", "swaps", "learners_dropped",
                    "no_spare", "hostile", "hostile_rm_refused", "hostile_node_refused",
                    "snapshots_to_learners", "meta_failovers", "splits", "moves", "merges",
                    "source_reads"):
            _totals[key] += int(result[key] > 0)


def test_faults_were_injected() -> None:
    """Runs after test_seeds (file order): each kind of fault happened in many seeds."""
    if not _totals:
        pytest.skip("runs only together with test_seeds")
    assert _totals["ops_ok"] == SEEDS, _totals
    for key, at_least in (("crashes", 300), ("partitions", 300), ("leader_changes", 400),
                          ("flips", 30), ("ops_unknown", 200), ("torn_bytes", 25),
                          ("compactions", 450), ("snapshots_installed", 150),
                          ("snapshots_failed", 150), ("snapshot_answers_stale", 5),
                          ("chunks_damaged", 5), ("install_crashes", 10),
                          ("gone", 50), ("learners", 150), ("swaps", 150),
                          ("learners_dropped", 20), ("no_spare", 15), ("hostile", 100),
                          ("hostile_rm_refused", 100), ("hostile_node_refused", 100),
                          # the real controller (sim/meta.py): a learner caught up by a
                          # snapshot (172 of 500 today), the active meta failed over (152)
                          ("snapshots_to_learners", 100), ("meta_failovers", 100),
                          # range seeds (test_sim_ranges.py): the controller split ranges and
                          # moved them, merged some; reads crossed a move's copy
                          ("splits", 80), ("moves", 80), ("merges", 5), ("source_reads", 10)):
        assert _totals[key] >= at_least, (key, _totals)


def test_same_seed_same_run(scratch: Path) -> None:
    a = run_seed(4242, scratch)
    b = run_seed(4242, scratch)
    assert a == b and a["trace_hash"] == b["trace_hash"]
    assert run_seed(4243, scratch)["trace_hash"] != a["trace_hash"]


HOSTILE_SEEDS = 40


def test_hostile_actors_sent_everything_and_nothing_was_taken(scratch: Path) -> None:
    """Seeds with a bad rm and a bad node in each: every kind of bad write and forged message
    was sent, every bad write refused, every forged message refused, ignored or dropped (each
    was checked as it arrived: refused or ignored means the target's state did not change),
    the core met forgeries of its own (not all stopped at the address check), and the runs'
    checks, linearizability included, held."""
    cfg = SimConfig(hostile=1.0)
    kinds: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for seed in range(HOSTILE_SEEDS):
        sim = Simulation(seed, scratch, cfg)
        try:
            result = sim.run()
        except SimFailure as failure:
            pytest.fail(f"{failure}\nreplay: rangekv sim --seeds 1 --start {seed} --hostile 1 -v")
        assert result["hostile"]
        assert result["hostile_rm_refused"] == result["hostile_rm_sent"], result
        handled = (result["hostile_node_refused"] + result["hostile_node_ignored"]
                   + result["hostile_node_dropped"])
        assert handled <= result["hostile_node_sent"], result
        assert handled >= result["hostile_node_sent"] - 3, result  # (a few in flight at most)
        kinds.update(sim.hostile_kinds)
        sums.update({k: v for k, v in result.items() if k.startswith("hostile_")})
    print(dict(sums), dict(kinds))
    for kind in hostile.RM_KINDS:
        assert kinds[f"rm {kind}"] >= 50, kinds
    for kind in hostile.NODE_KINDS:
        assert kinds[f"node {kind}"] >= 50, kinds
    assert sums["hostile_rm_sent"] >= 300, sums
    for outcome in ("refused", "ignored", "dropped"):
        assert sums[f"hostile_node_{outcome}"] >= 300, sums


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_caught(bug: str, catch_planted: Callable[..., int]) -> None:
    catch_planted(bug, range(BUG_SEEDS_FROM.get(bug, 0), BUG_SEEDS_MAX[bug]))


def test_the_simulator_runs_the_shared_ready_loop(scratch: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path, not a flag: every Ready a simulated node takes from its core is taken by
    production's ``ReadyLoop.process`` (``sim/node.py`` gives that loop its disk, network,
    clock and snapshots), and the loop performs them all."""
    takers: Counter[str] = Counter()
    ready = Core.ready

    def spy(core: Core) -> Ready:
        takers[sys._getframe(1).f_code.co_qualname] += 1
        return ready(core)

    monkeypatch.setattr(Core, "ready", spy)
    sim = Simulation(7, scratch)
    sim.run()
    assert set(takers) == {"ReadyLoop.process"}, takers
    assert takers["ReadyLoop.process"] > 1000, takers
    assert all(type(n.loop) is ReadyLoop for n in sim.nodes.values() if n.up)
