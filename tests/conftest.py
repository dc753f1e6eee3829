from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv.testing.procs import free_port, start_etcd


@pytest.fixture
def etcd_endpoint(tmp_path: Path) -> Iterator[str]:
    """A real, empty etcd member on loopback for one test."""
    port = free_port()
    proc = start_etcd(tmp_path / "etcd", port, free_port())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
