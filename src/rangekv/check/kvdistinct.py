"""An exact, near-linear decision for ``kv`` partitions whose writes have distinct values.

The general search (:mod:`rangekv.check.wgl`) may have to try many orders of concurrent
appends: in a dense history (50 clients on one key) that is exponential. But when every write
(put or append, of known or unknown outcome) has its own non-empty value, what a get reads
says which writes took effect before it and in which order, and then there is essentially one
linearization to try. :func:`decide` answers when

(A) the values of the partition's writes are non-empty and pairwise distinct, and
(B) each value read has exactly one *split*: a sequence of write values, the first a put's or
    an append's and the others appends', that concatenate to it (counted by :func:`_splits`,
    repeats allowed);

and otherwise returns ``None`` (the search decides). Gets of unknown outcome are dropped before
(they constrain nothing). Its answer is exact, by these facts. σ is any linearization: a
sequence of all the operations of known outcome and some of unknown outcome, each after every
operation that returned before it was called, each get reading the state the writes before it
leave: the value of the last put before it (or "" if none), followed by the values of the
appends after that put, in σ's order.

1. So what a get read splits into: the put it read from (if any) and the appends between; by
   (A) a value is one operation and an operation takes effect at most once. A value read with
   no split, or whose only split repeats a write, is **not linearizable**. With (B) the split
   of each value read R, S(R), *is* the sequence of writes that made the state the get read.
2. *Epochs*: the gets that read from the same put P (or from the initial state) lie in σ
   between P and the next put, and so do the appends in what they read. Their states extend
   one another: every S(R) of the epoch must be a prefix of S(L), L the longest value read in
   it (else **not linearizable**). With S(L) = P a1 ... am (or a1 ... am), the epoch's
   *block* is forced: P, the gets that read P, a1, the gets that read P a1, a2, and so on
   (from the initial state: the gets that read "", a1, ...); only the order among the gets
   that read the same value is free, and ordering them by call is as good as any
   (x.call < y.call < y.ret satisfies every pair inside such a group; the pairs across groups
   do not depend on it). If that order breaks real time (an operation returns before one it
   must follow is called): **not linearizable**.
3. A write in what some get read is *observed*; it is in exactly one epoch (two: **not
   linearizable**). An unobserved write of unknown outcome may as well never take effect: in
   no get's split, it is not between a get and the put that get read from (nor that put), so
   leaving it out of σ keeps every get's state, and only drops constraints. An unobserved
   write of known outcome (a *filler*) must be in σ where no get sees it: after the last get
   of an epoch and before the next put, or after an unobserved put, or at the end; anywhere
   there will do.
4. Then σ is the initial epoch's block (if any get read from the initial state: first, as
   nothing may precede it), then the other blocks and the fillers in some order. A block or
   filler u, with c(u) its latest call and r(u) its earliest return, may precede v iff
   c(u) < r(v). Such an order exists iff the relation "u must precede v" (r(u) < c(v), u ≠ v)
   has no cycle; :func:`_schedule` finds one (Kahn's algorithm: a unit is free to go next iff
   its latest call is before the earliest return of every other unit left), or finds no unit
   free: **not linearizable**. Otherwise the blocks and fillers in that order are a
   linearization: **linearizable**.

Conversely, every linearization has this shape (blocks are contiguous in it: what lies between
a put and the last get that read from it is all observed by that get), which is why the
"not linearizable" answers are exact.

The cost: one sort of the values read, one pass over each value read that is not a prefix of
another (every position reachable by splitting, times the number of distinct value lengths),
one ``startswith`` per get, and sorts and heaps over the operations.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from rangekv.check.parse import Operation


@dataclass
class Decision:
    """The answer of :func:`decide` for one partition."""

    linearizable: bool | None  # None: the time limit was reached
    why: str = ""  # for not linearizable: the reason, in one sentence
    #: linearizable: a linearization (of the operations that take effect);
    #: not linearizable: a linearizable prefix of the order the reads force
    order: list[Operation] = field(default_factory=list)
    state: Any = ""  # the state after ``order``


class _Deadline(Exception):
    pass


class _Ambiguous(Exception):
    pass


class _Illegal(Exception):
    """Not linearizable, with a sequence to explain it from (``order``: see
    :func:`_longest_prefix`; None: the order the values read shorter than ``upto`` force,
    when the partition has no put)."""

    def __init__(self, why: str, order: list[Operation] | None = None,
                 upto: int | None = None) -> None:
        super().__init__(why)
        self.why, self.order, self.upto = why, order, upto


def decide(ops: list[Operation], deadline: float) -> Decision | None:
    """Decide a kv partition (``op.arg`` prepared, no get of unknown outcome); ``None`` when
    (A) or (B) of the module docstring does not hold."""
    by_value: dict[str, Operation] = {}
    for o in ops:
        if o.f != "get":
            if not o.arg or o.arg in by_value:
                return None
            by_value[o.arg] = o
    try:
        order = _linearize(ops, by_value, deadline)
    except _Deadline:
        return Decision(None)
    except _Ambiguous:
        return None
    except _Illegal as e:
        order = e.order
        if order is None:
            order = []
            if not any(o.f == "put" for o in ops):
                try:
                    order = _forced(ops, by_value, e.upto, deadline)
                except _Deadline:
                    pass
        prefix, state = _longest_prefix(ops, order)
        return Decision(False, e.why, prefix, state)
    return Decision(True, order=order, state=_state(order))


# ---------------------------------------------------------------------------------------------


def _cut(s: str, n: int = 32) -> str:
    return repr(s) if len(s) <= n else repr("..." + s[-n:])


def _name(o: Operation) -> str:
    if o.f == "get":
        return f"the get on line {o.line} (read {_cut(o.arg)})"
    return f"the {o.f} of {_cut(o.arg)} on line {o.line}"


Path = list[tuple[int, Operation]]  # a split: (end offset, write) per piece


def _linearize(ops: list[Operation], by_value: dict[str, Operation],
               deadline: float) -> list[Operation]:
    reads: dict[str, list[Operation]] = {}
    for o in ops:
        if o.f == "get":
            reads.setdefault(o.arg, []).append(o)
    vals = sorted(reads)
    # a value read and the values read that it is a prefix of are next to each other in
    # sorted order; owner[i]: the longest of them, whose splits give those of its prefixes
    owner = list(range(len(vals)))
    for i in range(len(vals) - 2, -1, -1):
        if vals[i + 1].startswith(vals[i]):
            owner[i] = owner[i + 1]
    members: dict[int, list[int]] = {}
    for i, m in enumerate(owner):
        members.setdefault(m, []).append(i)

    # 1. the split of each value read: (path id, pieces)
    paths: list[Path] = []
    split: dict[str, tuple[int, int]] = {}
    ambiguous = False
    for m, idxs in members.items():
        big = vals[m]
        count, back = _splits(big, by_value, deadline)
        for i in idxs:
            if count[len(vals[i])] == 0:
                raise _Illegal(f"{_name(_first(reads[vals[i]]))}: that value is no put value "
                               "followed by appended values, nor appended values alone",
                               upto=len(vals[i]))
            if count[len(vals[i])] > 1:
                ambiguous = True
        if ambiguous:
            continue  # keep looking for a value read with no split at all
        pid = len(paths)
        paths.append(_path(big, len(big), back, by_value))
        k_of_end = {end: k for k, (end, _) in enumerate(paths[pid], 1)}
        k_of_end[0] = 0
        for i in idxs:
            k = k_of_end.get(len(vals[i]), -1)
            if k >= 0:
                split[vals[i]] = (pid, k)
            else:  # its own split is not a prefix of big's: a path of its own
                own = _path(big, len(vals[i]), back, by_value)
                split[vals[i]] = (len(paths), len(own))
                paths.append(own)
    if ambiguous:
        raise _Ambiguous
    first_repeat = []
    for p in paths:
        seen: set[int] = set()
        rep = len(p)
        for k, (_, w) in enumerate(p):
            if id(w) in seen:
                rep = k
                break
            seen.add(id(w))
        first_repeat.append(rep)
    for v, (pid, k) in split.items():
        if k > first_repeat[pid]:
            w = paths[pid][first_repeat[pid]][1]
            raise _Illegal(f"{_name(_first(reads[v]))}: the only way to make that value has "
                           f"{_name(w)} in it twice, but it takes effect at most once")

    # 2. epochs: the values read from the same put (None: from the initial state)
    epochs: dict[int, list[str]] = {}
    base: dict[int, Operation | None] = {}
    for v, (pid, k) in split.items():
        first = paths[pid][0][1] if k else None
        b = first if first is not None and first.f == "put" else None
        epochs.setdefault(id(b), []).append(v)
        base[id(b)] = b
    blocks: dict[int, list[Operation]] = {}
    owner_of: dict[int, int] = {}  # observed write -> epoch
    for e, vs in epochs.items():
        vs.sort(key=len)
        top = vs[-1]
        pid, kt = split[top]
        pieces = paths[pid][:kt]
        k_of_end = {end: k for k, (end, _) in enumerate(pieces, 1)}
        k_of_end[0] = 0
        groups: list[list[Operation]] = [[] for _ in range(kt + 1)]
        src = "the initial state" if base[e] is None else _name(base[e])
        for v, w in itertools.pairwise(vs):
            if not w.startswith(v):
                raise _Illegal(f"{_name(_first(reads[v]))} and {_name(_first(reads[w]))} "
                               f"both read from {src}, but neither value extends the other "
                               "(the state only grows until the next put)", upto=len(w))
        for v in vs:
            if len(v) not in k_of_end:
                raise _Illegal(f"{_name(_first(reads[v]))} and {_name(_first(reads[top]))} "
                               f"both read from {src}, but the only split of the first into "
                               "written values is not the start of that of the second",
                               upto=len(v))
            groups[k_of_end[len(v)]].extend(reads[v])
        for _, w in pieces:
            if owner_of.setdefault(id(w), e) != e:
                raise _Illegal(f"{_name(w)} shows in values read from two different puts "
                               "(or from a put and from the initial state): it would have "
                               "taken effect twice")
        blocks[e] = _interleave(groups, pieces)

    # the initial epoch's block goes first; each block must respect real time inside
    init = blocks.pop(id(None), [])
    for b in [init, *blocks.values()]:
        mx, late = -math.inf, None
        for o in b:
            if o.ret < mx:
                raise _Illegal(f"the values read put {_name(late)} before {_name(o)}, "
                               "but the first was called after the second returned",
                               init if b is not init else b)
            if o.call > mx:
                mx, late = o.call, o
    # 3. fillers: the writes of known outcome no get saw
    fillers = [[o] for o in ops if o.f != "get" and o.known and id(o) not in owner_of]
    # 4. an order of the blocks and fillers
    units = list(blocks.values()) + fillers
    if init:
        c0 = max(o.call for o in init)
        for u in units:
            r = min(o.ret for o in u)
            if r < c0:
                raise _Illegal(f"{_describe_unit(u)} must come before "
                               f"{_describe_unit(init)}, but it would then be seen", init)
    return init + _schedule(units, init)


def _first(gets: list[Operation]) -> Operation:
    return min(gets, key=lambda o: o.call)


def _forced(ops: list[Operation], by_value: dict[str, Operation], upto: int | None,
            deadline: float) -> list[Operation]:
    """For a partition without puts: the order forced by the values read shorter than ``upto``
    (all if None), as far as they are consistent: a chain, split as the longest of them is
    split, up to a repeated append or a value read that is not at a boundary of that split."""
    reads = sorted((o for o in ops if o.f == "get" and (upto is None or len(o.arg) < upto)),
                   key=lambda o: (len(o.arg), o.call))
    for i in range(1, len(reads)):
        if not reads[i].arg.startswith(reads[i - 1].arg):
            reads = reads[:i]
            break
    top = reads[-1].arg if reads else ""
    count, back = _splits(top, by_value, deadline)
    while reads and not count[len(reads[-1].arg)]:
        reads.pop()
    top = reads[-1].arg if reads else ""
    pieces = _path(top, len(top), back, by_value)
    seen: set[int] = set()
    for k, (_, w) in enumerate(pieces):
        if id(w) in seen:
            pieces = pieces[:k]
            break
        seen.add(id(w))
    k_of_end = {end: k for k, (end, _) in enumerate(pieces, 1)}
    k_of_end[0] = 0
    groups: list[list[Operation]] = [[] for _ in range(len(pieces) + 1)]
    for g in reads:
        if len(g.arg) not in k_of_end:
            break
        groups[k_of_end[len(g.arg)]].append(g)
    return _interleave(groups, pieces)


def _interleave(groups: list[list[Operation]], pieces: Path) -> list[Operation]:
    """The order an epoch forces: the gets that read the k-th prefix (by call), then the k-th
    piece's write, and so on (``groups[k]``: the gets that read ``k`` pieces)."""
    order: list[Operation] = []
    for k, grp in enumerate(groups):
        if k:
            order.append(pieces[k - 1][1])
        grp.sort(key=lambda o: o.call)
        order.extend(grp)
    return order


def _describe_unit(u: list[Operation]) -> str:
    if u[0].f == "put" and len(u) > 1:
        return f"{_name(u[0])} and the gets that read from it"
    if len(u) == 1:
        return _name(u[0])
    return "the gets that read from the initial state (and what they read)"


def _schedule(units: list[list[Operation]], done: list[Operation]) -> list[Operation]:
    """The units (blocks, fillers) in an order where each unit's latest call is before the
    earliest return of every unit after it; _Illegal if there is none."""
    n = len(units)
    c = [max(o.call for o in u) for u in units]
    r = [min(o.ret for o in u) for u in units]
    by_r = [(r[i], i) for i in range(n)]
    by_c = [(c[i], i) for i in range(n)]
    heapq.heapify(by_r)
    heapq.heapify(by_c)
    gone = [False] * n
    order: list[Operation] = []

    def top2(h: list[tuple[float, int]]) -> tuple[int, int]:
        while h and gone[h[0][1]]:
            heapq.heappop(h)
        if not h:
            return -1, -1
        first = heapq.heappop(h)
        while h and gone[h[0][1]]:
            heapq.heappop(h)
        second = h[0][1] if h else -1
        heapq.heappush(h, first)
        return first[1], second

    for _ in range(n):
        w0, w1 = top2(by_r)  # earliest and next earliest returns
        r2 = r[w1] if w1 >= 0 else math.inf
        if c[w0] < r2:
            pick = w0
        else:
            u0, u1 = top2(by_c)
            u = u1 if u0 == w0 else u0
            if u < 0 or c[u] >= r[w0]:
                # every unit left must follow w0 (its latest call is after w0's earliest
                # return), and w0 must follow w1: a cycle
                raise _Illegal(f"neither {_describe_unit(units[w0])} nor "
                               f"{_describe_unit(units[w1])} can go before the other: each "
                               "has an operation called after one of the other's returned",
                               done + order)
            pick = u
        gone[pick] = True
        order.extend(units[pick])
    return order


def _splits(big: str, by_value: dict[str, Operation], deadline: float,
            ) -> tuple[list[int], list[int]]:
    """``count[p]``: the number of splits of ``big[:p]`` (a put's or an append's value, then
    appends' values; repeats allowed; capped at 2); ``back[p]``: where the last piece of one
    of them starts."""
    n = len(big)
    count = [0] * (n + 1)
    back = [-1] * (n + 1)
    count[0] = 1
    first_lens = sorted({len(v) for v in by_value})
    lens = sorted({len(v) for v, o in by_value.items() if o.f == "append"})
    for i in range(n):
        ci = count[i]
        if not ci:
            continue
        if i & 0xFF == 0 and time.monotonic() > deadline:
            raise _Deadline
        for ln in (lens if i else first_lens):
            j = i + ln
            if j > n:
                break
            w = by_value.get(big[i:j])
            if w is not None and (i == 0 or w.f == "append"):
                if count[j] == 0:
                    back[j] = i
                    count[j] = ci
                else:
                    count[j] = 2
    if n and time.monotonic() > deadline:
        raise _Deadline
    return count, back


def _path(big: str, end: int, back: list[int], by_value: dict[str, Operation]) -> Path:
    """The pieces of the split of ``big[:end]`` that ``back`` records (it has one)."""
    out: Path = []
    while end > 0:
        start = back[end]
        out.append((end, by_value[big[start:end]]))
        end = start
    out.reverse()
    return out


def _state(order: list[Operation]) -> str:
    """The state after ``order``: the last put's value, then the appends after it."""
    last = max((i for i, o in enumerate(order) if o.f == "put"), default=-1)
    head = order[last].arg if last >= 0 else ""
    return head + "".join(o.arg for o in order[last + 1:] if o.f == "append")


def _longest_prefix(ops: list[Operation], order: list[Operation],
                    ) -> tuple[list[Operation], str]:
    """The longest prefix of ``order`` (a sequence in which each get reads the state the
    writes before it leave) that is a linearizable prefix of the history: each of its
    operations returns after the calls of those before it, and was called before the return
    of every operation of known outcome outside it (as the search's prefixes are)."""
    inside = {id(o) for o in order}
    outside = min((o.ret for o in ops if o.known and id(o) not in inside), default=math.inf)
    n = len(order)
    suffix = [outside] * (n + 1)  # the earliest return from position k on
    for k in range(n - 1, -1, -1):
        suffix[k] = min(suffix[k + 1], order[k].ret)
    best, mx = 0, -math.inf
    for k, o in enumerate(order):
        if o.ret < mx:
            break
        mx = max(mx, o.call)
        if mx < suffix[k + 1]:
            best = k + 1
    return order[:best], _state(order[:best])
