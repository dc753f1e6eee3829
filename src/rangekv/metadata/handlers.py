"""The requests the meta serves (docs/internals.md; fields declared in ``requests.py``):
``heartbeat`` from the nodes; ``create_table``, ``drop_table``, ``split_range``, ``move_range``
and ``remove_node`` from the rms (``rangekv`` commands). Only the active meta answers; a standby
answers ``not_active{active_hint}``.

A heartbeat registers its node (``controller.nodes.node_record``) and is answered with the
group the node takes part in and, if it is the group's recorded leader and not yet serving the
recorded epoch, ``campaign``: that is how every node learns everything from the meta.

Table creation is resumable: the record is written as ``creating`` together with its range,
the group leader is told (``add_range``, idempotent), then the record becomes ``active``. A
meta crash anywhere in between leaves a ``creating`` record that the next ``create_table`` of
that name finishes. Dropping is the mirror image through ``dropping``. A split is etcd first
(CAS), then the group (idempotent); a move is recorded, then performed to the end by
``mover.py`` (``controller.move`` has its steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rangekv import errors, limits, model, wire
from rangekv.controller import move
from rangekv.controller.decisions import DECISION_MOVE, DECISION_NODE_REMOVED, DECISION_SPLIT
from rangekv.controller.health import Beat
from rangekv.controller.nodes import campaign_epoch, node_record, plan_node_removal
from rangekv.controller.placement import pick_group
from rangekv.limits import check_table_name
from rangekv.metadata import rangeops
from rangekv.metadata.requests import (
    ADDRESS_BYTES_MAX,
    NODE_ID_MAX,
    OPS,
    split_host_port,
)
from rangekv.metadata.store import decision_entry
from rangekv.model import Node, Table, key_text, span_text
from rangekv.model.status import ROLE_LEADER, NodeStatus

if TYPE_CHECKING:
    from rangekv.metadata.service import MetaService

CAS_ATTEMPTS_MAX = 8  # a compare-and-swap that lost a race on a shared counter is redone
MOVE_WAIT_S = 8.0  # move_range answers by then (an rm gives meta ops 10 s); the move goes on


class Handlers:
    """The meta's TCP server side: one ``accept`` per connection, one handler per op."""

    def __init__(self, meta: MetaService) -> None:
        self.meta = meta
        # node id -> the connection its heartbeats come on (see _bind_heartbeat)
        self.heartbeat_conns: dict[int, wire.ServerConnection] = {}
        self.conn_tasks: set[asyncio.Task[Any]] = set()
        self.name_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._registering: set[int] = set()
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "heartbeat": self._op_heartbeat,
            "create_table": self._op_create_table,
            "drop_table": self._op_drop_table,
            "split_range": self.op_split_range,
            "move_range": self._op_move_range,
            "remove_node": self._op_remove_node,
        }

    def _refuse_while_paused(self, what: str) -> None:
        """While a backup runs, no table is created or dropped and no range split, merged or
        moved: its group checkpoints and its metadata must describe the same range map."""
        if self.meta.view.backup_pause is not None:
            raise errors.Unavailable(f"a backup is running: cannot {what} until it ends; retry "
                                     "in a moment")

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.conn_tasks.add(task)
        try:
            await wire.serve_connection(reader, writer, self._on_request, self._on_message,
                                        self.meta.guard)
        finally:
            self.conn_tasks.discard(task)

    def _on_message(self, body: dict[str, Any], conn: wire.ServerConnection) -> None:
        self.meta.log.debug("ignoring a one-way message of type %r", str(body.get("t"))[:40])

    async def _on_request(self, body: dict[str, Any],
                          conn: wire.ServerConnection | None = None) -> dict[str, Any]:
        op = body.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        spec = OPS.get(op) if isinstance(op, str) else None
        if handler is None or spec is None:
            raise errors.InvalidArgument(f"unknown meta op {str(op)[:100]!r}", field="op")
        spec.parse(body)  # every field checked before a handler reads it
        try:
            if op == "heartbeat" and conn is not None:
                self.meta.require_active()
                if not wire.address_matches(conn.peer, body["address"]):
                    self.meta.metrics.heartbeats_refused += 1
                    raise errors.InvalidArgument(
                        f"a heartbeat comes from the address it registers ({body['address']}),"
                        f" not from {conn.peer}", field="address")
                self._bind_heartbeat(body["node_id"], conn)
            return await handler(body)
        except errors.RangeKVError:
            raise
        except AssertionError as exc:
            self.meta.log.critical("invariant broken while serving %s", op, exc_info=exc)
            self.meta.fatal(f"invariant broken while serving {op}: {exc!r}")
            raise errors.Internal(f"invariant broken while serving {op}") from None
        except Exception as exc:
            self.meta.log.exception("bug while serving %s", op)
            raise errors.Internal(f"{op} failed: {type(exc).__name__}: {exc}") from None

    # -- heartbeat ------------------------------------------------------------------------------

    def _bind_heartbeat(self, node_id: int, conn: wire.ServerConnection) -> None:
        """A heartbeat speaks only for the node that first heartbeat on its connection, and
        not for a node heartbeating live on another open connection: a forged heartbeat can
        neither flag a healthy member nor move its address (the real node heartbeats every
        100 ms). A node that restarts or reconnects gets its id back once its old connection
        is closed or has been silent for the heartbeat timeout."""
        if conn.identity is not None:
            if conn.identity != node_id:
                self.meta.metrics.heartbeats_refused += 1
                raise errors.InvalidArgument(
                    f"this connection heartbeats for node {conn.identity}, not {node_id}",
                    field="node_id")
            return
        holder = self.heartbeat_conns.get(node_id)
        if holder is not None and holder is not conn and not holder.writer.is_closing():
            beat = self.meta.beats.get(node_id)
            timeout_s = self.meta.config.heartbeat_timeout_ms / 1000
            if beat is not None and self.meta.clock() - beat.at_s < timeout_s:
                self.meta.metrics.heartbeats_refused += 1
                raise errors.InvalidArgument(
                    f"node {node_id} heartbeats on another connection (from {holder.peer}); "
                    "this one cannot speak for it", field="node_id")
        if len(self.heartbeat_conns) >= 2 * self.meta.guard.limits.connections_max:
            self.heartbeat_conns = {n: c for n, c in self.heartbeat_conns.items()
                                    if not c.writer.is_closing()}
        conn.identity = node_id
        self.heartbeat_conns[node_id] = conn

    async def _op_heartbeat(self, req: dict[str, Any]) -> dict[str, Any]:
        self.meta.metrics.heartbeats += 1
        self.meta.require_active()
        node_id = req.get("node_id")
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
            raise errors.InvalidArgument("node_id must be a positive integer", field="node_id")
        address = req.get("address")
        if not isinstance(address, str) or len(address) > ADDRESS_BYTES_MAX:
            raise errors.InvalidArgument("address must be HOST:PORT", field="address")
        try:
            split_host_port(address)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc), field="address") from None
        status = NodeStatus.parse(req.get("status"))
        self.meta.beats[node_id] = Beat(self.meta.clock(), address, status)
        if status.ranges is not None and status.group is not None:
            group = self.meta.view.groups.get(status.group)
            if group is not None and group.leader == node_id and status.role == ROLE_LEADER:
                self.meta.range_reports[status.group] = (self.meta.clock(), list(status.ranges))
        known = self.meta.view.nodes.get(node_id)
        record, why = node_record(node_id, address, known, status, self.meta.view.group_of(node_id))
        if record != known and node_id not in self._registering:
            await self._register(record, why)
        return self._assignment(node_id, status)

    async def _register(self, node: Node, why: str) -> None:
        """Write the record a heartbeat called for (``node_record``), if nothing changed it."""
        self._registering.add(node.id)
        try:
            rev = self.meta.revs.get(model.node_key(node.id), 0)
            written = await self.meta.store.put_node(node, rev)
            if written is None:
                self.meta.log.info(
                    "%s: its record changed meanwhile; retrying on its next heartbeat", why
                )
                return
            level = logging.WARNING if node.state == model.NODE_FLAGGED else logging.INFO
            self.meta.log.log(level, "%s", why)
            await self.meta.follower.wait(written, 1.0)
        finally:
            self._registering.discard(node.id)

    def _assignment(self, node_id: int, status: NodeStatus) -> dict[str, Any]:
        """The heartbeat's answer: the group the node takes part in (as a member, a learner or
        a voter of ``joint``), with every address it needs, and whether to campaign."""
        view = self.meta.view
        group = view.group_of(node_id)
        if group is None:
            return {"group": None, "campaign": None}
        campaign = campaign_epoch(group, node_id, status)

        def refs(ids: tuple[int, ...]) -> list[dict[str, Any]]:
            return [{"id": m, "address": view.nodes[m].address if m in view.nodes else None}
                    for m in ids]

        return {
            "group": {
                "id": group.id,
                "epoch": group.epoch,
                "leader": group.leader,
                "members": refs(group.members),
                "learners": refs(group.learners),
                "joint": refs(group.joint),
            },
            "campaign": campaign,
        }

    # -- nodes ----------------------------------------------------------------------------------

    async def _op_remove_node(self, req: dict[str, Any]) -> dict[str, Any]:
        """Remove the record of a dead or flagged node that takes part in no group (``rangekv
        nodes remove``; ``plan_node_removal`` says when), with a ``node_removed`` decision, in
        one fenced CAS transaction: ``{"node": the record removed, "live", "revision"}``."""
        node_id = req.get("node_id")
        if not isinstance(node_id, int) or isinstance(node_id, bool):
            raise errors.InvalidArgument("node_id must be an integer", field="node_id")
        if not 1 <= node_id <= NODE_ID_MAX:
            raise errors.InvalidArgument(f"node_id must be in 1..{NODE_ID_MAX}",
                                         field="node_id")
        self.meta.require_active()
        hb_s = self.meta.config.heartbeat_timeout_ms / 1000
        if self.meta.clock() - self.meta.planner.judge_from_s() < hb_s:
            # heartbeats go to the active meta only: until one timeout has passed, a node
            # that has not beaten here yet may be alive
            raise errors.Unavailable("this meta became active a moment ago and cannot tell "
                                     "yet whether the node is live; retry")
        for _ in range(CAS_ATTEMPTS_MAX):
            node, live = plan_node_removal(self.meta.view, node_id, self.meta.beats.get(node_id),
                                           self.meta.clock(), heartbeat_timeout_s=hb_s)
            rev = self.meta.revs.get(model.node_key(node_id))
            assert rev, ("a node in the view has no revision", node_id)
            what = (f"{node.state} ({node.flag}: {node.reason})" if node.flag or node.reason
                    else node.state)
            reason = (f"node {node_id} at {node.address}, {what}, removed by an operator"
                      + ("; it still heartbeats: it registers again as a spare (or flagged, "
                         "if its log is still broken)" if live else ""))
            decision, trim = decision_entry(self.meta.view, self.meta.wall_ns(),
                                            DECISION_NODE_REMOVED, None, reason, {
                "node": node_id, "address": node.address, "state": node.state,
                "flag": node.flag or None, "live": live})
            written = await self.meta.store.remove_node(node_id, rev, decision, trim)
            if written is None:  # the record (or the decision log) moved on: decide again
                await self.meta.follower.wait(self.meta.view.revision + 1, 1.0)
                continue
            self.meta.metrics.decisions[DECISION_NODE_REMOVED] += 1
            self.meta.beats.pop(node_id, None)
            self.meta.log.warning("decision %s: %s", DECISION_NODE_REMOVED, reason)
            await self.meta.follower.catch_up(written, self.meta.config.view_catch_up_ms / 1000)
            return {"node": {"id": node.id, "address": node.address, "state": node.state,
                             "group": node.group, "reason": node.reason, "flag": node.flag},
                    "live": live, "revision": written}
        raise errors.Unavailable(f"node {node_id}'s record kept changing; retry")

    # -- tables ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _name_lock(self, name: str) -> AsyncIterator[None]:
        """Serialize create/drop of one table name inside this process."""
        lock, users = self.name_locks.get(name, (asyncio.Lock(), 0))
        self.name_locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.name_locks[name]
            if users <= 1:
                del self.name_locks[name]
            else:
                self.name_locks[name] = (lock, users - 1)

    async def _op_create_table(self, req: dict[str, Any]) -> dict[str, Any]:
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        self.meta.require_active()
        self._refuse_while_paused("create a table")
        async with self._name_lock(name):
            for _ in range(CAS_ATTEMPTS_MAX):
                found = await self.meta.store.get_table(name)
                if found is not None:
                    break
                group = pick_group(self.meta.view, group_size=self.meta.config.group_size)
                created = await self.meta.store.create_table(name, group.id, self.meta.wall_ns())
                if created is not None:  # else another table took the next id: go again
                    table, mod_revision = created
                    self.meta.log.info(
                        "create_table %s: recorded id %d as creating on group %d "
                        "(fewest ranges among groups with a leader)",
                        name,
                        table.id,
                        group.id,
                    )
                    break
            else:
                raise errors.Unavailable(
                    f"the table id counter kept changing ({CAS_ATTEMPTS_MAX} attempts); retry",
                    table=name,
                )
            if found is not None:
                table, mod_revision = found
                if table.state == model.TABLE_ACTIVE:
                    raise errors.TableExists(f"table {name!r} already exists", table=name)
                if table.state == model.TABLE_DROPPING:
                    raise errors.TableExists(
                        f"table {name!r} is being dropped; retry drop_table to finish it",
                        table=name,
                        state=table.state,
                    )
                if table.state != model.TABLE_CREATING:
                    raise errors.Internal(f"table {name!r} has unknown state {table.state!r}")
                self.meta.log.info(
                    "create_table %s: resuming the unfinished creation of id %d", name, table.id
                )
            ranges = await self.meta.store.table_ranges(table.id)
            assert ranges, ("a table without ranges", table)
            for rng in ranges:
                await self.meta.leaders.tell(
                    rng.group, "add_range", table_id=table.id, start=rng.start, end=rng.end
                )
            done = await self.meta.store.set_table_state(table, mod_revision, model.TABLE_ACTIVE)
            if done is None:
                raise errors.Unavailable(
                    f"table {name!r} changed while being created; retry", table=name
                )
            table, revision = done
            self.meta.log.info(
                "create_table %s: id %d is active at revision %d", name, table.id, revision
            )
            return {
                "table": {"id": table.id, "name": table.name, "state": table.state},
                "revision": revision,
            }

    async def _op_drop_table(self, req: dict[str, Any]) -> dict[str, Any]:
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        self.meta.require_active()
        self._refuse_while_paused("drop a table")
        async with self._name_lock(name):
            found = await self.meta.store.get_table(name)
            if found is None:
                raise errors.TableNotFound(f"table {name!r} does not exist", table=name)
            table, mod_revision = found
            if table.state != model.TABLE_DROPPING:
                marked = await self.meta.store.set_table_state(table, mod_revision,
                                                               model.TABLE_DROPPING)
                if marked is None:
                    raise errors.Unavailable(
                        f"table {name!r} changed while being dropped; retry", table=name
                    )
                table, mod_revision = marked
                self.meta.log.info("drop_table %s: id %d marked dropping", name, table.id)
            else:
                self.meta.log.info(
                    "drop_table %s: resuming the unfinished drop of id %d", name, table.id
                )
            ranges = await self.meta.store.table_ranges(table.id)
            # a range being moved has data on its source (and target) too
            groups = {g for r in ranges for g in (r.group, r.source, r.target) if g is not None}
            for gid in sorted(groups):
                await self.meta.leaders.tell(gid, "drop_table", table_id=table.id)
            revision = await self.meta.store.delete_table(table, mod_revision)
            if revision is None:
                raise errors.Unavailable(
                    f"table {name!r} changed while being dropped; retry", table=name
                )
            self.meta.log.info(
                "drop_table %s: id %d and its %d range(s) deleted at revision %d",
                name,
                table.id,
                len(ranges),
                revision,
            )
            return {"revision": revision}

    async def op_split_range(self, req: dict[str, Any]) -> dict[str, Any]:
        """Cut the range of table ``name`` holding key ``at`` in two, on the same group
        (``rangekv split``): etcd first (CAS), then the group's leader (idempotent), so a retry
        after a failure anywhere finishes the job. With ``to`` (a group id, or "auto": the
        group with the fewest ranges), the upper part then moves there (``move_range``)."""
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        at = req.get("at")
        if not isinstance(at, bytes) or not at:
            raise errors.InvalidArgument("at must be a non-empty key", field="at")
        limits.check_key(at)
        self.meta.require_active()
        self._refuse_while_paused("split a range")
        to = req.get("to")
        if to is not None and to != "auto" and (not isinstance(to, int) or isinstance(to, bool)):
            raise errors.InvalidArgument("to must be a group id or 'auto'", field="to")
        if isinstance(to, int):
            self._check_group(to)
        async with self._name_lock(name):
            table = await self._active_table(name)
            try:
                rng, revision = await rangeops.cut_range(self.meta.store, self.meta.leaders.tell,
                                                         table.id, at)
            except errors.Unavailable as exc:
                raise errors.Unavailable(f"table {name!r}: {exc.message}", table=name) from None
            if revision is None:
                self.meta.log.info("split_range %s at %r: a range already starts there",
                                   name, at)
            else:
                self.meta.metrics.splits += 1
                # no merge back at once
                self.meta.planner.note_split(table.id, self.meta.clock() * 1000)
                self.meta.log.info(
                    "split_range %s at %r: range [%r, %r) of group %d cut in two, both on "
                    "group %d at revision %d", name, at, rng.start, rng.end, rng.group,
                    rng.group, revision)
        if to is None:
            return await self._ranges_reply(table.id)
        if to == "auto":
            try:
                to = pick_group(self.meta.view, group_size=self.meta.config.group_size,
                                exclude=rng.group).id
            except errors.Unavailable:
                await self.meta.control.record_decision(
                    DECISION_SPLIT, f"table {name} split at {key_text(at)}; the upper part stays "
                    f"on group {rng.group}: no other group has a leader", table=name,
                    group=rng.group)
                return await self._ranges_reply(table.id)
            why = (f"split at {key_text(at)} by an operator; the upper part goes to group {to}, "
                   "the group with a leader serving the fewest ranges")
        else:
            why = (req.get("why")
                   or f"split at {key_text(at)} by an operator, upper part to group {to}")
        return await self._op_move_range({"name": name, "at": at, "to": to, "why": why})

    def _check_group(self, group_id: int) -> None:
        if group_id not in self.meta.view.groups:
            raise errors.GroupNotFound(
                f"there is no group {group_id} (groups: {sorted(self.meta.view.groups)})",
                group=group_id)

    async def _active_table(self, name: str) -> Table:
        found = await self.meta.store.get_table(name)
        if found is None or found[0].state != model.TABLE_ACTIVE:
            raise errors.TableNotFound(f"table {name!r} does not exist", table=name)
        return found[0]

    async def _op_move_range(self, req: dict[str, Any]) -> dict[str, Any]:
        """Move the range of table ``name`` holding key ``at`` to group ``to`` (``rangekv
        move``; see :mod:`rangekv.controller.move`). Answers once the move is done, or after
        ``MOVE_WAIT_S`` with ``done`` false while it goes on in the background."""
        name = check_table_name(req.get("name"))  # type: ignore[arg-type]
        at = req.get("at")
        if not isinstance(at, bytes):
            raise errors.InvalidArgument("at must be a key (bytes)", field="at")
        if at:
            limits.check_key(at)
        to = req.get("to")
        if not isinstance(to, int) or isinstance(to, bool):
            raise errors.InvalidArgument("to must be a group id", field="to")
        self.meta.require_active()
        self._refuse_while_paused("move a range")
        self._check_group(to)
        async with self._name_lock(name):
            table = await self._active_table(name)
            try:
                rng, started = await rangeops.begin_move(self.meta.store, table.id, at, to)
            except errors.Unavailable as exc:
                raise errors.Unavailable(f"table {name!r}: {exc.message}", table=name) from None
            if rng.group == to and not move.moving(rng):
                return await self._ranges_reply(table.id, done=True)
            if started:
                assert rng.source is None and rng.target == to, rng
                await self.meta.control.record_decision(
                    DECISION_MOVE, f"table {name} range {span_text(rng.start, rng.end)} moves "
                    f"from group {rng.group} to group {to}: "
                    f"{req.get('why') or 'asked by an operator'}",
                    table=name, group=rng.group, target=to)
        task = self.meta.mover.ensure(rng, "asked")
        done = False
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), MOVE_WAIT_S)
                done = True
            except TimeoutError:
                pass
            except errors.RangeKVError as exc:
                raise errors.Unavailable(f"the move stopped: {exc.message}; it is resumed "
                                         "automatically", table=name) from None
        return await self._ranges_reply(table.id, done=done)

    async def _ranges_reply(self, table_id: int, **extra: Any) -> dict[str, Any]:
        """A table's ranges and the revision an rm waits for before it routes by them."""
        after = await self.meta.store.table_ranges_revs(table_id)
        return {"ranges": [r.to_json() for r, _ in after],
                "revision": max(rev for _, rev in after), **extra}
