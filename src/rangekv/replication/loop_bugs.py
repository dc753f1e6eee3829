"""Planted bugs in the Ready loop: each removes one rule of ``ReadyLoop`` (``loop.py``), to show
that the simulator (``rangekv sim --bug NAME``) and the chaos runs (``rangekv chaos
--planted-bug NAME``) catch a bug outside the replication core too.

Each is a subclass of the real ``ReadyLoop`` overriding one of its rule methods, so the core,
the disk, the network and the rest of the loop are the production code. A bug is planted by
handing its class where a loop is made: the ``loop_factory`` argument of the driver's
``Replica`` (a node's hidden ``--planted-bug NAME`` option) and of the simulator's
``Simulation``. Like the core's (``bugs.py``), they live beside the code they break, so that a
node may run one without importing the simulator.
"""

from __future__ import annotations

import dataclasses

from rangekv.replication.core import Ready, SnapshotNeed
from rangekv.replication.loop import LoopFactory, ReadyLoop


class ReleaseBeforeFsync(ReadyLoop):
    """(h) A batch counts as durable as soon as its fsync is asked for, not when the disk
    reports it: a follower acknowledges entries and grants votes, and a leader counts its own
    entries toward a commit (then applies them and may compact them away), that a crash then
    erases. The WAL refuses to drop a prefix it has not made durable, which catches it first."""

    def _await_sync(self, rd: Ready) -> None:
        super()._await_sync(rd)
        self._synced_token = self._tokens  # (the real loop waits for the disk's report)


class SnapshotVotersOnly(ReadyLoop):
    """(i) The leader sends snapshots to voters only (issue 16's bug): a learner that fell
    behind the leader's compaction never catches up, so a replacement never completes."""

    def _start_snapshot(self, need: SnapshotNeed) -> None:
        if need.peer in self.core.learners:
            return  # (the core waits for a report that never comes)
        super()._start_snapshot(need)


class CutNotWritten(ReadyLoop):
    """(j) The loop leaves out the cut (``truncate_from``) from a Ready's writes: a follower
    keeps a deposed leader's entries past the point where its new leader's log differs, under
    the new leader's entries. The WAL refuses the append that does not follow its last entry,
    and the replica stops (a crash, as in production)."""

    def _write(self, rd: Ready) -> None:
        super()._write(dataclasses.replace(rd, truncate_from=None))


LOOP_BUGS: dict[str, type[ReadyLoop]] = {
    "release-before-fsync": ReleaseBeforeFsync,
    "snapshot-voters-only": SnapshotVotersOnly,
    "cut-not-written": CutNotWritten,
}


def loop_factory(name: str | None) -> LoopFactory:
    """The loop of planted bug ``name`` (``ReadyLoop`` for None); KeyError names the known
    ones."""
    if name is None:
        return ReadyLoop
    if name not in LOOP_BUGS:
        raise KeyError(f"no planted loop bug {name!r} (have {', '.join(sorted(LOOP_BUGS))})")
    return LOOP_BUGS[name]
