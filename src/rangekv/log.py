"""Logging for every rangekv process: one line per event, as text or as a JSON object.

Text (the default) is ``time level component logger: message``; a traceback follows on the
next lines, as Python prints it. JSON lines (``--log-format json``) are for log shippers: every
record is exactly one line holding one object,

    {"ts": "2026-12-04T13:32:36.123Z", "level": "INFO", "component": "node-3",
     "logger": "rangekv.node", "msg": "...", "pid": 4242, ...extra fields..., "exc": "Traceback..."}

``ts`` is RFC 3339 in UTC with milliseconds; fields passed with ``log.info(..., extra={...})``
are added as they are (values that JSON cannot hold as ``repr``), and ``exc`` / ``stack`` carry
a traceback with its newlines escaped, so a record never spans two lines. In JSON mode the
uncaught-exception hooks (main thread and threads) and ``warnings`` also log through here, so
that nothing Python prints by itself breaks the one-object-per-line stream.

The level and format come from the process's ``--log-level`` / ``--log-format`` (see
:mod:`rangekv.config`: env ``RANGEKV_LOG_LEVEL`` / ``RANGEKV_LOG_FORMAT``, TOML ``[log]``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s {component} %(name)s: %(message)s"
TEXT_DATEFMT = "%Y-%m-%dT%H:%M:%S"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}
_OWN_FIELDS = ("ts", "level", "component", "logger", "msg", "pid", "exc", "stack")


def rfc3339_ms(created: float) -> str:
    """``created`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``json.dumps`` escapes every newline)."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": rfc3339_ms(record.created),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": self.pid,
        }
        for key, value in vars(record).items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            # an extra field must not pass itself off as one of ours
            out[f"extra_{key}" if key in _OWN_FIELDS else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info).rstrip("\n")
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=repr)


def setup(component: str, level: str | None = None, fmt: str | None = None,
          text_format: str | None = None) -> None:
    """Send every logger's records to stderr, as ``fmt`` ("text" or "json") at ``level``.

    ``level`` None falls back to ``$RANGEKV_LOG_LEVEL`` then INFO, for the callers that do
    not parse options through :mod:`rangekv.config`; ``text_format`` lets a process keep the
    text layout its logs have always had.
    """
    level_name = (level or os.environ.get("RANGEKV_LOG_LEVEL") or "INFO").upper()
    fmt = fmt or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        if text_format is None:
            handler.setFormatter(logging.Formatter(
                TEXT_FORMAT.replace("{component}", component), datefmt=TEXT_DATEFMT))
        else:
            handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    if fmt == "json":
        _route_python_output_through_logging()


def _route_python_output_through_logging() -> None:
    """Uncaught exceptions and warnings become records, not multi-line text on stderr."""
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], exc: BaseException,
                   tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        logging.getLogger("rangekv").critical("uncaught exception", exc_info=(kind, exc, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        name = args.thread.name if args.thread is not None else "?"
        logging.getLogger("rangekv").critical("uncaught exception in thread %s", name,
                                              exc_info=exc_info)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook

