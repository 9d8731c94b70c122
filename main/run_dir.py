"""The run folder (``--save_dir``): checked before any work, owned by one process, cleaned before it is reused.

Why: a run folder holds days of GPU time.  Two processes writing one folder interleave their files; ``--overwrite``
into a folder of a longer run used to keep that run's snapshots (and a later ``--resume`` continued the OLD run);
a kill mid-write leaves ``*.tmp`` files.  So:

- every check happens before the folder is created (``check_run_dir(create=False)``);
- creating it takes an exclusive ``fcntl`` lock on ``.lock`` inside it, held until the process exits (the kernel
  drops it when the process dies, so a stale lock file never blocks); a second process is refused with the
  holder's PID;
- then orphan temporary files are removed and, with ``--overwrite``, every file of the previous run;
- a run killed before its first checkpoint is not a dead end: its ``config.yaml`` is marked (``FROM_SETTINGS``)
  when the start needs nothing but those settings, and ``--resume`` then restarts it from iteration 0
  (``main.trainer_setup.restart_config``); the plain command's refusal says so.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .config import Config, ConfigError

LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"
# What a run writes into its folder (the previous run's, removed by --overwrite).  Snapshots live in checkpoints/.
RUN_FILES = ("*.model", "best_*", "events.out.tfevents.*", "sparsity.json", CONFIG_NAME, "train.log")
RUN_FOLDERS = ("checkpoints",)
# config.yaml's first line when the run starts from its settings alone (baseline.py: no masks, no scores, no
# source checkpoint beyond --reload), so that a --resume before its first checkpoint can restart it from the file.
FROM_SETTINGS = "# adapmtl run started from these settings alone: until it has a checkpoint, --resume restarts it\n"
_held: dict[str, int] = {}  # resolved folder -> open lock fd, for the life of this process


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder."""


def holds_run(save_dir: Path) -> bool:
    return save_dir.is_dir() and (any(save_dir.glob("*.model")) or (save_dir / CONFIG_NAME).exists())


def has_checkpoint(save_dir: Path) -> bool:
    """A resumable checkpoint file is there (the latest or a snapshot; whether it loads is ``--resume``'s to say)."""
    save_dir = Path(save_dir)
    return any(not p.name.startswith("best_") for p in save_dir.glob("*.model")) or any(
        (save_dir / "checkpoints").glob("*.model"))


def restartable(save_dir: Path) -> bool:
    """The folder's ``config.yaml`` says its run started from these settings alone (``FROM_SETTINGS``)."""
    try:
        with open(Path(save_dir) / CONFIG_NAME, encoding="utf-8") as f:
            return f.readline() == FROM_SETTINGS
    except (OSError, UnicodeDecodeError):
        return False


def started_only(save_dir: Path) -> bool:
    """A run took the folder (its lock file is there) and was stopped before it wrote its config or a checkpoint."""
    save_dir = Path(save_dir)
    return (save_dir / LOCK_NAME).is_file() and not holds_run(save_dir) and not has_checkpoint(save_dir)


def occupied(save_dir: Path) -> str:
    """Why a plain start may not use ``save_dir``, and what to pass instead (one message, agreeing with --resume)."""
    if has_checkpoint(save_dir) or not (save_dir / CONFIG_NAME).exists():
        return (f"--save_dir {save_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --save_dir")
    if restartable(save_dir):
        return (f"--save_dir {save_dir} holds a run stopped before its first checkpoint; pass --resume to restart it "
                "from iteration 0 with its config.yaml, --overwrite to replace it, or choose another --save_dir")
    return (f"--save_dir {save_dir} holds a run stopped before its first checkpoint, which only its own start can "
            "rebuild; pass --overwrite to start it again, or choose another --save_dir")


def check_writable(path: Path, flag: str) -> None:
    """``path`` is, or can be created as, a writable folder: checked without creating anything."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; name a folder")
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {flag} {path}: {existing} is a file, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable; choose a writable folder")
    try:  # root passes os.access everywhere: a real (nameless, at once removed) file tells /proc, read-only mounts
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({e.strerror}); choose a writable folder") \
            from None


def check_run_dir(cfg: Config, create: bool = True, inputs: Mapping[str, str | None] | None = None,
                  restart: bool = False) -> None:
    """Refuse to clobber another run and make sure the folder can be written; ``create`` makes it and owns it.

    ``create=False`` only checks (nothing touches the disk), so every other user mistake can still be found
    before the run folder appears.  ``create=True`` also locks the folder for this process, removes orphan
    temporary files and, with ``--overwrite``, the previous run's files.  ``inputs`` (flag -> path; ``--reload``
    is added from ``cfg``): files the command reads, which ``--overwrite`` must not delete.  ``restart``: a
    ``--resume`` restarting the folder's run from iteration 0 (it holds no checkpoint), which adopts the folder.
    """
    save_dir = Path(cfg.save_dir)
    if holds_run(save_dir) and not (cfg.resume or cfg.overwrite or restart):
        raise ConfigError(occupied(save_dir))
    check_writable(save_dir, "--save_dir")
    if cfg.overwrite and not cfg.resume:
        named = {"--reload": cfg.reload, **(inputs or {})}
        for flag, source in named.items():
            if source and save_dir.is_dir() and Path(os.path.abspath(source)).is_relative_to(
                    Path(os.path.abspath(save_dir))):
                raise ConfigError(f"{flag} {source} lies in --save_dir {save_dir}, whose previous run --overwrite "
                                  f"deletes; copy it elsewhere first or choose another --save_dir")
    if not create:
        return
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --save_dir {save_dir} ({e.strerror}); choose a writable folder") from None
    if not os.access(save_dir, os.W_OK):
        raise ConfigError(f"--save_dir {save_dir} is not writable; choose a writable folder")
    if lock_run_dir(save_dir):  # first time this process takes the folder (stages of one command share it)
        remove_orphans(save_dir)
        if cfg.overwrite and not cfg.resume:
            clear_run(save_dir)


def lock_run_dir(save_dir: Path) -> bool:
    """Own ``save_dir`` until this process exits; ``RunFolderBusy`` names the PID of a live holder.

    Returns True when this call took the lock, False when this process already held it.
    """
    key = str(Path(save_dir).resolve())
    if key in _held:
        return False
    path = Path(save_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(f"--save_dir {save_dir} is in use by another run (process {holder}); wait for it to "
                            "finish, stop it, or choose another --save_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    return True


def remove_orphans(save_dir: Path) -> list[Path]:
    """Delete temporary files a killed process left mid-write (``.NAME.*.tmp``, ``.NAME.link``)."""
    gone = []
    for folder in (Path(save_dir), Path(save_dir) / "checkpoints"):
        for pattern in (".*.tmp", ".*.link"):
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)
                gone.append(path)
    return gone


def clear_run(save_dir: Path) -> None:
    """Remove every file of the run that ``--overwrite`` replaces (not the lock, not unrelated files)."""
    save_dir = Path(save_dir)
    for pattern in RUN_FILES:
        for path in save_dir.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for name in RUN_FOLDERS:
        shutil.rmtree(save_dir / name, ignore_errors=True)
