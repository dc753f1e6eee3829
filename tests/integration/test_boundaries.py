"""Every internal request checked, against real processes (issue 16: "a test per row").

One cluster (etcd, two metas, a group of three nodes and a spare, one rm, HAProxy) serves the
module. For every request type a node or the meta serves, the test sends the request once per
bad example its declaration names (``rangekv.fields``: a field of the wrong type, out of range,
oversized, missing), each on top of an otherwise well-formed body, and expects exactly the
declared error code naming the field. Then: replication messages that are malformed, addressed
to another node, from a node outside the group, from two ids on one connection, or with an epoch
far ahead are dropped and counted; frames with an oversized length or a request id of the wrong
type; a poison seq (``ff...ff``) and a seq from an hour ahead are refused and the group still
serves; a forged heartbeat for a live member is refused. At the end no process has died and no
log holds a traceback.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator
from typing import Any

import crc32c
import httpx
import msgpack
import pytest

from rangekv import errors, fields, sequencer, wire
from rangekv.cluster.local import LocalCluster, running_cluster
from rangekv.metadata.requests import OPS as META_OPS
from rangekv.node.requests import OPS as NODE_OPS
from rangekv.replication.messages import NEW_EPOCH, Msg
from rangekv.testing.load import cluster_info
from rangekv.testing.load import wait_for_cluster as poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TABLE = "edge"
SEQ = sequencer.make(time.time_ns(), 1, 9)
# A well-formed body for each request type: a bad example replaces one field of it. Values
# need not name anything that exists: fields are checked before anything is looked up.
NODE_VALID: dict[str, dict[str, Any]] = {
    "put": {"table_id": 1, "key": b"k", "value": b"v", "seq": SEQ},
    "delete": {"table_id": 1, "key": b"k", "seq": SEQ},
    "get": {"table_id": 1, "key": b"k"},
    "list": {"table_id": 1},
    "export": {"table_id": 1},
    "import": {"table_id": 1, "items": []},
    "batch_write": {"table_id": 1, "items": []},
    "batch_get": {"table_id": 1, "keys": []},
    "export_sessions": {},
    "import_sessions": {"table_id": 1, "items": []},
    "add_range": {"table_id": 1},
    "fence_range": {"table_id": 1},
    "unfence_range": {"table_id": 1},
    "finish_import": {"table_id": 1},
    "drop_range": {"table_id": 1},
    "split_range": {"table_id": 1, "at": b"m"},
    "merge_range": {"table_id": 1, "at": b"m"},
    "drop_table": {"table_id": 1},
    "split_key": {"table_id": 1, "by": "size", "fraction": 0.5},
    "status": {},
    "content_hash": {},
    "flush": {},
    "snapshot_begin": {"frm": 1, "epoch": 1, "index": 1, "manifest": {}},
    "snapshot_chunk": {"frm": 1, "epoch": 1, "index": 1, "file": 0, "offset": 0,
                       "data": b"x", "crc": 0},
    "snapshot_end": {"frm": 1, "epoch": 1, "index": 1},
    "snapshot_abort": {"frm": 1, "epoch": 1, "index": 1},
    "backup_begin": {},
    "backup_chunk": {"handle": 1, "file": 0, "offset": 0},
    "backup_end": {"handle": 1},
}
META_VALID: dict[str, dict[str, Any]] = {
    "heartbeat": {"node_id": 4000, "address": "127.0.0.1:1"},
    "create_table": {"name": "t"},
    "drop_table": {"name": "t"},
    "split_range": {"name": "t", "at": b"m"},
    "move_range": {"name": "t", "at": b"m", "to": 1},
    "remove_node": {"node_id": 4000},
}
MISSING = object()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("boundaries") / "data"
    with running_cluster(data, 90.0, nodes=4, rms=1) as c:
        r = httpx.put(f"{c.endpoint}/v1/tables/{TABLE}", timeout=30, trust_env=False)
        assert r.status_code == 201, r.text
        yield c
        # nothing sent here made any process die or log a traceback
        dead = [name for name in c.running() if not c.alive(name)]
        assert not dead, f"processes died: {dead}"
        for name in c.running():
            text = c.log_path(name).read_text(errors="replace")
            assert "Traceback" not in text and "CRITICAL" not in text, (name, text[-3000:])


def serving_group(c: LocalCluster) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        g = cluster_info(c.endpoint)["groups"][0]
        return g if g["leader"] is not None else None
    return poll(find, 60, "a leader")


def ask(to: str, op: str, /, **body: Any) -> dict[str, Any]:
    """Send ``op`` to ``to`` and return the reply: ``{"ok": True, ...}`` or the error as a
    dict."""
    async def go() -> dict[str, Any]:
        conn = wire.Connection(to, connect_timeout_s=2.0)
        try:
            return {"ok": True, **await conn.request(op, timeout_s=10.0, **body)}
        except errors.RangeKVError as err:
            return {"ok": False, **err.to_dict()}
        finally:
            await conn.close()
    return asyncio.run(go())


def active_meta(c: LocalCluster) -> str:
    def find() -> str | None:
        meta = cluster_info(c.endpoint).get("meta") or {}
        return meta.get("address") if isinstance(meta, dict) else None
    return poll(find, 30, "the active meta")


def check_row(address: str, op: str, valid: dict[str, Any], spec: fields.Op) -> int:
    """Send every bad example of every field of ``spec``; returns how many were sent."""
    sent = 0
    for name, f in spec.fields.items():
        cases: list[tuple[Any, str]] = list(f.bad)
        if not f.optional:
            cases.append((MISSING, fields.INVALID))
        for bad, code in cases:
            body = dict(valid)
            if bad is MISSING:
                body.pop(name, None)
            else:
                body[name] = bad
            got = ask(address, op, **body)
            assert not got["ok"], (op, name, bad, got)
            assert got["code"] == code, (op, name, repr(bad)[:80], got)
            if code in (fields.INVALID, fields.TOO_LARGE):
                field_named = got.get("field", "")
                assert field_named == name or field_named.startswith(name + "."), \
                    (op, name, repr(bad)[:80], got)
            sent += 1
    return sent


@pytest.mark.parametrize("op", sorted(NODE_OPS))
def test_node_request_fields_are_checked(cluster: LocalCluster, op: str) -> None:
    g = serving_group(cluster)
    leader = cluster.node_addresses[g["leader"]]
    sent = check_row(leader, op, NODE_VALID[op], NODE_OPS[op])
    print(f"{op}: {sent} bad requests, each refused with its declared error")
    assert ask(leader, "status")["ok"]


@pytest.mark.parametrize("op", sorted(META_OPS))
def test_meta_request_fields_are_checked(cluster: LocalCluster, op: str) -> None:
    sent = check_row(active_meta(cluster), op, META_VALID[op], META_OPS[op])
    print(f"{op}: {sent} bad requests, each refused with its declared error")


def test_unknown_ops_and_request_ids(cluster: LocalCluster) -> None:
    g = serving_group(cluster)
    for address in (cluster.node_addresses[g["leader"]], active_meta(cluster)):
        for op in ("nonsense", 5, None, "x" * 10_000):
            got = ask(address, op)  # type: ignore[arg-type]
            assert got["code"] == "invalid_argument" and got["field"] == "op", got

        async def raw(address: str = address) -> None:
            host, _, port = address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            for bad_id in ("seven", [1], -5, 2**64 - 1, 1.5, None):
                payload = msgpack.packb({"t": "req", "id": bad_id, "op": "status"})
                writer.write(struct.pack(">II", len(payload), crc32c.crc32c(payload)) + payload)
                rep = await asyncio.wait_for(wire.read_frame(reader), 10)
                assert rep["id"] is None and rep["error"]["field"] == "id", rep
            # an oversized frame is refused from its header: the connection closes
            writer.write(struct.pack(">II", 2**31, 0))
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

        asyncio.run(raw())


def test_poison_seqs_are_refused_and_the_group_still_serves(cluster: LocalCluster) -> None:
    g = serving_group(cluster)
    leader = cluster.node_addresses[g["leader"]]
    table_id = next(t["id"] for t in httpx.get(f"{cluster.endpoint}/v1/tables",
                                                  trust_env=False).json()["tables"]
                    if t["name"] == TABLE)
    top = ask(leader, "put", table_id=table_id, key=b"p", value=b"x", seq=sequencer.MAX)
    assert top["code"] == "invalid_argument" and top["field"] == "seq", top
    hour = sequencer.make(time.time_ns() + 3600 * 10**9, 1, 77)
    ahead = ask(leader, "put", table_id=table_id, key=b"p", value=b"x", seq=hour)
    assert ahead["code"] == "clock_offset" and ahead["max_offset_ms"] == 500, ahead
    assert ahead["ahead_ms"] > 3_000_000, ahead
    assert not ask(leader, "delete", table_id=table_id, key=b"p", seq=hour)["ok"]
    near = sequencer.make(time.time_ns() + 100 * 10**6, 1, 77)  # 100 ms ahead: fine
    assert ask(leader, "put", table_id=table_id, key=b"p", value=b"near", seq=near)["ok"]
    # every member still serves and a write through HAProxy still works, many times over
    with httpx.Client(base_url=cluster.endpoint, timeout=30, trust_env=False) as http:
        for i in range(50):
            r = http.put(f"/v1/tables/{TABLE}/keys/after-{i}", content=b"v")
            assert r.status_code == 200, r.text
            assert sequencer.ahead_ns(bytes.fromhex(r.json()["seq"]), time.time_ns()) < 10**9
        assert http.get(f"/v1/tables/{TABLE}/keys/p").text == "near"
    assert all(cluster.alive(f"node-{m['id']}") for m in g["members"])


def test_bad_replication_messages_are_dropped_and_counted(cluster: LocalCluster) -> None:
    g = serving_group(cluster)
    members = [m["id"] for m in g["members"]]
    follower = next(m for m in members if m != g["leader"])
    peer = next(m for m in members if m not in (g["leader"], follower))
    address = cluster.node_addresses[follower]
    before = ask(address, "status")["refused"]["messages"]

    def raft(msg: Any) -> bytes:
        payload = msgpack.packb({"t": "raft", "m": msg}, use_bin_type=True)
        return struct.pack(">II", len(payload), crc32c.crc32c(payload)) + payload

    async def send(*frames: bytes) -> None:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        for fr in frames:
            writer.write(fr)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    epoch = g["epoch"]
    asyncio.run(send(raft(["append", peer, follower, "x"] + [0] * 7)))  # malformed
    asyncio.run(send(raft(Msg("heartbeat", peer, 999, epoch).to_wire())))  # another node's
    asyncio.run(send(raft(Msg("heartbeat", 4242, follower, epoch).to_wire())))  # not a peer
    asyncio.run(send(raft(Msg("heartbeat_resp", peer, follower, epoch).to_wire()),
                     raft(Msg("heartbeat_resp", g["leader"], follower, epoch).to_wire())))
    asyncio.run(send(raft(Msg(NEW_EPOCH, peer, follower, 2**63).to_wire())))  # far ahead
    asyncio.run(send(raft(Msg("append", peer, follower, 0, index=5).to_wire())))  # stale epoch

    # an append of the current epoch that claims another leader than the one the follower
    # follows (it crashed the node before: "two leaders in one epoch"), and entries that do not
    # follow their prev
    asyncio.run(send(raft(Msg("append", peer, follower, epoch, index=2**64 - 1).to_wire())))
    asyncio.run(send(raft(Msg("heartbeat", peer, follower, epoch).to_wire())))

    def counted() -> dict[str, int] | None:
        got = ask(address, "status")["refused"]["messages"]
        want = ("malformed", "wrong_node", "not_a_peer", "other_id", "epoch_ahead",
                "two_leaders_in_one_epoch")
        return got if all(got.get(k, 0) > before.get(k, 0) for k in want) else None

    dropped = poll(counted, 30, "the follower to count each kind of bad message")
    print(f"node {follower} dropped: {dropped}")
    st = ask(address, "status")
    assert st["epoch"] < 2**32, st  # the far-ahead epoch was never promised
    r = httpx.put(f"{cluster.endpoint}/v1/tables/{TABLE}/keys/after-raft", content=b"v",
                  timeout=30, trust_env=False)
    assert r.status_code == 200, r.text


def test_a_forged_heartbeat_cannot_speak_for_a_live_member(cluster: LocalCluster) -> None:
    g = serving_group(cluster)
    victim = next(m["id"] for m in g["members"] if m["id"] != g["leader"])
    meta = active_meta(cluster)
    forged = ask(meta, "heartbeat", node_id=victim, address="127.0.0.1:1",
                 status={"role": "idle", "broken": "forged: the log is damaged"})
    assert forged["code"] == "invalid_argument" and forged["field"] == "node_id", forged
    assert "another connection" in forged["message"], forged

    async def two_ids() -> tuple[dict[str, Any], dict[str, Any]]:
        conn = wire.Connection(meta)
        try:
            first = await conn.request("heartbeat", node_id=4001, address="127.0.0.1:2")
            try:
                await conn.request("heartbeat", node_id=4002, address="127.0.0.1:3")
                second: dict[str, Any] = {"ok": True}
            except errors.RangeKVError as err:
                second = err.to_dict()
            return first, second
        finally:
            await conn.close()

    first, second = asyncio.run(two_ids())
    assert first.get("ok"), first
    assert second["code"] == "invalid_argument" and "4001" in second["message"], second
    time.sleep(1.0)  # a few controller rounds: the victim is still a member, not flagged
    info = cluster_info(cluster.endpoint)
    nodes = {n["id"]: n for n in info["nodes"]}
    assert nodes[victim]["state"] == "member", nodes[victim]
    assert nodes[victim]["address"] == cluster.node_addresses[victim]
    assert victim in [m["id"] for m in info["groups"][0]["members"]]
