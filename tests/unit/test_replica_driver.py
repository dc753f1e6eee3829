"""The asyncio driver with real WALs and RocksDB indexes, three replicas in one event loop.

Messages are delivered in-process (``loop.call_soon``) so the test covers the driver's Ready
handling, group commit, apply and read-index without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from rangekv import errors, sequencer
from rangekv.node import server
from rangekv.replication import bugs, driver
from rangekv.replication.core import Core, Ready
from rangekv.testing.replicas import LoopbackGroup, wait_until


class Group(LoopbackGroup):
    async def close_exited(self, node_id: int) -> None:
        """Release the files of a replica whose process "exited" (``FakeExit``): its persist
        task ended with ``Exited``, which ``stop`` passes on."""
        self.cut.add(node_id)
        replica = self.replicas.pop(node_id)
        with contextlib.suppress(Exited):
            await replica.stop()
        replica.close_storage()


def seq(n: int) -> bytes:
    return sequencer.make(n, 0, 9)


def test_replicated_writes_reads_and_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        seqs = []
        # Concurrent writers share fsyncs (group commit).
        results = await asyncio.gather(*[
            leader.propose({"op": "put", "t": 7, "k": f"k{i:03d}".encode(),
                            "v": f"v{i}".encode(), "s": seq(1000 + i), "c": None})
            for i in range(100)
        ])
        seqs = [r["seq"] for r in results]
        assert len(set(seqs)) == 100
        assert leader.stats["fsyncs"] < 100, leader.stats
        await leader.linearizable()
        assert leader.engine.get(7, b"k042") == (b"v42", seqs[42])
        # The leader makes seqs increase even if an rm clock lags behind.
        late = await leader.propose({"op": "put", "t": 7, "k": b"late", "v": b"x",
                                     "s": seq(1), "c": None})
        assert late["seq"] > max(seqs)
        # Conditional put decided at apply time.
        with pytest.raises(errors.PreconditionFailed):
            await leader.propose({"op": "put", "t": 7, "k": b"k001", "v": b"no",
                                  "s": seq(5), "c": seq(123)})
        # Followers applied the same entries.
        for _ in range(100):
            if all(r.engine.applied_index == leader.engine.applied_index
                   for r in g.replicas.values()):
                break
            await asyncio.sleep(0.01)
        hashes = {r.engine.content_hash() for r in g.replicas.values()}
        assert len(hashes) == 1
        # A follower refuses client work and names the leader.
        with pytest.raises(errors.NotLeader) as info:
            await g.replicas[2].propose({"op": "noop"})
        assert info.value.leader_hint == 1
        # Stop everything; start again; a new epoch leads with all the data.
        for i in list(g.replicas):
            await g.close(i)
        for i in g.ids:
            await g.open(i)
        leader = await g.elect(2, epoch=2)
        await leader.linearizable()
        assert leader.engine.get(7, b"k042") == (b"v42", seqs[42])
        again = await leader.propose({"op": "put", "t": 7, "k": b"after", "v": b"y",
                                      "s": seq(2), "c": None})
        assert again["seq"] > late["seq"]
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())


def test_minority_leader_cannot_write_or_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table(1)
        g.cut = {1}
        with pytest.raises(errors.OutcomeUnknown):
            await leader.propose({"op": "put", "t": 1, "k": b"k", "v": b"v", "s": seq(1),
                                  "c": None})
        with pytest.raises((errors.Unavailable, errors.NotLeader)):
            await leader.linearizable()
        # The majority side elects epoch 2 and serves.
        new = await g.elect(2, epoch=2)
        await new.linearizable()
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())


# -- disk faults -----------------------------------------------------------------------------


class Exited(BaseException):
    """What the stand-in for the process exit raises: it unwinds the persist thread (as
    os._exit would end it) without ending pytest."""


class FakeExit:
    """Replaces ``driver._exit_process`` and records the exit codes asked for."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        if len(self.codes) == 1:
            raise Exited(code)
        # Later calls come from _crash_on_error, reporting the persist task that Exited ended.


def fail_syncs_under(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[str]:
    """From now on fdatasync and fsync of any file under ``directory`` (one replica's WAL and
    hard state) fail with EIO, as under ``fiu-run -x``; returns the paths of the failed calls."""
    failed: list[str] = []

    def failing(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.startswith(f"{directory}{os.sep}"):
                failed.append(path)
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        return sync

    monkeypatch.setattr(os, "fdatasync", failing(os.fdatasync))
    monkeypatch.setattr(os, "fsync", failing(os.fsync))
    return failed


def disk_failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.getMessage().startswith("disk failure")]


def put(key: bytes, value: bytes, n: int) -> dict[str, object]:
    return {"op": "put", "t": 7, "k": key, "v": value, "s": seq(n), "c": None}


def test_a_follower_whose_fsync_fails_stops_without_acknowledging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        await leader.propose(put(b"k0", b"v0", 1))
        exit_ = FakeExit()
        monkeypatch.setattr(driver, "_exit_process", exit_)
        with monkeypatch.context() as m:
            failed = fail_syncs_under(m, tmp_path / "n2")
            # Committed on the leader and node 3: a majority, without node 2.
            result = await leader.propose(put(b"k1", b"v1", 2))
            index = leader.engine.applied_index
            await wait_until(lambda: bool(exit_.codes), "node 2 to stop")
        assert exit_.codes[0] == driver.EXIT_DISK_FAILURE
        assert len(failed) == 1, failed  # stopped at the first failure, retried nothing
        assert leader.core.progress[2].match < index  # node 2 never acknowledged the entry
        (line,) = disk_failure_lines(caplog)
        assert "fdatasync failed" in line and failed[0] in line
        # Restarted without the fault, node 2 cuts what it wrote after its last good sync and
        # catches up from the leader.
        await g.close_exited(2)
        g.cut.discard(2)
        n2 = await g.open(2)
        assert n2.wal.unsynced_entries_cut >= 1
        await wait_until(lambda: n2.engine.applied_index == leader.engine.applied_index,
                         "node 2 to catch up")
        assert n2.engine.get(7, b"k1") == (b"v1", result["seq"])
        assert len({r.engine.content_hash() for r in g.replicas.values()}) == 1
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())


def test_a_leader_whose_fsync_fails_acknowledges_nothing_of_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        await leader.propose(put(b"k0", b"v0", 1))
        exit_ = FakeExit()
        monkeypatch.setattr(driver, "_exit_process", exit_)
        with monkeypatch.context() as m:
            fail_syncs_under(m, tmp_path / "n1")
            pending = asyncio.get_running_loop().create_task(
                leader.propose(put(b"k1", b"v1", 2)))
            await wait_until(lambda: bool(exit_.codes), "the leader to stop")
            index = leader.core.last_index
            # The followers made it durable and acknowledged it: it is committed ...
            await wait_until(lambda: leader.status()["commit_index"] >= index,
                             "the followers' acknowledgements")
        assert exit_.codes[0] == driver.EXIT_DISK_FAILURE
        assert disk_failure_lines(caplog)
        # ... but the leader, whose own write of it failed, neither applied nor answered it
        # (the step that took the followers' acknowledgements would have applied it).
        await asyncio.sleep(0)
        assert leader.status()["stable_index"] < index
        assert leader.engine.applied_index < index
        assert not pending.done()
        pending.cancel()
        await g.close_exited(1)
        # Committed by a majority, the write survives under the next leader ...
        new = await g.elect(2, epoch=2)
        await new.linearizable()
        assert new.engine.get(7, b"k1") is not None
        # ... and the old leader, restarted without the fault, cuts its unsynced tail and
        # catches up.
        g.cut.discard(1)
        old = await g.open(1)
        assert old.wal.unsynced_entries_cut >= 1
        await wait_until(lambda: old.engine.applied_index == new.engine.applied_index,
                         "the old leader to catch up")
        assert len({r.engine.content_hash() for r in g.replicas.values()}) == 1
        for i in list(g.replicas):
            await g.close(i)

    asyncio.run(scenario())


def test_a_leader_retaking_a_newer_epoch_keeps_its_pending_writes(tmp_path: Path) -> None:
    """Meta re-elects the serving leader for a new epoch to change the members: writes pending
    on it commit with the new epoch's no-op, answered with their results, not "unknown"."""

    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {2, 3}  # nothing commits for now
        pending = [asyncio.ensure_future(leader.propose(
            {"op": "put", "t": 7, "k": f"p{i}".encode(), "v": b"v", "s": seq(100 + i),
             "c": None})) for i in range(5)]
        await asyncio.sleep(0.05)
        assert not any(p.done() for p in pending)
        leader.campaign(2)  # as the swap of a replacement does
        g.cut = set()
        results = await asyncio.gather(*pending)
        assert [len(r["seq"]) for r in results] == [16] * 5
        assert leader.core.serving and leader.core.promised == 2
        await leader.linearizable()
        assert leader.engine.get(7, b"p4") is not None
        for i in g.ids:
            await g.close(i)

    asyncio.run(scenario())


def test_overdue_waiters_are_taken_in_deadline_order_and_only_when_due() -> None:
    from rangekv.replication.driver import _pop_overdue

    deadlines = {5: 1.0, 6: 2.0, 7: 3.0}
    assert _pop_overdue(deadlines, 0.5) == [] and list(deadlines) == [5, 6, 7]
    assert _pop_overdue(deadlines, 2.0) == [5, 6] and deadlines == {7: 3.0}
    assert _pop_overdue(deadlines, 9.0) == [7] and deadlines == {}
    assert _pop_overdue(deadlines, 9.0) == []


def test_a_planted_bug_is_a_factory_argument_not_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver runs the core its ``core_factory`` makes (a planted bug's only when asked),
    and a node gets one from its hidden ``--planted-bug`` option; the variable that used to
    choose it is ignored."""
    monkeypatch.setenv("RANGEKV_PLANTED_BUG", "read-without-quorum")

    async def scenario() -> None:
        g = Group(tmp_path)
        plain = await g.open(1)
        assert type(plain.core) is Core
        buggy = await g.open(2, core_factory=bugs.BUGS["read-without-quorum"])
        assert type(buggy.core) is bugs.ReadWithoutQuorum
        assert buggy.loop.core is buggy.core  # performed by the shared Ready loop
        await g.close_all()

    asyncio.run(scenario())

    made: list[object] = []

    class Stop(Exception):
        pass

    def fake_node(*args: object, core_factory: object, **kwargs: object) -> None:
        made.append(core_factory)
        raise Stop

    monkeypatch.setattr(server, "Node", fake_node)
    monkeypatch.setattr(server, "setup_logging", lambda *a, **k: None)  # (pytest's capture)
    argv = ["--id", "1", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "n"),
            "--meta", "127.0.0.1:2"]
    for extra in ([], ["--planted-bug", "skip-log-matching"]):
        with pytest.raises(Stop):
            server.main(argv + extra)
    assert made == [Core, bugs.SkipLogMatching]


def test_the_driver_takes_every_ready_through_the_shared_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code path: the driver's cores hand their Readies to ``ReadyLoop.process`` only, the
    loop the simulator and the tests run too."""
    takers: Counter[str] = Counter()
    ready = Core.ready

    def spy(core: Core) -> Ready:
        takers[sys._getframe(1).f_code.co_qualname] += 1
        return ready(core)

    monkeypatch.setattr(Core, "ready", spy)

    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        for i in range(20):
            await leader.propose(put(f"k{i}".encode(), b"v", 10 + i))
        await leader.linearizable()
        await g.close_all()

    asyncio.run(scenario())
    assert set(takers) == {"ReadyLoop.process"} and takers["ReadyLoop.process"] > 20, takers
