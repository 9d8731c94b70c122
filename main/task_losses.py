"""Per-task training losses of the dense-prediction tasks (the ``loss`` of each ``TaskSpec``).

Losses follow the reference criterions exactly (``docs/reference.md`` §6.1): they are computed at the
*prediction* (feature) resolution, with the ground truth and masks nearest-downsampled to it.  They are
written with masked sums instead of boolean indexing so that no step forces a host sync, and an
all-invalid batch gives a zero that still belongs to the graph instead of a NaN.

Every loss takes ``(pred, gt, mask, class_weights)`` so that ``main.tasks.task_loss`` calls any task's loss the
same way; a loss ignores the arguments its task does not use.  The label conventions (``IGNORE``, ``DEPTH_EPS``,
``as_4d``) are shared with the metrics in ``main.task_metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255
#: The reference's "no depth" test when no mask exists (NYUv2 stores 0 for missing depth).
DEPTH_EPS = 3e-5

#: ``loss(pred, gt, mask, class_weights) -> scalar``: pred at feature resolution, the rest on its device.
LossFn = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], Tensor]


def as_4d(t: Tensor) -> Tensor:
    """Label maps may come as (B,H,W); every rule below works on (B,C,H,W)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _resize_nearest(t: Tensor, size: Sequence[int]) -> Tensor:
    """The reference's ``F.interpolate(x.float(), size)``: legacy nearest (floor source index)."""
    t = as_4d(t).float()
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="nearest")


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` without boolean indexing (no host sync); 0 when nothing is valid.

    ``torch.where`` (not multiplication) keeps inf/NaN at invalid pixels out of the sum and its gradient.
    """
    valid = valid.expand_as(values)
    total = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / valid.sum().clamp_min(1)


def seg_loss(pred: Tensor, gt: Tensor, mask: Tensor | None, class_weights: Tensor | None) -> Tensor:
    """Cross-entropy, class-weighted when ``class_weights`` are given; the mask is ignored, as in the reference."""
    pred = pred.float()  # a bf16 head output would not match fp32 class weights
    gt = _resize_nearest(gt, pred.shape[-2:])[:, 0].long()
    # Labels outside [0, C) other than 255 would crash the reference's CrossEntropyLoss; they never occur
    # in the reference data, and treating them as ignored keeps a bad label from killing a long run.
    valid = (gt >= 0) & (gt < pred.shape[1])
    target = torch.where(valid, gt, IGNORE)
    weight = None if class_weights is None else class_weights.to(device=pred.device, dtype=torch.float32)
    # reduction="none" gives weight[y]·CE per pixel and 0 at ignored ones; dividing by the summed weights
    # is CrossEntropyLoss's weighted mean, but stays finite when the whole batch is ignored.
    per_pixel = F.cross_entropy(pred, target, weight=weight, ignore_index=IGNORE, reduction="none")
    if weight is None:
        denom = valid.sum()
    else:
        denom = (weight[torch.where(valid, gt, 0)] * valid).sum()
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return per_pixel.sum() / denom


def normal_loss(pred: Tensor, gt: Tensor, mask: Tensor | None, class_weights: Tensor | None) -> Tensor:
    """1 − cosine similarity over pixels with a valid GT (and mask)."""
    size = pred.shape[-2:]
    gt = _resize_nearest(gt, size)
    valid = gt.amax(dim=1) < IGNORE
    if mask is not None:
        valid = valid & (_resize_nearest(mask, size)[:, 0].int() == 1)
    # NYUv2 GT is the raw 0..254 BGR triple; normalising it (not re-centring) is the reference's quirk.
    cos = F.cosine_similarity(F.normalize(pred.float(), dim=1), F.normalize(gt, dim=1), dim=1)
    return _masked_mean(1.0 - cos, valid)


def depth_loss(pred: Tensor, gt: Tensor, mask: Tensor | None, class_weights: Tensor | None) -> Tensor:
    """L1 over pixels with a depth (under the mask if there is one, else GT > ``DEPTH_EPS``)."""
    size = pred.shape[-2:]
    gt = _resize_nearest(gt, size)
    if mask is not None:
        valid = (gt != IGNORE) & (_resize_nearest(mask, size).int() == 1)
    else:
        valid = gt.sum(dim=1, keepdim=True) > DEPTH_EPS
    return _masked_mean((pred.float() - gt).abs(), valid)


def l1_ignore_loss(pred: Tensor, gt: Tensor, mask: Tensor | None, class_weights: Tensor | None) -> Tensor:
    """L1 over pixels whose GT is not ``IGNORE`` (keypoints, edges)."""
    gt = _resize_nearest(gt, pred.shape[-2:])
    return _masked_mean((pred.float() - gt).abs(), gt != IGNORE)

