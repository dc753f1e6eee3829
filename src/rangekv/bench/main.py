"""``rangekv bench SUITE``: benchmarks that print a table and can write JSON.

    rangekv bench calibrate [--dir D] [--seconds S] [--batch N] [--connections N] [--json F]
    rangekv bench routing [--ranges N] [--lookups N] [--events N] [--json F]

``calibrate``: the floor of this machine (``rangekv.bench.calibrate``): fsync rates for 1 and 3
writers, the group-commit ceiling, the loopback round trip, the Python echo ceiling, and from
them the floor of one replicated write. Run it where the cluster keeps its data (``--dir``).

``routing``: the rm's routing map with N ranges of one table (``rangekv.bench.routing``): bytes
per range, lookup time, the cost of one watch event, the full load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rangekv.bench.calibrate import calibrate

CALIBRATE_STEPS = 5


class Progress:
    """A one-line progress bar (on stderr: stdout keeps only the figures)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 20) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream, width

    def step(self, what: str) -> None:
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {what:<48}")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        self.stream.write(f"\r[{'#' * self.width}] {self.total}/{self.total} done{' ' * 44}\n")
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rangekv bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    c = sub.add_parser("calibrate", help="the floor of this machine: fsync, group commit, "
                                         "loopback, echo ceiling")
    c.add_argument("--dir", type=Path, default=None,
                   help="where to measure fsync (default: the system's temporary directory; "
                        "use the disk the cluster's data is on)")
    c.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    c.add_argument("--batch", type=int, default=64,
                   help="records per sync for the group-commit ceiling (default 64)")
    c.add_argument("--connections", type=int, default=64,
                   help="clients of the echo ceiling (default 64)")
    c.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the figures as JSON")
    # -- routing (rangekv.bench.routing): the rm's routing map at scale --
    r = sub.add_parser("routing", help="the rm's routing map: bytes per range, lookup, apply, "
                                       "load at N ranges")
    r.add_argument("--ranges", type=int, default=1_000_000, help="default 1,000,000")
    r.add_argument("--lookups", type=int, default=100_000, help="default 100,000")
    r.add_argument("--events", type=int, default=1000, help="range events (default 1000)")
    r.add_argument("--key-bytes", type=int, default=16, help="split key length (default 16)")
    r.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the figures as JSON")
    r.set_defaults(run=_run_routing)
    return p


def _run_routing(args: argparse.Namespace) -> int:
    from rangekv.bench import routing

    if args.ranges < 3 or args.lookups < 1 or args.events < 4 or \
            routing.key_space(args.key_bytes) <= 4 * args.ranges:
        print("error: --ranges >= 3, --lookups >= 1, --events >= 4, and --key-bytes long "
              "enough for 4 x --ranges distinct keys", file=sys.stderr)
        return 2
    bar = Progress(routing.STEPS)
    result = routing.measure(args.ranges, args.lookups, args.events, bar.step,
                             key_bytes=args.key_bytes)
    bar.close()
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if getattr(args, "run", None) is not None:
        return int(args.run(args))
    if args.seconds <= 0 or args.batch < 1 or args.connections < 1:
        print("error: --seconds, --batch and --connections must be positive", file=sys.stderr)
        return 2
    bar = Progress(CALIBRATE_STEPS)
    result = calibrate(args.dir, args.seconds, args.batch, args.connections, bar.step)
    bar.close()
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
