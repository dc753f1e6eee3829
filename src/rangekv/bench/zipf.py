"""Key choosers of the YCSB workloads, seeded (``random.Random``) so that a run can be repeated.

* ``Zipfian(n, theta)``: item ``i`` in ``[0, n)`` with probability proportional to
  ``1 / (i + 1) ** theta``, by the constant-time method of Gray et al. ("Quickly generating
  billion-record synthetic databases", SIGMOD 1994) that YCSB uses. ``zeta(n)`` is summed once
  (O(n)); ``grow(n)`` adds only the new terms, so a "latest" chooser over a growing key count
  stays cheap.
* ``ScrambledZipfian``: the same popularity, but the popular items are spread over the key space
  by a 64-bit FNV-1a hash of the item number (YCSB's "scrambled zipfian"), so that the hot keys
  do not all sit in one range.
* ``Latest``: rank 0 is the newest key (YCSB workload D reads recent inserts).
"""

from __future__ import annotations

import random

FNV_OFFSET_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 0x100000001B3
MASK_64 = (1 << 64) - 1
THETA_DEFAULT = 0.99


def fnv1a_64(value: int) -> int:
    h = FNV_OFFSET_64
    for byte in (value & MASK_64).to_bytes(8, "little"):
        h = ((h ^ byte) * FNV_PRIME_64) & MASK_64
    return h


class Zipfian:
    def __init__(self, n: int, theta: float = THETA_DEFAULT,
                 rng: random.Random | None = None) -> None:
        assert n >= 1, n
        assert 0 < theta < 1, theta  # theta = 1 has no closed form for eta
        self.theta = theta
        self.rng = rng if rng is not None else random.Random(0)
        self.alpha = 1 / (1 - theta)
        self.zeta2 = 1 + 0.5 ** theta
        self.n = 0
        self.zetan = 0.0
        self.grow(n)

    def grow(self, n: int) -> None:
        """Extends the item count to ``n`` (never shrinks: that would need the whole sum)."""
        assert n >= self.n, (n, self.n)
        self.zetan += sum(1 / (i ** self.theta) for i in range(self.n + 1, n + 1))
        self.n = n
        self.eta = ((1 - (2 / n) ** (1 - self.theta)) / (1 - self.zeta2 / self.zetan)
                    if n > 1 else 0.0)

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1 or self.n == 1:
            return 0
        if uz < self.zeta2:
            return 1
        i = int(self.n * (self.eta * u - self.eta + 1) ** self.alpha)
        return min(i, self.n - 1)


class ScrambledZipfian:
    def __init__(self, n: int, theta: float = THETA_DEFAULT,
                 rng: random.Random | None = None) -> None:
        self.n = n
        self.zipf = Zipfian(n, theta, rng)

    def next(self) -> int:
        return fnv1a_64(self.zipf.next()) % self.n


class Latest:
    """A rank into the known keys, newest first: 0 is the latest key."""

    def __init__(self, n: int, theta: float = THETA_DEFAULT,
                 rng: random.Random | None = None) -> None:
        self.zipf = Zipfian(n, theta, rng)

    def next(self, n: int) -> int:
        if n > self.zipf.n:
            self.zipf.grow(n)
        return min(self.zipf.next(), n - 1)
