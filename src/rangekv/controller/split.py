"""When and where to split a range by itself (docs/architecture.md, "The control plane"): a
pure decision on the range figures that group leaders report with their heartbeats
(``rangekv.node.stats``).

A range is split when, by its leader's latest report, it stores more than ``bytes_max`` or
serves more than ``ops_max`` operations per second or ``bytes_per_s_max`` bytes per second
(reads and writes together). The split key comes from the range's key distribution: for size,
the key below which ``fraction_size`` of its bytes lie (the seed moves the smaller part, about
30%, so the copy is small); for load, the median of its recently used keys (half the load
moves). The upper part then moves to a group with room (fewer than ``group_ranges_max``
ranges; the fewest first); if no group has room and enough spares are live, a new group is
formed first; else the range is split in place (both parts stay), which still lets a later
split move a part once room appears.

One split at a time in the whole cluster, none while a move is unfinished, and none of a table
split less than ``cooldown_s`` ago: the figures of the new ranges must settle first.

The reverse, ``plan_merge``: two neighbouring ranges of a table on the same group that together
hold less than a quarter of ``bytes_max`` and serve less than a quarter of ``ops_max`` (ranges
emptied by deletes, or cooled down) become one again, so small ranges do not pile up; never
within ``MERGE_AFTER_SPLIT`` cooldowns of a split of that table (no split/merge flapping).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rangekv.model import RANGE_ACTIVE, TABLE_ACTIVE, ClusterView, Range, RangeMap, span_text

REPORT_FRESH_S = 3.0  # a leader's figures older than this are not acted on
MERGE_AFTER_SPLIT = 6  # cooldowns after a split of a table before its ranges may merge


@dataclass(frozen=True)
class SplitConfig:
    bytes_max: int = 64 * 1024 * 1024
    ops_max: float = 5000.0
    bytes_per_s_max: float = 32 * 1024 * 1024
    cooldown_s: float = 10.0
    group_ranges_max: int = 1024
    fraction_size: float = 0.7
    fraction_load: float = 0.5
    enabled: bool = True


@dataclass(frozen=True)
class SplitPlan:
    table: str
    table_id: int
    start: bytes
    group: int
    by: str  # "size" | "load"
    fraction: float
    target: int | None  # the group the upper part goes to; None: stays (no group has room)
    form_group: bool  # no group has room but spares do: form one first
    reason: str


def plan_split(
    view: ClusterView,
    reports: Mapping[int, tuple[float, list[dict[str, Any]]]],
    now_s: float,
    cfg: SplitConfig,
    last_split_s: Mapping[int, float],
    live_spares: int,
    group_size: int,
) -> tuple[SplitPlan | None, str]:
    """The split to make now, if any, and why (or why not).

    ``reports``: group id -> (when received, the leader's range figures). ``last_split_s``:
    table id -> when it was last split by this controller.
    """
    if not cfg.enabled:
        return None, "automatic splits are off"
    names = {t.id: t.name for t in view.tables.values() if t.state == TABLE_ACTIVE}
    for ranges in view.ranges.values():
        for r in ranges:
            if r.state != RANGE_ACTIVE or r.source is not None:
                return None, f"a move of table {names.get(r.table_id, r.table_id)} is unfinished"
    # Leaders report every range they lead (100,000 figures at scale): a figure's range is
    # found by its start in the table's map, and only the worst figure's reason is written.
    worst: tuple[float, int, dict[str, Any], Range] | None = None
    bytes_max, ops_max, bps_max = cfg.bytes_max, cfg.ops_max, cfg.bytes_per_s_max
    for gid, (at_s, figures) in reports.items():
        group = view.groups.get(gid)
        if group is None or group.leader is None or now_s - at_s > REPORT_FRESH_S:
            continue
        for fig in figures:
            # the figure's worst ratio first (its numbers were checked by NodeStatus.parse):
            # nearly every figure stops here
            get = fig.get
            ratio = max(int(get("bytes", 0)) / bytes_max if get("counted") else 0.0,
                        (float(get("rps", 0)) + float(get("wps", 0))) / ops_max,
                        (float(get("rbps", 0)) + float(get("wbps", 0))) / bps_max)
            if ratio <= 1.0 or (worst is not None and ratio <= worst[0]):
                continue
            tid, start = get("t"), get("start")
            if tid not in names or not isinstance(start, bytes):
                continue
            rng = _range_at(view.ranges.get(tid), start)
            if rng is None or rng.group != gid:
                continue  # a report older than the map
            if now_s - last_split_s.get(tid, -1e18) < cfg.cooldown_s:
                continue
            ratios = _ratios(fig, cfg)
            worst = (ratio, ratios.index(ratio), fig, rng)  # the first of equal ratios
    if worst is None:
        return None, "no range is over a threshold"
    _, which, fig, rng = worst
    by, why = _why(fig, cfg, which)
    counts = {gid: 0 for gid, g in view.groups.items() if g.leader is not None}
    for ranges in view.ranges.values():
        for r in ranges:
            if r.group in counts:
                counts[r.group] += 1
    room = sorted((n, gid) for gid, n in counts.items()
                  if gid != rng.group and n < cfg.group_ranges_max)
    name = names[rng.table_id]
    where = f"table {name} range {span_text(rng.start, rng.end)} on group {rng.group}"
    fraction = cfg.fraction_size if by == "size" else cfg.fraction_load
    part = (f"the upper {100 - round(fraction * 100)}% of its bytes" if by == "size"
            else "the upper half of its recent load")
    if room:
        target = room[0][1]
        return SplitPlan(name, rng.table_id, rng.start, rng.group, by, fraction, target, False,
                         f"{where}: {why}; {part} moves to group {target}, the group with "
                         f"room serving the fewest ranges ({room[0][0]})"), "split"
    if live_spares >= group_size:
        return SplitPlan(name, rng.table_id, rng.start, rng.group, by, fraction, None, True,
                         f"{where}: {why}; no other group has room (each serves "
                         f"{cfg.group_ranges_max} ranges or more): forming a new group from "
                         f"{group_size} of the {live_spares} live spares"), "form a group"
    return SplitPlan(name, rng.table_id, rng.start, rng.group, by, fraction, None, False,
                     f"{where}: {why}; no other group has room and only {live_spares} live "
                     f"spares (a group needs {group_size}): split in place"), "split in place"


def _range_at(ranges: Sequence[Range] | None, start: bytes) -> Range | None:
    """The range of a table's that starts at ``start`` (a ``RangeMap`` finds it by bisection)."""
    if ranges is None:
        return None
    if isinstance(ranges, RangeMap):
        return ranges.get(start)
    return next((r for r in ranges if r.start == start), None)


def _ratios(fig: Mapping[str, Any], cfg: SplitConfig) -> tuple[float, float, float]:
    """A figure's size, operations and bytes per second, each over its threshold."""
    ops = float(fig.get("rps", 0)) + float(fig.get("wps", 0))
    bps = float(fig.get("rbps", 0)) + float(fig.get("wbps", 0))
    size = int(fig.get("bytes", 0)) if fig.get("counted") else 0
    return size / cfg.bytes_max, ops / cfg.ops_max, bps / cfg.bytes_per_s_max


def _why(fig: Mapping[str, Any], cfg: SplitConfig, which: int) -> tuple[str, str]:
    """What a figure's ratio ``which`` (of ``_ratios``) is over, and by how much, for people."""
    if which == 0:
        size = int(fig.get("bytes", 0)) if fig.get("counted") else 0
        return "size", (f"it stores {size:,} bytes in {int(fig.get('keys', 0)):,} keys "
                        f"(threshold {cfg.bytes_max:,})")
    if which == 1:
        ops = float(fig.get("rps", 0)) + float(fig.get("wps", 0))
        return "load", (f"it serves {ops:.0f} ops/s ({float(fig.get('rps', 0)):.0f} reads, "
                        f"{float(fig.get('wps', 0)):.0f} writes; threshold {cfg.ops_max:.0f})")
    bps = float(fig.get("rbps", 0)) + float(fig.get("wbps", 0))
    return "load", f"it moves {bps:,.0f} bytes/s (threshold {cfg.bytes_per_s_max:,.0f})"


@dataclass(frozen=True)
class MergePlan:
    table: str
    table_id: int
    at: bytes  # the start of the upper range, which disappears
    group: int
    reason: str


def plan_merge(
    view: ClusterView,
    reports: Mapping[int, tuple[float, list[dict[str, Any]]]],
    now_s: float,
    cfg: SplitConfig,
    last_split_s: Mapping[int, float],
) -> MergePlan | None:
    """Two neighbouring ranges to merge now (see the module docstring), or None."""
    if not cfg.enabled:
        return None
    names = {t.id: t.name for t in view.tables.values() if t.state == TABLE_ACTIVE}
    # The pairs that may merge, in the order they are judged: neighbours on one group, both
    # settled. Few (a table's ranges are spread over the groups), so only their figures are
    # looked for among the 100,000 that leaders report at scale.
    pairs: list[tuple[int, Range, Range]] = []
    for tid, ranges in view.ranges.items():
        if tid not in names or now_s - last_split_s.get(tid, -1e18) < \
                MERGE_AFTER_SPLIT * cfg.cooldown_s:
            continue
        for lower, upper in itertools.pairwise(ranges):
            if lower.group != upper.group or any(
                    r.state != RANGE_ACTIVE or r.source is not None for r in (lower, upper)):
                continue
            pairs.append((tid, lower, upper))
    if not pairs:
        return None
    wanted = {(tid, r.start) for tid, lower, upper in pairs for r in (lower, upper)}
    # (table, start) -> (the reporting group, its figure): the latest fresh report's
    figures: dict[tuple[int, bytes], tuple[int, Mapping[str, Any]]] = {}
    for gid, (at_s, figs) in reports.items():
        if now_s - at_s > REPORT_FRESH_S:
            continue
        for fig in figs:
            start = fig.get("start")
            if isinstance(start, bytes) and fig.get("counted"):
                key = (fig.get("t"), start)
                if key in wanted:
                    figures[key] = (gid, fig)  # type: ignore[index]
    for tid, lower, upper in pairs:
        fa, fb = figures.get((tid, lower.start)), figures.get((tid, upper.start))
        if fa is None or fb is None or fa[0] != lower.group or fb[0] != lower.group:
            continue
        a, b = fa[1], fb[1]
        size = int(a.get("bytes", 0)) + int(b.get("bytes", 0))
        ops = sum(float(f.get(n, 0)) for f in (a, b) for n in ("rps", "wps"))
        if size < cfg.bytes_max / 4 and ops < cfg.ops_max / 4:
            return MergePlan(
                names[tid], tid, upper.start, lower.group,
                f"table {names[tid]} ranges {span_text(lower.start, upper.start)} and "
                f"{span_text(upper.start, upper.end)} on group {lower.group} together store "
                f"{size:,} bytes and serve {ops:.0f} ops/s (under a quarter of the split "
                f"thresholds): merged into one")
    return None
