"""A tiny durable record for the replication core: ``{"promised_epoch": int, "node_id": int, ...}``.

Invariants:

* ``save`` is atomic: after a crash, ``load`` returns either the previous state or the new one,
  never a mix (write a temp file, fsync it, rename it over the old one, fsync the directory).
* ``save`` is durable when it returns (a promise of an epoch must survive a power loss). If it
  raises (the error names the failed call and file), nothing may act on the new state: after a
  failed fsync the page cache cannot be trusted, so the caller stops the process rather than
  retry (see ``wal.py``). The old state or the new one is then what ``load`` finds on restart;
  either is safe, because a promise that was never announced binds no one.
* ``load`` returns exactly what was saved or raises ``HardStateCorrupt``: the content carries a
  crc32c and a length, and nothing unverified is ever returned.

File format (text, so an operator can read it)::

    rangekv-hardstate 1 <crc32c of body, 8 hex digits> <body bytes>\\n
    <body: JSON object, keys sorted>

The state must be a JSON-serializable dict with string keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

import crc32c

from rangekv.perms import FILE_MODE
from rangekv.storage.wal import StorageCorrupt, fsync_dir, sync_file

MAGIC = "rangekv-hardstate"
FORMAT_VERSION = 1
FILE_BYTES_MAX = 1024 * 1024  # hard state is a handful of integers; anything bigger is damage


class HardStateCorrupt(StorageCorrupt):
    """The hard state file failed verification; the node must not guess its promises."""

    code = "hardstate_corrupt"


def encode(state: dict[str, Any]) -> bytes:
    assert isinstance(state, dict) and all(isinstance(k, str) for k in state), state
    body = json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    header = f"{MAGIC} {FORMAT_VERSION} {crc32c.crc32c(body):08x} {len(body)}\n".encode()
    data = header + body
    assert len(data) <= FILE_BYTES_MAX, len(data)
    return data


def decode(data: bytes, path: str = "<bytes>") -> dict[str, Any]:
    def bad(reason: str) -> HardStateCorrupt:
        return HardStateCorrupt(f"{path}: {reason}", path=path, reason=reason)

    newline = data.find(b"\n")
    if newline < 0:
        raise bad("no header line")
    fields = data[:newline].split(b" ")
    if len(fields) != 4 or fields[0] != MAGIC.encode():
        raise bad("malformed header")
    try:
        version = int(fields[1])
        checksum = int(fields[2], 16)
        length = int(fields[3])
    except ValueError:
        raise bad("malformed header") from None
    if version != FORMAT_VERSION:
        raise bad(f"unknown format version {version}")
    body = data[newline + 1 :]
    if len(body) != length:
        raise bad(f"body is {len(body)} bytes, header says {length}")
    if crc32c.crc32c(body) != checksum:
        raise bad("checksum mismatch")
    try:
        state = json.loads(body)
    except ValueError:
        raise bad("body is not JSON") from None
    if not isinstance(state, dict):
        raise bad("body is not a JSON object")
    return state


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically and durably replace the hard state at ``path``."""
    target = os.fspath(path)
    data = encode(state)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        sync_file(fd, tmp, data_only=False)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    fsync_dir(directory)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved state; {} if nothing was ever saved at ``path``. Raises HardStateCorrupt."""
    target = os.fspath(path)
    try:
        with open(target, "rb") as f:
            data = f.read(FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return {}
    if len(data) > FILE_BYTES_MAX:
        raise HardStateCorrupt(f"{target}: larger than {FILE_BYTES_MAX} bytes", path=target)
    return decode(data, target)
