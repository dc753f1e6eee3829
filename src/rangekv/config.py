"""Configuration for every rangekv process: command line, environment, TOML file, default.

Theory of operation
-------------------
Each process keeps describing its options with ``argparse``, as it always has; this module
gives every such option three more places to come from, with one rule for all processes:

    command line  >  environment variable  >  TOML file  >  built-in default

* **Names.** An option ``--data-dir`` of component (section) ``node`` is the TOML key
  ``data_dir`` in the table ``[node]`` and the environment variable ``RANGEKV_NODE_DATA_DIR``.
  Sections: ``node``, ``meta``, ``rm`` (the server processes), ``up`` (``rangekv up`` and
  ``rangekv down``), ``client`` (the data commands' ``--endpoint`` and ``--timeout``), and
  ``log`` (``--log-format`` / ``--log-level`` of every process: ``[log] format``, ``level``,
  env ``RANGEKV_LOG_FORMAT`` / ``RANGEKV_LOG_LEVEL``). One exception keeps an older name:
  the endpoint's variable is ``RANGEKV_ENDPOINT``. ``--help`` shows each option's variable.
* **The file** is named by ``--config FILE`` or else ``$RANGEKV_CONFIG``; one file can hold
  the tables of every component (each process reads its own table and ``[log]``). Values are
  TOML strings, numbers or booleans; a list for a repeatable option (``endpoint``).
* **One conversion.** A value from the environment or the file goes through the option's own
  ``type=`` and ``choices=``, exactly as if it had been typed on the command line, so every
  source is checked the same way. A bad value is a usage error (exit 2) that names where it
  came from: ``RANGEKV_NODE_COMPACT_ENTRIES`` or ``FILE: [node] compact_entries``.
* **Typos are errors.** A table or key the process does not know, or a variable
  ``RANGEKV_<SECTION>_...`` of one of its sections that names no option, stops it with
  exit 2 rather than being ignored. A process checks the tables it reads; ``rangekv config
  check`` checks every table of a file.
* **Flags** (``--no-auto-split``) take ``true`` / ``false`` in TOML and ``1``, ``0``,
  ``true``, ``false`` (any case) in the environment. An empty variable counts as unset.
* **Required options** (``--id``) may be given by any source; only if none gives one is it a
  usage error.
* **Relative paths** are taken from the working directory, whichever source they come from.

The mechanism works on the parser only: a value from the environment or the file becomes the
option's default before ``parse_args``, so the command line still wins and everything after
parsing (checks in ``main``, the process itself) is unchanged. Options that accumulate
(``action="append"``) get their value after parsing instead, when the command line gave none,
so that command-line items replace, not extend, the configured list.

Other environment variables, read directly by the code that uses them (no TOML key):
``RANGEKV_EVENT_LOOP=asyncio`` (the standard loop instead of uvloop, :mod:`rangekv.aio`),
``RANGEKV_PERSIST=inline|thread|auto`` (where a node writes its log,
:mod:`rangekv.replication.driver`). (A planted bug is the node's hidden command-line option
``--planted-bug``, never a variable.)

Use in a process's ``main``::

    args = config.parse(parser, "node", argv)   # adds --config, --log-format, --log-level
    log.setup(f"node-{args.id}", args.log_level, args.log_format)

``rangekv config example COMPONENT|all`` prints a commented TOML file generated from these
parsers; ``rangekv config show COMPONENT`` prints the effective values and their sources;
``rangekv config check --config FILE`` checks every table of a file. ``rangekv up`` passes
the file it read (``--config``) and its ``--log-format`` / ``--log-level`` to every meta, node
and rm it starts, so one file configures a whole local cluster; the flags ``up`` sets per
process (``--id``, ``--listen``, ...) win over the file, as any command line does.

For maintainers: ``config example`` and ``config show`` (:mod:`rangekv.cli.config_cmd`) get a
server's parser by running the function that builds it until it calls :func:`parse`, which then
hands the parser back instead of parsing (:func:`capture_parser`). So a ``main`` must build its
parser and call ``parse`` before it does anything else; a new option needs only
``add_argument`` with a ``help=`` (a test checks that every option has one and that ``--help``
names its variable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rangekv.log import FORMATS, LEVELS

CONFIG_ENV = "RANGEKV_CONFIG"
ENV_PREFIX = "RANGEKV_"
SECTIONS = ("node", "meta", "rm", "up", "client", "log")
COMPONENTS = ("node", "meta", "rm", "up", "client")
LOG_SECTION = "log"

_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})


class ConfigError(ValueError):
    """A value from the environment or a config file is bad; the message names its source."""


class _Captured(BaseException):
    """Raised by ``parse`` under :func:`capture_parser`: carries the prepared parser out of a
    main."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


_capturing = False


# --- declaring options ------------------------------------------------------------------------


def option(action: argparse.Action, *, section: str | None = None, key: str | None = None,
           env: str | None = None, configurable: bool = True) -> argparse.Action:
    """Annotate an option (what ``add_argument`` returned): another section, key or variable
    than its parser's, or ``configurable=False`` for one that only the command line sets."""
    if section is not None:
        if section not in SECTIONS:
            raise ValueError(f"no config section {section!r}")
        action.rangekv_section = section  # type: ignore[attr-defined]
    if key is not None:
        action.rangekv_key = key  # type: ignore[attr-defined]
    if env is not None:
        action.rangekv_env = env  # type: ignore[attr-defined]
    action.rangekv_configurable = configurable  # type: ignore[attr-defined]
    return action


def _level(text: str) -> str:
    name = text.strip().upper()
    if name not in LEVELS:
        raise argparse.ArgumentTypeError(f"not a log level: {text!r} (one of {', '.join(LEVELS)})")
    return name


def add_log_options(parser: argparse._ActionsContainer, *, fmt: str | None = "text",
                    level: str | None = "INFO", help_suffix: str = "") -> None:
    """``--log-format`` and ``--log-level``, in the shared ``[log]`` section."""
    option(parser.add_argument(
        "--log-format", choices=FORMATS, default=fmt,
        help="log lines as text, or as JSON objects, one per line" + help_suffix),
        section=LOG_SECTION, key="format")
    option(parser.add_argument(
        "--log-level", type=_level, default=level, metavar="LEVEL",
        help=f"least severe level logged: {', '.join(LEVELS)}" + help_suffix),
        section=LOG_SECTION, key="level")


def add_config_option(parser: argparse._ActionsContainer, default: Any = None) -> None:
    parser.add_argument(
        "--config", metavar="FILE", default=default,
        help=f"a TOML file of settings: one table per component, [log] shared [env {CONFIG_ENV}]")


def bind(parser: argparse.ArgumentParser, section: str) -> argparse.ArgumentParser:
    """Give ``parser``'s options the section ``section`` (for subcommands' parsers)."""
    if section not in SECTIONS:
        raise ValueError(f"no config section {section!r}")
    parser.rangekv_section = section  # type: ignore[attr-defined]
    return parser


# --- help -------------------------------------------------------------------------------------


def describe_value(value: Any) -> str:
    """A default as ``--help`` and ``config show`` print it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(describe_value(v) for v in value)
    return str(value)


class _ConfigHelpMixin(argparse.HelpFormatter):
    """Appends ``[env NAME, default X]`` (or ``required``) to each configurable option, and
    keeps the paragraphs of a description or epilog apart."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text  # (zero-argument super does not work in a comprehension)
        return "\n\n".join(fill(p, width, indent) for p in text.split("\n\n") if p.strip())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        env = getattr(action, "rangekv_env_name", None)
        if env is None:
            return text
        parts = [f"env {env}"]
        builtin = getattr(action, "rangekv_builtin", None)
        if getattr(action, "rangekv_required", False):
            parts.append("required")
        elif builtin is not None and "default" not in text.lower():
            parts.append(f"default {describe_value(builtin)}")
        extra = "[" + ", ".join(parts) + "]"
        return f"{text} {extra.replace('%', '%%')}" if text else extra.replace("%", "%%")


def _with_config_help(cls: Any) -> Any:
    """``cls`` (a parser's formatter_class) with :class:`_ConfigHelpMixin` in front."""
    if not isinstance(cls, type) or issubclass(cls, _ConfigHelpMixin):
        return cls  # already; or a factory function, which we leave alone
    return type(f"Config{cls.__name__}", (_ConfigHelpMixin, cls), {})


def _epilog(section: str, sections: Sequence[str]) -> str:
    if section == "client":
        return (
            f"--endpoint and --timeout can also come from the environment (the variable in "
            f"brackets) or from the [client] table of a TOML file named by --config FILE or "
            f"${CONFIG_ENV} (endpoint = [\"http://...\"], timeout = 5); the options of up "
            f"and down from its [up] table. The command line wins over the environment, which "
            f"wins over the file. `rangekv config example all` prints such a file for every "
            f"component, with every default."
        )
    tables = " and ".join(f"[{s}]" for s in sections) + (" tables" if len(sections) > 1
                                                          else " table")
    return (
        f"Every option can also come from the environment (the variable in brackets) or from a "
        f"TOML file named by --config FILE or ${CONFIG_ENV}, in its {tables}: the key is "
        f"the option's name with _ for - (--data-dir: data_dir = \"...\"; flags take true or "
        f"false). The command line wins over the environment, which wins over the file. "
        f"`rangekv config example {section}` prints such a file with every default; `rangekv "
        f"config show {section}` the values in effect and where each came from."
    )


# --- preparing a parser -----------------------------------------------------------------------


def _bound_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and its subcommands' parsers (recursively) that have a section."""
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop(0)
        if id(p) in seen:
            continue
        seen.add(id(p))
        if getattr(p, "rangekv_section", None) is not None:
            yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def _configurable(action: argparse.Action) -> bool:
    if not action.option_strings or action.default is argparse.SUPPRESS:
        return False  # positionals; options shared from a parent parser with SUPPRESS
    if isinstance(action, argparse._HelpAction | argparse._VersionAction
                  | argparse._SubParsersAction):
        return False
    if action.dest == "config" or not getattr(action, "rangekv_configurable", True):
        return False
    # append_const, count, ...: nothing a file could say plainly
    return action.nargs != 0 or _is_flag(action)


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreConstAction | argparse.BooleanOptionalAction)


def _is_list(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")


def _key_of(action: argparse.Action) -> str:
    given = getattr(action, "rangekv_key", None)
    if given:
        return str(given)
    long = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    return long.lstrip("-").replace("-", "_")


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def prepare(parser: argparse.ArgumentParser, section: str, *,
            log_options: bool = True) -> argparse.ArgumentParser:
    """Bind ``parser`` to ``section``, add ``--config`` (and the log options), and annotate
    every configurable option of it and of its bound subcommands. Idempotent."""
    bind(parser, section)
    if log_options and "--log-format" not in parser._option_string_actions:
        add_log_options(parser)
    if "--config" not in parser._option_string_actions:
        add_config_option(parser)
    for p in _bound_parsers(parser):
        own = p.rangekv_section  # type: ignore[attr-defined]
        sections: list[str] = []
        for action in p._actions:
            if not _configurable(action):
                continue
            sec = getattr(action, "rangekv_section", own)
            key = _key_of(action)
            if not hasattr(action, "rangekv_builtin"):
                action.rangekv_builtin = action.default  # type: ignore[attr-defined]
                action.rangekv_required = action.required  # type: ignore[attr-defined]
            action.rangekv_env_name = (  # type: ignore[attr-defined]
                getattr(action, "rangekv_env", None) or env_name(sec, key))
            if sec not in sections:
                sections.append(sec)
        p.formatter_class = _with_config_help(p.formatter_class)
        if not getattr(p, "rangekv_epilog", False):
            p.rangekv_epilog = True  # type: ignore[attr-defined]
            if sections:
                note = _epilog(own, sections)
                p.epilog = f"{p.epilog}\n\n{note}" if p.epilog else note
    _annotate_shared(parser)
    return parser


def _annotate_shared(root: argparse.ArgumentParser) -> None:
    """Subcommands repeat the root's options with default SUPPRESS (so that one given before
    the subcommand is not reset): give those copies the root's variable for ``--help``."""
    mine = {a.dest: a for a in root._actions if hasattr(a, "rangekv_env_name")}
    todo, seen = [root], set()
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        p.formatter_class = _with_config_help(p.formatter_class)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
            elif action.default is argparse.SUPPRESS and action.dest in mine:
                source = mine[action.dest]
                for attr in ("rangekv_env_name", "rangekv_builtin", "rangekv_required"):
                    setattr(action, attr, getattr(source, attr))


# --- settings ---------------------------------------------------------------------------------


@dataclass
class Setting:
    """One option as configured: where it lives and, once resolved, its value and source."""

    parser: argparse.ArgumentParser
    action: argparse.Action
    section: str
    key: str
    env: str
    value: Any = None
    source: str = "default"

    @property
    def builtin(self) -> Any:
        return self.action.rangekv_builtin  # type: ignore[attr-defined]

    @property
    def required(self) -> bool:
        return bool(self.action.rangekv_required)  # type: ignore[attr-defined]

    @property
    def help(self) -> str:
        text = " ".join((self.action.help or "").split())
        try:  # as argparse expands it
            return text % {**vars(self.action), "prog": self.parser.prog}
        except (KeyError, ValueError, TypeError):
            return text


def settings_of(parser: argparse.ArgumentParser) -> list[Setting]:
    """Every configurable option of a prepared parser and its bound subcommands."""
    out = []
    for p in _bound_parsers(parser):
        for action in p._actions:
            if _configurable(action) and hasattr(action, "rangekv_env_name"):
                own: str = getattr(p, "rangekv_section")  # noqa: B009 (set by bind)
                sec: str = getattr(action, "rangekv_section", own)
                out.append(Setting(p, action, sec, _key_of(action),
                                   getattr(action, "rangekv_env_name")))  # noqa: B009
    return out


def load_file(path: str | Path, origin: str = "--config") -> dict[str, Any]:
    """The TOML document at ``path``; ``ConfigError`` if it cannot be read or parsed, or if
    it has a table or top-level key that is not one of ``SECTIONS``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path} ({origin}): "
                          f"{exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} = ... is outside any table; put it under the "
                              f"component it is for ({', '.join(f'[{s}]' for s in SECTIONS)})")
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown table [{name}] "
                              f"(known: {', '.join(f'[{s}]' for s in SECTIONS)})")
    return doc


def _convert(s: Setting, raw: Any, origin: str, from_env: bool) -> Any:
    """``raw`` (a TOML value or an environment string) as the option's type would make it."""
    action = s.action
    where = f"{origin} ({'/'.join(action.option_strings)})"
    if _is_flag(action):
        if from_env:
            word = str(raw).strip().lower()
            if word not in _TRUE | _FALSE:
                raise ConfigError(f"{where}: expected 1, 0, true or false, got {raw!r}")
            on = word in _TRUE
        elif isinstance(raw, bool):
            on = raw
        else:
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return on
        return action.const if on else s.builtin
    if _is_list(action):
        if from_env:
            items = [raw] if isinstance(action, argparse._AppendAction) else str(raw).split()
        else:
            items = raw if isinstance(raw, list) else [raw]
        return [_one(s, item, where) for item in items]
    return _one(s, raw, where)


def _one(s: Setting, raw: Any, where: str) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        kind = "a boolean" if isinstance(raw, bool) else f"a TOML {type(raw).__name__}"
        raise ConfigError(f"{where}: expected a string or a number, got {kind}: {raw!r}")
    text = raw if isinstance(raw, str) else str(raw)
    try:
        value = s.parser._get_value(s.action, text)
        s.parser._check_value(s.action, value)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return value


def resolve(settings: list[Setting], path: str | Path | None, environ: Mapping[str, str],
            path_origin: str = "--config") -> list[Setting]:
    """Fill each setting's value and source from ``environ``, then the file, then its
    default; ``ConfigError`` for a bad value, an unknown key or an unknown variable."""
    doc = load_file(path, path_origin) if path is not None else {}
    sections = {s.section for s in settings}
    known = {(s.section, s.key) for s in settings}
    for name in sorted(sections):
        for key in doc.get(name, {}):
            if (name, key) not in known:
                keys = sorted(k for sec, k in known if sec == name)
                raise ConfigError(f"{path}: unknown key {key!r} in [{name}] "
                                  f"(known: {', '.join(keys)}){_log_hint(key, known)}")
    env_names = {s.env for s in settings}
    for var in sorted(environ):
        for name in sections:
            if var.startswith(env_name(name, "")) and var not in env_names and environ[var]:
                key = var.removeprefix(env_name(name, "")).lower()
                raise ConfigError(f"unknown environment variable {var}: no option of "
                                  f"[{name}] has that name{_log_hint(key, known)}")
    for s in settings:
        raw = environ.get(s.env)
        if raw:
            s.value, s.source = _convert(s, raw, s.env, True), f"env {s.env}"
        elif s.key in doc.get(s.section, {}):
            origin = f"{path}: [{s.section}] {s.key}"
            s.value = _convert(s, doc[s.section][s.key], origin, False)
            s.source = f"file {path}"
        else:
            s.value, s.source = s.builtin, "default"
    return settings


def _log_hint(key: str, known: set[tuple[str, str]]) -> str:
    if key.startswith("log_") and (LOG_SECTION, key[4:]) in known:
        return (f"; --log-{key[4:]} is {key[4:]} in [log], or "
                f"{env_name(LOG_SECTION, key[4:])}")
    return ""


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The config file ``argv`` names with ``--config`` (the last one), else $RANGEKV_CONFIG;
    and how it was named, for messages."""
    found: str | None = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif token.startswith("--config="):
            found = token.partition("=")[2]
    if found:
        return found, "--config"
    return environ.get(CONFIG_ENV) or None, f"${CONFIG_ENV}"


# --- parsing ----------------------------------------------------------------------------------


def parse(parser: argparse.ArgumentParser, section: str, argv: Sequence[str] | None = None, *,
          log_options: bool = True, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with every option also read from the environment and the
    config file (see the module docstring). Usage errors exit 2 as argparse's do; ``config``
    in the result is the file that was read (or None)."""
    prepare(parser, section, log_options=log_options)
    if _capturing:
        raise _Captured(parser)
    env = os.environ if environ is None else environ
    argv = list(argv) if argv is not None else sys.argv[1:]
    path, origin = config_path(argv, env)
    settings = settings_of(parser)
    for _ in range(2):  # a second round only if argparse took an abbreviation of --config
        try:
            resolve(settings, path, env, origin)
        except ConfigError as exc:
            parser.error(str(exc))
        for s in settings:
            if _is_list(s.action):
                s.action.default = s.builtin
            else:
                s.action.default = s.value
            s.action.required = s.required and s.source == "default"
        ns = parser.parse_args(argv)
        given = getattr(ns, "config", None)
        if not given or given == path:
            break
        path, origin = given, "--config"
    for s in settings:
        unset = getattr(ns, s.action.dest, None) is None
        if _is_list(s.action) and s.source != "default" and unset:
            setattr(ns, s.action.dest, s.value)
    if "config" in vars(ns):
        ns.config = path
    return ns


def capture_parser(entry: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The prepared parser ``entry`` (a process's main, or the function that parses its
    options) parses with: ``entry([])`` runs until it calls :func:`parse`, which hands the
    parser back instead of parsing. So ``config example`` and ``config show`` use the very
    parser the process uses."""
    global _capturing
    _capturing = True
    try:
        entry([])
    except _Captured as captured:
        return captured.parser
    finally:
        _capturing = False
    raise RuntimeError(f"{entry.__module__}.{entry.__qualname__} does not parse its options "
                       "with config.parse")


# --- TOML out ---------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def round_trips(s: Setting, value: Any) -> bool:
    """Does ``value`` survive being written as TOML and read back as ``s`` reads it?"""
    try:
        text = toml_value(value)
        back = tomllib.loads(f"v = {text}")["v"]
        return bool(_convert(s, back, "example", False) == value)
    except (ConfigError, tomllib.TOMLDecodeError):
        return False
