"""One-line progress bars on stderr (stdout keeps only results): ``rangekv bench``, ``load``,
``backup``, ``restore``.

On a terminal the bar is redrawn in place. Anywhere else (a pipe, a log file, cron, a systemd
unit) redrawing with ``\\r`` would leave one enormous line, so the bar writes a plain line per
step and the last line only: a log keeps what happened, not every redraw.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_INTERVAL_S = 0.2  # ``update`` redraws at most this often (on a terminal)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """``[####----] done/total what``: advanced a step at a time (``step``), or set to a count
    (``update``, redrawn at most every ``REDRAW_INTERVAL_S``). ``live`` (default: whether the
    stream is a terminal) chooses redrawing in place over plain lines."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 20,
                 live: bool | None = None) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self.live = _is_terminal(stream) if live is None else live
        self._drawn = 0.0

    def _draw(self, done: int, what: str, end: str = "") -> None:
        filled = self.width * min(done, self.total) // max(1, self.total)  # totals may be
        bar = "#" * filled + "-" * (self.width - filled)                   # estimates
        if self.live:
            self.stream.write(f"\r[{bar}] {done:,}/{self.total:,} {what:<48}{end}")
        else:
            self.stream.write(f"[{bar}] {done:,}/{self.total:,} {what}".rstrip() + "\n")
        self.stream.flush()

    def step(self, what: str) -> None:
        """Show the step about to run (``what``), then count it."""
        self._draw(self.done, what)
        self.done += 1

    def update(self, done: int, what: str) -> None:
        """Set the count; redrawn on a terminal only (a log gets the last line at ``close``)."""
        self.done = done
        now = time.monotonic()
        if self.live and now - self._drawn >= REDRAW_INTERVAL_S:
            self._drawn = now
            self._draw(done, what)

    def close(self, what: str = "done", done: int | None = None) -> None:
        """The last line: ``done`` (default: all of it) and ``what``, then a newline."""
        self._draw(self.total if done is None else done, what, "\n")
