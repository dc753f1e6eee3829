"""Shared fixtures of the simulation tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


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
