"""The replication core driven by a small deterministic harness.

Each core is a ``HarnessNode`` (``rangekv.testing.harness``): it runs in the shared Ready loop
(``rangekv.replication.loop``, the one production runs) over an in-memory disk whose durable prefix survives a crash and whose fsyncs complete one at a
time in any order with the deliveries (so a leader's appends leave before its own fsync, as in
production, and a promise not yet durable holds back what speaks for it); the network delivers,
drops, duplicates and reorders messages from one seeded random source. After every run the
checks are: replicas applied identical sequences (prefixes of one another); every write the
leader acknowledged (applied on the leader as committed) is in every later leader's log;
one leader per epoch. A failing seed is printed in the assertion message.
"""

from __future__ import annotations

import random

import pytest

from rangekv.replication.core import CANDIDATE, LEADER, NotLeaderError
from rangekv.replication.messages import Entry, Msg
from rangekv.testing.harness import NOOP, HarnessNode


class Harness:
    def __init__(self, seed: int, n: int = 3, drop: float = 0.0, dup: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        ids = list(range(1, n + 1))
        self.net: list[Msg] = []
        self.drop, self.dup = drop, dup
        self.leaders: dict[int, int] = {}  # epoch -> node
        self.acked: list[Entry] = []
        self.epoch = 0
        # Each replica: a core in the shared Ready loop over an in-memory disk whose fsyncs
        # ``sync`` completes one at a time, in any interleaving with message deliveries.
        self.nodes = {i: HarnessNode(i, ids, self, leaders=self.leaders, acked=self.acked,
                                     label=seed) for i in ids}
        for node in self.nodes.values():
            node.start()

    def send(self, msg: Msg) -> None:  # the loops' network
        self.net.append(msg)

    def sync(self, node: HarnessNode) -> None:
        node.disk.sync_next()

    def step(self) -> None:
        r = self.rng.random()
        live = [n for n in self.nodes.values() if n.up]
        if r < 0.6 and self.net:
            msg = self.net.pop(self.rng.randrange(len(self.net)))  # reorder freely
            if self.rng.random() < self.drop:
                return
            if self.rng.random() < self.dup:
                self.net.append(msg)
            target = self.nodes[msg.to]
            if target.up and target.loop is not None:
                target.loop.step(msg)
        elif r < 0.92 and live:
            self.sync(self.rng.choice(live))
        else:
            for node in live:
                assert node.loop is not None
                node.loop.tick()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def leader(self) -> HarnessNode | None:
        for n in self.nodes.values():
            if n.up and n.core is not None and n.core.role == LEADER and n.core.serving:
                return n
        return None

    def elect(self, node_id: int) -> None:
        """What meta does: hand out the next epoch to one node."""
        self.epoch += 1
        node = self.nodes[node_id]
        assert node.loop is not None
        node.loop.campaign(self.epoch)

    def elect_best(self) -> None:
        """Meta's choice: the most caught-up live node."""
        live = [n for n in self.nodes.values() if n.up]
        if len(live) * 2 > len(self.nodes):
            best = max(live, key=lambda n: (n.log.epoch_at(n.log.last_index), n.log.last_index))
            self.elect(best.id)

    def settle(self, steps: int = 3000, reelect_steps: int = 0) -> None:
        for i in range(steps):
            if self.leader() is not None and not self.net and all(
                not n.disk.pending for n in self.nodes.values()):
                return
            if reelect_steps and i % reelect_steps == reelect_steps - 1 and self.leader() is None:
                self.elect_best()
            self.step()

    def check(self) -> None:
        logs = [n.applied for n in self.nodes.values()]
        for a in logs:
            for b in logs:
                k = min(len(a), len(b))
                assert a[:k] == b[:k], f"seed {self.seed}: replicas applied different entries"
        leader = self.leader()
        if leader is not None:
            held = set(leader.log.items)
            lost = [e for e in self.acked if e not in held]
            assert not lost, f"seed {self.seed}: acknowledged entries lost: {lost[:3]}"


def test_three_nodes_elect_commit_apply() -> None:
    h = Harness(seed=1)
    h.elect(1)
    h.settle()
    leader = h.leader()
    assert leader is not None and leader.id == 1
    for i in range(20):
        assert leader.loop is not None
        leader.loop.propose(f"w{i}".encode())
    h.settle()
    for _ in range(500):
        h.step()
    h.check()
    assert [e.payload for e in leader.applied if e.payload != NOOP] == [
        f"w{i}".encode() for i in range(20)]
    assert all(len(n.applied) == len(leader.applied) for n in h.nodes.values())


def test_follower_rejects_proposals_and_reads() -> None:
    h = Harness(seed=2)
    h.elect(1)
    h.settle()
    follower = h.nodes[2].core
    assert follower is not None
    with pytest.raises(NotLeaderError) as info:
        follower.propose(b"x")
    assert info.value.leader == 1
    with pytest.raises(NotLeaderError):
        follower.read("t")


def test_read_index_needs_a_majority() -> None:
    h = Harness(seed=3)
    h.elect(1)
    h.settle()
    leader = h.nodes[1]
    assert leader.loop is not None
    leader.loop.read("r1")
    assert leader.reads_done == []  # not before a majority confirmed the epoch
    h.settle()
    for _ in range(200):
        h.step()
    assert leader.reads_done == ["r1"]


def test_deposed_leader_cannot_commit_or_read() -> None:
    h = Harness(seed=4)
    h.elect(1)
    h.settle()
    old = h.nodes[1]
    # Partition the old leader: it keeps running but nothing it sends arrives.
    h.elect(2)
    for _ in range(3000):
        h.net = [m for m in h.net if m.frm != 1 and m.to != 1]
        h.step()
        if h.leader() is not None and h.leader().id == 2:
            break
    assert h.leader() is not None
    assert old.core is not None and old.loop is not None
    if old.core.role == LEADER and old.core.serving:
        # It may still believe it leads, but it can neither commit nor answer a read.
        old.loop.propose(b"stale")
        old.loop.read("stale-read")
        for _ in range(500):
            h.net = [m for m in h.net if m.frm != 1 and m.to != 1]
            h.step()
        assert all(e.payload != b"stale" for e in old.applied)
        assert "stale-read" not in old.reads_done
    # Heal: the old leader learns of epoch 2 and follows.
    for _ in range(3000):
        h.step()
    assert old.core.role != LEADER or old.core.promised > 1
    h.check()


@pytest.mark.parametrize("seed", range(40))
def test_random_faults_keep_acknowledged_writes(seed: int) -> None:
    """Crashes, lost/duplicated/reordered messages and leader changes; then check."""
    h = Harness(seed=seed, drop=0.05, dup=0.05)
    rng = random.Random(seed * 7919)
    h.elect(1)
    writes = 0
    for _round in range(12):
        for _ in range(rng.randrange(50, 300)):
            h.step()
            leader = h.leader()
            if leader is not None and rng.random() < 0.2:
                assert leader.loop is not None
                leader.loop.propose(f"w{writes}".encode())
                writes += 1
        action = rng.random()
        victim = h.nodes[rng.randrange(1, 4)]
        if action < 0.3 and victim.up:
            victim.crash()
        elif action < 0.6 and not victim.up:
            victim.up = True
            victim.start()
        if h.leader() is None or rng.random() < 0.2:
            h.elect_best()
        h.check()
    # Liveness: faults stop, every node is up, a leader is chosen and commits again.
    h.drop = h.dup = 0.0
    for node in h.nodes.values():
        if not node.up:
            node.up = True
            node.start()
    h.elect_best()
    h.settle(20000, reelect_steps=1500)
    leader = h.leader()
    assert leader is not None, f"seed {seed}: no leader after faults stopped"
    assert leader.loop is not None
    leader.loop.propose(b"final")
    for _ in range(5000):
        h.step()
    h.check()
    assert any(e.payload == b"final" for e in leader.applied), f"seed {seed}: final not applied"


def test_candidate_adopts_more_up_to_date_log() -> None:
    """A candidate behind the majority's best log fetches what it lacks before leading."""
    h = Harness(seed=5)
    h.elect(1)
    h.settle()
    leader = h.nodes[1]
    assert leader.core is not None
    # Node 3 is cut off while writes commit on 1 and 2.
    assert leader.loop is not None
    for i in range(5):
        leader.loop.propose(f"a{i}".encode())
    for _ in range(2000):
        h.net = [m for m in h.net if m.to != 3 and m.frm != 3]
        h.step()
    committed = [e for e in leader.applied if e.payload.startswith(b"a")]
    assert len(committed) == 5
    h.nodes[1].crash()
    # meta (wrongly, say after losing a heartbeat) picks node 3; it must adopt node 2's log.
    h.elect(3)
    for _ in range(5000):
        h.net = [m for m in h.net if m.to != 1 and m.frm != 1]
        h.step()
    new = h.leader()
    assert new is not None and new.id == 3 and new.core is not None
    held = {e.payload for e in new.log.items}
    assert all(e.payload in held for e in committed)
    assert new.core.role != CANDIDATE
