"""``--select_by metric:<task>/<metric>``: the best checkpoint is the one with the best value of that validation
metric (its direction from the metric), recorded in the checkpoint (S004 selects by Pixel Acc)."""

from __future__ import annotations

import pytest

import main.cli.train as baseline
import main.validation as validation_module
from main.checkpoint import load_checkpoint
from main.tasks import metric_directions

CKPT = "segment_semantic_normal_depth_zbuffer.model"
DIRS = metric_directions("nyuv2", ("segment_semantic", "normal", "depth_zbuffer"))


def fake_results(pixel_acc, angle_mean, loss):
    """One validation result per call: the given metric values, every other metric constant."""
    calls = iter(range(len(loss)))

    def evaluate(*args, **kwargs):
        i = next(calls)
        metrics = {t: dict.fromkeys(ms, 50.0) for t, ms in DIRS.items()}
        metrics["segment_semantic"]["Pixel Acc"] = pixel_acc[i]
        metrics["normal"]["Angle Mean"] = angle_mean[i]
        return {"metrics": metrics, "losses": dict.fromkeys(DIRS, loss[i])}
    return evaluate


@pytest.mark.parametrize("select_by, best_iter", [("metric:segment_semantic/Pixel Acc", 2),
                                                   ("metric:normal/Angle Mean", 3), ("loss", 4)])
def test_best_checkpoint_by_a_metric_in_its_direction(tmp_path, tiny_flags, monkeypatch, select_by, best_iter):
    monkeypatch.setattr(validation_module, "evaluate", fake_results([0.3, 0.7, 0.5, 0.6], [30.0, 35.0, 22.0, 28.0],
                                                                 [4.0, 3.0, 2.0, 1.0]))
    run = tmp_path / "run"
    assert baseline.main(tiny_flags + ["--dense", "--iters", "4", "--val_iters", "1", "--best_after", "0",
                                       "--select_by", select_by, "--save_dir", str(run)]) == 0
    best = load_checkpoint(run / f"best_{CKPT}")
    assert best["iter"] == best_iter
    assert load_checkpoint(run / CKPT)["best"]["select_by"] == select_by


def test_an_unknown_metric_selector_is_refused_before_any_work(tmp_path, tiny_flags, capsys):
    from test_user_errors import fails

    fails(baseline, tiny_flags + ["--select_by", "metric:normal/PixelAcc", "--save_dir", tmp_path / "r"], tmp_path,
          capsys, "metric:normal/PixelAcc", "metric:segment_semantic/Pixel Acc")
    fails(baseline, tiny_flags + ["--select_by", "best", "--save_dir", tmp_path / "r"], tmp_path, capsys,
          "--select_by")
