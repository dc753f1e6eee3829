"""Configuration (rangekv.config): precedence command line > environment > file > default,
one conversion for every source, errors that name their source, typos refused, help that
names every variable, the generated example file; and JSON log lines (rangekv.log)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import tempfile
import threading
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangekv import config
from rangekv import log as rangekv_log
from rangekv.cli import Context, config_cmd, endpoints
from rangekv.cli import main as cli
from rangekv.cluster.local import LocalCluster
from rangekv.metadata.service import parse_args as meta_parse_args

DEFAULT_NUM = 7


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def toy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    p.add_argument("--num", type=int, default=DEFAULT_NUM, help="a number")
    p.add_argument("--name", default="dflt", help="a name")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--item", action="append", help="repeatable")
    p.add_argument("--size", type=_positive, default=3, help="positive")
    p.add_argument("--mode", choices=("a", "b"), default="a", help="a choice")
    p.add_argument("--data-dir", type=Path, required=True, help="where")
    return p


def parse(argv: list[str], env: dict[str, str] | None = None,
          toml: str | None = None) -> argparse.Namespace:
    with tempfile.TemporaryDirectory() as tmp:
        if toml is not None:
            path = Path(tmp) / "c.toml"
            path.write_text(toml)
            argv = [*argv, "--config", str(path)]
        return config.parse(toy_parser(), "node", argv, environ=env or {})


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str],
                env: dict[str, str] | None = None, toml: str | None = None) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv, env, toml)
    assert exc.value.code == 2
    return capsys.readouterr().err


# --- precedence -------------------------------------------------------------------------------

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./", min_size=1, max_size=8)
maybe_int = st.none() | st.integers(-10_000, 10_000)
maybe_word = st.none() | words


@given(
    num=st.tuples(maybe_int, maybe_int, maybe_int),
    name=st.tuples(maybe_word, maybe_word, maybe_word),
    flag=st.tuples(st.booleans(), st.none() | st.sampled_from(["1", "0", "true", "FALSE"]),
                   st.none() | st.booleans()),
    items=st.tuples(st.lists(words, max_size=2), maybe_word,
                    st.none() | st.lists(words, max_size=2)),
)
def test_command_line_beats_env_beats_file_beats_default(
    num: tuple[Any, Any, Any], name: tuple[Any, Any, Any], flag: tuple[Any, Any, Any],
    items: tuple[Any, Any, Any],
) -> None:
    argv, env, file = ["--data-dir", "d"], {}, []
    if num[0] is not None:
        argv += [f"--num={num[0]}"]
    if num[1] is not None:
        env["RANGEKV_NODE_NUM"] = str(num[1])
    if num[2] is not None:
        file.append(f"num = {num[2]}")
    if name[0] is not None:
        argv += ["--name", name[0]]
    if name[1] is not None:
        env["RANGEKV_NODE_NAME"] = name[1]
    if name[2] is not None:
        file.append(f"name = {json.dumps(name[2])}")
    if flag[0]:
        argv += ["--flag"]
    if flag[1] is not None:
        env["RANGEKV_NODE_FLAG"] = flag[1]
    if flag[2] is not None:
        file.append(f"flag = {'true' if flag[2] else 'false'}")
    for item in items[0]:
        argv += ["--item", item]
    if items[1] is not None:
        env["RANGEKV_NODE_ITEM"] = items[1]
    if items[2] is not None:
        file.append(f"item = {json.dumps(items[2])}")
    args = parse(argv, env, "[node]\n" + "\n".join(file) + "\n")

    def oracle(cli_value: Any, env_value: Any, file_value: Any, default: Any) -> Any:
        for value in (cli_value, env_value, file_value):
            if value is not None:
                return value
        return default

    assert args.num == oracle(num[0], num[1], num[2], DEFAULT_NUM)
    assert args.name == oracle(*name, "dflt")
    env_flag = None if flag[1] is None else flag[1].lower() in ("1", "true")
    assert args.flag is oracle(flag[0] or None, env_flag, flag[2], False)
    env_items = None if items[1] is None else [items[1]]
    assert args.item == oracle(items[0] or None, env_items, items[2], None)
    assert args.data_dir == Path("d") and args.config is not None


def test_nothing_configured_is_exactly_argparse() -> None:
    args = parse(["--data-dir", "x", "--num", "3"])
    plain = toy_parser().parse_args(["--data-dir", "x", "--num", "3"])
    assert {k: v for k, v in vars(args).items() if k not in ("config", "log_format",
                                                             "log_level")} == vars(plain)
    assert (args.config, args.log_format, args.log_level) == (None, "text", "INFO")


def test_required_options_may_come_from_env_or_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([], {"RANGEKV_NODE_DATA_DIR": "/a"}).data_dir == Path("/a")
    assert parse([], toml='[node]\ndata_dir = "/b"\n').data_dir == Path("/b")
    assert "the following arguments are required: --data-dir" in usage_error(capsys, [])
    # an empty variable counts as unset
    assert "required: --data-dir" in usage_error(capsys, [], {"RANGEKV_NODE_DATA_DIR": ""})


def test_the_config_file_comes_from_the_environment_too(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[node]\nnum = 11\n")
    env = {config.CONFIG_ENV: str(path)}
    args = config.parse(toy_parser(), "node", ["--data-dir", "d"], environ=env)
    assert (args.num, args.config) == (11, str(path))
    # --config wins over $RANGEKV_CONFIG; an abbreviation of --config is still the file read
    other = tmp_path / "o.toml"
    other.write_text("[node]\nnum = 12\n")
    for flag in ("--config", "--conf"):
        args = config.parse(toy_parser(), "node", ["--data-dir", "d", flag, str(other)],
                            environ=env)
        assert (args.num, args.config) == (12, str(other)), flag


# --- errors that name their source -------------------------------------------------------------


def test_bad_values_name_where_they_came_from(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, ["--data-dir", "d"], {"RANGEKV_NODE_NUM": "seven"})
    assert "RANGEKV_NODE_NUM (--num): invalid int value: 'seven'" in err
    err = usage_error(capsys, ["--data-dir", "d"], toml="[node]\nnum = 'seven'\n")
    assert re.search(r"c\.toml: \[node\] num \(--num\): invalid int value: 'seven'", err), err
    # the option's own type= check, from either source
    assert "RANGEKV_NODE_SIZE (--size): must be positive" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_NODE_SIZE": "0"})
    assert "[node] size (--size): must be positive" in usage_error(
        capsys, ["--data-dir", "d"], toml="[node]\nsize = -1\n")
    # choices=
    assert "RANGEKV_NODE_MODE (--mode): invalid choice: 'c'" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_NODE_MODE": "c"})
    assert "RANGEKV_LOG_FORMAT (--log-format): invalid choice: 'xml'" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_LOG_FORMAT": "xml"})
    assert "[log] level (--log-level): not a log level: 'loud'" in usage_error(
        capsys, ["--data-dir", "d"], toml="[log]\nlevel = 'loud'\n")
    # TOML types that are not what the option takes
    assert "expected a string or a number, got a boolean" in usage_error(
        capsys, ["--data-dir", "d"], toml="[node]\nnum = true\n")
    assert "[node] flag (--flag): expected true or false, got 1" in usage_error(
        capsys, ["--data-dir", "d"], toml="[node]\nflag = 1\n")
    assert "RANGEKV_NODE_FLAG (--flag): expected 1, 0, true or false, got 'yes'" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_NODE_FLAG": "yes"})
    # the command line is still checked by argparse itself
    assert "argument --num: invalid int value: 'x'" in usage_error(
        capsys, ["--data-dir", "d", "--num", "x"])


def test_typos_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = usage_error(capsys, ["--data-dir", "d"], toml="[node]\nnumm = 3\n")
    assert "unknown key 'numm' in [node] (known: data_dir, flag, item, mode, name, num, size)" \
        in err
    assert "unknown key 'colour' in [log]" in usage_error(
        capsys, ["--data-dir", "d"], toml="[log]\ncolour = 'x'\n")
    assert "unknown table [nodes]" in usage_error(
        capsys, ["--data-dir", "d"], toml="[nodes]\nnum = 3\n")
    assert "num = ... is outside any table" in usage_error(
        capsys, ["--data-dir", "d"], toml="num = 3\n")
    assert "unknown environment variable RANGEKV_NODE_NUMM" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_NODE_NUMM": "3"})
    assert "--log-level is level in [log], or RANGEKV_LOG_LEVEL" in usage_error(
        capsys, ["--data-dir", "d"], toml="[node]\nlog_level = 'debug'\n")
    assert "--log-format is format in [log], or RANGEKV_LOG_FORMAT" in usage_error(
        capsys, ["--data-dir", "d"], {"RANGEKV_NODE_LOG_FORMAT": "json"})
    assert "not valid TOML" in usage_error(capsys, ["--data-dir", "d"], toml="[node\n")
    missing = tmp_path / "nope.toml"
    assert f"cannot read the config file {missing} (--config)" in usage_error(
        capsys, ["--data-dir", "d", "--config", str(missing)])
    # other components' tables and variables are theirs to check
    args = parse(["--data-dir", "d"], {"RANGEKV_META_WHATEVER": "1"},
                 "[meta]\nanything = 1\n[up]\nbase_port = 1\n")
    assert args.num == DEFAULT_NUM


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", config.COMPONENTS)
def test_help_names_every_variable_and_explains_every_option(component: str) -> None:
    settings = config_cmd.component_settings(component)
    assert settings
    helps = "".join(p.format_help() for p in {id(s.parser): s.parser for s in settings}.values())
    flat = " ".join(helps.split())
    for s in settings:
        assert s.help, f"{component}: --{s.key} has no help text"
        assert s.env in flat, (s.env, flat)
        assert s.env.startswith("RANGEKV_")
    assert "--config FILE" in flat and "$RANGEKV_CONFIG" in flat


def test_help_shows_defaults_and_required() -> None:
    parser = config.prepare(toy_parser(), "node")
    flat = " ".join(parser.format_help().split())
    assert "a number [env RANGEKV_NODE_NUM, default 7]" in flat
    assert "where [env RANGEKV_NODE_DATA_DIR, required]" in flat
    assert "a flag [env RANGEKV_NODE_FLAG, default false]" in flat
    assert "[env RANGEKV_LOG_FORMAT, default text]" in flat
    node = " ".join(config_cmd.parser_for("node").format_help().split())
    assert "[env RANGEKV_NODE_DATA_DIR, required]" in node
    # a help text that gives its default already is not repeated
    assert "(default 10000; also after 64 MiB of log) [env RANGEKV_NODE_COMPACT_ENTRIES]" in node


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, errs = io.BytesIO(), io.StringIO()
    rc = cli.run(list(argv), Context(stdout=out, stderr=errs, stdin=io.BytesIO()))
    return rc, out.getvalue().decode(), errs.getvalue()


def test_process_help_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("meta", "--help")[0] == 0  # meta's main turns SystemExit into its status
    flat = " ".join(capsys.readouterr().out.split())
    assert "[env RANGEKV_META_SPLIT_BYTES]" in flat and "in its [meta] and [log] tables" in flat


# --- the example file -------------------------------------------------------------------------


def uncommented(text: str) -> str:
    return "\n".join(line[1:] if re.match(r"^#\w+ = ", line) else line
                     for line in text.splitlines()) + "\n"


@pytest.mark.parametrize("component", [*config.COMPONENTS, "all"])
def test_the_example_parses_back_to_the_defaults(component: str, tmp_path: Path) -> None:
    components = config.COMPONENTS if component == "all" else (component,)
    text = config_cmd.example(components)
    assert tomllib.loads(text) == {s: {} for s in tomllib.loads(text)}  # all commented out
    path = tmp_path / "example.toml"
    path.write_text(uncommented(text))
    doc = tomllib.loads(path.read_text())
    assert sum(len(t) for t in doc.values()) >= 1
    for comp in components:
        settings = config.resolve(config_cmd.component_settings(comp), path, {})
        for s in settings:
            if comp == "up" and s.section == "log" and component == "all":
                continue  # the [log] table holds the processes' defaults; up passes on none
            assert s.value == s.builtin, (comp, s.key, s.value, s.builtin)
            in_file = s.key in doc.get(s.section, {})
            assert s.source == (f"file {path}" if in_file else "default"), (comp, s.key)
            assert in_file == (s.builtin is not None and not s.required), (comp, s.key)


def test_config_commands() -> None:
    rc, out, err = run_cli("config", "example", "all")
    assert rc == 0 and "[node]" in out and "#compact_entries = 10000" in out, err
    rc, out, err = run_cli("config", "show", "rm")
    assert rc == 0 and "# id" in out and "required, not set" in out
    assert "needs id, listen, etcd" in err


def test_config_show_and_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[meta]\nsplit_bytes = 1000\n[log]\nformat = "json"\n'
                    '[client]\nendpoint = ["http://a:1", "http://b:2"]\n')
    monkeypatch.setenv("RANGEKV_META_ID", "4")
    rc, out, err = run_cli("config", "show", "meta", "--config", str(path))
    assert rc == 0, err
    assert re.search(r"^split_bytes = 1000 +# file .*c\.toml$", out, re.MULTILINE), out
    assert re.search(r"^id = 4 +# env RANGEKV_META_ID$", out, re.MULTILINE), out
    assert re.search(r'^format = "json" +# file ', out, re.MULTILINE), out
    rc, out, _ = run_cli("--json", "config", "show", "meta", "--config", str(path))
    shown = {s["key"]: s for s in json.loads(out)["settings"]}
    assert shown["split_bytes"]["value"] == 1000 and shown["groups_min"]["source"] == "default"
    rc, out, err = run_cli("config", "check", "--config", str(path))
    assert rc == 0 and "ok" in out, err
    path.write_text("[rm]\nlisten = 'nowhere'\n")
    rc, out, err = run_cli("config", "check", "--config", str(path))
    assert rc == 2 and "[rm] listen (--listen): expected HOST:PORT, got 'nowhere'" in err, err
    rc, out, err = run_cli("config", "check")
    assert rc == 2 and "no file to check" in err


# --- the components ---------------------------------------------------------------------------


def test_meta_reads_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[meta]\nid = 2\nlisten = "127.0.0.1:1"\netcd = "http://e:1,http://f:2"\n'
                    "no_auto_split = true\nsplit_bytes = 5000\n[log]\nlevel = 'debug'\n")
    monkeypatch.setenv("RANGEKV_META_SPLIT_BYTES", "6000")
    cfg = meta_parse_args(["--config", str(path), "--id", "3"])
    assert (cfg.id, cfg.etcd, cfg.split.bytes_max, cfg.split.enabled, cfg.log_level) == (
        3, ("http://e:1", "http://f:2"), 6000, False, "DEBUG")


def test_cli_connection_options(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[client]\nendpoint = ["http://a:1", "http://b:2"]\ntimeout = 2.5\n')

    def args_of(*argv: str, env: dict[str, str] | None = None) -> argparse.Namespace:
        return config.parse(cli.build_parser(), "client", list(argv), log_options=False,
                            environ=env or {})

    args = args_of("--config", str(path), "tables")
    assert (endpoints(args), args.timeout) == (["http://a:1", "http://b:2"], 2.5)
    # the command line replaces the file's list, before or after the subcommand
    assert endpoints(args_of("--config", str(path), "--endpoint", "http://z:1", "tables")) == [
        "http://z:1"]
    args = args_of("tables", "--endpoint", "http://z:1", "--timeout", "1", "--config", str(path))
    assert (endpoints(args), args.timeout) == (["http://z:1"], 1.0)
    # $RANGEKV_ENDPOINT keeps its name and beats the file
    args = args_of("--config", str(path), "tables", env={"RANGEKV_ENDPOINT": "http://e:1,e:2",
                                                         "RANGEKV_CLIENT_TIMEOUT": "4"})
    assert (endpoints(args), args.timeout) == (["http://e:1", "e:2"], 4.0)
    # nothing configured: the built-in defaults
    args = args_of("tables")
    assert (endpoints(args), args.timeout, args.config) == (["rangekv://127.0.0.1:8401"], 10.0, None)
    # [up] reaches up and down
    path.write_text("[up]\ndata_dir = '/tmp/x'\nbase_port = 15000\n[log]\nformat = 'json'\n")
    up = args_of("up", "--config", str(path))
    assert (up.data_dir, up.base_port, up.log_format, up.log_level) == (
        Path("/tmp/x"), 15000, "json", None)
    assert args_of("down", "--config", str(path)).data_dir == Path("/tmp/x")
    assert args_of("up").log_format is None


def test_up_passes_log_options_and_the_file_to_its_processes(tmp_path: Path) -> None:
    plain = LocalCluster(tmp_path, 15000)
    configured = LocalCluster(tmp_path, 15000, log_format="json", log_level="DEBUG",
                              config_file=tmp_path / "c.toml")
    for name in ("meta-1", "node-1", "rm-1"):
        before, after = plain.spec(name).argv, configured.spec(name).argv
        assert after[: len(before)] == before
        assert after[len(before):] == ("--config", str(tmp_path / "c.toml"), "--log-format",
                                       "json", "--log-level", "DEBUG"), after
        assert "--log-format" not in before
    assert configured.spec("etcd").argv == plain.spec("etcd").argv
    assert configured.spec("haproxy").argv == plain.spec("haproxy").argv


def test_every_component_parses_through_config() -> None:
    for component in ("node", "meta", "rm"):
        parser = config_cmd.parser_for(component)
        assert "--config" in parser._option_string_actions
        assert "--log-format" in parser._option_string_actions


# --- JSON log lines ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = (sys.excepthook, threading.excepthook)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook, threading.excepthook = hooks
        logging.captureWarnings(False)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_log_lines(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    rangekv_log.setup("node-3", "debug", "json")
    log = logging.getLogger("rangekv.node")
    log.debug("plain %d", 1)
    log.info("with extra", extra={"group": 7, "ts": "mine", "obj": object()})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed: %s", "multi\nline")
    log.warning("stack", stack_info=True)
    records = lines_of(stream)
    assert len(records) == 4
    first = records[0]
    assert set(first) == {"ts", "level", "component", "logger", "msg", "pid"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"]), first
    assert (first["level"], first["component"], first["logger"], first["msg"]) == (
        "DEBUG", "node-3", "rangekv.node", "plain 1")
    assert records[1]["group"] == 7 and records[1]["extra_ts"] == "mine"
    assert records[1]["ts"] != "mine" and records[1]["obj"].startswith("<object object")
    assert records[2]["msg"] == "failed: multi\nline" and records[2]["level"] == "ERROR"
    assert records[2]["exc"].startswith("Traceback") and "ValueError: bad\nthing" in records[2][
        "exc"]
    assert "test_json_log_lines" in records[3]["stack"]


def test_json_mode_turns_uncaught_exceptions_and_warnings_into_records(
        monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    rangekv_log.setup("rm-1", None, "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start()
    thread.join()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    records = lines_of(stream)
    assert [r["level"] for r in records] == ["CRITICAL", "CRITICAL", "WARNING"]
    assert "RuntimeError: boom" in records[0]["exc"]
    assert "worker" in records[1]["msg"] and "ZeroDivisionError" in records[1]["exc"]
    assert "careful" in records[2]["msg"] and records[2]["logger"] == "py.warnings"


def test_text_log_lines_stay_as_they_were(monkeypatch: pytest.MonkeyPatch,
                                          restore_logging: None) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("RANGEKV_LOG_LEVEL", "warning")  # the old fallback still works
    rangekv_log.setup("node-2")
    logging.getLogger("rangekv.x").info("hidden")
    logging.getLogger("rangekv.x").warning("shown %s", "here")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} WARNING node-2 rangekv\.x: "
                        r"shown here\n", stream.getvalue()), stream.getvalue()


def test_up_writes_its_start_line_as_json_into_a_json_log(tmp_path: Path) -> None:
    """The line ``up`` puts before each process's output must not break the JSON lines."""
    stand_in = (sys.executable, "-c", "import sys; print('{\"msg\": \"child\"}')")
    for fmt in ("json", None):
        cluster = LocalCluster(tmp_path / str(fmt), 15000, command=stand_in, log_format=fmt)
        cluster.log_dir.mkdir(parents=True)
        cluster.run_dir.mkdir(parents=True)
        spec = cluster.spec("node-1")
        cluster._spawn(spec)
        cluster._popens["node-1"].wait(timeout=30)
        lines = cluster.log_path("node-1").read_text().splitlines()
        assert len(lines) == 2 and json.loads(lines[1]) == {"msg": "child"}, lines
        if fmt == "json":
            first = json.loads(lines[0])
            assert first["argv"] == list(spec.argv) and first["component"] == "up", first
        else:
            assert lines[0].startswith("=== ") and "rangekv up: starting node-1:" in lines[0]


def test_a_later_up_keeps_the_log_options_and_file_of_the_cluster(tmp_path: Path) -> None:
    first = LocalCluster(tmp_path, 15000, log_format="json", config_file=tmp_path / "c.toml")
    first.data_dir.mkdir(exist_ok=True)
    first._save_settings()
    again = LocalCluster.open(tmp_path, log_format=None, log_level=None, config_file=None)
    assert (again.log_format, again.log_level, again.config_file) == (
        "json", None, tmp_path / "c.toml")
    assert again.spec("node-2").argv == first.spec("node-2").argv
    changed = LocalCluster.open(tmp_path, log_format="text", log_level="DEBUG")
    assert (changed.log_format, changed.log_level) == ("text", "DEBUG")
    # a cluster never given them stays without them
    plain = LocalCluster(tmp_path / "p", 15000)
    plain.data_dir.mkdir()
    plain._save_settings()
    assert "log_format" not in json.loads((plain.data_dir / "cluster.json").read_text())
    assert LocalCluster.open(tmp_path / "p").log_format is None
