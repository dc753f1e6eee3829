"""Data commands: create-table, drop-table, tables, put, get, delete, list, cluster, status,
nodes.

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

LIST_LIMIT_DEFAULT = 100
STATUS_DECISIONS = 10
PROBE_TIMEOUT_S = 1.0  # per node, for `rangekv status`


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create-table", parents=[common], help="create a table")
    p.add_argument("name")
    p.set_defaults(func=cmd_create_table)

    p = sub.add_parser("drop-table", parents=[common], help="drop a table and all its keys")
    p.add_argument("name")
    p.set_defaults(func=cmd_drop_table)

    p = sub.add_parser("tables", parents=[common], help="list the tables")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("ranges", parents=[common],
                       help="list a table's ranges and the group serving each")
    p.add_argument("table")
    p.set_defaults(func=cmd_ranges)

    p = sub.add_parser("split", parents=[common],
                       help="cut the range of TABLE holding KEY in two at KEY and move the upper "
                            "part to another group")
    p.add_argument("table")
    p.add_argument("--at", required=True, metavar="KEY", help="the first key of the upper part")
    p.add_argument("--to", default="auto", metavar="GROUP|auto|stay",
                   help="where the upper part goes: a group id, auto (default: the group with "
                        "a leader serving the fewest ranges, if there is another one) or stay "
                        "(split in place)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("move", parents=[common],
                       help="move the range of TABLE holding KEY to another group, live")
    p.add_argument("table")
    p.add_argument("key", help="any key of the range to move")
    p.add_argument("--to", required=True, type=int, metavar="GROUP",
                   help="the id of the group to move it to (rangekv cluster lists them)")
    p.set_defaults(func=cmd_move)

    p = sub.add_parser("put", parents=[common], help="store a value under a key")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("value", help="the value; - reads it from stdin (as bytes)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--if-seq", metavar="SEQ", help="only if the key's current seq is SEQ")
    cond.add_argument("--if-absent", action="store_true", help="only if the key does not exist")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[common], help="print the value of a key")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("--seq", action="store_true", help="also print the seq (on a second line)")
    p.add_argument("--raw", action="store_true", help="print the value's bytes only, no newline")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", parents=[common], help="delete a key")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("--if-seq", metavar="SEQ", help="only if the key's current seq is SEQ")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "list", parents=[common], help="list keys in order: key<TAB>value<TAB>seq lines"
    )
    p.add_argument("table")
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


def format_status(info: dict[str, Any], probes: dict[int, dict[str, Any] | str],
                  decisions: int = STATUS_DECISIONS) -> str:
    """``rangekv status``: ``info`` is ``/v1/cluster``, ``probes`` each node's own ``status``
    (or why it could not be asked). Lag is the leader's commit index less a member's last
    index, both as the nodes report them now."""
    lines = []
    groups = info.get("groups") or []
    lines.append(f"groups ({len(groups)}):")
    rows = []
    for g in groups:
        leader = g.get("leader")
        lead = probes.get(leader) if leader is not None else None
        commit = lead.get("commit_index") if isinstance(lead, dict) else None
        lags = []
        for m in g.get("members") or []:
            if m.get("id") == leader:
                continue
            st = probes.get(m.get("id"))
            lag = (commit - st["last_index"] if isinstance(st, dict) and commit is not None
                   else "?")
            lags.append(f"{m.get('id')}: {lag}")
        members = [f"{m.get('id')}{'*' if m.get('id') == leader else ''}"
                   for m in g.get("members") or []]
        rows.append([g.get("id"), g.get("epoch"), leader, ", ".join(members),
                     _ids([m.get("id") for m in g.get("learners") or []]),
                     _ids(g.get("joint")), ", ".join(lags)])
    if rows:
        lines.extend(_table(["group", "epoch", "leader", "members", "learners", "joint",
                             "lag (entries)"], rows))
    lines.extend(format_nodes(info, probes))
    recent = (info.get("decisions") or [])[-decisions:]
    lines.append(f"recent decisions ({len(recent)}):")
    lines.extend("  " + _decision_line(d) for d in recent)
    return "\n".join(lines)


def format_nodes(info: dict[str, Any], probes: dict[int, dict[str, Any] | str]) -> list[str]:
    """The nodes of ``/v1/cluster`` (members, spares, flagged ones with their reason), with
    what each says of itself when ``probes`` has it."""
    nodes = info.get("nodes") or []
    lines = [f"nodes ({len(nodes)}):"]
    rows = []
    for n in nodes:
        st = probes.get(n.get("id"))
        live = isinstance(st, dict)
        rows.append([n.get("id"), n.get("address"), n.get("state"), n.get("group"),
                     st.get("role") if live else ("unreachable" if st else None),
                     st.get("last_index") if live else None,
                     st.get("commit_index") if live else None, n.get("reason")])
    if rows:
        lines.extend(_table(["node", "address", "state", "group", "role", "last", "commit",
                             "reason"], rows))
    return lines


def cmd_nodes(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        info = db.cluster()
    probes = {} if args.no_probe else probe_nodes(info)
    if args.json:
        nodes = []
        for n in info.get("nodes") or []:
            st = probes.get(n.get("id"))
            if isinstance(st, dict):  # without the reply's envelope
                st = {k: v for k, v in st.items() if k not in ("t", "id", "ok")}
            nodes.append({**n, "status": st if isinstance(st, dict) else None,
                          "unreachable": st if isinstance(st, str) else None})
        _print_json(ctx, {"nodes": nodes})
    else:
        ctx.out("\n".join(format_nodes(info, probes)))
    return 0


def probe_nodes(info: dict[str, Any],
                timeout_s: float = PROBE_TIMEOUT_S) -> dict[int, dict[str, Any] | str]:
    """Each node's ``status`` over the internal protocol, or why it could not be had."""
    import asyncio

    from rangekv import wire

    async def one(address: str) -> dict[str, Any] | str:
        conn = wire.Connection(address, connect_timeout_s=timeout_s)
        try:
            return await conn.request("status", timeout_s=timeout_s)
        except (errors.RangeKVError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()

    async def all_of() -> dict[int, dict[str, Any] | str]:
        nodes = [n for n in info.get("nodes") or [] if isinstance(n.get("address"), str)]
        got = await asyncio.gather(*(one(n["address"]) for n in nodes))
        return {n["id"]: g for n, g in zip(nodes, got, strict=True)}

    return asyncio.run(all_of())


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
    rows = [f"{'start':<24} {'end':<24} {'group':>5} {'version':>7}  state"]
    for r in ranges:
        end = "(none)" if r.get("end") is None else repr(r["end"])
        state = r.get("state", "active")
        moving = r.get("moving")
        if moving:
            state = (f"moving {moving['from']} -> {moving['to']} ({moving['phase']})"
                     if state == "moving" else f"active (group {moving['from']} cleaning up)")
        rows.append(f"{r['start']!r:<24} {end:<24} {r['group']:>5} {r['version']:>7}  {state}")
    return f"table {table}: {len(ranges)} range(s)\n" + "\n".join(rows)


def _show_ranges(args: argparse.Namespace, ctx: Context, ranges: list[dict[str, Any]]) -> int:
    if args.json:
        _print_json(ctx, {"table": args.table, "ranges": ranges})
    else:
        ctx.out(_format_ranges(args.table, ranges))
    return 0


def cmd_ranges(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        return _show_ranges(args, ctx, db.ranges(args.table))


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
    with ctx.client(args) as db:
        info = db.cluster()
    probes = {} if args.no_probe else probe_nodes(info)
    if args.json:
        _print_json(ctx, {"cluster": info, "nodes": {str(k): v for k, v in probes.items()}})
    else:
        ctx.out(format_status(info, probes, args.decisions))
    return 0


def cmd_cluster(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client(args) as db:
        info = db.cluster()
    if args.json:
        _print_json(ctx, info)
    else:
        ctx.out(format_cluster(info))
    return 0
