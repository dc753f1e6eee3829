"""The controller's scale mode (``rangekv.sim.scale``) at a small size: the real planner heals
every injected event (node and leader deaths, laggards, hot ranges, a meta failover) and the
cluster ends whole. Its timings are a benchmark's, not asserted here."""

from __future__ import annotations

from rangekv.sim.scale import EVENT_KINDS, ScaleConfig, main, report, run

SMALL = ScaleConfig(groups=20, ranges=500, tables=5, duration_ms=40_000, node_deaths=3,
                    leader_deaths=3, laggards=2, hot_ranges=2, failovers=1)


def test_every_event_heals_and_the_invariants_hold() -> None:
    for seed in (1, 2):
        cfg = ScaleConfig(**{**SMALL.__dict__, "seed": seed})
        res = run(cfg)
        assert not res.violations, report(cfg, res)
        assert sorted({e.kind for e in res.events}) == sorted(EVENT_KINDS)
        assert all(e.healed_ms is not None for e in res.events), report(cfg, res)
        # the replacements went through every step, and a split moved its upper half
        for kind in ("AddLearner", "PromoteLearner", "ClearJoint", "ElectLeader",
                     "SplitRange", "ResumeMove", "NoteLag"):
            assert res.decisions[kind] > 0, (kind, report(cfg, res))
        assert all(e.leader_ms is not None for e in res.events if e.kind == "leader_death")


def test_the_same_seed_makes_the_same_decisions() -> None:
    a, b = run(SMALL), run(SMALL)
    assert a.decisions == b.decisions and a.ticks == b.ticks
    assert [(e.kind, e.group, e.node, e.healed_ms) for e in a.events] == [
        (e.kind, e.group, e.node, e.healed_ms) for e in b.events]


def test_the_command_line() -> None:
    assert main(["--groups", "12", "--ranges", "120", "--tables", "3", "--node-deaths", "2",
                 "--leader-deaths", "2", "--laggards", "1", "--hot-ranges", "1"]) == 0
