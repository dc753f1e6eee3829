"""Batches: many keys of one table in one call, split by range, one frame per group leader.

``write_many`` (puts and deletes) and ``get_many`` answer one result per item, in item order:
a batch is not a transaction. Items succeed or fail one by one, and a batch whose call fails
midway may have applied some of its items (with a client session, a retry applies none twice).

How a batch travels:

1. Each item's range is looked up in the rm's map. Items whose range has a leader are grouped
   by that leader (a range being copied to another group: only the unconditional puts, which
   need nothing of the source, go to the new group's leader); the rest (no leader known, a
   delete or a conditional put into a range being copied, which needs the source's version of
   its key) take the single-key path of ``Router`` with all of its recovery.
2. Each leader gets one ``batch_write`` / ``batch_get`` frame per ``FRAME_ITEMS_MAX`` items or
   ``FRAME_BYTES_MAX`` bytes, all sent at once; the node proposes a frame's writes together
   (one log entry) and reads a frame's keys after one linearizable-read barrier.
3. Whatever a frame could not settle (the node is no longer the leader, a range moved or split
   since the map was read) is planned again as frames, up to ``REPLAN_ROUNDS_MAX`` times (after
   the leader's hint, a re-read of the table, or a short pause), and then goes the single-key
   way, item by item, as if the batch had never been. (Reads do the latter at once.) Nothing
   else is retried here: a write whose frame was lost is ``outcome_unknown`` unless it belongs
   to a client session, whose writes the group applies at most once (then it is resent, marked
   ``retry``).

Every write gets a fresh seq of this rm's sequencer, and with a session its own cseq: the
session's ``cseq`` plus the item's place in the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rangekv import errors, limits, sequencer
from rangekv.request_manager import ops
from rangekv.request_manager.ops import GetResult, Session
from rangekv.request_manager.routing import Router, _Attempt, _seq

log = logging.getLogger("rangekv.rm.batches")

SINGLE_CONCURRENCY_MAX = 64  # items sent the single-key way at once
# A frame refused for its routing (a new leader, a split or move since the map was read) is
# planned again as frames this many times, pausing a little more each time, before its items
# go the single-key way: a load under a move or a leader change had sent thousands of items
# one by one, and its batches timed out behind them
REPLAN_ROUNDS_MAX = 3
REPLAN_PAUSE_S = 0.05
FRAME_ITEMS_MAX, FRAME_BYTES_MAX, PUT, DELETE = (ops.FRAME_ITEMS_MAX, ops.FRAME_BYTES_MAX,
                                                 ops.PUT, ops.DELETE)


@dataclass(frozen=True, slots=True)
class Write:
    """One item of a write batch: a put (``value``) or a delete; ``if_seq`` as for put/delete
    (16 zero bytes: only if absent)."""

    kind: str
    key: bytes
    value: bytes = b""
    if_seq: bytes | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A put's seq, or a delete's (``deleted`` False and a zero seq when nothing was there)."""

    seq: bytes
    deleted: bool = False


WriteOutcome = WriteResult | errors.RangeKVError
GetOutcome = GetResult | errors.RangeKVError


def _chunks(indexes: list[int], size_of: Callable[[int], int]) -> list[list[int]]:
    out: list[list[int]] = []
    cur: list[int] = []
    nbytes = 0
    for i in indexes:
        n = size_of(i)
        if cur and (len(cur) >= FRAME_ITEMS_MAX or nbytes + n > FRAME_BYTES_MAX):
            out.append(cur)
            cur, nbytes = [], 0
        cur.append(i)
        nbytes += n
    if cur:
        out.append(cur)
    return out


async def _bounded(coros: Sequence[Callable[[], Awaitable[None]]]) -> None:
    sem = asyncio.Semaphore(SINGLE_CONCURRENCY_MAX)

    async def one(fn: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await fn()

    await asyncio.gather(*(one(fn) for fn in coros))


async def _plan(router: Router, table: str, keys: Sequence[bytes],
                plain: Callable[[int], bool] = lambda i: False
                ) -> tuple[int, dict[str, tuple[int, list[int]]], list[int]]:
    """(table id, leader address -> (group, indexes of ``keys``), indexes for the single-key
    path). ``plain(i)``: item i needs nothing of a range's source while it is being copied
    (an unconditional put, not a retry): it goes to the range's new group in a frame."""
    st = _Attempt(router._monotonic(), router.request_deadline_s)
    t = await router._resolve(st, table)
    view = router.source.view
    by_leader: dict[str, tuple[int, list[int]]] = {}
    single: list[int] = []
    leaders: dict[int, str | None] = {}
    for i, key in enumerate(keys):
        rng = view.range_for(t.id, key)
        if rng is None or (rng.copying_from is not None and not plain(i)):
            single.append(i)
            continue
        if rng.group not in leaders:
            leaders[rng.group] = router._leader_address(view, rng.group)
        address = leaders[rng.group]
        if address is None:
            single.append(i)
        else:
            by_leader.setdefault(address, (rng.group, []))[1].append(i)
    return t.id, by_leader, single


async def write_many(router: Router, table: str, items: Sequence[Write],
                     session: Session | None = None) -> list[WriteOutcome]:
    """One outcome per item, in order (see the module docstring)."""
    limits.check_table_name(table)
    out: list[WriteOutcome | None] = [None] * len(items)
    if not items:
        return []
    single: list[int] = []
    retry_single: set[int] = set()  # items whose frame may have been applied

    def cseq_of(i: int) -> int | None:
        return None if session is None else session.cseq + i

    def plain(i: int) -> bool:
        return (items[i].kind == PUT and items[i].if_seq is None
                and (session is None or not session.retry))

    async def frame(table_id: int, group: int, address: str, idx: list[int],
                    again: list[int], moved: list[bool]) -> None:
        wire_items = [[items[i].kind, items[i].key,
                       items[i].value if items[i].kind == PUT else None, items[i].if_seq,
                       router.sequencer.next(), cseq_of(i)] for i in idx]
        fields: dict[str, Any] = {"table_id": table_id, "items": wire_items}
        if session is not None:
            fields.update(client=session.client, floor=session.floor)
            if session.retry:
                fields["retry"] = True
        try:
            reply = await router.pool.get(address).request(
                "batch_write", timeout_s=router.request_deadline_s, **fields)
        except (errors.OutcomeUnknown, errors.ProtocolError) as err:  # incl. Timeout
            if session is not None and err.code != "session_expired":
                single.extend(idx)
                retry_single.update(idx)
                return
            router.stats.outcome_unknown += len(idx)
            for i in idx:
                out[i] = errors.OutcomeUnknown(
                    f"batch write to {address} may or may not have taken effect: "
                    f"{err.message}")
            return
        except errors.RangeKVError as err:
            if err.retryable or ops.reroute(err):
                # nothing of the frame was applied: plan its items again (a new leader, a
                # split or move since the map was read), as a frame, not one by one
                if isinstance(err, errors.NotLeader):
                    router._on_not_leader(_Attempt(router._monotonic(), 1.0),
                                          router.source.view, group, address, err)
                elif isinstance(err, (errors.RangeNotHere, errors.TableNotFound)):
                    moved[0] = True
                again.extend(idx)
                return
            for i in idx:
                out[i] = err
            return
        results = ops.frame_results(reply, len(idx), address)
        top = sequencer.ZERO
        for i, res in zip(idx, results, strict=True):
            outcome = _write_outcome(res)
            if isinstance(outcome, errors.RangeKVError) and ops.reroute(outcome):
                again.append(i)
                if isinstance(outcome, errors.RangeNotHere):
                    moved[0] = True
                continue
            out[i] = outcome
            if isinstance(outcome, WriteResult) and outcome.seq > top:
                top = outcome.seq
        if top != sequencer.ZERO:
            router._observe(top)

    def size_of(i: int) -> int:
        return len(items[i].key) + len(items[i].value) + 48

    pending = list(range(len(items)))
    for round_ in range(REPLAN_ROUNDS_MAX):
        table_id, by_leader, alone_now = await _plan(
            router, table, [items[i].key for i in pending], lambda j, p=pending: plain(p[j]))
        single.extend(pending[j] for j in alone_now)
        again: list[int] = []
        moved = [False]
        await asyncio.gather(*(
            frame(table_id, group, address, chunk, again, moved)
            for address, (group, idx) in by_leader.items()
            for chunk in _chunks([pending[j] for j in idx], size_of)))
        if not again:
            break
        router.stats.retry("batch_replanned")
        if moved[0]:
            await router.source.refresh_table(table, router._monotonic())
        elif round_ + 1 < REPLAN_ROUNDS_MAX:
            await asyncio.sleep(REPLAN_PAUSE_S * (round_ + 1))  # an election, a fence
        pending = sorted(again)
    else:
        single.extend(pending)  # still unsettled: one by one, with all of their recovery

    async def alone(i: int) -> None:
        w = items[i]
        s = None
        if session is not None:
            s = replace(session, cseq=session.cseq + i,
                        retry=session.retry or i in retry_single)
        try:
            if w.kind == PUT:
                out[i] = WriteResult(await router.put(table, w.key, w.value, w.if_seq, s))
            else:
                seq = await router.delete(table, w.key, w.if_seq, s)
                out[i] = WriteResult(sequencer.ZERO if seq is None else seq, seq is not None)
        except errors.RangeKVError as err:
            out[i] = err

    await _bounded([lambda i=i: alone(i) for i in sorted(set(single))])
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


def _write_outcome(res: Any) -> WriteOutcome:
    if not isinstance(res, dict):
        raise errors.ProtocolError(f"a node sent a malformed batch result: {str(res)[:100]}")
    err = ops.error_of(res)
    if err is not None:
        return ops.client_error(err)
    seq = _seq(res.get("seq"))
    return WriteResult(seq, bool(res.get("deleted")))


async def get_many(router: Router, table: str, keys: Sequence[bytes]) -> list[GetOutcome]:
    """The live version of each key (``found`` False for none), in order."""
    limits.check_table_name(table)
    out: list[GetOutcome | None] = [None] * len(keys)
    if not keys:
        return []
    table_id, by_leader, single = await _plan(router, table, keys)

    async def frame(address: str, idx: list[int]) -> None:
        try:
            reply = await router.pool.get(address).request(
                "batch_get", timeout_s=router.request_deadline_s, table_id=table_id,
                keys=[keys[i] for i in idx])
        except errors.RangeKVError as err:
            if err.retryable or ops.reroute(err) or isinstance(
                    err, (errors.OutcomeUnknown, errors.ProtocolError)):
                single.extend(idx)  # a read is always safe to send again
                return
            for i in idx:
                out[i] = err
            return
        results = ops.frame_results(reply, len(idx), address)
        top = sequencer.ZERO
        for i, res in zip(idx, results, strict=True):
            err = ops.error_of(res)
            if err is not None:
                if ops.reroute(err):
                    single.append(i)
                else:
                    out[i] = err
                continue
            if not res.get("found") or res.get("tombstone"):
                out[i] = GetResult(False, b"", sequencer.ZERO)
                continue
            seq = _seq(res.get("seq"))
            top = max(top, seq)
            out[i] = GetResult(True, bytes(res.get("value") or b""), seq)
        if top != sequencer.ZERO:
            router._observe(top)

    await asyncio.gather(*(frame(address, chunk) for address, (_, idx) in by_leader.items()
                           for chunk in _chunks(idx, lambda i: len(keys[i]) + 16)))

    async def alone(i: int) -> None:
        try:
            out[i] = await router.get(table, keys[i])
        except errors.RangeKVError as err:
            out[i] = err

    await _bounded([lambda i=i: alone(i) for i in sorted(set(single))])
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]
