"""Reference-parity options: validation loss per batch, adaptive weights in float64, selection score with priority."""

from __future__ import annotations

import pytest
import torch

from main.evaluate import evaluate
from main.scores import selection_score
from main.tasks import metric_directions
from main.weighting import AdaptiveWeighting


class Constant(torch.nn.Module):
    """Predicts zeros; its loss per batch is a known function of the batch's targets."""

    def forward(self, x):
        return {"depth_zbuffer": torch.zeros(x.shape[0], 1, 4, 4)}


class NoMetrics:
    def reset(self):
        pass

    def update(self, preds, batch):
        pass

    def compute(self):
        return {}


def test_validation_loss_per_sample_or_as_the_reference_per_batch():
    # two batches: 3 samples with target 1, then 1 sample with target 5 (L1 loss of a zero prediction = target)
    batches = [{"input": torch.zeros(n, 3, 4, 4), "depth_zbuffer": torch.full((n, 1, 4, 4), v),
                "depth_zbuffer_mask": torch.ones(n, 1, 4, 4, dtype=torch.bool)} for n, v in ((3, 1.0), (1, 5.0))]
    args = (Constant(), batches, ("depth_zbuffer",), NoMetrics(), torch.device("cpu"))
    per_sample = evaluate(*args)["losses"]["depth_zbuffer"]
    per_batch = evaluate(*args, loss_mean="batch")["losses"]["depth_zbuffer"]
    assert per_sample == pytest.approx((3 * 1.0 + 5.0) / 4)
    assert per_batch == pytest.approx((1.0 + 5.0) / 2)


def test_adaptive_weights_in_float64_follow_the_reference_arithmetic():
    torch.manual_seed(0)
    losses = [torch.rand(3) + 0.5 for _ in range(12)]
    w64 = AdaptiveWeighting(("a", "b", "c"), begin=2, window=3, total=3.0, dtype=torch.float64)
    w32 = AdaptiveWeighting(("a", "b", "c"), begin=2, window=3, total=3.0)
    # the reference: Python floats (float64) for the relative changes, their window mean and the normalisation
    prev, window, ref = None, [], [1.0, 1.0, 1.0]
    for it, loss in enumerate(losses):
        got64, got32 = w64.update(loss, it), w32.update(loss, it)
        values = [float(v) for v in loss.float()]
        if it >= 2:
            if prev is not None:
                window = (window + [[abs(p - v) / v for p, v in zip(prev, values)]])[-3:]
                if it - 2 > 3:
                    ref = [sum(col) / 3 for col in zip(*window)]
            prev = values
        ref = [r * 3.0 / sum(ref) for r in ref]
        assert w64.weights.dtype == torch.float64 and got64.dtype == torch.float32  # the loss is weighted in fp32
        assert w64.weights.tolist() == pytest.approx(ref, abs=1e-12)
        assert got32.tolist() == pytest.approx(ref, abs=1e-6)


def test_selection_score_weights_tasks_by_priority():
    dirs = metric_directions("nyuv2", ("segment_semantic", "depth_zbuffer"))
    ref = {"segment_semantic": {"mIoU": 0.5, "Pixel Acc": 0.5},
           "depth_zbuffer": {"abs_err": 1.0, "rel_err": 1.0, "sigma_1.25": 50.0, "sigma_1.25^2": 50.0,
                             "sigma_1.25^3": 50.0}}
    better_seg = {**ref, "segment_semantic": {"mIoU": 0.6, "Pixel Acc": 0.6}}
    plain = selection_score(better_seg, ref, dirs)
    favoured = selection_score(better_seg, ref, dirs, task_priority={"segment_semantic": 3.0, "depth_zbuffer": 1.0})
    assert favoured > plain > 1.0


def test_the_trainers_reference_score_uses_the_task_priority():

    from main.config import Config
    from main.scores import NYUV2_REFERENCE_SCORES
    from main.validation import selection_rule

    tasks = ("segment_semantic", "normal", "depth_zbuffer")
    refs = NYUV2_REFERENCE_SCORES["resnet34"]
    better_seg = {**refs, "segment_semantic": {k: v * 1.1 for k, v in refs["segment_semantic"].items()}}

    def value(priority):
        rule = selection_rule(Config(select_by="score", priority=priority), tasks, metric_directions("nyuv2", tasks))
        return rule({"metrics": better_seg})

    assert value([3.0, 1.0, 1.0]) > value(None) == value([1.0, 1.0, 1.0])
