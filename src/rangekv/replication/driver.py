"""The asyncio driver of one replica: all the IO around the pure replication core.

It owns the core, the WAL, the hard-state file and the state machine (RocksDB index). The core's
``Ready`` is performed by the shared ``ReadyLoop`` (``loop.py``: the same loop the simulator and
the tests run, which decides the order of a Ready, what waits for an fsync, when reads are
answered, the snapshot backoff and when an install is given up); this module is the loop's
production side, its interfaces made real:

* ``Disk`` (``_Persist``): each Ready's hard state, cut, entries and prefix drop become one batch
  for the **persist task**, which does the writes and one fsync for everything queued while the
  previous fsync ran (group commit), in order: on the event loop itself, or in the persist
  thread (``PERSIST_MODE_ENV``); the loop hears of it once the fsync returned;
* ``Network``: the node's ``send`` (frames queued on the peer's connection at once);
* ``Application`` (this class): apply committed entries to the state machine (one atomic
  RocksDB batch, applied index included), answer the proposals waiting on them and the reads
  the loop releases;
* ``SnapshotSource`` / ``SnapshotSink`` (this class): checkpoints streamed over
  ``snapshot_rpc``, received into a staging directory and installed by the persist task;
* ``Clock``: ``time.monotonic``; ticks come from the tick task every ``TICK_MS``.

Proposals, reads and messages of one turn of the event loop share one Ready (the loop's
``soon``: asyncio's ``call_soon``).

Only the persist task mutates the WAL (in the persist thread, if that is the mode); the event
loop reads entries the core knows to be durable (below its unstable offset), by pread.

Invariant kept here: a client write is acknowledged only after its entry is committed (durable
on a majority) and applied on this leader.

Compaction: after every ``compact_entries`` applied entries (or ``COMPACT_WAL_BYTES`` appended to
the log) the driver flushes the state machine (RocksDB's own WAL is off, so the flush is what
makes it durable, and what bounds the entries a restart replays) and asks the core to compact
up to ``applied - compact_retain`` at most: never
beyond the flushed applied index, never beyond a snapshot being sent (``_pins``), and, on a
leader, never beyond what a live peer still needs unless that peer is more than the retain window
behind that point (it then gets a snapshot instead). The log's prefix is dropped by the persist
task, in order with the writes.

Snapshots (see ``storage/snapshot.py`` for the files, ``core.py`` for the rules): for each
``Ready.snapshots`` need, one task per peer (one snapshot in flight per peer) waits out the
peer's backoff, takes (or shares) a checkpoint of the state machine in a worker thread, and
streams it over ``snapshot_rpc`` (a request per chunk of at most 1 MiB, each answered: flow
control, and a refused chunk is an error answer) as ``snapshot_begin`` (the offer, answered by
the follower's core), ``snapshot_chunk``..., ``snapshot_end`` (answered once installed and
durable); then it reports to the core. Failures are retried with a doubling backoff (at most
``SNAPSHOT_BACKOFF_MAX_S``). The follower's side receives into a staging directory, verifies
it, then closes its state machine, has the persist task commit the install (marker, swap, log
reset: all durable), reopens the state machine and tells the core. An offer whose transfer goes
quiet for ``SNAPSHOT_IDLE_S`` is aborted (the core unfreezes). While the state machine is closed,
``engine`` raises ``unavailable``.

Disk failures: an error from a write or an fsync of the WAL or the hard state stops the process
at once, from the persist task (exit status ``EXIT_DISK_FAILURE``, one CRITICAL log line that
names the call, the file and the errno). Nothing in the failed batch has been acknowledged:
followers answer and the leader applies only after ``on_synced``, which only a successful
batch leads to. Nothing is retried, because after a failed fsync the page cache cannot be
trusted; the restarted node reopens its log (see ``wal.py``: it cuts what was written after the
last successful sync) and catches up from the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from rangekv import errors, sequencer
from rangekv.replication.bugs import CoreFactory
from rangekv.replication.core import (
    LEADER,
    SNAPSHOT_ACCEPT,
    SNAPSHOT_BUSY,
    SNAPSHOT_HAVE,
    SNAPSHOT_STALE,
    Config,
    Core,
    NotLeaderError,
    SnapshotNeed,
)
from rangekv.replication.loop import LoopFactory, ReadyLoop, compaction_target
from rangekv.replication.messages import Entry, Msg
from rangekv.storage import hardstate, snapshot
from rangekv.storage.engine import (
    StateMachine,
    checkpoint_applied_index,
    decode_command,
    encode_command,
    open_rocks,
)
from rangekv.storage.snapshot import Chunk, Manifest, Receiver, SnapshotInvalid
from rangekv.storage.wal import WAL

log = logging.getLogger("rangekv.replica")

TICK_MS = 50
PROPOSAL_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0
EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h)
EXIT_DISK_FAILURE = 74  # EX_IOERR: the disk failed a write or an fsync

COMPACT_ENTRIES_DEFAULT = 10_000  # compact after this many applied entries ...
COMPACT_WAL_BYTES = 64 * 1024 * 1024  # ... or this many bytes appended to the log
COMPACT_RETAIN_DEFAULT = 2_000  # entries kept below the applied index
SNAPSHOT_RPC_TIMEOUT_S = 10.0  # per offer or chunk
SNAPSHOT_END_TIMEOUT_S = 120.0  # the follower verifies, fsyncs and installs before answering
SNAPSHOT_IDLE_S = 15.0  # a follower aborts an offer whose transfer went quiet this long
SNAPSHOT_BACKOFF_MIN_S = 0.2
SNAPSHOT_BACKOFF_MAX_S = 5.0
REFUSED_LOG_INTERVAL_S = 10.0  # messages refused as implausible: one log line at most this often
# commands whose seq an rm proposed (checked against the leader's clock); the others carry the
# zero seq, or a seq another group's leader made final (a move's handed-over H)
CLIENT_WRITE_OPS = frozenset({"put", "del"})

# (peer, op, fields, timeout_s) -> the reply's fields; raises RangeKVError
SnapshotRPC = Callable[[int, str, dict[str, Any], float], Awaitable[dict[str, Any]]]


def _exit_process(code: int) -> NoReturn:
    """Stop the whole process now: every thread, no cleanup that could touch the disk again.
    (Tests replace this function to watch the driver decide to stop.)"""
    logging.shutdown()
    os._exit(code)


def _crash_on_error(task: asyncio.Task[Any]) -> None:
    """A replica task that dies of an exception leaves the node unable to make progress or,
    for a broken invariant, untrustworthy: stop the process loudly instead of limping on."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("replica task %s failed; stopping the node", task.get_name(),
                 exc_info=task.exception())
    _exit_process(EXIT_BUG)


def highest_seq(core: Core, engine: StateMachine) -> bytes:
    """The highest seq in the state machine or anywhere in the log after it.

    A new leader calls this once its no-op commits: seqs issued by earlier leaders may sit in
    entries it has not applied yet, and its own seqs must be above all of them.
    """
    best = engine.last_seq
    lo, hi = engine.applied_index + 1, core.last_index + 1
    while lo < hi:
        chunk = core.entries(lo, hi, 4 * 1024 * 1024)
        for e in chunk:
            seq = decode_command(e.payload).get("s")
            if isinstance(seq, bytes) and seq > best:
                best = seq
        lo = chunk[-1].index + 1
    return best


@dataclass(slots=True)
class _Batch:
    """One Ready's writes (or a snapshot install), in the order the persist task does them."""

    hardstate: dict[str, int] | None = None
    truncate_from: int | None = None
    entries: list[Entry] | None = None
    compact_to: int | None = None  # drop the log's prefix up to here
    install: tuple[int, int] | None = None  # commit the staged snapshot (index, epoch)
    synced: Callable[[], None] | None = None  # the loop's completion, once durable
    installed: asyncio.Future[None] | None = None  # set once the install is durable


class _Persist:
    """The loop's ``Disk`` in production: the writes of a Ready gather in one batch, which its
    ``sync`` hands to the persist task (``Replica._persist_loop``, the only writer of the WAL and
    the hard state) and wakes it. Nothing is written here: the caller goes on (and sends its
    messages) while the persist task writes and fsyncs."""

    def __init__(self, observer: Observer) -> None:
        self.batches: list[_Batch] = []  # closed, waiting for the persist task
        self.wakeup = asyncio.Event()
        self._open = _Batch()
        self._observer = observer

    def save_hardstate(self, hardstate: dict[str, int]) -> None:
        self._observer.hardstate(hardstate.get("promised_epoch", 0))
        self._open.hardstate = hardstate

    def truncate(self, from_index: int) -> None:
        assert self._open.entries is None and self._open.compact_to is None, self._open
        self._open.truncate_from = from_index

    def append(self, entries: list[Entry]) -> None:
        assert self._open.entries is None and self._open.compact_to is None, self._open
        self._open.entries = entries  # (the WAL takes an Entry as its record: no copy)

    def compact(self, index: int) -> None:
        self._open.compact_to = index

    def sync(self, done: Callable[[], None]) -> None:
        batch, self._open = self._open, _Batch()
        batch.synced = done
        self.batches.append(batch)
        self.wakeup.set()

    def install(self, index: int, epoch: int) -> asyncio.Future[None]:
        """Commit the staged snapshot in order with the writes (marker, swap, log reset: all
        durable once the future is done)."""
        assert self._open == _Batch(), "an install between a Ready's writes and its sync"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batches.append(_Batch(install=(index, epoch), installed=done))
        self.wakeup.set()
        return done


class _Network:
    """The loop's ``Network``: the node's send function itself (no wrapper call per message)."""

    __slots__ = ("send",)

    def __init__(self, send: Callable[[Msg], None]) -> None:
        self.send = send


class _MonotonicClock:
    """The loop's ``Clock``: asyncio's own (the event loop's time is ``time.monotonic``)."""

    @staticmethod
    def now_s() -> float:
        return time.monotonic()


def _call_soon(callback: Callable[[], None]) -> None:
    asyncio.get_running_loop().call_soon(callback)


@dataclass
class _Outgoing:
    """A checkpoint being sent (shared by the peers that need one)."""

    directory: Path
    manifest: Manifest
    users: int = 0
    retired: bool = False  # a newer one replaced it: remove once unused


@dataclass
class _Incoming:
    """The snapshot this follower is receiving (its core is frozen meanwhile)."""

    frm: int
    epoch: int
    manifest: Manifest
    receiver: Receiver
    committing: bool = False


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (asyncio logs an error for one that never is)."""
    if not fut.cancelled():
        fut.exception()


class _PersistThread:
    """The one thread that writes and fsyncs the log: a job queue and a future per job.

    Cheaper per batch than ``asyncio.to_thread`` (no executor bookkeeping, no context copy, no
    future chaining): at thousands of batches a second that overhead was a tenth of a leader's
    CPU. Jobs run in submission order; ``stop`` lets the job in hand finish, then ends.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None],
                                            asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._jobs.put((job, fut, loop))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, fut, loop = item
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop as is
                error: BaseException | None = exc
            else:
                error = None
            try:
                loop.call_soon_threadsafe(_settle, fut, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return


def _pop_overdue(deadlines: dict[int, float], now: float) -> list[int]:
    """Remove and return the keys whose deadline is at or before ``now``; ``deadlines`` is in
    deadline order (insertion order, each deadline a fixed time after its insertion)."""
    overdue = []
    while deadlines:
        key, deadline = next(iter(deadlines.items()))
        if deadline > now:
            break
        del deadlines[key]
        overdue.append(key)
    return overdue


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# Where the log is written and fsynced: ``inline`` (the default: on the event loop, which stops
# for the fsync; whatever arrives meanwhile is the next batch), ``thread`` (the persist thread,
# while the event loop goes on) or ``auto`` (the thread on a leader, inline on a follower).
# A leader sends its appends before its own fsync starts either way (see ``_handle``), so its
# fsync runs in parallel with the followers'. On the 2-core machine measured, inline was the
# fastest everywhere: 64 clients of 256 B puts got 4,000-4,600 puts/s inline against
# 2,900-4,100 with ``auto``: the hand-off to a thread and back and the contention for the GIL
# cost more than the event loop's pause. ``thread`` suits a disk whose fsync is slow enough
# that a leader should go on answering reads meanwhile.
PERSIST_MODE_ENV = "RANGEKV_PERSIST"

class Observer:
    """What a replica reports as it goes, for the node's ``/metrics`` (``node/metrics.py``
    counts it and outlives the replica; this default ignores it). Called on the event loop,
    once per batch or event, never per byte: it must be cheap and must not raise."""

    def event(self, name: str) -> None:
        """One of ``leader_changes``, ``compactions``, ``snapshots_sent``, ``snapshots_failed``,
        ``snapshots_installed`` happened."""

    def applied(self, entries: int) -> None:
        """A batch of this many committed entries was applied to the state machine."""

    def proposed(self, result: str) -> None:
        """A proposal ended: ``ok`` or the error code it was answered with."""

    def hardstate(self, promised_epoch: int) -> None:
        """The hard state to persist promises this epoch (it changes at every election)."""


class Replica:
    """One member's replication driver. ``send(msg)`` delivers a message to a peer."""

    def __init__(
        self,
        node_id: int,
        wal: WAL,
        engine: StateMachine,
        hardstate_path: Path,
        send: Callable[[Msg], None],
        *,
        snapshot_rpc: SnapshotRPC | None = None,
        compact_entries: int = COMPACT_ENTRIES_DEFAULT,
        compact_retain: int = COMPACT_RETAIN_DEFAULT,
        data_dir: Path | None = None,
        observer: Observer | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        seq_ahead_ms_max: int = sequencer.SEQ_AHEAD_MS_MAX,
        core_factory: CoreFactory = Core,
        loop_factory: LoopFactory = ReadyLoop,
    ) -> None:
        """``core_factory`` makes the replication core: ``Core``, or the class of a planted bug
        (``bugs.py``: a node's ``--planted-bug``, to show that a chaos run catches it);
        ``loop_factory`` its Ready loop: ``ReadyLoop``, or a planted bug's (``loop_bugs.py``)."""
        assert compact_entries >= 1 and compact_retain >= 0, (compact_entries, compact_retain)
        assert seq_ahead_ms_max > 0, seq_ahead_ms_max
        self.node_id = node_id
        # the wall clock proposed seqs are checked against (sequencer.check_proposal)
        self._clock_ns = clock_ns
        self.seq_ahead_ms_max = seq_ahead_ms_max
        self.wal = wal
        self._engine: StateMachine | None = engine
        self.hardstate_path = hardstate_path
        # index/, the snapshot staging and outgoing directories live beside the hard state
        self.data_dir = data_dir if data_dir is not None else hardstate_path.parent
        self._snapshot_rpc = snapshot_rpc
        self.compact_entries = compact_entries
        self.compact_retain = compact_retain
        hard = hardstate.load(hardstate_path)
        assert engine.applied_index <= wal.last_index, (
            "state machine is ahead of the log", engine.applied_index, wal.last_index)
        for factory, real in ((core_factory, Core), (loop_factory, ReadyLoop)):
            if factory is not real:
                log.warning("planted bug %s is enabled: this node deliberately breaks the "
                            "protocol", getattr(factory, "__name__", factory))
        self.core = core_factory(
            node_id, [], wal, {k: int(v) for k, v in hard.items() if isinstance(v, int)},
            engine.applied_index, Config(noop_payload=encode_command({"op": "noop"})),
        )
        self.observer = observer if observer is not None else Observer()
        self._disk = _Persist(self.observer)
        # (the bounds are read here, not bound as defaults: tests lower them)
        self.loop = loop_factory(
            self.core, self._disk, _Network(send), self, snapshots=self, sink=self,
            clock=_MonotonicClock(), soon=_call_soon,
            snapshot_backoff_s=(SNAPSHOT_BACKOFF_MIN_S, SNAPSHOT_BACKOFF_MAX_S),
            install_idle_s=SNAPSHOT_IDLE_S)
        self.last_seq = engine.last_seq
        # index -> (epoch, waiter); in index order, so also in deadline order (see _expire)
        self._proposals: dict[int, tuple[int, asyncio.Future[dict[str, Any]]]] = {}
        self._proposal_deadlines: dict[int, float] = {}  # index -> loop time
        self._read_deadlines: dict[int, float] = {}  # read token -> loop time
        self._read_tokens = itertools.count(1)
        self._read_waiters: dict[int, asyncio.Future[None]] = {}
        self._persist_thread: _PersistThread | None = None
        self.persist_mode = os.environ.get(PERSIST_MODE_ENV, "inline")
        if self.persist_mode not in ("auto", "thread", "inline"):
            raise ValueError(f"{PERSIST_MODE_ENV} must be auto, thread or inline, "
                             f"not {self.persist_mode!r}")
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._refused_logged_s = -REFUSED_LOG_INTERVAL_S
        self._retaking = False  # campaigning for a newer epoch while leading (see campaign)
        # compaction
        self.durable_applied = engine.applied_index  # flushed: a restart replays after it
        self.replayed_on_start = wal.last_index - engine.applied_index
        self._compacted_at = engine.applied_index  # applied index at the last compaction
        self._compact_bytes_mark = wal.bytes_written
        self._compacting = False
        self._engine_lock = asyncio.Lock()  # flush, checkpoint and install use the engine
        # told of the new state machine once a snapshot install replaced the old one
        self.on_engine_replaced: Callable[[StateMachine], None] | None = None
        # snapshots
        self._sending: dict[int, asyncio.Task[None]] = {}
        self._outgoing: _Outgoing | None = None
        self._outgoing_seq = itertools.count(1)
        self._checkpoint_lock = asyncio.Lock()
        self._pins: list[int] = []  # compaction never passes these (snapshots being sent)
        self._incoming: _Incoming | None = None
        self._install_task: asyncio.Task[dict[str, Any]] | None = None
        self.stats = {"fsyncs": 0, "entries_written": 0, "applied": 0, "leader_changes": 0,
                      "compactions": 0, "snapshots_sent": 0, "snapshots_failed": 0,
                      "snapshots_installed": 0}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.persist_mode != "inline":  # (inline, the default, needs no thread)
            self._persist_thread = _PersistThread(f"persist-{self.node_id}")
        self._tasks = [
            loop.create_task(self._persist_loop(), name="persist"),
            loop.create_task(self._tick_loop(), name="tick"),
        ]
        for task in self._tasks:
            task.add_done_callback(_crash_on_error)

    @property
    def engine(self) -> StateMachine:
        """The state machine; ``unavailable`` while a snapshot install has it closed."""
        if self._engine is None:
            raise errors.Unavailable(f"node {self.node_id} is installing a snapshot")
        return self._engine

    async def flush_engine(self) -> int:
        """Write the state machine's memtable to disk now; the applied index flushed."""
        async with self._engine_lock:
            engine = self.engine
            await asyncio.to_thread(engine.flush)
            return engine.applied_index

    async def compact_deleted(self) -> int:
        """Reclaim the space of data deleted by drops (``StateMachine.compact_pending``) in a
        worker thread, never while a flush, checkpoint or install has the engine."""
        async with self._engine_lock:
            engine = self._engine
            if engine is None or not engine.to_compact:
                return 0
            return await asyncio.to_thread(engine.compact_pending)

    def close_storage(self) -> None:
        """Close the state machine (if open) and the log (after ``stop``)."""
        if self._engine is not None:
            self._engine.close()
        self.wal.close()

    async def stop(self) -> None:
        if self._install_task is not None and not self._install_task.done():
            # An install past its point of no return finishes (it needs the persist task).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._install_task), SNAPSHOT_END_TIMEOUT_S)
        self._closing = True
        self._disk.wakeup.set()
        for task in [*self._tasks, *self._sending.values()]:
            task.cancel()
        for task in [*self._tasks, *self._sending.values()]:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._persist_thread is not None:
            self._persist_thread.stop()
        # A proposal already in the log may still commit under the next leader: its outcome is
        # unknown, never "unavailable" (which promises it did not happen).
        self._fail_proposals(errors.OutcomeUnknown("node is shutting down; the write may "
                                                   "still take effect"))
        self._fail_all(errors.Unavailable("node is shutting down"))
        self.loop.close()

    # ------------------------------------------------------------------ inputs
    def configure(self, members: list[int], learners: list[int] | None = None,
                  joint: list[int] | None = None) -> None:
        """Take meta's record of the group (see ``Core.set_config``)."""
        self.loop.configure(members, learners or (), joint or ())

    def campaign(self, epoch: int) -> None:
        """Take up ``epoch`` (meta chose this node for it).

        A serving leader asked to take up a newer epoch (meta re-elects the same leader to
        change the group's members) keeps its pending writes instead of failing them as
        "outcome unknown": they stay in its log, so they commit with the new epoch's no-op if
        its log is adopted, are answered "unavailable" if another entry is applied at their
        index (surely not applied), or time out as unknown."""
        if epoch > self.core.promised:
            log.info("campaigning for epoch %d (chosen by meta)", epoch)
        self._retaking = self.core.role == LEADER and epoch > self.core.promised
        try:
            self.loop.campaign(epoch)
        finally:
            self._retaking = False

    def step(self, msg: Msg) -> None:
        self.loop.step(msg)
        if self.core.last_refused is not None:
            self._log_refused()

    def _log_refused(self) -> None:
        """A message the core refused as one no honest peer sends: one line at most
        every ``REFUSED_LOG_INTERVAL_S`` (a misbehaving peer may send many)."""
        assert self.core.last_refused is not None
        why, msg = self.core.last_refused
        self.core.last_refused = None
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged_s >= REFUSED_LOG_INTERVAL_S:
            self._refused_logged_s = now
            log.warning("refused a %s from node %d (epoch %d) that no honest peer sends: %s; "
                      "refused so far: %s", msg.type, msg.frm, msg.epoch, why, self.core.refused)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            self.loop.tick()
            self._expire(asyncio.get_running_loop().time())
            self._maybe_compact()

    def status(self) -> dict[str, Any]:
        status = self.core.status()
        status.update(
            log_first_index=self.core.first_index,
            # Entries a restart would replay: those after the last applied index known to be
            # flushed (RocksDB may have flushed more by itself; never less).
            replay_entries=self.core.last_index - self.durable_applied,
            replayed_on_start=self.replayed_on_start,
            installing_snapshot=self.core.installing is not None,
            snapshots_installed=self.stats["snapshots_installed"],
            snapshots_sent=self.stats["snapshots_sent"],
            # WAL fdatasync batches since this process opened it (benchmarks: fsyncs per write).
            wal_syncs=self.wal.syncs,
        )
        return status

    # ------------------------------------------------------------------ client operations
    def not_leader(self) -> errors.NotLeader:
        leader = self.core.leader if self.core.leader != self.node_id else None
        return errors.NotLeader(
            f"node {self.node_id} is not the leader", leader_hint=leader,
            epoch=self.core.promised,
        )

    async def propose(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Replicate one command and return its apply result (raises its error)."""
        if self.core.role != LEADER or not self.core.serving:
            raise self.not_leader()
        if "s" in cmd:
            # The leader makes the seq final: above every seq this group has issued, so that
            # seq order is commit order inside the group even when rm clocks disagree; an rm's
            # proposal is refused if its clock (or its sender) is too far ahead.
            cmd["s"] = sequencer.assign(cmd["s"], self.last_seq, self._clock_ns(),
                                        from_client=cmd.get("op") in CLIENT_WRITE_OPS,
                                        ahead_ms_max=self.seq_ahead_ms_max,
                                        node_id=self.node_id)
            self.last_seq = cmd["s"]
        try:
            epoch, index = self.loop.propose(encode_command(cmd))  # (performed at the turn's end)
        except NotLeaderError:
            self.observer.proposed("not_leader")
            raise self.not_leader() from None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        # After a timeout (or the caller's cancellation) nobody awaits ``fut`` any more, and it
        # may still fail later (leadership lost): that outcome is already reported as unknown.
        fut.add_done_callback(_consume)
        self._proposals[index] = (epoch, fut)
        # One sweep per tick ends the overdue (``_expire``): a timer per write cost more.
        self._proposal_deadlines.pop(index, None)  # (an index reused after a log cut)
        self._proposal_deadlines[index] = loop.time() + PROPOSAL_TIMEOUT_S
        try:
            result = await fut
        except errors.RangeKVError as err:
            self.observer.proposed(err.code)
            raise
        if "error" in result:
            err = errors.from_dict(result["error"])
            self.observer.proposed(err.code)
            raise err
        self.observer.proposed("ok")
        return result

    async def linearizable(self) -> None:
        """Wait until a read here would see every write acknowledged before the call."""
        if self.core.role != LEADER or not self.core.serving:
            raise self.not_leader()
        token = next(self._read_tokens)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(_consume)
        self._read_waiters[token] = fut
        try:
            self.loop.read(token)
        except NotLeaderError:
            self._read_waiters.pop(token, None)
            raise self.not_leader() from None
        self._read_deadlines[token] = loop.time() + READ_TIMEOUT_S
        try:
            await fut
        finally:
            self._read_waiters.pop(token, None)
            self._read_deadlines.pop(token, None)

    def _expire(self, now: float) -> None:
        """End the writes and reads waiting past their deadline (once per tick)."""
        for index in _pop_overdue(self._proposal_deadlines, now):
            waiting = self._proposals.pop(index, None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_exception(errors.OutcomeUnknown(
                    f"write not committed within {PROPOSAL_TIMEOUT_S}s; it may still take "
                    "effect"))
        for token in _pop_overdue(self._read_deadlines, now):
            fut = self._read_waiters.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_exception(errors.Unavailable(
                    f"leadership not confirmed within {READ_TIMEOUT_S}s"))

    # ------------------------------------------------------------------ the loop's Application
    def apply(self, entries: list[Entry]) -> None:
        """Apply committed entries to the state machine and answer the proposals waiting on
        them (the loop then tells the core)."""
        engine = self._engine
        assert engine is not None, "applying while a snapshot install has the engine closed"
        results = engine.apply([(e.index, e.payload) for e in entries])
        assert len(results) == len(entries)
        if engine.last_seq > self.last_seq:
            self.last_seq = engine.last_seq
        for entry, result in zip(entries, results, strict=True):
            waiting = self._proposals.pop(entry.index, None)
            if waiting is None:
                continue
            self._proposal_deadlines.pop(entry.index, None)
            epoch, fut = waiting
            if fut.done():
                continue
            if entry.epoch == epoch:
                fut.set_result(result)
            else:
                # Another leader's entry took this index: ours will never commit.
                fut.set_exception(errors.Unavailable(
                    "write was replaced by a new leader's log and not applied"))
        self.stats["applied"] += len(entries)
        self.observer.applied(len(entries))
        self._maybe_compact(entries[-1].index)

    def read_ready(self, token: Any) -> None:
        fut = self._read_waiters.get(token)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def read_failed(self, token: Any) -> None:
        fut = self._read_waiters.get(token)
        if fut is not None and not fut.done():
            fut.set_exception(self.not_leader())

    def became_leader(self, epoch: int) -> None:
        self._count("leader_changes")
        self.last_seq = max(self.last_seq, highest_seq(self.core, self.engine))
        log.info("leading epoch %d (last index %d)", epoch, self.core.last_index)

    def lost_leadership(self) -> None:
        if self._retaking:
            log.info("taking up epoch %d after leading the one before; keeping %d pending "
                     "writes", self.core.promised, len(self._proposals))
            return
        log.warning("lost leadership of epoch %d", self.core.promised)
        self._fail_proposals(errors.OutcomeUnknown(
            "leadership lost before the write was acknowledged; it may still take effect"))

    def _fail_proposals(self, err: errors.RangeKVError) -> None:
        proposals, self._proposals = self._proposals, {}
        self._proposal_deadlines = {}
        for _, fut in proposals.values():
            if not fut.done():
                fut.set_exception(err)

    def _fail_all(self, err: errors.RangeKVError) -> None:
        self._fail_proposals(err)
        for fut in self._read_waiters.values():
            if not fut.done():
                fut.set_exception(err)

    def _count(self, event: str) -> None:
        self.stats[event] += 1
        self.observer.event(event)

    # ------------------------------------------------------------------ persistence
    def _write_batches(self, batches: list[_Batch]) -> None:
        """The only place the WAL and hard state are written (on the event loop, or in the
        persist thread).

        A disk error stops the process right here: the batch's outcome never
        reaches the event loop, which acknowledges only what ``on_synced`` reported (see "Disk
        failures" in the module docstring).
        """
        try:
            for batch in batches:
                if batch.hardstate:
                    hardstate.save(self.hardstate_path, batch.hardstate)
                if batch.truncate_from is not None:
                    self.wal.truncate_suffix(batch.truncate_from)
                if batch.entries:
                    self.wal.append(batch.entries)
                if batch.compact_to is not None:
                    self.wal.drop_prefix(batch.compact_to)
                if batch.install is not None:
                    snapshot.install(self.data_dir, *batch.install, self.wal)
            self.wal.sync()
        except OSError as err:
            log.critical(
                "disk failure, stopping the node: %s (entries written since the last successful "
                "sync: %d, none of them acknowledged; after a failed fsync the page cache cannot "
                "be trusted, so nothing is retried: the log is recovered on restart)",
                err, sum(len(b.entries or ()) for b in batches),
            )
            _exit_process(EXIT_DISK_FAILURE)

    def _persist_inline(self) -> bool:
        """Write and fsync this batch on the event loop itself (see ``PERSIST_MODE_ENV``)?"""
        if self.persist_mode == "auto":
            return self.core.role != LEADER
        return self.persist_mode == "inline"

    async def _persist_loop(self) -> None:
        disk = self._disk
        while not self._closing:
            await disk.wakeup.wait()
            disk.wakeup.clear()
            if not disk.batches:
                continue
            batches, disk.batches = disk.batches, []
            try:
                if self._persist_thread is None or self._persist_inline():
                    self._write_batches(batches)
                else:
                    await asyncio.shield(self._persist_thread.submit(
                        functools.partial(self._write_batches, batches)))
            except asyncio.CancelledError:
                raise
            except Exception:
                # Disk errors stopped the process in the thread already: this is a bug (a
                # broken invariant), and the batch is in an unknown state. Never acknowledge it.
                log.critical("persisting a batch failed; stopping the node", exc_info=True)
                _exit_process(EXIT_BUG)
            self.stats["fsyncs"] += 1
            self.stats["entries_written"] += sum(len(b.entries or ()) for b in batches)
            synced = None
            for batch in batches:
                if batch.synced is not None:
                    synced = batch.synced  # (the last one implies the ones before)
                if batch.installed is not None and not batch.installed.done():
                    batch.installed.set_result(None)
            if synced is not None:
                synced()  # the loop releases what waited for these writes

    # ------------------------------------------------------------------ compaction
    def compaction_target(self) -> int:
        """The highest index the log may be compacted to now (``loop.compaction_target``)."""
        return compaction_target(self.core, self.compact_retain, self._pins)

    def _maybe_compact(self, applied: int | None = None) -> None:
        """Start a compaction if one is due (``applied``: the index just applied, which the
        core hears of right after)."""
        if self._compacting or self._closing or self.core.installing is not None:
            return
        applied = self.core.applied if applied is None else applied
        due = (applied - self._compacted_at >= self.compact_entries
               or self.wal.bytes_written - self._compact_bytes_mark >= COMPACT_WAL_BYTES)
        if not due:
            return
        self._compacting = True
        task = asyncio.get_running_loop().create_task(self._compact(), name="compact")
        task.add_done_callback(_crash_on_error)

    async def _compact(self) -> None:
        """Flush the state machine (so that a restart replays at most about ``compact_entries``
        entries, whatever the log keeps), then compact the log up to the target, never past
        what the flush made durable."""
        try:
            self._compacted_at = self.core.applied
            self._compact_bytes_mark = self.wal.bytes_written
            async with self._engine_lock:
                engine = self._engine
                if engine is None:
                    return
                flushed = engine.applied_index  # the flush makes at least this much durable
                await asyncio.to_thread(engine.flush)
            self.durable_applied = max(self.durable_applied, flushed)
            target = min(self.compaction_target(), flushed)
            if target > self.core.base_index and self.core.installing is None:
                self.loop.compact(target)
                self._count("compactions")
        finally:
            self._compacting = False

    # ------------------------------------------------------------------ snapshots: leader side
    def send_snapshot(self, need: SnapshotNeed, delay_s: float) -> None:
        """The loop's ``SnapshotSource``: one task per attempt (the loop starts one per peer at
        a time, after that peer's backoff)."""
        task = self._sending.get(need.peer)
        assert task is None or task.done(), ("two snapshots in flight to one peer", need)
        task = asyncio.get_running_loop().create_task(self._send_snapshot(need, delay_s),
                                                      name=f"snapshot-to-{need.peer}")
        task.add_done_callback(_crash_on_error)
        self._sending[need.peer] = task

    async def _send_snapshot(self, need: SnapshotNeed, delay: float) -> None:
        """One attempt to bring ``need.peer`` a snapshot; always ends with snapshot_sent."""
        peer = need.peer
        ok, index, failed = False, 0, False
        try:
            if delay:
                await asyncio.sleep(delay)
            ok, index, failed = await self._try_snapshot(need)
        except asyncio.CancelledError:
            raise
        except (errors.RangeKVError, OSError) as err:
            failed = True
            log.warning("snapshot to node %d failed (retry in %.1f s): %s", peer,
                        min(max(SNAPSHOT_BACKOFF_MIN_S, 2 * delay), SNAPSHOT_BACKOFF_MAX_S), err)
        finally:
            if self._sending.get(peer) is asyncio.current_task():
                del self._sending[peer]
        if ok:
            self._count("snapshots_sent")
        elif failed:
            self._count("snapshots_failed")
        # (not tried: the peer was silent or we no longer lead; nothing was spent)
        self.loop.snapshot_sent(peer, ok, index, tried=ok or failed)

    async def _try_snapshot(self, need: SnapshotNeed) -> tuple[bool, int, bool]:
        """(ok, index the peer holds, whether a transfer was tried and failed)."""
        peer, epoch = need.peer, self.core.promised
        if self._snapshot_rpc is None:
            raise errors.Unavailable("this replica has no way to send snapshots")
        pr = self.core.progress.get(peer)
        if (self.core.role != LEADER or pr is None
                or self.core.ticks - pr.heard_tick > self.core.cfg.quorum_ticks):
            # A checkpoint reads the whole state: not for a peer that does not answer (it gets
            # one soon after it answers heartbeats again).
            return False, 0, False
        # Compaction stays at or below the snapshot (at least this applied index), so that the
        # peer can go on with appends after it.
        pin = self.core.applied
        self._pins.append(pin)
        try:
            outgoing = await self._acquire_checkpoint(need.index)
            try:
                self._pins.append(outgoing.manifest.index)
                self._pins.remove(pin)
                pin = outgoing.manifest.index
                ok, index = await self._stream(peer, epoch, outgoing)
                return ok, index, not ok
            finally:
                self._release_checkpoint(outgoing)
        finally:
            self._pins.remove(pin)

    async def _acquire_checkpoint(self, min_index: int) -> _Outgoing:
        """A checkpoint at ``min_index`` or later: the current one, or a new one."""
        async with self._checkpoint_lock:
            current = self._outgoing
            if current is not None and current.manifest.index >= min_index:
                current.users += 1
                return current
            async with self._engine_lock:
                engine = self.engine
                seq = next(self._outgoing_seq)
                started = asyncio.get_running_loop().time()
                try:
                    directory, index = await asyncio.to_thread(
                        snapshot.create, engine.checkpoint, self.data_dir, seq)
                except Exception as err:  # noqa: BLE001 - RocksDB's errors are plain exceptions
                    # (e.g. the disk is full: the state machine itself is fine; try later)
                    await asyncio.to_thread(snapshot.remove_outgoing,
                                            self.data_dir / f"{snapshot.OUTGOING_PREFIX}{seq}")
                    raise errors.Unavailable(f"checkpoint failed: {err}") from None
            # (on the loop: the core is not thread-safe; the pins keep the index above the base)
            epoch = self.core.epoch_at(index)
            manifest = await asyncio.to_thread(snapshot.describe, directory, index, epoch)
            log.info("checkpoint for snapshots at index %d: %d files, %d bytes, %.3f s",
                     manifest.index, len(manifest.files), manifest.total_bytes,
                     asyncio.get_running_loop().time() - started)
            if current is not None:
                current.retired = True  # its users remove it when they are done
            self._outgoing = _Outgoing(directory, manifest, users=1)
            return self._outgoing

    async def backup_checkpoint(self) -> _Outgoing:
        """A checkpoint for a backup (``rangekv backup``) holding every write acknowledged
        before the call: leader only, after a linearizable barrier (a read round: applied
        reaches the commit index known at the call), at that applied index or later. The
        caller streams it and then calls ``release_backup``."""
        await self.linearizable()
        return await self._acquire_checkpoint(self.core.applied)

    def release_backup(self, outgoing: _Outgoing) -> None:
        self._release_checkpoint(outgoing)

    def _release_checkpoint(self, outgoing: _Outgoing) -> None:
        """A checkpoint lives as long as sends use it (a later need takes a fresh one)."""
        outgoing.users -= 1
        if outgoing.users == 0:
            if self._outgoing is outgoing:
                self._outgoing = None
            snapshot.remove_outgoing(outgoing.directory)

    async def _stream(self, peer: int, epoch: int, outgoing: _Outgoing) -> tuple[bool, int]:
        """Offer, send every chunk, end; (ok, index the peer now holds)."""
        assert self._snapshot_rpc is not None
        rpc = self._snapshot_rpc
        manifest = outgoing.manifest
        ident = {"frm": self.node_id, "epoch": epoch, "index": manifest.index}
        reply = await rpc(peer, "snapshot_begin", {**ident, "manifest": manifest.to_wire()},
                          SNAPSHOT_RPC_TIMEOUT_S)
        answer, index = reply.get("answer"), reply.get("index")
        if answer in (SNAPSHOT_STALE, SNAPSHOT_HAVE) and isinstance(index, int):
            log.info("node %d needs no snapshot at %d (%s, resume after %d)", peer,
                     manifest.index, answer, index)
            return True, index
        if answer != SNAPSHOT_ACCEPT:
            raise errors.Unavailable(f"node {peer} did not take the snapshot: {answer}")
        log.info("sending node %d a snapshot at index %d (%d bytes)", peer, manifest.index,
                 manifest.total_bytes)
        try:
            chunks = snapshot.chunks(outgoing.directory, manifest)
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if self.core.role != LEADER or self.core.promised != epoch:
                    raise errors.Unavailable("lost leadership while sending a snapshot")
                await rpc(peer, "snapshot_chunk", {**ident, "file": chunk.file,
                                                   "offset": chunk.offset, "data": chunk.data,
                                                   "crc": chunk.crc}, SNAPSHOT_RPC_TIMEOUT_S)
            await rpc(peer, "snapshot_end", ident, SNAPSHOT_END_TIMEOUT_S)
        except BaseException:
            # Let the follower unfreeze now rather than after SNAPSHOT_IDLE_S (best effort).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rpc(peer, "snapshot_abort", ident, 1.0), 1.0)
            raise
        log.info("node %d installed the snapshot at index %d", peer, manifest.index)
        return True, manifest.index

    # ------------------------------------------------------------------ snapshots: follower side
    async def on_snapshot_request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """``snapshot_begin|chunk|end|abort`` from a leader (see docs/internals.md)."""
        frm, epoch, index = (_uint_field(body, k) for k in ("frm", "epoch", "index"))
        if op == "snapshot_begin":
            return await self._snapshot_begin(frm, epoch, Manifest.from_wire(body.get("manifest")))
        inc = self._incoming
        if inc is None or (inc.frm, inc.epoch, inc.manifest.index) != (frm, epoch, index):
            raise SnapshotInvalid(f"node {self.node_id} is not receiving a snapshot at {index} "
                                  f"from node {frm} in epoch {epoch}")
        if op == "snapshot_abort":
            if not inc.committing:
                await self._abort_incoming("the leader gave up")
            return {}
        if inc.committing:
            raise errors.Unavailable("the snapshot is being installed")
        self.loop.snapshot_progress()
        if op == "snapshot_chunk":
            chunk = Chunk(_uint_field(body, "file"), _uint_field(body, "offset"),
                          body.get("data"), _uint_field(body, "crc"))  # type: ignore[arg-type]
            try:
                await asyncio.to_thread(inc.receiver.write, chunk)
            except SnapshotInvalid as err:
                await self._abort_incoming(f"bad chunk: {err}")
                raise
            self.loop.snapshot_progress()
            return {}
        if op == "snapshot_end":
            self._install_task = asyncio.get_running_loop().create_task(self._install(inc))
            self._install_task.add_done_callback(_crash_unless_refused)
            return await asyncio.shield(self._install_task)
        raise errors.InvalidArgument(f"unknown snapshot op {op!r}")

    async def _snapshot_begin(self, frm: int, epoch: int, manifest: Manifest) -> dict[str, Any]:
        inc = self._incoming
        if inc is not None:
            if inc.committing:
                return {"answer": SNAPSHOT_BUSY, "index": 0}
            same = (inc.frm, inc.epoch, inc.manifest) == (frm, epoch, manifest)
            await self._abort_incoming("the leader started over" if same else "a newer offer")
        answer, index = self.loop.offer_snapshot(frm, epoch, manifest.index, manifest.epoch)
        if answer == SNAPSHOT_ACCEPT:
            try:
                receiver = await asyncio.to_thread(Receiver, self.data_dir, manifest)
            except BaseException:  # (a disk error, or the request cancelled): never stay frozen
                self.loop.snapshot_aborted()
                raise
            self._incoming = _Incoming(frm, epoch, manifest, receiver)
            self.loop.snapshot_progress()
            log.info("receiving a snapshot at index %d from node %d (%d bytes)",
                     manifest.index, frm, manifest.total_bytes)
        return {"answer": answer, "index": index}

    async def _abort_incoming(self, why: str) -> None:
        """Abort the snapshot being received, unless it is being installed (its own failure
        path clears ``committing`` first)."""
        inc = self._incoming
        if inc is None or inc.committing:
            return
        self._incoming = None
        await self._give_up(inc, why)

    async def _give_up(self, inc: _Incoming, why: str) -> None:
        """Remove the staged files (in a worker thread), then unfreeze the core: a new offer
        must not meet the old files, which the removal could take from under it."""
        log.warning("snapshot at index %d from node %d aborted: %s", inc.manifest.index,
                    inc.frm, why)
        try:
            await asyncio.to_thread(inc.receiver.abort)
        finally:
            self.loop.snapshot_aborted()  # (whatever happened to the files: never stay frozen)

    def abort_snapshot(self, why: str) -> None:
        """The loop's ``SnapshotSink``: give up the snapshot being received (a newer epoch was
        promised, or it went quiet), unless its install is past the point of no return."""
        inc = self._incoming
        if inc is None or inc.committing:
            return
        self._incoming = None  # (at once: the next step must not schedule a second abort)
        task = asyncio.get_running_loop().create_task(self._give_up(inc, why))
        task.add_done_callback(_crash_on_error)

    async def _install(self, inc: _Incoming) -> dict[str, Any]:
        """Verify the staged snapshot, then install it (the persist task commits it)."""
        inc.committing = True
        manifest = inc.manifest
        try:
            try:
                await asyncio.to_thread(inc.receiver.finish)
            except OSError as err:
                # An fsync that failed is final (see "Disk failures"): stop, retry nothing.
                log.critical("disk failure while making a received snapshot durable, stopping "
                             "the node: %s", err)
                _exit_process(EXIT_DISK_FAILURE)
            try:
                held = await asyncio.to_thread(checkpoint_applied_index, inc.receiver.staging)
            except Exception as err:  # noqa: BLE001 - RocksDB's errors are plain exceptions
                raise SnapshotInvalid(f"the staged snapshot does not open: {err}") from None
            if held != manifest.index:
                raise SnapshotInvalid(f"the snapshot holds the state at {held}, "
                                      f"not {manifest.index}")
        except BaseException as err:  # before the point of no return: abort, never stay frozen
            inc.committing = False
            await self._abort_incoming(str(err) or type(err).__name__)
            raise
        assert self.core.installing == (inc.frm, inc.epoch, manifest.index, manifest.epoch), (
            self.core.installing, inc)
        assert manifest.index > self.core.applied, (manifest.index, self.core.applied)
        async with self._engine_lock:
            engine, self._engine = self._engine, None
            assert engine is not None
            await asyncio.to_thread(engine.close)
            # durable: marker, swap, log reset (a disk error stopped the process)
            await self._disk.install(manifest.index, manifest.epoch)
            engine = await asyncio.to_thread(open_rocks, self.data_dir / snapshot.INDEX_NAME)
            if engine.applied_index != manifest.index:
                raise AssertionError(f"installed snapshot applied {engine.applied_index}, "
                                     f"expected {manifest.index}")
            self._engine = engine
        if self.on_engine_replaced is not None:
            self.on_engine_replaced(engine)
        self._incoming = None
        self.durable_applied = self._compacted_at = manifest.index
        self.last_seq = max(self.last_seq, engine.last_seq)
        self._count("snapshots_installed")
        self.loop.snapshot_installed(manifest.index, manifest.epoch)
        log.info("installed a snapshot at index %d (epoch %d) from node %d", manifest.index,
                 manifest.epoch, inc.frm)
        return {"answer": "installed", "index": manifest.index}


def _crash_unless_refused(task: asyncio.Task[Any]) -> None:
    """An install task may end with a refusal (a RangeKVError, answered to the leader); any
    other exception is a bug, even if the leader stopped waiting for the answer."""
    if task.cancelled() or isinstance(task.exception(), errors.RangeKVError):
        return
    _crash_on_error(task)


def _uint_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.InvalidArgument(f"{name} must be a non-negative integer")
    return value
