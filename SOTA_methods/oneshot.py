"""One-shot unstructured criteria: score once, select to the target, install the mask.

``magnitude`` (global, or backbone / heads separately as the reference ``pruning_head.py``), ``random``, ``snip``
(|w·g| of the weighted total loss, global ranking), ``disparse_pt`` (DiSparse on a trained model: per-task
scores over backbone + own head, OR on shared weights), ``disparse_static`` (DiSparse at initialisation: per-task
SNIP scores, same arbiter).  Each function returns the keep masks; ``prune_oneshot`` dispatches by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from main.masks import MaskSet
from main.models import BACKBONE, MultiTaskModel

from .engine import (
    connection_sensitivity,
    magnitude_scores,
    random_scores,
    select_disparse,
    select_global,
    task_gradients,
    top_k_mask,
)

UNSTRUCTURED = ("magnitude", "random", "snip", "disparse_pt", "disparse_static")


def magnitude_keep(masks: MaskSet, sparsity: float, backbone_sparsity: float | None = None) -> dict[str, Tensor]:
    scores = magnitude_scores(masks)
    if backbone_sparsity is None:
        return select_global(scores, masks, sparsity)
    # pruning_head.py: backbone to its own sparsity, all heads jointly to the requested one.
    out = {}
    for group, sp in ((True, backbone_sparsity), (False, sparsity)):
        names = [w.name for w in masks if (w.component == BACKBONE) == group]
        total = sum(masks.masks[n].numel() for n in names)
        out.update(top_k_mask(scores, names, masks, round((1.0 - sp) * total)))
    return out


def w2_grad(weight: Tensor, grad: Tensor) -> Tensor:
    """DiSparse-PT's Taskonomy score contribution: w²·|g| summed over batches."""
    return weight.pow(2) * grad.abs()


def prune_oneshot(method: str, model: MultiTaskModel, masks: MaskSet, sparsity: float,
                  batches: Iterable[Mapping[str, Tensor]], tasks: tuple[str, ...], device: torch.device, *,
                  seed: int = 0, backbone_sparsity: float | None = None, class_weights: Tensor | None = None,
                  disparse_score: str = "magnitude") -> dict[str, Tensor]:
    """Keep masks for ``method`` at overall ``sparsity`` (fraction of prunable weights removed)."""
    if method == "magnitude":
        return magnitude_keep(masks, sparsity, backbone_sparsity)
    if backbone_sparsity is not None:
        raise ValueError("--backbone_sparsity applies to --method magnitude only")
    if method == "random":
        return select_global(random_scores(masks, seed), masks, sparsity)
    if method == "snip":
        scores = task_gradients(model, masks, batches, tasks, device, per_task=False, class_weights=class_weights,
                                statistic=connection_sensitivity)["total"]
        return select_global(scores, masks, sparsity)
    if method == "disparse_static":
        per_task = task_gradients(model, masks, batches, tasks, device, per_task=True, class_weights=class_weights,
                                  statistic=connection_sensitivity)
        return select_disparse(per_task, masks, sparsity)
    if method == "disparse_pt":
        if disparse_score == "magnitude":
            mag = magnitude_scores(masks)
            per_task = {t: mag for t in tasks}
        elif disparse_score == "w2grad":
            per_task = task_gradients(model, masks, batches, tasks, device, per_task=True,
                                      class_weights=class_weights, statistic=w2_grad)
        else:
            raise ValueError(f"unknown DiSparse score {disparse_score!r}; choose magnitude or w2grad")
        return select_disparse(per_task, masks, sparsity)
    raise ValueError(f"unknown one-shot method {method!r}; choose one of {', '.join(UNSTRUCTURED)}")
