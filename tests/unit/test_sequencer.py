from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from rangekv import sequencer

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
    assume(last != b"\xff" * 16)  # the year 2554
    final = sequencer.final(p, last)
    assert final > last and final >= p


def test_observe_keeps_later_seqs_above_a_remote_one() -> None:
    seq = sequencer.Sequencer(1, lambda: 10)
    seq.observe(sequencer.make(1_000, 0, 2))
    assert sequencer.parts(seq.next())[0] == 1_000
