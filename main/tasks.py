"""The task API the training loop uses: one task's loss, a task set's metrics, metric directions, head channels.

Every per-task fact comes from the task registry (``main.task_registry``): the loss of a task is its
``TaskSpec.loss`` (``main.task_losses``), its metrics are its ``TaskSpec.accumulator`` (``main.task_metrics``), its
directions and head channels are declared in its spec.  This module only dispatches, so it never branches on a
task name.

Metrics are computed at the *ground-truth* resolution and accumulated over a whole evaluation set;
``definitions="parity"`` reproduces the reference numbers, quirks included, ``definitions="standard"`` gives the
textbook versions, both from one running state.  mIoU and Pixel Acc are fractions, angle thresholds and
``sigma_*`` percentages, as the reference reports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .task_metrics import Accumulator
from .task_registry import STYLES, TASKS, task_spec

DEFINITIONS = ("parity", "standard")


def metric_directions(style: str, tasks: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """``{task: {metric: +1|-1}}`` of the metrics ``TaskMetrics(style=...)`` reports (default: all tasks)."""
    _check_choice("style", style, STYLES)
    tasks = tuple(TASKS) if tasks is None else tuple(tasks)
    specs = [task_spec(task) for task in tasks]
    return {spec.name: spec.directions(style) for spec in specs}


def task_channels(task: str, num_classes: int) -> int:
    """Output channels of a task head (segmentation predicts one logit per class)."""
    return task_spec(task).out_channels(num_classes)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def task_loss(task: str, pred: Tensor, batch: Mapping[str, Tensor],
              class_weights: Tensor | None = None) -> Tensor:
    """Reference loss of one task, a scalar tensor on ``pred.device`` (no host sync).

    ``pred`` is the head output at feature resolution; ``batch[task]`` (and ``batch[task + "_mask"]`` if
    present) at input resolution are nearest-downsampled to it.  ``class_weights`` (C,) weight the
    segmentation cross-entropy (Taskonomy's prior factors); the segmentation mask is ignored, as in the
    reference.  An all-invalid batch returns 0 connected to ``pred``, so ``backward()`` still works.
    """
    spec = task_spec(task)
    gt = batch[task].to(pred.device, non_blocking=True)
    mask = batch.get(f"{task}_mask")
    if mask is not None:
        mask = mask.to(pred.device, non_blocking=True)
    return spec.loss(pred, gt, mask, class_weights)


class TaskMetrics:
    """Evaluation metrics of several tasks, accumulated over a set of batches.

    ``style`` picks the reference's metric family: "nyuv2" (seg mIoU / Pixel Acc, five normal and five
    depth metrics) or "taskonomy" (seg ``err``, normal ``cosine_similarity``, depth ``abs_err``); each task's
    ``TaskSpec.metrics`` lists what it reports per style (keypoints / edges: ``key_err`` / ``edge_err`` in both).
    ``definitions`` is the default for ``compute``: "parity" (reference numbers, quirks included) or "standard"
    (textbook).  mIoU and Pixel Acc are fractions, angle thresholds and ``sigma_*`` are percentages, as the
    reference reports them (the paper's tables show mIoU / PixAcc in percent).  ``class_weights`` weight the
    Taskonomy seg error (the reference's ``semseg_prior_factor.npy``).

    The running state lives on the device of the first predictions seen (float64 sums, int64 counts), so an
    update costs a few small kernels and, in "nyuv2" style, one device-to-host copy of the valid normal
    angles (needed for the exact median).  ``state_dict`` / ``merge`` export and add raw state, e.g. to
    combine ranks.
    """

    def __init__(self, tasks: Sequence[str], num_classes: int, style: str = "nyuv2",
                 definitions: str = "parity", class_weights: Tensor | None = None) -> None:
        _check_choice("style", style, STYLES)
        _check_choice("definitions", definitions, DEFINITIONS)
        specs = {task: task_spec(task) for task in tasks}
        if not tasks:
            raise ValueError("TaskMetrics needs at least one task")
        self.tasks = tuple(tasks)
        self.num_classes = int(num_classes)
        self.style = style
        self.definitions = definitions
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        # Tasks whose head predicts one channel per class; their predictions are checked against num_classes.
        self._per_class = {task for task, spec in specs.items() if spec.channels is None}
        self._acc: dict[str, Accumulator] = {
            task: spec.accumulator(style, self.num_classes, self.class_weights) for task, spec in specs.items()}

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
            if task in self._per_class and pred.shape[1] != self.num_classes:
                raise ValueError(f"{task} prediction has {pred.shape[1]} channels, "
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
