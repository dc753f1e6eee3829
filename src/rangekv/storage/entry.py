"""One entry of a replicated log: what the WAL stores and the replication core replicates.

It lives in storage, the lower layer, so that the logs (``wal.py``, ``memlog.py``) and the
replication core (``rangekv.replication``, which re-exports it from ``messages``) share it
without storage knowing anything of replication. A NamedTuple, so an entry *is* the
``(epoch, index, payload)`` record ``WAL.append`` takes: no conversion between the two.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    epoch: int
    index: int
    payload: bytes
