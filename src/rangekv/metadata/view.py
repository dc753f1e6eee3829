"""The meta's view of etcd: a ``model.ClusterView`` (plus each key's mod revision, for the
compare-and-swaps decided on it) kept current for the life of the process.

One consistent prefix read of ``/rangekv/``, then a watch from the next revision; when the
watch is lost (compaction, an etcd restart) it reloads, and when the view fails to reach a
revision this meta just wrote within ``view_catch_up_ms`` the watch is presumed stuck and
restarted (``catch_up``). Revisions only grow: a reload that would take the view back is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from rangekv import errors, model
from rangekv.metadata.kv import WatchLost
from rangekv.metadata.store import apply_events
from rangekv.model import ClusterView

if TYPE_CHECKING:
    from rangekv.metadata.service import MetaService


class Backoff:
    """Jittered exponential backoff between ``first_s`` and ``max_s``."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._next_s = first_s

    def next(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next_s = self.first_s


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; False on timeout.

    (``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter can swallow a
    cancellation that arrives just as the awaited thing completes, and a loop around it then
    never stops.)
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False


class ViewFollower:
    """Keeps ``view`` and ``revs`` current (see the module docstring); ``run`` until cancelled."""

    def __init__(self, meta: MetaService) -> None:
        self.meta = meta
        self.view = ClusterView()
        self.revs: dict[bytes, int] = {}  # key -> mod_revision, for CAS on what the view shows
        self.loaded = False
        self.changed = asyncio.Event()  # set (and replaced) whenever the view moves on
        self.on_change: list[Callable[[], None]] = []
        self._watcher: asyncio.Future[None] | None = None
        self._kick_reason = ""

    def _notify(self) -> None:
        self.changed.set()
        for callback in self.on_change:
            callback()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        meta = self.meta
        backoff = Backoff(0.05, 2.0)
        while not meta.stopping:
            try:
                view, revs = await meta.store.load()
            except errors.RangeKVError as exc:
                meta.say("view-load", logging.WARNING,
                         "cannot read metadata from etcd, retrying: %s", exc.message)
                await asyncio.sleep(backoff.next())
                continue
            meta.clear("view-load")
            assert view.revision >= self.view.revision or not self.loaded, (
                "etcd revisions went backwards", view.revision, self.view.revision)
            self.view, self.revs, self.loaded = view, revs, True
            self._notify()
            meta.log.info("metadata loaded at revision %d: %d tables, %d groups, %d nodes",
                          view.revision, len(view.tables), len(view.groups), len(view.nodes))
            # The watch runs as its own task so that kick can restart it (a stream that
            # hangs without breaking would otherwise freeze the view for good).
            watcher = asyncio.ensure_future(self._follow(view, revs, backoff))
            self._watcher = watcher
            try:
                await asyncio.wait({watcher})
            finally:
                self._watcher = None
                if not watcher.done():
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
            if watcher.cancelled():
                meta.log.warning("metadata watch restarted: %s", self._kick_reason)
            else:
                failure = watcher.exception()
                if isinstance(failure, WatchLost):
                    meta.log.warning("metadata watch lost, reloading: %s", failure.message)
                elif isinstance(failure, errors.RangeKVError):
                    meta.say("view-watch", logging.WARNING,
                             "cannot watch metadata in etcd, retrying: %s", failure.message)
                elif failure is not None:
                    raise failure
            await asyncio.sleep(backoff.next())

    async def _follow(self, view: ClusterView, revs: dict[bytes, int], backoff: Backoff) -> None:
        """Apply watch events to ``view`` until the watch fails (it always ends by raising)."""
        watch = self.meta.etcd.watch_prefix(model.PREFIX, view.revision + 1)
        async with contextlib.aclosing(watch) as batches:
            async for batch in batches:
                apply_events(view, revs, batch)
                self._notify()
                self.meta.clear("view-watch")
                backoff.reset()
        raise WatchLost("the watch ended")

    def kick(self, why: str) -> None:
        """Restart the metadata watch from a fresh read (it is stuck or behind)."""
        if self._watcher is not None and not self._watcher.done():
            self._kick_reason = why
            self._watcher.cancel()

    async def catch_up(self, revision: int, timeout_s: float) -> bool:
        """Wait for the view to reach ``revision``; restart the watch if it does not in time."""
        if await self.wait(revision, timeout_s):
            return True
        self.kick(f"the view stayed below revision {revision} for {timeout_s:g} s")
        return False

    async def wait(self, revision: int, timeout_s: float) -> bool:
        """Wait until the view reflects ``revision``; False on timeout."""
        clock = self.meta.clock
        deadline = clock() + timeout_s
        while not self.loaded or self.view.revision < revision:
            changed = self.changed
            remaining = deadline - clock()
            if remaining <= 0:
                return False
            if not await wait_event(changed, remaining):
                return False
        return True
