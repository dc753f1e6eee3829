from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Deterministic and free of wall-clock deadlines: a loaded 2-core CI machine must not turn a
# slow example into a failure. Failing examples print their reproduction blob.
settings.register_profile("rangekv", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("rangekv")

from rangekv.testing.procs import free_port, start_etcd  # noqa: E402 (after the profile)


@pytest.fixture
def etcd_endpoint(tmp_path: Path) -> Iterator[str]:
    """A real, empty etcd member on loopback for one test."""
    port = free_port()
    proc = start_etcd(tmp_path / "etcd", port, free_port())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
