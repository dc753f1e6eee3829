"""Logging for every rangekv process: one line per event, ``time level component message``."""

from __future__ import annotations

import logging
import os
import sys


def setup(component: str, level: str | None = None) -> None:
    level_name = (level or os.environ.get("RANGEKV_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s.%(msecs)03d %(levelname)s {component} %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
