"""The latency histogram against a sorted-list oracle: every percentile within 1% of the exact
nearest-rank value, merging is the union of the samples, and JSON round-trips exactly."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from rangekv.bench.hist import RELATIVE_ERROR_MAX, Histogram

values = st.lists(st.floats(min_value=1e-6, max_value=100.0, allow_nan=False), min_size=1,
                  max_size=300)
percentiles = st.floats(min_value=0.0, max_value=100.0)


def oracle(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def of(samples: list[float]) -> Histogram:
    h = Histogram()
    for v in samples:
        h.record(v)
    return h


def test_the_bucket_error_bound_is_under_one_percent() -> None:
    assert RELATIVE_ERROR_MAX < 0.01


@given(values, st.lists(percentiles, min_size=1, max_size=5))
def test_percentiles_are_within_one_percent_of_the_oracle(samples: list[float],
                                                          ps: list[float]) -> None:
    h = of(samples)
    for p in [*ps, 50, 99, 99.9, 100]:
        want = oracle(samples, p)
        assert abs(h.percentile(p) - want) <= 0.01 * want, (p, h.percentile(p), want)
    assert h.count == len(samples)
    assert h.max_s == max(samples) and h.min_s == min(samples)


@given(values, values, percentiles)
def test_merge_is_the_union(a: list[float], b: list[float], p: float) -> None:
    merged = of(a).merge(of(b))
    union = of(a + b)
    assert merged.counts == union.counts and merged.count == union.count
    assert merged.percentile(p) == union.percentile(p)
    want = oracle(a + b, p)
    assert abs(merged.percentile(p) - want) <= 0.01 * want


@given(values)
def test_json_round_trip(samples: list[float]) -> None:
    h = of(samples)
    back = Histogram.from_json(h.to_json())
    assert back.counts == h.counts and back.count == h.count
    assert back.min_s == h.min_s and back.max_s == h.max_s
    assert back.percentile(99) == h.percentile(99)


def test_an_empty_histogram_has_no_percentiles() -> None:
    h = Histogram()
    assert math.isnan(h.percentile(50))
    assert Histogram.from_json(h.to_json()).count == 0
