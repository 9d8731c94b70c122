"""bench.plots and Scripts/plot_tensorboard.py: reading (resumed) runs' events and writing valid PNGs."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plots import (
    SPARSITY_PNG,
    THRESHOLDS_PNG,
    WEIGHTS_PNG,
    RunFolderError,
    plot_delta_vs_sparsity,
    plot_training_curves,
    read_scalars,
)
from main.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "Scripts" / "plot_tensorboard.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


def interval(step: int, offset: float = 0.0, sparse: bool = True) -> dict[str, float]:
    """The scalars main/training_log.py `TrainingLog` writes, for two components (backbone, Seg) and two tasks."""
    s = {"sparsity/Backbone": 10.0 * step + offset, "sparsity/Seg": 5.0 * step + offset,
         "sparsity/overall_sparsity": (8.0 * step + offset) / 100, "LR/segment_semantic/weights": 1.0 + offset,
         "LR/normal/weights": 1.0 - offset, "Loss/train/segment_semantic": 2.0 / step, "LR": 1e-3}
    if sparse:
        s.update({"sparsity/target": 0.9, "threshold/backbone": 0.01 + 0.001 * step, "LR/sparseThreshold": -4.5,
                  "threshold/segment_semantic": 0.02 - 0.001 * step})
    else:
        s = {k: (0.0 if k.startswith("sparsity/") else v) for k, v in s.items()}
    return s


def write_events(folder: Path, steps, offset: float = 0.0, purge_step: int | None = None, sparse: bool = True):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
    for step in steps:
        for tag, value in interval(step, offset, sparse).items():
            writer.add_scalar(tag, value, step)
    writer.close()


@pytest.fixture
def resumed_run(tmp_path) -> Path:
    """Logged steps 2..8, crashed, resumed at step 5 (purge_step, as ScalarWriter writes it) and ran to 10."""
    run = tmp_path / "adapmtl"
    write_events(run, [2, 4, 6, 8])
    write_events(run, [6, 8, 10], offset=0.5, purge_step=5)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    return run


@pytest.fixture
def dense_run(tmp_path) -> Path:
    run = tmp_path / "dense"
    write_events(run, [2, 4, 6], sparse=False)
    return run


def assert_png(path: Path) -> tuple[int, int]:
    from matplotlib import image

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = image.imread(path).shape[:2]
    assert height > 100 and width > 100
    return height, width


def test_read_scalars_merges_a_resumed_run(resumed_run):
    scalars = read_scalars(resumed_run)
    assert scalars["sparsity/Backbone"] == [(2, 20.0), (4, 40.0), (6, 60.5), (8, 80.5), (10, 100.5)]
    assert [s for s, _ in scalars["threshold/backbone"]] == [2, 4, 6, 8, 10]
    assert scalars["LR/normal/weights"][-1] == (10, 0.5)
    assert scalars["sparsity/overall_sparsity"][0] == (2, pytest.approx(0.16))
    assert all(isinstance(s, int) and isinstance(v, float) for s, v in scalars["LR"])


def test_read_scalars_later_file_wins_duplicate_steps(tmp_path):
    run = tmp_path / "restarted"
    write_events(run, [2, 4, 6])
    write_events(run, [4, 2], offset=1.0)  # no purge_step, steps out of order: later values, sorted by step
    assert read_scalars(run)["sparsity/Seg"] == [(2, 11.0), (4, 21.0), (6, 30.0)]


def test_read_scalars_errors_name_the_folder(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        read_scalars(tmp_path / "missing")
    write_events(tmp_path / "runs" / "r08", [2])
    with pytest.raises(RunFolderError, match=r"no TensorBoard event files in .*runs.*sub-folders with events: r08"):
        read_scalars(tmp_path / "runs")
    err = pytest.raises(ValueError, read_scalars, tmp_path).value
    assert isinstance(err, UserError) and str(tmp_path) in str(err)


@needs_matplotlib
def test_training_curves_for_dense_and_pruned_runs(resumed_run, dense_run, tmp_path, caplog):
    runs = {"dense": read_scalars(dense_run), "AdapMTL": read_scalars(resumed_run)}
    with caplog.at_level(logging.INFO, logger="adapmtl.plots"):
        written = plot_training_curves(runs, tmp_path / "plots")
    assert [p.name for p in written] == [SPARSITY_PNG, WEIGHTS_PNG, THRESHOLDS_PNG]
    sizes = [assert_png(p) for p in written]
    assert sizes[0][1] > sizes[2][1]  # two panels side by side; thresholds only for the pruned run
    assert "dense" in caplog.text and THRESHOLDS_PNG in caplog.text


@needs_matplotlib
def test_training_curves_skip_a_figure_no_run_has(dense_run, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="adapmtl.plots"):
        written = plot_training_curves({"dense": read_scalars(dense_run)}, tmp_path / "out")
    assert [p.name for p in written] == [SPARSITY_PNG, WEIGHTS_PNG]
    assert f"{THRESHOLDS_PNG} skipped" in caplog.text
    assert not (tmp_path / "out" / THRESHOLDS_PNG).exists()


@needs_matplotlib
def test_delta_vs_sparsity(tmp_path):
    points = [{"method": "AdapMTL", "sparsity": 0.9, "delta_t": 1.2, "delta_std": 0.4},
              {"method": "AdapMTL", "sparsity": 0.5, "delta_t": 2.0, "delta_std": None},
              {"method": "magnitude", "sparsity": 0.9, "delta_t": -3.0},
              {"method": "magnitude", "sparsity": 0.7, "delta_t": -1.0, "delta_std": None}]
    out = plot_delta_vs_sparsity(points, tmp_path / "fig" / "delta_vs_sparsity.png")
    assert out == tmp_path / "fig" / "delta_vs_sparsity.png"
    assert_png(out)
    percent = [{**p, "sparsity": 100 * p["sparsity"]} for p in points]
    assert_png(plot_delta_vs_sparsity(percent, tmp_path / "percent.png", sparsity_unit="percent"))
    with pytest.raises(ValueError, match="lacks delta_t"):
        plot_delta_vs_sparsity([{"method": "x", "sparsity": 0.5}], tmp_path / "bad.png")


@needs_matplotlib
def test_cli_writes_the_plots_into_the_run_folder(resumed_run, dense_run):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(resumed_run), str(dense_run), "--labels", "A", "D"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.splitlines()]
    assert [p.name for p in written] == [SPARSITY_PNG, WEIGHTS_PNG, THRESHOLDS_PNG]
    assert all(p.parent == resumed_run / "plots" for p in written)
    for path in written:
        assert_png(path)
    assert "note: run D has no" in proc.stderr


def test_cli_folder_without_events_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "o")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no TensorBoard event files in") and str(tmp_path) in lines[0]
    assert not (tmp_path / "o").exists()


@needs_matplotlib
def test_cli_on_a_real_tiny_training_run(tmp_path, tiny_flags):
    import main.cli.train as baseline

    spec = importlib.util.spec_from_file_location("plot_tensorboard", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run = tmp_path / "tiny"
    assert baseline.main(tiny_flags + ["--iters", "4", "--save_dir", str(run)]) == 0
    assert cli.main([str(run), "--out", str(tmp_path / "plots")]) == 0
    for name in (SPARSITY_PNG, WEIGHTS_PNG, THRESHOLDS_PNG):
        assert_png(tmp_path / "plots" / name)
    scalars = read_scalars(run)
    assert [s for s, _ in scalars["threshold/backbone"]] == [2, 4]
    assert 0.0 < scalars["sparsity/overall_sparsity"][-1][1] < 1.0  # a fraction, not percent
    with pytest.raises(UserError, match="--labels got 2 labels for 1 runs"):
        cli.main([str(run), "--labels", "a", "b"])


@needs_matplotlib
def test_budget_ramp_is_drawn_in_percent_not_as_a_component():
    from bench.plots import _import_matplotlib, _sparsity_figure

    scalars = {"sparsity/Backbone": [(1, 40.0), (2, 80.0)], "sparsity/overall_sparsity": [(1, 0.4), (2, 0.85)],
               "sparsity/budget_target": [(1, 0.45), (2, 0.9)]}
    Figure, _ = _import_matplotlib()
    ax = _sparsity_figure(Figure, {"AdapMTL": scalars}).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["budget ramp"] == [45.0, 90.0]  # a fraction in the log, percent on the axis
    assert set(lines) == {"backbone", "overall", "budget ramp"}


def test_delta_vs_cost_plot_writes_a_png(tmp_path):
    from bench.plots import plot_delta_vs_cost

    out = plot_delta_vs_cost([{"method": "AdapMTL [resnet34]", "flops": 72.7, "delta_t": -3.0},
                              {"method": "IMP [resnet34]", "flops": 76.5, "delta_t": -1.0}], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one point"):
        plot_delta_vs_cost([], tmp_path / "d.png")
