"""Compaction (``python -m main.export --compact``): dead channels removed physically, outputs kept within 1e-4."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import main.cli.test as test_script
import main.cli.train as baseline
from main.channel_groups import channel_groups
from main.checkpoint import load_checkpoint, model_from_checkpoint
from main.compact_arch import FoldedConv2d, compact_spec
from main.compaction import compact_model, count_params, max_difference
from main.errors import UserError
from main.export import main as export_main
from main.models import build_model

CKPT = "segment_semantic_normal_depth_zbuffer.model"
CHANNELS = {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}
TOL = 1e-4


def tiny(arch: str, seed: int = 0):
    """A tiny model whose BatchNorms have non-trivial statistics and β, so a dead channel carries a constant."""
    torch.manual_seed(seed)
    model = build_model(arch, CHANNELS, width_mult=0.0625, sparse=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 1.0, generator=g)
    return model.eval()


def zero_rows(model, path: str, rows) -> None:
    with torch.no_grad():
        model.get_submodule(path).weight[rows] = 0


@pytest.fixture(scope="module")
def test_split():
    """Two batches of the synthetic test split (32x32), the inputs outputs must agree on."""
    from main.data.synthetic import SyntheticScenes

    ds = SyntheticScenes("test", size=32, length=8)
    return [torch.stack([ds[i]["input"] for i in range(j * 4, j * 4 + 4)]) for j in range(2)]


def assert_same_outputs(a, b, batches) -> None:
    for x in batches:
        assert max_difference(a, b, x) <= TOL


def widths(model) -> dict:
    return compact_spec(model)["convs"]


# ------------------------------------------------------------------------------------------------ groups
def test_dependency_graph_couples_residuals_depthwise_and_heads():
    r = channel_groups(tiny("resnet34"), torch.randn(1, 3, 32, 32))
    stem = next(g for g in r if "backbone.conv1" in g.writers)
    assert set(stem.writers) == {"backbone.conv1", *(f"backbone.layer1.{i}.conv2" for i in range(3))}
    assert {"backbone.layer2.0.conv1", "backbone.layer2.0.downsample.0"} <= set(stem.readers)
    last = next(g for g in r if "backbone.layer4.0.downsample.0" in g.writers)
    assert sum(p.endswith(".conv1") and p.startswith("heads.") for p in last.readers) == 12
    m = channel_groups(tiny("mobilenetv2"), torch.randn(1, 3, 32, 32))
    hidden = next(g for g in m if "backbone.features.2.conv.0" in g.writers)
    assert hidden.depthwise == ("backbone.features.2.conv.3",) and hidden.readers == ("backbone.features.2.conv.6",)
    assert any(len(g.writers) == 3 for g in m)  # a run of residual inverted-residual blocks


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_compaction_keeps_outputs_and_shrinks(arch, test_split):
    model = tiny(arch)
    g = torch.Generator().manual_seed(3)
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not path.endswith("conv3"):
            zero_rows(model, path, torch.rand(m.out_channels, generator=g) < 0.4)
    small, report = compact_model(model)
    assert_same_outputs(model, small, test_split)
    assert count_params(small) < 0.7 * count_params(model)
    assert sum(r for r, _ in report["removed_channels"].values()) > 0
    assert any(isinstance(m, FoldedConv2d) for m in small.modules())


def test_a_channel_dead_in_only_some_residual_members_is_kept(test_split):
    model = tiny("resnet34")
    writers = ["backbone.layer2.0.downsample.0"] + [f"backbone.layer2.{i}.conv2" for i in range(4)]
    for path in writers[:-1]:
        zero_rows(model, path, [1])
    small, _ = compact_model(model)
    assert widths(small)["backbone.layer2.0.conv2"] == widths(model)["backbone.layer2.0.conv2"]
    zero_rows(model, writers[-1], [1])  # now dead in every member: removed from the whole stage
    small, _ = compact_model(model)
    w = widths(small)
    assert all(w[p][1] == 7 for p in writers) and w["backbone.layer3.0.downsample.0"][0] == 7
    assert_same_outputs(model, small, test_split)


def test_a_zero_depthwise_row_kills_a_mobilenet_hidden_channel(test_split):
    model = tiny("mobilenetv2")
    zero_rows(model, "backbone.features.2.conv.3", [0, 3])  # depthwise rows; the expansion rows stay alive
    zero_rows(model, "backbone.features.4.conv.0", [1])  # a dead expansion row alone: the dw still reads 2 ≠ 0
    with torch.no_grad():
        model.backbone.features[4].conv[1].running_mean[1] = 0.0
        model.backbone.features[4].conv[1].bias[1] = 2.0
    small, _ = compact_model(model)
    w, full = widths(small), widths(model)
    assert w["backbone.features.2.conv.0"][1] == full["backbone.features.2.conv.0"][1] - 2
    assert w["backbone.features.2.conv.3"][2] == full["backbone.features.2.conv.3"][2] - 2  # groups follow
    assert w["backbone.features.4.conv.0"] == full["backbone.features.4.conv.0"]
    assert_same_outputs(model, small, test_split)


def test_a_constant_aspp_branch_is_removed(test_split):
    model = tiny("resnet34")
    zero_rows(model, "heads.normal.fc2.conv2", slice(None))  # fc2 now outputs a constant (its biases)
    small, report = compact_model(model)
    assert small.heads["normal"].branch_names == ("fc1", "fc3", "fc4")
    assert report["removed_branches"] == ["heads.normal.fc2"]
    assert_same_outputs(model, small, test_split)


def test_constants_fold_exactly_through_padded_and_dilated_convs(test_split):
    """A zero conv row after BatchNorm (β ≠ 0) + ReLU is a constant channel; its readers are 3x3 convs (dilation 2
    and 4) and the dilated ASPP convs, where zero padding makes the contribution position dependent."""
    model = tiny("resnet34")
    zero_rows(model, "backbone.layer3.0.conv1", [0, 2])
    for path in ["backbone.layer4.0.downsample.0"] + [f"backbone.layer4.{i}.conv2" for i in range(3)]:
        zero_rows(model, path, [5])
    with torch.no_grad():
        model.backbone.layer3[0].bn1.bias[[0, 2]] = 0.7
        for bn in (model.backbone.layer4[0].downsample[1], *(b.bn2 for b in model.backbone.layer4)):
            bn.bias[5] = 0.5
    small, _ = compact_model(model)
    folded = {n for n, m in small.named_modules() if isinstance(m, FoldedConv2d)}
    assert {"backbone.layer3.0.conv2", "backbone.layer4.1.conv1", "heads.normal.fc4.conv1"} <= folded
    plane = small.get_submodule("heads.normal.fc1.conv1").constant_map(torch.zeros(1, 1, 16, 16))
    assert not torch.allclose(plane[..., 0, 0], plane[..., 8, 8])  # borders differ: a bias alone would be wrong
    assert_same_outputs(model, small, test_split)
    again, _ = compact_model(small)  # a compact model compacts to itself (its folds carried over)
    assert widths(again) == widths(small)
    assert_same_outputs(model, again, test_split)


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_a_model_without_dead_filters_compacts_to_the_same_model(arch, test_split):
    model = tiny(arch)
    small, report = compact_model(model)
    assert count_params(small) == count_params(model) and widths(small) == widths(model)
    assert not any(isinstance(m, FoldedConv2d) for m in small.modules())
    for x in test_split:
        assert max_difference(model, small, x) == 0.0


def test_structured_masks_compact_like_the_structured_export(test_split):
    """A Taylor / CosPrune-style checkpoint (zero rows, zero γ and β): the same filters go as in SOTA's export."""
    from main.channel_masks import ChannelMasks
    from main.masks import MaskSet

    model = tiny("resnet34")
    channels = ChannelMasks(model)
    channels.remove({u.name: torch.tensor([0, 1]) for u in channels.units[:5]})
    channels.install(MaskSet(model))
    small, _ = compact_model(model)
    for u in channels.units[:5]:
        assert widths(small)[u.name][1] == u.channels - 2
    assert_same_outputs(model, small, test_split)


def test_the_compact_architecture_rebuilds_at_random_init_and_trains(test_split):
    """What re-training from random init (issue 16, item 1) builds on: the widths alone rebuild the model."""
    from main.compact_arch import apply_compact_spec

    model = tiny("resnet34")
    zero_rows(model, "backbone.layer3.0.conv1", [0, 2])
    zero_rows(model, "heads.normal.fc2.conv2", slice(None))
    spec = compact_spec(compact_model(model)[0])
    fresh = apply_compact_spec(build_model("resnet34", CHANNELS, width_mult=0.0625, s_init=-6.0), spec)
    assert compact_spec(fresh) == spec and fresh.sparse
    loss = sum(v.square().mean() for v in fresh.train()(test_split[0]).values())
    loss.backward()
    assert all(p.grad is not None for n, p in fresh.named_parameters() if n.endswith("conv2.weight"))
    assert fresh.thresholds["backbone"].grad is not None


# ------------------------------------------------------------------------------------------------ CLI
def test_compact_cli_writes_a_checkpoint_test_py_evaluates(tmp_path, tiny_flags):
    run = tmp_path / "s"
    assert baseline.main(tiny_flags + ["--iters", "2", "--save_dir", str(run), "--sInit_value", "-3.5"]) == 0
    small = tmp_path / "small.model"
    assert export_main(["--path", str(run / CKPT), "--compact", "--out", str(small)]) == 0
    state = load_checkpoint(small)
    info = state["compaction"]
    assert info["params_after"] < info["params_before"] and info["max_difference"] <= TOL
    _, rebuilt = model_from_checkpoint(state, str(small), torch.device("cpu"))
    assert count_params(rebuilt) == info["params_after"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert test_script.main(["--path", str(run / CKPT), "--json", str(a), "--progress", "off"]) == 0
    assert test_script.main(["--path", str(small), "--json", str(b), "--progress", "off"]) == 0
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    for task, losses in ja["losses"].items():
        assert abs(losses - jb["losses"][task]) <= 1e-4
    assert jb["params"]["total"] < ja["params"]["total"] and jb["flops"]["dense"] < ja["flops"]["dense"]
    # the compact model exports (sparse) and that export evaluates too
    exported = tmp_path / "small.safetensors"
    assert export_main(["--path", str(small), "--out", str(exported)]) == 0
    assert test_script.main(["--path", str(exported), "--progress", "off"]) == 0


@pytest.mark.parametrize("case", ["safetensors_out", "missing", "out_is_input", "not_a_checkpoint"])
def test_compact_cli_refuses_bad_input_in_one_line(tmp_path, case):
    junk = tmp_path / "junk.model"
    junk.write_text("not a checkpoint")
    args = {"safetensors_out": ["--path", str(junk), "--out", str(tmp_path / "x.safetensors")],
            "missing": ["--path", str(tmp_path / "nope.model"), "--out", str(tmp_path / "x.model")],
            "out_is_input": ["--path", str(junk), "--out", str(junk)],
            "not_a_checkpoint": ["--path", str(junk), "--out", str(tmp_path / "x.model")]}[case]
    with pytest.raises(UserError) as e:
        export_main(args + ["--compact"])
    assert "\n" not in str(e.value)


def test_a_compacted_model_trains_from_random_init_and_resumes(tmp_path, tiny_flags):
    """Issue 16 item 1 on a compact checkpoint: ``finetune.py --reinit`` trains the compacted architecture from a
    fresh initialisation with the ordinary training loop; its checkpoints carry the widths, so it resumes."""
    import main.cli.finetune as finetune

    run = tmp_path / "s"
    assert baseline.main(tiny_flags + ["--iters", "2", "--save_dir", str(run), "--sInit_value", "-3.5"]) == 0
    small = tmp_path / "small.model"
    assert export_main(["--path", str(run / CKPT), "--compact", "--out", str(small)]) == 0
    compact = load_checkpoint(small)
    scratch = tmp_path / "scratch"
    assert finetune.main(["--load_checkpoint", str(small), "--reinit", "--iters", "2", "--save_dir", str(scratch),
                          "--progress", "off"]) == 0
    trained = load_checkpoint(scratch / CKPT)
    assert trained["compact"] == compact["compact"]
    assert {k: v.shape for k, v in trained["state_dict"].items()} == {k: v.shape for k, v in
                                                                      compact["state_dict"].items()}
    conv = next(k for k in compact["state_dict"] if k.endswith("conv1.weight"))
    assert not torch.equal(trained["state_dict"][conv], compact["state_dict"][conv])  # fresh weights
    assert finetune.main(["--save_dir", str(scratch), "--resume", "--iters", "3", "--progress", "off"]) == 0
    resumed = load_checkpoint(scratch / CKPT)
    assert resumed["iter"] == 3 and resumed["compact"] == compact["compact"]
    _, model = model_from_checkpoint(resumed, str(scratch / CKPT), torch.device("cpu"))
    assert count_params(model) == compact["compaction"]["params_after"]
    # AdapMTL continued on the compact model (--reload: its weights, thresholds reset) keeps the widths too
    again = tmp_path / "again"
    assert baseline.main(tiny_flags + ["--iters", "2", "--reload", str(small), "--save_dir", str(again)]) == 0
    assert load_checkpoint(again / CKPT)["compact"] == compact["compact"]
