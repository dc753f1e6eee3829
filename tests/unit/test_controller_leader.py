"""``controller.leader.choose_leader`` against a naive oracle, over generated groups and
heartbeats: it elects exactly when the oracle says a new leader is needed and possible, and then
the most up-to-date live member with a sound log, at an epoch above every one promised."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.controller.health import Beat
from rangekv.controller.leader import choose_leader
from rangekv.model import Group
from rangekv.model.status import NodeStatus

NOW = 100.0
HB = 0.6
CAMPAIGN = 3.0


@st.composite
def cases(draw: st.DrawFn) -> tuple[Group, dict[int, Beat], float, float]:
    size = draw(st.sampled_from([1, 3, 5]))
    members = tuple(range(1, size + 1))
    epoch = draw(st.integers(0, 5))
    leader = draw(st.sampled_from([None, *members])) if epoch else None
    joint: tuple[int, ...] = ()
    if size == 3 and draw(st.booleans()):
        joint = (1, 2, 9)  # the previous members: 9 was replaced by 3
    group = Group(7, epoch, leader, members, joint=joint)
    beats = {}
    for m in sorted({*members, *joint}):
        if draw(st.integers(0, 4)) == 0:
            continue  # never heard
        age = draw(st.sampled_from([0.0, 0.1, 0.59, 0.61, 5.0]))
        serving = m == leader and draw(st.booleans())
        beats[m] = Beat(NOW - age, f"127.0.0.1:{m}", NodeStatus(
            group=draw(st.sampled_from([7, 7, None, 8])),
            epoch=draw(st.integers(0, 8)),
            role="leader" if serving else draw(st.sampled_from(["follower", "candidate"])),
            leader_epoch=epoch if serving else draw(st.integers(0, 3)),
            last_epoch=draw(st.integers(0, 3)), last_index=draw(st.integers(0, 4)),
            broken=draw(st.integers(0, 5)) == 0))
    judge_from = draw(st.sampled_from([0.0, NOW - 0.3]))
    campaign_since = draw(st.sampled_from([NOW - 10.0, NOW - 1.0]))
    return group, beats, judge_from, campaign_since


def oracle(group: Group, beats: dict[int, Beat], judge_from: float,
           campaign_since: float) -> tuple[str, int | None, int]:
    """What should happen, decided the long way round."""
    if NOW - judge_from < HB:
        return "wait", None, 0

    def live(m: int) -> bool:
        return m in beats and NOW - beats[m].at_s <= HB

    failed = None
    if group.leader is not None and live(group.leader):
        st_ = beats[group.leader].status
        if st_.broken:
            failed = group.leader
        elif st_.role == "leader" and st_.leader_epoch == group.epoch:
            return "keep", None, 0
        elif NOW - campaign_since < CAMPAIGN:
            return "keep", None, 0
        else:
            failed = group.leader
    up = [m for m in group.members if live(m)]
    if 2 * len(up) <= len(group.members):
        return "stuck", None, 0
    if group.joint:
        voters = [m for m in group.joint if live(m) and not beats[m].status.broken]
        if 2 * len(voters) <= len(group.joint):
            return "stuck", None, 0
    sound = [m for m in up if not beats[m].status.broken]
    if failed in sound and len(sound) > 1:
        sound.remove(failed)
    if not sound:
        return "stuck", None, 0
    def ours(m: int) -> bool:  # its heartbeat is about this group's log
        return beats[m].status.group == group.id

    # a member whose log is another group's (or none yet) holds none of this group's
    ranked = sorted(sound, key=lambda m: (not ours(m),
                                          -beats[m].status.last_epoch if ours(m) else 0,
                                          -beats[m].status.last_index if ours(m) else 0, m))
    promised = [beats[m].status.epoch for m in up if beats[m].status.group == group.id]
    return "elect", ranked[0], max([group.epoch, *promised]) + 1


@settings(max_examples=1000)
@given(cases())
def test_choose_leader_agrees_with_the_oracle(case: tuple[Any, ...]) -> None:
    group, beats, judge_from, campaign_since = case
    choice = choose_leader(group, beats, NOW, heartbeat_timeout_s=HB,
                           campaign_timeout_s=CAMPAIGN, judge_from_s=judge_from,
                           campaign_since_s=campaign_since)
    action, leader, epoch = oracle(group, beats, judge_from, campaign_since)
    assert choice.action == action, (choice, action)
    if action == "elect":
        assert (choice.leader, choice.epoch) == (leader, epoch), choice
        assert choice.leader in group.members and choice.epoch > group.epoch
        assert choice.reason  # always says why
