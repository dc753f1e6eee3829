"""Fuzz the rm's HTTP API from its own OpenAPI document (schemathesis), against a real cluster.

One cluster (etcd, two metas, 3 nodes, 1 rm, HAProxy) serves the module. Schemathesis reads
``openapi.document()`` (the first test checks that the live rm serves exactly that document at
``/v1/openapi.json``) and, for every operation, sends the coverage phase's boundary cases
(including methods the path does not allow) and ``EXAMPLES`` generated cases, valid and invalid,
straight to the rm over HTTP (not through HAProxy). Some key and list cases are steered to a
table and keys that exist (``flatmap_path_parameters``, ``flatmap_query``), so that they reach
the router and the nodes instead of stopping at table_not_found; the steering never turns an
invalid case into a valid one. Every answer must pass:

* schemathesis's response checks: the status code is documented for the operation; the
  Content-Type, the headers and the body match the document; invalid input is refused with a
  4xx (``negative_data_rejection``; query parameters and headers the document does not name are
  not invalid input: the API ignores them, and the document says so); a 405 carries ``Allow``;
* **no server error** (``no_server_error``, in place of schemathesis's ``not_a_server_error``):
  no 5xx at all, with one exception, decided here: a 503 or 504 is accepted only if it is our
  error for it (``unavailable``, ``outcome_unknown``, ...) AND the cluster really was
  unavailable: a group's epoch or leader, or the active meta, changed since the fuzzing began
  (a failover, say after a leader starved of CPU on a loaded machine missed its heartbeats). In
  this quiet, healthy cluster any other 5xx, 503 included, is a bug;
* **our error shape** (``error_shape``): every 4xx and 5xx is ``application/json``
  ``{"error": {"code", "message", "retryable", ...}}`` with a code that belongs to its status
  in ``rangekv.errors`` (405: ``method_not_allowed`` with ``Allow``; 503: ``Retry-After``),
  including the answers aiohttp itself makes to requests it cannot parse;
* **valid input is accepted** (``positive_data_acceptance_where_expressible``): schemathesis's
  ``positive_data_acceptance`` (a valid request may be refused only by the state of the data:
  404, 409, or 412 for a conditional write whose seq does not match), except a 400 that names an
  input whose validity OpenAPI cannot state (``_inexpressible``: an opaque cursor; a base64 key
  or bound, valid or not depending on another parameter; a limit in bytes where a schema counts
  characters; If-Match together with If-None-Match). Each exception is that narrow: the same
  400 for any other reason fails;
* no request takes longer than ``REQUEST_TIMEOUT_S`` (the rm's own deadlines are 5 s for data
  and 12 s for tables): a hang fails the test instead of hanging it.

After the run every process of the cluster must still be running, the rm (the same pid) must
answer ``/healthz`` with 200 and still serve a write and a read, and its resident memory (VmRSS)
must not have grown by more than ``RSS_GROWTH_BYTES_MAX`` (generous: it catches a leak per
request, not allocator noise).

Deterministic and replayable: the ``rangekv`` Hypothesis profile (``tests/conftest.py``) and
schemathesis's generation are derandomized, so every run sends the same requests; a failure
prints a curl command and Hypothesis's ``@reproduce_failure`` blob. To fuzz longer, raise
``RANGEKV_FUZZ_EXAMPLES`` (cases per operation; 600 take about 80 s here).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from rangekv import errors, limits
from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.request_manager import openapi

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READY_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 20.0
EXAMPLES_DEFAULT = 100  # cases per operation
EXAMPLES = int(os.environ.get("RANGEKV_FUZZ_EXAMPLES", EXAMPLES_DEFAULT))
RSS_GROWTH_BYTES_MAX = 64 * 1024 * 1024  # measured: about 0.1 MiB over a run
SEED_TABLE = "fuzz"
SEED_KEYS = {"a": b"1", "b": b"\xff\x00binary", "k/with%slash": b""}

CheckFunction = Callable[[Any, Any, Any], bool | None]

CONFIG = schemathesis.Config.from_dict(
    {
        # Keys and If-Match values are what we fuzz: print them, not "[Filtered]".
        "output": {"sanitization": {"enabled": False}},
        # The API ignores query parameters and headers it does not know (the document says
        # so): sending extra ones is not invalid input that must be refused.
        "generation": {"deterministic": True, "allow-extra-parameters": False},
        # A 412 answers a valid conditional write whose seq does not match the stored one: it
        # depends on the data, like the 404 and 409 schemathesis already expects.
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
            }
        },
    }
)
schema = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG)


def _status_codes() -> dict[int, set[str]]:
    """Which error codes each status may carry, from the error tree."""
    out: dict[int, set[str]] = {405: {"method_not_allowed"}}
    todo: list[type[errors.RangeKVError]] = [errors.RangeKVError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.status, set()).add(cls.code)
        todo += cls.__subclasses__()
    return out


CODES_BY_STATUS = _status_codes()


# --- the cluster ---------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # kB
    raise AssertionError(f"no VmRSS for pid {pid}")


def _topology(http: requests.Session, rm: str) -> tuple[Any, ...]:
    """What a failover changes: each group's epoch and leader, and the active meta."""
    view = http.get(f"{rm}/v1/cluster", timeout=REQUEST_TIMEOUT_S).json()
    groups = tuple((g["id"], g["epoch"], g["leader"]) for g in view["groups"])
    return groups, json.dumps(view.get("active_meta"), sort_keys=True)


@dataclass
class Target:
    cluster: LocalCluster
    rm: str  # the rm's own URL: the fuzzer talks to it directly, not through HAProxy
    rm_pid: int
    rss_before: int
    topology_before: tuple[Any, ...]
    http: requests.Session


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with (
        running_cluster(data, READY_TIMEOUT_S, nodes=3, rms=1) as cluster,
        cluster.logs_on_failure(),
        requests.Session() as http,
    ):
        http.trust_env = False
        rm = cluster.rm_endpoints[0]
        # Something to find: a table with a few keys the generated cases are steered to.
        assert (
            http.put(f"{rm}/v1/tables/{SEED_TABLE}", timeout=REQUEST_TIMEOUT_S).status_code == 201
        )
        for key, value in SEED_KEYS.items():
            quoted = quote(key, safe="")
            url = f"{rm}/v1/tables/{SEED_TABLE}/keys/{quoted}"
            assert http.put(url, data=value, timeout=REQUEST_TIMEOUT_S).status_code == 200
        pid = cluster.pid("rm-1")
        assert pid is not None
        yield Target(cluster, rm, pid, _rss_bytes(pid), _topology(http, rm), http)


# --- steering: some cases go to the seed table and its keys --------------------------------------


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Send some of the key and list cases to a table that exists (and some to a key that does),
    so they reach the router and the nodes instead of stopping at table_not_found.

    Only a valid table name or key (by the document) is replaced, by another valid one: a case
    meant to be invalid stays exactly as invalid.
    """
    operation = context.operation
    if operation is None or "/keys" not in operation.path:
        return st.just(path_parameters)
    table = path_parameters.get("table")
    if not isinstance(table, str) or not limits.TABLE_NAME_RE.fullmatch(table):
        return st.just(path_parameters)
    options = [{**path_parameters, "table": SEED_TABLE}]
    key = path_parameters.get("key")
    if isinstance(key, str) and key:  # the key's schema: any non-empty string
        options += [{**path_parameters, "table": SEED_TABLE, "key": k} for k in SEED_KEYS]
    return st.sampled_from([*options, path_parameters])


_CURSOR_RE = re.compile(openapi.CURSOR_PATTERN)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> Any:
    """Send some list cases without their generated cursor: almost no generated string is a
    cursor this API issued, so otherwise few list cases would get past the cursor check.

    Only a valid cursor (by the document) is dropped: a case meant to be invalid stays so.
    """
    operation = context.operation
    after = (query or {}).get("after")
    if (
        operation is None
        or not operation.path.endswith("/keys")
        or not isinstance(after, str)
        or not _CURSOR_RE.fullmatch(after)
        or len(after) > limits.CURSOR_BYTES_MAX
    ):
        return st.just(query)
    assert query is not None
    return st.sampled_from([query, {k: v for k, v in query.items() if k != "after"}])


# --- checks ----------------------------------------------------------------------------------------


def _header(response: Any, name: str) -> str:
    for key, values in response.headers.items():
        if key.lower() == name.lower():
            return str(values[0] if isinstance(values, list) else values)
    return ""


def _error_of(response: Any) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else None


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is our JSON error, with a code that belongs to its status."""
    status = response.status_code
    if status < 400:
        return None
    media_type = _header(response, "Content-Type").split(";")[0].strip()
    assert media_type == "application/json", f"a {status} answered with {media_type!r}"
    err = _error_of(response)
    assert err is not None, f"a {status} whose body is not {{'error': {{...}}}}"
    code, message, retryable = err.get("code"), err.get("message"), err.get("retryable")
    assert isinstance(code, str) and code, f"error code {code!r}"
    assert isinstance(message, str) and message, f"error message {message!r}"
    assert isinstance(retryable, bool), f"error retryable {retryable!r}"
    assert code in CODES_BY_STATUS.get(status, set()), f"code {code!r} with status {status}"
    if status == 503:
        assert _header(response, "Retry-After").isdigit(), "a 503 without Retry-After"
    if status == 405:
        assert _header(response, "Allow"), "a 405 without Allow"
    return True


def _inexpressible(case: Any, response: Any) -> str | None:
    """Why a schema-valid request was rightly refused with a 400 that the document cannot
    express as a schema, or None if it can (then the refusal is a bug in the handler or the
    document)."""
    if response.status_code != 400:
        return None
    err = _error_of(response) or {}
    field = err.get("field")
    query = case.query or {}
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    path = case.path_parameters or {}
    if field == "after":
        return "a cursor is valid only if this API issued it"
    if field == "key":
        if query.get("key_encoding") == "base64":
            return "with key_encoding=base64 the key must be base64url of 1..1024 bytes"
        key = path.get("key")
        if isinstance(key, str) and len(key.encode()) > limits.KEY_BYTES_MAX:
            return "the key limit is in bytes; maxLength counts characters"
    if field in ("start", "end"):
        if query.get("encoding") == "base64":
            return "with encoding=base64 start and end must be standard base64"
        bound = query.get(field)
        if isinstance(bound, str) and len(bound.encode()) > limits.KEY_BYTES_MAX:
            return "the bound limit is in bytes; a schema would count characters"
    if field == "If-None-Match" and "if-match" in headers and "if-none-match" in headers:
        return "If-Match and If-None-Match exclude each other"
    body = case.body if isinstance(case.body, dict) else {}
    ops = [op for op in body.get("ops") or () if isinstance(op, dict)]
    if field in ("key", "value") and body.get("encoding") == "base64":
        return "with encoding=base64 a batch's keys and values must be standard base64"
    if field in ("key", "value") and any(
            len(str(op.get(field, "")).encode()) > limits.KEY_BYTES_MAX for op in ops):
        return "the limits are in bytes; a schema would count characters"
    if field == "if_absent" and any(op.get("if_absent") and (
            op.get("if_seq") is not None or op.get("op") != "put") for op in ops):
        return "if_absent is for puts without if_seq: a dependency between fields"
    if field == "X-Rangekv-Session" and not re.fullmatch(
            openapi.SESSION_PATTERN, str(headers.get("x-rangekv-session", "")).lower()):
        return "not schema-valid: the coverage phase sent a session that misses its pattern"
    return None


def positive_data_acceptance_where_expressible(ctx: Any, response: Any, case: Any) -> bool | None:
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _inexpressible(case, response) is None:
            raise
        return True


def make_no_server_error(target: Target) -> CheckFunction:
    def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
        status = response.status_code
        if status < 500:
            return True
        err = _error_of(response) or {}
        headers = {k.lower(): v for k, v in (case.headers or {}).items()}
        if (status == 504 and err.get("code") == errors.SessionExpired.code
                and headers.get("x-rangekv-retry") == "1"):
            # the right answer to a retry of a session this cluster never held: nothing done,
            # the first attempt's outcome cannot be known here
            return True
        if status in (503, 504) and err.get("code") in CODES_BY_STATUS[status]:
            now = _topology(target.http, target.rm)
            if now != target.topology_before:
                return True  # a failover really happened: the cluster was unavailable
            raise AssertionError(
                f"{status} {err.get('code')} from a healthy cluster (no failover happened): "
                f"{err.get('message')!r}"
            )
        raise AssertionError(f"server error {status}: {response.content[:500]!r}")

    return no_server_error


# --- the tests -------------------------------------------------------------------------------------


def test_the_live_document_is_the_one_fuzzed(target: Target) -> None:
    resp = target.http.get(f"{target.rm}/v1/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert resp.status_code == 200
    assert resp.json() == json.loads(json.dumps(openapi.document()))


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, database=None)
def test_operation(case: Any, target: Target) -> None:
    case.call_and_validate(
        base_url=target.rm,
        session=target.http,
        timeout=REQUEST_TIMEOUT_S,
        excluded_checks=[not_a_server_error, positive_data_acceptance],
        additional_checks=[
            make_no_server_error(target),
            error_shape,
            positive_data_acceptance_where_expressible,
        ],
    )


def test_everything_still_runs_and_memory_is_bounded(target: Target) -> None:
    cluster = target.cluster
    dead = [name for name in cluster.names if not cluster.alive(name)]
    assert not dead, f"not running after the fuzzing: {dead}"
    assert cluster.pid("rm-1") == target.rm_pid, "the rm restarted"
    health = target.http.get(f"{target.rm}/healthz", timeout=REQUEST_TIMEOUT_S)
    assert health.status_code == 200, health.text
    # And it still serves data: a write reads back with its value and seq.
    url = f"{target.rm}/v1/tables/{SEED_TABLE}/keys/after-the-fuzzing"
    put = target.http.put(url, data=b"still here", timeout=REQUEST_TIMEOUT_S)
    assert put.status_code == 200, put.text
    got = target.http.get(url, timeout=REQUEST_TIMEOUT_S)
    assert got.status_code == 200 and got.content == b"still here", got.text
    assert got.headers["X-Rangekv-Seq"] == put.json()["seq"]
    rss_after = _rss_bytes(target.rm_pid)
    assert rss_after - target.rss_before <= RSS_GROWTH_BYTES_MAX, (
        f"rm RSS grew from {target.rss_before} to {rss_after} bytes"
    )
