"""The task registry: everything the project knows about a task, declared once in a ``TaskSpec``.

Why: the losses, the metrics and their directions, the TensorBoard tags, the result tables and the comparison
report all need per-task facts.  Each reads them here, so adding a task is one ``register_task`` call (plus the
readers of the datasets that provide it, in ``main/data/``) instead of edits in every consumer.  The registry
order is the order of ``--tasks`` choices, of TensorBoard components and of every table built from it.

The dataset definitions in ``main/data/`` keep their own task lists, because they define what a dataset provides;
``TaskSpec.datasets`` mirrors them for readers of this file (``tests/test_tasks.py`` checks the two agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UserError
from .task_losses import LossFn, depth_loss, l1_ignore_loss, normal_loss, seg_loss
from .task_metrics import (
    AccumulatorFactory,
    depth_accumulator,
    l1_accumulator,
    normal_accumulator,
    seg_accumulator,
)

#: The metric families of ``TaskMetrics``: the reference's NYUv2 metrics or its Taskonomy metrics.
STYLES = ("nyuv2", "taskonomy")


@dataclass(frozen=True)
class Metric:
    """One reported metric: its key in ``TaskMetrics.compute``, whether higher is better, how tables show it.

    ``direction``: +1 higher is better, -1 lower is better (the sign in Δ_T).  ``label``: the short column header
    of the comparison tables, without the arrow.  ``scale``: the display factor there (fractions in percent).
    """

    name: str
    direction: int
    label: str
    scale: float = 1.0

    @property
    def header(self) -> str:
        """The table header: the label with ↑ (higher is better) or ↓."""
        return self.label + ("↑" if self.direction > 0 else "↓")


@dataclass(frozen=True)
class TaskSpec:
    """One dense-prediction task.

    ``channels``: output channels of its head; None means one per class (segmentation: ``num_classes``).
    ``loss``: its training loss (``main.task_losses``).  ``accumulator``: builds its running metric state for a
    style (``main.task_metrics``).  ``metrics``: per style, the metrics that state reports, in report order.
    ``tag``: the short component name of the reference's TensorBoard tags (``sparsity/Seg``).  ``label``: its
    short name in table headers (``Sp. seg``).  ``datasets``: the datasets that provide it.  ``selection_weight``:
    its weight in the reference's model-selection score (segmentation's two metrics are averaged there: ½).
    """

    name: str
    channels: int | None
    loss: LossFn
    accumulator: AccumulatorFactory
    metrics: Mapping[str, tuple[Metric, ...]]
    tag: str
    label: str
    datasets: tuple[str, ...]
    selection_weight: float = 1.0

    def out_channels(self, num_classes: int) -> int:
        """Output channels of the task's head for a dataset with ``num_classes`` classes."""
        return num_classes if self.channels is None else self.channels

    def directions(self, style: str) -> dict[str, int]:
        """``{metric: +1|-1}`` of the metrics reported in ``style``, in report order."""
        return {m.name: m.direction for m in self.metrics[style]}


class UnknownTaskError(UserError, ValueError):
    """A task name the registry does not know (a ``UserError``: one line, exit 2 in the CLIs)."""


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to ``TASKS`` after checking it is complete, so a half-declared task fails at import."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is registered twice")
    missing = [s for s in STYLES if not spec.metrics.get(s)]
    if missing:
        raise ValueError(f"task {spec.name!r} declares no metrics for style {', '.join(missing)}")
    for style, metrics in spec.metrics.items():
        bad = [m.name for m in metrics if m.direction not in (1, -1)]
        if bad:
            raise ValueError(f"task {spec.name!r} ({style}): direction of {', '.join(bad)} must be +1 or -1")
    TASKS[spec.name] = spec
    return spec


def task_spec(name: str) -> TaskSpec:
    """The registered spec of task ``name``; ``UnknownTaskError`` naming the known tasks otherwise."""
    spec = TASKS.get(name)
    if spec is None:
        raise UnknownTaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return spec


def known_tasks() -> tuple[str, ...]:
    """Every registered task name, in registry order."""
    return tuple(TASKS)


# ----------------------------------------------------------------------------------------- the built-in tasks
SEG = "segment_semantic"
NORMAL = "normal"
DEPTH = "depth_zbuffer"
KEYPOINTS = "keypoints2d"
EDGES = "edge_texture"
#: The reference's three NYUv2 tasks: the default ``--tasks`` and the comparison's tasks.
DEFAULT_TASKS = (SEG, NORMAL, DEPTH)

_ALL_DATASETS = ("synthetic", "nyuv2", "taskonomy")
_TASKONOMY_ONLY = ("synthetic", "taskonomy")  # the synthetic scenes render every task

register_task(TaskSpec(
    SEG, None, seg_loss, seg_accumulator,
    {"nyuv2": (Metric("mIoU", 1, "mIoU", 100.0), Metric("Pixel Acc", 1, "PixAcc", 100.0)),
     "taskonomy": (Metric("err", -1, "Err"),)},
    tag="Seg", label="seg", datasets=_ALL_DATASETS, selection_weight=0.5))
register_task(TaskSpec(
    NORMAL, 3, normal_loss, normal_accumulator,
    {"nyuv2": (Metric("Angle Mean", -1, "Mean"), Metric("Angle Median", -1, "Median"),
               Metric("Angle 11.25", 1, "11.25"), Metric("Angle 22.5", 1, "22.5"), Metric("Angle 30", 1, "30")),
     "taskonomy": (Metric("cosine_similarity", 1, "Cos"),)},
    tag="Nor", label="normal", datasets=_ALL_DATASETS))
register_task(TaskSpec(
    DEPTH, 1, depth_loss, depth_accumulator,
    {"nyuv2": (Metric("abs_err", -1, "Abs"), Metric("rel_err", -1, "Rel"), Metric("sigma_1.25", 1, "δ1.25"),
               Metric("sigma_1.25^2", 1, "δ1.25²"), Metric("sigma_1.25^3", 1, "δ1.25³")),
     "taskonomy": (Metric("abs_err", -1, "Abs"),)},
    tag="Dep", label="depth", datasets=_ALL_DATASETS))
_KEY_ERR, _EDGE_ERR = Metric("key_err", -1, "Key"), Metric("edge_err", -1, "Edge")  # the same in both styles
register_task(TaskSpec(
    KEYPOINTS, 1, l1_ignore_loss, l1_accumulator(_KEY_ERR.name), dict.fromkeys(STYLES, (_KEY_ERR,)),
    tag="Key", label="keypoints", datasets=_TASKONOMY_ONLY))
register_task(TaskSpec(
    EDGES, 1, l1_ignore_loss, l1_accumulator(_EDGE_ERR.name), dict.fromkeys(STYLES, (_EDGE_ERR,)),
    tag="Edge", label="edges", datasets=_TASKONOMY_ONLY))
