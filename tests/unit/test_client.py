"""The Python client against httpx.MockTransport: success paths, error mapping, retry rules.

``FakeRM`` is a small in-memory implementation of the HTTP API (the contract in
``docs/internals.md`` and ``docs/api.md``) that decodes keys from the raw path, so the tests
also pin how the client encodes them. Other tests script answers one by one.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import httpx
import pytest

import rangekv
from rangekv import errors
from rangekv.client import AsyncClient, Backoff, Client, Item, Page, _common

NO_WAIT = Backoff(delay_s_min=0.0, delay_s_max=0.0, retry_after_s_max=0.0)


def error_response(
    status: int, code: str, message: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    body = {
        "error": {"code": code, "message": message or code, "retryable": status == 503, **extra}
    }
    return httpx.Response(status, json=body, headers=headers)


class FakeRM:
    """The rangekv HTTP API in memory, enough for the client's success paths."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, tuple[bytes, str]]] = {}
        self.counter = 0
        self.requests: list[httpx.Request] = []

    def next_seq(self) -> str:
        self.counter += 1
        return f"{self.counter:032x}"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raw_path, _, raw_query = request.url.raw_path.partition(b"?")
        parts = raw_path.split(b"/")
        assert parts[:3] == [b"", b"v1", b"tables"] or raw_path in (b"/v1/cluster", b"/healthz")
        if raw_path == b"/v1/cluster":
            return httpx.Response(200, json={"groups": [{"id": 1, "epoch": 1, "leader": 1}]})
        if raw_path == b"/v1/tables":
            names = sorted(self.tables)
            return httpx.Response(
                200, json={"tables": [{"name": n, "id": i + 1} for i, n in enumerate(names)]}
            )
        table = unquote_to_bytes(parts[3]).decode()
        if len(parts) == 4:
            if request.method == "PUT":
                if table in self.tables:
                    return error_response(409, "table_exists")
                self.tables[table] = {}
                return httpx.Response(201, json={"table": {"name": table, "id": 1}})
            if request.method == "DELETE":
                if self.tables.pop(table, None) is None:
                    return error_response(404, "table_not_found")
                return httpx.Response(200, json={})
        rows = self.tables.get(table)
        if rows is None:
            return error_response(404, "table_not_found")
        if len(parts) == 5 and parts[4] == b"keys":
            return self.list(rows, raw_query)
        key = unquote_to_bytes(parts[5])
        current = rows.get(key)
        if_match = request.headers.get("if-match")
        if request.method == "PUT":
            now = current[1] if current is not None else None
            if request.headers.get("if-none-match") == "*" and current is not None:
                return error_response(412, "precondition_failed", current_seq=now)
            if if_match is not None and (current is None or current[1] != if_match):
                return error_response(412, "precondition_failed", current_seq=now)
            seq = self.next_seq()
            rows[key] = (request.content, seq)
            return httpx.Response(200, json={"seq": seq})
        if request.method == "GET":
            if current is None:
                return error_response(404, "key_not_found")
            return httpx.Response(
                200,
                content=current[0],
                headers={"ETag": f'"{current[1]}"', "X-Rangekv-Seq": current[1]},
            )
        if request.method == "DELETE":
            if if_match is not None and (current is None or current[1] != if_match):
                return error_response(412, "precondition_failed")
            if current is None:
                return httpx.Response(200, json={"deleted": False, "seq": None})
            del rows[key]
            return httpx.Response(200, json={"deleted": True, "seq": self.next_seq()})
        raise AssertionError(request)

    def list(self, rows: dict[bytes, tuple[bytes, str]], raw_query: bytes) -> httpx.Response:
        query = {}
        for pair in raw_query.split(b"&"):
            name, _, value = pair.partition(b"=")
            query[name.decode()] = unquote_to_bytes(value)
        assert query.get("encoding") == b"base64"
        start = base64.b64decode(query.get("start", b""), validate=True)
        end = base64.b64decode(query["end"], validate=True) if "end" in query else None
        after = base64.urlsafe_b64decode(query["after"]) if "after" in query else None
        limit = int(query.get("limit", b"100"))
        keys = sorted(
            k
            for k in rows
            if k >= start and (end is None or k < end) and (after is None or k > after)
        )
        page = keys[:limit]
        nxt = base64.urlsafe_b64encode(page[-1]).decode() if len(keys) > limit else None
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        return httpx.Response(
            200,
            json={
                "items": [
                    {"key": b64(k), "value": b64(rows[k][0]), "seq": rows[k][1]} for k in page
                ],
                "next": nxt,
            },
        )


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> Client:
    kw.setdefault("backoff", NO_WAIT)
    client = Client(
        kw.pop("endpoints", "http://rm1:8400"), transport=httpx.MockTransport(handler), **kw
    )
    client._sleep = lambda s: None
    client._clock = ticking()
    return client


def ticking(step_s: float = 0.05) -> Callable[[], float]:
    """A clock that moves ``step_s`` each time it is read: with no waits between attempts
    (``NO_WAIT``), a call that retries until its deadline ends in a few hundred attempts
    instead of busy-looping through seconds of real time."""
    ticks = iter(range(10**9))
    return lambda: next(ticks) * step_s


def scripted(
    answers: list[Any],
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A handler giving the answers in order; an exception in the list is raised instead."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return fresh(answer)

    return handler, seen


def fresh(answer: httpx.Response) -> httpx.Response:
    """A copy: a response object must not be handed to two requests (or two clients)."""
    return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


# --- success paths ----------------------------------------------------------------------------


def test_package_exports() -> None:
    assert rangekv.Client is Client and rangekv.AsyncClient is AsyncClient
    assert rangekv.Item is Item and rangekv.Page is Page
    assert rangekv.errors is errors
    assert isinstance(rangekv.__version__, str)


def test_stocks_example() -> None:
    fake = FakeRM()
    with make_client(fake) as db:
        db.create_table("Stocks")
        assert db.tables() == ["Stocks"]
        seq_b = db.put("Stocks", "B", "100")
        db.put("Stocks", "A", b"120")
        db.put("Stocks", "C", "135")
        assert db.get("Stocks", "B") == Item(b"B", b"100", seq_b)
        page = db.list("Stocks")
        assert [(i.key, i.value) for i in page.items] == [
            (b"A", b"120"),
            (b"B", b"100"),
            (b"C", b"135"),
        ]
        assert page.next is None
        first, second = db.put("Stocks", "D", "140"), db.put("Stocks", "D", "160")
        assert second > first
        assert db.get("Stocks", "D") == Item(b"D", b"160", second)
        with pytest.raises(errors.PreconditionFailed) as failed:
            db.put("Stocks", "D", "170", if_seq=first)
        assert failed.value.current_seq == second  # what the condition met, typed
        with pytest.raises(errors.PreconditionFailed) as failed:
            db.put("Stocks", "E", "1", if_seq=first)
        assert failed.value.current_seq is None  # no such key
        assert db.exists("Stocks", "D") and not db.exists("Stocks", "E")
        assert db.delete("Stocks", "D") is True
        assert db.get("Stocks", "D") is None
        assert db.delete("Stocks", "D") is False
        db.drop_table("Stocks")
        assert db.tables() == []


def test_requests_on_the_wire() -> None:
    fake = FakeRM()
    with make_client(fake) as db:
        db.create_table("T")
        seq = db.put("T", "k", "v")
        db.put("T", "k", "w", if_seq=seq)
        db.put("T", "new", "v", if_absent=True)
        db.list("T", start="a", end="z", limit=7)
    create, put, put_if, put_absent, lst = fake.requests
    assert (create.method, create.url.raw_path) == ("PUT", b"/v1/tables/T")
    assert (put.method, put.url.raw_path, put.content) == ("PUT", b"/v1/tables/T/keys/k", b"v")
    assert "if-match" not in put.headers and "if-none-match" not in put.headers
    assert put_if.headers["if-match"] == seq
    assert put_absent.headers["if-none-match"] == "*"
    assert dict(parse_qsl(lst.url.query.decode())) == {  # bounds in base64, like the values
        "start": "YQ==",
        "end": "eg==",
        "limit": "7",
        "encoding": "base64",
    }
    assert put.headers["user-agent"].startswith("rangekv-python/")


@pytest.mark.parametrize(
    "key",
    [
        "a/b",
        "%",
        "%2F",
        "100%",
        "..",
        ".",
        "a b?#&=+",
        "ünï",
        b"\xff\x00\xfe",
        b"/",
        b"\x00",
        "k" * 1024,
    ],
)
def test_keys_are_binary_safe(key: str | bytes) -> None:
    fake = FakeRM()
    raw = key.encode() if isinstance(key, str) else key
    with make_client(fake) as db:
        db.create_table("T")
        seq = db.put("T", key, b"\x00value\xff")
        assert db.get("T", key) == Item(raw, b"\x00value\xff", seq)
        assert db.list("T", start=key).items == [Item(raw, b"\x00value\xff", seq)]
        assert db.delete("T", key) is True
    assert fake.tables["T"] == {}
    # one path segment, whatever the key holds: nothing for a proxy to normalize or split
    key_segment = fake.requests[1].url.raw_path.split(b"/keys/")[1]
    assert b"/" not in key_segment and key_segment not in (b".", b"..")


def test_item_key_is_bytes_even_for_str_keys() -> None:
    fake = FakeRM()
    with make_client(fake) as db:
        db.create_table("T")
        db.put("T", "ключ", "значение")
        item = db.get("T", "ключ")
    assert item is not None and item.key == "ключ".encode() and item.value == "значение".encode()


def test_scan_walks_every_page_in_order() -> None:
    fake = FakeRM()
    with make_client(fake) as db:
        db.create_table("T")
        keys = [f"k{i:03d}".encode() for i in range(23)]
        for k in reversed(keys):
            db.put("T", k, k + b"!")
        fake.requests.clear()
        items = list(db.scan("T", page_size=5))
        assert [i.key for i in items] == keys
        assert all(i.value == i.key + b"!" for i in items)
        assert len(fake.requests) == 5  # 5+5+5+5+3
        assert [i.key for i in db.scan("T", start="k005", end="k010", page_size=2)] == keys[5:10]
        page = db.list("T", limit=10)
        assert len(page.items) == 10 and page.next is not None
        rest = db.list("T", limit=100, after=page.next)
        assert [i.key for i in page.items + rest.items] == keys and rest.next is None


def test_scan_refuses_a_cursor_that_does_not_move() -> None:
    item = {"key": "YQ==", "value": "", "seq": "0" * 32}
    handler = lambda r: httpx.Response(200, json={"items": [item], "next": "same"})  # noqa: E731
    with make_client(handler) as db, pytest.raises(errors.ProtocolError):
        list(db.scan("T"))


def test_list_decodes_urlsafe_base64_without_padding() -> None:
    body = {
        "items": [
            {
                "key": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("="),
                "value": "",
                "seq": "1" * 32,
            }
        ],
        "next": None,
    }
    with make_client(lambda r: httpx.Response(200, json=body)) as db:
        assert db.list("T").items == [Item(b"\xfb\xff", b"", "1" * 32)]


def test_get_reads_the_seq_from_the_etag_when_there_is_no_seq_header() -> None:
    answer = httpx.Response(200, content=b"v", headers={"ETag": 'W/"' + "a" * 32 + '"'})
    with make_client(lambda r: fresh(answer)) as db:
        assert db.get("T", "k") == Item(b"k", b"v", "a" * 32)


def test_cluster() -> None:
    with make_client(FakeRM()) as db:
        assert db.cluster()["groups"][0]["leader"] == 1


# --- arguments checked before anything is sent ------------------------------------------------


def test_bad_arguments_are_refused_locally() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with make_client(handler) as db:
        with pytest.raises(errors.InvalidArgument):
            db.put("T", "", "v")  # an empty key would address the list endpoint
        with pytest.raises(errors.InvalidArgument):
            db.get("T", b"k" * 1025)
        with pytest.raises(errors.TooLarge):
            db.put("T", "k", b"x" * (1024 * 1024 + 1))
        with pytest.raises(errors.InvalidArgument):
            db.create_table("no spaces")
        with pytest.raises(errors.InvalidArgument):
            db.put("T", "k", "v", if_seq="nothex")
        with pytest.raises(errors.InvalidArgument):
            db.put("T", "k", "v", if_seq="0" * 32, if_absent=True)
        with pytest.raises(errors.InvalidArgument):
            db.list("T", limit=0)
        with pytest.raises(TypeError):
            db.put("T", 42, "v")  # type: ignore[arg-type]


def test_endpoints_are_normalized() -> None:
    with Client("127.0.0.1:1, http://h:2/ ,https://h:3") as db:
        assert db.endpoints == ["http://127.0.0.1:1", "http://h:2", "https://h:3"]
    with pytest.raises(errors.InvalidArgument):
        Client([])
    with pytest.raises(errors.InvalidArgument):
        Client("ftp://h:1")
    with pytest.raises(errors.InvalidArgument):
        Client(timeout_s=0)


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "table_not_found", errors.TableNotFound),
        (409, "table_exists", errors.TableExists),
        (412, "precondition_failed", errors.PreconditionFailed),
        (413, "too_large", errors.TooLarge),
        (400, "invalid_argument", errors.InvalidArgument),
        (500, "internal", errors.Internal),
        (504, "outcome_unknown", errors.OutcomeUnknown),
        (503, "unavailable", errors.Unavailable),
        (503, "not_leader", errors.NotLeader),
        (418, "some_future_code", errors.Internal),
    ],
)
def test_error_bodies_become_typed_errors(status: int, code: str, cls: type) -> None:
    answer = error_response(status, code, "told you", leader_hint=3)
    with make_client(lambda r: fresh(answer), retries=0) as db:
        with pytest.raises(cls) as info:
            db.put("T", "k", "v")
    assert type(info.value) is cls
    assert info.value.message == "told you"
    assert info.value.details["leader_hint"] == 3


def test_key_not_found_is_none_for_get_and_false_for_delete_but_table_not_found_raises() -> None:
    with make_client(lambda r: error_response(404, "key_not_found")) as db:
        assert db.get("T", "k") is None
        assert db.delete("T", "k") is False
    with make_client(lambda r: error_response(404, "table_not_found")) as db:
        with pytest.raises(errors.TableNotFound):
            db.get("T", "k")
        with pytest.raises(errors.TableNotFound):
            db.list("T")


@pytest.mark.parametrize(
    ("status", "write", "cls"),
    [
        (503, True, errors.Unavailable),
        (502, True, errors.OutcomeUnknown),
        (504, True, errors.OutcomeUnknown),
        (502, False, errors.Unavailable),
        (404, False, errors.NotFound),
        (405, True, errors.InvalidArgument),
    ],
)
def test_answers_without_a_json_body_are_mapped_by_status(
    status: int, write: bool, cls: type
) -> None:
    answer = httpx.Response(status, text="<html>proxy says no</html>")
    with make_client(lambda r: fresh(answer), retries=0) as db:
        with pytest.raises(cls) as info:
            db.put("T", "k", "v") if write else db.list("T")
    assert type(info.value) is cls and str(status) in info.value.message


def test_a_2xx_answer_of_the_wrong_shape_is_a_protocol_error() -> None:
    with make_client(lambda r: httpx.Response(200, text="not json"), retries=0) as db:
        with pytest.raises(errors.ProtocolError):
            db.put("T", "k", "v")
        with pytest.raises(errors.ProtocolError):
            db.tables()


def test_transport_errors_are_translated() -> None:
    for exc, write, cls in [
        (httpx.ConnectError("refused"), True, errors.Unavailable),
        (httpx.ConnectTimeout("slow"), True, errors.Unavailable),
        (httpx.ReadTimeout("slow"), True, errors.Timeout),
        (httpx.ReadTimeout("slow"), False, errors.Timeout),
        (httpx.RemoteProtocolError("closed"), True, errors.OutcomeUnknown),
        (httpx.ReadError("reset"), False, errors.Unavailable),
    ]:

        def handler(request: httpx.Request, exc: Exception = exc) -> httpx.Response:
            raise exc

        with make_client(handler, retries=0) as db:
            with pytest.raises(cls) as info:
                db.put("T", "k", "v") if write else db.get("T", "k")
        assert type(info.value) is cls, (exc, write)
        assert isinstance(info.value.__cause__, httpx.HTTPError)


# --- retry rules ------------------------------------------------------------------------------

OK_PUT = httpx.Response(200, json={"seq": "f" * 32})
OK_GET = httpx.Response(200, content=b"v", headers={"X-Rangekv-Seq": "e" * 32})


@pytest.mark.parametrize(
    "first",
    [
        httpx.ConnectError("refused"),
        error_response(503, "unavailable"),
        error_response(503, "not_leader", leader_hint=2),
        httpx.Response(503, text="No server is available to handle this request."),
    ],
)
def test_writes_are_retried_when_surely_not_processed(first: Any) -> None:
    handler, seen = scripted([first, OK_PUT])
    with make_client(handler) as db:
        assert db.put("T", "k", "v") == "f" * 32
    assert len(seen) == 2


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ReadError("reset"),
        error_response(504, "outcome_unknown"),
        httpx.Response(504, text="gateway timeout"),
        httpx.Response(502, text="bad gateway"),
    ],
)
def test_writes_are_never_retried_when_they_may_have_happened(first: Any) -> None:
    """Without a client session (``sessions=False``) a write that may have been applied is
    never sent again."""
    handler, seen = scripted([first, OK_PUT])
    with make_client(handler, retries=5, sessions=False) as db:
        with pytest.raises(errors.OutcomeUnknown):
            db.put("T", "k", "v")
    assert len(seen) == 1
    handler, seen = scripted([first, httpx.Response(200, json={"deleted": True})])
    with make_client(handler, retries=5, sessions=False) as db:
        with pytest.raises(errors.OutcomeUnknown):
            db.delete("T", "k")
    assert len(seen) == 1


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("server disconnected"),
        error_response(504, "outcome_unknown"),
        httpx.Response(502, text="bad gateway"),
    ],
)
def test_a_session_write_of_unknown_outcome_is_resent_as_a_retry_of_the_same_cseq(
        first: Any) -> None:
    """With a session (the default) the write is resent with the same client id and cseq,
    marked as a retry: the group applies it at most once and answers the first result."""
    handler, seen = scripted([first, OK_PUT])
    with make_client(handler, retries=5) as db:
        assert db.put("T", "k", "v") == OK_PUT.json()["seq"]
    assert len(seen) == 2
    a, b = seen
    client, cseq, floor = a.headers["x-rangekv-session"].split(":")
    assert len(bytes.fromhex(client)) == 16 and cseq == floor == "1"
    assert a.headers["x-rangekv-session"] == b.headers["x-rangekv-session"]
    assert "x-rangekv-retry" not in a.headers and b.headers["x-rangekv-retry"] == "1"
    # the next write takes the next number, and the floor follows the answered ones
    handler2, seen2 = scripted([OK_PUT])
    db2 = make_client(handler2)
    db2.session = db.session
    db2.put("T", "k", "v")
    assert seen2[0].headers["x-rangekv-session"] == f"{client}:2:2"


def test_a_session_write_that_runs_out_of_time_after_an_unknown_outcome_is_unknown() -> None:
    """Unavailable after an attempt of unknown outcome is not "nothing happened"; and such a
    write is retried until the deadline, beyond ``retries``."""
    handler, seen = scripted([httpx.ReadTimeout("slow")] + [
        error_response(503, "unavailable")] * 100)
    with make_client(handler, retries=3, timeout_s=10) as db:
        ticks = iter(range(10**6))
        db._clock = lambda: next(ticks) * 0.25  # time passes as the client looks at it
        with pytest.raises(errors.OutcomeUnknown):
            db.put("T", "k", "v")
    assert 4 < len(seen) <= 40  # more rounds than retries=3 allows, within the 10 s


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("server disconnected"),
        error_response(504, "outcome_unknown"),
        error_response(503, "unavailable"),
        httpx.Response(502, text="bad gateway"),
        httpx.ConnectError("refused"),
    ],
)
def test_reads_are_retried_on_any_retryable_error(first: Any) -> None:
    handler, seen = scripted([first, OK_GET])
    with make_client(handler) as db:
        assert db.get("T", "k") == Item(b"k", b"v", "e" * 32)
    assert len(seen) == 2


@pytest.mark.parametrize(
    "answer",
    [
        error_response(404, "table_not_found"),
        error_response(412, "precondition_failed"),
        error_response(400, "invalid_argument"),
        error_response(500, "internal"),
    ],
)
def test_errors_that_are_not_retryable_are_raised_at_once(answer: httpx.Response) -> None:
    handler, seen = scripted([answer, OK_PUT, OK_PUT])
    with make_client(handler, retries=5) as db:
        with pytest.raises(errors.RangeKVError):
            db.put("T", "k", "v")
    assert len(seen) == 1


def test_retries_are_bounded() -> None:
    handler, seen = scripted([error_response(503, "unavailable")] * 10)
    with make_client(handler, retries=3) as db:
        with pytest.raises(errors.Unavailable):
            db.tables()
    assert len(seen) == 4
    handler, seen = scripted([error_response(503, "unavailable")] * 10)
    with make_client(handler, retries=0) as db:
        with pytest.raises(errors.Unavailable):
            db.tables()
    assert len(seen) == 1


def test_backoff_grows_with_jitter_and_honours_retry_after_within_bounds() -> None:
    sleeps: list[float] = []
    answers = [error_response(503, "unavailable")] * 3 + [
        error_response(503, "unavailable", headers={"Retry-After": "1"}),
        error_response(503, "unavailable", headers={"Retry-After": "3600"}),
        OK_GET,
    ]
    handler, _ = scripted(answers)
    backoff = Backoff(delay_s_min=0.1, delay_s_max=0.4, retry_after_s_max=2.0, rng=random.Random(7))
    with make_client(handler, retries=5, backoff=backoff) as db:
        db._sleep = sleeps.append
        assert db.get("T", "k") is not None
    assert len(sleeps) == 5
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.2 <= sleeps[2] <= 0.4
    assert sleeps[3] == 1.0  # Retry-After above the backoff
    assert sleeps[4] == 2.0  # Retry-After bounded by retry_after_s_max


def test_parse_retry_after() -> None:
    assert _common.parse_retry_after(None) is None
    assert _common.parse_retry_after("2.5") == 2.5
    assert _common.parse_retry_after("-3") == 0.0
    assert _common.parse_retry_after("garbage") is None
    assert _common.parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now_s=4.0) == 6.0


# --- endpoints and failover -------------------------------------------------------------------


def test_failover_to_the_second_endpoint_at_once_and_stay_there() -> None:
    seen: list[str] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "rm1":
            raise httpx.ConnectError("refused")
        return fresh(OK_PUT)

    with make_client(handler, endpoints=["http://rm1:1", "http://rm2:2"], retries=0) as db:
        db._sleep = sleeps.append
        assert db.put("T", "k", "v") == "f" * 32  # a write: refused connections are safe
        assert db.endpoint == "http://rm2:2"
        db.put("T", "k", "v")
    assert seen == ["rm1", "rm2", "rm2"]
    assert sleeps == []  # failing over does not wait


def test_when_every_endpoint_refuses_back_off_then_go_round_again() -> None:
    seen: list[str] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        raise httpx.ConnectError("refused")

    with make_client(
        handler, endpoints="rm1:1,rm2:2,rm3:3", retries=2, backoff=Backoff(delay_s_min=0.01)
    ) as db:
        db._sleep = sleeps.append
        with pytest.raises(errors.Unavailable) as info:
            db.tables()
    assert seen == ["rm1", "rm2", "rm3"] * 3
    assert len(sleeps) == 2
    assert "cannot connect" in info.value.message


def test_a_read_timeout_fails_over_but_a_server_error_answer_does_not() -> None:
    seen: list[str] = []
    answers = {
        "rm1": [httpx.ReadTimeout("slow")],
        "rm2": [error_response(503, "not_leader"), OK_GET],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        answer = answers[request.url.host].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return fresh(answer)

    with make_client(handler, endpoints=["http://rm1:1", "http://rm2:2"]) as db:
        assert db.get("T", "k") is not None
    assert seen == ["rm1", "rm2", "rm2"]


def test_a_write_timeout_does_not_fail_over_into_a_second_write() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        raise httpx.ReadTimeout("slow")

    with make_client(handler, endpoints=["http://rm1:1", "http://rm2:2"],
                     sessions=False) as db:
        with pytest.raises(errors.Timeout):
            db.put("T", "k", "v")
    assert seen == ["rm1"]
    # with a session the same write goes on to the other rm, as a retry, until the deadline
    seen.clear()
    with make_client(handler, endpoints=["http://rm1:1", "http://rm2:2"], retries=1,
                     timeout_s=5) as db:
        ticks = iter(range(10**6))
        db._clock = lambda: next(ticks) * 0.5  # time passes as the client looks at it
        with pytest.raises(errors.Timeout):
            db.put("T", "k", "v")
    assert seen[:2] == ["rm1", "rm2"] and 2 < len(seen) <= 10


def test_timeouts_are_on_by_default() -> None:
    with Client("http://127.0.0.1:8400") as db:
        timeout = db._http.timeout
        assert db.timeout_s == 10.0
        assert timeout.read == 10.0 and timeout.write == 10.0 and timeout.connect == 3.0
    with Client("http://127.0.0.1:8400", timeout_s=1.5) as db:
        assert db._http.timeout.connect == 1.5


# --- the async twin ---------------------------------------------------------------------------


def make_async_client(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> AsyncClient:
    kw.setdefault("backoff", NO_WAIT)
    client = AsyncClient(
        kw.pop("endpoints", "http://rm1:8400"), transport=httpx.MockTransport(handler), **kw
    )
    client._clock = ticking()

    async def no_sleep(s: float) -> None:
        return None

    client._sleep = no_sleep
    return client


def test_async_stocks_example_and_scan() -> None:
    async def main() -> None:
        fake = FakeRM()
        async with make_async_client(fake) as db:
            await db.create_table("Stocks")
            for key, value in [("B", "100"), ("A", "120"), ("C", "135")]:
                await db.put("Stocks", key, value)
            item = await db.get("Stocks", "B")
            assert item is not None and item.value == b"100"
            assert await db.get("Stocks", "nope") is None
            assert [i.key async for i in db.scan("Stocks", page_size=2)] == [b"A", b"B", b"C"]
            first = await db.put("Stocks", "D", "140")
            second = await db.put("Stocks", "D", "160", if_seq=first)
            assert second > first
            with pytest.raises(errors.PreconditionFailed):
                await db.put("Stocks", "D", "999", if_seq=first)
            with pytest.raises(errors.PreconditionFailed):
                await db.put("Stocks", "D", "999", if_absent=True)
            assert await db.exists("Stocks", "D")
            assert await db.delete("Stocks", "D", if_seq=second) is True
            assert not await db.exists("Stocks", "D")
            assert (await db.list("Stocks")).next is None
            assert await db.tables() == ["Stocks"]
            assert (await db.cluster())["groups"]
            await db.drop_table("Stocks")
            with pytest.raises(errors.TableNotFound):
                await db.get("Stocks", "A")

    asyncio.run(main())


def test_async_retry_rules_and_failover() -> None:
    async def main() -> None:
        handler, seen = scripted([httpx.ConnectError("refused"), OK_PUT])
        async with make_async_client(handler, endpoints=["http://a:1", "http://b:2"]) as db:
            assert await db.put("T", "k", "v") == "f" * 32
            assert db.endpoint == "http://b:2"
        assert [r.url.host for r in seen] == ["a", "b"]

        handler, seen = scripted([httpx.ReadTimeout("slow"), OK_PUT])
        async with make_async_client(handler, sessions=False) as db:
            with pytest.raises(errors.Timeout):
                await db.put("T", "k", "v")
        assert len(seen) == 1

        handler, seen = scripted([httpx.ReadTimeout("slow"), OK_PUT])
        async with make_async_client(handler) as db:
            assert await db.put("T", "k", "v") == "f" * 32
        assert len(seen) == 2 and seen[1].headers["x-rangekv-retry"] == "1"

        handler, seen = scripted([httpx.ReadTimeout("slow"), OK_GET])
        async with make_async_client(handler) as db:
            assert await db.get("T", "k") is not None
        assert len(seen) == 2

    asyncio.run(main())


def test_async_sleeps_between_rounds() -> None:
    async def main() -> None:
        sleeps: list[float] = []

        async def record(s: float) -> None:
            sleeps.append(s)

        handler, _seen = scripted(
            [error_response(503, "unavailable", headers={"Retry-After": "0.5"}), OK_GET]
        )
        db = AsyncClient(
            "http://a:1",
            transport=httpx.MockTransport(handler),
            backoff=Backoff(delay_s_min=0.01, delay_s_max=0.02),
        )
        db._sleep = record
        try:
            assert await db.get("T", "k") is not None
        finally:
            await db.close()
        assert sleeps == [0.5]

    asyncio.run(main())


def test_retrier_rounds() -> None:
    refused = _common.Failure(errors.Unavailable("x"), not_sent=True, failover=True)
    unknown = _common.Failure(errors.OutcomeUnknown("x"), not_sent=False, failover=True)
    def retrier(retries: int, write: bool) -> _common.Retrier:
        return _common.Retrier(retries=retries, endpoints_n=2, backoff=NO_WAIT, write=write,
                               timeout_s=10.0, connect_timeout_s=3.0)

    r = retrier(1, True)
    assert r.next_delay_s(refused) == 0.0  # the second endpoint, at once
    assert r.next_delay_s(refused) == 0.0  # round 1 over: back off (no wait with NO_WAIT)
    assert r.next_delay_s(refused) == 0.0
    assert r.next_delay_s(refused) is None  # round 2 over: retries used up
    r = retrier(9, True)
    assert r.next_delay_s(unknown) is None
    r = retrier(9, False)
    assert r.next_delay_s(unknown) == 0.0


class SlowRM:
    """An rm on a simulated clock that answers each attempt 503 after 10 ms ("busy") or never
    (it times out after the read timeout the client gave it); the client's waits advance the
    clock too."""

    def __init__(self, busy: int = 0) -> None:
        self.now = 100.0
        self.busy = busy  # attempts answered 503 before the ones never answered
        self.attempts: list[tuple[float, float]] = []  # (started at, its read timeout)

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def __call__(self, request: httpx.Request) -> httpx.Response:
        read_s = request.extensions["timeout"]["read"]
        self.attempts.append((self.now, read_s))
        if len(self.attempts) <= self.busy:
            self.now += 0.01
            return error_response(503, "unavailable", headers={"Retry-After": "0.2"})
        self.now += read_s
        raise httpx.ReadTimeout("no answer", request=request)


def check_one_deadline(rm: SlowRM, start: float, timeout_s: float) -> None:
    assert len(rm.attempts) > 1, rm.attempts  # it did retry, within the deadline
    assert rm.attempts[-1][1] < timeout_s  # the last attempt had only what remained
    for at, read_s in rm.attempts:
        assert at + read_s <= start + timeout_s + 0.002, (at, read_s)  # what remained, at most
    assert rm.now <= start + timeout_s + 0.002, rm.now


def test_a_call_has_one_deadline_whatever_its_retries() -> None:
    """``timeout_s=1`` against an rm that never answers: the call ends within 1 s of the
    client's clock, retries and waits included (it took 4.3 s when each attempt had 1 s)."""
    rm = SlowRM(busy=3)
    db = Client("http://a:1,http://b:2", transport=httpx.MockTransport(rm), timeout_s=1.0,
                retries=50, backoff=Backoff(delay_s_min=0.05, delay_s_max=0.2))
    db._clock, db._sleep = rm.clock, rm.sleep
    start = rm.now
    with db, pytest.raises(errors.RangeKVError):
        db.get("T", "k")
    check_one_deadline(rm, start, 1.0)

    async def main() -> None:
        rm = SlowRM(busy=3)

        async def sleep(s: float) -> None:
            rm.sleep(s)

        db = AsyncClient("http://a:1,http://b:2", transport=httpx.MockTransport(rm),
                         timeout_s=1.0, retries=50,
                         backoff=Backoff(delay_s_min=0.05, delay_s_max=0.2))
        db._clock, db._sleep = rm.clock, sleep
        start = rm.now
        async with db:
            with pytest.raises(errors.RangeKVError):
                await db.get("T", "k")
        check_one_deadline(rm, start, 1.0)

    asyncio.run(main())


# --- the contract with the rm's decoder -------------------------------------------------------


@pytest.mark.parametrize("key", ["a/b", "%", "..", ".", "a b+c?#&=", b"\xff\x00/", "ü" * 300])
def test_the_rm_decodes_what_the_client_encodes(key: str | bytes) -> None:
    codec = pytest.importorskip("rangekv.request_manager.http_codec")
    raw = key.encode() if isinstance(key, str) else key
    call = _common.call_get("T", key)
    segment = call.path.split("/keys/")[1]
    assert codec.decode_path_key(segment, None) == raw
    call = _common.call_list("T", start=key, end=raw + b"\xff", limit=5)
    query = codec.parse_list_query(codec.parse_query(call.path.partition("?")[2]))
    assert (query.start, query.end, query.limit, query.encoding) == (
        raw,
        raw + b"\xff",
        5,
        "base64",
    )
    assert codec.parse_conditions(
        _common.call_put("T", key, "v", if_seq="ab" * 16).headers["If-Match"], None
    ) == bytes.fromhex("ab" * 16)


def test_a_packed_list_page_is_decoded_and_checked() -> None:
    """The native list answer carries the items as the nodes packed them; the client decodes
    them in one call and refuses anything but (key, value, 16-byte seq) bytes."""
    from rangekv import wire
    from rangekv.client import _common

    seq = bytes(range(16))
    page = _common._reply_page({"packed": wire.pack_elements([(b"a", b"1", seq)]), "n": 1,
                                "next": "c"})
    assert page.items == [_common.Item(b"a", b"1", seq.hex())] and page.next == "c"
    key, value, hexseq = page.items[0]
    assert (key, value, hexseq) == (b"a", b"1", seq.hex())
    for bad in ({"packed": wire.pack_elements([(b"a", b"1", seq)]), "n": 2},
                {"packed": wire.pack_elements([(b"a", "text", seq)]), "n": 1},
                {"packed": wire.pack_elements([(b"a", b"1", seq[:8])]), "n": 1},
                {"packed": wire.pack_elements([(b"a", b"1")]), "n": 1},
                {"packed": b"\xc1", "n": 1}, {"packed": "x", "n": 0},
                {"packed": b"", "n": "0"}):
        with pytest.raises(errors.ProtocolError):
            _common._reply_page(bad)
