"""The ``rangekv`` console script: server processes, the local cluster, and data commands.

    rangekv node|meta|rm ARGS...        a server process (flags in docs/internals.md)
    rangekv up [--detach] [--demo]      a whole cluster on this machine; `rangekv down` stops it
    rangekv cluster                     the topology (groups, leaders, ranges, nodes)
    rangekv status                      groups with lag, ranges with size and load, nodes, decisions
    rangekv create-table|drop-table|tables|put|get|delete|list ...
    rangekv backup DIR; rangekv restore DIR --data-dir D | --node ID --node-dir PATH |
        --metadata --etcd URLS           (one machine; one node or the metadata of several)

Global options (before or after the subcommand): ``--endpoint URL`` (repeatable; default
``$RANGEKV_ENDPOINT`` or rangekv://127.0.0.1:8401, the native port; http:// URLs work too),
``--json``, ``--timeout SECONDS``,
``--config FILE`` (its ``[client]`` table sets ``endpoint`` and ``timeout``, ``[up]`` the
options of ``up`` and ``down``; see :mod:`rangekv.config`).

Exit status: 0 success, 1 an error from rangekv (printed as ``error: <code>: <message>``),
2 a usage error, 130 interrupted.

The server entry points are imported only when dispatched to, so the rest of the CLI works even
when one of them is broken.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from rangekv import __version__, config, errors
from rangekv.cli import DEFAULT_ENDPOINT, ENV_ENDPOINT, Context

# subcommand -> dotted path of its ``main(argv: list[str]) -> int``
PROCESS_COMMANDS: dict[str, tuple[str, str]] = {
    "node": ("rangekv.node.main", "a storage node (member of a replication group or a spare)"),
    "meta": ("rangekv.metadata.service.main", "the metadata manager and controller"),
    "rm": ("rangekv.request_manager.app.main", "a request manager (the HTTP API)"),
    "sim": ("rangekv.sim.main.main", "the deterministic simulation (--seeds N, --bug NAME)"),
    "sim-scale": ("rangekv.sim.scale.main",
                  "the real controller at 1,000 groups and 100,000 ranges, its ticks timed"),
    "chaos": ("rangekv.chaos.main.main",
              ("a real cluster in network namespaces under attack by faults, and check the history "
               "(--time S, --nemesis LIST, --seed N)")),
    "bench": ("rangekv.bench.main.main",
              ("benchmarks that print figures: calibrate, closed, open, ycsb, scan, client, "
               "routing, all, report")),
    "check-history": ("rangekv.check.main.main",
                      ("the linearizability checker on a recorded history "
                       "(--model register|kv|rangekv FILE)")),
}


def _add_global_options(parser: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    # In subcommands the defaults are SUPPRESS so that an option given before the subcommand
    # is not reset by the subcommand's parser.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_subcommand else value

    group = parser.add_argument_group("global options")
    config.option(group.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        default=default(None),
        help=f"a request manager or load balancer URL; repeat to fail over "
        f"(default ${ENV_ENDPOINT} or {DEFAULT_ENDPOINT})",
    ), env=ENV_ENDPOINT)
    config.option(group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    ), configurable=False)  # a file must not change what scripts parse
    group.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        default=default(10.0),
        help="per-request timeout (default 10)",
    )
    config.add_config_option(group, default=default(None))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    from rangekv.cli import backup, config_cmd, load, ops, up

    parser = argparse.ArgumentParser(
        prog="rangekv",
        description="rangekv: a durable, strongly consistent, range-partitioned key-value "
        "database.",
        epilog="Start here: rangekv up --detach --demo",
    )
    parser.add_argument("--version", action="version", version=f"rangekv {__version__}")
    _add_global_options(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, in_subcommand=True)

    for name, (target, help_text) in PROCESS_COMMANDS.items():
        p = sub.add_parser(
            name,
            help=f"run {help_text}",
            add_help=False,
            description=f"Run {help_text}; flags are passed to {target}.",
        )
        p.add_argument("process_argv", nargs=argparse.REMAINDER)
        p.set_defaults(func=_dispatch_from_parser, process=name)

    up.add_parsers(sub, common)
    ops.add_parsers(sub, common)
    load.add_parser(sub, common)
    backup.add_parsers(sub, common)
    config_cmd.add_parser(sub, common)
    return parser


def resolve_entry_point(dotted: str) -> Callable[[list[str]], int]:
    """``"pkg.mod.main"``: a function ``main`` in ``pkg.mod``, or a module ``main`` with one."""
    obj: Any
    try:
        obj = importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name != dotted:
            raise
        module_name, _, attr = dotted.rpartition(".")
        obj = getattr(importlib.import_module(module_name), attr)
    if isinstance(obj, ModuleType):
        obj = obj.main
    if not callable(obj):
        raise TypeError(f"{dotted} is not callable")
    return obj  # type: ignore[no-any-return]


def dispatch_process(name: str, argv: list[str], ctx: Context) -> int:
    target = PROCESS_COMMANDS[name][0]
    try:
        entry = resolve_entry_point(target)
    except Exception as exc:  # any import failure: report it, keep the CLI usable
        ctx.err(
            f"error: unavailable: cannot load {target} for `rangekv {name}`: "
            f"{type(exc).__name__}: {exc}"
        )
        return 1
    rc = entry(list(argv))
    return int(rc or 0)


def _dispatch_from_parser(args: argparse.Namespace, ctx: Context) -> int:
    return dispatch_process(args.process, list(args.process_argv), ctx)


def run(argv: Sequence[str], ctx: Context) -> int:
    """Parse ``argv`` and run the command; returns the exit status (never raises SystemExit)."""
    argv = list(argv)
    if argv and argv[0] in PROCESS_COMMANDS:
        # Server processes parse their own flags, including --help.
        return dispatch_process(argv[0], argv[1:], ctx)
    parser = build_parser()
    try:
        args = config.parse(parser, "client", argv, log_options=False)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args, ctx) or 0)
    except errors.RangeKVError as exc:
        ctx.err(f"error: {exc.code}: {exc.message}")
        return 1
    except KeyboardInterrupt:
        ctx.err("interrupted")
        return 130
    except BrokenPipeError:
        # `rangekv list T | head`: the reader left; not an error worth a traceback
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    ctx = Context(stdout=sys.stdout.buffer, stderr=sys.stderr, stdin=sys.stdin.buffer)
    rc = run(sys.argv[1:] if argv is None else argv, ctx)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return rc


if __name__ == "__main__":
    sys.exit(main())
