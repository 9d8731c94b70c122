"""Architectures: the reference's exact thresholded-weight counts and output sizes at width 1."""

from __future__ import annotations

import pytest
import torch

from main.models import build_model
from main.sparse import SoftThresholdConv2d, SparsityCounter

NYU = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
TASKONOMY = {"segment_semantic": 17, "normal": 3, "depth_zbuffer": 1, "keypoints2d": 1, "edge_texture": 1}


def component_totals(model) -> dict[str, int]:
    counter = SparsityCounter(model.components())
    totals: dict[str, int] = {}
    for (comp, _, _), n in zip(counter.layers, counter.totals):
        totals[comp] = totals.get(comp, 0) + n
    return totals


def test_resnet34_counts_match_reference():
    totals = component_totals(build_model("resnet34", NYU))
    assert totals == {"backbone": 21_267_648, "segment_semantic": 23_232_512, "normal": 23_080_960,
                      "depth_zbuffer": 23_072_768}


def test_mobilenetv2_and_taskonomy_counts_match_reference():
    totals = component_totals(build_model("mobilenetv2", TASKONOMY))
    assert totals["backbone"] == 2_189_760
    assert totals["segment_semantic"] == 51_449_856
    assert totals["keypoints2d"] == totals["edge_texture"] == 51_384_320
    assert sum(totals.values()) == 259_185_088


def test_layer_counts():
    resnet = build_model("resnet34", NYU)
    mobile = build_model("mobilenetv2", NYU)
    per_comp = {c: sum(isinstance(m, SoftThresholdConv2d) for m in mod.modules()) for c, mod in resnet.components()}
    assert per_comp == {"backbone": 36, "segment_semantic": 12, "normal": 12, "depth_zbuffer": 12}
    assert sum(isinstance(m, SoftThresholdConv2d) for m in mobile.backbone.modules()) == 52


@pytest.mark.parametrize("arch,side", [("resnet34", 41), ("mobilenetv2", 11)])
def test_output_resolution_321(arch, side):
    model = build_model(arch, NYU, s_init=-30.5).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 321, 321))
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (1, c, side, side) for t, c in NYU.items()}


def test_resnet34_224_gives_29():
    model = build_model("resnet34", {"normal": 3}, width_mult=0.25).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224))["normal"].shape[-2:] == (29, 29)


def test_thresholds_registered_once_and_safetensors_saves(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model("resnet34", NYU, width_mult=0.125, s_init=-7.0)
    keys = [k for k in model.state_dict() if "threshold" in k]
    assert sorted(keys) == sorted(f"thresholds.{c}" for c in ("backbone", *NYU))
    names = [n for n, _ in model.named_parameters() if "threshold" in n]
    assert len(names) == 4
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert float(loaded["thresholds.backbone"]) == -7.0


def test_width_mult_scales_heads_and_backbone():
    small = component_totals(build_model("resnet34", NYU, width_mult=0.25))
    full = component_totals(build_model("resnet34", NYU))
    assert 0.04 < small["backbone"] / full["backbone"] < 0.08  # ~1/16 for a 1/4 width
    assert small["normal"] < full["normal"] / 10


def test_resnet_init_is_normal_001():
    model = build_model("resnet34", NYU, width_mult=0.5)
    w = model.backbone.layer3[0].conv1.weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.001 and abs(float(w.mean())) < 0.001


def test_bias_and_batchnorm_never_thresholded():
    model = build_model("resnet34", NYU, width_mult=0.125, s_init=10.0)  # tau ~ 1: every weight pruned
    head = model.heads["normal"]
    with torch.no_grad():
        head.fc1.conv3.bias.fill_(0.5)
        out = model(torch.randn(2, 3, 32, 32))
    # all conv weights are zero, so each branch outputs its classifier bias; four branches are summed
    assert torch.allclose(out["normal"], torch.full_like(out["normal"], 0.5) + sum(
        getattr(head, f"fc{i}").conv3.bias.view(1, -1, 1, 1) for i in (2, 3, 4)))
