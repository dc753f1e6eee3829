"""Which meta acts: the election of the active meta through etcd, and the term it serves.

Rules (invariants 1 and 4 of ``service.py``):

* a meta campaigns by creating ``/rangekv/meta/active`` (a txn that requires version 0) under
  a fresh lease; if another meta holds it, this one stands by, answers every request with
  ``not_active{active_hint}``, and campaigns again as soon as its view shows the key gone (or
  every ``standby_poll_ms``);
* once it wins, it acts only after its view has reached the revision at which it won (the
  key's create revision, which also fences every write of the term: ``store.py``);
* it stops acting as soon as its lease may have run out: at the time it *sent* its last
  successful renewal plus the TTL, less a safety margin, whether or not etcd said so; and as
  soon as its view shows the key is no longer the one it created (``perform.py``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rangekv import errors
from rangekv.metadata.etcd import LeaseExpired
from rangekv.metadata.view import Backoff, wait_event

if TYPE_CHECKING:
    from rangekv.metadata.service import MetaService

LEASE_REVOKE_TIMEOUT_S = 1.0
KEEPALIVE_RETRY_S = 0.05  # after a renewal every endpoint refused


@dataclass
class Term:
    """One period of being active, from winning the election key to losing its lease."""

    lease_id: int
    fence: int  # create revision of the active key
    since_s: float  # when this meta started acting
    deadline_s: float  # acting past this could overlap a successor; renewals push it out


class Election:
    """Campaigns, stands by, and serves terms (see the module docstring); ``run`` until the
    process stops."""

    def __init__(self, meta: MetaService) -> None:
        self.meta = meta
        self.held_lease: int | None = None  # the lease of the active key while we hold it

    async def revoke_quietly(self, lease_id: int) -> None:
        try:
            async with asyncio.timeout(LEASE_REVOKE_TIMEOUT_S):
                await self.meta.etcd.lease_revoke(lease_id)
        except (errors.RangeKVError, TimeoutError) as exc:
            self.meta.log.info("could not revoke lease %x (it will expire): %s", lease_id, exc)

    async def run(self) -> None:
        meta = self.meta
        cfg = meta.config
        backoff = Backoff(0.1, 2.0)
        while not meta.stopping:
            sent_s = meta.clock()
            try:
                lease_id = await meta.etcd.lease_grant(cfg.lease_ttl_s)
            except errors.RangeKVError as exc:
                meta.say("election", logging.WARNING,
                         "cannot campaign for the active role, etcd: %s", exc.message)
                await asyncio.sleep(backoff.next())
                continue
            try:
                won, revision, holder = await meta.store.try_become_active(
                    cfg.id, meta.address, lease_id)
            except errors.RangeKVError as exc:
                await self.revoke_quietly(lease_id)
                meta.say("election", logging.WARNING,
                         "cannot campaign for the active role, etcd: %s", exc.message)
                await asyncio.sleep(backoff.next())
                continue
            meta.clear("election")
            if not won:
                await self.revoke_quietly(lease_id)
                hint = holder.get("address") if holder else None
                if hint != meta.active_hint:
                    meta.log.info("standing by: meta %s at %s is active",
                                  holder.get("id") if holder else "?", hint)
                meta.active_hint = hint
                await self._wait_for_vacancy(cfg.standby_poll_ms / 1000)
                continue
            backoff.reset()
            self.held_lease = lease_id
            ttl_s = cfg.lease_ttl_s * (1 - cfg.lease_safety_fraction)
            term = Term(lease_id, revision, since_s=sent_s, deadline_s=sent_s + ttl_s)
            reason = await self._serve(term)
            meta.log.warning("stepped down from the active role: %s", reason)
            self.held_lease = None
            await self.revoke_quietly(lease_id)
            await asyncio.sleep(backoff.next())

    async def _wait_for_vacancy(self, timeout_s: float) -> None:
        """Return when the view shows no active meta, or after ``timeout_s``."""
        meta = self.meta
        follower = meta.follower
        deadline = meta.clock() + timeout_s
        await asyncio.sleep(0.02)  # never spin, even when the view lags the txn that lost
        while not follower.loaded or follower.view.active_meta is not None:
            changed = follower.changed
            remaining = deadline - meta.clock()
            if remaining <= 0:
                return
            if not await wait_event(changed, remaining):
                return

    async def _serve(self, term: Term) -> str:
        """Act as the active meta for ``term``; returns why the term ended."""
        meta = self.meta
        cfg = meta.config
        keepalive = meta.spawn(self._keepalive(term), "keepalive")
        control: asyncio.Task[Any] | None = None
        try:
            caught_up = await meta.follower.catch_up(term.fence, cfg.view_catch_up_ms / 1000)
            if keepalive.done():
                return str(keepalive.result())
            if not caught_up:
                return (f"the metadata view did not reach revision {term.fence} within "
                        f"{cfg.view_catch_up_ms} ms")
            meta.store.fence_revision = term.fence
            term.since_s = meta.clock()
            meta.term = term
            meta.active_hint = meta.address
            meta.log.info("active (lease %x, fence revision %d): serving; judging leaders after "
                          "%d ms of heartbeats", term.lease_id, term.fence,
                          cfg.heartbeat_timeout_ms)
            control = meta.spawn(meta.control.run(term), "control")
            await asyncio.wait({keepalive, control}, return_when=asyncio.FIRST_COMPLETED)
            ended = keepalive if keepalive.done() else control
            if ended.exception() is not None:  # already logged and made fatal by task_done
                return f"{ended.get_name()} failed"
            return str(ended.result())
        finally:
            if meta.term is term:
                meta.term = None
            for task in (keepalive, control):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (keepalive, control) if t), return_exceptions=True)

    async def _keepalive(self, term: Term) -> str:
        """Renew the lease until it is lost; returns why it was lost."""
        meta = self.meta
        cfg = meta.config
        interval_s = cfg.keepalive_interval_ms / 1000
        failed = False
        while not meta.stopping:
            if not failed:  # after a failed attempt, try again at once (the next endpoint)
                await asyncio.sleep(max(0.0, min(interval_s, term.deadline_s - meta.clock())))
            failed = True
            sent_s = meta.clock()
            if sent_s >= term.deadline_s:
                return "the lease may have expired: no renewal succeeded in time"
            try:
                # one attempt gets one interval: an endpoint that a partition cut off (its TCP
                # connection silently dead) must not take the whole lease with it; the etcd
                # client tries another endpoint first next time
                async with asyncio.timeout(min(interval_s, term.deadline_s - sent_s)):
                    ttl_s = await meta.etcd.lease_keepalive(term.lease_id)
            except LeaseExpired:
                return f"lease {term.lease_id:x} expired in etcd"
            except TimeoutError:
                continue  # the loop head decides whether the deadline has passed
            except errors.RangeKVError as exc:
                meta.say("keepalive", logging.WARNING, "lease renewal failed (%d ms left): %s",
                         round((term.deadline_s - meta.clock()) * 1000), exc.message)
                # every endpoint refused at once: a short pause, not a busy loop
                await asyncio.sleep(min(KEEPALIVE_RETRY_S,
                                        max(0.0, term.deadline_s - meta.clock())))
                continue
            failed = False
            meta.clear("keepalive")
            new_deadline = sent_s + ttl_s * (1 - cfg.lease_safety_fraction)
            term.deadline_s = max(term.deadline_s, new_deadline)
        return "the process is stopping"
