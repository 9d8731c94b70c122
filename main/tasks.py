"""Per-task losses and evaluation metrics for the dense-prediction tasks.

Losses follow the reference criterions exactly (``reference-adapmtl.md`` §6.1): they are computed at the
*prediction* (feature) resolution, with the ground truth and masks nearest-downsampled to it.  They are
written with masked sums instead of boolean indexing so that no step forces a host sync, and an
all-invalid batch gives a zero that still belongs to the graph instead of a NaN.

Metrics (§6.2) are computed at the *ground-truth* resolution with nearest-upsampled predictions and
accumulated over a whole evaluation set.  ``definitions="parity"`` reproduces the reference numbers,
quirks included (mIoU over classes with a non-zero true positive count only, batch-size-weighted pixel
accuracy and depth errors); ``definitions="standard"`` gives the textbook versions.  Both are kept in one
running state, so ``compute(definitions=...)`` can report either from the same pass.

Units, as the reference reports them: ``mIoU`` and ``Pixel Acc`` are fractions (0.2525), angle thresholds
and ``sigma_*`` are percentages (36.43), angles are degrees.  The paper's tables print mIoU / PixAcc in
percent; convert only for display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SEG = "segment_semantic"
NORMAL = "normal"
DEPTH = "depth_zbuffer"
KEYPOINTS = "keypoints2d"
EDGES = "edge_texture"
KNOWN_TASKS = (SEG, NORMAL, DEPTH, KEYPOINTS, EDGES)

IGNORE = 255
#: The reference's "no depth" test when no mask exists (NYUv2 stores 0 for missing depth).
DEPTH_EPS = 3e-5
STYLES = ("nyuv2", "taskonomy")
DEFINITIONS = ("parity", "standard")

TASK_CHANNELS_FIXED = {NORMAL: 3, DEPTH: 1, KEYPOINTS: 1, EDGES: 1}  # seg = num_classes

#: Direction of every reported metric: +1 higher is better, -1 lower is better, per metric style.
METRIC_DIRECTIONS: dict[str, dict[str, dict[str, int]]] = {
    "nyuv2": {
        SEG: {"mIoU": 1, "Pixel Acc": 1},
        NORMAL: {"Angle Mean": -1, "Angle Median": -1, "Angle 11.25": 1, "Angle 22.5": 1, "Angle 30": 1},
        DEPTH: {"abs_err": -1, "rel_err": -1, "sigma_1.25": 1, "sigma_1.25^2": 1, "sigma_1.25^3": 1},
        KEYPOINTS: {"key_err": -1},
        EDGES: {"edge_err": -1},
    },
    "taskonomy": {
        SEG: {"err": -1},
        NORMAL: {"cosine_similarity": 1},
        DEPTH: {"abs_err": -1},
        KEYPOINTS: {"key_err": -1},
        EDGES: {"edge_err": -1},
    },
}


def metric_directions(style: str, tasks: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """``{task: {metric: +1|-1}}`` of the metrics ``TaskMetrics(style=...)`` reports (default: all tasks)."""
    _check_choice("style", style, STYLES)
    table = METRIC_DIRECTIONS[style]
    tasks = tuple(table) if tasks is None else tuple(tasks)
    for task in tasks:
        _check_task(task)
    return {task: dict(table[task]) for task in tasks}


def task_channels(task: str, num_classes: int) -> int:
    """Output channels of a task head (segmentation predicts one logit per class)."""
    _check_task(task)
    return num_classes if task == SEG else TASK_CHANNELS_FIXED[task]


# --------------------------------------------------------------------------------------------- helpers


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def _check_task(task: str) -> None:
    if task not in KNOWN_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(KNOWN_TASKS)}")


def _as_4d(t: Tensor) -> Tensor:
    """Label maps may come as (B,H,W); every rule below works on (B,C,H,W)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _resize_nearest(t: Tensor, size: Sequence[int]) -> Tensor:
    """The reference's ``F.interpolate(x.float(), size)``: legacy nearest (floor source index)."""
    t = _as_4d(t).float()
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


# ---------------------------------------------------------------------------------------------- losses


def _seg_loss(pred: Tensor, gt: Tensor, class_weights: Tensor | None) -> Tensor:
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


def _normal_loss(pred: Tensor, gt: Tensor, mask: Tensor | None) -> Tensor:
    size = pred.shape[-2:]
    gt = _resize_nearest(gt, size)
    valid = gt.amax(dim=1) < IGNORE
    if mask is not None:
        valid = valid & (_resize_nearest(mask, size)[:, 0].int() == 1)
    # NYUv2 GT is the raw 0..254 BGR triple; normalising it (not re-centring) is the reference's quirk.
    cos = F.cosine_similarity(F.normalize(pred.float(), dim=1), F.normalize(gt, dim=1), dim=1)
    return _masked_mean(1.0 - cos, valid)


def _depth_loss(pred: Tensor, gt: Tensor, mask: Tensor | None) -> Tensor:
    size = pred.shape[-2:]
    gt = _resize_nearest(gt, size)
    if mask is not None:
        valid = (gt != IGNORE) & (_resize_nearest(mask, size).int() == 1)
    else:
        valid = gt.sum(dim=1, keepdim=True) > DEPTH_EPS
    return _masked_mean((pred.float() - gt).abs(), valid)


def _l1_ignore_loss(pred: Tensor, gt: Tensor) -> Tensor:
    gt = _resize_nearest(gt, pred.shape[-2:])
    return _masked_mean((pred.float() - gt).abs(), gt != IGNORE)


def task_loss(task: str, pred: Tensor, batch: Mapping[str, Tensor],
              class_weights: Tensor | None = None) -> Tensor:
    """Reference loss of one task, a scalar tensor on ``pred.device`` (no host sync).

    ``pred`` is the head output at feature resolution; ``batch[task]`` (and ``batch[task + "_mask"]`` if
    present) at input resolution are nearest-downsampled to it.  ``class_weights`` (C,) weight the
    segmentation cross-entropy (Taskonomy's prior factors); the segmentation mask is ignored, as in the
    reference.  An all-invalid batch returns 0 connected to ``pred``, so ``backward()`` still works.
    """
    _check_task(task)
    gt = batch[task].to(pred.device, non_blocking=True)
    mask = batch.get(f"{task}_mask")
    if mask is not None:
        mask = mask.to(pred.device, non_blocking=True)
    if task == SEG:
        return _seg_loss(pred, gt, class_weights)
    if task == NORMAL:
        return _normal_loss(pred, gt, mask)
    if task == DEPTH:
        return _depth_loss(pred, gt, mask)
    return _l1_ignore_loss(pred, gt)


# --------------------------------------------------------------------------------------------- metrics


def _sum_dtype(device: torch.device) -> torch.dtype:
    """Running sums in float64 (tens of millions of pixels), except where the backend has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _upsample_to(pred: Tensor, gt: Tensor) -> Tensor:
    """The reference metric's ``F.interpolate(pred, size=gt.shape[-2:])``: nearest, not bilinear."""
    pred = pred.float()
    if pred.shape[-2:] == gt.shape[-2:]:
        return pred
    return F.interpolate(pred, size=tuple(gt.shape[-2:]), mode="nearest")


class _Accumulator:
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


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class _SegConfusion(_Accumulator):
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
        gt = _as_4d(gt)[:, 0].long()
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


class _SegCrossEntropy(_Accumulator):
    """Taskonomy-style segmentation: (class-weighted) cross-entropy on pixels with GT < C."""

    SUMS = (("err_wsum", True), ("weight", True), ("ce_sum", True), ("ce_weight", True))

    def __init__(self, num_classes: int, class_weights: Tensor | None) -> None:
        self.num_classes = num_classes
        self.class_weights = class_weights
        super().__init__()

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        gt = _as_4d(gt)[:, 0].long()
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


class _Normal(_Accumulator):
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
            valid = valid & (_as_4d(mask)[:, 0].int() == 1)
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


class _Depth(_Accumulator):
    """Depth: abs/rel error (batch-weighted in parity, pixel-weighted in standard) and δ-ratios."""

    SUMS = (("abs_wsum", True), ("rel_wsum", True), ("weight", True), ("abs_sum", True), ("rel_sum", True),
            ("count", False), ("sigma_1", False), ("sigma_2", False), ("sigma_3", False),
            ("sigma_pos_1", False), ("sigma_pos_2", False), ("sigma_pos_3", False))

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        pred = _upsample_to(pred, gt)
        gt = _as_4d(gt).float()
        if mask is not None:
            valid = (gt != IGNORE) & (_as_4d(mask).int() == 1)
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


class _L1Ignore(_Accumulator):
    """Keypoints / edges: mean |p − g| over GT ≠ 255 (batch-weighted in parity, pixel-weighted otherwise)."""

    SUMS = (("err_wsum", True), ("weight", True), ("abs_sum", True), ("count", False))

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
        pred = _upsample_to(pred, gt)
        gt = _as_4d(gt).float()
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


class TaskMetrics:
    """Evaluation metrics of several tasks, accumulated over a set of batches.

    ``style`` picks the reference's metric family: "nyuv2" (seg mIoU / Pixel Acc, five normal and five
    depth metrics) or "taskonomy" (seg ``err``, normal ``cosine_similarity``, depth ``abs_err``);
    keypoints2d / edge_texture report ``key_err`` / ``edge_err`` in both.  ``definitions`` is the default
    for ``compute``: "parity" (reference numbers, quirks included) or "standard" (textbook).  mIoU and
    Pixel Acc are fractions, angle thresholds and ``sigma_*`` are percentages, as the reference reports
    them (the paper's tables show mIoU / PixAcc in percent).  ``class_weights`` weight the Taskonomy seg
    error (the reference's ``semseg_prior_factor.npy``).

    The running state lives on the device of the first predictions seen (float64 sums, int64 counts), so an
    update costs a few small kernels and, in "nyuv2" style, one device-to-host copy of the valid normal
    angles (needed for the exact median).  ``state_dict`` / ``merge`` export and add raw state, e.g. to
    combine ranks.
    """

    def __init__(self, tasks: Sequence[str], num_classes: int, style: str = "nyuv2",
                 definitions: str = "parity", class_weights: Tensor | None = None) -> None:
        _check_choice("style", style, STYLES)
        _check_choice("definitions", definitions, DEFINITIONS)
        for task in tasks:
            _check_task(task)
        if not tasks:
            raise ValueError("TaskMetrics needs at least one task")
        self.tasks = tuple(tasks)
        self.num_classes = int(num_classes)
        self.style = style
        self.definitions = definitions
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self._acc: dict[str, _Accumulator] = {task: self._make(task) for task in self.tasks}

    def _make(self, task: str) -> _Accumulator:
        if task == SEG:
            if self.style == "nyuv2":
                return _SegConfusion(self.num_classes)
            return _SegCrossEntropy(self.num_classes, self.class_weights)
        if task == NORMAL:
            return _Normal(keep_angles=self.style == "nyuv2")
        if task == DEPTH:
            return _Depth()
        return _L1Ignore("key_err" if task == KEYPOINTS else "edge_err")

    def reset(self) -> None:
        """Forget every accumulated batch (call before each evaluation pass)."""
        for acc in self._acc.values():
            acc.reset()

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        """Add one batch: ``preds[task]`` (B,C,h,w) at any resolution, ``batch[task]`` at GT resolution.

        Ground truth and masks are moved to the prediction's device; predictions are upsampled (nearest)
        to the GT size.  Segmentation masks are ignored, as in the reference.
        """
        for task in self.tasks:
            pred = preds[task]
            if task == SEG and pred.shape[1] != self.num_classes:
                raise ValueError(f"segment_semantic prediction has {pred.shape[1]} channels, "
                                 f"expected num_classes={self.num_classes}")
            acc = self._acc[task]
            acc.to(pred.device)
            gt = batch[task].to(pred.device, non_blocking=True)
            mask = batch.get(f"{task}_mask")
            if mask is not None:
                mask = mask.to(pred.device, non_blocking=True)
            acc.update(pred.detach(), gt, mask)

    def compute(self, definitions: str | None = None) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` rounded to 4 decimals (NaN where the set had no valid pixel)."""
        definitions = self.definitions if definitions is None else definitions
        _check_choice("definitions", definitions, DEFINITIONS)
        out = {}
        for task, acc in self._acc.items():
            values = acc.compute(self.style, definitions)
            out[task] = {k: round(float(v), 4) for k, v in values.items()}
        return out

    def directions(self) -> dict[str, dict[str, int]]:
        """``metric_directions`` for this object's style and tasks."""
        return metric_directions(self.style, self.tasks)

    def state_dict(self) -> dict[str, Tensor]:
        """Raw running state as ``{"task/name": tensor}`` (copies); sums add up across ranks and
        ``"normal/angles"`` (NYUv2 style) is a variable-length 1-D CPU tensor to be concatenated."""
        return {f"{task}/{name}": value
                for task, acc in self._acc.items() for name, value in acc.state().items()}

    def merge(self, other_state: Mapping[str, Tensor]) -> None:
        """Add another ``state_dict()`` (same tasks, style and classes) into this one."""
        missing = [f"{task}/{name}" for task, acc in self._acc.items() for name in acc.keys()
                   if f"{task}/{name}" not in other_state]
        if missing:
            raise ValueError(f"state to merge lacks {', '.join(missing)} (different tasks or style?)")
        for task, acc in self._acc.items():
            prefix = f"{task}/"
            acc.merge({k[len(prefix):]: v for k, v in other_state.items() if k.startswith(prefix)})
