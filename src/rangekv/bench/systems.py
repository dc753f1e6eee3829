"""The systems the suite measures, each started fresh on loopback and stopped after use.

* ``rangekv``: a ``LocalCluster`` (its etcd, two metas, one group of 3 nodes plus 2 spares, two
  rms, HAProxy), reached through HAProxy. Its fsync counter is each node's ``wal_syncs`` (the
  WAL's fdatasync count, from the node's internal ``status``).
* ``etcd-http`` / ``etcd-py``: etcd 3.4 (Debian's ``etcd-server``) as 3 members with its
  defaults (fsync on), through the v3 JSON gateway or the ``aetcd`` gRPC client. Its fsync
  counters come from each member's ``/metrics``: ``etcd_disk_wal_fsync_duration_seconds_count``
  (the WAL's fsyncs) and ``etcd_disk_backend_commit_duration_seconds_count`` (bbolt commits,
  which also sync).
* ``redis``: Redis 7 (Debian's ``redis-server``) with ``appendonly yes``, ``appendfsync
  always``, no snapshots: an upper reference, a single node, not replicated. Redis reports no
  fsync count.

Every system names its server processes (``pids``) so that the suite can read their CPU time
(``/proc/PID/stat``) before and after a measurement.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from rangekv.bench.drivers import SYSTEMS, Target
from rangekv.cluster.procs import Proc, etcd_binary, free_port, spawn, wait_until

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
LABELS = {
    "rangekv": "rangekv (3 replicas, via HAProxy)",
    "etcd-http": "etcd 3.4 (3 members, JSON gateway)",
    "etcd-py": "etcd 3.4 (3 members, aetcd gRPC client)",
    "redis": "Redis 7 (single node, not replicated; appendfsync always)",
}
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


class System:
    name = ""

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def start(self, root: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def target(self) -> Target:
        raise NotImplementedError

    def create_table(self, table: str) -> None:
        """Tables are key prefixes except in rangekv."""

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def fsyncs(self) -> dict[str, dict[str, Any]] | None:
        """Per server process: its fsync counter(s) now; None if the system has none."""
        return None

    def version(self) -> str:
        raise NotImplementedError


class RangeKV(System):
    name = "rangekv"

    def __init__(self) -> None:
        self.cluster: Any = None

    def start(self, root: Path) -> None:
        from rangekv.cluster.local import LocalCluster, find_free_base_port

        self.cluster = LocalCluster(root / "rangekv", find_free_base_port(), groups=1)
        self.cluster.start()
        self.cluster.wait_ready(READY_TIMEOUT_S)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def target(self) -> Target:
        return Target("rangekv", ((HOST, self.cluster.base_port),))

    def client_endpoint(self, form: str = "client") -> str:
        """The endpoint rangekv's Python client is given: ``client``, the one the cluster hands
        out for clients (its native endpoint, ``rangekv://``, where it has one), or ``http``,
        HAProxy's HTTP endpoint."""
        assert form in ("client", "http"), form
        native = getattr(self.cluster, "native_endpoint", None)
        return native if form == "client" and native else str(self.cluster.endpoint)

    def create_table(self, table: str) -> None:
        req = urllib.request.Request(f"{self.cluster.endpoint}/v1/tables/{table}", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status in (200, 201), r.status

    def pids(self) -> dict[str, int]:
        out = {}
        for name in self.cluster.names:
            pid = self.cluster.pid(name)
            if pid is not None:
                out[name] = pid
        return out

    def fsyncs(self) -> dict[str, dict[str, Any]] | None:
        from rangekv import wire

        async def one(address: str) -> dict[str, Any] | None:
            conn = wire.Connection(address, connect_timeout_s=2.0)
            try:
                status = await conn.request("status", timeout_s=2.0)
            except Exception:  # noqa: BLE001 (a node that does not answer has no figure)
                return None
            finally:
                await conn.close()
            if "wal_syncs" not in status:
                return None  # a spare: no group, no WAL
            return {"syncs": status["wal_syncs"], "role": status.get("role"),
                    "group": status.get("group")}

        async def every() -> dict[str, dict[str, Any]]:
            addresses = self.cluster.node_addresses
            got = await asyncio.gather(*(one(a) for a in addresses.values()))
            return {f"node-{i}": g for i, g in zip(addresses, got, strict=True) if g}

        return asyncio.run(every())

    def version(self) -> str:
        from importlib.metadata import version

        return f"rangekv {version('rangekv')}"


def start_etcd_cluster(root: Path, members: int = 3) -> tuple[list[Proc], list[str]]:
    """A fresh etcd cluster of ``members`` on loopback with etcd's defaults (fsync on)."""
    names = [f"e{i}" for i in range(1, members + 1)]
    client = {n: free_port() for n in names}
    peer = {n: free_port() for n in names}
    initial = ",".join(f"{n}=http://{HOST}:{peer[n]}" for n in names)
    procs = []
    for n in names:
        argv = [
            etcd_binary(), "--name", n, "--data-dir", str(root / n),
            "--listen-client-urls", f"http://{HOST}:{client[n]}",
            "--advertise-client-urls", f"http://{HOST}:{client[n]}",
            "--listen-peer-urls", f"http://{HOST}:{peer[n]}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{peer[n]}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
        ]
        procs.append(spawn(n, argv, root / f"{n}.log"))
    endpoints = [f"http://{HOST}:{client[n]}" for n in names]

    def healthy() -> bool:
        for e in endpoints:
            with urllib.request.urlopen(e + "/health", timeout=1) as r:
                if b'"true"' not in r.read():
                    return False
        return True

    try:
        wait_until(healthy, 30, f"the {members}-member etcd cluster")
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs, endpoints


_METRIC = re.compile(rb"^(etcd_disk_wal_fsync_duration_seconds_count|"
                     rb"etcd_disk_backend_commit_duration_seconds_count)\s+([0-9.e+]+)$",
                     re.MULTILINE)


class Etcd(System):
    def __init__(self, name: str = "etcd-http") -> None:
        assert name in ("etcd-http", "etcd-py"), name
        self.name = name
        self.procs: list[Proc] = []
        self.endpoints: list[str] = []

    def start(self, root: Path) -> None:
        self.procs, self.endpoints = start_etcd_cluster(root / self.name)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        self.procs = []

    def target(self) -> Target:
        addrs = tuple((HOST, int(e.rsplit(":", 1)[1])) for e in self.endpoints)
        return Target(self.name, addrs)

    def pids(self) -> dict[str, int]:
        return {f"etcd-{p.name}": p.pid for p in self.procs}

    def fsyncs(self) -> dict[str, dict[str, Any]] | None:
        out = {}
        for p, e in zip(self.procs, self.endpoints, strict=True):
            with urllib.request.urlopen(e + "/metrics", timeout=5) as r:
                text = r.read()
            got = {m.group(1).decode(): int(float(m.group(2))) for m in _METRIC.finditer(text)}
            out[f"etcd-{p.name}"] = {
                "syncs": got.get("etcd_disk_wal_fsync_duration_seconds_count", 0),
                "backend_commits": got.get("etcd_disk_backend_commit_duration_seconds_count", 0)}
        return out

    def version(self) -> str:
        out = subprocess.run([etcd_binary(), "--version"], check=False, capture_output=True,
                             text=True, timeout=10).stdout
        v = out.splitlines()[0].split(":", 1)[1].strip() if out else "?"
        if self.name == "etcd-py":
            from importlib.metadata import version

            return f"etcd {v}, aetcd {version('aetcd')}, grpcio {version('grpcio')}"
        return f"etcd {v}"


def redis_binary() -> str | None:
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Redis(System):
    name = "redis"

    def __init__(self) -> None:
        self.proc: Proc | None = None
        self.port = 0

    def start(self, root: Path) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install "
                               "redis-server)")
        data = root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(data),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--daemonize", "no", "--protected-mode", "no", "--logfile", ""]
        self.proc = spawn("redis", argv, root / "redis.log")

        def pong() -> bool:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until(pong, 30, "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None

    def target(self) -> Target:
        return Target("redis", ((HOST, self.port),))

    def pids(self) -> dict[str, int]:
        return {"redis": self.proc.pid} if self.proc else {}

    def version(self) -> str:
        binary = redis_binary()
        out = subprocess.run([binary or "redis-server", "--version"], check=False,
                             capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"v=(\S+)", out)
        return f"redis {m.group(1) if m else '?'}"


def make_system(name: str) -> System:
    assert name in SYSTEMS, name
    if name == "rangekv":
        return RangeKV()
    if name == "redis":
        return Redis()
    return Etcd(name)


def available(name: str) -> str | None:
    """Why ``name`` cannot run on this machine, or None if it can."""
    if name == "redis" and redis_binary() is None:
        return "redis-server is not installed"
    if name == "etcd-py":
        import importlib.util

        if importlib.util.find_spec("aetcd") is None:
            return "the aetcd package is not installed (pip install -e '.[bench]')"
    return None
