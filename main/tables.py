"""Plain-text result tables: one row per model, task metrics, Δ_T and sparsity columns, wrapped to a width."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .scores import Directions, Table, delta_t


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
    results = [_row(label, result, reference, directions) for label, result in rows]
    columns = _metric_columns(results, directions, digits, delta_digits) + _sparsity_columns(results, digits)
    return _render(results, columns, width)


def _row(label: str, result: Mapping, reference: Table | None, directions: Directions | None) -> tuple:
    """(label, metrics, Δ_T or None, sparsity or None) of one row."""
    metrics = result["metrics"] if "metrics" in result else result
    delta = result.get("delta_t") if "metrics" in result else None
    if delta is None and reference is not None and directions is not None:
        delta = delta_t(metrics, reference, directions)
    sparsity = result.get("sparsity") if "metrics" in result else None
    return str(label), metrics, delta, sparsity


def _metric_columns(results: list[tuple], directions: Directions | None, digits: int,
                    delta_digits: int) -> list[tuple[str, str, list[str]]]:
    """(group, header, cell per row) for every task's metrics and Δ_T, driven only by the dicts."""
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
    return columns


def _sparsity_columns(results: list[tuple], digits: int) -> list[tuple[str, str, list[str]]]:
    columns: list[tuple[str, str, list[str]]] = []
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
    return columns


def _render(results: list[tuple], columns: list[tuple[str, str, list[str]]], width: int) -> str:
    label_w = max([len("model")] + [len(r[0]) for r in results])
    widths = [max([len(h)] + [len(c) for c in cells]) for _, h, cells in columns]
    for members in _groups(columns):  # a task name wider than its columns widens the last one
        span = sum(widths[i] + 2 for i in members) - 2
        widths[members[-1]] += max(0, len(columns[members[0]][0]) - span)
    lines: list[str] = []
    for block in _pack(columns, widths, width - label_w):
        header = "model".ljust(label_w) + "".join("  " + columns[i][1].rjust(widths[i]) for i in block)
        if lines:
            lines.append("")
        lines += [_group_line(block, columns, widths, label_w), header, "-" * len(header)]
        for r, (label, *_rest) in enumerate(results):
            cells = "".join("  " + columns[i][2][r].rjust(widths[i]) for i in block)
            lines.append(label.ljust(label_w) + cells)
    return "\n".join(lines)


def _group_line(block: list[int], columns: list[tuple[str, str, list[str]]], widths: list[int], label_w: int) -> str:
    """The line above a block's headers: each task name over its columns."""
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
    return group_line.rstrip()


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
