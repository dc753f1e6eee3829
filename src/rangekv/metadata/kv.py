"""The key-value vocabulary of etcd's v3 API that rangekv uses, as plain data: what a key holds
(``KV``), a change (``Event``), a transaction's conditions (``Compare``) and operations
(``Op``) and its result (``TxnResult``), the errors that are part of the contract, and
``KVClient``: the calls the meta makes. Two implementations speak it: ``etcd.EtcdClient`` (a
real etcd, over its JSON gateway) and ``memory.MemoryEtcd`` (in memory, for tests and the
simulator). Nothing here does IO.

The semantics both must keep (``tests/integration/test_meta_store.py`` runs the same tests on
both, and compares them on random transactions):

* every write bumps the store's **revision** by one; a transaction's writes share one
  revision, and a transaction that changes nothing (a delete of no key, only gets) bumps none;
* each key has a ``create_revision`` (when it last came into being), a ``mod_revision`` (its
  last write) and a ``version`` (writes since it came into being); a missing key has all three
  0, so ``Compare.mod_revision(k, "=", 0)`` means "does not exist";
* a ``Compare.value`` on a missing key always fails (etcd cannot tell a missing value from an
  empty one);
* a transaction runs ``success`` if every compare holds, else ``failure``, atomically; one
  in which either branch writes a key twice (two puts, or a put inside a range it deletes) is
  refused whole, whichever branch would run; at most 128 compares or ops a branch;
* a key put under a lease goes when the lease ends (revoked, or not renewed within its TTL);
  a put under a lease that does not exist is refused (``LeaseExpired``);
* a watch yields the events of every revision from its start, in order, whole revisions at a
  time; one whose start is compacted away fails (``WatchCompacted``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rangekv import errors


class EtcdError(errors.Internal):
    """etcd refused a request in a way that retrying will not fix (carries ``grpc_code``)."""


class LeaseExpired(errors.Unavailable):
    """The lease no longer exists: it expired or was revoked, and its keys are gone."""


class WatchLost(errors.Unavailable):
    """A watch stream ended or broke: events after the last batch yielded may be missing."""


class WatchCompacted(WatchLost):
    """The watch's start revision has been compacted away (``compact_revision`` in details)."""


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Event:
    """One change: ``type`` is ``"put"`` or ``"delete"``; a delete has ``kv.value == b""``."""

    type: str
    kv: KV


_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}
_FIELDS = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version",
           "VALUE": "value"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # etcd: range_end "\0" means "to the end of the keyspace"


@dataclass(frozen=True)
class Compare:
    """One txn condition; build it with the static methods (``op`` is ``= != > <``):
    the key's ``target`` (MOD, CREATE, VERSION or VALUE) compared with ``operand``."""

    key: bytes
    target: str
    op: str
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.op not in _RESULTS:
            raise ValueError(f"compare op must be one of {sorted(_RESULTS)}, not {self.op!r}")
        assert self.target in _FIELDS, self.target
        assert isinstance(self.operand, bytes) == (self.target == "VALUE"), self

    @staticmethod
    def mod_revision(key: bytes, op: str, rev: int) -> Compare:
        """A missing key has mod_revision 0, so ``("=", 0)`` means "does not exist"."""
        return Compare(key, "MOD", op, int(rev))

    @staticmethod
    def create_revision(key: bytes, op: str, rev: int) -> Compare:
        return Compare(key, "CREATE", op, int(rev))

    @staticmethod
    def version(key: bytes, op: str, n: int) -> Compare:
        return Compare(key, "VERSION", op, int(n))

    @staticmethod
    def value(key: bytes, op: str, v: bytes) -> Compare:
        """Note: etcd fails every value comparison on a key that does not exist."""
        return Compare(key, "VALUE", op, bytes(v))

    @property
    def body(self) -> dict[str, Any]:
        """The condition as etcd's JSON gateway takes it."""
        operand = (_b64(self.operand) if isinstance(self.operand, bytes)
                   else str(self.operand))
        return {"key": _b64(self.key), "target": self.target, "result": _RESULTS[self.op],
                _FIELDS[self.target]: operand}

    def holds(self, kv: KV | None) -> bool:
        """Whether the condition holds for the key's current state (None: it does not exist),
        as etcd decides it."""
        if kv is None:
            if self.target == "VALUE":
                return False
            kv = KV(self.key, b"", 0, 0, 0, 0)
        have: int | bytes = {"MOD": kv.mod_revision, "CREATE": kv.create_revision,
                             "VERSION": kv.version, "VALUE": kv.value}[self.target]
        want = self.operand
        if self.op == "=":
            return have == want
        if self.op == "!=":
            return have != want
        if self.op == ">":
            return have > want  # type: ignore[operator]
        return have < want  # type: ignore[operator]


@dataclass(frozen=True)
class Op:
    """One txn operation; build it with the static methods. ``prefix``: every key starting
    with ``key`` (a get or a delete)."""

    kind: str  # "get" | "put" | "delete"
    key: bytes
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @staticmethod
    def put(key: bytes, value: bytes, lease: int = 0) -> Op:
        return Op("put", key, value, int(lease))

    @staticmethod
    def delete(key: bytes, prefix: bool = False) -> Op:
        return Op("delete", key, prefix=prefix)

    @staticmethod
    def get(key: bytes, prefix: bool = False) -> Op:
        return Op("get", key, prefix=prefix)

    @property
    def end(self) -> bytes | None:
        """The end of the key range (exclusive), or None for the key alone."""
        return prefix_end(self.key) if self.prefix else None

    @property
    def body(self) -> dict[str, Any]:
        """The operation as etcd's JSON gateway takes it."""
        if self.kind == "put":
            put: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
            if self.lease:
                put["lease"] = str(self.lease)
            return {"request_put": put}
        req = {"key": _b64(self.key)}
        if self.prefix:
            req["range_end"] = _b64(prefix_end(self.key))
        return {"request_delete_range" if self.kind == "delete" else "request_range": req}


@dataclass
class TxnResult:
    """``responses`` follow the branch that ran: a get gives ``list[KV]``, a delete the number
    of keys deleted, a put ``None``."""

    succeeded: bool
    revision: int
    responses: list[Any] = field(default_factory=list)


class KVClient(Protocol):
    """What the meta asks of etcd (``etcd.EtcdClient``) or of its stand-in in memory
    (``memory.MemoryEtcd``); see ``etcd.py`` for each call's failures."""

    async def get(self, key: bytes) -> KV | None: ...

    async def get_prefix(self, prefix: bytes) -> tuple[list[KV], int]: ...

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: bytes, prefix: bool = False) -> int: ...

    async def txn(self, compares: list[Compare], success: list[Op],
                  failure: list[Op] | None = None) -> TxnResult: ...

    def watch_prefix(self, prefix: bytes,
                     start_revision: int) -> AsyncGenerator[list[Event], None]: ...

    async def lease_grant(self, ttl_s: int) -> int: ...

    async def lease_keepalive(self, lease_id: int) -> int: ...

    async def lease_revoke(self, lease_id: int) -> None: ...

    async def close(self) -> None: ...
