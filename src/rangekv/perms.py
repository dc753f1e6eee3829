"""Owner-only directories and files: what rangekv keeps on disk is its owner's alone.

Every data dir (``rangekv up``'s and each per-process dir in it, a node's ``--data-dir``) and
every backup (``rangekv backup DIR``, the meta's rolling metadata backups, a restored data dir)
is a directory of mode 0700, and the files rangekv writes there itself are 0600: keys and
values (WAL segments, checkpoints, dumps), the metadata, logs that may quote keys. RocksDB and
etcd create their own files with their own modes; the 0700 directory around them is what keeps
those private (no other user can even look a name up in it).

Rules:

* The modes never depend on the umask: a directory is chmod'ed right after ``mkdir`` and a file
  is created with 0600 and ``fchmod``'ed (a file that already existed keeps its mode through
  ``O_TRUNC``; a umask can remove bits, and an odd one such as 0o200 removes the owner's).
* An existing directory that others may read, write or enter is tightened to 0700, with a
  WARNING that names it and its old mode (made by an older rangekv, by hand, or under umask
  022): quietly leaving data readable is worse than a changed mode.
* Parents created along the way (``mkdir -p``) get the default mode: they are the operator's
  (``/var/lib``, ``/backups``), only the dir rangekv owns is made private.
* A mode that cannot be set (a file system without modes: vfat, some network mounts) is a
  WARNING, not a failure: the data still has to be written.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = 0o077  # group and other bits: none may be set on what rangekv writes

log = logging.getLogger("rangekv.perms")


def _chmod(path: Path, mode: int, logger: logging.Logger) -> bool:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        logger.warning("cannot make %s private (mode %04o): %s", path, mode, exc)
        return False
    return True


def private_dir(path: str | os.PathLike[str], *, logger: logging.Logger | None = None) -> Path:
    """``path`` as a directory of mode 0700, made (with any missing parents) if absent, and
    tightened with a warning if it exists and others may use it. Returns it as a Path."""
    path = Path(path)
    logger = logger or log
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        tighten(path, logger=logger)
        return path
    _chmod(path, DIR_MODE, logger)
    return path


def tighten(path: str | os.PathLike[str], *, logger: logging.Logger | None = None) -> bool:
    """Make an existing directory (0700) or file (0600) private if others may use it, with a
    warning naming its old mode; whether it was changed."""
    path = Path(path)
    logger = logger or log
    st = os.stat(path)
    if not st.st_mode & _OTHERS:
        return False
    old = stat.S_IMODE(st.st_mode)
    mode = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    if _chmod(path, mode, logger):
        logger.warning("%s was open to other users (mode %04o): made it %04o, private to its "
                       "owner as rangekv keeps its data", path, old, mode)
        return True
    return False


def open_private(path: str | os.PathLike[str], *, append: bool = False,
                 exclusive: bool = False) -> BinaryIO:
    """``path`` opened for writing bytes (truncated, or appended to), created 0600, and made
    0600 if it existed with another mode."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            try:
                os.fchmod(fd, FILE_MODE)
            except OSError as exc:
                log.warning("cannot make %s private (mode %04o): %s", path, FILE_MODE, exc)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path``'s content with ``data`` (text is UTF-8), the file 0600. Not atomic:
    for files whose loss costs nothing (pid files, generated configs); see
    ``rangekv.backup.manifest.write_durably`` for the atomic, durable kind."""
    with open_private(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def is_private(path: str | os.PathLike[str]) -> bool:
    """Whether no one but the owner may use ``path`` (no group or other bits)."""
    return not os.stat(path).st_mode & _OTHERS
