"""What a chaos run must show afterwards; each check returns a :class:`CheckResult`.

* **linearizable**: the register history, per key, by :mod:`rangekv.check` (model ``rangekv``).
  "Could not decide" fails the run: it is never a pass.
* **set**: every acknowledged insert is listed at the end; nothing is listed that no client
  tried to insert (a failed insert that shows up anyway is also a failure: ``unavailable``
  promises it did not happen).
* **replicas**: every member of every group, once they have applied the same index, hashes its
  contents (``content_hash``) to the same digest.
* **logs**: no traceback and no error-level line in any rangekv process's log; no panic or fatal
  line in etcd's; no alert in HAProxy's. (The hostile nemesis's refusals are warnings, at most
  one line per kind every few seconds: they pass.)
* **hostile** (when the hostile nemesis played): each actor ran and sent something, nothing it
  sent was accepted, raw frames got the connection closed, and the targets' own counters went
  up by at least what it sent them: every replication frame dropped, every request refused
  before a field is read, every heartbeat refused for its address or its id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rangekv import errors, wire
from rangekv.check import main as check_main
from rangekv.cluster.local import LocalCluster

REPLICA_CONVERGE_S = 30.0


@dataclass
class CheckResult:
    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "summary": self.summary,
                "details": self.details[:50], "elapsed_s": round(self.elapsed_s, 3)}


def linearizable(history: Path, time_limit_s: float = 30.0) -> CheckResult:
    t = time.monotonic()
    code, out = check_main.run(["--model", "rangekv", "--time-limit-s", str(time_limit_s),
                                str(history)])
    elapsed = time.monotonic() - t
    lines = out.strip().splitlines()
    verdict = {0: "linearizable", 1: "NOT linearizable", 2: "could not decide"}.get(code, "?")
    return CheckResult("linearizable", code == 0, f"{verdict}: {lines[-1] if lines else ''}",
                       lines if code != 0 else [], elapsed)


def set_check(attempted: set[str], acked: set[str], failed: set[str],
              present: list[str]) -> CheckResult:
    seen = set(present)
    lost = sorted(acked - seen)
    phantom = sorted(seen - attempted)
    revived = sorted(seen & failed)
    dup = len(present) - len(seen)
    ok = not lost and not phantom and not revived and dup == 0
    summary = (f"{len(acked)} acknowledged, {len(seen)} present, {len(lost)} lost, "
               f"{len(phantom)} never written, {len(revived)} failed but present, "
               f"{dup} listed twice")
    details = ([f"lost: {e}" for e in lost[:20]] + [f"never written: {e}" for e in phantom[:20]]
               + [f"failed but present: {e}" for e in revived[:20]])
    return CheckResult("set", ok, summary, details)


async def _hashes(addresses: dict[int, str]) -> dict[int, dict[str, Any] | str]:
    out: dict[int, dict[str, Any] | str] = {}
    for node_id, address in addresses.items():
        conn = wire.Connection(address)
        try:
            out[node_id] = await conn.request("content_hash", timeout_s=10.0)
        except (errors.RangeKVError, OSError) as err:
            out[node_id] = f"{type(err).__name__}: {err}"
        finally:
            await conn.close()
    return out


def replicas(endpoint: str, converge_s: float = REPLICA_CONVERGE_S) -> CheckResult:
    """Wait until the members of each group have applied the same index, then compare."""
    t = time.monotonic()
    deadline = t + converge_s
    details: list[str] = []
    while True:
        details = []
        try:
            info = httpx.get(endpoint + "/v1/cluster", timeout=5.0, trust_env=False).json()
        except (httpx.HTTPError, ValueError) as err:
            info = {}
            details.append(f"/v1/cluster: {err}")
        groups = info.get("groups") or []
        all_ok, summary = bool(groups), []
        settled = True
        for g in groups:
            addresses = {m["id"]: m["address"] for m in g["members"] if m.get("address")}
            got = asyncio.run(_hashes(addresses))
            answers = {n: r for n, r in got.items() if isinstance(r, dict)}
            failed = {n: r for n, r in got.items() if isinstance(r, str)}
            applied = {r["applied"] for r in answers.values()}
            digests = {r["hash"] for r in answers.values()}
            if failed or len(applied) != 1:
                settled = False
            line = (f"group {g['id']}: "
                    + ", ".join(f"node {n} applied {r['applied']} hash {r['hash'][:12]}"
                                for n, r in sorted(answers.items()))
                    + "".join(f", node {n}: {r}" for n, r in sorted(failed.items())))
            details.append(line)
            if len(applied) == 1 and len(digests) != 1:
                all_ok = False  # same index, different contents: never settles
            summary.append(f"group {g['id']}: {len(answers)}/{len(addresses)} members, "
                           f"{len(digests)} distinct hash(es)")
        if groups and (settled or not all_ok):
            return CheckResult("replicas", all_ok and settled, "; ".join(summary), details,
                               time.monotonic() - t)
        if time.monotonic() > deadline:
            return CheckResult("replicas", False,
                               f"members did not reach the same applied index in {converge_s}s",
                               details, time.monotonic() - t)
        time.sleep(0.5)


_OUR_BAD = re.compile(r"Traceback \(most recent call last\)|^\S+ (ERROR|CRITICAL) ")
_ETCD_BAD = re.compile(r'"level":"(panic|fatal|dpanic)"')
# "backend 'rms' has no server available!" is an ALERT that a fault which takes both rms out
# (e.g. a partition that leaves neither with an etcd quorum) rightly causes; any other alert
# (a configuration or a runtime error of HAProxy itself) fails the run.
_HAPROXY_BAD = re.compile(r"\[ALERT\](?!.*has no server available)")


def logs(cluster: LocalCluster) -> CheckResult:
    bad: list[str] = []
    scanned = 0
    for path in sorted(cluster.log_dir.glob("*.log")):
        name = path.stem
        pattern = (_ETCD_BAD if name.startswith("etcd") else
                   _HAPROXY_BAD if name == "haproxy" else _OUR_BAD)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            scanned += 1
            if pattern.search(line):
                bad.append(f"{path.name}:{n}: {line[:300]}")
    return CheckResult("logs", not bad, f"{scanned} lines scanned, {len(bad)} bad", bad)


def hostile(records: list[dict[str, Any]]) -> CheckResult:
    """The hostile actors' records (``FaultRecord.hostile``, see :mod:`rangekv.chaos.hostile`):
    they did something, and the boundaries refused all of it and counted it."""
    from rangekv.chaos import hostile as h  # (the actor's module: only when the family played)

    bad: list[str] = []
    notes: list[str] = []
    sent_total = 0
    totals = {"requests": 0, "messages": 0, "heartbeats": 0}
    for i, rec in enumerate(records, start=1):
        name = f"#{i} {rec.get('role', '?')}"
        if rec.get("error"):
            bad.append(f"{name}: {rec['error'][:500]}")
            continue
        sent = sum((rec.get("sent") or {}).values())
        sent_total += sent
        if sent == 0:
            bad.append(f"{name}: sent nothing (no target answered its reconnaissance?)")
        for kind, outcomes in sorted((rec.get("outcomes") or {}).items()):
            for outcome, n in sorted(outcomes.items()):
                if outcome == "ok" and kind in h.MAY_BE_TAKEN:
                    notes.append(f"{name}: {n} {kind} accepted: the member had been silent "
                                 "for meta's heartbeat timeout (a node may move; only TLS tells "
                                 "it from an impostor)")
                elif outcome in ("ok", "answered", "answered_with_an_id", "actor_error"):
                    bad.append(f"{name}: {n} {kind} -> {outcome}: "
                               f"{(rec.get('samples') or {}).get(kind)}")
        ref = rec.get("refused") or {}
        for node, n in sorted((rec.get("raft_delivered") or {}).items()):
            got = (ref.get("messages") or {}).get(node)
            if got is not None and got < n:
                bad.append(f"{name}: node {node} counted {got} dropped replication messages, "
                           f"but {n} forged ones were delivered to it")
        for node, n in sorted((rec.get("parse_refused") or {}).items()):
            got = (ref.get("requests") or {}).get(node)
            if got is not None and got < n:
                bad.append(f"{name}: node {node} counted {got} refused requests, but it "
                           f"refused {n} of the actor's")
        want = int(rec.get("heartbeats_refused") or 0)
        metas_measured = not any(u.startswith("meta") for u in ref.get("unmeasured") or [])
        if want and not ref.get("metas_measured"):
            bad.append(f"{name}: no meta's refused-heartbeats counter could be read")
        elif want and not metas_measured:
            notes.append(f"{name}: a meta did not answer or restarted: its refused heartbeats "
                         "were not measured")
        elif want and ref.get("heartbeats", 0) < want:
            bad.append(f"{name}: the metas counted {ref.get('heartbeats', 0)} refused "
                       f"heartbeats, but refused {want} of the actor's")
        for what in ("requests", "messages"):
            totals[what] += sum((ref.get(what) or {}).values())
        totals["heartbeats"] += int(ref.get("heartbeats") or 0)
        if rec.get("role") == "bad-rm" and sent and not sum((ref.get("requests") or {}).values()):
            bad.append(f"{name}: no node's refused-requests counter went up")
        if rec.get("role") == "bad-node" and sent:
            if not sum((ref.get("messages") or {}).values()):
                bad.append(f"{name}: no node's dropped-messages counter went up")
            if want and metas_measured and not ref.get("heartbeats"):
                bad.append(f"{name}: the metas' refused-heartbeats counter did not go up")
    summary = (f"{len(records)} actor(s) sent {sent_total} frames; the targets counted "
               f"{totals['requests']} requests refused, {totals['messages']} replication "
               f"messages dropped, {totals['heartbeats']} heartbeats refused; "
               f"{len(bad)} problem(s)")
    return CheckResult("hostile", not bad and bool(records), summary, bad + notes)


_PAUSE = re.compile(r"writes were refused for (\d+) ms")
_DECISION = re.compile(r" decision (\w+): ")


def layout(cluster: LocalCluster) -> dict[str, Any]:
    """Where the data ended up and what the controller did: groups, ranges per table, the
    decisions by kind (from the metas' logs) and the longest write pause of a move."""
    out: dict[str, Any] = {"groups": None, "ranges": {}, "decisions": {},
                           "move_pause_ms_max": None}
    try:
        info = httpx.get(cluster.endpoint + "/v1/cluster", timeout=5.0, trust_env=False).json()
        out["groups"] = len(info.get("groups") or [])
        for r in info.get("ranges") or []:
            per = out["ranges"].setdefault(r.get("table"), {"ranges": 0, "groups": set()})
            per["ranges"] += 1
            per["groups"].add(r.get("group"))
        out["ranges"] = {t: {"ranges": v["ranges"], "groups": sorted(v["groups"])}
                         for t, v in out["ranges"].items()}
    except (httpx.HTTPError, ValueError):
        pass
    pauses = []
    for path in sorted(cluster.log_dir.glob("meta-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = _DECISION.search(line)
            if m:
                out["decisions"][m.group(1)] = out["decisions"].get(m.group(1), 0) + 1
            p = _PAUSE.search(line)
            if p:
                pauses.append(int(p.group(1)))
    out["move_pause_ms_max"] = max(pauses) if pauses else None
    return out


def availability(history: Path, t0: float, until_s: float | None = None) -> dict[str, Any]:
    """How the cluster served under the faults: ok completions per second of the run (median
    over its seconds), the share of operations that completed ok, and the longest stretch
    without any ok completion (the worst outage a client saw). Only events up to ``until_s``
    after ``t0`` count (the load phase: not the pause before the final reads)."""
    per_second: dict[int, int] = {}
    oks: list[float] = []
    total = 0
    with open(history, encoding="utf-8") as fh:
        for line in fh:
            event = json.loads(line)
            if event["type"] == "invoke":
                continue
            if until_s is not None and float(event["time"]) - t0 > until_s:
                continue
            total += 1
            if event["type"] == "ok":
                t = float(event["time"]) - t0
                oks.append(t)
                per_second[int(t)] = per_second.get(int(t), 0) + 1
    seconds = max(per_second, default=0) + 1
    rates = sorted(per_second.get(i, 0) for i in range(seconds))
    oks.sort()
    gap, gap_at = max(((b - a, a) for a, b in itertools.pairwise(oks)), default=(0.0, 0.0))
    return {
        "ok_fraction": round(len(oks) / total, 4) if total else 0.0,
        "ok_per_s_median": rates[len(rates) // 2] if rates else 0,
        "seconds_without_ok": sum(1 for r in rates if r == 0),
        "longest_gap_s": round(gap, 3),
        "longest_gap_at_s": round(gap_at, 3),  # when it began (seconds after the start)
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
