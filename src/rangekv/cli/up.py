"""``rangekv up`` / ``rangekv down`` / ``rangekv demo``: a whole cluster on this machine.

``up`` starts whatever of etcd, the two metas (one active, one standby), the nodes, the rms and
HAProxy is not running yet (see :mod:`rangekv.cluster.local`), waits until the cluster takes
writes, and prints the endpoints. Without ``--detach`` it stays in the foreground and stops
everything on Ctrl-C or SIGTERM; with ``--detach`` it returns and the processes keep running until
``rangekv down``. If starting fails, it stops what it started and prints the end of each log.

Every rangekv process it starts gets ``--log-format`` / ``--log-level`` when ``up`` was given
them, and ``--config FILE`` when ``up`` read one: one file configures the whole local cluster
(``[up]`` for ``up`` itself, ``[node]``, ``[meta]``, ``[rm]``, ``[log]`` for the processes;
the flags ``up`` sets per process, such as ``--id`` and ``--listen``, win over the file).

``--demo`` (and ``rangekv demo`` against any endpoint) runs the seed's Stocks example through the
Python client and prints each step with its result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from rangekv import config, errors
from rangekv.cli import DEFAULT_ENDPOINT, Context

DATA_DIR_DEFAULT = Path("rangekv-data")
READY_TIMEOUT_S_DEFAULT = 90.0
GROUPS_DEFAULT = 2
SUPERVISE_INTERVAL_S = 1.0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "up", parents=[common], help="start a local cluster (etcd, 2 metas, nodes, rms, HAProxy)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_DIR_DEFAULT,
        help=f"where everything lives (default ./{DATA_DIR_DEFAULT})",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="HAProxy's port; the others follow it (default 8400, or the port the "
        "data dir was created with)",
    )
    p.add_argument(
        "--groups",
        type=int,
        default=None,
        help=f"replication groups of three nodes (default {GROUPS_DEFAULT} for a new data dir, "
        "else what it has; more can be asked for later: they form from spares)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="storage nodes (default: three per group plus two spares)",
    )
    p.add_argument("--rms", type=int, default=None, help="request managers (default 2)")
    p.add_argument(
        "--detach",
        action="store_true",
        help="return once the cluster serves; stop it with `rangekv down`",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="once ready, run the Stocks example through the Python client",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help=f"give up after this long (default {READY_TIMEOUT_S_DEFAULT:g})",
    )
    # None: pass nothing, so that each process uses its own default (text, INFO)
    config.add_log_options(p, fmt=None, level=None,
                           help_suffix=", for every rangekv process started (default: theirs)")
    p.set_defaults(func=cmd_up)
    config.bind(p, "up")

    p = sub.add_parser("down", parents=[common], help="stop the local cluster of a data dir")
    p.add_argument(
        "--data-dir", type=Path, default=DATA_DIR_DEFAULT, help=f"default ./{DATA_DIR_DEFAULT}"
    )
    p.set_defaults(func=cmd_down)
    config.bind(p, "up")

    p = sub.add_parser(
        "demo", parents=[common], help="run the Stocks example (creates and drops table Stocks)"
    )
    p.set_defaults(func=cmd_demo)


# --- the demo ---------------------------------------------------------------------------------


class DemoError(Exception):
    """The cluster answered, but not what the Stocks example expects."""


def run_demo(db: Any, say: Callable[[str], None], table: str = "Stocks") -> None:
    """The seed's example: create, three puts, get, list, two puts on one key, delete, drop."""

    def step(call: str, result: str) -> None:
        say(f"  {call:<28} {result}")

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise DemoError(what)

    say(f"demo: the {table} example of the design notes, through the Python client")
    try:
        db.create_table(table)
    except errors.TableExists:
        step(f"create_table {table}", "exists (left by an earlier run): dropping it first")
        db.drop_table(table)
        db.create_table(table)
    step(f"create_table {table}", "ok")
    for key, value in [("B", "100"), ("A", "120"), ("C", "135")]:
        step(f"put {table} {key} {value}", f"seq {db.put(table, key, value)}")

    item = db.get(table, "B")
    check(item is not None and item.value == b"100", f"get B returned {item!r}")
    step(f"get {table} B", f"{item.value.decode()}  (seq {item.seq})")

    page = db.list(table)
    got = [(i.key, i.value) for i in page.items]
    check(got == [(b"A", b"120"), (b"B", b"100"), (b"C", b"135")], f"list returned {got!r}")
    for n, i in enumerate(page.items):
        step(
            f"list {table}" if n == 0 else "", f"{i.key.decode()} {i.value.decode()}  (seq {i.seq})"
        )

    first = db.put(table, "D", "140")
    step(f"put {table} D 140", f"seq {first}")
    second = db.put(table, "D", "160")
    step(f"put {table} D 160", f"seq {second}")
    check(second > first, f"the second put's seq {second} is not above the first's {first}")
    step("", "the second seq is greater: the later put wins")
    item = db.get(table, "D")
    check(
        item is not None and item.value == b"160" and item.seq == second, f"get D returned {item!r}"
    )
    step(f"get {table} D", f"{item.value.decode()}  (seq {item.seq})")

    check(db.delete(table, "D") is True, "delete D found nothing")
    step(f"delete {table} D", "deleted")
    check(db.get(table, "D") is None, "D is still there after delete")
    step(f"get {table} D", "(not found)")
    db.drop_table(table)
    step(f"drop_table {table}", "ok")
    say("demo: ok")


def _demo(ctx: Context, db: Any, say: Callable[[str], None]) -> int:
    try:
        run_demo(db, say)
    except DemoError as exc:
        ctx.err(f"error: demo: {exc}")
        return 1
    return 0


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        return _demo(ctx, db, ctx.out)


# --- up and down ------------------------------------------------------------------------------


def describe_lines(info: dict[str, Any]) -> list[str]:
    rows = [("endpoint", f"{info['endpoint']}   (HAProxy, HTTP: curl and other languages)")]
    if info.get("native_endpoint"):
        rows.append(("native", f"{info['native_endpoint']}   (HAProxy, the native protocol: "
                               "the Python client and the CLI)"))
    rows += [(f"rm-{i}", url) for i, url in enumerate(info["rms"], start=1)]
    rows += [(f"meta-{i}", addr) for i, addr in enumerate(info["metas"], start=1)]
    rows += [(f"node-{i}", addr) for i, addr in enumerate(info["nodes"], start=1)]
    rows += [("etcd", info["etcd"]), ("data dir", info["data_dir"]), ("logs", info["log_dir"])]
    return [f"  {name:<9} {value}" for name, value in rows]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace, ctx: Context) -> int:
    from rangekv.client import Client
    from rangekv.cluster.local import ClusterError, LocalCluster

    try:
        groups = args.groups
        if groups is None and not (args.data_dir / "cluster.json").exists():
            groups = GROUPS_DEFAULT
        cluster = LocalCluster.open(
            args.data_dir, args.base_port, args.nodes, args.rms, groups,
            log_format=args.log_format, log_level=args.log_level,
            config_file=Path(args.config).absolute() if args.config else None)
    except ClusterError as exc:
        ctx.err(f"error: cluster: {exc}")
        return 1
    before = set(cluster.running())
    say = ctx.err if args.json else ctx.out
    old_handlers = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    detached = False
    try:
        try:
            started = cluster.start()
            if started:
                say(f"starting {', '.join(started)} (logs in {cluster.log_dir})")
            cluster.wait_ready(args.ready_timeout)
        except (ClusterError, KeyboardInterrupt) as exc:
            ours = [n for n in cluster.running() if n not in before]
            if ours:
                cluster.stop(ours)
            if isinstance(exc, KeyboardInterrupt):
                raise
            ctx.err(f"error: cluster: {exc}")
            return 1

        info = cluster.describe()
        info["started"] = started
        info["already_running"] = sorted(before)
        if args.json:
            ctx.out(json.dumps(info))
        else:
            ctx.out(f"rangekv is up ({len(cluster.names)} processes, {len(started)} started now)")
            for line in describe_lines(info):
                ctx.out(line)
            hint = ("" if cluster.native_endpoint == DEFAULT_ENDPOINT
                    else f"--endpoint {cluster.native_endpoint} ")
            ctx.out(f"try: {_own_command()} {hint}tables")

        if args.demo:
            with Client(cluster.native_endpoint) as db:
                if _demo(ctx, db, say) != 0:
                    if args.detach:
                        cluster.release()
                        detached = True
                    else:
                        cluster.stop()
                    return 1

        if args.detach:
            data_dir = "" if args.data_dir == DATA_DIR_DEFAULT else f" --data-dir {args.data_dir}"
            say(f"running in the background; stop it with: {_own_command()} down{data_dir}")
            cluster.release()
            detached = True
            return 0

        say("running in the foreground; Ctrl-C stops the cluster")
        _supervise(cluster, ctx)
        return 0  # not reached: _supervise returns by KeyboardInterrupt
    except KeyboardInterrupt:
        if not detached:
            say("stopping ...")
            stopped = cluster.stop()
            say(f"stopped {', '.join(stopped) or 'nothing'}")
        return 0
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _supervise(cluster: Any, ctx: Context) -> None:
    """Report processes that exit (once each) until interrupted."""
    down: set[str] = set()
    while True:
        time.sleep(SUPERVISE_INTERVAL_S)
        for name in cluster.names:
            if cluster.alive(name):
                down.discard(name)
            elif name not in down:
                down.add(name)
                ctx.err(
                    f"warning: {name} is not running; see {cluster.log_path(name)} "
                    f"(`rangekv up --detach` in another terminal restarts it)"
                )


def cmd_down(args: argparse.Namespace, ctx: Context) -> int:
    from rangekv.cluster.local import ClusterError, LocalCluster

    if not args.data_dir.exists():
        ctx.err(f"nothing to stop: {args.data_dir} does not exist")
        return 0
    try:
        cluster = LocalCluster.open(args.data_dir)
        stopped = cluster.stop()
    except ClusterError as exc:
        ctx.err(f"error: cluster: {exc}")
        return 1
    if args.json:
        ctx.out(json.dumps({"stopped": stopped}))
    else:
        ctx.out(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _own_command() -> str:
    """How the user can run this CLI again: a bare ``rangekv`` only if that is on PATH."""
    exe = Path(sys.argv[0])
    if exe.name == "rangekv" and shutil.which("rangekv") != str(exe.resolve()):
        try:
            return os.path.relpath(exe)
        except ValueError:
            return str(exe)
    return "rangekv"
