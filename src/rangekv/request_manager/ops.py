"""What the router, its batches and its coalescer share: a write's client session, a get's
result, and how a leader's per-item answers are read (``batch_write`` / ``batch_get``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rangekv import errors, sequencer

PUT = "put"
DELETE = "delete"
FRAME_ITEMS_MAX = 1000  # items in one frame to a leader
FRAME_BYTES_MAX = 1024 * 1024  # keys and values in one frame (a bigger item goes alone)

# per-item answers of a node that mean "not settled here, route it again"
_REROUTE = frozenset({errors.NotLeader.code, errors.RangeNotHere.code, errors.Unavailable.code,
                      errors.TableNotFound.code, errors.ClockOffset.code})


@dataclass(frozen=True, slots=True)
class Session:
    """A write's place in its client's session (exactly-once writes): the client's 16-byte
    id, this write's number, the lowest number the client still awaits an answer to (results
    below it may be forgotten) and whether an earlier attempt may have been applied."""

    client: bytes
    cseq: int
    floor: int
    retry: bool = False

    def __post_init__(self) -> None:
        # a floor above the write's own cseq would forget the write itself: it means no more
        # than the cseq, as the group reads it (the node refuses one above)
        if self.floor > self.cseq:
            object.__setattr__(self, "floor", self.cseq)

    def fields(self, cseq: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"client": self.client,
                               "cseq": self.cseq if cseq is None else cseq,
                               "floor": self.floor}
        if self.retry:
            out["retry"] = True
        return out


@dataclass(frozen=True)
class GetResult:
    found: bool
    value: bytes
    seq: bytes


def check_seq(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != sequencer.SEQ_BYTES:
        raise errors.ProtocolError(f"a node sent a malformed seq: {value!r}"[:200])
    return bytes(value)


def seq_of(res: dict[str, Any]) -> bytes:
    return check_seq(res.get("seq"))


def unknown_op(err: errors.RangeKVError) -> bool:
    """A node of an older version, without the batch ops (a rolling upgrade): its items go
    the single-key way."""
    return isinstance(err, errors.InvalidArgument) and err.details.get("field") == "op"


def reroute(err: errors.RangeKVError) -> bool:
    """Whether an item's error means "not settled here": send it the single-key way."""
    return err.code in _REROUTE or unknown_op(err)


def client_error(err: errors.RangeKVError) -> errors.RangeKVError:
    """An item's final error as the client gets it (``current_seq`` as hex, as alone)."""
    if isinstance(err, errors.PreconditionFailed):
        cur = err.details.get("current_seq")
        if isinstance(cur, (bytes, bytearray)):
            err.details["current_seq"] = bytes(cur).hex() if any(cur) else None
    return err


def error_of(res: dict[str, Any]) -> errors.RangeKVError | None:
    """The error of one item's answer, if it is one."""
    err = res.get("error")
    if err is None:
        return None
    if not isinstance(err, dict):
        raise errors.ProtocolError(f"a node sent a malformed error: {str(err)[:100]}")
    return errors.from_dict(err)


def frame_results(reply: dict[str, Any], n: int, address: str) -> list[dict[str, Any]]:
    """The per-item answers of a ``batch_write`` / ``batch_get`` frame of ``n`` items, checked:
    one map per item, in order."""
    results = reply.get("results")
    if not isinstance(results, list) or len(results) != n or not all(
            isinstance(r, dict) for r in results):
        raise errors.ProtocolError(f"{address} answered a batch of {n} with "
                                   f"{str(results)[:100]}")
    return results
