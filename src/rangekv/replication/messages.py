"""Messages exchanged by the replicas of one group, and their wire form.

All are one-way. Field use by type (``index``/``log_epoch`` are overloaded to keep one shape):

| type             | sender     | index                      | log_epoch          | other           |
|------------------|------------|----------------------------|--------------------|-----------------|
| new_epoch        | candidate  | candidate's last index     | its last epoch     |                 |
| new_epoch_resp   | member     | member's last index        | its last epoch     | reject          |
| append           | leader     | prev index                 | prev epoch         | entries, commit |
| append_resp      | follower   | match (ok) / hint (reject) |                    | reject          |
| heartbeat        | leader     |                            |                    | commit, ctx     |
| heartbeat_resp   | follower   | follower's last index      |                    | ctx, reject     |
| fetch            | candidate  | prev index                 | prev epoch         |                 |
| fetch_resp       | member     | prev / hint                | member last epoch  | entries, done, commit=member last index |

``epoch`` is always the sender's current epoch (for a follower: the epoch it has promised), so a
receiver on an older epoch learns that it is deposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rangekv.storage.entry import Entry  # (re-exported: replication's name for a log entry)

NEW_EPOCH = "new_epoch"
NEW_EPOCH_RESP = "new_epoch_resp"
APPEND = "append"
APPEND_RESP = "append_resp"
HEARTBEAT = "heartbeat"
HEARTBEAT_RESP = "heartbeat_resp"
FETCH = "fetch"
FETCH_RESP = "fetch_resp"

# Not a wire message: how an offer of a snapshot (made by the leader's driver over its own
# request, see docs/internals.md) appears to the core's checks of who leads which epoch.
SNAPSHOT = "snapshot"

TYPES = frozenset(
    [NEW_EPOCH, NEW_EPOCH_RESP, APPEND, APPEND_RESP, HEARTBEAT, HEARTBEAT_RESP, FETCH, FETCH_RESP]
)


@dataclass(slots=True)
class Msg:
    type: str
    frm: int
    to: int
    epoch: int
    index: int = 0
    log_epoch: int = 0
    commit: int = 0
    entries: list[Entry] = field(default_factory=list)
    reject: bool = False
    ctx: int = 0
    done: bool = False

    def to_wire(self) -> list[Any]:
        return [
            self.type, self.frm, self.to, self.epoch, self.index, self.log_epoch, self.commit,
            [[e.epoch, e.index, e.payload] for e in self.entries], self.reject, self.ctx,
            self.done,
        ]

    @staticmethod
    def from_wire(raw: Any) -> Msg:
        """Decode a wire message; raises ValueError on anything malformed."""
        if not isinstance(raw, list) or len(raw) != 11:
            raise ValueError("replication message must be an 11-element list")
        mtype, frm, to, epoch, index, log_epoch, commit, entries, reject, ctx, done = raw
        if mtype not in TYPES:
            raise ValueError(f"unknown replication message type {mtype!r}")
        ints = (frm, to, epoch, index, log_epoch, commit, ctx)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise ValueError("replication message fields must be non-negative integers")
        if not isinstance(entries, list):
            raise ValueError("entries must be a list")
        decoded = []
        for e in entries:
            if (
                not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], int)
                or not isinstance(e[1], int) or not isinstance(e[2], bytes)
            ):
                raise ValueError("malformed entry")
            decoded.append(Entry(e[0], e[1], e[2]))
        return Msg(mtype, frm, to, epoch, index, log_epoch, commit, decoded, bool(reject), ctx,
                   bool(done))
