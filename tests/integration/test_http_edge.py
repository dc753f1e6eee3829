"""The HTTP edge, bounded, on a real cluster (``LocalCluster``: etcd, metas, nodes, one rm and
HAProxy), shown both through HAProxy and directly at the rm:

* a head that never completes and a body sent a byte at a time (slowloris, slow POST) end with
  408 and a closed connection at their deadline, however steadily the bytes keep coming;
* requests beyond the rm's in-flight bound get 503 with ``Retry-After`` at once, and
  connections beyond its connection bound get the same and are closed;
* HAProxy's own answers (400 for a malformed request line, 408, 503 with no rm up, 504 for an
  rm that answers nothing) are JSON in the rm's error shape, with ``Retry-After`` on 503/504
  (but the 400 and 408 its HTTP/1 parser gives before any errorfile applies, on a HAProxy
  older than 3.2: ``haproxy_errors.parser_errors_ignore_errorfiles``);
* a key, table or query with a malformed percent-escape is 400, and nothing is stored.

The bounds are lowered (``--head-timeout-s 1`` etc. for the rm, ``HaproxyTimeouts`` for
HAProxy) so that the test waits for them in seconds. Waits are for an event (an answer, a
close, HAProxy's view of the rm) with a generous upper bound, never a sleep that hopes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rangekv.cluster import haproxy_errors
from rangekv.cluster.local import HaproxyTimeouts, LocalCluster, haproxy_binary, running_cluster
from rangekv.testing.load import wait_for_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READY_TIMEOUT_S = 90.0
WAIT_S = 30.0  # upper bound on any wait: only turns a hang into a failure
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
IN_FLIGHT_MAX = 2
CONNECTIONS_MAX = 24
SERVER_TIMEOUT_S = 4.0  # HAProxy's: above the rm's body deadline, as haproxy_config requires
TRICKLE_EVERY_S = 0.1
TABLE = "edge"


@functools.cache
def haproxy_parser_html() -> bool:
    return haproxy_errors.parser_errors_ignore_errorfiles(
        haproxy_errors.haproxy_version(haproxy_binary()))

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    rm_args = ("--head-timeout-s", str(HEAD_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S),
               "--requests-in-flight-max", str(IN_FLIGHT_MAX),
               "--connections-max", str(CONNECTIONS_MAX))
    haproxy = HaproxyTimeouts(http_request_s=HEAD_TIMEOUT_S, server_s=SERVER_TIMEOUT_S,
                              client_s=SERVER_TIMEOUT_S, check_s=1.0)
    with running_cluster(tmp_path_factory.mktemp("edge"), READY_TIMEOUT_S, nodes=3, groups=1,
                         rms=1, extra_args={"rm": rm_args}, haproxy_timeouts=haproxy) as c:
        with httpx.Client(base_url=c.rm_endpoints[0], timeout=15, trust_env=False) as rm:
            assert rm.put(f"/v1/tables/{TABLE}").status_code == 201
            assert rm.put(f"/v1/tables/{TABLE}/keys/k", content=b"v").status_code == 200
        yield c


def addresses(c: LocalCluster) -> dict[str, tuple[str, int]]:
    """'haproxy' and 'rm' -> (host, port)."""
    out = {}
    for name, url in (("haproxy", c.endpoint), ("rm", c.rm_endpoints[0])):
        host, _, port = url.removeprefix("http://").rpartition(":")
        out[name] = (host, int(port))
    return out


# --- raw HTTP ------------------------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)).decode("latin-1")
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    n = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(n), WAIT_S) if n else b""
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the peer has closed (EOF or reset), whatever came before."""
    try:
        await asyncio.wait_for(reader.read(), WAIT_S)
    except ConnectionResetError:
        pass
    return True


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """A byte every TRICKLE_EVERY_S until done or the peer is gone."""
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(TRICKLE_EVERY_S)
    except (ConnectionError, RuntimeError):
        pass


async def exchange(address: tuple[str, int], data: bytes) -> tuple[Answer, bool]:
    """Send ``data`` whole; the answer, and whether the connection closed after it."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        answer = await read_answer(reader)
        if answer[1].get("connection", "").lower() == "close":
            return answer, await closed(reader)
        return answer, False
    finally:
        writer.close()


def error_of(answer: Answer, via: str = "rm") -> dict[str, Any]:
    """The JSON error of an answer. Through HAProxy, a 400 or 408 from its HTTP/1 parser is
    HAProxy's built-in HTML where HAProxy does not apply errorfiles to those (see
    ``haproxy_errors``): then a stand-in with ``answered_by`` is returned."""
    status, headers, body = answer
    if (via == "haproxy" and status in (400, 408) and haproxy_parser_html()
            and headers.get("content-type") == "text/html"):
        code = {400: "invalid_argument", 408: "request_timeout"}[status]
        return {"code": code, "message": body.decode(), "retryable": status == 408,
                "answered_by": "haproxy"}
    assert headers.get("content-type") == "application/json", (status, headers, body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert {"code", "message", "retryable"} <= set(error), error
    return error


async def slow(address: tuple[str, int], head: bytes, trickled: bytes) -> tuple[Answer, float,
                                                                                 bool]:
    """Send ``head`` at once, then ``trickled`` a byte at a time: the answer, the seconds it
    took, and whether the client was still sending when it came (its bytes reset nothing)."""
    reader, writer = await asyncio.open_connection(*address)
    t0 = time.monotonic()
    writer.write(head)
    sending = asyncio.create_task(trickle(writer, trickled))
    try:
        answer = await read_answer(reader)
        took = time.monotonic() - t0
        still_sending = not sending.done()
        assert await closed(reader)
        return answer, took, still_sending
    finally:
        sending.cancel()
        writer.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["rm", "haproxy"])
def test_a_trickled_head_gets_408_and_a_close(cluster: LocalCluster, via: str) -> None:
    address = addresses(cluster)[via]
    trickled = b"X-Slow: " + b"s" * 1000  # 100 s at a byte per 0.1 s: it never ends by itself
    with cluster.logs_on_failure():
        answer, took, still_sending = run(slow(address, b"GET /v1/tables HTTP/1.1\r\n",
                                               trickled))
        error = error_of(answer, via)
        assert answer[0] == 408 and error["code"] == "request_timeout", answer
        assert answer[1]["connection"].lower() == "close"
        assert still_sending and took >= HEAD_TIMEOUT_S / 2, took  # the deadline, a total
        # who answered: HAProxy forwards only whole heads, so through it the 408 is its own
        assert (error.get("answered_by") == "haproxy") == (via == "haproxy"), error
        if via == "rm":
            metrics = httpx.get(f"{cluster.rm_endpoints[0]}/metrics", timeout=10,
                                trust_env=False).text
            assert 'rangekv_rm_requests_total{op="refused",status="408"}' in metrics


@pytest.mark.parametrize("via", ["rm", "haproxy"])
def test_a_trickled_body_gets_408_and_a_close_and_nothing_is_stored(cluster: LocalCluster,
                                                                    via: str) -> None:
    address = addresses(cluster)[via]
    key = f"slow-{via}"
    head = (f"PUT /v1/tables/{TABLE}/keys/{key} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    with cluster.logs_on_failure():
        answer, took, still_sending = run(slow(address, head, b"b" * 1000))
        error = error_of(answer)
        assert answer[0] == 408 and error["code"] == "request_timeout", answer
        assert error["field"] == "value" and "answered_by" not in error  # the rm's own
        assert still_sending and took >= BODY_TIMEOUT_S / 2, took
        got = httpx.get(f"{cluster.rm_endpoints[0]}/v1/tables/{TABLE}/keys/{key}", timeout=10,
                        trust_env=False)
        assert got.status_code == 404, got.text


@pytest.mark.parametrize("via", ["rm", "haproxy"])
def test_requests_beyond_the_in_flight_bound_get_503_at_once(cluster: LocalCluster,
                                                            via: str) -> None:
    """IN_FLIGHT_MAX puts wait for bodies that do not come (they are in flight until their body
    deadline); a request meanwhile gets 503 with Retry-After, without waiting."""
    address = addresses(cluster)[via]
    holder_head = (f"PUT /v1/tables/{TABLE}/keys/held HTTP/1.1\r\nHost: x\r\n"
                   f"Content-Length: 10\r\n\r\n").encode()
    probe = b"GET /v1/tables HTTP/1.1\r\nHost: x\r\n\r\n"

    async def saturated_answer() -> Answer | None:
        holders = [await asyncio.open_connection(*address) for _ in range(IN_FLIGHT_MAX)]
        try:
            for _, writer in holders:
                writer.write(holder_head)
                await writer.drain()
            # until the rm has the holders' heads (it then refuses the probe), at most
            # while they are sure to be in flight
            until = time.monotonic() + BODY_TIMEOUT_S / 2
            while time.monotonic() < until:
                answer, _ = await exchange(address, probe)
                if answer[0] == 503:
                    return answer
                assert answer[0] == 200, answer
            return None
        finally:
            for _, writer in holders:
                writer.close()

    with cluster.logs_on_failure():
        answer = None
        for _ in range(5):  # a machine too busy to send the probe in time: hold again
            answer = run(saturated_answer())
            if answer is not None:
                break
        assert answer is not None, "never saturated"
        error = error_of(answer)
        assert error["code"] == "unavailable" and error["retryable"] is True
        assert "in flight" in error["message"] and "answered_by" not in error, error
        assert answer[1]["retry-after"] == "1"
        # once the holders are gone, the rm serves again
        wait_for_cluster(lambda: run(exchange(address, probe))[0][0] == 200, WAIT_S,
                         "the rm to serve again")


@pytest.mark.parametrize("via", ["rm", "haproxy"])
def test_a_malformed_escape_in_a_path_or_query_is_400(cluster: LocalCluster, via: str) -> None:
    address = addresses(cluster)[via]
    targets = [
        ("GET", f"/v1/tables/{TABLE}/keys/a%zz"),
        ("PUT", f"/v1/tables/{TABLE}/keys/a%4"),
        ("DELETE", f"/v1/tables/{TABLE}/keys/%"),
        ("POST", f"/v1/tables/{TABLE}/split/b%g1"),
        ("POST", f"/v1/tables/{TABLE}/move/b%g1?to=1"),
        ("PUT", "/v1/tables/T%zz"),
        ("DELETE", "/v1/tables/T%4"),
        ("GET", "/v1/tables/T%zz/ranges"),
        ("GET", f"/v1/tables/{TABLE}/keys?start=a%zz"),
    ]
    with cluster.logs_on_failure():
        for method, target in targets:
            body = b"" if method != "PUT" else b"v"
            data = (f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            answer, _ = run(exchange(address, data))
            error = error_of(answer, via)
            assert answer[0] == 400 and error["code"] == "invalid_argument", (target, answer)
            if "answered_by" not in error:  # the rm's (HAProxy may refuse some itself)
                assert "percent-escape" in error["message"], error
        keys = httpx.get(f"{cluster.rm_endpoints[0]}/v1/tables/{TABLE}/keys", timeout=10,
                         trust_env=False).json()["items"]
        assert [item["key"] for item in keys] == ["k"]  # nothing stored literally


def test_a_malformed_request_line_is_a_json_400_from_haproxy_and_from_the_rm(
        cluster: LocalCluster) -> None:
    with cluster.logs_on_failure():
        for via in ("haproxy", "rm"):
            answer, was_closed = run(exchange(addresses(cluster)[via], b"NOT HTTP AT ALL\r\n\r\n"))
            error = error_of(answer, via)
            assert answer[0] == 400 and error["code"] == "invalid_argument", answer
            assert was_closed
            assert (error.get("answered_by") == "haproxy") == (via == "haproxy"), error


def test_haproxys_own_504_and_503_are_json_with_retry_after(cluster: LocalCluster) -> None:
    """The rm hangs (SIGSTOP): a request it took gets HAProxy's 504 at ``timeout server``;
    once HAProxy's checks take the rm out, HAProxy answers 503 itself. Both in the rm's
    shape; then the rm resumes and HAProxy serves again."""
    with cluster.logs_on_failure(), httpx.Client(
            base_url=cluster.endpoint, timeout=WAIT_S, trust_env=False) as lb:
        assert lb.get("/v1/tables").status_code == 200
        cluster.pause("rm-1")
        try:
            answer = lb.get("/v1/tables")  # sent at once: HAProxy still has the rm as up
            assert answer.status_code == 504, answer.text
            error = answer.json()["error"]
            assert error["code"] == "outcome_unknown" and error["answered_by"] == "haproxy"
            assert answer.headers["retry-after"] == "1"
            assert answer.headers["content-type"] == "application/json"

            def haproxy_503() -> httpx.Response | None:
                got = lb.get("/v1/tables")
                return got if got.status_code == 503 else None

            answer = wait_for_cluster(haproxy_503, WAIT_S, "HAProxy to take the rm out")
            error = answer.json()["error"]
            assert error["code"] == "unavailable" and error["retryable"] is True
            assert error["answered_by"] == "haproxy"
            assert answer.headers["retry-after"] == "1"
        finally:
            cluster.resume("rm-1")
        wait_for_cluster(lambda: lb.get("/v1/tables").status_code == 200, WAIT_S,
                         "HAProxy to serve again")


def test_connections_beyond_the_bound_get_503_and_are_closed(cluster: LocalCluster) -> None:
    address = addresses(cluster)["rm"]

    async def main() -> Answer:
        held: list[asyncio.StreamWriter] = []
        try:
            # HAProxy holds a few connections to the rm too: at most CONNECTIONS_MAX + 1 opens
            for _ in range(CONNECTIONS_MAX + 1):
                reader, writer = await asyncio.open_connection(*address)
                held.append(writer)
                writer.write(b"GET /v1/tables HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await read_answer(reader)
                if answer[0] == 503:
                    assert await closed(reader)
                    return answer
                assert answer[0] == 200, answer
            raise AssertionError(f"{CONNECTIONS_MAX + 1} connections and no 503")
        finally:
            for writer in held:
                writer.close()

    with cluster.logs_on_failure():
        answer = run(main())
        error = error_of(answer)
        assert error["code"] == "unavailable" and "connections" in error["message"], error
        assert answer[1]["retry-after"] == "1" and answer[1]["connection"] == "close"
        # HAProxy may have had a health check refused meanwhile: it serves again once the
        # connections are gone
        wait_for_cluster(lambda: httpx.get(f"{cluster.endpoint}/v1/tables", timeout=10,
                                           trust_env=False).status_code == 200,
                         WAIT_S, "the rm to serve again through HAProxy")


def test_the_generated_haproxy_cfg_names_the_errorfiles(cluster: LocalCluster) -> None:
    text = Path(cluster.haproxy_cfg).read_text()
    for status in (400, 408, 500, 502, 503, 504):
        assert f"errorfile {status} " in text
    assert f"timeout http-request {int(HEAD_TIMEOUT_S)}s" in text
