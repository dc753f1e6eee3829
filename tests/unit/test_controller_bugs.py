"""A controller's planted bug (``rangekv.controller.bugs``) reaches a meta only through its hidden
``--planted-bug`` option, as a ``planner_factory``; ``rangekv chaos --planted-bug`` takes a
controller bug's name too (its run passes it on the metas' command line, a replication bug's
on the nodes')."""

from __future__ import annotations

import pytest

from rangekv.chaos.main import build_parser
from rangekv.controller.bugs import BUGS, ClearJointEarly
from rangekv.controller.planner import Planner
from rangekv.metadata.memory import MemoryEtcd
from rangekv.metadata.mover import RangeMover
from rangekv.metadata.mover_bugs import MOVER_BUGS, DropLastBatch
from rangekv.metadata.service import MetaService, factories, parse_args

META = ["--id", "1", "--listen", "127.0.0.1:7001", "--etcd", "http://127.0.0.1:2379"]


def test_a_meta_runs_a_planted_planner_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    plain = parse_args(META)
    assert plain.planted_bug is None
    assert type(MetaService(plain, etcd=MemoryEtcd()).planner) is Planner
    planted = parse_args([*META, "--planted-bug", "clear-joint-early"])
    assert planted.planted_bug == "clear-joint-early"
    service = MetaService(planted, etcd=MemoryEtcd(), planner_factory=BUGS[planted.planted_bug])
    assert type(service.planner) is ClearJointEarly
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "planted" not in capsys.readouterr().out  # hidden


def test_a_meta_runs_a_planted_mover_only_when_asked() -> None:
    """The range mover's bug (``metadata/mover_bugs.py``) the same way, as a ``mover_factory``;
    each option plants one bug in one component only."""
    plain = MetaService(parse_args(META), etcd=MemoryEtcd(), **factories(parse_args(META)))
    assert type(plain.mover) is RangeMover and type(plain.planner) is Planner
    config = parse_args([*META, "--planted-bug", "move-drops-last-batch"])
    service = MetaService(config, etcd=MemoryEtcd(), **factories(config))
    assert type(service.mover) is DropLastBatch and type(service.planner) is Planner
    config = parse_args([*META, "--planted-bug", "swap-without-joint"])
    service = MetaService(config, etcd=MemoryEtcd(), **factories(config))
    assert type(service.mover) is RangeMover and type(service.planner) is BUGS["swap-without-joint"]


def test_chaos_takes_a_controller_or_mover_bug_by_name() -> None:
    for name in ("swap-without-joint", "move-drops-last-batch"):
        args = build_parser().parse_args(["--planted-bug", name])
        assert args.planted_bug in {**BUGS, **MOVER_BUGS}
