"""``rangekv config``: the configuration every process reads, for operators.

    rangekv config example COMPONENT|all   a commented TOML file with every option's default
    rangekv config show COMPONENT          the values a process would use, and their sources
    rangekv config check                   every table of the --config file, checked

All three read the parsers the processes themselves use (:func:`parser_for`), so they cannot
drift from the options; ``show`` and ``check`` read the file named by
``--config`` or ``$RANGEKV_CONFIG`` and the environment, exactly as the process would.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import textwrap
from collections.abc import Sequence
from typing import Any

from rangekv import config
from rangekv.cli import Context

USAGE_ERROR = 2

# Where each server component's parser is built (``module:function``, imported only when asked
# for): ``config.capture_parser`` runs it until it calls ``config.parse`` and takes the parser.
PROCESS_PARSE_ENTRIES = {
    "node": "rangekv.node.server:main",
    "meta": "rangekv.metadata.service:parse_args",
    "rm": "rangekv.request_manager.app:_parse_args",
}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "config", parents=[common],
        help="configuration files: a commented example, the effective values, a check",
        description="Configuration of every rangekv process (see `rangekv node --help`, ...): "
        "command line, then environment variables, then the TOML file of --config or "
        f"${config.CONFIG_ENV}, then the built-in default.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    e = verbs.add_parser("example", parents=[common],
                         help="print a commented TOML file with every option and its default")
    e.add_argument("component", choices=(*config.COMPONENTS, "all"),
                   help="the process whose options to print, or all")
    e.set_defaults(func=cmd_example)
    s = verbs.add_parser("show", parents=[common],
                         help="print the values a component would use and where each came from")
    s.add_argument("component", choices=config.COMPONENTS,
                   help="the process whose effective values to print")
    s.set_defaults(func=cmd_show)
    c = verbs.add_parser("check", parents=[common],
                         help="check every table of the config file against its component")
    c.set_defaults(func=cmd_check)


def cmd_example(args: argparse.Namespace, ctx: Context) -> int:
    components = config.COMPONENTS if args.component == "all" else (args.component,)
    ctx.stdout.write(example(components).encode())
    ctx.stdout.flush()
    return 0


def _resolved(component: str, path: str | None) -> list[config.Setting]:
    settings = component_settings(component)
    origin = "--config" if path else f"${config.CONFIG_ENV}"
    return config.resolve(settings, path, os.environ, origin)


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    try:
        settings = _resolved(args.component, args.config)
    except config.ConfigError as exc:
        ctx.err(f"error: config: {exc}")
        return USAGE_ERROR
    if args.json:
        ctx.out(json.dumps({"component": args.component, "file": args.config, "settings": [
            {"section": s.section, "key": s.key, "env": s.env, "source": s.source,
             "value": _jsonable(s.value), "required": s.required} for s in settings]}))
        return 0
    ctx.out(f"# rangekv {args.component}: effective configuration "
            f"(file: {args.config or 'none'}; the command line would still win)")
    missing = []
    for section in [s for s in config.SECTIONS if any(t.section == s for t in settings)]:
        ctx.out(f"[{section}]")
        rows = []
        for s in (t for t in settings if t.section == section):
            if s.value is None:
                what = "required, not set" if s.required else "not set"
                rows.append((f"# {s.key}", f"{what} (env {s.env})"))
                if s.required:
                    missing.append(s.key)
            else:
                rows.append((f"{s.key} = {config.toml_value(s.value)}", s.source))
        width = max(len(left) for left, _ in rows)
        for left, right in rows:
            ctx.out(f"{left:<{width}}  # {right}")
    if missing:
        ctx.err(f"note: {args.component} needs {', '.join(missing)} from the command line, "
                "the environment or the file")
    return 0


def cmd_check(args: argparse.Namespace, ctx: Context) -> int:
    if not args.config:
        ctx.err(f"error: config: no file to check: give --config FILE or ${config.CONFIG_ENV}")
        return USAGE_ERROR
    try:
        doc = config.load_file(args.config)
        checked = []
        for component in config.COMPONENTS:
            wanted = {component} | ({config.LOG_SECTION} if component != "client" else set())
            if wanted & doc.keys():
                _resolved(component, args.config)
                checked.append(component)
    except config.ConfigError as exc:
        ctx.err(f"error: config: {exc}")
        return USAGE_ERROR
    tables = ", ".join(f"[{t}]" for t in doc) or "no tables"
    ctx.out(f"{args.config}: ok ({tables}; checked as {', '.join(checked) or 'nothing'})")
    return 0


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# --- the parsers and settings of every component ---------------------------------------------


def parser_for(component: str) -> argparse.ArgumentParser:
    """The prepared parser ``component`` parses its options with (``up`` and ``client``: the
    CLI's, whose bound parts are those sections)."""
    if component in ("up", "client"):
        from rangekv.cli.main import build_parser  # (cli.main imports this module)

        return config.prepare(build_parser(), "client", log_options=False)
    if component not in PROCESS_PARSE_ENTRIES:
        raise ValueError(f"no component {component!r} (one of {', '.join(config.COMPONENTS)})")
    module_name, _, attr = PROCESS_PARSE_ENTRIES[component].partition(":")
    return config.capture_parser(getattr(importlib.import_module(module_name), attr))


def component_settings(component: str) -> list[config.Setting]:
    """The settings ``component`` reads: its own section and [log] (``up``: also the [log]
    options it passes on to the processes it starts). Each key once, in parser order."""
    wanted = {component, config.LOG_SECTION} if component != "client" else {component}
    out: list[config.Setting] = []
    seen: set[tuple[str, str]] = set()
    for s in config.settings_of(parser_for(component)):
        if s.section in wanted and (s.section, s.key) not in seen:
            seen.add((s.section, s.key))
            out.append(s)
    return out


def example(components: Sequence[str]) -> str:
    """A commented TOML file with every option of ``components``: each default as a
    commented ``#key = value`` line (uncomment to change), required ones marked."""
    lines = [
        "# rangekv configuration (generated by `rangekv config example`).",
        "# Give it with --config FILE or $RANGEKV_CONFIG. Precedence: command line, then",
        "# environment variables (named below), then this file, then the built-in default.",
        "# Each #key = value line shows the default; uncomment it to change the value.",
    ]
    tables: dict[str, list[config.Setting]] = {}
    for component in components:
        for s in component_settings(component):
            if all(t.key != s.key for t in tables.get(s.section, [])):
                tables.setdefault(s.section, []).append(s)
    for section in [s for s in config.SECTIONS if s in tables]:
        lines += ["", f"[{section}]"]
        for s in tables[section]:
            lines.append("")
            if s.help:
                lines += textwrap.wrap(s.help, 98, initial_indent="# ", subsequent_indent="# ")
            if s.required:
                lines.append(f"# {s.key}: required (env {s.env})")
            elif s.builtin is None:
                lines.append(f"# {s.key}: no default (env {s.env})")
            elif config.round_trips(s, s.builtin):
                lines.append(f"# env {s.env}")
                lines.append(f"#{s.key} = {config.toml_value(s.builtin)}")
            else:
                lines.append(f"# {s.key}: default {config.describe_value(s.builtin)} "
                             f"(env {s.env})")
    return "\n".join(lines) + "\n"
