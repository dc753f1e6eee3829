"""Shared fixtures of the simulation tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rangekv.sim.bugs import PLANTED
from rangekv.sim.cluster import SimFailure, run_seed


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Where a simulation keeps its nodes' files: in memory (/dev/shm) when there is one, in a
    directory of its own (mkdtemp), so that two test runs at once never share a simulated disk
    (a directory named after the test did: one run's fsync found the other's WAL gone)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path / "sim"
        return
    path = Path(tempfile.mkdtemp(prefix="rangekv-test-sim-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


Catch = Callable[..., int]


@pytest.fixture
def catch_planted(scratch: Path) -> Catch:
    """``catch_planted(name, seeds, caught_by=None)``: run the seeds with the planted bug
    ``name`` (``sim/bugs.py``'s ``PLANTED``: planted through its component's factory argument,
    as ``rangekv sim --bug NAME`` plants it) until one fails; print and return that seed. Fails
    the test if none does, or if the failure does not say ``caught_by`` (a bug must be caught
    by what it breaks)."""

    def catch(name: str, seeds: range, caught_by: str | None = None) -> int:
        for seed in seeds:
            try:
                run_seed(seed, scratch, **PLANTED[name].kwargs())
            except SimFailure as failure:
                if caught_by is not None:
                    assert caught_by in str(failure), failure
                print(f"planted bug {name!r} caught at seed {seed}: {str(failure)[:200]}")
                return seed
        pytest.fail(f"planted bug {name!r} not caught in seeds {seeds.start}..{seeds.stop - 1}")

    return catch
