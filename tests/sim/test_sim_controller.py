"""The simulator runs the real controller (``rangekv.sim.meta``), and the controller's planted
bugs (``rangekv.controller.bugs``) are caught.

* The code path, not a flag: every ``Planner.tick`` of a seed is called by the simulated meta's
  control loop (``SimMeta.tick``), every record of the group the nodes act on is the in-memory
  store's, written by ``perform.land``'s compare-and-swap.
* A seed with meta failovers replays exactly (trace hash).
* Each planted bug of the controller is caught within a bounded number of seeds; the seed that
  caught it is printed.

(The 500 seeds of ``test_sim.py`` run the same meta; its ``test_faults_were_injected`` counts
the seeds where a learner caught up by a snapshot and where the active meta failed over.)
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rangekv.controller.bugs import BUGS
from rangekv.controller.planner import Planner, Seen
from rangekv.metadata.memory import MemoryStore, run_now
from rangekv.sim.bugs import PLANTED
from rangekv.sim.cluster import Simulation, run_seed
from rangekv.sim.meta import SimMeta

# Seeds needed today (caught at seed 45 and seed 10): bounds with room.
BUG_SEEDS_MAX = {
    "swap-without-joint": 120,
    "clear-joint-early": 60,
}
SEED_WITH_SWAPS_AND_FAILOVERS = 3



def test_the_simulator_runs_the_real_controller(scratch: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tick of the planner comes from the simulated meta's loop; the records the nodes
    are told about are the store's, written through the store's compare-and-swap calls."""
    tickers: Counter[str] = Counter()
    writers: Counter[str] = Counter()
    tick = Planner.tick

    def spy_tick(planner: Planner, now_ms: float, seen: Seen) -> Any:
        tickers[sys._getframe(1).f_code.co_qualname] += 1
        return tick(planner, now_ms, seen)

    monkeypatch.setattr(Planner, "tick", spy_tick)
    for name in ("set_group_leader", "reconfigure", "put_node"):
        real = getattr(MemoryStore, name)

        def spy(store: MemoryStore, *args: Any, _real: Any = real, _name: str = name) -> Any:
            writers[f"{_name} from {sys._getframe(1).f_code.co_qualname}"] += 1
            return _real(store, *args)

        monkeypatch.setattr(MemoryStore, name, spy)
    sim = Simulation(SEED_WITH_SWAPS_AND_FAILOVERS, scratch)
    result = sim.run()
    assert set(tickers) == {"SimMeta.tick"}, tickers
    assert tickers["SimMeta.tick"] > 50, tickers
    assert result["swaps"] > 0 and result["meta_failovers"] > 0, result
    # elections and replacement steps land through perform.land; registrations through the
    # heartbeat handler's put_node
    assert writers["set_group_leader from land"] > 0, writers
    assert writers["reconfigure from _write_step"] > 0, writers
    assert set(writers) <= {"set_group_leader from land", "reconfigure from _write_step",
                            "put_node from SimMeta.heartbeat"}, writers
    assert type(sim.meta) is SimMeta and type(sim.meta.planner) is Planner
    stored, _ = run_now(sim.meta.store.load())
    assert stored.groups[1] == sim.group, (stored.groups[1], sim.group)


def test_a_seed_with_failovers_replays(scratch: Path) -> None:
    a = run_seed(SEED_WITH_SWAPS_AND_FAILOVERS, scratch)
    b = run_seed(SEED_WITH_SWAPS_AND_FAILOVERS, scratch)
    assert a["meta_failovers"] > 0 and a == b


def test_rangekv_sim_plants_them_in_the_meta() -> None:
    assert set(BUG_SEEDS_MAX) == set(BUGS)
    for name, cls in BUGS.items():
        assert PLANTED[name].kwargs() == {"planner_factory": cls}  # rangekv sim --bug NAME


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_controller_planted_bug_is_caught(bug: str, catch_planted: Callable[..., int]) -> None:
    catch_planted(bug, range(BUG_SEEDS_MAX[bug]))
