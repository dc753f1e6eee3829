"""scripts/bootstrap: ``run`` (scripts/demo) installs rangekv alone into .venv, ``test``
(scripts/test, .ci/run) adds the dev extra; the stamp remembers which, so that a .venv made for
running gets the test tools when the tests first run, keeps them afterwards, and nothing is
reinstalled that need not be. Run against a copy of the script with a stand-in
``.venv/bin/python`` that records each pip call (and the Debian packages present, as on every
machine that ran the script once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "scripts" / "bootstrap"
TOOLS = ("etcd", "haproxy", "etcdctl", "fiu-run", "ip", "iptables", "faketime", "chromium")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(BOOTSTRAP, tmp_path / "scripts" / "bootstrap")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "python"
    fake.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../pip.log"\n')
    fake.chmod(0o755)
    tools = tmp_path / "tools"  # every Debian package the script may want is there already
    tools.mkdir()
    for name in (*TOOLS, "apt-get", "sudo"):
        stub = tools / name
        stub.write_text("#!/bin/sh\necho \"$0 $*\" >> \"$(dirname \"$0\")/../apt.log\"\n")
        stub.chmod(0o755)
    return tmp_path


def bootstrap(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{checkout / 'tools'}:{os.environ['PATH']}"}
    return subprocess.run([str(checkout / "scripts" / "bootstrap"), *args], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def installs(checkout: Path) -> list[str]:
    log = checkout / "pip.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [line.split()[-1] for line in lines if "install -q -e" in line]


def stamp(checkout: Path) -> str:
    return (checkout / ".venv" / ".rangekv-installed").read_text().strip()


def test_run_then_test_then_run(checkout: Path) -> None:
    assert bootstrap(checkout).returncode == 0
    assert installs(checkout) == ["."] and stamp(checkout) == "run"
    assert bootstrap(checkout, "run").returncode == 0
    assert installs(checkout) == []  # nothing to do
    done = bootstrap(checkout, "test")  # the tests after the demo: the dev extra comes
    assert done.returncode == 0, done.stderr
    assert installs(checkout) == [".[dev]"] and stamp(checkout) == "test"
    assert bootstrap(checkout, "test").returncode == 0 and installs(checkout) == []
    assert bootstrap(checkout).returncode == 0 and installs(checkout) == []  # kept
    assert stamp(checkout) == "test"
    assert not (checkout / "apt.log").exists()  # every package was there


def test_a_newer_pyproject_reinstalls_what_the_venv_holds(checkout: Path) -> None:
    assert bootstrap(checkout, "test").returncode == 0 and installs(checkout) == [".[dev]"]
    later = time.time() + 10
    os.utime(checkout / "pyproject.toml", (later, later))
    assert bootstrap(checkout).returncode == 0
    assert installs(checkout) == [".[dev]"] and stamp(checkout) == "test"


def test_a_stamp_from_before_the_profiles_means_test(checkout: Path) -> None:
    (checkout / ".venv" / ".rangekv-installed").write_text("")
    later = time.time() + 10
    os.utime(checkout / ".venv" / ".rangekv-installed", (later, later))
    assert bootstrap(checkout, "test").returncode == 0 and installs(checkout) == []


def test_only_the_tests_want_the_test_packages() -> None:
    """What each profile asks apt-get for (read from the script: every package is installed on
    this machine, so none would be asked for here)."""
    text = BOOTSTRAP.read_text()
    run_part, _, test_part = text.partition('if [ "$profile" = test ]; then\n  have fiu-run')
    for pkg in ("etcd-server", "haproxy", "etcd-client"):
        assert f"need_apt+=({pkg})" in run_part
    for pkg in ("fiu-utils", "faketime", "chromium", "iptables", "iproute2"):
        assert pkg not in run_part.split("need_apt=()")[1] and pkg in test_part


def test_a_wrong_profile_is_refused(checkout: Path) -> None:
    done = bootstrap(checkout, "everything")
    assert done.returncode == 2 and "usage" in done.stderr
    assert installs(checkout) == []
