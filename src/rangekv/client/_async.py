"""The asyncio client: :class:`AsyncClient`. Its methods are ``_api.Api``'s, shared with the
sync client (each returns a coroutine here); this module holds the driver and ``scan``.

    async with rangekv.AsyncClient() as db:   # rangekv://127.0.0.1:8401, the native protocol
        await db.create_table("Stocks")
        seq = await db.put("Stocks", "B", "100")
        async for item in db.scan("Stocks"):
            ...

Every method raises only :mod:`rangekv.errors` exceptions. See ``_common`` for the retry rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from rangekv import errors
from rangekv.client import _common, _native
from rangekv.client._api import Api
from rangekv.client._common import Backoff, Call, Failure, Item, Sending, Session


class AsyncClient(Api):
    """The same API as :class:`rangekv.Client`, with coroutines and an async ``scan``.
    ``connections``: native connections per endpoint, each carrying any number of requests
    at once."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = _common.DEFAULT_ENDPOINT,
        *,
        timeout_s: float = _common.TIMEOUT_S_DEFAULT,
        retries: int = _common.RETRIES_DEFAULT,
        connect_timeout_s: float = _common.CONNECT_TIMEOUT_S_DEFAULT,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        sessions: bool = True,
        connections: int = _native.CONNECTIONS_DEFAULT,
    ) -> None:
        _common.check_client_config(timeout_s, connect_timeout_s, retries)
        self.endpoints = _common.normalize_endpoints(endpoints)
        self.native = _common.is_native(self.endpoints)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self._clock: Callable[[], float] = time.monotonic  # (a test's clock)
        self._backoff = backoff or Backoff()
        self._current = 0
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.session: Session | None = Session() if sessions else None
        self._native = _native.AsyncNative(connections) if self.native else None
        self._http = None if self.native else httpx.AsyncClient(
            timeout=_common.http_timeout(timeout_s, connect_timeout_s),
            transport=transport,
            headers={"User-Agent": _common.USER_AGENT, **(headers or {})},
            follow_redirects=False,
            trust_env=False,  # a database client does not go through HTTP_PROXY
        )

    @property
    def endpoint(self) -> str:
        """The endpoint the next request goes to."""
        return self.endpoints[self._current]

    async def scan(
        self,
        table: str,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        page_size: int = _common.SCAN_PAGE_SIZE_DEFAULT,
    ) -> AsyncIterator[Item]:
        """Every item ``start <= key < end`` in key order, fetched a page at a time; the next
        page is asked for while this one is being read (each page is a consistent read; the
        scan as a whole is not a snapshot)."""
        page = await self.list(table, start=start, end=end, limit=page_size)
        after: str | None = None
        while True:
            nxt = None
            if page.next is not None:
                if page.next == after:
                    raise errors.ProtocolError("list returned the same cursor twice")
                after = page.next
                nxt = asyncio.ensure_future(
                    self.list(table, start=start, end=end, limit=page_size, after=after))
            try:
                for item in page.items:
                    yield item
            except BaseException:
                if nxt is not None:
                    nxt.cancel()  # the caller stopped early (or failed)
                raise
            if nxt is None:
                return
            page = await nxt

    # --- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._native is not None:
            await self._native.close()

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"AsyncClient({self.endpoints!r}, timeout_s={self.timeout_s}, retries={self.retries})"
        )

    # --- the driver ---------------------------------------------------------------------------

    async def _then(self, result: Awaitable[Any], fn: Callable[[Any], Any]) -> Any:
        return fn(await result)

    async def _send(self, call: Call) -> Any:
        sending = Sending(self, call)
        try:
            while True:
                outcome = await self._attempt(sending)
                if not isinstance(outcome, Failure):
                    return outcome
                delay_s = sending.after(outcome)
                if delay_s > 0:
                    await self._sleep(delay_s)
        finally:
            sending.end()

    async def _attempt(self, sending: Sending) -> Any:
        call, endpoint, retrier = sending.call, sending.endpoint, sending.retrier
        if self._native is not None:
            return await self._native.attempt(endpoint, call, sending.native_fields(),
                                              retrier.remaining_s(), self.connect_timeout_s)
        assert self._http is not None
        try:
            resp = await self._http.request(
                call.method, endpoint + call.path, headers=sending.http_headers(),
                content=call.content, timeout=retrier.attempt_timeout(),
            )
        except httpx.TransportError as exc:
            return _common.failure_of_exception(exc, call, endpoint)
        return _common.settle(call, resp)
