"""A mergeable latency histogram with log-spaced buckets: every percentile it reports is within
1% of the exact one (nearest-rank on the sorted samples), whatever the number of samples.

Bucket ``i`` holds values in ``[GROWTH**i, GROWTH**(i+1))`` seconds and reports the geometric
middle ``GROWTH**(i+0.5)``; with ``GROWTH = 1.018`` the middle is within ``sqrt(1.018) - 1 ≈
0.9%`` of anything in the bucket. Values are clamped to ``[VALUE_MIN_S, VALUE_MAX_S]`` (1 µs to
1000 s: no latency of ours lies outside). Counts are kept in a dict (only buckets that occur),
so merging the histograms of several generator processes is adding counts, and the merged
percentiles are those of the union of the samples. Count, sum, min and max are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GROWTH = 1.018
RELATIVE_ERROR_MAX = math.sqrt(GROWTH) - 1  # about 0.9%
VALUE_MIN_S = 1e-6
VALUE_MAX_S = 1e3
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(value_s: float) -> int:
    v = min(max(value_s, VALUE_MIN_S), VALUE_MAX_S)
    return math.floor(math.log(v) / _LOG_GROWTH)


def bucket_value(index: int) -> float:
    return GROWTH ** (index + 0.5)


@dataclass
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_s: float = 0.0
    min_s: float = math.inf
    max_s: float = 0.0

    def record(self, value_s: float) -> None:
        i = bucket_of(value_s)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.count += 1
        self.total_s += value_s
        self.min_s = min(self.min_s, value_s)
        self.max_s = max(self.max_s, value_s)

    def merge(self, other: Histogram) -> Histogram:
        """Adds ``other``'s samples to this one (in place) and returns it."""
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)
        return self

    def percentile(self, p: float) -> float:
        """The value of nearest rank ``ceil(p/100 * count)`` (seconds; NaN when empty). The
        exact min and max stand for p0 and p100, and clamp the bucket middles."""
        assert 0 <= p <= 100, p
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(p / 100 * self.count))
        if rank >= self.count:
            return self.max_s
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(max(bucket_value(i), self.min_s), self.max_s)
        raise AssertionError("ranks add up to the count")

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else math.nan

    def summary_ms(self) -> dict[str, float]:
        return {"p50_ms": self.percentile(50) * 1e3, "p99_ms": self.percentile(99) * 1e3,
                "p999_ms": self.percentile(99.9) * 1e3, "max_ms": self.max_s * 1e3,
                "mean_ms": self.mean_s * 1e3}

    def to_json(self) -> dict[str, Any]:
        return {"counts": {str(i): n for i, n in sorted(self.counts.items())},
                "count": self.count, "total_s": self.total_s,
                "min_s": self.min_s if self.count else None, "max_s": self.max_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        h = cls({int(i): int(n) for i, n in data["counts"].items()}, int(data["count"]),
                float(data["total_s"]))
        h.min_s = math.inf if data.get("min_s") is None else float(data["min_s"])
        h.max_s = float(data["max_s"])
        assert sum(h.counts.values()) == h.count, "a histogram's buckets add up to its count"
        return h
