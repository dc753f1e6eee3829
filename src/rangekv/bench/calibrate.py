"""Calibration: what this machine can do at best, measured, so that every other figure of
``rangekv bench`` can be read against a floor (issue 6).

* **fsync**: 256-byte appends, each followed by ``fdatasync``, on a file in ``--dir`` (put it on
  the disk the cluster uses): by 1 writer, and by 3 writers at once (three replicas of a group
  share one disk on a single machine). Rate and latency per sync.
* **group commit**: one writer appending ``batch`` records of 256 bytes before each sync: the
  ceiling of durable entries per second when a WAL batches everything queued during a sync.
* **loopback round trip**: one small request and its answer over TCP on 127.0.0.1 between two
  asyncio endpoints in this process (the Python cost included), p50 and p99.
* **echo ceiling**: how many small request/answer exchanges per second one Python asyncio
  process serves with ``connections`` clients in another process: the most any single Python
  server of ours could do with no work at all.
* **floor of one replicated write**: client → rm → leader → follower and back is three round
  trips; the leader's and the follower's syncs run in parallel, so one sync: ``3 × RTT p50 +
  fsync p50`` (1 writer). No put can be faster on this machine.

Every step stops by itself after ``seconds``; everything runs on loopback and in ``--dir``.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD = b"r" * 256
ECHO_MESSAGE = b"x" * 64


@dataclass
class Rate:
    per_s: float
    p50_ms: float
    p99_ms: float
    n: int


@dataclass
class Calibration:
    fsync_1: Rate
    fsync_3: Rate  # per_s: all three writers together; latencies: of one sync
    group_commit: Rate  # per_s: durable records per second
    group_commit_batch: int
    loopback_rtt: Rate  # per_s: sequential round trips per second
    echo_ceiling: Rate  # per_s: exchanges per second with ``echo_connections`` clients
    echo_connections: int
    floor_put_ms: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        def row(name: str, r: Rate, unit: str) -> str:
            return (f"  {name:<34} {r.per_s:>10,.0f} {unit:<12} p50 {r.p50_ms:7.3f} ms  "
                    f"p99 {r.p99_ms:7.3f} ms  (n={r.n:,})")

        return "\n".join([
            "calibration (the best this machine does; other figures read against it)",
            row("fsync, 1 writer", self.fsync_1, "syncs/s"),
            row("fsync, 3 writers (one disk)", self.fsync_3, "syncs/s"),
            row(f"group commit, {self.group_commit_batch} x 256 B per sync", self.group_commit,
                "records/s"),
            row("loopback round trip (asyncio)", self.loopback_rtt, "trips/s"),
            row(f"python echo, {self.echo_connections} connections", self.echo_ceiling,
                "exchanges/s"),
            (f"  {'floor of one replicated write':<34} {self.floor_put_ms:10.3f} ms  "
             "(3 round trips + 1 fsync, p50)"),
            *(f"  note: {n}" for n in self.notes),
        ])


def _rate(latencies_s: list[float], elapsed_s: float, count: int | None = None) -> Rate:
    lat = sorted(latencies_s)
    if not lat:
        return Rate(0.0, 0.0, 0.0, 0)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    n = len(lat) if count is None else count
    return Rate(n / elapsed_s, statistics.median(lat) * 1000, p99 * 1000, n)


def _sync_loop(path: Path, seconds: float, batch: int, out: list[float]) -> None:
    """Append ``batch`` records then fdatasync, until ``seconds`` pass; sync latencies."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = RECORD * batch
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            os.write(fd, data)
            t = time.perf_counter()
            os.fdatasync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def measure_fsync(directory: Path, writers: int, seconds: float, batch: int = 1) -> Rate:
    outs: list[list[float]] = [[] for _ in range(writers)]
    threads = [threading.Thread(target=_sync_loop,
                                args=(directory / f"calibrate-{os.getpid()}-{i}.log", seconds,
                                      batch, outs[i]))
               for i in range(writers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    lat = [x for out in outs for x in out]
    rate = _rate(lat, elapsed)
    if batch > 1:
        rate.per_s *= batch
    return rate


async def _loopback(seconds: float) -> Rate:
    finished = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.readexactly(len(ECHO_MESSAGE)):
                writer.write(data)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            finished.set()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat: list[float] = []
    began = time.perf_counter()
    end = began + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        writer.write(ECHO_MESSAGE)
        await reader.readexactly(len(ECHO_MESSAGE))
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - began
    writer.close()
    await writer.wait_closed()
    await finished.wait()  # the server's side saw the end: nothing is cancelled under it
    server.close()
    await server.wait_closed()
    return _rate(lat, elapsed)


def _echo_server(port_out: Any, stop: Any) -> None:
    async def serve() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.readexactly(len(ECHO_MESSAGE)):
                    writer.write(data)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(serve())


async def _echo_clients(port: int, connections: int, seconds: float) -> Rate:
    lat: list[float] = []
    began = time.perf_counter()
    end = began + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.perf_counter() < end:
            t = time.perf_counter()
            writer.write(ECHO_MESSAGE)
            await reader.readexactly(len(ECHO_MESSAGE))
            lat.append(time.perf_counter() - t)
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return _rate(lat, time.perf_counter() - began)


def measure_echo(connections: int, seconds: float) -> Rate:
    """Exchanges per second that one Python asyncio server process answers (the clients run
    in this process: on 2 cores each side gets about one)."""
    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_echo_server, args=(port_q, stop), daemon=True)
    proc.start()
    try:
        port = port_q.get(timeout=30)
        return asyncio.run(_echo_clients(port, connections, seconds))
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


def calibrate(directory: Path | None = None, seconds: float = 3.0, batch: int = 64,
              connections: int = 64,
              progress: Callable[[str], None] = lambda _: None) -> Calibration:
    with tempfile.TemporaryDirectory(prefix="rangekv-calibrate-",
                                     dir=str(directory) if directory else None) as tmp:
        where = Path(tmp)
        progress("fsync, 1 writer")
        one = measure_fsync(where, 1, seconds)
        progress("fsync, 3 writers")
        three = measure_fsync(where, 3, seconds)
        progress(f"group commit ({batch} records per sync)")
        group = measure_fsync(where, 1, seconds, batch)
    progress("loopback round trip")
    rtt = asyncio.run(_loopback(seconds))
    progress(f"python echo ceiling ({connections} connections)")
    echo = measure_echo(connections, seconds)
    floor = 3 * rtt.p50_ms + one.p50_ms
    notes = []
    if one.p50_ms < 0.05:
        notes.append("fsync under 50 us: this disk (or a tmpfs) does not reach stable "
                     "storage; use --dir on the cluster's disk")
    return Calibration(one, three, group, batch, rtt, echo, connections, floor, notes)
