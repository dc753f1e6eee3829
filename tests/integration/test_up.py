"""The whole system on one machine: etcd, meta, nodes, 2 rms and HAProxy, started by
``LocalCluster`` (what ``rangekv up`` runs), driven through HAProxy with the Python client, the
CLI and raw HTTP, plus ``rangekv up --detach`` / ``rangekv down`` as a user would run them.

Every cluster runs in a temporary data dir on a random free port range and is always stopped,
whatever happens; a failing test prints the end of every process log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rangekv import errors
from rangekv.cli.up import GROUPS_DEFAULT
from rangekv.client import Client, Item
from rangekv.cluster.local import LocalCluster, find_free_base_port, nodes_for, running_cluster

READY_TIMEOUT_S = 90.0
CLI_TIMEOUT_S = 60.0
UP_TIMEOUT_S = 180.0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # wait_ready raises with the tail of every log
    with running_cluster(tmp_path_factory.mktemp("cluster"), READY_TIMEOUT_S) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def rangekv(
    *argv: str, stdin: bytes | None = None, timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rangekv.cli.main", *argv],
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )


# --- the Stocks example, three ways -----------------------------------------------------------


def test_stocks_example_through_haproxy_with_the_client(cluster: LocalCluster) -> None:
    with cluster.logs_on_failure(lines=40), Client(cluster.endpoint) as db:
        table = unique("Stocks")
        db.create_table(table)
        assert table in db.tables()
        seqs = {
            key: db.put(table, key, value)
            for key, value in [("B", "100"), ("A", "120"), ("C", "135")]
        }
        assert db.get(table, "B") == Item(b"B", b"100", seqs["B"])
        page = db.list(table)
        assert page.items == [
            Item(b"A", b"120", seqs["A"]),
            Item(b"B", b"100", seqs["B"]),
            Item(b"C", b"135", seqs["C"]),
        ]
        assert page.next is None
        first = db.put(table, "D", "140")
        second = db.put(table, "D", "160")
        assert second > first  # the later write has the higher seq, and wins
        assert db.get(table, "D") == Item(b"D", b"160", second)
        with pytest.raises(errors.PreconditionFailed) as failed:
            db.put(table, "D", "170", if_seq=first)
        assert failed.value.current_seq == second  # what the condition met, typed
        with pytest.raises(errors.PreconditionFailed) as failed:
            db.delete(table, "E", if_seq=first)
        assert failed.value.current_seq is None  # no such key
        assert db.exists(table, "D") and not db.exists(table, "E")
        assert db.delete(table, "D") is True
        assert db.get(table, "D") is None
        assert db.delete(table, "D") is False
        db.drop_table(table)
        assert table not in db.tables()
        with pytest.raises(errors.TableNotFound):
            db.get(table, "A")


def test_stocks_example_through_the_cli(cluster: LocalCluster) -> None:
    ep = ["--endpoint", cluster.endpoint]
    table = unique("Stocks")
    with cluster.logs_on_failure(lines=40):
        assert rangekv(*ep, "create-table", table).returncode == 0
        for key, value in [("B", "100"), ("A", "120"), ("C", "135")]:
            put = rangekv(*ep, "put", table, key, value)
            assert put.returncode == 0, put.stderr
            assert len(put.stdout.strip()) == 32
        got = rangekv(*ep, "get", table, "B")
        assert (got.returncode, got.stdout) == (0, b"100\n")
        listed = rangekv("list", table, *ep)  # global options after the subcommand too
        rows = [line.split("\t") for line in listed.stdout.decode().splitlines()]
        assert [(k, v) for k, v, _ in rows] == [("A", "120"), ("B", "100"), ("C", "135")]
        first = rangekv(*ep, "put", table, "D", "140").stdout.strip()
        second = rangekv(*ep, "put", table, "D", "-", stdin=b"160").stdout.strip()
        assert second > first
        got = rangekv(*ep, "get", table, "D", "--seq")
        assert got.stdout.split() == [b"160", second]
        assert rangekv(*ep, "delete", table, "D").stdout == b"deleted\n"
        missing = rangekv(*ep, "get", table, "D")
        assert missing.returncode == 1 and missing.stderr.startswith(b"error: key_not_found: ")
        conflict = rangekv(*ep, "put", table, "A", "1", "--if-absent")
        assert conflict.returncode == 1
        assert conflict.stderr.startswith(b"error: precondition_failed: ")
        topology = rangekv(*ep, "cluster")
        assert topology.returncode == 0 and b"leader node" in topology.stdout
        assert rangekv(*ep, "drop-table", table).returncode == 0
        gone = rangekv(*ep, "list", table)
        assert gone.returncode == 1 and gone.stderr.startswith(b"error: table_not_found: ")


def test_raw_http_shapes(cluster: LocalCluster) -> None:
    table = unique("Raw")
    base = f"{cluster.endpoint}/v1/tables/{table}"
    with cluster.logs_on_failure(lines=40), httpx.Client(timeout=10, trust_env=False) as http:
        created = http.put(base)
        assert created.status_code == 201 and created.json()["table"]["name"] == table
        assert http.put(base).json()["error"]["code"] == "table_exists"
        put = http.put(f"{base}/keys/B", content=b"100")
        assert put.status_code == 200
        seq = put.json()["seq"]
        assert len(seq) == 32 and int(seq, 16) > 0
        got = http.get(f"{base}/keys/B")
        assert got.status_code == 200 and got.content == b"100"
        assert got.headers["etag"] == f'"{seq}"' and got.headers["x-rangekv-seq"] == seq
        assert (
            http.put(f"{base}/keys/B", content=b"1", headers={"If-None-Match": "*"}).status_code
            == 412
        )
        stale = http.put(f"{base}/keys/B", content=b"1", headers={"If-Match": "0" * 31 + "1"})
        assert stale.status_code == 412
        assert stale.json()["error"]["code"] == "precondition_failed"
        newer = http.put(f"{base}/keys/B", content=b"101", headers={"If-Match": seq})
        assert newer.status_code == 200 and newer.json()["seq"] > seq
        http.put(f"{base}/keys/A", content=b"120")
        listed = http.get(f"{base}/keys", params={"encoding": "base64", "limit": 1})
        body = listed.json()
        assert set(body) == {"items", "next"} and set(body["items"][0]) == {"key", "value", "seq"}
        assert body["items"][0]["key"] == "QQ==" and body["next"]
        rest = http.get(f"{base}/keys", params={"after": body["next"]}).json()
        assert [i["key"] for i in rest["items"]] == ["B"] and rest["next"] is None
        missing = http.get(f"{base}/keys/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "key_not_found"
        assert http.delete(f"{base}/keys/A").json()["deleted"] is True
        assert http.get(f"{cluster.endpoint}/healthz").status_code == 200
        assert http.get(f"{cluster.endpoint}/v1/cluster").json()["groups"]
        assert http.delete(base).status_code == 200


def test_binary_keys_and_values_round_trip(cluster: LocalCluster) -> None:
    keys = [
        b"a/b",
        b"%",
        b"%2F",
        b"..",
        b".",
        b"a b+c?#&=",
        b"\xff\x00\xfe",
        "ü".encode(),
        b"k" * 1024,
    ]
    with cluster.logs_on_failure(lines=40), Client(cluster.endpoint) as db:
        table = unique("Bin")
        db.create_table(table)
        try:
            seqs = {k: db.put(table, k, b"\x00" + k + b"\xff") for k in keys}
            for k in keys:
                assert db.get(table, k) == Item(k, b"\x00" + k + b"\xff", seqs[k])
            assert [i.key for i in db.scan(table, page_size=2)] == sorted(keys)
            assert [i.key for i in db.scan(table, start=b"%", end=b"a")] == sorted(
                k for k in keys if b"%" <= k < b"a"
            )
            db.put(table, "empty", b"")
            assert db.get(table, "empty") == Item(b"empty", b"", db.get(table, "empty").seq)
            big = os.urandom(1024 * 1024)
            db.put(table, "big", big)
            assert db.get(table, "big").value == big
            with pytest.raises(errors.TooLarge):
                db.put(table, "bigger", big + b"!")
        finally:
            db.drop_table(table)


def test_many_keys_list_in_order_across_pages(cluster: LocalCluster) -> None:
    with cluster.logs_on_failure(lines=40), Client(cluster.endpoint) as db:
        table = unique("Many")
        db.create_table(table)
        try:
            keys = [f"key{i:04d}".encode() for i in range(250)]
            for k in reversed(keys):
                db.put(table, k, k)
            assert [i.key for i in db.scan(table, page_size=37)] == keys
            page = db.list(table, limit=100)
            assert len(page.items) == 100 and page.next is not None
        finally:
            db.drop_table(table)


# --- failures the launcher can cause ----------------------------------------------------------


def test_an_rm_dies_and_comes_back(cluster: LocalCluster) -> None:
    with (
        cluster.logs_on_failure(lines=40),
        Client(cluster.endpoint) as db,
        Client(cluster.rm_endpoints) as direct,
    ):
        table = unique("RmDown")
        db.create_table(table)
        try:
            assert cluster.kill("rm-1") is True
            assert not cluster.alive("rm-1")
            # HAProxy retries a refused connection on the other rm; the client fails over
            for i in range(20):
                db.put(table, f"k{i}", "v")
                assert direct.get(table, f"k{i}") is not None
            assert direct.endpoint == cluster.rm_endpoints[1]
            assert cluster.start() == ["rm-1"]
            cluster.wait_ready(READY_TIMEOUT_S)
            assert len(db.list(table).items) == 20
        finally:
            db.drop_table(table)


def test_a_follower_node_dies_and_writes_go_on(cluster: LocalCluster) -> None:
    with cluster.logs_on_failure(lines=40), Client(cluster.endpoint) as db:
        table = unique("NodeDown")
        db.create_table(table)
        try:
            group = db.cluster()["groups"][0]
            follower = next(m["id"] for m in group["members"] if m["id"] != group["leader"])
            assert cluster.kill(f"node-{follower}")
            for i in range(10):
                db.put(table, f"k{i}", "v")  # a majority (2 of 3) is still there
            assert len(db.list(table).items) == 10
            assert cluster.start() == [f"node-{follower}"]
            cluster.wait_ready(READY_TIMEOUT_S)
        finally:
            db.drop_table(table)


# --- rangekv up / down as a user runs them ----------------------------------------------------


def test_up_detach_demo_then_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    base = find_free_base_port(nodes_for(GROUPS_DEFAULT))
    endpoint = f"http://127.0.0.1:{base}"
    # what `rangekv up` starts by default: only to look at it, and to clean up whatever happens
    c = LocalCluster(data_dir, base, nodes_for(GROUPS_DEFAULT), groups=GROUPS_DEFAULT)
    try:
        up = rangekv(
            "up",
            "--data-dir",
            str(data_dir),
            "--base-port",
            str(base),
            "--detach",
            "--demo",
            timeout_s=UP_TIMEOUT_S,
        )
        out = up.stdout.decode()
        assert up.returncode == 0, out + up.stderr.decode() + c.log_tails()
        listed = [
            line.split()[0]
            for line in out.splitlines()
            if line.startswith("  ") and not line.startswith("   ")
        ]
        assert listed[:4] == ["endpoint", "native", "rm-1", "rm-2"]  # HAProxy first
        assert f"endpoint  {endpoint}" in out
        assert f"rm-2      http://127.0.0.1:{base + 12}" in out
        assert f"etcd      http://127.0.0.1:{base + 41}" in out
        assert "get Stocks B" in out and "demo: ok" in out
        assert "rangekv down" in out
        assert sorted(c.running()) == sorted(c.names)
        pids = {name: c.pid(name) for name in c.names}
        with Client(endpoint) as db:  # two groups of three, two spares: the default
            info = db.cluster()
        assert [len(g["members"]) for g in info["groups"]] == [3] * GROUPS_DEFAULT
        assert sum(n["state"] == "spare" for n in info["nodes"]) == 2

        with Client(endpoint) as db:
            db.create_table("After")
            db.put("After", "k", "v")
            assert db.get("After", "k").value == b"v"

        again = rangekv(
            "up", "--data-dir", str(data_dir), "--detach", "--json", timeout_s=UP_TIMEOUT_S
        )  # the base port is remembered
        assert again.returncode == 0, again.stderr
        assert b'"started": []' in again.stdout
        assert {name: c.pid(name) for name in c.names} == pids  # nothing restarted

        c.kill("node-5")  # a spare (or a follower): up restarts just what is missing
        third = rangekv("up", "--data-dir", str(data_dir), "--detach", timeout_s=UP_TIMEOUT_S)
        assert third.returncode == 0, third.stderr
        assert b"starting node-5" in third.stdout

        down = rangekv("down", "--data-dir", str(data_dir))
        assert down.returncode == 0
        assert down.stdout.startswith(b"stopped haproxy, rm-1, rm-2, node-")
        assert down.stdout.rstrip().endswith(b"meta-1, meta-2, etcd")
        assert c.running() == []
        deadline = time.monotonic() + 10
        while any(_exists(pid) for pid in pids.values() if pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the last ones may be zombies until init reaps them
        assert rangekv("down", "--data-dir", str(data_dir)).stdout == b"nothing was running\n"

        # the data survives: up again, the table and key are still there
        back = rangekv("up", "--data-dir", str(data_dir), "--detach", timeout_s=UP_TIMEOUT_S)
        assert back.returncode == 0, back.stderr
        with Client(endpoint) as db:
            assert db.get("After", "k").value == b"v"
    except BaseException:
        print(c.log_tails(lines=40))
        raise
    finally:
        c.stop()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").exists() and bool(Path(f"/proc/{pid}/cmdline").read_bytes())


def test_up_in_the_foreground_stops_everything_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    base = find_free_base_port(nodes_for(GROUPS_DEFAULT))
    c = LocalCluster(data_dir, base, nodes_for(GROUPS_DEFAULT), groups=GROUPS_DEFAULT)
    log = open(tmp_path / "up.out", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rangekv.cli.main",
            "up",
            "--data-dir",
            str(data_dir),
            "--base-port",
            str(base),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while b"running in the foreground" not in (tmp_path / "up.out").read_bytes():
            assert proc.poll() is None, (tmp_path / "up.out").read_text()
            assert time.monotonic() < deadline, "up did not get ready"
            time.sleep(0.2)
        assert sorted(c.running()) == sorted(c.names)
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert c.running() == []
        assert b"stopped haproxy" in (tmp_path / "up.out").read_bytes()
    except BaseException:
        print((tmp_path / "up.out").read_text(errors="replace"))
        print(c.log_tails(lines=40))
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()
        c.stop()
