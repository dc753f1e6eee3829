"""Disk faults with real processes (etcd, two metas, 5 nodes, 2 rms, HAProxy).

* **A failed fsync** (fiu-utils: the nodes run under ``fiu-run -x``, the POSIX preload, and
  ``fiu-ctrl`` makes every fsync and fdatasync of one of them fail with EIO while writers put
  unique keys), on a follower and on the leader. After a failed fsync the page cache cannot be
  trusted, so the node must stop at once without acknowledging anything of the failed batch:
  it exits non-zero with one CRITICAL ``disk failure`` line that names the failed call and file;
  every acknowledged put reads back with its value and seq (only puts answered 200 count as
  acknowledged); restarted without the fault, the node reopens its log, rejoins and catches up.
* **A bit flipped in the middle of a follower's WAL** (not its last record): the restarted node
  detects it by crc32c and stays up refusing to serve, with one ERROR line; its status op and
  the heartbeat report it broken, naming the file and offset, and meta records it (``flagged``
  in ``/v1/cluster`` and ``rangekv cluster``); the group goes on serving writes with its other
  two members (and replaces it by a spare), and every acknowledged put reads back. (The last test checks the pure decision
  behind the flag, ``controller.nodes.node_record``, without processes.)

The waits below are generous upper bounds that only turn a hang into a failure (with every log
printed); nothing here times how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rangekv import errors, wire
from rangekv.cli.ops import format_cluster
from rangekv.cluster.local import LocalCluster, find_free_base_port, running_cluster
from rangekv.controller.nodes import node_record
from rangekv.model import NODE_FLAGGED, NODE_MEMBER, NODE_SPARE, Node
from rangekv.model.status import NodeStatus
from rangekv.replication.driver import EXIT_DISK_FAILURE
from rangekv.storage.wal import RECORD_HEADER_BYTES, segment_name
from rangekv.testing.load import (
    Writers,
    check_all_acked,
    cluster_info,
    group_members,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READY_TIMEOUT_S = 90.0
WRITERS = 6
ACKED_BEFORE_FAULT = 100
ACKED_AFTER_FAULT = 100
NODE_EXIT_WAIT_S = 15.0  # the node stops at its next fsync; under load that is milliseconds
WRITES_WAIT_S = 30.0  # generous: a failover normally takes about a second
CATCH_UP_WAIT_S = 60.0
FIU_CTRL_TIMEOUT_S = 20.0
# Both failure points of the POSIX preload under posix/io/sync/, in ONE command: fiu-ctrl
# writes each command to the node's control fifo, and once the first has made the node exit,
# writing a second would block on a fifo that nobody reads any more. failinfo is the errno.
FSYNC_FAULT = "enable name=posix/io/sync/*,failinfo=5"  # EIO from fsync and fdatasync


# --- load and checks ----------------------------------------------------------------------------


def node_request(cluster: LocalCluster, node: int, op: str, **fields: Any) -> dict[str, Any]:
    """One request to a node over the internal protocol (raises the error it answers)."""

    async def ask() -> dict[str, Any]:
        conn = wire.Connection(cluster.node_addresses[node])
        try:
            return await conn.request(op, timeout_s=5, **fields)
        finally:
            await conn.close()

    return asyncio.run(ask())


def caught_up(cluster: LocalCluster, members: list[int]) -> Callable[[], bool]:
    """True once every member answers, serves in the group (leader or follower), and all
    applied the same index (writes have stopped)."""

    def check() -> bool:
        try:
            statuses = [node_request(cluster, m, "status") for m in members]
        except errors.Unavailable:
            return False  # a restarted node is not listening yet
        return (
            all(s["role"] in ("leader", "follower") for s in statuses)
            and len({s["applied_index"] for s in statuses}) == 1
        )

    return check


def log_lines(cluster: LocalCluster, name: str, level: str, needle: str) -> list[str]:
    """The lines of ``level`` containing ``needle`` that the latest run of ``name`` logged."""
    text = cluster.log_path(name).read_text(errors="replace")
    latest_run = text.rpartition(f"rangekv up: starting {name}:")[2]
    return [line for line in latest_run.splitlines() if f" {level} " in line and needle in line]


# --- fsync failures -----------------------------------------------------------------------------


@pytest.fixture
def fiu_run() -> str:
    """The path of fiu-run; skips the test if fiu-utils is not installed."""
    path, ctrl = shutil.which("fiu-run"), shutil.which("fiu-ctrl")
    if path is None or ctrl is None:
        pytest.skip(
            "fiu-utils is not installed (fiu-run and fiu-ctrl inject the fsync failures; "
            "scripts/bootstrap test installs it, or: apt-get install fiu-utils)"
        )
    return path


@contextlib.contextmanager
def cluster_under_fiu(data_dir: Path, fiu_run: str, fifo_prefix: Path) -> Iterator[LocalCluster]:
    """A ready cluster whose nodes all run under ``fiu-run -x`` (which failure points fire is
    decided later, with fiu-ctrl, through a control fifo per process: ``PREFIX-PID.in/.out``).
    Which nodes form the group and which leads is decided at run time, hence all five."""
    fifo_prefix.parent.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(data_dir, base_port=find_free_base_port())
    wrapper = (fiu_run, "-x", "-f", str(fifo_prefix))
    cluster.wrappers = {f"node-{i}": wrapper for i in range(1, cluster.nodes + 1)}
    try:
        cluster.start()
        cluster.wait_ready(READY_TIMEOUT_S)
        with cluster.logs_on_failure():
            yield cluster
    finally:
        cluster.stop()


def inject_fsync_failure(cluster: LocalCluster, name: str, fifo_prefix: Path) -> None:
    """From now on every fsync and fdatasync of process ``name`` fails with EIO."""
    pid = cluster.pid(name)
    assert pid is not None, f"{name} is not running"
    fifo = Path(f"{fifo_prefix}-{pid}.out")
    wait_for(fifo.exists, 10, f"{fifo}, the fiu control fifo of {name} (run under fiu-run -x)")
    ctrl = subprocess.Popen(
        ["fiu-ctrl", "-f", str(fifo_prefix), "-c", FSYNC_FAULT, str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        output, _ = ctrl.communicate(timeout=FIU_CTRL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(ctrl.pid, signal.SIGKILL)  # its own session: fiu-ctrl and its `cat`
        ctrl.communicate()
        raise AssertionError(f"fiu-ctrl did not answer within {FIU_CTRL_TIMEOUT_S} s") from None
    # fiu-ctrl exits 0 even when it could not deliver the command; it says so instead.
    assert ctrl.returncode == 0 and "rror" not in output, f"fiu-ctrl failed: {output!r}"


def fsync_failure_under_load(
    cluster: LocalCluster, fifo_prefix: Path, table: str, victim: int
) -> dict[str, tuple[str, str]]:
    """Inject the fault into ``victim`` under load and check how it stopped; returns what was
    acknowledged."""
    endpoint, name = cluster.endpoint, f"node-{victim}"
    with Writers(endpoint, table, WRITERS, "f") as writers:
        wait_for(
            lambda: writers.count() >= ACKED_BEFORE_FAULT,
            WRITES_WAIT_S,
            f"{ACKED_BEFORE_FAULT} acknowledged puts",
        )
        inject_fsync_failure(cluster, name, fifo_prefix)
        wait_for(
            lambda: not cluster.alive(name),
            NODE_EXIT_WAIT_S,
            f"{name} to stop after its fsync failed",
        )
        at_exit = writers.count()
        wait_for(
            lambda: writers.count() >= at_exit + ACKED_AFTER_FAULT,
            WRITES_WAIT_S,
            f"writes to go on without {name}",
        )
    # It stopped by itself, with the disk-failure status and one line naming what failed.
    assert cluster._exit_code(name) == EXIT_DISK_FAILURE  # no public accessor for it
    (line,) = log_lines(cluster, name, "CRITICAL", "disk failure")
    assert re.search(r"\[Errno 5\] f(data)?sync failed: Input/output error", line), line
    assert str(cluster.data_dir / name) in line, line
    check_all_acked(endpoint, table, writers.acked)
    return writers.acked


def restart_and_catch_up(cluster: LocalCluster, victim: int, members: list[int]) -> None:
    """Restart ``victim`` without the fault: it reopens its log, rejoins and catches up."""
    name = f"node-{victim}"
    del cluster.wrappers[name]
    assert cluster.start() == [name]
    wait_for(caught_up(cluster, members), CATCH_UP_WAIT_S, f"{name} to catch up")
    status = node_request(cluster, victim, "status")
    assert status["broken"] is None and status["role"] == "follower", status
    assert status["group"] is not None, status
    cut = log_lines(cluster, name, "WARNING", "entries from the end of the log")
    print(f"{name} after its restart: {cut or 'nothing cut from its log'}")


def test_fsync_failure_on_a_follower(fiu_run: str, tmp_path: Path) -> None:
    fifo_prefix = tmp_path / "fiu" / "ctl"
    with cluster_under_fiu(tmp_path / "data", fiu_run, fifo_prefix) as cluster:
        endpoint = cluster.endpoint
        httpx.put(f"{endpoint}/v1/tables/ff", timeout=30, trust_env=False).raise_for_status()
        leader, members = group_members(endpoint)
        victim = next(m for m in members if m != leader)
        acked = fsync_failure_under_load(cluster, fifo_prefix, "ff", victim)
        assert group_members(endpoint)[0] == leader  # no election was needed
        restart_and_catch_up(cluster, victim, members)
        check_all_acked(endpoint, "ff", acked)


def test_fsync_failure_on_the_leader(fiu_run: str, tmp_path: Path) -> None:
    fifo_prefix = tmp_path / "fiu" / "ctl"
    with cluster_under_fiu(tmp_path / "data", fiu_run, fifo_prefix) as cluster:
        endpoint = cluster.endpoint
        httpx.put(f"{endpoint}/v1/tables/fl", timeout=30, trust_env=False).raise_for_status()
        leader, members = group_members(endpoint)
        assert leader is not None
        acked = fsync_failure_under_load(cluster, fifo_prefix, "fl", leader)
        new_leader, _ = group_members(endpoint)
        assert new_leader is not None and new_leader != leader
        restart_and_catch_up(cluster, leader, members)
        check_all_acked(endpoint, "fl", acked)


# --- a bit flip in the middle of a WAL ----------------------------------------------------------


def record_offsets(path: Path) -> list[int]:
    """The offsets of the records of a well-formed WAL segment (see ``wal.py``)."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 8 + length
    assert offset == len(data), f"{path} does not end on a record boundary"
    return offsets


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def test_bit_flip_in_the_middle_of_a_follower_wal(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "data", READY_TIMEOUT_S) as cluster, cluster.logs_on_failure():
        endpoint = cluster.endpoint
        httpx.put(f"{endpoint}/v1/tables/bf", timeout=30, trust_env=False).raise_for_status()
        leader, members = group_members(endpoint)
        victim = next(m for m in members if m != leader)
        name = f"node-{victim}"
        with Writers(endpoint, "bf", WRITERS, "before") as before:
            wait_for(
                lambda: before.count() >= 2 * ACKED_BEFORE_FAULT,
                WRITES_WAIT_S,
                f"{2 * ACKED_BEFORE_FAULT} acknowledged puts",
            )
        cluster.stop([name])

        segment = cluster.data_dir / name / "wal" / segment_name(1)
        offsets = record_offsets(segment)
        # (the rm coalesces concurrent puts into batch entries: fewer records than puts)
        assert len(offsets) > 20, len(offsets)
        damaged = offsets[len(offsets) // 2]  # many valid records follow: not a torn tail
        flip_bit(segment, damaged + RECORD_HEADER_BYTES + 1)  # in its payload
        assert cluster.start() == [name]

        # It stays up, refuses to serve, and says why: the file and the offset.
        def reports_broken() -> bool:
            try:
                return bool(node_request(cluster, victim, "status")["broken"])
            except errors.Unavailable:
                return False  # not listening yet

        wait_for(reports_broken, WRITES_WAIT_S, f"{name} to report itself broken")
        status = node_request(cluster, victim, "status")
        where = f"{segment} at offset {damaged}: checksum mismatch"
        assert where in status["broken"], status
        assert status["role"] == "idle" and status["last_index"] == 0, status
        with pytest.raises(errors.Unavailable, match=re.escape(where)):
            node_request(cluster, victim, "get", table_id=1, key=b"k")
        (line,) = log_lines(cluster, name, "ERROR", "refusing to serve")
        assert where in line, line

        # Meta records it from the heartbeat: /v1/cluster and `rangekv cluster` show it.
        def flagged() -> dict[str, Any] | None:
            nodes = {n["id"]: n for n in cluster_info(endpoint)["nodes"]}
            node: dict[str, Any] = nodes[victim]
            return node if node["state"] == "flagged" else None

        wait_for(lambda: flagged() is not None, WRITES_WAIT_S, f"meta to flag {name}")
        node = flagged()
        # Still a member whose vote the group lacks (group 1), or already swapped out for a
        # spare (group none, "replaced in group 1 by node N: reports a broken log: ..."): a
        # broken follower is replaced from the pool at once (test_replace.py).
        assert node is not None and where in node["reason"], node
        assert node["group"] is not None or node["reason"].startswith("replaced in group"), node
        shown = [
            line
            for line in format_cluster(cluster_info(endpoint)).splitlines()
            if line.strip().startswith(f"node {victim} ") and "flagged" in line
        ]
        assert any(where in line for line in shown), shown  # the nodes section, with reason

        # The group goes on with its two sound members, and loses nothing.
        with Writers(endpoint, "bf", WRITERS, "after") as after:
            wait_for(
                lambda: after.count() >= ACKED_AFTER_FAULT,
                WRITES_WAIT_S,
                "writes with one member broken",
            )
        assert group_members(endpoint)[0] not in (None, victim)
        assert cluster.alive(name)
        check_all_acked(endpoint, "bf", {**before.acked, **after.acked})
        assert len(log_lines(cluster, name, "ERROR", "")) == 1  # one line, not one per beat


def test_meta_flags_a_node_whose_log_is_broken_and_unflags_it_once_sound() -> None:
    """The pure decision behind the flag (no processes): what a heartbeat does to the record."""
    reason = "/data/node-2/wal/00000000000000000001.wal at offset 10307: checksum mismatch"
    member = Node(2, "127.0.0.1:1", NODE_MEMBER, group=1)
    broken = NodeStatus.parse({"role": "idle", "broken": reason})
    assert broken.broken and broken.broken_reason == reason
    flagged, why = node_record(2, "127.0.0.1:1", member, broken)
    assert (flagged.state, flagged.reason, flagged.group) == (NODE_FLAGGED, reason, 1)
    assert reason in why
    assert node_record(2, "127.0.0.1:1", flagged, broken) == (flagged, "")  # written once
    sound = NodeStatus.parse({"role": "follower", "broken": None})
    assert node_record(2, "127.0.0.1:1", flagged, sound)[0] == member
    spare = Node(4, "127.0.0.1:4", NODE_SPARE)
    new, _ = node_record(4, "127.0.0.1:4", None, NodeStatus.parse({"broken": True}))
    assert (new.state, new.group, new.reason) == (NODE_FLAGGED, None, "it reports a broken log")
    assert node_record(4, "127.0.0.1:4", new, sound)[0] == spare
