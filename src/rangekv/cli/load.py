"""``rangekv load TABLE FILE``: put every item of a JSON Lines file, with a progress bar.

Each line is one object, the shape ``rangekv list --json`` gives an item: ``{"key": "...",
"value": "..."}`` (UTF-8 text), where ``key_base64``/``value_base64`` (standard base64) stand
for bytes that are not UTF-8 and win over ``key``/``value``; any other field (``seq``) is
ignored. Blank lines are skipped. ``-`` reads standard input.

The whole file is checked first (JSON, the fields, the key and value limits): a bad line is
reported with its number and nothing is written. Then the items go out in batches of
``--batch`` (``put_many``: the rm splits each by range and sends one frame per group leader,
whose items are proposed together), ``--concurrency`` batches at a time; the first failure
stops the load and says how many were acknowledged. A put that is sent again stores the same
value, so loading a file again after a failure is safe (the keys get new seqs).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from rangekv import errors, limits
from rangekv.cli import Context
from rangekv.progress import Progress

CONCURRENCY_DEFAULT = 4
BATCH_DEFAULT = 1000
# A batch of a thousand puts waits behind the others in flight, and a busy cluster (a split,
# a move, a leader change under the load) answers it in seconds, not milliseconds: the CLI's
# 10 s deadline stopped loads with 16 batches in flight. Each put carries its client session,
# so a batch resent until this deadline is applied once all the same.
CALL_TIMEOUT_S_DEFAULT = 120.0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("load", parents=[common],
                       help="put every item of a JSON Lines file (as `list --json` prints "
                            "items), with a progress bar")
    p.add_argument("table", help="the table to put into (it must exist)")
    p.add_argument("file", help='a JSON Lines file of {"key": ..., "value": ...}; - for stdin')
    p.add_argument("--concurrency", type=int, default=CONCURRENCY_DEFAULT, metavar="N",
                   help=f"batches in flight at once (default {CONCURRENCY_DEFAULT})")
    p.add_argument("--batch", type=int, default=BATCH_DEFAULT, metavar="N",
                   help=f"items per put_many (default {BATCH_DEFAULT}, at most "
                        f"{limits.BATCH_ITEMS_MAX}; a batch also stops at "
                        f"{limits.BATCH_BYTES_MAX} bytes)")
    p.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT_S_DEFAULT,
                   metavar="SECONDS",
                   help=f"deadline of each batch, resends included (default "
                        f"{CALL_TIMEOUT_S_DEFAULT:g}; each item is applied once however often "
                        "it is sent)")
    p.add_argument("--create", action="store_true", help="create the table first if missing")
    p.set_defaults(func=cmd_load)


def _field(obj: dict[str, Any], name: str, lineno: int) -> bytes:
    b64 = obj.get(f"{name}_base64")
    if b64 is not None:
        if not isinstance(b64, str):
            raise errors.InvalidArgument(f"line {lineno}: {name}_base64 must be a string")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise errors.InvalidArgument(f"line {lineno}: {name}_base64 is not base64") from None
    text = obj.get(name)
    if not isinstance(text, str):
        raise errors.InvalidArgument(f"line {lineno}: needs a string {name!r} "
                                     f"(or {name}_base64)")
    return text.encode("utf-8", "surrogatepass")


def parse_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a JSON Lines document, checked; raises on the first bad line."""
    items = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidArgument(f"line {lineno}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise errors.InvalidArgument(f"line {lineno}: not a JSON object")
        key, value = _field(obj, "key", lineno), _field(obj, "value", lineno)
        try:
            limits.check_key(key)
            limits.check_value(value)
        except errors.RangeKVError as exc:
            raise type(exc)(f"line {lineno}: {exc.message}", **exc.details) from None
        items.append((key, value))
    return items


def _batches(items: list[tuple[bytes, bytes]], size: int
             ) -> Iterator[list[tuple[bytes, bytes]]]:
    """``items`` in runs of at most ``size`` items and ``limits.BATCH_BYTES_MAX`` bytes."""
    batch: list[tuple[bytes, bytes]] = []
    nbytes = 0
    for k, v in items:
        if batch and (len(batch) >= size or nbytes + len(k) + len(v) > limits.BATCH_BYTES_MAX):
            yield batch
            batch, nbytes = [], 0
        batch.append((k, v))
        nbytes += len(k) + len(v)
    if batch:
        yield batch


def cmd_load(args: argparse.Namespace, ctx: Context) -> int:
    if args.concurrency < 1:
        raise errors.InvalidArgument("--concurrency must be at least 1")
    if not 1 <= args.batch <= limits.BATCH_ITEMS_MAX:
        raise errors.InvalidArgument(f"--batch must be in 1..{limits.BATCH_ITEMS_MAX}")
    if not args.call_timeout > 0:
        raise errors.InvalidArgument("--call-timeout must be above 0")
    limits.check_table_name(args.table)
    if args.file == "-":
        data = ctx.stdin.read()
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise errors.InvalidArgument(f"cannot read {args.file}: {exc.strerror}") from None
    items = parse_lines(data)  # every line checked before anything is written
    done = 0
    lock = threading.Lock()
    bar = Progress(len(items), ctx.stderr, width=24)
    t0 = time.monotonic()
    clients: list[Any] = []  # one per thread: an HTTP client is not shared between threads
    local = threading.local()

    def client() -> Any:
        db = getattr(local, "db", None)
        if db is None:
            db = local.db = ctx.client(argparse.Namespace(**{**vars(args),
                                                             "timeout": args.call_timeout}))
            with lock:
                clients.append(db)
        return db

    if args.create and args.table not in client().tables():
        try:
            client().create_table(args.table)
        except errors.TableExists:
            pass
    stop = threading.Event()  # set by the first failure: what is queued is not sent

    def put(batch: list[tuple[bytes, bytes]]) -> None:
        nonlocal done
        if stop.is_set():
            return
        try:
            client().put_many(args.table, batch)
        except BaseException:
            stop.set()
            raise
        with lock:
            done += len(batch)
            bar.update(done, f"keys  {done / max(1e-9, time.monotonic() - t0):,.0f}/s")

    batches = list(_batches(items, args.batch))
    try:
        with ThreadPoolExecutor(max_workers=min(args.concurrency, max(1, len(batches)))) as pool:
            futures = [pool.submit(put, batch) for batch in batches]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
    finally:
        for db in clients:
            db.close()
    bar.close(f"keys  {done / max(1e-9, time.monotonic() - t0):,.0f}/s", done)
    if failed is not None:
        exc = failed.exception()
        assert exc is not None
        ctx.err(f"stopped after {done:,} of {len(items):,} puts were acknowledged "
                "(loading the file again is safe)")
        raise exc
    elapsed = time.monotonic() - t0
    if args.json:
        ctx.out(json.dumps({"table": args.table, "loaded": done, "seconds": round(elapsed, 3)}))
    else:
        ctx.out(f"loaded {done:,} keys into {args.table} in {elapsed:.1f} s "
                f"({done / max(elapsed, 1e-9):,.0f} keys/s)")
    return 0
