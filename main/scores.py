"""Scoring results against a reference: the paper's Δ_T and the reference code's selection score.

All functions take plain ``{task: {metric: value}}`` dicts (as ``TaskMetrics.compute`` and test.py's JSON
hold them) plus ``{task: {metric: +1|-1}}`` directions (``main.tasks.metric_directions``), so they work
for any task set and never branch on the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import UserError
from .task_registry import TASKS

#: The reference code's hard-coded NYUv2 "test score" denominators (their values, copied from their trainer; the
#: score itself: ``docs/reference.md`` §6.3): mIoU / Pixel Acc as fractions, angle thresholds and sigmas in percent.
#: Not the paper's dense baselines: Δ_T should be measured against a dense model evaluated with the same code.
NYUV2_REFERENCE_SCORES: dict[str, dict[str, dict[str, float]]] = {
    "resnet34": {
        "segment_semantic": {"mIoU": 0.2525, "Pixel Acc": 0.5773},
        "normal": {"Angle Mean": 17.2398, "Angle Median": 14.9797, "Angle 11.25": 36.433,
                   "Angle 22.5": 72.0786, "Angle 30": 85.2728},
        "depth_zbuffer": {"abs_err": 0.5551, "rel_err": 0.2151, "sigma_1.25": 64.4659,
                          "sigma_1.25^2": 89.8674, "sigma_1.25^3": 97.4203},
    },
    "mobilenetv2": {
        "segment_semantic": {"mIoU": 0.1849, "Pixel Acc": 0.4864},
        "normal": {"Angle Mean": 17.7522, "Angle Median": 16.2718, "Angle 11.25": 28.5603,
                   "Angle 22.5": 73.9923, "Angle 30": 87.3249},
        "depth_zbuffer": {"abs_err": 0.587, "rel_err": 0.2404, "sigma_1.25": 61.9075,
                          "sigma_1.25^2": 87.4701, "sigma_1.25^3": 96.1797},
    },
}


class NoReferenceScore(UserError, ValueError):
    """``--select_by score`` for a run the reference's score has no denominators for."""


def score_references(architecture: str, tasks: Sequence[str], metric_style: str) -> dict[str, dict[str, float]]:
    """The reference score's denominators for this run's tasks (a subset of the NYUv2 three), or
    ``NoReferenceScore`` naming what to select by instead: checked before a run starts, not at its first validation.
    """
    refs = NYUV2_REFERENCE_SCORES.get(architecture, {})
    unknown = [t for t in tasks if t not in refs]
    if metric_style != "nyuv2" or unknown or not tasks:
        what = f"tasks {', '.join(unknown)}" if unknown and metric_style == "nyuv2" else f"{metric_style} metrics"
        raise NoReferenceScore(f"--select_by score: the reference's score only has NYUv2 denominators (tasks "
                               f"{', '.join(NYUV2_REFERENCE_SCORES['resnet34'])}), not for {what}; select by loss or "
                               "by one metric (--select_by metric:<task>/<metric>)")
    return {t: refs[t] for t in tasks}


class UndefinedDelta(ValueError):
    """A reference metric is 0, so its relative change (and Δ_T) is undefined: a degenerate reference model."""


Table = Mapping[str, Mapping[str, float]]  # {task: {metric: value}}
Directions = Mapping[str, Mapping[str, int]]  # {task: {metric: +1 | -1}}


def _check_comparable(metrics: Table, reference: Table, directions: Directions) -> None:
    """Fail loudly on mismatched task/metric sets: a silently skipped metric would change Δ_T."""
    if not metrics:
        raise ValueError("no metrics to compare")
    for task in metrics:
        if task not in reference:
            raise ValueError(f"reference has no task {task!r} (it has: {', '.join(reference) or 'none'})")
    for task in reference:
        if task not in metrics:
            raise ValueError(f"metrics have no task {task!r}, but the reference has it")
    for task, values in metrics.items():
        ref, dirs = reference[task], directions.get(task, {})
        for metric in values:
            if metric not in ref:
                raise ValueError(f"reference lacks metric {metric!r} of task {task!r}")
            if dirs.get(metric) not in (1, -1):
                raise ValueError(f"no direction (+1 higher / -1 lower is better) for {task!r} {metric!r}")
            if ref[metric] == 0:
                raise UndefinedDelta(f"reference value of {task!r} {metric!r} is 0; relative change undefined")
        for metric in ref:
            if metric not in values:
                raise ValueError(f"metrics lack {metric!r} of task {task!r}, but the reference has it")


def delta_t(metrics: Table, reference: Table, directions: Directions) -> dict:
    """The paper's unified metric (``docs/reference.md`` §6.5), in percent.

    Δ_Ti = Σ_j sign_j · (M_ij − R_ij) / R_ij · 100 is a *sum* over the task's metrics (not a mean: this is
    what reproduces every Δ of the paper's Table 2); Δ_T is the unweighted mean of Δ_Ti over tasks.
    ``reference`` should be the dense model of the same architecture evaluated the same way.
    Returns ``{"overall": Δ_T, "tasks": {task: Δ_Ti}}``.
    """
    _check_comparable(metrics, reference, directions)
    tasks = {
        task: sum(directions[task][m] * (v - reference[task][m]) / reference[task][m] * 100.0
                  for m, v in values.items())
        for task, values in metrics.items()
    }
    return {"overall": sum(tasks.values()) / len(tasks), "tasks": tasks}


def selection_score(metrics: Table, reference: Table, directions: Directions,
                    task_priority: Mapping[str, float] | None = None,
                    half_weight_first: bool = True) -> float:
    """The reference trainer's NYUv2 model-selection "test score" (§6.4), for any task set; higher is better.

    The code computes [p_seg·½(mIoU/r + PA/r) + p_nor·(a11/r + a22/r + a30/r − mean/r − med/r) + p_dep·(…)]
    / Σp.  Writing M/r = 1 + (M − r)/r, every task term is p_t·(1 + w_t·Δ_Tt/100) (each task has one more
    higher-better than lower-better metric; segmentation's two are averaged, hence w = ½), so
    score = 1 + Σ_t p_t·w_t·Δ_Tt / (100·Σ_t p_t): exactly 1 at the reference.  Other task sets (e.g. a
    lone ``key_err``) use this Δ form, since their raw ratio sums would not start at 1.
    ``half_weight_first`` gives each task its ``TaskSpec.selection_weight`` (segmentation, the first task in the
    reference's order: ½; tasks outside the registry: 1); ``task_priority`` defaults to 1 per task.  The reference's
    Taskonomy "test error" is not reproduced: it adds cosine similarity as an error (docs/differences.md #16).
    """
    deltas = delta_t(metrics, reference, directions)["tasks"]
    priority = dict.fromkeys(deltas, 1.0)
    for task, p in (task_priority or {}).items():
        if task not in deltas:
            raise ValueError(f"task_priority names {task!r}, which the metrics do not have")
        priority[task] = float(p)
    total = sum(priority.values())
    if total <= 0:
        raise ValueError("task priorities must sum to a positive number")
    weight = {t: _selection_weight(t) if half_weight_first else 1.0 for t in deltas}
    weighted = sum(priority[t] * weight[t] * d for t, d in deltas.items())
    return 1.0 + weighted / (100.0 * total)


def _selection_weight(task: str) -> float:
    """A task's weight in ``selection_score`` (its registry spec says; any other task set counts 1 per task)."""
    spec = TASKS.get(task)
    return 1.0 if spec is None else spec.selection_weight
