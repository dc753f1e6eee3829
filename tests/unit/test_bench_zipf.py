"""YCSB key choosers: in range, reproducible from a seed, and shaped like their distribution."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from rangekv.bench.zipf import Latest, ScrambledZipfian, Zipfian, fnv1a_64


@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=0, max_value=2**32))
def test_every_item_is_in_range(n: int, seed: int) -> None:
    z = Zipfian(n, rng=random.Random(seed))
    s = ScrambledZipfian(n, rng=random.Random(seed))
    for _ in range(50):
        assert 0 <= z.next() < n
        assert 0 <= s.next() < n


def test_the_same_seed_gives_the_same_keys() -> None:
    a = ScrambledZipfian(1000, rng=random.Random(7))
    b = ScrambledZipfian(1000, rng=random.Random(7))
    c = ScrambledZipfian(1000, rng=random.Random(8))
    xs = [a.next() for _ in range(200)]
    assert xs == [b.next() for _ in range(200)]
    assert xs != [c.next() for _ in range(200)]


def test_popularity_follows_the_power_law() -> None:
    n, draws, theta = 1000, 200_000, 0.99
    z = Zipfian(n, theta, random.Random(1))
    counts = Counter(z.next() for _ in range(draws))
    zeta = sum(1 / i**theta for i in range(1, n + 1))
    for item in (0, 1, 9):
        expected = draws / ((item + 1) ** theta * zeta)
        assert abs(counts[item] - expected) < 0.1 * expected, (item, counts[item], expected)
    assert counts[0] > counts[1] > counts[4] > counts[50]
    # the tail is reached: about half the draws fall past the first 30 items
    assert sum(c for i, c in counts.items() if i >= 30) > 0.3 * draws


def test_scrambling_spreads_the_hot_items_and_keeps_their_heat() -> None:
    n = 10_000
    s = ScrambledZipfian(n, rng=random.Random(2))
    counts = Counter(s.next() for _ in range(50_000))
    hottest, _ = counts.most_common(1)[0]
    assert hottest == fnv1a_64(0) % n  # item 0, hashed
    top = [k for k, _ in counts.most_common(10)]
    assert max(top) - min(top) > n // 4  # not one contiguous range


def test_grow_matches_a_fresh_sum() -> None:
    grown = Zipfian(100, rng=random.Random(0))
    grown.grow(5000)
    fresh = Zipfian(5000, rng=random.Random(0))
    assert abs(grown.zetan - fresh.zetan) < 1e-9 and abs(grown.eta - fresh.eta) < 1e-12


def test_latest_prefers_the_newest() -> None:
    latest = Latest(10, rng=random.Random(3))
    ranks = Counter(latest.next(500) for _ in range(20_000))
    assert all(0 <= r < 500 for r in ranks)
    assert ranks[0] == max(ranks.values())
    assert latest.next(1) == 0
