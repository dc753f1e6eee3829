"""``rangekv bench client``: rangekv against etcd through each system's own Python client, the
way a Python application uses them: one process, one event loop (or N threads for the sync
clients), the public client API.

Clients: rangekv's ``AsyncClient`` and ``Client`` (given the client endpoint the launcher hands
out: HAProxy's address, whatever form it takes), etcd's ``aetcd`` (asyncio gRPC) and, for the
sync comparison, ``etcd3`` (python-etcd3; the ``etcd3-fc`` distribution, whose generated
protobuf modules work with current protobuf). Values are 256 bytes; gets are linearizable on
both (etcd's default, rangekv's only kind).

Theory of operation:

* Each system (``rangekv.bench.systems``: rangekv's local cluster, or etcd 3.4 with 3 members)
  is started fresh, one at a time, and stopped after its figures.
* Every measurement runs in a fresh process of its own (spawn context): the generator. A fresh
  process keeps the client's CPU figure clean (no gRPC threads or HTTP pools left over from an
  earlier client) and is the only way to run ``etcd3`` at all: its generated modules and
  aetcd's register the same ``.proto`` file names, which one process refuses.
* The generator tells the parent over a pipe when its window starts (``start``) and ends
  (``end``); the parent samples every server process's CPU (``/proc/PID/stat``) and, for
  writes, the fsync counters when each arrives (the suites' machinery, ``suite._servers``).
  The generator samples its own ``time.process_time()`` (every thread) at the same moments.
* Timed measurements (``ops``): ``tasks`` closed-loop tasks (or threads) each call ``put`` or
  ``get`` back to back; the first ``warmup_s`` are not counted; an operation counts if it
  completes inside the next ``seconds``, its latency from the call to the return. Puts write
  new keys; gets read random keys of the table loaded before (no misses).
* Count-based measurements: ``load`` puts ``records`` items (rangekv: ``put_many`` batches
  when the client has it, else single puts; etcd: transactions of ``etcd_txn_ops`` puts, etcd's
  default ``--max-txn-ops``, as many in flight as it takes to have as many items in flight as
  rangekv's batches), ``scan`` reads the whole loaded table once (rangekv: ``async for
  item in db.scan(table)``; etcd: ranges with a limit, page after page). The window runs from
  the first request to the last answer. ``cli_load`` (rangekv only) runs the ``rangekv load``
  command on a JSON Lines file of the same items, timed from its start to its exit.
* Each figure is the median of ``runs`` runs, figure by figure (``aggregate``); every run's
  main figure stays beside it. Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing as mp
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rangekv.bench.drivers import prefix_end
from rangekv.bench.hist import Histogram
from rangekv.bench.suite import _servers
from rangekv.bench.systems import System, make_system, proc_cpu_s

SYSTEMS = ("rangekv", "etcd")
LAUNCHERS = {"rangekv": "rangekv", "etcd": "etcd-py"}  # systems.make_system's names
LABELS = {
    "rangekv": "rangekv (3 replicas via HAProxy; rangekv.AsyncClient / rangekv.Client)",
    "etcd": "etcd 3.4 (3 members; aetcd async, etcd3 sync)",
}
ETCD_TXN_OPS_DEFAULT = 128  # etcd's --max-txn-ops default: the most puts one transaction holds
SCAN_PAGE_DEFAULT = 1000  # rangekv's client scans in pages of 1000 by default; etcd gets the same
LOAD_RETRIES = 3  # a failed load request is sent again (puts are idempotent) at most this often
ERROR_PAUSE_S = 0.01  # after a failed operation, so that a dead server is not spun on
TIMED_SLACK_S = 90.0  # how long past its window a timed generator may take to report
COUNTED_DEADLINE_S = 4 * 3600.0  # a load or a scan of a million keys at a few hundred keys/s
CLI_DEADLINE_S = 4 * 3600.0
# The median of the runs is taken of each of these figures, where a run has it.
FIGURES = ("ops", "ops_per_s", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "max_ms", "keys",
           "keys_per_s", "keys_per_s_reported", "seconds", "client_cpu_s",
           "client_cpu_ms_per_op", "client_cpu_pct", "server_cpu_ms_per_op", "requests",
           "fsync_per_write")


@dataclass(frozen=True)
class Config:
    systems: tuple[str, ...] = SYSTEMS
    seconds: float = 10.0
    warmup_s: float = 2.0
    runs: int = 3
    tasks: int = 64  # the async comparison's concurrent tasks
    threads: int = 16  # the sync clients' threads
    value_bytes: int = 256
    records: int = 200_000  # loaded (and then scanned, and read by the gets)
    load_batch: int = 1000  # rangekv put_many: items per call (as `rangekv load` sends them)
    load_inflight: int = 4  # rangekv put_many calls in flight at once (as `rangekv load`)
    load_tasks: int = 64  # without put_many: single puts by this many tasks
    etcd_txn_ops: int = ETCD_TXN_OPS_DEFAULT
    scan_page: int = SCAN_PAGE_DEFAULT
    cli_load: bool = True  # also time the `rangekv load` command
    rangekv_endpoint: str = "client"  # client: the launcher's client endpoint; http: HAProxy's
    timeout_s: float = 10.0  # each client call
    dir: str | None = None

    def __post_init__(self) -> None:
        assert self.systems and set(self.systems) <= set(SYSTEMS), self.systems
        assert self.seconds > 0 and self.warmup_s >= 0 and self.runs >= 1
        assert self.tasks >= 1 and self.threads >= 1 and self.load_tasks >= 1
        assert self.records >= 1 and self.value_bytes >= 1 and self.scan_page >= 1
        assert 1 <= self.load_batch and 1 <= self.load_inflight
        assert 1 <= self.etcd_txn_ops <= ETCD_TXN_OPS_DEFAULT, "etcd refuses bigger transactions"
        assert self.rangekv_endpoint in ("client", "http"), self.rangekv_endpoint

    def ordered_systems(self) -> list[str]:
        return [s for s in SYSTEMS if s in self.systems]

    def etcd_inflight(self) -> int:
        """etcd's transactions in flight during a load: as many items in flight as rangekv's
        batches carry (etcd's transactions are smaller)."""
        return -(-self.load_batch * self.load_inflight // self.etcd_txn_ops)

    def timed(self) -> list[tuple[str, str, int]]:
        """The timed measurements of each system, in order: (api, op, concurrency)."""
        out = [("async", "put", self.tasks), ("async", "get", self.tasks)]
        if self.tasks != 1:
            out += [("async", "put", 1), ("async", "get", 1)]
        return out + [("sync", "put", self.threads), ("sync", "get", self.threads)]

    def steps(self) -> int:
        """How many progress steps ``run_client`` takes."""
        per = 1 + self.runs * (2 + len(self.timed()))
        total = per * len(self.systems)
        if self.cli_load and "rangekv" in self.systems:
            total += self.runs
        return total


def key_of(i: int) -> bytes:
    """The ``i``-th loaded key (as the lean generator names them: ``rangekv.bench.load``)."""
    return f"k{i:010d}".encode()


# --- pure figures -------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def ratio(mine: float | None, theirs: float | None) -> float | None:
    """``mine / theirs``, or None when either is missing or ``theirs`` is 0."""
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def aggregate(runs: Sequence[dict[str, Any]], primary: str) -> dict[str, Any]:
    """One figure from several runs: the median of each figure of ``FIGURES`` (those the runs
    have), the server processes' CPU per operation likewise, errors added up, and every run's
    ``primary`` figure in ``runs`` (in run order)."""
    assert runs, "a figure needs at least one run"
    out: dict[str, Any] = {}
    for name in FIGURES:
        if any(name in r for r in runs):
            out[name] = median(r.get(name) for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for kind, n in r.get("errors", {}).items():
            errors[kind] = errors.get(kind, 0) + n
    out["errors"] = dict(sorted(errors.items()))
    names = sorted({n for r in runs for n in r.get("servers", {})})
    out["servers"] = {n: {"cpu_ms_per_op": median(r.get("servers", {}).get(n, {})
                                                  .get("cpu_ms_per_op") for r in runs)}
                      for n in names}
    out["runs"] = [round(r[primary], 4) if r.get(primary) is not None else None for r in runs]
    return out


def server_figures(r: dict[str, Any], ops: int) -> dict[str, Any]:
    """CPU per operation of every server process, their total, and fsyncs per write, from what
    ``suite._servers`` made of the window's samples."""
    servers = {n: {"cpu_s": v["cpu_s"], "cpu_ms_per_op": 1000 * v["cpu_s"] / ops if ops else None}
               for n, v in r.get("servers", {}).items()}
    total = sum(v["cpu_s"] for v in servers.values())
    fs = r.get("fsync")
    return {"servers": servers,
            "server_cpu_ms_per_op": 1000 * total / ops if ops and servers else None,
            "fsync_per_write": fs.get("node_max_per_write") if fs else None}


# --- in the generator process: the clients ------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One measurement, as the generator process gets it (picklable)."""

    system: str  # rangekv | etcd
    endpoints: tuple[str, ...]  # rangekv: client endpoints; etcd: host:port, the leader first
    kind: str  # ops | load | scan
    table: str
    api: str = "async"  # async | sync
    op: str = "put"
    tasks: int = 1  # ops: tasks or threads; load without batches: tasks
    records: int = 0  # ops get: keys 0..records-1 exist; load: how many to put
    value_bytes: int = 256
    warmup_s: float = 0.0
    seconds: float = 1.0
    batch: int = 1000
    inflight: int = 8
    page: int = SCAN_PAGE_DEFAULT
    timeout_s: float = 10.0
    seed: int = 1

    def __post_init__(self) -> None:
        assert self.system in SYSTEMS and self.endpoints, (self.system, self.endpoints)
        assert self.kind in ("ops", "load", "scan") and self.api in ("async", "sync")
        assert self.op in ("put", "get") and self.tasks >= 1
        assert self.kind != "ops" or self.op == "put" or self.records > 0, "gets need keys"
        assert self.api == "async" or self.kind == "ops", "loads and scans are async"

    def deadline_s(self) -> float:
        if self.kind == "ops":
            return self.warmup_s + self.seconds + self.timeout_s + TIMED_SLACK_S
        return COUNTED_DEADLINE_S


class Missing(Exception):
    """A get found no key (the gets read loaded keys: this is an error)."""


def error_kind(exc: BaseException) -> str:
    """What errors are counted by: a gRPC status code, else the exception's class."""
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    name = getattr(status, "name", None)
    return f"grpc_{name.lower()}" if isinstance(name, str) else type(exc).__name__


def failed_items(result: Any) -> int:
    """How many items of a ``put_many`` answer failed: one result per item, where a failure is
    an exception object (anything else, the seq, is a success)."""
    if isinstance(result, list | tuple):
        return sum(1 for r in result if isinstance(r, BaseException))
    return 0


def item_error_kinds(exc: BaseException) -> list[str]:
    """The kinds of the failed items of a batch that raised with ``results`` (rangekv's
    ``BatchFailed``), as ``item_<kind>``."""
    results = getattr(exc, "results", None)
    if not isinstance(results, list | tuple):
        return []
    return [f"item_{error_kind(r)}" for r in results if isinstance(r, BaseException)]


class AsyncRangeKV:
    def __init__(self, spec: Spec) -> None:
        import rangekv

        self.table = spec.table
        self.db = rangekv.AsyncClient(list(spec.endpoints), timeout_s=spec.timeout_s)
        self.batched = hasattr(self.db, "put_many")

    async def open(self) -> None:
        pass  # the client connects on first use

    async def put(self, w: int, key: bytes, value: bytes) -> None:
        await self.db.put(self.table, key, value)

    async def get(self, w: int, key: bytes) -> None:
        if await self.db.get(self.table, key) is None:
            raise Missing(key)

    async def put_batch(self, w: int, items: list[tuple[bytes, bytes]]) -> int:
        return failed_items(await self.db.put_many(self.table, items))

    def load_path(self, spec: Spec) -> str:
        if self.batched:
            return f"AsyncClient.put_many, {spec.batch} items a call, {spec.inflight} in flight"
        return f"AsyncClient.put (no put_many in this client), {spec.tasks} tasks"

    async def scan(self, page: int) -> tuple[int, int]:
        keys = size = 0
        async for item in self.db.scan(self.table, page_size=page):
            keys += 1
            size += len(item.value)
        return keys, size

    async def close(self) -> None:
        await self.db.aclose()


class AsyncEtcd:
    """aetcd: one client (gRPC channel) per member; task ``w`` uses member ``w % members``, so one
    task talks to the leader alone (etcd's best case) and many spread over the members."""

    batched = True

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.prefix = spec.table.encode() + b"/"
        self.end = prefix_end(self.prefix)
        self.clients: list[Any] = []

    async def open(self) -> None:
        import aetcd

        for address in self.spec.endpoints:
            host, port = address.rsplit(":", 1)
            client = aetcd.Client(host, int(port), timeout=max(1, round(self.spec.timeout_s)))
            await client.connect()
            self.clients.append(client)

    async def put(self, w: int, key: bytes, value: bytes) -> None:
        await self.clients[w % len(self.clients)].put(self.prefix + key, value)

    async def get(self, w: int, key: bytes) -> None:
        if await self.clients[w % len(self.clients)].get(self.prefix + key) is None:
            raise Missing(key)

    async def put_batch(self, w: int, items: list[tuple[bytes, bytes]]) -> int:
        c = self.clients[w % len(self.clients)]
        ok, _ = await c.transaction(
            compare=[], success=[c.transactions.put(self.prefix + k, v) for k, v in items],
            failure=[])
        return 0 if ok else len(items)

    def load_path(self, spec: Spec) -> str:
        return (f"aetcd transaction of {spec.batch} puts (etcd's --max-txn-ops), "
                f"{spec.inflight} in flight")

    async def scan(self, page: int) -> tuple[int, int]:
        """Ranges of ``page`` keys (aetcd's ``get_range`` has no limit: its stub does), each
        from the last key + 1, as a user pages through etcd."""
        from aetcd import rpc

        c = self.clients[0]
        keys = size = 0
        first = self.prefix
        while True:
            answer = await c.kvstub.Range(
                rpc.RangeRequest(key=first, range_end=self.end, limit=page),
                timeout=self.spec.timeout_s)
            kvs = answer.kvs
            for kv in kvs:
                keys += 1
                size += len(kv.value)
            if not answer.more or not kvs:
                return keys, size
            first = bytes(kvs[-1].key) + b"\x00"

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


class SyncRangeKV:
    """One ``rangekv.Client`` shared by every thread (it is thread-safe)."""

    def __init__(self, spec: Spec) -> None:
        import rangekv

        self.table = spec.table
        self.db = rangekv.Client(list(spec.endpoints), timeout_s=spec.timeout_s)

    def put(self, w: int, key: bytes, value: bytes) -> None:
        self.db.put(self.table, key, value)

    def get(self, w: int, key: bytes) -> None:
        if self.db.get(self.table, key) is None:
            raise Missing(key)

    def close(self) -> None:
        self.db.close()


class SyncEtcd:
    """etcd3 (python-etcd3): one client per member, thread ``w`` on member ``w % members``."""

    def __init__(self, spec: Spec) -> None:
        import etcd3

        self.prefix = spec.table.encode() + b"/"
        self.clients = []
        for address in spec.endpoints:
            host, port = address.rsplit(":", 1)
            self.clients.append(etcd3.client(host, int(port), timeout=spec.timeout_s))

    def put(self, w: int, key: bytes, value: bytes) -> None:
        self.clients[w % len(self.clients)].put(self.prefix + key, value)

    def get(self, w: int, key: bytes) -> None:
        value, _ = self.clients[w % len(self.clients)].get(self.prefix + key)
        if value is None:
            raise Missing(key)

    def close(self) -> None:
        for c in self.clients:
            c.close()


@dataclass
class Tally:
    """One task's (or thread's) count: latencies of what completed in the window, errors."""

    hist: Histogram = field(default_factory=Histogram)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Marks:
    """The window's edges: this process's CPU time, said to the parent once each."""

    def __init__(self, signal: Callable[[str], None]) -> None:
        self.signal = signal
        self.cpu_s: dict[str, float] = {}
        self.at: dict[str, float] = {}

    def mark(self, name: str) -> None:
        if name in self.cpu_s:
            return
        self.cpu_s[name] = time.process_time()
        self.at[name] = time.monotonic()
        self.signal(name)

    def figures(self, ops: int, rate: str) -> dict[str, Any]:
        """The window's length, ``ops`` per second under the name ``rate``, and this process's
        CPU over the window."""
        window = max(self.at["end"] - self.at["start"], 1e-9)
        cpu = self.cpu_s["end"] - self.cpu_s["start"]
        return {"seconds": round(window, 6), rate: ops / window, "client_cpu_s": round(cpu, 6),
                "client_cpu_pct": round(100 * cpu / window, 1),
                "client_cpu_ms_per_op": 1000 * cpu / ops if ops else None}


def timed_result(tallies: Sequence[Tally], marks: Marks) -> dict[str, Any]:
    everything = Histogram()
    errors: dict[str, int] = {}
    for t in tallies:
        everything.merge(t.hist)
        for kind, n in t.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    ops = everything.count
    out = {"ops": ops, **marks.figures(ops, "ops_per_s"), "errors": dict(sorted(errors.items()))}
    out.update({k: round(v, 4) for k, v in everything.summary_ms().items()})
    return out


def _key(spec: Spec, rng: random.Random, w: int, i: int) -> bytes:
    if spec.op == "put":
        return f"p{spec.seed}-{w}-{i}".encode()  # a new key each time, in every run
    return key_of(rng.randrange(spec.records))


async def timed_async(spec: Spec, client: Any, signal: Callable[[str], None]) -> dict[str, Any]:
    value = random.Random(spec.seed).randbytes(spec.value_bytes)
    loop = asyncio.get_running_loop()
    t_start = time.monotonic() + spec.warmup_s
    t_end = t_start + spec.seconds
    marks = Marks(signal)
    loop.call_at(t_start, marks.mark, "start")  # the loop's clock is time.monotonic
    loop.call_at(t_end, marks.mark, "end")
    tallies = [Tally() for _ in range(spec.tasks)]
    call = client.put if spec.op == "put" else client.get

    async def task(w: int) -> None:
        rng = random.Random(spec.seed * 7919 + w)
        tally = tallies[w]
        i = 0
        while (began := time.monotonic()) < t_end:
            key = _key(spec, rng, w, i)
            i += 1
            try:
                await (call(w, key, value) if spec.op == "put" else call(w, key))
            except Exception as exc:  # noqa: BLE001 (counted by kind, never as a success)
                if t_start <= time.monotonic() < t_end:
                    tally.error(error_kind(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            done = time.monotonic()
            if t_start <= done < t_end:
                tally.hist.record(done - began)

    await asyncio.gather(*(task(w) for w in range(spec.tasks)))
    marks.mark("start")  # (both already marked unless the loop was too busy to get there)
    marks.mark("end")
    return timed_result(tallies, marks)


def timed_sync(spec: Spec, signal: Callable[[str], None]) -> dict[str, Any]:
    client: Any = SyncRangeKV(spec) if spec.system == "rangekv" else SyncEtcd(spec)
    value = random.Random(spec.seed).randbytes(spec.value_bytes)
    t_start = time.monotonic() + spec.warmup_s
    t_end = t_start + spec.seconds
    marks = Marks(signal)
    tallies = [Tally() for _ in range(spec.tasks)]

    def thread(w: int) -> None:
        rng = random.Random(spec.seed * 7919 + w)
        tally = tallies[w]
        i = 0
        while (began := time.monotonic()) < t_end:
            key = _key(spec, rng, w, i)
            i += 1
            try:
                if spec.op == "put":
                    client.put(w, key, value)
                else:
                    client.get(w, key)
            except Exception as exc:  # noqa: BLE001 (counted by kind, never as a success)
                if t_start <= time.monotonic() < t_end:
                    tally.error(error_kind(exc))
                time.sleep(ERROR_PAUSE_S)
                continue
            done = time.monotonic()
            if t_start <= done < t_end:
                tally.hist.record(done - began)

    threads = [threading.Thread(target=thread, args=(w,), daemon=True,
                                name=f"bench-client-{w}") for w in range(spec.tasks)]
    try:
        for t in threads:
            t.start()
        time.sleep(max(0.0, t_start - time.monotonic()))
        marks.mark("start")
        time.sleep(max(0.0, t_end - time.monotonic()))
        marks.mark("end")
        for t in threads:
            t.join(spec.timeout_s + 30)
        assert not any(t.is_alive() for t in threads), "a client thread did not stop"
    finally:
        client.close()
    return timed_result(tallies, marks)


async def load(spec: Spec, client: Any, signal: Callable[[str], None]) -> dict[str, Any]:
    """Puts keys ``0 .. records-1`` once: in batches when the client can, else one by one."""
    value = random.Random(spec.seed).randbytes(spec.value_bytes)
    size = spec.batch if client.batched else 1
    chunks = iter(range(0, spec.records, size))
    workers = spec.inflight if client.batched else spec.tasks
    done = requests = 0
    errors: dict[str, int] = {}

    async def worker(w: int) -> None:
        nonlocal done, requests
        for first in chunks:  # one iterator shared by the workers: each chunk goes once
            items = [(key_of(i), value) for i in range(first, min(first + size, spec.records))]
            for attempt in range(LOAD_RETRIES):
                requests += 1
                try:
                    if client.batched:
                        failed = await client.put_batch(w, items)
                    else:
                        await client.put(w, *items[0])
                        failed = 0
                except Exception as exc:  # noqa: BLE001 (sent again: puts are idempotent)
                    for kind in [error_kind(exc), *item_error_kinds(exc)]:
                        errors[kind] = errors.get(kind, 0) + 1
                    if attempt == LOAD_RETRIES - 1:
                        errors["gave_up_items"] = errors.get("gave_up_items", 0) + len(items)
                    continue
                if failed:
                    errors["failed_items"] = errors.get("failed_items", 0) + failed
                done += len(items) - failed
                break

    marks = Marks(signal)
    marks.mark("start")
    await asyncio.gather(*(worker(w) for w in range(min(workers, spec.records))))
    marks.mark("end")
    return {"keys": done, "requests": requests, **marks.figures(done, "keys_per_s"),
            "errors": dict(sorted(errors.items())), "path": client.load_path(spec)}


async def scan(spec: Spec, client: Any, signal: Callable[[str], None]) -> dict[str, Any]:
    marks = Marks(signal)
    marks.mark("start")
    keys, size = await client.scan(spec.page)
    marks.mark("end")
    return {"keys": keys, "value_bytes": size, **marks.figures(keys, "keys_per_s"),
            "errors": {}}


async def _measure_async(spec: Spec, signal: Callable[[str], None]) -> dict[str, Any]:
    client: Any = AsyncRangeKV(spec) if spec.system == "rangekv" else AsyncEtcd(spec)
    try:
        await client.open()
        if spec.kind == "ops":
            return await timed_async(spec, client, signal)
        if spec.kind == "load":
            return await load(spec, client, signal)
        return await scan(spec, client, signal)
    finally:
        await client.close()


def _generator_main(spec: Spec, pipe: Any) -> None:
    def signal(name: str) -> None:
        pipe.send((name, None))

    try:
        if spec.api == "sync":
            result = timed_sync(spec, signal)
        else:
            result = asyncio.run(_measure_async(spec, signal))
        pipe.send(("result", result))
    except BaseException:  # noqa: BLE001 (sent to the parent, which raises it)
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class GeneratorError(RuntimeError):
    """The generator process failed (its traceback is the message) or went quiet."""


def run_spec(spec: Spec, at_start: Callable[[], Any] | None = None,
             at_end: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Runs ``spec`` in a fresh generator process; ``at_start``/``at_end`` run here when the
    window starts and ends (their answers are under ``samples``)."""
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_generator_main, args=(spec, theirs), daemon=True,
                       name="rangekv-bench-client")
    proc.start()
    theirs.close()
    samples: dict[str, Any] = {}
    deadline = time.monotonic() + spec.deadline_s()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not mine.poll(left):
                raise GeneratorError(f"the generator of {spec.kind} did not finish in time")
            try:
                kind, value = mine.recv()
            except EOFError:
                raise GeneratorError("the generator process died without a word") from None
            if kind == "error":
                raise GeneratorError(value)
            if kind == "result":
                break
            hook = at_start if kind == "start" else at_end
            samples[kind] = hook() if hook is not None else None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    value["samples"] = samples
    return value  # type: ignore[no-any-return]


# --- in the parent: the systems and the suite ---------------------------------------------------


def _http_json(url: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class Admin:
    """The clients' endpoints, and tables before and after the measurements, outside every
    window: rangekv's through its sync client over HTTP, etcd's (key prefixes) through its JSON
    gateway."""

    def __init__(self, name: str, system: System, rangekv_endpoint: str = "client") -> None:
        self.name = name
        self.system = system
        self.rangekv_endpoint = rangekv_endpoint
        self.endpoints = self._endpoints()

    def _endpoints(self) -> tuple[str, ...]:
        if self.name == "rangekv":
            return (self.system.client_endpoint(self.rangekv_endpoint),)  # type: ignore[attr-defined]
        urls = list(self.system.endpoints)  # type: ignore[attr-defined]
        leader = None
        for url in urls:
            status = _http_json(url + "/v3/maintenance/status", {})
            if status.get("leader") == status.get("header", {}).get("member_id"):
                leader = url
        ordered = ([leader] if leader else []) + [u for u in urls if u != leader]
        return tuple(u.split("://", 1)[1] for u in ordered)

    def create(self, table: str) -> None:
        if self.name != "rangekv":
            return  # a table is a key prefix
        import rangekv

        with rangekv.Client(self.system.client_endpoint("http")) as db:  # type: ignore[attr-defined]
            if table not in db.tables():
                db.create_table(table)

    def drop(self, table: str) -> None:
        if self.name == "rangekv":
            import rangekv

            http = self.system.client_endpoint("http")  # type: ignore[attr-defined]
            with rangekv.Client(http, timeout_s=120) as db:
                db.drop_table(table)
            return
        # etcd: delete the prefix, then compact and defragment, so that the runs' loads do not
        # pile up towards etcd's 2 GB quota
        urls = list(self.system.endpoints)  # type: ignore[attr-defined]
        prefix = table.encode() + b"/"
        got = _http_json(urls[0] + "/v3/kv/deleterange",
                         {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        revision = int(got["header"]["revision"])
        _http_json(urls[0] + "/v3/kv/compaction", {"revision": revision, "physical": True})
        for url in urls:
            _http_json(url + "/v3/maintenance/defragment", {}, timeout_s=600)


def available(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    import importlib.util

    if name == "etcd" and importlib.util.find_spec("aetcd") is None:
        return "the aetcd package is not installed (pip install -e '.[bench]')"
    return None


def sync_etcd_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("etcd3") is None:
        return ("etcd's sync client is not installed (pip install -e '.[bench]' brings "
                "etcd3-fc, python-etcd3 with protobuf modules current protobuf loads)")
    return None


def versions(name: str, system: System, form: str = "client") -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "absent"

    if name == "rangekv":
        endpoint = system.client_endpoint(form)  # type: ignore[attr-defined]
        return f"{system.version()}, httpx {v('httpx')}; client endpoint {endpoint}"
    etcd = system.version().split(",")[0]
    return (f"{etcd}, aetcd {v('aetcd')}, etcd3-fc {v('etcd3-fc')}, grpcio {v('grpcio')}, "
            f"protobuf {v('protobuf')}")


def cli_load_path() -> str:
    """Which way the ``rangekv load`` command puts, as its source says (a hint for the reader,
    not a measurement: the command decides)."""
    import inspect

    from rangekv.cli import load as cli_load

    if "put_many" in inspect.getsource(cli_load):
        return "its code calls put_many"
    return "its code has no put_many: one put per item"


def write_jsonl(path: Path, records: int, value_bytes: int) -> None:
    """The items of a load as ``rangekv load`` reads them: keys ``key_of(i)``, one ASCII value."""
    value = "v" * value_bytes
    with path.open("w") as f:
        for first in range(0, records, 10_000):
            f.write("".join(f'{{"key": "{key_of(i).decode()}", "value": "{value}"}}\n'
                            for i in range(first, min(first + 10_000, records))))


@dataclass
class ClientBench:
    """The measurements of one started system."""

    name: str
    system: System
    config: Config
    progress: Callable[[str], None]
    tmp: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self.admin = Admin(self.name, self.system, self.config.rangekv_endpoint)

    def spec(self, **kw: Any) -> Spec:
        c = self.config
        self.seed += 1  # also names the keys of puts: every run writes new keys
        return Spec(system=self.name, endpoints=self.admin.endpoints, value_bytes=c.value_bytes,
                    warmup_s=c.warmup_s, seconds=c.seconds, timeout_s=c.timeout_s,
                    seed=self.seed, **kw)

    def sample(self, writes: bool) -> Callable[[], dict[str, Any]]:
        pids = self.system.pids()

        def now() -> dict[str, Any]:
            return {"cpu": {n: proc_cpu_s(p) for n, p in pids.items()},
                    "fsync": self.system.fsyncs() if writes else None}

        return now

    def run(self, spec: Spec) -> dict[str, Any]:
        writes = spec.op == "put" and spec.kind != "scan"
        sample = self.sample(writes)
        r = run_spec(spec, sample, sample)
        ops = r.get("ops", r.get("keys", 0))
        r["ops"] = ops
        r["by_op"] = {"put": {"count": ops}} if writes else {}
        r.update(_servers(r, writes))
        r.update(server_figures(r, ops))
        r.pop("by_op")
        return r

    def figure(self, what: str, kind: str, runs: list[dict[str, Any]], primary: str,
               **extra: Any) -> dict[str, Any]:
        out = {"system": self.name, "what": what, "kind": kind, **extra,
               **aggregate(runs, primary), "per_run": runs}
        if runs and "path" in runs[-1]:
            out["path"] = runs[-1]["path"]
        self.results.append(out)
        return out

    def load_and_scan(self) -> str:
        """``runs`` loads, each into a fresh table scanned right after; the last stays for the
        gets. Returns its name."""
        c = self.config
        loads, scans = [], []
        table = ""
        for i in range(1, c.runs + 1):
            if table:
                self.admin.drop(table)  # one loaded table at a time
            table = f"load{i}"
            self.admin.create(table)
            self.progress(f"{self.name}: load {c.records:,} keys, run {i}/{c.runs}")
            rangekv = self.name == "rangekv"
            r = self.run(self.spec(kind="load", table=table, records=c.records,
                                   batch=c.load_batch if rangekv else c.etcd_txn_ops,
                                   inflight=c.load_inflight if rangekv else c.etcd_inflight(),
                                   tasks=c.load_tasks))
            loads.append(r)
            self.progress(f"{self.name}: scan {r['keys']:,} keys, run {i}/{c.runs}")
            scans.append(self.run(self.spec(kind="scan", table=table, op="get",
                                            page=c.scan_page)))
        self.figure("load", "load", loads, "keys_per_s", records=c.records)
        self.figure("scan", "scan", scans, "keys_per_s", page=c.scan_page)
        return table

    def cli_load(self) -> None:
        """``rangekv load TABLE FILE`` as a user runs it; keys/s from its start to its exit
        (reading and checking the file included) and as the command itself reports."""
        c = self.config
        path = self.tmp / f"load-{c.records}.jsonl"
        write_jsonl(path, c.records, c.value_bytes)
        runs = []
        for i in range(1, c.runs + 1):
            table = f"cli{i}"
            self.progress(f"{self.name}: rangekv load {c.records:,} keys, run {i}/{c.runs}")
            sample = self.sample(True)
            argv = [sys.executable, "-m", "rangekv.cli.main", "--json",
                    "--endpoint", ",".join(self.admin.endpoints), "load", table, str(path),
                    "--create"]
            before = sample()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=CLI_DEADLINE_S)
            wall = time.monotonic() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = sample()
            if done.returncode != 0:
                raise RuntimeError(f"rangekv load failed ({done.returncode}): "
                                   f"{done.stderr.strip()[-2000:]}")
            said = json.loads(done.stdout.strip().splitlines()[-1])
            keys = int(said["loaded"])
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            r: dict[str, Any] = {
                "keys": keys, "seconds": round(wall, 4), "keys_per_s": keys / wall,
                "keys_per_s_reported": keys / max(float(said["seconds"]), 1e-9),
                "client_cpu_s": round(cpu, 4), "client_cpu_ms_per_op": 1000 * cpu / keys,
                "client_cpu_pct": round(100 * cpu / wall, 1), "errors": {},
                "ops": keys, "samples": {"start": before, "end": after},
                "by_op": {"put": {"count": keys}}}
            r.update(_servers(r, True))
            r.update(server_figures(r, keys))
            r.pop("by_op")
            runs.append(r)
            self.admin.drop(table)
        path.unlink()
        self.figure("rangekv load", "cli_load", runs, "keys_per_s", records=c.records,
                    path=f"rangekv load TABLE FILE --create ({cli_load_path()})")

    def timed(self, gets_table: str, sync_missing: str | None) -> None:
        c = self.config
        self.admin.create("pyc")
        for api, op, conc in c.timed():
            what = f"{api} {op} x{conc}"
            if api == "sync" and self.name == "etcd" and sync_missing:
                continue
            runs = []
            for i in range(1, c.runs + 1):
                self.progress(f"{self.name}: {what}, run {i}/{c.runs}")
                table = "pyc" if op == "put" else gets_table
                runs.append(self.run(self.spec(kind="ops", api=api, op=op, tasks=conc,
                                               table=table, records=c.records)))
            self.figure(what, "ops", runs, "ops_per_s", api=api, op=op, concurrency=conc)


def run_client(config: Config, progress: Callable[[str], None] = lambda _: None
               ) -> dict[str, Any]:
    """Every system of ``config``, one at a time: its figures as JSON-ready data."""
    out: dict[str, Any] = {"config": asdict(config), "versions": {}, "labels": {},
                           "skipped": {}, "failed": {}, "notes": [], "results": [],
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    sync_missing = sync_etcd_missing()
    if sync_missing and "etcd" in config.systems:
        out["notes"].append(f"etcd's sync figures are missing: {sync_missing}")
    with tempfile.TemporaryDirectory(prefix="rangekv-bench-client-", dir=config.dir) as tmp:
        for name in config.ordered_systems():
            why = available(name)
            if why is not None:
                out["skipped"][name] = why
                progress(f"{name}: skipped ({why})")
                continue
            system = make_system(LAUNCHERS[name])
            progress(f"{name}: start")
            bench: ClientBench | None = None
            try:
                system.start(Path(tmp))
                out["versions"][name] = versions(name, system, config.rangekv_endpoint)
                out["labels"][name] = LABELS[name]
                bench = ClientBench(name, system, config, progress, Path(tmp))
                table = bench.load_and_scan()
                if name == "rangekv" and config.cli_load:
                    bench.cli_load()
                bench.timed(table, sync_missing)
            except Exception as exc:  # noqa: BLE001 (one system's failure keeps the others)
                out["failed"][name] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
                progress(f"{name}: failed ({type(exc).__name__})")
            finally:
                if bench is not None:
                    out["results"].extend(bench.results)
                system.stop()
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return out


def find(data: dict[str, Any], system: str, what: str) -> dict[str, Any] | None:
    """The figure ``what`` (``async put x64``, ``load``, ``scan``, ...) of ``system``."""
    for r in data.get("results", []):
        if r["system"] == system and r["what"] == what:
            return r
    return None
