"""Typed metadata operations on etcd: every change is one compare-and-swap transaction.

``Store`` is the interface: what the meta (its handlers, its control loop, its election) asks
of the metadata, and what a simulator performing the controller's decisions needs. ``MetaStore``
implements it over any ``kv.KVClient``: a real etcd (``etcd.EtcdClient``) or etcd in memory
(``memory.MemoryEtcd``; ``memory.MemoryStore`` is the pair), so the two share every line below
and differ only in the key-value engine, whose semantics ``kv.py`` states and the tests hold
both to.

Invariants
----------
* **Every write is a CAS on what was read**: the caller passes the ``mod_revision`` it based its
  decision on (0 = "the key must not exist"); a write whose premise changed does nothing and
  returns ``None``, and the caller re-reads and decides again.
* **Fencing**: once the active meta sets ``fence_revision`` (the create revision of its
  ``/rangekv/meta/active`` key), every write here also requires that key to still be the one it
  created. A meta that lost its lease can therefore never write, however late its request
  arrives; such a write raises ``NotActive`` (with the new holder as ``active_hint``) instead of
  returning ``None``, so it is never mistaken for an ordinary conflict.
* **Ids only grow**: table and group ids come from counters bumped in the same transaction as
  the record that uses the id, so an id is never issued twice nor lost to a half-done write.
* **A table and its ranges appear and disappear together** (one transaction each way).
* **A reconfiguration step is one transaction**: the group record, the records of the nodes
  it moves (the spare that joins, the member that leaves) and the decision that explains it
  are written together or not at all, each CAS'd on what the decision was based on.
* **Decisions are kept bounded**: the transaction that records one also deletes the oldest
  beyond ``model.DECISIONS_KEPT`` (the caller names them from its view).
* **A node record is deleted only as read** (``remove_node``, CAS on its revision): every step
  that makes a node take part in a group (formation, a learner added, a swap) writes the
  node's record in the same transaction, so a deletion decided on a view where the node was in
  no group cannot land after one that put it in a group.

The JSON shapes and key layout are those of :mod:`rangekv.model`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from rangekv import errors, model
from rangekv.metadata.kv import KV, Compare, Event, KVClient, Op, TxnResult
from rangekv.model import ClusterView, Decision, Group, Node, Range, Table

TABLE_ID_COUNTER = model.COUNTERS + b"table_id"
GROUP_ID_COUNTER = model.COUNTERS + b"group_id"


DECISIONS_TRIMMED_MAX = 50  # oldest decisions deleted per txn (etcd caps ops per txn)


def decision_entry(view: model.ClusterView, wall_ns: int, kind: str, group: int | None,
                   reason: str, details: dict[str, Any]) -> tuple[Decision, list[int]]:
    """A new decision record, keyed after every one ``view`` holds (its wall time, or one ns
    past the newest), and the keys of the oldest to delete in the same transaction so that at
    most about ``model.DECISIONS_KEPT`` are kept."""
    log_keys = sorted(view.decision_log)
    at_ns = max(wall_ns, (log_keys[-1] + 1) if log_keys else 0)
    excess = len(log_keys) + 1 - model.DECISIONS_KEPT
    return (Decision(at_ns, kind, group, reason, details),
            log_keys[:max(0, min(excess, DECISIONS_TRIMMED_MAX))])


def apply_events(view: ClusterView, revs: dict[bytes, int], events: Sequence[Event]) -> None:
    """Bring ``view`` (and ``revs``, each key's mod revision) forward by watch events newer
    than it, in revision order (the meta's view follower; a simulator over
    ``memory.MemoryKV.events_since``)."""
    for event in events:
        rev = event.kv.mod_revision
        assert rev > view.revision, ("watch events out of order", rev, view.revision)
        if event.type == "put":
            view.apply(event.kv.key, event.kv.value)
            revs[event.kv.key] = rev
        else:
            view.apply(event.kv.key, None)
            revs.pop(event.kv.key, None)
    if events:
        view.revision = max(view.revision, events[-1].kv.mod_revision)


def table_ranges_prefix(table_id: int) -> bytes:
    return model.RANGES + f"{table_id:08x}/".encode()


def _group_json(group: Group) -> bytes:
    return model.dumps(group.to_json())


class Store(Protocol):
    """The metadata store the meta and a simulator work against (see the module docstring):
    reads, and writes that are each one compare-and-swap, fenced once ``fence_revision`` is
    set. A write answers the revision it made, or None when its premise changed (decide
    again); a fenced write after the fence moved raises ``NotActive``."""

    fence_revision: int | None
    txn_conflicts: int  # fenced transactions whose compare failed (for /metrics)
    txn_errors: int  # ... and that failed

    # the election (not fenced: it creates the fence)
    async def try_become_active(self, meta_id: int, address: str, lease_id: int
                                ) -> tuple[bool, int, dict[str, Any] | None]: ...

    async def answer_backup_pause(self, token: Any, lease: int) -> None: ...

    # reads
    async def load(self) -> tuple[ClusterView, dict[bytes, int]]: ...

    async def get_table(self, name: str) -> tuple[Table, int] | None: ...

    async def table_ranges(self, table_id: int) -> list[Range]: ...

    async def table_ranges_revs(self, table_id: int) -> list[tuple[Range, int]]: ...

    async def range_record(self, table_id: int, start: bytes) -> tuple[Range, int] | None: ...

    # nodes and groups (the controller's decisions land through these)
    async def put_node(self, node: Node, mod_revision: int) -> int | None: ...

    async def remove_node(self, node_id: int, mod_revision: int, decision: Decision,
                          trim: list[int]) -> int | None: ...

    async def create_group(self, members: list[tuple[Node, int]]
                           ) -> tuple[Group, int] | None: ...

    async def set_group_leader(self, group: Group, mod_revision: int, epoch: int,
                               leader: int) -> int | None: ...

    async def reconfigure(self, group: tuple[Group, int] | None,
                          nodes: list[tuple[Node, int]], decision: Decision | None,
                          trim: list[int]) -> int | None: ...

    # tables and ranges
    async def create_table(self, name: str, group_id: int,
                           created_ns: int) -> tuple[Table, int] | None: ...

    async def set_table_state(self, table: Table, mod_revision: int,
                              state: str) -> tuple[Table, int] | None: ...

    async def delete_table(self, table: Table, mod_revision: int) -> int | None: ...

    async def split_range(self, rng: Range, mod_revision: int, at: bytes) -> int | None: ...

    async def merge_ranges(self, lower: Range, lower_rev: int, upper: Range,
                           upper_rev: int) -> int | None: ...

    async def put_range(self, new: Range, mod_revision: int) -> int | None: ...


class MetaStore:
    """The metadata manager's reads and CAS writes (see the module docstring): ``Store``
    over a ``KVClient``."""

    def __init__(self, etcd: KVClient) -> None:
        self.etcd = etcd
        self.fence_revision: int | None = None
        # fenced transactions whose compare failed, and that failed (for /metrics)
        self.txn_conflicts = 0
        self.txn_errors = 0

    # -- the active/standby election (not fenced: it creates the fence) ----------------------

    async def try_become_active(
        self, meta_id: int, address: str, lease_id: int
    ) -> tuple[bool, int, dict[str, Any] | None]:
        """Create the leased active-meta key if it does not exist.

        Returns ``(won, revision, holder)``: on a win ``revision`` is the key's create revision
        (the fence); otherwise ``holder`` is the current record (None if it just vanished).
        """
        record = model.dumps({"id": meta_id, "address": address})
        res = await self.etcd.txn(
            [Compare.version(model.META_ACTIVE, "=", 0)],
            [Op.put(model.META_ACTIVE, record, lease=lease_id)],
            [Op.get(model.META_ACTIVE)],
        )
        if res.succeeded:
            return True, res.revision, None
        kvs: list[KV] = res.responses[0]
        return False, res.revision, (json.loads(kvs[0].value) if kvs else None)

    async def answer_backup_pause(self, token: Any, lease: int) -> None:
        """Tell the backup holding ``lease`` that no range change is in flight (the answer
        lives under the backup's lease, so it goes with the backup; not fenced: it changes no
        record the controller decides on)."""
        await self.etcd.put(model.BACKUP_PAUSED, model.dumps({"token": token}), lease=lease)

    # -- loading -----------------------------------------------------------------------------

    async def load(self) -> tuple[model.ClusterView, dict[bytes, int]]:
        """One consistent read of everything: the view and each key's mod_revision."""
        kvs, revision = await self.etcd.get_prefix(model.PREFIX)
        view = model.ClusterView(revision=revision)
        revs: dict[bytes, int] = {}
        for kv in kvs:
            view.apply(kv.key, kv.value)
            revs[kv.key] = kv.mod_revision
        return view, revs

    # -- fenced writes -----------------------------------------------------------------------

    async def _txn(
        self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> TxnResult:
        compares = list(compares)
        failure = list(failure or [])
        if self.fence_revision is not None:
            compares.append(Compare.create_revision(model.META_ACTIVE, "=", self.fence_revision))
            failure.append(Op.get(model.META_ACTIVE))
        try:
            res = await self.etcd.txn(compares, success, failure)
        except Exception:
            self.txn_errors += 1
            raise
        if not res.succeeded:
            self.txn_conflicts += 1
        if not res.succeeded and self.fence_revision is not None:
            holder: list[KV] = res.responses.pop()
            if not holder or holder[0].create_revision != self.fence_revision:
                hint = json.loads(holder[0].value).get("address") if holder else None
                raise errors.NotActive(
                    "this meta is no longer the active one (its election key is gone)",
                    active_hint=hint,
                )
        return res

    async def _next_id(self, counter: bytes) -> tuple[int, Compare, Op]:
        kv = await self.etcd.get(counter)
        last = int(kv.value) if kv is not None else 0
        assert last >= 0, (counter, last)
        rev = kv.mod_revision if kv is not None else 0
        new_id = last + 1
        put = Op.put(counter, str(new_id).encode())
        return new_id, Compare.mod_revision(counter, "=", rev), put

    async def put_node(self, node: Node, mod_revision: int) -> int | None:
        """Write a node record if its key is still at ``mod_revision``; the write's revision."""
        key = model.node_key(node.id)
        res = await self._txn(
            [Compare.mod_revision(key, "=", mod_revision)], [Op.put(key, model.dumps(node))]
        )
        return res.revision if res.succeeded else None

    async def remove_node(self, node_id: int, mod_revision: int, decision: Decision,
                          trim: list[int]) -> int | None:
        """Delete node ``node_id``'s record if it is still at ``mod_revision``, with the
        decision that explains it (its key must be new), deleting the decisions keyed by
        ``trim``; the revision, or None if the record changed (the caller decides again)."""
        assert mod_revision > 0, (node_id, mod_revision)
        key = model.node_key(node_id)
        dkey = model.decision_key(decision.at_ns)
        res = await self._txn(
            [Compare.mod_revision(key, "=", mod_revision), Compare.version(dkey, "=", 0)],
            [Op.delete(key), Op.put(dkey, decision.dumps()),
             *(Op.delete(model.decision_key(at_ns)) for at_ns in trim)],
        )
        return res.revision if res.succeeded else None

    async def create_group(self, members: list[tuple[Node, int]]) -> tuple[Group, int] | None:
        """A new group (epoch 0, no leader) of spares, each CAS'd on its node record's revision.

        Returns the group and the write's revision, or None if any premise changed.
        """
        assert members and len({n.id for n, _ in members}) == len(members), members
        gid, counter_cmp, counter_put = await self._next_id(GROUP_ID_COUNTER)
        group = Group(id=gid, epoch=0, leader=None, members=tuple(sorted(n.id for n, _ in members)))
        compares = [counter_cmp, Compare.version(model.group_key(gid), "=", 0)]
        ops = [counter_put, Op.put(model.group_key(gid), _group_json(group))]
        for node, rev in members:
            assert node.state == model.NODE_SPARE and node.group is None, node
            key = model.node_key(node.id)
            compares.append(Compare.mod_revision(key, "=", rev))
            member = Node(node.id, node.address, model.NODE_MEMBER, gid, "")
            ops.append(Op.put(key, model.dumps(member)))
        res = await self._txn(compares, ops)
        return (group, res.revision) if res.succeeded else None

    async def set_group_leader(
        self, group: Group, mod_revision: int, epoch: int, leader: int
    ) -> int | None:
        """Record ``leader`` for ``epoch`` (> the group's epoch); the write's revision or None."""
        assert epoch > group.epoch, (group, epoch)  # epochs never go back
        assert leader in group.members, (group, leader)
        key = model.group_key(group.id)
        new = replace(group, epoch=epoch, leader=leader)  # learners and joint carry over
        res = await self._txn(
            [Compare.mod_revision(key, "=", mod_revision)], [Op.put(key, _group_json(new))]
        )
        return res.revision if res.succeeded else None

    # -- reconfiguration and decisions -------------------------------------------------------

    async def reconfigure(
        self,
        group: tuple[Group, int] | None,
        nodes: list[tuple[Node, int]],
        decision: Decision | None,
        trim: list[int],
    ) -> int | None:
        """Write one step of a reconfiguration in one transaction: the new group record (CAS on
        the revision its old one was read at), the node records it changes (each CAS'd the same
        way; 0 = must not exist), and the decision that explains it (its key must be new),
        deleting the decisions keyed by ``trim`` (wall ns). The revision, or None if any premise
        changed."""
        compares: list[Compare] = []
        ops: list[Op] = []
        if group is not None:
            record, rev = group
            key = model.group_key(record.id)
            compares.append(Compare.mod_revision(key, "=", rev))
            ops.append(Op.put(key, _group_json(record)))
        for node, rev in nodes:
            key = model.node_key(node.id)
            compares.append(Compare.mod_revision(key, "=", rev))
            ops.append(Op.put(key, model.dumps(node)))
        if decision is not None:
            key = model.decision_key(decision.at_ns)
            compares.append(Compare.version(key, "=", 0))
            ops.append(Op.put(key, decision.dumps()))
            ops.extend(Op.delete(model.decision_key(at_ns)) for at_ns in trim)
        assert ops, "nothing to write"
        res = await self._txn(compares, ops)
        return res.revision if res.succeeded else None

    # -- tables ------------------------------------------------------------------------------

    async def get_table(self, name: str) -> tuple[Table, int] | None:
        kv = await self.etcd.get(model.table_key(name))
        return None if kv is None else (Table.load(kv.value), kv.mod_revision)

    async def table_ranges(self, table_id: int) -> list[Range]:
        return [r for r, _ in await self.table_ranges_revs(table_id)]

    async def table_ranges_revs(self, table_id: int) -> list[tuple[Range, int]]:
        """The table's ranges in key order, each with its mod_revision (for a CAS)."""
        kvs, _ = await self.etcd.get_prefix(table_ranges_prefix(table_id))
        return sorted(((Range.load(kv.value), kv.mod_revision) for kv in kvs),
                      key=lambda rr: rr[0].start)

    async def split_range(self, rng: Range, mod_revision: int, at: bytes) -> int | None:
        """Cut ``rng`` at ``at`` into two ranges of the same group, both one version up, if its
        record is still at ``mod_revision`` and no range starts at ``at``; the revision or
        None."""
        assert rng.start < at and (rng.end is None or at < rng.end), (rng, at)
        lower = Range(rng.table_id, rng.start, at, rng.group, rng.version + 1)
        upper = Range(rng.table_id, at, rng.end, rng.group, rng.version + 1)
        lkey = model.range_key(rng.table_id, rng.start)
        ukey = model.range_key(rng.table_id, at)
        res = await self._txn(
            [Compare.mod_revision(lkey, "=", mod_revision), Compare.version(ukey, "=", 0)],
            [Op.put(lkey, lower.dumps()), Op.put(ukey, upper.dumps())],
        )
        return res.revision if res.succeeded else None

    async def merge_ranges(self, lower: Range, lower_rev: int, upper: Range,
                           upper_rev: int) -> int | None:
        """Replace two neighbouring ranges of one group by one spanning both, if neither
        record changed; the revision or None."""
        assert lower.end == upper.start and lower.group == upper.group, (lower, upper)
        joined = Range(lower.table_id, lower.start, upper.end, lower.group,
                       max(lower.version, upper.version) + 1)
        lkey = model.range_key(lower.table_id, lower.start)
        ukey = model.range_key(upper.table_id, upper.start)
        res = await self._txn(
            [Compare.mod_revision(lkey, "=", lower_rev),
             Compare.mod_revision(ukey, "=", upper_rev)],
            [Op.put(lkey, joined.dumps()), Op.delete(ukey)],
        )
        return res.revision if res.succeeded else None

    async def range_record(self, table_id: int, start: bytes) -> tuple[Range, int] | None:
        """The range of ``table_id`` starting at ``start`` and its mod_revision, or None."""
        kv = await self.etcd.get(model.range_key(table_id, start))
        return None if kv is None else (Range.load(kv.value), kv.mod_revision)

    async def put_range(self, new: Range, mod_revision: int) -> int | None:
        """Replace the record of the range starting at ``new.start`` if it is still at
        ``mod_revision`` (a phase of a move); the revision, or None."""
        key = model.range_key(new.table_id, new.start)
        res = await self._txn([Compare.mod_revision(key, "=", mod_revision)],
                              [Op.put(key, new.dumps())])
        return res.revision if res.succeeded else None

    async def create_table(
        self, name: str, group_id: int, created_ns: int
    ) -> tuple[Table, int] | None:
        """Create ``name`` in state "creating" with one range covering every key on
        ``group_id``. Returns the table and its mod_revision, or None if the name is taken (or
        the id counter moved; the caller re-reads)."""
        tid, counter_cmp, counter_put = await self._next_id(TABLE_ID_COUNTER)
        table = Table(tid, name, model.TABLE_CREATING, created_ns)
        rng = Range(tid, b"", None, group_id, 1)
        tkey = model.table_key(name)
        rkey = model.range_key(tid, b"")
        res = await self._txn(
            [counter_cmp, Compare.version(tkey, "=", 0), Compare.version(rkey, "=", 0)],
            [counter_put, Op.put(tkey, model.dumps(table)), Op.put(rkey, rng.dumps())],
        )
        return (table, res.revision) if res.succeeded else None

    async def set_table_state(
        self, table: Table, mod_revision: int, state: str
    ) -> tuple[Table, int] | None:
        """Move a table to ``state``; the new record and its revision, or None on conflict."""
        new = Table(table.id, table.name, state, table.created_ns)
        key = model.table_key(table.name)
        res = await self._txn(
            [Compare.mod_revision(key, "=", mod_revision)], [Op.put(key, model.dumps(new))]
        )
        return (new, res.revision) if res.succeeded else None

    async def delete_table(self, table: Table, mod_revision: int) -> int | None:
        """Delete the table record and all its ranges at once; the revision, or None."""
        key = model.table_key(table.name)
        res = await self._txn(
            [Compare.mod_revision(key, "=", mod_revision)],
            [Op.delete(key), Op.delete(table_ranges_prefix(table.id), prefix=True)],
        )
        return res.revision if res.succeeded else None
