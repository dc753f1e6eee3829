"""The metadata model: what etcd holds, how it is keyed, and an in-memory view of all of it.

etcd layout (every value is JSON; every change is a compare-and-swap on what was read):

    /rangekv/tables/{name}                         Table
    /rangekv/counters/table_id                     last table id issued (decimal)
    /rangekv/counters/group_id                     last group id issued (decimal)
    /rangekv/ranges/{table_id:08x}/{start hex}     Range (start "" = the table's first range)
    /rangekv/groups/{group_id:08x}                 Group
    /rangekv/nodes/{node_id:08x}                   Node
    /rangekv/meta/active                           {"id", "address"} of the active meta (leased)

A ``ClusterView`` is built from one prefix read of ``/rangekv/`` and kept current by applying
watch events in revision order; the rm routes from it and the meta decides from it.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = b"/rangekv/"
TABLES = PREFIX + b"tables/"
RANGES = PREFIX + b"ranges/"
GROUPS = PREFIX + b"groups/"
NODES = PREFIX + b"nodes/"
COUNTERS = PREFIX + b"counters/"
META_ACTIVE = PREFIX + b"meta/active"

TABLE_ACTIVE = "active"
TABLE_CREATING = "creating"
TABLE_DROPPING = "dropping"

NODE_SPARE = "spare"
NODE_MEMBER = "member"
NODE_FLAGGED = "flagged"


def table_key(name: str) -> bytes:
    return TABLES + name.encode()


def range_key(table_id: int, start: bytes) -> bytes:
    return RANGES + f"{table_id:08x}/".encode() + start.hex().encode()


def group_key(group_id: int) -> bytes:
    return GROUPS + f"{group_id:08x}".encode()


def node_key(node_id: int) -> bytes:
    return NODES + f"{node_id:08x}".encode()


def dumps(obj: Any) -> bytes:
    return json.dumps(asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj,
                      sort_keys=True, separators=(",", ":")).encode()


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


@dataclass(frozen=True)
class Range:
    """Keys ``start <= k < end`` of one table (``end`` None = unbounded) served by ``group``.

    A move from group S to group D goes through these records (DESIGN §7.3, docs/internals.md):

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
        d = json.loads(raw)
        end = d.get("end")
        source, target = d.get("source"), d.get("target")
        return Range(
            int(d["table_id"]),
            bytes.fromhex(d["start"]),
            None if end is None else bytes.fromhex(end),
            int(d["group"]),
            int(d.get("version", 1)),
            str(d.get("state", RANGE_ACTIVE)),
            None if source is None else int(source),
            None if target is None else int(target),
        )


@dataclass(frozen=True)
class Group:
    id: int
    epoch: int = 0
    leader: int | None = None
    members: tuple[int, ...] = ()

    @staticmethod
    def load(raw: bytes) -> Group:
        d = json.loads(raw)
        leader = d.get("leader")
        return Group(
            int(d["id"]),
            int(d.get("epoch", 0)),
            None if leader is None else int(leader),
            tuple(int(m) for m in d.get("members", [])),
        )


@dataclass(frozen=True)
class Node:
    id: int
    address: str
    state: str = NODE_SPARE
    group: int | None = None
    reason: str = ""  # why a node was flagged

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
        )


@dataclass
class ClusterView:
    """Everything under ``/rangekv/`` as of ``revision``."""

    revision: int = 0
    tables: dict[str, Table] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    # table id -> ranges sorted by start key
    ranges: dict[int, list[Range]] = field(default_factory=dict)
    active_meta: dict[str, Any] | None = None

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
            ranges = [r for r in self.ranges.get(table_id, []) if r.start != start]
            if value is not None:
                rng = Range.load(value)
                assert rng.table_id == table_id and rng.start == start, (key, rng)
                bisect.insort(ranges, rng, key=lambda r: r.start)
            if ranges:
                self.ranges[table_id] = ranges
            else:
                self.ranges.pop(table_id, None)
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
        elif key == META_ACTIVE:
            self.active_meta = None if value is None else json.loads(value)

    def table(self, name: str) -> Table | None:
        t = self.tables.get(name)
        return t if t is not None and t.state == TABLE_ACTIVE else None

    def range_for(self, table_id: int, key: bytes) -> Range | None:
        ranges = self.ranges.get(table_id)
        if not ranges:
            return None
        i = bisect.bisect_right(ranges, key, key=lambda r: r.start) - 1
        if i < 0:
            return None
        rng = ranges[i]
        return rng if rng.contains(key) else None

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
        return {
            "revision": self.revision,
            "groups": [
                {
                    "id": g.id,
                    "epoch": g.epoch,
                    "leader": g.leader,
                    "members": [
                        {
                            "id": m,
                            "address": self.nodes[m].address if m in self.nodes else None,
                            "state": self.nodes[m].state if m in self.nodes else "unknown",
                            "leader": m == g.leader,
                        }
                        for m in g.members
                    ],
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
                 "reason": n.reason}
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
            ],
            "tables": [
                {"id": t.id, "name": t.name, "state": t.state}
                for t in sorted(self.tables.values(), key=lambda t: t.name)
            ],
            "meta": self.active_meta,
        }
