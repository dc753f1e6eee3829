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
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from rangekv import errors, limits, sequencer, wire
from rangekv.log import setup as setup_logging
from rangekv.replication import driver
from rangekv.replication.core import CANDIDATE, FOLLOWER, LEADER
from rangekv.replication.driver import EXIT_DISK_FAILURE, Replica
from rangekv.replication.messages import APPEND, HEARTBEAT, NEW_EPOCH, Msg
from rangekv.storage import hardstate
from rangekv.storage.engine import open_rocks
from rangekv.storage.wal import WAL, StorageCorrupt, fsync_dir

log = logging.getLogger("rangekv.node")

HEARTBEAT_MS = 100  # meta's heartbeat timeout (600 ms) is six of these
HEARTBEAT_FAST_MS = 20  # while the group has no serving leader in sight
LEADER_QUIET_MS = 250  # a follower hearing nothing from a leader this long: heartbeat fast
META_TIMEOUT_S = 1.0
SERVE_WAIT_S = 1.0  # a data op at a node taking up its epoch waits this long for it to serve
SERVE_POLL_S = 0.005
PEER_QUEUE_MAX = 64  # replication messages held for a peer while connecting to it
PEER_RETRY_S = 0.1  # after a failed connection to a peer, messages to it are dropped this long
GROUP_FILE = "node.group"  # which group the data in this dir belongs to (hardstate format)
DISCARD_PREFIX = "discard-"  # data of another group being deleted (left by a crash: deleted)
DATA_NAMES = ("wal", "index", "hardstate")  # what belongs to a group (not node.id)


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.InvalidArgument(f"{name} must be a non-negative integer")
    return value


def _bytes(body: dict[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, bytes):
        raise errors.InvalidArgument(f"{name} must be bytes")
    return value


def _seq(body: dict[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    value = _bytes(body, name, optional=optional)
    if value is not None and len(value) != sequencer.SEQ_BYTES:
        raise errors.InvalidArgument(f"{name} must be {sequencer.SEQ_BYTES} bytes")
    return value


class PeerLink:
    """An outgoing connection to one peer, kept open (``keep_open`` on every heartbeat).

    Messages sent while it is (re)connecting wait for the connection, at most
    ``PEER_QUEUE_MAX`` of them, and go out in order once it is up; while the peer cannot be
    reached they are dropped (the replication core retransmits). A message lost to a cold link
    would otherwise cost a retransmit interval: in a failover the new leader's NEW_EPOCH often
    goes to a member it never sent to before, or one that restarted since."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.conn = wire.Connection(address, connect_timeout_s=1.0)
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
                 advertise: str | None = None) -> None:
        self.node_id = node_id
        self.listen = listen
        self.address = advertise or listen
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
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._meta_conns: dict[str, wire.Connection] = {}
        self._meta_index = 0
        self._leader_heard_s = 0.0  # loop time of the last message from a leader or candidate

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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._check_identity()
        except StorageCorrupt as err:
            self.broken = str(err)
            log.error("refusing to serve data or replication, local data failed verification: "
                      "%s", err)
        except OSError as err:
            log.critical("disk failure while opening the node's data, stopping the node: %s",
                         err)
            raise SystemExit(EXIT_DISK_FAILURE) from None
        if self.broken is None:
            await self._open_replica()
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._on_connection, host or "127.0.0.1",
                                                  int(port))
        self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeat_loop()))
        log.info("node %d listening on %s, meta %s", self.node_id, self.listen,
                 ",".join(self.meta))

    async def _open_replica(self) -> None:
        """Open the log, hard state and index, and start the replica (``self.replica``); on a
        log or hard state that fails verification, stay up without one (``self.broken``)."""
        try:
            wal = await asyncio.to_thread(WAL.open, self.data_dir / "wal")
            # What a crash left in the page cache is ours: the first sync fsyncs it (wal.py).
            await asyncio.to_thread(wal.sync)
            engine = await asyncio.to_thread(open_rocks, str(self.data_dir / "index"))
            if engine.applied_index > wal.last_index:
                raise StorageCorrupt(
                    f"index applied up to {engine.applied_index} but the log ends at "
                    f"{wal.last_index}"
                )
            self.replica = Replica(self.node_id, wal, engine, self.data_dir / "hardstate",
                                   self._send_raft)
            await self.replica.start()
            log.info("node %d opened its log (last index %d, applied %d)", self.node_id,
                     wal.last_index, engine.applied_index)
            if wal.unsynced_entries_cut:
                log.warning("cut %d entries from the end of the log: they were written after "
                            "the last successful sync of a run that stopped on a disk failure, "
                            "and the group will send them again", wal.unsynced_entries_cut)
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
        if self._server is not None:
            self._server.close()
        if self.replica is not None:
            await self.replica.stop()
            await asyncio.to_thread(self.replica.engine.close)
            await asyncio.to_thread(self.replica.wal.close)
        for peer in self._peers.values():
            await peer.close()
        for conn in self._meta_conns.values():
            await conn.close()

    # ------------------------------------------------------------------ meta
    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"group": self.group, "broken": self.broken}
        if self.replica is not None:
            status.update(self.replica.status())
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
                conn = self._meta_conns[address] = wire.Connection(address, 1.0)
            try:
                reply = await conn.request(
                    "heartbeat", timeout_s=META_TIMEOUT_S, node_id=self.node_id,
                    address=self.address, status=self._status(),
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
        gid = int(group["id"])

        def refs(name: str) -> dict[int, str]:
            return {int(m["id"]): str(m["address"]) for m in group.get(name) or []}

        members, learners, joint = refs("members"), refs("learners"), refs("joint")
        if not self._data_belongs_to(gid):
            return
        if gid != self.group or members != self.members:
            log.info("in group %s: members %s, learners %s, joint %s", gid, members,
                     sorted(learners), sorted(joint))
        self.group = gid
        self.members = members
        self.addresses = {**joint, **learners, **members}
        for peer_id in list(self._peers):
            if self._peers[peer_id].address != self.addresses.get(peer_id):
                link = self._peers.pop(peer_id)
                asyncio.get_running_loop().create_task(link.close())
        for peer_id, address in self.addresses.items():
            if peer_id != self.node_id and address.rpartition(":")[2].isdigit():
                link = self._peers.get(peer_id)
                if link is None:
                    link = self._peers[peer_id] = PeerLink(address)
                link.keep_open()  # warm before a failover needs it
        self.replica.configure(sorted(members), sorted(learners), sorted(joint))
        if isinstance(campaign, int) and campaign > 0:
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
                await replica.stop()
                await asyncio.to_thread(replica.engine.close)
                await asyncio.to_thread(replica.wal.close)
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
        for name in DATA_NAMES:
            path = self.data_dir / name
            if path.exists():
                os.rename(path, trash / name)
        fsync_dir(str(self.data_dir))
        hardstate.save(self.data_dir / GROUP_FILE, {"group": gid})
        shutil.rmtree(trash)
        fsync_dir(str(self.data_dir))

    # ------------------------------------------------------------------ network
    def _send_raft(self, msg: Msg) -> None:
        link = self._peers.get(msg.to)
        if link is None:
            address = self.addresses.get(msg.to)
            if address is None:
                return
            link = self._peers[msg.to] = PeerLink(address)
        link.send({"t": "raft", "m": msg.to_wire()})

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await wire.serve_connection(reader, writer, self._on_request, self._on_message)

    def _on_message(self, body: dict[str, Any]) -> None:
        if body.get("t") != "raft" or self.replica is None:
            return
        try:
            msg = Msg.from_wire(body.get("m"))
        except ValueError as err:
            log.warning("dropping a malformed replication message: %s", err)
            return
        if msg.type in (APPEND, HEARTBEAT, NEW_EPOCH):
            self._leader_heard_s = asyncio.get_running_loop().time()
        self.replica.step(msg)

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

    # ------------------------------------------------------------------ requests
    async def _on_request(self, body: dict[str, Any]) -> dict[str, Any]:
        op = body.get("op")
        if op == "status":
            return {"node_id": self.node_id, "address": self.address, **self._status()}
        replica = self.replica
        if replica is None:
            why = self.broken or "it is discarding another group's data"
            raise errors.Unavailable(f"node {self.node_id} does not serve: {why}")
        if op == "content_hash":
            # For verification (``rangekv chaos``): replicas that applied the same entries agree.
            # Computed synchronously, so the hash and the applied index belong together.
            return {"node_id": self.node_id, "applied": replica.engine.applied_index,
                    "hash": replica.engine.content_hash()}
        if op in ("put", "delete", "get", "list", "add_range", "split_range", "drop_table"):
            await self._until_serving(replica)
        if op == "put":
            table_id = _int(body, "table_id")
            key = limits.check_key(_bytes(body, "key") or b"")
            value = limits.check_value(_bytes(body, "value") or b"")
            _check_owned(replica, table_id, key)  # the log decides; this saves an entry
            result = await replica.propose({
                "op": "put", "t": table_id, "k": key, "v": value, "s": _seq(body, "seq"),
                "c": _seq(body, "if_seq", optional=True),
            })
            return {"seq": result["seq"]}
        if op == "delete":
            table_id = _int(body, "table_id")
            key = limits.check_key(_bytes(body, "key") or b"")
            _check_owned(replica, table_id, key)
            result = await replica.propose({
                "op": "del", "t": table_id, "k": key, "s": _seq(body, "seq"),
                "c": _seq(body, "if_seq", optional=True),
            })
            return {"deleted": bool(result["deleted"]), "seq": result["seq"]}
        if op == "get":
            table_id = _int(body, "table_id")
            key = limits.check_key(_bytes(body, "key") or b"")
            await replica.linearizable()
            _check_owned(replica, table_id, key)
            found = replica.engine.get(table_id, key)
            if found is None:
                return {"found": False, "value": b"", "seq": sequencer.ZERO}
            return {"found": True, "value": found[0], "seq": found[1]}
        if op == "list":
            table_id = _int(body, "table_id")
            start = _bytes(body, "start") or b""
            end = _bytes(body, "end", optional=True)
            after = _bytes(body, "after", optional=True)
            limit = limits.check_list_limit(body.get("limit"))
            await replica.linearizable()
            if not replica.engine.covers(table_id, start, end):
                # a span this group does not wholly own would list only part of it: a stale
                # map must not turn into a silently short listing
                raise replica.engine.not_here(table_id)
            items, more = replica.engine.scan(table_id, start, end, after, limit,
                                              limits.LIST_BYTES_MAX)
            return {"items": [list(item) for item in items], "more": more}
        if op == "add_range":
            await replica.propose({
                "op": "add_range", "t": _int(body, "table_id"),
                "start": _bytes(body, "start") or b"", "end": _bytes(body, "end", optional=True),
                "s": sequencer.ZERO,
            })
            return {}
        if op == "split_range":
            at = limits.check_key(_bytes(body, "at") or b"")
            await replica.propose({"op": "split_range", "t": _int(body, "table_id"),
                                   "at": at, "s": sequencer.ZERO})  # raises the apply error
            return {}
        if op == "drop_table":
            await replica.propose({"op": "drop_table", "t": _int(body, "table_id"),
                                   "s": sequencer.ZERO})
            return {}
        raise errors.InvalidArgument(f"unknown op {op!r}")


def _check_owned(replica: Replica, table_id: int, key: bytes) -> None:
    """Raise ``table_not_found`` or ``range_not_here`` (with this group's ranges) unless a range
    of the table here holds ``key``."""
    if not replica.engine.owns(table_id, key):
        raise replica.engine.not_here(table_id)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rangekv node", description=__doc__.split("\n")[0])
    parser.add_argument("--id", type=int, required=True, help="this node's id (1..2^32-1)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for the internal protocol")
    parser.add_argument("--advertise", help="HOST:PORT peers use to reach us (default: --listen)")
    parser.add_argument("--data-dir", required=True, type=Path, help="WAL and index live here")
    parser.add_argument("--meta", required=True,
                        help="metadata manager address(es), HOST:PORT[,HOST:PORT]")
    args = parser.parse_args(argv)
    setup_logging(f"node-{args.id}")
    node = Node(args.id, args.listen, args.data_dir,
                [m.strip() for m in args.meta.split(",") if m.strip()], args.advertise)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        await stop.wait()
        log.info("stopping")
        await node.stop()

    asyncio.run(run())
    return 0
