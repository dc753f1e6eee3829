"""The meta's rolling metadata backups (``rangekv meta --backup-dir DIR``), and the two forms of a
metadata backup that ``rangekv backup`` writes too: the logical dump and etcd's snapshot.

The active meta writes the logical dump of ``/rangekv/`` (the format of a backup's
``meta/dump.json``: one consistent prefix read, so one etcd revision) to
``DIR/meta-<revision>.json``, and beside it etcd's own snapshot (maintenance API, checked
against the sha256 etcd appends) to ``DIR/meta-<revision>.etcd.snapshot`` (taken just after the
dump, so at that revision or a later one; `etcdutl snapshot restore` rebuilds an etcd member
from it, and ``rangekv restore`` uses the dump):

* after every metadata change, at most once per ``min_interval_s`` (changes in between are
  caught by the next dump: each dump is the whole state);
* every ``interval_s`` even without a change seen (a lost watch must not stop backups);
* never twice for the same revision.

Each file is written atomically (temp file, fsync, rename, fsync of the directory), and only
the newest ``keep`` are kept (older ones are deleted after the new one is durable). A failure
(etcd down, disk full) is logged and retried at the next trigger; it never stops the meta.
This is the metadata only: group data needs ``rangekv backup``.

It lives with the meta it runs in: ``rangekv.backup`` (which backs up whole clusters, groups
included) takes the dump format and the snapshot from here, never the other way round.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rangekv import errors, model, perms
from rangekv.metadata.etcd import EtcdClient, _json_lines

log = logging.getLogger("rangekv.meta.backup")

SNAPSHOT_LINE_BYTES_MAX = 8 * 1024 * 1024


class SnapshotFailed(errors.Internal):
    """etcd's snapshot did not arrive whole (an error in the stream, or its sha256 fails)."""


MIN_INTERVAL_S_DEFAULT = 5.0
INTERVAL_S_DEFAULT = 300.0
KEEP_DEFAULT = 20
_NAME_RE = re.compile(r"meta-(\d{12})\.json")


def dump_name(revision: int) -> str:
    return f"meta-{revision:012d}.json"


def snapshot_path(dump: Path) -> Path:
    """Where the etcd snapshot taken with ``dump`` is kept."""
    return dump.with_suffix(".etcd.snapshot")


def existing_dumps(directory: Path) -> list[Path]:
    """The dumps in ``directory``, oldest (lowest revision) first."""
    found = [p for p in directory.iterdir() if _NAME_RE.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


class MetaBackups:
    """One meta's rolling metadata backups; ``run`` until cancelled."""

    def __init__(self, etcd: EtcdClient, directory: Path, *, active: Callable[[], bool],
                 min_interval_s: float = MIN_INTERVAL_S_DEFAULT,
                 interval_s: float = INTERVAL_S_DEFAULT, keep: int = KEEP_DEFAULT) -> None:
        assert min_interval_s >= 0 and interval_s > 0 and keep >= 1
        self.etcd, self.directory, self.active = etcd, directory, active
        self.min_interval_s, self.interval_s, self.keep = min_interval_s, interval_s, keep
        self._changed = asyncio.Event()
        self.written = 0
        self.last_revision = 0

    def changed(self) -> None:
        """The metadata changed (the meta's view moved on)."""
        self._changed.set()

    async def run(self) -> None:
        try:
            perms.private_dir(self.directory, logger=log)
            dumps = existing_dumps(self.directory)
        except OSError as exc:
            log.error("no metadata backups: cannot use %s: %s", self.directory, exc)
            return
        if dumps:
            match = _NAME_RE.fullmatch(dumps[-1].name)
            assert match is not None
            self.last_revision = int(match.group(1))
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._changed.clear()
            if self.active():
                await self.dump_once()
            # debounce: the changes of the next min_interval_s go into one dump
            await asyncio.sleep(self.min_interval_s)

    async def dump_once(self) -> Path | None:
        """Write a dump unless the revision is already dumped; the file written."""
        try:
            kvs, revision = await self.etcd.get_prefix(model.PREFIX)
        except errors.RangeKVError as exc:
            log.warning("metadata backup skipped: cannot read etcd: %s", exc.message)
            return None
        if revision <= self.last_revision:
            return None
        path = self.directory / dump_name(revision)
        snap = snapshot_path(path)
        partial = snap.with_name(snap.name + ".tmp")
        try:
            await asyncio.to_thread(write_json, path, dump_kvs(kvs, revision))
            try:
                await etcd_snapshot(self.etcd, partial)
                partial.rename(snap)
            except errors.RangeKVError as exc:  # SnapshotFailed among them
                # the dump alone still restores the metadata: keep it, say why there is no
                # snapshot beside it
                log.warning("metadata backup at revision %d without etcd's snapshot: %s",
                            revision, exc)
                partial.unlink(missing_ok=True)
            for old in existing_dumps(self.directory)[:-self.keep]:
                snapshot_path(old).unlink(missing_ok=True)
                old.unlink()
        except OSError as exc:
            log.warning("metadata backup to %s failed: %s", path, exc)
            partial.unlink(missing_ok=True)
            return None
        self.last_revision = revision
        self.written += 1
        log.info("metadata backup at revision %d: %s (%d keys)", revision, path, len(kvs))
        return path


def dump_kvs(kvs: list[Any], revision: int) -> dict[str, Any]:
    """The logical dump of ``/rangekv/``: each value byte for byte, as text (every rangekv
    value is JSON text) or, if it is not UTF-8, as base64."""
    items = []
    for kv in kvs:
        item: dict[str, Any] = {"key": kv.key.decode("utf-8", "surrogateescape")}
        try:
            item["value"] = kv.value.decode("utf-8")
        except UnicodeDecodeError:
            item["value_base64"] = base64.b64encode(kv.value).decode()
        items.append(item)
    return {"format": 1, "revision": revision, "kvs": items}


def dump_items(dump: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every entry of a logical dump, exactly as they were in etcd."""
    out = []
    for item in dump["kvs"]:
        key = item["key"].encode("utf-8", "surrogateescape")
        if "value_base64" in item:
            value = base64.b64decode(item["value_base64"])
        else:
            value = item["value"].encode("utf-8")
        out.append((key, value))
    return out


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON all or nothing across a crash: temp file (its owner's only),
    fsync, rename, fsync of the directory (as ``rangekv.backup.manifest.write_json``)."""
    tmp = path.with_name(path.name + ".tmp")
    with perms.open_private(tmp) as f:
        f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


async def etcd_snapshot(etcd: EtcdClient, path: Path) -> int:
    """etcd's own snapshot (maintenance API), streamed into ``path``, durably; checks the
    sha256 that etcd appends to it (what `etcdutl snapshot restore` checks), so that a
    snapshot cut short or altered on the way is refused here and now."""
    resp = await etcd._open_stream("/v3/maintenance/snapshot", {})
    digest = hashlib.sha256()
    tail = b""  # the last 32 bytes so far: the checksum, once the stream ends
    size = 0
    f = await asyncio.to_thread(perms.open_private, path)
    try:
        async for message in _json_lines(resp, SNAPSHOT_LINE_BYTES_MAX):
            if "error" in message:
                raise SnapshotFailed(f"etcd snapshot failed: {message['error']}")
            blob = (message.get("result") or {}).get("blob")
            if blob:
                data = base64.b64decode(blob)
                await asyncio.to_thread(f.write, data)
                size += len(data)
                window = tail + data
                digest.update(window[:-32])
                tail = window[-32:]
        await asyncio.to_thread(_sync_close, f)
    finally:
        resp.close()
        f.close()
    if size < 32 or digest.digest() != tail:
        raise SnapshotFailed(f"etcd's snapshot ({size} bytes) fails its own sha256 check")
    _fsync_dir(path.parent)
    return size


def _sync_close(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
