"""One simulated node: the production replication code over a simulated disk, network, clock
and snapshot transfer.

The code path is the one production runs: every input (a message, a tick, meta's assignment, a
client's write or read, a completed fsync, a snapshot's progress) goes to the node's
``ReadyLoop`` (``rangekv.replication.loop``), which steps the ``Core`` (or a planted bug's
subclass) and performs each ``Ready`` against the interfaces ``SimNode`` and ``SimDisk`` give
it, exactly as ``replication/driver.py`` gives it the WAL's persist task, TCP and RocksDB:

=====================  ===================================================================
the loop's interface   here
=====================  ===================================================================
``Disk``               ``SimDisk``: the real WAL (segment files on a scratch dir, so CRCs,
                       torn tails and recovery are the real ones) and the real hard-state file;
                       its fsync lands after a random delay (sometimes a long one), and a
                       crash loses every byte no fsync covered (``SimNode.crash``)
``Network``            the simulation's network (drops, duplicates, delays, partitions)
``Application``        the real state machine (``StateMachine`` over an in-memory backend
                       that loses what was not flushed) and the simulated clients' waiters
``SnapshotSource``     a checkpoint (a memory dump) offered, streamed in small chunks and
                       ended over the simulated network, with timeouts and damaged chunks
``SnapshotSink``       the real ``Receiver`` and ``snapshot.install`` (a crash injected at each
                       of its durable steps)
``Clock``              simulated time
=====================  ===================================================================

What is simulated stays here; what is checked across nodes (one leader per epoch, the same
entry applied at an index everywhere, ...) is the ``Simulation``'s (``cluster.py``), which this
module calls back.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rangekv import errors, sequencer
from rangekv.node import requests
from rangekv.node.commands import META_READ_OPS, RANGE_OPS, meta_read, range_command, range_reply
from rangekv.node.stats import RangeStats
from rangekv.replication.core import (
    LEADER,
    SNAPSHOT_ACCEPT,
    SNAPSHOT_HAVE,
    SNAPSHOT_STALE,
    Config,
    Core,
    Ready,
    SnapshotNeed,
)
from rangekv.replication.driver import highest_seq
from rangekv.replication.loop import ReadyLoop
from rangekv.replication.messages import Entry, Msg
from rangekv.sim.meta import GROUP
from rangekv.sim.tasks import Wait, drive
from rangekv.storage import hardstate, snapshot
from rangekv.storage.engine import StateMachine, checkpoint_applied_index, encode_command
from rangekv.storage.memory import MemoryBackend
from rangekv.storage.snapshot import Chunk, Manifest, Receiver, SnapshotInvalid
from rangekv.storage.wal import WAL, StorageCorrupt

if TYPE_CHECKING:
    from collections.abc import Callable

    from rangekv.sim.cluster import ClientOp, Simulation

TABLE = 1
# Once faults stop, a live learner reaches its leader's commit index within this (simulated)
# time: the appends or the snapshot it needs take well under a second with no faults, after the
# longest snapshot backoff (800 ms); the controller gives up a learner after 4 s.
LEARNER_CATCH_UP_MS = 2_500.0
NOOP = encode_command({"op": "noop"})


class _InstallCrash(Exception):
    """The simulated crash of a node at one of a snapshot install's durable steps."""


class SimDisk:
    """The loop's ``Disk``: the node's WAL and hard-state file. Appends are written at once and
    made durable by an fsync that lands ``disk_ms`` later (one for everything written
    meanwhile: group commit); the cut and the prefix drop are durable when they return, as the
    WAL's are; the hard state is written at the fsync."""

    def __init__(self, node: SimNode, wal: WAL) -> None:
        self.node = node
        self.wal = wal
        self._hardstate: dict[str, int] | None = None  # to write at the next fsync
        self._done: Callable[[], None] | None = None  # the latest sync asked for
        self._scheduled = False

    def save_hardstate(self, hardstate: dict[str, int]) -> None:
        self._hardstate = hardstate

    def truncate(self, from_index: int) -> None:
        self.wal.truncate_suffix(from_index)  # fsyncs before returning
        self.node.record_durable()

    def append(self, entries: list[Entry]) -> None:
        self.wal.append(entries)
        self.node.sim.check_appended(self.node, entries)

    def compact(self, index: int) -> None:
        self.wal.drop_prefix(index)  # durable when it returns
        self.node.forget_removed_segments()

    def sync(self, done: Callable[[], None]) -> None:
        self._done = done  # (it implies every sync asked for before it)
        if self._scheduled:
            return
        self._scheduled = True
        sim = self.node.sim
        disk_ms = sim.uniform(sim.cfg.disk_ms)
        if sim.faults_on and sim.rng.random() < sim.cfg.slow_fsync:
            disk_ms = sim.uniform(sim.cfg.slow_fsync_ms)  # a disk hiccup
        sim.at(disk_ms, "sync", (self.node.id, self.node.incarnation))

    def fsync(self) -> None:
        """The fsync lands: everything written so far is durable."""
        self._scheduled = False
        done, self._done = self._done, None
        if done is None:
            return
        if self._hardstate is not None:
            hardstate.save(self.node.dir / "hardstate", self._hardstate)
            self._hardstate = None
        self.wal.sync()
        self.node.record_durable()
        done()


@dataclass
class SimNode:
    sim: Simulation
    id: int
    dir: Path
    backend: MemoryBackend = field(default_factory=MemoryBackend)
    wal: WAL | None = None
    engine: StateMachine | None = None
    loop: ReadyLoop | None = None
    disk: SimDisk | None = None
    up: bool = False
    broken: str | None = None
    durable_sizes: dict[str, int] = field(default_factory=dict)
    last_seq: bytes = sequencer.ZERO
    proposals: dict[int, tuple[int, ClientOp]] = field(default_factory=dict)
    read_waiting: dict[int, ClientOp] = field(default_factory=dict)  # token -> read
    incarnation: int = 0
    flipped: bool = False  # a bit was flipped in its log while it was down
    paused_until: float = 0.0  # SIGSTOP: events for it wait until then, then arrive in any order
    deferred: list[tuple[str, Any]] = field(default_factory=list)
    sending: dict[int, dict[str, Any]] = field(default_factory=dict)  # peer -> transfer
    incoming: dict[str, Any] | None = None  # the snapshot being received
    high_commit: int = 0  # the highest commit and applied index seen in this run of the node
    high_applied: int = 0
    gone: bool = False  # crashed for good: never restarts
    # Leading with faults stopped: learner -> (first seen behind ms, commit index to reach).
    learners_seen: dict[int, tuple[float, int]] = field(default_factory=dict)
    group_id: int | None = None  # the group whose entries it holds (the checkers' view)
    assigned_group: int | None = None  # the group meta last told it of (its heartbeats say)
    data_group: int | None = None  # whose data is on its disk (the node server's node.group)
    # range seeds: the size and load of its ranges (``node/stats.py``, as a real node keeps
    # them), the meta's requests waiting for their entry's apply (index -> (epoch, op, wait))
    # or their read (token -> (wait, fields))
    stats: RangeStats | None = None
    calls: dict[int, tuple[int, str, Wait]] = field(default_factory=dict)
    meta_reads: dict[int, tuple[Wait, str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def core(self) -> Core | None:
        return self.loop.core if self.loop is not None else None

    # ------------------------------------------------------------------ lifecycle
    def record_durable(self) -> None:
        wal_dir = self.dir / "wal"
        self.durable_sizes = {
            name: os.path.getsize(wal_dir / name)
            for name in sorted(os.listdir(wal_dir)) if name.endswith(".wal")
        }

    def forget_removed_segments(self) -> None:
        wal_dir = self.dir / "wal"
        self.durable_sizes = {name: size for name, size in self.durable_sizes.items()
                              if (wal_dir / name).exists()}

    def start(self) -> None:
        sim = self.sim
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            wal = WAL.open(self.dir / "wal", segment_bytes_max=sim.cfg.segment_bytes_max)
        except StorageCorrupt as err:
            if not self.flipped:
                sim.fail(f"n{self.id}: WAL refused after a plain crash: {err}")
            self.broken = str(err)
            sim.broken_nodes.add(self.id)
            sim.log(f"n{self.id} refuses to serve: {err}")
            if sim.membership:
                # It stays up without a replica and reports itself in its heartbeats (and so
                # is replaced at once).
                self.incarnation += 1
                sim.at(sim.cfg.heartbeat_ms * sim.rng.random(), "beat",
                       (self.id, self.incarnation))
            return
        wal.sync()
        installed = snapshot.recover(self.dir, wal)
        if installed is not None:
            # The index directory is now the snapshot's: the state machine is its content.
            self.backend = MemoryBackend.load(self.dir / snapshot.INDEX_NAME)
            sim.log(f"n{self.id} finished installing the snapshot at {installed[0]}")
        self.record_durable()
        engine = StateMachine(self.backend)
        if engine.applied_index > wal.last_index:
            sim.fail(f"n{self.id}: state machine applied {engine.applied_index} "
                     f"but the log ends at {wal.last_index}")
        if engine.applied_index < wal.first_index - 1:
            sim.fail(f"n{self.id}: state machine applied {engine.applied_index} but the log "
                     f"starts after {wal.first_index - 1}: entries lost")
        self.wal, self.engine = wal, engine
        if sim.ranges:
            self.stats = RangeStats(engine, clock=self.now_s, tau_s=sim.cfg.range_tau_s)
            self.stats.attach()
        members, learners, joint = sim.config_of(self.id)
        if members or learners or joint:  # (told at start, as a first heartbeat answer)
            self.assigned_group = sim.meta.group_id_of(self.id)
            self.data_group = self.data_group or self.assigned_group
        else:
            self.assigned_group = None
        core = sim.core_factory(
            self.id, members, wal,
            {k: int(v) for k, v in hardstate.load(self.dir / "hardstate").items()},
            engine.applied_index,
            Config(noop_payload=NOOP, append_bytes_max=sim.append_bytes_max),
            learners=learners, joint=joint)
        self.disk = SimDisk(self, wal)
        low_ms, high_ms = sim.cfg.snapshot_backoff_ms
        self.loop = sim.loop_factory(core, self.disk, self, self, snapshots=self, sink=self,
                                     clock=self, observe=self._observe,
                                     snapshot_backoff_s=(low_ms / 1000, high_ms / 1000),
                                     install_idle_s=sim.cfg.snapshot_idle_ms / 1000)
        self.last_seq = engine.last_seq
        self.up = True
        self.incarnation += 1
        self.high_commit = self.high_applied = engine.applied_index
        self.sending, self.incoming = {}, None
        sim.log(f"n{self.id} up: log {wal.first_index - 1}+{wal.last_epoch}/{wal.last_index} "
                f"applied {engine.applied_index} promised {core.promised}")
        sim.at(sim.cfg.tick_ms * sim.rng.random(), "tick", (self.id, self.incarnation))
        sim.at(sim.cfg.heartbeat_ms * sim.rng.random(), "beat", (self.id, self.incarnation))

    def crash(self, flip: bool = False) -> None:
        """The process dies: every byte no fsync covered is at the mercy of the crash (a torn
        part of the unsynced tail may stay), the state machine loses what was not flushed."""
        if not self.up:
            return
        sim = self.sim
        assert self.wal is not None and self.loop is not None
        self.loop.close()
        self.wal._close_fds()  # no fsync: what was not synced is at the mercy of the crash
        wal_dir = self.dir / "wal"
        names = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))
        for name in names:
            path = wal_dir / name
            size = os.path.getsize(path)
            durable = self.durable_sizes.get(name)
            if durable is None:
                os.remove(path)
                continue
            keep = durable
            if size > durable and name == names[-1] and sim.rng.random() < 0.5:
                keep = durable + sim.rng.randrange(0, size - durable + 1)  # a torn tail
                sim.stats["torn_bytes"] += keep - durable
            with open(path, "r+b") as f:
                f.truncate(keep)
        self.backend.crash()
        self.fail_ops()
        self.calls, self.meta_reads, self.stats = {}, {}, None  # (the meta times out)
        self.up, self.loop, self.disk, self.wal, self.engine = False, None, None, None, None
        self.sending, self.incoming = {}, None
        sim.stats["crashes"] += 1
        sim.log(f"n{self.id} crashed")
        if flip:
            self._flip_bit()

    def discard(self, gid: int) -> None:
        """Told to join group ``gid`` while its data is another group's: discard the log, the
        hard state and the state machine and start empty for ``gid`` (the node server's
        ``_discard_data``), so that two groups' logs never mix."""
        sim = self.sim
        assert self.loop is not None
        sim.log(f"n{self.id} discards group {self.data_group}'s data to join group {gid}")
        self.loop.close()
        if self.wal is not None:
            self.wal._close_fds()
        self.fail_ops()
        self.calls, self.meta_reads, self.stats = {}, {}, None
        self.up, self.loop, self.disk, self.wal, self.engine = False, None, None, None, None
        self.sending, self.incoming = {}, None
        shutil.rmtree(self.dir, ignore_errors=True)
        self.backend = MemoryBackend()
        self.durable_sizes = {}
        self.data_group = gid
        self.group_id = gid
        sim.stats["discards"] += 1
        self.start()

    def _flip_bit(self) -> None:
        """Flip one bit inside a record that has a valid record after it: the CRC must catch
        it and the node must refuse to serve that log."""
        sim = self.sim
        wal_dir = self.dir / "wal"
        names = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))
        sized = [(n, os.path.getsize(wal_dir / n)) for n in names]
        total = sum(s for _, s in sized)
        if total < 400:
            return
        # Anywhere but the last 200 bytes of the log, so that valid records follow it.
        pos = sim.rng.randrange(0, total - 200)
        for name, size in sized:
            if pos < size:
                with open(wal_dir / name, "r+b") as f:
                    f.seek(pos)
                    byte = f.read(1)[0]
                    f.seek(pos)
                    f.write(bytes([byte ^ (1 << sim.rng.randrange(8))]))
                sim.stats["flips"] += 1
                sim.log(f"n{self.id} bit flipped in {name} at {pos}")
                self.flipped = True
                return
            pos -= size

    def fail_ops(self) -> None:
        """Every client operation waiting on this node: outcome unknown."""
        for _, cop in list(self.proposals.values()):
            self.sim.complete(cop, None)
        for cop in self.read_waiting.values():
            self.sim.complete(cop, None)
        self.proposals, self.read_waiting = {}, {}

    # ------------------------------------------------------------------ checks
    def _observe(self, rd: Ready) -> None:
        self.check_monotonic()
        if not self.sim.faults_on:
            self.check_learners_catch_up()

    def check_learners_catch_up(self) -> None:
        """Once faults stopped, a leader's learner that is up reaches the leader's commit index
        of when it was first seen within ``LEARNER_CATCH_UP_MS`` (by appends, or by a snapshot
        if the leader compacted past it): a replacement then completes. A learner the leader
        never brings up (a snapshot never sent to it, issue 16) is caught here rather than by
        the controller's silent timeout."""
        assert self.loop is not None
        core, now = self.loop.core, self.sim.now
        if core.role != LEADER or not core.serving:
            self.learners_seen = {}
            return
        seen: dict[int, tuple[float, int]] = {}
        for peer in core.learners:
            node = self.sim.nodes.get(peer)
            if node is None or node.core is None or node.broken is not None:
                continue
            since, target = self.learners_seen.get(peer, (now, core.commit))
            if node.core.commit >= target:
                continue  # caught up (watched again only if it falls behind anew)
            if now - since > LEARNER_CATCH_UP_MS:
                self.sim.fail(f"n{self.id} leads learner n{peer}, up since faults stopped, but "
                              f"it is still at commit index {node.core.commit} after "
                              f"{now - since:.0f} ms (target {target}, leader's base index "
                              f"{core.base_index}): the learner never catches up")
            seen[peer] = (since, target)
        self.learners_seen = seen

    def check_monotonic(self) -> None:
        """Commit and applied never go backward within one run of a node."""
        assert self.loop is not None and self.engine is not None
        commit, applied = self.loop.core.commit, self.engine.applied_index
        if commit < self.high_commit or applied < self.high_applied:
            self.sim.fail(f"n{self.id}: commit {self.high_commit} -> {commit}, applied "
                          f"{self.high_applied} -> {applied}: went backward")
        self.high_commit, self.high_applied = commit, applied

    # ------------------------------------------------------------------ the loop's Network, Clock
    def send(self, msg: Msg) -> None:
        self.sim.send(msg)

    def now_s(self) -> float:
        return self.sim.now / 1000

    # ------------------------------------------------------------------ the loop's Application
    def apply(self, entries: list[Entry]) -> None:
        sim = self.sim
        assert self.engine is not None
        sim.check_applied(self, entries)
        results = self.engine.apply([(e.index, e.payload) for e in entries])
        sim.check_state(self, "applied")
        if not sim.table_ready and self.engine.has_table(TABLE):
            sim.table_ready = True
        for e, result in zip(entries, results, strict=True):
            call = self.calls.pop(e.index, None)
            if call is not None:
                if e.epoch == call[0]:  # (else another leader's entry took its index)
                    self._answer_meta(call[2], call[1], result)
                continue
            waiting = self.proposals.pop(e.index, None)
            if waiting is None:
                continue
            epoch, cop = waiting
            sim.complete(cop, result if e.epoch == epoch else None)
        self.check_monotonic()

    def read_ready(self, token: Any) -> None:
        export = self.meta_reads.pop(token, None)
        if export is not None:
            wait, op, f = export
            assert self.engine is not None
            try:
                page = meta_read(self.engine, op, f)
            except errors.RangeKVError as exc:
                self.sim.meta_reply(self.id, wait, None, exc)
                return
            self.sim.meta_reply(self.id, wait, page, None)
            return
        cop = self.read_waiting.pop(token, None)
        if cop is None:
            return  # the client gave up
        self.sim.read_done(self, cop)

    def read_failed(self, token: Any) -> None:
        self.meta_reads.pop(token, None)  # (the meta times out and asks again)
        cop = self.read_waiting.pop(token, None)
        if cop is not None:
            self.sim.complete(cop, None)

    def became_leader(self, epoch: int) -> None:
        sim = self.sim
        assert self.loop is not None and self.engine is not None
        sim.check_new_leader(self, epoch)
        self.last_seq = max(self.last_seq, highest_seq(self.loop.core, self.engine))
        sim.stats["leader_changes"] += 1
        sim.log(f"n{self.id} leads epoch {epoch}")
        if not sim.table_ready and self.group_id in (GROUP, None):
            # What meta's create_table does: replicate the table's range (idempotent).
            self.loop.propose(encode_command({"op": "add_range", "t": TABLE, "start": b"",
                                              "end": None, "s": sequencer.ZERO}))

    def lost_leadership(self) -> None:
        self.sim.log(f"n{self.id} lost leadership")
        self.calls, self.meta_reads = {}, {}  # unknown: the meta asks again
        for _, cop in list(self.proposals.values()):
            self.sim.complete(cop, None)  # unknown: may still commit
        self.proposals.clear()

    # ------------------------------------------------------------------ meta's requests
    def range_figures(self) -> tuple[dict[str, Any], ...] | None:
        """A leader's range figures for its heartbeat (range seeds): the sizes not counted yet
        are counted first, as the node's background scan would have by now."""
        if self.stats is None:
            return None
        for key in [k for k, st in self.stats.ranges.items() if not st.counted]:
            drive(self.stats.count(key))
        return tuple(self.stats.report())

    def serve_meta(self, wait: Wait, op: str, fields: dict[str, Any]) -> None:
        """One of meta's requests to a group leader, served as the node server serves it: a
        range command proposed (``node/commands.py``) and answered once applied, an export
        page once a linearizable read is ready, a split key from the range figures."""
        sim = self.sim
        assert self.loop is not None and self.engine is not None
        core = self.loop.core
        if core.role != LEADER or not core.serving:
            leader = core.leader if core.leader != self.id else None
            sim.meta_reply(self.id, wait, None, errors.NotLeader(
                f"node {self.id} is not the leader", leader_hint=leader))
            return
        try:
            fields = requests.OPS[op].parse(fields)  # checked as the node server checks them
            if op in RANGE_OPS:
                cmd = range_command(op, fields)
                now_ns = int(sim.now * 1e6)
                cmd["s"] = sequencer.assign(cmd["s"], self.last_seq, now_ns, from_client=False,
                                            ahead_ms_max=sequencer.SEQ_AHEAD_MS_MAX,
                                            node_id=self.id)
                self.last_seq = cmd["s"]
                epoch, index = self.loop.propose(encode_command(cmd))
                self.calls[index] = (epoch, op, wait)
            elif op in META_READ_OPS:
                token = sim.next_token()
                self.meta_reads[token] = (wait, op, fields)
                self.loop.read(token)
            elif op == "split_key":
                if self.stats is None:
                    raise errors.Unavailable("no range statistics yet")
                at = drive(self.stats.split_key(fields["table_id"], fields["start"] or b"",
                                                fields["by"], fields["fraction"]))
                sim.meta_reply(self.id, wait, {"at": at}, None)
            else:
                raise AssertionError(f"the meta asked {op!r} of a node")
        except errors.RangeKVError as exc:
            sim.meta_reply(self.id, wait, None, exc)

    def _answer_meta(self, wait: Wait, op: str, result: dict[str, Any]) -> None:
        err = result.get("error")
        if err is not None:
            self.sim.meta_reply(self.id, wait, None, errors.from_dict(err))
        else:
            self.sim.meta_reply(self.id, wait, range_reply(op, result), None)

    # ------------------------------------------------------------------ snapshots: leader side
    def send_snapshot(self, need: SnapshotNeed, delay_s: float) -> None:
        """The loop's ``SnapshotSource``: start a transfer after the peer's backoff."""
        assert need.peer not in self.sending, need  # (the loop sends one per peer at a time)
        tid = self.sim.next_transfer()
        self.sending[need.peer] = {"tid": tid, "seq": 0, "need": need}
        self.sim.at(delay_s * 1000, "snap_start", (self.id, self.incarnation, need.peer, tid))

    def _transfer(self, inc: int, peer: int, tid: int) -> dict[str, Any] | None:
        if not self.up or self.incarnation != inc:
            return None
        t = self.sending.get(peer)
        return t if t is not None and t["tid"] == tid else None

    def snapshot_start(self, inc: int, peer: int, tid: int) -> None:
        t = self._transfer(inc, peer, tid)
        if t is None:
            return
        core, engine = self.core, self.engine
        assert core is not None and engine is not None
        if core.role != LEADER:
            self._snapshot_done(peer, False, 0, "no longer the leader", tried=False)
            return
        directory, index = snapshot.create(engine.checkpoint, self.dir, tid)
        manifest = snapshot.describe(directory, index, core.epoch_at(index))
        chunk_bytes = self.sim.rng.choice(self.sim.cfg.snapshot_chunk_bytes)
        t.update(epoch=core.promised, manifest=manifest,
                 chunks=list(snapshot.chunks(directory, manifest, chunk_bytes)), next_chunk=0)
        snapshot.remove_outgoing(directory)
        self.sim.log(f"n{self.id} offers n{peer} a snapshot at {index} "
                     f"({len(t['chunks'])} chunks)")
        self._snapshot_request(peer, t, "snapshot_begin", {"manifest": manifest.to_wire()})

    def _snapshot_request(self, peer: int, t: dict[str, Any], op: str,
                          fields: dict[str, Any]) -> None:
        t["seq"] += 1
        fields = {"frm": self.id, "epoch": t["epoch"], "index": t["manifest"].index, **fields}
        self.sim.snapshot_net(self.id, peer, "req", t["tid"], t["seq"], op, fields)
        self.sim.at(self.sim.cfg.snapshot_timeout_ms, "snap_timeout",
                    (self.id, self.incarnation, peer, t["tid"], t["seq"]))

    def snapshot_answer(self, peer: int, tid: int, seq: int, op: str,
                        fields: dict[str, Any]) -> None:
        """An answer from ``peer`` to a snapshot request of ours."""
        t = self.sending.get(peer)
        if t is None or t["tid"] != tid or t["seq"] != seq:
            return  # an answer to a request this leader already gave up on
        if "error" in fields:
            self._snapshot_done(peer, False, 0, fields["error"])
        elif op == "snapshot_begin":
            answer, index = fields["answer"], fields["index"]
            if answer == SNAPSHOT_ACCEPT:
                self._snapshot_next_chunk(peer, t)
            else:
                self._snapshot_done(peer, answer in (SNAPSHOT_STALE, SNAPSHOT_HAVE), index,
                                    answer)
        elif op == "snapshot_chunk":
            self._snapshot_next_chunk(peer, t)
        elif op == "snapshot_end":
            self._snapshot_done(peer, True, fields["index"], "installed")

    def _snapshot_next_chunk(self, peer: int, t: dict[str, Any]) -> None:
        assert self.core is not None
        if self.core.role != LEADER or self.core.promised != t["epoch"]:
            self._snapshot_done(peer, False, 0, "lost leadership")
            return
        if t["next_chunk"] == len(t["chunks"]):
            self._snapshot_request(peer, t, "snapshot_end", {})
            return
        chunk: Chunk = t["chunks"][t["next_chunk"]]
        t["next_chunk"] += 1
        self._snapshot_request(peer, t, "snapshot_chunk", {
            "file": chunk.file, "offset": chunk.offset, "data": chunk.data, "crc": chunk.crc})

    def snapshot_timeout(self, inc: int, peer: int, tid: int, seq: int) -> None:
        t = self._transfer(inc, peer, tid)
        if t is not None and t["seq"] == seq:
            if "manifest" in t:  # tell the follower (best effort) so that it unfreezes now
                self.sim.snapshot_net(self.id, peer, "req", tid, seq + 1, "snapshot_abort", {
                    "frm": self.id, "epoch": t["epoch"], "index": t["manifest"].index})
            self._snapshot_done(peer, False, 0, "timed out")

    def _snapshot_done(self, peer: int, ok: bool, index: int, why: str,
                       tried: bool = True) -> None:
        assert self.loop is not None
        self.sending.pop(peer, None)
        if not ok:
            self.sim.stats["snapshots_failed"] += 1
        self.sim.log(f"n{self.id} snapshot to n{peer}: {'ok' if ok else 'failed'} "
                     f"({why}, {index})")
        self.loop.snapshot_sent(peer, ok, index, tried=tried)

    # ------------------------------------------------------------------ snapshots: follower side
    def snapshot_serve(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A snapshot request from a leader (what ``Replica.on_snapshot_request`` does)."""
        loop = self.loop
        assert loop is not None
        frm, epoch, index = fields["frm"], fields["epoch"], fields["index"]
        if op == "snapshot_begin":
            manifest = Manifest.from_wire(fields["manifest"])
            if self.incoming is not None:
                self.abort_snapshot("a new offer")
            answer, at = loop.offer_snapshot(frm, epoch, manifest.index, manifest.epoch)
            if answer == SNAPSHOT_STALE:
                self.sim.stats["snapshot_answers_stale"] += 1
            if answer == SNAPSHOT_ACCEPT:
                self.incoming = {"frm": frm, "epoch": epoch, "manifest": manifest,
                                 "receiver": Receiver(self.dir, manifest)}
            return {"answer": answer, "index": at}
        inc = self.incoming
        if inc is None or (inc["frm"], inc["epoch"], inc["manifest"].index) != (frm, epoch,
                                                                                index):
            return {"error": "no such snapshot being received"}
        if op == "snapshot_abort":
            self.abort_snapshot("the leader gave up")
            return {}
        loop.snapshot_progress()
        try:
            if op == "snapshot_chunk":
                inc["receiver"].write(Chunk(fields["file"], fields["offset"], fields["data"],
                                            fields["crc"]))
                return {}
            inc["receiver"].finish()
            held = checkpoint_applied_index(inc["receiver"].staging)
            if held != inc["manifest"].index:
                raise SnapshotInvalid(f"holds {held}")
        except SnapshotInvalid as err:
            self.abort_snapshot(str(err))
            return {"error": str(err)}
        self._install(inc["manifest"])
        return {"index": index} if self.up else {"error": "crashed"}

    def _install(self, manifest: Manifest) -> None:
        sim = self.sim
        assert self.loop is not None and self.engine is not None and self.wal is not None
        index, epoch = manifest.index, manifest.epoch
        if index <= self.engine.applied_index:
            sim.fail(f"n{self.id} installs a snapshot at {index}, at or below its applied "
                     f"index {self.engine.applied_index}: applied state would go backward")
        crash_at = None
        if sim.faults_on and sim.rng.random() < sim.cfg.install_crash:
            crash_at = sim.rng.choice(["marker", "swapped", "log reset", "done"])

        def step(name: str) -> None:
            # Each step is durable when this is called (see storage/snapshot.py).
            if name == "swapped":  # the index directory is the snapshot's from here on
                self.backend = MemoryBackend.load(self.dir / snapshot.INDEX_NAME)
            if name in ("log reset", "done"):
                self.record_durable()
            if name == crash_at:
                raise _InstallCrash(name)

        self.incoming = None
        try:
            snapshot.install(self.dir, index, epoch, self.wal, step)
        except _InstallCrash as crash:
            sim.stats["install_crashes"] += 1
            sim.log(f"n{self.id} crashes while installing the snapshot at {index} "
                    f"(after {crash})")
            self.crash()
            sim.at(sim.rng.uniform(50, 1_000), "restart", self.id)
            return
        self.engine = StateMachine(self.backend)
        sim.check_state(self, "installed a snapshot")
        sim.stats["snapshots_installed"] += 1
        sim.log(f"n{self.id} installed the snapshot at {index}")
        self.loop.snapshot_installed(index, epoch)

    def abort_snapshot(self, why: str) -> None:
        """The loop's ``SnapshotSink`` (and the leader's abort, a bad chunk, a newer offer):
        drop the staged files, then unfreeze the core."""
        inc, self.incoming = self.incoming, None
        if self.loop is None or (inc is None and self.loop.core.installing is None):
            return
        if inc is not None:
            inc["receiver"].abort()
        self.sim.log(f"n{self.id} aborts the snapshot it was receiving: {why}")
        self.loop.snapshot_aborted()
