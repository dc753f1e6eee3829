"""Planted bugs outside the replication core, in the shared Ready loop
(``rangekv.replication.loop_bugs``): each is caught by the simulator within a bounded number
of seeds, as the core's are (``test_sim.py``), and each is planted the way production plants
it: the ``loop_factory`` argument (the simulator's, the driver's), chosen by name by the node's
hidden ``--planted-bug`` (so ``rangekv chaos --planted-bug NAME`` runs it in real processes)
and by ``rangekv sim --bug NAME``.

The honest loop passes the same seeds: ``test_sim.py`` runs seeds 0-499 with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rangekv.node import server
from rangekv.replication import bugs
from rangekv.replication.core import Core
from rangekv.replication.loop import ReadyLoop
from rangekv.replication.loop_bugs import LOOP_BUGS, SnapshotVotersOnly
from rangekv.sim import main as sim_main
from rangekv.sim.bugs import PLANTED

# Seeds needed from seed 0, measured over seeds 0-99 (the seeds that catch it, the longest gap
# between two of them): release-before-fsync 2, 3, 5, 7, 9, 12, 22, 29, 47, 75, 88 (gap 28);
# snapshot-voters-only 3, 20, 23, 32, 35, 39, 45, 50, 58, ... (gap 17); cut-not-written 0, 2,
# 5, 9, 18, 26, ... (gap 19). The bounds leave room for the traces to change.
LOOP_BUG_SEEDS_MAX = {
    "release-before-fsync": 40,
    "snapshot-voters-only": 40,
    "cut-not-written": 30,
}
# What the simulator's failure says, for each (so that a bug is caught by what it breaks).
LOOP_BUG_CAUGHT_BY = {
    "release-before-fsync": "assertion in the code under test",  # the WAL: no drop past sync
    "snapshot-voters-only": "never catches up",  # SimNode.check_learners_catch_up
    "cut-not-written": "append of index",  # the WAL: an append that does not follow
}



def test_every_loop_bug_has_a_bound() -> None:
    assert set(LOOP_BUG_SEEDS_MAX) == set(LOOP_BUGS) == set(LOOP_BUG_CAUGHT_BY)
    for name, cls in LOOP_BUGS.items():
        assert issubclass(cls, ReadyLoop) and cls is not ReadyLoop
        assert PLANTED[name].kwargs() == {"loop_factory": cls}  # rangekv sim --bug NAME


@pytest.mark.parametrize("bug", sorted(LOOP_BUGS))
def test_planted_loop_bug_is_caught(bug: str, catch_planted: Callable[..., int]) -> None:
    catch_planted(bug, range(LOOP_BUG_SEEDS_MAX[bug]), LOOP_BUG_CAUGHT_BY[bug])


def test_rangekv_sim_bug_names_a_loop_bug(capsys: pytest.CaptureFixture[str],
                                          scratch: Path) -> None:
    assert sim_main.main(["--bug", "cut-not-written", "--seeds", "30", "--trace-lines", "0",
                          "--root", str(scratch)]) == 0
    out = capsys.readouterr().out
    assert "planted bug 'cut-not-written' caught at seed" in out, out
    assert "replay: rangekv sim --seeds 1 --start" in out and "--bug cut-not-written" in out


def test_the_node_plants_a_loop_bug_from_its_hidden_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--planted-bug NAME`` of a loop's bug gives the node the real core and the bug's loop
    (and a core's bug the real loop): what ``rangekv chaos --planted-bug`` passes."""
    made: list[tuple[object, object]] = []

    class Stop(Exception):
        pass

    def fake_node(*args: object, core_factory: object, loop_factory: object,
                  **kwargs: object) -> None:
        made.append((core_factory, loop_factory))
        raise Stop

    monkeypatch.setattr(server, "Node", fake_node)
    monkeypatch.setattr(server, "setup_logging", lambda *a, **k: None)  # (pytest's capture)
    argv = ["--id", "1", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "n"),
            "--meta", "127.0.0.1:2"]
    for extra in ([], ["--planted-bug", "snapshot-voters-only"],
                  ["--planted-bug", "skip-log-matching"]):
        with pytest.raises(Stop):
            server.main(argv + extra)
    assert made == [(Core, ReadyLoop), (Core, SnapshotVotersOnly),
                    (bugs.SkipLogMatching, ReadyLoop)]
    assert set(bugs.NODE_BUGS) == {*bugs.BUGS, *LOOP_BUGS}
