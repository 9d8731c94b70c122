"""Per-task evaluation metrics: the running accumulators behind ``main.tasks.TaskMetrics``.

Metrics (``docs/reference.md`` §6.2) are computed at the *ground-truth* resolution with nearest-upsampled
predictions and accumulated over a whole evaluation set.  ``definitions="parity"`` reproduces the reference
numbers, quirks included (mIoU over classes with a non-zero true positive count only, batch-size-weighted pixel
accuracy and depth errors); ``definitions="standard"`` gives the textbook versions.  Both are kept in one running
state, so ``compute(style, definitions)`` can report either from the same pass.

Units, as the reference reports them: ``mIoU`` and ``Pixel Acc`` are fractions (0.2525), angle thresholds and
``sigma_*`` are percentages (36.43), angles are degrees.  The paper's tables print mIoU / PixAcc in percent;
convert only for display.

Each task's ``TaskSpec.accumulator`` is one of the factories at the end, called as
``factory(style, num_classes, class_weights)``; the metric names an accumulator reports must be the ones its
``TaskSpec.metrics`` declares for the style (``tests/test_tasks.py`` checks it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .task_losses import DEPTH_EPS, IGNORE, as_4d


def _sum_dtype(device: torch.device) -> torch.dtype:
    """Running sums in float64 (tens of millions of pixels), except where the backend has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _upsample_to(pred: Tensor, gt: Tensor) -> Tensor:
    """The reference metric's ``F.interpolate(pred, size=gt.shape[-2:])``: nearest, not bilinear."""
    pred = pred.float()
    if pred.shape[-2:] == gt.shape[-2:]:
        return pred
    return F.interpolate(pred, size=tuple(gt.shape[-2:]), mode="nearest")


class Accumulator:
    """Running per-task state: named tensors that add up across batches and ranks.

    ``lists`` hold per-pixel values that cannot be summed (normal angles for the exact median); they live
    on the CPU and are concatenated at compute time, as the reference does.
    """

    SUMS: tuple[tuple[str, bool], ...] = ()  # (name, is_float)

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.sums: dict[str, Tensor] = {}
        self.lists: dict[str, list[Tensor]] = {}
        self.reset()

    def reset(self) -> None:
        dtype = _sum_dtype(self.device)
        self.sums = {
            name: torch.zeros((), dtype=dtype if is_float else torch.int64, device=self.device)
            for name, is_float in self.SUMS
        }
        self.lists = {name: [] for name in self.lists}

    def to(self, device: torch.device) -> None:
        if device != self.device:
            self.device = device
            dtype = _sum_dtype(device)
            self.sums = {k: v.to(device, dtype=dtype if v.is_floating_point() else v.dtype)
                         for k, v in self.sums.items()}

    def add(self, name: str, value: Tensor) -> None:
        self.sums[name] += value.to(self.sums[name].dtype)

    def keys(self) -> list[str]:
        return [*self.sums, *self.lists]

    def state(self) -> dict[str, Tensor]:
        out = {k: v.clone() for k, v in self.sums.items()}
        for name, chunks in self.lists.items():
            out[name] = torch.cat(chunks) if chunks else torch.zeros(0)
        return out

    def merge(self, state: Mapping[str, Tensor]) -> None:
        for name in self.sums:
            self.sums[name] += state[name].to(self.device, self.sums[name].dtype)
        for name in self.lists:
            if state[name].numel():
                self.lists[name].append(state[name].detach().to("cpu", torch.float32))

    def value(self, name: str) -> float:
        return float(self.sums[name])

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        """Add one batch: ``pred`` (B,C,h,w) on the GT's device, ``gt`` / ``mask`` at GT resolution."""
        raise NotImplementedError

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        """``{metric: value}`` of the batches so far, in the order ``TaskSpec.metrics[style]`` declares."""
        raise NotImplementedError


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class SegConfusion(Accumulator):
    """NYUv2-style segmentation: confusion matrix + per-batch accuracy (for the batch-weighted PixAcc)."""

    SUMS = (("acc_wsum", True), ("acc_weight", True))

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        super().__init__()

    def reset(self) -> None:
        super().reset()
        # One spare bin at the end collects ignored pixels, so counting needs no boolean indexing.
        c = self.num_classes
        self.sums["conf"] = torch.zeros(c * c + 1, dtype=torch.int64, device=self.device)

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        c = self.num_classes
        gt = as_4d(gt)[:, 0].long()
        # argmax then nearest-upsample equals upsample then argmax (nearest only copies pixels), and
        # never materialises C full-resolution logit maps.
        label = pred.argmax(dim=1, keepdim=True).float()
        label = F.interpolate(label, size=tuple(gt.shape[-2:]), mode="nearest")[:, 0].long()
        valid = (gt >= 0) & (gt < c)
        index = torch.where(valid, gt * c + label, c * c).reshape(-1)
        self.sums["conf"].index_add_(0, index, torch.ones_like(index))
        n_valid = valid.sum()
        correct = (valid & (label == gt)).sum()
        # The reference averages per-batch accuracies weighted by batch size.  A batch without labelled
        # pixels is skipped here (the reference would record NaN).
        has = (n_valid > 0).to(self.sums["acc_weight"].dtype)
        batch = gt.shape[0]
        self.add("acc_wsum", has * batch * correct / n_valid.clamp_min(1))
        self.add("acc_weight", has * batch)

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        c = self.num_classes
        conf = self.sums["conf"][: c * c].view(c, c).cpu().double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        # Parity: classes with zero intersection are left out (inflates mIoU); standard: every class that
        # appears in the GT or the prediction counts, even with IoU 0.
        keep = tp != 0 if definitions == "parity" else union > 0
        miou = float((tp[keep] / union[keep]).mean()) if bool(keep.any()) else float("nan")
        if definitions == "parity":
            acc = _ratio(self.value("acc_wsum"), self.value("acc_weight"))
        else:
            acc = _ratio(float(tp.sum()), float(conf.sum()))
        return {"mIoU": miou, "Pixel Acc": acc}


class SegCrossEntropy(Accumulator):
    """Taskonomy-style segmentation: (class-weighted) cross-entropy on pixels with GT < C."""

    SUMS = (("err_wsum", True), ("weight", True), ("ce_sum", True), ("ce_weight", True))

    def __init__(self, num_classes: int, class_weights: Tensor | None) -> None:
        self.num_classes = num_classes
        self.class_weights = class_weights
        super().__init__()

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        gt = as_4d(gt)[:, 0].long()
        # log_softmax is per pixel, so computing it before the nearest upsampling is the same number.
        logp = F.interpolate(F.log_softmax(pred.float(), dim=1), size=tuple(gt.shape[-2:]), mode="nearest")
        valid = (gt >= 0) & (gt < self.num_classes)
        safe = torch.where(valid, gt, 0)
        nll = -logp.gather(1, safe.unsqueeze(1))[:, 0]
        w = valid.to(nll.dtype)
        if self.class_weights is not None:
            w = w * self.class_weights.to(nll.device, nll.dtype)[safe]
        num = torch.where(valid, nll * w, torch.zeros((), device=nll.device)).sum()
        den = w.sum()
        has = (den > 0).to(self.sums["weight"].dtype)
        batch = gt.shape[0]
        self.add("err_wsum", has * batch * num / torch.where(den > 0, den, torch.ones_like(den)))
        self.add("weight", has * batch)
        self.add("ce_sum", num)
        self.add("ce_weight", den)

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        if definitions == "parity":
            return {"err": _ratio(self.value("err_wsum"), self.value("weight"))}
        return {"err": _ratio(self.value("ce_sum"), self.value("ce_weight"))}


ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


class NormalAngles(Accumulator):
    """Surface normals: per valid pixel angle between the L2-normalised prediction and GT.

    Mean and threshold counts are running sums; the exact median needs every angle, so with
    ``keep_angles`` (NYUv2 style) the valid angles are copied to the CPU per batch (4 bytes per pixel).
    """

    SUMS = (("count", False), ("cos_sum", True), ("angle_sum", True),
            ("le_11.25", False), ("le_22.5", False), ("le_30", False))

    def __init__(self, keep_angles: bool) -> None:
        self.keep_angles = keep_angles
        super().__init__()
        if keep_angles:
            self.lists = {"angles": []}

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        pred = _upsample_to(pred, gt)
        gt = gt.float()
        valid = gt.amax(dim=1) != IGNORE
        if mask is not None:
            valid = valid & (as_4d(mask)[:, 0].int() == 1)
        cos = F.cosine_similarity(F.normalize(pred, dim=1), F.normalize(gt, dim=1), dim=1).clamp(-1.0, 1.0)
        # Same float32 operation order as the reference (arccos / pi * 180), so threshold ties agree.
        angle = torch.acos(cos) / math.pi * 180.0
        zero = torch.zeros((), device=cos.device)
        self.add("count", valid.sum())
        self.add("cos_sum", torch.where(valid, cos, zero).sum(dtype=self.sums["cos_sum"].dtype))
        self.add("angle_sum", torch.where(valid, angle, zero).sum(dtype=self.sums["angle_sum"].dtype))
        for t in ANGLE_THRESHOLDS:
            self.add(f"le_{t:g}", (valid & (angle <= t)).sum())
        if self.keep_angles:
            self.lists["angles"].append(angle[valid].to("cpu", torch.float32))

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        n = self.value("count")
        if style == "taskonomy":
            return {"cosine_similarity": _ratio(self.value("cos_sum"), n)}
        angles = torch.cat(self.lists["angles"]) if self.lists["angles"] else torch.zeros(0)
        # The reference's np.median on float32 angles (mean of the two middle values for an even count);
        # torch.median returns the lower one and torch.quantile refuses more than 2**24 elements.
        median = float(np.median(angles.numpy())) if angles.numel() else float("nan")
        out = {"Angle Mean": _ratio(self.value("angle_sum"), n), "Angle Median": median}
        for t in ANGLE_THRESHOLDS:
            out[f"Angle {t:g}"] = 100.0 * _ratio(self.value(f"le_{t:g}"), n)
        return out


SIGMA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)


class DepthErrors(Accumulator):
    """Depth: abs/rel error (batch-weighted in parity, pixel-weighted in standard) and δ-ratios."""

    SUMS = (("abs_wsum", True), ("rel_wsum", True), ("weight", True), ("abs_sum", True), ("rel_sum", True),
            ("count", False), ("sigma_1", False), ("sigma_2", False), ("sigma_3", False),
            ("sigma_pos_1", False), ("sigma_pos_2", False), ("sigma_pos_3", False))

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        pred = _upsample_to(pred, gt)
        gt = as_4d(gt).float()
        if mask is not None:
            valid = (gt != IGNORE) & (as_4d(mask).int() == 1)
        else:
            valid = gt.sum(dim=1, keepdim=True) > DEPTH_EPS
        valid = valid.expand_as(pred)
        zero = torch.zeros((), device=pred.device)
        dtype = self.sums["abs_sum"].dtype
        diff = (pred - gt).abs()
        abs_sum = torch.where(valid, diff, zero).sum(dtype=dtype)
        rel_sum = torch.where(valid, diff / gt, zero).sum(dtype=dtype)
        n = valid.sum()
        has = (n > 0).to(dtype)
        batch = gt.shape[0]
        self.add("abs_wsum", has * batch * abs_sum / n.clamp_min(1))
        self.add("rel_wsum", has * batch * rel_sum / n.clamp_min(1))
        self.add("weight", has * batch)
        self.add("abs_sum", abs_sum)
        self.add("rel_sum", rel_sum)
        self.add("count", n)
        # Parity: exactly the reference's ratio, including its quirk that a negative prediction gives a negative
        # ratio (counted as within every threshold).  Standard: a prediction <= 0 is never within a threshold.
        ratio = torch.maximum(pred / gt, gt / pred)
        positive = valid & (pred > 0)
        for k, t in enumerate(SIGMA_THRESHOLDS, start=1):
            within = ratio <= t
            self.add(f"sigma_{k}", (valid & within).sum())
            self.add(f"sigma_pos_{k}", (positive & within).sum())

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        if definitions == "parity":
            abs_err = _ratio(self.value("abs_wsum"), self.value("weight"))
            rel_err = _ratio(self.value("rel_wsum"), self.value("weight"))
        else:
            abs_err = _ratio(self.value("abs_sum"), self.value("count"))
            rel_err = _ratio(self.value("rel_sum"), self.value("count"))
        if style == "taskonomy":
            return {"abs_err": abs_err}
        n = self.value("count")
        out = {"abs_err": abs_err, "rel_err": rel_err}
        key = "sigma" if definitions == "parity" else "sigma_pos"
        for k, name in enumerate(("sigma_1.25", "sigma_1.25^2", "sigma_1.25^3"), start=1):
            out[name] = 100.0 * _ratio(self.value(f"{key}_{k}"), n)
        return out


class L1Error(Accumulator):
    """Keypoints / edges: mean |p − g| over GT ≠ 255 (batch-weighted in parity, pixel-weighted otherwise)."""

    SUMS = (("err_wsum", True), ("weight", True), ("abs_sum", True), ("count", False))

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        pred = _upsample_to(pred, gt)
        gt = as_4d(gt).float()
        valid = (gt != IGNORE).expand_as(pred)
        abs_sum = torch.where(valid, (pred - gt).abs(), torch.zeros((), device=pred.device)).sum(
            dtype=self.sums["abs_sum"].dtype)
        n = valid.sum()
        has = (n > 0).to(abs_sum.dtype)
        self.add("err_wsum", has * gt.shape[0] * abs_sum / n.clamp_min(1))
        self.add("weight", has * gt.shape[0])
        self.add("abs_sum", abs_sum)
        self.add("count", n)

    def compute(self, style: str, definitions: str) -> dict[str, float]:
        if definitions == "parity":
            return {self.name: _ratio(self.value("err_wsum"), self.value("weight"))}
        return {self.name: _ratio(self.value("abs_sum"), self.value("count"))}


# ------------------------------------------------------------------------------------------- factories
#: ``factory(style, num_classes, class_weights) -> Accumulator``: a task's fresh running state for a metric style.
AccumulatorFactory = Callable[[str, int, Tensor | None], Accumulator]


def seg_accumulator(style: str, num_classes: int, class_weights: Tensor | None) -> Accumulator:
    """NYUv2 style: the confusion matrix (mIoU, Pixel Acc); Taskonomy style: the (class-weighted) CE error."""
    if style == "nyuv2":
        return SegConfusion(num_classes)
    return SegCrossEntropy(num_classes, class_weights)


def normal_accumulator(style: str, num_classes: int, class_weights: Tensor | None) -> Accumulator:
    """Angles; NYUv2 style keeps every valid angle on the CPU for the exact median."""
    return NormalAngles(keep_angles=style == "nyuv2")


def depth_accumulator(style: str, num_classes: int, class_weights: Tensor | None) -> Accumulator:
    """Depth errors and δ-ratios (the style picks what ``compute`` reports)."""
    return DepthErrors()


def l1_accumulator(name: str) -> AccumulatorFactory:
    """A factory of ``L1Error`` accumulators reporting one metric called ``name`` in every style."""

    def make(style: str, num_classes: int, class_weights: Tensor | None) -> Accumulator:
        return L1Error(name)

    return make
