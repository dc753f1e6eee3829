from __future__ import annotations

import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rangekv import errors, sequencer

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@given(u64, u32, u32)
def test_layout_round_trip(ts: int, counter: int, node: int) -> None:
    seq = sequencer.make(ts, counter, node)
    assert len(seq) == 16
    assert sequencer.parts(seq) == (ts, counter, node)
    assert sequencer.from_hex(sequencer.to_hex(seq)) == seq


@given(st.tuples(u64, u32, u32), st.tuples(u64, u32, u32))
def test_byte_order_is_numeric_order(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    sa, sb = sequencer.make(*a), sequencer.make(*b)
    assert (sa < sb) == (a < b)


def test_sequencer_strictly_increases_when_the_clock_stalls_or_steps_back() -> None:
    times = iter([100, 100, 100, 50, 40, 200, 200])
    seq = sequencer.Sequencer(7, lambda: next(times))
    issued = [seq.next() for _ in range(7)]
    assert issued == sorted(issued) and len(set(issued)) == 7
    assert all(sequencer.parts(s)[2] == 7 for s in issued)


def test_counter_wrap_moves_time_forward() -> None:
    seq = sequencer.Sequencer(1, lambda: 5)
    seq._counter = 2**32 - 2
    a, b, c = seq.next(), seq.next(), seq.next()
    assert a < b < c
    assert sequencer.parts(b)[1] == 0 and sequencer.parts(b)[0] == 6


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_leader_final_seq_is_above_last_and_at_least_proposed(p: bytes, last: bytes) -> None:
    if last == sequencer.MAX and p <= last:
        # no seq is above the top of the range: refused with a typed error, never a crash
        with pytest.raises(errors.Unavailable):
            sequencer.final(p, last)
        return
    final = sequencer.final(p, last)
    assert final > last and final >= p


def test_a_group_whose_last_seq_is_the_top_refuses_instead_of_crashing() -> None:
    with pytest.raises(errors.Unavailable, match="highest seq"):
        sequencer.final(sequencer.ZERO, sequencer.MAX)
    with pytest.raises(errors.Unavailable):
        sequencer.final(sequencer.MAX, sequencer.MAX)


@given(st.integers(0, 2**63), st.integers(-(2**40), 2**40), st.integers(1, 10_000))
def test_a_proposal_is_refused_exactly_when_it_is_further_ahead_than_the_maximum_offset(
        now_ns: int, ahead_ns: int, max_ms: int) -> None:
    ts = now_ns + ahead_ns
    assume(0 <= ts < 2**64)
    proposed = sequencer.make(ts, 0, 3)
    if ahead_ns > max_ms * 1_000_000:
        with pytest.raises(errors.ClockOffset) as info:
            sequencer.check_proposal(proposed, now_ns, max_ms, node_id=5)
        assert info.value.details["max_offset_ms"] == max_ms
        assert info.value.details["ahead_ms"] == ahead_ns // 1_000_000
        assert info.value.retryable and info.value.status == 503
    else:
        sequencer.check_proposal(proposed, now_ns, max_ms)


def test_the_poison_seq_is_refused_by_any_sane_clock() -> None:
    with pytest.raises(errors.ClockOffset):
        sequencer.check_proposal(sequencer.MAX, time.time_ns())


def test_observe_ignores_a_seq_too_far_ahead_of_our_clock() -> None:
    now = 10**18
    seq = sequencer.Sequencer(1, lambda: now, ahead_ms_max=500)
    assert seq.observe(sequencer.make(now + 400_000_000, 0, 2))  # 400 ms ahead: taken
    assert sequencer.parts(seq.next())[0] == now + 400_000_000
    assert not seq.observe(sequencer.MAX)  # forged, or a clock far off: ignored
    assert not seq.observe(sequencer.make(now + 3_600 * 10**9, 0, 2))
    assert seq.ignored == 2
    nxt = sequencer.parts(seq.next())[0]
    assert nxt == now + 400_000_000  # proposals stay acceptable to a leader with our clock


def test_observe_keeps_later_seqs_above_a_remote_one() -> None:
    seq = sequencer.Sequencer(1, lambda: 10)
    seq.observe(sequencer.make(1_000, 0, 2))
    assert sequencer.parts(seq.next())[0] == 1_000
