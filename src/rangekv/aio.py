"""How the server processes run their event loop: uvloop when it is installed.

uvloop (libuv under asyncio's interface) makes the loop itself, socket reads and writes and
timers several times cheaper than the pure-Python selector loop, and a node, rm or meta spends
most of its CPU in exactly those. ``RANGEKV_EVENT_LOOP=asyncio`` selects the standard loop (to
compare, or to rule uvloop out when debugging); tests and tools that call ``asyncio.run``
themselves keep the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "RANGEKV_EVENT_LOOP"


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` will use."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_name`` names."""
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
