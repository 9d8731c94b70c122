"""``--sparsity_control budget`` (the controller) and ``--threshold_scope global`` (the one-threshold ablation)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import main.cli.test as test_script
import main.cli.train as baseline
from main.checkpoint import load_checkpoint
from main.config import Config, ConfigError
from main.models import build_model
from main.sparsity_control import BudgetController

CKPT = "segment_semantic_normal_depth_zbuffer.model"


def train(flags: list[str]) -> None:
    assert baseline.main(flags) == 0


def test_ramps_start_at_the_initial_sparsity_and_end_on_target():
    for mode, mid in (("track", 0.9 - 0.7 * 0.5 ** 3), ("band", 0.9 - 0.7 * 0.5)):
        c = BudgetController(ratio=0.9, iters=100, ramp=0.5, gain=2.0, max_step=0.1, total=1000, mode=mode)
        c.initial = 0.2
        assert c.target(0) == pytest.approx(0.2)
        assert c.target(25) == pytest.approx(mid)  # cubic (track) vs linear floor (band)
        assert c.target(50) == pytest.approx(0.9) and c.target(99) == pytest.approx(0.9)


def test_track_mode_moves_every_threshold_by_the_clipped_error():
    s = nn.ParameterDict({"a": nn.Parameter(torch.tensor(-5.0)), "b": nn.Parameter(torch.tensor(-7.0))})
    c = BudgetController(ratio=0.5, iters=10, ramp=0.0, gain=2.0, max_step=0.1, total=100, mode="track")
    c.step(s, torch.tensor([30, 50]), iteration=1)  # 20 % sparse, target 50 %: error 0.3 -> 0.6 clipped to 0.1
    assert c.initial == pytest.approx(0.2)
    assert s["a"].item() == pytest.approx(-4.9) and s["b"].item() == pytest.approx(-6.9)
    c.step(s, torch.tensor([24, 24]), iteration=2)  # 52 % sparse: error -0.02 -> -0.04, s moves down
    assert s["a"].item() == pytest.approx(-4.94) and s["b"].item() == pytest.approx(-6.94)
    assert BudgetController(0.5, 10, 0.0, 2.0, 0.1, 100).target(0) == 0.5  # before the first step: the target


def test_band_mode_acts_only_outside_the_band():
    s = nn.ParameterDict({"a": nn.Parameter(torch.tensor(-5.0))})
    c = BudgetController(ratio=0.9, iters=100, ramp=1.0, gain=2.0, max_step=0.1, total=100, integral_gain=0.1)
    c.step(s, torch.tensor([90]), iteration=0)  # starts at 10 %: on the floor, inside the band
    assert s["a"].item() == pytest.approx(-5.0)
    c.step(s, torch.tensor([40]), iteration=50)  # 60 %: above the floor (50 %), below the ceiling: free
    assert s["a"].item() == pytest.approx(-5.0)
    c.step(s, torch.tensor([70]), iteration=50)  # 30 %: 20 points behind the floor -> pushed up (clipped)
    assert s["a"].item() == pytest.approx(-4.9)
    c.step(s, torch.tensor([8]), iteration=60)  # 92 %: above --ratio -> pulled down by P and I terms
    assert s["a"].item() == pytest.approx(-4.9 + 2.0 * -0.02 + 0.1 * (0.2 - 0.02))
    c.step(s, torch.tensor([30]), iteration=60)  # 70 %: back inside the band: no action, integral kept
    assert s["a"].item() == pytest.approx(-4.9 + 2.0 * -0.02 + 0.1 * (0.2 - 0.02))


def test_budget_control_lands_near_a_low_target_the_stop_rule_overshoots(tmp_path, tiny_flags):
    # A high initial threshold prunes most weights at once: the stop rule just freezes there, far past 50 %;
    # the controller brings the thresholds down to the target.
    common = tiny_flags + ["--iters", "24", "--ratio", "0.5", "--sInit_value", "-3.5"]
    train(common + ["--save_dir", str(tmp_path / "stop")])
    train(common + ["--save_dir", str(tmp_path / "budget"), "--sparsity_control", "budget"])
    stop = json.loads((tmp_path / "stop" / "sparsity.json").read_text())["overall"]
    budget = json.loads((tmp_path / "budget" / "sparsity.json").read_text())["overall"]
    assert stop > 0.6
    assert abs(budget - 0.5) < 0.03, budget
    state = load_checkpoint(tmp_path / "budget" / CKPT)
    assert state["controller"]["initial"] is not None and state["config"]["sparsity_control"] == "budget"


def test_budget_control_resumes_exactly(tmp_path, tiny_flags):
    flags = tiny_flags + ["--sparsity_control", "budget", "--ratio", "0.7"]
    train(flags + ["--iters", "8", "--save_dir", str(tmp_path / "full")])
    train(flags + ["--iters", "4", "--save_dir", str(tmp_path / "half")])
    train(["--save_dir", str(tmp_path / "half"), "--resume", "--iters", "8"])
    a, b = load_checkpoint(tmp_path / "full" / CKPT), load_checkpoint(tmp_path / "half" / CKPT)
    assert a["controller"] == b["controller"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_global_scope_has_one_threshold_for_every_component():
    model = build_model("resnet34", {"segment_semantic": 5, "normal": 3}, 0.0625, -5.0, threshold_scope="global")
    assert list(model.thresholds) == ["shared"]
    taus = model.taus()
    assert set(taus) == {"backbone", "segment_semantic", "normal"}
    assert len({t.item() for t in taus.values()}) == 1
    assert model.threshold_param("normal") is model.thresholds["shared"]


def test_global_scope_trains_and_evaluates(tmp_path, tiny_flags):
    run = tmp_path / "global"
    train(tiny_flags + ["--iters", "4", "--threshold_scope", "global", "--save_dir", str(run)])
    state = load_checkpoint(run / CKPT)
    assert [k for k in state["state_dict"] if k.startswith("thresholds.")] == ["thresholds.shared"]
    assert float(state["state_dict"]["thresholds.shared"]) != -4.5  # it learned
    assert test_script.main(["--path", str(run / CKPT), "--json", str(tmp_path / "g.json"), "--progress", "off"]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["sparsity"]["overall"] > 0.0


@pytest.mark.parametrize("key,value", [("sparsity_control", "pid"), ("threshold_scope", "layer"),
                                       ("budget_ramp", 1.5), ("budget_gain", 0.0)])
def test_bad_control_options_are_refused(key, value):
    cfg = Config()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=key):
        cfg.check()
