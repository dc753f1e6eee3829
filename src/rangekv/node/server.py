"""``rangekv node``: a storage node — a member of one replication group, or a spare.

Theory of operation: the node opens its WAL (refusing a log corrupted in the middle) and its
RocksDB index, then heartbeats the metadata manager every ``HEARTBEAT_MS``. Meta's answer says
which group the node belongs to (members and their addresses) and whether it was chosen to lead
a new epoch; the node configures its replica accordingly. It serves the internal protocol
(``docs/internals.md``): data operations from request managers (only as the serving leader),
range operations from meta, and replication messages from its peers.

Failover timing (``bench/failover.py`` measures it): meta declares a leader lost when it has not
heartbeated for meta's ``--heartbeat-timeout-ms`` (600 ms: six beats), records a new epoch and
names the candidate in its next heartbeat reply. So that the candidate hears of it at once, a
member whose group has no serving leader in sight (a follower that has heard nothing from a
leader for ``LEADER_QUIET_MS``, a candidate, a leader whose no-op has not committed) heartbeats
every ``HEARTBEAT_FAST_MS`` instead. Links to the other members are kept open, so the campaign's
first messages are not lost to a connection being set up (which costs a retransmit interval).
And a data request that reaches a node while it is taking up an epoch waits (at most
``SERVE_WAIT_S``) until it serves, instead of bouncing back to the request manager, which would
retry only after its backoff.

Snapshots travel on their own connection to each peer (``snapshot_*`` requests, see
docs/internals.md), not on the peer link that carries replication messages: each chunk is a
request whose answer paces the next one and carries a refusal if the chunk is bad, and a
megabyte of snapshot never sits in front of a heartbeat. On start, an install that a crash
interrupted is finished (``storage/snapshot.py``) before the state machine is opened.

Membership: meta's answer also names the group's learners (spares catching up to replace a
member) and ``joint`` voters (the previous members while a reconfiguration is unfinished); the
node keeps links to all of them and hands the three sets to its replica. The data dir records
which group its data belongs to (``node.group``, next to ``node.id``). A node told to take part
in another group first discards its log, hard state and index (moved aside, the new group id
made durable, then deleted; every step fsynced) and starts empty, so that a spare that once was
in another group never mixes two groups' logs (their epochs and indexes are unrelated). A node
removed from its group stops serving (its replica goes idle) and keeps its data for
inspection.

Every request is validated here again (limits are enforced at the edge and at the node).

Metrics: with ``--metrics-listen HOST:PORT`` the node serves Prometheus ``/metrics`` on its own
event loop (``node/metrics.py``: WAL fsync batches, proposals, leader changes, role, indexes,
follower lag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rangekv import aio, config, errors, limits, perms, sequencer, wire
from rangekv.log import setup as setup_logging
from rangekv.metrics import MetricsServer, listen_address
from rangekv.node import requests
from rangekv.node.backup import BackupServer
from rangekv.node.commands import (
    META_READ_OPS,
    RANGE_OPS,
    batch_command,
    batch_seqs,
    check_batch_session,
    export_page,
    meta_read,
    range_command,
    range_reply,
    session_fields,
    version_reply,
    write_reply,
)
from rangekv.node.metrics import NodeMetrics
from rangekv.node.ownership import (
    check_base,
    check_complete,
    check_current,
    check_owned,
    check_writable,
)
from rangekv.node.stats import RangeStats
from rangekv.replication import bugs, driver
from rangekv.replication.core import CANDIDATE, FOLLOWER, LEADER, Core
from rangekv.replication.driver import (
    COMPACT_ENTRIES_DEFAULT,
    COMPACT_RETAIN_DEFAULT,
    EXIT_DISK_FAILURE,
    Replica,
)
from rangekv.replication.loop import LoopFactory, ReadyLoop
from rangekv.replication.messages import APPEND, HEARTBEAT, NEW_EPOCH, Msg
from rangekv.storage import hardstate, snapshot
from rangekv.storage.engine import StateMachine, open_rocks
from rangekv.storage.wal import WAL, StorageCorrupt, fsync_dir

log = logging.getLogger("rangekv.node")

HEARTBEAT_MS = 100  # meta's heartbeat timeout (600 ms) is six of these
HEARTBEAT_FAST_MS = 20  # while the group has no serving leader in sight
LEADER_QUIET_MS = 250  # a follower hearing nothing from a leader this long: heartbeat fast
META_TIMEOUT_S = 1.0
SERVE_WAIT_S = 1.0  # a data op at a node taking up its epoch waits this long for it to serve
SERVE_POLL_S = 0.005
COMPACT_CHECK_S = 1.0  # how often a node looks for deleted data to reclaim
RANGE_STATS_INTERVAL_S = 1.0  # how often a leader's heartbeat carries its range figures
SNAPSHOT_OPS = frozenset({"snapshot_begin", "snapshot_chunk", "snapshot_end", "snapshot_abort"})
DATA_OPS = frozenset({"put", "delete", "get", "list", "export", "add_range", "split_range",
                      "drop_table", "fence_range", "unfence_range", "import", "finish_import",
                      "drop_range", "split_key", "merge_range", "batch_write", "batch_get",
                      "export_sessions", "import_sessions"})
# A replication message of an epoch further above every epoch this node has promised or heard
# of from meta is dropped: epochs grow by one per election or reconfiguration, and a forged one
# near the top of the range, once promised, would leave no higher epoch for the group's next
# election.
EPOCH_AHEAD_MAX = 1000
DROP_LOG_INTERVAL_S = 10.0
PEER_QUEUE_MAX = 64  # replication messages held for a peer while connecting to it
PEER_RETRY_S = 0.1  # after a failed connection to a peer, messages to it are dropped this long
GROUP_FILE = "node.group"  # which group the data in this dir belongs to (hardstate format)
DISCARD_PREFIX = "discard-"  # data of another group being deleted (left by a crash: deleted)
DATA_NAMES = ("wal", "index", "hardstate")  # what belongs to a group (not node.id)


class PeerLink:
    """An outgoing connection to one peer, kept open (``keep_open`` on every heartbeat).

    Messages sent while it is (re)connecting wait for the connection, at most
    ``PEER_QUEUE_MAX`` of them, and go out in order once it is up; while the peer cannot be
    reached they are dropped (the replication core retransmits). A message lost to a cold link
    would otherwise cost a retransmit interval: in a failover the new leader's NEW_EPOCH often
    goes to a member it never sent to before, or one that restarted since."""

    def __init__(self, address: str, source: str | None = None) -> None:
        self.address = address
        self.conn = wire.Connection(address, connect_timeout_s=1.0, source=source)
        self._connecting: asyncio.Task[None] | None = None
        self._queue: list[dict[str, Any]] = []
        self._retry_at = 0.0  # loop time before which no new connection is attempted

    def send(self, body: dict[str, Any]) -> None:
        if not self._queue and self.conn.send(body):
            return
        if asyncio.get_running_loop().time() < self._retry_at:
            return  # unreachable just now: dropped
        if len(self._queue) < PEER_QUEUE_MAX:
            self._queue.append(body)
        self.keep_open()

    def keep_open(self) -> None:
        """Connect in the background unless connected, connecting, or waiting to retry."""
        if self.conn.connected or (self._connecting is not None and not self._connecting.done()):
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._retry_at:
            self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self.conn.connect()
        except errors.Unavailable:
            self._queue.clear()
            self._retry_at = asyncio.get_running_loop().time() + PEER_RETRY_S
            return
        queue, self._queue = self._queue, []
        for body in queue:
            if not self.conn.send(body):
                break

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        await self.conn.close()


class Node:
    def __init__(self, node_id: int, listen: str, data_dir: Path, meta: list[str],
                 advertise: str | None = None, *,
                 compact_entries: int = COMPACT_ENTRIES_DEFAULT,
                 compact_retain: int = COMPACT_RETAIN_DEFAULT,
                 metrics_listen: tuple[str, int] | None = None,
                 max_clock_offset_ms: int = sequencer.SEQ_AHEAD_MS_MAX,
                 core_factory: bugs.CoreFactory = Core,
                 loop_factory: LoopFactory = ReadyLoop) -> None:
        self.node_id = node_id
        self.core_factory = core_factory  # Core, or a planted bug's (--planted-bug)
        self.loop_factory = loop_factory  # ReadyLoop, or a planted bug's (--planted-bug)
        self.max_clock_offset_ms = max_clock_offset_ms
        # the clock this node's leader checks proposed seqs against (its replica's, and a
        # batch's items here)
        self.clock_ns = time.time_ns
        self.compact_entries = compact_entries
        self.compact_retain = compact_retain
        self.listen = listen
        self.address = advertise or listen
        # the IP this node connects from (to peers and meta): the one it is known by, so
        # that they can tell its messages from another process's (wire.address_matches)
        self._source_ip = self.address.rpartition(":")[0].strip("[]") or None
        self.data_dir = data_dir
        self.meta = meta
        self.replica: Replica | None = None
        self.broken: str | None = None
        self.group: int | None = None
        self.members: dict[int, str] = {}
        self.addresses: dict[int, str] = {}  # members, learners and joint voters
        self.data_group: int | None = None  # the group this dir's data belongs to (node.group)
        self._resetting = False  # discarding another group's data: no replica meanwhile
        self._refused_group: int | None = None
        self._peers: dict[int, PeerLink] = {}
        self._snapshot_conns: dict[int, wire.Connection] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._meta_conns: dict[str, wire.Connection] = {}
        self._meta_index = 0
        self._leader_heard_s = 0.0  # loop time of the last message from a leader or candidate
        self.stats: RangeStats | None = None
        self.group_epoch = 0  # the group's epoch as meta last told it
        self.guard = wire.ServerGuard(f"node {node_id}")
        self.dropped: dict[str, int] = {}  # replication messages dropped, by why
        self._drop_logged_s = -DROP_LOG_INTERVAL_S
        self._compacting: asyncio.Future[int] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._stats_sent_s = 0.0
        self._backups = BackupServer()  # checkpoints being read by ``rangekv backup``
        self.metrics = NodeMetrics(node_id, lambda: (self.replica, self.group, self.broken))
        self.metrics.messages_dropped = self.messages_refused
        self.metrics.connections_refused = self.guard.refused
        self.metrics_listen = metrics_listen
        self._metrics_server: MetricsServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def _check_identity(self) -> None:
        ident = self.data_dir / "node.id"
        state = hardstate.load(ident)
        if not state:
            hardstate.save(ident, {"node_id": self.node_id})
        elif state.get("node_id") != self.node_id:
            raise SystemExit(
                f"data dir {self.data_dir} belongs to node {state.get('node_id')}, "
                f"not {self.node_id}"
            )
        group = hardstate.load(self.data_dir / GROUP_FILE).get("group")
        self.data_group = group if isinstance(group, int) else None
        for leftover in self.data_dir.glob(DISCARD_PREFIX + "*"):
            # a crash while discarding another group's data: finish the job
            shutil.rmtree(leftover)
            fsync_dir(str(self.data_dir))

    async def start(self) -> None:
        perms.private_dir(self.data_dir, logger=log)  # 0700: its WAL and index are data
        with self._verifying_storage():
            self._check_identity()
        if self.broken is None:
            await self._open_replica()
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._on_connection, host or "127.0.0.1",
                                                  int(port))
        if self.metrics_listen is not None:
            self._metrics_server = MetricsServer(self.metrics.registry)
            await self._metrics_server.start(*self.metrics_listen)
            log.info("node %d serves /metrics on %s:%d", self.node_id, *self.metrics_listen)
        self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeat_loop()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._compactor()))
        log.info("node %d listening on %s, meta %s", self.node_id, self.listen,
                 ",".join(self.meta))

    async def _open_replica(self) -> None:
        """Open the log, hard state and index, and start the replica (``self.replica``); on a
        log or hard state that fails verification, stay up without one (``self.broken``)."""
        with self._verifying_storage():
            wal = await asyncio.to_thread(WAL.open, self.data_dir / "wal")
            # What a crash left in the page cache is ours: the first sync fsyncs it (wal.py).
            await asyncio.to_thread(wal.sync)
            installed = await asyncio.to_thread(snapshot.recover, self.data_dir, wal)
            if installed is not None:
                log.warning("finished installing the snapshot at index %d that the last run "
                            "had committed", installed[0])
            engine = await asyncio.to_thread(open_rocks, str(self.data_dir / "index"))
            if engine.applied_index > wal.last_index:
                raise StorageCorrupt(
                    f"index applied up to {engine.applied_index} but the log ends at "
                    f"{wal.last_index}"
                )
            if engine.applied_index < wal.first_index - 1:
                raise StorageCorrupt(
                    f"index applied up to {engine.applied_index} but the log starts after "
                    f"{wal.first_index - 1}: the entries in between are gone"
                )
            wal.on_sync = self.metrics.on_sync
            self.replica = Replica(self.node_id, wal, engine, self.data_dir / "hardstate",
                                   self._send_raft, snapshot_rpc=self._snapshot_rpc,
                                   compact_entries=self.compact_entries,
                                   compact_retain=self.compact_retain, observer=self.metrics,
                                   seq_ahead_ms_max=self.max_clock_offset_ms,
                                   clock_ns=self.clock_ns,
                                   core_factory=self.core_factory,
                                   loop_factory=self.loop_factory)
            self.metrics.opened(self.replica.core.promised)
            await self.replica.start()
            self._follow_engine(engine)
            self.replica.on_engine_replaced = self._follow_engine
            log.info("node %d opened its log (entries %d..%d, applied %d: %d to replay)",
                     self.node_id, wal.first_index, wal.last_index, engine.applied_index,
                     wal.last_index - engine.applied_index)
            if wal.unsynced_entries_cut:
                log.warning("cut %d entries from the end of the log: they were written after "
                            "the last successful sync of a run that stopped on a disk failure, "
                            "and the group will send them again", wal.unsynced_entries_cut)

    @contextlib.contextmanager
    def _verifying_storage(self) -> Iterator[None]:
        """Opening the node's data: a file that fails verification leaves the node up but not
        serving (``self.broken``); a disk failure stops it (exit 74)."""
        try:
            yield
        except StorageCorrupt as err:
            # Never serve a corrupt log (or hard state), nor take part in replication: stay up
            # and report ourselves (status op, heartbeat) so that meta flags us and never
            # chooses us.
            self.broken = str(err)
            log.error("refusing to serve data or replication, local data failed verification: "
                      "%s", err)
        except OSError as err:
            # The disk failed while the node's data was being opened and made durable: the same
            # rule as a failed fsync while serving (see replication/driver.py): stop, retry
            # nothing.
            log.critical("disk failure while opening the node's data, stopping the node: %s",
                         err)
            raise SystemExit(EXIT_DISK_FAILURE) from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._compacting is not None:
            await asyncio.gather(self._compacting, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        self._backups.release_all()
        if self._metrics_server is not None:
            await self._metrics_server.close()
        if self.replica is not None:
            await self.replica.stop()
            await asyncio.to_thread(self.replica.close_storage)
        for peer in self._peers.values():
            await peer.close()
        for conn in self._snapshot_conns.values():
            await conn.close()
        for conn in self._meta_conns.values():
            await conn.close()

    # ------------------------------------------------------------------ meta
    def _status(self, with_ranges: bool = False) -> dict[str, Any]:
        status: dict[str, Any] = {"group": self.group, "broken": self.broken}
        if self.replica is not None:
            status.update(self.replica.status())
            if with_ranges and self.stats is not None:
                status["ranges"] = self.stats.report()
        else:
            status.update(role="idle", epoch=0, leader_epoch=0, last_epoch=0, last_index=0,
                          commit_index=0, applied_index=0)
        return status

    def _leaderless(self) -> bool:
        """True while this node's group has no serving leader in sight (heartbeat fast)."""
        replica = self.replica
        if replica is None or self.group is None:
            return False
        core = replica.core
        if core.role == CANDIDATE or (core.role == LEADER and not core.serving):
            return True
        if core.role == FOLLOWER:
            quiet_s = asyncio.get_running_loop().time() - self._leader_heard_s
            return quiet_s > LEADER_QUIET_MS / 1000
        return False

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            address = self.meta[self._meta_index % len(self.meta)]
            conn = self._meta_conns.get(address)
            if conn is None:
                conn = self._meta_conns[address] = wire.Connection(address, 1.0,
                                                                   source=self._source_ip)
            # the leader's range figures go along about once a second (for splits)
            with_ranges = (self.replica is not None and self.replica.core.role == LEADER
                           and started - self._stats_sent_s >= RANGE_STATS_INTERVAL_S)
            if with_ranges:
                self._stats_sent_s = started
            try:
                reply = await conn.request(
                    "heartbeat", timeout_s=META_TIMEOUT_S, node_id=self.node_id,
                    address=self.address, status=self._status(with_ranges),
                )
                self._on_assignment(reply.get("group"), reply.get("campaign"))
            except errors.NotActive as err:
                hint = err.details.get("active_hint")
                if isinstance(hint, str) and hint and hint != address:
                    if hint not in self.meta:
                        self.meta.append(hint)
                    self._meta_index = self.meta.index(hint)
                else:  # a standby that knows no better: try the next meta
                    self._meta_index += 1
            except errors.RangeKVError as err:
                log.debug("heartbeat to meta %s failed: %s", address, err)
                self._meta_index += 1
            # A fixed rate (the time the request took counts), faster while leaderless.
            interval_ms = HEARTBEAT_FAST_MS if self._leaderless() else HEARTBEAT_MS
            await asyncio.sleep(max(0.0, started + interval_ms / 1000 - loop.time()))

    def _on_assignment(self, group: dict[str, Any] | None, campaign: int | None) -> None:
        if self.replica is None or self._resetting:
            return
        if group is None:
            if self.group is not None:
                log.info("no longer in group %s (the replica stops; its data stays here)",
                         self.group)
            self.group = None
            self.members = {}
            self.replica.configure([])
            return
        try:
            gid, members, learners, joint = _assignment(group)
        except errors.ProtocolError as err:
            log.warning("ignoring meta's malformed answer to a heartbeat: %s", err)
            return
        if not self._data_belongs_to(gid):
            return
        if gid != self.group or members != self.members:
            log.info("in group %s: members %s, learners %s, joint %s", gid, members,
                     sorted(learners), sorted(joint))
        self.group = gid
        self.members = members
        epoch = group.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            self.group_epoch = epoch
        self.addresses = {**joint, **learners, **members}
        for peer_id in list(self._peers):
            if self._peers[peer_id].address != self.addresses.get(peer_id):
                link = self._peers.pop(peer_id)
                asyncio.get_running_loop().create_task(link.close())
        for peer_id, address in self.addresses.items():
            if peer_id != self.node_id and address.rpartition(":")[2].isdigit():
                link = self._peers.get(peer_id)
                if link is None:
                    link = self._peers[peer_id] = PeerLink(address, self._source_ip)
                link.keep_open()  # warm before a failover needs it
        self.replica.configure(sorted(members), sorted(learners), sorted(joint))
        if isinstance(campaign, int) and not isinstance(campaign, bool) and campaign > 0:
            self.replica.campaign(campaign)

    def _data_belongs_to(self, gid: int) -> bool:
        """Whether this node's data may serve group ``gid``; if it belongs to another group,
        start discarding it (and answer False until the node is back, empty).

        Data with no group recorded is adopted by the first group the node is told about: it
        is a fresh spare's empty log, or a data dir older than ``node.group`` (whose node never
        changed group)."""
        if self.data_group == gid:
            return True
        if self.data_group is None:
            hardstate.save(self.data_dir / GROUP_FILE, {"group": gid})
            self.data_group = gid
            return True
        if self._refused_group != gid:
            self._refused_group = gid
            log.warning("told to join group %d, but the data here belongs to group %d: "
                        "discarding it (log, hard state, index) to start empty", gid,
                        self.data_group)
        # From here on no message or request reaches the old replica.
        self._resetting = True
        replica, self.replica = self.replica, None
        self.group, self.members, self.addresses = None, {}, {}
        task = asyncio.get_running_loop().create_task(self._discard_data(replica, gid))
        self._tasks.append(task)
        return False

    async def _discard_data(self, replica: Replica | None, gid: int) -> None:
        """Stop the replica, discard another group's data, and reopen empty for ``gid``."""
        try:
            if replica is not None:
                if self._compacting is not None:  # never close the engine under a compaction
                    await asyncio.gather(self._compacting, return_exceptions=True)
                await replica.stop()
                await asyncio.to_thread(replica.close_storage)
            try:
                await asyncio.to_thread(self._discard_files, gid)
            except OSError as err:
                log.critical("disk failure while discarding another group's data, stopping the "
                             "node: %s", err)
                driver._exit_process(EXIT_DISK_FAILURE)
            log.info("data of group %s discarded; starting empty for group %d",
                     self.data_group, gid)
            self.data_group = gid
            await self._open_replica()
        finally:
            self._resetting = False

    def _discard_files(self, gid: int) -> None:
        """Move the group's files aside, make the new group id durable, then delete them: a
        crash at any point leaves either the old group's data under the old id, or nothing
        (a ``discard-*`` leftover is deleted on the next start)."""
        trash = self.data_dir / f"{DISCARD_PREFIX}{time.time_ns()}"
        trash.mkdir()
        # the group's log, hard state and index, and any snapshot being made or installed
        # (an install marker left here would redo the old group's snapshot on the next start)
        names = [*DATA_NAMES, snapshot.INDEX_OLD_NAME, snapshot.INCOMING_NAME,
                 snapshot.MARKER_NAME,
                 *(p.name for p in self.data_dir.glob(snapshot.OUTGOING_PREFIX + "*"))]
        for name in names:
            path = self.data_dir / name
            if path.exists():
                os.rename(path, trash / name)
        fsync_dir(str(self.data_dir))
        hardstate.save(self.data_dir / GROUP_FILE, {"group": gid})
        shutil.rmtree(trash)
        fsync_dir(str(self.data_dir))

    # ------------------------------------------------------------------ network
    async def _snapshot_rpc(self, peer: int, op: str, fields: dict[str, Any],
                            timeout_s: float) -> dict[str, Any]:
        """A snapshot request to a peer, on a connection of its own (see the module docs).

        Any peer the leader replicates to: a learner (a spare replacing a member) above all,
        which past a compaction can catch up no other way."""
        address = self.addresses.get(peer)
        if address is None:
            raise errors.Unavailable(f"node {peer} is neither a member nor a learner of this "
                                     "group")
        conn = self._snapshot_conns.get(peer)
        if conn is None or conn.address != address:
            if conn is not None:
                await conn.close()
            conn = self._snapshot_conns[peer] = wire.Connection(address, connect_timeout_s=1.0,
                                                                source=self._source_ip)
        return await conn.request(op, timeout_s=timeout_s, **fields)

    def _send_raft(self, msg: Msg) -> None:
        link = self._peers.get(msg.to)
        if link is None:
            address = self.addresses.get(msg.to)
            if address is None:
                return
            link = self._peers[msg.to] = PeerLink(address, self._source_ip)
        link.send({"t": "raft", "m": msg.to_wire()})

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await wire.serve_connection(reader, writer, self._on_request, self._on_message,
                                    self.guard)

    def _on_message(self, body: dict[str, Any], conn: wire.ServerConnection) -> None:
        """A replication message from a peer, checked before the core sees it: well formed,
        addressed to this node, from a peer of its group, from the one node this connection
        first spoke for, and of an epoch at most ``EPOCH_AHEAD_MAX`` above any this node knows
        of. Anything else is dropped and counted; the core then refuses what no honest peer
        sends (``Core.implausible``)."""
        if body.get("t") != "raft":
            return self._drop("not_raft", f"a one-way message of type {str(body.get('t'))[:40]!r}")
        if self.replica is None:
            return None
        try:
            msg = Msg.from_wire(body.get("m"))
        except ValueError as err:
            return self._drop("malformed", str(err))
        if msg.to != self.node_id:
            return self._drop("wrong_node", f"{msg.type} addressed to node {msg.to}")
        if msg.frm == self.node_id or msg.frm not in self.addresses:
            return self._drop("not_a_peer", f"{msg.type} from node {msg.frm}, not a peer of "
                                            f"this node's group {self.group}")
        if not wire.address_matches(conn.peer, self.addresses[msg.frm]):
            return self._drop("address_mismatch", f"{msg.type} from node {msg.frm} (at "
                                                  f"{self.addresses[msg.frm]}) came from "
                                                  f"{conn.peer}")
        if conn.identity is None:
            conn.identity = msg.frm
        elif conn.identity != msg.frm:
            return self._drop("other_id", f"{msg.type} from node {msg.frm} on the connection "
                                          f"of node {conn.identity}")
        known = max(self.replica.core.promised, self.group_epoch)
        if msg.epoch > known + EPOCH_AHEAD_MAX:
            return self._drop("epoch_ahead", f"{msg.type} of epoch {msg.epoch} from node "
                                             f"{msg.frm}, more than {EPOCH_AHEAD_MAX} above "
                                             f"{known}")
        if msg.type in (APPEND, HEARTBEAT, NEW_EPOCH):
            self._leader_heard_s = asyncio.get_running_loop().time()
        self.replica.step(msg)
        return None

    def messages_refused(self) -> dict[str, int]:
        """Replication messages refused, by why: at the boundary (``_on_message``) and by the
        core as implausible (``Core.implausible``)."""
        out = dict(self.dropped)
        if self.replica is not None:
            for why, n in self.replica.core.refused.items():
                out[why] = out.get(why, 0) + n
        return out

    def _drop(self, why: str, detail: str) -> None:
        """Drop a replication message that failed a check; log at most one line per
        ``DROP_LOG_INTERVAL_S``."""
        self.dropped[why] = self.dropped.get(why, 0) + 1
        now = asyncio.get_running_loop().time()
        if now - self._drop_logged_s >= DROP_LOG_INTERVAL_S:
            self._drop_logged_s = now
            log.warning("dropped a replication message: %s (dropped so far: %s)", detail,
                        self.dropped)

    async def _until_serving(self, replica: Replica) -> None:
        """Hold a data request while the group has no serving leader in sight (see
        ``_leaderless``) until this node serves or hears from a leader, at most
        ``SERVE_WAIT_S``.

        A request manager sends to the node that meta recorded as the new leader as soon as
        etcd shows it, a little before that node has heard of its campaign or committed its
        no-op; answered ``not_leader`` at once, the request manager would retry only after its
        backoff (or follow a hint to the dead leader). Whatever happens here, the caller then
        proposes or reads as usual, which refuses with ``not_leader`` unless this node serves:
        a held request never takes effect anywhere else."""
        core = replica.core
        if core.role == LEADER and core.serving:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SERVE_WAIT_S
        while self._leaderless() and loop.time() < deadline:
            await asyncio.sleep(SERVE_POLL_S)

    def _follow_engine(self, engine: StateMachine) -> None:
        """Keep range figures of ``engine`` (at start, and after a snapshot replaced it)."""
        if self._stats_task is not None:
            self._stats_task.cancel()
        self.stats = RangeStats(engine, asyncio.get_running_loop().time)
        self.stats.attach()
        self._stats_task = asyncio.get_running_loop().create_task(self.stats.run())

    async def _compactor(self) -> None:
        """Reclaim the disk space of dropped tables and moved-away ranges, in a worker thread
        (RocksDB compaction of the deleted spans), on every member."""
        while True:
            await asyncio.sleep(COMPACT_CHECK_S)
            self._backups.expire(asyncio.get_running_loop().time())
            replica = self.replica
            if replica is None:
                continue
            began = asyncio.get_running_loop().time()
            # shielded: stop() waits for it before closing the engine under it
            self._compacting = asyncio.ensure_future(replica.compact_deleted())
            spans = await asyncio.shield(self._compacting)
            if spans:
                log.info("reclaimed the space of %d deleted span(s) in %.0f ms", spans,
                         (asyncio.get_running_loop().time() - began) * 1000)

    def _count_read(self, table_id: int, key: bytes, count: int, nbytes: int) -> None:
        if self.stats is not None:
            self.stats.read(table_id, key, count, nbytes)

    # ------------------------------------------------------------------ requests
    async def _on_request(self, body: dict[str, Any],
                          conn: wire.ServerConnection | None = None) -> dict[str, Any]:
        op = body.get("op")
        spec = requests.OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            raise errors.InvalidArgument(f"unknown op {str(op)[:100]!r}", field="op")
        try:
            req = spec.parse(body)  # every field checked before any is used
        except errors.InvalidArgument:
            self.metrics.requests_refused[op] += 1
            raise
        if op == "status":
            # ranges: the operator's status also wants each range's size and load
            return {"node_id": self.node_id, "address": self.address,
                    **self._status(bool(req["ranges"])),
                    # what this node's boundary refused (also in /metrics)
                    "refused": {"requests": dict(self.metrics.requests_refused),
                                "messages": self.messages_refused(),
                                "connections": dict(self.guard.refused)}}
        replica = self.replica
        if replica is None:
            why = self.broken or "it is discarding another group's data"
            raise errors.Unavailable(f"node {self.node_id} does not serve: {why}")
        if op in SNAPSHOT_OPS:
            if req["frm"] not in self.addresses or req["frm"] == self.node_id:
                raise errors.InvalidArgument(
                    f"node {req['frm']} is not a peer of node {self.node_id}'s group",
                    field="frm")
            if conn is not None and not wire.address_matches(conn.peer,
                                                             self.addresses[req["frm"]]):
                raise errors.InvalidArgument(
                    f"node {req['frm']} is at {self.addresses[req['frm']]}, not {conn.peer}",
                    field="frm")
            return await replica.on_snapshot_request(op, body)  # (checked again there)
        if op in ("backup_begin", "backup_chunk", "backup_end"):
            return await self._backups.serve(replica, op, req, self.group)
        if op == "content_hash":
            # For verification (``rangekv chaos``): replicas that applied the same entries agree.
            # Computed synchronously, so the hash and the applied index belong together.
            return {"node_id": self.node_id, "applied": replica.engine.applied_index,
                    "hash": replica.engine.content_hash()}
        if op == "flush":
            # for operators and tests: write the index's memtable to disk now
            return {"applied": await replica.flush_engine()}
        if op in DATA_OPS:
            await self._until_serving(replica)
        try:
            return await self._serve(replica, op, req, "base" in body)
        except errors.RangeNotHere as err:
            # say which routing version the caller used, for its logs and ours
            if req.get("rv") is not None:
                err.details["your_version"] = req["rv"]
            raise

    async def _serve(self, replica: Replica, op: str, req: dict[str, Any],
                     has_base: bool) -> dict[str, Any]:
        """A data or range op, its fields already checked (``requests.OPS``). ``has_base``:
        the request carried ``base`` (nil included: the source has no record of the key)."""
        base = {"b": req["base"]} if has_base else {}
        if op == "put":
            table_id, key = req["table_id"], req["key"]
            session = session_fields(req["client"], req["cseq"], req["floor"], req["retry"])
            check_writable(replica, table_id, key)  # the log decides; this saves an entry
            if req["if_seq"] is not None:
                check_base(replica, table_id, key, has_base)
            result = await replica.propose({
                "op": "put", "t": table_id, "k": key, "v": req["value"], "s": req["seq"],
                "c": req["if_seq"], **base, **session,
            })
            return write_reply("put", result)
        if op == "delete":
            table_id, key = req["table_id"], req["key"]
            session = session_fields(req["client"], req["cseq"], req["floor"], req["retry"])
            check_writable(replica, table_id, key)
            check_base(replica, table_id, key, has_base)
            result = await replica.propose({
                "op": "del", "t": table_id, "k": key, "s": req["seq"], "c": req["if_seq"],
                **base, **session,
            })
            return write_reply("delete", result)
        if op == "batch_write":
            return await self._batch_write(replica, req)
        if op == "batch_get":
            return await self._batch_get(replica, req)
        if op == "get":
            table_id, key = req["table_id"], req["key"]
            await replica.linearizable()
            check_owned(replica, table_id, key)
            check_current(replica, table_id, key, bool(req["as_source"]))
            if not req["versions"]:
                check_complete(replica, table_id, key)
            if req["versions"]:
                # a read during a move: the record even if it is a tombstone (its seq counts)
                version = replica.engine.get_version(table_id, key)
                # every rm get is a versioned one: counted, or the load splits see no reads
                self._count_read(table_id, key, 1, len(version[2]) if version else 0)
                if version is None:
                    return {"found": False, "value": b"", "seq": sequencer.ZERO}
                return {"found": True, "seq": version[0], "tombstone": version[1],
                        "value": version[2]}
            found = replica.engine.get(table_id, key)
            self._count_read(table_id, key, 1, len(found[0]) if found else 0)
            if found is None:
                return {"found": False, "value": b"", "seq": sequencer.ZERO}
            return {"found": True, "value": found[0], "seq": found[1]}
        if op == "list":
            table_id, start, end, after, limit = await _span_read(replica, req)
            check_current(replica, table_id, start, bool(req["as_source"]))
            if req["versions"]:
                versions, more = replica.engine.scan_versions(table_id, start, end, after, limit,
                                                              limits.LIST_BYTES_MAX)
                return {"items": versions, "more": more}  # (tuples travel as msgpack arrays)
            check_complete(replica, table_id, start)
            items, more = replica.engine.scan(table_id, start, end, after, limit,
                                              limits.LIST_BYTES_MAX)
            page = (wire.packed_page(items, more) if req["packed"]
                    else {"items": items, "more": more})
            # one request, as load-based splitting counts (CockroachDB counts requests too): a
            # scan of a whole table read a thousand keys a page and made every range look hot,
            # so the balancer split and moved ranges under each full scan
            self._count_read(table_id, items[0][0] if items else start, 1,
                             page.get("nbytes") or sum(len(k) + len(v) for k, v, _ in items))
            return page
        if op == "split_key":
            # where to split a range: by its stored bytes or by its recent load
            if self.stats is None:
                raise errors.Unavailable("no range statistics yet")
            at = await self.stats.split_key(req["table_id"], req["start"] or b"", req["by"],
                                            req["fraction"])
            return {"at": at}
        if op == "export":
            # a page of a moving range for the copy: every record, tombstones included
            table_id, start, end, after, limit = await _span_read(replica, req)
            return export_page(replica.engine, table_id, start, end, after, limit)
        if op in META_READ_OPS:
            await replica.linearizable()
            return meta_read(replica.engine, op, req)
        if op in RANGE_OPS:
            # one replicated command each (``commands.py``); an apply error is raised
            return range_reply(op, await replica.propose(range_command(op, req)))
        raise AssertionError(f"op {op!r} is declared but not served")

    async def _batch_write(self, replica: Replica, req: dict[str, Any]) -> dict[str, Any]:
        """Writes to one table, from an rm (one frame per group leader): each item checked as
        a single put or delete is, and every item that passes proposed TOGETHER, as one
        ``batch`` command (one log entry, one apply; its items get consecutive seqs). Not a
        transaction: one result per item, in item order, each its own success or error."""
        table_id, items, client = req["table_id"], req["items"], req["client"]
        check_batch_session(client, req["floor"], items)
        results: list[dict[str, Any] | None] = [None] * len(items)
        core = replica.core
        if core.role != LEADER or not core.serving:
            raise replica.not_leader()
        # From here to the proposal nothing awaits: the seqs given below are the group's next.
        take = []
        for i, (kind, key, _, if_seq, _, _) in enumerate(items):
            try:
                check_writable(replica, table_id, key)
                if kind == "delete" or if_seq is not None:
                    # an item of a range being moved here that needs the source's version of
                    # its key: the rm sends such items one by one, with that version
                    check_base(replica, table_id, key, False)
            except errors.RangeKVError as err:
                results[i] = {"error": self._item_error(err, req)}
                continue
            take.append(i)
        seqs = batch_seqs([items[i][4] for i in take], replica.last_seq, self.clock_ns(),
                          self.max_clock_offset_ms, self.node_id)
        proposed, final = [], []
        for i, seq in zip(take, seqs, strict=True):
            if isinstance(seq, errors.RangeKVError):
                results[i] = {"error": seq.to_dict()}
            else:
                proposed.append(i)
                final.append(seq)
        if proposed:
            replica.last_seq = final[-1]  # the batch's own seq comes after all of its items'
            result = await replica.propose(batch_command(
                table_id, [items[i] for i in proposed], final, client, req["floor"],
                req["retry"]))
            applied = result["results"]
            assert len(applied) == len(proposed), (len(applied), len(proposed))
            for i, one in zip(proposed, applied, strict=True):
                results[i] = (write_reply(items[i][0], one) if "error" not in one else
                              {"error": self._item_error(errors.from_dict(one["error"]), req)})
        return {"results": results}

    async def _batch_get(self, replica: Replica, req: dict[str, Any]) -> dict[str, Any]:
        """Versioned reads of many keys of one table after ONE linearizable-read barrier: each
        key's record (tombstones too, as the rm's single get asks), or its own error."""
        table_id, as_source = req["table_id"], bool(req["as_source"])
        await replica.linearizable()
        results = []
        nbytes = 0
        for key in req["keys"]:
            if nbytes >= limits.LIST_BYTES_MAX:
                # the answer must fit in a frame: the rest are read again, one by one
                err = errors.Unavailable(f"the answer already carries {nbytes} bytes of "
                                         "values: read this key alone")
                results.append({"error": err.to_dict()})
                continue
            try:
                check_owned(replica, table_id, key)
                check_current(replica, table_id, key, as_source)
            except errors.RangeKVError as err:
                results.append({"error": self._item_error(err, req)})
                continue
            version = replica.engine.get_version(table_id, key)
            self._count_read(table_id, key, 1, len(version[2]) if version else 0)
            nbytes += len(key) + (len(version[2]) if version else 0)
            results.append(version_reply(version))
        return {"results": results}

    @staticmethod
    def _item_error(err: errors.RangeKVError, req: dict[str, Any]) -> dict[str, Any]:
        """A batch item's error as sent; a routing error names the range version the rm used,
        as a single op's does."""
        if isinstance(err, errors.RangeNotHere) and req.get("rv") is not None:
            err.details["your_version"] = req["rv"]
        return err.to_dict()


GROUP_REFS_MAX = 16  # members, learners or joint voters in one group (3 or 5 in practice)


def _assignment(group: Any) -> tuple[int, dict[int, str], dict[int, str], dict[int, str]]:
    """(group id, members, learners, joint) of meta's answer to a heartbeat, checked: a
    malformed answer is a ``ProtocolError``, never a crash of the heartbeat loop."""
    def uint(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32

    if not isinstance(group, dict) or not uint(group.get("id")):
        raise errors.ProtocolError("group must be a map with an id")

    def refs(name: str) -> dict[int, str]:
        raw = group.get(name) or []
        if not isinstance(raw, list) or len(raw) > GROUP_REFS_MAX:
            raise errors.ProtocolError(f"group {name} must be a list of at most "
                                       f"{GROUP_REFS_MAX}")
        out = {}
        for ref in raw:
            if not isinstance(ref, dict) or not uint(ref.get("id")):
                raise errors.ProtocolError(f"group {name}: malformed {str(ref)[:100]}")
            address = ref.get("address")
            out[ref["id"]] = address[:256] if isinstance(address, str) else ""
        return out

    return group["id"], refs("members"), refs("learners"), refs("joint")


async def _span_read(replica: Replica, req: dict[str, Any]
                     ) -> tuple[int, bytes, bytes | None, bytes | None, int]:
    """(table, start, end, after, limit) of a list or export, once a read here is
    linearizable and one range here holds all of ``[start, end)``: a span this group does not
    wholly own would list only part of it, and a stale map must not turn into a silently short
    listing."""
    table_id, start, end = req["table_id"], req["start"] or b"", req["end"]
    limit = limits.check_list_limit(req["limit"])
    await replica.linearizable()
    if not replica.engine.covers(table_id, start, end):
        raise replica.engine.not_here(table_id)
    return table_id, start, end, req["after"], limit






def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rangekv node", description=__doc__.split("\n")[0])
    parser.add_argument("--id", type=int, required=True, help="this node's id (1..2^32-1)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for the internal protocol")
    parser.add_argument("--advertise", help="HOST:PORT peers use to reach us (default: --listen)")
    parser.add_argument("--data-dir", required=True, type=Path, help="WAL and index live here")
    parser.add_argument("--meta", required=True,
                        help="metadata manager address(es), HOST:PORT[,HOST:PORT]")
    parser.add_argument("--compact-entries", type=int, default=COMPACT_ENTRIES_DEFAULT,
                        help="compact the log every N applied entries (default "
                             f"{COMPACT_ENTRIES_DEFAULT}; also after 64 MiB of log)")
    parser.add_argument("--compact-retain", type=int, default=COMPACT_RETAIN_DEFAULT,
                        help="entries kept below the applied index when compacting (default "
                             f"{COMPACT_RETAIN_DEFAULT}); a peer further behind gets a snapshot")
    parser.add_argument("--metrics-listen", type=listen_address, metavar="HOST:PORT",
                        help="serve Prometheus /metrics on this address (default: none)")
    parser.add_argument("--max-clock-offset-ms", type=int, default=sequencer.SEQ_AHEAD_MS_MAX,
                        metavar="MS",
                        help="as a leader, refuse a write whose proposed seq is more than this "
                             "far ahead of this node's clock (default "
                             f"{sequencer.SEQ_AHEAD_MS_MAX}; like CockroachDB's --max-offset)")
    # Tests only (``rangekv chaos --planted-bug``): run a replication core or Ready loop that
    # breaks one rule on purpose (rangekv.replication.bugs, loop_bugs). Hidden, command line only.
    config.option(parser.add_argument("--planted-bug", choices=bugs.NODE_BUGS,
                                      help=argparse.SUPPRESS), configurable=False)
    args = config.parse(parser, "node", argv)
    if args.compact_entries < 1 or args.compact_retain < 0:
        parser.error("--compact-entries must be at least 1 and --compact-retain at least 0")
    if args.max_clock_offset_ms < 1:
        parser.error("--max-clock-offset-ms must be at least 1")
    setup_logging(f"node-{args.id}", args.log_level, args.log_format)
    core_factory, loop_factory = bugs.factories(args.planted_bug)
    if args.planted_bug:
        log.warning("planted bug %r: this node's replication breaks the protocol on "
                    "purpose (rangekv chaos --planted-bug)", args.planted_bug)
    node = Node(args.id, args.listen, args.data_dir,
                [m.strip() for m in args.meta.split(",") if m.strip()], args.advertise,
                compact_entries=args.compact_entries, compact_retain=args.compact_retain,
                metrics_listen=args.metrics_listen,
                max_clock_offset_ms=args.max_clock_offset_ms,
                core_factory=core_factory, loop_factory=loop_factory)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        await stop.wait()
        log.info("stopping")
        await node.stop()

    aio.run(run())
    return 0
