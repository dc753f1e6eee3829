"""What a node reports in each heartbeat (:class:`NodeStatus`), parsed and checked.

The active meta keeps the latest status of every node and the controller decides on them
(``rangekv.controller``), so the type sits here, below both; the meta ops' declared fields
(``rangekv.metadata.requests``) parse a heartbeat's ``status`` with :meth:`NodeStatus.parse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rangekv import errors
from rangekv import fields as f

ROLE_LEADER = "leader"
ROLES = ("leader", "candidate", "follower", "idle")
BROKEN_REASON_CHARS_MAX = 1000  # of a node's own account of its broken log, as recorded
RANGE_FIGURES_MAX = 100_000  # entries of one heartbeat's range figures looked at
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
