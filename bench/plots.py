"""PNG plots for comparing pruning methods and for looking at one run's training curves.

* ``read_scalars(run_dir)`` -- every scalar a run folder's TensorBoard event files hold, resumed runs merged.
* ``plot_training_curves(runs, out_dir)`` -- per-component sparsity, adaptive task weights and learned
  thresholds tau over the iterations (the paper's Figure 3 shows the per-component sparsity curves).
* ``plot_delta_vs_sparsity(points, out_path)`` -- Δ_T against overall sparsity, one line per method.

matplotlib is imported only inside the plotting functions, so importing this module never fails on a
machine without it (training does not need it).  The figures are built with matplotlib's object-oriented
API on the non-interactive Agg canvas (``Figure`` + ``FigureCanvasAgg``), never through pyplot: no display
is needed, no figure is registered globally (so none can leak), and no ``matplotlib.use`` call switches the
backend of a process -- a notebook -- that already uses pyplot.

    python Scripts/plot_tensorboard.py outputs/dense outputs/r09 --labels dense AdapMTL
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from main.atomic import atomic_write_bytes
from main.errors import UserError
from main.monitor import component_tags

log = logging.getLogger("adapmtl.plots")

Scalars = dict[str, list[tuple[int, float]]]

DPI = 120
# Deterministic file names, so a re-run overwrites its own figures instead of piling up copies.
SPARSITY_PNG = "sparsity_curves.png"
WEIGHTS_PNG = "task_weights.png"
THRESHOLDS_PNG = "thresholds.png"

# sparsity/<tag> scalars that are not a component's sparsity.
_SPARSITY_NON_COMPONENT = {"overall_sparsity", "target", "frozen_fraction", "budget_target"}
_WEIGHT_TAG = re.compile(r"^LR/(.+)/weights$")


class RunFolderError(UserError, ValueError):
    """A run folder that is missing or holds no TensorBoard event files (a ``UserError``: exit 2 in CLIs)."""


class MissingDependency(UserError, ImportError):
    """An optional plotting dependency is not installed."""


# ---------------------------------------------------------------------------------------------- reading
def _event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)


def read_scalars(run_dir: str | Path) -> Scalars:
    """All scalars of one run folder: ``{tag: [(step, value), ...]}`` sorted by step, one value per step.

    Every event file directly in the folder is read (a resumed run writes a second file next to the first);
    sub-folders are not searched, because a run folder's own events lie in it and a parent folder of several
    runs must not silently merge them -- the error names the sub-folders that hold events instead.  Files are
    read in name order (their names start with the creation time).  A resumed run's writer carries
    ``purge_step`` (main.monitor.ScalarWriter): as in TensorBoard, the older files' points at or after that
    step belong to the abandoned timeline and are dropped.  Any other duplicate step keeps the later file's
    value.  ``size_guidance`` 0 keeps every point (TensorBoard's default samples 1,000 per tag).
    """
    folder = Path(run_dir)
    if not folder.exists():
        raise RunFolderError(f"run folder {folder} does not exist; pass the --save_dir of a training run")
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is not a folder; pass the --save_dir of a training run")
    files = _event_files(folder)
    if not files:
        # Two levels down at most: a hint must not walk a whole home folder passed by mistake.
        found = [p for pattern in ("*/*tfevents*", "*/*/*tfevents*") for p in folder.glob(pattern) if p.is_file()]
        nested = sorted({p.parent.relative_to(folder).as_posix() for p in found})
        hint = (f" (sub-folders with events: {', '.join(nested[:5])}{', ...' if len(nested) > 5 else ''}; "
                "pass those)" if nested else "; was it trained with --no-tensorboard, or is it not a run folder?")
        raise RunFolderError(f"no TensorBoard event files in {folder}{hint}")
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as e:  # a runtime requirement, but say how to fix it rather than show a traceback
        raise MissingDependency(f"reading TensorBoard events needs tensorboard ({e}); pip install tensorboard") from e

    # One accumulator over the folder reads its files in name order and applies the purge_step of a resumed
    # run across them.  Its purge message is a warning meant for a live dashboard; a resume is normal here.
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
    finally:
        tb_logger.setLevel(level)
    scalars: Scalars = {}
    for tag in acc.Tags()[event_accumulator.SCALARS]:
        by_step: dict[int, float] = {}
        for event in acc.Scalars(tag):  # load order: a later file's point replaces an earlier one
            by_step[int(event.step)] = float(event.value)
        scalars[tag] = sorted(by_step.items())
    return scalars


# ---------------------------------------------------------------------------------------------- helpers
def _import_matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or a clear error: plotting is optional and matplotlib may be absent."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependency(f"plotting needs matplotlib ({e}); pip install matplotlib") from e
    return Figure, FigureCanvasAgg


def _save(fig: Any, canvas_cls: Any, path: Path) -> Path:
    """The PNG written atomically (``main.atomic``: a special file or symlink under that name is never replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    fig.clear()  # not registered with pyplot, so nothing else holds it; free its artists now
    return path


def _component_name(name: str) -> str:
    """Full component name (backbone / task) for a sparsity tag's short name (``Seg`` -> segment_semantic)."""
    return {short: full for full, short in component_tags().items()}.get(name, name)


def _component_order() -> list[str]:
    """Fixed component order (and so fixed colours) in every figure: the backbone, then the registry's tasks;
    unknown components follow, sorted."""
    return list(component_tags())


def _ordered(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [n for n in _component_order() if n in names]
    return known + sorted(names - set(known))


def _colours(names: Sequence[str], *, components: bool = True) -> dict[str, Any]:
    """One colour per name.  Components keep one colour in every panel and figure (segment_semantic is the
    same colour in the sparsity, weight and threshold plots), so known ones get a fixed slot."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    if not components:  # methods: past 10 names tab10 would repeat a colour, so take tab20 then
        wide = colormaps["tab20"] if len(names) > 10 else cmap
        n_colours = 20 if len(names) > 10 else 10
        return {n: wide(i % n_colours) for i, n in enumerate(names)}
    order = _component_order()
    unknown = [n for n in names if n not in order]
    slot = {n: i for i, n in enumerate(order + unknown)}
    return {n: cmap(slot[n] % 10) for n in names}


def _xy(points: Sequence[tuple[int, float]], scale: float = 1.0) -> tuple[list[int], list[float]]:
    return [s for s, _ in points], [v * scale for _, v in points]


def _panels(Figure: Any, n: int, title: str) -> tuple[Any, list[Any]]:
    """One panel per run (at most three per row), sharing the y axis so the runs compare at a glance."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _has(scalars: Scalars, predicate) -> bool:
    return any(predicate(tag) and points for tag, points in scalars.items())


def _is_component_sparsity(tag: str) -> bool:
    return tag.startswith("sparsity/") and tag.split("/", 1)[1] not in _SPARSITY_NON_COMPONENT


def _is_weight(tag: str) -> bool:
    return _WEIGHT_TAG.match(tag) is not None


def _is_threshold(tag: str) -> bool:
    return tag.startswith("threshold/")


def _fraction_to_percent(points: Sequence[tuple[int, float]]) -> float:
    """Scale for ``sparsity/overall_sparsity`` / ``target``: logged as fractions, plotted in percent.

    A log whose values exceed 1 already holds percent (older runs); scaling it again would hide the curve.
    """
    return 1.0 if any(v > 1.0 for _, v in points) else 100.0


# ---------------------------------------------------------------------------------------------- figures
def _sparsity_figure(Figure: Any, runs: Mapping[str, Scalars]) -> Any:
    comps = _ordered(_component_name(t.split("/", 1)[1]) for s in runs.values() for t in s
                     if _is_component_sparsity(t))
    colours = _colours(comps)
    fig, axes = _panels(Figure, len(runs), "Component sparsity during training")
    for ax, (label, scalars) in zip(axes, runs.items()):
        for tag in sorted((t for t in scalars if _is_component_sparsity(t)),
                          key=lambda t: comps.index(_component_name(t.split("/", 1)[1]))):
            name = _component_name(tag.split("/", 1)[1])
            ax.plot(*_xy(scalars[tag]), color=colours[name], label=name, linewidth=1.4)
        overall = scalars.get("sparsity/overall_sparsity")
        if overall:
            ax.plot(*_xy(overall, _fraction_to_percent(overall)), color="black", linestyle="--", linewidth=1.6,
                    label="overall")
        target = scalars.get("sparsity/target")
        if target:
            ax.axhline(target[-1][1] * _fraction_to_percent(target), color="grey", linestyle=":", linewidth=1.2,
                       label="target")
        budget = scalars.get("sparsity/budget_target")  # --sparsity_control budget: the controller's ramp
        if budget:
            ax.plot(*_xy(budget, _fraction_to_percent(budget)), color="grey", linestyle="-.", linewidth=1.2,
                    label="budget ramp")
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel("sparsity (%)")
    return fig


def _weights_figure(Figure: Any, runs: Mapping[str, Scalars]) -> Any:
    tasks = _ordered(m.group(1) for s in runs.values() for t in s if (m := _WEIGHT_TAG.match(t)))
    colours = _colours(tasks)
    fig, axes = _panels(Figure, len(runs), "Adaptive task weights during training")
    for ax, (label, scalars) in zip(axes, runs.items()):
        for task in tasks:
            points = scalars.get(f"LR/{task}/weights")
            if points:
                ax.plot(*_xy(points), color=colours[task], label=task, linewidth=1.4)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel("task weight")
    return fig


def _thresholds_figure(Figure: Any, runs: Mapping[str, Scalars]) -> Any:
    comps = _ordered(t.split("/", 1)[1] for s in runs.values() for t in s if _is_threshold(t))
    colours = _colours(comps)
    fig, axes = _panels(Figure, len(runs), "Learned thresholds τ = sigmoid(s) during training")
    for ax, (label, scalars) in zip(axes, runs.items()):
        for comp in comps:
            points = scalars.get(f"threshold/{comp}")
            if points:
                ax.plot(*_xy(points), color=colours[comp], label=comp, linewidth=1.4)
        ax.set_yscale("log", nonpositive="mask")  # tau spans decades; an underflowed 0 is masked, not an error
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel("threshold τ (log)")
    return fig


def plot_training_curves(runs: Mapping[str, Scalars], out_dir: str | Path) -> list[Path]:
    """Write the training-curve PNGs for one or more runs (``{label: read_scalars(run)}``) into ``out_dir``.

    Three figures, one panel per run: component sparsity (%; overall and target dashed), adaptive task weights,
    and the learned thresholds tau on a log axis.  A run without a figure's tags (a dense run has no
    thresholds) is left out of that figure, and a figure no run has tags for is skipped, each with a note on
    the ``adapmtl.plots`` logger, so mixing dense and pruned runs works.  Returns the written paths in the
    order sparsity, weights, thresholds.
    """
    if not runs:
        raise ValueError("plot_training_curves needs at least one run")
    Figure, canvas = _import_matplotlib()
    out = Path(out_dir)
    written: list[Path] = []
    figures = [(SPARSITY_PNG, "component sparsity (sparsity/<Component>)", _is_component_sparsity, _sparsity_figure),
               (WEIGHTS_PNG, "adaptive task weights (LR/<task>/weights)", _is_weight, _weights_figure),
               (THRESHOLDS_PNG, "learned thresholds (threshold/<component>)", _is_threshold, _thresholds_figure)]
    for filename, what, predicate, draw in figures:
        having = {label: s for label, s in runs.items() if _has(s, predicate)}
        if not having:
            log.info("no run has %s scalars: %s skipped", what, filename)
            continue
        for label in runs:
            if label not in having:
                log.info("run %s has no %s scalars: left out of %s", label, what, filename)
        written.append(_save(draw(Figure, having), canvas, out / filename))
    return written


def _label_delta_axes(ax: Any, xlabel: str, title: str) -> None:
    """Labels, grid and legend of a Δ_T plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(r"$\Delta_T$ (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def plot_delta_vs_sparsity(points: Sequence[Mapping[str, Any]], out_path: str | Path, *,
                           sparsity_unit: str = "auto", title: str | None = None) -> Path:
    """Plot Δ_T (%) against overall sparsity (%), one line with markers per method; returns ``out_path``.

    Each point is ``{"method": str, "sparsity": float, "delta_t": float, "delta_std": float | None}``
    (``delta_std`` optional: error bars where given, e.g. over seeds).  The method comparison collects
    sparsities both as fractions (test.py JSON) and as percent (tables), so ``sparsity_unit="auto"`` reads
    them as fractions when every value is at most 1 and as percent otherwise; pass ``"fraction"`` or
    ``"percent"`` when that guess could be wrong (e.g. all sparsities below 1%).  The dashed line at 0 is the
    dense model, Δ_T's reference.  Methods keep their first-appearance order; points are joined by sparsity.
    """
    if sparsity_unit not in ("auto", "fraction", "percent"):
        raise ValueError(f"sparsity_unit must be auto, fraction or percent, not {sparsity_unit!r}")
    if not points:
        raise ValueError("plot_delta_vs_sparsity needs at least one point")
    for i, p in enumerate(points):
        missing = [k for k in ("method", "sparsity", "delta_t") if k not in p]
        if missing:
            raise ValueError(f"point {i} lacks {', '.join(missing)}: {dict(p)}")
    values = [float(p["sparsity"]) for p in points]
    fraction = sparsity_unit == "fraction" or (sparsity_unit == "auto" and max(values) <= 1.0)
    scale = 100.0 if fraction else 1.0

    Figure, canvas = _import_matplotlib()
    methods: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        methods.setdefault(str(p["method"]), []).append(p)
    colours = _colours(list(methods), components=False)
    markers = "osD^vP*Xhp"
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1.0, label=r"dense ($\Delta_T = 0$)")
    for i, (method, pts) in enumerate(methods.items()):
        pts = sorted(pts, key=lambda p: float(p["sparsity"]))
        x = [scale * float(p["sparsity"]) for p in pts]
        y = [float(p["delta_t"]) for p in pts]
        stds = [p.get("delta_std") for p in pts]
        yerr = [0.0 if s is None else float(s) for s in stds] if any(s is not None for s in stds) else None
        ax.errorbar(x, y, yerr=yerr, color=colours[method], marker=markers[i % len(markers)], markersize=6,
                    linewidth=1.5, capsize=3 if yerr else 0, label=method)
    _label_delta_axes(ax, "overall sparsity (%)", title or r"Multitask performance $\Delta_T$ against sparsity")
    return _save(fig, canvas, Path(out_path))


def plot_delta_vs_cost(points: Sequence[Mapping[str, Any]], out_path: str | Path, *, title: str | None = None) -> Path:
    """Scatter of Δ_T (%) against compacted conv FLOPs (% of the dense network's), one marker per method.

    Each point is ``{"method": str, "flops": float (percent of dense), "delta_t": float}``.  The dashed lines are
    the dense model (Δ_T = 0 at 100% of its FLOPs).
    """
    if not points:
        raise ValueError("plot_delta_vs_cost needs at least one point")
    Figure, canvas = _import_matplotlib()
    colours = _colours(list(dict.fromkeys(str(p["method"]) for p in points)), components=False)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1.0, label=r"dense ($\Delta_T = 0$, 100% FLOPs)")
    ax.axvline(100.0, color="grey", linestyle="--", linewidth=1.0)
    for i, p in enumerate(points):
        ax.plot([float(p["flops"])], [float(p["delta_t"])], linestyle="none", marker="osD^vP*Xhp"[i % 10],
                markersize=7, color=colours[str(p["method"])], label=str(p["method"]))
    _label_delta_axes(ax, "conv FLOPs after compaction (% of dense)",
                      title or r"Multitask performance $\Delta_T$ against real cost")
    return _save(fig, canvas, Path(out_path))
