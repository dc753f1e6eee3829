"""The ``rangekv`` command line; the entry point is :func:`rangekv.cli.main.main`.

What every command shares lives here: :class:`Context` (where a command reads and writes and how
it gets a client, the seam for tests) and the endpoint defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

ENV_ENDPOINT = "RANGEKV_ENDPOINT"
DEFAULT_ENDPOINT = "rangekv://127.0.0.1:8401"  # the native port of `rangekv up`'s HAProxy


@dataclass
class Context:
    """Where a command reads and writes, and how it gets a client: the seam for tests."""

    stdout: IO[bytes]
    stderr: IO[str]
    stdin: IO[bytes]
    make_client: Callable[[argparse.Namespace], Any] | None = None

    def out(self, text: str = "") -> None:
        self.stdout.write(text.encode("utf-8", "surrogateescape") + b"\n")
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def client(self, args: argparse.Namespace) -> Any:
        if self.make_client is not None:
            return self.make_client(args)
        from rangekv.client import Client

        return Client(endpoints(args), timeout_s=args.timeout)


def endpoints(args: argparse.Namespace) -> list[str]:
    """--endpoint (repeatable, comma-separated allowed), else $RANGEKV_ENDPOINT, else default."""
    given = args.endpoint or [os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT]
    out = [e.strip() for item in given for e in item.split(",") if e.strip()]
    return out or [DEFAULT_ENDPOINT]
