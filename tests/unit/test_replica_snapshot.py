"""Compaction and snapshots through the asyncio driver, with real WALs and RocksDB indexes.

Three (or four) replicas in one event loop; replication messages are delivered in-process, and
snapshot requests go through ``wire.encode``/``FrameDecoder`` (what the wire would carry) to the
target replica's ``on_snapshot_request``. The network can cut a node off and damage a chunk in
flight.

* A follower cut off while the leader compacts past it catches up by snapshot; its state hashes
  equal, its log starts after the snapshot, and it restarts replaying only what it must.
* A damaged chunk is refused, the transfer aborted and retried with a backoff, then succeeds.
* A leader that goes quiet mid-transfer: the follower aborts and unfreezes on its own.
* A follower killed mid-transfer leaves a staging directory that the restart removes.
* A new, empty member gets a snapshot; compaction keeps every log short.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rangekv import errors, sequencer, wire
from rangekv.cluster.local import LocalCluster
from rangekv.replication import driver
from rangekv.replication.driver import Replica
from rangekv.storage import snapshot
from rangekv.storage.wal import WAL
from rangekv.testing.replicas import LoopbackGroup, wait_until

Fault = Callable[[int, int, str, dict[str, Any]], dict[str, Any] | None]


class Stopped(Exception):
    pass


@pytest.fixture(autouse=True)
def no_process_exit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A replica that decides to stop the process fails the test instead of ending pytest."""
    stops: list[int] = []

    def stop(code: int) -> None:
        stops.append(code)
        raise Stopped(f"the driver stopped the process with status {code}")

    monkeypatch.setattr(driver, "_exit_process", stop)
    yield
    assert not stops, f"a replica stopped the process (status {stops})"


class Group(LoopbackGroup):
    """Replicas that compact often and send snapshots to each other through ``fault``."""

    def __init__(self, root: Path, ids: tuple[int, ...] = (1, 2, 3), compact_entries: int = 50,
                 compact_retain: int = 20) -> None:
        super().__init__(root, ids)
        self.compact = (compact_entries, compact_retain)
        self.fault: Fault | None = None  # may rewrite a snapshot request in flight
        self.requests: list[tuple[int, int, str]] = []

    async def _rpc(self, frm: int, peer: int, op: str, fields: dict[str, Any],
                   timeout_s: float) -> dict[str, Any]:
        if frm in self.cut or peer in self.cut or peer not in self.replicas:
            raise errors.Unavailable(f"cannot connect to node {peer}")
        if self.fault is not None:
            fields = self.fault(frm, peer, op, fields) or fields
            if peer in self.cut or peer not in self.replicas:
                raise errors.OutcomeUnknown(f"connection to node {peer} lost")
        self.requests.append((frm, peer, op))
        body = {"t": "req", "id": 1, "op": op, **fields}
        (decoded,) = wire.FrameDecoder().feed(wire.encode(body))  # as the wire carries it
        try:
            async with asyncio.timeout(timeout_s):
                return await self.replicas[peer].on_snapshot_request(op, decoded)
        except errors.RangeKVError as err:  # the reply carries the error back
            raise errors.from_dict(err.to_dict()) from None

    def storage(self, node_id: int) -> tuple[Path, WAL]:
        d, wal = super().storage(node_id)
        snapshot.recover(d, wal)  # as the node does before it opens its index
        return d, wal

    async def open(self, node_id: int, **options: Any) -> Replica:
        async def rpc(peer: int, op: str, fields: dict[str, Any], timeout_s: float
                      ) -> dict[str, Any]:
            return await self._rpc(node_id, peer, op, fields, timeout_s)

        entries, retain = self.compact
        return await super().open(node_id, snapshot_rpc=rpc, compact_entries=entries,
                                  compact_retain=retain, **options)

    def kill(self, node_id: int) -> None:
        """The process dies: its tasks stop, its files stay as they are (no flush, no sync)."""
        replica = self.replicas.pop(node_id)
        for task in [*replica._tasks, *replica._sending.values()]:
            task.cancel()
        replica.wal._close_fds()
        if replica._engine is not None:
            # RocksDB without its WAL loses the memtable in a crash; closing without a flush
            # is not possible through rocksdict, so drop the object (the directory lock goes).
            replica._engine._backend._db = None  # type: ignore[attr-defined]
            replica._engine = None


def seq(n: int) -> bytes:
    return sequencer.make(n, 0, 9)


async def write(leader: Replica, lo: int, hi: int, size: int = 200) -> None:
    """Puts of keys lo..hi-1, 16 at a time."""
    for start in range(lo, hi, 16):
        await asyncio.gather(*[
            leader.propose({"op": "put", "t": 7, "k": b"k%06d" % i,
                            "v": os.urandom(size // 2).hex().encode(), "s": seq(i), "c": None})
            for i in range(start, min(start + 16, hi))])


def caught_up(g: Group, leader: Replica) -> Callable[[], bool]:
    return lambda: all(r.core.applied == leader.core.applied and r.core.installing is None
                       for r in g.replicas.values())


def same_state(g: Group) -> None:
    hashes = {i: (r.engine.applied_index, r.engine.content_hash())
              for i, r in g.replicas.items()}
    assert len(set(hashes.values())) == 1, hashes


# -- catching up ------------------------------------------------------------------------------


def test_a_follower_behind_the_leaders_base_catches_up_by_snapshot(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {3}
        await write(leader, 0, 600)
        await wait_until(lambda: leader.core.first_index > g.replicas[3].core.last_index + 1,
                         "the leader to compact past node 3")
        assert leader.stats["compactions"] >= 3
        behind = g.replicas[3].core.last_index
        g.cut = set()
        await wait_until(caught_up(g, leader), "node 3 to catch up")
        n3 = g.replicas[3]
        assert n3.stats["snapshots_installed"] == 1
        await wait_until(lambda: leader.stats["snapshots_sent"], "the answer to the leader")
        assert leader.stats["snapshots_sent"] == 1
        assert n3.core.first_index > behind + 1  # its log starts after the snapshot
        same_state(g)
        assert n3.engine.get(7, b"k000599") is not None
        assert sorted(os.listdir(tmp_path / "n3")) == ["hardstate", "index", "wal"]
        assert not [n for n in os.listdir(tmp_path / "n1") if n.startswith("snapshot")]
        # It follows with appends from there on.
        await write(leader, 600, 700)
        await wait_until(caught_up(g, leader), "node 3 to follow")
        same_state(g)
        # A restart replays only the entries after the last flush (compaction flushes).
        await g.close(3)
        n3 = await g.open(3)
        assert n3.replayed_on_start == 0  # a clean close flushed
        status = n3.status()
        assert status["log_first_index"] > behind + 1
        assert status["replay_entries"] == 0
        g.kill(3)
        n3 = await g.open(3)
        assert n3.replayed_on_start <= g.compact[0] + g.compact[1]
        await wait_until(caught_up(g, leader), "node 3 to come back")
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_a_damaged_chunk_is_refused_and_the_snapshot_is_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {3}
        await write(leader, 0, 400)
        await wait_until(lambda: leader.core.first_index > g.replicas[3].core.last_index + 1,
                         "the leader to compact past node 3")
        damaged = []

        def flip_once(frm: int, peer: int, op: str, fields: dict[str, Any]
                      ) -> dict[str, Any] | None:
            if op == "snapshot_chunk" and not damaged:
                data = bytearray(fields["data"])
                data[len(data) // 2] ^= 0x01
                damaged.append(fields["offset"])
                return {**fields, "data": bytes(data)}  # the crc still says the old bytes
            return None

        g.fault = flip_once
        g.cut = set()
        await wait_until(caught_up(g, leader), "node 3 to catch up")
        await wait_until(lambda: leader.stats["snapshots_sent"], "the answer to the leader")
        assert damaged
        assert leader.stats["snapshots_failed"] >= 1 and leader.stats["snapshots_sent"] == 1
        assert g.replicas[3].stats["snapshots_installed"] == 1
        same_state(g)
        refused = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
        assert any("checksum mismatch" in line for line in refused), refused
        # The retry came after a backoff, with a fresh offer.
        begins = [op for _, _, op in g.requests if op == "snapshot_begin"]
        assert len(begins) >= 2
        await g.close_all()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())


def test_a_transfer_that_goes_quiet_is_aborted_by_the_follower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "SNAPSHOT_IDLE_S", 0.5)

    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {3}
        await write(leader, 0, 400)
        await wait_until(lambda: leader.core.first_index > g.replicas[3].core.last_index + 1,
                         "the leader to compact past node 3")
        stalled = asyncio.Event()

        def stall(frm: int, peer: int, op: str, fields: dict[str, Any]) -> None:
            if op == "snapshot_begin" and not stalled.is_set():
                stalled.set()
                g.cut = {1}  # the leader is cut off right after its offer

        g.fault = stall
        g.cut = set()
        n3 = g.replicas[3]
        await wait_until(lambda: n3.core.installing is not None, "node 3 to accept")
        assert n3.status()["installing_snapshot"]
        await wait_until(lambda: n3.core.installing is None, "node 3 to give up", 5.0)
        assert not (tmp_path / "n3" / snapshot.INCOMING_NAME).exists()
        assert n3.core.role == "follower" and n3.stats["snapshots_installed"] == 0
        g.cut = set()
        await wait_until(caught_up(g, leader), "node 3 to catch up after all")
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_a_newer_epoch_fences_a_transfer_so_the_election_need_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader dies mid-transfer; node 2 needs node 3's promise to win. Node 3 promises at
    once and aborts the old transfer (it does not wait out SNAPSHOT_IDLE_S) to answer."""
    monkeypatch.setattr(driver, "SNAPSHOT_IDLE_S", 120.0)

    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {3}
        await write(leader, 0, 400)
        await wait_until(lambda: leader.core.first_index > g.replicas[3].core.last_index + 1,
                         "the leader to compact past node 3")
        chunks: list[int] = []

        def leader_dies(frm: int, peer: int, op: str, fields: dict[str, Any]) -> None:
            if op == "snapshot_chunk" and not chunks:
                chunks.append(fields["offset"])
                g.cut = {1}

        g.fault = leader_dies
        g.cut = set()
        n3 = g.replicas[3]
        await wait_until(lambda: chunks, "the transfer to begin")
        assert n3.core.installing is not None
        started = asyncio.get_running_loop().time()
        new = await g.elect(2, epoch=2)
        assert asyncio.get_running_loop().time() - started < 5.0
        assert n3.core.installing is None and n3.core.promised == 2
        await wait_until(lambda: not (tmp_path / "n3" / snapshot.INCOMING_NAME).exists(),
                         "the staging directory to go")
        # The new leader brings node 3 up to date (by a snapshot of its own).
        await write(new, 1000, 1100)
        await wait_until(lambda: n3.core.applied == new.core.applied, "node 3 to catch up")
        g.cut = set()
        await wait_until(caught_up(g, new), "everyone to catch up")
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_a_follower_killed_mid_transfer_restarts_clean(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        g.cut = {3}
        await write(leader, 0, 400)
        await wait_until(lambda: leader.core.first_index > g.replicas[3].core.last_index + 1,
                         "the leader to compact past node 3")
        killed = []

        def kill_after_a_chunk(frm: int, peer: int, op: str, fields: dict[str, Any]) -> None:
            if op == "snapshot_chunk" and not killed:
                killed.append(fields["offset"])
                g.kill(3)

        g.fault = kill_after_a_chunk
        g.cut = set()
        await wait_until(lambda: killed, "a chunk to be on its way")
        assert (tmp_path / "n3" / snapshot.INCOMING_NAME).is_dir()
        n3 = await g.open(3)  # the restart removes the half-received snapshot
        assert not (tmp_path / "n3" / snapshot.INCOMING_NAME).exists()
        assert n3.core.installing is None
        await wait_until(caught_up(g, leader), "node 3 to catch up")
        assert n3.stats["snapshots_installed"] == 1
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_a_new_empty_member_gets_a_snapshot(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path)
        leader = await g.serve_table()
        await write(leader, 0, 300)
        await wait_until(lambda: leader.core.first_index > 100, "the leader to compact")
        # Node 4 joins with an empty log (any peer whose next falls below the base).
        g.members = [1, 2, 3, 4]
        for r in g.replicas.values():
            r.configure(g.members)
        n4 = await g.open(4)
        await wait_until(caught_up(g, leader), "node 4 to catch up")
        assert n4.stats["snapshots_installed"] == 1
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_compaction_keeps_every_log_short(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path, compact_entries=100, compact_retain=30)
        leader = await g.serve_table()
        await write(leader, 0, 1200, size=50)
        await wait_until(caught_up(g, leader), "the followers")

        def short(r: Replica) -> bool:
            st = r.status()
            log_entries = st["last_index"] - st["log_first_index"] + 1
            # At most retain (twice on a leader keeping entries for a peer a little behind) +
            # one compaction period (plus the batch that crossed it). Entries that arrived while
            # a compaction was flushing wait for the next one (checked every tick), hence the
            # wait rather than a check at one instant.
            return log_entries <= 2 * 30 + 100 + 16 and st["replay_entries"] <= 100 + 16

        await wait_until(lambda: all(short(r) for r in g.replicas.values()),
                         "every log to be compacted", timeout_s=5)
        for r in g.replicas.values():
            assert r.stats["compactions"] >= 8
        # Nobody needed a snapshot: the peers were live and close.
        assert leader.stats["snapshots_sent"] == 0
        same_state(g)
        await g.close_all()

    asyncio.run(scenario())


def test_the_leader_keeps_what_a_live_peer_close_behind_still_needs(tmp_path: Path) -> None:
    async def scenario() -> None:
        g = Group(tmp_path, compact_entries=100, compact_retain=50)
        leader = await g.serve_table()
        await write(leader, 0, 200)
        await wait_until(caught_up(g, leader), "the followers")
        slow = leader.core.progress[3]
        assert leader.compaction_target() == leader.core.applied - 50
        slow.match = leader.core.applied - 80  # within one more retain window: kept for it
        assert leader.compaction_target() == slow.match
        slow.match = leader.core.applied - 101  # further behind: it will get a snapshot
        assert leader.compaction_target() == leader.core.applied - 50
        slow.heard_tick -= 10 * leader.core.cfg.quorum_ticks  # not live: ignored too
        slow.match = leader.core.applied - 80
        assert leader.compaction_target() == leader.core.applied - 50
        await g.close_all()

    asyncio.run(scenario())


def test_local_cluster_passes_the_compaction_flags_to_nodes() -> None:
    c = LocalCluster("/tmp/x", compact_entries=200, compact_retain=50)
    argv = c.spec("node-1").argv
    assert argv[-4:] == ("--compact-entries", "200", "--compact-retain", "50")
    assert "--compact-entries" not in LocalCluster("/tmp/x").spec("node-1").argv
