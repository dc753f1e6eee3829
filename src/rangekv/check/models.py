"""Sequential specifications for the checker.

A model says how to split a history into independent partitions (P-compositionality: keys of a
map are independent objects), the initial state of a partition, and ``step(state, op)``: the
tuple of states ``op`` may lead to from ``state`` given its observed output (empty: illegal
there). States are hashable and immutable. An operation whose outcome is unknown may also never
take effect: the search does not require it (see :mod:`rangekv.check.wgl`), so ``step`` only
describes what happens if it does.

register  one value, initially nil: read (output = the value read; nil = never written),
          write v, cas [old new] (applies only if the value is old). Jepsen's etcd histories.
kv        a map of strings, each key initially "": get (output = the value), put v,
          append v (concatenation, no separator: "a" then append "b" gives "ab").
rangekv   rangekv's keys (:mod:`rangekv.check.keys`, whose ``steps`` this model takes, as the
          simulator does): state (value, seq); put, cas (expect = the seq it requires), delete,
          get.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from rangekv.check import keys, kvdistinct
from rangekv.check.kvdistinct import Decision
from rangekv.check.parse import BadHistory, Operation

State = Any


@dataclass
class Guard:
    """A model's pruning rule for the search (:meth:`Model.guard`). Let w be the first
    operation of ``watch`` not linearized yet; while no operation of ``resets`` not linearized
    yet was called before w returned, every state the search reaches must satisfy
    ``fits(state, w)`` (or no linearization goes through it), and two states that do, for the
    same w, are equal iff their ``pin`` are."""

    watch: list[int]  # indexes into the partition's operations, by return
    resets: list[int]  # by call
    fits: Callable[[Any, Operation], bool]
    pin: Callable[[Any], Hashable]


class Model:
    name = ""
    #: operations that never change the state: with an unknown outcome they constrain nothing
    pure: frozenset[str] = frozenset()

    def partition(self, op: Operation) -> Any:
        return op.key

    def init(self, key: Any) -> State:
        raise NotImplementedError

    def prepare(self, op: Operation) -> None:
        """Validate ``op`` and store its compact form in ``op.arg``; BadHistory if malformed."""
        raise NotImplementedError

    def step(self, state: State, op: Operation) -> tuple[State, ...]:
        raise NotImplementedError

    def effect(self, op: Operation) -> Any:
        """A hashable key such that operations of unknown outcome with equal keys lead from
        every state to the same states (None: no such key)."""
        try:
            key = (op.f, op.arg)
            hash(key)
        except TypeError:
            return None
        return key

    def prune(self, ops: list[Operation]) -> list[Operation]:
        """The operations of one partition the search needs: a model may leave out operations
        of unknown outcome when a history is linearizable with them iff it is without them
        (then every linearization without them is one with them, never taking effect)."""
        return ops

    def decide(self, ops: list[Operation], deadline: float) -> Decision | None:
        """A model's own exact decision for a partition (after ``prune``), or None: search."""
        return None

    def guard(self, ops: list[Operation]) -> Guard | None:
        """A pruning rule for the search of the partition ``ops`` (after ``prune``)."""
        return None

    def describe(self, op: Operation) -> str:
        out = "?" if not op.known else repr(op.output)
        if op.f in self.pure or not op.known:
            res = out
        else:
            res = "ok"
        arg = "" if op.value is None else repr(op.value)
        if op.expect is not None:
            arg += f" if seq={op.expect}"
        return f"line {op.line}: process {op.process} {op.f}({arg}) -> {res}"

    def describe_state(self, state: State) -> str:
        return repr(state)


def _need(op: Operation, cond: bool, what: str) -> None:
    if not cond:
        raise BadHistory(f"line {op.line}: {op.f}: {what}")


class Register(Model):
    name = "register"
    pure = frozenset({"read"})

    def partition(self, op: Operation) -> Any:
        return op.key  # Jepsen's register histories have no key: one partition

    def init(self, key: Any) -> State:
        return None

    def prepare(self, op: Operation) -> None:
        if op.f == "read":
            op.arg = op.output
        elif op.f == "write":
            _need(op, op.value is not None, "a write needs a value")
            op.arg = op.value
        elif op.f == "cas":
            v = op.value
            if isinstance(v, (list, tuple)) and len(v) == 2:
                op.arg = (v[0], v[1])
            else:
                _need(op, op.expect is not None, "cas needs [old new] or expect + value")
                op.arg = (op.expect, v)
        else:
            raise BadHistory(f"line {op.line}: the register model has no :{op.f} "
                             "(read, write, cas)")

    def step(self, state: State, op: Operation) -> tuple[State, ...]:
        f = op.f
        if f == "read":
            return (state,) if state == op.arg else ()
        if f == "write":
            return (op.arg,)
        old, new = op.arg
        return (new,) if state == old else ()

    def describe(self, op: Operation) -> str:
        if op.f == "read":
            return (f"line {op.line}: process {op.process} read -> "
                    f"{'?' if not op.known else _nil(op.output)}")
        if op.f == "write":
            return (f"line {op.line}: process {op.process} write {_nil(op.arg)}"
                    f"{'' if op.known else ' (outcome unknown)'}")
        return (f"line {op.line}: process {op.process} cas {_nil(op.arg[0])} -> "
                f"{_nil(op.arg[1])}{'' if op.known else ' (outcome unknown)'}")

    def describe_state(self, state: State) -> str:
        return _nil(state)


def _nil(v: Any) -> str:
    return "nil" if v is None else repr(v)


class KV(Model):
    name = "kv"
    pure = frozenset({"get"})

    def init(self, key: Any) -> State:
        return ""

    def prepare(self, op: Operation) -> None:
        if op.f == "get":
            out = op.output
            _need(op, out is None or isinstance(out, str), "a get returns a string")
            op.arg = "" if out is None else out
        elif op.f in ("put", "append"):
            _need(op, isinstance(op.value, str), "needs a string value")
            op.arg = op.value
        else:
            raise BadHistory(f"line {op.line}: the kv model has no :{op.f} (get, put, append)")

    def step(self, state: State, op: Operation) -> tuple[State, ...]:
        f = op.f
        if f == "get":
            return (state,) if state == op.arg else ()
        if f == "put":
            return (op.arg,)
        return (state + op.arg,)

    def prune(self, ops: list[Operation]) -> list[Operation]:
        """Leave out each put or append of unknown outcome whose value is in no value read.

        Sound: let σ be a linearization with such operations D. For a get G of σ, let P be the
        last put before it (if any): its state is P's value followed by the values of the
        appends between P and G. An operation of D in there (or P itself, if in D) would put its
        value inside what G read, so every operation of D before G is before P. Removing D from
        σ thus leaves every get's state as it was; the order of what is left still respects
        real time, and the operations of known outcome are all still there: it is a
        linearization too. (The converse is plain: D may never take effect.)"""
        drop = [o for o in ops if not o.known and o.f in ("put", "append")]
        if not drop:
            return ops
        # the values read that are no prefix of another (in sorted order, a value's extensions
        # follow it): one per put read from, when the history is linearizable
        seen = sorted({o.arg for o in ops if o.known and o.f == "get"})
        nexts = [*seen[1:], None]
        tops = [v for v, w in zip(seen, nexts, strict=False) if w is None or not w.startswith(v)]
        sep = "\0"
        joined = sep.join(tops)
        if len(joined) * len(drop) > 2_000_000_000 or any(sep in v for v in tops):
            return ops  # rare: not worth it (and leaving operations in is always sound)
        # a value with the separator in it is in no value read; "" is in all of them
        gone = {id(o) for o in drop if o.arg not in joined}
        if not gone:
            return ops
        return [o for o in ops if id(o) not in gone]

    def decide(self, ops: list[Operation], deadline: float) -> Decision | None:
        return kvdistinct.decide(ops, deadline)

    def guard(self, ops: list[Operation]) -> Guard | None:
        """Let w be the get of known outcome not linearized yet that returns first, and say no
        put not linearized yet was called before w returned. Whatever goes between now and w
        in a linearization was called before w returned (else it must follow w): appends and
        gets only. So w will read the current state followed by appended values: the current
        state must be a prefix of what w read (``fits``). And two prefixes of one value with
        the same length are equal: the length is enough to tell them apart in the memo
        (``pin``), which keeps long states out of it."""
        watch = sorted((i for i, o in enumerate(ops) if o.known and o.f == "get"),
                       key=lambda i: (ops[i].ret, ops[i].call))
        if not watch:
            return None
        resets = sorted((i for i, o in enumerate(ops) if o.f == "put"),
                        key=lambda i: ops[i].call)
        return Guard(watch, resets, fits=lambda s, w: w.arg.startswith(s), pin=len)

    def describe(self, op: Operation) -> str:
        res = "?" if not op.known else _short(op.arg) if op.f == "get" else "ok"
        arg = "" if op.f == "get" else _short(op.arg)
        return f"line {op.line}: process {op.process} {op.f}({arg}) -> {res}"

    def describe_state(self, state: State) -> str:
        return _short(state)


def _short(s: str, n: int = 60) -> str:
    """A value, or the end of a long one (a key appended to all along grows long)."""
    return repr(s) if len(s) <= n else f"...{s[-n:]!r} ({len(s)} characters)"


class RangeKV(Model):
    """rangekv's keys; the JSON-lines fields are described in :mod:`rangekv.check.main`."""

    name = "rangekv"
    pure = frozenset({"get"})

    def init(self, key: Any) -> State:
        return (None, b"")

    def prepare(self, op: Operation) -> None:
        kind = {"put": "put", "cas": "cas", "delete": "del", "del": "del", "get": "get"}.get(op.f)
        if kind is None:
            raise BadHistory(f"line {op.line}: the rangekv model has no {op.f!r} "
                             "(put, cas, delete, get)")
        value = expect = None
        if kind in ("put", "cas"):
            _need(op, isinstance(op.value, str), "needs a string value")
            value = op.value.encode()
        if kind == "cas":
            expect = _seq(op, op.expect, "expect")
            _need(op, expect is not None, "a cas needs expect (a seq)")
        result: Any = None
        if op.known:
            r = op.output
            _need(op, isinstance(r, dict), "an ok completion needs a result object")
            if kind == "put":
                result = ("ok", _seq(op, r.get("seq"), "result.seq"))
                _need(op, result[1] is not None, "result.seq is required")
            elif kind == "cas":
                if r.get("failed"):
                    result = ("failed",)
                else:
                    result = ("ok", _seq(op, r.get("seq"), "result.seq"))
                    _need(op, result[1] is not None, "result.seq (or failed: true) is required")
            elif kind == "del":
                _need(op, isinstance(r.get("deleted"), bool), "result.deleted is required")
                result = ("ok", r["deleted"], _seq(op, r.get("seq"), "result.seq"))
            else:
                v = r.get("value")
                _need(op, v is None or isinstance(v, str), "result.value must be a string/null")
                s = _seq(op, r.get("seq"), "result.seq")
                _need(op, v is None or s is not None, "a found value needs result.seq")
                result = ("ok", None if v is None else v.encode(), s)
        op.arg = keys.Op(id=op.id, client=0, key=str(op.key), kind=kind, value=value,
                         expect=expect, invoke_t=op.call,
                         complete_t=op.ret if op.known else math.inf, result=result, closed=True)

    def step(self, state: State, op: Operation) -> tuple[State, ...]:
        return tuple(keys.steps(state, op.arg))

    def effect(self, op: Operation) -> Any:
        # an unknown outcome's steps depend only on these (see keys.steps)
        return (op.arg.kind, op.arg.value, op.arg.expect)

    def describe(self, op: Operation) -> str:
        return f"line {op.line}: process {op.process} " + op.arg.describe().split(" ", 2)[2]


def _seq(op: Operation, v: Any, what: str) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v.to_bytes(16, "big")
    if isinstance(v, str):
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    raise BadHistory(f"line {op.line}: {what} must be a hex string or a non-negative integer")


MODELS: dict[str, Model] = {"register": Register(), "kv": KV(), "rangekv": RangeKV()}
