"""The planted bugs the simulator runs (``rangekv sim --bug NAME``).

The core's bugs live in :mod:`rangekv.replication.bugs` (a node may run one without importing the
simulator: ``rangekv chaos --planted-bug``); this is the simulator's registry of them.
"""

from __future__ import annotations

from rangekv.replication.bugs import (
    BUGS,
    AcceptLowerEpoch,
    AckBeforeFsync,
    ApplyBeforeCommit,
    CampaignWithoutJoint,
    CoreFactory,
    InstallStaleSnapshot,
    ReadWithoutQuorum,
    SkipLogMatching,
)

__all__ = [
    "BUGS",
    "AcceptLowerEpoch",
    "AckBeforeFsync",
    "ApplyBeforeCommit",
    "CampaignWithoutJoint",
    "CoreFactory",
    "InstallStaleSnapshot",
    "ReadWithoutQuorum",
    "SkipLogMatching",
]
