"""Coalescing: the single-key puts, deletes and gets an rm is asked for at once travel to each
leader together, as the batches of ``batches`` do.

Under load an rm has many requests in flight for the same group leader (64 tasks of one
client, or many clients). Sent one frame each, every put is a log entry of its own: its own
proposal, apply transaction, reply frame and (on each follower) its own entry to decode and
apply; every get its own read barrier. The leader's CPU per operation, not the disk, was the
ceiling. So the router hands a single-key operation whose route is plain (the map knows the
table, the range is not being moved, its group has a known leader) to a :class:`Coalescer`,
which collects what arrives in one turn of the event loop per (leader, table, client session)
and sends it as one ``batch_write`` or ``batch_get`` frame: the leader proposes the writes as
one entry and reads the keys behind one barrier.

Nothing about an operation's meaning changes. Each write keeps its own seq from the rm's
sequencer and its own session number; each answer is its own. Whatever a frame does not settle
cleanly goes back to the router's single-key path with all of its recovery (``None`` from
``write``/``get``): an item the leader refused for its routing (a split, a move, a new leader),
a frame that could not be sent, or, for a write of a session, a frame whose outcome is unknown
(then resent there marked ``retry``: the group applies it at most once). A write without a
session whose frame's outcome is unknown is ``outcome_unknown``, as it is alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rangekv import errors, sequencer
from rangekv.request_manager import ops
from rangekv.request_manager.ops import GetResult, Session

if TYPE_CHECKING:
    from rangekv.request_manager.routing import Router

FRAME_ITEMS_MAX = ops.FRAME_ITEMS_MAX


@dataclass(slots=True)
class _Slot:
    """One waiting operation: what to send and where its answer goes."""

    item: Any  # a write's wire item, or a get's key
    fut: asyncio.Future[Any]


# (address, table id, group, client id or None, retry) -> waiting writes
_WriteKey = tuple[str, int, int, bytes | None, bool]
_GetKey = tuple[str, int, int]


class SendAlone(Exception):
    """The operation was not settled in a frame: send it the single-key way (``retry``: an
    earlier attempt may have been applied)."""

    def __init__(self, retry: bool = False) -> None:
        super().__init__("send alone")
        self.retry = retry


class Coalescer:
    """Per-router: waiting writes and gets by destination, flushed once per loop turn."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._writes: dict[_WriteKey, list[_Slot]] = {}
        self._floors: dict[_WriteKey, int] = {}
        self._gets: dict[_GetKey, list[_Slot]] = {}
        self._flush_due = False
        self.frames = 0  # frames sent (for tests and metrics)
        self.items = 0  # operations they carried

    def _route(self, table: str, key: bytes) -> tuple[int, int, str] | None:
        """(table id, group, leader address) when the route is plain, else None."""
        view = self.router.source.view
        t = view.table(table)
        if t is None:
            return None
        rng = view.range_for(t.id, key)
        if rng is None or rng.copying_from is not None:
            return None
        address = self.router._leader_address(view, rng.group)
        if address is None:
            return None
        return t.id, rng.group, address

    def _schedule(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def write(self, table: str, kind: str, key: bytes, value: bytes,
                    if_seq: bytes | None, session: Session | None) -> Any:
        """The write's node-shaped reply ({seq} or {deleted, seq}); raises its error, or
        ``SendAlone``; None when its route is not plain (send it alone at once)."""
        route = self._route(table, key)
        if route is None:
            return None
        table_id, group, address = route
        wkey: _WriteKey = (address, table_id, group,
                           None if session is None else session.client,
                           False if session is None else session.retry)
        item = [kind, key, value if kind == ops.PUT else None, if_seq,
                self.router.sequencer.next(), None if session is None else session.cseq]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.setdefault(wkey, []).append(_Slot(item, fut))
        if session is not None:
            floor = self._floors.get(wkey)
            self._floors[wkey] = session.floor if floor is None else min(floor, session.floor)
        self._schedule()
        return await fut

    async def get(self, table: str, key: bytes) -> GetResult | None:
        """The key's live version; raises its error or ``SendAlone``; None when its route is
        not plain."""
        route = self._route(table, key)
        if route is None:
            return None
        table_id, group, address = route
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._gets.setdefault((address, table_id, group), []).append(_Slot(key, fut))
        self._schedule()
        result: GetResult = await fut
        return result

    def _flush(self) -> None:
        self._flush_due = False
        writes, self._writes = self._writes, {}
        floors, self._floors = self._floors, {}
        gets, self._gets = self._gets, {}
        loop = asyncio.get_running_loop()
        for wkey, slots in writes.items():
            for i in range(0, len(slots), FRAME_ITEMS_MAX):
                loop.create_task(self._send_writes(wkey, floors.get(wkey, 0),
                                                   slots[i:i + FRAME_ITEMS_MAX]))
        for gkey, slots in gets.items():
            for i in range(0, len(slots), FRAME_ITEMS_MAX):
                loop.create_task(self._send_gets(gkey, slots[i:i + FRAME_ITEMS_MAX]))

    async def _send_writes(self, wkey: _WriteKey, floor: int, slots: list[_Slot]) -> None:
        address, table_id, group, client, retry = wkey
        fields: dict[str, Any] = {"table_id": table_id, "items": [s.item for s in slots]}
        if client is not None:
            fields.update(client=client, floor=floor)
            if retry:
                fields["retry"] = True
        self.frames += 1
        self.items += len(slots)
        try:
            reply = await self.router.pool.get(address).request(
                "batch_write", timeout_s=self.router.request_deadline_s, tag=group, **fields)
            results = ops.frame_results(reply, len(slots), address)
        except (errors.OutcomeUnknown, errors.ProtocolError) as err:  # incl. Timeout
            if client is not None and err.code != errors.SessionExpired.code:
                _settle_all(slots, SendAlone(retry=True))
            else:
                self.router.stats.outcome_unknown += len(slots)
                _settle_all(slots, errors.OutcomeUnknown(
                    f"write may or may not have taken effect: {err.message}"))
            return
        except errors.RangeKVError:
            _settle_all(slots, SendAlone())  # not_leader, unavailable, ...: nothing applied
            return
        except BaseException:
            _settle_all(slots, SendAlone(retry=client is not None))
            raise
        top = sequencer.ZERO
        for slot, res in zip(slots, results, strict=True):
            if slot.fut.done():
                continue
            err = ops.error_of(res)
            if err is None:
                seq = ops.seq_of(res)
                top = max(top, seq)
                slot.fut.set_result(res)
            elif ops.reroute(err):
                slot.fut.set_exception(SendAlone())
            else:
                slot.fut.set_exception(ops.client_error(err))
        if top != sequencer.ZERO:
            self.router._observe(top)

    async def _send_gets(self, gkey: _GetKey, slots: list[_Slot]) -> None:
        address, table_id, group = gkey
        self.frames += 1
        self.items += len(slots)
        try:
            reply = await self.router.pool.get(address).request(
                "batch_get", timeout_s=self.router.request_deadline_s, tag=group,
                table_id=table_id, keys=[s.item for s in slots])
            results = ops.frame_results(reply, len(slots), address)
        except errors.RangeKVError:
            _settle_all(slots, SendAlone())  # a read is always safe to send again
            return
        except BaseException:
            _settle_all(slots, SendAlone())
            raise
        top = sequencer.ZERO
        for slot, res in zip(slots, results, strict=True):
            if slot.fut.done():
                continue
            err = ops.error_of(res)
            if err is not None:
                slot.fut.set_exception(SendAlone() if ops.reroute(err)
                                       else ops.client_error(err))
            elif not res.get("found") or res.get("tombstone"):
                slot.fut.set_result(GetResult(False, b"", sequencer.ZERO))
            else:
                seq = ops.seq_of(res)
                top = max(top, seq)
                slot.fut.set_result(GetResult(True, bytes(res.get("value") or b""), seq))
        if top != sequencer.ZERO:
            self.router._observe(top)


def _settle_all(slots: list[_Slot], exc: BaseException) -> None:
    for slot in slots:
        if not slot.fut.done():
            slot.fut.set_exception(exc)
