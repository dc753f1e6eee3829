"""``rangekv bench report``: the figures of a suite run (its JSON) as markdown tables, the ratios
rangekv / etcd, the issue's targets beside the figures, and a plot of throughput against p99
latency (``benchmarks-throughput-p99.png``, matplotlib's Agg backend, imported only here).

Every function takes the JSON-ready dict that ``rangekv.bench.suite.run_suites`` returns.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rangekv.bench.suite import REFERENCE

PLOT_NAME = "benchmarks-throughput-p99.png"
TARGET_CONNECTIONS_MIN = 64
TARGET_RATIO = 2.0
TARGET_FSYNCS_PER_WRITE = 0.1
TARGET_SCAN_KEYS_S = 200_000
MARKERS = {"rangekv": "o", "etcd-http": "s", "etcd-py": "^", "redis": "D"}


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and abs(x) >= 100:
        return f"{x:,.0f}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return out


def _errors(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"


def _gen(r: dict[str, Any]) -> str:
    return "+".join(f"{p:.0f}" for p in r["generator"]["cpu_pct"]) + " %"


def _of(data: dict[str, Any], suite: str) -> list[dict[str, Any]]:
    return [r for r in data["results"] if r.get("suite") == suite]


def closed_section(data: dict[str, Any]) -> list[str]:
    rows = [[r["system"], r["workload"], r["connections"], r["ops_per_s"], r["p50_ms"],
             r["p99_ms"], r["p999_ms"], _errors(r), _gen(r),
             " ".join(f"{x:,.0f}" for x in r["runs_ops_per_s"])]
            for r in _of(data, "closed")]
    if not rows:
        return []
    return ["## Closed loop: puts and gets", "",
            ("Each connection sends its next request when the previous answer arrives; 256-byte "
            "values; gets read keys loaded beforehand. Latencies in ms. *gen CPU*: each "
            "generator process's CPU over the window (100 % = one core)."), "",
            *_table(["system", "op", "conns", "ops/s", "p50", "p99", "p99.9", "errors",
                     "gen CPU", "runs (ops/s)"], rows), ""]


def _closed_index(data: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["system"], r["workload"], r["connections"]): r for r in _of(data, "closed")}


def ratio_section(data: dict[str, Any]) -> list[str]:
    idx = _closed_index(data)
    lines: list[str] = []
    for other in ("etcd-http", "etcd-py"):
        rows = []
        for (system, op, conns), r in sorted(idx.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            e = idx.get((other, op, conns))
            if system != "rangekv" or e is None:
                continue
            rows.append([op, conns, r["ops_per_s"] / e["ops_per_s"] if e["ops_per_s"] else None,
                         r["p50_ms"] / e["p50_ms"], r["p99_ms"] / e["p99_ms"]])
        if rows:
            lines += [f"### rangekv / {other}", "",
                      "Above 1 is better for ops/s, below 1 is better for latency.", "",
                      *_table(["op", "conns", "ops/s ratio", "p50 ratio", "p99 ratio"], rows),
                      ""]
    return (["## Ratios rangekv / etcd (closed loop)", "", *lines]) if lines else []


def open_section(data: dict[str, Any]) -> list[str]:
    rows = [[r["system"], r["workload"], r.get("rate_label", ""), r["rate_target"],
             r["ops_per_s"], r["p50_ms"], r["p99_ms"], r["p999_ms"],
             r["send_delay"]["p99_ms"], _errors(r), _gen(r)]
            for r in _of(data, "open")]
    if not rows:
        return []
    return ["## Open loop: fixed rates", "",
            ("Requests are released at their intended times, whatever the answers; latency runs "
            "from the intended time (no coordinated omission), so a request that waited for a "
            "free connection, or for a late generator, counts its wait. *send delay p99*: that "
            "wait alone (it includes the event loop's timer granularity, about 1 ms). A rate "
            "the system cannot carry shows as achieved < target and growing latencies."), "",
            *_table(["system", "op", "rate", "target/s", "achieved/s", "p50", "p99", "p99.9",
                     "send delay p99", "errors", "gen CPU"], rows), ""]


def fsync_section(data: dict[str, Any]) -> list[str]:
    rows = []
    for r in data["results"]:
        fs = r.get("fsync")
        if not fs or r.get("suite") not in ("closed", "open"):
            continue
        per_node = ", ".join(
            f"{n}{'/' + v['role'][0] if v.get('role') else ''} {_f(v['per_write'], 3)}"
            for n, v in fs["nodes"].items())
        rows.append([r["system"], r["suite"], r["workload"],
                     r["connections"] if r["suite"] == "closed" else f"{r['rate_target']:,.0f}/s",
                     fs["acked_writes"], _f(fs["leader_per_write"], 3),
                     _f(fs["node_max_per_write"], 3), _f(fs["total_per_write"], 3), per_node])
    if not rows:
        return []
    return ["## fsyncs per acknowledged write", "",
            ("rangekv: each node's WAL fdatasync count (`wal_syncs` of its `status`); etcd: "
            "`etcd_disk_wal_fsync_duration_seconds_count` of each member's `/metrics` (bbolt "
            "commits are in the JSON as `backend_commits`). Redis reports no count. *node max*: "
            "the busiest replica's syncs per write; *group*: all replicas' syncs added up. In "
            "*per node*, /l is the leader and /f a follower."), "",
            *_table(["system", "suite", "op", "conns or rate", "acked writes", "leader",
                     "node max", "group", "per node"], rows), ""]


def cpu_section(data: dict[str, Any]) -> list[str]:
    rows = []
    for r in data["results"]:
        if r.get("suite") not in ("closed", "ycsb", "scan") or not r.get("servers"):
            continue
        if r.get("suite") == "closed" and r["connections"] not in (1, 64):
            continue
        per = "; ".join(f"{n} {_f(v['cpu_s_per_1000_ops'], 3)}"
                        for n, v in r["servers"].items() if v["cpu_s_per_1000_ops"] is not None)
        server_total = sum(v["cpu_s"] for v in r["servers"].values())
        rows.append([r["system"], r["suite"], r["workload"], r["connections"], r["ops"],
                     _f(1000 * server_total / r["ops"] if r["ops"] else None, 3),
                     _f(r["generator"]["cpu_s_per_1000_ops"], 3), per])
    if not rows:
        return []
    return ["## CPU seconds per 1000 operations, per process", "",
            ("User + system CPU (`/proc/PID/stat`) over the measurement window divided by the "
            "operations completed in it (closed loop at 1 and 64 connections, YCSB, scan: for "
            "a scan an operation is a page)."), "",
            *_table(["system", "suite", "op", "conns", "ops", "servers", "generator",
                     "per server process"], rows), ""]


def ycsb_section(data: dict[str, Any]) -> list[str]:
    rows = []
    for r in _of(data, "ycsb"):
        per_op = "; ".join(f"{op} {v['ops_per_s']:,.0f}/s p99 {v['p99_ms']:.1f}"
                           for op, v in r["by_op"].items())
        rows.append([r["system"], r["workload"].upper().replace("YCSB-", ""), r["connections"],
                     r["ops_per_s"], r["p50_ms"], r["p99_ms"], r["p999_ms"], per_op,
                     _errors(r), _gen(r)])
    if not rows:
        return []
    return ["## YCSB", "",
            ("Workloads A (50 % read, 50 % update), B (95/5), C (read only), D (95 % read of "
            "the latest keys, 5 % insert), E (95 % scans of 1-100 keys, 5 % insert), F (50 % "
            "read, 50 % read-modify-write); 1 KB values, scrambled zipfian 0.99 (D: latest as "
            "this generator process has seen them acknowledged). Redis's scans read a sorted "
            "set (ZRANGE BYLEX) then MGET the keys. Latencies in ms."), "",
            *_table(["system", "workload", "conns", "ops/s", "p50", "p99", "p99.9",
                     "per op", "errors", "gen CPU"], rows), ""]


def scan_section(data: dict[str, Any]) -> list[str]:
    rows = [[r["system"], r["connections"], r["phase"]["workload"]["page"],
             r["items_per_s"], r["ops_per_s"], r["p50_ms"], r["p99_ms"], _errors(r), _gen(r)]
            for r in _of(data, "scan")]
    if not rows:
        return []
    return ["## Scan throughput", "",
            ("The whole table (loaded beforehand, 256-byte values) paginated over and over: "
            "rangekv `GET /v1/tables/T/keys?limit=N` then `?after=<cursor>`; etcd a range with "
            "`limit` from the last key + 1; Redis ZRANGE BYLEX + MGET. Latencies per page, ms."),
            "",
            *_table(["system", "conns", "page", "keys/s", "pages/s", "p50", "p99", "errors",
                     "gen CPU"], rows), ""]


def targets(data: dict[str, Any]) -> list[list[Any]]:
    """The issue's targets: [what, rangekv's figure, the reference, met?]."""
    idx = _closed_index(data)
    out: list[list[Any]] = []

    def best(system: str, op: str) -> tuple[float, int] | None:
        got = [(r["ops_per_s"], c) for (s, o, c), r in idx.items()
               if s == system and o == op and c >= TARGET_CONNECTIONS_MIN]
        return max(got) if got else None

    for op, what in (("put", "puts/s"), ("get", "linearizable gets/s")):
        mine, ref = best("rangekv", op), best(REFERENCE, op)
        if mine and ref:
            ratio = mine[0] / ref[0]
            out.append([f"{what}, >= {TARGET_CONNECTIONS_MIN} connections, >= 2x etcd",
                        f"{mine[0]:,.0f} (x{mine[1]})", f"{ref[0]:,.0f} (x{ref[1]})",
                        f"{ratio:.2f}x: {'met' if ratio >= TARGET_RATIO else 'not met'}"])
    half = {(r["system"], r["workload"]): r for r in _of(data, "open")
            if r.get("rate_label", "").startswith("50% of " + REFERENCE)}
    for op in ("put", "get"):
        mine, ref = half.get(("rangekv", op)), half.get((REFERENCE, op))
        if mine and ref:
            out.append([(f"{op} p99 at half of etcd's best rate ({ref['rate_target']:,.0f}/s) "
                        "<= etcd's"), f"{mine['p99_ms']:.2f} ms", f"{ref['p99_ms']:.2f} ms",
                        "met" if mine["p99_ms"] <= ref["p99_ms"] else "not met"])
    mine1, ref1 = idx.get(("rangekv", "put", 1)), idx.get((REFERENCE, "put", 1))
    floor = (data.get("calibration") or {}).get("floor_put_ms")
    if mine1 and floor:
        # the target: within 3x the machine's floor for one replicated write
        ref_text = f"3 x floor {floor:.2f} ms = {3 * floor:.2f} ms"
        if ref1:
            ref_text += f" (etcd-http {ref1['p50_ms']:.2f} ms)"
        out.append(["one-client put p50 <= 3x the floor of one replicated write",
                    f"{mine1['p50_ms']:.2f} ms", ref_text,
                    f"{mine1['p50_ms'] / floor:.1f}x the floor: "
                    f"{'met' if mine1['p50_ms'] <= 3 * floor else 'not met'}"])
    elif mine1 and ref1:
        out.append(["one-client put p50", f"{mine1['p50_ms']:.2f} ms",
                    f"{ref1['p50_ms']:.2f} ms",
                    f"{mine1['p50_ms'] / ref1['p50_ms']:.2f}x etcd's"])
    put64 = idx.get(("rangekv", "put", 64))
    if put64 and put64.get("fsync") and put64["fsync"]["node_max_per_write"] is not None:
        fs = put64["fsync"]
        out.append([(f"fsyncs per acknowledged write at 64 connections <= "
                    f"{TARGET_FSYNCS_PER_WRITE} (per replica)"),
                    f"{fs['node_max_per_write']:.3f} (group {fs['total_per_write']:.3f})", "",
                    "met" if fs["node_max_per_write"] <= TARGET_FSYNCS_PER_WRITE
                    else "not met"])
    rt = data.get("routing")
    if rt:
        out.append([f"rm routing map at {rt['ranges']:,} ranges: <= "
                    f"{rt['targets']['bytes_per_range_max']} B per range",
                    f"{rt['bytes_per_range']:.0f} B", "",
                    "met" if rt["bytes_per_range"] <= rt["targets"]["bytes_per_range_max"]
                    else "not met"])
        out.append([f"rm routing map at {rt['ranges']:,} ranges: lookup <= "
                    f"{rt['targets']['lookup_us_max']:g} us",
                    f"{rt['lookup_us_median']:.2f} us (median; p99 {rt['lookup_us_p99']:.2f})",
                    "", "met" if rt["lookup_us_median"] <= rt["targets"]["lookup_us_max"]
                    else "not met"])
    scans = [r["items_per_s"] for r in _of(data, "scan") if r["system"] == "rangekv"]
    if scans:
        out.append([f"list/scan >= {TARGET_SCAN_KEYS_S:,} keys/s", f"{max(scans):,.0f}", "",
                    "met" if max(scans) >= TARGET_SCAN_KEYS_S else "not met"])
    return out


def calibration_section(data: dict[str, Any]) -> list[str]:
    cal = data.get("calibration")
    if not cal:
        return []
    rows = []
    for key, name, unit in (("fsync_1", "fsync, 1 writer", "syncs/s"),
                            ("fsync_3", "fsync, 3 writers (one disk)", "syncs/s"),
                            ("group_commit", "group commit", "records/s"),
                            ("loopback_rtt", "loopback round trip", "trips/s"),
                            ("echo_ceiling", "python echo ceiling", "exchanges/s")):
        r = cal[key]
        rows.append([name, f"{r['per_s']:,.0f} {unit}", r["p50_ms"], r["p99_ms"]])
    rows.append(["floor of one replicated write (3 RTT + 1 fsync)", "", cal["floor_put_ms"], ""])
    return ["## The machine's floor (`rangekv bench calibrate`)", "",
            *_table(["measure", "rate", "p50 ms", "p99 ms"], rows),
            *(f"- note: {n}" for n in cal.get("notes", [])), ""]


# The Python-client targets (`rangekv bench client`)
CLIENT_RATIO_MIN = 1.5  # rangekv / etcd via aetcd, 64 tasks, puts and linearizable gets
CLIENT_RATIO_GOAL = 2.0
CLIENT_CPU_PUT_MS_MAX = 0.1  # the generator's CPU per put, 64 tasks
ONE_TASK_PUT_P50_GOAL_MS = 0.75  # and at most etcd's
LOAD_KEYS_S_MIN = 50_000
LOAD_RECORDS_TARGET = 1_000_000
CLIENT_SCAN_KEYS_S_MIN = 300_000


def _ratio(mine: Any, theirs: Any) -> float | None:
    if mine is None or theirs is None or not theirs:
        return None
    return float(mine) / float(theirs)


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _client_index(cl: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["system"], r["what"]): r for r in cl.get("results", [])}


def _runs(r: dict[str, Any]) -> str:
    return " ".join("n/a" if v is None else f"{v:,.0f}" for v in r.get("runs", []))


def _cpu(mine: dict[str, Any] | None, ref: dict[str, Any] | None, digits: int) -> list[str]:
    """Client CPU of rangekv and etcd, then server CPU of both, ms per operation."""
    return [_f(r.get(k) if r else None, digits) for k in ("client_cpu_ms_per_op",
                                                          "server_cpu_ms_per_op")
            for r in (mine, ref)]


def client_targets(cl: dict[str, Any]) -> list[list[Any]]:
    """The Python-client targets: [what, rangekv, etcd via aetcd, verdict]."""
    idx = _client_index(cl)
    tasks = cl["config"]["tasks"]
    out: list[list[Any]] = []
    for op, what in (("put", "puts/s"), ("get", "linearizable gets/s")):
        mine, ref = idx.get(("rangekv", f"async {op} x{tasks}")), idx.get(
            ("etcd", f"async {op} x{tasks}"))
        if mine and ref:
            r = _ratio(mine["ops_per_s"], ref["ops_per_s"])
            verdict = ("n/a" if r is None else
                       f"{r:.2f}x: met, goal met" if r >= CLIENT_RATIO_GOAL else
                       f"{r:.2f}x: met, goal not met" if r >= CLIENT_RATIO_MIN else
                       f"{r:.2f}x: not met")
            out.append([f"{what}, {tasks} tasks, >= {CLIENT_RATIO_MIN:g}x etcd (goal "
                        f"{CLIENT_RATIO_GOAL:g}x)", _f(mine["ops_per_s"]), _f(ref["ops_per_s"]),
                        verdict])
    mine = idx.get(("rangekv", f"async put x{tasks}"))
    if mine and mine.get("client_cpu_ms_per_op") is not None:
        ref = idx.get(("etcd", f"async put x{tasks}"))
        cpu = mine["client_cpu_ms_per_op"]
        out.append([f"client CPU per put, {tasks} tasks, <= {CLIENT_CPU_PUT_MS_MAX} ms",
                    f"{cpu:.3f} ms", f"{ref['client_cpu_ms_per_op']:.3f} ms" if ref and
                    ref.get("client_cpu_ms_per_op") is not None else "",
                    "met" if cpu <= CLIENT_CPU_PUT_MS_MAX else "not met"])
    mine, ref = idx.get(("rangekv", "async put x1")), idx.get(("etcd", "async put x1"))
    if mine:
        p50 = mine["p50_ms"]
        verdict = ("met" if ref and p50 <= ref["p50_ms"] else "not met" if ref else "n/a")
        verdict += (", goal met" if p50 <= ONE_TASK_PUT_P50_GOAL_MS else ", goal not met")
        out.append([f"one task: put p50 <= etcd's (goal {ONE_TASK_PUT_P50_GOAL_MS} ms)",
                    f"{p50:.2f} ms", f"{ref['p50_ms']:.2f} ms" if ref else "", verdict])
    loaded = idx.get(("rangekv", "rangekv load")) or idx.get(("rangekv", "load"))
    if loaded:
        n = cl["config"]["records"]
        how = "`rangekv load`" if loaded["what"] == "rangekv load" else "the client's batches"
        ref = idx.get(("etcd", "load"))
        scale = "" if n >= LOAD_RECORDS_TARGET else f" (measured at {n:,}, the target's is " \
                                                    f"{LOAD_RECORDS_TARGET:,})"
        out.append([f"{how} of {LOAD_RECORDS_TARGET:,} 256-byte items >= {LOAD_KEYS_S_MIN:,} "
                    f"keys/s{scale}", f"{loaded['keys_per_s']:,.0f} keys/s",
                    f"{ref['keys_per_s']:,.0f} keys/s" if ref else "",
                    "met" if loaded["keys_per_s"] >= LOAD_KEYS_S_MIN else "not met"])
    mine, ref = idx.get(("rangekv", "scan")), idx.get(("etcd", "scan"))
    if mine:
        out.append([f"full scan through the Python client >= {CLIENT_SCAN_KEYS_S_MIN:,} keys/s",
                    f"{mine['keys_per_s']:,.0f} keys/s",
                    f"{ref['keys_per_s']:,.0f} keys/s" if ref else "",
                    "met" if mine["keys_per_s"] >= CLIENT_SCAN_KEYS_S_MIN else "not met"])
    return out


def client_section(data: dict[str, Any]) -> list[str]:
    """The Python-client comparison (``rangekv bench client``): rangekv's ``AsyncClient`` and
    ``Client`` against etcd's aetcd and etcd3, in one generator process each."""
    cl = data.get("client")
    if not cl:
        return []
    cfg = cl["config"]
    idx = _client_index(cl)
    lines = [
        "## Python clients, one process (`rangekv bench client`)", "",
        ("Each system's own Python client in one generator process, as an application uses "
         "it: rangekv's `AsyncClient` (and `Client` from threads) against etcd's `aetcd` "
         "(and `etcd3` from threads); a fresh process per measurement. 256-byte values; gets "
         "are linearizable on both and read loaded keys. etcd's clients hold one gRPC channel "
         "per member, task *i* on member *i* mod 3 (one task: the leader, etcd's best case); "
         "rangekv's go to the client endpoint (HAProxy). *client CPU*: the generator "
         "process's CPU (all its threads) over the window per operation; *server CPU*: every "
         "server process's CPU over the window per operation, added up."), "",
        (f"- run: {cl.get('started', '?')} to {cl.get('finished', '?')}; each figure the "
         f"median of {cfg['runs']} run(s) of {cfg['seconds']:g} s after {cfg['warmup_s']:g} s "
         f"of warm-up ({cfg['tasks']} tasks, {cfg['threads']} threads; {cfg['records']:,} "
         "items loaded and scanned)"),
    ]
    for name, version in cl.get("versions", {}).items():
        lines.append(f"- {cl.get('labels', {}).get(name, name)}: {version}")
    for name, why in cl.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
    for name, why in cl.get("failed", {}).items():
        lines.append(f"- {name}: FAILED, {why}")
    lines += [f"- note: {n}" for n in cl.get("notes", [])]
    lines.append("")
    tg = client_targets(cl)
    if tg:
        lines += ["### Targets", "", *_table(["target", "rangekv", "etcd (aetcd)", "verdict"],
                                              tg), ""]
    timed = [r for r in cl.get("results", []) if r["kind"] == "ops" and r["system"] == "rangekv"]
    timed += [r for r in cl.get("results", []) if r["kind"] == "ops" and r["system"] == "etcd"
              and ("rangekv", r["what"]) not in idx]
    many = [r for r in timed if r["concurrency"] > 1]
    if many:
        rows = []
        for r in many:
            mine, ref = idx.get(("rangekv", r["what"])), idx.get(("etcd", r["what"]))
            client = (f"async, {r['concurrency']} tasks" if r["api"] == "async"
                      else f"sync, {r['concurrency']} threads")
            rows.append([r["op"], client,
                         mine["ops_per_s"] if mine else None, ref["ops_per_s"] if ref else None,
                         _x(_ratio(mine and mine["ops_per_s"], ref and ref["ops_per_s"])),
                         mine["p99_ms"] if mine else None, ref["p99_ms"] if ref else None,
                         *_cpu(mine, ref, 3), _errors(mine) if mine else "",
                         _errors(ref) if ref else ""])
        lines += ["### Throughput and CPU per operation", "",
                  ("ops/s over the window; p99 in ms; CPU in ms per operation. Ratio: rangekv / "
                   "etcd, above 1 is better for rangekv."), "",
                  *_table(["op", "clients", "rangekv ops/s", "etcd ops/s", "ratio",
                           "rangekv p99", "etcd p99", "rangekv client CPU", "etcd client CPU",
                           "rangekv server CPU", "etcd server CPU", "rangekv errors",
                           "etcd errors"], rows), ""]
    one = [r for r in timed if r["concurrency"] == 1]
    if one:
        rows = []
        for r in one:
            mine, ref = idx.get(("rangekv", r["what"])), idx.get(("etcd", r["what"]))
            rows.append([r["op"], mine["p50_ms"] if mine else None,
                         mine["p99_ms"] if mine else None, ref["p50_ms"] if ref else None,
                         ref["p99_ms"] if ref else None,
                         _x(_ratio(mine and mine["p50_ms"], ref and ref["p50_ms"])),
                         *_cpu(mine, ref, 3)])
        lines += ["### One task: latency", "",
                  ("One asyncio task calling back to back; latency in ms from the call to its "
                   "return. Ratio: rangekv p50 / etcd p50, below 1 is better for rangekv."), "",
                  *_table(["op", "rangekv p50", "rangekv p99", "etcd p50", "etcd p99",
                           "p50 ratio", "rangekv client CPU", "etcd client CPU",
                           "rangekv server CPU", "etcd server CPU"], rows), ""]
    counted = []
    for what, title in (("load", "batch load"), ("rangekv load", "`rangekv load` command"),
                        ("scan", "full scan")):
        ref = idx.get(("etcd", "scan" if what == "scan" else "load"))
        for system in ("rangekv", "etcd"):
            r = idx.get((system, what))
            if r is None:
                continue
            counted.append([title, system, r.get("path", f"page of {r.get('page', '?')}"),
                            r.get("keys"), r["keys_per_s"],
                            _x(_ratio(r["keys_per_s"], ref and ref["keys_per_s"]))
                            if system == "rangekv" else "",
                            _f(r.get("client_cpu_ms_per_op"), 4),
                            _f(r.get("server_cpu_ms_per_op"), 4), _errors(r), _runs(r)])
    if counted:
        lines += ["### Batch loading and full scans", "",
                  (f"A load puts {cfg['records']:,} items once (a fresh table each run) and the "
                   "scan then reads that whole table through the client; keys/s from the first "
                   "request to the last answer. `rangekv load` is the command on a JSON Lines "
                   "file of the same items, timed from its start to its exit (reading the file "
                   "included; what it reports itself is in the JSON), its CPU the command's "
                   "own. Ratio: rangekv / etcd. CPU in ms per key."), "",
                  *_table(["what", "system", "how", "keys", "keys/s", "ratio", "client CPU",
                           "server CPU", "errors", "runs (keys/s)"], counted), ""]
    per_proc = []
    for r in cl.get("results", []):
        if r["kind"] == "ops" and r.get("concurrency") == cfg["tasks"] and r.get("servers"):
            per_proc.append([r["system"], r["what"], "; ".join(
                f"{n} {_f(v['cpu_ms_per_op'], 3)}" for n, v in r["servers"].items()
                if v["cpu_ms_per_op"] is not None), _f(r.get("fsync_per_write"), 3)])
    if per_proc:
        lines += [f"### Server CPU per operation, per process ({cfg['tasks']} tasks)", "",
                  ("ms of CPU per operation of each server process over the window (user + "
                   "system, `/proc/PID/stat`); *fsyncs/write*: the busiest replica's syncs per "
                   "acknowledged put."), "",
                  *_table(["system", "what", "per process (ms/op)", "fsyncs/write"], per_proc),
                  ""]
    return lines


def markdown(data: dict[str, Any], plot_name: str | None = PLOT_NAME,
             note: str | None = None) -> str:
    meta = data["meta"]
    cfg = meta["config"]
    m = meta["machine"]
    lines = [
        "# Benchmarks", "",
        *([f"> {note}", ""] if note else []),
        ("Made by `scripts/bench` (`rangekv bench all --json results.json`, then `rangekv bench "
        "report results.json --out docs/`). Figures from one machine, on loopback; the servers "
        "and the load generator share its cores, so read them against the machine's floor "
        "below and the generator's own CPU in each table."), "",
    ]
    if data.get("results"):
        lines.append(
            f"- run: {meta['started']} to {meta.get('finished', '?')}; median of {cfg['runs']} "
            f"run(s) of {cfg['seconds']:g} s after {cfg['warmup_s']:g} s of warm-up; "
            f"{cfg['processes']} generator processes")
    lines.append(
        f"- machine: {m['cores']} cores, Python {m['python']}, {m['platform']}, load average "
        f"at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}")
    for name, version in meta["versions"].items():
        lines.append(f"- {meta['labels'].get(name, name)}: {version}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
    for name, why in data.get("failed", {}).items():
        lines.append(f"- {name}: FAILED, {why}")
    lines.append("")
    if data.get("results"):
        lines += [("Redis is an upper reference only: a single node, not replicated, with "
                  "`appendfsync always`. etcd runs 3 members with its defaults (fsync on); "
                  "`etcd-http` is its v3 JSON gateway, `etcd-py` the `aetcd` client (asyncio "
                  "gRPC). rangekv is one group of 3 replicas (plus 2 spares) behind HAProxy with "
                  "2 request managers."), ""]
    tg = targets(data)
    if tg:
        lines += ["## Targets of issue 6", "",
                  *_table(["target", "rangekv", f"{REFERENCE}", "verdict"], tg), ""]
    if plot_name:
        lines += [f"![throughput against p99 latency]({plot_name})", ""]
    for section in (closed_section, ratio_section, open_section, fsync_section, cpu_section,
                    ycsb_section, scan_section, client_section, calibration_section):
        lines += section(data)
    return "\n".join(lines).rstrip() + "\n"


def plot(data: dict[str, Any], path: Path) -> bool:
    """Throughput (x) against p99 latency (y, log) for each system, puts and gets side by
    side: closed loop as lines over concurrency, open loop as hollow markers. False when there
    is nothing to plot."""
    rows = [r for r in data["results"] if r.get("suite") in ("closed", "open")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, op in zip(axes, ("put", "get"), strict=True):
        systems = sorted({r["system"] for r in rows if r["workload"] == op})
        for i, system in enumerate(systems):
            color = f"C{i}"
            label = data["meta"]["labels"].get(system, system)
            closed = sorted((r for r in rows if r["system"] == system and r["workload"] == op
                             and r["suite"] == "closed"), key=lambda r: r["connections"])
            if closed:
                ax.plot([r["ops_per_s"] for r in closed], [r["p99_ms"] for r in closed],
                        marker=MARKERS.get(system, "o"), color=color, label=label + " (closed)")
                for r in closed:
                    ax.annotate(str(r["connections"]), (r["ops_per_s"], r["p99_ms"]),
                                textcoords="offset points", xytext=(3, 3), fontsize=7)
            opened = [r for r in rows if r["system"] == system and r["workload"] == op
                      and r["suite"] == "open"]
            if opened:
                ax.scatter([r["ops_per_s"] for r in opened], [r["p99_ms"] for r in opened],
                           marker=MARKERS.get(system, "o"), facecolors="none",
                           edgecolors=color, label=f"{system} (open loop)")
        ax.set_yscale("log")
        ax.set_xlabel(f"{op}s per second")
        ax.set_ylabel("p99 latency, ms (log)")
        ax.set_title(f"{op}s: throughput against p99 (numbers: connections)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(data: dict[str, Any], out_dir: Path,
                 note: str | None = None) -> tuple[Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png: Path | None = out_dir / PLOT_NAME
    assert png is not None
    try:
        drawn = plot(data, png)
    except ImportError:  # matplotlib is in the optional "bench" extra
        drawn = False
    if not drawn:
        png = None
    md = out_dir / "benchmarks.md"
    md.write_text(markdown(data, PLOT_NAME if png else None, note))
    return md, png
