"""Writing a training run's checkpoints: the resumable latest (with per-iteration snapshots) and the best.

``CheckpointSaver`` is the one object a run writes its checkpoint files through, so the rules live in one
place: every write is atomic (``atomic_save``), a model holding a NaN / Inf parameter is never written (the last
good file stays intact), and the newest ``--keep_checkpoints`` snapshots stay beside the latest file, so a file
damaged after the fact can still be resumed from an earlier one (``newest_intact``).
``SaveLatest`` is the training callback that writes the latest checkpoint every ``--save_iters`` iterations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import atomic_write_text
from .checkpoint import CheckpointError, atomic_save, checkpoint_name, load_checkpoint, rng_state
from .distributed import gather_objects
from .errors import UserError

if TYPE_CHECKING:
    from .trainer import Trainer
    from .training_log import StepResult


class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses, or a NaN / Inf parameter; the last good checkpoint is untouched."""


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


def newest_intact(save_dir: Path, stem: str, warn=print) -> tuple[Path, dict] | None:
    """First loadable checkpoint among ``resume_candidates``; corrupt ones are reported and skipped.

    None when no candidate loads (none written yet, or every one damaged): what ``--resume`` then does is the run
    setup's decision (``main.trainer_setup.restart_config``), not the reader's.
    """
    for path in resume_candidates(save_dir, stem):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"skipping {path}: {e}")
    return None


class CheckpointSaver:
    """The checkpoint files of one run folder: ``<tasks>.model`` (latest, resumable) and ``best_<tasks>.model``."""

    def __init__(self, save_dir: str | os.PathLike, tasks: tuple[str, ...] | list[str], keep: int) -> None:
        self.save_dir = Path(save_dir)
        self.latest = self.save_dir / checkpoint_name(tasks)
        self.best = self.save_dir / checkpoint_name(tasks, best=True)
        self.keep = keep

    @staticmethod
    def check_finite(model: torch.nn.Module, iteration: int, save_dir: Path) -> None:
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDiverged(f"parameter {bad[0]} is NaN/Inf at iteration {iteration}; nothing was saved and "
                                   f"the last good checkpoint in {save_dir} is intact: lower --lr, then --resume")

    def save(self, model: torch.nn.Module, state: dict[str, Any], iteration: int, best: bool = False) -> Path:
        """Write ``state`` (the trainer's ``state_dict``) as the latest or the best checkpoint."""
        self.check_finite(model, iteration, self.save_dir)
        if best:
            atomic_save(state, self.best)
            return self.best
        save_with_snapshots(state, self.latest, iteration, self.keep)
        return self.latest


class SaveLatest:
    """Training callback: the resumable checkpoint (every rank's RNG state) and ``sparsity.json`` every
    ``--save_iters`` iterations and at the end; also what a preempted run writes before it stops."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self.due(trainer):
            self.save(trainer)

    @staticmethod
    def due(trainer: Trainer) -> bool:
        """Is a checkpoint written after this iteration?  The same answer on every rank."""
        return trainer.iteration % trainer.cfg.save_iters == 0 or trainer.iteration == trainer.cfg.iters

    @staticmethod
    def save(trainer: Trainer) -> None:
        # every rank's RNG (dropout streams differ per rank) so a DDP resume is exact on all ranks
        rng_ranks = gather_objects(rng_state(), trainer.dist) if trainer.dist.enabled else None
        if trainer.is_main:
            trainer.save(rng_ranks=rng_ranks)
            summary = {"iter": trainer.iteration, **trainer.sparsity_report().as_dict()}
            atomic_write_text(trainer.save_dir / "sparsity.json", json.dumps(summary, indent=1))
