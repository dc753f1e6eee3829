"""Wire forms of a replication message that ``Msg.from_wire`` must refuse (ValueError).

The other half of the wire format of :mod:`rangekv.replication.messages`, as examples: one for
each way a list off the network can be wrong (not a list, too short or long, an unknown type, a
negative id, an epoch of the wrong type, entries that are no list of three fields, a payload
that is text). The simulator's bad node (:mod:`rangekv.sim.hostile`) and the chaos hostile
actor (:mod:`rangekv.chaos.hostile`) both send them, so here is the one place they are kept.
"""

from __future__ import annotations

import random
from typing import Any

from rangekv.replication.messages import APPEND, HEARTBEAT, Msg


def malformed_wire(rng: random.Random, frm: int, to: int, epoch: int) -> Any:
    """A wire form ``Msg.from_wire`` must refuse (ValueError)."""
    good = Msg(HEARTBEAT, frm, to, epoch).to_wire()
    variants: list[Any] = [
        {"type": HEARTBEAT},  # not a list
        good[:10],  # too short
        [*good, 0],  # too long
        ["vote", *good[1:]],  # unknown type
        [good[0], -1, *good[2:]],  # a negative id
        [good[0], frm, to, "7", *good[4:]],  # an epoch that is text
        [good[0], frm, to, True, *good[4:]],  # an epoch that is a bool
        [*good[:7], "entries", *good[8:]],  # entries not a list
        [APPEND, *good[1:7], [[epoch, 1]], *good[8:]],  # an entry of two fields
        [APPEND, *good[1:7], [[epoch, 1, "text"]], *good[8:]],  # a payload that is text
    ]
    return rng.choice(variants)
