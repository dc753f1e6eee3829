"""The asyncio driver of one replica: all the IO around the pure replication core.

It owns the core, the WAL, the hard-state file and the state machine (RocksDB index), and
follows the core's ``Ready`` contract (see ``core.py``):

1. persist hard state, cut and write entries — queued to the **persist task**, which does the
   writes and one fsync for everything queued while the previous fsync ran (group commit), in a
   worker thread, in order;
2. send ``messages`` at once, ``messages_after_sync`` once the batch they came with is durable;
3. apply ``committed`` entries to the state machine (one atomic RocksDB batch, applied index
   included), answer the proposals waiting on them;
4. answer reads once applied reaches their read index.

Only the persist task mutates the WAL, and only in its worker thread; the event loop reads
entries the core knows to be durable (below its unstable offset), by pread.

Invariant kept here: a client write is acknowledged only after its entry is committed (durable
on a majority) and applied on this leader.

Disk failures: an error from a write or an fsync of the WAL or the hard state stops the process
at once, from the persist thread (exit status ``EXIT_DISK_FAILURE``, one CRITICAL log line that
names the call, the file and the errno). Nothing in the failed batch has been acknowledged:
followers answer and the leader applies only after ``on_synced``, which only a successful
batch leads to. Nothing is retried, because after a failed fsync the page cache cannot be
trusted; the restarted node reopens its log (see ``wal.py``: it cuts what was written after the
last successful sync) and catches up from the group.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from rangekv import errors, sequencer
from rangekv.replication.core import LEADER, Config, Core, NotLeaderError, Ready
from rangekv.replication.messages import Entry, Msg
from rangekv.storage import hardstate
from rangekv.storage.engine import StateMachine, decode_command, encode_command
from rangekv.storage.wal import WAL

log = logging.getLogger("rangekv.replica")

TICK_MS = 50
PROPOSAL_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0
EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h)
EXIT_DISK_FAILURE = 74  # EX_IOERR: the disk failed a write or an fsync


def _exit_process(code: int) -> NoReturn:
    """Stop the whole process now: every thread, no cleanup that could touch the disk again.
    (Tests replace this function to watch the driver decide to stop.)"""
    logging.shutdown()
    os._exit(code)


def _crash_on_error(task: asyncio.Task[None]) -> None:
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


@dataclass
class _Batch:
    hardstate: dict[str, int] | None
    truncate_from: int | None
    entries: list[Entry]
    after_sync: list[Msg] = field(default_factory=list)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (asyncio logs an error for one that never is)."""
    if not fut.cancelled():
        fut.exception()


PLANTED_BUG_ENV = "RANGEKV_PLANTED_BUG"


def core_class() -> type[Core]:
    """The replication core to run: ``Core``, unless ``RANGEKV_PLANTED_BUG`` names one of the
    planted bugs of :mod:`rangekv.sim.bugs` (each breaks one rule of the protocol), which
    ``rangekv chaos --planted-bug`` uses to show that the chaos run catches it."""
    name = os.environ.get(PLANTED_BUG_ENV)
    if not name:
        return Core
    from rangekv.sim.bugs import BUGS

    if name not in BUGS:
        raise SystemExit(f"{PLANTED_BUG_ENV}={name!r}: no such planted bug "
                         f"(have {', '.join(sorted(BUGS))})")
    log.warning("planted bug %r is enabled: this node deliberately breaks the protocol", name)
    return BUGS[name]


class Replica:
    """One member's replication driver. ``send(msg)`` delivers a message to a peer."""

    def __init__(
        self,
        node_id: int,
        wal: WAL,
        engine: StateMachine,
        hardstate_path: Path,
        send: Callable[[Msg], None],
    ) -> None:
        self.node_id = node_id
        self.wal = wal
        self.engine = engine
        self.hardstate_path = hardstate_path
        self._send_msg = send
        hard = hardstate.load(hardstate_path)
        assert engine.applied_index <= wal.last_index, (
            "state machine is ahead of the log", engine.applied_index, wal.last_index)
        self.core = core_class()(
            node_id, [], wal, {k: int(v) for k, v in hard.items() if isinstance(v, int)},
            engine.applied_index, Config(noop_payload=encode_command({"op": "noop"})),
        )
        self.last_seq = engine.last_seq
        self._proposals: dict[int, tuple[int, asyncio.Future[dict[str, Any]]]] = {}
        self._reads: list[tuple[int, asyncio.Future[None]]] = []  # (read index, waiter)
        self._read_tokens = itertools.count(1)
        self._read_waiters: dict[int, asyncio.Future[None]] = {}
        self._batches: list[_Batch] = []
        self._persist_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._retaking = False  # campaigning for a newer epoch while leading (see campaign)
        self.stats = {"fsyncs": 0, "entries_written": 0, "applied": 0, "leader_changes": 0}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._persist_loop(), name="persist"),
            loop.create_task(self._tick_loop(), name="tick"),
        ]
        for task in self._tasks:
            task.add_done_callback(_crash_on_error)

    async def stop(self) -> None:
        self._closing = True
        self._persist_wakeup.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        # A proposal already in the log may still commit under the next leader: its outcome is
        # unknown, never "unavailable" (which promises it did not happen).
        self._fail_proposals(errors.OutcomeUnknown("node is shutting down; the write may "
                                                   "still take effect"))
        self._fail_all(errors.Unavailable("node is shutting down"))

    # ------------------------------------------------------------------ inputs
    def configure(self, members: list[int], learners: list[int] | None = None,
                  joint: list[int] | None = None) -> None:
        """Take meta's record of the group (see ``Core.set_config``)."""
        self.core.set_config(members, learners or (), joint or ())
        self._process()

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
            self.core.campaign(epoch)
            self._process()
        finally:
            self._retaking = False

    def step(self, msg: Msg) -> None:
        self.core.step(msg)
        self._process()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            self.core.tick()
            self._process()

    def status(self) -> dict[str, Any]:
        return self.core.status()

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
            # seq order is commit order inside the group even when rm clocks disagree.
            cmd["s"] = sequencer.final(cmd["s"], self.last_seq)
            self.last_seq = cmd["s"]
        try:
            epoch, index = self.core.propose(encode_command(cmd))
        except NotLeaderError:
            raise self.not_leader() from None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # After a timeout (or the caller's cancellation) nobody awaits ``fut`` any more, and it
        # may still fail later (leadership lost): that outcome is already reported as unknown.
        fut.add_done_callback(_consume)
        self._proposals[index] = (epoch, fut)
        self._process()
        try:
            async with asyncio.timeout(PROPOSAL_TIMEOUT_S):
                result = await asyncio.shield(fut)
        except asyncio.TimeoutError:
            raise errors.OutcomeUnknown(
                f"write not committed within {PROPOSAL_TIMEOUT_S}s; it may still take effect"
            ) from None
        if "error" in result:
            raise errors.from_dict(result["error"])
        return result

    async def linearizable(self) -> None:
        """Wait until a read here would see every write acknowledged before the call."""
        if self.core.role != LEADER or not self.core.serving:
            raise self.not_leader()
        token = next(self._read_tokens)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._read_waiters[token] = fut
        try:
            self.core.read(token)
        except NotLeaderError:
            self._read_waiters.pop(token, None)
            raise self.not_leader() from None
        self._process()
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                await fut
        except asyncio.TimeoutError:
            raise errors.Unavailable(
                f"leadership not confirmed within {READ_TIMEOUT_S}s"
            ) from None
        finally:
            self._read_waiters.pop(token, None)

    # ------------------------------------------------------------------ the Ready loop
    def _process(self) -> None:
        while True:
            rd = self.core.ready()
            if rd.empty():
                return
            self._handle(rd)

    def _handle(self, rd: Ready) -> None:
        if rd.hardstate or rd.truncate_from is not None or rd.entries or rd.messages_after_sync:
            self._batches.append(
                _Batch(rd.hardstate, rd.truncate_from, rd.entries, rd.messages_after_sync)
            )
            self._persist_wakeup.set()
        for msg in rd.messages:
            self._send_msg(msg)
        if rd.committed:
            self._apply(rd.committed)
        for token, read_index in rd.reads:
            fut = self._read_waiters.get(token)
            if fut is not None and not fut.done():
                self._reads.append((read_index, fut))
        for token in rd.failed_reads:
            fut = self._read_waiters.get(token)
            if fut is not None and not fut.done():
                fut.set_exception(self.not_leader())
        if rd.became_leader is not None:
            self._on_became_leader(rd.became_leader)
        if rd.lost_leadership and self._retaking:
            log.info("taking up epoch %d after leading the one before; keeping %d pending "
                     "writes", self.core.promised, len(self._proposals))
        elif rd.lost_leadership:
            log.warning("lost leadership of epoch %d", self.core.promised)
            self._fail_proposals(errors.OutcomeUnknown(
                "leadership lost before the write was acknowledged; it may still take effect"))
        self._release_reads()

    def _apply(self, entries: list[Entry]) -> None:
        results = self.engine.apply([(e.index, e.payload) for e in entries])
        assert len(results) == len(entries)
        if self.engine.last_seq > self.last_seq:
            self.last_seq = self.engine.last_seq
        for entry, result in zip(entries, results, strict=True):
            waiting = self._proposals.pop(entry.index, None)
            if waiting is None:
                continue
            epoch, fut = waiting
            if fut.done():
                continue
            if entry.epoch == epoch:
                fut.set_result(result)
            else:
                # Another leader's entry took this index: ours will never commit.
                fut.set_exception(errors.Unavailable(
                    "write was replaced by a new leader's log and not applied"))
        self.core.on_applied(entries[-1].index)
        self.stats["applied"] += len(entries)

    def _release_reads(self) -> None:
        if not self._reads:
            return
        applied = self.engine.applied_index
        keep = []
        for read_index, fut in self._reads:
            if fut.done():
                continue
            if read_index <= applied:
                fut.set_result(None)
            else:
                keep.append((read_index, fut))
        self._reads = keep

    def _on_became_leader(self, epoch: int) -> None:
        self.stats["leader_changes"] += 1
        self.last_seq = max(self.last_seq, highest_seq(self.core, self.engine))
        log.info("leading epoch %d (last index %d)", epoch, self.core.last_index)

    def _fail_proposals(self, err: errors.RangeKVError) -> None:
        proposals, self._proposals = self._proposals, {}
        for _, fut in proposals.values():
            if not fut.done():
                fut.set_exception(err)

    def _fail_all(self, err: errors.RangeKVError) -> None:
        self._fail_proposals(err)
        for _, fut in self._reads:
            if not fut.done():
                fut.set_exception(err)
        self._reads = []
        for fut in self._read_waiters.values():
            if not fut.done():
                fut.set_exception(err)

    # ------------------------------------------------------------------ persistence
    def _write_batches(self, batches: list[_Batch]) -> None:
        """Runs in a worker thread: the only place the WAL and hard state are written.

        A disk error stops the process right here, in this thread: the batch's outcome never
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
                    self.wal.append([(e.epoch, e.index, e.payload) for e in batch.entries])
            self.wal.sync()
        except OSError as err:
            log.critical(
                "disk failure, stopping the node: %s (entries written since the last successful "
                "sync: %d, none of them acknowledged; after a failed fsync the page cache cannot "
                "be trusted, so nothing is retried: the log is recovered on restart)",
                err, sum(len(b.entries) for b in batches),
            )
            _exit_process(EXIT_DISK_FAILURE)

    async def _persist_loop(self) -> None:
        while not self._closing:
            await self._persist_wakeup.wait()
            self._persist_wakeup.clear()
            if not self._batches:
                continue
            batches, self._batches = self._batches, []
            try:
                await asyncio.shield(asyncio.to_thread(self._write_batches, batches))
            except asyncio.CancelledError:
                raise
            except Exception:
                # Disk errors stopped the process in the thread already: this is a bug (a
                # broken invariant), and the batch is in an unknown state. Never acknowledge it.
                log.critical("persisting a batch failed; stopping the node", exc_info=True)
                _exit_process(EXIT_BUG)
            self.stats["fsyncs"] += 1
            self.stats["entries_written"] += sum(len(b.entries) for b in batches)
            hard = [b.hardstate for b in batches if b.hardstate]
            if hard:
                self.core.on_hardstate_synced(hard[-1])
            for batch in batches:
                for msg in batch.after_sync:
                    self._send_msg(msg)
            last = self.wal.last_index
            if last:
                self.core.on_synced(last, self.wal.epoch_at(last))
            self._process()
