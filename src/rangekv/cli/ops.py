"""Data commands: create-table, drop-table, tables, put, get, delete, list, cluster, status,
nodes, nodes remove.

Output is for people by default and JSON with ``--json``. ``get`` prints the value's bytes as
they are (plus a newline unless ``--raw``); ``list`` prints ``key<TAB>value<TAB>seq`` lines in
which tab, newline, carriage return, backslash, other control characters and bytes that are not
UTF-8 are escaped (``\\t``, ``\\n``, ``\\r``, ``\\\\``, ``\\xNN``), so one item is always one line.
In JSON, keys and values are strings (UTF-8, invalid bytes replaced) and, when they are not
valid UTF-8, also ``key_base64``/``value_base64``.
"""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any

from rangekv import errors
from rangekv.cli import Context
from rangekv.client import Item
from rangekv.request_manager import live

LIST_LIMIT_DEFAULT = 100
STATUS_DECISIONS = 10
TABLE_HELP = "the table's name"
KEY_HELP = "the key: 1 to 1024 bytes (the argument's bytes as given)"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create-table", parents=[common], help="create a table")
    p.add_argument("name", help="1 to 128 characters, each a letter, digit, _, . or -")
    p.set_defaults(func=cmd_create_table)

    p = sub.add_parser("drop-table", parents=[common], help="drop a table and all its keys")
    p.add_argument("name", help=TABLE_HELP)
    p.set_defaults(func=cmd_drop_table)

    p = sub.add_parser("tables", parents=[common], help="list the tables")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("ranges", parents=[common],
                       help="list a table's ranges: the group and leader serving each, its "
                            "size and load (asks the rm for the live figures)")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("--no-probe", action="store_true",
                   help="only the bounds and groups (no leader, size or load)")
    p.set_defaults(func=cmd_ranges)

    p = sub.add_parser("split", parents=[common],
                       help="cut the range of TABLE holding the key of --at in two there and move "
                            "the upper part to another group")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("--at", required=True, metavar="KEY", help="the first key of the upper part")
    p.add_argument("--to", default="auto", metavar="GROUP|auto|stay",
                   help="where the upper part goes: a group id, auto (default: the group with "
                        "a leader serving the fewest ranges, if there is another one) or stay "
                        "(split in place)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("move", parents=[common],
                       help="move the range of TABLE holding KEY to another group, live")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("key", help="any key of the range to move")
    p.add_argument("--to", required=True, type=int, metavar="GROUP",
                   help="the id of the group to move it to (rangekv cluster lists them)")
    p.set_defaults(func=cmd_move)

    p = sub.add_parser("put", parents=[common], help="store a value under a key")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("key", help=KEY_HELP)
    p.add_argument("value", help="the value; - reads it from stdin (as bytes)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--if-seq", metavar="SEQ", help="only if the key's current seq is SEQ")
    cond.add_argument("--if-absent", action="store_true", help="only if the key does not exist")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[common], help="print the value of a key")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("key", help=KEY_HELP)
    p.add_argument("--seq", action="store_true", help="also print the seq (on a second line)")
    p.add_argument("--raw", action="store_true", help="print the value's bytes only, no newline")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", parents=[common], help="delete a key")
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("key", help=KEY_HELP)
    p.add_argument("--if-seq", metavar="SEQ", help="only if the key's current seq is SEQ")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "list", parents=[common], help="list keys in order: key<TAB>value<TAB>seq lines"
    )
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("--start", help="first key (inclusive)")
    p.add_argument("--end", help="end key (exclusive)")
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=LIST_LIMIT_DEFAULT,
        metavar="N",
        help=f"items per page (default {LIST_LIMIT_DEFAULT})",
    )
    p.add_argument("--after", metavar="CURSOR", help="continue from a previous page's cursor")
    p.add_argument("--all", action="store_true", help="every page, not just the first")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "cluster",
        parents=[common],
        help="the topology: groups, leaders, ranges, nodes, tables, recent decisions",
    )
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="health at a glance: groups with their lag, nodes with state and reason, and the "
        "controller's recent decisions (asks each node for its status)",
    )
    p.add_argument("--decisions", type=_positive_int, default=STATUS_DECISIONS, metavar="N",
                   help=f"how many recent decisions (default {STATUS_DECISIONS})")
    p.add_argument("--no-probe", action="store_true",
                   help="do not ask the nodes (no roles, indexes or lag)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "nodes",
        parents=[common],
        help="every node: address, state (member, spare, flagged), group, and its role and log "
        "indexes as it reports them (asks each node)",
    )
    p.add_argument("--no-probe", action="store_true",
                   help="do not ask the nodes (no roles or indexes)")
    p.set_defaults(func=cmd_nodes)
    actions = p.add_subparsers(dest="nodes_action", metavar="ACTION", required=False,
                               title="actions (without one: list the nodes)")
    r = actions.add_parser(
        "remove", parents=[common],
        help="remove the record of a dead or flagged node that takes part in no group (a "
        "killed spare, a replaced member, a forged record); refused while it is a member, a "
        "learner or a voter of a group, or still heartbeats and is not flagged")
    r.add_argument("id", type=_positive_int, help="the node's id (`rangekv nodes` lists them)")
    r.set_defaults(func=cmd_nodes_remove)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- formatting (pure) ------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(data: bytes) -> str:
    """One-line, unambiguous text for bytes: UTF-8 as is, everything else escaped."""
    out = []
    for ch in data.decode("utf-8", "surrogateescape"):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def item_line(item: Item) -> str:
    return f"{escape(item.key)}\t{escape(item.value)}\t{item.seq}"


def _json_bytes(out: dict[str, Any], name: str, data: bytes) -> None:
    out[name] = data.decode("utf-8", "replace")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{name}_base64"] = base64.b64encode(data).decode()


def item_json(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _json_bytes(out, "key", item.key)
    _json_bytes(out, "value", item.value)
    out["seq"] = item.seq
    return out


def format_cluster(info: dict[str, Any]) -> str:
    """The ``/v1/cluster`` topology for people; tolerant of missing fields."""
    lines = []
    groups = info.get("groups") or []
    lines.append(f"groups ({len(groups)}):")
    for g in groups:
        leader = g.get("leader")
        lines.append(
            f"  group {g.get('id')}  epoch {g.get('epoch')}  "
            f"leader {'node ' + str(leader) if leader is not None else '(none)'}"
        )
        for m in g.get("members") or []:
            role = "leader" if m.get("leader") or m.get("id") == leader else "follower"
            lines.append(
                f"    node {m.get('id')}  {m.get('address')}  {role}  {m.get('state', '')}".rstrip()
            )
        for m in g.get("learners") or []:
            replacing = g.get("replacing")
            lines.append(f"    node {m.get('id')}  {m.get('address')}  learner"
                         + (f" (to replace node {replacing})" if replacing is not None else ""))
        if g.get("joint"):
            lines.append(f"    reconfiguration unfinished: a campaign also needs a majority of "
                         f"the previous members {_ids(g['joint'])}")
    ranges = info.get("ranges") or []
    lines.append(f"ranges ({len(ranges)}):")
    for r in ranges:
        start = r.get("start") or ""
        end = r.get("end")
        span = f"[{start!r}, {'∞' if end is None else repr(end)})"
        lines.append(
            f"  {r.get('table')}  {span}  group {r.get('group')}  v{r.get('version', '?')}"
        )
    nodes = info.get("nodes") or []
    lines.append(f"nodes ({len(nodes)}):")
    for n in nodes:
        extra = f"  group {n['group']}" if n.get("group") is not None else ""
        reason = f"  ({n['reason']})" if n.get("reason") else ""
        lines.append(f"  node {n.get('id')}  {n.get('address')}  {n.get('state')}{extra}{reason}")
    tables = info.get("tables") or []
    lines.append(f"tables ({len(tables)}):")
    for t in tables:
        state = t.get("state")
        lines.append(
            f"  {t.get('name')}  id {t.get('id')}"
            + (f"  {state}" if state and state != "active" else "")
        )
    decisions = info.get("decisions") or []
    if decisions:
        lines.append(f"decisions (last {len(decisions)}):")
        lines.extend("  " + _decision_line(d) for d in decisions)
    meta = info.get("meta")
    if isinstance(meta, dict):
        lines.append(f"meta: id {meta.get('id')} at {meta.get('address')}")
    return "\n".join(lines)


def _ids(ids: Any) -> str:
    return ", ".join(str(i) for i in ids) if ids else "-"


def _decision_line(d: dict[str, Any]) -> str:
    group = f"group {d['group']}  " if d.get("group") is not None else ""
    return f"{d.get('at', '?')}  {group}{d.get('kind', '?')}: {d.get('reason', '')}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [header] + [["-" if c is None or c == "" else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def _human_bytes(n: Any) -> str | None:
    if not isinstance(n, int | float):
        return None
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def _rate(n: Any) -> str | None:
    return f"{n:.1f}" if isinstance(n, int | float) else None


def _bound(value: Any, end: bool) -> str:
    if value is None:
        return "+inf" if end else "-inf"
    return repr(value)


def _summary_line(st: dict[str, Any]) -> str:
    s = st.get("summary") or {}
    meta = st.get("meta")
    where = (f"active meta {meta.get('id')} at {meta.get('address')}" if isinstance(meta, dict)
             else "no active meta")
    probe = (f"nodes asked in {st['probe_ms']:.0f} ms" if st.get("probed")
             and isinstance(st.get("probe_ms"), int | float) else
             "nodes asked" if st.get("probed") else "nodes not asked")
    healthy = f" ({s.get('groups_ok', 0)} ok)" if st.get("probed") else ""
    return (f"cluster: {s.get('groups', 0)} groups{healthy}, {s.get('nodes', 0)} nodes "
            f"({s.get('nodes_unreachable', 0)} unreachable, {s.get('spares', 0)} spare, "
            f"{s.get('flagged', 0)} flagged), {s.get('tables', 0)} tables, "
            f"{s.get('ranges', 0)} ranges; {where}; {probe}")


def format_status(st: dict[str, Any], decisions: int = STATUS_DECISIONS) -> str:
    """``rangekv status`` from the live status document (``live.summarize``, served as
    ``/v1/cluster/status``): groups with their lag, ranges with size and load, nodes, recent
    decisions. Lag is in log entries behind the leader (see ``live``)."""
    lines = [_summary_line(st)]
    groups = st.get("groups") or []
    lines.append(f"groups ({len(groups)}):")
    rows = []
    stuck_lines: list[str] = []
    for g in groups:
        leader = g.get("leader")
        lags = []
        for m in g.get("members") or []:
            if m.get("id") == leader:
                continue
            lag = ("down" if m.get("reachable") is False
                   else "?" if m.get("lag") is None else m["lag"])
            stuck = " STUCK" if m.get("stuck") else ""
            lags.append(f"{m.get('id')}: {lag}{stuck}")
            if m.get("stuck"):
                stuck_lines.append(f"  node {m.get('id')} stuck since "
                                   f"{m['stuck'].get('since')}: {m['stuck'].get('reason')}")
        members = [f"{m.get('id')}{'*' if m.get('id') == leader else ''}"
                   for m in g.get("members") or [] if not m.get("learner")]
        learners = [m.get("id") for m in g.get("members") or [] if m.get("learner")]
        epoch = g.get("leader_epoch") if g.get("leader_epoch") is not None else g.get("epoch")
        rows.append([g.get("id"), g.get("health"), epoch, leader, ", ".join(members),
                     _ids(learners), _ids(g.get("joint")), g.get("commit_index"),
                     ", ".join(lags)])
    if rows:
        lines.extend(_table(["group", "health", "epoch", "leader", "members", "learners",
                             "joint", "commit", "lag (entries)"], rows))
    if stuck_lines:
        lines.append("lag that stopped shrinking:")
        lines.extend(stuck_lines)
    lines.extend(format_ranges(st))
    lines.extend(format_nodes(st))
    recent = (st.get("decisions") or [])[-decisions:]
    lines.append(f"recent decisions ({len(recent)}):")
    lines.extend("  " + _decision_line(d) for d in recent)
    return "\n".join(lines)


def format_ranges(st: dict[str, Any]) -> list[str]:
    """Every listed range of every table of the live status: bounds, group, leader, size and
    load (``-`` where unknown)."""
    tables = st.get("tables") or []
    total = sum(t.get("ranges_total") or 0 for t in tables)
    lines = [f"ranges ({total}):"]
    rows = []
    for t in tables:
        for r in t.get("ranges") or []:
            rows.append([t.get("name"), _bound(r.get("start"), False), _bound(r.get("end"), True),
                         r.get("group"), r.get("leader"), r.get("keys"),
                         _human_bytes(r.get("bytes")), _rate(r.get("rps")), _rate(r.get("wps")),
                         _range_state(r)])
        shown = len(t.get("ranges") or [])
        if shown < (t.get("ranges_total") or 0):
            rows.append([t.get("name"), f"... {t['ranges_total'] - shown} more", "", "", "", "",
                         "", "", "", ""])
    if rows:
        lines.extend(_table(["table", "start", "end", "group", "leader", "keys", "size",
                             "reads/s", "writes/s", "state"], rows))
    return lines


def _range_state(r: dict[str, Any]) -> str:
    state = r.get("state") or "active"
    moving = r.get("moving")
    if moving:
        state = (f"moving {moving['from']} -> {moving['to']} ({moving['phase']})"
                 if state == "moving" else f"active (group {moving['from']} cleaning up)")
    return str(state)


def format_nodes(st: dict[str, Any]) -> list[str]:
    """The nodes of the live status (members, spares, flagged ones with their reason), with
    what each says of itself when it was asked."""
    nodes = st.get("nodes") or []
    lines = [f"nodes ({len(nodes)}):"]
    rows = []
    for n in nodes:
        role = "unreachable" if n.get("reachable") is False else n.get("role")
        rows.append([n.get("id"), n.get("address"), n.get("state"), n.get("group"), role,
                     n.get("last_index"), n.get("commit_index"), n.get("reason")])
    if rows:
        lines.extend(_table(["node", "address", "state", "group", "role", "last", "commit",
                             "reason"], rows))
    return lines


def _live_status(args: argparse.Namespace, ctx: Context, table: str | None = None
                 ) -> dict[str, Any]:
    """The live status from the rm (which asks every node), or with ``--no-probe`` the same
    document made here from the topology alone."""
    with ctx.client(args) as db:
        if getattr(args, "no_probe", False):
            info = db.cluster()
            return live.summarize(info, None, table=table)
        status: dict[str, Any] = db.cluster_status(table)
        return status


def cmd_nodes(args: argparse.Namespace, ctx: Context) -> int:
    st = _live_status(args, ctx)
    if args.json:
        _print_json(ctx, {"nodes": st.get("nodes") or []})
    else:
        ctx.out("\n".join(format_nodes(st)))
    return 0


def cmd_nodes_remove(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        removed = db.remove_node(args.id)
    if args.json:
        _print_json(ctx, removed)
        return 0
    node = removed.get("node") or {}
    what = node.get("state") or "?"
    if node.get("flag") or node.get("reason"):
        what += f": {node.get('reason') or node.get('flag')}"
    ctx.out(f"removed node {node.get('id', args.id)} ({node.get('address')}, {what})")
    if removed.get("live"):
        ctx.out("it still heartbeats: it registers again as a spare (or flagged, if its log is "
                "still broken); stop its process to retire it")
    return 0


def _print_json(ctx: Context, obj: Any) -> None:
    ctx.out(json.dumps(obj, indent=None, sort_keys=False))


# --- commands ---------------------------------------------------------------------------------


def cmd_create_table(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        db.create_table(args.name)
    if args.json:
        _print_json(ctx, {"table": args.name, "created": True})
    else:
        ctx.out(f"created table {args.name}")
    return 0


def cmd_drop_table(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        db.drop_table(args.name)
    if args.json:
        _print_json(ctx, {"table": args.name, "dropped": True})
    else:
        ctx.out(f"dropped table {args.name}")
    return 0


def _format_ranges(table: str, ranges: list[dict[str, Any]]) -> str:
    """A table's ranges; with the live figures (leader, keys, size, load) where a range has
    them (``rangekv ranges``), ``-`` where it has not."""
    rows = [[_bound(r.get("start"), False), _bound(r.get("end"), True), r.get("group"),
             r.get("leader"), r.get("version"), r.get("keys"), _human_bytes(r.get("bytes")),
             _rate(r.get("rps")), _rate(r.get("wps")), _range_state(r)] for r in ranges]
    lines = _table(["start", "end", "group", "leader", "version", "keys", "size", "reads/s",
                    "writes/s", "state"], rows)
    return f"table {table}: {len(ranges)} range(s)\n" + "\n".join(lines)


def _show_ranges(args: argparse.Namespace, ctx: Context, ranges: list[dict[str, Any]]) -> int:
    if args.json:
        _print_json(ctx, {"table": args.table, "ranges": ranges})
    else:
        ctx.out(_format_ranges(args.table, ranges))
    return 0


_LIVE_RANGE_FIELDS = ("leader", "keys", "bytes", "counted", "rps", "wps", "rbps", "wbps")


def cmd_ranges(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        ranges = db.ranges(args.table)
        if not args.no_probe:
            # the leader and the live figures of each range, by its start, where the rm has
            # them (a range split or moved since the first answer simply has none)
            try:
                st = db.cluster_status(args.table)
            except errors.RangeKVError as exc:
                ctx.err(f"(no live figures: {exc})")
                st = {}
            by_start = {r.get("start_hex"): r for t in st.get("tables") or []
                        if t.get("name") == args.table for r in t.get("ranges") or []}
            for r in ranges:
                got = by_start.get(r.get("start_hex"))
                if got is not None and got.get("group") == r.get("group"):
                    r.update({k: got.get(k) for k in _LIVE_RANGE_FIELDS})
        return _show_ranges(args, ctx, ranges)


def cmd_split(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        to: int | str | None = None if args.to == "stay" else args.to
        if isinstance(to, str) and to != "auto":
            if not to.isdigit():
                raise SystemExit(f"rangekv split: --to must be a group id, auto or stay, "
                                 f"not {to!r}")
            to = int(to)
        return _show_ranges(args, ctx, db.split(args.table, args.at, to))


def cmd_move(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        result = db.move(args.table, args.key.encode("utf-8", "surrogateescape"), args.to)
    if args.json:
        _print_json(ctx, {"table": args.table, **result})
        return 0
    ctx.out(_format_ranges(args.table, result["ranges"]))
    if not result["done"]:
        ctx.out("the copy goes on in the background: `rangekv ranges " + args.table
                + "` shows the range as moving until it is done")
    return 0


def cmd_tables(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        names = db.tables()
    if args.json:
        _print_json(ctx, {"tables": names})
    else:
        for name in names:
            ctx.out(name)
    return 0


def cmd_put(args: argparse.Namespace, ctx: Context) -> int:
    value: bytes = (
        ctx.stdin.read() if args.value == "-" else args.value.encode("utf-8", "surrogateescape")
    )
    key = args.key.encode("utf-8", "surrogateescape")
    with ctx.client(args) as db:
        seq = db.put(args.table, key, value, if_seq=args.if_seq, if_absent=args.if_absent)
    if args.json:
        _print_json(ctx, {"seq": seq})
    else:
        ctx.out(seq)
    return 0


def cmd_get(args: argparse.Namespace, ctx: Context) -> int:
    key = args.key.encode("utf-8", "surrogateescape")
    with ctx.client(args) as db:
        item = db.get(args.table, key)
    if item is None:
        raise errors.KeyNotFound(f"no key {args.key!r} in table {args.table!r}")
    if args.json:
        _print_json(ctx, item_json(item))
        return 0
    ctx.stdout.write(item.value)
    if not args.raw:
        ctx.stdout.write(b"\n")
    if args.seq:
        ctx.stdout.write(item.seq.encode() + b"\n")
    ctx.stdout.flush()
    return 0


def cmd_delete(args: argparse.Namespace, ctx: Context) -> int:
    key = args.key.encode("utf-8", "surrogateescape")
    with ctx.client(args) as db:
        deleted = db.delete(args.table, key, if_seq=args.if_seq)
    if args.json:
        _print_json(ctx, {"deleted": deleted})
    else:
        ctx.out("deleted" if deleted else "not found")
    return 0


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    start = None if args.start is None else args.start.encode("utf-8", "surrogateescape")
    end = None if args.end is None else args.end.encode("utf-8", "surrogateescape")
    collected: list[dict[str, Any]] = []
    with ctx.client(args) as db:
        after = args.after
        while True:
            page = db.list(args.table, start=start, end=end, limit=args.limit, after=after)
            for item in page.items:
                if args.json:
                    collected.append(item_json(item))
                else:
                    ctx.out(item_line(item))
            if page.next is None or not args.all:
                break
            if page.next == after:
                raise errors.ProtocolError("list returned the same cursor twice")
            after = page.next
    if args.json:
        _print_json(ctx, {"items": collected, "next": page.next})
    elif page.next is not None:
        ctx.err(f"more: rangekv list {args.table} --after {page.next}  (or --all)")
    return 0


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    st = _live_status(args, ctx)
    if args.json:
        _print_json(ctx, st)
    else:
        ctx.out(format_status(st, args.decisions))
    return 0


def cmd_cluster(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        info = db.cluster()
    if args.json:
        _print_json(ctx, info)
    else:
        ctx.out(format_cluster(info))
    return 0
