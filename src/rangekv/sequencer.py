"""The 16-byte sequencer (DESIGN §3).

    timestamp_ns (8 bytes) | counter (4 bytes, wraps) | node_id (4 bytes)

All big-endian, so byte order is numeric order and two seqs compare as bytes. The rm that receives
a write proposes a seq; the group leader makes the final one ``max(proposed, last + 1)`` so that
within a group seq order is commit order even when rm clocks disagree (a hybrid logical clock).
Whenever two versions of a key meet, the higher seq wins.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

SEQ_BYTES = 16
_COUNTER_MOD = 1 << 32
_NODE_ID_MAX = (1 << 32) - 1
ZERO = bytes(SEQ_BYTES)

_PACK = struct.Struct(">QII")


def make(timestamp_ns: int, counter: int, node_id: int) -> bytes:
    assert 0 <= timestamp_ns < (1 << 64), timestamp_ns
    assert 0 <= counter < _COUNTER_MOD, counter
    assert 0 <= node_id <= _NODE_ID_MAX, node_id
    return _PACK.pack(timestamp_ns, counter, node_id)


def parts(seq: bytes) -> tuple[int, int, int]:
    """(timestamp_ns, counter, node_id) of a seq."""
    assert len(seq) == SEQ_BYTES, len(seq)
    ts, counter, node_id = _PACK.unpack(seq)
    return ts, counter, node_id


def to_int(seq: bytes) -> int:
    assert len(seq) == SEQ_BYTES, len(seq)
    return int.from_bytes(seq, "big")


def from_int(value: int) -> bytes:
    assert 0 <= value < (1 << 128), value
    return value.to_bytes(SEQ_BYTES, "big")


def successor(seq: bytes) -> bytes:
    """The smallest seq greater than ``seq``."""
    return from_int(to_int(seq) + 1)


def final(proposed: bytes, last: bytes) -> bytes:
    """The seq a leader gives an entry: at least ``proposed`` and strictly above ``last``."""
    assert len(proposed) == SEQ_BYTES and len(last) == SEQ_BYTES
    return proposed if proposed > last else successor(last)


def to_hex(seq: bytes) -> str:
    assert len(seq) == SEQ_BYTES, len(seq)
    return seq.hex()


def from_hex(text: str) -> bytes:
    """Parse a 32-hex-digit seq; raises ValueError on anything else."""
    if not isinstance(text, str) or len(text) != 2 * SEQ_BYTES:
        raise ValueError("a seq is 32 hex digits")
    return bytes.fromhex(text)


class Sequencer:
    """Issues strictly increasing seqs for one process.

    ``clock_ns`` is injected (wall-clock nanoseconds in production, a virtual clock in the
    simulator). The counter increments on every seq and wraps at 2**32; should the clock stand
    still or step back, the timestamp is held at the last one issued and the counter carries
    the order, so seqs from one sequencer never repeat or go backwards.
    """

    def __init__(self, node_id: int, clock_ns: Callable[[], int]) -> None:
        assert 0 <= node_id <= _NODE_ID_MAX, node_id
        self.node_id = node_id
        self._clock_ns = clock_ns
        self._last_ts = 0
        self._counter = 0

    def next(self) -> bytes:
        now = self._clock_ns()
        self._counter = (self._counter + 1) % _COUNTER_MOD
        if now > self._last_ts:
            self._last_ts = now
        elif self._counter == 0:
            # The counter wrapped within one timestamp: move time forward by one nanosecond so
            # that the seq still grows.
            self._last_ts += 1
        return make(self._last_ts, self._counter, self.node_id)

    def observe(self, seq: bytes) -> None:
        """Keep future seqs above one seen elsewhere (a hybrid logical clock's receive rule)."""
        ts, _, _ = parts(seq)
        if ts > self._last_ts:
            self._last_ts = ts
