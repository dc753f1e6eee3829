"""The ``rangekv meta`` process: the metadata manager, and the driver of the controller.

Invariants (each is relied on elsewhere; break one and data can be lost or served stale)
------------------------------------------------------------------------------------------
1. **One active meta acts at a time.** A meta acts only while it holds
   ``/rangekv/meta/active`` under a live etcd lease, and stops acting (answers ``not_active``,
   stops its controller) as soon as its lease may have run out: at the time it *sent* its last
   successful renewal plus the TTL, less a safety margin, whether or not etcd said so; and as
   soon as its view shows the key is no longer the one it created. Every write it makes is also
   fenced on that key's create revision (see ``store.py``), so a deposed meta's late write can
   never land.
2. **Epochs only grow**, and a group's leader for epoch ``e`` is recorded in etcd by
   compare-and-swap *before* any node hears of ``e`` (the ``campaign`` field of a heartbeat
   reply). Two metas can therefore never hand out the same epoch to two nodes.
3. **No leader is chosen without a live majority** of the group's members (and, while a
   reconfiguration is unfinished, of its previous members, ``joint``); without one the group
   stays unavailable (never inconsistent), and that is logged.
4. **Decisions are made on a view at least as new as the takeover**: a newly active meta waits
   until its watched view has reached the revision at which it won, and waits one heartbeat
   timeout to hear from the nodes before judging any leader dead.
5. Every change is a compare-and-swap on the revision the decision was based on; a conflict
   means "decide again", never "overwrite".

Theory of operation
-------------------
The process is a few parts, each in a module of its own, wired here:

* ``view.py``: the **view** of etcd (``model.ClusterView`` and each key's revision), kept
  current by one prefix read and a watch;
* ``election.py``: the **election** of the active meta (a leased key), the lease's renewal, and
  the term it serves; a standby answers every request with ``not_active{active_hint}``;
* ``handlers.py``: the **TCP server** and the meta ops of ``docs/internals.md`` (heartbeats,
  tables, splits, moves, node removal);
* ``perform.py``: the **control loop** of the active meta, which asks the controller's
  planner (``rangekv.controller``: pure decisions, no IO) what to do and performs it, each
  change one fenced CAS with the decision that explains it, kept under ``/rangekv/decisions/``;
  ``mover.py`` performs range moves, ``leaders.py`` tells group leaders what they must do;
* ``metrics.py``: with ``--metrics-listen``, an HTTP server answering Prometheus ``/metrics``;
* ``backups.py``: with ``--backup-dir``, rolling backups of the metadata.

Nodes learn everything from their heartbeat replies; the meta never calls a node except to
tell a group leader to add, split, merge, move or drop ranges (``leaders.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rangekv import aio, errors, wire
from rangekv import config as rangekv_config
from rangekv import log as rangekv_log
from rangekv.controller import bugs as planted
from rangekv.controller.health import Beat
from rangekv.controller.lag import LAG_ENTRIES_MIN, STUCK_AFTER_S, LagWatch
from rangekv.controller.planner import HEARTBEAT_TIMEOUT_MS_DEFAULT, Planner, PlannerConfig
from rangekv.controller.replace import (
    CATCH_UP_SLACK_DEFAULT,
    LEARNER_TIMEOUT_MS_DEFAULT,
    REPLACE_GRACE_MS_DEFAULT,
    REPLACE_LAG_ENTRIES_DEFAULT,
)
from rangekv.controller.split import SplitConfig
from rangekv.metadata.election import Election, Term
from rangekv.metadata.etcd import EtcdClient
from rangekv.metadata.handlers import Handlers
from rangekv.metadata.kv import KVClient
from rangekv.metadata.leaders import Leaders
from rangekv.metadata.metrics import MetaMetrics
from rangekv.metadata.mover import RangeMover
from rangekv.metadata.mover_bugs import MOVER_BUGS, MoverFactory
from rangekv.metadata.perform import ControlLoop
from rangekv.metadata.requests import split_host_port
from rangekv.metadata.store import MetaStore
from rangekv.metadata.view import ViewFollower
from rangekv.metrics import MetricsServer, listen_address
from rangekv.model import ClusterView

LOG_REPEAT_S = 5.0  # a repeated warning (no majority, etcd down) is logged at most this often


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaConfig:
    id: int
    listen: str
    etcd: tuple[str, ...]
    groups_min: int = 1
    group_size: int = 3
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS_DEFAULT  # live: heartbeated within this
    campaign_timeout_ms: int = 3000  # a chosen leader must report serving its epoch within this
    lease_ttl_s: int = 2  # the active-meta lease
    keepalive_interval_ms: int = 500
    lease_safety_fraction: float = 0.1  # step down this fraction of the TTL before it can end
    standby_poll_ms: int = 1000  # a standby retries at least this often even without a watch
    election_interval_ms: int = 50  # and at the moment a leader's last heartbeat expires
    stall_ms: int = 150  # a controller tick this late means this process was stalled ...
    stall_grace_ms: int = 250  # ... so no leader is judged until heartbeats had this long
    formation_interval_ms: int = 200  # and reconfiguration (replacement) steps
    replace_grace_ms: int = REPLACE_GRACE_MS_DEFAULT
    replace_lag_entries: int = REPLACE_LAG_ENTRIES_DEFAULT
    catch_up_slack_entries: int = CATCH_UP_SLACK_DEFAULT
    learner_timeout_ms: int = LEARNER_TIMEOUT_MS_DEFAULT
    # lag that stops shrinking (controller/lag.py): above this many entries, for this long
    lag_stuck_entries: int = LAG_ENTRIES_MIN
    lag_stuck_after_ms: int = int(STUCK_AFTER_S * 1000)
    node_request_budget_ms: int = 10_000  # add_range / drop_table retries at most this long
    node_request_attempt_ms: int = 2000  # one add_range / drop_table request
    view_catch_up_ms: int = 5000  # a new active waits at most this for its view
    # per etcd endpoint and call: a member cut off by a partition must cost less than the
    # lease (5 s made a meta on the healthy side lose its lease after a partition healed)
    etcd_timeout_ms: int = 2000
    split: SplitConfig = field(default_factory=SplitConfig)  # automatic splits
    split_interval_ms: int = 1000  # how often the controller looks for a range to split
    # rolling metadata backups (rangekv.metadata.backups); off without a directory
    backup_dir: str | None = None
    backup_min_interval_s: float = 5.0
    backup_interval_s: float = 300.0
    backup_keep: int = 20
    metrics_listen: tuple[str, int] | None = None  # serve Prometheus /metrics here
    log_format: str = "text"  # how the process logs (rangekv.log): text or json
    log_level: str = "INFO"
    planted_bug: str | None = None  # tests only: a controller or mover bug (--planted-bug)

    def __post_init__(self) -> None:
        assert self.id > 0, self.id
        assert self.etcd, "at least one etcd endpoint"
        assert self.keepalive_interval_ms < self.lease_ttl_s * 1000 / 2, "renew well within TTL"
        assert 0 <= self.lease_safety_fraction < 0.5
        self.planner_config()  # its own checks

    def planner_config(self) -> PlannerConfig:
        """The controller's part of the configuration."""
        return PlannerConfig(
            groups_min=self.groups_min, group_size=self.group_size,
            heartbeat_timeout_ms=self.heartbeat_timeout_ms,
            campaign_timeout_ms=self.campaign_timeout_ms,
            election_interval_ms=self.election_interval_ms, stall_ms=self.stall_ms,
            stall_grace_ms=self.stall_grace_ms, formation_interval_ms=self.formation_interval_ms,
            split_interval_ms=self.split_interval_ms, replace_grace_ms=self.replace_grace_ms,
            replace_lag_entries=self.replace_lag_entries,
            catch_up_slack_entries=self.catch_up_slack_entries,
            learner_timeout_ms=self.learner_timeout_ms,
            lag_stuck_entries=self.lag_stuck_entries,
            lag_stuck_after_ms=self.lag_stuck_after_ms, split=self.split)



# -- the service -------------------------------------------------------------------------------


class MetaService:
    """One meta process (active or standby). ``await start()``, then ``await stop()``.

    The parts (see the module docstring) share this object: its config, clock, etcd client and
    store, the view, the nodes' latest heartbeats (``beats``) and the group leaders' range
    figures (``range_reports``), the current term, and the controller's ``planner``.
    """

    def __init__(
        self,
        config: MetaConfig,
        etcd: KVClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        planner_factory: planted.PlannerFactory = Planner,
        mover_factory: MoverFactory = RangeMover,
    ) -> None:
        self.config = config
        self.log = logging.getLogger(f"rangekv.meta.{config.id}")
        self._owns_etcd = etcd is None
        # an EtcdClient, or etcd in memory (rangekv.metadata.memory.MemoryEtcd)
        self.etcd: KVClient = etcd or EtcdClient(list(config.etcd),
                                                 timeout_s=config.etcd_timeout_ms / 1000)
        self.store = MetaStore(self.etcd)
        self.clock = clock
        self.wall_ns = wall_ns
        self.address = config.listen
        self.guard = wire.ServerGuard(f"meta {config.id}")
        self.beats: dict[int, Beat] = {}
        self.range_reports: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self.term: Term | None = None
        self.active_hint: str | None = None
        self.planner = planner_factory(config.planner_config())  # or a planted bug's
        self.follower = ViewFollower(self)
        self.election = Election(self)
        self.handlers = Handlers(self)
        self.leaders = Leaders(self)
        self.control = ControlLoop(self)
        self.mover = mover_factory(  # RangeMover, or a planted bug's
            self.store, self.leaders.tell, self.control.record_decision,
            lambda revision: self.follower.catch_up(revision,
                                                    self.config.view_catch_up_ms / 1000),
            self.log, self.clock, self.table_name)
        self.metrics = MetaMetrics(self)
        self._said: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._meta_backups: Any = None  # rolling metadata backups (--backup-dir)
        self._election_task: asyncio.Task[None] | None = None
        self._view_task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self.stopping = False
        self._stopped = asyncio.Event()
        self.exit_code = 0

    # -- what the parts share -------------------------------------------------------------------

    @property
    def view(self) -> ClusterView:
        return self.follower.view

    @property
    def revs(self) -> dict[bytes, int]:
        return self.follower.revs

    @property
    def lag_watch(self) -> LagWatch:
        return self.planner.lag_watch

    @property
    def is_active(self) -> bool:
        return self.active_term() is not None

    def active_term(self) -> Term | None:
        term = self.term
        if term is None or self.clock() >= term.deadline_s:
            return None
        return term

    def require_active(self) -> Term:
        term = self.active_term()
        if term is None:
            hint = self.view.active_meta.get("address") if self.view.active_meta else None
            if hint is None or hint == self.address:
                hint = self.active_hint if self.active_hint != self.address else None
            raise errors.NotActive(f"meta {self.config.id} is a standby", active_hint=hint)
        return term

    def table_name(self, table_id: int) -> str:
        return next((t.name for t in self.view.tables.values() if t.id == table_id),
                    str(table_id))

    def say(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log a condition that may repeat every tick at most once per ``LOG_REPEAT_S``."""
        now = self.clock()
        last = self._said.get(key)
        if last is None or now - last >= LOG_REPEAT_S:
            self._said[key] = now
            self.log.log(level, msg, *args)

    def clear(self, key: str) -> None:
        self._said.pop(key, None)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"meta{self.config.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.critical(
                "task %s failed; the process must stop", task.get_name(), exc_info=exc
            )
            self.fatal(f"task {task.get_name()} failed: {exc!r}")

    def fatal(self, why: str) -> None:
        """A bug: stop acting at once and shut the process down (exit code 70)."""
        self.term = None
        self.exit_code = 70  # EX_SOFTWARE
        self.request_stop(why)
        if not self.stopping:
            self.spawn(self.stop(), "fatal-stop")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_host_port(self.config.listen)
        self._server = await asyncio.start_server(self.handlers.accept, host, port)
        bound_port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{bound_port}"
        self.log.info(
            "meta %d listening on %s; etcd %s; want %d group(s) of %d",
            self.config.id,
            self.address,
            ",".join(self.config.etcd),
            self.config.groups_min,
            self.config.group_size,
        )
        if self.config.metrics_listen is not None:
            self._metrics_server = MetricsServer(self.metrics.registry)
            await self._metrics_server.start(*self.config.metrics_listen)
            self.log.info("meta %d serves /metrics on %s:%d", self.config.id,
                          *self.config.metrics_listen)
        if self.config.backup_dir:
            from pathlib import Path

            from rangekv.metadata.backups import MetaBackups

            self._meta_backups = MetaBackups(
                self.etcd, Path(self.config.backup_dir), active=lambda: self.is_active,
                min_interval_s=self.config.backup_min_interval_s,
                interval_s=self.config.backup_interval_s, keep=self.config.backup_keep)
            self.follower.on_change.append(self._meta_backups.changed)
        self._view_task = self.spawn(self.follower.run(), "view")
        self._election_task = self.spawn(self.election.run(), "election")
        if self._meta_backups is not None:
            self.spawn(self._meta_backups.run(), "metadata-backups")

    def request_stop(self, why: str = "requested") -> None:
        if not self._stop_requested.is_set():
            self.log.info("stopping: %s", why)
        self._stop_requested.set()

    async def run(self) -> int:
        """Serve until ``request_stop`` (or a fatal error), then stop; the exit code."""
        await self._stop_requested.wait()
        await self.stop()
        return self.exit_code

    async def stop(self, revoke: bool = True) -> None:
        """Stop serving. ``revoke=False`` leaves the lease to expire (a simulated crash)."""
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        self._stop_requested.set()
        self.term = None  # stop acting at once
        await self.mover.cancel_all()
        for task in (self._election_task, self._view_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._election_task, self._view_task) if t), return_exceptions=True
        )
        lease_id, self.election.held_lease = self.election.held_lease, None
        if lease_id is not None and revoke:
            await self.election.revoke_quietly(lease_id)
            self.log.info("gave up the active role (lease %x revoked)", lease_id)
        if self._server is not None:
            self._server.close()
        for task in list(self.handlers.conn_tasks):
            task.cancel()
        await asyncio.gather(*self.handlers.conn_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._metrics_server is not None:
            await self._metrics_server.close()
        await self.leaders.close()
        if self._owns_etcd:
            await self.etcd.close()
        self.log.info("meta %d stopped", self.config.id)
        self._stopped.set()


# -- the process --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> MetaConfig:
    parser = argparse.ArgumentParser(
        prog="rangekv meta", description="rangekv metadata manager and controller"
    )
    parser.add_argument("--id", type=int, required=True, help="this meta's id (positive)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for the meta ops")
    parser.add_argument("--etcd", required=True, help="etcd client URL[,URL...]")
    parser.add_argument(
        "--groups-min",
        type=int,
        default=1,
        help="form groups from spares until there are this many",
    )
    parser.add_argument(
        "--heartbeat-timeout-ms",
        type=int,
        default=HEARTBEAT_TIMEOUT_MS_DEFAULT,
        help="a node is live if it heartbeated within this "
        f"(default {HEARTBEAT_TIMEOUT_MS_DEFAULT})",
    )
    parser.add_argument("--backup-dir", help="keep rolling backups of the metadata here (off "
                        "by default): after changes and on a schedule, the newest --backup-keep")
    parser.add_argument("--backup-min-interval-s", type=float, default=5.0,
                        help="at most one metadata backup per this many seconds (default 5)")
    parser.add_argument("--backup-interval-s", type=float, default=300.0,
                        help="a metadata backup at least this often (default 300)")
    parser.add_argument("--backup-keep", type=int, default=20,
                        help="metadata backups kept (default 20)")
    defaults = SplitConfig()
    parser.add_argument("--split-bytes", type=int, default=defaults.bytes_max,
                        help="split a range storing more than this many bytes "
                        f"(default {defaults.bytes_max})")
    parser.add_argument("--split-ops", type=float, default=defaults.ops_max,
                        help="split a range serving more reads+writes per second than this "
                        f"(default {defaults.ops_max:g})")
    parser.add_argument("--split-bytes-per-s", type=float, default=defaults.bytes_per_s_max,
                        help="split a range reading+writing more bytes per second than this "
                        f"(default {defaults.bytes_per_s_max:g})")
    parser.add_argument("--split-cooldown-s", type=float, default=defaults.cooldown_s,
                        help="do not split a table again sooner than this after a split "
                        f"(default {defaults.cooldown_s:g})")
    parser.add_argument("--group-ranges-max", type=int, default=defaults.group_ranges_max,
                        help="a group serving this many ranges has no room for a moved one; "
                        "with none left, splits form a new group from spares "
                        f"(default {defaults.group_ranges_max})")
    parser.add_argument("--no-auto-split", action="store_true",
                        help="never split or move ranges by itself")
    parser.add_argument(
        "--replace-grace-ms",
        type=int,
        default=REPLACE_GRACE_MS_DEFAULT,
        help="replace a follower that has been dead or lagging this long "
        f"(default {REPLACE_GRACE_MS_DEFAULT})",
    )
    parser.add_argument(
        "--replace-lag-entries",
        type=int,
        default=REPLACE_LAG_ENTRIES_DEFAULT,
        help="a follower this far behind the leader's commit index is lagging "
        f"(default {REPLACE_LAG_ENTRIES_DEFAULT})",
    )
    parser.add_argument(
        "--catch-up-slack-entries",
        type=int,
        default=CATCH_UP_SLACK_DEFAULT,
        help="a learner this close to the leader's commit index is caught up "
        f"(default {CATCH_UP_SLACK_DEFAULT})",
    )
    parser.add_argument("--metrics-listen", type=listen_address, metavar="HOST:PORT",
                        help="serve Prometheus /metrics on this address (default: none)")
    parser.add_argument(
        "--learner-timeout-ms",
        type=int,
        default=LEARNER_TIMEOUT_MS_DEFAULT,
        help="drop (and flag) a learner not caught up within this "
        f"(default {LEARNER_TIMEOUT_MS_DEFAULT})",
    )
    parser.add_argument(
        "--lag-stuck-entries", type=int, default=LAG_ENTRIES_MIN,
        help="a member or learner further than this behind its leader's commit whose lag "
        "stops shrinking is reported stuck (a lag_stuck decision, a WARNING, metrics; default "
        f"{LAG_ENTRIES_MIN})")
    parser.add_argument(
        "--lag-stuck-after-ms", type=int, default=int(STUCK_AFTER_S * 1000),
        help="... once its lag has not shrunk for this long (default "
        f"{int(STUCK_AFTER_S * 1000)})")
    # Tests only (``rangekv chaos --planted-bug``): a controller or a range mover that breaks
    # one rule on purpose (rangekv.controller.bugs, rangekv.metadata.mover_bugs). Hidden,
    # command line only.
    rangekv_config.option(parser.add_argument("--planted-bug",
                                              choices=sorted({**planted.BUGS, **MOVER_BUGS}),
                                              help=argparse.SUPPRESS), configurable=False)
    ns = rangekv_config.parse(parser, "meta", argv)
    if ns.lag_stuck_entries < 0 or ns.lag_stuck_after_ms <= 0:
        parser.error("--lag-stuck-entries must be >= 0 and --lag-stuck-after-ms > 0")
    if ns.id <= 0:
        parser.error("--id must be positive")
    try:
        split_host_port(ns.listen)
    except ValueError as exc:
        parser.error(str(exc))
    endpoints = tuple(e.strip() for e in ns.etcd.split(",") if e.strip())
    if not endpoints:
        parser.error("--etcd needs at least one URL")
    if ns.groups_min < 0 or ns.heartbeat_timeout_ms <= 0:
        parser.error("--groups-min must be >= 0 and --heartbeat-timeout-ms > 0")
    if ns.replace_grace_ms <= 0 or ns.replace_lag_entries <= 0 or ns.learner_timeout_ms <= 0:
        parser.error("--replace-grace-ms, --replace-lag-entries and --learner-timeout-ms "
                     "must be positive")
    if ns.catch_up_slack_entries < 0:
        parser.error("--catch-up-slack-entries must be >= 0")
    if ns.backup_min_interval_s < 0 or ns.backup_interval_s <= 0 or ns.backup_keep < 1:
        parser.error("--backup-min-interval-s must be >= 0, --backup-interval-s > 0 and "
                     "--backup-keep >= 1")
    return MetaConfig(
        id=ns.id,
        listen=ns.listen,
        etcd=endpoints,
        groups_min=ns.groups_min,
        heartbeat_timeout_ms=ns.heartbeat_timeout_ms,
        split=SplitConfig(
            bytes_max=ns.split_bytes, ops_max=ns.split_ops,
            bytes_per_s_max=ns.split_bytes_per_s, cooldown_s=ns.split_cooldown_s,
            group_ranges_max=ns.group_ranges_max, enabled=not ns.no_auto_split),
        replace_grace_ms=ns.replace_grace_ms,
        replace_lag_entries=ns.replace_lag_entries,
        catch_up_slack_entries=ns.catch_up_slack_entries,
        learner_timeout_ms=ns.learner_timeout_ms,
        lag_stuck_entries=ns.lag_stuck_entries,
        lag_stuck_after_ms=ns.lag_stuck_after_ms,
        backup_dir=ns.backup_dir,
        backup_min_interval_s=ns.backup_min_interval_s,
        backup_interval_s=ns.backup_interval_s,
        backup_keep=ns.backup_keep,
        metrics_listen=ns.metrics_listen,
        log_format=ns.log_format,
        log_level=ns.log_level,
        planted_bug=ns.planted_bug,
    )


# the text layout meta logs have always had (tests and operators grep it)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _setup_logging(config: MetaConfig) -> None:
    rangekv_log.setup(f"meta-{config.id}", config.log_level, config.log_format, _TEXT_FORMAT)


def factories(config: MetaConfig) -> dict[str, Any]:
    """The controller and the range mover a meta runs: the real ones, or a planted bug's in
    the one its ``--planted-bug`` names (tests only)."""
    bug = config.planted_bug
    return {"planner_factory": planted.BUGS[bug] if bug in planted.BUGS else Planner,
            "mover_factory": MOVER_BUGS[bug] if bug in MOVER_BUGS else RangeMover}


async def run(config: MetaConfig) -> int:
    """Run one meta until SIGTERM/SIGINT; the exit code."""
    service = MetaService(config, **factories(config))
    if config.planted_bug:
        service.log.warning("planted bug %r: this meta's controller breaks a rule on purpose "
                            "(rangekv chaos --planted-bug)", config.planted_bug)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop, f"got {sig.name}")
    try:
        await service.start()
    except OSError as exc:
        service.log.error("cannot listen on %s: %s", config.listen, exc)
        await service.stop()
        return 1
    return await service.run()


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    _setup_logging(config)
    try:
        return aio.run(run(config))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
