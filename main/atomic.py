"""Atomic file writes: every file the project writes replaces its target, it never writes into it.

Why: a write in place through a hard link changes every name of the file (the newest snapshot in
``checkpoints/`` is a hard link to the latest checkpoint), and a crash mid-write leaves a truncated file under a
good name.  Writing a temp file beside the target and renaming it over avoids both; the temp file gets the mode
an ordinary file gets under the umask (``mkstemp`` alone gives 0600, unreadable to a shared cluster group).
A rename replaces whatever the name is, so only a regular file (or a free name) is ever replaced: a device node
(as root, ``/dev/full``), a FIFO, a socket, a folder or a symbolic link is refused (``not_replaceable``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written (disk full, quota, permissions changed mid-run)."""


# What a name that is not a regular file is, for the message (``stat.S_IFMT`` of its ``lstat``).
FILE_TYPES = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}


def not_replaceable(path: str | os.PathLike) -> str | None:
    """What ``path`` is if a write must not replace it (a symlink, folder, device, FIFO, socket); else None.

    ``lstat``: a symbolic link is judged itself, not where it points (replacing it would drop the link, and
    following it would write wherever it points, ``/proc/self/fd/1`` included).  A free name, or one that cannot
    be looked up at all, is None: the write itself then says what is wrong.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")


def file_mode() -> int:
    """The mode an ordinary new file gets under this process's umask (``mkstemp`` alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` into a temp file beside it, fsync, then rename over it.

    The rename gives ``path`` a new inode: a hard link to the old file (a snapshot in ``checkpoints/``) keeps the
    old content, and a crash mid-write leaves the previous file intact.  A ``path`` that is not a regular file
    (``not_replaceable``) is refused before anything is written.  The file gets the umask's usual mode, so
    checkpoints on a shared cluster folder are as readable as the other files there.
    """
    path = Path(path)
    kind = not_replaceable(path)
    if kind is not None:
        raise WriteError(f"cannot write {path}: it is {kind}, which a write would replace; nothing was written; name a "
                         "regular file")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a quota, a vanished mount: one line, the old file intact
            raise WriteError(f"cannot write {path} ({e.strerror or e}); the previous file, if any, is intact; free "
                             "space or choose another folder") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """A text file (JSON, YAML, tables) written atomically (``atomic_write``), never in place."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Bytes (e.g. a serialised safetensors file) written atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))
