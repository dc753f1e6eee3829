"""Membership in the replication core: learners, joint voters, and the quorums each counts in.

A small synchronous network of cores, each in the shared Ready loop over an in-memory disk:
messages are delivered in order unless a link is cut, and every write is made durable at once. Each test sets up a group the
way meta's records would (``set_config``) and checks one rule of the core's docstring.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from rangekv.replication.bugs import CampaignWithoutJoint, CoreFactory
from rangekv.replication.core import CANDIDATE, FOLLOWER, IDLE, LEADER, Config, Core
from rangekv.replication.loop import ReadyLoop
from rangekv.replication.messages import Entry, Msg
from rangekv.storage.memlog import MemoryDisk, MemoryLog

NOOP = b"noop"


class Net:
    """Cores 1..n in the shared Ready loop over disks whose fsyncs complete at once; ``cut``
    pairs drop what they send each other. The net is every loop's network and application."""

    def __init__(self, n: int, members: Iterable[int], learners: Iterable[int] = (),
                 joint: Iterable[int] = (), core_factory: CoreFactory = Core) -> None:
        self.disks = {i: MemoryDisk(immediate=True) for i in range(1, n + 1)}
        self.logs = {i: d.log for i, d in self.disks.items()}
        self.applied: dict[int, list[bytes]] = {i: [] for i in self.logs}
        self.reads: dict[int, list[object]] = {i: [] for i in self.logs}
        self.loops = {
            i: ReadyLoop(core_factory(i, members, self.logs[i], {}, 0,
                                      Config(noop_payload=NOOP), learners=learners, joint=joint),
                         self.disks[i], self, _App(self, i))
            for i in self.logs
        }
        self.cores = {i: loop.core for i, loop in self.loops.items()}
        self.cut: set[frozenset[int]] = set()
        self.down: set[int] = set()
        self.queue: list[Msg] = []

    def send(self, msg: Msg) -> None:  # the loops' network
        self.queue.append(msg)

    def configure(self, members: Iterable[int], learners: Iterable[int] = (),
                  joint: Iterable[int] = ()) -> None:
        for i, loop in self.loops.items():
            if i not in self.down:
                loop.configure(list(members), list(learners), list(joint))

    def process(self, i: int) -> None:
        """For a test that called its core directly: perform what that asks for."""
        self.loops[i].process()

    def deliver(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            if not self.queue:
                return
            msgs, self.queue = self.queue, []
            for m in msgs:
                if m.to in self.down or m.frm in self.down or frozenset((m.frm, m.to)) in self.cut:
                    continue
                self.loops[m.to].step(m)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for i, loop in self.loops.items():
                if i not in self.down:
                    loop.tick()
            self.deliver()

    def campaign(self, i: int, epoch: int) -> None:
        self.loops[i].campaign(epoch)
        self.deliver()

    def propose(self, i: int, payload: bytes) -> int:
        _, index = self.loops[i].propose(payload)
        self.deliver()
        return index

    def isolate(self, i: int, *others: int) -> None:
        for o in others or self.cores:
            if o != i:
                self.cut.add(frozenset((i, o)))


class _App:
    """Node ``i``'s application: what it applied and the reads it answered."""

    def __init__(self, net: Net, i: int) -> None:
        self.net, self.i = net, i

    def apply(self, entries: list[Entry]) -> None:
        self.net.applied[self.i].extend(e.payload for e in entries)

    def read_ready(self, token: object) -> None:
        self.net.reads[self.i].append(token)

    def read_failed(self, token: object) -> None:
        pass

    def became_leader(self, epoch: int) -> None:
        pass

    def lost_leadership(self) -> None:
        pass


def leading(net: Net, i: int) -> bool:
    core = net.cores[i]
    return core.role == LEADER and core.serving


def test_a_learner_gets_the_log_but_counts_in_no_commit() -> None:
    net = Net(4, members=(1, 2, 3), learners=(4,))
    net.campaign(1, 1)
    assert leading(net, 1)
    assert 4 in net.cores[1].progress  # an ordinary entry of the leader's progress
    net.propose(1, b"a")
    net.tick(2)
    assert net.applied[4] == [NOOP, b"a"]  # it follows and applies
    assert net.cores[4].role == FOLLOWER
    net.down |= {2, 3}  # the learner alone is no majority
    index = net.propose(1, b"b")
    net.tick(2)
    assert net.logs[4].last_index == index
    assert net.cores[1].commit < index


def test_a_learner_never_campaigns_and_does_not_confirm_reads() -> None:
    net = Net(4, members=(1, 2, 3), learners=(4,))
    net.campaign(4, 1)
    assert net.cores[4].role == FOLLOWER and net.cores[4].promised == 0
    net.campaign(1, 1)
    net.loops[1].read("with members")
    net.deliver()
    assert net.reads[1] == ["with members"]
    net.down |= {2, 3}
    net.loops[1].read("learner only")
    net.tick(4)
    assert net.reads[1] == ["with members"]  # the learner's answer confirms nothing


def test_commit_and_reads_count_members_only_not_joint() -> None:
    net = Net(4, members=(1, 3, 4), joint=(1, 2, 3))
    net.campaign(1, 1)
    assert leading(net, 1)
    assert set(net.cores[1].progress) == {3, 4}  # joint voters are asked, not replicated to
    net.down.add(3)
    net.cut.add(frozenset((1, 4)))
    index = net.propose(1, b"a")  # node 2 (joint only) is up but counts in no commit
    net.tick(2)
    assert net.cores[1].commit < index


def test_a_campaign_with_joint_needs_a_majority_of_both() -> None:
    net = Net(4, members=(1, 3, 4), joint=(1, 2, 3))
    net.isolate(1, 2, 3)  # 1 hears only 4: a majority of members {1,3,4}, not of {1,2,3}
    net.campaign(1, 1)
    assert net.cores[1].role == CANDIDATE
    assert sorted(net.cores[1].electorate()) == [2, 3, 4]
    net.cut.discard(frozenset((1, 2)))  # now 2 answers too: {1,2} of the old members
    net.tick(net.cores[1].cfg.heartbeat_ticks)  # the candidate asks again
    assert leading(net, 1)


def test_the_planted_bug_wins_with_the_new_members_alone() -> None:
    net = Net(4, members=(1, 3, 4), joint=(1, 2, 3), core_factory=CampaignWithoutJoint)
    net.isolate(1, 2, 3)
    net.campaign(1, 1)
    assert leading(net, 1)


def test_nothing_committed_under_the_old_members_is_lost() -> None:
    """The race of docs/decisions.md "Membership": entries committed by {1, 2} (old members
    {1,2,3}) are on neither 3 nor the new member 4; after the swap ({1,3,4}, joint {1,2,3})
    and the loss of 1, a campaign by 3 must hear from 2 and adopt its log."""
    net = Net(4, members=(1, 2, 3), learners=(4,))
    net.campaign(1, 1)
    net.propose(1, b"early")
    net.tick(2)
    net.isolate(3, 1)
    net.isolate(4, 1)
    committed = [net.propose(1, f"late{i}".encode()) for i in range(3)]
    assert net.cores[1].commit >= committed[-1]  # on 1 and 2 only
    assert net.logs[3].last_index < committed[0] and net.logs[4].last_index < committed[0]
    net.configure((1, 3, 4), joint=(1, 2, 3))
    net.down.add(1)
    net.campaign(3, 2)
    assert leading(net, 3)
    assert [e.payload for e in net.logs[3].items[:5]][-3:] == [b"late0", b"late1", b"late2"]


def test_without_the_joint_rule_the_same_race_loses_them() -> None:
    net = Net(4, members=(1, 2, 3), learners=(4,), core_factory=CampaignWithoutJoint)
    net.campaign(1, 1)
    net.propose(1, b"early")
    net.tick(2)
    net.isolate(3, 1)
    net.isolate(4, 1)
    committed = [net.propose(1, f"late{i}".encode()) for i in range(3)]
    assert net.cores[1].commit >= committed[-1]
    net.configure((1, 3, 4), joint=(1, 2, 3))
    net.down.add(1)
    net.isolate(3, 2)  # 2's answer comes too late for the buggy candidate
    net.campaign(3, 2)
    assert leading(net, 3)
    assert b"late0" not in [e.payload for e in net.logs[3].items]


@pytest.mark.parametrize("config, role", [
    (((1, 2, 3), (), ()), FOLLOWER),
    (((1, 2, 3), (4,), ()), FOLLOWER),  # learner
    (((1, 2, 3), (), (2, 3, 4)), FOLLOWER),  # joint voter only
    (((1, 2, 3), (5,), ()), IDLE),
])
def test_roles_follow_the_config(config: tuple[tuple[int, ...], ...], role: str) -> None:
    core = Core(4, (), MemoryLog(), {}, 0, Config(noop_payload=NOOP))
    assert core.role == IDLE
    core.set_config(*config)
    expected = role if 4 in (*config[0], *config[1], *config[2]) else IDLE
    assert core.role == expected


def test_a_leader_removed_from_the_members_steps_down() -> None:
    net = Net(4, members=(1, 2, 3), learners=(4,))
    net.campaign(1, 1)
    assert leading(net, 1)
    net.cores[1].set_config((2, 3, 4), (), (1, 2, 3))  # in joint only: no longer leads
    assert net.cores[1].role == FOLLOWER and not net.cores[1].progress
    net.cores[1].set_config((2, 3, 4))
    assert net.cores[1].role == IDLE


def test_a_new_learner_is_probed_and_caught_up_from_the_start() -> None:
    net = Net(4, members=(1, 2, 3))
    net.campaign(1, 1)
    for i in range(20):
        net.propose(1, f"v{i}".encode())
    net.tick(2)
    assert net.logs[4].last_index == 0
    net.configure((1, 2, 3), learners=(4,))
    net.tick(4)
    assert net.logs[4].items == net.logs[1].items
    assert net.cores[4].commit == net.cores[1].commit
