"""``backup.json``: the manifest of a backup directory, and its verification.

Pure file logic. The manifest is written last (atomically: temp file, fsync, rename, fsync of
the directory), so a directory without it is an unfinished backup. It lists every other file of
the backup with its size and sha256; :func:`verify` re-reads them all and refuses (raises
:class:`BackupInvalid`, which names the first problem) a missing, extra, short, long or
altered file, a malformed manifest, or group metadata that disagrees with the group's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rangekv import errors, perms
from rangekv.storage.snapshot import Manifest, SnapshotInvalid
from rangekv.storage.wal import fsync_dir

FORMAT = 1
MANIFEST_NAME = "backup.json"
CLUSTER_NAME = "cluster.json"
DUMP_PATH = "meta/dump.json"
ETCD_SNAPSHOT_PATH = "meta/etcd.snapshot"
GROUPS_DIR = "groups"
GROUP_INFO_NAME = "group.json"
INDEX_DIR = "index"
FILES_MAX = 1_000_000
_READ_BYTES = 4 * 1024 * 1024
_PATH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,3}")


class BackupInvalid(errors.RangeKVError):
    """A backup directory is incomplete, altered or malformed (restore wrote nothing)."""

    code = "backup_invalid"
    status = 400


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read whole."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` all or nothing across a crash: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with perms.open_private(tmp) as f:  # backups are their owner's only (rangekv.perms)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(str(path.parent))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_durably(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` but the manifest, as sorted relative paths ('/')."""
    out = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def build(root: str | os.PathLike[str], info: dict[str, Any],
          on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The manifest of the backup in ``root``: ``info`` plus every file's size and sha256."""
    root = Path(root)
    files = []
    for rel in list_files(root):
        size, sha = sha256_file(root / rel)
        files.append([rel, size, sha])
        if on_bytes is not None:
            on_bytes(size)
    return {"format": FORMAT, **info, "files": files}


def write_manifest(root: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    write_json(Path(root) / MANIFEST_NAME, manifest)


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of ``root``, checked for shape (not the files: see :func:`verify`)."""
    root = Path(root)
    if not root.is_dir():
        raise BackupInvalid(f"{root} is not a directory")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BackupInvalid(f"{root} has no {MANIFEST_NAME}: the backup is incomplete (it "
                            "did not finish) or this is not a backup directory")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupInvalid(f"{path} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{path} is not a rangekv backup manifest of format {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= FILES_MAX:
        raise BackupInvalid(f"{path}: files must be a list of 1..{FILES_MAX} entries")
    seen = set()
    for entry in files:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and _PATH_RE.fullmatch(entry[0]) and ".." not in entry[0].split("/")
                and isinstance(entry[1], int) and entry[1] >= 0 and isinstance(entry[2], str)
                and re.fullmatch(r"[0-9a-f]{64}", entry[2])):
            raise BackupInvalid(f"{path}: malformed file entry {str(entry)[:200]}")
        if entry[0] in seen:
            raise BackupInvalid(f"{path}: {entry[0]} is listed twice")
        seen.add(entry[0])
    for name in (DUMP_PATH, CLUSTER_NAME):
        if name not in seen:
            raise BackupInvalid(f"{path} does not list {name}")
    groups = manifest.get("groups")
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("id"), int) for g in groups):
        raise BackupInvalid(f"{path}: groups must be a list of {{id, ...}}")
    return manifest


def verify(root: str | os.PathLike[str],
           on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Check a whole backup directory against its manifest; returns the manifest. Raises
    BackupInvalid naming the first problem. Reads every byte of every file."""
    root = Path(root)
    manifest = load_manifest(root)
    listed = {rel: (size, sha) for rel, size, sha in manifest["files"]}
    present = set(list_files(root))
    missing = sorted(set(listed) - present)
    if missing:
        raise BackupInvalid(f"{root}: {len(missing)} file(s) of the backup are missing, e.g. "
                            f"{missing[0]}")
    extra = sorted(present - set(listed))
    if extra:
        raise BackupInvalid(f"{root}: {len(extra)} file(s) are not part of the backup, e.g. "
                            f"{extra[0]} (remove them, or this is not the directory written "
                            "by rangekv backup)")
    for rel, (size, sha) in sorted(listed.items()):
        got_size, got_sha = sha256_file(root / rel)
        if got_size != size:
            raise BackupInvalid(f"{root / rel} has {got_size} bytes, the backup wrote {size}")
        if got_sha != sha:
            raise BackupInvalid(f"{root / rel} is corrupt: its sha256 does not match the "
                                "backup's")
        if on_bytes is not None:
            on_bytes(size)
    for group in manifest["groups"]:
        group_manifest(root, group["id"], listed)
    return manifest


def group_manifest(root: Path, group_id: int,
                   listed: dict[str, tuple[int, str]] | None = None) -> dict[str, Any]:
    """``groups/G/group.json`` of a backup, with its checkpoint manifest checked against the
    files listed in ``backup.json`` (names and sizes)."""
    path = root / GROUPS_DIR / str(group_id) / GROUP_INFO_NAME
    try:
        info = json.loads(path.read_bytes())
        checkpoint = Manifest.from_wire(info["manifest"])
    except (OSError, ValueError, KeyError, TypeError, SnapshotInvalid) as exc:
        raise BackupInvalid(f"{path}: not a group checkpoint description: {exc}") from None
    if info.get("group") != group_id:
        raise BackupInvalid(f"{path} describes group {info.get('group')}, not {group_id}")
    if listed is not None:
        prefix = f"{GROUPS_DIR}/{group_id}/{INDEX_DIR}/"
        have = {rel[len(prefix):]: size for rel, (size, _) in listed.items()
                if rel.startswith(prefix)}
        want = {name: size for name, size, _ in checkpoint.files}
        if have != want:
            raise BackupInvalid(f"{path}: the checkpoint's files do not match those of the "
                                "backup")
    info["checkpoint"] = checkpoint
    return info
