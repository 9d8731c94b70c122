"""The run's optimiser and learning-rate schedule, and how far its thresholds can travel.

Reference: one Adam group (betas 0.5 / 0.999) with coupled L2 weight decay on every parameter, the soft-threshold
parameters ``s`` included, and ``StepLR`` stepped every iteration.

Why the thresholds' travel matters: the coupled decay term ``wd * s`` keeps one sign while ``s`` is far below 0,
and Adam then moves ``s`` by about the learning rate per step, so a run's thresholds can travel at most about
``sum_t lr_t`` in logit space.  The reference NYUv2 schedule (1e-3, x0.5 every 4,000 of 20,000 iterations) gives
7.75; a short CPU schedule gives far less (1,200 iterations at 1e-3, x0.4 every 300: 0.49), so its thresholds
cannot separate whatever their gradients say.  ``--threshold_travel X`` puts the thresholds in their own Adam
group whose lr is the weights' times ``X / sum_t lr_t`` (the run's own schedule), so they get the total travel
``X`` under any schedule (e.g. 7.75, the reference's).  Unset (the default), the reference's single group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import Config
    from .models import MultiTaskModel

ADAM_BETAS = (0.5, 0.999)
# Sum of the reference NYUv2 schedule's learning rates (1e-3, x0.5 every 4,000 of 20,000 iterations).
REFERENCE_NYUV2_TRAVEL = 7.75


def schedule_travel(lr: float, iters: int, step_size: int, gamma: float) -> float:
    """``sum_t lr_t`` over ``iters`` steps of StepLR(``step_size``, ``gamma``) from ``lr``, in closed form."""
    full, rest = divmod(iters, step_size)
    steps = sum(step_size * gamma**k for k in range(full)) + rest * gamma**full
    return lr * steps


def threshold_lr_factor(cfg: Config) -> float:
    """The thresholds' lr as a multiple of the weights' (1.0 without ``--threshold_travel``)."""
    if cfg.threshold_travel is None:
        return 1.0
    return cfg.threshold_travel / schedule_travel(cfg.lr, cfg.iters, cfg.decay_lr_freq, cfg.decay_lr_rate)


def build_optimizer(cfg: Config, model: MultiTaskModel) -> torch.optim.Adam:
    """Adam over every trainable parameter; the thresholds in a group of their own with ``--threshold_travel``."""
    thresholds = {id(p) for p in model.thresholds.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.threshold_travel is None or cfg.dense:
        return torch.optim.Adam(params, lr=cfg.lr, betas=ADAM_BETAS, weight_decay=cfg.weight_decay)
    groups = [{"params": [p for p in params if id(p) not in thresholds]},
              {"params": [p for p in params if id(p) in thresholds], "lr": cfg.lr * threshold_lr_factor(cfg)}]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=ADAM_BETAS, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    """StepLR stepped every iteration; it scales every group's lr alike, so the thresholds' factor holds."""
    return torch.optim.lr_scheduler.StepLR(optimizer, cfg.decay_lr_freq, cfg.decay_lr_rate)
