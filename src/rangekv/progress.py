"""One-line progress bars on stderr (stdout keeps only results): ``rangekv bench``, ``load``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_INTERVAL_S = 0.2  # ``update`` redraws at most this often


class Progress:
    """``[####----] done/total what``: advanced a step at a time (``step``), or set to a count
    (``update``, redrawn at most every ``REDRAW_INTERVAL_S``)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 20) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self._drawn = 0.0

    def _draw(self, done: int, what: str, end: str = "") -> None:
        filled = self.width * min(done, self.total) // max(1, self.total)  # totals may be
        bar = "#" * filled + "-" * (self.width - filled)                   # estimates
        self.stream.write(f"\r[{bar}] {done:,}/{self.total:,} {what:<48}{end}")
        self.stream.flush()

    def step(self, what: str) -> None:
        """Show the step about to run (``what``), then count it."""
        self._draw(self.done, what)
        self.done += 1

    def update(self, done: int, what: str) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._drawn >= REDRAW_INTERVAL_S:
            self._drawn = now
            self._draw(done, what)

    def close(self, what: str = "done", done: int | None = None) -> None:
        """The last line: ``done`` (default: all of it) and ``what``, then a newline."""
        self._draw(self.total if done is None else done, what, "\n")
