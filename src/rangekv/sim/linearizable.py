"""A small linearizability checker for the simulator's per-key histories.

The model is one rangekv key: its state is ``(value, seq)`` (value ``None`` = absent; seq may
be ``UNKNOWN`` after a write whose outcome the client never learned). Operations:

    put(v)           -> ok(seq)                   state becomes (v, seq); seq above the last
    cas(v, expect)   -> ok(seq) | failed          applies only if the current seq is expect
    delete()         -> ok(deleted: bool)         deleted says whether a value existed
    get()            -> ok(value, seq) | absent

An operation whose outcome is unknown (a timeout, a lost leader) may take effect at any point
after its invocation, or never. Search: Wing & Gong's, trying each operation that may go next
(invoked before the earliest response still owed), with memoization of (linearized set, state)
as in Lowe's just-in-time variant. Keys are independent, so each is checked on its own
(P-compositionality). Histories here are small; the full checker is a later issue.
"""

from __future__ import annotations

import math
import sys
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


def _steps(state: State, op: Op) -> Iterator[State]:
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


def check_key(ops: list[Op], initial: State = (None, b"")) -> tuple[bool, str]:
    """Is this one key's history linearizable? Returns (verdict, explanation if not)."""
    ops = sorted(ops, key=lambda o: o.invoke_t)
    n = len(ops)
    must = 0
    for i, op in enumerate(ops):
        if op.known:
            must |= 1 << i
    memo: set[tuple[int, State]] = set()
    best_depth = [0, 0]  # deepest prefix reached, for the explanation

    limit = sys.getrecursionlimit()
    if n + 50 > limit:
        sys.setrecursionlimit(n + 100)

    def search(mask: int, state: State, depth: int) -> bool:
        if mask & must == must:
            return True
        if depth > best_depth[0]:
            best_depth[0], best_depth[1] = depth, mask
        owed = min((ops[i].complete_t for i in range(n)
                    if not mask >> i & 1 and ops[i].known), default=math.inf)
        for i in range(n):
            if mask >> i & 1 or ops[i].invoke_t > owed:
                continue
            for new_state in _steps(state, ops[i]):
                key = (mask | 1 << i, new_state)
                if key in memo:
                    continue
                memo.add(key)
                if search(mask | 1 << i, new_state, depth + 1):
                    return True
        return False

    if search(0, initial, 0):
        return True, ""
    done = [ops[i].describe() for i in range(n) if best_depth[1] >> i & 1]
    rest = [ops[i].describe() for i in range(n) if not best_depth[1] >> i & 1]
    return False, ("longest linearizable prefix:\n    " + "\n    ".join(done)
                   + "\nthen none of these can go next:\n    " + "\n    ".join(rest))


def check(history: list[Op]) -> tuple[bool, str]:
    by_key: dict[str, list[Op]] = {}
    for op in history:
        if op.kind == "get" and not op.known:
            continue  # a read nobody heard back from constrains nothing
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key):
        ok, why = check_key(by_key[key])
        if not ok:
            return False, f"key {key!r} is not linearizable\n{why}"
    return True, ""
