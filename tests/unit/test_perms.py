"""Data dirs and backups are their owner's only (``rangekv.perms``): directories 0700, the files
rangekv writes 0600, whatever the umask; a looser directory found is tightened with a warning.
The real-process round trip (``rangekv up`` dirs, ``rangekv backup``, ``rangekv restore``) is
checked in tests/integration/test_backup.py and test_restore_ids.py."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv import perms
from rangekv.backup import manifest as mf
from rangekv.backup.restore import restore_node
from rangekv.cluster.local import LocalCluster, find_free_base_port
from rangekv.storage import hardstate, snapshot
from rangekv.storage.wal import WAL
from rangekv.testing.backups import make_backup


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_private_tree(root: Path) -> None:
    """Every directory under ``root`` (itself included) 0700 and every file 0600."""
    assert mode(root) == 0o700, root
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            assert mode(Path(directory, name)) == 0o700, Path(directory, name)
        for name in files:
            assert mode(Path(directory, name)) == 0o600, Path(directory, name)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The common umask 022, under which plain mkdir and open make 0755 and 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_dir_is_private_and_its_parents_are_left_alone(tmp_path: Path) -> None:
    made = perms.private_dir(tmp_path / "var" / "lib" / "rangekv")
    assert made == tmp_path / "var" / "lib" / "rangekv"
    assert mode(made) == 0o700
    assert mode(tmp_path / "var") == 0o755  # the operator's, as mkdir -p makes it


def test_an_odd_umask_does_not_lock_the_owner_out(tmp_path: Path) -> None:
    os.umask(0o277)
    assert mode(perms.private_dir(tmp_path / "d")) == 0o700
    with perms.open_private(tmp_path / "d" / "f") as f:
        f.write(b"x")
    assert mode(tmp_path / "d" / "f") == 0o600


def test_a_loose_existing_dir_is_tightened_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loose = tmp_path / "data"
    loose.mkdir(mode=0o755)
    (loose / "keep").write_text("kept")
    with caplog.at_level(logging.WARNING, logger="rangekv.perms"):
        perms.private_dir(loose)
    assert mode(loose) == 0o700
    assert (loose / "keep").read_text() == "kept"
    [record] = [r for r in caplog.records if r.name == "rangekv.perms"]
    assert str(loose) in record.getMessage() and "0755" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rangekv.perms"):
        perms.private_dir(loose)  # already private: nothing to say
    assert not caplog.records


def test_a_file_in_the_way_is_not_a_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        perms.private_dir(tmp_path / "f")


def test_files_are_created_and_rewritten_0600(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text("old")
    assert mode(path) == 0o644
    perms.write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
    with perms.open_private(tmp_path / "log", append=True) as f:
        f.write(b"a\n")
    with perms.open_private(tmp_path / "log", append=True) as f:
        f.write(b"b\n")
    assert (tmp_path / "log").read_bytes() == b"a\nb\n" and mode(tmp_path / "log") == 0o600
    with pytest.raises(FileExistsError):
        perms.open_private(tmp_path / "log", exclusive=True)
    mf.write_durably(tmp_path / "backup.json", b"{}")
    assert mode(tmp_path / "backup.json") == 0o600


def test_a_nodes_own_files_are_0600(tmp_path: Path) -> None:
    """WAL segments, the base and lock files, the hard state and a received snapshot: what a
    node writes itself in its (0700) data dir."""
    node_dir = perms.private_dir(tmp_path / "node-1")
    hardstate.save(node_dir / "hardstate", {"promised_epoch": 3})
    wal = WAL.open(node_dir / "wal")
    try:
        wal.reset(10, 2)
    finally:
        wal.close()
    index = tmp_path / "checkpoint"
    index.mkdir()
    (index / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    receiver = snapshot.Receiver(node_dir, snapshot.describe(index, 7, 2))
    staged = node_dir / snapshot.INCOMING_NAME
    assert mode(staged) == 0o700 and mode(staged / "CURRENT") == 0o600
    receiver.abort()
    for path in [node_dir / "hardstate", *sorted((node_dir / "wal").iterdir())]:
        assert mode(path) == 0o600, path


def test_a_restored_node_dir_is_private(tmp_path: Path) -> None:
    backup = make_backup(tmp_path / "bk", nodes=True)
    restore_node(backup, 2, tmp_path / "var" / "node-2")
    tree = tmp_path / "var" / "node-2"
    assert mode(tree) == 0o700 and mode(tree / "index") == 0o700
    for path in [tree / "node.id", tree / "hardstate", *(tree / "index").iterdir()]:
        assert mode(path) == 0o600, path


def test_the_files_rangekv_up_writes_are_private(tmp_path: Path) -> None:
    """cluster.json, pid and argv files, logs, in dirs of 0700, the data dir tightened (a
    stand-in process, not a real cluster: the real one is in tests/integration)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    stand_in = (sys.executable, "-c", "pass")
    cluster = LocalCluster(data, find_free_base_port(1, 1), nodes=1, rms=1, command=stand_in)
    assert cluster.start(skip=[n for n in cluster.names if n != "node-1"]) == ["node-1"]
    cluster._popens["node-1"].wait(timeout=30)
    assert mode(data) == 0o700
    for d in (cluster.log_dir, cluster.run_dir, data / "backups"):
        assert mode(d) == 0o700
    written = [data / "cluster.json", *cluster.run_dir.iterdir(), *cluster.log_dir.iterdir()]
    assert len(written) == 4, written  # cluster.json, node-1.pid, node-1.argv, node-1.log
    for path in written:
        assert mode(path) == 0o600, path
