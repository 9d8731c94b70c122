"""Atomic file writes: every file the project writes replaces its target, it never writes into it.

Why: a write in place through a hard link changes every name of the file (the newest snapshot in
``checkpoints/`` is a hard link to the latest checkpoint), and a crash mid-write leaves a truncated file under a
good name.  Writing a temp file beside the target and renaming it over avoids both; the temp file gets the mode
an ordinary file gets under the umask (``mkstemp`` alone gives 0600, unreadable to a shared cluster group).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written (disk full, quota, permissions changed mid-run)."""


def file_mode() -> int:
    """The mode an ordinary new file gets under this process's umask (``mkstemp`` alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` into a temp file beside it, fsync, then rename over it.

    The rename gives ``path`` a new inode: a hard link to the old file (a snapshot in ``checkpoints/``) keeps the
    old content, and a crash mid-write leaves the previous file intact.  The file gets the umask's usual mode, so
    checkpoints on a shared cluster folder are as readable as the other files there.
    """
    path = Path(path)
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
