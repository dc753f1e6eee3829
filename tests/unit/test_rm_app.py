"""The rm's HTTP app end to end, against fake nodes and a fake meta speaking the real wire
protocol on 127.0.0.1, with a routing view built by hand (no etcd)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp

from rangekv import errors, limits, sequencer, wire
from rangekv.model import ClusterView, Group, Node, Range, Table
from rangekv.request_manager import http_codec as codec
from rangekv.request_manager import openapi
from rangekv.request_manager.app import RequestManager
from rangekv.request_manager.metrics import Metrics
from rangekv.request_manager.routing import Router, StaticViewSource
from rangekv.testing.procs import free_port
from rangekv.wire import packed_page

RM_ID = 7
Fault = Callable[[dict[str, Any]], Awaitable[None] | None]


class FakeServer:
    """A wire server on 127.0.0.1 with a port picked by the OS."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fault: Fault | None = None  # may raise a RangeKVError or sleep
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await wire.serve_connection(reader, writer, self._on_request, lambda m, c: None)

        self._server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def ops(self, *names: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["op"] in names]

    async def _on_request(self, body: dict[str, Any], conn: Any = None) -> dict[str, Any]:
        self.requests.append(body)
        if self.fault is not None:
            maybe = self.fault(body)
            if maybe is not None:
                await maybe
        return await self.handle(body)

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class FakeNode(FakeServer):
    """A group leader over a dict: put/get/delete/list as in docs/internals.md."""

    def __init__(self, table_ids: set[int]) -> None:
        super().__init__()
        self.tables = table_ids
        self.data: dict[int, dict[bytes, tuple[bytes, bytes]]] = {}
        self.last_seq = sequencer.ZERO

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        op, tid = body["op"], body["table_id"]
        if op not in ("get", "list", "put", "delete"):
            # as a node of a version without the op answers (the rm then sends single ops)
            raise errors.InvalidArgument(f"unknown op {op!r}", field="op")
        if tid not in self.tables:
            raise errors.TableNotFound("no such table", table_id=tid)
        rows = self.data.setdefault(tid, {})
        if op == "get":
            value, seq = rows.get(body["key"], (b"", sequencer.ZERO))
            return {"found": body["key"] in rows, "value": value, "seq": seq}
        if op == "list":
            start, end, after, limit = body["start"], body["end"], body["after"], body["limit"]
            keys = sorted(
                k
                for k in rows
                if k >= start and (end is None or k < end) and (after is None or k > after)
            )
            page = keys[:limit]
            if body.get("packed"):  # as a node packs a page (the rm passes it on undecoded)
                return packed_page([(k, *rows[k]) for k in page], len(keys) > limit)
            return {"items": [[k, *rows[k]] for k in page], "more": len(keys) > limit}
        assert op in ("put", "delete"), op
        key, if_seq = body["key"], body["if_seq"]
        current = rows.get(key)
        if if_seq is not None:
            matches = (
                current is None
                if if_seq == sequencer.ZERO
                else (current is not None and current[1] == if_seq)
            )
            if not matches:
                raise errors.PreconditionFailed(
                    "seq does not match", current_seq=None if current is None else current[1].hex()
                )
        seq = self.last_seq = sequencer.final(body["seq"], self.last_seq)
        if op == "put":
            rows[key] = (body["value"], seq)
            return {"seq": seq}
        if current is None:
            return {"deleted": False, "seq": sequencer.ZERO}
        del rows[key]
        return {"deleted": True, "seq": seq}


class FakeMeta(FakeServer):
    """The active meta: creates a table with one range on group 1, then (after ``lag_s``, like
    an etcd watch) shows it in the rm's view at the revision it returned."""

    def __init__(self, source: StaticViewSource, nodes: list[FakeNode], lag_s: float = 0.02):
        super().__init__()
        self.source = source
        self.nodes = nodes
        self.lag_s = lag_s
        self.ids = itertools.count(100)

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        view = self.source.view
        name = body["name"]
        limits.check_table_name(name)
        revision = view.revision + 1
        if body["op"] == "create_table":
            if name in view.tables:
                raise errors.TableExists(f"table {name!r} exists", table=name)
            table = Table(next(self.ids), name)
            for node in self.nodes:
                node.tables.add(table.id)

            def apply() -> None:
                view.tables[name] = table
                view.ranges[table.id] = [Range(table.id, b"", None, 1)]

            reply = {"table": {"id": table.id, "name": name, "state": "active"}}
        else:
            assert body["op"] == "drop_table"
            if name not in view.tables:
                raise errors.TableNotFound(f"no table named {name!r}", table=name)
            tid = view.tables[name].id
            for node in self.nodes:
                node.tables.discard(tid)
                node.data.pop(tid, None)

            def apply() -> None:
                view.tables.pop(name, None)
                view.ranges.pop(tid, None)

            reply = {}

        def show() -> None:
            apply()
            view.revision = max(view.revision, revision)
            self.source.changed()

        asyncio.get_running_loop().call_later(self.lag_s, show)
        return {**reply, "revision": revision}


def build_view(
    nodes: dict[int, str],
    groups: dict[int, tuple[int | None, list[int], int]],
    tables: dict[str, tuple[int, list[tuple[bytes, bytes | None, int]]]],
    meta: str | None = None,
) -> ClusterView:
    """nodes: id -> address; groups: id -> (leader, members, epoch); tables: name -> (id,
    [(start, end, group)])."""
    view = ClusterView(revision=1)
    for nid, address in nodes.items():
        view.nodes[nid] = Node(nid, address, "member")
    for gid, (leader, members, epoch) in groups.items():
        view.groups[gid] = Group(gid, epoch, leader, tuple(members))
    for name, (tid, ranges) in tables.items():
        view.tables[name] = Table(tid, name)
        view.ranges[tid] = [Range(tid, s, e, g) for s, e, g in ranges]
    view.active_meta = None if meta is None else {"id": 1, "address": meta}
    return view


class Client:
    """An HTTP client of one server, by paths (as aiohttp's TestClient is)."""

    def __init__(self, session: aiohttp.ClientSession, host: str, port: int) -> None:
        self.session = session
        self.server = SimpleNamespace(host=host, port=port)
        self.base = f"http://{host}:{port}"

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.session.request(method, self.base + path, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> Any:
        return self.request("HEAD", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


@asynccontextmanager
async def serving(rm: RequestManager) -> AsyncIterator[Client]:
    """``rm`` served as ``rangekv rm`` serves it, on 127.0.0.1, and a client of it."""
    server = rm.server()
    host, port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(session, host, port)
    finally:
        await server.close(1.0)


class Harness:
    def __init__(
        self, client: Client, source: StaticViewSource, router: Router, metrics: Metrics
    ) -> None:
        self.client = client
        self.source = source
        self.router = router
        self.metrics = metrics

    async def json(self, method: str, path: str, status: int, **kw: Any) -> Any:
        resp = await self.client.request(method, path, **kw)
        text = await resp.text()
        assert resp.status == status, (resp.status, text)
        assert resp.content_type == "application/json", resp.content_type
        return json.loads(text)

    async def error(self, method: str, path: str, status: int, code: str, **kw: Any) -> Any:
        body = await self.json(method, path, status, **kw)
        err = body["error"]
        assert err["code"] == code, err
        assert isinstance(err["message"], str) and isinstance(err["retryable"], bool)
        return err


@asynccontextmanager
async def harness(
    view: ClusterView, backing: ClusterView | None = None, **router_kw: Any
) -> AsyncIterator[Harness]:
    source = StaticViewSource(view, backing)
    metrics = Metrics(RM_ID)
    router = Router(source, RM_ID, stats=metrics.router, **router_kw)
    rm = RequestManager(router, source, RM_ID, metrics)
    try:
        async with serving(rm) as client:
            yield Harness(client, source, router, metrics)
    finally:
        await rm.close()
        await router.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


async def one_node(tables: dict[str, int]) -> tuple[FakeNode, ClusterView]:
    node = FakeNode(set(tables.values()))
    await node.start()
    view = build_view(
        {1: node.address},
        {1: (1, [1], 1)},
        {name: (tid, [(b"", None, 1)]) for name, tid in tables.items()},
    )
    return node, view


# ---------------------------------------------------------------------------------------------


def test_stocks_example() -> None:
    """The seed's walk-through: create Stocks, put B, A, C, get B, list in key order."""

    async def main() -> None:
        node, view = await one_node({})
        view.revision = 5
        async with harness(view) as h:
            meta = FakeMeta(h.source, [node])
            await meta.start()
            view.active_meta = {"id": 1, "address": meta.address}

            body = await h.json("PUT", "/v1/tables/Stocks", 201)
            assert body == {"table": {"name": "Stocks", "id": 100}}
            # The rm waited for its view to show the table: it routes it at once.
            assert view.table("Stocks") is not None
            await h.error("PUT", "/v1/tables/Stocks", 409, "table_exists")
            assert await h.json("GET", "/v1/tables", 200) == {
                "tables": [{"name": "Stocks", "id": 100}]
            }

            seqs = {}
            for key, price in [("B", "100"), ("A", "120"), ("C", "135")]:
                body = await h.json("PUT", f"/v1/tables/Stocks/keys/{key}", 200, data=price)
                seqs[key] = body["seq"]
                assert len(body["seq"]) == 32
            assert seqs["B"] < seqs["A"] < seqs["C"]  # seq order is write order
            for seq in seqs.values():
                assert sequencer.parts(bytes.fromhex(seq))[2] == RM_ID

            resp = await h.client.get("/v1/tables/Stocks/keys/B")
            assert resp.status == 200
            assert await resp.read() == b"100"
            assert resp.content_type == "application/octet-stream"
            assert resp.headers["ETag"] == f'"{seqs["B"]}"'
            assert resp.headers["X-Rangekv-Seq"] == seqs["B"]

            page = await h.json("GET", "/v1/tables/Stocks/keys", 200)
            assert page == {
                "items": [
                    {"key": "A", "value": "120", "seq": seqs["A"]},
                    {"key": "B", "value": "100", "seq": seqs["B"]},
                    {"key": "C", "value": "135", "seq": seqs["C"]},
                ],
                "next": None,
            }

            # Two puts of D at about the same time: both succeed; the higher seq is what stays.
            r1, r2 = await asyncio.gather(
                h.json("PUT", "/v1/tables/Stocks/keys/D", 200, data="140"),
                h.json("PUT", "/v1/tables/Stocks/keys/D", 200, data="160"),
            )
            resp = await h.client.get("/v1/tables/Stocks/keys/D")
            assert resp.headers["X-Rangekv-Seq"] == max(r1["seq"], r2["seq"])

            body = await h.json("DELETE", "/v1/tables/Stocks/keys/D", 200)
            assert body["deleted"] is True and body["seq"] > max(r1["seq"], r2["seq"])
            assert await h.json("DELETE", "/v1/tables/Stocks/keys/D", 200) == {
                "deleted": False,
                "seq": None,
            }
            await h.error("GET", "/v1/tables/Stocks/keys/D", 404, "key_not_found")

            assert await h.json("DELETE", "/v1/tables/Stocks", 200) == {"dropped": "Stocks"}
            assert view.table("Stocks") is None
            await h.error("GET", "/v1/tables/Stocks/keys/B", 404, "table_not_found")
            await h.error("DELETE", "/v1/tables/Stocks", 404, "table_not_found")
            await h.error("PUT", "/v1/tables/bad%20name", 400, "invalid_argument")
            assert len(meta.requests) == 4  # the bad name never reached the meta
            await meta.stop()
        await node.stop()

    run(main())


def test_conditional_writes() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            url = "/v1/tables/t/keys/k"
            first = await h.json("PUT", url, 200, data=b"1", headers={"If-None-Match": "*"})
            err = await h.error(
                "PUT", url, 412, "precondition_failed", data=b"2", headers={"If-None-Match": "*"}
            )
            assert err["current_seq"] == first["seq"]

            second = await h.json(
                "PUT", url, 200, data=b"2", headers={"If-Match": f'"{first["seq"]}"'}
            )
            err = await h.error(
                "PUT",
                url,
                412,
                "precondition_failed",
                data=b"3",
                headers={"If-Match": first["seq"]},
            )  # stale, unquoted
            assert err["current_seq"] == second["seq"]
            resp = await h.client.get(url)
            assert await resp.read() == b"2"

            await h.error(
                "PUT", url, 400, "invalid_argument", data=b"x", headers={"If-Match": "nonsense"}
            )
            await h.error(
                "PUT",
                url,
                400,
                "invalid_argument",
                data=b"x",
                headers={"If-Match": second["seq"], "If-None-Match": "*"},
            )

            await h.error(
                "DELETE", url, 412, "precondition_failed", headers={"If-Match": first["seq"]}
            )
            body = await h.json("DELETE", url, 200, headers={"If-Match": second["seq"]})
            assert body["deleted"] is True
            err = await h.error(
                "DELETE", url, 412, "precondition_failed", headers={"If-Match": second["seq"]}
            )
            assert err["current_seq"] is None
            await h.error("DELETE", url, 400, "invalid_argument", headers={"If-None-Match": "*"})
            puts = node.ops("put")
            assert [p["if_seq"] for p in puts[:2]] == [sequencer.ZERO, sequencer.ZERO]
        await node.stop()

    run(main())


def test_value_size_limit() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            exact = bytes(range(256)) * (limits.VALUE_BYTES_MAX // 256)
            assert len(exact) == limits.VALUE_BYTES_MAX
            await h.json("PUT", "/v1/tables/t/keys/big", 200, data=io.BytesIO(exact))
            resp = await h.client.get("/v1/tables/t/keys/big")
            assert await resp.read() == exact

            err = await h.error(
                "PUT", "/v1/tables/t/keys/big2", 413, "too_large", data=io.BytesIO(exact + b"x")
            )
            assert err["limit"] == limits.VALUE_BYTES_MAX

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
                for _ in range(17):
                    yield b"y" * 65536

            await h.error("PUT", "/v1/tables/t/keys/big3", 413, "too_large", data=chunks())

            async def small() -> AsyncIterator[bytes]:
                yield b"ab"
                yield b"c"

            await h.json("PUT", "/v1/tables/t/keys/chunked", 200, data=small())
            await h.json("PUT", "/v1/tables/t/keys/empty", 200, data=b"")
            resp = await h.client.get("/v1/tables/t/keys/empty")
            assert resp.status == 200 and await resp.read() == b""
            assert {p["key"] for p in node.ops("put")} == {b"big", b"chunked", b"empty"}
        await node.stop()

    run(main())


def test_bad_input_is_400_and_changes_nothing() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            long_key = "k" * (limits.KEY_BYTES_MAX + 1)
            for method, path in [
                ("PUT", "/v1/tables/t/keys/"),
                ("GET", "/v1/tables/t/keys/"),
                ("PUT", f"/v1/tables/t/keys/{long_key}"),
                ("DELETE", f"/v1/tables/t/keys/{long_key}"),
                ("PUT", "/v1/tables/t!/keys/k"),
                ("PUT", "/v1/tables/t/keys/k?key_encoding=hex"),
                ("PUT", "/v1/tables/t/keys/%21%21?key_encoding=base64"),
                ("GET", "/v1/tables/t/keys?limit=0"),
                ("GET", "/v1/tables/t/keys?limit=ten"),
                ("GET", "/v1/tables/t/keys?encoding=latin1"),
                ("GET", "/v1/tables/t/keys?after=garbage"),
                ("GET", "/v1/tables/t/keys?encoding=base64&start=%21"),
            ]:
                err = await h.error(method, path, 400, "invalid_argument", data=b"v")
                assert err["retryable"] is False
            err = await h.error("PUT", f"/v1/tables/t/keys/{long_key}", 400, "invalid_argument")
            assert err["limit"] == limits.KEY_BYTES_MAX
            exact_key = "k" * limits.KEY_BYTES_MAX
            await h.json("PUT", f"/v1/tables/t/keys/{exact_key}", 200, data=b"v")
            assert [p["key"] for p in node.ops("put")] == [exact_key.encode()]
            assert not node.ops("get", "list", "delete")
        await node.stop()

    run(main())


def test_keys_with_slash_percent_and_binary() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            await h.json("PUT", "/v1/tables/t/keys/a%2Fb%25c", 200, data=b"1")
            await h.json("PUT", "/v1/tables/t/keys/x/y", 200, data=b"2")
            binary = b"\x00\xff\xfe"
            b64 = base64.urlsafe_b64encode(binary).decode().rstrip("=")
            await h.json(
                "PUT", f"/v1/tables/t/keys/{b64}?key_encoding=base64", 200, data=b"\x80bin"
            )
            await h.json("PUT", "/v1/tables/t/keys/%E2%82%AC", 200, data="euro")
            assert set(node.data[1]) == {b"a/b%c", b"x/y", binary, "€".encode()}

            resp = await h.client.get("/v1/tables/t/keys/a%2Fb%25c")
            assert await resp.read() == b"1"
            resp = await h.client.get(f"/v1/tables/t/keys/{b64}?key_encoding=base64")
            assert await resp.read() == b"\x80bin"

            page = await h.json("GET", "/v1/tables/t/keys", 200)
            assert page["items"][0] == {
                "key_base64": base64.b64encode(binary).decode(),
                "value_base64": base64.b64encode(b"\x80bin").decode(),
                "seq": page["items"][0]["seq"],
            }
            assert [i.get("key") for i in page["items"][1:]] == ["a/b%c", "x/y", "€"]
            page = await h.json("GET", "/v1/tables/t/keys?encoding=base64&limit=1", 200)
            assert page["items"][0]["key"] == base64.b64encode(binary).decode()
            assert page["items"][0]["value"] == base64.b64encode(b"\x80bin").decode()
        await node.stop()

    run(main())


def test_list_pagination_with_cursor() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        keys = [f"k{i:02d}" for i in range(25)]
        async with harness(view) as h:
            for k in keys:
                await h.json("PUT", f"/v1/tables/t/keys/{k}", 200, data=k.upper())
            seen: list[str] = []
            after = None
            pages = 0
            while True:
                q = "limit=10" + (f"&after={after}" if after else "")
                page = await h.json("GET", f"/v1/tables/t/keys?{q}", 200)
                pages += 1
                seen += [i["key"] for i in page["items"]]
                assert all(i["value"] == i["key"].upper() for i in page["items"])
                after = page["next"]
                if after is None:
                    break
            assert seen == keys and pages == 3

            # start/end, and the cursor carries end so the client need not repeat it.
            page = await h.json("GET", "/v1/tables/t/keys?start=k05&end=k12&limit=4", 200)
            assert [i["key"] for i in page["items"]] == ["k05", "k06", "k07", "k08"]
            page = await h.json("GET", f"/v1/tables/t/keys?limit=4&after={page['next']}", 200)
            assert [i["key"] for i in page["items"]] == ["k09", "k10", "k11"]
            assert page["next"] is None
            # Exactly limit items left: the page ends the listing.
            page = await h.json("GET", "/v1/tables/t/keys?start=k20&limit=5", 200)
            assert len(page["items"]) == 5 and page["next"] is None
            page = await h.json("GET", "/v1/tables/t/keys?start=k30", 200)
            assert page == {"items": [], "next": None}
            page = await h.json("GET", "/v1/tables/t/keys?start=k09&end=k01", 200)
            assert page == {"items": [], "next": None}
            # A cursor from another table is refused.
            view.tables["u"] = Table(2, "u")
            view.ranges[2] = [Range(2, b"", None, 1)]
            page = await h.json("GET", "/v1/tables/t/keys?limit=1", 200)
            await h.error("GET", f"/v1/tables/u/keys?after={page['next']}", 400, "invalid_argument")
        await node.stop()

    run(main())


def test_list_walks_ranges_in_order() -> None:
    """A table split over two groups: one cursor walks both ranges in key order."""

    async def main() -> None:
        n1, n2 = FakeNode({1}), FakeNode({1})
        await n1.start()
        await n2.start()
        view = build_view(
            {1: n1.address, 2: n2.address},
            {1: (1, [1], 1), 2: (2, [2], 1)},
            {"t": (1, [(b"", b"m", 1), (b"m", None, 2)])},
        )
        async with harness(view) as h:
            keys = ["a", "c", "e", "m", "n", "x"]
            for k in keys:
                await h.json("PUT", f"/v1/tables/t/keys/{k}", 200, data=k)
            assert set(n1.data[1]) == {b"a", b"c", b"e"}
            assert set(n2.data[1]) == {b"m", b"n", b"x"}

            page = await h.json("GET", "/v1/tables/t/keys", 200)
            assert [i["key"] for i in page["items"]] == keys and page["next"] is None
            lists = n1.ops("list")
            assert lists[-1]["start"] == b"" and lists[-1]["end"] == b"m"
            assert n2.ops("list")[-1]["start"] == b"m" and n2.ops("list")[-1]["end"] is None

            # A page that spans the boundary, then one that resumes in the second range.
            page = await h.json("GET", "/v1/tables/t/keys?limit=4", 200)
            assert [i["key"] for i in page["items"]] == ["a", "c", "e", "m"]
            page = await h.json("GET", f"/v1/tables/t/keys?limit=4&after={page['next']}", 200)
            assert [i["key"] for i in page["items"]] == ["n", "x"] and page["next"] is None
            # A page filled exactly at the boundary continues into the next range.
            page = await h.json("GET", "/v1/tables/t/keys?limit=3", 200)
            assert [i["key"] for i in page["items"]] == ["a", "c", "e"]
            page = await h.json("GET", f"/v1/tables/t/keys?limit=3&after={page['next']}", 200)
            assert [i["key"] for i in page["items"]] == ["m", "n", "x"]
            # end inside the first range never asks the second group.
            before = len(n2.ops("list"))
            page = await h.json("GET", "/v1/tables/t/keys?end=d", 200)
            assert [i["key"] for i in page["items"]] == ["a", "c"]
            assert len(n2.ops("list")) == before
            # start in the second range never asks the first.
            before = len(n1.ops("list"))
            page = await h.json("GET", "/v1/tables/t/keys?start=n", 200)
            assert [i["key"] for i in page["items"]] == ["n", "x"]
            assert len(n1.ops("list")) == before
        await n1.stop()
        await n2.stop()

    run(main())


def test_not_leader_hint_is_followed() -> None:
    async def main() -> None:
        old, new = FakeNode({1}), FakeNode({1})
        await old.start()
        await new.start()

        def refuse(body: dict[str, Any]) -> None:
            raise errors.NotLeader("not the leader", leader_hint=2, epoch=2)

        old.fault = refuse
        view = build_view(
            {1: old.address, 2: new.address}, {1: (1, [1, 2], 1)}, {"t": (1, [(b"", None, 1)])}
        )
        async with harness(view) as h:
            await h.json("PUT", "/v1/tables/t/keys/k", 200, data=b"v")
            assert len(old.ops("put")) == 1 and len(new.ops("put")) == 1
            # The hint (epoch 2 > the view's 1) is remembered: the next request goes straight
            # to the new leader.
            resp = await h.client.get("/v1/tables/t/keys/k")
            assert resp.status == 200 and await resp.read() == b"v"
            assert not old.ops("get") and len(new.ops("get")) == 1
            assert h.metrics.router.hints_followed == 1
            # Once the view shows the new epoch, the hint is dropped in favour of the view.
            view.groups[1] = Group(1, 2, 2, (1, 2))
            resp = await h.client.get("/v1/tables/t/keys/k")
            assert resp.status == 200
            text = await (await h.client.get("/metrics")).text()
            assert 'rangekv_rm_routing_retries_total{reason="not_leader"} 1' in text
        await old.stop()
        await new.stop()

    run(main())


def test_unavailable_is_503_with_retry_after() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        view.groups[2] = Group(2, 1, None, (1,))  # a group with no leader
        view.tables["leaderless"] = Table(2, "leaderless")
        view.ranges[2] = [Range(2, b"", None, 2)]
        async with harness(view, request_deadline_s=0.3) as h:
            t0 = time.monotonic()
            resp = await h.client.get("/v1/tables/leaderless/keys/k")
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            err = (await resp.json())["error"]
            assert err["code"] == "unavailable" and err["retryable"] is True
            assert time.monotonic() - t0 < 2

            calls = []

            def busy(body: dict[str, Any]) -> None:
                calls.append(body["op"])
                raise errors.Unavailable("no quorum")

            node.fault = busy
            await h.error("PUT", "/v1/tables/t/keys/k", 503, "unavailable", data=b"v")
            assert len(calls) > 1  # refused before doing anything: retried within the deadline
            node.fault = None
            await h.json("PUT", "/v1/tables/t/keys/k", 200, data=b"v")

            # A dead node (connection refused) is 503 too.
            await node.stop()
            view.nodes[1] = Node(1, "127.0.0.1:1", "member")
            await h.error("GET", "/v1/tables/t/keys/k", 503, "unavailable")

    run(main())


def test_a_seq_refused_as_too_far_ahead_sends_the_client_elsewhere_and_the_rm_steps_aside(
) -> None:
    """A leader answers ``clock_offset`` when this rm's clock runs ahead: the write is not
    retried here (every seq this rm makes would be refused), the client gets 503 with
    Retry-After: 0, and /healthz answers 503 for a while so that HAProxy uses other rms."""
    async def main() -> None:
        node, view = await one_node({"t": 1})
        calls = []

        def ahead(body: dict[str, Any]) -> None:
            if body["op"] == "batch_write":
                return  # (this fake knows no batch ops: the rm then sends the put alone)
            calls.append(body["op"])
            sequencer.check_proposal(body["seq"], time.time_ns() - 3_600 * 10**9, 500)

        node.fault = ahead
        async with harness(view, request_deadline_s=2.0) as h:
            resp = await h.client.request("PUT", "/v1/tables/t/keys/k", data=b"v")
            err = (await resp.json())["error"]
            assert resp.status == 503 and resp.headers["Retry-After"] == "0", err
            assert err["code"] == "clock_offset" and err["retryable"] is True, err
            assert err["max_offset_ms"] == 500 and err["ahead_ms"] >= 3_599_000, err
            assert calls == ["put"]  # not retried here
            assert h.metrics.router.clock_offsets == 1
            health = await h.client.get("/healthz")
            assert health.status == 503
            assert (await health.json())["error"]["code"] == "clock_offset"
            node.fault = None
            assert not node.data.get(1)  # nothing was written
            # reads still work from this rm (no seq involved)
            await h.error("GET", "/v1/tables/t/keys/k", 404, "key_not_found")
        await node.stop()

    run(main())


def test_write_with_unknown_outcome_is_not_retried() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})

        async def hang(body: dict[str, Any]) -> None:
            if body["op"] == "put":
                await asyncio.sleep(5)

        node.fault = hang
        async with harness(view, request_deadline_s=0.3) as h:
            err = await h.error("PUT", "/v1/tables/t/keys/k", 504, "outcome_unknown", data=b"v")
            assert err["retryable"] is True
            assert len(node.ops("put")) == 1
            assert h.metrics.router.outcome_unknown == 1
        await node.stop()

    run(main())


def test_unknown_table_is_reread_once() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        node.tables.add(9)
        backing = build_view({}, {}, {"fresh": (9, [(b"", None, 1)])})
        async with harness(view, backing=backing) as h:
            # Created through another rm: not in this rm's view yet, but in etcd.
            await h.json("PUT", "/v1/tables/fresh/keys/k", 200, data=b"v")
            assert h.source.refreshes == 1
            await h.error("GET", "/v1/tables/nope/keys/k", 404, "table_not_found")
            assert h.source.refreshes == 2
            # The view has a table the node no longer knows (dropped): re-read, then 404.
            node.tables.discard(1)
            backing.tables["t"] = Table(1, "t")
            backing.ranges[1] = [Range(1, b"", None, 1)]
            await h.error("GET", "/v1/tables/t/keys/k", 404, "table_not_found")
            assert h.source.refreshes == 3
            assert len(node.ops("get")) == 2
        await node.stop()

    run(main())


def test_meta_not_active_hint_is_followed() -> None:
    async def main() -> None:
        node, view = await one_node({})
        async with harness(view) as h:
            active = FakeMeta(h.source, [node], lag_s=0.0)
            standby = FakeMeta(h.source, [node])
            await active.start()
            await standby.start()

            def not_active(body: dict[str, Any]) -> None:
                raise errors.NotActive("standby", active_hint=active.address)

            standby.fault = not_active
            view.active_meta = {"id": 2, "address": standby.address}
            await h.json("PUT", "/v1/tables/x", 201)
            assert len(standby.requests) == 1 and len(active.requests) == 1
            await active.stop()
            await standby.stop()
        await node.stop()

    run(main())


class FakeNodesMeta(FakeServer):
    """An active meta that answers ``remove_node`` as the real one decides (node 1 a member,
    node 4 a live spare, node 5 dead) and, like the watch, drops the record from the view."""

    def __init__(self, source: StaticViewSource) -> None:
        super().__init__()
        self.source = source

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body["op"] == "remove_node", body
        node_id = body["node_id"]
        view = self.source.view
        if node_id == 1:
            raise errors.NodeInUse("node 1 is a member of group 1", node=1, group=1)
        if node_id == 4:
            raise errors.NodeInUse("node 4 is live and not flagged", node=4, live=True)
        if node_id not in view.nodes:
            raise errors.NodeNotFound(f"there is no node {node_id}", node=node_id)
        node = view.nodes.pop(node_id)
        view.revision += 1
        self.source.changed()
        return {"node": {"id": node.id, "address": node.address, "state": node.state,
                         "group": None, "reason": "", "flag": ""},
                "live": False, "revision": view.revision}


def test_remove_node_is_forwarded_to_the_meta_and_refusals_keep_their_codes() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        for nid in (4, 5):
            view.nodes[nid] = Node(nid, f"127.0.0.1:{8430 + nid}", "spare")
        async with harness(view) as h:
            meta = FakeNodesMeta(h.source)
            await meta.start()
            view.active_meta = {"id": 1, "address": meta.address}
            removed = await h.json("DELETE", "/v1/cluster/nodes/5", 200)
            assert removed == {"node": {"id": 5, "address": "127.0.0.1:8435", "state": "spare",
                                        "group": None, "reason": "", "flag": ""},
                               "live": False}
            cluster = await h.json("GET", "/v1/cluster", 200)
            assert [n["id"] for n in cluster["nodes"]] == [1, 4]
            err = await h.error("DELETE", "/v1/cluster/nodes/1", 409, "node_in_use")
            assert err["group"] == 1 and not err["retryable"]
            err = await h.error("DELETE", "/v1/cluster/nodes/4", 409, "node_in_use")
            assert err["live"] is True
            await h.error("DELETE", "/v1/cluster/nodes/5", 404, "node_not_found")
            # ids that are not node ids never reach the meta
            sent = len(meta.requests)
            for bad in ("0", "-1", "x", "4294967296", "1.5", "%C2%B2", "9" * 40):
                await h.error("DELETE", "/v1/cluster/nodes/" + bad, 400, "invalid_argument")
            assert len(meta.requests) == sent
            await h.error("DELETE", "/v1/cluster/nodes/", 404, "not_found")
            await h.error("DELETE", "/v1/cluster/nodes/5/x", 404, "not_found")
            err = await h.error("GET", "/v1/cluster/nodes/5", 405, "method_not_allowed")
            assert err["allow"] == ["DELETE"]
            text = await (await h.client.get("/metrics")).text()
            assert 'rangekv_rm_requests_total{op="remove_node",status="200"} 1' in text
            await meta.stop()
        await node.stop()

    run(main())


def test_routes_health_cluster_metrics_openapi() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            assert await h.json("GET", "/healthz", 200) == {"ok": True, "rm": RM_ID, "revision": 1}
            await h.error("GET", "/nope", 404, "not_found")
            await h.error("GET", "/v1/tables/t/nope", 404, "not_found")
            err = await h.error("POST", "/v1/tables/t/keys/k", 405, "method_not_allowed")
            assert "PUT" in err["allow"]
            resp = await h.client.post("/v1/tables")
            assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
            resp = await h.client.head("/healthz")
            assert resp.status == 200

            cluster = await h.json("GET", "/v1/cluster", 200)
            assert cluster["tables"] == [{"id": 1, "name": "t", "state": "active"}]
            assert cluster["groups"][0]["leader"] == 1

            await h.json("PUT", "/v1/tables/t/keys/k", 200, data=b"v")
            resp = await h.client.get("/metrics")
            assert resp.status == 200 and resp.content_type == "text/plain"
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await resp.text()
            assert 'rangekv_rm_requests_total{op="put",status="200"} 1' in text
            assert 'rangekv_rm_request_duration_seconds_count{op="put"} 1' in text
            assert "rangekv_rm_ready 1" in text

            doc = await h.json("GET", "/v1/openapi.json", 200)
            assert doc == json.loads(json.dumps(openapi.document()))
            assert doc["openapi"].startswith("3.1")
            assert set(doc["paths"]) == {
                "/v1/tables",
                "/v1/tables/{table}",
                "/v1/tables/{table}/keys",
                "/v1/tables/{table}/keys/{key}",
                "/v1/tables/{table}/ranges", "/v1/tables/{table}/batch",
                "/v1/tables/{table}/move/{key}",
                "/v1/tables/{table}/split/{key}",
                "/v1/cluster",
                "/v1/cluster/status",
                "/v1/cluster/nodes/{id}",
                "/v1/openapi.json",
                "/healthz",
                "/livez",
                "/metrics",
            }
            codes = {"method_not_allowed"} | {
                c.code for c in _all_error_classes(errors.RangeKVError)
            }
            for item in doc["paths"].values():
                for op in item.values():
                    if not isinstance(op, dict) or "responses" not in op:
                        continue
                    for resp_doc in op["responses"].values():
                        desc = resp_doc["description"]
                        if "error codes:" in desc:
                            named = desc.split("error codes: ")[1].rstrip(")").split(", ")
                            assert set(named) <= codes, named
        await node.stop()

    run(main())


def _all_error_classes(cls: type[errors.RangeKVError]) -> list[type[errors.RangeKVError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_error_classes(sub)
    return out


def test_health_is_503_until_the_view_is_loaded() -> None:
    class NotReady(StaticViewSource):
        @property
        def ready(self) -> bool:
            return False

    async def main() -> None:
        source = NotReady(ClusterView())
        router = Router(source, RM_ID, request_deadline_s=0.2)
        rm = RequestManager(router, source, RM_ID)
        async with serving(rm) as client:
            resp = await client.get("/healthz")
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            body = await resp.json()
            assert body["ok"] is False and body["error"]["code"] == "unavailable"
            resp = await client.get("/v1/tables/t/keys/k")
            assert resp.status == 503
            resp = await client.get("/livez")  # no map at all: nothing to serve from
            assert resp.status == 503 and (await resp.json())["ok"] is False
        await router.close()

    run(main())


def test_live_while_it_holds_a_map_even_if_not_following_it() -> None:
    """/livez: what HAProxy falls back to when no rm is ready (etcd out of reach)."""

    class CutOff(StaticViewSource):
        @property
        def ready(self) -> bool:
            return False

    async def main() -> None:
        node, view = await one_node({"t": 1})
        source = CutOff(view)
        router = Router(source, RM_ID, request_deadline_s=0.5)
        rm = RequestManager(router, source, RM_ID)
        async with serving(rm) as client:
            resp = await client.get("/healthz")
            assert resp.status == 503
            resp = await client.get("/livez")
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"ok": True, "rm": RM_ID, "revision": view.revision,
                                         "ready": False}
            resp = await client.put("/v1/tables/t/keys/k", data=b"v")  # served from the map
            assert resp.status == 200, await resp.text()
        await router.close()
        await node.stop()

    run(main())


def test_list_over_many_empty_ranges_hands_back_a_start_cursor(monkeypatch: Any) -> None:
    from rangekv.request_manager import routing

    monkeypatch.setattr(routing, "LIST_RANGES_PER_PAGE_MAX", 2)

    async def main() -> None:
        node = FakeNode({1})
        await node.start()
        bounds = [b"", b"b", b"c", b"d", b"e"]
        view = build_view(
            {1: node.address},
            {1: (1, [1], 1)},
            {"t": (1, [(s, e, 1) for s, e in zip(bounds, [*bounds[1:], None], strict=True)])},
        )
        async with harness(view) as h:
            await h.json("PUT", "/v1/tables/t/keys/ee", 200, data=b"v")
            page = await h.json("GET", "/v1/tables/t/keys", 200)
            assert page["items"] == [] and page["next"] is not None
            pages, keys = 1, []
            while page["next"] is not None:
                page = await h.json("GET", f"/v1/tables/t/keys?after={page['next']}", 200)
                keys += [i["key"] for i in page["items"]]
                pages += 1
            assert keys == ["ee"] and pages == 3
        await node.stop()

    run(main())


def test_malformed_node_reply_is_502() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})

        class Bad(FakeNode):
            async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
                return {"found": True, "value": b"v", "seq": b"short"}

        bad = Bad({1})
        await bad.start()
        view.nodes[1] = Node(1, bad.address, "member")
        async with harness(view) as h:
            await h.error("GET", "/v1/tables/t/keys/k", 502, "protocol_error")
        await bad.stop()
        await node.stop()

    run(main())


def test_absolute_form_request_target() -> None:
    from rangekv.request_manager.app import _origin_form

    assert (
        _origin_form("http://rm:8411/v1/tables/t/keys/a%2Fb?x=1") == "/v1/tables/t/keys/a%2Fb?x=1"
    )
    assert _origin_form("http://rm:8411") == "/"
    assert _origin_form("*") == "/"


def test_expect_100_continue() -> None:
    """curl sends Expect: 100-continue: the go-ahead comes only after the checks pass."""

    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            host, port = h.client.server.host, h.client.server.port

            async def exchange(path: str, length: int, send_body: bool) -> bytes:
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(
                        f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                        "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
                    )
                    first = await reader.readuntil(b"\r\n\r\n")
                    if not send_body:  # the final answer instead of the go-ahead
                        length_line = next(
                            line
                            for line in first.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        )
                        body_bytes = int(length_line.split(b":")[1])
                        return first + await reader.readexactly(body_bytes)
                    assert first == b"HTTP/1.1 100 Continue\r\n\r\n", first
                    writer.write(b"v" * length)
                    return await reader.read()
                finally:
                    writer.close()
                    await writer.wait_closed()

            answer = await exchange("/v1/tables/t/keys/k", 2000, send_body=True)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert node.data[1][b"k"][0] == b"v" * 2000
            big = limits.VALUE_BYTES_MAX + 1
            answer = await exchange("/v1/tables/t/keys/k2", big, send_body=False)
            assert answer.startswith(b"HTTP/1.1 413"), answer
            answer = await exchange("/v1/tables/t/keys/", 10, send_body=False)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert len(node.ops("put")) == 1
        await node.stop()

    run(main())


@asynccontextmanager
async def served(view: ClusterView) -> AsyncIterator[tuple[str, int]]:
    """The rm as ``rangekv rm`` serves it (``RequestManager.server()``, with its own connection
    handler and parser limits) on 127.0.0.1; yields (host, port)."""
    source = StaticViewSource(view)
    router = Router(source, RM_ID)
    server = RequestManager(router, source, RM_ID).server()
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield host, port
    finally:
        await server.close(1.0)
        await router.close()


async def raw_exchange(
    host: str, port: int, data: bytes, closes: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one answer: (status, headers with lower-case names, body). With
    ``closes``, also check that the server closes the connection after it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        if closes:
            assert await asyncio.wait_for(reader.read(), 5) == b"", "the connection stayed open"
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def test_requests_aiohttp_cannot_parse_get_our_json_error() -> None:
    """Found by the OpenAPI fuzzer: aiohttp answers a request it cannot parse itself (here a
    request line over its limit) with a text/plain 400, not the JSON error every other answer
    is. Now they are ``invalid_argument`` errors like the rest, and the connection is closed."""

    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with served(view) as (host, port):
            too_long = "/v1/tables/t/keys?start=" + "%FF" * 8000
            for request in [
                f"GET {too_long} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to this port
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
            ]:
                status, headers, body = await raw_exchange(host, port, request, closes=True)
                assert status == 400, (request[:40], status, body)
                assert headers["content-type"].startswith("application/json"), headers
                err = json.loads(body)["error"]
                assert err["code"] == "invalid_argument" and err["retryable"] is False, err
                assert err["message"].startswith("malformed HTTP request"), err
            assert not node.requests
        await node.stop()

    run(main())


def test_the_longest_list_request_the_api_allows_is_not_refused_by_the_parser() -> None:
    """start and end of KEY_BYTES_MAX bytes, percent-encoded, and a cursor carrying keys of that
    size: a request line over aiohttp's default limit (8190), which refused it."""

    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with served(view) as (host, port):
            bound = b"\xff" * limits.KEY_BYTES_MAX
            cursor = codec.encode_cursor(codec.Cursor(1, bound, bound))
            encoded = quote_from_bytes(bound, safe="")
            target = (
                f"/v1/tables/t/keys?start={encoded}&end={encoded}&after={cursor}"
                f"&limit={limits.LIST_LIMIT_MAX}&encoding=utf8"
            )
            assert len(target) > 8190
            request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            status, _, body = await raw_exchange(host, port, request.encode())
            assert status == 200, body
            assert json.loads(body) == {"items": [], "next": None}
        await node.stop()

    run(main())


def test_values_are_any_bytes_and_unknown_query_parameters_are_ignored() -> None:
    """As the OpenAPI document says: the PUT body is stored as sent whatever its Content-Type,
    and query parameters the document does not name are ignored."""

    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            for content_type, value in [
                ("text/xml", b"<data><a/></data>"),
                ("application/json", b'{"not": "parsed"}'),
                ("application/x-www-form-urlencoded", b"a=1&b=%FF"),
            ]:
                await h.json(
                    "PUT",
                    "/v1/tables/t/keys/k?cache_buster=1",
                    200,
                    data=value,
                    headers={"Content-Type": content_type},
                )
                resp = await h.client.get("/v1/tables/t/keys/k?unknown=%FF&x")
                assert resp.status == 200 and await resp.read() == value
            page = await h.json("GET", "/v1/tables/t/keys?foo=bar&limit=5", 200)
            assert [i["key"] for i in page["items"]] == ["k"]
        await node.stop()

    run(main())


def test_requests_waiting_on_a_deposed_leader_end_when_the_view_moves_on() -> None:
    """A leader cut off by a partition answers nothing; once the view shows the group's new
    epoch, a read waiting on it is retried at the new leader and a write answers 504 at once,
    not when TCP gives up or the deadline passes."""

    async def main() -> None:
        old, new = FakeNode({1}), FakeNode({1})
        await old.start()
        await new.start()

        async def silent(body: dict[str, Any]) -> None:
            await asyncio.sleep(30)

        old.fault = silent
        view = build_view(
            {1: old.address, 2: new.address}, {1: (1, [1, 2], 1)}, {"t": (1, [(b"", None, 1)])}
        )
        new.data[1] = {b"k": (b"v", sequencer.ZERO)}
        async with harness(view, request_deadline_s=10.0) as h:
            get = asyncio.create_task(h.client.get("/v1/tables/t/keys/k"))
            put = asyncio.create_task(h.client.put("/v1/tables/t/keys/w", data=b"x"))
            while len(old.requests) < 2:
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            view.groups[1] = Group(1, 2, 2, (1, 2))  # meta chose node 2 at epoch 2
            h.source.changed()
            resp = await get
            assert resp.status == 200 and await resp.read() == b"v"
            resp = await put
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "outcome_unknown"
            assert time.monotonic() - t0 < 1.0
            assert not new.ops("put")  # a write of unknown outcome is never sent again
            text = await (await h.client.get("/metrics")).text()
            assert 'rangekv_rm_routing_retries_total{reason="leader_moved"} 1' in text
            # The same leader re-elected at a new epoch: nothing in flight is ended.
            old.fault = None
            view.groups[1] = Group(1, 3, 1, (1, 2))
            h.source.changed()
            await h.json("PUT", "/v1/tables/t/keys/w", 200, data=b"y")
        await old.stop()
        await new.stop()

    run(main())


def test_an_rm_that_cannot_follow_the_map_sends_retries_elsewhere() -> None:
    """Not ready (cut off from etcd): a request that needs a retry fails at once with 503
    retry_elsewhere and Retry-After 0, instead of waiting out its deadline on this rm."""

    class Switch(StaticViewSource):
        is_ready = True

        @property
        def ready(self) -> bool:
            return self.is_ready

    async def main() -> None:
        node, view = await one_node({"t": 1})
        source = Switch(view)
        router = Router(source, RM_ID, request_deadline_s=5.0)
        rm = RequestManager(router, source, RM_ID)

        def busy(body: dict[str, Any]) -> None:
            raise errors.Unavailable("no quorum")

        node.fault = busy
        async with serving(rm) as client:
            source.is_ready = False
            t0 = time.monotonic()
            resp = await client.put("/v1/tables/t/keys/k", data=b"v")
            assert resp.status == 503 and resp.headers["Retry-After"] == "0"
            err = (await resp.json())["error"]
            assert err["retry_elsewhere"] is True and err["retryable"] is True
            assert time.monotonic() - t0 < 1.0 and len(node.ops("put")) == 1
            # Ready again: the same request is retried on this rm within its deadline.
            source.is_ready = True
            node.fault = None
            resp = await client.put("/v1/tables/t/keys/k", data=b"v")
            assert resp.status == 200
        await router.close()
        await node.stop()

    run(main())


def test_a_stale_map_is_refreshed_when_a_group_says_range_not_here() -> None:
    """The upper half of t moved to group 2 (split and move): this rm's map still sends every
    key to group 1, which answers range_not_here with its view. The rm re-reads the table's
    ranges and retries at group 2; a listing walks both groups. No 404, no short listing."""

    async def main() -> None:
        g1, g2 = FakeNode({1}), FakeNode({1})
        await g1.start()
        await g2.start()
        g1.data[1] = {b"a": (b"va", sequencer.ZERO)}
        g2.data[1] = {b"x": (b"vx", sequencer.ZERO)}

        def owns_lower_half(body: dict[str, Any]) -> None:
            key = body.get("key")
            end = body.get("end")
            if (key is not None and key >= b"m") or (
                    body["op"] == "list" and (end is None or end > b"m")):
                raise errors.RangeNotHere("not here", table_id=1, ranges=[[b"", b"m"]])

        g1.fault = owns_lower_half
        nodes = {1: g1.address, 2: g2.address}
        groups = {1: (1, [1], 1), 2: (2, [2], 1)}
        view = build_view(nodes, groups, {"t": (1, [(b"", None, 1)])})
        backing = build_view(nodes, groups, {"t": (1, [(b"", b"m", 1), (b"m", None, 2)])})
        async with harness(view, backing=backing) as h:
            resp = await h.client.get("/v1/tables/t/keys/x")
            assert resp.status == 200 and await resp.read() == b"vx"
            assert h.source.refreshes == 1 and len(g2.ops("get")) == 1
            await h.json("PUT", "/v1/tables/t/keys/y", 200, data=b"vy")
            assert len(g2.ops("put")) == 1 and not g1.ops("put")  # the map is current now
            body = await h.json("GET", "/v1/tables/t/keys", 200)
            assert [i["key"] for i in body["items"]] == ["a", "x", "y"]
            text = await (await h.client.get("/metrics")).text()
            assert 'rangekv_rm_routing_retries_total{reason="range_not_here"} 1' in text
        await g1.stop()
        await g2.stop()

    run(main())


def test_range_not_here_that_persists_ends_in_503_at_the_deadline() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})

        def never(body: dict[str, Any]) -> None:
            raise errors.RangeNotHere("not here", table_id=1, ranges=[])

        node.fault = never
        async with harness(view, backing=view, request_deadline_s=0.5) as h:
            err = await h.error("GET", "/v1/tables/t/keys/k", 503, "unavailable")
            assert err["retryable"] is True and err["cause"] == "range_not_here"
            assert len(node.ops("get")) > 2  # retried within the deadline, not given up at once
        await node.stop()

    run(main())


class StatusNode(FakeServer):
    """Answers only ``status``, as a group's leader or follower would."""

    def __init__(self, node_id: int, role: str) -> None:
        super().__init__()
        self.node_id, self.role = node_id, role

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body["op"] == "status", body
        out: dict[str, Any] = {"node_id": self.node_id, "role": self.role, "epoch": 2,
                               "last_index": 30, "commit_index": 30, "applied_index": 30}
        if self.role == "leader":
            out["match"] = {"2": 25}
            if body.get("ranges"):
                out["ranges"] = [{"t": 1, "start": b"", "keys": 7, "bytes": 700,
                                  "counted": True, "rps": 1.0, "wps": 2.0, "rbps": 0,
                                  "wbps": 0}]
        return out


def test_cluster_status_joins_the_view_with_each_nodes_status_and_caches() -> None:
    async def main() -> None:
        leader, follower = StatusNode(1, "leader"), StatusNode(2, "follower")
        for n in (leader, follower):
            await n.start()
        dead = f"127.0.0.1:{free_port()}"  # nobody listens: unreachable, not waited for
        view = build_view({1: leader.address, 2: follower.address, 3: dead},
                          {1: (1, [1, 2, 3], 2)}, {"t": (1, [(b"", None, 1)])})
        async with harness(view) as h:
            st = await h.json("GET", "/v1/cluster/status", 200)
            (g,) = st["groups"]
            assert (g["leader"], g["leader_live"], g["health"]) == (1, True, "degraded")
            assert [(m["id"], m["role"], m["lag"], m["reachable"]) for m in g["members"]] == [
                (1, "leader", 0, True), (2, "follower", 5, True), (3, None, None, False)]
            (t,) = st["tables"]
            (r,) = t["ranges"]
            assert (t["name"], r["leader"], r["keys"], r["bytes"], r["wps"]) == (
                "t", 1, 7, 700, 2.0)
            assert st["summary"]["nodes_unreachable"] == 1
            # many dashboards at once: one probe answers them all within the cache time
            before = len(leader.ops("status"))
            await asyncio.gather(*(h.json("GET", "/v1/cluster/status", 200) for _ in range(5)))
            assert len(leader.ops("status")) - before <= 1
            assert all(r.get("ranges") for r in leader.ops("status"))
            resp = await h.client.get("/v1/cluster/status")
            assert resp.headers["Cache-Control"] == "no-store"
            st = await h.json("GET", "/v1/cluster/status?table=t", 200)
            assert [t["name"] for t in st["tables"]] == ["t"]
            await h.error("GET", "/v1/cluster/status?table=nope", 404, "table_not_found")
            await h.error("GET", "/v1/cluster/status?table=no%20spaces", 400,
                          "invalid_argument")
            await h.error("POST", "/v1/cluster/status", 405, "method_not_allowed")
        for n in (leader, follower):
            await n.stop()

    run(main())


def test_dashboard_files_are_served_with_their_types_and_a_strict_policy() -> None:
    async def main() -> None:
        node, view = await one_node({"t": 1})
        async with harness(view) as h:
            resp = await h.client.get("/ui", allow_redirects=False)
            assert resp.status == 301 and resp.headers["Location"] == "/ui/"
            resp = await h.client.get("/ui/")
            html = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html", resp.content_type
            assert 'src="app.js"' in html and 'href="app.css"' in html
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css"),
                                ("index.html", "text/html")):
                resp = await h.client.get(f"/ui/{name}")
                assert resp.status == 200 and resp.content_type == ctype, (name, resp.status)
                assert resp.headers["Cache-Control"] == "no-cache"
            js = await (await h.client.get("/ui/app.js")).text()
            # text nodes only: no markup built from strings
            assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write",
                                 js)
            resp = await h.client.head("/ui/")
            assert resp.status == 200
            for bad in ("/ui/nope.js", "/ui/../app.py", "/ui/%2e%2e/app.py", "/ui/app.js/x"):
                await h.error("GET", bad, 404, "not_found")
            await h.error("PUT", "/ui/", 405, "method_not_allowed")
        await node.stop()

    run(main())
