"""The load generator's accounting against small fake HTTP servers (in a thread of this test;
the generator's processes are real, spawned as in a benchmark).

* A server that answers each request only after ``delay_s`` and serves one request at a time
  per connection cannot carry the open loop's rate: latency counted from the *intended* send
  time grows far past the service time (no coordinated omission), the achieved rate falls below
  the target, the wait for a connection shows as send delay, and what is still queued at the
  end counts as ``unfinished`` errors. The closed loop against the same server reports about
  the service time: it only ever waits for itself.
* Errors are counted by kind and never counted as successes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rangekv.bench.drivers import Target
from rangekv.bench.load import Phase, Workload, run_phase

GET = Workload("get", (("get", 1.0),), "t", 16, records=10)


@contextmanager
def fake_server(delay_s: float, status: int = 200) -> Iterator[int]:
    """An HTTP/1.1 server on loopback answering every request after ``delay_s``."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    answer = (f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok").encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # the generator's GETs have no body
                await asyncio.sleep(delay_s)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> asyncio.base_events.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(main())
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_open_loop_counts_latency_from_the_intended_time() -> None:
    delay_s = 0.1
    with fake_server(delay_s) as port:
        target = Target("rangekv", (("127.0.0.1", port),))
        # 2 connections serve at most 20/s; 100/s are intended
        opened = run_phase(Phase(target, GET, "open", 2, processes=1, rate=100, warmup_s=0.2,
                                 seconds=1.0, drain_s=0.3))
        closed = run_phase(Phase(target, GET, "closed", 2, processes=1, warmup_s=0.2,
                                 seconds=1.0))
    assert opened["ops_per_s"] < 40  # achieved, not the target
    assert opened["rate_target"] == 100
    # queued behind the stalled connections: far above the service time, and growing
    assert opened["p50_ms"] > 3 * delay_s * 1000
    assert opened["p99_ms"] > 6 * delay_s * 1000
    assert opened["send_delay"]["p99_ms"] > 5 * delay_s * 1000
    assert opened["errors"].get("unfinished", 0) > 20
    # the closed loop sees only the service time
    assert 0.9 * delay_s * 1000 < closed["p50_ms"] < 2 * delay_s * 1000
    assert 10 <= closed["ops_per_s"] <= 22 and not closed["errors"]


def test_open_loop_at_a_rate_the_server_carries() -> None:
    with fake_server(0.0) as port:
        target = Target("rangekv", (("127.0.0.1", port),))
        r = run_phase(Phase(target, GET, "open", 8, processes=2, rate=200, warmup_s=0.2,
                            seconds=1.0))
    assert 180 <= r["ops_per_s"] <= 220 and not r["errors"]
    assert r["processes"] == 2 and len(r["generator"]["cpu_s"]) == 2
    assert r["p50_ms"] < 20
    assert r["by_op"]["get"]["count"] == r["ops"]


def test_errors_are_counted_by_kind_and_not_as_successes() -> None:
    with fake_server(0.0, status=503) as port:
        target = Target("rangekv", (("127.0.0.1", port),))
        r = run_phase(Phase(target, GET, "closed", 2, processes=2, warmup_s=0.1, seconds=0.5))
    assert r["ops"] == 0 and r["ops_per_s"] == 0 and r["by_op"] == {}
    assert r["errors"]["http_503"] > 0 and set(r["errors"]) == {"http_503"}
