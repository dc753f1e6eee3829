"""The ``hostile`` nemesis family: a misbehaving rm and a misbehaving node (issue 16).

Each fault runs an actor for the fault's hold time, as a process of its own on a host of its own:
the namespace ``hostile`` (:data:`HOST`, address ``.250`` of the run's subnet) that
:class:`~rangekv.chaos.netcluster.NetCluster` makes when the family is on. A host of its own,
rather than a spare node's or an rm's namespace, because then nothing it sends can pass for
what that node or rm sends: every id it claims fails the address check (``wire.address_matches``)
as it would from another machine, its connections show in the nodes' logs under an address no
process of the cluster has, and killing it can touch nothing else. (From a member's own address a
forgery would be a Byzantine member, which no part of rangekv claims to survive; the core's own
refusals, which are all there is when every process shares 127.0.0.1, are what the simulator's bad
node plays: ``rangekv.sim.hostile``.)

It sends, at a bounded rate (:data:`RATE_PER_S`, at most :data:`IN_FLIGHT_MAX` at once), a mix
drawn from a random source seeded by the nemesis:

* ``bad-rm`` (:data:`RM_KINDS`), to the group leaders' internal ports: puts and deletes with seq
  ``ff...ff``, a seq an hour ahead, seqs of the wrong length, a field of the wrong type (the
  declared bad examples of ``rangekv.node.requests``), oversized keys and values; unknown ops;
  request ids of the wrong type; frames with a bad checksum or an oversized length header; a
  frame trickled and abandoned; and to the metas, meta ops with a bad field over a body that
  names nothing that exists. Every write carries a key no client uses (the start of a range of
  a workload table, then ``\\x00hostile``), and none is well formed: an ``ok`` is a failure.
* ``bad-node`` (:data:`NODE_KINDS`), to the members: replication frames (``{"t": "raft", "m":
  Msg(...).to_wire()}``) that are malformed, of another type, addressed to another node, from a
  node outside the group, or claiming the leader's or another member's id with a stale epoch, an
  epoch far ahead, two leaders in one epoch, entries that do not follow, acknowledgements beyond
  the log; snapshot offers and chunks with a bad manifest, from a non-peer, or claiming the
  leader; and to the active meta, heartbeats for live members (from the member's registered
  address, from its own, or with a broken status).

Each frame's outcome is recorded (an error code, ``closed``, ``delivered`` for one-way frames,
``ok``), with the frames the targets must have counted: a node counts every replication frame it
drops (status ``refused.messages``) and every request refused before a field is read
(``refused.requests``), the meta every heartbeat refused for its address or its id
(``rangekv_meta_heartbeats_refused``). The nemesis reads those counters before and after
(:class:`Actor`) and :func:`rangekv.chaos.checks.hostile` compares.

Run by the nemesis as ``ip netns exec <ns> python -m rangekv.chaos.hostile --serve`` (one
process for the run, given a plan per fault: :class:`ActorProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import select
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import httpx
import msgpack

from rangekv import errors, fields, sequencer, wire
from rangekv.chaos.netcluster import HOSTILE
from rangekv.limits import FRAME_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX
from rangekv.metadata.requests import OPS as META_OPS
from rangekv.node.requests import OPS as NODE_OPS
from rangekv.replication.malformed import malformed_wire
from rangekv.replication.messages import (
    APPEND,
    APPEND_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    NEW_EPOCH,
    Entry,
    Msg,
)
from rangekv.storage.snapshot import Manifest

HOST = HOSTILE  # the actor's namespace in NetCluster (address .250)
FAULTS = ("bad-rm", "bad-node")
RATE_PER_S = 40.0  # frames (or requests) started per second
IN_FLIGHT_MAX = 16  # at once; a tick with no room sends nothing
REQUEST_TIMEOUT_S = 3.0
RECON_EVERY_S = 1.0  # how often the actor asks the nodes for their status
STATUS_TIMEOUT_S = 0.5
START_TIMEOUT_S = 60.0  # for the actor's process to be ready
FINISH_GRACE_S = 2.0  # past its hold time the actor waits this long for answers
TRICKLE_S = (0.3, 1.5)  # how long a trickled frame dribbles before it is abandoned
SAMPLES_MAX = 3  # answers kept per kind, for the report
FORGED = b"forged by the hostile nemesis"
WORKLOAD_TABLES = ("chaos_reg", "chaos_set")
NO_TABLE = "hostile_none"  # a table name nothing creates: meta bodies name it
NO_NODE = 4_000_000  # a node id no process has

# --- what each actor sends (kind -> weight) ---------------------------------------------------

RM_KINDS: dict[str, float] = {
    "put_seq_max": 4, "delete_seq_max": 2, "put_seq_hour_ahead": 4, "delete_seq_hour_ahead": 2,
    "put_seq_wrong_length": 3, "put_wrong_type": 6, "delete_wrong_type": 2,
    "put_key_oversized": 2, "put_value_oversized": 1, "unknown_op": 3, "bad_request_id": 3,
    "bad_checksum": 2, "oversized_length": 2, "trickled_frame": 1, "meta_bad_field": 5,
}
NODE_KINDS: dict[str, float] = {
    "raft_malformed": 3, "raft_not_raft": 2, "raft_wrong_node": 2, "raft_non_member": 3,
    "raft_stale_epoch": 3, "raft_epoch_far_ahead": 3, "raft_two_leaders": 3,
    "raft_not_following": 3, "raft_ack_beyond_log": 3, "snapshot_bad_manifest": 2,
    "snapshot_non_peer": 2, "snapshot_forged_peer": 2, "heartbeat_member_address": 3,
    "heartbeat_member_here": 2, "heartbeat_bad_status": 2,
}
# refused by the node before any field is read: counted in its status ``refused.requests``
PARSE_KINDS = frozenset({"put_seq_max", "delete_seq_max", "put_seq_wrong_length",
                         "put_wrong_type", "delete_wrong_type", "put_key_oversized",
                         "put_value_oversized"})
# refused by the meta for the address or the id a heartbeat speaks for: counted in
# ``rangekv_meta_heartbeats_refused``
HEARTBEAT_ID_KINDS = frozenset({"heartbeat_member_address", "heartbeat_member_here"})
# An ``ok`` to this one is not a failure of the boundary: a node silent for meta's heartbeat
# timeout may come back from another address (a restarted node that moved), and nothing but
# TLS tells it from an impostor. The actor closes the connection at once, so the real node's
# next heartbeat takes its id back.
MAY_BE_TAKEN = frozenset({"heartbeat_member_here"})

CODES_PARSE = ("invalid_argument", "too_large")


def kinds_of(role: str) -> dict[str, float]:
    return RM_KINDS if role == "bad-rm" else NODE_KINDS


# --- the actor (runs in the hostile namespace) --------------------------------------------------


@dataclass
class Tally:
    """What the actor sent and what came of it."""

    sent: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    raft_delivered: dict[int, int] = field(default_factory=dict)  # node -> one-way frames
    parse_refused: dict[int, int] = field(default_factory=dict)  # node -> counted refusals
    heartbeats_refused: int = 0  # heartbeats the meta must have counted
    accepted: list[str] = field(default_factory=list)  # an ``ok`` (first few)
    pace: dict[str, float] = field(default_factory=dict)  # how the loop went (see Actor.run)

    def record(self, kind: str, outcome: str, sample: str = "") -> None:
        by = self.outcomes.setdefault(kind, {})
        by[outcome] = by.get(outcome, 0) + 1
        kept = self.samples.setdefault(kind, [])
        if sample and len(kept) < SAMPLES_MAX and not any(k.startswith(outcome) for k in kept):
            kept.append(f"{outcome}: {sample[:200]}")
        if outcome == "ok" and len(self.accepted) < 20:
            self.accepted.append(f"{kind}: {sample[:300]}")

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "outcomes": self.outcomes, "samples": self.samples,
                "raft_delivered": {str(k): v for k, v in self.raft_delivered.items()},
                "parse_refused": {str(k): v for k, v in self.parse_refused.items()},
                "heartbeats_refused": self.heartbeats_refused, "accepted": self.accepted,
                "pace": self.pace}


def frame(body: Any, *, checksum_ok: bool = True) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    crc = crc32c.crc32c(payload) ^ (0 if checksum_ok else 0x5A5A5A5A)
    return struct.pack(">II", len(payload), crc) + payload


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Actor:
    """The bad rm or the bad node, for one hold time (see the module docs)."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.role: str = plan["role"]
        self.rng = random.Random(plan["seed"])
        self.until = float(plan["until"])  # wall clock (time.time())
        self.plan_made = float(plan.get("made", time.time()))
        self.rate_per_s = float(plan.get("rate_per_s", RATE_PER_S))
        self.own_ip: str = plan["own_ip"]
        self.nodes: dict[int, str] = {int(k): v for k, v in plan["nodes"].items()}
        self.metas: list[str] = list(plan["metas"])
        info: dict[str, Any] = plan.get("info") or {}
        self.info = info
        active = info.get("meta")
        self.active_meta: str = (active.get("address") if isinstance(active, dict)
                                 and active.get("address") else self.metas[0])
        self.status: dict[int, dict[str, Any]] = {}  # the last recon: node -> status
        self.tally = Tally()
        self.kinds = kinds_of(self.role)

    # --- recon ------------------------------------------------------------------------------

    async def _status(self, node: int) -> tuple[int, dict[str, Any] | None]:
        conn = wire.Connection(self.nodes[node], STATUS_TIMEOUT_S)
        try:
            return node, await conn.request("status", timeout_s=STATUS_TIMEOUT_S)
        except (errors.RangeKVError, OSError):
            return node, None
        finally:
            await conn.close()

    async def recon(self) -> None:
        got = await asyncio.gather(*(self._status(n) for n in sorted(self.nodes)))
        self.status = {n: st for n, st in got if st is not None}

    def leaders(self) -> dict[int, int]:
        """group -> the node that says it leads it at the highest epoch."""
        best: dict[int, tuple[int, int]] = {}
        for node, st in self.status.items():
            group = st.get("group")
            if st.get("role") == "leader" and isinstance(group, int):
                epoch = int(st.get("epoch") or 0)
                if group not in best or epoch > best[group][0]:
                    best[group] = (epoch, node)
        return {g: n for g, (_, n) in best.items()}

    def live_members(self) -> list[int]:
        """Nodes that answered the last recon as a member of a group (leader or follower)."""
        return sorted(n for n, st in self.status.items()
                      if st.get("group") is not None and st.get("role") in ("leader", "follower"))

    def registered(self, node: int) -> str:
        """The address meta has for ``node`` (the cluster's, if the map does not say)."""
        for n in self.info.get("nodes") or []:
            if n.get("id") == node and isinstance(n.get("address"), str):
                return str(n["address"])
        return self.nodes[node]

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        pace = self.tally.pace
        pace["start_late_s"] = round(time.time() - float(self.plan_made), 3)
        await self.recon()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        next_recon = loop.time() + RECON_EVERY_S
        interval_s = 1.0 / self.rate_per_s
        names, weights = list(self.kinds), list(self.kinds.values())
        ticks = no_room = no_target = 0
        began = loop.time()
        next_tick = began
        while time.time() < self.until:
            if loop.time() >= next_recon:
                next_recon = loop.time() + RECON_EVERY_S
                await self.recon()
            ticks += 1
            if len(tasks) >= IN_FLIGHT_MAX:
                no_room += 1
            else:
                kind = self.rng.choices(names, weights)[0]
                send = self._sender(kind)
                if send is None:
                    no_target += 1
                else:
                    self.tally.sent[kind] = self.tally.sent.get(kind, 0) + 1
                    task = loop.create_task(self._guarded(kind, send))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            next_tick = max(next_tick + interval_s, loop.time() - 1.0)  # a fixed rate
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
        pace.update(sending_s=round(loop.time() - began, 3), ticks=ticks, no_room=no_room,
                    no_target=no_target)
        if tasks:
            await asyncio.wait(tasks, timeout=FINISH_GRACE_S + REQUEST_TIMEOUT_S)
        for task in tasks:
            task.cancel()
        return self.tally.to_json()

    async def _guarded(self, kind: str, send: Callable[[], Awaitable[None]]) -> None:
        try:
            await send()
        except asyncio.CancelledError:
            self.tally.record(kind, "unfinished")
            raise
        except Exception as err:  # noqa: BLE001 (the actor's own mistake: reported, not fatal)
            self.tally.record(kind, "actor_error", f"{type(err).__name__}: {err}")

    def _sender(self, kind: str) -> Callable[[], Awaitable[None]] | None:
        """A coroutine function that sends one frame of ``kind``, or None if there is no
        target for it right now (nothing is counted as sent then)."""
        make = getattr(self, "_" + kind)
        sender: Callable[[], Awaitable[None]] | None = make()
        return sender

    # --- sending ----------------------------------------------------------------------------

    async def request(self, kind: str, address: str, body: dict[str, Any], *,
                      node: int | None = None) -> dict[str, Any] | None:
        """Send one request frame on a connection of its own; record the answer."""
        host, port = _split(address)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as err:
            self.tally.record(kind, "unreachable", f"{address}: {err}")
            return None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                writer.write(frame(body))
                await writer.drain()
                reply = await wire.read_frame(reader)
        except TimeoutError:
            self.tally.record(kind, "timeout", address)
            return None
        except (EOFError, OSError, errors.ProtocolError) as err:
            self.tally.record(kind, "closed", f"{address}: {type(err).__name__}")
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if reply.get("ok"):
            self.tally.record(kind, "ok", f"{address} {str(body)[:150]} -> {str(reply)[:150]}")
            return reply
        err = reply.get("error") or {}
        code = str(err.get("code"))
        self.tally.record(kind, code, f"{err.get('field', '')} {err.get('message', '')}")
        if node is not None and kind in PARSE_KINDS and code in CODES_PARSE:
            self.tally.parse_refused[node] = self.tally.parse_refused.get(node, 0) + 1
        if kind in HEARTBEAT_ID_KINDS and code == "invalid_argument" \
                and err.get("field") in ("address", "node_id"):
            self.tally.heartbeats_refused += 1
        return reply

    async def one_way(self, kind: str, node: int, bodies: list[Any]) -> None:
        """Send replication frames (no answer) to ``node`` on a connection of their own."""
        host, port = _split(self.nodes[node])
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as err:
            self.tally.record(kind, "unreachable", f"node {node}: {err}")
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                writer.write(b"".join(frame(b) for b in bodies))
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as err:
            self.tally.record(kind, "closed", f"node {node}: {type(err).__name__}")
            return
        self.tally.record(kind, "delivered")
        self.tally.raft_delivered[node] = self.tally.raft_delivered.get(node, 0) + len(bodies)

    async def raw(self, kind: str, node: int, data: bytes, *, trickle: bool = False) -> None:
        """Bytes that are no well-formed frame: the node must close the connection and
        answer nothing (a trickled frame is abandoned by the actor first)."""
        host, port = _split(self.nodes[node])
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as err:
            self.tally.record(kind, "unreachable", f"node {node}: {err}")
            return
        try:
            if trickle:
                pieces = self.rng.randint(3, 12)
                pause_s = self.rng.uniform(*TRICKLE_S) / pieces
                step = max(1, len(data) // (pieces + 1))
                for i in range(pieces):  # never the whole frame
                    writer.write(data[i * step:(i + 1) * step])
                    await writer.drain()
                    await asyncio.sleep(pause_s)
                self.tally.record(kind, "abandoned", f"node {node}: {pieces * step} of "
                                  f"{len(data)} bytes")
                return
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                rest = await reader.read(65536)
            self.tally.record(kind, "closed" if not rest else "answered",
                              f"node {node}: {rest[:100]!r}" if rest else f"node {node}")
        except TimeoutError:
            self.tally.record(kind, "timeout", f"node {node}: the connection stayed open")
        except OSError as err:
            self.tally.record(kind, "closed", f"node {node}: {type(err).__name__}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # --- the bad rm -------------------------------------------------------------------------

    def _write_target(self) -> tuple[int, dict[str, Any]] | None:
        """(leader, a put body that is well formed but for what the kind spoils): a range of
        a workload table that the leader's group serves, a key in it no client uses."""
        leaders = self.leaders()
        ranges = [r for r in self.info.get("ranges") or []
                  if r.get("table") in WORKLOAD_TABLES and r.get("group") in leaders]
        if not ranges:
            if not leaders:
                return None
            node = self.rng.choice(sorted(leaders.values()))
            return node, {"table_id": 1, "key": b"\x00hostile", "value": b"x",
                          "seq": sequencer.make(time.time_ns(), 1, NO_NODE)}
        r = self.rng.choice(ranges)
        key = bytes.fromhex(r.get("start_hex") or "") + b"\x00hostile"
        body = {"table_id": int(r["table_id"]), "key": key, "value": FORGED,
                "seq": sequencer.make(time.time_ns(), self.rng.randrange(1 << 32), NO_NODE)}
        return leaders[r["group"]], body

    def _write(self, kind: str, op: str, spoil: Callable[[dict[str, Any]], None]
               ) -> Callable[[], Awaitable[None]] | None:
        target = self._write_target()
        if target is None:
            return None
        node, body = target
        if op == "delete":
            body.pop("value")
        spoil(body)

        async def send() -> None:
            await self.request(kind, self.nodes[node], {"t": "req", "id": 1, "op": op, **body},
                               node=node)
        return send

    def _put_seq_max(self) -> Callable[[], Awaitable[None]] | None:
        return self._write("put_seq_max", "put", lambda b: b.update(seq=sequencer.MAX))

    def _delete_seq_max(self) -> Callable[[], Awaitable[None]] | None:
        return self._write("delete_seq_max", "delete", lambda b: b.update(seq=sequencer.MAX))

    def _hour_ahead(self) -> bytes:
        return sequencer.make(time.time_ns() + 3600 * 10**9, self.rng.randrange(1 << 32),
                              NO_NODE)

    def _put_seq_hour_ahead(self) -> Callable[[], Awaitable[None]] | None:
        return self._write("put_seq_hour_ahead", "put",
                           lambda b: b.update(seq=self._hour_ahead()))

    def _delete_seq_hour_ahead(self) -> Callable[[], Awaitable[None]] | None:
        return self._write("delete_seq_hour_ahead", "delete",
                           lambda b: b.update(seq=self._hour_ahead()))

    def _put_seq_wrong_length(self) -> Callable[[], Awaitable[None]] | None:
        bad = self.rng.choice([b"\x01" * 15, b"\x01" * 17, b"", "00" * 16, b"\xff" * 32])
        return self._write("put_seq_wrong_length", "put", lambda b: b.update(seq=bad))

    def _wrong_type(self, kind: str, op: str) -> Callable[[], Awaitable[None]] | None:
        spec = NODE_OPS[op]
        cases = [(name, bad) for name, f in spec.fields.items() for bad, code in f.bad
                 if code == fields.INVALID and len(repr(bad)) < 4096]
        name, bad = self.rng.choice(cases)
        return self._write(kind, op, lambda b: b.update({name: bad}))

    def _put_wrong_type(self) -> Callable[[], Awaitable[None]] | None:
        return self._wrong_type("put_wrong_type", "put")

    def _delete_wrong_type(self) -> Callable[[], Awaitable[None]] | None:
        return self._wrong_type("delete_wrong_type", "delete")

    def _put_key_oversized(self) -> Callable[[], Awaitable[None]] | None:
        size = self.rng.randint(KEY_BYTES_MAX + 1, 4 * KEY_BYTES_MAX)
        return self._write("put_key_oversized", "put", lambda b: b.update(key=b"k" * size))

    def _put_value_oversized(self) -> Callable[[], Awaitable[None]] | None:
        size = VALUE_BYTES_MAX + self.rng.randint(1, 4096)
        return self._write("put_value_oversized", "put", lambda b: b.update(value=b"v" * size))

    def _any_node(self) -> int | None:
        up = sorted(self.status) or sorted(self.nodes)
        return self.rng.choice(up) if up else None

    def _unknown_op(self) -> Callable[[], Awaitable[None]] | None:
        node = self._any_node()
        if node is None:
            return None
        op = self.rng.choice(["nonsense", 5, None, "x" * 10_000, "put ", b"put", ["put"]])

        async def send() -> None:
            await self.request("unknown_op", self.nodes[node], {"t": "req", "id": 7, "op": op})
        return send

    def _bad_request_id(self) -> Callable[[], Awaitable[None]] | None:
        node = self._any_node()
        if node is None:
            return None
        bad = self.rng.choice(["seven", [1], -5, 2**64 - 1, 1.5, None, True, {"id": 1}])

        async def send() -> None:
            reply = await self.request("bad_request_id", self.nodes[node],
                                       {"t": "req", "id": bad, "op": "status"})
            if reply is not None and reply.get("id") is not None:
                self.tally.record("bad_request_id", "answered_with_an_id", str(reply)[:200])
        return send

    def _bad_checksum(self) -> Callable[[], Awaitable[None]] | None:
        node = self._any_node()
        if node is None:
            return None
        body = {"t": "req", "id": 9, "op": "status"}
        return lambda: self.raw("bad_checksum", node, frame(body, checksum_ok=False))

    def _oversized_length(self) -> Callable[[], Awaitable[None]] | None:
        node = self._any_node()
        if node is None:
            return None
        length = self.rng.choice([FRAME_BYTES_MAX + 1, 2**31, 2**32 - 1])
        data = struct.pack(">II", length, 0) + b"\x00" * self.rng.randint(0, 64)
        return lambda: self.raw("oversized_length", node, data)

    def _trickled_frame(self) -> Callable[[], Awaitable[None]] | None:
        target = self._write_target()
        if target is None:
            return None
        node, body = target
        body["seq"] = sequencer.MAX  # were it ever finished, it would still be refused
        data = frame({"t": "req", "id": 3, "op": "put", **body})
        return lambda: self.raw("trickled_frame", node, data, trickle=True)

    def _meta_bad_field(self) -> Callable[[], Awaitable[None]] | None:
        # bodies that name nothing that exists: were a bad field ever let through, the op
        # would still find no such table or node
        bases: dict[str, dict[str, Any]] = {
            "create_table": {"name": NO_TABLE}, "drop_table": {"name": NO_TABLE},
            "split_range": {"name": NO_TABLE, "at": b"m", "to": "auto"},
            "move_range": {"name": NO_TABLE, "at": b"m", "to": 1},
            "remove_node": {"node_id": NO_NODE},
        }
        op = self.rng.choice(sorted(bases))
        cases: list[tuple[str, Any]] = [(name, bad) for name, f in META_OPS[op].fields.items()
                                        for bad, _ in f.bad]
        cases += [(name, None) for name, f in META_OPS[op].fields.items() if not f.optional]
        name, bad = self.rng.choice(cases)
        body = dict(bases[op])
        if bad is None:
            body.pop(name, None)  # a required field missing
        else:
            body[name] = bad
        meta = self.rng.choice(self.metas)

        async def send() -> None:
            await self.request("meta_bad_field", meta, {"t": "req", "id": 2, "op": op, **body})
        return send

    # --- the bad node -----------------------------------------------------------------------

    def _victim(self) -> tuple[int, dict[str, Any], list[int], int | None] | None:
        """A live member, its status, its group's members and its group's leader."""
        live = self.live_members()
        if not live:
            return None
        node = self.rng.choice(live)
        st = self.status[node]
        members = [m for m in st.get("members") or [] if isinstance(m, int)]
        leader = self.leaders().get(st.get("group"))  # type: ignore[arg-type]
        return node, st, members, leader

    def _raft(self, kind: str, make: Callable[[int, dict[str, Any], list[int], int | None],
                                              list[Any] | None]
              ) -> Callable[[], Awaitable[None]] | None:
        victim = self._victim()
        if victim is None:
            return None
        node = victim[0]
        bodies = make(*victim)
        if not bodies:
            return None
        return lambda: self.one_way(kind, node, bodies)

    def _claim(self, node: int, members: list[int], leader: int | None) -> int:
        """A member id other than ``node``'s own: the leader's, or another member's."""
        others = [m for m in members if m != node]
        if leader is not None and leader != node and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(others) if others else (leader or node)

    @staticmethod
    def _msgs(*msgs: Msg) -> list[Any]:
        return [{"t": "raft", "m": m.to_wire()} for m in msgs]

    def _raft_malformed(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            epoch = int(st.get("epoch") or 0)
            return [{"t": "raft", "m": malformed_wire(self.rng, self._claim(node, members,
                                                                            leader),
                                                      node, epoch)}]
        return self._raft("raft_malformed", make)

    def _raft_not_raft(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            return [{"t": self.rng.choice(["vote", "rep", "RAFT", 7, None]),
                     "m": Msg(HEARTBEAT, leader or node, node, 1).to_wire()}]
        return self._raft("raft_not_raft", make)

    def _raft_wrong_node(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            to = self.rng.choice([*(m for m in members if m != node), NO_NODE])
            return self._msgs(Msg(HEARTBEAT, leader or node, to, int(st.get("epoch") or 0)))
        return self._raft("raft_wrong_node", make)

    def _raft_non_member(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            spares = [n for n in self.nodes if n not in members]
            frm = self.rng.choice([*spares, NO_NODE, node])  # (its own id: not a peer either)
            epoch = int(st.get("epoch") or 0)
            return self._msgs(Msg(self.rng.choice([NEW_EPOCH, HEARTBEAT]), frm, node,
                                  epoch + self.rng.choice([0, 1])))
        return self._raft("raft_non_member", make)

    def _raft_stale_epoch(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any] | None:
            epoch = int(st.get("epoch") or 0)
            if epoch < 1:
                return None
            e = self.rng.randrange(epoch)
            last = int(st.get("last_index") or 0)
            frm = self._claim(node, members, leader)
            mtype = self.rng.choice([APPEND, HEARTBEAT, NEW_EPOCH, APPEND_RESP, HEARTBEAT_RESP])
            entries = [Entry(e, last + 1, FORGED)] if mtype == APPEND else []
            return self._msgs(Msg(mtype, frm, node, e, index=last, log_epoch=e,
                                  commit=last + 1, entries=entries))
        return self._raft("raft_stale_epoch", make)

    def _raft_epoch_far_ahead(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            epoch = int(st.get("epoch") or 0)
            far = self.rng.choice([epoch + 10**6, 2**40, 2**63 - 1, 2**64 - 1])
            last = int(st.get("last_index") or 0)
            return self._msgs(Msg(self.rng.choice([NEW_EPOCH, APPEND, HEARTBEAT]),
                                  self._claim(node, members, leader), node, far, index=last,
                                  log_epoch=int(st.get("last_epoch") or 0)))
        return self._raft("raft_epoch_far_ahead", make)

    def _raft_two_leaders(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any] | None:
            rivals = [m for m in members if m not in (node, leader)]
            if not rivals:
                return None
            epoch = int(st.get("epoch") or 0)
            last = int(st.get("last_index") or 0)
            frm = self.rng.choice(rivals)
            return self._msgs(Msg(HEARTBEAT, frm, node, epoch, commit=last + 1),
                              Msg(APPEND, frm, node, epoch, index=last,
                                  log_epoch=int(st.get("last_epoch") or 0), commit=last + 1,
                                  entries=[Entry(epoch, last + 1, FORGED)]))
        return self._raft("raft_two_leaders", make)

    def _raft_not_following(self) -> Callable[[], Awaitable[None]] | None:
        def make(node: int, st: dict[str, Any], members: list[int],
                 leader: int | None) -> list[Any]:
            epoch = int(st.get("epoch") or 0)
            prev = int(st.get("last_index") or 0)
            choices = [
                [Entry(epoch, prev + 1, FORGED), Entry(epoch, prev + 3, FORGED)],  # a gap
                [Entry(epoch + 1, prev + 1, FORGED)],  # above its leader's epoch
            ]
            if epoch >= 1:  # epochs that decrease
                choices.append([Entry(epoch, prev + 1, FORGED),
                                Entry(epoch - 1, prev + 2, FORGED)])
            entries = self.rng.choice(choices)
            return self._msgs(Msg(APPEND, self._claim(node, members, leader), node, epoch,
                                  index=prev, log_epoch=0, commit=prev, entries=entries))
        return self._raft("raft_not_following", make)

    def _raft_ack_beyond_log(self) -> Callable[[], Awaitable[None]] | None:
        leaders = self.leaders()
        if not leaders:
            return None
        node = self.rng.choice(sorted(leaders.values()))
        st = self.status[node]
        members = [m for m in st.get("members") or [] if m != node]
        if not members:
            return None
        last = int(st.get("last_index") or 0)
        bodies = self._msgs(Msg(APPEND_RESP, self.rng.choice(members), node,
                                int(st.get("epoch") or 0),
                                index=last + self.rng.randrange(10**6, 10**9)))
        return lambda: self.one_way("raft_ack_beyond_log", node, bodies)

    def _snapshot(self, kind: str, frm_of: Callable[[int, list[int], int | None], int],
                  manifest_of: Callable[[int], Any]) -> Callable[[], Awaitable[None]] | None:
        victim = self._victim()
        if victim is None:
            return None
        node, st, members, leader = victim
        epoch = int(st.get("epoch") or 0)
        index = int(st.get("commit_index") or 0) + 10
        frm = frm_of(node, members, leader)
        common = {"t": "req", "id": 4, "frm": frm, "epoch": epoch, "index": index}
        op = self.rng.choice(["snapshot_begin", "snapshot_begin", "snapshot_chunk",
                              "snapshot_end", "snapshot_abort"])
        if kind == "snapshot_bad_manifest":
            op = "snapshot_begin"
        if op == "snapshot_begin":
            body = {**common, "op": op, "manifest": manifest_of(epoch)}
        elif op == "snapshot_chunk":
            data = FORGED * 4
            body = {**common, "op": op, "file": 0, "offset": 0, "data": data,
                    "crc": crc32c.crc32c(data)}
        else:
            body = {**common, "op": op}

        async def send() -> None:
            await self.request(kind, self.nodes[node], body, node=node)
        return send

    def _good_manifest(self, epoch: int) -> Any:
        return Manifest(10**6, epoch, (("CURRENT", 16, 0),), "0" * 64).to_wire()

    def _snapshot_bad_manifest(self) -> Callable[[], Awaitable[None]] | None:
        def bad(epoch: int) -> Any:
            good = self._good_manifest(epoch)
            return self.rng.choice([
                "m", {"format": 1}, {**good, "format": 2}, {**good, "index": -1},
                {**good, "files": []}, {**good, "files": [["../etc", 1, 0]]},
                {**good, "files": [["b", 1, 0], ["a", 1, 0]]}, {**good, "digest": "xyz"},
                {**good, "files": [["a", 1, 2**33]]}, [good],
            ])
        return self._snapshot("snapshot_bad_manifest",
                              lambda n, m, leader: leader or self._claim(n, m, leader), bad)

    def _snapshot_non_peer(self) -> Callable[[], Awaitable[None]] | None:
        def frm(node: int, members: list[int], leader: int | None) -> int:
            spares = [n for n in self.nodes if n not in members]
            return self.rng.choice([*spares, NO_NODE, node])
        return self._snapshot("snapshot_non_peer", frm, self._good_manifest)

    def _snapshot_forged_peer(self) -> Callable[[], Awaitable[None]] | None:
        return self._snapshot("snapshot_forged_peer",
                              lambda n, m, leader: leader if leader not in (None, n)
                              else self._claim(n, m, leader), self._good_manifest)

    def _heartbeat(self, kind: str, body_of: Callable[[int, dict[str, Any]], dict[str, Any]]
                   ) -> Callable[[], Awaitable[None]] | None:
        live = self.live_members()
        if not live:
            return None
        node = self.rng.choice(live)
        body = {"t": "req", "id": 5, "op": "heartbeat", "node_id": node,
                **body_of(node, self.status[node])}

        async def send() -> None:
            reply = await self.request(kind, self.active_meta, body)
            err = (reply or {}).get("error") or {}
            hint = err.get("active_hint")
            if err.get("code") == "not_active" and isinstance(hint, str) and hint:
                self.active_meta = hint
        return send

    @staticmethod
    def _forged_status(st: dict[str, Any]) -> dict[str, Any]:
        return {"group": st.get("group"), "epoch": int(st.get("epoch") or 0), "role": "idle",
                "broken": "forged by the hostile nemesis: the log is damaged"}

    def _heartbeat_member_address(self) -> Callable[[], Awaitable[None]] | None:
        # the member's own registered address, from elsewhere: the address check refuses it
        return self._heartbeat("heartbeat_member_address", lambda n, st: {
            "address": self.registered(n), "status": self._forged_status(st)})

    def _heartbeat_member_here(self) -> Callable[[], Awaitable[None]] | None:
        # the member "moved here": refused while it heartbeats live on its own connection
        def body(node: int, st: dict[str, Any]) -> dict[str, Any]:
            port = _split(self.registered(node))[1]
            return {"address": f"{self.own_ip}:{port}", "status": self._forged_status(st)}
        return self._heartbeat("heartbeat_member_here", body)

    def _heartbeat_bad_status(self) -> Callable[[], Awaitable[None]] | None:
        bad = [b for b, _ in META_OPS["heartbeat"].fields["status"].bad]
        bad += [{"epoch": 1.5}, {"role": "leader ", "broken": "x"}, {"applied_index": -3},
                {"group": 0}, "idle"]
        status = self.rng.choice(bad)
        return self._heartbeat("heartbeat_bad_status", lambda n, st: {
            "address": self.registered(n), "status": status})


def run_plan(plan_path: Path, out_path: Path) -> None:
    plan = json.loads(plan_path.read_text())
    actor = Actor(plan)
    result = asyncio.run(actor.run())
    result["role"] = actor.role
    out_path.write_text(json.dumps(result, indent=1, default=repr) + "\n")


def main(argv: list[str]) -> int:
    """``python -m rangekv.chaos.hostile PLAN OUT``: run the actor the plan describes and write
    what it sent and what came of it to OUT (JSON). ``--serve``: read ``PLAN OUT`` lines from
    stdin, run each, answer ``done`` on stdout; until stdin ends."""
    if argv == ["--serve"]:
        print("ready", flush=True)  # (imports done: see ActorProcess.ensure)
        for line in sys.stdin:
            plan_path, out_path = line.split()
            run_plan(Path(plan_path), Path(out_path))
            print("done", flush=True)
        return 0
    if len(argv) != 2:
        print("usage: python -m rangekv.chaos.hostile PLAN.json OUT.json | --serve",
              file=sys.stderr)
        return 2
    run_plan(Path(argv[0]), Path(argv[1]))
    return 0


# --- the nemesis side (runs in the chaos process) -----------------------------------------------

# (a counter: the exposition names it ..._total)
_META_REFUSED = re.compile(
    r"^rangekv_meta_heartbeats_refused(?:_total)?(?:\{[^}]*\})?\s+([0-9.e+]+)\s*$", re.MULTILINE)


async def _node_refused(address: str) -> dict[str, Any] | None:
    conn = wire.Connection(address, STATUS_TIMEOUT_S * 2)
    try:
        st = await conn.request("status", timeout_s=STATUS_TIMEOUT_S * 2)
    except (errors.RangeKVError, OSError):
        return None
    finally:
        await conn.close()
    refused = st.get("refused")
    return refused if isinstance(refused, dict) else None


def counters(cluster: Any) -> dict[str, Any]:
    """What the cluster's boundaries have refused so far: per node its status ``refused``
    counts (summed by kind: requests, messages, connections; None if it did not answer), and
    per meta ``rangekv_meta_heartbeats_refused`` (None if it did not answer)."""
    async def ask_all() -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(_node_refused(a)
                                           for a in cluster.node_addresses.values())))

    nodes: dict[str, dict[str, int] | None] = {}
    for node, refused in zip(cluster.node_addresses, asyncio.run(ask_all()), strict=True):
        nodes[str(node)] = None if refused is None else {
            what: sum(int(v) for v in (refused.get(what) or {}).values())
            for what in ("requests", "messages", "connections")}
    metas: dict[str, int | None] = {}
    urls = cluster.metrics_urls
    for name in sorted(u for u in urls if u.startswith("meta-")):
        try:
            text = httpx.get(urls[name], timeout=2.0, trust_env=False).text
            m = _META_REFUSED.search(text)
            metas[name] = int(float(m.group(1))) if m else None
        except httpx.HTTPError:
            metas[name] = None
    return {"nodes": nodes, "metas": metas}


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How much each counter went up; a node or meta that did not answer, or whose counters
    went down (it restarted), is listed in ``unmeasured`` instead."""
    out: dict[str, Any] = {"requests": {}, "messages": {}, "connections": {}, "heartbeats": 0,
                           "metas_measured": 0, "unmeasured": []}
    for node, b in before["nodes"].items():
        a = after["nodes"].get(node)
        if a is None or b is None or any(a[k] < b[k] for k in b):
            out["unmeasured"].append(f"node {node}")
            continue
        for what in ("requests", "messages", "connections"):
            out[what][node] = a[what] - b[what]
    for meta, b in before["metas"].items():
        a = after["metas"].get(meta)
        if a is None or b is None or a < b:
            out["unmeasured"].append(meta)
            continue
        out["heartbeats"] += a - b
        out["metas_measured"] += 1
    return out


class ActorProcess:
    """The actor's process in the hostile namespace (``--serve``): started once, before the
    faults (its start-up takes seconds on a busy machine, which would otherwise come off each
    fault's hold time), and given one plan per fault. Ended, by its pid, with the run."""

    def __init__(self, cluster: Any, work_dir: Path) -> None:
        self.cluster = cluster
        self.work_dir = work_dir
        self.log = work_dir / "actor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> None:
        """Start the process unless it runs, and wait until it is ready (its imports cost a
        second of CPU: not while a warm-up or a fault is being measured)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.cluster.net.exec_prefix(HOST), sys.executable, "-m",
                 "rangekv.chaos.hostile", "--serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        if not ready or self.proc.stdout.readline().strip() != b"ready":
            self.kill()
            raise RuntimeError(f"the hostile actor did not start: {self.tail()}")

    def submit(self, plan_path: Path, out_path: Path) -> None:
        self.ensure()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{plan_path} {out_path}\n".encode())
        self.proc.stdin.flush()

    def wait_done(self, timeout_s: float) -> str | None:
        """None once the plan submitted last is done; else what went wrong (the process is
        then killed: the next plan starts a new one)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else b""
        if line.strip() == b"done":
            return None
        why = ("overran its hold time" if not ready else
               f"exited {proc.poll()}: {self.tail()}")
        self.kill()
        return f"the actor {why}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """End the process: stdin closed, then killed by its pid if it does not exit."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=FINISH_GRACE_S + REQUEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class Run:
    """One hostile fault: a plan for the actor's process, and the counters read before it
    starts and after it ends."""

    def __init__(self, process: ActorProcess, role: str, seed: int, hold_s: float,
                 info: dict[str, Any], number: int) -> None:
        assert role in FAULTS, role
        self.process = process
        self.cluster = process.cluster
        self.role = role
        self.seed = seed
        self.hold_s = hold_s
        self.info = info
        self.before: dict[str, Any] = {}
        self.until = 0.0
        work_dir = process.work_dir
        self.plan = work_dir / f"{number:03d}-{role}-plan.json"
        self.out = work_dir / f"{number:03d}-{role}.json"

    def start(self) -> str:
        c = self.cluster
        self.process.ensure()
        self.before = counters(c)
        self.until = time.time() + self.hold_s
        plan = {"role": self.role, "seed": self.seed, "until": self.until, "made": time.time(),
                "rate_per_s": RATE_PER_S, "own_ip": c.net.ip(HOST),
                "nodes": {str(k): v for k, v in c.node_addresses.items()},
                "metas": list(c.meta_addresses.values()), "info": self.info}
        self.plan.write_text(json.dumps(plan, default=repr))
        self.process.submit(self.plan, self.out)
        return (f"{self.role} from {c.net.ip(HOST)} for {self.hold_s:.1f} s, "
                f"{RATE_PER_S:g} frames/s (seed {self.seed})")

    def finish(self, settle_s: float = 0.5) -> dict[str, Any]:
        """Wait for the actor (killed, by its pid, if it overruns), let the targets read what
        it sent, and return its record: what it sent, the answers, the counters' deltas."""
        record: dict[str, Any] = {"role": self.role, "seed": self.seed,
                                  "log": str(self.process.log)}
        error = self.process.wait_done(max(0.0, self.until - time.time()) + FINISH_GRACE_S
                                       + REQUEST_TIMEOUT_S + 10.0)
        if error is not None:
            record["error"] = error
        time.sleep(settle_s)
        after = counters(self.cluster)
        if self.out.exists():
            record.update(json.loads(self.out.read_text()))
        elif "error" not in record:
            record["error"] = "the actor wrote no result"
        record["refused"] = deltas(self.before, after)
        return record


def summary(record: dict[str, Any]) -> str:
    """One line for the report: what was sent, what the counters showed."""
    sent = record.get("sent") or {}
    ref = record.get("refused") or {}
    return (f"sent {sum(sent.values())} ({', '.join(f'{k} {v}' for k, v in sorted(sent.items()))})"
            f"; refused: requests +{sum((ref.get('requests') or {}).values())}, messages "
            f"+{sum((ref.get('messages') or {}).values())}, connections "
            f"+{sum((ref.get('connections') or {}).values())}, heartbeats "
            f"+{ref.get('heartbeats', 0)}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
