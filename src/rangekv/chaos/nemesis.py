"""The nemesis: every few seconds it picks a fault, holds it, then heals everything.

Faults (``--nemesis`` takes names or families, comma-separated; ``all`` is every family):

=====================  ============================================================================
family ``partition``   ``partition-one`` one storage node cut off from every other host;
                       ``partition-leader`` a group's leader cut off; ``partition-halves`` every
                       host (nodes, metas, rms, etcd members) split into a majority and a
                       minority at random; ``partition-bridge`` two halves and one node that
                       sees both; ``partition-ring`` the storage nodes in a ring, each seeing only
                       its two neighbours (every node sees a majority, no two the same one);
                       ``partition-leader-rm`` a leader and one rm cut off together (the rm keeps
                       routing to the deposed leader)
family ``loss``        ``loss``: 1-3 storage nodes drop 20-40 % of what they receive
family ``kill``        ``kill-follower``, ``kill-leader``, ``kill-group`` (every node of a group):
                       ``kill -9``, restarted at heal
family ``pause``       ``pause-leader``, ``pause-follower``: SIGSTOP, SIGCONT at heal
family ``infra``       ``kill-rm``, ``kill-meta`` (the active one), ``kill-etcd`` (one member)
family ``clock``       ``clock-skew``: the rms' wall clocks (which stamp seqs) jump by up to
                       ±30 s each (libfaketime), reset at heal
family ``replace``     ``kill-for-good``: ``kill -9`` of a follower that stays down until the end
                       of the run (at most one per spare), so that the controller replaces it
                       from the spare pool
family ``controller``  ``split``: a range of a workload table is cut at one of its keys and
                       the upper part moves to another group (``?to=auto``); ``move``: a range
                       moves to another group; both live, under the load
family ``hostile``     ``bad-rm``, ``bad-node``: for the hold time, an actor on a host of its own
                       sends the leaders, members and metas frames no honest rm or node sends
                       (poison seqs, wrong types, bad frames; forged replication messages,
                       snapshot offers and heartbeats), at a bounded rate; the counts of what it
                       sent and of what the targets refused go to the report
                       (:mod:`rangekv.chaos.hostile`)
=====================  ============================================================================

Healing removes every iptables rule, continues paused processes, restarts what is not running,
resets the clocks and ends a hostile actor (reading what the boundaries refused meanwhile).
The choices come from ``random.Random(seed)``; what the cluster does in between does not (real
processes), so a seed replays the same plan, not the same history.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rangekv import errors, wire
from rangekv.chaos import hostile
from rangekv.chaos.netcluster import HOSTILE, NetCluster

STATUS_TIMEOUT_S = 0.5  # asking a node whether it leads

FAMILIES: dict[str, list[str]] = {
    "partition": ["partition-one", "partition-leader", "partition-halves", "partition-bridge",
                  "partition-ring", "partition-leader-rm"],
    "loss": ["loss"],
    "kill": ["kill-follower", "kill-leader", "kill-group"],
    "pause": ["pause-leader", "pause-follower"],
    "infra": ["kill-rm", "kill-meta", "kill-etcd"],
    "clock": ["clock-skew"],
    "replace": ["kill-for-good"],
    "controller": ["split", "move"],
    "hostile": list(hostile.FAULTS),
}
TABLES = ("chaos_reg", "chaos_set")  # the workload's (see workload.py)
ALL_FAULTS = [f for faults in FAMILIES.values() for f in faults]


def parse_nemesis(text: str) -> list[str]:
    """``all``, ``none``, or a comma-separated list of families and fault names."""
    faults: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part or part == "none":
            continue
        if part == "all":
            faults += ALL_FAULTS
        elif part in FAMILIES:
            faults += FAMILIES[part]
        elif part in ALL_FAULTS:
            faults.append(part)
        else:
            raise ValueError(f"unknown nemesis {part!r} (families: {', '.join(FAMILIES)}, "
                             f"faults: {', '.join(ALL_FAULTS)}, or all / none)")
    return list(dict.fromkeys(faults))


@dataclass
class FaultRecord:
    fault: str
    detail: str
    start_s: float  # since the start of the run
    end_s: float | None = None
    error: str | None = None
    hostile: dict[str, Any] | None = None  # a hostile fault's record (hostile.Run.finish)

    def to_json(self) -> dict[str, Any]:
        out = {"fault": self.fault, "detail": self.detail, "start_s": round(self.start_s, 3),
               "end_s": None if self.end_s is None else round(self.end_s, 3),
               "error": self.error}
        if self.hostile is not None:
            out["hostile"] = self.hostile
        return out


@dataclass
class Nemesis:
    cluster: NetCluster
    faults: list[str]
    seed: int
    t0: float  # monotonic start of the run
    interval_s: tuple[float, float] = (5.0, 10.0)
    rest_s: float = 2.0  # healed time at the end of each interval
    records: list[FaultRecord] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    work_dir: Path | None = None  # the hostile actors' plans, results and logs

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._paused: list[str] = []
        self._gone: set[str] = set()  # killed for good: restarted by the final heal only
        self._actor: hostile.Run | None = None  # the hostile fault under way
        self._actors: hostile.ActorProcess | None = None  # where hostile faults run
        self._hold_s = 0.0  # how long the fault being applied is held

    def prepare(self) -> None:
        """Start what faults need before they begin (the hostile actor's process)."""
        if any(f in hostile.FAULTS for f in self.faults):
            self._actors = hostile.ActorProcess(
                self.cluster, self.work_dir or self.cluster.data_dir / "hostile")
            with contextlib.suppress(RuntimeError):  # (tried again, and reported, at a fault)
                self._actors.ensure()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def close(self) -> None:
        """End what ``prepare`` started (also done by the final heal of ``run``)."""
        if self._actors is not None:
            self._actors.close()

    # --- topology -----------------------------------------------------------------------------

    def topology(self) -> dict[str, Any]:
        """``/v1/cluster`` through HAProxy ({} when no rm answers: faults then pick at random)."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            resp = httpx.get(self.cluster.endpoint + "/v1/cluster", timeout=2.0, trust_env=False)
            if resp.status_code == 200:
                info: dict[str, Any] = resp.json()
                return info
        return {}

    def _group(self, info: dict[str, Any]) -> tuple[str | None, list[str]]:
        """(leader name or None, member names) of a random group. The leader is the member
        that says it leads the highest epoch (asked directly: an rm's map may be stale, or no
        rm may answer, right after a fault); the map's leader only if no member answers."""
        groups = info.get("groups") or []
        if not groups:
            members = [f"node-{i}" for i in range(1, 4)]
            return self._leading(members), members
        g = self.rng.choice(groups)
        members = [f"node-{m['id']}" for m in g.get("members", [])]
        mapped = f"node-{g['leader']}" if g.get("leader") is not None else None
        return self._leading(members) or mapped, members

    def _leading(self, members: list[str]) -> str | None:
        """The member that reports role leader at the highest epoch (node op ``status``)."""

        async def ask(name: str) -> tuple[int, str] | None:
            i = int(name.split("-")[1])
            conn = wire.Connection(f"{self.cluster.host_of(name)}:{self.cluster.node_port(i)}",
                                   STATUS_TIMEOUT_S)
            try:
                st = await conn.request("status", timeout_s=STATUS_TIMEOUT_S)
            except (errors.RangeKVError, OSError):
                return None
            finally:
                await conn.close()
            return (int(st.get("epoch") or 0), name) if st.get("role") == "leader" else None

        async def ask_all() -> list[tuple[int, str] | None]:
            return list(await asyncio.gather(*(ask(m) for m in members)))

        leaders = [x for x in asyncio.run(ask_all()) if x is not None]
        return max(leaders)[1] if leaders else None

    def _nodes(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.cluster.nodes + 1)]

    def _hosts(self) -> list[str]:
        """The cluster's hosts (the hostile actor's is none of them: partitions leave it be,
        and it sends only while its own fault is held)."""
        return [h for h in self.cluster.net.hosts if h != HOSTILE]

    # --- faults -------------------------------------------------------------------------------

    def apply(self, fault: str) -> str:
        """Start ``fault``; returns what exactly it did, for the report."""
        c, rng = self.cluster, self.rng
        info = self.topology()
        leader, members = self._group(info)
        followers = [m for m in members if m != leader]
        target_leader = leader or rng.choice(members)
        # said in the report when "leader" below is a guess
        guess = "" if leader else " (no member said it leads: picked at random)"
        if fault == "partition-one":
            node = rng.choice(self._nodes())
            c.net.partition([[node], [h for h in self._hosts() if h != node]])
            return f"isolated {node}"
        if fault == "partition-leader":
            c.net.partition([[target_leader], [h for h in self._hosts() if h != target_leader]])
            return f"isolated leader {target_leader}{guess}"
        if fault == "partition-halves":
            hosts = self._hosts()
            rng.shuffle(hosts)
            minority = hosts[: len(hosts) // 2]
            c.net.partition([minority, hosts[len(hosts) // 2:]])
            return f"minority {sorted(minority)}"
        if fault == "partition-bridge":
            hosts = [h for h in self._hosts() if h != target_leader]
            rng.shuffle(hosts)
            a, b = hosts[: len(hosts) // 2], hosts[len(hosts) // 2:]
            c.net.partition([a, b])  # target_leader is in neither side: it bridges them
            return f"bridge {target_leader} between {sorted(a)} and {sorted(b)}{guess}"
        if fault == "partition-ring":
            ring = self._nodes()
            rng.shuffle(ring)
            n = len(ring)
            adjacent = {frozenset((ring[i], ring[(i + 1) % n])) for i in range(n)}
            pairs = [(a, b) for i, a in enumerate(ring) for b in ring[i + 1:]
                     if frozenset((a, b)) not in adjacent]
            c.net.cut(pairs)
            return f"ring {' - '.join(ring)}"
        if fault == "partition-leader-rm":
            rm = f"rm-{rng.randint(1, c.rms)}"
            side = [target_leader, rm]
            c.net.partition([side, [h for h in self._hosts() if h not in side]])
            return f"isolated leader {target_leader} with {rm}{guess}"
        if fault == "loss":
            hosts = rng.sample(self._nodes(), rng.randint(1, 3))
            p = rng.uniform(0.2, 0.4)
            c.net.lose(hosts, p)
            return f"{p:.0%} loss at {sorted(hosts)}"
        if fault == "kill-follower":
            node = rng.choice(followers or members)
            c.kill(node)
            return f"kill -9 {node}"
        if fault == "kill-for-good":
            spares = [n for n in info.get("nodes") or [] if n.get("state") == "spare"]
            if not spares:
                node = rng.choice(followers or members)
                c.kill(node)
                return f"kill -9 {node} (no spare left to replace one for good: restarted at heal)"
            node = rng.choice(followers or members)
            c.kill(node)
            self._gone.add(node)
            return f"kill -9 {node} for good (down until the end of the run)"
        if fault == "kill-leader":
            c.kill(target_leader)
            return f"kill -9 leader {target_leader}{guess}"
        if fault == "kill-group":
            for m in members:
                c.kill(m)
            return f"kill -9 {', '.join(members)}"
        if fault in ("pause-leader", "pause-follower"):
            node = target_leader if fault == "pause-leader" else rng.choice(followers or members)
            c.pause(node)
            self._paused.append(node)
            return f"SIGSTOP {node}" + (guess if fault == "pause-leader" else "")
        if fault == "kill-rm":
            rm = f"rm-{rng.randint(1, c.rms)}"
            c.kill(rm)
            return f"kill -9 {rm}"
        if fault == "kill-meta":
            active = info.get("meta")  # {"id": 1, "address": ...} of the active meta
            meta_id = active.get("id") if isinstance(active, dict) else None
            if meta_id in (1, 2):
                meta, why = f"meta-{meta_id}", "the active one"
            else:
                meta, why = f"meta-{rng.randint(1, 2)}", "active one unknown: picked at random"
            c.kill(meta)
            return f"kill -9 {meta} ({why})"
        if fault == "kill-etcd":
            member = f"etcd-{rng.randint(1, 3)}"
            c.kill(member)
            return f"kill -9 {member}"
        if fault == "clock-skew":
            parts = []
            for i in range(1, c.rms + 1):
                skew = rng.uniform(-30, 30)
                c.clock_file(f"rm-{i}").write_text(f"{skew:+.3f}s\n")
                parts.append(f"rm-{i} {skew:+.1f}s")
            return "clock " + ", ".join(parts)
        if fault in ("split", "move"):
            return self._reshape(fault, info)
        if fault in hostile.FAULTS:
            if self._actors is None:
                self.prepare()
            assert self._actors is not None
            self._actor = hostile.Run(self._actors, fault, rng.randrange(2**32), self._hold_s,
                                      info, len(self.records))
            return self._actor.start()
        raise ValueError(f"unknown fault {fault!r}")

    def _reshape(self, fault: str, info: dict[str, Any]) -> str:
        """Split or move a range of a workload table through the API, as an operator would."""
        rng = self.rng
        table = rng.choice(TABLES)
        with httpx.Client(base_url=self.cluster.endpoint, timeout=20.0, trust_env=False) as http:
            page = http.get(f"/v1/tables/{table}/keys", params={"limit": 1000})
            keys = [item["key"] for item in page.json().get("items", [])] \
                if page.status_code == 200 else []
            if not keys:
                return f"{table} has no keys yet: nothing to {fault}"
            key = rng.choice(keys)
            quoted = urllib.parse.quote(key, safe="")
            if fault == "split":
                resp = http.post(f"/v1/tables/{table}/split/{quoted}", params={"to": "auto"})
            else:
                groups = [g["id"] for g in info.get("groups") or []]
                mine = next((r for r in info.get("ranges") or []
                             if r.get("table") == table and r["start"] <= key
                             and (r["end"] is None or key < r["end"])), None)
                others = [g for g in groups if mine is None or g != mine["group"]]
                if not others:
                    return f"no other group to move {table}'s range holding {key!r} to"
                to = rng.choice(others)
                resp = http.post(f"/v1/tables/{table}/move/{quoted}", params={"to": to})
        body = resp.text[:200] if resp.status_code != 200 else ""
        layout = ""
        if resp.status_code == 200:
            layout = " ".join(f"[{r['start']!r}..{r['end']!r})@{r['group']}"
                              for r in resp.json().get("ranges", []))
        return f"{fault} {table} at {key!r}: {resp.status_code} {body}{layout}"

    def heal(self, final: bool = False) -> None:
        """Undo every fault: rules flushed, processes continued or restarted (those killed for
        good only at the ``final`` heal), clocks reset."""
        c = self.cluster
        if self._actor is not None:  # (normally ended by ``run``, which keeps its record)
            self._actor = None
            if self._actors is not None:
                self._actors.kill()
        if final:
            self.close()
        c.net.heal()
        for node in self._paused:
            c.resume(node)
        self._paused.clear()
        if c.skew_rms:
            for i in range(1, c.rms + 1):
                c.clock_file(f"rm-{i}").write_text("+0\n")
        skip = () if final else self._gone
        if any(not c.alive(name) and name not in skip for name in c.names):
            c.start(skip=skip)  # starts exactly what is not running

    # --- the loop (in its own thread: the faults block) ---------------------------------------

    def run(self, until_s: float) -> None:
        """Fault, hold, heal, rest; until ``until_s`` after t0 or ``stop``. Always heals."""
        try:
            while not self.stop.is_set():
                interval = self.rng.uniform(*self.interval_s)
                if self.now() + interval > until_s or not self.faults:
                    break
                fault = self.rng.choice(self.faults)
                record = FaultRecord(fault, "", self.now())
                self.records.append(record)
                self._hold_s = max(0.0, interval - self.rest_s)
                try:
                    record.detail = self.apply(fault)
                except Exception as err:  # noqa: BLE001 (the run goes on; the report shows it)
                    record.error = f"{type(err).__name__}: {err}"
                self.stop.wait(self._hold_s)
                if self._actor is not None:
                    try:
                        record.hostile = self._actor.finish()
                    except Exception as err:  # noqa: BLE001 (reported; the check fails on it)
                        record.hostile = {"error": f"{type(err).__name__}: {err}"}
                    self._actor = None
                try:
                    self.heal()
                except Exception as err:  # noqa: BLE001 (reported; the final heal retries)
                    record.error = (record.error or "") + f" heal: {type(err).__name__}: {err}"
                record.end_s = self.now()
                self.stop.wait(self.rest_s)
        finally:
            self.heal(final=True)
