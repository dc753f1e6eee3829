"""An asyncio etcd v3 client over etcd's JSON gateway (``POST /v3/...``), built on aiohttp.

Theory of operation
-------------------
etcd serves its v3 API as JSON on the client URL: every unary call is one ``POST`` with a JSON
body, keys and values are base64, int64 fields come back as strings and fields equal to their
zero value are left out (``"succeeded"`` is missing when a txn failed, ``"value"`` when empty).
Streaming calls (``/v3/watch``) answer with one JSON object per line, each wrapped in
``{"result": ...}`` or ``{"error": ...}``.

Invariants and guarantees
-------------------------
* **No silent retry of a write that may have happened.** A request that surely never reached
  etcd (connection refused, DNS failure, ``etcdserver: no leader``) is tried on the next
  endpoint. A read that timed out or lost its connection is also tried on the next endpoint. A
  write (put, delete, txn with a write in it) that timed out or lost its connection after being
  sent raises :class:`rangekv.errors.Timeout` / :class:`rangekv.errors.OutcomeUnknown`: only the
  caller knows whether repeating it is safe (our callers use compare-and-swap, so they re-read).
* **No endpoint answered** → :class:`rangekv.errors.Unavailable` naming every endpoint tried.
* **Timeouts are on by default** (``timeout_s`` per attempt, per endpoint).
* ``get_prefix`` is one consistent snapshot: every page after the first is read at the revision
  of the first page.
* ``watch_prefix`` yields event batches in revision order, each batch holding whole revisions
  (etcd never splits one revision's events across responses unless asked to fragment). When the
  stream ends, breaks or etcd cancels it (compaction), it raises :class:`WatchLost` (or its
  subclass :class:`WatchCompacted`); the caller reloads with a fresh ``get_prefix``. It never
  resumes on its own, so a caller can never miss events without being told.
* etcd's gRPC status codes are translated at this boundary into the rangekv error tree; nothing
  above this module sees aiohttp or gRPC errors.

The client is not thread-safe; use it from one event loop, and ``await close()`` it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from rangekv import errors, wire
from rangekv.metadata.kv import (  # noqa: F401  (the vocabulary, also named here)
    KV,
    Compare,
    EtcdError,
    Event,
    LeaseExpired,
    Op,
    TxnResult,
    WatchCompacted,
    WatchLost,
    _b64,
    prefix_end,
)

log = logging.getLogger("rangekv.etcd")

# gRPC status codes that etcd reports in the gateway's error bodies.
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_FAILED_PRECONDITION = 9
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14

PAGE_KVS_MAX = 1000  # kvs per range request in get_prefix
WATCH_LINE_BYTES_MAX = 64 * 1024 * 1024  # one watch response; etcd caps requests far below this
GET_PREFIX_ATTEMPTS_MAX = 3  # restarts of a paginated read whose revision got compacted


# Failures that prove a request never reached etcd (safe to send elsewhere, even a write).
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError),  # aiohttp >= 3.10
)


class _Compacted(errors.Unavailable):
    """A read at a pinned revision found that revision compacted (internal to get_prefix)."""


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def _kv(d: dict[str, Any]) -> KV:
    return KV(
        key=_unb64(d.get("key")),
        value=_unb64(d.get("value")),
        create_revision=_int(d.get("create_revision")),
        mod_revision=_int(d.get("mod_revision")),
        version=_int(d.get("version")),
        lease=_int(d.get("lease")),
    )


def _revision(data: dict[str, Any]) -> int:
    return _int((data.get("header") or {}).get("revision"))


def _error_from_body(data: dict[str, Any], what: str) -> errors.RangeKVError:
    """Translate a gateway error body ``{"error", "message", "code"}`` into the error tree."""
    code = _int(data.get("code"))
    message = str(data.get("message") or data.get("error") or "unknown etcd error")
    text = f"etcd {what}: {message}"
    if code in (GRPC_UNAVAILABLE, GRPC_RESOURCE_EXHAUSTED, GRPC_DEADLINE_EXCEEDED):
        return errors.Unavailable(text, grpc_code=code)
    if code == GRPC_OUT_OF_RANGE and "compacted" in message:
        return _Compacted(text, grpc_code=code)
    if code == GRPC_NOT_FOUND and "lease" in message:
        return LeaseExpired(text, grpc_code=code)
    return EtcdError(text, grpc_code=code)


class EtcdClient:
    """Talks to one etcd cluster through any of ``endpoints`` (``http://host:port``).

    The endpoint that answered last is tried first; on a connection failure the next one is
    tried, each at most once per call.
    """

    def __init__(
        self,
        endpoints: list[str],
        timeout_s: float = 5.0,
        page_kvs_max: int = PAGE_KVS_MAX,
    ) -> None:
        cleaned = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not cleaned:
            raise ValueError("at least one etcd endpoint is required")
        for e in cleaned:
            if not e.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint must be an http(s) URL, not {e!r}")
        assert timeout_s > 0 and page_kvs_max > 0
        self.endpoints = cleaned
        self.timeout_s = timeout_s
        self.page_kvs_max = page_kvs_max
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise errors.Unavailable("etcd client is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                # keepalive + user timeout: a watch on a partitioned member breaks in seconds
                connector=aiohttp.TCPConnector(limit=64, socket_factory=wire.tuned_socket),
            )
        return self._session

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST ``body`` to ``path``; fail over per the rules in the module docstring."""
        session = self._http()
        tried: list[str] = []
        for idx in self._order():
            endpoint = self.endpoints[idx]
            try:
                async with session.post(endpoint + path, json=body) as resp:
                    raw = await resp.read()
                    status = resp.status
            except asyncio.CancelledError:
                # the caller gave up waiting on this endpoint (a probe's deadline): start the
                # next call with the next one rather than wait on this one again
                self._current = (idx + 1) % len(self.endpoints)
                raise
            except _NOT_SENT as exc:  # never reached etcd
                tried.append(f"{endpoint}: {type(exc).__name__} {exc}".strip())
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:  # may have reached etcd
                reason = f"{endpoint}: {type(exc).__name__} {exc}".strip()
                if idempotent:
                    tried.append(reason)
                    continue
                if isinstance(exc, TimeoutError):
                    raise errors.Timeout(
                        f"etcd {path} got no answer within {self.timeout_s}s; it may have "
                        f"taken effect ({reason})",
                        endpoint=endpoint,
                    ) from None
                raise errors.OutcomeUnknown(
                    f"etcd {path} lost its connection; it may have taken effect ({reason})",
                    endpoint=endpoint,
                ) from None
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {"message": raw[:200].decode("utf-8", "replace")}
            if not isinstance(data, dict):
                raise EtcdError(f"etcd {path}: unexpected answer {raw[:200]!r}")
            if status == 200 and "error" not in data:
                self._current = idx
                return data
            err = _error_from_body(data, path)
            if isinstance(err, errors.Unavailable) and not isinstance(
                err, (LeaseExpired, _Compacted)
            ):
                # "no leader" was never proposed; other unavailable answers may have been.
                if idempotent or "no leader" in err.message:
                    tried.append(f"{endpoint}: {err.message}")
                    continue
                raise errors.OutcomeUnknown(err.message, endpoint=endpoint)
            raise err
        raise errors.Unavailable(
            f"no etcd endpoint answered {path}: " + "; ".join(tried), endpoints=self.endpoints
        )

    # -- key-value --------------------------------------------------------------------------

    async def get(self, key: bytes) -> KV | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)}, idempotent=True)
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[list[KV], int]:
        """Every key starting with ``prefix``, in key order, and the revision they are as of."""
        for _ in range(GET_PREFIX_ATTEMPTS_MAX):
            try:
                return await self._get_prefix_once(prefix)
            except _Compacted as exc:
                log.info("prefix read restarted: its revision was compacted (%s)", exc.message)
        raise errors.Unavailable(
            f"could not read {prefix!r} consistently: compacted {GET_PREFIX_ATTEMPTS_MAX} times"
        )

    async def _get_prefix_once(self, prefix: bytes) -> tuple[list[KV], int]:
        end = _b64(prefix_end(prefix))
        start = prefix
        revision = 0
        out: list[KV] = []
        while True:
            body: dict[str, Any] = {
                "key": _b64(start),
                "range_end": end,
                "limit": str(self.page_kvs_max),
            }
            if revision:
                body["revision"] = str(revision)
            data = await self._call("/v3/kv/range", body, idempotent=True)
            if not revision:
                revision = _revision(data)
                if revision <= 0:
                    raise errors.Unavailable(f"etcd answered a read without a revision: "
                                             f"{str(data)[:200]}")
            page = [_kv(d) for d in data.get("kvs") or []]
            out.extend(page)
            if not data.get("more") or not page:
                return out, revision
            start = page[-1].key + b"\x00"

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Store ``value``; returns the revision of the write."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(int(lease))
        return _revision(await self._call("/v3/kv/put", body, idempotent=False))

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns the revision after the delete."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return _revision(await self._call("/v3/kv/deleterange", body, idempotent=False))

    async def txn(
        self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> TxnResult:
        """If every compare holds, run ``success``, else ``failure``; all atomically."""
        failure = failure or []
        body = {
            "compare": [c.body for c in compares],
            "success": [o.body for o in success],
            "failure": [o.body for o in failure],
        }
        read_only = all(o.kind == "get" for o in success + failure)
        data = await self._call("/v3/kv/txn", body, idempotent=read_only)
        succeeded = bool(data.get("succeeded", False))
        ran = success if succeeded else failure
        raw = data.get("responses") or []
        if len(raw) != len(ran):
            raise EtcdError(f"etcd txn answered {len(raw)} responses for {len(ran)} ops")
        responses: list[Any] = []
        for op, resp in zip(ran, raw, strict=True):
            if op.kind == "get":
                kvs = (resp.get("response_range") or {}).get("kvs") or []
                responses.append([_kv(d) for d in kvs])
            elif op.kind == "delete":
                responses.append(_int((resp.get("response_delete_range") or {}).get("deleted")))
            else:
                responses.append(None)
        return TxnResult(succeeded, _revision(data), responses)

    async def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (used by tests and maintenance)."""
        await self._call("/v3/kv/compaction", {"revision": str(int(revision))}, idempotent=True)

    # -- watch ------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncGenerator[list[Event], None]:
        """Yield batches of events on keys under ``prefix`` from ``start_revision`` on.

        Raises WatchCompacted if ``start_revision`` is compacted, WatchLost when the stream ends
        or breaks, Unavailable if no endpoint accepts the watch. Close it with
        ``contextlib.aclosing`` (or cancel the task iterating it) to release the connection.
        """
        assert start_revision > 0, start_revision
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": str(int(start_revision)),
            }
        }
        resp = await self._open_stream("/v3/watch", body)
        lines = _json_lines(resp, WATCH_LINE_BYTES_MAX)
        try:
            async for message in lines:
                if "error" in message:
                    err = message["error"]
                    detail = err.get("message", err) if isinstance(err, dict) else err
                    raise WatchLost(f"etcd watch failed: {detail}")
                result = message.get("result") or {}
                if result.get("canceled"):
                    compact = _int(result.get("compact_revision"))
                    if compact:
                        raise WatchCompacted(
                            f"watch from revision {start_revision} is compacted "
                            f"(oldest is {compact})",
                            compact_revision=compact,
                        )
                    reason = result.get("cancel_reason") or "no reason given"
                    raise WatchLost(f"etcd canceled the watch: {reason}")
                events = [
                    Event(
                        "delete" if e.get("type") == "DELETE" else "put",
                        _kv(e.get("kv") or {}),
                    )
                    for e in result.get("events") or []
                ]
                if events:
                    yield events
            raise WatchLost("etcd closed the watch stream")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise WatchLost(f"watch stream broke: {type(exc).__name__} {exc}".strip()) from None
        finally:
            await lines.aclose()
            resp.close()

    async def _open_stream(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        session = self._http()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s)
        tried: list[str] = []
        for idx in self._order():
            endpoint = self.endpoints[idx]
            try:
                # hasleader: etcd cancels the stream if its member loses its leader, instead
                # of leaving a watch that silently sees nothing (what clientv3's
                # WithRequireLeader does; the gateway passes Grpc-Metadata-* as gRPC metadata)
                resp = await session.post(endpoint + path, json=body, timeout=timeout,
                                          headers={"Grpc-Metadata-hasleader": "true"})
            except (TimeoutError, aiohttp.ClientError) as exc:
                tried.append(f"{endpoint}: {type(exc).__name__} {exc}")
                continue
            if resp.status != 200:
                raw = await resp.read()
                resp.close()
                tried.append(f"{endpoint}: HTTP {resp.status} {raw[:200]!r}")
                continue
            self._current = idx
            return resp
        raise errors.Unavailable(
            f"no etcd endpoint accepted {path}: " + "; ".join(tried), endpoints=self.endpoints
        )

    # -- leases -----------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds (etcd may round it up); returns its id."""
        assert ttl_s > 0, ttl_s
        data = await self._call("/v3/lease/grant", {"TTL": str(int(ttl_s))}, idempotent=True)
        lease_id = _int(data.get("ID"))
        if not lease_id:
            raise EtcdError(f"etcd lease grant returned no id: {data}")
        return lease_id

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; returns its TTL in seconds. Raises LeaseExpired if it is gone."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(int(lease_id))}, idempotent=True)
        ttl = _int((data.get("result") or {}).get("TTL"))
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease_id:x} has expired or was revoked")
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a lease already gone is not an error."""
        with contextlib.suppress(LeaseExpired):
            await self._call("/v3/lease/revoke", {"ID": str(int(lease_id))}, idempotent=True)

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _json_lines(
    resp: aiohttp.ClientResponse, line_bytes_max: int
) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of a newline-delimited stream (the gateway's streaming format)."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(buf[:nl]).strip()
            del buf[: nl + 1]
            if line:
                yield _object(line)
        if len(buf) > line_bytes_max:
            raise ValueError(f"a stream message is over {line_bytes_max} bytes")
    if bytes(buf).strip():
        yield _object(bytes(buf).strip())


def _object(line: bytes) -> dict[str, Any]:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"stream message is not an object: {line[:200]!r}")
    return obj
