"""Wing & Gong's linearizability search, with Lowe's just-in-time linearization and memoization.

For one partition (one key): the history's call and return events sit in time order in a doubly
linked list. The search walks the list from its head: every call met before the first return is
an operation that may be linearized next (all of them were invoked before the earliest response
still owed). They are tried by earliest return first (a heuristic order), those of unknown
outcome last (timed-out operations rarely need to go early); a read that is legal now is taken
alone (see ``candidates``: no loss of generality), and of two pending operations of unknown
outcome with the same effect only one is tried (they are interchangeable). Linearizing an
operation applies it to the model state and lifts its call and return out of the list; when no
candidate can go next, the search backtracks: it pops the last linearized operation off an
explicit stack, puts its events back (``unlift``, dancing-links order) and tries the next
candidate after it. Each (linearized set, state) pair is explored once: the set is an int used
as a bitset, the states are hashable, and a pair already seen is skipped (Lowe; porcupine and
Knossos do the same).

Unknown outcomes: an operation whose return is at +infinity may be linearized at any point after
its call, or never. So the search succeeds as soon as every operation with a known outcome is
linearized, whatever is left of the unknown ones.

The model may help (see :class:`rangekv.check.models.Model`): ``prune`` leaves out operations
of unknown outcome that cannot matter; ``decide`` answers for a partition by itself (kv with
distinct values: :mod:`rangekv.check.kvdistinct`, exact and near-linear); ``guard`` cuts
states no linearization goes through (kv: while no put can intervene, the state must be a
prefix of what the next get read), and gives them a short memo key.

Bounds: ``time_limit_s`` of CPU-ish wall time and ``states_max`` memo entries; reaching either
gives ``UNKNOWN`` ("could not decide"), which is never a pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from rangekv.check.models import Model
from rangekv.check.parse import Operation

OK = "linearizable"
ILLEGAL = "not-linearizable"
UNKNOWN = "unknown"


@dataclass
class PartitionResult:
    key: Any
    verdict: str
    ops: int
    states: int  # memo entries used
    elapsed_s: float
    #: for UNKNOWN: which bound; for ILLEGAL: the reason when the model decided (``decide``),
    #: else empty (see the fields below)
    why: str = ""
    #: the longest linearizable prefix the search found (a model's decision: a linearizable
    #: prefix of the order it found forced)
    prefix: list[Operation] = field(default_factory=list)
    prefix_state: Any = None  # the model state after it
    stuck: list[Operation] = field(default_factory=list)  # could not go next after it


def check_partition(model: Model, key: Any, ops: list[Operation], *,
                    time_limit_s: float = 10.0, states_max: int = 4_000_000) -> PartitionResult:
    """Search one partition. ``ops`` are prepared by ``model`` (``op.arg`` set)."""
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    # unknown outcomes of pure operations constrain nothing
    ops = [o for o in ops if o.known or o.f not in model.pure]
    n_given = len(ops)
    ops = model.prune(ops)
    n = len(ops)
    known = [o.known for o in ops]
    known_left = sum(known)
    if known_left == 0:
        return PartitionResult(key, OK, n_given, 0, time.monotonic() - t0)
    decision = model.decide(ops, deadline)
    if decision is not None:
        elapsed = time.monotonic() - t0
        if decision.linearizable:
            return PartitionResult(key, OK, n_given, 0, elapsed)
        if decision.linearizable is None:
            return PartitionResult(key, UNKNOWN, n_given, 0, elapsed,
                                   why=f"time limit of {time_limit_s:g} s reached")
        return PartitionResult(key, ILLEGAL, n_given, 0, elapsed, why=decision.why,
                               prefix=decision.order, prefix_state=decision.state,
                               stuck=_stuck(ops, decision.order))

    # events: (time, 0 call / 1 return, op index). +inf returns sort last.
    evs = [(o.call, 0, i) for i, o in enumerate(ops)]
    evs += [(o.ret, 1, i) for i, o in enumerate(ops)]
    evs.sort(key=lambda e: (e[0], e[1], e[2]))
    # nodes 1..2n; 0 is the head sentinel, 2n+1 the tail
    m = 2 * n
    head, tail = 0, m + 1
    nxt = list(range(1, m + 2)) + [tail]
    prv = [0] + list(range(m + 1))
    is_call = [False] * (m + 2)
    node_op = [-1] * (m + 2)
    ret_node = [0] * n
    call_node = [0] * n
    for pos, (_, kind, i) in enumerate(evs, 1):
        node_op[pos] = i
        if kind == 0:
            is_call[pos] = True
            call_node[i] = pos
        else:
            ret_node[i] = pos

    bits = [1 << i for i in range(n)]
    step = model.step
    cache: set[tuple[int, Any]] = set()
    state = model.init(key)
    lin = 0
    path: list[int] = []  # the operations linearized, in order
    # the deepest point reached: while best_on_path, it is the current path
    best_depth, best_on_path = 0, True
    best_order: list[int] = []
    best_state = state

    pure = model.pure
    rets = [o.ret for o in ops]
    calls = [o.call for o in ops]
    effect = [None if o.known else model.effect(o) for o in ops]

    # the model's guard (see Guard): wp / rp index the first watched / resetting operation
    # not linearized yet
    guard = model.guard(ops)
    watch = guard.watch if guard else []
    resets = guard.resets if guard else []
    fits = guard.fits if guard else None
    pin = guard.pin if guard else None
    nw, nr = len(watch), len(resets)
    wp = rp = 0

    def candidates(state: Any) -> list[int]:
        """The operations that may go next, in the order to try them: a legal pure one alone
        if there is one; else those of known outcome by earliest return, then the unknown."""
        e = nxt[head]
        ks: list[int] = []
        us: list[int] = []
        same: set[Any] = set()
        while is_call[e]:
            i = node_op[e]
            if known[i]:
                # A pending pure operation (a read) legal now can go now without loss of
                # generality: in any linearization from here it can be moved to this point
                # (pending, it precedes nothing it must follow, and it changes no state).
                if ops[i].f in pure and step(state, ops[i]) == (state,):
                    return [i]
                ks.append(i)
            else:
                # Two pending operations of unknown outcome with the same effect are
                # interchangeable: neither must follow or precede anything still to go (their
                # calls are past and their returns at +inf), so swapping them in a
                # linearization gives another. Trying one of them is enough.
                fx = effect[i]
                if fx is None:
                    us.append(i)
                elif fx not in same:
                    same.add(fx)
                    us.append(i)
            e = nxt[e]
        if len(ks) > 1:
            ks.sort(key=lambda j: (rets[j], calls[j]))
        return ks + us

    def deepest() -> tuple[list[Operation], Any]:
        if best_on_path:
            return [ops[i] for i in path], state
        return [ops[i] for i in best_order], best_state

    # frames: (candidates, index of the one taken, its alternatives, index taken, old state,
    # old wp, old rp)
    stack: list[tuple[list[int], int, tuple[Any, ...], int, Any, int, int]] = []
    cands = candidates(state)
    ci, alts, k0 = 0, None, 0
    iters = 0
    while True:
        iters += 1
        if iters & 0x3FF == 0 and time.monotonic() > deadline:
            prefix, pstate = deepest()
            return PartitionResult(key, UNKNOWN, n_given, len(cache), time.monotonic() - t0,
                                   why=f"time limit of {time_limit_s:g} s reached "
                                       f"({len(cache)} states explored, longest linearizable "
                                       f"prefix {best_depth} of {n} operations)",
                                   prefix=prefix, prefix_state=pstate)
        moved = False
        while ci < len(cands):
            i = cands[ci]
            if alts is None:
                alts = step(state, ops[i])
                k0 = 0
            nb = lin | bits[i]
            active = False
            if alts and guard:
                nwp, nrp = wp, rp
                while nwp < nw and nb >> watch[nwp] & 1:
                    nwp += 1
                while nrp < nr and nb >> resets[nrp] & 1:
                    nrp += 1
                active = nwp < nw and (nrp == nr or calls[resets[nrp]] > rets[watch[nwp]])
                if active:
                    w = ops[watch[nwp]]
            for k in range(k0, len(alts)):
                s = alts[k]
                if active:
                    if not fits(s, w):  # type: ignore[misc]
                        continue
                    ck = (nb, pin(s))  # type: ignore[misc]
                else:
                    ck = (nb, s)
                if ck in cache:
                    continue
                cache.add(ck)
                if len(cache) > states_max:
                    prefix, pstate = deepest()
                    return PartitionResult(key, UNKNOWN, n_given, len(cache),
                                           time.monotonic() - t0,
                                           why=f"memory bound of {states_max} states reached "
                                               f"(longest linearizable prefix "
                                               f"{best_depth} of {n} operations)",
                                           prefix=prefix, prefix_state=pstate)
                stack.append((cands, ci, alts, k, state, wp, rp))
                if guard:
                    wp, rp = nwp, nrp
                # lift the call and its return out of the list
                c = call_node[i]
                r = ret_node[i]
                a, b = prv[c], nxt[c]
                nxt[a] = b
                prv[b] = a
                a, b = prv[r], nxt[r]
                nxt[a] = b
                prv[b] = a
                lin = nb
                state = s
                path.append(i)
                if known[i]:
                    known_left -= 1
                    if known_left == 0:
                        return PartitionResult(key, OK, n_given, len(cache),
                                               time.monotonic() - t0)
                if len(path) > best_depth:
                    best_depth, best_on_path = len(path), True
                moved = True
                break
            if moved:
                break
            ci += 1
            alts = None
        if moved:
            cands = candidates(state)
            ci, alts, k0 = 0, None, 0
            continue
        # no candidate leads anywhere: backtrack
        if not stack:
            break
        if best_on_path:  # leaving the deepest point: keep it
            best_order, best_state, best_on_path = path[:], state, False
        cands, ci, alts, k, state, wp, rp = stack.pop()
        i = path.pop()
        c = call_node[i]
        r = ret_node[i]
        # unlift in reverse order: the return, then the call
        nxt[prv[r]] = r
        prv[nxt[r]] = r
        nxt[prv[c]] = c
        prv[nxt[c]] = c
        lin &= ~bits[i]
        if known[i]:
            known_left += 1
        k0 = k + 1

    # not linearizable: explain from the deepest point reached
    prefix, pstate = deepest()
    return PartitionResult(key, ILLEGAL, n_given, len(cache), time.monotonic() - t0,
                           prefix=prefix, prefix_state=pstate, stuck=_stuck(ops, prefix))


def _stuck(ops: list[Operation], prefix: list[Operation]) -> list[Operation]:
    """The operations that could go next after ``prefix`` (called before the earliest return
    still owed): none of them can, in a history that is not linearizable."""
    done = {id(o) for o in prefix}
    owed = min((o.ret for o in ops if o.known and id(o) not in done), default=math.inf)
    return [o for o in ops if id(o) not in done and o.call < owed]


def partition(model: Model, ops: list[Operation]) -> dict[Any, list[Operation]]:
    parts: dict[Any, list[Operation]] = {}
    for o in ops:
        model.prepare(o)
        parts.setdefault(model.partition(o), []).append(o)
    return parts


def check(model: Model, ops: list[Operation], *, time_limit_s: float = 10.0,
          states_max: int = 4_000_000, stop_at_first_illegal: bool = True,
          ) -> tuple[str, list[PartitionResult]]:
    """Check every partition. Verdict: ILLEGAL if any is, else UNKNOWN if any is, else OK."""
    results: list[PartitionResult] = []
    parts = partition(model, ops)
    for key in sorted(parts, key=lambda k: (str(type(k)), str(k))):
        res = check_partition(model, key, parts[key], time_limit_s=time_limit_s,
                              states_max=states_max)
        results.append(res)
        if res.verdict == ILLEGAL and stop_at_first_illegal:
            return ILLEGAL, results
    if any(r.verdict == ILLEGAL for r in results):
        return ILLEGAL, results
    if any(r.verdict == UNKNOWN for r in results):
        return UNKNOWN, results
    return OK, results
