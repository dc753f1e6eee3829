"""The planted bugs the simulator runs (``rangekv sim --bug NAME``).

Each planted bug breaks one rule of one component and is planted through that component's
factory argument of ``Simulation`` (and of ``run_seed``):

=================  =====================  ==========================================
component          ``Simulation`` keyword  where the bugs live
=================  =====================  ==========================================
replication core   ``core_factory``        ``rangekv.replication.bugs`` (``BUGS``)
Ready loop         ``loop_factory``        ``rangekv.replication.loop_bugs`` (``LOOP_BUGS``)
controller         ``planner_factory``     ``rangekv.controller.bugs`` (``CONTROLLER_BUGS``)
range mover        ``mover_factory``       ``rangekv.metadata.mover_bugs`` (``MOVER_BUGS``)
=================  =====================  ==========================================

The core's and the loop's live beside the code they break (a node may run one without importing
the simulator: ``rangekv chaos --planted-bug``); this is the simulator's registry of them all,
``PLANTED``: a bug's name -> ``Plant`` (the keyword and the factory). A component's bugs are
added with one ``PLANTED.update(plants(KEYWORD, ITS_BUGS))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rangekv.controller.bugs import BUGS as CONTROLLER_BUGS
from rangekv.metadata.mover_bugs import MOVER_BUGS
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
from rangekv.replication.loop_bugs import (
    LOOP_BUGS,
    CutNotWritten,
    ReleaseBeforeFsync,
    SnapshotVotersOnly,
)


@dataclass(frozen=True)
class Plant:
    """A planted bug: the ``Simulation`` keyword it is handed through, and its factory."""

    keyword: str  # "core_factory", "loop_factory", ...
    factory: Callable[..., Any]

    def kwargs(self) -> dict[str, Any]:
        return {self.keyword: self.factory}


def plants(keyword: str, bugs: Mapping[str, Callable[..., Any]]) -> dict[str, Plant]:
    return {name: Plant(keyword, factory) for name, factory in bugs.items()}


PLANTED: dict[str, Plant] = {
    **plants("core_factory", BUGS),
    **plants("loop_factory", LOOP_BUGS),
    **plants("planner_factory", CONTROLLER_BUGS),
    **plants("mover_factory", MOVER_BUGS),
}
assert len(PLANTED) == len(BUGS) + len(LOOP_BUGS) + len(CONTROLLER_BUGS) + len(MOVER_BUGS), (
    "a planted bug's name is used twice")

__all__ = [
    "BUGS",
    "CONTROLLER_BUGS",
    "LOOP_BUGS",
    "MOVER_BUGS",
    "PLANTED",
    "AcceptLowerEpoch",
    "AckBeforeFsync",
    "ApplyBeforeCommit",
    "CampaignWithoutJoint",
    "CoreFactory",
    "CutNotWritten",
    "InstallStaleSnapshot",
    "Plant",
    "ReadWithoutQuorum",
    "ReleaseBeforeFsync",
    "SkipLogMatching",
    "SnapshotVotersOnly",
    "plants",
]
