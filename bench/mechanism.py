"""Does AdapMTL's mechanism act in a run?  Threshold travel, per-component separation, and when sparsity settles.

A ranking of AdapMTL says nothing about the method if its thresholds cannot move, or if its adaptive task weights
start after the sparsity allocation is already set.  This module reads one run folder (its ``config.yaml`` and
TensorBoard scalars) and measures both:

- ``threshold_sum_lr``: the sum of the thresholds' learning rates over the run (Adam moves ``s`` by about the lr per
  step, so this bounds how far they can travel; the reference NYUv2 schedule gives 7.75);
- per component, the actual travel ``|s_end - s_start|`` and the final ``sigma(s)``; their max / min ratio is the
  separation between components;
- per component, the *settling iteration*: the first logged iteration at which its sparsity reached
  ``SETTLE_FRACTION`` of its final value; and the iteration of the first adaptive task weights
  (``--adaptive_begin + --adaptive_window``).

``bench.compare`` stores the trace of every AdapMTL cell in ``cells.json``; ``mechanism_section`` turns them into
the report's table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from main.config import Config, load_yaml
from main.optimizer import schedule_travel, threshold_lr_factor

SETTLE_FRACTION = 0.9
COMPONENT_TAGS = {"Backbone": "backbone", "Seg": "segment_semantic", "Nor": "normal", "Dep": "depth_zbuffer",
                  "Key": "keypoints2d", "Edge": "edge_texture"}


def settle_iteration(points: Sequence[tuple[int, float]], fraction: float = SETTLE_FRACTION) -> int | None:
    """First step whose value reaches ``fraction`` of the last value (None for an empty or all-zero curve)."""
    if not points or points[-1][1] <= 0:
        return None
    goal = fraction * points[-1][1]
    return next(step for step, value in points if value >= goal)


def threshold_sum_lr(cfg: Config) -> float:
    """Sum over the run of the learning rate the threshold parameters are stepped with."""
    return schedule_travel(cfg.lr, cfg.iters, cfg.decay_lr_freq, cfg.decay_lr_rate) * threshold_lr_factor(cfg)


def trace(run_dir: str | Path) -> dict[str, Any] | None:
    """The mechanism measurements of one AdapMTL run folder, or None when it has no config or scalars."""
    from bench.plots import read_scalars

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not any(run_dir.glob("events.out.tfevents.*")):
        return None
    cfg = Config.from_dict(load_yaml(str(run_dir / "config.yaml")), source=str(run_dir / "config.yaml"))
    scalars = read_scalars(run_dir)
    out: dict[str, Any] = {"threshold_sum_lr": round(threshold_sum_lr(cfg), 4),
                           "adaptive_start": cfg.adaptive_begin + cfg.adaptive_window
                           if cfg.task_weighting == "adaptive" else None,
                           "s_init": cfg.sInit_value, "settle": {}, "travel": {}, "tau": {}}
    for tag, comp in COMPONENT_TAGS.items():
        curve = scalars.get(f"sparsity/{tag}")
        if curve:
            out["settle"][comp] = settle_iteration(curve)
    for name, curve in scalars.items():
        if name.startswith("threshold_travel/") and curve:
            out["travel"][name.split("/", 1)[1]] = round(curve[-1][1], 4)
        elif name.startswith("threshold/") and curve:
            out["tau"][name.split("/", 1)[1]] = round(curve[-1][1], 6)
    overall = scalars.get("sparsity/overall_sparsity")
    out["settle"]["overall"] = settle_iteration(overall) if overall else None
    return out


def spread(taus: Mapping[str, float]) -> float | None:
    """max / min of the components' final thresholds (1 = all equal)."""
    values = [v for v in taus.values() if v > 0]
    return max(values) / min(values) if len(values) > 1 else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(traces: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Across the seeds of one row: Σ lr, median spread, mean travel and mean settling iteration per component."""
    comps = sorted({c for t in traces for c in t["travel"]}, key=list(COMPONENT_TAGS.values()).index)
    spreads = [s for s in (spread(t["tau"]) for t in traces) if s is not None]
    settles = {c: [t["settle"][c] for t in traces if t["settle"].get(c) is not None]
               for c in [*comps, "overall"]}
    return {"seeds": len(traces), "threshold_sum_lr": _median([t["threshold_sum_lr"] for t in traces]),
            "adaptive_start": _median([t["adaptive_start"] for t in traces if t["adaptive_start"] is not None]),
            "spread_median": _median(spreads),
            "travel": {c: statistics.fmean(t["travel"][c] for t in traces if c in t["travel"]) for c in comps},
            "settle": {c: statistics.fmean(v) for c, v in settles.items() if v},
            "earliest_settle": _median([min(v for c, v in t["settle"].items() if c != "overall" and v is not None)
                                        for t in traces if any(v is not None for v in t["settle"].values())])}


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def mechanism_section(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The report's table: one line per AdapMTL row (label -> the traces of its seeds)."""
    rows = {label: traces for label, traces in rows.items() if traces}
    if not rows:
        return []
    md = ["## Does AdapMTL's mechanism act?", "",
          "Measured on each AdapMTL cell's own TensorBoard scalars (`bench/mechanism.py`). Σ lr: the sum of the "
          "thresholds' learning rates over the run (it bounds their travel; the reference NYUv2 schedule gives "
          "7.75). Travel: |s_end − s_start| per component, mean over seeds. Spread: max / min of the components' "
          f"final σ(s), median over seeds. Settled: the iteration at which a component's sparsity first reached "
          f"{SETTLE_FRACTION:.0%} of its final value (mean over seeds); the adaptive weights act from the iteration "
          "in the next column on.", "",
          "| row | seeds | Σ lr | travel per component | spread | settled per component | first adaptive weights |"
          " earliest component settled (median) |", "|---|---|---|---|---|---|---|---|"]
    for label, traces in rows.items():
        s = summarise(traces)
        travel = ", ".join(f"{c} {v:.2f}" for c, v in s["travel"].items())
        settle = ", ".join(f"{c} {v:.0f}" for c, v in s["settle"].items())
        md.append(f"| {label} | {s['seeds']} | {_fmt(s['threshold_sum_lr'], '.2f')} | {travel} | "
                  f"×{_fmt(s['spread_median'], '.2f')} | {settle} | {_fmt(s['adaptive_start'], '.0f')} | "
                  f"{_fmt(s['earliest_settle'], '.0f')} |")
    return md + [""]
