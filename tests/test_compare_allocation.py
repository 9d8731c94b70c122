"""The allocation evidence of the comparison report: init scales keyed as test.py keys layers, ρ, the section."""

from __future__ import annotations

import json

import pytest
import torch

from bench import compare, compare_allocation, compare_report
from main.cli.args import parse_args
from main.data import dataset_info
from main.models import model_for
from main.sparse import SparsityCounter, sparse_convs
from tests.test_compare import fake_result


def quick_plan(tmp_path, arch: str, *extra: str) -> compare.Plan:
    return compare.Plan(compare.parse(["--quick", "--architectures", arch, "--logs", str(tmp_path),
                                       *(["--extra", *extra] if extra else [])]))


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_init_scales_cover_exactly_the_layers_test_py_reports(tmp_path, arch):
    plan = quick_plan(tmp_path, arch)
    scales = compare_allocation.layer_init_scales(plan, arch)
    cfg, _ = parse_args(plan.base(arch, 0, tmp_path / "run", None, plan.T))
    model = model_for(cfg, dataset_info(cfg).task_channels, sparse=False)
    counter = SparsityCounter(model.components())
    layers = counter.report(counter.count()).layers
    assert set(scales) == set(layers)
    assert all(std > 0 and count == layers[name][1] for name, (std, count, _) in scales.items())


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_dead_tap_fraction_is_the_share_of_kernel_taps_that_never_get_a_gradient(tmp_path, arch):
    """Independent check: backpropagate through the model at the protocol's crop and count, per layer, the kernel
    taps whose gradient is exactly zero for every weight (they only ever multiply zero padding)."""
    plan = quick_plan(tmp_path, arch, "--aspp_rates", "6", "12", "18", "24")  # the reference rates: dead taps
    scales = compare_allocation.layer_init_scales(plan, arch)
    cfg, _ = parse_args(plan.base(arch, 0, tmp_path / "run", None, plan.T))
    torch.manual_seed(1)
    model = model_for(cfg, dataset_info(cfg).task_channels, sparse=False).eval()
    out = model(torch.randn(2, 3, cfg.crop_size, cfg.crop_size))
    sum(o.square().sum() for o in out.values()).backward()
    dead_somewhere = False
    for cname, module in model.components():
        for lname, conv in sparse_convs(module):
            grad = conv.weight.grad.abs().sum(dim=(0, 1))  # per kernel tap
            measured = float((grad == 0).float().mean())
            assert scales[f"{cname}.{lname}"][2] == pytest.approx(measured), (cname, lname)
            dead_somewhere |= measured > 0
    assert dead_somewhere  # at the tiny smoke-test crop the reference rates leave ASPP taps in the padding


def test_correlation_is_minus_one_when_small_init_layers_end_sparsest():
    scales = {"backbone.a": (0.5, 10), "backbone.b": (0.1, 10), "normal.c": (0.01, 10), "normal.d": (0.2, 10)}
    # sparsity falls as the init std rises: a perfect negative rank correlation
    result = {"sparsity": {"layers": {"backbone.a": 0.1, "backbone.b": 0.6, "normal.c": 0.99, "normal.d": 0.3}}}
    assert compare_allocation.init_scale_correlation(result, scales) == pytest.approx(-1.0)
    flat = {"sparsity": {"layers": dict.fromkeys(scales, 0.9)}}  # no variation: no correlation to speak of
    assert compare_allocation.init_scale_correlation(flat, scales) is None
    assert compare_allocation.init_scale_correlation({"sparsity": {}}, scales) is None


def test_section_prints_shares_correlations_and_threshold_range(tmp_path):
    plan = quick_plan(tmp_path, "resnet34")
    scales = compare_allocation.layer_init_scales(plan, "resnet34")
    names = sorted(scales, key=lambda n: scales[n][0])
    runs_dir = plan.root / "runs" / "resnet34"
    runs_dir.mkdir(parents=True)
    book = {}
    for seed, tau in ((0, 0.003), (1, 0.005)):
        result = fake_result(0.0)
        # the smaller a layer's init std, the sparser it ends: ρ = -1
        result["sparsity"]["layers"] = {n: 1.0 - scales[n][0] for n in names}
        result["thresholds"] = {"backbone": tau, "normal": 2 * tau}
        key = f"adapmtl_sp90_seed{seed}"
        (runs_dir / f"{key}.json").write_text(json.dumps(result))
        book[f"resnet34/{key}"] = {"architecture": "resnet34", "method": "adapmtl", "target": 90, "seed": seed,
                                   "commands": ["python x"]}
    (plan.root / "cells.json").write_text(json.dumps(book))
    groups = compare_report.group_runs(compare_report.load_runs(plan.root))
    md = "\n".join(compare_allocation.allocation_section(groups, plan))
    total = sum(c for _, c, _ in scales.values())
    backbone = sum(c for n, (_, c, _) in scales.items() if n.startswith("backbone."))
    dead = sum(c * d for _, c, d in scales.values())
    assert f"backbone {100 * backbone / total:.1f}%" in md
    assert f"zero padding at this crop: {100 * dead / total:.1f}% of all weights" in md
    assert "| AdapMTL (stop rule) | -1.00 (-1.00 to -1.00) | 0.0030–0.0100 | 2 |" in md
    assert f"stop rule {torch.sigmoid(torch.tensor(compare.REFERENCE_CONTROL[90][0])).item():.4f}" in md
