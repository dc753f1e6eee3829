"""Performing range moves (``rangekv.controller.move`` has the plan and its steps): one task per
moving range, each step told to the groups (idempotent) and recorded in etcd (compare-and-swap)
before the next begins, so that this meta, or the next after a failover, can finish any move
from what etcd says.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from rangekv import errors
from rangekv.controller import move as plan
from rangekv.controller.decisions import (
    DECISION_MOVE_ABANDONED,
    DECISION_MOVE_COPIED,
    DECISION_MOVE_SWITCH,
)
from rangekv.controller.move import EXPORT_PAGE_KEYS
from rangekv.model import Range, span_text

RETRY_S = 0.5  # a move that stopped on an error is resumed no sooner than this


class RangeStore(Protocol):
    async def range_record(self, table_id: int, start: bytes) -> tuple[Range, int] | None: ...

    async def table_ranges(self, table_id: int) -> list[Range]: ...

    async def put_range(self, new: Range, mod_revision: int) -> int | None: ...


Tell = Callable[..., Awaitable[dict[str, Any]]]  # (group, op, **fields) -> the leader's reply
Record = Callable[..., Awaitable[None]]  # (kind, reason, **details): a controller decision


class RangeMover:
    """Runs moves to completion (one task per range), resumable from etcd at any step."""

    def __init__(self, store: RangeStore, tell: Tell, record: Record,
                 catch_up: Callable[[int], Awaitable[Any]], log: logging.Logger,
                 clock: Callable[[], float],
                 table_name: Callable[[int], str] = str,
                 page_keys: int = EXPORT_PAGE_KEYS) -> None:
        self.store = store
        self.page_keys = page_keys  # records per page copied (a simulation uses small pages)
        self.table_name = table_name  # for the decisions' text
        self.tell = tell
        self.record = record
        self.catch_up = catch_up
        self.log = log
        self.clock = clock
        self.tasks: dict[tuple[int, bytes], asyncio.Task[None]] = {}
        self._failed_at: dict[tuple[int, bytes], float] = {}

    def running(self, table_id: int, start: bytes) -> asyncio.Task[None] | None:
        task = self.tasks.get((table_id, start))
        return task if task is not None and not task.done() else None

    def ensure(self, rng: Range, why: str) -> asyncio.Task[None] | None:
        """Start (or find) the task that finishes the move of ``rng``; None while a failed
        attempt is less than ``RETRY_S`` old."""
        key = (rng.table_id, rng.start)
        task = self.running(*key)
        if task is None:
            failed_at = self._failed_at.get(key)
            if failed_at is not None and self.clock() - failed_at < RETRY_S:
                return None
            task = asyncio.ensure_future(self._run(rng.table_id, rng.start, why))
            task.set_name(f"move-{rng.table_id}-{rng.start.hex()}")
            self.tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return task

    def _done(self, key: tuple[int, bytes], task: asyncio.Task[None]) -> None:
        if self.tasks.get(key) is task:
            del self.tasks[key]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._failed_at[key] = self.clock()
            if isinstance(exc, errors.RangeKVError):
                self.log.warning("move of table %d range %r stopped, to be resumed: %s: %s",
                                 key[0], key[1], exc.code, exc.message)
            else:
                self.log.error("move of table %d range %r failed on a bug", key[0], key[1],
                               exc_info=exc)

    async def cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

    async def run(self, table_id: int, start: bytes, why: str) -> None:
        """Finish the move of the range at (``table_id``, ``start``) from what the store says,
        step by step: the body of each task ``ensure`` starts (a simulation runs it as it
        is, in simulated time)."""
        await self._run(table_id, start, why)

    async def _run(self, table_id: int, start: bytes, why: str) -> None:
        while True:
            found = await self.store.range_record(table_id, start)
            if found is None:
                self.log.info("move of table %d range %r: the range is gone (dropped or "
                              "split meanwhile); nothing left to do", table_id, start)
                return
            rng, rev = found
            step = plan.next_step(rng)
            if step == plan.FENCE_AND_SWITCH:
                await self._fence_and_switch(rng, rev, why)
            elif step == plan.COPY_AND_FINISH:
                await self._copy_and_finish(rng, rev)
            elif step == plan.CLEANUP:
                await self._cleanup(rng, rev)
            else:
                return

    async def _put(self, new: Range, rev: int) -> int:
        revision = await self.store.put_range(new, rev)
        if revision is None:
            raise errors.Unavailable("the range's record changed meanwhile; re-reading it")
        await self.catch_up(revision)
        return revision

    async def _fence_and_switch(self, rng: Range, rev: int, why: str) -> None:
        src, dst = rng.group, rng.target
        assert dst is not None and dst != src, rng
        span = {"table_id": rng.table_id, "start": rng.start, "end": rng.end}
        # the source may have missed a split recorded in etcd (a meta crashed in between)
        for at in plan.missed_splits(rng, await self.store.table_ranges(rng.table_id)):
            await self.tell(src, "split_range", table_id=rng.table_id, at=at)
        fenced_at = self.clock()
        reply = await self.tell(src, "fence_range", **span)
        high = reply.get("seq")
        if not isinstance(high, bytes) or len(high) != 16:
            raise errors.ProtocolError(f"fence_range answered {reply!r}")
        try:
            await self.tell(dst, "add_range", importing=True, seq=high, **span)
        except errors.Unavailable as exc:
            await self._abandon(rng, rev, f"group {dst} could not take the range: "
                                          f"{exc.message}")
            return
        revision = await self._put(plan.switched(rng), rev)
        pause_ms = (self.clock() - fenced_at) * 1000
        await self.record(
            DECISION_MOVE_SWITCH,
            f"writes to table {self.table_name(rng.table_id)} range "
            f"{span_text(rng.start, rng.end)} now go to group {dst} (from {src}); writes were "
            f"refused for {pause_ms:.0f} ms; copying",
            table_id=rng.table_id, group=dst, source=src, pause_ms=round(pause_ms, 1),
            revision=revision)

    async def _abandon(self, rng: Range, rev: int, reason: str) -> None:
        span = {"table_id": rng.table_id, "start": rng.start, "end": rng.end}
        await self.tell(rng.group, "unfence_range", **span)
        await self._put(plan.abandoned(rng), rev)
        await self.record(DECISION_MOVE_ABANDONED,
                          f"move of table {self.table_name(rng.table_id)} range "
                          f"{span_text(rng.start, rng.end)} to group {rng.target} abandoned: "
                          f"{reason}; it stays on group {rng.group}",
                          table_id=rng.table_id, group=rng.group, target=rng.target)
        if rng.target is not None:  # whatever D prepared (an empty importing range)
            try:
                await self.tell(rng.target, "drop_range", **span)
            except errors.RangeKVError as exc:
                self.log.warning("group %d keeps an empty importing range: %s", rng.target,
                                 exc.message)

    async def _copy_and_finish(self, rng: Range, rev: int) -> None:
        src, dst = rng.source, rng.group
        assert src is not None, rng
        span = {"table_id": rng.table_id, "start": rng.start, "end": rng.end}
        began = self.clock()
        sessions = await self.copy_sessions(src, dst, span)
        after: bytes | None = None
        copied = pages = 0
        while True:
            page = await self.tell(src, "export", after=after, limit=self.page_keys, **span)
            items = page.get("items") or []
            if items:
                await self.import_page(dst, rng.table_id, items, last=not page.get("more"))
                copied += len(items)
                pages += 1
                after = bytes(items[-1][0])
            if not page.get("more"):
                break
        await self.tell(dst, "finish_import", **span)
        revision = await self._put(plan.copied(rng), rev)
        await self.record(
            DECISION_MOVE_COPIED,
            f"table {self.table_name(rng.table_id)} range {span_text(rng.start, rng.end)}: "
            f"{copied} records copied from group {src} to group {dst} in {pages} pages, "
            f"{(self.clock() - began) * 1000:.0f} ms, with {sessions} client sessions; group "
            f"{dst} alone serves it",
            table_id=rng.table_id, group=dst, source=src, records=copied, revision=revision)

    async def copy_sessions(self, src: int, dst: int, span: dict[str, Any]) -> int:
        """Step 5's first part: every client session of the source (read after its fence, so
        every write the source applied to the range has its result there) merged into the
        target's, the last page marking the range's sessions copied. Until then the target
        refuses retried writes to the range (``unavailable``): the first attempt of one may
        have been applied by the source, and applied again it would be twice. Idempotent (a
        merge), so a resumed move simply copies them again. Returns the sessions copied."""
        after: bytes | None = None
        copied = 0
        while True:
            page = await self.tell(src, "export_sessions", after=after)
            items = page.get("items") or []
            more = bool(page.get("more"))
            if more and not items:
                raise errors.ProtocolError(f"group {src} answered export_sessions with more "
                                           "to come and nothing in the page")
            await self.tell(dst, "import_sessions", items=items, done=not more, **span)
            copied += len(items)
            if not more:
                return copied
            after = bytes(items[-1][0])

    async def import_page(self, dst: int, table_id: int, items: list[Any], last: bool) -> None:
        """Step 5 for one page: ``items`` copied into the target group (``last``: the page
        that ends the range; a planted bug overrides this)."""
        await self.tell(dst, "import", table_id=table_id, items=items)

    async def _cleanup(self, rng: Range, rev: int) -> None:
        src = rng.source
        assert src is not None, rng
        await self.tell(src, "drop_range", table_id=rng.table_id, start=rng.start, end=rng.end)
        await self._put(plan.cleaned(rng), rev)
        self.log.info("move of table %d range [%r, %r) done: group %d dropped its copy",
                      rng.table_id, rng.start, rng.end, src)
