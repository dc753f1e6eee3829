"""The one Ready loop: it takes the replication core's ``Ready`` and performs it.

Everything that runs a ``Core`` runs it through ``ReadyLoop``, against the small interfaces
below:

======================  ==============================  ===================================
interface               production (``driver.py``)      simulator (``sim/node.py``), tests
======================  ==============================  ===================================
``Disk``                WAL + hard-state file, written  the real WAL on a scratch dir whose
                        and fsynced by the persist task  fsync lands after a random delay
                        (group commit)                  (``SimDisk``); ``MemoryDisk``
``Network``             TCP to the peers                the simulated network; a list
``Application``         RocksDB index, client futures   the simulated state machine and
                                                        clients; a list of applied entries
``SnapshotSource/Sink``  checkpoints streamed over RPCs  memory dumps over the simulated net
``Clock``               ``time.monotonic``              simulated time
======================  ==============================  ===================================

So the order in which a Ready is performed, when an fsync counts, which messages wait for it,
when reads are answered, the snapshot backoff and when an install is given up are decided here
once, and the simulator and the interaction tests exercise exactly what production runs. The
loop itself does no IO and never waits: what completes later (an fsync, a snapshot transfer)
comes back as an input (``synced``, ``snapshot_sent``, ``snapshot_installed``, ...).

Rules (the core's contract, ``core.py``), in the order a Ready is performed
---------------------------------------------------------------------------
1. Write, in order with every earlier Ready's writes: the hard state, the cut
   (``truncate_from``), the new entries, the prefix drop (``compact_to``).
2. Send ``messages`` at once: before this Ready's fsync, so that a leader's fsync runs while
   its followers' do (its own count in a commit is its durable index, never more).
3. Ask the disk for a sync. Only once it reports (now, or later, and for several Readies at once
   with group commit) does the loop call ``on_hardstate_synced``, send
   ``messages_after_sync`` (a follower's acknowledgement, anything that speaks for a promise
   not yet durable) and call ``on_synced``.
4. Start a snapshot for each need, one in flight per peer, after that peer's backoff (doubled
   by each failure up to a bound, reset by a success or a new term).
5. Apply ``committed`` (``Application.apply``, which makes it part of the state machine) and
   only then call ``on_applied``.
6. Answer each confirmed read once applied reaches its index, in the order confirmed; fail the
   failed ones.
7. Report a new term served (``became_leader``) and a lost one (``lost_leadership``).

Rules 1, 3 and 4 are the methods ``_write``, ``_await_sync`` and ``_start_snapshot``: a planted
bug (``loop_bugs.py``, handed in as a ``loop_factory``) overrides one of them, as the core's
planted bugs override one of its decisions.

The loop never re-enters itself: an input that arrives while a Ready is being performed (a sync
that completes at once, the application proposing as it becomes leader) is taken by the next
turn of the same ``process``. With ``soon`` (production: asyncio's ``call_soon``), the inputs
that come many at a time (messages, proposals, reads) share one Ready per turn of the event
loop; correctness never depends on when a Ready is taken, only batching does.

The follower's side of a snapshot: an install accepted (``offer_snapshot``) is given up when a
newer epoch is promised meanwhile (its leader is deposed: the candidate should not wait for
the transfer) or when nothing arrived for ``install_idle_s``: the loop asks the sink, which
refuses once the install is past its point of no return.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rangekv.replication.core import LEADER, SNAPSHOT_ACCEPT, Config, Core, Ready, SnapshotNeed
from rangekv.replication.messages import Entry, Msg

# committed entries one turn of the event loop applies before it lets other work run (then it
# goes on in the next turn; one entry at least): a 1,000-item batch entry is about 300 KB and
# takes 30-50 ms to apply. At 1 MiB a turn, loads with 8-16 batches in flight stalled a node's
# loop for 0.7 s under contention for the two cores (asyncio's debug log), past the meta's
# 600 ms heartbeat timeout: leaders were deposed every few seconds
APPLY_BYTES_PER_TURN = Config.apply_bytes_max  # (the most a Ready holds, too: one knob)
# Production's bounds (the simulator passes its own, in simulated time).
SNAPSHOT_BACKOFF_S = (0.2, 5.0)  # first retry after a failed snapshot, most
INSTALL_IDLE_S = 15.0  # a follower gives up an install whose transfer went quiet this long


class Disk(Protocol):
    """The log and hard state of one replica. Writes are ordered; ``sync`` makes every write
    before it durable (the WAL's cut and prefix drop may be durable at once)."""

    def save_hardstate(self, hardstate: dict[str, int]) -> None: ...

    def truncate(self, from_index: int) -> None: ...

    def append(self, entries: list[Entry]) -> None: ...

    def compact(self, index: int) -> None: ...

    def sync(self, done: Callable[[], None]) -> None:
        """Make every write so far durable, then call ``done`` (now or later; a later ``done``
        may come first or alone: it implies the earlier ones)."""
        ...


class Network(Protocol):
    def send(self, msg: Msg) -> None:
        """Deliver ``msg`` to ``msg.to`` at most once, eventually, or not at all."""
        ...


class Application(Protocol):
    """What the replica does with the log's committed entries and its read confirmations."""

    def apply(self, entries: list[Entry]) -> None:
        """Apply these committed entries (the next ones, in order) to the state machine."""
        ...

    def read_ready(self, token: Any) -> None:
        """A read confirmed by a majority may now be answered: applied reached its index."""
        ...

    def read_failed(self, token: Any) -> None:
        """A read asked of a leader that lost its leadership before confirming it."""
        ...

    def became_leader(self, epoch: int) -> None:
        """This replica's no-op of ``epoch`` committed: it serves."""
        ...

    def lost_leadership(self) -> None:
        """It no longer leads; writes not yet applied have an unknown outcome."""
        ...


class SnapshotSource(Protocol):
    def send_snapshot(self, need: SnapshotNeed, delay_s: float) -> None:
        """After ``delay_s``, bring ``need.peer`` the state at ``need.index`` or later; end
        with ``ReadyLoop.snapshot_sent`` whatever happens (unless the replica stops)."""
        ...


class SnapshotSink(Protocol):
    def abort_snapshot(self, why: str) -> None:
        """Give up the snapshot being received, unless its install is past its point of no
        return (it then ends by itself) or nothing is being received yet (the loop asks again
        later); once given up, report ``ReadyLoop.snapshot_aborted`` (at once, or once the
        staged files are gone, so that a new offer never meets them). Called again meanwhile,
        it does nothing."""
        ...


class Clock(Protocol):
    def now_s(self) -> float:
        """Seconds, monotonic."""
        ...


def compaction_target(core: Core, retain: int, pins: Iterable[int] = ()) -> int:
    """The highest index ``core``'s log may be compacted to now (the caller has made the state
    machine durable that far): ``retain`` entries below the applied index; on a leader, never
    past what a live peer within one more retain window still needs (appends are cheaper than
    a snapshot; a peer further behind, silent or being sent a snapshot gets a snapshot); never
    past a snapshot being sent (``pins``: its peer goes on with appends after it)."""
    assert retain >= 0, retain
    target = core.applied - retain
    if core.role == LEADER:
        for pr in core.progress.values():
            live = core.ticks - pr.heard_tick <= core.cfg.quorum_ticks
            if live and not pr.snapshotting and pr.match >= target - retain:
                target = min(target, pr.match)
    for pin in pins:
        target = min(target, pin)
    return max(target, core.base_index)


# What makes a replica's loop: ``ReadyLoop`` itself, or a planted bug's subclass (same
# arguments; ``replication/loop_bugs.py``).
LoopFactory = Callable[..., "ReadyLoop"]


@dataclass(slots=True)
class Unsynced:
    """A Ready's writes, until the disk reports them durable."""

    token: int
    hardstate: dict[str, int] | None
    after_sync: list[Msg]
    last_index: int  # the log's last entry once these writes are done (for on_synced)
    last_epoch: int


class ReadyLoop:
    def __init__(
        self,
        core: Core,
        disk: Disk,
        network: Network,
        app: Application,
        *,
        snapshots: SnapshotSource | None = None,
        sink: SnapshotSink | None = None,
        clock: Clock | None = None,
        soon: Callable[[Callable[[], None]], object] | None = None,
        observe: Callable[[Ready], None] | None = None,
        snapshot_backoff_s: tuple[float, float] = SNAPSHOT_BACKOFF_S,
        install_idle_s: float = INSTALL_IDLE_S,
    ) -> None:
        assert 0 < snapshot_backoff_s[0] <= snapshot_backoff_s[1], snapshot_backoff_s
        assert install_idle_s > 0, install_idle_s
        self.core = core
        self.disk = disk
        self._send = network.send  # (bound once: called for every message)
        self.app = app
        self.snapshots = snapshots
        self.sink = sink
        self.clock = clock
        self._soon = soon
        self._observe = observe  # sees each Ready before it is performed (tests print it)
        self.snapshot_backoff_s = snapshot_backoff_s
        self.install_idle_s = install_idle_s
        self._unsynced: deque[Unsynced] = deque()
        self._tokens = 0  # the last sync asked for
        self._synced_token = 0  # the last sync the disk reported
        self._reads: list[tuple[int, Any]] = []  # (read index, token): confirmed, not applied
        self._sending: set[int] = set()  # peers with a snapshot in flight
        self.backoff_s: dict[int, float] = {}  # per peer: the wait before its next snapshot
        self._install_heard_s = 0.0  # when the install under way last made progress
        self._processing = False
        self._scheduled = False
        self.closed = False
        self.readies = 0  # performed (a figure for tests and benchmarks)

    # ------------------------------------------------------------------ inputs
    def step(self, msg: Msg) -> None:
        self.core.step(msg)
        self._check_install()
        self._process_soon()

    def propose(self, payload: bytes) -> tuple[int, int]:
        """``Core.propose`` (raises ``NotLeaderError``); (epoch, index) of the entry."""
        epoch_index = self.core.propose(payload)
        self._process_soon()
        return epoch_index

    def read(self, token: Any) -> None:
        """``Core.read`` (raises ``NotLeaderError``); the token comes back to the application
        as ``read_ready`` or ``read_failed``."""
        self.core.read(token)
        self._process_soon()

    def tick(self) -> None:
        self.core.tick()
        self.process()
        if (self.core.installing is not None and self.clock is not None
                and self.clock.now_s() - self._install_heard_s > self.install_idle_s):
            self._abort_install(f"nothing received for {self.install_idle_s:g} s")

    def campaign(self, epoch: int) -> None:
        self.core.campaign(epoch)
        self.process()

    def configure(self, members: Sequence[int], learners: Sequence[int] = (),
                  joint: Sequence[int] = ()) -> None:
        self.core.set_config(members, learners, joint)
        self.process()

    def compact(self, index: int) -> None:
        """Compact the log up to ``index``: the state machine is durable through it."""
        self.core.compact(index)
        self.process()

    def _synced(self, token: int) -> None:
        """The disk made every write up to sync ``token`` durable."""
        if token > self._synced_token:
            self._synced_token = token
            self.process()

    # snapshots: the leader's side
    def snapshot_sent(self, peer: int, ok: bool, index: int = 0, *, tried: bool = True) -> None:
        """The snapshot for ``peer`` ended: ``ok`` if the peer now holds the state up to
        ``index``; ``tried`` False if nothing was sent (the peer was silent, or this replica
        no longer leads), which costs only the shortest backoff."""
        self._sending.discard(peer)
        low, high = self.snapshot_backoff_s
        if ok:
            self.backoff_s[peer] = 0.0
        elif tried:
            self.backoff_s[peer] = min(max(low, 2 * self.backoff_s.get(peer, 0.0)), high)
        else:
            self.backoff_s[peer] = low
        self.core.report_snapshot(peer, ok, index)
        self.process()

    # snapshots: the follower's side (the sink calls these)
    def offer_snapshot(self, frm: int, epoch: int, index: int, snap_epoch: int
                       ) -> tuple[str, int]:
        """``Core.offer_snapshot``: on SNAPSHOT_ACCEPT the core is frozen until
        ``snapshot_installed`` or ``snapshot_aborted``."""
        answer, at = self.core.offer_snapshot(frm, epoch, index, snap_epoch)
        if answer == SNAPSHOT_ACCEPT:
            self._install_heard_s = self._now_s()
        self.process()
        return answer, at

    def snapshot_progress(self) -> None:
        """A part of the accepted snapshot arrived (the install is not idle)."""
        self._install_heard_s = self._now_s()

    def snapshot_installed(self, index: int, epoch: int) -> None:
        """The sink installed the accepted snapshot, durably: the state machine holds the state
        up to ``index``, the log is empty with that base."""
        self.core.on_snapshot_installed(index, epoch)
        self.process()

    def snapshot_aborted(self) -> None:
        """The accepted snapshot will not be installed; log and state machine are unchanged."""
        self.core.on_snapshot_aborted()
        self.process()

    def close(self) -> None:
        """The replica stopped (or crashed): what completes later is ignored."""
        self.closed = True

    @property
    def unsynced(self) -> Sequence[Unsynced]:
        """The Readies whose writes are not yet durable, oldest first."""
        return tuple(self._unsynced)

    # ------------------------------------------------------------------ the loop
    def _process_soon(self) -> None:
        if self._soon is None:
            self.process()
        elif not self._scheduled:
            self._scheduled = True
            self._soon(self._process_scheduled)

    def _process_scheduled(self) -> None:
        self._scheduled = False
        self.process()

    def process(self) -> None:
        """Perform the core's Readies until it has nothing more to do."""
        if self._processing or self.closed:
            return  # (the turn under way takes whatever just happened)
        self._processing = True
        try:
            core = self.core
            applied_bytes = 0
            while True:
                if self._unsynced and self._unsynced[0].token <= self._synced_token:
                    self._finish_syncs()
                rd = core.ready()
                if rd.empty():
                    if self._unsynced and self._unsynced[0].token <= self._synced_token:
                        continue  # a sync that completed during the last Ready
                    return
                self._perform(rd)
                if rd.committed and self._soon is not None:
                    applied_bytes += sum(len(e.payload) for e in rd.committed)
                    if applied_bytes >= APPLY_BYTES_PER_TURN:
                        # let the event loop run (heartbeats, timers, replies) before the
                        # rest: a leader applying batches for seconds on end missed its
                        # heartbeats to the meta and was deposed, again and again
                        self._processing = False
                        self._process_soon()
                        return
        finally:
            self._processing = False

    def _perform(self, rd: Ready) -> None:
        self.readies += 1
        if self._observe is not None:
            self._observe(rd)
        core = self.core
        # 1. writes
        self._write(rd)
        # 2. messages that need no fsync of ours
        send = self._send
        for msg in rd.messages:
            send(msg)
        # 3. the fsync, and what waits for it
        if (rd.hardstate or rd.truncate_from is not None or rd.entries
                or rd.compact_to is not None or rd.messages_after_sync):
            self._await_sync(rd)
        # 4. snapshots
        for need in rd.snapshots:
            self._start_snapshot(need)
        # 5. apply
        if rd.committed:
            self.app.apply(rd.committed)
            core.on_applied(rd.committed[-1].index)
        # 6. reads
        if rd.reads:
            self._reads.extend((index, token) for token, index in rd.reads)
        for token in rd.failed_reads:
            self.app.read_failed(token)
        if self._reads:
            self._release_reads()
        # 7. leadership
        if rd.became_leader is not None:
            self.backoff_s.clear()  # a new term: peers get their snapshots without waiting
            self.app.became_leader(rd.became_leader)
        if rd.lost_leadership:
            self.app.lost_leadership()

    def _write(self, rd: Ready) -> None:
        """Rule 1: the Ready's writes, in this order, after every earlier Ready's."""
        disk = self.disk
        if rd.hardstate:
            disk.save_hardstate(rd.hardstate)
        if rd.truncate_from is not None:
            disk.truncate(rd.truncate_from)
        if rd.entries:
            disk.append(rd.entries)
        if rd.compact_to is not None:
            disk.compact(rd.compact_to)

    def _await_sync(self, rd: Ready) -> None:
        """Rule 3: this Ready's hard state, acknowledgements and entries count only once the
        disk reports the sync asked for here (``_synced``)."""
        self._tokens += 1
        self._unsynced.append(Unsynced(self._tokens, rd.hardstate, rd.messages_after_sync,
                                       self.core.last_index, self.core.last_epoch))
        self.disk.sync(functools.partial(self._synced, self._tokens))

    def _finish_syncs(self) -> None:
        """Everything up to the reported sync is durable: release what waited for it."""
        done: list[Unsynced] = []
        while self._unsynced and self._unsynced[0].token <= self._synced_token:
            done.append(self._unsynced.popleft())
        hard = [u.hardstate for u in done if u.hardstate]
        if hard:
            self.core.on_hardstate_synced(hard[-1])
        send = self._send
        for u in done:
            for msg in u.after_sync:
                send(msg)
        last = done[-1]
        if last.last_index:
            self.core.on_synced(last.last_index, last.last_epoch)

    def _release_reads(self) -> None:
        applied = self.core.applied
        waiting = []
        for index, token in self._reads:
            if index <= applied:
                self.app.read_ready(token)
            else:
                waiting.append((index, token))
        self._reads = waiting

    def _start_snapshot(self, need: SnapshotNeed) -> None:
        """Rule 4: every peer the core asks for gets its snapshot (a learner as a voter)."""
        if need.peer in self._sending:
            return  # one in flight per peer (the core asks again only after a report)
        if self.snapshots is None:
            raise AssertionError(f"node {self.core.id} needs a snapshot for node {need.peer} "
                                 "but has no snapshot source")
        self._sending.add(need.peer)
        self.snapshots.send_snapshot(need, self.backoff_s.get(need.peer, 0.0))

    def _check_install(self) -> None:
        installing = self.core.installing
        if installing is not None and self.core.promised > installing[1]:
            self._abort_install(f"epoch {self.core.promised} was promised")

    def _abort_install(self, why: str) -> None:
        if self.sink is None:
            self.snapshot_aborted()
        else:
            self.sink.abort_snapshot(why)  # (it reports snapshot_aborted once it gave up)

    def _now_s(self) -> float:
        return self.clock.now_s() if self.clock is not None else 0.0
