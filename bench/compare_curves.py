"""Accuracy against sparsity: every method's Δ_T over the comparison's targets (the paper's Figure 4 on this
benchmark), per architecture, with 95 % intervals, and where the ranking changes with sparsity.

A method that wins at one sparsity can lose at another, and a single operating point hides it (the field's
methodology papers ask for whole trade-off curves).  ``bench.compare --sparsities 70 80 90 95 98 --curve_seeds 3``
runs the points; this module turns the finished cells into the report's section, a table and one plot per
architecture (``delta_vs_sparsity_<architecture>.png``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.compare_protocol import METHODS
from bench.comparison_stats import t_interval


def curve_points(groups: Mapping, arch: str, methods: Sequence[str], targets: Sequence[int],
                 definition: str) -> dict[str, dict[int, dict[str, Any]]]:
    """method -> target -> {"sparsity" (measured, %), "interval" (Δ_T t interval), "n"} of the finished cells."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for m in methods:
        for t in targets:
            runs = [r for r in groups.get((arch, m, t), []) if r.delta[definition]]
            if not runs:
                continue
            values = [r.delta[definition]["overall"] for r in runs]
            out.setdefault(m, {})[t] = {
                "sparsity": 100 * statistics.fmean(r.result["sparsity"]["overall"] for r in runs),
                "interval": t_interval(values), "n": len(values)}
    return out


def leader(points: Mapping[str, Mapping[int, Mapping[str, Any]]], target: int) -> str:
    """The method with the best mean Δ_T at ``target``."""
    return max((m for m in points if target in points[m]), key=lambda m: points[m][target]["interval"].mean)


def ranking_changes(points: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[str]:
    """Pairs of methods whose order by mean Δ_T differs between two targets both were measured at."""
    lines = []
    names = list(points)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(points[a]) & set(points[b]))
            ahead = {t: points[a][t]["interval"].mean > points[b][t]["interval"].mean for t in common}
            if len(set(ahead.values())) > 1:
                where_a = [f"{t}%" for t in common if ahead[t]]
                where_b = [f"{t}%" for t in common if not ahead[t]]
                lines.append(f"{METHODS[a].label} is ahead of {METHODS[b].label} at {', '.join(where_a)} and behind "
                             f"at {', '.join(where_b)}")
    return lines


def curve_section(groups: Mapping, plan: Any, ranked: Mapping[str, Sequence[str]], definition: str) -> list[str]:
    """The report's "Accuracy against sparsity" section (empty with a single target)."""
    targets = sorted(set(plan.ns.sparsities))
    if len(targets) < 2:
        return []
    md = ["## Accuracy against sparsity", "",
          f"Δ_T (test, {definition} metrics) at each target, mean ± 95% t interval (seeds) and the measured overall "
          "sparsity; `--curve_seeds` seeds at every target but the main one.", ""]
    for arch in plan.ns.architectures:
        methods = [m for m in ranked[arch] if m != "dense"]
        points = curve_points(groups, arch, methods, targets, definition)
        if not points:
            continue
        md += [f"**{arch}.**", "", "| method | " + " | ".join(f"{t}%" for t in targets) + " |",
               "|---|" + "---|" * len(targets)]
        for m, by_t in points.items():
            cells = [f"{by_t[t]['interval']} ({by_t[t]['n']}) @ {by_t[t]['sparsity']:.1f}%" if t in by_t else "–"
                     for t in targets]
            md.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
        md += ["", "Best mean at each target: " + "; ".join(
            f"{t}%: {METHODS[leader(points, t)].label}" for t in targets if any(t in p for p in points.values()))
            + ".", ""]
        changes = ranking_changes(points)
        md += (["Where the ranking changes with sparsity (by means; the intervals say how far to trust each):", "",
                *[f"- {line}" for line in changes], ""] if changes
               else ["The order of the methods' means is the same at every target.", ""])
        path = plot_curves(points, plan.root / f"delta_vs_sparsity_{arch}.png", arch, definition)
        md += [f"![Δ_T against sparsity, {arch}]({plan.root.name}/{path.name})", ""]
    return md


def plot_curves(points: Mapping[str, Mapping[int, Mapping[str, Any]]], out: Path, arch: str, definition: str) -> Path:
    """One line per method through its measured (sparsity, mean Δ_T), 95 % intervals as error bars."""
    from bench.plots import plot_delta_vs_sparsity

    flat = [{"method": METHODS[m].label, "sparsity": p["sparsity"], "delta_t": p["interval"].mean,
             "delta_std": p["interval"].half} for m, by_t in points.items() for p in by_t.values()]
    return plot_delta_vs_sparsity(flat, out, sparsity_unit="percent",
                                  title=f"{arch}: Δ_T against overall sparsity ({definition} metrics, 95% CI)")
