"""Checkpoint files: atomic writes, safe loads, and the RNG state needed for exact resume.

Everything stored is a plain type (tensors, numbers, strings, lists, dicts) so ``torch.load(...,
weights_only=True)`` reads it: a checkpoint can never execute code on load.  Writes go to a temporary file in
the same folder and are moved into place with ``os.replace``, so a crash mid-write leaves the previous good
file intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .errors import UserError

CHECKPOINT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says what to do."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (``atomic_write``: new inode, umask mode, old file intact on a crash)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``), turning every failure into a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check --path / --reload / --resume)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise CheckpointError(f"checkpoint {path} is truncated, corrupt or unreadable; use another file") from None
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled code or objects ({found.group(1)}) that could run on "
            "load; use a checkpoint written by this code, or re-save yours as a plain dict of tensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or unreadable; use another file") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'state_dict' entry)")
    bad = next((k for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # training never writes one (NaN steps are skipped); a damaged or foreign file
        raise CheckpointError(f"{path} holds NaN/Inf weights ({bad}); it cannot be evaluated or trained from; use "
                              "an earlier snapshot (checkpoints/ beside it) or another checkpoint")
    return state


def rng_state() -> dict:
    """Every RNG the training loop touches, as plain types."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy(), np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


SNAPSHOT_DIR = "checkpoints"


def snapshot_path(save_dir: Path, stem: str, iteration: int) -> Path:
    return Path(save_dir) / SNAPSHOT_DIR / f"{stem}_iter{iteration:08d}.model"


def save_with_snapshots(obj: Any, latest: Path, iteration: int, keep: int) -> None:
    """Write ``latest`` atomically and keep the newest ``keep`` per-iteration snapshots beside it.

    The snapshot is a hard link to the same file (one write, no extra disk for the newest), so a crash at any
    moment leaves either the previous files or the new ones, never a truncated file under a good name.
    """
    latest = Path(latest)
    if keep <= 0:
        atomic_save(obj, latest)
        return
    snap = snapshot_path(latest.parent, latest.stem, iteration)
    snap.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(obj, snap)
    tmp = latest.with_name(f".{latest.name}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(snap, tmp)
        os.replace(tmp, latest)
    except OSError:  # file systems without hard links: a second atomic write
        atomic_save(obj, latest)
    for old in sorted(snap.parent.glob(f"{latest.stem}_iter*.model"))[:-keep]:
        old.unlink(missing_ok=True)


def resume_candidates(save_dir: Path, stem: str) -> list[Path]:
    """The latest checkpoint, then the snapshots newest first: the order ``--resume`` tries them in."""
    save_dir = Path(save_dir)
    out = [save_dir / f"{stem}.model"] if (save_dir / f"{stem}.model").is_file() else []
    out += sorted((save_dir / SNAPSHOT_DIR).glob(f"{stem}_iter*.model"), reverse=True)
    return out


def load_newest_intact(save_dir: Path, stem: str, warn=print) -> tuple[Path, dict]:
    """First loadable checkpoint among ``resume_candidates``; corrupt ones are reported and skipped."""
    candidates = resume_candidates(save_dir, stem)
    if not candidates:
        raise CheckpointError(f"--resume: no checkpoint in {save_dir}; start the run without --resume")
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"skipping {path}: {e}")
    raise CheckpointError(f"--resume: every checkpoint in {save_dir} is unreadable; start a new run")
