"""Runs every script in testdata/ against the replication core and compares its output.

``REWRITE=1 pytest tests/interaction`` rewrites the expected output with the actual one; do it
only on purpose, and read the diff: a golden file blesses whatever the core did.

A script in ``KNOWN_BUGS`` holds the *correct* output for a bug the core still has (written
with a candidate fix): it must fail until the core is fixed (strict xfail), and ``REWRITE``
leaves it alone. Once fixed, check its diff, then remove it from ``KNOWN_BUGS``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from rangekv.replication.core import Core, Ready

from .env import run_file

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))

KNOWN_BUGS = {
}


def _param(path: Path) -> object:
    reason = KNOWN_BUGS.get(path.name)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in SCRIPTS])
def test_script(path: Path) -> None:
    text = path.read_text()
    cases, actual = run_file(text)
    if actual == text:
        return
    if os.environ.get("REWRITE") and path.name not in KNOWN_BUGS:
        path.write_text(actual)
        return
    first = next((c for c in cases if c.actual != c.expected), None)
    where = f"{path.name}:{first.line}: {first.command}" if first else path.name
    diff = "".join(difflib.unified_diff(
        text.splitlines(keepends=True), actual.splitlines(keepends=True),
        fromfile=f"{path.name} (expected)", tofile=f"{path.name} (actual)", n=6))
    pytest.fail(f"output differs, first at {where}\n"
                f"(REWRITE=1 to accept, only on purpose)\n{diff}", pytrace=False)


def test_every_known_bug_has_a_script() -> None:
    assert set(KNOWN_BUGS) <= {p.name for p in SCRIPTS}


def test_the_scripts_run_the_shared_ready_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the golden files show is what production's Ready loop does: the env's cores hand
    every Ready to ``ReadyLoop.process`` and nothing else."""
    takers: Counter[str] = Counter()
    ready = Core.ready

    def spy(core: Core) -> Ready:
        takers[sys._getframe(1).f_code.co_qualname] += 1
        return ready(core)

    monkeypatch.setattr(Core, "ready", spy)
    for path in SCRIPTS:
        run_file(path.read_text())
    assert set(takers) == {"ReadyLoop.process"}, takers
