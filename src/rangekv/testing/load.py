"""Write load and durability checks shared by the real-process tests (crash, failover, disk).

:class:`Writers` runs threads that put unique keys through the client endpoint and records
every outcome. A put counts as acknowledged only when it was answered 200 with a seq; any other
answer (503, 504, a dropped connection) is an error whose outcome the client does not know, so
it is never counted. :func:`check_all_acked` then reads every acknowledged key back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx

from rangekv import errors, wire

T = TypeVar("T")


@dataclass
class Write:
    key: str
    value: str
    sent: float  # time.monotonic() when the request was sent
    done: float
    status: int  # HTTP status; 0 when the request failed without an answer
    seq: str | None
    error: str = ""  # the exception's name when status is 0


class Writers:
    """``count`` threads putting unique keys ``{tag}-w{n}-{i}`` into ``table`` until exit.

    ``pause_after_error_s``: how long a thread waits after an answer other than 200.
    """

    def __init__(self, endpoint: str, table: str, count: int, tag: str = "", *,
                 timeout_s: float = 10.0, pause_after_error_s: float = 0.0) -> None:
        self.endpoint, self.table = endpoint, table
        self.tag = tag or f"{time.monotonic_ns():x}"
        self.timeout_s = timeout_s
        self.pause_after_error_s = pause_after_error_s
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(count)]

    def _run(self, w: int) -> None:
        with httpx.Client(base_url=self.endpoint, timeout=self.timeout_s, trust_env=False) as http:
            i = 0
            while not self._stop.is_set():
                key, value = f"{self.tag}-w{w:02d}-{i:06d}", f"v-{self.tag}-{w}-{i}"
                i += 1
                sent = time.monotonic()
                status, seq, error = 0, None, ""
                try:
                    r = http.put(f"/v1/tables/{self.table}/keys/{key}", content=value)
                    status = r.status_code
                    if status == 200:
                        seq = r.json()["seq"]
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                with self._lock:
                    self.writes.append(Write(key, value, sent, time.monotonic(), status, seq,
                                             error))
                if status != 200 and self.pause_after_error_s:
                    time.sleep(self.pause_after_error_s)

    def count(self) -> int:
        """Puts acknowledged so far."""
        with self._lock:
            return sum(1 for w in self.writes if w.status == 200)

    def acked_since(self, t: float) -> int:
        """Puts acknowledged that were sent at or after monotonic time ``t``."""
        with self._lock:
            return sum(1 for w in self.writes if w.status == 200 and w.sent >= t)

    @property
    def acked(self) -> dict[str, tuple[str, str]]:
        """key -> (value, seq) of every acknowledged put."""
        with self._lock:
            return {w.key: (w.value, w.seq) for w in self.writes
                    if w.status == 200 and w.seq is not None}

    @property
    def errors(self) -> dict[str, str]:
        """key -> the answer (a status code, or the exception's name) of every other put."""
        with self._lock:
            return {w.key: w.error or str(w.status) for w in self.writes if w.status != 200}

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a writer thread hangs"
        # Every key is tried once, so a key answered with an error can never be acknowledged.
        acked, errors = self.acked, self.errors
        assert not acked.keys() & errors.keys()
        answers: dict[str, int] = {}
        for answer in errors.values():
            answers[answer] = answers.get(answer, 0) + 1
        print(f"writers {self.tag}: {len(acked)} acknowledged, errors {answers}")


# For ``wait_for(retry_on=NOT_YET)``: the cluster not answering yet, or an answer without the
# part waited for (a group with no leader has no ``members[0]``...).
NOT_YET: tuple[type[BaseException], ...] = (httpx.HTTPError, errors.RangeKVError, KeyError,
                                            IndexError)


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str,
             retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``predicate`` every 50 ms until it returns something true, and return that; fail
    the test with ``what`` and the last answer after ``timeout_s``. An exception of a type in
    ``retry_on`` (say, the cluster not answering yet) counts as "not yet"; any other fails."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except retry_on as exc:
            last = exc
        assert time.monotonic() < deadline, (
            f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(0.05)


def wait_for_cluster(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """:func:`wait_for`, with the cluster not answering yet counted as "not yet"."""
    return wait_for(predicate, timeout_s, what, retry_on=NOT_YET)


def cluster_info(endpoint: str) -> dict[str, Any]:
    r = httpx.get(f"{endpoint}/v1/cluster", timeout=10, trust_env=False)
    r.raise_for_status()
    info: dict[str, Any] = r.json()
    return info


def request(address: str, op: str, /, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One internal request to a node or meta at ``address`` (a connection of its own); raises
    the error it is answered with."""
    async def ask() -> dict[str, Any]:
        conn = wire.Connection(address, connect_timeout_s=1.0)
        try:
            return await conn.request(op, timeout_s=timeout_s, **fields)
        finally:
            await conn.close()

    return asyncio.run(ask())


def only_group(endpoint: str) -> dict[str, Any]:
    """The cluster's one group (as ``/v1/cluster`` has it); fails if there are several."""
    groups = cluster_info(endpoint)["groups"]
    assert len(groups) == 1, groups
    group: dict[str, Any] = groups[0]
    return group


def member_ids(group: dict[str, Any]) -> list[int]:
    return [m["id"] for m in group["members"]]


def serving_group(endpoint: str, node_addresses: dict[int, str]) -> dict[str, Any] | None:
    """The one group, once its recorded leader says it serves the group's epoch and no
    reconfiguration is under way (no learner, no joint voters); else None."""
    g = only_group(endpoint)
    if g["leader"] is None or g["learners"] or g["joint"]:
        return None
    st = request(node_addresses[g["leader"]], "status")
    return g if st["role"] == "leader" and st["leader_epoch"] == g["epoch"] else None


def group_members(endpoint: str) -> tuple[int | None, list[int]]:
    """(leader, members) of the first group."""
    group = cluster_info(endpoint)["groups"][0]
    return group["leader"], [m["id"] for m in group["members"]]


def check_all_acked(endpoint: str, table: str, acked: dict[str, tuple[str, str]]) -> None:
    """Every acknowledged put reads back with its value and seq."""
    missing, wrong = [], []
    with httpx.Client(base_url=endpoint, timeout=10, trust_env=False) as http:
        for key, (value, seq) in acked.items():
            r = http.get(f"/v1/tables/{table}/keys/{key}")
            if r.status_code != 200:
                missing.append((key, r.status_code))
            elif r.text != value or r.headers["x-rangekv-seq"] != seq:
                wrong.append((key, r.text, r.headers.get("x-rangekv-seq"), value, seq))
    assert not missing, f"{len(missing)} acknowledged puts lost, e.g. {missing[:5]}"
    assert not wrong, f"{len(wrong)} acknowledged puts changed, e.g. {wrong[:5]}"
