"""``rangekv chaos``: attack a real local cluster with real faults, then check everything.

    rangekv chaos [--time S] [--nemesis LIST] [--seed N] [--clients N] [--dir D] [--keep]
                  [--planted-bug NAME] [--min-rate OPS]

What happens:

1. Network namespaces are made (one per process: real separate hosts on this machine, joined by
   a bridge; :mod:`rangekv.chaos.net`), and a cluster starts in them: etcd as 3 members, two
   metas, 5 storage nodes, 2 rms, HAProxy on the host (:mod:`rangekv.chaos.netcluster`).
2. The workload (:mod:`rangekv.chaos.workload`) runs for ``--time`` seconds. For the first
   ``WARMUP_S`` no fault is injected; if the load has not reached ``--min-rate`` completed
   operations per second by then, the run is invalid (exit 2): faults against an idle cluster
   prove nothing (etcd's robustness tests have the same rule).
3. The nemesis (:mod:`rangekv.chaos.nemesis`) picks a fault every 5-10 s, holds it, heals.
4. At the end everything is healed, the cluster is given time to settle, and final reads are
   made. Then the checks of :mod:`rangekv.chaos.checks` run.

The run directory (``--dir``, default a new ``rangekv-chaos-<seed>-<time>`` under the system's
temporary directory) keeps ``history.jsonl`` (check it again with ``rangekv check-history
--model rangekv``), ``report.json``, and the cluster's data and logs. Exit status: 0 every check
passed; 1 a check failed; 2 the run was invalid or could not be set up (e.g. no network
namespaces here: the message says why).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rangekv.chaos import checks, hostile
from rangekv.chaos.nemesis import FAMILIES, Nemesis, parse_nemesis
from rangekv.chaos.net import NetError, check_support
from rangekv.chaos.netcluster import NetCluster
from rangekv.chaos.workload import History, Workload
from rangekv.cluster.local import NODES_MAX, ClusterError, find_free_base_port
from rangekv.controller import bugs as controller_bugs
from rangekv.metadata.mover_bugs import MOVER_BUGS

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
WARMUP_S = 3.0
SETTLE_S = 3.0
READY_TIMEOUT_S = 90.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rangekv chaos",
        description="Run a real cluster in network namespaces under faults and check the "
                    "history (exit 0 pass, 1 failure found, 2 invalid run).")
    p.add_argument("--time", type=float, default=60.0, metavar="S",
                   help="seconds of load (faults start after a warm-up); default 60")
    p.add_argument("--nemesis", default="all", metavar="LIST",
                   help="faults: all, none, or families/fault names, comma-separated "
                        f"(families: {', '.join(FAMILIES)}); default all")
    p.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random)")
    p.add_argument("--clients", type=int, default=10, help="register clients (default 10)")
    p.add_argument("--direct-clients", type=int, default=4, metavar="N",
                   help="of the register clients, how many talk to one rm each (round robin) "
                        "instead of through HAProxy, as Jepsen's clients each talk to one node "
                        "(default 4)")
    p.add_argument("--set-clients", type=int, default=2, help="set clients (default 2)")
    p.add_argument("--interval", default="5,10", metavar="MIN,MAX",
                   help="seconds between faults (default 5,10)")
    p.add_argument("--min-rate", type=float, default=50.0, metavar="OPS",
                   help="completed ops/s the warm-up must reach, or the run is invalid")
    p.add_argument("--dir", type=Path, default=None, help="run directory (kept)")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory of a passing run (a failing one is always kept)")
    p.add_argument("--planted-bug", default=None, metavar="NAME",
                   help="run the nodes with a planted bug of rangekv.replication.bugs, or "
                        "the metas with one of rangekv.controller.bugs or "
                        "rangekv.metadata.mover_bugs (the run is expected to fail)")
    p.add_argument("--groups", type=int, default=2,
                   help="replication groups of 3 nodes at the start (default 2)")
    p.add_argument("--spares", type=int, default=2,
                   help="spare nodes besides the groups' (default 2)")
    p.add_argument("--split-ops", type=float, default=None, metavar="OPS",
                   help="split ranges serving more than OPS reads+writes per second (the "
                        "controller then moves them, and forms groups from spares when the "
                        "others have no room: --group-ranges-max); default: meta's own")
    p.add_argument("--group-ranges-max", type=int, default=None, metavar="N",
                   help="a group serving N ranges has no room for more (default: meta's own)")
    p.add_argument("--subnet", default=None, metavar="10.N.M",
                   help="the /24 for the namespaces (default: picked from the seed)")
    p.add_argument("--compact-entries", type=int, default=None, metavar="N",
                   help="the nodes' --compact-entries (low values make followers that were "
                        "down catch up by snapshot)")
    p.add_argument("--compact-retain", type=int, default=None, metavar="N",
                   help="the nodes' --compact-retain")
    return p


def _say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        faults = parse_nemesis(args.nemesis)
        lo, hi = (float(x) for x in args.interval.split(","))
        if not 0 < lo <= hi:
            raise ValueError("--interval: 0 < MIN <= MAX")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    why = check_support()
    if why is not None:
        print(f"error: cannot run chaos here: network namespaces are needed to make separate "
              f"hosts on this machine, and {why}", file=sys.stderr)
        return EXIT_INVALID
    run_dir = args.dir or Path(tempfile.gettempdir()) / (
        f"rangekv-chaos-{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    subnet = args.subnet or f"10.{rng.randint(64, 250)}.{rng.randint(0, 250)}"
    prefix = f"rkc{seed % 10000}"
    _say(f"seed {seed}; nemesis {', '.join(faults) or 'none'}; dir {run_dir}")
    nodes = 3 * args.groups + args.spares
    if not 1 <= args.groups or not 0 <= args.spares or nodes > NODES_MAX:
        print(f"error: --groups and --spares: at most {NODES_MAX} nodes", file=sys.stderr)
        return EXIT_INVALID
    node_flags: tuple[str, ...] = ()
    meta_flags: tuple[str, ...] = ()
    if args.planted_bug in {**controller_bugs.BUGS, **MOVER_BUGS}:  # the metas run it
        meta_flags = ("--planted-bug", args.planted_bug)
        _say(f"planted bug {args.planted_bug!r} enabled in every meta")
    elif args.planted_bug:
        node_flags = ("--planted-bug", args.planted_bug)
        _say(f"planted bug {args.planted_bug!r} enabled in every node")
    if args.split_ops is not None:
        meta_flags += ("--split-ops", str(args.split_ops), "--split-cooldown-s", "3")
    if args.group_ranges_max is not None:
        meta_flags += ("--group-ranges-max", str(args.group_ranges_max))
    cluster = NetCluster(run_dir / "cluster", find_free_base_port(nodes), nodes=nodes, rms=2,
                         prefix=prefix, subnet=subnet, skew_rms="clock-skew" in faults,
                         hostile=any(f in hostile.FAULTS for f in faults),
                         groups=args.groups, extra_args={"meta": meta_flags, "node": node_flags},
                         compact_entries=args.compact_entries,
                         compact_retain=args.compact_retain)
    report: dict[str, Any] = {"seed": seed, "time_s": args.time, "nemesis": faults,
                              "planted_bug": args.planted_bug, "dir": str(run_dir),
                              "subnet": subnet}
    code = EXIT_INVALID
    try:
        t = time.monotonic()
        cluster.start()
        cluster.wait_ready(READY_TIMEOUT_S)
        _say(f"cluster ready in {time.monotonic() - t:.1f} s: 3 etcd members, 2 metas, "
             f"{nodes} nodes ({args.groups} groups, {args.spares} spares), 2 rms, each in its "
             f"own namespace on {subnet}.0/24; HAProxy at "
             f"{cluster.endpoint}")
        code = _attack_and_check(args, cluster, run_dir, seed, faults, (lo, hi), report)
    except (ClusterError, NetError) as err:
        report["error"] = str(err)
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_INVALID
    finally:
        cluster.teardown()
        report["exit"] = code
        checks.write_report(run_dir / "report.json", report)
    if code == EXIT_OK and not args.keep and args.dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        _say("passed; run directory removed (--keep keeps it)")
    else:
        _say(f"report: {run_dir / 'report.json'}")
    return code


def _attack_and_check(args: argparse.Namespace, cluster: NetCluster, run_dir: Path, seed: int,
                      faults: list[str], interval: tuple[float, float],
                      report: dict[str, Any]) -> int:
    history = History(run_dir / "history.jsonl")
    # the native protocol, with exactly-once writes: what the Python client uses by default
    workload = Workload(cluster.native_endpoint, history, seed=seed, clients=args.clients,
                        set_clients=args.set_clients,
                        direct_endpoints=cluster.rm_native_endpoints,
                        direct_clients=min(args.direct_clients, args.clients))
    t0 = time.monotonic()
    nemesis = Nemesis(cluster, faults, seed, t0, interval_s=interval,
                      work_dir=run_dir / "hostile")
    warm = {}
    nemesis.prepare()  # (the hostile actor's process: started before the warm-up)

    async def drive() -> list[str]:
        await workload.setup()
        load = asyncio.create_task(workload.run())
        await asyncio.sleep(WARMUP_S)
        done = history.completed() + len(workload.set.acked) + len(workload.set.failed)
        warm["rate"] = done / WARMUP_S
        if warm["rate"] < args.min_rate:
            workload.stop.set()
            await load
            return []
        thread = threading.Thread(target=nemesis.run, args=(args.time,), name="nemesis",
                                  daemon=True)
        thread.start()
        _say(f"warm-up: {warm['rate']:.0f} ops/s; nemesis on")
        last = time.monotonic()
        while time.monotonic() - t0 < args.time:
            await asyncio.sleep(1.0)
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                _say(f"t={time.monotonic() - t0:.0f}s {history.completed()} ops, "
                     f"{len(workload.set.acked)} inserts; "
                     f"faults so far: {len(nemesis.records)}")
        nemesis.stop.set()
        await asyncio.to_thread(thread.join)
        workload.stop.set()
        await load
        warm["stopped"] = time.monotonic() - t0
        _say(f"load stopped after {time.monotonic() - t0:.1f} s; healed; settling")
        await asyncio.to_thread(cluster.wait_ready, READY_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        return await workload.final_reads()

    try:
        present = asyncio.run(drive())
    finally:
        history.close()
        nemesis.close()
    counts: dict[str, dict[str, int]] = {}
    for (f, type_), n in sorted(history.counts.items()):
        counts.setdefault(f, {})[type_] = n
    s = workload.set
    report.update({
        "warmup_ops_per_s": round(warm.get("rate", 0.0), 1),
        "ops": history.completed(),
        "counts": counts,
        "keys": len(workload.all_keys),
        "set": {"attempted": len(s.attempted), "ok": len(s.acked), "fail": len(s.failed),
                "info": len(s.unknown)},
        "faults": [r.to_json() for r in nemesis.records],
        "duration_s": round(time.monotonic() - t0, 1),
    })
    if warm.get("rate", 0.0) < args.min_rate:
        report["invalid"] = (f"warm-up reached {warm.get('rate', 0.0):.1f} ops/s, below "
                             f"--min-rate {args.min_rate}")
        _say("INVALID: " + report["invalid"])
        return EXIT_INVALID
    report["availability"] = checks.availability(run_dir / "history.jsonl", t0,
                                                 warm.get("stopped"))
    report["layout"] = checks.layout(cluster)
    results = [
        checks.linearizable(run_dir / "history.jsonl"),
        checks.set_check(s.attempted, s.acked, s.failed, present),
        checks.replicas(cluster.endpoint),
        checks.logs(cluster),
    ]
    played = [r.hostile for r in nemesis.records if r.hostile is not None]
    if played:
        results.append(checks.hostile(played))
        report["hostile"] = _hostile_totals(played)
    report["checks"] = [r.to_json() for r in results]
    _print_report(report, results)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _hostile_totals(played: list[dict[str, Any]]) -> dict[str, Any]:
    """What the hostile actors sent, by kind, and what the targets counted, over the run."""
    sent: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    refused = {"requests": 0, "messages": 0, "connections": 0, "heartbeats": 0}
    for rec in played:
        for kind, n in (rec.get("sent") or {}).items():
            sent[kind] = sent.get(kind, 0) + n
        for by in (rec.get("outcomes") or {}).values():
            for outcome, n in by.items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
        ref = rec.get("refused") or {}
        for what in ("requests", "messages", "connections"):
            refused[what] += sum((ref.get(what) or {}).values())
        refused["heartbeats"] += int(ref.get("heartbeats") or 0)
    return {"faults": len(played), "sent": dict(sorted(sent.items())),
            "outcomes": dict(sorted(outcomes.items())), "refused": refused}


def _print_report(report: dict[str, Any], results: list[checks.CheckResult]) -> None:
    print(f"\nseed {report['seed']}, {report['duration_s']} s, {report['ops']} register ops "
          f"on {report['keys']} keys (warm-up {report['warmup_ops_per_s']} ops/s)")
    for f, by_type in report["counts"].items():
        print(f"  {f:<7} " + "  ".join(f"{t} {n}" for t, n in sorted(by_type.items())))
    st = report["set"]
    print(f"  set     ok {st['ok']}  fail {st['fail']}  info {st['info']}")
    av = report["availability"]
    print(f"availability: {av['ok_fraction']:.1%} of register ops ok; median "
          f"{av['ok_per_s_median']} ok/s; {av['seconds_without_ok']} s without any ok; "
          f"longest gap {av['longest_gap_s']} s from t={av['longest_gap_at_s']:.1f}s"
          + "".join(f" (during {r['fault']})" for r in report["faults"]
                    if r["start_s"] <= av["longest_gap_at_s"] <= (r["end_s"] or 1e9)))
    lay = report.get("layout") or {}
    if lay:
        print(f"layout at the end: {lay['groups']} groups; ranges per table "
              f"{lay['ranges']}; controller decisions {lay['decisions']}; longest write "
              f"pause of a move {lay['move_pause_ms_max']} ms")
    print("faults:")
    for r in report["faults"]:
        err = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"  {r['start_s']:7.1f}s - {r['end_s'] or 0:7.1f}s  {r['fault']:<20} "
              f"{r['detail']}{err}")
        if r.get("hostile"):
            print(f"{'':>22}{hostile.summary(r['hostile'])}")
    print("checks:")
    for res in results:
        print(f"  {'PASS' if res.ok else 'FAIL'}  {res.name:<13} {res.summary} "
              f"({res.elapsed_s:.2f} s)")
        if not res.ok:
            for line in res.details[:30]:
                print(f"        {line}")
    if report.get("hostile"):
        ht = report["hostile"]
        print(f"hostile: {ht['faults']} fault(s), {sum(ht['sent'].values())} frames sent; "
              "answers " + ", ".join(f"{k} {v}" for k, v in ht["outcomes"].items())
              + "; counted by the targets " + ", ".join(f"{k} +{v}"
                                                        for k, v in ht["refused"].items()))
    print("PASSED" if all(r.ok for r in results) else "FAILED", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if os.geteuid() != 0:
        print("error: rangekv chaos needs root (network namespaces, iptables)", file=sys.stderr)
        return EXIT_INVALID
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
