"""Reproducible generated histories of the ``kv`` model, for tests and benchmarks.

``kv_history(seed, ...)`` simulates a linearizable key-value store used by ``clients``
concurrent clients: each operation takes effect at one instant between its invocation and its
completion (so the history is linearizable by construction), appends carry unique values
(``"x <process> <n> y"``, so a value read splits into the appends it is made of in exactly one
way), and a fraction ``info`` of the operations time out: the client logs ``:info`` and goes on
under a new process number (as Jepsen does), and the operation took effect before the timeout,
takes effect later (while the other clients go on), or never.

``fault`` breaks the store once, from operation ``nops * fault_at`` on, in a way that makes the
history certainly not linearizable when the values are distinct and there are no puts
(``puts=0, retries=0``; the reasons are in ``FAULTS``; ``phantom``, ``double`` and ``reorder``
stay certain with puts); ``kv_history`` makes sure the fault shows in an ``:ok`` get.

The output is the EDN-like format of the kv histories in ``tests/data/histories`` (line order
is real time)::

    {:process 0, :type :invoke, :f :append, :key "0", :value "x 0 1 y"}

``python -m rangekv.check.gen --bench`` times the checker on such histories.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import re
import statistics
import sys
import time
from typing import Any

#: fault -> why the history is then not linearizable (unique appends, no puts)
FAULTS = {
    "stale": "a get misses an append acknowledged before the get was invoked: that append is "
             "linearized before the get, appends remove nothing, and the value read splits "
             "into appends in one way only, without it",
    "lost": "the store drops an acknowledged append: a get invoked after that misses it "
            "(as for stale)",
    "phantom": "a get reads a value that no operation appended",
    "double": "the store applies an append twice: a get reads its value twice, but an "
              "operation takes effect at most once and the values are unique",
    "reorder": "the store swaps its last two appends after a get read them: a later get reads "
               "them the other way round, but the states along a linearization are prefixes "
               "of one another",
}

_SEG = re.compile(r"x \S+ \S+ y")


def segments(value: str) -> list[str]:
    """The appends a generated value is made of, in order."""
    return _SEG.findall(value)


class _Op:
    __slots__ = ("acked", "call", "f", "key", "outcome", "result", "role", "value")

    def __init__(self, f: str, key: str, value: str | None, outcome: str, call: float) -> None:
        self.f, self.key, self.value, self.outcome, self.call = f, key, value, outcome, call
        self.result: str | None = None
        self.role: str | None = None
        self.acked: frozenset[str] = frozenset()


def kv_history(seed: int, *, clients: int = 50, nops: int = 4000, keys: int = 1,
               info: float = 0.1, gets: float = 0.5, puts: float = 0.0, lat: float = 1.0,
               think: float = 0.2, late: float = 5.0, fault: str | None = None,
               fault_at: float = 0.5, retries: float = 0.0) -> str:
    """A history of ``nops`` operations (see the module docstring).

    ``gets`` / ``puts``: the fractions of gets and of puts (the rest are appends); ``info``:
    the fraction of operations that time out; ``lat``: the mean time from invocation to taking
    effect, and from there to completion; ``think``: the mean pause between a client's
    operations; ``late``: the mean delay after its timeout of an operation that takes effect
    late; ``retries``: the fraction of timed-out appends that the client retries, with the same
    value (so values are no longer distinct: the search decides those keys)."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
    rng = random.Random(seed)
    store: dict[str, list[str]] = {}  # key -> the appends its value is made of
    acked: dict[str, set[str]] = {}  # key -> the values of acknowledged updates
    queue: list[tuple[float, int, str, int, _Op | None]] = []
    tick = 0
    lines: list[str] = []

    def push(t: float, kind: str, p: int, op: _Op | None) -> None:
        nonlocal tick
        heapq.heappush(queue, (t, tick, kind, p, op))
        tick += 1

    def emit(p: int, typ: str, f: str, k: str, v: Any) -> None:
        val = "nil" if v is None else json.dumps(v)
        lines.append(f'{{:process {p}, :type :{typ}, :f :{f}, :key "{k}", :value {val}}}')

    for p in range(clients):
        push(rng.expovariate(1 / think), "invoke", p, None)
    count, next_pid = 0, clients
    retry: dict[int, tuple[str, str]] = {}  # process -> the append it retries next (key, value)
    due: str | None = None  # the fault, once it is its time
    seen = fault is None
    lost: tuple[str, str, float] | None = None  # key, value, when
    swapped: tuple[str, str, str] | None = None  # key, now first, now second
    while queue:
        t, _, kind, p, op = heapq.heappop(queue)
        if kind == "invoke":
            if count >= nops:
                continue
            count += 1
            if fault is not None and count == int(nops * fault_at) + 1:
                due = fault
            k = str(rng.randrange(keys))
            r = rng.random()
            f = "get" if r < gets else "put" if r < gets + puts else "append"
            v = None if f == "get" else f"x {p} {count} y"
            if p in retry:
                f = "append"
                k, v = retry.pop(p)
            outcome = "ok" if rng.random() >= info else rng.choice(["before", "late", "never"])
            op = _Op(f, k, v, outcome, t)
            wanted = "append" if due == "double" else "get"
            if due is not None and outcome == "ok" and f == wanted:
                op.role, due = due, None
                op.acked = frozenset(acked.get(k, ()))
            emit(p, "invoke", f, k, v)
            d_apply = rng.expovariate(1 / lat)
            if outcome in ("ok", "before"):
                push(t + d_apply, "apply", p, op)
            push(t + d_apply + rng.expovariate(1 / lat), "ret", p, op)
        elif kind == "apply":
            assert op is not None
            segs = store.setdefault(op.key, [])
            if op.f == "get":
                res = list(segs)
                if op.role == "phantom":
                    res.append("x phantom 0 y")
                    seen = True
                elif op.role == "stale":
                    old = [s for s in res if s in op.acked]
                    if old:
                        res.remove(rng.choice(old))
                        seen = True
                    else:
                        due = "stale"  # nothing to miss yet: a later get
                elif op.role == "lost":
                    old = [s for s in segs if s in acked.get(op.key, ())]
                    if old:
                        drop = rng.choice(old)
                        segs.remove(drop)
                        lost = (op.key, drop, t)
                    else:
                        due = "lost"
                elif op.role == "reorder":
                    if len(segs) >= 2:
                        segs[-1], segs[-2] = segs[-2], segs[-1]
                        swapped = (op.key, segs[-2], segs[-1])
                    else:
                        due = "reorder"
                op.result = "".join(res)
            elif op.f == "put":
                store[op.key] = [op.value]  # type: ignore[list-item]
            else:
                segs.append(op.value)  # type: ignore[arg-type]
                if op.role == "double":
                    segs.append(op.value)  # type: ignore[arg-type]
        else:  # ret
            assert op is not None
            if op.outcome != "ok":
                emit(p, "info", op.f, op.key, op.value)
                if op.outcome == "late":
                    push(t + rng.expovariate(1 / late), "apply", p, op)
                p, next_pid = next_pid, next_pid + 1  # Jepsen: a new process after :info
                if op.f == "append" and rng.random() < retries:
                    retry[p] = (op.key, op.value)  # type: ignore[assignment]
            else:
                emit(p, "ok", op.f, op.key, op.result if op.f == "get" else op.value)
                if op.f != "get":
                    acked.setdefault(op.key, set()).add(op.value)  # type: ignore[arg-type]
                elif not seen:
                    segs = segments(op.result or "")
                    # a get invoked after the loss, a value read twice, or the swap read
                    seen = (lost is not None and op.key == lost[0] and op.call > lost[2]) \
                        or (fault == "double" and len(segs) != len(set(segs))) \
                        or (swapped is not None and op.key == swapped[0]
                            and swapped[1] in segs and swapped[2] in segs
                            and segs.index(swapped[1]) < segs.index(swapped[2]))
            push(t + rng.expovariate(1 / think), "invoke", p, None)
    if not seen:
        raise ValueError(f"the fault {fault!r} did not show in an :ok get; "
                         "make the history longer or fault_at earlier")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

#: (label, keyword arguments of kv_history) of the benchmark; 50 clients each
BENCH = [
    (f"{n // 1000}k ops, {k} key{'s' if k > 1 else ''}, {int(i * 100)}% info"
     + (f", {f}" if f else ""),
     {"nops": n, "keys": k, "info": i, "fault": f})
    for n, k in ((4000, 1), (10000, 1), (20000, 4))
    for i in (0.0, 0.1, 0.3)
    for f in (None, "stale")
]


def bench(runs: int, labels: list[str] | None = None) -> None:
    """Time ``rangekv check-history --model kv`` (reading included) on the BENCH histories."""
    import os
    import tempfile

    from rangekv.check import main as cmain

    with tempfile.TemporaryDirectory() as d:
        for label, kw in BENCH:
            if labels and not any(x in label for x in labels):
                continue
            path = os.path.join(d, "h.edn")
            with open(path, "w") as fh:
                fh.write(kv_history(1, **kw))  # type: ignore[arg-type]
            times, code = [], None
            for _ in range(runs):
                t0 = time.perf_counter()
                code, _ = cmain.run(["--model", "kv", path])
                times.append(time.perf_counter() - t0)
            size = os.path.getsize(path) / 1e6
            med = statistics.median(times)
            print(f"{label:40} {size:7.1f} MB  exit {code}  median {med:6.2f} s"
                  f"  ({' '.join(f'{t:.2f}' for t in times)})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rangekv.check.gen",
        description="Write a generated kv history (EDN lines) to standard output, or time "
                    "the checker on a set of them (--bench).")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--ops", type=int, default=4000)
    p.add_argument("--keys", type=int, default=1)
    p.add_argument("--info", type=float, default=0.1)
    p.add_argument("--gets", type=float, default=0.5)
    p.add_argument("--puts", type=float, default=0.0)
    p.add_argument("--fault", choices=sorted(FAULTS))
    p.add_argument("--bench", action="store_true")
    p.add_argument("--runs", type=int, default=3, help="with --bench")
    p.add_argument("--only", action="append", help="with --bench: labels containing this")
    a = p.parse_args(argv)
    if a.bench:
        bench(a.runs, a.only)
        return 0
    sys.stdout.write(kv_history(a.seed, clients=a.clients, nops=a.ops, keys=a.keys,
                                info=a.info, gets=a.gets, puts=a.puts, fault=a.fault))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
