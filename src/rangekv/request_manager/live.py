"""Live cluster status: the metadata's topology joined with what each node says of itself now.

Theory of operation
-------------------

The metadata (``ClusterView.to_json``, served as ``GET /v1/cluster``) says what the cluster is
meant to be: groups with their recorded epoch, leader and members, ranges and the group serving
each, nodes with their state (member, spare, flagged and why), tables, the controller's recent
decisions. Each node's ``status`` op says what it is now: its role, epoch, last, commit and
applied index; a leader also says how far it knows each peer's log to match (``match``) and,
when asked (``ranges=True``), each range's size and load (``node/stats.py``).

* ``probe`` asks every node at once, each within ``timeout_s``; a node that does not answer in
  time, or refuses, is *unreachable* with the reason. So a probe takes at most about
  ``timeout_s`` however many nodes are down.
* ``summarize`` joins the two into one JSON document, the answer of the rm's
  ``GET /v1/cluster/status`` (shown by the dashboard at ``/ui/`` and by ``rangekv status``,
  ``rangekv nodes`` and ``rangekv ranges``). It is pure and tolerant: a field missing from
  either side (an older node, no probe at all with ``rangekv status --no-probe``) shows as
  unknown (``None``), never as an error.
* ``LiveStatus`` is the rm's side: at most one probe in flight, its result reused for
  ``CACHE_TTL_S`` so that many open dashboards do not multiply the probes, and the summary
  recomputed only when the view or the probe changed.

Definitions (what the figures mean):

* **leader** of a group: the member that says it leads at the highest epoch; when none does
  (or none answered), the leader the metadata records (``leader_recorded`` is always that one).
* **lag** of a member or learner, in log entries: ``leader.last_index - match`` when the leader
  reports a match for it (entries the leader has that it has not acknowledged), else
  ``leader.commit_index - member.last_index``; never below 0; ``None`` when unknown.
* a group's **health**: ``unknown`` without a probe; ``no_leader`` when no member says it leads;
  ``degraded`` when a member or learner is unreachable, lags by more than ``LAG_WARN_ENTRIES``,
  or is **stuck** (its lag stopped shrinking: the controller's ``lag_stuck`` decision, see
  ``rangekv.controller.lag``; ``stuck`` says since when, the lag then and why); else ``ok``.
* a range's **size and load**: the figures of its group's leader (the replica that serves every
  read and write): keys and bytes stored, reads and writes per second (decaying averages over
  about 10 s).

Bounds: at most ``RANGES_PER_TABLE_MAX`` ranges of a table are listed (``ranges_total`` says how
many there are; the table's sums count only the listed ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from rangekv import errors

PROBE_TIMEOUT_S = 1.0  # per node
CACHE_TTL_S = 1.0  # a probe's result is reused this long
LAG_WARN_ENTRIES = 1000  # a member this far behind makes its group "degraded"
RANGES_PER_TABLE_MAX = 1000

Probe = dict[str, Any] | str  # a node's status, or why it could not be had
Ask = Callable[[str], Awaitable[dict[str, Any]]]  # address -> that node's status reply

_RANGE_FIGURES = ("keys", "bytes", "counted", "rps", "wps", "rbps", "wbps")
_NODE_FIGURES = ("epoch", "last_index", "commit_index", "applied_index")


async def probe(nodes: Iterable[tuple[int, str]], ask: Ask,
                timeout_s: float = PROBE_TIMEOUT_S) -> dict[int, Probe]:
    """Each node's status (``ask(address)``), all at once, each within ``timeout_s``; a node
    that fails or is late maps to the reason, as text. So does a node whose address another
    node now answers (a flagged node's machine reused under a new id): its row must not show
    the other node's role and indexes."""

    async def one(node_id: int, address: str) -> Probe:
        try:
            async with asyncio.timeout(timeout_s):
                st = await ask(address)
        except TimeoutError:
            return f"Timeout: no answer within {timeout_s:g} s"
        except (errors.RangeKVError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        other = st.get("node_id")
        if isinstance(other, int) and other != node_id:
            return f"node {other} answers at {address} now, not node {node_id}"
        return st

    todo = [(node_id, address) for node_id, address in nodes if isinstance(address, str)]
    got = await asyncio.gather(*(one(node_id, address) for node_id, address in todo))
    return {node_id: g for (node_id, _), g in zip(todo, got, strict=True)}


def nodes_of(info: dict[str, Any]) -> list[tuple[int, str]]:
    """(id, address) of every node of a ``/v1/cluster`` topology."""
    return [(n["id"], n["address"]) for n in info.get("nodes") or []
            if isinstance(n.get("id"), int) and isinstance(n.get("address"), str)]


# --- the join (pure) --------------------------------------------------------------------------


def _live(probes: dict[int, Probe] | None, node_id: Any) -> tuple[dict[str, Any] | None,
                                                                 str | None, bool | None]:
    """(status, error, reachable) of a node; reachable is None when it was not asked."""
    if probes is None or node_id not in probes:
        return None, None, None
    st = probes[node_id]
    if isinstance(st, dict):
        return st, None, True
    return None, str(st), False


def _num(st: dict[str, Any] | None, name: str) -> int | None:
    value = st.get(name) if st is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _lag(leader_st: dict[str, Any] | None, node_id: Any, st: dict[str, Any] | None) -> int | None:
    if leader_st is None:
        return None
    match = leader_st.get("match")
    last = _num(leader_st, "last_index")
    if isinstance(match, dict) and last is not None:
        m = match.get(str(node_id), match.get(node_id))
        if isinstance(m, int):
            return max(0, last - m)
    commit = _num(leader_st, "commit_index")
    own_last = _num(st, "last_index")
    if commit is None or own_last is None:
        return None
    return max(0, commit - own_last)


def _start_hex(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return value if isinstance(value, str) else None


def summarize(info: dict[str, Any], probes: dict[int, Probe] | None, *,
              table: str | None = None, probe_ms: float | None = None,
              now_s: float | None = None) -> dict[str, Any]:
    """The live status document: ``info`` is the ``/v1/cluster`` topology, ``probes`` each
    node's status or why it could not be had (``None``: nodes not asked). ``table`` keeps only
    that table's ranges."""
    nodes_meta = {n.get("id"): n for n in info.get("nodes") or []}
    probed = probes is not None
    # members and learners whose lag the controller found stuck (decisions ``lag_stuck``)
    stuck_of = {(d.get("group"), d.get("node")): d for d in info.get("lag_stuck") or []
                if isinstance(d, dict)}

    # -- groups: who leads now, each member's indexes and lag
    groups_out: list[dict[str, Any]] = []
    leader_of: dict[Any, Any] = {}
    leader_status: dict[Any, dict[str, Any] | None] = {}
    for g in info.get("groups") or []:
        gid = g.get("id")
        members = [m.get("id") for m in g.get("members") or []]
        learners = [m.get("id") for m in g.get("learners") or []]
        claims = []
        for m in members:
            st, _, _ = _live(probes, m)
            if st is not None and st.get("role") == "leader":
                claims.append((_num(st, "epoch") or 0, m))
        live_leader = max(claims)[1] if claims else None
        leader = live_leader if live_leader is not None else g.get("leader")
        lst, _, _ = _live(probes, leader) if live_leader is not None else (None, None, None)
        leader_of[gid], leader_status[gid] = leader, lst
        unhealthy = False

        def member(node_id: Any, learner: bool, lst: dict[str, Any] | None = lst,
                   leader: Any = leader, gid: Any = gid) -> dict[str, Any]:
            nonlocal unhealthy
            st, err, reachable = _live(probes, node_id)
            meta = nodes_meta.get(node_id) or {}
            out: dict[str, Any] = {
                "id": node_id, "address": meta.get("address"),
                "state": meta.get("state", "unknown"), "learner": learner,
                "leader": node_id == leader, "reachable": reachable, "error": err,
                "role": st.get("role") if st is not None else None,
            }
            for name in _NODE_FIGURES:
                out[name] = _num(st, name)
            out["lag"] = 0 if node_id == leader and lst is not None else _lag(lst, node_id, st)
            stuck = stuck_of.get((gid, node_id))
            out["stuck"] = None if stuck is None else {
                "since": stuck.get("at"), "lag": stuck.get("lag"), "reason": stuck.get("reason")}
            if reachable is False or (out["lag"] or 0) > LAG_WARN_ENTRIES or stuck is not None:
                unhealthy = True
            return out

        rows = [member(m, False) for m in members] + [member(m, True) for m in learners]
        health = ("unknown" if not probed else "no_leader" if live_leader is None
                  else "degraded" if unhealthy else "ok")
        groups_out.append({
            "id": gid, "epoch": g.get("epoch"), "leader": leader,
            "leader_recorded": g.get("leader"), "leader_live": live_leader is not None,
            "leader_epoch": _num(lst, "epoch"), "last_index": _num(lst, "last_index"),
            "commit_index": _num(lst, "commit_index"), "members": rows,
            "joint": list(g.get("joint") or []), "replacing": g.get("replacing"),
            "health": health, "ranges": 0, "keys": 0, "bytes": 0, "rps": 0.0, "wps": 0.0,
        })
    by_group = {g["id"]: g for g in groups_out}

    # -- ranges: bounds and group from the metadata, size and load from the group's leader
    stats: dict[Any, dict[tuple[Any, Any], dict[str, Any]]] = {}
    for gid, lst in leader_status.items():
        figures = {}
        for r in (lst or {}).get("ranges") or []:
            if isinstance(r, dict):
                figures[(r.get("t"), _start_hex(r.get("start")))] = r
        stats[gid] = figures
    tables_out: dict[Any, dict[str, Any]] = {}
    for t in info.get("tables") or []:
        if table is None or t.get("name") == table:
            tables_out[t.get("id")] = {"name": t.get("name"), "id": t.get("id"),
                                       "state": t.get("state"), "ranges_total": 0,
                                       "ranges": [], "keys": 0, "bytes": 0, "rps": 0.0,
                                       "wps": 0.0}
    ranges_count = 0
    for r in info.get("ranges") or []:
        ranges_count += 1
        gid = r.get("group")
        fig = stats.get(gid, {}).get((r.get("table_id"), r.get("start_hex")))
        grp = by_group.get(gid)
        if grp is not None:
            grp["ranges"] += 1
            if fig is not None:
                for name in ("keys", "bytes", "rps", "wps"):
                    grp[name] += fig.get(name) or 0
        tab = tables_out.get(r.get("table_id"))
        if tab is None:
            continue
        tab["ranges_total"] += 1
        if len(tab["ranges"]) >= RANGES_PER_TABLE_MAX:
            continue
        row = {**r, "leader": leader_of.get(gid)}
        for name in _RANGE_FIGURES:
            row[name] = fig.get(name) if fig is not None else None
        tab["ranges"].append(row)
        if fig is not None:
            for name in ("keys", "bytes", "rps", "wps"):
                tab[name] += fig.get(name) or 0
    for item in list(by_group.values()) + list(tables_out.values()):
        item["rps"], item["wps"] = round(item["rps"], 2), round(item["wps"], 2)

    # -- nodes: the metadata's state and reason, and what each says of itself
    nodes_out = []
    for n in info.get("nodes") or []:
        st, err, reachable = _live(probes, n.get("id"))
        row = {**n, "reachable": reachable, "error": err,
               "role": st.get("role") if st is not None else None,
               "broken": st.get("broken") if st is not None else None}
        for name in _NODE_FIGURES:
            row[name] = _num(st, name)
        nodes_out.append(row)

    states = [n.get("state") for n in nodes_out]
    summary = {
        "groups": len(groups_out),
        "groups_ok": sum(g["health"] == "ok" for g in groups_out),
        "groups_without_leader": sum(g["health"] == "no_leader" for g in groups_out),
        "nodes": len(nodes_out),
        "nodes_unreachable": sum(n["reachable"] is False for n in nodes_out),
        "members": states.count("member"),
        "spares": states.count("spare"),
        "flagged": states.count("flagged"),
        "tables": len(info.get("tables") or []),
        "ranges": ranges_count,
    }
    at = datetime.fromtimestamp(time.time() if now_s is None else now_s, tz=UTC)
    return {
        "revision": info.get("revision"),
        "generated_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "probed": probed,
        "probe_ms": None if probe_ms is None else round(probe_ms, 1),
        "summary": summary,
        "meta": info.get("meta"),
        "groups": groups_out,
        "tables": list(tables_out.values()),
        "nodes": nodes_out,
        "decisions": list(info.get("decisions") or []),
    }


# --- the rm's side ----------------------------------------------------------------------------


class LiveStatus:
    """``summarize`` of the current view and a recent probe, for the rm's
    ``GET /v1/cluster/status``. ``view()`` gives the current ``ClusterView`` (its ``revision``
    and ``to_json()``); ``ask`` a node's status by address."""

    def __init__(self, view: Callable[[], Any], ask: Ask, *,
                 timeout_s: float = PROBE_TIMEOUT_S, ttl_s: float = CACHE_TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._view = view
        self._ask = ask
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._probes: dict[int, Probe] = {}
        self._probe_ms = 0.0
        self._probed_at = -float("inf")
        self._generation = 0
        self._inflight: asyncio.Task[None] | None = None
        self._summaries: dict[Any, dict[str, Any]] = {}
        self.probes_done = 0  # how many probes ran (tests: the cache works)

    async def get(self, table: str | None = None) -> dict[str, Any]:
        if self._monotonic() - self._probed_at >= self._ttl_s:
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._probe(self._view().to_json()))
            # shielded: one caller going away does not cancel the probe the others wait for
            await asyncio.shield(self._inflight)
        view = self._view()
        key = (view.revision, self._generation, table)
        cached = self._summaries.get(key)
        if cached is None:
            cached = summarize(view.to_json(), self._probes, table=table,
                               probe_ms=self._probe_ms)
            if len(self._summaries) > 16:  # old revisions and generations
                self._summaries.clear()
            self._summaries[key] = cached
        return cached

    async def _probe(self, info: dict[str, Any]) -> None:
        try:
            began = self._monotonic()
            self._probes = await probe(nodes_of(info), self._ask, self._timeout_s)
            self._probed_at = self._monotonic()
            self._probe_ms = (self._probed_at - began) * 1000
            self._generation += 1
            self.probes_done += 1
        finally:
            self._inflight = None

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
