"""The meta process against etcd, with fake nodes speaking the wire protocol.

A ``FakeNode`` heartbeats the meta like a real node would, takes up an epoch the moment it is
told to campaign (if ``lead``), and answers ``add_range`` / ``drop_table`` when it leads and
``answer`` is set. The meta runs in-process (``MetaService``) so the tests can stop it, crash it
(``stop(revoke=False)``) and look at its view.

Most tests run twice (``backend``): against a real etcd, and against etcd in memory
(``rangekv.metadata.memory``, what the simulator uses), which must behave the same for the meta.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rangekv import errors, model, wire
from rangekv.controller.health import Beat
from rangekv.controller.leader import choose_leader
from rangekv.metadata.etcd import EtcdClient
from rangekv.metadata.memory import MemoryEtcd, MemoryKV
from rangekv.metadata.service import MetaConfig, MetaService, parse_args
from rangekv.metadata.store import MetaStore
from rangekv.model import Group
from rangekv.model.status import NodeStatus
from rangekv.testing.procs import free_port, start_etcd, wait_until

pytestmark = pytest.mark.integration

Backend = str | MemoryKV  # a real etcd's URL, or etcd in memory


@pytest.fixture(params=["etcd", "memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "etcd":
        url: str = request.getfixturevalue("etcd_endpoint")
        return url
    return MemoryKV()


# -- helpers ------------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class FakeNode:
    def __init__(
        self,
        node_id: int,
        metas: list[str],
        *,
        last_index: int = 0,
        lead: bool = True,
        answer: bool = True,
        interval_s: float = 0.1,
    ) -> None:
        self.id = node_id
        self.metas = list(metas)
        self.meta = self.metas[0]
        self.lead = lead
        self.answer = answer
        self.interval_s = interval_s
        self.paused = False
        self.stopped = False
        self.promised = 0
        self.role = "idle"
        self.leader_epoch = 0
        self.last_epoch = 0
        self.last_index = last_index
        self.group: dict[str, Any] | None = None
        self.campaigns: list[int] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.last_error: errors.RangeKVError | None = None
        self.address = ""
        self._conns: dict[str, wire.Connection] = {}
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[Any]] = set()

    async def start(self) -> FakeNode:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        for conn in self._conns.values():
            await conn.close()

    def status(self) -> dict[str, Any]:
        return {
            "group": self.group["id"] if self.group else None,
            "epoch": self.promised,
            "role": self.role,
            "leader_epoch": self.leader_epoch,
            "last_epoch": self.last_epoch,
            "last_index": self.last_index,
            "commit_index": self.last_index,
            "applied_index": self.last_index,
            "broken": False,
        }

    async def beat(self) -> dict[str, Any]:
        conn = self._conns.get(self.meta)
        if conn is None:
            conn = self._conns[self.meta] = wire.Connection(self.meta)
        reply = await conn.request(
            "heartbeat", timeout_s=3.0, node_id=self.id, address=self.address, status=self.status()
        )
        self.group = reply["group"]
        campaign = reply["campaign"]
        if campaign is not None:
            self.campaigns.append(campaign)
            if self.lead and campaign > self.promised:
                self.promised = self.leader_epoch = self.last_epoch = campaign
                self.role = "leader"
        elif self.group and self.group["leader"] != self.id and self.role == "leader":
            self.role = "follower"
        return reply

    async def _loop(self) -> None:
        while not self.stopped:
            if not self.paused:
                try:
                    await self.beat()
                    self.last_error = None
                except errors.NotActive as exc:
                    self.last_error = exc
                    hint = exc.details.get("active_hint")
                    if hint:
                        self.meta = hint
                except errors.RangeKVError as exc:  # meta down: try the next one
                    self.last_error = exc
                    self.meta = (
                        self.metas[(self.metas.index(self.meta) + 1) % len(self.metas)]
                        if self.meta in self.metas
                        else self.metas[0]
                    )
            await asyncio.sleep(self.interval_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await wire.serve_connection(reader, writer, self._on_request,
                                        lambda body, conn: None)
        finally:
            self._serving.discard(task)

    async def _on_request(self, body: dict[str, Any], conn: Any = None) -> dict[str, Any]:
        op = body["op"]
        fields = {k: v for k, v in body.items() if k not in ("t", "id", "op")}
        self.calls.append((op, fields))
        if not self.answer:
            raise errors.Unavailable("fake node is not serving")
        if self.role != "leader":
            raise errors.NotLeader("fake node is not the leader", leader_hint=None)
        return {}


class Cluster:
    """Metas and fake nodes of one test; everything is stopped by ``close``."""

    def __init__(self, etcd: Backend, **config: Any) -> None:
        self.etcd = etcd
        self.config = config
        self.metas: list[MetaService] = []
        self.nodes: dict[int, FakeNode] = {}
        self.client: EtcdClient | MemoryEtcd = (
            EtcdClient([etcd]) if isinstance(etcd, str) else MemoryEtcd(etcd))
        self.store = MetaStore(self.client)

    async def meta(self, meta_id: int = 1, **config: Any) -> MetaService:
        endpoint = self.etcd if isinstance(self.etcd, str) else "memory"
        cfg = MetaConfig(
            id=meta_id, listen="127.0.0.1:0", etcd=(endpoint,), **{**self.config, **config}
        )
        svc = MetaService(cfg, etcd=None if isinstance(self.etcd, str) else MemoryEtcd(self.etcd))
        await svc.start()
        self.metas.append(svc)
        return svc

    async def node(self, node_id: int, **kw: Any) -> FakeNode:
        node = await FakeNode(node_id, [m.address for m in self.metas], **kw).start()
        self.nodes[node_id] = node
        return node

    async def close(self) -> None:
        try:
            async with asyncio.timeout(20):
                for node in self.nodes.values():
                    await node.stop()
                for svc in self.metas:
                    await svc.stop()
        except TimeoutError:
            for task in asyncio.all_tasks():  # show what hangs
                task.print_stack(file=sys.stderr)
            raise
        finally:
            await self.client.close()

    async def group(self) -> Group | None:
        view, _ = await self.store.load()
        return next(iter(view.groups.values()), None)


def scenario(etcd: Backend, body: Callable[[Cluster], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        cluster = Cluster(etcd, **config)
        try:
            await body(cluster)
        finally:
            await cluster.close()

    asyncio.run(main())


async def leader_serving(
    c: Cluster, meta: MetaService, timeout_s: float = 8.0, epoch_min: int = 1
) -> Group:
    """Wait until the group has a recorded leader that reports serving its epoch."""

    def ready() -> bool:
        g = next(iter(meta.view.groups.values()), None)
        return (
            g is not None
            and g.leader is not None
            and g.epoch >= epoch_min
            and g.leader in c.nodes
            and c.nodes[g.leader].role == "leader"
            and c.nodes[g.leader].leader_epoch == g.epoch
        )

    await eventually(ready, timeout_s, "a serving group leader")
    return next(iter(meta.view.groups.values()))


async def request(meta: MetaService, op: str, **fields: Any) -> dict[str, Any]:
    conn = wire.Connection(meta.address)
    try:
        return await conn.request(op, timeout_s=30.0, **fields)
    finally:
        await conn.close()


# -- pure decisions -----------------------------------------------------------------------------


def _beat(at_s: float, last_epoch: int = 0, last_index: int = 0, group: int | None = 7,
          **status: Any) -> Beat:
    """A heartbeat (by default of a member of group 7, about that group's log)."""
    return Beat(
        at_s, "127.0.0.1:1",
        NodeStatus(last_epoch=last_epoch, last_index=last_index, group=group, **status),
    )


def test_choose_leader_rules() -> None:
    g = Group(7, epoch=3, leader=1, members=(1, 2, 3))
    timing = dict(
        heartbeat_timeout_s=1.0, campaign_timeout_s=3.0, judge_from_s=0.0, campaign_since_s=0.0
    )
    serving = dict(role="leader", leader_epoch=3)
    now = 100.0
    # a serving, live leader is kept
    beats = {1: _beat(now, 3, 10, **serving), 2: _beat(now, 3, 10), 3: _beat(now, 3, 10)}
    assert choose_leader(g, beats, now, **timing).action == "keep"
    # too early to judge after becoming active
    early = choose_leader(g, {}, now, **{**timing, "judge_from_s": now - 0.5})
    assert early.action == "wait"
    # dead leader: most caught-up live member wins (epoch first, then index, then lowest id)
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 9), 3: _beat(now, 3, 12)}
    choice = choose_leader(g, beats, now, **timing)
    assert (choice.action, choice.leader, choice.epoch) == ("elect", 3, 4)
    assert "not live" in choice.reason
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 12), 3: _beat(now, 2, 99)}
    assert choose_leader(g, beats, now, **timing).leader == 2
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 12), 3: _beat(now, 3, 12)}
    assert choose_leader(g, beats, now, **timing).leader == 2
    # a broken log is never chosen
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 12), 3: _beat(now, 3, 20, broken=True)}
    assert choose_leader(g, beats, now, **timing).leader == 2
    # no majority: no election
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 12), 3: _beat(now - 5)}
    stuck = choose_leader(g, beats, now, **timing)
    assert stuck.action == "stuck" and "majority" in stuck.reason
    # a leader that does not take up its epoch is replaced after the campaign timeout, by
    # someone else, and the epoch clears every epoch a live member promised
    beats = {1: _beat(now, 3, 50, epoch=5), 2: _beat(now, 3, 12), 3: _beat(now, 3, 11)}
    assert choose_leader(g, beats, now, **{**timing, "campaign_since_s": now - 1}).action == "keep"
    late = choose_leader(g, beats, now, **{**timing, "campaign_since_s": now - 4})
    assert (late.action, late.leader, late.epoch) == ("elect", 2, 6)
    # a group without a leader gets its first one
    fresh = Group(8, members=(4, 5, 6))
    beats = {4: _beat(now, group=8), 5: _beat(now, 0, 1, group=8), 6: _beat(now, group=8)}
    first = choose_leader(fresh, beats, now, **timing)
    assert (first.action, first.leader, first.epoch) == ("elect", 5, 1)
    # a member whose heartbeat is about another group's log (a spare that was there, not told
    # of this one yet) holds none of this group's entries, however long its log
    beats = {1: _beat(now - 5), 2: _beat(now, 3, 12), 3: _beat(now, 9, 99, group=None)}
    assert choose_leader(g, beats, now, **timing).leader == 2


def test_parse_args() -> None:
    cfg = parse_args(
        [
            "--id",
            "2",
            "--listen",
            "127.0.0.1:8420",
            "--etcd",
            "http://a:1,http://b:2",
            "--groups-min",
            "2",
            "--heartbeat-timeout-ms",
            "700",
        ]
    )
    assert (cfg.id, cfg.listen, cfg.etcd, cfg.groups_min, cfg.heartbeat_timeout_ms) == (
        2,
        "127.0.0.1:8420",
        ("http://a:1", "http://b:2"),
        2,
        700,
    )


# -- against etcd -------------------------------------------------------------------------------


def test_group_forms_from_the_three_lowest_live_spares(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i in (5, 4, 3, 2, 1):
            await c.node(i)
        await eventually(
            lambda: len(meta.view.groups) == 1 and len(meta.view.nodes) == 5,
            8,
            "a group of 3 and 5 registered nodes",
        )
        view, _ = await c.store.load()
        (group,) = view.groups.values()
        assert group.members == (1, 2, 3)
        for i in (1, 2, 3):
            node = view.nodes[i]
            assert (node.state, node.group, node.address) == (
                model.NODE_MEMBER,
                group.id,
                c.nodes[i].address,
            )
        for i in (4, 5):
            assert (view.nodes[i].state, view.nodes[i].group) == (model.NODE_SPARE, None)
        await eventually(
            lambda: all(c.nodes[i].group for i in (1, 2, 3)), 3, "members to learn their group"
        )
        assert c.nodes[1].group is not None
        assert [m["id"] for m in c.nodes[1].group["members"]] == [1, 2, 3]
        assert {m["address"] for m in c.nodes[1].group["members"]} == {
            c.nodes[i].address for i in (1, 2, 3)
        }
        assert c.nodes[4].group is None and c.nodes[5].group is None
        await asyncio.sleep(0.5)
        assert len(meta.view.groups) == 1  # groups_min is 1

        # a node that comes back on another address is re-recorded, keeping its place
        n5 = c.nodes[5]
        old = n5.address
        n5.address = "127.0.0.1:1"
        await eventually(lambda: meta.view.nodes[5].address == "127.0.0.1:1", 3, "new address")
        assert meta.view.nodes[5].state == model.NODE_SPARE
        n5.address = old

    scenario(backend, body)


def test_most_caught_up_member_leads_and_only_it_is_told(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i, index in ((1, 5), (2, 9), (3, 7)):
            await c.node(i, last_index=index)
        group = await leader_serving(c, meta)
        assert (group.leader, group.epoch) == (2, 1)
        assert c.nodes[2].campaigns == [1]
        assert c.nodes[1].campaigns == [] and c.nodes[3].campaigns == []
        reply = await c.nodes[2].beat()  # serving: no more campaign
        assert reply["campaign"] is None and reply["group"]["leader"] == 2
        await asyncio.sleep(0.5)
        assert (await c.group()) == group  # stable

    scenario(backend, body, heartbeat_timeout_ms=500)


def test_new_epoch_when_the_leader_stops_heartbeating(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i, index in ((1, 5), (2, 9), (3, 7)):
            await c.node(i, last_index=index)
        first = await leader_serving(c, meta)
        assert first.leader == 2
        c.nodes[2].paused = True
        stopped = time.monotonic()
        second = await leader_serving(c, meta, epoch_min=first.epoch + 1)
        took_s = time.monotonic() - stopped
        assert (second.leader, second.epoch) == (3, first.epoch + 1)  # 3 is ahead of 1
        assert took_s < 3.0, took_s
        assert c.nodes[3].campaigns == [second.epoch] and c.nodes[1].campaigns == []

    scenario(backend, body, heartbeat_timeout_ms=500)


def test_a_chosen_leader_that_never_serves_is_replaced(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        await c.node(1, last_index=5)
        await c.node(2, last_index=9, lead=False)  # most caught up, but never takes it up
        await c.node(3, last_index=7)
        group = await leader_serving(c, meta)
        assert (group.leader, group.epoch) == (3, 2)
        assert c.nodes[2].campaigns and set(c.nodes[2].campaigns) == {1}

    scenario(backend, body, heartbeat_timeout_ms=500, campaign_timeout_ms=1000)


def test_no_election_without_a_live_majority(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i in (1, 2, 3):
            await c.node(i, last_index=i)
        group = await leader_serving(c, meta)
        assert group.leader == 3
        c.nodes[3].paused = True
        c.nodes[2].paused = True
        await asyncio.sleep(2.0)
        assert await c.group() == group  # unchanged: unavailable, not inconsistent
        assert c.nodes[1].campaigns == []
        assert any(
            "no election" in r.getMessage() and "majority" in r.getMessage() for r in caplog.records
        )
        c.nodes[2].paused = False  # a majority is back: now a new leader is chosen
        after = await leader_serving(c, meta, epoch_min=group.epoch + 1)
        assert (after.leader, after.epoch) == (2, group.epoch + 1)

    caplog.set_level(logging.INFO, logger="rangekv")
    scenario(backend, body, heartbeat_timeout_ms=500)


def test_standby_answers_not_active_and_takes_over(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        m1 = await c.meta(1)
        await eventually(lambda: m1.is_active, 5, "meta 1 active")
        m2 = await c.meta(2)
        m3 = await c.meta(3)
        await asyncio.sleep(0.5)
        assert m1.is_active and not m2.is_active and not m3.is_active
        for standby in (m2, m3):
            with pytest.raises(errors.NotActive) as info:
                await request(standby, "create_table", name="t")
            assert info.value.details["active_hint"] == m1.address and info.value.retryable
        with pytest.raises(errors.NotActive):
            await request(m2, "heartbeat", node_id=1, address="127.0.0.1:1", status={})

        # a clean stop revokes the lease: a standby takes over at once
        await m1.stop()
        await eventually(lambda: m2.is_active or m3.is_active, 3, "a standby to take over")
        new, other = (m2, m3) if m2.is_active else (m3, m2)
        reply = await request(new, "heartbeat", node_id=1, address="127.0.0.1:1", status={})
        assert reply["group"] is None and reply["campaign"] is None
        with pytest.raises(errors.NotActive) as info:
            await request(other, "create_table", name="t")
        assert info.value.details["active_hint"] == new.address

        # a crash leaves the lease to expire (TTL 2 s); then the last one takes over
        await new.stop(revoke=False)
        crashed = time.monotonic()
        assert not other.is_active
        await eventually(lambda: other.is_active, 6, "the last standby to take over")
        assert time.monotonic() - crashed > 1.0  # it waited for the lease

    scenario(backend, body)


def test_active_steps_down_when_its_key_is_gone(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        await eventually(lambda: meta.is_active, 5, "meta active")
        fence = meta.store.fence_revision
        await c.client.delete(model.META_ACTIVE)  # e.g. an operator, or a restored backup
        await eventually(lambda: not meta.is_active, 3, "meta to step down")
        await eventually(
            lambda: meta.is_active and meta.store.fence_revision != fence,
            5,
            "meta active again under a new key",
        )

    scenario(backend, body)


def test_active_steps_down_when_etcd_stops_answering(tmp_path: Path) -> None:
    port = free_port()
    etcd = start_etcd(tmp_path / "etcd", port, free_port())
    endpoint = f"http://127.0.0.1:{port}"

    async def body(c: Cluster) -> None:
        meta = await c.meta(etcd_timeout_ms=1000)
        await eventually(lambda: meta.is_active, 5, "meta active")
        await asyncio.sleep(0.6)  # at least one renewal
        os.kill(etcd.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            await eventually(lambda: not meta.is_active, 3, "meta to stop acting")
            assert time.monotonic() - frozen <= 2.0  # never past the lease TTL
            with pytest.raises(errors.NotActive):
                await request(meta, "heartbeat", node_id=1, address="127.0.0.1:1")
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        await eventually(lambda: meta.is_active, 15, "meta active again once etcd answers")
        reply = await request(meta, "heartbeat", node_id=1, address="127.0.0.1:1")
        assert reply["group"] is None

    try:
        scenario(endpoint, body)
    finally:
        etcd.kill()


def test_active_steps_down_when_etcd_in_memory_stops_answering() -> None:
    """The same as above against etcd in memory: every call fails while ``down``."""

    async def body(c: Cluster) -> None:
        meta = await c.meta()
        await eventually(lambda: meta.is_active, 5, "meta active")
        await asyncio.sleep(0.6)  # at least one renewal
        assert isinstance(meta.etcd, MemoryEtcd)
        meta.etcd.down = True
        meta.etcd.wake_watches()
        cut = time.monotonic()
        await eventually(lambda: not meta.is_active, 3, "meta to stop acting")
        assert time.monotonic() - cut <= 2.0  # never past the lease TTL
        with pytest.raises(errors.NotActive):
            await request(meta, "heartbeat", node_id=1, address="127.0.0.1:1")
        meta.etcd.down = False
        await eventually(lambda: meta.is_active, 15, "meta active again once etcd answers")
        reply = await request(meta, "heartbeat", node_id=1, address="127.0.0.1:1")
        assert reply["group"] is None

    scenario(MemoryKV(), body)


def test_create_table_waits_for_add_range_and_resumes(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i in (1, 2, 3):
            await c.node(i, last_index=i, answer=False)
        group = await leader_serving(c, meta)
        began = time.monotonic()
        with pytest.raises(errors.Unavailable) as info:
            await request(meta, "create_table", name="stocks")
        assert info.value.code == "unavailable" and info.value.retryable
        assert 1.0 < time.monotonic() - began < 5.0
        found = await c.store.get_table("stocks")
        assert found is not None and found[0].state == model.TABLE_CREATING
        assert meta.view.table("stocks") is None  # not routable
        leader = c.nodes[group.leader]  # type: ignore[index]
        assert leader.calls and leader.calls[0][0] == "add_range"

        for node in c.nodes.values():
            node.answer = True
        reply = await request(meta, "create_table", name="stocks")
        assert reply["table"] == {"id": found[0].id, "name": "stocks", "state": "active"}
        assert reply["revision"] > 0
        assert leader.calls[-1] == (
            "add_range",
            {"table_id": found[0].id, "start": b"", "end": None},
        )
        await eventually(lambda: meta.view.table("stocks") is not None, 3, "table in the view")
        assert [r.group for r in meta.view.ranges[found[0].id]] == [group.id]

    scenario(backend, body, heartbeat_timeout_ms=500, node_request_budget_ms=1500)


def test_create_and_drop_table(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        with pytest.raises(errors.Unavailable):  # no group yet
            await request(meta, "create_table", name="early")
        for i in (1, 2, 3):
            await c.node(i, last_index=i)
        group = await leader_serving(c, meta)
        leader = c.nodes[group.leader]  # type: ignore[index]
        early = await c.store.get_table("early")
        assert early is None

        reply = await request(meta, "create_table", name="stocks")
        table = reply["table"]
        assert table["name"] == "stocks" and table["state"] == "active" and table["id"] >= 1
        view, _ = await c.store.load()
        assert view.revision >= reply["revision"]
        assert view.table("stocks") is not None
        (rng,) = view.ranges[table["id"]]
        assert (rng.start, rng.end, rng.group, rng.version) == (b"", None, group.id, 1)
        assert ("add_range", {"table_id": table["id"], "start": b"", "end": None}) in leader.calls

        with pytest.raises(errors.TableExists) as exists:
            await request(meta, "create_table", name="stocks")
        assert exists.value.code == "table_exists" and exists.value.status == 409
        for bad in ("", "a b", "x" * 129, "naïve", None, 7):
            with pytest.raises(errors.InvalidArgument) as invalid:
                await request(meta, "create_table", name=bad)
            assert invalid.value.code == "invalid_argument"
        with pytest.raises(errors.InvalidArgument):
            await request(meta, "no_such_op")

        dropped = await request(meta, "drop_table", name="stocks")
        assert dropped["revision"] > reply["revision"]
        assert ("drop_table", {"table_id": table["id"]}) in leader.calls
        view, _ = await c.store.load()
        assert "stocks" not in view.tables and table["id"] not in view.ranges
        with pytest.raises(errors.TableNotFound) as missing:
            await request(meta, "drop_table", name="stocks")
        assert missing.value.code == "table_not_found"

        again = await request(meta, "create_table", name="stocks")
        assert again["table"]["id"] > table["id"]  # ids are never reused

        # concurrent creates race on the id counter; each still gets its own id
        replies = await asyncio.gather(
            *(request(meta, "create_table", name=f"t{i}") for i in range(6))
        )
        ids = [r["table"]["id"] for r in replies]
        assert len(set(ids)) == 6 and min(ids) > again["table"]["id"]

    scenario(backend, body, heartbeat_timeout_ms=500)


def test_a_stuck_drop_is_finished_by_a_retried_drop(backend: Backend) -> None:
    async def body(c: Cluster) -> None:
        meta = await c.meta()
        for i in (1, 2, 3):
            await c.node(i)
        await leader_serving(c, meta)
        await request(meta, "create_table", name="t1")
        for node in c.nodes.values():
            node.answer = False
        with pytest.raises(errors.Unavailable):
            await request(meta, "drop_table", name="t1")
        found = await c.store.get_table("t1")
        assert found is not None and found[0].state == model.TABLE_DROPPING
        with pytest.raises(errors.TableExists):  # the name is not free until the drop ends
            await request(meta, "create_table", name="t1")
        for node in c.nodes.values():
            node.answer = True
        await request(meta, "drop_table", name="t1")
        assert await c.store.get_table("t1") is None

    scenario(backend, body, heartbeat_timeout_ms=500, node_request_budget_ms=1000)


def test_meta_process_runs_and_exits_cleanly_on_sigterm(etcd_endpoint: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "meta.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rangekv.metadata.service",
                "--id",
                "1",
                "--listen",
                f"127.0.0.1:{port}",
                "--etcd",
                etcd_endpoint,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
    try:
        wait_until(lambda: b" active (lease" in log_path.read_bytes(), 15, "meta to be active")

        async def beat() -> dict[str, Any]:
            conn = wire.Connection(f"127.0.0.1:{port}")
            try:
                return await conn.request("heartbeat", node_id=9, address="127.0.0.1:9", status={})
            finally:
                await conn.close()

        assert asyncio.run(beat())["group"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "INFO rangekv.meta.1 node 9 at 127.0.0.1:9 is new" in text, text
    assert "stopping: got SIGTERM" in text and "meta 1 stopped" in text, text
    assert "Traceback" not in text, text


def test_a_replacement_survives_a_meta_crash_and_is_explained_once(backend: Backend) -> None:
    """A follower stops heartbeating: the active meta adds the lowest spare as a learner, then
    crashes; the standby takes over and finishes the replacement (swap in a new epoch with the
    old members as joint voters, then joint cleared once the leader serves it). Each step is
    recorded once, and the flag on the old node carries the reason the first meta gave."""

    async def body(c: Cluster) -> None:
        m1 = await c.meta(1)
        await eventually(lambda: m1.is_active, 5, "meta 1 active")
        m2 = await c.meta(2)
        for i, index in ((1, 9), (2, 5), (3, 7), (4, 0), (5, 0)):
            await c.node(i, last_index=index)
        first = await leader_serving(c, m1)
        assert first.leader == 1 and first.members == (1, 2, 3)
        c.nodes[2].paused = True
        await eventually(lambda: m1.view.groups[first.id].learners == (4,), 10,
                         "spare 4 to join as a learner")
        assert m1.view.nodes[4].state == model.NODE_JOINING
        await m1.stop(revoke=False)  # crash: the lease expires, the standby takes over
        c.nodes[4].last_index = c.nodes[1].last_index  # the learner catches up
        await eventually(lambda: m2.is_active, 8, "meta 2 to take over")
        swapped = await leader_serving(c, m2, timeout_s=15, epoch_min=first.epoch + 1)
        assert swapped.members == (1, 3, 4) and swapped.leader == 1
        await eventually(lambda: not m2.view.groups[first.id].joint, 5, "joint cleared")
        view, _ = await c.store.load()
        kinds = [d.kind for d in view.decisions if d.kind != "leader_elected"]
        assert kinds == ["replace_started", "replace_swapped", "joint_cleared"], kinds
        assert any(d.kind == "leader_elected" for d in view.decisions)
        started = next(d for d in view.decisions if d.kind == "replace_started")
        assert started.details["old"] == 2 and started.details["new"] == 4
        node2 = view.nodes[2]
        assert node2.state == model.NODE_FLAGGED and node2.flag == model.FLAG_REPLACED
        assert node2.reason == f"replaced in group {first.id} by node 4: {started.details['why']}"
        assert view.nodes[4].state == model.NODE_MEMBER
        c.nodes[2].paused = False  # it comes back: it stays flagged and in no group
        await asyncio.sleep(0.5)
        assert c.nodes[2].group is None
        assert (await c.store.load())[0].nodes[2] == node2

    scenario(backend, body, heartbeat_timeout_ms=300, replace_grace_ms=800)


def test_remove_node_refuses_members_and_live_nodes_and_removes_dead_ones(
        backend: Backend) -> None:
    """``remove_node`` (``rangekv nodes remove``): typed errors for bad fields, refusals for a
    member and a live spare, a dead spare's record gone with its decision; it comes back as a
    new spare when it heartbeats again. A record that no node stands behind (a forged
    heartbeat's) goes the same way."""
    hb_s = 1.5

    async def body(c: Cluster) -> None:
        meta = await c.meta(1)
        await eventually(lambda: meta.is_active, 5, "meta 1 active")
        with pytest.raises(errors.Unavailable, match="cannot tell yet"):
            await request(meta, "remove_node", node_id=5)  # too soon to know who is live
        standby = await c.meta(2)
        for i in (1, 2, 3, 4, 5):
            await c.node(i)
        group = await leader_serving(c, meta)
        await eventually(lambda: len(meta.view.nodes) == 5, 3, "five nodes registered")
        for bad in (None, "5", 5.0, True, [5], 0, -1, 2**32):
            with pytest.raises(errors.InvalidArgument) as invalid:
                await request(meta, "remove_node", node_id=bad)
            assert invalid.value.details["field"] == "node_id", bad
        with pytest.raises(errors.NotActive):
            await request(standby, "remove_node", node_id=5)
        with pytest.raises(errors.NodeInUse, match="member of group") as in_use:
            await request(meta, "remove_node", node_id=1)
        assert in_use.value.details == {"node": 1, "group": group.id}
        with pytest.raises(errors.NodeInUse, match="is live") as in_use:
            await request(meta, "remove_node", node_id=5)
        assert in_use.value.details == {"node": 5, "live": True}
        with pytest.raises(errors.NodeNotFound):
            await request(meta, "remove_node", node_id=99)
        assert len(meta.view.nodes) == 5  # refusals change nothing

        c.nodes[5].paused = True  # spare 5 dies
        await asyncio.sleep(hb_s + 0.3)
        reply = await request(meta, "remove_node", node_id=5)
        assert reply["live"] is False and reply["node"]["id"] == 5
        assert reply["node"]["state"] == model.NODE_SPARE
        assert 5 not in meta.view.nodes  # the answer waits for the meta's own view
        view, _ = await c.store.load()
        assert 5 not in view.nodes
        [removed] = [d for d in view.decisions if d.kind == "node_removed"]
        assert removed.details["node"] == 5 and "removed by an operator" in removed.reason
        with pytest.raises(errors.NodeNotFound):
            await request(meta, "remove_node", node_id=5)
        c.nodes[5].paused = False  # it heartbeats again: registered as a new spare
        await eventually(lambda: 5 in meta.view.nodes, 3, "node 5 to register again")
        assert meta.view.nodes[5].state == model.NODE_SPARE

        forged = await c.node(77)  # a heartbeat from something that is no node
        await eventually(lambda: 77 in meta.view.nodes, 3, "the forged record")
        await forged.stop()
        await asyncio.sleep(hb_s + 0.3)
        assert (await request(meta, "remove_node", node_id=77))["node"]["id"] == 77
        assert 77 not in (await c.store.load())[0].nodes
        assert (await c.group()) == group  # the group never noticed

    scenario(backend, body, heartbeat_timeout_ms=int(hb_s * 1000))
