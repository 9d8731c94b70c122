"""Functions that must not change what their callers hand them, and lists that must not depend on import order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from main.compaction import conv_flops, max_difference, write_compact
from main.config import Config
from main.models import model_for
from main.scores import NoReferenceScore, score_references
from main.sparsity_control import StopRule

ROOT = Path(__file__).resolve().parents[1]
NYU = {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}


def test_stop_rule_scalars_are_a_pure_getter():
    rule = StopRule(0.9)
    rule.before_optimizer_step(torch.nn.ParameterDict({"a": torch.nn.Parameter(torch.zeros(()))}), reached=True)
    first, again = rule.scalars(10, 4), rule.scalars(10, 4)
    assert first == again and first["sparsity/frozen_fraction"] == 0.25
    rule.end_interval()
    assert rule.scalars(11, 4)["sparsity/frozen_fraction"] == 0.0


def test_flops_and_output_difference_leave_each_model_in_its_mode():
    cfg = Config(width_mult=0.0625, crop_size=32)
    a, b = model_for(cfg, NYU).train(), model_for(cfg, NYU).eval()
    conv_flops(a, 32)
    max_difference(a, b, torch.zeros(1, 3, 32, 32))
    assert a.training and not b.training


def test_write_compact_leaves_the_callers_config_alone(tmp_path):
    cfg = Config(width_mult=0.0625, crop_size=32, dense=False)
    model = model_for(cfg, NYU)
    model.bake_thresholds()
    write_compact(model.eval(), cfg, tmp_path / "small.model", "src", 0)
    assert cfg.dense is False
    assert torch.load(tmp_path / "small.model", weights_only=True)["config"]["dense"] is True


def test_score_selection_is_refused_where_the_reference_has_no_denominators():
    assert set(score_references("resnet34", ["segment_semantic", "normal"], "nyuv2")) == {"segment_semantic",
                                                                                         "normal"}
    for tasks, style in ((["normal", "keypoints2d"], "nyuv2"), (["segment_semantic"], "taskonomy")):
        with pytest.raises(NoReferenceScore, match="select by loss"):
            score_references("mobilenetv2", tasks, style)


def test_the_one_shot_list_holds_every_module_whatever_was_imported():
    code = ("from SOTA_methods.catalog import one_shot_methods; "
            "print(' '.join(sorted(m.name for m in one_shot_methods())))")
    names = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"magnitude", "uniform", "disparse_pt", "snip", "disparse_static", "random", "taylor", "cosprune"} <= set(
        names)


def test_score_selection_of_tasks_without_reference_scores_is_refused_before_the_run(tmp_path, tiny_flags):
    import main.cli.train as baseline
    from main.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError, match="select by loss"):
        baseline.main(tiny_flags + ["--iters", "1", "--select_by", "score", "--tasks", "normal", "keypoints2d",
                                    "--save_dir", str(run)])
    assert not run.exists()


@pytest.mark.parametrize("how", ["--resume", "--reload"])
def test_weights_are_loaded_once_when_a_run_starts_from_a_checkpoint(tmp_path, tiny_flags, monkeypatch, how):
    import main.cli.train as baseline
    from main.models import MultiTaskModel

    first = tmp_path / "first"
    assert baseline.main(tiny_flags + ["--iters", "2", "--save_dir", str(first)]) == 0
    calls = []
    original = MultiTaskModel.load_state_dict
    monkeypatch.setattr(MultiTaskModel, "load_state_dict",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    if how == "--resume":
        argv = tiny_flags + ["--iters", "3", "--save_dir", str(first), "--resume"]
    else:
        argv = tiny_flags + ["--iters", "1", "--save_dir", str(tmp_path / "second"), "--reload",
                             str(first / "segment_semantic_normal_depth_zbuffer.model")]
    assert baseline.main(argv) == 0
    assert len(calls) == 1
