"""The ``rangekv`` CLI (parsing, output, exit codes, dispatch) and the local cluster's pure parts.

Data commands run against an in-memory fake of the HTTP API behind ``httpx.MockTransport``,
injected through ``Context.make_client``. Nothing here starts a cluster (that is
``tests/integration/test_up.py``); a few tests run ``haproxy -c`` and a ``sleep`` process.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest

from rangekv import errors, limits, model
from rangekv.cli import Context, ops, up
from rangekv.cli import main as cli
from rangekv.client import Backoff, Client, Item
from rangekv.cluster import local
from rangekv.cluster.local import ClusterError, LocalCluster
from rangekv.model import ClusterView, Group, Node, Range, Table
from rangekv.request_manager import live
from rangekv.testing.procs import free_port, wait_until


class TinyRM:
    """Just enough of the HTTP API for the CLI: tables, keys, paged lists."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, tuple[bytes, str]]] = {}
        self.n = 0
        self.requests: list[httpx.Request] = []
        self.probes: dict[int, dict[str, Any] | str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, _, query = request.url.raw_path.decode().partition("?")
        parts = path.split("/")
        if path == "/v1/tables":
            return httpx.Response(
                200, json={"tables": [{"name": n, "id": 1} for n in sorted(self.tables)]}
            )
        if path == "/v1/cluster":
            return httpx.Response(200, json=sample_view().to_json())
        if path == "/v1/cluster/status":  # what the rm computes, from this view and probes
            table = query.partition("table=")[2] or None
            return httpx.Response(200, json=live.summarize(sample_view().to_json(),
                                                           self.probes, table=table))
        if path == "/v1/tables/Stocks/ranges":
            return httpx.Response(200, json={"table": "Stocks", "ranges": [
                r for r in sample_view().to_json()["ranges"] if r["table"] == "Stocks"]})
        table = parts[3]
        if len(parts) == 4:
            if request.method == "PUT":
                if table in self.tables:
                    return err(409, "table_exists", f"table {table!r} exists")
                self.tables[table] = {}
                return httpx.Response(201, json={"table": {"name": table, "id": 1}})
            self.tables.pop(table)
            return httpx.Response(200, json={"dropped": table})
        rows = self.tables.get(table)
        if rows is None:
            return err(404, "table_not_found", f"no table named {table!r}")
        if parts[4] == "keys" and len(parts) == 5:
            q = {n: unquote_to_bytes(v) for n, v in (p.split("=", 1) for p in query.split("&"))}
            after = base64.urlsafe_b64decode(q["after"]) if "after" in q else b""
            keys = sorted(k for k in rows if k > after)
            limit = int(q["limit"])
            page = keys[:limit]
            b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
            return httpx.Response(
                200,
                json={
                    "items": [
                        {"key": b64(k), "value": b64(rows[k][0]), "seq": rows[k][1]} for k in page
                    ],
                    "next": base64.urlsafe_b64encode(page[-1]).decode()
                    if len(keys) > limit
                    else None,
                },
            )
        if parts[4] == "batch":  # puts only: what `load` sends
            results = []
            for op in json.loads(request.content)["ops"]:
                self.n += 1
                k, v = base64.b64decode(op["key"]), base64.b64decode(op["value"])
                rows[k] = (v, f"{self.n:032x}")
                results.append({"seq": rows[k][1]})
            return httpx.Response(200, json={"results": results})
        key = unquote_to_bytes(parts[5])
        if request.method == "PUT":
            if request.headers.get("if-none-match") == "*" and key in rows:
                return err(412, "precondition_failed", "the key exists")
            self.n += 1
            rows[key] = (request.content, f"{self.n:032x}")
            return httpx.Response(200, json={"seq": rows[key][1]})
        if request.method == "GET":
            if key not in rows:
                return err(404, "key_not_found", "no such key")
            value, seq = rows[key]
            return httpx.Response(200, content=value, headers={"X-Rangekv-Seq": seq})
        deleted = rows.pop(key, None) is not None
        return httpx.Response(200, json={"deleted": deleted, "seq": None})


def err(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "retryable": status == 503}}
    )


def sample_view() -> ClusterView:
    view = ClusterView(revision=12)
    view.apply(
        b"/rangekv/tables/Stocks",
        json.dumps({"id": 1, "name": "Stocks", "state": "active"}).encode(),
    )
    for i in (1, 2, 3, 4):
        node = Node(i, f"127.0.0.1:843{i}", "member" if i < 4 else "spare", 1 if i < 4 else None)
        view.nodes[i] = node
    view.groups[1] = Group(1, epoch=3, leader=2, members=(1, 2, 3))
    view.ranges[1] = [Range(1, b"", None, 1)]
    view.tables["Stocks"] = Table(1, "Stocks")
    view.active_meta = {"id": 1, "address": "127.0.0.1:8420"}
    return view


class Run:
    """Runs the CLI in-process against one fake; captures stdout (bytes) and stderr."""

    def __init__(self, handler: Any = None) -> None:
        self.fake = handler or TinyRM()
        self.clients: list[Any] = []

    def make_client(self, args: Any) -> Client:
        # the fake is the HTTP API: the default endpoint (native) is spoken to as HTTP
        client = Client(
            [e.replace("rangekv://", "http://") for e in cli_endpoints(args)],
            timeout_s=args.timeout,
            transport=httpx.MockTransport(self.fake),
            backoff=Backoff(delay_s_min=0, delay_s_max=0),
        )
        self.clients.append(args)
        return client

    def __call__(self, *argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        out, errs = io.BytesIO(), io.StringIO()
        ctx = Context(
            stdout=out, stderr=errs, stdin=io.BytesIO(stdin), make_client=self.make_client
        )
        rc = cli.run(list(argv), ctx)
        return rc, out.getvalue(), errs.getvalue()


def cli_endpoints(args: Any) -> list[str]:
    from rangekv.cli import endpoints

    return endpoints(args)


# --- data commands ----------------------------------------------------------------------------


def test_stocks_through_the_cli() -> None:
    run = Run()
    assert run("create-table", "Stocks") == (0, b"created table Stocks\n", "")
    rc, out, _ = run("put", "Stocks", "B", "100")
    assert rc == 0 and len(out.strip()) == 32
    run("put", "Stocks", "A", "120")
    run("put", "Stocks", "C", "135")
    assert run("get", "Stocks", "B") == (0, b"100\n", "")
    rc, out, _ = run("get", "Stocks", "B", "--seq")
    value, seq = out.decode().splitlines()
    assert value == "100" and len(seq) == 32
    rc, out, _ = run("list", "Stocks")
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert [(k, v) for k, v, _ in lines] == [("A", "120"), ("B", "100"), ("C", "135")]
    assert all(len(s) == 32 for _, _, s in lines)
    assert run("tables") == (0, b"Stocks\n", "")
    assert run("delete", "Stocks", "B") == (0, b"deleted\n", "")
    assert run("delete", "Stocks", "B") == (0, b"not found\n", "")
    assert run("drop-table", "Stocks") == (0, b"dropped table Stocks\n", "")
    assert run("tables") == (0, b"", "")


def test_put_reads_stdin_as_bytes_and_get_raw_gives_them_back() -> None:
    run = Run()
    run("create-table", "T")
    blob = bytes(range(256)) * 3
    assert run("put", "T", "blob", "-", stdin=blob)[0] == 0
    assert run("get", "T", "blob", "--raw") == (0, blob, "")


def test_conditional_put_flags() -> None:
    run = Run()
    run("create-table", "T")
    assert run("put", "T", "k", "v", "--if-absent")[0] == 0
    rc, out, errs = run("put", "T", "k", "v", "--if-absent")
    assert (rc, out) == (1, b"") and errs == "error: precondition_failed: the key exists\n"
    run("put", "T", "k", "v2", "--if-seq", "ab" * 16)
    assert run.fake.requests[-1].headers["if-match"] == "ab" * 16


def test_json_output() -> None:
    run = Run()
    run("create-table", "T")
    _rc, out, _ = run("--json", "put", "T", "k", "v")
    seq = json.loads(out)["seq"]
    run("put", "T", b"\xff".decode("utf-8", "surrogateescape"), "x")
    assert json.loads(run("get", "T", "k", "--json")[1]) == {"key": "k", "value": "v", "seq": seq}
    listed = json.loads(run("list", "T", "--json")[1])
    assert listed["next"] is None
    assert listed["items"][0] == {"key": "k", "value": "v", "seq": seq}
    assert listed["items"][1]["key_base64"] == "/w=="
    assert json.loads(run("tables", "--json")[1]) == {"tables": ["T"]}
    assert json.loads(run("delete", "T", "k", "--json")[1]) == {"deleted": True}
    info = json.loads(run("cluster", "--json")[1])
    assert info["groups"][0]["leader"] == 2


def test_list_pages_and_all() -> None:
    run = Run()
    run("create-table", "T")
    for i in range(7):
        run("put", "T", f"k{i}", f"v{i}")
    rc, out, errs = run("list", "T", "--limit", "3")
    assert rc == 0
    assert [line.split("\t")[0] for line in out.decode().splitlines()] == ["k0", "k1", "k2"]
    assert "--after" in errs
    cursor = errs.split("--after ")[1].split()[0]
    rc, out, errs = run("list", "T", "--limit", "3", "--after", cursor)
    assert rc == 0
    assert [line.split("\t")[0] for line in out.decode().splitlines()] == ["k3", "k4", "k5"]
    _rc, out, errs = run("list", "T", "--limit", "3", "--all")
    assert len(out.decode().splitlines()) == 7 and errs == ""
    listed = json.loads(run("list", "T", "--limit", "2", "--all", "--json")[1])
    assert len(listed["items"]) == 7 and listed["next"] is None


def test_list_lines_escape_what_would_break_them() -> None:
    item = Item(b"a\tb\nc\\", b"\xff\x00ok\r", "0" * 32)
    assert ops.item_line(item) == "a\\tb\\nc\\\\\t\\xff\\x00ok\\r\t" + "0" * 32
    assert ops.escape("ünï".encode()) == "ünï"
    assert ops.item_json(Item(b"\xff", b"v", "1" * 32)) == {
        "key": "\ufffd",
        "key_base64": "/w==",
        "value": "v",
        "seq": "1" * 32,
    }


def test_cluster_is_printed_for_people() -> None:
    text = ops.format_cluster(sample_view().to_json())
    assert "group 1  epoch 3  leader node 2" in text
    assert "node 2  127.0.0.1:8432  leader" in text
    assert "node 1  127.0.0.1:8431  follower" in text
    assert "Stocks  [''" in text and "group 1" in text
    assert "node 4  127.0.0.1:8434  spare" in text
    assert "meta: id 1 at 127.0.0.1:8420" in text
    assert ops.format_cluster({}).startswith("groups (0):")
    run = Run()
    rc, out, _ = run("cluster")
    assert rc == 0 and b"leader node 2" in out


def replacing_view() -> ClusterView:
    """Node 3 of group 1 replaced by spare 4 (swapped in, joint not yet cleared), node 5 a
    learner of group 2's replacement of its node 6, and the decisions that say so."""
    view = sample_view()
    view.groups[1] = Group(1, epoch=4, leader=2, members=(1, 2, 4), joint=(1, 2, 3))
    view.nodes[3] = Node(3, "127.0.0.1:8433", "flagged", None,
                         "replaced in group 1 by node 4: no heartbeat for 12.0 s (grace 10 s)",
                         "replaced")
    view.nodes[4] = Node(4, "127.0.0.1:8434", "member", 1)
    view.nodes[5] = Node(5, "127.0.0.1:8435", "joining", 2)
    view.groups[2] = Group(2, epoch=1, leader=7, members=(6, 7, 8), learners=(5,), replacing=6)
    for at, kind, reason in ((1_000, "replace_started", "group 1: member 3 no heartbeat"),
                             (2_000, "replace_swapped", "group 1: learner 4 caught up")):
        view.apply(model.decision_key(at), model.Decision(at, kind, 1, reason).dumps())
    return view


def test_replacements_show_in_cluster_and_status() -> None:
    info = replacing_view().to_json()
    text = ops.format_cluster(info)
    assert "node 5  127.0.0.1:8435  learner (to replace node 6)" in text
    assert "a campaign also needs a majority of the previous members 1, 2, 3" in text
    assert "replace_swapped: group 1: learner 4 caught up" in text
    probes: dict[int, dict[str, Any] | str] = {
        2: {"role": "leader", "last_index": 120, "commit_index": 118},
        1: {"role": "follower", "last_index": 118, "commit_index": 118},
        4: {"role": "follower", "last_index": 100, "commit_index": 100},
        3: "Unavailable: connection refused",
    }
    status = ops.format_status(live.summarize(info, probes), decisions=1)
    lines = status.splitlines()
    # group, health, epoch, leader, members, learners, joint, commit, lag
    row = next(line.split() for line in lines if line.split()[:4] == ["1", "ok", "4", "2"])
    assert row[4:] == ["1,", "2*,", "4", "-", "1,", "2,", "3", "118", "1:", "0,", "4:", "18"], row
    # group 2: no member asked, none says it leads
    assert next(line.split() for line in lines if line.split()[:1] == ["2"])[1] == "no_leader"
    node3 = next(line for line in lines if line.split()[:1] == ["3"] and "flagged" in line)
    assert "unreachable" in node3 and "replaced in group 1 by node 4" in node3
    assert "recent decisions (1):" in status and "replace_swapped" in status
    assert "replace_started" not in status
    rc, out, _ = Run()("status", "--no-probe")
    assert rc == 0 and b"groups (1):" in out and b"recent decisions (0):" in out


# --- errors and exit codes --------------------------------------------------------------------


def test_server_errors_exit_1_with_code_and_message() -> None:
    run = Run()
    assert run("get", "Nope", "k") == (1, b"", "error: table_not_found: no table named 'Nope'\n")
    run("create-table", "T")
    rc, _out, errs = run("get", "T", "missing")
    assert rc == 1 and errs.startswith("error: key_not_found: ")
    assert run("create-table", "T")[2] == "error: table_exists: table 'T' exists\n"
    rc, _, errs = run("put", "T", "", "v")  # refused before sending
    assert rc == 1 and errs.startswith("error: invalid_argument: ")


def test_an_unreachable_endpoint_is_unavailable() -> None:
    port = free_port()
    ctx = Context(stdout=io.BytesIO(), stderr=io.StringIO(), stdin=io.BytesIO())
    rc = cli.run(["--endpoint", f"http://127.0.0.1:{port}", "--timeout", "2", "tables"], ctx)
    assert rc == 1
    assert ctx.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        f"error: unavailable: cannot connect to http://127.0.0.1:{port}"
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["get", "T"],
        ["list", "T", "--limit", "0"],
        ["put", "T", "k", "v", "--if-seq", "x", "--if-absent"],
        ["--timeout", "-1", "tables"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = Run()(*argv)
    assert rc == 2 and out == b""
    assert "usage:" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert Run()("--help")[0] == 0
    assert "up" in capsys.readouterr().out
    assert Run()("--version")[0] == 0
    assert capsys.readouterr().out.startswith("rangekv ")


# --- global options ---------------------------------------------------------------------------


def test_global_options_go_before_or_after_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANGEKV_ENDPOINT", raising=False)
    parser = cli.build_parser()
    from rangekv.cli import endpoints

    args = parser.parse_args(["--endpoint", "http://a:1", "--json", "tables"])
    assert endpoints(args) == ["http://a:1"] and args.json is True and args.timeout == 10.0
    args = parser.parse_args(
        ["tables", "--endpoint", "http://a:1", "--endpoint", "b:2", "--timeout", "3"]
    )
    assert endpoints(args) == ["http://a:1", "b:2"] and args.json is False and args.timeout == 3
    args = parser.parse_args(["--json", "get", "T", "k"])
    assert args.json is True  # not reset by the subcommand's parser
    assert endpoints(parser.parse_args(["tables"])) == ["rangekv://127.0.0.1:8401"]
    monkeypatch.setenv("RANGEKV_ENDPOINT", "http://x:1,http://y:2")
    assert endpoints(parser.parse_args(["tables"])) == ["http://x:1", "http://y:2"]
    assert endpoints(parser.parse_args(["--endpoint", "z:3", "tables"])) == ["z:3"]


def test_the_endpoints_reach_the_client() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "a":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"tables": []})

    assert Run(handler)("tables", "--endpoint", "http://a:1", "--endpoint", "http://b:2")[0] == 0
    assert seen == ["http://a:1/v1/tables", "http://b:2/v1/tables"]


# --- process dispatch -------------------------------------------------------------------------


def test_process_commands_dispatch_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_entry.py").write_text("def main(argv):\n    return len(argv)\n")
    pkg = tmp_path / "fake_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text("def main(argv):\n    return 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.PROCESS_COMMANDS, "node", ("fake_entry.main", "x"))
    monkeypatch.setitem(cli.PROCESS_COMMANDS, "meta", ("fake_pkg.main", "x"))
    monkeypatch.setitem(cli.PROCESS_COMMANDS, "rm", ("no_such_module_here.app.main", "x"))
    run = Run()
    assert run("node", "--id", "1", "--help")[0] == 3  # flags are the process's, not ours
    assert run("meta")[0] == 7  # a module named main
    rc, _, errs = run("rm", "--id", "1")
    assert rc == 1 and "cannot load no_such_module_here.app.main" in errs
    assert run("--json", "node", "a")[0] == 1  # also after global options


def test_the_real_entry_points_resolve() -> None:
    for target, _ in cli.PROCESS_COMMANDS.values():
        assert callable(cli.resolve_entry_point(target))


def test_console_script_module_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rangekv.cli.main", "--version"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(b"rangekv ")


# --- demo, up and down ------------------------------------------------------------------------


def test_demo_prints_each_step() -> None:
    rc, out, errs = Run()("demo")
    text = out.decode()
    assert rc == 0, errs
    assert "get Stocks B" in text and "100" in text
    assert text.count("(seq ") >= 5
    assert "the second seq is greater" in text
    assert text.strip().endswith("demo: ok")


def test_demo_recreates_a_leftover_table() -> None:
    run = Run()
    run("create-table", "Stocks")
    run("put", "Stocks", "Z", "1")
    rc, out, _ = run("demo")
    assert rc == 0 and b"dropping it first" in out


def test_demo_checks_results() -> None:
    class Liar(TinyRM):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            resp = super().__call__(request)
            if request.method == "GET" and request.url.path.endswith("/keys/B"):
                return httpx.Response(200, content=b"999", headers={"X-Rangekv-Seq": "1" * 32})
            return resp

    rc, _, errs = Run(Liar())("demo")
    assert rc == 1 and errs.startswith("error: demo: get B returned")


def test_down_without_a_data_dir(tmp_path: Path) -> None:
    rc, _out, errs = Run()("down", "--data-dir", str(tmp_path / "none"))
    assert rc == 0 and "nothing to stop" in errs


def test_describe_lines() -> None:
    lines = up.describe_lines(LocalCluster("/tmp/x", 8400).describe())
    assert lines[0].split()[:2] == ["endpoint", "http://127.0.0.1:8400"]
    assert lines[1].split()[:2] == ["native", "rangekv://127.0.0.1:8401"]
    assert [line.split()[0] for line in lines] == [
        "endpoint",
        "native",
        "rm-1",
        "rm-2",
        "meta-1",
        "meta-2",
        "node-1",
        "node-2",
        "node-3",
        "node-4",
        "node-5",
        "etcd",
        "data",
        "logs",
    ]


# --- the local cluster's layout and process handling ------------------------------------------


def test_port_layout_follows_the_internals_doc() -> None:
    c = LocalCluster("/tmp/x")
    assert c.endpoint == "http://127.0.0.1:8400"
    assert c.native_endpoint == "rangekv://127.0.0.1:8401"
    assert c.rm_endpoints == ["http://127.0.0.1:8411", "http://127.0.0.1:8412"]
    assert c.rm_native_endpoints == ["rangekv://127.0.0.1:8402", "rangekv://127.0.0.1:8403"]
    assert c.meta_addresses == {1: "127.0.0.1:8420", 2: "127.0.0.1:8421"}
    assert list(c.node_addresses.values()) == [f"127.0.0.1:843{i}" for i in range(1, 6)]
    assert c.etcd_endpoint == "http://127.0.0.1:8441"
    assert c.names == [
        "etcd",
        "meta-1",
        "meta-2",
        "node-1",
        "node-2",
        "node-3",
        "node-4",
        "node-5",
        "rm-1",
        "rm-2",
        "haproxy",
    ]
    node = c.spec("node-2").argv
    assert node[1:] == (
        "-m",
        "rangekv.cli.main",
        "node",
        "--id",
        "2",
        "--listen",
        "127.0.0.1:8432",
        "--data-dir",
        "/tmp/x/node-2",
        "--meta",
        "127.0.0.1:8420,127.0.0.1:8421",
        "--metrics-listen",
        "127.0.0.1:8472",
    )
    assert c.spec("rm-1").argv[3:] == (
        "rm",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:8411",
        "--native-listen",
        "127.0.0.1:8402",
        "--etcd",
        "http://127.0.0.1:8441",
    )
    for i in (1, 2):
        assert c.spec(f"meta-{i}").argv[3:] == (
            "meta",
            "--id",
            str(i),
            "--listen",
            f"127.0.0.1:842{i - 1}",
            "--etcd",
            "http://127.0.0.1:8441",
            "--backup-dir",
            str(c.data_dir / "backups" / "meta"),
            "--metrics-listen",
            f"127.0.0.1:850{i}",
            "--groups-min",
            "1",
        )
    with pytest.raises(KeyError):
        c.spec("meta-3")
    with pytest.raises(KeyError):
        c.spec("node-6")
    with pytest.raises(ClusterError):
        LocalCluster("/tmp/x", nodes=30)
    assert sorted(local.cluster_ports(8400)) == [
        8400,
        8401,
        8402,
        8403,
        8411,
        8412,
        8420,
        8421,
        8431,
        8432,
        8433,
        8434,
        8435,
        8441,
        8442,
        8471,
        8472,
        8473,
        8474,
        8475,
        8501,
        8502,
    ]
    assert c.metrics_urls["node-2"] == "http://127.0.0.1:8472/metrics"
    assert c.metrics_urls["meta-1"] == "http://127.0.0.1:8501/metrics"
    assert c.metrics_urls["rm-1"] == "http://127.0.0.1:8411/metrics"
    assert c.metrics_urls["lb"] == "http://127.0.0.1:8400/metrics"


@pytest.mark.skipif(
    not (shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy")),
    reason="HAProxy is not installed",
)
def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local.haproxy_config(18400, [18411, 18412]))
    check = subprocess.run(
        [local.haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    text = cfg.read_text()
    assert "server rm2 127.0.0.1:18412 check inter 500ms fall 2 rise 1" in text
    assert "disable-l7-retry unless METH_GET" in text  # never replay a write that got through


def test_cluster_ready() -> None:
    assert local.cluster_ready(sample_view().to_json()) == (True, "ready")
    assert not local.cluster_ready({"groups": []})[0]
    assert not local.cluster_ready({"groups": [{"id": 1, "epoch": 1, "leader": None}]})[0]
    assert not local.cluster_ready({"groups": [{"id": 1, "epoch": 0, "leader": 1}]})[0]
    one = {"groups": [{"id": 1, "epoch": 1, "leader": 1}]}
    assert local.cluster_ready(one, 2) == (False, "1 of 2 groups formed")
    two = {"groups": [{"id": 1, "epoch": 1, "leader": 1}, {"id": 2, "epoch": 3, "leader": 5}]}
    assert local.cluster_ready(two, 2) == (True, "ready")


def test_groups_set_the_node_count_the_ports_and_the_meta(tmp_path: Path) -> None:
    assert local.nodes_for(1) == 5 and local.nodes_for(4) == 14
    c = LocalCluster.open(tmp_path / "new", groups=4)
    assert (c.groups, c.nodes) == (4, 14)
    assert "--groups-min" in c.spec("meta-1").argv and c.spec("meta-1").argv[-1] == "4"
    # nodes 1..9 keep their ports; 10 and up go past etcd's
    assert [c.node_port(i) - c.base_port for i in (1, 9, 10, 14)] == [31, 39, 50, 54]
    ports = local.cluster_ports(c.base_port, c.nodes, c.rms)
    assert len(ports) == len(set(ports)) and max(ports) < c.base_port + local.PORT_SPAN
    with pytest.raises(ClusterError, match="need at least 9 nodes"):
        LocalCluster(tmp_path, 8400, nodes=8, groups=3)
    # a data dir remembers its groups; asking for more later grows the node count
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"base_port": 9000, "nodes": 8, "rms": 2, "groups": 2}))
    assert (LocalCluster.open(tmp_path).groups, LocalCluster.open(tmp_path).nodes) == (2, 8)
    assert LocalCluster.open(tmp_path, groups=3).nodes == 11


def test_a_data_dir_keeps_its_base_port(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"base_port": 9000, "nodes": 3, "rms": 1}))
    c = LocalCluster.open(tmp_path)
    assert (c.base_port, c.nodes, c.rms) == (9000, 3, 1)
    assert LocalCluster.open(tmp_path, nodes=5).nodes == 5
    with pytest.raises(ClusterError, match="base port 9000"):
        LocalCluster.open(tmp_path, base_port=9100)
    assert LocalCluster.open(tmp_path / "new").base_port == 8400


def test_find_free_base_port() -> None:
    base = local.find_free_base_port()
    assert 20000 <= base < 60000 and local.ports_free(local.cluster_ports(base))


def test_pid_files_are_trusted_only_for_our_own_command_line(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 8400)
    c.run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # a pid file naming this very test process with another argv: a stranger, never killed
        (c.run_dir / "node-2.pid").write_text(f"{os.getpid()}\n")
        (c.run_dir / "node-2.argv").write_text(json.dumps(["python", "-m", "rangekv.cli.main"]))
        # a pid file naming the sleeper with its argv: ours
        (c.run_dir / "node-1.pid").write_text(f"{sleeper.pid}\n")
        (c.run_dir / "node-1.argv").write_text(json.dumps(["sleep", "60"]))
        # a process from a bigger cluster on this data dir
        (c.run_dir / "node-9.pid").write_text("999999999\n")
        (c.run_dir / "node-9.argv").write_text(json.dumps(["gone"]))
        wait_until(
            lambda: local._read_cmdline(sleeper.pid) == ["sleep", "60"],
            10,
            "the sleeper's command line",
        )

        def state() -> str:  # what the checks saw, should one fail
            seen = {n: (c._recorded(n), c.pid(n)) for n in ("node-1", "node-2", "node-9")}
            return f"{seen}, sleeper cmdline {local._read_cmdline(sleeper.pid)}"

        assert c.pid("node-1") == sleeper.pid, state()
        assert not c.alive("node-2") and c.pid("node-9") is None, state()
        assert c.running() == ["node-1"], state()
        assert c.stop() == ["node-1"], state()
        assert sleeper.wait(timeout=10) == -15  # SIGTERM
        assert not list(c.run_dir.glob("*"))  # every pid file is gone, stale ones too
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait(timeout=10)


def test_stop_order_is_the_reverse_of_the_start_order(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 8400)
    c.run_dir.mkdir(parents=True)
    (c.run_dir / "meta.pid").write_text("999999999\n")  # the single meta of an older data dir
    order = [name for phase in c._phases() for name in phase]
    assert order == [
        "haproxy",
        "rm-1",
        "rm-2",
        "node-1",
        "node-2",
        "node-3",
        "node-4",
        "node-5",
        "meta-1",
        "meta-2",
        "meta",
        "etcd",
    ]


def test_kill_refuses_names_that_are_not_ours(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 8400)
    with pytest.raises(KeyError):
        c.kill("postgres")
    assert c.kill("node-1") is False  # not running: nothing to do


def test_errors_are_one_tree() -> None:
    assert issubclass(errors.KeyNotFound, errors.RangeKVError)


# --- load -------------------------------------------------------------------------------------


def test_load_puts_every_line_and_list_reads_them_back(tmp_path: Path) -> None:
    run = Run()
    lines = [json.dumps({"key": f"k{i:03d}", "value": f"v{i}", "seq": "ignored"})
             for i in range(50)]
    lines.insert(10, "")  # blank lines are skipped
    lines.append(json.dumps({"key": "?", "key_base64": base64.b64encode(b"\xff\x00").decode(),
                             "value_base64": base64.b64encode(b"\x80bin").decode()}))
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc, out, errs = run("load", "T", str(path), "--create", "--concurrency", "4")
    assert rc == 0, errs
    assert out.decode().startswith("loaded 51 keys into T in "), out
    assert "51/51 keys" in errs  # the progress bar, on stderr
    rc, out, _ = run("list", "T", "--all", "--json", "--limit", "7")
    items = json.loads(out)["items"]
    assert len(items) == 51
    assert {i["key"]: i["value"] for i in items if "key_base64" not in i}["k007"] == "v7"
    binary = next(i for i in items if "key_base64" in i)
    assert base64.b64decode(binary["value_base64"]) == b"\x80bin"
    # stdin works too, and the same file again is fine (the values are the same)
    rc, out, _ = run("load", "T", "-", "--json", stdin=path.read_bytes())
    assert rc == 0 and json.loads(out)["loaded"] == 51


def test_load_checks_the_whole_file_before_writing_anything(tmp_path: Path) -> None:
    run = Run()
    assert run("create-table", "T")[0] == 0
    too_long = "k" * (limits.KEY_BYTES_MAX + 1)
    for bad, why in [
        ('{"key": "a", "value": "1"}\n{"key": "b"\n', "line 2: not JSON"),
        ('{"key": "a", "value": "1"}\n["a", "1"]\n', "line 2: not a JSON object"),
        ('{"value": "1"}\n', "line 1: needs a string 'key'"),
        ('{"key": "a", "value_base64": "%%%"}\n', "line 1: value_base64 is not base64"),
        (f'{{"key": "a", "value": "1"}}\n\n{{"key": "{too_long}", "value": "1"}}\n', "line 3:"),
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(bad)
        rc, out, errs = run("load", "T", str(path))
        assert rc == 1 and why in errs, (bad, errs)
        assert run("list", "T", "--json")[1] == b'{"items": [], "next": null}\n' or \
            json.loads(run("list", "T", "--json")[1])["items"] == []


def test_load_stops_at_the_first_failed_put_and_says_how_far_it_got(tmp_path: Path) -> None:
    fake = TinyRM()
    real = fake.__call__

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batch") and b"azAwNQ==" in request.content:  # k005
            return err(400, "invalid_argument", "refused for the test")
        return real(request)

    run = Run(failing)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i:03d}", "value": "v"}) + "\n"
                            for i in range(10)))
    rc, _, errs = run("load", "T", str(path), "--create", "--concurrency", "1", "--batch", "5")
    assert rc == 1 and "stopped after 5 of 10 puts were acknowledged" in errs, errs
    assert "refused for the test" in errs


def test_nodes_lists_members_and_spares_with_their_state() -> None:
    run = Run()
    rc, out, errs = run("nodes", "--no-probe")
    assert rc == 0, errs
    text = out.decode()
    assert text.startswith("nodes (4):"), text
    lines = text.splitlines()
    assert any(line.split()[:4] == ["1", "127.0.0.1:8431", "member", "1"] for line in lines)
    assert any(line.split()[:3] == ["4", "127.0.0.1:8434", "spare"] for line in lines)
    rc, out, _ = run("nodes", "--no-probe", "--json")
    nodes = json.loads(out)["nodes"]
    assert [n["id"] for n in nodes] == [1, 2, 3, 4] and nodes[3]["state"] == "spare"
    assert all(n["reachable"] is None and n["role"] is None for n in nodes)  # not asked


def test_nodes_remove_asks_the_cluster_and_says_what_went() -> None:
    calls: list[tuple[str, str]] = []

    def rm(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.raw_path.decode()))
        node = int(request.url.raw_path.decode().rsplit("/", 1)[1])
        if node == 1:
            return err(409, "node_in_use", "node 1 is a member of group 1")
        if node == 9:
            return err(404, "node_not_found", "there is no node 9")
        record = {"id": node, "address": f"127.0.0.1:843{node}", "state": "flagged",
                  "group": None, "reason": "replaced in group 1 by node 4", "flag": "replaced"}
        return httpx.Response(200, json={"node": record, "live": node == 6})

    run = Run(rm)
    rc, out, errs = run("nodes", "remove", "5")
    assert (rc, errs) == (0, "") and calls == [("DELETE", "/v1/cluster/nodes/5")]
    assert out.decode() == ("removed node 5 (127.0.0.1:8435, flagged: replaced in group 1 by "
                            "node 4)\n")
    rc, out, _ = run("nodes", "remove", "6", "--json")
    assert rc == 0 and json.loads(out)["live"] is True
    rc, out, _ = run("nodes", "remove", "6")
    assert "registers again as a spare" in out.decode()
    refused = "error: node_in_use: node 1 is a member of group 1\n"
    assert run("nodes", "remove", "1") == (1, b"", refused)
    assert run("nodes", "remove", "9")[2] == "error: node_not_found: there is no node 9\n"
    sent = len(calls)
    for bad in ("0", "x", "-3"):
        assert run("nodes", "remove", bad)[0] == 2  # a usage error
    assert len(calls) == sent  # refused before asking
    assert Run()("nodes", "--no-probe")[0] == 0  # without an action: the list, as before


def test_status_nodes_and_ranges_show_the_live_figures() -> None:
    fake = TinyRM()
    fake.probes = {
        2: {"role": "leader", "epoch": 3, "last_index": 50, "commit_index": 50,
            "applied_index": 50, "match": {"1": 50, "3": 41},
            "ranges": [{"t": 1, "start": b"", "keys": 1200, "bytes": 3 * 1024 * 1024,
                        "counted": True, "rps": 12.5, "wps": 3.25, "rbps": 10, "wbps": 5}]},
        1: {"role": "follower", "epoch": 3, "last_index": 50, "commit_index": 50},
        3: "Timeout: no answer within 1 s",
        4: {"role": "idle", "epoch": 0, "last_index": 0, "commit_index": 0},
    }
    run = Run(fake)
    rc, out, errs = run("status")
    assert rc == 0, errs
    text = out.decode()
    assert text.startswith("cluster: 1 groups (0 ok), 4 nodes (1 unreachable, 1 spare"), text
    lines = text.splitlines()
    group = next(line.split() for line in lines if line.split()[:2] == ["1", "degraded"])
    assert group[2:] == ["3", "2", "1,", "2*,", "3", "-", "-", "50", "1:", "0,", "3:", "down"]
    stocks = next(line.split() for line in lines if line.split()[:1] == ["Stocks"])
    assert stocks[1:] == ["''", "+inf", "1", "2", "1200", "3.0", "MiB", "12.5", "3.2", "active"]
    node3 = next(line.split() for line in lines if line.split()[:2] == ["3", "127.0.0.1:8433"])
    assert node3[4] == "unreachable", node3
    rc, out, _ = run("status", "--json")
    st = json.loads(out)
    (g,) = st["groups"]
    assert [(m["id"], m["lag"], m["reachable"]) for m in g["members"]] == [
        (1, 0, True), (2, 0, True), (3, 9, False)]
    rc, out, _ = run("nodes")
    spare = next(line.split() for line in out.decode().splitlines()
                 if line.split()[:1] == ["4"])
    assert spare[2:5] == ["spare", "-", "idle"], spare
    rc, out, errs = run("ranges", "Stocks")
    assert rc == 0, errs
    row = out.decode().splitlines()[2].split()
    assert row == ["''", "+inf", "1", "2", "1", "1200", "3.0", "MiB", "12.5", "3.2", "active"]
    rc, out, _ = run("ranges", "Stocks", "--json")
    (r,) = json.loads(out)["ranges"]
    assert (r["leader"], r["keys"], r["bytes"], r["rps"]) == (2, 1200, 3 * 1024 * 1024, 12.5)
    assert any(req.url.path == "/v1/cluster/status" and req.url.query == b"table=Stocks"
               for req in fake.requests)


def test_every_argument_of_every_command_is_explained_by_help() -> None:
    """``--help`` explains every option and positional of every command (the process commands
    hand their flags to the component, whose help test_config checks)."""
    import argparse

    from rangekv.cli.main import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif (not isinstance(action, argparse._HelpAction) and not action.help
                  and action.dest != "process_argv"):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "rangekv")
    assert missing == []
