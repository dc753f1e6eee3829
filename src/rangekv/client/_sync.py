"""The synchronous client. Its async twin is ``_async.py``; keep the two in step.

    with rangekv.Client("http://127.0.0.1:8400") as db:
        db.create_table("Stocks")
        seq = db.put("Stocks", "B", "100")
        item = db.get("Stocks", "B")          # Item(key=b"B", value=b"100", seq=seq) or None
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

from rangekv import errors, limits
from rangekv.client import _common
from rangekv.client._common import Backoff, Call, Failure, Item, Page, Retrier


class Client:
    """A rangekv client over HTTP: thread-safe, keeps connections alive, times out by default.

    ``endpoints``: one URL, a comma-separated list, or a sequence; used in order, failing over
    to the next on connection errors. ``timeout_s`` bounds each call, its retries and the waits
    between them included (``connect_timeout_s`` bounds the connection part of an attempt);
    ``retries`` bounds the extra rounds after a retryable failure.
    ``transport`` is the test seam (``httpx.MockTransport``).
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
    ) -> None:
        _common.check_client_config(timeout_s, connect_timeout_s, retries)
        self.endpoints = _common.normalize_endpoints(endpoints)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self._clock: Callable[[], float] = time.monotonic  # (a test's clock)
        self._backoff = backoff or Backoff()
        self._current = 0
        self._sleep: Callable[[float], None] = time.sleep
        self._http = httpx.Client(
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

    # --- tables -------------------------------------------------------------------------------

    def create_table(self, name: str) -> None:
        self._send(_common.call_create_table(name))

    def drop_table(self, name: str) -> None:
        self._send(_common.call_drop_table(name))

    def ranges(self, table: str) -> list[dict[str, Any]]:
        """The table's ranges in key order: start, end (None: unbounded), group, version."""
        result: list[dict[str, Any]] = self._send(_common.call_ranges(table))
        return result

    def split(self, table: str, at: str | bytes,
              to: int | str | None = None) -> list[dict[str, Any]]:
        """Cut the range of ``table`` holding ``at`` in two at ``at`` (both halves on the same
        group; with ``to``, a group id or "auto", the upper part then moves there, live); the
        table's ranges afterwards. Idempotent."""
        result: list[dict[str, Any]] = self._send(_common.call_split(table, at, to))
        return result

    def move(self, table: str, at: str | bytes, to: int) -> dict[str, Any]:
        """Move the range of ``table`` holding ``at`` to group ``to``, live (docs/internals.md,
        "Moving a range"): ``{"ranges": [...], "done": bool}``; not done means the copy goes
        on in the background (watch :meth:`ranges`)."""
        result: dict[str, Any] = self._send(_common.call_move(table, at, to))
        return result

    def tables(self) -> list[str]:
        result: list[str] = self._send(_common.call_tables())
        return result

    # --- keys ---------------------------------------------------------------------------------

    def put(
        self,
        table: str,
        key: str | bytes,
        value: str | bytes,
        *,
        if_seq: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """Store ``value`` under ``key``; returns the seq (32 hex digits) of the new version.

        ``if_seq``: only if the key's current seq is this one; ``if_absent``: only if the key
        does not exist. Otherwise :class:`~rangekv.errors.PreconditionFailed`.
        """
        seq: str = self._send(
            _common.call_put(table, key, value, if_seq=if_seq, if_absent=if_absent)
        )
        return seq

    def get(self, table: str, key: str | bytes) -> Item | None:
        """The key's current version, or None if it does not exist."""
        item: Item | None = self._send(_common.call_get(table, key))
        return item

    def exists(self, table: str, key: str | bytes) -> bool:
        """Whether the key exists now (a linearizable read, as :meth:`get`)."""
        return (self.get(table, key)) is not None

    def delete(self, table: str, key: str | bytes, *, if_seq: str | None = None) -> bool:
        """Delete the key; False if it did not exist."""
        deleted: bool = self._send(_common.call_delete(table, key, if_seq=if_seq))
        return deleted

    def list(
        self,
        table: str,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        limit: int = limits.LIST_LIMIT_DEFAULT,
        after: str | None = None,
    ) -> Page:
        """One page of keys ``start <= key < end`` in key order; ``after`` is ``Page.next``."""
        page: Page = self._send(
            _common.call_list(table, start=start, end=end, limit=limit, after=after)
        )
        return page

    def scan(
        self,
        table: str,
        *,
        start: str | bytes | None = None,
        end: str | bytes | None = None,
        page_size: int = _common.SCAN_PAGE_SIZE_DEFAULT,
    ) -> Iterator[Item]:
        """Every item ``start <= key < end`` in key order, fetched a page at a time."""
        after: str | None = None
        while True:
            page = self.list(table, start=start, end=end, limit=page_size, after=after)
            yield from page.items
            if page.next is None:
                return
            if page.next == after:
                raise errors.ProtocolError("list returned the same cursor twice")
            after = page.next

    def cluster(self) -> dict[str, Any]:
        """The topology: groups, their leaders and members, ranges, nodes, tables."""
        info: dict[str, Any] = self._send(_common.call_cluster())
        return info

    def cluster_status(self, table: str | None = None) -> dict[str, Any]:
        """The live status (``GET /v1/cluster/status``): the topology joined with what each
        node reports now: roles, log indexes, lag, each range's size and load. ``table``: only
        that table's ranges."""
        status: dict[str, Any] = self._send(_common.call_cluster_status(table))
        return status

    def remove_node(self, node_id: int) -> dict[str, Any]:
        """Remove the record of a dead or flagged node that takes part in no group:
        ``{"node": the record removed, "live": bool}``. Raises ``NodeInUse`` while the node is
        in a group, or live and not flagged; ``NodeNotFound`` if there is no such node."""
        removed: dict[str, Any] = self._send(_common.call_remove_node(node_id))
        return removed

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

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

    def _send(self, call: Call) -> Any:
        retrier = Retrier(
            retries=self.retries,
            endpoints_n=len(self.endpoints),
            backoff=self._backoff,
            write=call.write,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            clock=self._clock,
        )
        while True:
            endpoint = self.endpoints[self._current]
            try:
                resp = self._http.request(
                    call.method, endpoint + call.path, headers=call.headers, content=call.content,
                    timeout=retrier.attempt_timeout(),
                )
            except httpx.TransportError as exc:
                outcome: Any = _common.failure_of_exception(exc, call, endpoint)
            else:
                outcome = _common.settle(call, resp)
            if not isinstance(outcome, Failure):
                return outcome
            if outcome.failover:
                self._current = (self._current + 1) % len(self.endpoints)
            delay_s = retrier.next_delay_s(outcome)
            if delay_s is None:
                raise outcome.error from outcome.cause
            if delay_s > 0:
                self._sleep(delay_s)
