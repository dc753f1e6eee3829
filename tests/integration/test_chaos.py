"""``rangekv chaos`` end to end: a real cluster in network namespaces under a short mix of faults.

Needs root and network namespaces (the CI machine has both); skipped, saying why, elsewhere.
The run's own checks (linearizability per key, the set, replica hashes, logs) decide: the test
passes only if the command exits 0, and prints the command's report either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rangekv.chaos.net import check_support

pytestmark = pytest.mark.integration

# Every fault family, each fault short: 30 s of load is about 4-5 faults.
CI_NEMESIS = "partition-leader,partition-halves,kill-leader,pause-follower,loss,kill-meta," \
             "kill-etcd,kill-rm,clock-skew"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "rangekv chaos needs root (network namespaces, iptables)"
    return check_support()


def test_chaos_30s_with_a_mix_of_faults_passes(tmp_path: Path) -> None:
    why = _skip_reason()
    if why:
        pytest.skip(why)
    run_dir = tmp_path / "chaos"
    argv = [sys.executable, "-m", "rangekv.cli.main", "chaos", "--time", "30", "--seed", "4242",
            "--nemesis", CI_NEMESIS, "--interval", "4,7", "--dir", str(run_dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    assert proc.returncode == 0, f"rangekv chaos exited {proc.returncode}; run dir {run_dir}"
    assert "PASSED" in proc.stdout
    assert (run_dir / "history.jsonl").stat().st_size > 0


def test_chaos_30s_with_splits_and_moves_under_faults_passes(tmp_path: Path) -> None:
    """The controller at work under faults: low split thresholds (the register table splits by
    itself and its parts move, a group may be formed from spares), operator splits and moves,
    leaders killed and cut off. Nothing may be lost, duplicated or stale; moves must happen."""
    import json

    why = _skip_reason()
    if why:
        pytest.skip(why)
    run_dir = tmp_path / "chaos"
    argv = [sys.executable, "-m", "rangekv.cli.main", "chaos", "--time", "30", "--seed", "77",
            "--nemesis", "split,move,kill-leader,partition-leader", "--interval", "4,7",
            "--split-ops", "40", "--group-ranges-max", "2", "--spares", "3",
            "--dir", str(run_dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    assert proc.returncode == 0, f"rangekv chaos exited {proc.returncode}; run dir {run_dir}"
    report = json.loads((run_dir / "report.json").read_text())
    decisions = report["layout"]["decisions"]
    assert decisions.get("move_switch", 0) >= 1, decisions
    assert report["layout"]["ranges"]["chaos_reg"]["ranges"] >= 2, report["layout"]
