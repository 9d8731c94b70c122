"""Comparing evaluation results: the paper's Δ_T, the reference code's selection score, result tables.

All functions take plain ``{task: {metric: value}}`` dicts (as ``TaskMetrics.compute`` and test.py's JSON
hold them) plus ``{task: {metric: +1|-1}}`` directions (``main.tasks.metric_directions``), so they work
for any task set and never branch on the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

SEG = "segment_semantic"

#: The reference code's hard-coded NYUv2 "test score" denominators (``reference-adapmtl.md`` §6.3, rows
#: 1-2): mIoU / Pixel Acc as fractions, angle thresholds and sigmas in percent.  Not the paper's dense
#: baselines: Δ_T should be measured against a dense model evaluated with the same code.
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
    """The paper's unified metric (``reference-adapmtl.md`` §6.5), in percent.

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
    ``half_weight_first`` gives segmentation (the first task in the reference's order) its weight ½;
    ``task_priority`` defaults to 1 per task.  The reference's Taskonomy "test error" is not reproduced:
    it adds cosine similarity as an error (``reference-adapmtl.md`` §9.2 item 9).
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
    weight = {t: 0.5 if half_weight_first and t == SEG else 1.0 for t in deltas}
    weighted = sum(priority[t] * weight[t] * d for t, d in deltas.items())
    return 1.0 + weighted / (100.0 * total)


# ------------------------------------------------------------------------------------------------ tables


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_table(rows: Sequence[tuple[str, Mapping]], reference: Table | None = None,
                 directions: Directions | None = None, *, digits: int = 4, delta_digits: int = 2,
                 width: int = 120) -> str:
    """Plain-text table of results, one row per ``(label, result)``; wrapped into blocks to fit ``width``.

    ``result`` is either a metrics dict ``{task: {metric: value}}`` or a test.py-style dict with
    ``"metrics"`` and optionally ``"delta_t"`` and ``"sparsity"`` (``{"overall": f, "components": {…}}``).
    Columns are every task's metrics (first-seen order; ``-`` where a row lacks one), then a Δ_T column per
    task, when Δ_T is known (given in the row, or computed from ``reference`` + ``directions``); then the
    overall Δ_T and the sparsities as stored.  With ``directions`` the metric headers carry ↑ / ↓.
    """
    results = []
    for label, result in rows:
        metrics = result["metrics"] if "metrics" in result else result
        delta = result.get("delta_t") if "metrics" in result else None
        if delta is None and reference is not None and directions is not None:
            delta = delta_t(metrics, reference, directions)
        sparsity = result.get("sparsity") if "metrics" in result else None
        results.append((str(label), metrics, delta, sparsity))

    # (group, header, cell per row) columns, driven only by the dicts.
    columns: list[tuple[str, str, list[str]]] = []
    order: dict[str, list[str]] = {}
    for _, metrics, _, _ in results:
        for task, values in metrics.items():
            names = order.setdefault(task, [])
            names.extend(m for m in values if m not in names)
    any_delta = any(d is not None for _, _, d, _ in results)
    for task, names in order.items():
        for m in names:
            arrow = ""
            if directions is not None and task in directions and m in directions[task]:
                arrow = "↑" if directions[task][m] > 0 else "↓"
            cells = [_fmt(metrics.get(task, {}).get(m), digits) for _, metrics, _, _ in results]
            columns.append((task, m + arrow, cells))
        if any_delta:
            cells = [_fmt(d["tasks"].get(task) if d else None, delta_digits, signed=True)
                     for _, _, d, _ in results]
            columns.append((task, "Δ_T", cells))
    if any_delta:
        columns.append(("overall", "Δ_T", [_fmt(d["overall"] if d else None, delta_digits, signed=True)
                                    for _, _, d, _ in results]))
    sp_names: list[str] = []
    for _, _, _, sp in results:
        for name in (sp or {}).get("components", {}):
            if name not in sp_names:
                sp_names.append(name)
    if any(sp for _, _, _, sp in results):
        for name in sp_names:
            columns.append(("sparsity", name, [_fmt((sp or {}).get("components", {}).get(name), digits)
                                               for _, _, _, sp in results]))
        columns.append(("sparsity", "overall", [_fmt((sp or {}).get("overall"), digits)
                                                for _, _, _, sp in results]))

    label_w = max([len("model")] + [len(r[0]) for r in results])
    widths = [max([len(h)] + [len(c) for c in cells]) for _, h, cells in columns]
    for members in _groups(columns):  # a task name wider than its columns widens the last one
        span = sum(widths[i] + 2 for i in members) - 2
        widths[members[-1]] += max(0, len(columns[members[0]][0]) - span)
    lines: list[str] = []
    for block in _pack(columns, widths, width - label_w):
        group_line = " " * label_w
        start = 0
        while start < len(block):
            group = columns[block[start]][0]
            end = start
            while end + 1 < len(block) and columns[block[end + 1]][0] == group:
                end += 1
            span = sum(widths[i] + 2 for i in block[start:end + 1])
            group_line += ("  " + group[: span - 2]).ljust(span)
            start = end + 1
        header = "model".ljust(label_w) + "".join("  " + columns[i][1].rjust(widths[i]) for i in block)
        if lines:
            lines.append("")
        lines += [group_line.rstrip(), header, "-" * len(header)]
        for r, (label, *_rest) in enumerate(results):
            cells = "".join("  " + columns[i][2][r].rjust(widths[i]) for i in block)
            lines.append(label.ljust(label_w) + cells)
    return "\n".join(lines)


def _pack(columns: Sequence[tuple[str, str, list[str]]], widths: Sequence[int], room: int) -> list[list[int]]:
    """Column indices per block of at most ``room`` characters; a task's columns stay together unless they
    alone are wider than a block."""
    blocks: list[list[int]] = [[]]
    used = 0
    for members in _groups(columns):
        need = sum(widths[i] + 2 for i in members)
        if blocks[-1] and used + need > room:
            blocks.append([])
            used = 0
        for i in members:
            if blocks[-1] and used + widths[i] + 2 > room:
                blocks.append([])
                used = 0
            blocks[-1].append(i)
            used += widths[i] + 2
    return [b for b in blocks if b]


def _groups(columns: Sequence[tuple[str, str, list[str]]]) -> list[list[int]]:
    """Runs of consecutive column indices that share a group (task) name."""
    groups: list[list[int]] = []
    for i, (group, _, _) in enumerate(columns):
        if groups and columns[groups[-1][0]][0] == group:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
