"""Failover: how long writes stop when the leader of the group is killed with ``kill -9``.

    .venv/bin/python bench/failover.py [--kills 10] [--writers 8] [--soak 30] [--json FILE]

Starts a fresh local cluster (``LocalCluster``: etcd, two metas, 5 nodes, 2 rms, HAProxy) in a
temporary directory on free ports, creates a table and runs ``--writers`` threads that put
unique keys through HAProxy (closed loop, one keep-alive connection each). Then, ``--kills``
times:

1. find the group's leader and epoch (``GET /v1/cluster`` on an rm),
2. ``kill -9`` it (t0 = just before the signal),
3. watch: the new epoch appearing in ``/v1/cluster`` (*detection*: meta noticed and recorded
   it in etcd, and the rm's watch delivered it), the new leader reporting ``role leader`` for
   that epoch over the internal ``status`` op (*campaign*: NEW_EPOCH, no-op committed), and the
   first write acknowledged to any writer after that (*to ack*: the rm's retry reaching the new
   leader),
4. restart the killed node (``cluster.start()``), wait until it follows the new epoch and has
   applied what the leader had applied when it came back, then let the cluster settle
   ``--calm`` seconds.

The sample is t0 → first acknowledged write. An acknowledgement counts only if it arrived after
this program saw the new epoch in ``/v1/cluster``: a reply the old leader sent just before it
died can reach a writer after the kill, and no new leader can acknowledge anything before its
epoch is recorded. That can only make a sample longer, by about one poll (10 ms). Before the kills, ``--soak`` seconds of the same load without any kill check for
spurious failovers (an epoch change with nobody killed: a false "leader lost" under load).

A program that prints figures, never a timed assertion. Everything stays on 127.0.0.1 and stops
by itself (every process by its pid, in a ``finally``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from rangekv import errors, wire
from rangekv.cluster.local import LocalCluster, find_free_base_port

POLL_S = 0.01
PHASE_TIMEOUT_S = 30.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))
    return s[int(k)]


class Writers:
    """Threads putting unique keys; every acknowledgement is timestamped (monotonic)."""

    def __init__(self, endpoint: str, table: str, count: int) -> None:
        self.endpoint, self.table = endpoint, table
        self.acks: list[float] = []  # completion times, appended in order per thread
        self.acked: dict[str, tuple[str, str]] = {}
        self.failed: list[tuple[float, int]] = []  # (time, status; 0 = transport error)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(count)
        ]

    def _run(self, w: int) -> None:
        with httpx.Client(base_url=self.endpoint, timeout=15, trust_env=False) as http:
            i = 0
            while not self._stop.is_set():
                key, value = f"w{w:02d}-{i:07d}", f"v{w}-{i}"
                i += 1
                try:
                    r = http.put(f"/v1/tables/{self.table}/keys/{key}", content=value)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                now = time.monotonic()
                with self._cond:
                    if status == 200:
                        self.acks.append(now)
                        self.acked[key] = (value, r.json()["seq"])
                        self._cond.notify_all()
                    else:
                        self.failed.append((now, status))
                if status != 200:
                    time.sleep(0.01)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def first_ack_after(self, t: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                later = [a for a in self.acks[-2000:] if a > t]
                if later:
                    return min(later)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def failures_between(self, t0: float, t1: float) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for at, status in self.failed:
                if t0 <= at <= t1:
                    out[str(status or "transport")] = out.get(str(status or "transport"), 0) + 1
            return out


class Probe:
    """``/v1/cluster`` from rm-1 and ``status`` of nodes over the internal protocol."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.http = httpx.Client(timeout=2, trust_env=False)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.http.close()
        self.loop.close()

    def group(self) -> dict[str, Any]:
        url = self.cluster.rm_endpoints[0] + "/v1/cluster"
        return self.http.get(url).json()["groups"][0]

    def status(self, node: int) -> dict[str, Any] | None:
        async def ask() -> dict[str, Any]:
            conn = wire.Connection(self.cluster.node_addresses[node], connect_timeout_s=0.5)
            try:
                return await conn.request("status", timeout_s=1.0)
            finally:
                await conn.close()

        try:
            return self.loop.run_until_complete(ask())
        except errors.RangeKVError:
            return None


def wait_for(what: str, predicate: Any, timeout_s: float = PHASE_TIMEOUT_S) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return time.monotonic()
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def soak(probe: Probe, writers: Writers, seconds: float) -> dict[str, Any]:
    """Load without kills: does the epoch move by itself?"""
    g0 = probe.group()
    n0 = len(writers.acks)
    t0 = time.monotonic()
    changes = []
    last = g0["epoch"]
    while time.monotonic() - t0 < seconds:
        time.sleep(0.2)
        try:
            g = probe.group()
        except httpx.HTTPError:
            continue
        if g["epoch"] != last:
            changes.append(
                {
                    "at_s": round(time.monotonic() - t0, 2),
                    "epoch": g["epoch"],
                    "leader": g["leader"],
                }
            )
            last = g["epoch"]
    t1 = time.monotonic()
    return {
        "seconds": round(t1 - t0, 1),
        "epoch_before": g0["epoch"],
        "epoch_after": last,
        "epoch_changes": changes,
        "acked": len(writers.acks) - n0,
        "puts_per_s": round((len(writers.acks) - n0) / (t1 - t0)),
        "failures": writers.failures_between(t0, t1),
    }


def one_kill(cluster: LocalCluster, probe: Probe, writers: Writers, calm_s: float) -> dict:
    g = probe.group()
    leader, epoch = g["leader"], g["epoch"]
    members = [m["id"] for m in g["members"]]
    name = f"node-{leader}"
    t0 = time.monotonic()
    cluster.kill(name)  # SIGKILL, returns once the process is gone
    t_dead = time.monotonic()

    new: dict[str, Any] = {}

    def new_epoch() -> bool:
        cur = probe.group()
        if cur["epoch"] > epoch and cur["leader"] is not None:
            new.update(cur)
            return True
        return False

    t_epoch = wait_for("a new epoch in /v1/cluster", new_epoch)

    def serving() -> bool:
        st = probe.status(new["leader"])
        return st is not None and st["role"] == "leader" and st["leader_epoch"] >= new["epoch"]

    t_serving = wait_for(f"node-{new['leader']} to serve epoch {new['epoch']}", serving)
    # Only acks after the new epoch was seen count: the old leader may have answered a write
    # just before it died, and that answer can reach a writer after the kill.
    t_ack = writers.first_ack_after(t_epoch, PHASE_TIMEOUT_S)
    if t_ack is None:
        raise TimeoutError("no write acknowledged within 30 s of the kill")
    failures = writers.failures_between(t0, t_ack + 1.0)

    # Bring the killed node back and let it catch up before the next kill.
    cluster.start()
    target = {}

    def rejoined() -> bool:
        st = probe.status(leader)
        lead = probe.status(new["leader"])
        if st is None or lead is None:
            return False
        if "applied" not in target:
            target["applied"] = lead["applied_index"]
        return (
            st["role"] == "follower"
            and st["epoch"] >= new["epoch"]
            and st["applied_index"] >= target["applied"]
        )

    t_back = wait_for(f"{name} to rejoin and catch up", rejoined, 60)
    time.sleep(calm_s)
    return {
        "killed": name,
        "epoch": [epoch, new["epoch"]],
        "new_leader": new["leader"],
        "members": members,
        "kill_to_ack_s": round(t_ack - t0, 3),
        "detection_s": round(t_epoch - t0, 3),
        "campaign_s": round(max(0.0, t_serving - t_epoch), 3),
        "to_ack_s": round(max(0.0, t_ack - max(t_serving, t_epoch)), 3),
        "kill_wait_s": round(t_dead - t0, 3),
        "rejoin_s": round(t_back - t_ack, 2),
        "failures": failures,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "p90": round(percentile(values, 90), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="leader kills (default 10)")
    parser.add_argument("--writers", type=int, default=8, help="writer threads (default 8)")
    parser.add_argument(
        "--soak",
        type=float,
        default=30.0,
        help="seconds of load without kills first, to catch spurious "
        "failovers (default 30; 0 skips)",
    )
    parser.add_argument(
        "--calm",
        type=float,
        default=3.0,
        help="seconds to settle after a killed node caught up (default 3)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here as JSON")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="run the cluster here and keep it (logs included) afterwards; "
        "default: a temporary directory, removed",
    )
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"writers": args.writers, "kills": []}
    with tempfile.TemporaryDirectory(prefix="rangekv-failover-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        if args.data_dir is not None and data_dir.exists():
            parser.error(f"{data_dir} exists; give a new directory")
        cluster = LocalCluster(data_dir, find_free_base_port())
        writers: Writers | None = None
        probe: Probe | None = None
        ok = False
        try:
            cluster.start()
            cluster.wait_ready(90)
            httpx.put(
                f"{cluster.endpoint}/v1/tables/failover", timeout=30, trust_env=False
            ).raise_for_status()
            probe = Probe(cluster)
            writers = Writers(cluster.endpoint, "failover", args.writers)
            writers.start()
            if writers.first_ack_after(0, 30) is None:
                raise TimeoutError("no write acknowledged within 30 s of starting the load")
            time.sleep(1.0)
            if args.soak > 0:
                print(
                    f"soak: {args.soak:g} s of load with {args.writers} writers, no kills ...",
                    flush=True,
                )
                result["soak"] = s = soak(probe, writers, args.soak)
                print(
                    f"soak: {s['puts_per_s']} puts/s, epoch {s['epoch_before']} -> "
                    f"{s['epoch_after']}, spurious epoch changes: "
                    f"{len(s['epoch_changes'])} {s['epoch_changes'] or ''}, "
                    f"failed puts: {s['failures'] or 0}",
                    flush=True,
                )
            for k in range(1, args.kills + 1):
                r = one_kill(cluster, probe, writers, args.calm)
                result["kills"].append(r)
                print(
                    f"kill {k:2d}: {r['killed']} epoch {r['epoch'][0]}->{r['epoch'][1]} "
                    f"leader node-{r['new_leader']}  kill->ack {r['kill_to_ack_s']:.3f} s  "
                    f"(detection {r['detection_s']:.3f}, campaign {r['campaign_s']:.3f}, "
                    f"to ack {r['to_ack_s']:.3f})  failed puts {r['failures'] or 0}  "
                    f"rejoined in {r['rejoin_s']:.1f} s",
                    flush=True,
                )
            ok = True
        except BaseException:
            print(cluster.log_tails(lines=40), file=sys.stderr)
            raise
        finally:
            if writers is not None:
                writers.stop()
            if probe is not None:
                probe.close()
            cluster.stop()
            if writers is not None:
                result["acked_total"] = len(writers.acks)
                result["failed_total"] = len(writers.failed)
        if ok and result["kills"]:
            for field in ("kill_to_ack_s", "detection_s", "campaign_s", "to_ack_s"):
                result[field] = summary([r[field] for r in result["kills"]])
            t = result["kill_to_ack_s"]
            print(
                f"\nkill -9 of the leader -> next acknowledged write, {len(result['kills'])} "
                f"kills, {args.writers} writers:"
            )
            print(
                f"  median {t['median']:.3f} s   p90 {t['p90']:.3f} s   max {t['max']:.3f} s   "
                f"min {t['min']:.3f} s"
            )
            for field, label in (
                ("detection_s", "detection (kill -> new epoch visible)"),
                ("campaign_s", "campaign (epoch -> new leader serves)"),
                ("to_ack_s", "to ack (serving -> first ack)"),
            ):
                f = result[field]
                print(
                    f"  {label:40} median {f['median']:.3f} s  p90 {f['p90']:.3f} s  "
                    f"max {f['max']:.3f} s"
                )
            print(
                f"  puts acknowledged {result['acked_total']}, failed or unknown "
                f"{result['failed_total']}"
            )
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
