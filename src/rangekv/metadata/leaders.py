"""How the active meta tells a group's leader something (``add_range``, ``split_key``, a move's
steps...): the only requests the meta ever makes of the nodes. Every such op is idempotent, so a
request whose answer was lost is simply sent again, within a budget."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rangekv import errors, wire
from rangekv.metadata.view import Backoff

if TYPE_CHECKING:
    from rangekv.metadata.service import MetaService


class Leaders:
    """One connection per node address, reused; ``close`` them when the process stops."""

    def __init__(self, meta: MetaService) -> None:
        self.meta = meta
        self._conns: dict[str, wire.Connection] = {}

    def _conn(self, address: str) -> wire.Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = wire.Connection(address)
        return conn

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def tell(self, group_id: int, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` to ``group_id``'s leader until it answers, within the request budget;
        its reply.

        Retries on not_leader / unavailable / outcome unknown (the ops are idempotent), with
        jittered exponential backoff; raises Unavailable when the budget runs out.
        """
        meta = self.meta
        cfg = meta.config
        budget_s = cfg.node_request_budget_ms / 1000
        deadline_s = meta.clock() + budget_s
        backoff = Backoff(0.05, 0.5)
        last = "no attempt made"
        while True:
            meta.require_active()
            address = meta.view.leader_address(group_id)
            if address is None:
                last = f"group {group_id} has no leader"
            else:
                remaining_s = deadline_s - meta.clock()
                attempt_s = max(0.05, min(cfg.node_request_attempt_ms / 1000, remaining_s))
                try:
                    return await self._conn(address).request(op, timeout_s=attempt_s, **fields)
                except errors.RangeNotHere:
                    raise  # the group's ranges are not what the caller thought: no retry helps
                except (errors.Unavailable, errors.OutcomeUnknown, errors.ProtocolError) as exc:
                    last = f"{address}: {exc.code}: {exc.message}"
            delay_s = backoff.next()
            if meta.clock() + delay_s >= deadline_s:
                meta.log.warning("group %d did not acknowledge %s within %g s: %s", group_id, op,
                                 budget_s, last)
                raise errors.Unavailable(
                    f"group {group_id} did not acknowledge {op} within {budget_s:g}s "
                    f"(last: {last})",
                    group=group_id,
                )
            await asyncio.sleep(delay_s)
