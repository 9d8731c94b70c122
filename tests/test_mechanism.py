"""AdapMTL's mechanism can act: the thresholds' travel option, ASPP rates that fit the maps, uniform pruning, and the
measurements that say whether the thresholds moved and when the sparsity settled."""

from __future__ import annotations

import json

import pytest
import torch

import main.cli.train as baseline
import SOTA_methods.cli as pruning
from bench import compare
from bench.compare_allocation import layer_init_scales
from bench.mechanism import settle_iteration, spread, summarise, trace
from main.config import Config
from main.models import build_model, model_for
from main.optimizer import REFERENCE_NYUV2_TRAVEL, build_optimizer, build_scheduler, schedule_travel

CKPT = "segment_semantic_normal_depth_zbuffer.model"
NYU = {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}


@pytest.mark.parametrize("lr,iters,step,gamma", [(1e-3, 20000, 4000, 0.5), (1e-3, 1200, 300, 0.4),
                                                 (5e-4, 1001, 7, 0.9), (2e-3, 5, 10, 0.3)])
def test_schedule_travel_is_the_sum_of_steplr_learning_rates(lr, iters, step, gamma):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step, gamma)
    total = 0.0
    for _ in range(iters):
        total += opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert schedule_travel(lr, iters, step, gamma) == pytest.approx(total, rel=1e-9)


def test_reference_schedule_travel_is_7_75():
    assert schedule_travel(1e-3, 20000, 4000, 0.5) == pytest.approx(REFERENCE_NYUV2_TRAVEL)


def test_threshold_travel_gives_the_thresholds_that_sum_of_learning_rates_under_any_schedule():
    cfg = Config(lr=7e-4, iters=300, decay_lr_freq=70, decay_lr_rate=0.4, threshold_travel=3.5, dense=False)
    model = build_model("resnet34", NYU, width_mult=0.0625, s_init=-6.0)
    opt = build_optimizer(cfg, model)
    weights, thresholds = opt.param_groups
    assert {id(p) for p in thresholds["params"]} == {id(p) for p in model.thresholds.parameters()}
    assert len(weights["params"]) + len(thresholds["params"]) == len(list(model.parameters()))
    assert weights["weight_decay"] == thresholds["weight_decay"] == cfg.weight_decay  # coupled L2 on both
    sched = build_scheduler(cfg, opt)
    seen = [0.0, 0.0]
    for _ in range(cfg.iters):
        seen = [s + g["lr"] for s, g in zip(seen, opt.param_groups)]
        opt.step()
        sched.step()
    assert seen[1] == pytest.approx(3.5, rel=1e-9)
    assert seen[0] == pytest.approx(schedule_travel(cfg.lr, cfg.iters, cfg.decay_lr_freq, cfg.decay_lr_rate))


def test_without_threshold_travel_the_reference_single_group_stays():
    model = build_model("resnet34", NYU, width_mult=0.0625, s_init=-6.0)
    for cfg in (Config(), Config(threshold_travel=7.75, dense=True)):
        opt = build_optimizer(cfg, model)
        assert len(opt.param_groups) == 1 and opt.param_groups[0]["betas"] == (0.5, 0.999)


def test_bad_travel_and_rates_are_refused():
    from main.config import ConfigError

    for bad in ({"threshold_travel": 0.0}, {"threshold_travel": -1.0}, {"aspp_rates": []}, {"aspp_rates": [0, 2]}):
        with pytest.raises(ConfigError):
            Config(**bad).check()


def test_aspp_rates_set_every_branch_and_travel_with_the_config():
    cfg = Config(aspp_rates=[1, 2, 3, 4], width_mult=0.0625)
    model = model_for(cfg, NYU)
    for head in model.heads.values():
        assert [getattr(head, f"fc{i}").conv1.dilation for i in range(1, 5)] == [(1, 1), (2, 2), (3, 3), (4, 4)]
        assert [getattr(head, f"fc{i}").conv1.padding for i in range(1, 5)] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    again = Config.from_dict(cfg.to_dict())
    assert again.aspp_rates == [1, 2, 3, 4]
    old = cfg.to_dict()
    del old["aspp_rates"]  # a checkpoint written before the option: the reference rates, which it was trained with
    assert Config.from_dict(old).aspp_rates == [6, 12, 18, 24]


@pytest.mark.parametrize("arch", compare.ARCHITECTURES)
def test_no_protocol_model_has_taps_that_only_read_padding(tmp_path, arch):
    """The comparison's ASPP rates fit its feature maps: every weight can get a task gradient, on both
    architectures at their own crops (a weight that cannot is pruned for free by every method)."""
    plan = compare.Plan(compare.parse(["--out", str(tmp_path)]))
    scales = layer_init_scales(plan, arch)
    assert scales and all(dead == 0.0 for _, _, dead in scales.values())
    reference = compare.Plan(compare.parse(["--out", str(tmp_path), "--extra", "--aspp_rates", "6", "12", "18",
                                            "24"]))
    assert any(dead > 0 for _, _, dead in layer_init_scales(reference, arch).values())  # the check can fail


def test_uniform_prunes_every_component_to_the_target(tmp_path, tiny_flags):
    dense = tmp_path / "dense"
    assert baseline.main(tiny_flags + ["--iters", "2", "--dense", "--save_dir", str(dense)]) == 0
    out = tmp_path / "uniform"
    assert pruning.main(["--load_checkpoint", str(dense / CKPT), "--method", "uniform", "--target", "0.8",
                         "--save_dir", str(out), "--progress", "off"]) == 0
    comps = json.loads((out / "masks.json").read_text())["sparsity"]["components"]
    assert set(comps) == {"backbone", *NYU} and all(abs(v - 0.8) < 1e-3 for v in comps.values())
    magnitude = tmp_path / "magnitude"
    pruning.main(["--load_checkpoint", str(dense / CKPT), "--method", "magnitude", "--target", "0.8",
                  "--save_dir", str(magnitude), "--progress", "off"])
    global_ = json.loads((magnitude / "masks.json").read_text())["sparsity"]["components"]
    assert max(global_.values()) - min(global_.values()) > 0.01  # one global ranking does not allocate uniformly


def test_settle_iteration_and_spread():
    curve = [(10, 5.0), (20, 50.0), (30, 85.0), (40, 90.0), (50, 91.0)]
    assert settle_iteration(curve) == 30  # 85 >= 0.9 * 91
    assert settle_iteration(curve, 0.98) == 40
    assert settle_iteration([]) is None and settle_iteration([(1, 0.0)]) is None
    assert spread({"a": 0.01, "b": 0.03}) == pytest.approx(3.0) and spread({"a": 0.01}) is None


def test_a_run_reports_its_thresholds_travel_and_settling(tmp_path, tiny_flags):
    run = tmp_path / "run"
    assert baseline.main(tiny_flags + ["--iters", "6", "--save_dir", str(run), "--threshold_travel", "2.0",
                                       "--lr", "1e-3", "--decay_lr_freq", "3"]) == 0
    found = trace(run)
    assert found["threshold_sum_lr"] == pytest.approx(2.0)
    assert found["adaptive_start"] == 1 + 2
    assert set(found["travel"]) == {"backbone", *NYU} == set(found["tau"])
    ckpt = torch.load(run / CKPT, weights_only=True)
    for comp, s in ckpt["state_dict"].items():
        if comp.startswith("thresholds."):
            assert found["travel"][comp.split(".", 1)[1]] == pytest.approx(abs(float(s) + 4.5), abs=1e-3)
    assert all(v is not None for v in found["settle"].values())
    row = summarise([found, found])
    assert row["seeds"] == 2 and row["threshold_sum_lr"] == pytest.approx(2.0)
    assert trace(tmp_path / "nothing") is None
