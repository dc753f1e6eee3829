"""``rangekv bench SUITE``: benchmarks that print a table and can write JSON.

    rangekv bench calibrate [--dir D] [--seconds S] [--batch N] [--connections N] [--json F]
    rangekv bench routing [--ranges N] [--lookups N] [--events N] [--json F]

``calibrate``: the floor of this machine (``rangekv.bench.calibrate``): fsync rates for 1 and 3
writers, the group-commit ceiling, the loopback round trip, the Python echo ceiling, and from
them the floor of one replicated write. Run it where the cluster keeps its data (``--dir``).

    rangekv bench closed|open|ycsb|scan [--systems rangekv,etcd-http,etcd-py,redis]
                  [--seconds S] [--runs N] [--processes P] [--json F] [...]
    rangekv bench all --json results.json      # calibrate, then every suite on every system
    rangekv bench report results.json --out docs/ [--client client.json]

The suites (``rangekv.bench.suite``) start each system fresh, one at a time, and drive it with
the same multi-process load generator (``rangekv.bench.load``): closed-loop puts and gets at
each concurrency, open-loop runs at fixed rates (latency from the intended send time), YCSB A-F
and whole-table scans; with each, the generator's CPU, every server process's CPU per 1000
operations and fsyncs per acknowledged write. Each figure is the median of ``--runs`` runs.
``report`` writes ``benchmarks.md`` and the plot ``benchmarks-throughput-p99.png``. A progress
bar goes to stderr; the figures (markdown tables) to stdout.

``routing``: the rm's routing map with N ranges of one table (``rangekv.bench.routing``): bytes
per range, lookup time, the cost of one watch event, the full load.

    rangekv bench client [--systems rangekv,etcd] [--seconds S] [--runs N] [--records N]
                         [--tasks N] [--threads N] [--json F] [...]

``client``: rangekv against etcd through their own Python clients (``rangekv.bench.pyclient``),
one generator process per measurement: 64 asyncio tasks (puts/s, linearizable gets/s, client
and server CPU per operation), one task (latency), the sync clients from threads, batch loading
(the client's ``put_many``, and the ``rangekv load`` command) and a full scan. ``all`` runs it
too (``--client-records 0`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rangekv.bench import pyclient, report, suite
from rangekv.bench.calibrate import calibrate
from rangekv.bench.drivers import SYSTEMS
from rangekv.progress import Progress

CALIBRATE_STEPS = 5


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
    helps = {
        "closed": "closed-loop puts and gets at each concurrency",
        "open": "open-loop puts and gets at fixed rates (latency from the intended time)",
        "ycsb": "YCSB workloads A-F (1 KB records, zipfian 0.99)",
        "scan": "whole-table pagination: keys per second",
        "all": "calibrate, then closed, open, ycsb and scan on every system, then client",
    }
    for name, text in helps.items():
        _suite_args(sub.add_parser(name, help=text), name)
    r = sub.add_parser("report", help="write benchmarks.md and the plot from a --json file")
    r.add_argument("results", type=Path, help="the JSON of `rangekv bench all --json`")
    r.add_argument("--out", type=Path, default=Path("docs"),
                   help="directory for benchmarks.md and the PNG (default docs/)")
    r.add_argument("--note", default=None,
                   help="a line to put under the title (e.g. how preliminary the figures are)")
    r.add_argument("--client", type=Path, default=None, metavar="FILE",
                   help="take the Python-client figures from this JSON of `rangekv bench "
                        "client` (or of another `all`) instead of those in RESULTS")
    # -- routing (rangekv.bench.routing): the rm's routing map at scale --
    rt = sub.add_parser("routing", help="the rm's routing map: bytes per range, lookup, apply, "
                                        "load at N ranges")
    rt.add_argument("--ranges", type=int, default=1_000_000, help="default 1,000,000")
    rt.add_argument("--lookups", type=int, default=100_000, help="default 100,000")
    rt.add_argument("--events", type=int, default=1000, help="range events (default 1000)")
    rt.add_argument("--key-bytes", type=int, default=16, help="split key length (default 16)")
    rt.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the figures as JSON")
    rt.set_defaults(run=_run_routing)
    _client_args(sub.add_parser("client", help="rangekv against etcd through their Python "
                                               "clients, in one process: async, sync, one "
                                               "task, batch load, full scan"))
    return p


def _client_args(p: argparse.ArgumentParser) -> None:
    d = pyclient.Config()
    p.add_argument("--systems", default=",".join(pyclient.SYSTEMS),
                   help=f"comma-separated, of {', '.join(pyclient.SYSTEMS)} (default: both)")
    p.add_argument("--seconds", type=float, default=d.seconds,
                   help=f"measurement window per timed run (default {d.seconds:g})")
    p.add_argument("--warmup", type=float, default=d.warmup_s,
                   help=f"warm-up before each window, excluded (default {d.warmup_s:g})")
    p.add_argument("--runs", type=int, default=d.runs,
                   help=f"runs per figure; each figure is their median (default {d.runs})")
    p.add_argument("--tasks", type=int, default=d.tasks,
                   help=f"concurrent asyncio tasks of the throughput runs (default {d.tasks})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"threads of the sync clients (default {d.threads})")
    p.add_argument("--records", type=int, default=d.records,
                   help=f"items loaded, then scanned and read (default {d.records:,}; the "
                        "issue's load target is at 1,000,000)")
    p.add_argument("--load-batch", type=int, default=d.load_batch,
                   help=f"rangekv put_many: items per call (default {d.load_batch})")
    p.add_argument("--load-inflight", type=int, default=d.load_inflight,
                   help=f"put_many calls in flight at once (default {d.load_inflight}); etcd "
                        "gets as many transactions in flight as make as many items in flight")
    p.add_argument("--load-tasks", type=int, default=d.load_tasks,
                   help=f"tasks of a load by single puts, without put_many (default "
                        f"{d.load_tasks})")
    p.add_argument("--etcd-txn-ops", type=int, default=d.etcd_txn_ops,
                   help=f"puts per etcd transaction (default and most: {d.etcd_txn_ops}, "
                        "etcd's --max-txn-ops)")
    p.add_argument("--scan-page", type=int, default=d.scan_page,
                   help=f"keys per page of the scans (default {d.scan_page}, rangekv's client "
                        "default)")
    p.add_argument("--no-cli-load", action="store_true",
                   help="leave out the `rangekv load` command's runs")
    p.add_argument("--rangekv-endpoint", choices=("client", "http"), default=d.rangekv_endpoint,
                   help="which endpoint rangekv's clients get: the one the cluster hands out "
                        "for clients (default; its native rangekv:// endpoint where it has one) "
                        "or HAProxy's HTTP endpoint")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help=f"each client call's timeout, seconds (default {d.timeout_s:g})")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the systems keep their data (default: the temporary directory)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the figures as JSON (for `rangekv bench report`)")
    p.set_defaults(run=_run_client)


def _client_config(args: argparse.Namespace) -> pyclient.Config:
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = set(systems) - set(pyclient.SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(pyclient.SYSTEMS)}")
    return pyclient.Config(
        systems=systems, seconds=args.seconds, warmup_s=args.warmup, runs=args.runs,
        tasks=args.tasks, threads=args.threads, records=args.records,
        load_batch=args.load_batch, load_inflight=args.load_inflight,
        load_tasks=args.load_tasks, etcd_txn_ops=args.etcd_txn_ops, scan_page=args.scan_page,
        cli_load=not args.no_cli_load, rangekv_endpoint=args.rangekv_endpoint,
        timeout_s=args.timeout,
        dir=str(args.dir) if args.dir else None)


def client_data(client: dict[str, Any]) -> dict[str, Any]:
    """What ``rangekv bench client`` writes: the shape of a suite run (for ``report``), with the
    Python-client figures under ``client`` and no suite results."""
    return {"meta": {"started": client["started"], "finished": client["finished"],
                     "machine": suite.machine(), "config": {}, "versions": {}, "labels": {}},
            "calibration": None, "skipped": {}, "failed": {}, "results": [], "client": client}


def _run_client(args: argparse.Namespace) -> int:
    try:
        config = _client_config(args)
    except (ValueError, AssertionError) as exc:
        print(f"error: bad arguments: {exc or 'out of range'}", file=sys.stderr)
        return 2
    bar = Progress(config.steps())
    data = client_data(pyclient.run_client(config, bar.step))
    bar.close()
    print(report.markdown(data, plot_name=None))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 1 if data["client"]["failed"] else 0


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _suite_args(p: argparse.ArgumentParser, name: str) -> None:
    d = suite.Config()
    p.add_argument("--systems", default=",".join(suite.ORDER),
                   help=f"comma-separated, of {', '.join(SYSTEMS)} (default: all; one missing "
                        "here, such as redis-server, is skipped and said so)")
    p.add_argument("--seconds", type=float, default=d.seconds,
                   help=f"measurement window per run (default {d.seconds:g})")
    p.add_argument("--warmup", type=float, default=d.warmup_s,
                   help=f"warm-up before each window, excluded (default {d.warmup_s:g})")
    p.add_argument("--runs", type=int, default=d.runs,
                   help=f"runs per figure; the median run is kept (default {d.runs})")
    p.add_argument("--processes", type=int, default=d.processes,
                   help=f"load generator processes (default {d.processes})")
    p.add_argument("--concurrency", type=_ints, default=d.concurrency,
                   help="closed-loop connections, comma-separated (default "
                        f"{','.join(map(str, d.concurrency))})")
    p.add_argument("--get-records", type=int, default=d.get_records,
                   help=f"keys loaded for the gets (default {d.get_records})")
    p.add_argument("--open-fractions", type=_floats, default=d.open_fractions,
                   help="open-loop rates as fractions of the best closed-loop rate (default "
                        f"{','.join(map(str, d.open_fractions))}; half of etcd's best is added)")
    p.add_argument("--open-connections", type=int, default=d.open_connections,
                   help=f"connections of the open loop (default {d.open_connections})")
    p.add_argument("--ycsb-records", type=int, default=d.ycsb_records,
                   help=f"YCSB record count (default {d.ycsb_records})")
    p.add_argument("--ycsb-workloads", default=d.ycsb_workloads,
                   help=f"which of a-f (default {d.ycsb_workloads})")
    p.add_argument("--ycsb-connections", type=int, default=d.ycsb_connections,
                   help=f"YCSB connections (default {d.ycsb_connections})")
    p.add_argument("--scan-records", type=int, default=d.scan_records,
                   help=f"keys in the scanned table (default {d.scan_records})")
    p.add_argument("--scan-page", type=int, default=d.scan_page,
                   help=f"keys per page (default {d.scan_page})")
    p.add_argument("--scan-connections", type=_ints, default=d.scan_connections,
                   help="concurrent scanners, comma-separated (default "
                        f"{','.join(map(str, d.scan_connections))})")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the systems keep their data (default: the temporary directory)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the figures as JSON (for `rangekv bench report`)")
    if name == "all":
        p.add_argument("--calibrate-seconds", type=float, default=3.0,
                       help="per calibration measurement (default 3; 0 skips calibration)")
        p.add_argument("--routing-ranges", type=int, default=1_000_000,
                       help="ranges of the routing-map measurement (default 1,000,000; 0 skips "
                            "it)")
        p.add_argument("--client-records", type=int, default=pyclient.Config.records,
                       help="items loaded and scanned by the Python-client comparison "
                            f"(`rangekv bench client`; default {pyclient.Config.records:,}; 0 "
                            "skips it); it takes --seconds, --warmup and --runs from here")


def _config(args: argparse.Namespace) -> suite.Config:
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(SYSTEMS)}")
    suites = suite.SUITES if args.suite == "all" else (args.suite,)
    return suite.Config(
        systems=systems, suites=suites, seconds=args.seconds, warmup_s=args.warmup,
        runs=args.runs, processes=args.processes, concurrency=args.concurrency,
        get_records=args.get_records, open_fractions=args.open_fractions,
        open_connections=args.open_connections, ycsb_records=args.ycsb_records,
        ycsb_workloads=args.ycsb_workloads.lower(), ycsb_connections=args.ycsb_connections,
        scan_records=args.scan_records, scan_page=args.scan_page,
        scan_connections=args.scan_connections, dir=str(args.dir) if args.dir else None)


def _run_suites(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except (ValueError, AssertionError) as exc:
        print(f"error: bad arguments: {exc or 'out of range'}", file=sys.stderr)
        return 2
    calibrating = args.suite == "all" and args.calibrate_seconds > 0
    routing_ranges = args.routing_ranges if args.suite == "all" else 0
    client = None
    # the Python-client comparison follows --systems: rangekv, and etcd if any etcd-* is there
    client_systems = tuple(s for s in pyclient.SYSTEMS
                           if any(c == s or c.startswith(s + "-") for c in config.systems))
    if args.suite == "all" and args.client_records > 0 and client_systems:
        client = pyclient.Config(systems=client_systems, seconds=args.seconds,
                                 warmup_s=args.warmup, runs=args.runs,
                                 records=args.client_records,
                                 dir=str(args.dir) if args.dir else None)
    from rangekv.bench import routing

    bar = Progress(config.steps() + (CALIBRATE_STEPS if calibrating else 0)
                   + (routing.STEPS if routing_ranges else 0)
                   + (client.steps() if client else 0))
    cal = None
    if calibrating:
        cal = calibrate(args.dir, args.calibrate_seconds, progress=bar.step).to_json()
    routing_figures = None
    if routing_ranges:
        # before the systems start: it needs a quiet process and about 1 GB at 1M ranges
        routing_figures = routing.measure(routing_ranges, 100_000, 1000, bar.step).to_json()
    data = suite.run_suites(config, bar.step, cal)
    if routing_figures is not None:
        data["routing"] = routing_figures
    if client is not None:
        data["client"] = pyclient.run_client(client, bar.step)
    bar.close()
    print(report.markdown(data, plot_name=None))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 1 if data["failed"] or (data.get("client") or {}).get("failed") else 0


def _report(args: argparse.Namespace) -> int:
    data = json.loads(args.results.read_text())
    if args.client is not None:
        client = json.loads(args.client.read_text()).get("client")
        if not client:
            print(f"error: {args.client} holds no Python-client figures", file=sys.stderr)
            return 2
        data["client"] = client
    md, png = report.write_report(data, args.out, args.note)
    print(f"wrote {md}" + (f" and {png}" if png else " (no plot: matplotlib is missing or "
                                                     "there is nothing to plot)"))
    return 0


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
    if args.suite == "report":
        return _report(args)
    if args.suite != "calibrate":
        return _run_suites(args)
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
