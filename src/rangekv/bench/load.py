"""The load generator: several processes, each an asyncio loop over lean connections
(``rangekv.bench.drivers``), driving one system with one workload.

Theory of operation:

* ``run_phase(phase)`` spawns ``min(processes, connections)`` processes (spawn context); each
  opens its share of the connections and says "ready". The parent then sends every process the
  same start time ``t_go`` (``time.monotonic``: one clock for all processes on Linux). Warm-up
  is ``[t_go, t_go + warmup_s)``; the measurement window is the next ``seconds``. Each process
  returns its histograms, counts, errors and its own CPU time over the window; the parent merges
  them (histograms merge exactly: ``rangekv.bench.hist``).
* **Closed loop** (``mode="closed"``): each connection has one worker that sends its next request
  when the previous answer arrives. An operation counts if it completes inside the window; its
  latency runs from its send.
* **Open loop** (``mode="open"``): a scheduler per process releases operations at their intended
  times (``rate / processes`` per second, evenly spaced, the processes staggered); a pool of
  workers, one per connection, takes them in order. Latency runs from the *intended* time, so
  time spent waiting for a free connection (or for a generator that fell behind) is counted:
  no coordinated omission. Every operation intended inside the window is recorded, even if it
  completes after the window (up to ``drain_s`` later); what is still unanswered then counts as
  error ``unfinished``. The achieved rate is completions inside the window over its length.
* **Load** (``mode="load"``): inserts keys ``0 .. records-1`` once, split over all connections
  (each key retried a few times on error), then stops: count-based, not timed.

Errors are counted by kind (``OpError.kind``); a connection or timeout error reopens that
worker's connection. Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from rangekv.bench.drivers import Driver, OpError, Target, make_driver
from rangekv.bench.hist import Histogram
from rangekv.bench.zipf import Latest, ScrambledZipfian

OPS = ("put", "get", "read", "update", "insert", "scan", "rmw", "page")
RECONNECT_KINDS = frozenset({"connection", "timeout", "protocol", "connect"})
LOAD_RETRIES = 5
READY_TIMEOUT_S = 60.0
START_DELAY_S = 0.2
WATCHDOG_S = 0.25


@dataclass(frozen=True)
class Workload:
    """What each operation does. ``mix`` weights the operations (normalised); existing keys are
    ``key(0) .. key(records - 1)`` (loaded beforehand), chosen by ``distribution``."""

    name: str
    mix: tuple[tuple[str, float], ...]
    table: str = "bench"
    value_bytes: int = 256
    records: int = 0
    distribution: str = "uniform"  # uniform | zipfian | latest
    scan_max: int = 100  # YCSB E: scan lengths uniform in 1..scan_max
    page: int = 1000  # page: whole-table pagination in pages of this many keys
    key_prefix: str = "k"

    def __post_init__(self) -> None:
        assert self.mix and all(op in OPS and w > 0 for op, w in self.mix), self.mix
        assert self.distribution in ("uniform", "zipfian", "latest"), self.distribution
        needs_records = any(op in ("get", "read", "update", "scan", "rmw") for op, _ in self.mix)
        assert self.records > 0 or not needs_records, "reads need loaded records"

    def key(self, i: int) -> bytes:
        return f"{self.key_prefix}{i:010d}".encode()


@dataclass(frozen=True)
class Phase:
    target: Target
    workload: Workload
    mode: str  # closed | open | load
    connections: int
    processes: int = 2
    rate: float = 0.0  # open loop: total intended operations per second
    warmup_s: float = 1.0
    seconds: float = 5.0
    drain_s: float = 2.0
    seed: int = 1

    def __post_init__(self) -> None:
        assert self.mode in ("closed", "open", "load"), self.mode
        assert self.connections >= 1 and self.processes >= 1
        assert self.mode != "open" or self.rate > 0, "an open loop needs a rate"
        assert self.seconds > 0 and self.warmup_s >= 0


class OpRunner:
    """The operations of one generator process, with their key choosers (seeded)."""

    def __init__(self, driver: Driver, wl: Workload, part: int, parts: int, seed: int) -> None:
        self.driver, self.wl, self.part, self.parts = driver, wl, part, parts
        self.rng = random.Random(seed * 7919 + part)
        total = sum(w for _, w in wl.mix)
        self.ops = [op for op, _ in wl.mix]
        self.cum: list[float] = []
        acc = 0.0
        for _, w in wl.mix:
            acc += w / total
            self.cum.append(acc)
        self.value = self.rng.randbytes(wl.value_bytes)
        self.zipf = ScrambledZipfian(wl.records, rng=self.rng) if wl.records else None
        self.latest = Latest(max(1, wl.records), rng=self.rng)
        self.inserted: list[int] = []  # indices of this process's acknowledged inserts
        self.inserts_begun = 0
        self.puts = 0
        self.nonce = seed
        self.cursors: dict[int, Any] = {}

    def choose(self) -> str:
        if len(self.ops) == 1:
            return self.ops[0]
        u = self.rng.random()
        for op, c in zip(self.ops, self.cum, strict=True):
            if u < c:
                return op
        return self.ops[-1]

    def existing(self) -> int:
        """The index of a key that exists (loaded, or inserted and acknowledged by us)."""
        wl = self.wl
        if wl.distribution == "uniform":
            return self.rng.randrange(wl.records)
        if wl.distribution == "zipfian":
            assert self.zipf is not None
            return self.zipf.next()
        mine = len(self.inserted)
        r = self.latest.next(wl.records + mine)
        return self.inserted[-1 - r] if r < mine else wl.records - 1 - (r - mine)

    async def run(self, op: str, conn: Any, worker: int) -> int:
        """Does one operation; returns the number of items it handled (keys for scans)."""
        d, wl = self.driver, self.wl
        if op in ("get", "read"):
            await d.get(conn, wl.key(self.existing()))
            return 1
        if op == "put":
            self.puts += 1
            key = f"{wl.key_prefix}-{self.nonce}-{self.part}-{worker}-{self.puts}".encode()
            await d.put(conn, key, self.value)
            return 1
        if op == "update":
            await d.put(conn, wl.key(self.existing()), self.value)
            return 1
        if op == "insert":
            index = wl.records + self.part + self.parts * self.inserts_begun
            self.inserts_begun += 1
            await d.insert(conn, wl.key(index), self.value)
            self.inserted.append(index)
            return 1
        if op == "rmw":
            key = wl.key(self.existing())
            await d.get(conn, key)
            await d.put(conn, key, self.value)
            return 1
        if op == "scan":
            n, _ = await d.scan(conn, wl.key(self.existing()), self.rng.randint(1, wl.scan_max))
            return n
        if op == "page":
            n, nxt = await d.scan(conn, b"", wl.page, self.cursors.get(worker))
            self.cursors[worker] = nxt
            return n
        raise AssertionError(op)


@dataclass
class Recorder:
    """One process's figures over the measurement window ``[t_start, t_end)``."""

    t_start: float
    t_end: float
    hists: dict[str, Histogram] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # completed inside the window
    items: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    send_delay: Histogram = field(default_factory=Histogram)

    def ok(self, op: str, began: float, done: float, items: int, open_loop: bool) -> None:
        in_window = self.t_start <= done < self.t_end
        if open_loop:
            if not self.t_start <= began < self.t_end:
                return
        elif not in_window:
            return
        self.hists.setdefault(op, Histogram()).record(done - began)
        if in_window:
            self.counts[op] = self.counts.get(op, 0) + 1
            self.items[op] = self.items.get(op, 0) + items

    def error(self, kind: str, when: float, n: int = 1) -> None:
        if self.t_start <= when < self.t_end + 60:
            self.errors[kind] = self.errors.get(kind, 0) + n


async def _open_conn(driver: Driver, slot: int, rec: Recorder, until: float) -> Any:
    while True:
        try:
            return await driver.open(slot)
        except OpError as exc:
            rec.error(exc.kind, time.monotonic())
            if time.monotonic() >= until:
                raise
            await asyncio.sleep(0.05)


async def _closed(phase: Phase, runner: OpRunner, driver: Driver, conns: list[Any],
                  slots: list[int], rec: Recorder) -> None:
    async def worker(w: int) -> None:
        conn = conns[w]
        while (began := time.monotonic()) < rec.t_end:
            op = runner.choose()
            try:
                items = await runner.run(op, conn, w)
            except OpError as exc:
                rec.error(exc.kind, began)
                if exc.kind in RECONNECT_KINDS:
                    await asyncio.sleep(0.01)
                    try:
                        conn = await _open_conn(driver, slots[w], rec, rec.t_end)
                    except OpError:
                        return
                continue
            rec.ok(op, began, time.monotonic(), items, open_loop=False)

    await asyncio.gather(*(worker(w) for w in range(len(conns))))


async def _open(phase: Phase, runner: OpRunner, driver: Driver, conns: list[Any],
                slots: list[int], rec: Recorder, t_go: float, part: int, parts: int) -> None:
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    inflight = 0
    interval = parts / phase.rate

    async def worker(w: int) -> None:
        nonlocal inflight
        conn = conns[w]
        while (intended := await queue.get()) is not None:
            inflight += 1
            sent = time.monotonic()
            if rec.t_start <= intended < rec.t_end:
                rec.send_delay.record(max(0.0, sent - intended))
            op = runner.choose()
            try:
                items = await runner.run(op, conn, w)
            except OpError as exc:
                inflight -= 1
                rec.error(exc.kind, intended)
                if exc.kind in RECONNECT_KINDS:
                    try:
                        conn = await _open_conn(driver, slots[w], rec, rec.t_end + phase.drain_s)
                    except OpError:
                        return
                continue
            inflight -= 1
            rec.ok(op, intended, time.monotonic(), items, open_loop=True)

    workers = [asyncio.ensure_future(worker(w)) for w in range(len(conns))]
    next_t = t_go + interval * part / parts
    while next_t < rec.t_end:
        now = time.monotonic()
        while next_t <= now and next_t < rec.t_end:
            queue.put_nowait(next_t)
            next_t += interval
        await asyncio.sleep(max(0.0, min(next_t, rec.t_end) - time.monotonic()))
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=phase.drain_s)
    left = sum(1 for _ in range(queue.qsize()) if queue.get_nowait() is not None)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if left + inflight:
        rec.error("unfinished", rec.t_start, left + inflight)


async def _load(phase: Phase, runner: OpRunner, conns: list[Any], rec: Recorder,
                part: int, parts: int) -> None:
    wl, driver = phase.workload, runner.driver
    workers = len(conns)

    async def worker(w: int) -> None:
        conn = conns[w]
        index = part + parts * w  # this worker's first key; then every `total` keys
        total = parts * workers
        while index < wl.records:
            for attempt in range(LOAD_RETRIES):
                began = time.monotonic()
                try:
                    await driver.insert(conn, wl.key(index), runner.value)
                except OpError as exc:
                    rec.error(exc.kind, began)
                    if exc.kind in RECONNECT_KINDS:
                        await asyncio.sleep(0.05)
                        conn = await _open_conn(driver, part + parts * w, rec, began + 30)
                    if attempt == LOAD_RETRIES - 1:
                        rec.error("load_gave_up", began)
                    continue
                rec.ok("insert", began, time.monotonic(), 1, open_loop=False)
                break
            index += total

    await asyncio.gather(*(worker(w) for w in range(workers)))


async def _part(phase: Phase, part: int, parts: int, pipe: Any) -> dict[str, Any]:
    driver = make_driver(phase.target, phase.workload.table)
    runner = OpRunner(driver, phase.workload, part, parts, phase.seed)
    count = phase.connections // parts + (1 if part < phase.connections % parts else 0)
    slots = [part + parts * w for w in range(count)]
    try:
        conns = [await driver.open(s) for s in slots]
        pipe.send(("ready", None))
        t_go = pipe.recv()
        t_start = t_go + phase.warmup_s
        t_end = t_start + phase.seconds if phase.mode != "load" else float("inf")
        if phase.mode == "load":
            t_start = t_go
        rec = Recorder(t_start, t_end)
        loop = asyncio.get_running_loop()
        cpu: dict[str, float] = {}
        stop = asyncio.Event()

        def sample(name: str) -> None:
            cpu[name] = time.process_time()
            cpu[name + "_at"] = time.monotonic()

        async def watchdog() -> None:
            while not stop.is_set():
                driver.watchdog()
                await asyncio.sleep(WATCHDOG_S)

        dog = asyncio.ensure_future(watchdog())
        await asyncio.sleep(max(0.0, t_go - time.monotonic()))
        if phase.mode == "load":
            sample("start")
        else:
            loop.call_at(t_start, sample, "start")
            loop.call_at(t_end, sample, "end")
        if phase.mode == "closed":
            await _closed(phase, runner, driver, conns, slots, rec)
        elif phase.mode == "open":
            await _open(phase, runner, driver, conns, slots, rec, t_go, part, parts)
        else:
            await _load(phase, runner, conns, rec, part, parts)
            sample("end")
        stop.set()
        await dog
        if "end" not in cpu:
            sample("end")
        return {
            "hists": {op: h.to_json() for op, h in rec.hists.items()},
            "counts": rec.counts, "items": rec.items, "errors": rec.errors,
            "send_delay": rec.send_delay.to_json(),
            "cpu_s": cpu["end"] - cpu["start"], "window_s": cpu["end_at"] - cpu["start_at"],
        }
    finally:
        await driver.close()


def _part_main(phase: Phase, part: int, parts: int, pipe: Any) -> None:
    try:
        result = asyncio.run(_part(phase, part, parts, pipe))
        pipe.send(("result", result))
    except BaseException:  # noqa: BLE001 (sent to the parent, which raises it)
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class GeneratorError(RuntimeError):
    """A generator process failed (its traceback is the message)."""


def _receive(pipe: Any) -> tuple[str, Any]:
    try:
        return pipe.recv()  # type: ignore[no-any-return]
    except EOFError:
        raise GeneratorError("a generator process died without a word") from None


def run_phase(phase: Phase, at_start: Any = None, at_end: Any = None) -> dict[str, Any]:
    """Runs ``phase`` over its processes and returns the merged figures. ``at_start`` and
    ``at_end`` (no-argument callables) run in this process at the window's start and end, to
    sample the servers' CPU and fsync counters over exactly the window (not for loads)."""
    parts = min(phase.processes, phase.connections)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for part in range(parts):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_part_main, args=(phase, part, parts, theirs), daemon=True,
                           name=f"rangekv-bench-gen-{part}")
        proc.start()
        theirs.close()
        pipes.append(mine)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(READY_TIMEOUT_S):
                raise GeneratorError("a generator process did not get ready in time")
            kind, value = _receive(pipe)
            if kind == "error":
                raise GeneratorError(value)
        t_go = time.monotonic() + START_DELAY_S
        for pipe in pipes:
            pipe.send(t_go)
        sampled: dict[str, Any] = {}
        if phase.mode != "load":
            t_start = t_go + phase.warmup_s
            time.sleep(max(0.0, t_start - time.monotonic()))
            if at_start is not None:
                sampled["start"] = at_start()
            time.sleep(max(0.0, t_start + phase.seconds - time.monotonic()))
            if at_end is not None:
                sampled["end"] = at_end()
        wait_s = (phase.warmup_s + phase.seconds + phase.drain_s + phase.target.timeout_s + 60
                  if phase.mode != "load" else 3600)
        results = []
        for pipe in pipes:
            if not pipe.poll(wait_s):
                raise GeneratorError("a generator process did not report in time")
            kind, value = _receive(pipe)
            if kind == "error":
                raise GeneratorError(value)
            results.append(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    merged = merge_results(phase, results)
    merged["samples"] = sampled
    return merged


def _summary(h: Histogram) -> dict[str, float]:
    return {k: round(v, 4) for k, v in h.summary_ms().items()}


def merge_results(phase: Phase, results: list[dict[str, Any]]) -> dict[str, Any]:
    hists: dict[str, Histogram] = {}
    counts: dict[str, int] = {}
    items: dict[str, int] = {}
    errors: dict[str, int] = {}
    delay = Histogram()
    for r in results:
        for op, hj in r["hists"].items():
            hists.setdefault(op, Histogram()).merge(Histogram.from_json(hj))
        for src, dst in ((r["counts"], counts), (r["items"], items), (r["errors"], errors)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
        delay.merge(Histogram.from_json(r["send_delay"]))
    window = (phase.seconds if phase.mode != "load"
              else max((r["window_s"] for r in results), default=0.0))
    window = max(window, 1e-9)
    everything = Histogram()
    for h in hists.values():
        everything.merge(h)
    total = sum(counts.values())
    cpu = [r["cpu_s"] for r in results]
    out: dict[str, Any] = {
        "system": phase.target.kind, "workload": phase.workload.name, "mode": phase.mode,
        "connections": phase.connections, "processes": len(results),
        "rate_target": phase.rate if phase.mode == "open" else None,
        "seconds": round(window, 3), "ops": total, "ops_per_s": total / window,
        "items_per_s": sum(items.values()) / window,
        **_summary(everything),
        "by_op": {op: {"count": counts.get(op, 0), "ops_per_s": counts.get(op, 0) / window,
                       "items": items.get(op, 0), **_summary(h)}
                  for op, h in sorted(hists.items())},
        "errors": dict(sorted(errors.items())),
        "generator": {"cpu_s": [round(c, 3) for c in cpu],
                      "cpu_pct": [round(100 * c / window, 1) for c in cpu],
                      "cpu_s_per_1000_ops": 1000 * sum(cpu) / total if total else None},
        "phase": {k: v for k, v in asdict(phase).items() if k != "target"},
    }
    if phase.mode == "open":
        out["send_delay"] = _summary(delay)
    return out
