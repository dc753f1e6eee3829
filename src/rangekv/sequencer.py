"""The 16-byte sequencer (docs/architecture.md, "The sequencer").

    timestamp_ns (8 bytes) | counter (4 bytes, wraps) | node_id (4 bytes)

All big-endian, so byte order is numeric order and two seqs compare as bytes. The rm that receives
a write proposes a seq; the group leader makes the final one ``max(proposed, last + 1)`` so that
within a group seq order is commit order even when rm clocks disagree (a hybrid logical clock).
Whenever two versions of a key meet, the higher seq wins.

Seqs are bounded by time. A leader refuses a proposed seq whose timestamp is more than
``SEQ_AHEAD_MS_MAX`` ahead of its own clock (``check_proposal``; CockroachDB's maximum clock
offset plays the same part): an rm whose clock ran ahead, or that sends garbage, would
otherwise drag every later seq of the group into the future, up to the top of the range, where
no higher seq exists. An rm's sequencer likewise ignores (``observe``) a seq from elsewhere that
is that far ahead of its clock. What is already stored may still hold any seq (data from before
the bound, a restored backup): ``final`` answers ``Unavailable`` instead of failing when the
group's last seq is the highest there is, and nothing here asserts on a value that came from
another process.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from rangekv import errors

SEQ_BYTES = 16
_COUNTER_MOD = 1 << 32
_NODE_ID_MAX = (1 << 32) - 1
ZERO = bytes(SEQ_BYTES)
MAX = b"\xff" * SEQ_BYTES  # no seq is above it: a group whose last seq it is writes no more
# The most a proposed seq's timestamp may be ahead of the leader's clock (CockroachDB's default
# --max-offset is the same 500 ms). Clocks synced by NTP agree within milliseconds; anything
# beyond this is a wrong clock, or a bad or malicious proposer.
SEQ_AHEAD_MS_MAX = 500

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
    """The seq a leader gives an entry: at least ``proposed`` and strictly above ``last``.

    Raises ``Unavailable`` when no seq is above ``last`` (it is ``MAX``: only data written
    before seqs were bounded by time, or forged, can hold it)."""
    assert len(proposed) == SEQ_BYTES and len(last) == SEQ_BYTES
    if proposed > last:
        return proposed
    if last == MAX:
        raise errors.Unavailable(
            "this group has issued the highest seq there is (ff...ff) and can give no write "
            "a higher one: its data holds a seq from far in the future")
    return successor(last)


def assign(proposed: bytes, last: bytes, now_ns: int, *, from_client: bool,
           ahead_ms_max: int = SEQ_AHEAD_MS_MAX, node_id: int | None = None) -> bytes:
    """The seq a leader gives a command: ``check_proposal`` first for a seq a client's rm
    proposed (``from_client``), then ``final``. The driver and the simulator both call this."""
    if from_client:
        check_proposal(proposed, now_ns, ahead_ms_max, node_id)
    return final(proposed, last)


def ahead_ns(seq: bytes, now_ns: int) -> int:
    """How far ``seq``'s timestamp is ahead of ``now_ns`` (negative: behind)."""
    return parts(seq)[0] - now_ns


def check_proposal(proposed: bytes, now_ns: int, ahead_ms_max: int = SEQ_AHEAD_MS_MAX,
                   node_id: int | None = None) -> None:
    """Refuse (``ClockOffset``) a proposed seq more than ``ahead_ms_max`` ahead of ``now_ns``,
    the leader's clock. ``proposed`` must be a well-formed seq (checked at the boundary)."""
    ahead = ahead_ns(proposed, now_ns)
    if ahead > ahead_ms_max * 1_000_000:
        raise errors.ClockOffset(
            f"the proposed seq is {ahead / 1e6:.0f} ms ahead of the leader's clock, more than "
            f"the maximum offset of {ahead_ms_max} ms: the proposer's clock is wrong",
            ahead_ms=ahead // 1_000_000, max_offset_ms=ahead_ms_max, node_id=node_id)


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

    def __init__(self, node_id: int, clock_ns: Callable[[], int],
                 ahead_ms_max: int = SEQ_AHEAD_MS_MAX) -> None:
        assert 0 <= node_id <= _NODE_ID_MAX, node_id
        assert ahead_ms_max > 0, ahead_ms_max
        self.node_id = node_id
        self._clock_ns = clock_ns
        self._ahead_ns_max = ahead_ms_max * 1_000_000
        self._last_ts = 0
        self._counter = 0
        self.ignored = 0  # seqs observed too far ahead of our clock (see observe)

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

    def observe(self, seq: bytes) -> bool:
        """Keep future seqs above one seen elsewhere (a hybrid logical clock's receive rule).

        A seq more than the maximum offset ahead of our clock is ignored (False): taken up, it
        would make every seq we propose one that leaders refuse, or, from a forged answer near
        the top of the range, exhaust the timestamps. ``seq`` must be 16 bytes."""
        ts, _, _ = parts(seq)
        if ts <= self._last_ts:
            return True
        if ts - self._clock_ns() > self._ahead_ns_max:
            self.ignored += 1
            return False
        self._last_ts = ts
        return True
