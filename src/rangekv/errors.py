"""One error tree for all of rangekv.

Every error has a stable ``code`` (the same string over HTTP, over the internal protocol and in
the Python client), an HTTP status, and whether retrying may help. Errors that tell the caller
where to go next carry the hint (``NotLeader.leader_hint``).

    RangeKVError
    ├── InvalidArgument        400  bad key, table name, cursor, request
    │   ├── TooLarge           413  value (or key) over its limit
    │   └── MethodNotAllowed   405  the path exists, the method does not
    ├── NotFound               404
    │   ├── TableNotFound      404
    │   ├── KeyNotFound        404
    │   ├── GroupNotFound      404  a move or split named a group that does not exist
    │   └── NodeNotFound       404  no record of that node id (``rangekv nodes remove``)
    ├── TableExists            409
    ├── NodeInUse              409  a node to remove takes part in a group (``group``), or is
    │                               live and not flagged (``live``): nothing was removed
    ├── PreconditionFailed     412  conditional write whose seq did not match
    ├── RequestTimeout         408  the request (head or body) did not arrive in time; nothing done
    ├── Unavailable            503  retryable: no leader, node down, overloaded
    │   ├── NotLeader          503  retryable: go to ``leader_hint``
    │   ├── RangeNotHere       503  retryable: the group does not own that key or span now
    │   │                           (``ranges``: what it owns of the table); re-read the map
    │   ├── NotActive          503  retryable: a standby meta; go to ``active_hint``
    │   └── ClockOffset        503  retryable elsewhere: a proposed seq further ahead of the
    │                               leader's clock than the maximum offset (the rm's clock)
    ├── OutcomeUnknown         504  the write may or may not have taken effect
    │   ├── Timeout            504  (client side) no answer in time; outcome unknown for writes
    │   └── SessionExpired     504  a retried write whose first attempt's result the group no
    │                               longer holds (its client session is gone): nothing done
    ├── ProtocolError          502  a peer sent something we cannot decode
    └── Internal               500  a bug: please report

Programmer errors (broken invariants) are ``AssertionError`` and crash the process; the classes
here are for operating errors that a caller can handle.
"""

from __future__ import annotations

from typing import Any


class RangeKVError(Exception):
    code = "internal"
    status = 500
    retryable = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        body.update(self.details)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


class InvalidArgument(RangeKVError):
    code = "invalid_argument"
    status = 400


class TooLarge(InvalidArgument):
    code = "too_large"
    status = 413


class MethodNotAllowed(InvalidArgument):
    code = "method_not_allowed"
    status = 405


class NotFound(RangeKVError):
    code = "not_found"
    status = 404


class TableNotFound(NotFound):
    code = "table_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class GroupNotFound(NotFound):
    code = "group_not_found"


class NodeNotFound(NotFound):
    code = "node_not_found"


class TableExists(RangeKVError):
    code = "table_exists"
    status = 409


class NodeInUse(RangeKVError):
    """A node record that cannot be removed now: the node is a member, a learner or a voter of
    ``joint`` in group ``group`` (replace it first), or it still heartbeats and is not flagged
    (``live``: stop it first). Nothing was removed."""

    code = "node_in_use"
    status = 409


class PreconditionFailed(RangeKVError):
    """A conditional write's condition did not hold; ``current_seq`` says what it met."""

    code = "precondition_failed"
    status = 412

    @property
    def current_seq(self) -> str | None:
        """The key's seq when the condition was checked (32 hex digits); None if the key did
        not exist."""
        value = self.details.get("current_seq")
        if isinstance(value, bytes | bytearray):
            return bytes(value).hex() if any(value) else None
        return value if isinstance(value, str) and value else None


class RequestTimeout(RangeKVError):
    """The request's head or body did not arrive whole within its deadline (HTTP 408; the
    connection is closed). It surely did not take effect: sending it again, promptly, is safe."""

    code = "request_timeout"
    status = 408
    retryable = True


class Unavailable(RangeKVError):
    code = "unavailable"
    status = 503
    retryable = True


class NotLeader(Unavailable):
    """The node is not the leader of its group; ``leader_hint`` says who may be."""

    code = "not_leader"

    @property
    def leader_hint(self) -> int | None:
        hint = self.details.get("leader_hint")
        return int(hint) if hint is not None else None


class RangeNotHere(Unavailable):
    """The group does not own the key (or the span) asked for: the caller's routing map is
    stale (the range was split or moved). ``ranges`` is the group's current view of the table:
    ``[[start, end or None], ...]``. An rm re-reads the table's ranges and retries."""

    code = "range_not_here"


class NotActive(Unavailable):
    """A standby metadata manager; ``active_hint`` is the address of the active one."""

    code = "not_active"


class ClockOffset(Unavailable):
    """A leader refused a proposed seq whose timestamp is more than the maximum clock offset
    (``max_offset_ms``) ahead of its own clock: the proposer's clock (an rm's) is wrong, and a
    seq from it would drag every later seq of the group into the future. Nothing was written.
    ``ahead_ms`` says by how much; another rm (with a sound clock) can take the write."""

    code = "clock_offset"


class OutcomeUnknown(RangeKVError):
    """The request was sent but its outcome is unknown: it may have taken effect."""

    code = "outcome_unknown"
    status = 504
    retryable = True


class Timeout(OutcomeUnknown):
    code = "timeout"


class SessionExpired(OutcomeUnknown):
    """A retried write (``retry``) of a client session that the group no longer holds the
    result of: the session was dropped (no write of the client for an hour of seq time, or
    evicted as the least recently writing of too many clients) or the write's cseq is at or
    below what the session has forgotten. The earlier attempt may or may not have been applied,
    and applying this one could apply it twice, so nothing was done: the outcome stays unknown
    (read before writing again). Not retryable: every retry would get the same answer."""

    code = "session_expired"
    retryable = False


class ProtocolError(RangeKVError):
    code = "protocol_error"
    status = 502
    retryable = True


class Internal(RangeKVError):
    code = "internal"
    status = 500


class BatchFailed(RangeKVError):
    """(client side) Some items of a batch (``put_many``, ``get_many``, ``delete_many``) failed.
    ``results`` holds one entry per item, in order: its result, or the error it got (a batch
    is not a transaction: the items that succeeded stay done)."""

    code = "batch_failed"
    status = 207

    def __init__(self, message: str = "", results: list[Any] | None = None,
                 **details: Any) -> None:
        super().__init__(message, **details)
        self.results: list[Any] = list(results or [])

    @property
    def errors(self) -> list[tuple[int, RangeKVError]]:
        """(index, error) of each item that failed."""
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, RangeKVError)]


_BY_CODE: dict[str, type[RangeKVError]] = {}


def _register(cls: type[RangeKVError]) -> None:
    # Only a class that names a code of its own answers for it: a subclass that
    # inherits its parent's code (EtcdError is an Internal) must not take the
    # code over, or which class a client raises would depend on import order.
    if "code" in vars(cls):
        _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(RangeKVError)


def from_dict(body: dict[str, Any]) -> RangeKVError:
    """Rebuild an error sent by :meth:`RangeKVError.to_dict` (unknown codes become Internal)."""
    code = str(body.get("code", "internal"))
    message = str(body.get("message", code))
    details = {k: v for k, v in body.items() if k not in ("code", "message", "retryable")}
    cls = _BY_CODE.get(code)
    if cls is None:
        _register(RangeKVError)  # subclasses defined in other modules since import
        cls = _BY_CODE.get(code, Internal)
    return cls(message, **details)
