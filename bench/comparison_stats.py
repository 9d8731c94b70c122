"""The statistics of the comparison: Δ_T against the mean dense model, the noise floor, t intervals, paired tests.

Why a module of its own: the ranking of methods is only as good as these few formulas, so they live in one place,
are tested on their own, and read nothing but test.py JSON (``metrics_by_definition``).

- **Reference = the mean of the dense seeds.** A sparse run is compared with the average dense model of its
  architecture (metric by metric), not with the dense model of its own seed: one dense seed is as noisy as any
  other run, and pairing by seed would add that noise to every Δ_T.
- **Noise floor.** Each dense seed's Δ_T against the mean of the *other* dense seeds (leave-one-out). Its standard
  deviation is what Δ_T of a method equal to dense scatters by; a difference between methods smaller than about
  twice it is not a finding.
- **Intervals.** Mean ± the 95 % Student-t half-width over seeds; for two methods, the paired difference over the
  seeds both have (same seed = same initialisation and data order) with its t interval and two-sided p-value
  (``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from main.scores import UndefinedDelta, delta_t
from main.tasks import metric_directions

Table = Mapping[str, Mapping[str, float]]
#: The metric style of the synthetic benchmark (``main.data.dataset_info``): the reference's NYUv2 metrics.
STYLE = "nyuv2"


def metrics_of(result: Mapping, definition: str) -> Table:
    """The metric table of one test.py JSON under ``definition`` ("parity" or "standard").

    Older JSON without ``metrics_by_definition`` carry only the definition they were evaluated with.
    """
    by_def = result.get("metrics_by_definition")
    if by_def is not None:
        return by_def[definition]
    if result.get("metric_definitions", "parity") == definition:
        return result["metrics"]
    raise KeyError(f"this result has no {definition!r} metrics (re-run test.py to get both definitions)")


def mean_table(tables: Sequence[Table]) -> dict[str, dict[str, float]]:
    """Metric-by-metric mean of several tables with the same tasks and metrics."""
    if not tables:
        raise ValueError("no tables to average")
    return {task: {m: statistics.fmean(t[task][m] for t in tables) for m in values}
            for task, values in tables[0].items()}


def directions_for(table: Table) -> dict[str, dict[str, int]]:
    """Higher/lower-is-better of every metric in ``table`` (NYUv2-style metrics, as the synthetic benchmark)."""
    return metric_directions(STYLE, tuple(table))


def delta(table: Table, reference: Table) -> dict | None:
    """The paper's Δ_T (%) of ``table`` against ``reference``: ``{"overall": x, "tasks": {task: x}}``.

    None when it is undefined (a reference metric of 0, e.g. a tiny smoke-test model with no pixel under 11.25°).
    """
    try:
        return delta_t(table, reference, directions_for(reference))
    except UndefinedDelta:
        return None


def leave_one_out(tables: Sequence[Table]) -> list[dict]:
    """Δ_T of each table against the mean of the others (needs at least two; undefined ones left out)."""
    if len(tables) < 2:
        return []
    loo = [delta(t, ref) for t, ref in zip(tables, _others_means(tables), strict=True)]
    return [d for d in loo if d is not None]


def _others_means(tables: Sequence[Table]) -> list[dict[str, dict[str, float]]]:
    """For each table, the mean of all the others: its leave-one-out reference."""
    return [mean_table([o for j, o in enumerate(tables) if j != i]) for i in range(len(tables))]


@dataclass(frozen=True)
class NoiseFloor:
    """Leave-one-out Δ_T of the dense seeds: its std and largest magnitude, overall and per task."""

    n: int
    std: float | None
    max_abs: float | None
    task_std: dict[str, float]
    values: list[float]

    @classmethod
    def of(cls, tables: Sequence[Table]) -> NoiseFloor:
        loo = leave_one_out(tables)
        overall = [d["overall"] for d in loo]
        tasks = list(loo[0]["tasks"]) if loo else []
        return cls(n=len(tables), std=_std(overall), max_abs=max((abs(v) for v in overall), default=None),
                   task_std={t: _std([d["tasks"][t] for d in loo]) for t in tasks}, values=overall)


def metric_noise(tables: Sequence[Table]) -> dict[str, dict[str, float | None]]:
    """Per metric: the std over seeds of its signed relative change (%) against the mean of the other seeds.

    Why: Δ_Ti is a sum of these terms, so this says which metrics make a task's noise floor.  A metric whose value
    is small (e.g. the share of pixels within 11.25°) turns a small absolute scatter into a large relative one.
    None where fewer than two seeds have a defined term (a mean of 0).
    """
    if len(tables) < 2:
        return {}
    dirs = directions_for(tables[0])
    refs = _others_means(tables)
    return {task: {m: _std([dirs[task][m] * (t[task][m] - ref[task][m]) / ref[task][m] * 100.0
                            for t, ref in zip(tables, refs, strict=True) if ref[task][m] != 0])
                   for m in values}
            for task, values in tables[0].items()}


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


@dataclass(frozen=True)
class Interval:
    """Mean with its 95 % Student-t half-width (None with fewer than two values)."""

    n: int
    mean: float
    half: float | None

    def __str__(self) -> str:
        mean = round(self.mean, 2) + 0.0  # a mean of -1e-16 prints as +0.00, not -0.00
        return f"{mean:+.2f}" if self.half is None else f"{mean:+.2f} ± {self.half:.2f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    from scipy import stats

    values = list(values)
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(1, mean, None)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return Interval(len(values), mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem)


@dataclass(frozen=True)
class Paired:
    """``a - b`` over the seeds both have: mean with 95 % t interval, and the paired t-test's p-value."""

    seeds: list[int]
    diff: Interval
    p: float | None


def paired(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Paired | None:
    """Paired difference of two methods' per-seed values; None when they share no seed."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    p = None
    if len(seeds) > 1:
        if statistics.pstdev(diffs) == 0:  # ttest_rel is undefined without spread
            p = 1.0 if diffs[0] == 0 else 0.0
        else:
            p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(seeds, t_interval(diffs, confidence), p)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values of one family of tests (each AdapMTL row against every other method).

    Several methods are compared with AdapMTL at once; uncorrected, one of seven true nulls would pass α = 0.05 a
    third of the time.  Holm controls that family-wise error and is never less powerful than Bonferroni.
    """
    order = sorted(pvalues, key=pvalues.get)
    k, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (k - i) * pvalues[name]))
        out[name] = running
    return out
