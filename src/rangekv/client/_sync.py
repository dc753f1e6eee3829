"""The synchronous client: :class:`Client`. Its methods are ``_api.Api``'s, shared with the
async client; this module holds the driver (how a call is sent and retried) and ``scan``.

    with rangekv.Client() as db:              # rangekv://127.0.0.1:8401, the native protocol
        db.create_table("Stocks")
        seq = db.put("Stocks", "B", "100")
        item = db.get("Stocks", "B")          # Item(key=b"B", value=b"100", seq=seq) or None
        db.put_many("Stocks", {"A": "1", "C": "3"})
        for item in db.scan("Stocks"):        # every key in order, a page at a time
            ...

Every method raises only :mod:`rangekv.errors` exceptions. See ``_common`` for the retry rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from rangekv import errors
from rangekv.client import _common, _native
from rangekv.client._api import Api
from rangekv.client._common import Backoff, Call, Failure, Item, Sending, Session


class Client(Api):
    """A rangekv client: thread-safe, keeps connections alive, times out by default.

    ``endpoints``: one URL, a comma-separated list, or a sequence, all ``rangekv://HOST:PORT``
    (the native protocol: HAProxy's native port, or rms' own; the default) or all
    ``http(s)://`` (the HTTP API); used in order, failing over to the next on connection
    errors. ``timeout_s`` bounds each call, its retries and the waits between them included
    (``connect_timeout_s`` bounds the connection part of an attempt); ``retries`` bounds the
    extra rounds after a retryable failure. Writes carry a client session (``Session``):
    one whose outcome is unknown is retried and applied at most once, so ``OutcomeUnknown``
    reaches you only when the deadline ran out. ``transport`` is the test seam of the HTTP
    protocol (``httpx.MockTransport``).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = _common.DEFAULT_ENDPOINT,
        *,
        timeout_s: float = _common.TIMEOUT_S_DEFAULT,
        retries: int = _common.RETRIES_DEFAULT,
        connect_timeout_s: float = _common.CONNECT_TIMEOUT_S_DEFAULT,
        backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        sessions: bool = True,
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
        self._sleep: Callable[[float], None] = time.sleep
        self.session: Session | None = Session() if sessions else None
        self._native = _native.SyncNative() if self.native else None
        self._http = None if self.native else httpx.Client(
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

    def scan(
        self,
        table: str,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        page_size: int = _common.SCAN_PAGE_SIZE_DEFAULT,
    ) -> Iterator[Item]:
        """Every item ``start <= key < end`` in key order, fetched a page at a time.
        Each page is a consistent read; the scan as a whole is not a snapshot."""
        after: str | None = None
        while True:
            page = self.list(table, start=start, end=end, limit=page_size, after=after)
            yield from page.items
            if page.next is None:
                return
            if page.next == after:
                raise errors.ProtocolError("list returned the same cursor twice")
            after = page.next

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._native is not None:
            self._native.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoints!r}, timeout_s={self.timeout_s}, retries={self.retries})"

    # --- the driver ---------------------------------------------------------------------------

    def _then(self, result: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(result)

    def _send(self, call: Call) -> Any:
        sending = Sending(self, call)
        try:
            while True:
                outcome = self._attempt(sending)
                if not isinstance(outcome, Failure):
                    return outcome
                delay_s = sending.after(outcome)
                if delay_s > 0:
                    self._sleep(delay_s)
        finally:
            sending.end()

    def _attempt(self, sending: Sending) -> Any:
        call, endpoint, retrier = sending.call, sending.endpoint, sending.retrier
        if self._native is not None:
            return self._native.attempt(endpoint, call, sending.native_fields(),
                                        retrier.remaining_s(), self.connect_timeout_s)
        assert self._http is not None
        try:
            resp = self._http.request(
                call.method, endpoint + call.path, headers=sending.http_headers(),
                content=call.content, timeout=retrier.attempt_timeout(),
            )
        except httpx.TransportError as exc:
            return _common.failure_of_exception(exc, call, endpoint)
        return _common.settle(call, resp)
