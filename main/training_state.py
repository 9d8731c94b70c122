"""The resumable state of a training run, as stored in ``<tasks>.model``: what ``--resume`` needs to continue exactly.

Weights (NCHW, whatever the training layout), optimiser, grad scaler, scheduler, task-weighting window, every RNG
(per rank under torchrun), the best checkpoint's record, hard masks, the sparsity control's state, the config and
the versions.  Everything is a plain type, so ``torch.load(weights_only=True)`` reads it (``main.checkpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .checkpoint import CHECKPOINT_VERSION, load_weights, rng_state, set_rng_state
from .masks import MaskSet

if TYPE_CHECKING:
    from .trainer import Trainer


def training_state(trainer: Trainer, rng_ranks: list | None = None) -> dict:
    """``trainer``'s resumable state; ``rng_ranks``: every rank's RNG state (torchrun), gathered by the caller."""
    return {
        "iter": trainer.iteration,
        # .contiguous(): a no-op except under --channels_last, whose NHWC strides would otherwise be saved
        "state_dict": {k: v.contiguous() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "scheduler": trainer.scheduler.state_dict(),
        "config": trainer.cfg.to_dict(),
        "weighting": trainer.weighting.state_dict(),
        "rng": rng_state(),
        "rng_ranks": rng_ranks,
        "best": trainer.best,
        "masks": trainer.masks.state_dict() if trainer.masks is not None else None,
        "controller": trainer.control.state_dict() if trainer.control is not None else None,
        "version": CHECKPOINT_VERSION,
        "torch_version": str(torch.__version__),
        **({"compact": trainer.compact} if trainer.compact is not None else {}),  # rebuilds a compacted model
    }


def restore_training_state(trainer: Trainer, state: dict, source: str) -> None:
    """Put ``trainer`` exactly where ``state`` (read from ``source``) left off."""
    load_weights(trainer.model, state, source, trainer.cfg)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.weighting.load_state_dict(state["weighting"])
    ranks = state.get("rng_ranks")
    same_world = ranks is not None and len(ranks) == trainer.dist.world_size
    set_rng_state(ranks[trainer.dist.rank] if same_world else state["rng"])
    trainer.best = state.get("best")
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.control is not None:
        trainer.control.load_state_dict(state.get("controller"), trainer.device)
    if state.get("masks") is not None:
        masks = MaskSet(trainer.model)
        masks.load_state_dict(state["masks"])
        trainer.set_masks(masks)
    trainer.iteration = int(state["iter"])
