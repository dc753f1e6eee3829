"""Every request the active meta serves, with its fields declared and checked
(``rangekv.fields``), and the parsed form of a heartbeat's status (:class:`NodeStatus`).

``OPS[op].parse(body)`` is the first thing the meta does with a request; the table in
docs/internals.md ("Every internal request checked") lists them with the node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rangekv import errors
from rangekv import fields as f
from rangekv.limits import check_table_name

ROLE_LEADER = "leader"
ROLES = ("leader", "candidate", "follower", "idle")
ADDRESS_BYTES_MAX = 256
BROKEN_REASON_CHARS_MAX = 1000  # of a node's own account of its broken log, as recorded
RANGE_FIGURES_MAX = 100_000  # entries of one heartbeat's range figures looked at
NODE_ID_MAX = f.ID_MAX  # node ids are u32 (the last four bytes of a node-stamped seq)
GROUP_ID_MAX = f.ID_MAX


@dataclass(frozen=True)
class NodeStatus:
    """The ``status`` map of a heartbeat (see docs/internals.md)."""

    group: int | None = None
    epoch: int = 0  # the highest epoch the node has promised
    role: str = "idle"
    leader_epoch: int = 0
    last_epoch: int = 0
    last_index: int = 0
    commit_index: int = 0
    applied_index: int = 0
    broken: bool = False
    broken_reason: str = ""  # the node's account (a damaged file and offset), if it gave one
    ranges: tuple[dict[str, Any], ...] | None = None  # a leader's range figures (node/stats.py)

    @staticmethod
    def parse(raw: Any) -> NodeStatus:
        if raw is None:
            return NodeStatus()
        if not isinstance(raw, dict):
            raise errors.InvalidArgument("heartbeat status must be a map", field="status")

        def count(name: str) -> int:
            value = raw.get(name, 0)
            if value is None:
                return 0
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise errors.InvalidArgument(
                    f"status.{name} must be a non-negative integer", field=f"status.{name}"
                )
            return value

        group = raw.get("group")
        if group is not None and (not isinstance(group, int) or isinstance(group, bool)
                                  or not 0 < group <= GROUP_ID_MAX):
            raise errors.InvalidArgument(f"status.group must be a group id (1..{GROUP_ID_MAX}) "
                                         "or nil", field="status.group")
        role = raw.get("role") or "idle"
        if not isinstance(role, str) or role not in ROLES:
            raise errors.InvalidArgument(f"status.role must be one of {ROLES}",
                                         field="status.role")
        # A node sends the reason it refuses to serve (a string), or nil; true is accepted too.
        broken = raw.get("broken")
        reason = broken[:BROKEN_REASON_CHARS_MAX] if isinstance(broken, str) else ""
        return NodeStatus(
            group=group,
            epoch=count("epoch"),
            role=role,
            leader_epoch=count("leader_epoch"),
            last_epoch=count("last_epoch"),
            last_index=count("last_index"),
            commit_index=count("commit_index"),
            applied_index=count("applied_index"),
            broken=bool(broken),
            broken_reason=reason,
            ranges=_range_figures(raw.get("ranges")),
        )


def _range_figures(raw: Any) -> tuple[dict[str, Any], ...] | None:
    """The well-formed entries of a heartbeat's ``ranges`` (figures only guide splits: a
    malformed entry is skipped, not refused)."""
    if not isinstance(raw, list):
        return None
    numbers = ("keys", "bytes", "rps", "wps", "rbps", "wbps")
    return tuple(
        fig for fig in raw[:RANGE_FIGURES_MAX]
        if isinstance(fig, dict) and isinstance(fig.get("t"), int)
        and isinstance(fig.get("start"), bytes)
        and all(isinstance(fig.get(n, 0), (int, float)) for n in numbers)
    )




def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must be HOST:PORT, not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)




def _address(name: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= ADDRESS_BYTES_MAX:
        raise errors.InvalidArgument(f"{name} must be HOST:PORT of at most "
                                     f"{ADDRESS_BYTES_MAX} characters", field=name)
    try:
        split_host_port(value)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc), field=name) from None
    return value


def _status(name: str, value: Any) -> NodeStatus:
    return NodeStatus.parse(value)


def _table(name: str, value: Any) -> str:
    try:
        return check_table_name(value)
    except errors.InvalidArgument as err:
        err.details["field"] = name  # (check_table_name names the HTTP API's field)
        raise


def _group_or_auto(name: str, value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= GROUP_ID_MAX:
        return value
    raise errors.InvalidArgument(f"{name} must be a group id (1..{GROUP_ID_MAX}) or 'auto'",
                                 field=name)


NODES = "nodes"
RMS = "rms"
TABLE_NAME = f.any_of("table name [A-Za-z0-9_.-]{1,128}", _table,
                      ((b"t", f.INVALID), ("no/slash", f.INVALID), ("x" * 129, f.INVALID)))

OPS = f.registry(
    f.Op("heartbeat", {
        "node_id": f.uint(NODE_ID_MAX, 1),
        "address": f.any_of(f"HOST:PORT ≤ {ADDRESS_BYTES_MAX} chars", _address,
                            ((b"h:1", f.INVALID), ("no-port", f.INVALID),
                             ("h:99999", f.INVALID), ("h" * 300 + ":1", f.INVALID))),
        "status": f.optional(f.any_of(
            "map: group, epoch, role, leader_epoch, last_epoch, last_index, commit_index, "
            "applied_index, broken, ranges", _status,
            (([], f.INVALID), ({"role": "king"}, f.INVALID), ({"epoch": -1}, f.INVALID),
             ({"group": "1"}, f.INVALID), ({"last_index": "9"}, f.INVALID)))),
    }, NODES, "a heartbeat for another node than the one that first heartbeat on the "
              "connection, or for a node heartbeating live on another connection: "
              "`invalid_argument`"),
    f.Op("create_table", {"name": TABLE_NAME}, RMS),
    f.Op("drop_table", {"name": TABLE_NAME}, RMS),
    f.Op("split_range", {"name": TABLE_NAME, "at": f.key(),
                         "to": f.optional(f.any_of("group id or 'auto'", _group_or_auto,
                                                   (("any", f.INVALID), (0, f.INVALID),
                                                    (True, f.INVALID))))}, RMS),
    f.Op("move_range", {"name": TABLE_NAME, "at": f.bound(),
                        "to": f.uint(GROUP_ID_MAX, 1)}, RMS),
    f.Op("remove_node", {"node_id": f.uint(NODE_ID_MAX, 1)}, RMS),
)
