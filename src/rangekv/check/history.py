"""A history of rangekv operations held in memory (the simulator's), checked by the one search.

The simulator records each client operation as a :class:`rangekv.check.keys.Op`;
:func:`check_ops` hands them, a key at a time, to :func:`rangekv.check.wgl.check_partition`
under the ``rangekv`` model, the same search and model ``rangekv check-history`` runs on a
recorded file. "Could not decide" (a bound of the search reached) is never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from rangekv.check import wgl
from rangekv.check.keys import Op
from rangekv.check.models import MODELS
from rangekv.check.parse import Operation

# Bounds of the search for one key (``rangekv check-history``'s defaults): a simulated history
# holds a few hundred operations a key, decided in milliseconds.
TIME_LIMIT_S = 10.0
STATES_MAX = 4_000_000


def check_ops(history: Sequence[Op]) -> tuple[bool, str]:
    """Is ``history`` linearizable? (verdict, and why not: the key, the longest linearizable
    prefix found and the operations none of which can go next after it)."""
    model = MODELS["rangekv"]
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(Operation(
            id=op.id, process=op.client, f=op.kind, key=op.key, value=op.value,
            expect=op.expect, output=op.result, call=op.invoke_t, ret=op.complete_t, line=0,
            arg=op))
    for key in sorted(by_key):
        res = wgl.check_partition(model, key, by_key[key], time_limit_s=TIME_LIMIT_S,
                                  states_max=STATES_MAX)
        if res.verdict == wgl.UNKNOWN:
            return False, f"key {key!r}: could not decide ({res.why}; not a pass)"
        if res.verdict == wgl.ILLEGAL:
            done = [o.arg.describe() for o in res.prefix]
            stuck = [o.arg.describe() for o in res.stuck]
            return False, (f"key {key!r} is not linearizable\n"
                           + (f"why: {res.why}\n" if res.why else "")
                           + "longest linearizable prefix:\n    " + "\n    ".join(done)
                           + "\nthen none of these can go next:\n    " + "\n    ".join(stuck))
    return True, ""
