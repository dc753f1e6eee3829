"""Planted bugs in the replication core: each removes one rule of the protocol, to show that
the simulator (``rangekv sim --bug NAME``) and the chaos runs (``rangekv chaos --planted-bug
NAME``) catch it.

Each is a subclass of the real ``Core`` overriding exactly one of its decision methods (the
"decisions" section of ``core.py``), so the rest of the code under test is the production code.
A bug is planted by handing its class where a core is made: the ``core_factory`` argument of
the driver's ``Replica`` (a node's hidden ``--planted-bug NAME`` option) and of the simulator.
Production code never picks one by itself: there is no environment variable for it.

They live here, beside the core, so that a node may run one without importing the simulator.
The Ready loop's planted bugs are in ``loop_bugs.py``; ``factories`` picks either kind by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rangekv.replication.core import SNAPSHOT_ACCEPT, SNAPSHOT_STALE, Core
from rangekv.replication.loop import LoopFactory, ReadyLoop
from rangekv.replication.loop_bugs import LOOP_BUGS
from rangekv.replication.messages import Msg

# What makes a replica's core: ``Core`` itself, or a planted bug's subclass (same arguments).
CoreFactory = Callable[..., Core]


class AckBeforeFsync(Core):
    """(a) A follower acknowledges entries before they are durable, so the leader may count a
    majority that a crash then erases."""

    def _ack_after_sync(self, msg: Msg) -> None:
        self._out.messages.append(msg)


class AcceptLowerEpoch(Core):
    """(b) A member takes appends and heartbeats from a deposed leader's older epoch."""

    def _is_stale(self, epoch: int) -> bool:
        return False

    def _follow(self, msg: Msg) -> None:
        if msg.epoch < self.promised:
            self.leader = msg.frm  # obey the old leader as if it were current
            return
        super()._follow(msg)


class SkipLogMatching(Core):
    """(c) A follower accepts entries after ``prev`` without checking that its entry at
    ``prev`` has the leader's epoch."""

    def _log_matches(self, prev: int, prev_epoch: int) -> bool:
        return prev <= self.last_index


class ReadWithoutQuorum(Core):
    """(d) The leader answers a read from its own state without confirming its epoch with a
    majority, so a deposed leader can answer stale."""

    def _confirm_read(self, token: Any) -> None:
        self._out.reads.append((token, self.commit))


class ApplyBeforeCommit(Core):
    """(e) Entries are applied once durable locally, before a majority has them."""

    def _apply_limit(self) -> int:
        return self.stable

    def on_applied(self, index: int) -> None:
        self.applied = index  # (the real method asserts applied <= commit)


class InstallStaleSnapshot(Core):
    """(f) A follower installs a snapshot offered at or below its commit index (InstallSnapshot
    without its staleness rule), so its commit and applied state go backward and its log loses
    entries it may have acknowledged."""

    def _snapshot_answer(self, index: int, snap_epoch: int) -> str:
        answer = super()._snapshot_answer(index, snap_epoch)
        return SNAPSHOT_ACCEPT if answer == SNAPSHOT_STALE else answer

    def on_snapshot_installed(self, index: int, epoch: int) -> None:
        # (the real method asserts index > commit)
        self._reset_to_snapshot(index, epoch)


class CampaignWithoutJoint(Core):
    """(g) A candidate wins with a majority of the new members alone, ignoring the previous
    members (``joint``) while a reconfiguration is unfinished: an entry committed under the
    old members can be on none of the new majority."""

    def _election_won(self) -> bool:
        return self._majority(self.accepts, self.members)


BUGS: dict[str, type[Core]] = {
    "ack-before-fsync": AckBeforeFsync,
    "accept-lower-epoch": AcceptLowerEpoch,
    "skip-log-matching": SkipLogMatching,
    "read-without-quorum": ReadWithoutQuorum,
    "apply-before-commit": ApplyBeforeCommit,
    "install-stale-snapshot": InstallStaleSnapshot,
    "campaign-without-joint": CampaignWithoutJoint,
}


def factories(name: str | None) -> tuple[CoreFactory, LoopFactory]:
    """The core and the Ready loop a node runs for planted bug ``name`` (the node's
    ``--planted-bug``): one of them is the bug's, the other the real one. KeyError names the
    known ones."""
    if name is not None and name in LOOP_BUGS:
        return Core, LOOP_BUGS[name]
    return core_factory(name), ReadyLoop


# Every planted bug a node can run, the core's and the loop's.
NODE_BUGS: tuple[str, ...] = tuple(sorted({*BUGS, *LOOP_BUGS}))


def core_factory(name: str | None) -> CoreFactory:
    """The core of planted bug ``name`` (``Core`` for None); KeyError names the known ones."""
    if name is None:
        return Core
    if name not in BUGS:
        raise KeyError(f"no planted bug {name!r} (have {', '.join(sorted(BUGS))})")
    return BUGS[name]
