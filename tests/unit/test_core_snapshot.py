"""Compaction and snapshots in the replication core (sans-IO), scripted and under random faults.

The scripted tests drive three cores by hand through each rule: a leader asks for a snapshot
once a peer needs entries below its base, and sends it nothing else until the driver reports;
a follower answers an offer by InstallSnapshot's rules (stale, have, accept), stays frozen while
installing (appends and fetches dropped, nothing applied, no campaign, NEW_EPOCH promised but
answered after), and jumps to the snapshot's index once installed.

Each core is a ``HarnessNode`` (``rangekv.testing.harness``): the shared Ready loop
(``rangekv.replication.loop``) over an in-memory disk.
The random test is test_core.py's harness with compaction at random points and snapshots that
take several steps to install (and may be aborted or lost in a crash), checking that replicas
apply the same entries, that acknowledged writes survive, and that applied state never goes
backward.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from rangekv.replication.core import (
    FOLLOWER,
    LEADER,
    SNAPSHOT_ACCEPT,
    SNAPSHOT_BUSY,
    SNAPSHOT_HAVE,
    SNAPSHOT_REFUSE,
    SNAPSHOT_STALE,
    Core,
    Ready,
    SnapshotNeed,
)
from rangekv.replication.loop import ReadyLoop
from rangekv.replication.messages import (
    APPEND,
    APPEND_RESP,
    FETCH,
    FETCH_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    NEW_EPOCH,
    NEW_EPOCH_RESP,
    Entry,
    Msg,
)
from rangekv.storage.memlog import MemoryDisk
from rangekv.testing.harness import HarnessNode


def merged(readies: list[Ready]) -> Ready:
    """What several Readies asked for, as one."""
    out = Ready()
    for rd in readies:
        out.hardstate = rd.hardstate or out.hardstate
        if rd.truncate_from is not None:
            out.truncate_from = rd.truncate_from
        if rd.compact_to is not None:
            out.compact_to = rd.compact_to
        if rd.became_leader is not None:
            out.became_leader = rd.became_leader
        out.lost_leadership |= rd.lost_leadership
        for name in ("entries", "messages", "messages_after_sync", "committed", "reads",
                     "failed_reads", "snapshots"):
            getattr(out, name).extend(getattr(rd, name))
    return out


class Cluster:
    """test_core.py's harness, plus compaction and snapshot transfers."""

    def __init__(self, seed: int, n: int = 3, drop: float = 0.0, dup: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        ids = list(range(1, n + 1))
        self.net: list[Msg] = []
        self.drop, self.dup = drop, dup
        self.leaders: dict[int, int] = {}
        self.acked: list[Entry] = []
        self.epoch = 0
        self.needs: list[tuple[int, SnapshotNeed, int]] = []  # (leader, need, its incarnation)
        self.installs: list[dict[str, Any]] = []  # accepted offers, installing
        self.stats = {"snapshots": 0, "installed": 0, "aborted": 0, "stale": 0, "have": 0,
                      "compactions": 0, "fenced": 0}
        # Each replica's loop: the node is its snapshot source and sink (the transfers are
        # ``start_snapshot`` and ``finish_install``); what it performs is kept for ``do``.
        self.readies: dict[int, list[Ready]] = {i: [] for i in ids}
        self.nodes = {i: HarnessNode(i, ids, self, leaders=self.leaders, acked=self.acked,
                                     send_snapshot=self.snapshot_needed,
                                     abort_snapshot=self.abort_install,
                                     observe=self.readies[i].append, label=seed)
                      for i in ids}
        for node in self.nodes.values():
            node.start()

    def send(self, msg: Msg) -> None:  # the loops' network
        self.net.append(msg)

    def do(self, node: HarnessNode, action: Callable[[], object]) -> Ready:
        """Run ``action`` (an input to the node's loop) and return what the loop performed."""
        readies = self.readies[node.id]
        readies.clear()
        action()
        rd = merged(readies)
        readies.clear()
        return rd

    def process(self, node: HarnessNode) -> Ready:
        """For a test that called the core directly: perform what that asks for."""
        assert node.loop is not None
        return self.do(node, node.loop.process)

    def sync(self, node: HarnessNode) -> None:
        node.disk.sync_next()

    # -- snapshots, as a driver does them -------------------------------------------------
    def snapshot_needed(self, node: HarnessNode, need: SnapshotNeed) -> None:
        """``node``'s loop asks for a snapshot (``start_snapshot`` begins it later)."""
        self.needs.append((node.id, need, node.incarnation))

    def abort_install(self, node: HarnessNode, why: str) -> None:
        """``node``'s loop gives up the install under way (a newer epoch was promised)."""
        for job in self.installs:
            if job["target"] == node.id and job["incarnation"] == node.incarnation:
                job["aborted"] = why
        self.stats["fenced"] += 1
        assert node.loop is not None
        node.loop.snapshot_aborted()

    def start_snapshot(self) -> None:
        leader_id, need, incarnation = self.needs.pop(self.rng.randrange(len(self.needs)))
        source, target = self.nodes[leader_id], self.nodes[need.peer]
        if not source.up or source.loop is None or source.incarnation != incarnation:
            return
        core = source.loop.core
        ok, index = False, 0
        if target.up and target.loop is not None and self.rng.random() > self.drop:
            # The checkpoint is of the state machine now: at the applied index, >= the base.
            snap_index = core.applied
            assert snap_index >= need.index, (snap_index, need)
            snap_epoch = core.epoch_at(snap_index)
            self.stats["snapshots"] += 1
            answer, index = target.loop.offer_snapshot(source.id, core.promised, snap_index,
                                                       snap_epoch)
            if answer == SNAPSHOT_ACCEPT:
                self.installs.append({"source": source.id, "target": target.id,
                                      "incarnation": target.incarnation,
                                      "index": snap_index, "epoch": snap_epoch,
                                      "state": list(source.applied[:snap_index]),
                                      "leader_epoch": core.promised,
                                      "source_incarnation": source.incarnation})
                return
            self.stats["stale" if answer == SNAPSHOT_STALE else "have"] += answer in (
                SNAPSHOT_STALE, SNAPSHOT_HAVE)
            ok = answer in (SNAPSHOT_STALE, SNAPSHOT_HAVE)
        source.loop.snapshot_sent(need.peer, ok, index)

    def finish_install(self) -> None:
        job = self.installs.pop(self.rng.randrange(len(self.installs)))
        target = self.nodes[job["target"]]
        ok = False
        if (target.up and target.incarnation == job["incarnation"] and target.loop is not None
                and "aborted" not in job):
            if self.rng.random() < 0.15:
                target.loop.snapshot_aborted()
                self.stats["aborted"] += 1
            else:
                before = len(target.applied)
                assert job["index"] > before, (self.seed, "applied would go back", job, before)
                target.log.reset(job["index"], job["epoch"])
                target.applied = list(job["state"])
                target.loop.snapshot_installed(job["index"], job["epoch"])
                self.stats["installed"] += 1
                ok = True
        source = self.nodes[job["source"]]
        if source.up and source.loop is not None and source.incarnation == job[
                "source_incarnation"]:
            source.loop.snapshot_sent(target.id, ok, job["index"])

    def compact(self, node: HarnessNode) -> None:
        core = node.core
        assert core is not None and node.loop is not None
        if core.applied > core.base_index:
            node.loop.compact(self.rng.randrange(core.base_index, core.applied + 1))
            self.stats["compactions"] += 1

    # -- the loop -----------------------------------------------------------------------------
    def step(self) -> None:
        r = self.rng.random()
        live = [n for n in self.nodes.values() if n.up]
        if r < 0.55 and self.net:
            msg = self.net.pop(self.rng.randrange(len(self.net)))
            if self.rng.random() < self.drop:
                return
            if self.rng.random() < self.dup:
                self.net.append(msg)
            target = self.nodes[msg.to]
            if target.up and target.loop is not None:
                target.loop.step(msg)
        elif r < 0.85 and live:
            self.sync(self.rng.choice(live))
        elif r < 0.89 and self.needs:
            self.start_snapshot()
        elif r < 0.92 and self.installs:
            self.finish_install()
        elif r < 0.94 and live:
            self.compact(self.rng.choice(live))
        else:
            for node in live:
                assert node.loop is not None
                node.loop.tick()

    def leader(self) -> HarnessNode | None:
        for n in self.nodes.values():
            if n.up and n.core is not None and n.core.role == LEADER and n.core.serving:
                return n
        return None

    def elect(self, node_id: int) -> None:
        self.epoch += 1
        node = self.nodes[node_id]
        assert node.loop is not None
        node.loop.campaign(self.epoch)

    def elect_best(self) -> None:
        live = [n for n in self.nodes.values() if n.up]
        if len(live) * 2 > len(self.nodes):
            best = max(live, key=lambda n: (n.log.epoch_at(n.log.last_index), n.log.last_index))
            self.elect(best.id)

    def check(self) -> None:
        states = [n.applied for n in self.nodes.values()]
        for a in states:
            for b in states:
                k = min(len(a), len(b))
                assert a[:k] == b[:k], f"seed {self.seed}: replicas applied different entries"
        leader = self.leader()
        if leader is not None:
            held = set(leader.log.items) | set(leader.applied[: leader.log.base_index])
            lost = [e for e in self.acked if e not in held]
            assert not lost, f"seed {self.seed}: acknowledged entries lost: {lost[:3]}"


def elected(n: int = 3) -> Cluster:
    """Node 1 leads epoch 1; every node knows that its no-op (index 1) is committed."""
    c = Cluster(seed=0, n=n)
    c.elect(1)
    settle(c)
    tick(c, 1, c.nodes[1].core.cfg.heartbeat_ticks)  # type: ignore[union-attr]
    settle(c)
    return c


def settle(c: Cluster, cut: set[int] | None = None, rounds: int = 50) -> None:
    """Sync and deliver everything (messages to or from ``cut`` are lost), no ticks."""
    cut = cut or set()
    for _ in range(rounds):
        for node in c.nodes.values():
            if node.up:
                while node.disk.pending:
                    c.sync(node)
        if not c.net:
            return
        msgs, c.net = c.net, []
        for msg in msgs:
            if msg.frm in cut or msg.to in cut:
                continue
            target = c.nodes[msg.to]
            if target.up and target.loop is not None:
                target.loop.step(msg)
    raise AssertionError("did not settle")


def propose(c: Cluster, node: HarnessNode, count: int, tag: str = "w") -> None:
    assert node.loop is not None
    for i in range(count):
        node.loop.propose(f"{tag}{i}".encode())


def core_of(c: Cluster, i: int) -> Core:
    core = c.nodes[i].core
    assert core is not None
    return core


def loop_of(c: Cluster, i: int) -> ReadyLoop:
    loop = c.nodes[i].loop
    assert loop is not None
    return loop


def tick(c: Cluster, i: int, count: int = 1) -> list[Ready]:
    return [c.do(c.nodes[i], loop_of(c, i).tick) for _ in range(count)]


# -- compaction -------------------------------------------------------------------------------


def test_compact_moves_the_base_and_asks_the_driver_to_drop_the_prefix() -> None:
    c = elected()
    propose(c, c.nodes[1], 10)
    settle(c)
    core = core_of(c, 1)
    assert core.applied == 11 and core.first_index == 1
    with pytest.raises(AssertionError):
        core.compact(12)  # beyond applied
    rd = c.do(c.nodes[1], lambda: loop_of(c, 1).compact(8))
    assert (core.base_index, core.first_index, core.epoch_at(8)) == (8, 9, 1)
    assert rd.compact_to == 8
    assert c.nodes[1].log.base_index == 8  # the loop dropped the prefix from the log
    with pytest.raises(AssertionError):
        core.epoch_at(7)
    with pytest.raises(AssertionError):
        core.entries(8, 10, 1 << 20)
    assert [e.index for e in core.entries(9, 12, 1 << 20)] == [9, 10, 11]
    with pytest.raises(AssertionError):
        core.compact(7)  # the base never goes back
    assert c.do(c.nodes[1], lambda: loop_of(c, 1).compact(8)).compact_to is None
    # A restarted core finds the base in its log.
    c.nodes[1].crash()
    c.nodes[1].up = True
    c.nodes[1].start()
    assert (core_of(c, 1).base_index, core_of(c, 1).base_epoch) == (8, 1)


# -- the leader asks for a snapshot -----------------------------------------------------------


def leader_past_follower_3() -> Cluster:
    """Node 3 is cut off while 20 entries commit on 1 and 2; the leader compacts to 15."""
    c = elected()
    leader = c.nodes[1]
    assert leader.core is not None
    for i in range(20):
        loop_of(c, 1).propose(f"w{i}".encode())
        settle(c, cut={3})
    assert core_of(c, 1).applied == 21 and core_of(c, 3).commit == 1
    loop_of(c, 1).compact(15)
    return c


def test_leader_sends_a_snapshot_need_instead_of_appends_and_waits_for_the_report() -> None:
    c = leader_past_follower_3()
    core = core_of(c, 1)
    # The heartbeat's retransmission finds node 3 behind: its next entry is compacted.
    needs = []
    for rd in tick(c, 1, 4):
        needs += rd.snapshots
        assert all(m.type != APPEND or m.to != 3 for m in rd.messages)
    assert needs == [SnapshotNeed(3, 15, 1)]
    assert core.progress[3].snapshotting
    # No appends (nor another need) while the snapshot is on its way; heartbeats go on.
    for rd in tick(c, 1, 10):
        assert not rd.snapshots
        to3 = [m.type for m in rd.messages if m.to == 3]
        assert APPEND not in to3
    assert HEARTBEAT in [m.type for rd in tick(c, 1, 2) for m in rd.messages if m.to == 3]
    # The follower installed the state up to 18: appends resume after it.
    rd = c.do(c.nodes[1], lambda: loop_of(c, 1).snapshot_sent(3, True, 18))
    appends = [m for m in rd.messages if m.to == 3 and m.type == APPEND]
    assert [(m.index, m.log_epoch) for m in appends] == [(18, 1)]
    assert not core.progress[3].snapshotting


def test_a_failed_snapshot_is_asked_for_again_at_a_later_heartbeat() -> None:
    c = leader_past_follower_3()
    core = core_of(c, 1)
    needs = [n for rd in tick(c, 1, 4) for n in rd.snapshots]
    assert len(needs) == 1
    loop_of(c, 1).snapshot_sent(3, False)
    assert not core.progress[3].snapshotting
    assert loop_of(c, 1).backoff_s[3] > 0  # the next attempt waits
    needs = [n for rd in tick(c, 1, 4) for n in rd.snapshots]
    assert needs == [SnapshotNeed(3, 15, 1)]
    core.report_snapshot(2, True, 5)  # not snapshotting: ignored
    assert core.progress[2].next == 22


def test_a_new_learner_like_peer_with_an_empty_log_gets_a_snapshot() -> None:
    """Any peer in progress whose next falls below the base: here node 4 joins empty."""
    c = elected(n=4)
    # Node 4 is down while 1, 2, 3 commit and the leader compacts.
    c.nodes[4].crash()
    propose(c, c.nodes[1], 5)
    settle(c)
    loop_of(c, 1).compact(6)
    c.nodes[4].disk = MemoryDisk()
    c.nodes[4].applied = []
    c.nodes[4].up = True
    c.nodes[4].start()
    needs = []
    for _ in range(6):
        needs += [n for rd in tick(c, 1) for n in rd.snapshots]
        settle(c)
    assert needs == [SnapshotNeed(4, 6, 1)]


# -- the follower's side: offers ----------------------------------------------------------------


def test_offers_are_answered_by_installsnapshot_rules() -> None:
    c = leader_past_follower_3()
    f = core_of(c, 3)
    assert f.offer_snapshot(1, 0, 18, 1) == (SNAPSHOT_REFUSE, 1)  # older epoch: not my leader
    assert f.offer_snapshot(3, 1, 18, 1)[0] == SNAPSHOT_REFUSE  # from itself
    assert f.offer_snapshot(1, 1, 1, 1) == (SNAPSHOT_STALE, 1)  # at or below its commit
    assert f.offer_snapshot(1, 1, 18, 1) == (SNAPSHOT_ACCEPT, 18)
    assert f.installing == (1, 1, 18, 1)
    assert f.offer_snapshot(1, 1, 19, 1) == (SNAPSHOT_BUSY, 0)
    f.on_snapshot_aborted()
    assert f.installing is None
    # Node 2 holds (18, 1) in its log: it keeps the log and learns that 18 is committed.
    f2 = core_of(c, 2)
    c.nodes[2].applied = c.nodes[2].applied[:1]  # (pretend it had applied less)
    f2.commit = f2.applied = 1
    f2._apply_next = 2
    assert f2.offer_snapshot(1, 1, 18, 1) == (SNAPSHOT_HAVE, 18)
    assert f2.commit == 18 and f2.installing is None
    assert [e.index for e in c.process(c.nodes[2]).committed] == list(range(2, 19))


def test_an_offer_from_a_newer_epoch_is_followed() -> None:
    c = leader_past_follower_3()
    f = core_of(c, 3)
    assert f.offer_snapshot(2, 5, 18, 1) == (SNAPSHOT_ACCEPT, 18)
    assert (f.promised, f.promised_to, f.leader) == (5, 2, 2)
    assert c.process(c.nodes[3]).hardstate == {"promised_epoch": 5, "promised_to": 2}


def test_an_installing_follower_is_frozen_then_jumps_to_the_snapshot() -> None:
    c = leader_past_follower_3()
    f = core_of(c, 3)
    leader = core_of(c, 1)
    assert f.offer_snapshot(1, 1, 18, 1)[0] == SNAPSHOT_ACCEPT
    # Appends are dropped (no answer); heartbeats are answered but the commit does not move.
    f.step(Msg(APPEND, 1, 3, 1, index=1, log_epoch=1, commit=21,
               entries=[Entry(1, 2, b"x")]))
    f.step(Msg(HEARTBEAT, 1, 3, 1, commit=21, ctx=7))
    rd = c.process(c.nodes[3])
    assert [(m.type, m.ctx) for m in rd.messages] == [(HEARTBEAT_RESP, 7)]
    assert not rd.entries and not rd.messages_after_sync and f.commit == 1
    # No campaign while installing.
    f.campaign(9)
    assert f.role == FOLLOWER and f.promised == 1
    # NEW_EPOCH is promised (durably) but answered only after the install.
    f.step(Msg(NEW_EPOCH, 2, 3, 2, index=21, log_epoch=1))
    rd = c.process(c.nodes[3])
    assert rd.hardstate == {"promised_epoch": 2, "promised_to": 2}
    assert not rd.messages and not rd.messages_after_sync
    f.step(Msg(NEW_EPOCH, 1, 3, 1, index=21, log_epoch=1))  # an older epoch: refused at once
    rd = c.process(c.nodes[3])
    assert [(m.type, m.reject) for m in rd.messages_after_sync] == [(NEW_EPOCH_RESP, True)]
    # A fetch from the candidate is dropped while frozen.
    f.step(Msg(FETCH, 2, 3, 2, index=1, log_epoch=1))
    assert not c.process(c.nodes[3]).messages_after_sync
    # The driver installed it: the log is empty at base 18, commit and applied jump there.
    c.nodes[3].log.reset(18, 1)
    c.nodes[3].applied = list(c.nodes[1].applied[:18])
    rd = c.do(c.nodes[3], lambda: loop_of(c, 3).snapshot_installed(18, 1))
    assert (f.base_index, f.last_index, f.commit, f.applied, f.stable) == (18, 18, 18, 18, 18)
    assert f.installing is None
    # The deferred promise answer describes the log as it now is (after the promise's fsync).
    assert not rd.messages
    assert [(m.type, m.to, m.index, m.log_epoch) for m in rd.messages_after_sync] == [
        (NEW_EPOCH_RESP, 2, 18, 1)]
    # An append from the old leader's log (epoch 1) is now "not my leader" (promised 2).
    leader.step(Msg(APPEND_RESP, 3, 1, 2, index=18))
    assert leader.role == FOLLOWER


def test_installed_snapshot_never_takes_applied_state_back() -> None:
    c = leader_past_follower_3()
    f = core_of(c, 3)
    assert f.offer_snapshot(1, 1, 18, 1)[0] == SNAPSHOT_ACCEPT
    with pytest.raises(AssertionError):
        f.on_snapshot_installed(17, 1)  # not the snapshot accepted
    f.commit = 18  # (as if the commit had moved meanwhile: the core never lets it while frozen)
    with pytest.raises(AssertionError, match="applied state back"):
        f.on_snapshot_installed(18, 1)


def test_append_with_prev_below_the_base_is_seen_from_the_base() -> None:
    c = leader_past_follower_3()
    # Bring node 2 to the same state, compact it past what the leader will send.
    f = core_of(c, 2)
    loop_of(c, 2).compact(20)
    entries = [Entry(1, i, f"w{i - 2}".encode()) for i in range(18, 23)]
    f.step(Msg(APPEND, 1, 2, 1, index=17, log_epoch=1, commit=21, entries=entries))
    rd = c.process(c.nodes[2])
    assert [e.index for e in rd.entries] == [22]  # 18..21 held; 22 is new
    c.net = []
    while c.nodes[2].disk.pending:
        assert not c.net
        c.sync(c.nodes[2])  # the acknowledgement leaves after the fsync
    assert [(m.type, m.index, m.reject) for m in c.net] == [(APPEND_RESP, 22, False)]


def test_a_candidate_behind_a_members_base_ends_its_campaign() -> None:
    c = leader_past_follower_3()
    loop_of(c, 2).compact(20)
    c.nodes[1].crash()
    # Node 3 (log ends at 1) campaigns; node 2's log is better but compacted past 3's end.
    loop_of(c, 3).campaign(2)
    settle(c, cut={1})
    assert core_of(c, 3).role == FOLLOWER  # it stepped down: it cannot adopt node 2's log
    fetches = [m for m in c.net if m.type in (FETCH, FETCH_RESP)]
    assert not fetches
    # Meta chooses node 2 next; it wins with node 3's acceptance, and needs node 3 to commit
    # its no-op: node 3 gets a snapshot first.
    loop_of(c, 2).campaign(3)
    settle(c, cut={1})
    leader = core_of(c, 2)
    assert leader.role == LEADER and not leader.serving
    assert [need for _, need, _ in c.needs] == [SnapshotNeed(3, 20, 1)]
    f = core_of(c, 3)
    at = leader.applied  # a snapshot is of the state machine: at its applied index
    assert at == 20
    assert f.offer_snapshot(2, 3, at, 1) == (SNAPSHOT_ACCEPT, at)
    c.nodes[3].log.reset(at, 1)
    c.nodes[3].applied = list(c.nodes[2].applied[:at])
    loop_of(c, 3).snapshot_installed(at, 1)
    loop_of(c, 2).snapshot_sent(3, True, at)
    settle(c, cut={1})
    assert leader.serving and f.role == FOLLOWER
    tick(c, 2, leader.cfg.heartbeat_ticks)  # the heartbeat carries the commit index
    settle(c, cut={1})
    assert f.commit == f.applied == 22
    assert c.nodes[3].applied == c.nodes[2].applied


# -- random faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_faults_with_compaction_and_snapshots(seed: int) -> None:
    c = Cluster(seed=seed, drop=0.05, dup=0.05)
    rng = random.Random(seed * 7919)
    c.elect(1)
    writes = 0
    for _round in range(14):
        for _ in range(rng.randrange(80, 300)):
            c.step()
            leader = c.leader()
            if leader is not None and rng.random() < 0.25:
                assert leader.loop is not None
                leader.loop.propose(f"w{writes}".encode())
                writes += 1
        action = rng.random()
        victim = c.nodes[rng.randrange(1, 4)]
        if action < 0.3 and victim.up:
            victim.crash()
        elif action < 0.6 and not victim.up:
            victim.up = True
            victim.start()
        if c.leader() is None or rng.random() < 0.2:
            c.elect_best()
        c.check()
    c.drop = c.dup = 0.0
    for node in c.nodes.values():
        if not node.up:
            node.up = True
            node.start()
    c.elect_best()
    for i in range(30000):
        if c.leader() is not None and all(
                len(n.applied) == len(c.leader().applied) for n in c.nodes.values()) and i > 3000:
            break
        if i % 1500 == 1499 and c.leader() is None:
            c.elect_best()
        c.step()
    leader = c.leader()
    assert leader is not None, f"seed {seed}: no leader after faults stopped"
    c.check()
    assert all(len(n.applied) == len(leader.applied) for n in c.nodes.values()), (
        seed, [len(n.applied) for n in c.nodes.values()], c.stats)
    assert c.stats["compactions"] > 0


def test_random_faults_exercise_every_snapshot_path() -> None:
    totals: dict[str, int] = {}
    for seed in range(40):
        c = Cluster(seed=seed, drop=0.05, dup=0.05)
        rng = random.Random(seed * 7919)
        c.elect(1)
        for _ in range(4000):
            c.step()
            leader = c.leader()
            if leader is not None and rng.random() < 0.25:
                assert leader.loop is not None
                leader.loop.propose(b"w")
            if rng.random() < 0.002:
                victim = c.nodes[rng.randrange(1, 4)]
                if victim.up:
                    victim.crash()
                else:
                    victim.up = True
                    victim.start()
            if c.leader() is None and rng.random() < 0.01:
                c.elect_best()
        c.check()
        for k, v in c.stats.items():
            totals[k] = totals.get(k, 0) + v
    for key in ("snapshots", "installed", "aborted", "stale", "compactions", "fenced"):
        assert totals[key] > 0, totals
