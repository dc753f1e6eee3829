"""The metadata model: what etcd holds, how it is keyed, and an in-memory view of all of it.

This part sits below every other that reads the cluster's description: the meta process and its
stores (``rangekv.metadata``), the pure planners (``rangekv.controller``), the rm's routing, the
backups and the simulator. It imports nothing of them (pyproject.toml [tool.rangekv.layers]).

etcd layout (every value is JSON; every change is a compare-and-swap on what was read):

    /rangekv/tables/{name}                         Table
    /rangekv/counters/table_id                     last table id issued (decimal)
    /rangekv/counters/group_id                     last group id issued (decimal)
    /rangekv/ranges/{table_id:08x}/{start hex}     Range (start "" = the table's first range)
    /rangekv/groups/{group_id:08x}                 Group
    /rangekv/nodes/{node_id:08x}                   Node
    /rangekv/decisions/{wall time ns:020d}         Decision (the controller's, with its reason)
    /rangekv/meta/active                           {"id", "address"} of the active meta (leased)
    /rangekv/backup/pause                          {"token", ...}: a backup asks the controller to
                                                   start no range change (leased by the backup)
    /rangekv/backup/paused                         {"token"}: the meta's answer, none in flight
                                                   (under the same lease)

A ``ClusterView`` is built from one prefix read of ``/rangekv/`` and kept current by applying
watch events in revision order; the rm routes from it and the meta decides from it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from rangekv.model.rangemap import RangeMap, TableRanges

PREFIX = b"/rangekv/"
TABLES = PREFIX + b"tables/"
RANGES = PREFIX + b"ranges/"
GROUPS = PREFIX + b"groups/"
NODES = PREFIX + b"nodes/"
COUNTERS = PREFIX + b"counters/"
DECISIONS = PREFIX + b"decisions/"
META_ACTIVE = PREFIX + b"meta/active"
BACKUP_PAUSE = PREFIX + b"backup/pause"
BACKUP_PAUSED = PREFIX + b"backup/paused"

TABLE_ACTIVE = "active"
TABLE_CREATING = "creating"
TABLE_DROPPING = "dropping"

NODE_SPARE = "spare"
NODE_MEMBER = "member"
NODE_FLAGGED = "flagged"
NODE_JOINING = "joining"  # a learner of ``group``: receives its log, counted in no quorum

# Why a node is flagged (``Node.flag``). Only a broken log is lifted by the node itself (it
# reports a sound log again once repaired); the others stay until an operator acts, because
# the node was taken out of its group for them and must not drift back into the pool.
FLAG_BROKEN_LOG = "broken_log"
FLAG_REPLACED = "replaced"  # swapped out of its group for a spare
FLAG_LEARNER_FAILED = "learner_failed"  # died or did not catch up as a learner

DECISIONS_KEPT = 200  # the meta trims older decisions in the txn that writes a new one
DECISIONS_SHOWN = 50  # the most recent ones in ``ClusterView.to_json``


def table_key(name: str) -> bytes:
    return TABLES + name.encode()


def range_key(table_id: int, start: bytes) -> bytes:
    return RANGES + f"{table_id:08x}/".encode() + start.hex().encode()


def group_key(group_id: int) -> bytes:
    return GROUPS + f"{group_id:08x}".encode()


def node_key(node_id: int) -> bytes:
    return NODES + f"{node_id:08x}".encode()


def decision_key(at_ns: int) -> bytes:
    return DECISIONS + f"{at_ns:020d}".encode()


def dumps(obj: Any) -> bytes:
    return json.dumps(asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj,
                      sort_keys=True, separators=(",", ":")).encode()


_DECODER = json.JSONDecoder()


def _loads_compact(raw: bytes) -> Any:
    """``json.loads(raw)``, about twice as fast for the compact UTF-8 JSON we write (an rm loads
    a million range records at start): it skips ``loads``'s encoding detection and whitespace
    scans. Anything else (a BOM, whitespace, trailing data, bad JSON) goes to ``json.loads``,
    so the result and the errors are exactly its own."""
    try:
        text = raw.decode()
        obj, end = _DECODER.raw_decode(text)
        if end == len(text):
            return obj
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        pass
    return json.loads(raw)


def key_text(key: bytes | None, none: str = "end") -> str:
    """A key for people to read (logs, decisions): UTF-8 text, quoted, or hex if binary."""
    if key is None:
        return none
    try:
        return repr(key.decode("utf-8"))
    except UnicodeDecodeError:
        return "0x" + key.hex()


def span_text(start: bytes, end: bytes | None) -> str:
    """``[start, end)`` for people: ``['a', 'm')``, ``['m', end)``."""
    return f"[{key_text(start)}, {key_text(end)})"


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    state: str = TABLE_ACTIVE
    created_ns: int = 0

    @staticmethod
    def load(raw: bytes) -> Table:
        d = json.loads(raw)
        return Table(int(d["id"]), str(d["name"]), str(d["state"]), int(d.get("created_ns", 0)))


RANGE_ACTIVE = "active"
RANGE_MOVING = "moving"


@dataclass(frozen=True, slots=True)  # slots: a million of them in an rm (issue 6)
class Range:
    """Keys ``start <= k < end`` of one table (``end`` None = unbounded) served by ``group``.

    A move from group S to group D goes through these records (docs/internals.md, "Moving a range"):

    ========  =======  =====  ======  ======  ===============================================
    phase     state    group  source  target  rms
    ========  =======  =====  ======  ======  ===============================================
    fencing   moving   S      -       D       route to S (which soon refuses writes: retry)
    copying   moving   D      S       -       writes to D; reads ask D, then S if D lacks it
    cleanup   active   D      S       -       route to D; meta still drops S's copy
    ========  =======  =====  ======  ======  ===============================================
    """

    table_id: int
    start: bytes
    end: bytes | None
    group: int
    version: int = 1
    state: str = RANGE_ACTIVE
    source: int | None = None
    target: int | None = None

    def contains(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    @property
    def copying_from(self) -> int | None:
        """The group still holding older versions that reads must consult (copying phase)."""
        return self.source if self.state == RANGE_MOVING else None

    def describe(self) -> dict[str, Any]:
        """For the HTTP API: bounds as text (lossy for non-UTF-8 bytes) and as hex."""
        out: dict[str, Any] = {
            "start": self.start.decode("utf-8", "backslashreplace"),
            "end": None if self.end is None else self.end.decode("utf-8", "backslashreplace"),
            "start_hex": self.start.hex(),
            "end_hex": None if self.end is None else self.end.hex(),
            "group": self.group,
            "version": self.version,
            "state": self.state,
        }
        if self.state == RANGE_MOVING:
            out["moving"] = {"from": self.source if self.source is not None else self.group,
                             "to": self.target if self.target is not None else self.group,
                             "phase": "fencing" if self.target is not None else "copying"}
        elif self.source is not None:
            out["moving"] = {"from": self.source, "to": self.group, "phase": "cleanup"}
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "table_id": self.table_id,
            "start": self.start.hex(),
            "end": None if self.end is None else self.end.hex(),
            "group": self.group,
            "version": self.version,
        }
        if self.state != RANGE_ACTIVE:
            out["state"] = self.state
        if self.source is not None:
            out["source"] = self.source
        if self.target is not None:
            out["target"] = self.target
        return out

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def load(raw: bytes) -> Range:
        d = _loads_compact(raw)
        end = d.get("end")
        source, target = d.get("source"), d.get("target")
        return Range(
            int(d["table_id"]),
            bytes.fromhex(d["start"]),
            None if end is None else bytes.fromhex(end),
            int(d["group"]),
            int(d.get("version", 1)),
            sys.intern(str(d.get("state", RANGE_ACTIVE))),  # one copy per state, not per range
            None if source is None else int(source),
            None if target is None else int(target),
        )


@dataclass(frozen=True)
class Group:
    """A replication group (docs/architecture.md, "Replication groups" and "The control plane").

    ``members`` vote and count in every quorum. ``learners`` receive the log but count in no
    quorum (a spare catching up to replace ``replacing``). ``joint`` is non-empty while a
    reconfiguration is unfinished: the members before it; a campaign for an epoch of this record
    then needs promises from a majority of ``members`` *and* of ``joint`` (commits and read
    rounds count ``members`` only). Records written before these fields existed load with them
    empty.
    """

    id: int
    epoch: int = 0
    leader: int | None = None
    members: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    joint: tuple[int, ...] = ()
    replacing: int | None = None  # the member the learner is to replace

    def __post_init__(self) -> None:
        assert not set(self.learners) & set(self.members), ("a learner is not a member", self)
        assert self.replacing is None or self.replacing in self.members, self
        assert not self.learners or self.replacing is not None, ("a learner replaces", self)

    @property
    def changing(self) -> bool:
        """A reconfiguration is in flight (one per group at a time)."""
        return bool(self.learners or self.joint)

    def involves(self, node_id: int) -> bool:
        """The node takes part in the group: a member, a learner, or a voter of ``joint``."""
        return node_id in self.members or node_id in self.learners or node_id in self.joint

    # The record transitions of a replacement (docs/internals.md, "Membership"). Meta writes
    # each by CAS; the simulator applies the same ones.
    def with_learner(self, learner: int, replacing: int) -> Group:
        """(a) ``learner`` starts receiving the log, to take ``replacing``'s place."""
        assert not self.changing and replacing in self.members, (self, learner, replacing)
        assert learner not in self.members, (self, learner)
        return replace(self, learners=(learner,), replacing=replacing)

    def swapped(self, epoch: int, leader: int) -> Group:
        """(b) The caught-up learner becomes a member in place of ``replacing``, in a new epoch
        whose campaign must also win a majority of the previous members (``joint``)."""
        assert self.learners and self.replacing is not None and not self.joint, self
        assert epoch > self.epoch, (self, epoch)
        members = tuple(sorted({*self.members} - {self.replacing} | {self.learners[0]}))
        assert leader in members, (self, leader)
        return Group(self.id, epoch, leader, members, (), self.members, None)

    def joint_cleared(self) -> Group:
        """(c) The new members hold everything (the new epoch's no-op committed on a majority
        of them): campaigns need a majority of ``members`` only again."""
        assert self.joint, self
        return replace(self, joint=())

    def without_learner(self) -> Group:
        """The replacement is abandoned: the learner leaves, the members stay."""
        assert self.learners, self
        return replace(self, learners=(), replacing=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "epoch": self.epoch,
            "leader": self.leader,
            "members": list(self.members),
            "learners": list(self.learners),
            "joint": list(self.joint),
            "replacing": self.replacing,
        }

    @staticmethod
    def load(raw: bytes) -> Group:
        d = json.loads(raw)
        leader = d.get("leader")
        replacing = d.get("replacing")
        return Group(
            int(d["id"]),
            int(d.get("epoch", 0)),
            None if leader is None else int(leader),
            tuple(int(m) for m in d.get("members", [])),
            tuple(int(m) for m in d.get("learners") or []),
            tuple(int(m) for m in d.get("joint") or []),
            None if replacing is None else int(replacing),
        )


@dataclass(frozen=True)
class Node:
    id: int
    address: str
    state: str = NODE_SPARE
    group: int | None = None
    reason: str = ""  # why a node was flagged
    flag: str = ""  # FLAG_*: the kind of reason ("" in records older than it: a broken log)

    @property
    def sticky_flag(self) -> bool:
        """Flagged for a reason the node cannot lift by itself (see ``FLAG_*``)."""
        return self.state == NODE_FLAGGED and self.flag not in ("", FLAG_BROKEN_LOG)

    @staticmethod
    def load(raw: bytes) -> Node:
        d = json.loads(raw)
        group = d.get("group")
        return Node(
            int(d["id"]),
            str(d["address"]),
            str(d.get("state", NODE_SPARE)),
            None if group is None else int(group),
            str(d.get("reason", "")),
            str(d.get("flag", "")),
        )


LAG_STUCK = "lag_stuck"  # controller decisions about lag (rangekv.controller.lag)
LAG_RECOVERED = "lag_recovered"


@dataclass(frozen=True)
class Decision:
    """One controller decision, with its reason, as shown by ``rangekv status``.

    ``kind`` names the decision (``rangekv.controller.decisions`` lists them); ``details``
    holds what else it is about (members, spares, epochs), all JSON.
    """

    at_ns: int  # wall time, also the key: decisions sort by it
    kind: str
    group: int | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        at = datetime.fromtimestamp(self.at_ns / 1e9, tz=UTC)
        return {"at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "at_ns": self.at_ns, "kind": self.kind, "group": self.group,
                "reason": self.reason, **self.details}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def load(raw: bytes) -> Decision:
        d = json.loads(raw)
        group = d.pop("group", None)
        d.pop("at", None)
        return Decision(int(d.pop("at_ns")), str(d.pop("kind")),
                        None if group is None else int(group), str(d.pop("reason", "")), d)


@dataclass
class ClusterView:
    """Everything under ``/rangekv/`` as of ``revision``."""

    revision: int = 0
    tables: dict[str, Table] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    # table id -> its ranges sorted by start key (assigning a list stores a RangeMap of it)
    ranges: TableRanges = field(default_factory=TableRanges)
    active_meta: dict[str, Any] | None = None
    # the controller's decisions by key (wall time ns), oldest first; see ``decisions``
    decision_log: dict[int, Decision] = field(default_factory=dict)
    # a running backup's request to pause range changes (``rangekv.backup``), and its lease
    backup_pause: dict[str, Any] | None = None

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one put (value) or delete (None) of a key under ``/rangekv/``."""
        if key.startswith(TABLES):
            name = key[len(TABLES):].decode()
            if value is None:
                self.tables.pop(name, None)
            else:
                self.tables[name] = Table.load(value)
        elif key.startswith(RANGES):
            rest = key[len(RANGES):].decode()
            tid_hex, _, start_hex = rest.partition("/")
            table_id, start = int(tid_hex, 16), bytes.fromhex(start_hex)
            ranges = self.ranges.get(table_id)  # changed in place: a million must not be copied
            if value is not None:
                rng = Range.load(value)
                assert rng.table_id == table_id and rng.start == start, (key, rng)
                if ranges is None:
                    ranges = self.ranges[table_id] = RangeMap()
                ranges.put(rng)
            elif ranges is not None:
                ranges.remove(start)
                if not ranges:
                    del self.ranges[table_id]
        elif key.startswith(GROUPS):
            gid = int(key[len(GROUPS):], 16)
            if value is None:
                self.groups.pop(gid, None)
            else:
                self.groups[gid] = Group.load(value)
        elif key.startswith(NODES):
            nid = int(key[len(NODES):], 16)
            if value is None:
                self.nodes.pop(nid, None)
            else:
                self.nodes[nid] = Node.load(value)
        elif key.startswith(DECISIONS):
            at_ns = int(key[len(DECISIONS):])
            if value is None:
                self.decision_log.pop(at_ns, None)
            else:
                self.decision_log[at_ns] = Decision.load(value)
        elif key == META_ACTIVE:
            self.active_meta = None if value is None else json.loads(value)
        elif key == BACKUP_PAUSE:
            self.backup_pause = None if value is None else json.loads(value)

    @property
    def decisions(self) -> list[Decision]:
        """The recorded decisions (at most about ``DECISIONS_KEPT``), oldest first."""
        return [self.decision_log[k] for k in sorted(self.decision_log)]

    def group_of(self, node_id: int) -> Group | None:
        """The group the node takes part in (member, learner or joint voter), if any."""
        node = self.nodes.get(node_id)
        if node is not None and node.group is not None:
            group = self.groups.get(node.group)
            if group is not None and group.involves(node_id):
                return group
        return next((g for _, g in sorted(self.groups.items()) if g.involves(node_id)), None)

    def table(self, name: str) -> Table | None:
        t = self.tables.get(name)
        return t if t is not None and t.state == TABLE_ACTIVE else None

    def range_for(self, table_id: int, key: bytes) -> Range | None:
        """The range of the table holding ``key`` (the rm's routing step for every request)."""
        ranges = self.ranges.get(table_id)
        return None if ranges is None else ranges.find(key)

    def leader_address(self, group_id: int) -> str | None:
        group = self.groups.get(group_id)
        if group is None or group.leader is None:
            return None
        node = self.nodes.get(group.leader)
        return None if node is None else node.address

    def member_addresses(self, group_id: int) -> list[str]:
        group = self.groups.get(group_id)
        if group is None:
            return []
        return [self.nodes[m].address for m in group.members if m in self.nodes]

    def to_json(self) -> dict[str, Any]:
        """The topology as served by ``GET /v1/cluster``."""
        by_id = {t.id: t for t in self.tables.values()}

        def node_ref(m: int, leader: int | None = None) -> dict[str, Any]:
            node = self.nodes.get(m)
            return {
                "id": m,
                "address": node.address if node is not None else None,
                "state": node.state if node is not None else "unknown",
                "leader": m == leader,
            }

        return {
            "revision": self.revision,
            "groups": [
                {
                    "id": g.id,
                    "epoch": g.epoch,
                    "leader": g.leader,
                    "members": [node_ref(m, g.leader) for m in g.members],
                    "learners": [node_ref(m) for m in g.learners],
                    "joint": list(g.joint),
                    "replacing": g.replacing,
                }
                for g in sorted(self.groups.values(), key=lambda g: g.id)
            ],
            "ranges": [
                {
                    "table": by_id[tid].name if tid in by_id else None,
                    "table_id": tid,
                    **r.describe(),
                }
                for tid in sorted(self.ranges)
                for r in self.ranges[tid]
            ],
            "nodes": [
                {"id": n.id, "address": n.address, "state": n.state, "group": n.group,
                 "reason": n.reason, "flag": n.flag}
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
            ],
            "tables": [
                {"id": t.id, "name": t.name, "state": t.state}
                for t in sorted(self.tables.values(), key=lambda t: t.name)
            ],
            "decisions": [d.to_json() for d in self.decisions[-DECISIONS_SHOWN:]],
            "lag_stuck": self.lag_stuck(),
            "meta": self.active_meta,
        }

    def lag_stuck(self) -> list[dict[str, Any]]:
        """The members and learners whose lag stopped shrinking and has not recovered: each
        node's latest ``lag_stuck`` decision not followed by a ``lag_recovered`` one (from every
        decision kept, not only those shown), still taking part in that group."""
        latest: dict[int, Decision] = {}
        for d in self.decisions:
            node = d.details.get("node")
            if d.kind in (LAG_STUCK, LAG_RECOVERED) and isinstance(node, int):
                latest[node] = d
        out = []
        for node, d in sorted(latest.items()):
            group = self.groups.get(d.group) if d.group is not None else None
            if d.kind == LAG_STUCK and group is not None and group.involves(node):
                out.append(d.to_json())
        return out
