"""rangekv's keys as the linearizability checker models them: the operation record and the steps.

One key's state is ``(value, seq)`` (value ``None`` = absent; seq may be ``UNKNOWN`` after a
write whose outcome the client never learned). Operations:

    put(v)           -> ok(seq)                   state becomes (v, seq); seq above the last
    cas(v, expect)   -> ok(seq) | failed          applies only if the current seq is expect
    delete()         -> ok(deleted: bool)         deleted says whether a value existed
    get()            -> ok(value, seq) | absent

An operation whose outcome is unknown (a timeout, a lost leader) may take effect at any point
after its invocation, or never. Keys are independent, so each is checked on its own
(P-compositionality).

:class:`Op` is what the simulator records for each client operation (and what the ``rangekv``
model of :mod:`rangekv.check.models` turns a recorded history's line into); :func:`steps` is the
sequential specification. There is one search for both: :mod:`rangekv.check.wgl`, which the
simulator reaches through :func:`rangekv.check.history.check_ops`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

UNKNOWN = b"?"  # a seq nobody has seen

State = tuple[bytes | None, bytes]


@dataclass
class Op:
    id: int
    client: int
    key: str
    kind: str  # put | cas | del | get
    value: bytes | None = None
    expect: bytes | None = None
    invoke_t: float = 0.0
    complete_t: float = math.inf  # inf: outcome unknown
    result: Any = None  # see the module docstring; None while unknown
    closed: bool = False  # the client stopped waiting (answered, or gave up: unknown)

    @property
    def known(self) -> bool:
        return self.complete_t != math.inf

    def describe(self) -> str:
        args = {"put": f"{self.value!r}", "cas": f"{self.value!r} if {_short(self.expect)}",
                "del": "", "get": ""}[self.kind]
        res = "?" if not self.known else self.result
        return (f"#{self.id} c{self.client} {self.kind}({args}) "
                f"[{self.invoke_t:.1f}, {self.complete_t:.1f}] -> {res}")


def _short(seq: bytes | None) -> str:
    if seq is None:
        return "-"
    return "?" if seq == UNKNOWN else seq.hex()[-8:]


def steps(state: State, op: Op) -> Iterator[State]:
    """The states ``op`` may lead to from ``state`` given its observed result (none: illegal)."""
    value, seq = state
    if op.kind == "put":
        if not op.known:
            yield (op.value, UNKNOWN)
            return
        new_seq = op.result[1]
        if seq == UNKNOWN or new_seq > seq:
            yield (op.value, new_seq)
    elif op.kind == "cas":
        matches_possible = value is not None and (seq == op.expect or seq == UNKNOWN)
        mismatch_possible = value is None or seq != op.expect or seq == UNKNOWN
        if not op.known:
            if matches_possible:
                yield (op.value, UNKNOWN)
            return
        if op.result[0] == "ok":
            if matches_possible and (seq == UNKNOWN or op.result[1] > seq):
                yield (op.value, op.result[1])
        elif mismatch_possible:
            yield state
    elif op.kind == "del":
        if not op.known:
            yield (None, UNKNOWN)
            return
        deleted = op.result[1]
        if deleted and value is not None:
            yield (None, UNKNOWN if op.result[2] is None else op.result[2])
        elif not deleted and value is None:
            yield state
    elif op.kind == "get":
        if not op.known:
            yield state  # a read with no answer changes nothing
            return
        got_value, got_seq = op.result[1], op.result[2]
        if got_value is None:
            if value is None:
                yield state
        elif value == got_value and (seq == UNKNOWN or seq == got_seq):
            yield (value, got_seq)  # the read reveals an unknown seq
    else:
        raise AssertionError(f"unknown op kind {op.kind}")
