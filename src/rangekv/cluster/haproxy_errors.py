"""HAProxy's own error answers, in the rms' JSON error shape (package data: ``errorfiles/``).

When HAProxy answers by itself (a malformed request, a head too slow, no rm up, an rm that
answers nothing in time or cuts its answer) it sends one of these raw HTTP responses instead of
its HTML pages, so that a client sees ``{"error": {"code", "message", "retryable", ...}}``
whoever answered, with ``"answered_by": "haproxy"`` to tell the two apart:

======  ====================  =============================================================
status  code                  when
======  ====================  =============================================================
400     invalid_argument      the request line or a header is malformed (or not ASCII)
408     request_timeout       the head did not arrive whole within ``timeout http-request``
500     internal              HAProxy failed itself
502     outcome_unknown       an rm's answer was cut off or malformed: a write may have happened
503     unavailable           no rm is up (``Retry-After``): nothing was done
504     outcome_unknown       no answer within ``timeout server`` (``Retry-After``)
======  ====================  =============================================================

502 and 504 say ``outcome_unknown`` rather than their statuses' codes: the request may have
reached an rm and a write may have been done, which is what that code tells a caller (and
what the Python client raised for them before they were JSON).

A limit of HAProxy, not of these files: its HTTP/1 parser answers a malformed head (400) and a
head not whole within ``timeout http-request`` (408) by itself, before a stream exists, and
before haproxy/haproxy#3032 was fixed (on its 3.2 branch) it sends its built-in HTML there,
whatever the errorfiles (Debian 12 has HAProxy 2.6). Those two answers keep their status and
close the connection; only their body is HTML. Every other 400/408 HAProxy gives, and every
500, 502, 503 and 504, is one of these files.

``haproxy_config`` references these files where the package is installed (``rangekv up``); a
HAProxy on a machine of its own gets copies::

    python -m rangekv.cluster.haproxy_errors /etc/rangekv/haproxy-errors
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

ERRORFILES_DIR = Path(__file__).resolve().parent / "errorfiles"
STATUSES = (400, 408, 500, 502, 503, 504)
PARSER_USES_ERRORFILES_SINCE = (3, 2)  # HAProxy version (see the module docstring)


def haproxy_version(binary: str) -> tuple[int, int]:
    """(major, minor) of the HAProxy at ``binary`` (``haproxy -v``)."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found = re.search(r"(?:HA-?Proxy) version (\d+)\.(\d+)", out)
    if found is None:
        raise ValueError(f"no version in the output of {binary} -v: {out[:200]!r}")
    return int(found.group(1)), int(found.group(2))


def parser_errors_ignore_errorfiles(version: tuple[int, int]) -> bool:
    """Whether a HAProxy of ``version`` answers its parser's 400 and 408 with its own HTML."""
    return version < PARSER_USES_ERRORFILES_SINCE


def errorfile(status: int, directory: Path | str = ERRORFILES_DIR) -> Path:
    assert status in STATUSES, status
    return Path(directory) / f"{status}.http"


def write(directory: Path | str) -> list[Path]:
    """Copy every errorfile into ``directory`` (created if need be); returns the copies."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for status in STATUSES:
        out.append(Path(shutil.copyfile(errorfile(status), errorfile(status, target))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rangekv.cluster.haproxy_errors",
        description="Copy HAProxy's errorfiles (its own error answers in rangekv's JSON error "
                    "shape) into DIR, for a haproxy.cfg that references them there.")
    parser.add_argument("dir", metavar="DIR", help="where to write 400.http ... 504.http")
    args = parser.parse_args(argv)
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
