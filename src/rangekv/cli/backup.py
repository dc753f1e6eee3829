"""``rangekv backup DIR`` and ``rangekv restore DIR`` (see :mod:`rangekv.backup`).

``backup`` finds the cluster's etcd from ``--data-dir`` (a ``rangekv up`` data dir, whose
``cluster.json`` also gives the shape) or ``--etcd URL``. ``restore`` has three modes, exactly
one per run: ``--data-dir D`` (one machine), ``--node ID --node-dir PATH`` and ``--metadata
--etcd URLS`` (several machines; see :mod:`rangekv.backup.restore`). Both commands draw a
progress bar on stderr and print one summary line on stdout (``--json``: the manifest or
summary as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rangekv import errors
from rangekv.backup import PAUSE_TIMEOUT_S_DEFAULT
from rangekv.cli import Context
from rangekv.cli.up import DATA_DIR_DEFAULT as DEFAULT_DATA_DIR
from rangekv.progress import Progress


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backup", parents=[common],
        help="back up a live cluster (every table, key, value and seq, and the metadata) "
             "into a new directory",
        description="Back up a live cluster into DIR (new or empty). Writes go on meanwhile; "
                    "range splits, merges and moves and table creation and drops wait until "
                    "it ends. Every write acknowledged before it started is in the backup.")
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="a new directory for the backup (must not exist, or be empty)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path,
                       help=f"the data dir of a `rangekv up` cluster (default {DEFAULT_DATA_DIR}"
                            " unless --etcd is given)")
    where.add_argument("--etcd", metavar="URL",
                       help="the cluster's etcd client URL(s), comma-separated")
    p.add_argument("--pause-timeout-s", type=float, default=PAUSE_TIMEOUT_S_DEFAULT,
                   metavar="S", help="how long the meta may take to pause range changes "
                                     f"(default {PAUSE_TIMEOUT_S_DEFAULT:g})")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", parents=[common],
        help="restore a backup: a new `rangekv up` data dir, or on several machines one node's "
             "data dir or the metadata",
        description="Verify the backup in DIR (every checksum: nothing is written if one "
                    "fails), then restore it in one of three ways: --data-dir D lays out a "
                    "whole one-machine cluster (then `rangekv up --data-dir D`); on the "
                    "several-machine layout of docs/operations.md, --node ID --node-dir PATH "
                    "lays out one node's data dir (on its machine, once per node) and "
                    "--metadata --etcd URLS loads the metadata into a freshly started etcd "
                    "(once).")
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="a backup written by `rangekv backup` (or a copy of one)")
    p.add_argument("--data-dir", type=Path, metavar="D",
                   help="one machine: the new data dir (must not exist, or be empty)")
    p.add_argument("--base-port", type=int,
                   help="with --data-dir: the restored cluster's base port (default: the "
                        "backed-up cluster's)")
    p.add_argument("--node", type=int, metavar="ID",
                   help="several machines: lay out the data dir of node ID (with --node-dir)")
    p.add_argument("--node-dir", type=Path, metavar="PATH",
                   help="with --node: its new data dir (must not exist, or be empty), e.g. "
                        "/var/lib/rangekv/node-ID")
    p.add_argument("--metadata", action="store_true",
                   help="several machines: load the metadata into a new etcd (with --etcd)")
    p.add_argument("--etcd", metavar="URL",
                   help="with --metadata: the new etcd's client URL(s), comma-separated; it "
                        "must hold no rangekv keys")
    p.add_argument("--address", action="append", default=[], metavar="ID=HOST:PORT",
                   help="with --metadata: node ID now listens at HOST:PORT (repeatable; "
                        "default: every node at its backed-up address)")
    p.set_defaults(func=cmd_restore)


def _bar(ctx: Context) -> tuple[Any, Any, Any]:
    """A progress bar over bytes, with its step text; (say, on_bytes, close)."""
    state: dict[str, Any] = {"bar": None, "what": ""}

    def say(what: str) -> None:
        state["what"] = what
        bar = state["bar"]
        if bar is not None:
            bar.update(bar.done, what)

    def on_bytes(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = Progress(max(1, total), stream=ctx.stderr)
        bar.total = max(1, total)
        bar.update(done, f"{state['what']} ({done / 1e6:,.1f} MB)")

    def close(what: str, failed: bool = False) -> None:
        bar = state["bar"]
        if bar is not None:
            bar.close(what, done=bar.done if failed else None)

    return say, on_bytes, close


def cmd_backup(args: argparse.Namespace, ctx: Context) -> int:
    from rangekv.backup import take as take_mod  # (aiohttp: only for this command)

    cluster = None
    if args.etcd:
        endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
    else:
        from rangekv.cluster.local import LocalCluster

        data_dir = args.data_dir or Path(DEFAULT_DATA_DIR)
        if not (data_dir / "cluster.json").exists():
            raise errors.InvalidArgument(f"{data_dir} holds no `rangekv up` cluster; give "
                                         "--data-dir D or --etcd URL")
        cluster = json.loads((data_dir / "cluster.json").read_text())
        endpoints = [LocalCluster.open(data_dir).etcd_endpoint]
    if not args.pause_timeout_s > 0:
        raise errors.InvalidArgument("--pause-timeout-s must be positive")
    say, on_bytes, close = _bar(ctx)
    try:
        manifest = asyncio.run(take_mod.take(args.dir, endpoints, cluster=cluster,
                                             pause_timeout_s=args.pause_timeout_s, say=say,
                                             on_bytes=on_bytes))
    except BaseException:
        close("failed", failed=True)
        raise
    size = sum(f[1] for f in manifest["files"])
    close(f"{size / 1e6:,.1f} MB")
    if args.json:
        ctx.out(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=1))
    else:
        groups = ", ".join(f"{g['id']}@{g['applied_index']}" for g in manifest["groups"])
        ctx.out(f"backup {args.dir}: {len(manifest['tables'])} table(s), "
                f"{len(manifest['groups'])} group(s) (applied index: {groups or '-'}), "
                f"{size:,} bytes in {len(manifest['files'])} files, metadata at revision "
                f"{manifest['revision']}, {manifest['seconds']:.1f} s")
    return 0


def _restore_mode(args: argparse.Namespace) -> str:
    """Which restore the arguments ask for; a clear error for a mix or a missing half."""
    modes = [name for name, given in (("--data-dir", args.data_dir is not None),
                                      ("--node", args.node is not None),
                                      ("--metadata", args.metadata)) if given]
    if len(modes) != 1:
        said = f" (not {' and '.join(modes)} together)" if modes else ""
        raise errors.InvalidArgument(
            f"give one of --data-dir D (a one-machine cluster), --node ID --node-dir PATH (one "
            f"node of several machines) or --metadata --etcd URL (their metadata){said}")
    mode = modes[0]
    allowed = {"--data-dir": {"--base-port"}, "--node": {"--node-dir"},
               "--metadata": {"--etcd", "--address"}}[mode]
    extra = [name for name, given in (("--base-port", args.base_port is not None),
                                      ("--node-dir", args.node_dir is not None),
                                      ("--etcd", args.etcd is not None),
                                      ("--address", bool(args.address))) if given]
    wrong = [name for name in extra if name not in allowed]
    if wrong:
        raise errors.InvalidArgument(f"{', '.join(wrong)} do(es) not go with {mode}")
    if mode == "--node" and args.node_dir is None:
        raise errors.InvalidArgument("--node ID needs --node-dir PATH (the node's new data dir)")
    if mode == "--node" and args.node < 1:
        raise errors.InvalidArgument("--node must be a node id (1 or more)")
    if mode == "--metadata" and not (args.etcd or "").strip(","):
        raise errors.InvalidArgument("--metadata needs --etcd URL[,URL] (the new etcd)")
    return mode


def cmd_restore(args: argparse.Namespace, ctx: Context) -> int:
    from rangekv.backup import restore as restore_mod

    mode = _restore_mode(args)
    if args.base_port is not None and not 1024 <= args.base_port <= 65535 - 70:
        raise errors.InvalidArgument("--base-port must be in 1024..65465")
    addresses = restore_mod.parse_addresses(args.address) if mode == "--metadata" else {}
    say, on_bytes, close = _bar(ctx)
    try:
        if mode == "--data-dir":
            summary = restore_mod.restore(args.dir, args.data_dir, base_port=args.base_port,
                                          say=say, on_bytes=on_bytes)
        elif mode == "--node":
            summary = restore_mod.restore_node(args.dir, args.node, args.node_dir, say=say,
                                               on_bytes=on_bytes)
        else:
            endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
            summary = restore_mod.restore_metadata(args.dir, endpoints, addresses=addresses,
                                                   say=say, on_bytes=on_bytes)
    except BaseException:
        close("failed", failed=True)
        raise
    close("restored")
    if args.json:
        ctx.out(json.dumps(summary, indent=1))
        return 0
    groups = ", ".join(f"{g['id']}@{g['applied_index']}" for g in summary.get("groups", []))
    if mode == "--data-dir":
        ctx.out(f"restored {args.dir} into {summary['data_dir']}: {len(summary['tables'])} "
                f"table(s), {len(summary['groups'])} group(s) (applied index: {groups or '-'}), "
                f"{summary['nodes']} nodes on base port {summary['base_port']}, "
                f"{summary['seconds']:.1f} s; start it with: rangekv up --data-dir "
                f"{summary['data_dir']}")
    elif mode == "--node":
        what = (f"a member of group {summary['group']} at applied index "
                f"{summary['applied_index']} (epoch {summary['epoch']}, "
                f"{summary['bytes_copied']:,} bytes)" if summary["state"] == "member"
                else "a spare")
        ctx.out(f"restored node {summary['node']} from {args.dir} into {summary['node_dir']}: "
                f"{what}, {summary['seconds']:.1f} s")
    else:
        ctx.out(f"restored the metadata of {args.dir} into etcd (revision "
                f"{summary['etcd_revision']}): {len(summary['tables'])} table(s), "
                f"{len(summary['groups'])} group(s) (applied index: {groups or '-'}), "
                f"{len(summary['nodes'])} nodes, {summary['metadata_keys']} keys, "
                f"{summary['seconds']:.1f} s")
    return 0
