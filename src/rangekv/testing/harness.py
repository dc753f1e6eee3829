"""One replica of the replication core in memory, for the tests that drive a few cores by hand.

``HarnessNode`` is a ``Core`` run by production's Ready loop (``rangekv.replication.loop``)
over a ``MemoryDisk`` whose fsyncs the test completes (``node.disk.sync_next()``), one at a
time and in any order with the deliveries: so a leader's appends leave before its own fsync, as
in production, and a promise not yet durable holds back what speaks for it. The node is the
loop's application: its state machine is the list of the entries it applied (``applied``).
The test owns the network (any object with ``send``), the clock (ticks) and, if the cores
compact, the snapshot transfers.

Its users: tests/unit/test_core.py (random faults), tests/unit/test_core_snapshot.py
(compaction and snapshots, scripted and random) and tests/interaction/env.py (scripted, printed
after etcd-io/raft's datadriven tests, which subclasses it to print what the loop does). What
differs between them is given to the constructor:

- ``leaders`` (epoch -> node), shared by the nodes of one test: one leader per epoch, checked as
  each node becomes leader;
- ``acked``: the entries a node applied while it led (the writes a client saw acknowledged,
  no-ops aside), for a check that no later leader lost one;
- ``applied_at`` (index -> entry): every node applies the same entry at an index, checked as
  each entry is applied;
- ``send_snapshot`` / ``abort_snapshot``: the test's snapshot transfers (the node is then the
  loop's snapshot source and sink); without them a snapshot need fails the test;
- ``observe``: sees each Ready before the loop performs it (the loop's ``observe``);
- ``label``: named in every assertion message (a random test's seed).

Every node checks, as it applies, that entries come in order and only once durable (the core
applies no further than its stable index).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rangekv.replication.core import LEADER, Config, Core, Ready, SnapshotNeed
from rangekv.replication.loop import Network, ReadyLoop
from rangekv.replication.messages import Entry
from rangekv.storage.memlog import MemoryDisk, MemoryLog

NOOP = b"noop"  # the no-op payload of the default Config


@dataclass
class Lost:
    """What a crash lost."""

    entries: list[Entry]  # the log's suffix no completed fsync covered
    hardstate: bool  # a hard state was written and not yet synced
    after_sync: int  # messages held for an fsync that never completed


class HarnessNode:
    """One replica: a core in the shared Ready loop over an in-memory disk (module docstring).
    ``loop`` and ``core`` are None while the node is down (``crash``, then ``start``)."""

    def __init__(
        self,
        node_id: int,
        members: list[int],
        network: Network,
        cfg: Config | None = None,
        *,
        leaders: dict[int, int] | None = None,
        acked: list[Entry] | None = None,
        applied_at: dict[int, Entry] | None = None,
        send_snapshot: Callable[[HarnessNode, SnapshotNeed], None] | None = None,
        abort_snapshot: Callable[[HarnessNode, str], None] | None = None,
        observe: Callable[[Ready], None] | None = None,
        label: object = None,
    ) -> None:
        self.id = node_id
        self.members = members
        self.network = network
        self.cfg = cfg if cfg is not None else Config(noop_payload=NOOP)
        self.leaders = leaders if leaders is not None else {}
        self.acked = acked
        self.applied_at = applied_at
        self._send_snapshot = send_snapshot
        self._abort_snapshot = abort_snapshot
        self._observe = observe
        self.label = label
        self.disk = MemoryDisk()
        self.applied: list[Entry] = []  # the state machine: entries 1..len(applied)
        self.reads_done: list[Any] = []  # tokens of the reads answered, in order
        self.loop: ReadyLoop | None = None
        self.up = True
        self.incarnation = 0  # starts so far: what a transfer from an older one is told by

    @property
    def log(self) -> MemoryLog:
        return self.disk.log

    @property
    def core(self) -> Core | None:
        return self.loop.core if self.loop is not None else None

    @property
    def applied_index(self) -> int:
        return len(self.applied)

    def start(self) -> None:
        """A new core from the durable log, hard state and state machine."""
        assert self.log.durable == self.log.last_index  # a crash kept only what was durable
        core = Core(self.id, self.members, self.log, dict(self.disk.hardstate),
                    len(self.applied), self.cfg)
        snapshots = self._send_snapshot is not None or self._abort_snapshot is not None
        self.loop = ReadyLoop(core, self.disk, self.network, self,
                              snapshots=self if snapshots else None,
                              sink=self if snapshots else None, observe=self._observe)
        self.up = True
        self.incarnation += 1

    def crash(self) -> Lost:
        """The process dies: the unsynced log suffix and hard state, pending fsyncs and what
        waits for them, and the state machine past what the durable log can replay are lost."""
        assert self.loop is not None
        held = sum(len(u.after_sync) for u in self.loop.unsynced)
        self.up = False
        self.loop.close()
        self.loop = None
        entries, hardstate = self.disk.crash()
        # The state machine is durable up to what the log can no longer replay (its base) and
        # rebuilt from the durable log above it.
        keep = max(self.log.base_index, min(len(self.applied), self.log.durable))
        self.applied = self.applied[:keep]
        return Lost(entries, hardstate, held)

    # -- the loop's application ----------------------------------------------------------------
    def apply(self, entries: list[Entry]) -> None:
        core = self.core
        assert core is not None
        for e in entries:
            assert e.index == len(self.applied) + 1, (
                self.label, "applied out of order", self.id, e, len(self.applied))
            assert e.index <= self.log.durable, (
                self.label, "applied a non-durable entry", self.id, e)
            if self.applied_at is not None:
                seen = self.applied_at.setdefault(e.index, e)
                assert seen == e, (
                    self.label, "replicas applied different entries", self.id, e, seen)
            self.applied.append(e)
            noop = e.payload == self.cfg.noop_payload
            if self.acked is not None and core.role == LEADER and not noop:
                self.acked.append(e)

    def read_ready(self, token: Any) -> None:
        self.reads_done.append(token)

    def read_failed(self, token: Any) -> None:
        pass  # (a test sees it in the Ready)

    def became_leader(self, epoch: int) -> None:
        led = self.leaders.setdefault(epoch, self.id)
        assert led == self.id, (self.label, "two leaders in one epoch", epoch, led, self.id)

    def lost_leadership(self) -> None:
        pass

    # -- the loop's snapshot source and sink (with the test's transfers) ------------------------
    def send_snapshot(self, need: SnapshotNeed, delay_s: float) -> None:
        assert self._send_snapshot is not None, (self.label, self.id, need)
        self._send_snapshot(self, need)

    def abort_snapshot(self, why: str) -> None:
        if self._abort_snapshot is None:
            assert self.loop is not None
            self.loop.snapshot_aborted()  # nothing to clean up
        else:
            self._abort_snapshot(self, why)
