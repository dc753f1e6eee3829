"""``rangekv sim``: run the deterministic simulation over many seeds.

    rangekv sim --seeds 500 [--start 0]        exit 1 on the first failing seed
    rangekv sim --seeds 1 --start 4242 -v      replay one seed, print its trace
    rangekv sim --bug read-without-quorum      show that a planted bug is caught (the core's,
    rangekv sim --bug snapshot-voters-only     the Ready loop's: sim/bugs.py's PLANTED)
    rangekv sim --seeds 200 --hostile 1        a bad rm and a bad node in every seed
    rangekv sim --seeds 200 --ranges 1         two groups, splits, merges and moves in every seed

A failure prints the seed, what was violated, and the end of the trace; the same seed replays
the same run (the trace hash printed for each seed proves it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rangekv.sim.bugs import PLANTED, Plant
from rangekv.sim.cluster import SimConfig, SimFailure, Simulation


def _scratch(root: str | None) -> Path:
    if root:
        return Path(root)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="rangekv-sim-", dir=base))


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. piped into head
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rangekv sim", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--bug", choices=sorted(PLANTED),
                        help="plant a bug (in the core, the Ready loop, ...); succeed if caught")
    parser.add_argument("--nodes", type=int, default=3, choices=[3, 5])
    parser.add_argument("--trace-lines", type=int, default=60,
                        help="trace lines printed for a failure (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each seed's summary (and the trace of a single seed)")
    parser.add_argument("--root", help="scratch directory for the simulated disks")
    parser.add_argument("--hostile", type=float, default=SimConfig.hostile, metavar="SHARE",
                        help="share of the seeds with a bad rm and a bad node (0..1, default "
                             f"{SimConfig.hostile})")
    parser.add_argument("--ranges", type=float, default=SimConfig.ranges, metavar="SHARE",
                        help="share of the seeds with two groups and a table whose ranges the "
                             f"controller splits, merges and moves (0..1, default "
                             f"{SimConfig.ranges})")
    args = parser.parse_args(argv)
    if not 0.0 <= args.hostile <= 1.0:
        parser.error("--hostile: a share in 0..1")
    if not 0.0 <= args.ranges <= 1.0:
        parser.error("--ranges: a share in 0..1")
    plant = PLANTED[args.bug] if args.bug else None
    root = _scratch(args.root)
    try:
        return _run(args, plant, root)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace, plant: Plant | None, root: Path) -> int:
    cfg = SimConfig(nodes=args.nodes, hostile=args.hostile, ranges=args.ranges)
    t0 = time.monotonic()
    events = 0
    hostile: dict[str, int] = {}  # what the hostile actors sent and what became of it
    ranges: dict[str, int] = {}  # range seeds: what the controller changed
    for seed in range(args.start, args.start + args.seeds):
        sim = Simulation(seed, root / "run", cfg, **(plant.kwargs() if plant else {}))
        try:
            result = sim.run()
        except SimFailure as failure:
            print(f"FAILED {failure}")
            print(f"replay: rangekv sim --seeds 1 --start {seed}"
                  + (f" --bug {args.bug}" if args.bug else "") + " -v")
            print(f"trace (last {args.trace_lines} lines, hash {sim.trace_hash}):")
            for line in list(sim.trace)[-args.trace_lines:] if args.trace_lines > 0 else []:
                print("  " + line)
            if args.bug:
                print(f"planted bug {args.bug!r} caught at seed {seed} "
                      f"({seed - args.start + 1} seeds, {time.monotonic() - t0:.1f} s)")
                return 0
            return 1
        events += result["events"]
        hostile["seeds"] = hostile.get("seeds", 0) + int(result["hostile"])
        for key, value in result.items():
            if key.startswith("hostile_"):
                hostile[key] = hostile.get(key, 0) + value
        if sim.ranges:
            ranges["seeds"] = ranges.get("seeds", 0) + 1
            for key in ("splits", "merges", "moves", "source_reads", "ops_not_here"):
                ranges[key] = ranges.get(key, 0) + result[key]
        if args.verbose:
            print(" ".join(f"{k}={v}" for k, v in result.items()))
            if args.seeds == 1:
                for line in sim.trace:
                    print("  " + line)
    elapsed = time.monotonic() - t0
    if args.bug:
        print(f"planted bug {args.bug!r} NOT caught in {args.seeds} seeds ({elapsed:.1f} s)")
        return 1
    print(f"{args.seeds} seeds passed (from {args.start}), {events} events, {elapsed:.1f} s")
    if hostile.get("seeds"):
        h = hostile
        print(f"hostile actors in {h['seeds']} seeds: the bad rm's {h['hostile_rm_sent']} "
              f"writes all refused ({h['hostile_rm_refused']}); the bad node's "
              f"{h['hostile_node_sent']} messages refused {h['hostile_node_refused']}, "
              f"ignored {h['hostile_node_ignored']}, dropped {h['hostile_node_dropped']} "
              "(malformed, or by the address check), none taken")
    if ranges.get("seeds"):
        r = ranges
        print(f"ranges in {r['seeds']} seeds: {r['splits']} splits, {r['moves']} moves, "
              f"{r['merges']} merges by the controller; {r['source_reads']} reads across a "
              f"move's copy, {r['ops_not_here']} requests refused by a group for a stale map")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
