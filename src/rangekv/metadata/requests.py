"""Every request the active meta serves, with its fields declared and checked
(``rangekv.fields``); a heartbeat's status is parsed by ``rangekv.model.status.NodeStatus``.

``OPS[op].parse(body)`` is the first thing the meta does with a request; the table in
docs/internals.md ("Every internal request checked") lists them with the node's.
"""

from __future__ import annotations

from typing import Any

from rangekv import errors
from rangekv import fields as f
from rangekv.limits import check_table_name
from rangekv.model.status import (  # noqa: F401  (the heartbeat's status, named here too)
    BROKEN_REASON_CHARS_MAX,
    GROUP_ID_MAX,
    RANGE_FIGURES_MAX,
    ROLE_LEADER,
    ROLES,
    NodeStatus,
)

ADDRESS_BYTES_MAX = 256
NODE_ID_MAX = f.ID_MAX  # node ids are u32 (the last four bytes of a node-stamped seq)


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
