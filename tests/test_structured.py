"""Structured (filter) pruning: Taylor / CosPrune criteria, channel masks, compact export, CLIs, training schedule."""

from __future__ import annotations

import json

import pytest
import torch

import main.cli.finetune as finetune
import main.cli.train as baseline
import SOTA_methods.cli as pruning
from main.channel_masks import ChannelMasks, filter_units, mask_key
from main.checkpoint import load_checkpoint
from main.config import ConfigError
from main.masks import MaskSet
from main.models import build_model
from SOTA_methods import compact, structured_train
from SOTA_methods.compact import compact_model, count_flops, count_params, rebuild_compact
from SOTA_methods.structured import (
    accumulate_scores,
    prune_structured,
    select_lowest,
)

CKPT = "segment_semantic_normal_depth_zbuffer.model"
TASKS = ("segment_semantic", "normal", "depth_zbuffer")
CHANNELS = {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}
WIDTH = {"resnet34": 0.0625, "mobilenetv2": 0.25}
CPU = torch.device("cpu")


def tiny(arch: str):
    torch.manual_seed(0)
    return build_model(arch, CHANNELS, width_mult=WIDTH[arch], sparse=False)


@pytest.fixture(scope="module")
def batches():
    from main.data.synthetic import SyntheticScenes

    ds = SyntheticScenes("train", size=32, length=8)
    return [{k: torch.stack([ds[i][k] for i in range(j * 4, j * 4 + 4)]) for k in ds[0]} for j in range(2)]


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    from conftest import TINY_FLAGS

    run = tmp_path_factory.mktemp("dense_s")
    assert baseline.main(TINY_FLAGS + ["--iters", "3", "--dense", "--save_dir", str(run)]) == 0
    return run / CKPT


def assert_filters_removed(model, masks, channels):
    """Every removed filter: zero conv rows (chain), zero consumer columns, zero BN gamma and beta (head convs: zero
    bias), mask False; kept filters untouched."""
    mods = dict(model.named_modules())
    for u in channels.units:
        gone = ~channels.keep[u.name]
        for conv in u.convs:
            assert torch.all(mods[conv].weight[gone] == 0) and not masks.masks[mask_key(conv)][gone].any()
            assert torch.all(mods[conv].weight[~gone].flatten(1).abs().sum(1) > 0)
        consumer = mask_key(u.consumer)
        assert torch.all(mods[u.consumer].weight[:, gone] == 0) and not masks.masks[consumer][:, gone].any()
        for bn in u.bns:
            assert torch.all(mods[bn].weight[gone] == 0) and torch.all(mods[bn].bias[gone] == 0)
            assert torch.all(mods[bn].weight[~gone] != 0)
        for conv in u.biases:
            assert torch.all(mods[conv].bias[gone] == 0) and torch.all(mods[conv].bias[~gone] != 0)


def test_filter_units_avoid_residual_adds():
    r = filter_units(tiny("resnet34"))
    assert len(r) == 16 and all(u.name.endswith(".conv1") and u.consumer.endswith(".conv2") for u in r)
    assert "backbone.conv1" not in {u.name for u in r}
    m = filter_units(tiny("mobilenetv2"))
    assert len(m) == 16 and all(len(u.convs) == 2 and u.consumer.endswith(".6") for u in m)
    # full width: the t=1 block has no shortcut, so the stem's channels are a unit too
    full = filter_units(build_model("mobilenetv2", CHANNELS, width_mult=1.0, sparse=False))
    assert full[0].name == "backbone.features.0.0" and full[0].consumer == "backbone.features.1.conv.3"


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
@pytest.mark.parametrize("method", ["taylor", "cosprune"])
def test_one_shot_removes_exactly_the_requested_filters(arch, method, batches):
    model = tiny(arch)
    masks = MaskSet(model)
    out = prune_structured(method, model, masks, 0.3, batches, TASKS, CPU)
    rep = out["structured"]
    channels = ChannelMasks(model)
    channels.load_state_dict(out["channel_masks"])
    assert channels.pruned() == rep["filters_removed"] == round(0.3 * channels.total())
    assert sum(v["total"] - v["kept"] for v in rep["per_layer"].values()) == rep["filters_removed"]
    assert_filters_removed(model, masks, channels)
    assert rep["params_after"] < rep["params_before"] and rep["flops_after"] < rep["flops_before"]
    assert "ratio_meaning" in rep and json.dumps(rep)  # plain types only
    # the structure is recoverable from the masks and zero BNs alone (what trainer checkpoints carry)
    assert torch.equal(torch.cat(list(ChannelMasks.from_model(model, masks).keep.values())),
                       torch.cat(list(channels.keep.values())))
    # a second call at a higher ratio keeps the first removal and adds to it
    more = prune_structured(method, model, masks, 0.5, batches, TASKS, CPU)["channel_masks"]
    assert all(torch.all(more[n] <= k) for n, k in channels.keep.items())
    assert sum(int((~k).sum()) for k in more.values()) == round(0.5 * channels.total())


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_compact_export_matches_masked_model(arch, batches, tmp_path):
    model = tiny(arch)
    masks = MaskSet(model)
    prune_structured("taylor", model, masks, 0.4, batches[:1], TASKS, CPU)
    with torch.no_grad():  # non-trivial BN statistics, so the check covers running mean / var slicing
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    channels = ChannelMasks.from_model(model, masks)
    small = compact_model(model, channels)
    model.eval()
    small.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), small(x)
    for t in TASKS:
        assert a[t].shape == b[t].shape
        assert torch.allclose(a[t], b[t], atol=1e-5, rtol=0), (t, float((a[t] - b[t]).abs().max()))
    assert count_params(small) < count_params(model)
    assert count_flops(small, (1, 3, 32, 32)) < count_flops(model, (1, 3, 32, 32))
    # save / rebuild from plain types
    state = compact.compact_state(small, channels, arch, WIDTH[arch], 0.5, CHANNELS)
    torch.save(state, tmp_path / "s.pt")
    again = rebuild_compact(torch.load(tmp_path / "s.pt", weights_only=True)).eval()
    with torch.no_grad():
        c = again(x)
    assert all(torch.equal(b[t], c[t]) for t in TASKS)


def test_head_units_are_the_aspp_hidden_channels():
    model = tiny("resnet34")
    units = ChannelMasks(model, heads=True).units
    heads = [u for u in units if u.is_head]
    assert len(units) - len(heads) == len(filter_units(model)) and len(heads) == len(TASKS) * 4 * 2
    assert {(u.name.rsplit(".", 1)[1], u.consumer.rsplit(".", 1)[1]) for u in heads} == {("conv1", "conv2"),
                                                                                         ("conv2", "conv3")}
    assert all(u.biases == u.convs and not u.bns for u in heads)


@pytest.mark.parametrize("arch", ["resnet34", "mobilenetv2"])
def test_prune_heads_removes_head_channels_exactly(arch, batches):
    model = tiny(arch)
    masks = MaskSet(model)
    rep = prune_structured("taylor", model, masks, 0.4, batches[:1], TASKS, CPU, heads=True)
    channels = ChannelMasks(model, heads=True)
    channels.load_state_dict(rep["channel_masks"])
    removed = {t: sum(int((~channels.keep[u.name]).sum()) for u in channels.units if u.name.startswith(f"heads.{t}."))
               for t in TASKS}
    assert channels.pruned() == round(0.4 * channels.total()) and all(removed.values()), removed
    assert rep["structured"]["heads"] is True
    assert_filters_removed(model, masks, channels)
    # the structure is found again from the masks and zero biases alone, head units detected
    found = ChannelMasks.from_model(model, masks)
    assert found.heads and {n: k.tolist() for n, k in found.keep.items()} == {n: k.tolist() for n, k in
                                                                             channels.keep.items()}
    # removed head channels emit exactly 0: the physically smaller network computes the same outputs
    small = compact_model(model, channels).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.eval()(x), small(x)
    assert all(torch.allclose(a[t], b[t], atol=1e-5, rtol=0) for t in TASKS)
    assert count_params(small) < count_params(compact_model(model, ChannelMasks.from_model(model, masks, False)))


def test_channel_masks_from_checkpoint_adds_unpruned_heads_on_request(batches):
    model = tiny("resnet34")
    masks = MaskSet(model)
    stored = prune_structured("taylor", model, masks, 0.3, batches[:1], TASKS, CPU)["channel_masks"]
    plain = ChannelMasks.from_checkpoint(model, {"channel_masks": stored}, masks)
    assert not plain.heads and set(plain.keep) == set(stored)
    more = ChannelMasks.from_checkpoint(model, {"channel_masks": stored}, masks, heads=True)
    assert more.heads and more.pruned() == plain.pruned()
    assert all(bool(more.keep[u.name].all()) for u in more.units if u.is_head)
    with pytest.raises(ValueError, match="do not match"):
        ChannelMasks.from_checkpoint(model, {"channel_masks": {**stored, "backbone.nope": torch.ones(3)}}, masks)


def test_cosprune_invariant_to_task_loss_scale(batches):
    model = tiny("resnet34")
    channels = ChannelMasks(model)
    torch.manual_seed(1)  # same head-dropout draws in both passes
    base = accumulate_scores(model, channels, batches, TASKS, "cosprune")
    torch.manual_seed(1)
    scaled = accumulate_scores(model, channels, batches, TASKS, "cosprune", loss_weights={"normal": 10.0})
    for n in base:
        assert torch.allclose(base[n], scaled[n], atol=1e-5)
    pick = select_lowest(base, channels, 20)
    assert {n: v.tolist() for n, v in pick.items()} == {n: v.tolist() for n, v in
                                                        select_lowest(scaled, channels, 20).items()}
    # Taylor, on the other hand, follows the total loss and changes
    torch.manual_seed(1)
    t1 = accumulate_scores(model, channels, batches[:1], TASKS, "taylor")
    torch.manual_seed(1)
    t2 = accumulate_scores(model, channels, batches[:1], TASKS, "taylor", loss_weights={"normal": 10.0})
    assert any(not torch.allclose(t1[n], t2[n]) for n in t1)


def test_pruning_cli_then_finetune_keeps_filters_removed(dense_ckpt, tmp_path):
    for method in ("taylor", "cosprune"):
        out = tmp_path / method
        assert pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", method, "--prune_ratio", "0.25",
                             "--save_dir", str(out), "--num_batches", "1", "--progress", "off"]) == 0
        state = load_checkpoint(out / CKPT)
        removed = sum(int((~k).sum()) for k in state["channel_masks"].values())
        assert removed == state["pruning"]["structured"]["filters_removed"] > 0
        report = json.loads((out / "masks.json").read_text())
        assert report["pruning"]["structured"]["params_after"] < report["pruning"]["structured"]["params_before"]
    ft = tmp_path / "ft"
    assert finetune.main(["--load_checkpoint", str(out / CKPT), "--iters", "2", "--save_dir", str(ft),
                          "--lr", "1e-2"]) == 0
    after = load_checkpoint(ft / CKPT)
    sd = after["state_dict"]
    for name, keep in state["channel_masks"].items():
        block = name.rsplit(".", 1)[0]
        assert torch.all(sd[f"{name}.weight"][~keep] == 0)
        assert torch.all(sd[f"{block}.bn1.weight"][~keep] == 0) and torch.all(sd[f"{block}.bn1.bias"][~keep] == 0)
        assert torch.all(sd[f"{block}.conv2.weight"][:, ~keep] == 0)
    changed = any(not torch.equal(sd[k], state["state_dict"][k]) for k in sd if k.endswith("bn1.weight"))
    assert changed  # the surviving filters trained
    # the compact CLI recovers the structure from the fine-tuned checkpoint (no channel_masks entry there)
    small = tmp_path / "small.pt"
    assert compact.main(["--path", str(ft / CKPT), "--out", str(small)]) == 0
    saved = torch.load(small, weights_only=True)
    assert saved["compact"]["channels"] == {n: int(k.sum()) for n, k in state["channel_masks"].items()}
    assert saved["params"] < saved["params_before"] and saved["flops"] < saved["flops_before"]


def test_prune_heads_cli_then_finetune_keeps_head_channels_removed(dense_ckpt, tmp_path):
    out = tmp_path / "taylor"
    assert pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "taylor", "--prune_heads", "--prune_ratio",
                         "0.3", "--save_dir", str(out), "--num_batches", "1", "--progress", "off"]) == 0
    state = load_checkpoint(out / CKPT)
    heads = {n: k for n, k in state["channel_masks"].items() if n.startswith("heads.")}
    assert heads and any(not bool(k.all()) for k in heads.values())
    ft = tmp_path / "ft"
    assert finetune.main(["--load_checkpoint", str(out / CKPT), "--iters", "2", "--save_dir", str(ft),
                          "--lr", "1e-2"]) == 0
    sd = load_checkpoint(ft / CKPT)["state_dict"]
    for name, keep in heads.items():
        assert torch.all(sd[f"{name}.weight"][~keep] == 0) and torch.all(sd[f"{name}.bias"][~keep] == 0)
        assert not torch.equal(sd[f"{name}.bias"][keep], state["state_dict"][f"{name}.bias"][keep])
    with pytest.raises(ConfigError, match="applies to --method taylor / cosprune only"):
        pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "magnitude", "--prune_heads",
                      "--prune_ratio", "0.3", "--save_dir", str(tmp_path / "m")])
    cosprune = ["--load_checkpoint", str(dense_ckpt), "--method", "cosprune", "--prune_heads", "--target", "0.3",
                "--save_dir", str(tmp_path / "c")]
    with pytest.raises(ConfigError, match="taylor only"):
        pruning.main(cosprune)
    with pytest.raises(ConfigError, match="taylor only"):
        structured_train.main(cosprune + ["--window", "1", "--per_step", "1"])


def test_structured_training_schedule_prunes_on_schedule(dense_ckpt, tmp_path):
    run = tmp_path / "sched"
    assert structured_train.main(["--method", "cosprune", "--load_checkpoint", str(dense_ckpt), "--target", "0.1",
                                  "--window", "2", "--per_step", "15", "--save_dir", str(run), "--iters", "6",
                                  "--val_iters", "6", "--save_iters", "6", "--log_every", "6"]) == 0
    report = json.loads((run / "structured.json").read_text())
    steps = report["steps"]
    target = round(0.1 * steps[0]["filters_total"])  # 24 of 236 at width 0.0625: 15 at iteration 2, 9 at 4
    assert [s["iter"] for s in steps] == [2, 4]
    assert [s["removed_now"] for s in steps] == [15, target - 15] and steps[-1]["filters_removed"] == target
    assert steps[1]["params"] < steps[0]["params"] and steps[1]["flops"] < steps[0]["flops"]
    _, model, channels = compact.load_pruned(str(run / CKPT))
    masks = MaskSet(model)
    masks.load_state_dict(load_checkpoint(run / CKPT)["masks"])
    assert channels.pruned() == target
    assert_filters_removed(model, masks, channels)


def test_scoring_hook_leaves_training_untouched(dense_ckpt, tmp_path):
    """Scoring inside the loop (extra forward / backward) must not perturb RNG, BN statistics or gradients."""
    common = ["--load_checkpoint", str(dense_ckpt), "--iters", "3", "--val_iters", "3", "--save_iters", "3"]
    assert finetune.main(common + ["--save_dir", str(tmp_path / "plain")]) == 0
    assert structured_train.main(common + ["--method", "taylor", "--target", "0.1", "--window", "100",
                                           "--per_step", "5", "--save_dir", str(tmp_path / "hooked")]) == 0
    a = load_checkpoint(tmp_path / "plain" / CKPT)["state_dict"]
    b = load_checkpoint(tmp_path / "hooked" / CKPT)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rewind_lr_restores_initial_rate():
    from types import SimpleNamespace

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    trainer = SimpleNamespace(optimizer=opt, scheduler=sched, cfg=SimpleNamespace(decay_lr_freq=2, decay_lr_rate=0.5))
    for _ in range(5):
        opt.step()
        trainer.scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.25
    structured_train.rewind_lr(trainer)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        trainer.scheduler.step()
    assert lrs == [1.0, 1.0, 0.5]


def test_reinit_retrains_the_pruned_architecture_from_a_fresh_initialisation(dense_ckpt, tmp_path):
    """S004's re-training: ``finetune.py --reinit`` keeps the checkpoint's masks and removed filters, draws fresh
    weights from --seed (two seeds differ, neither is the checkpoint's), and resumes like any run."""
    from main.channel_masks import ChannelMasks
    from main.masks import MaskSet

    pruned = tmp_path / "taylor"
    assert pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "taylor", "--target", "0.25",
                         "--save_dir", str(pruned), "--num_batches", "1", "--progress", "off"]) == 0
    source = load_checkpoint(pruned / CKPT)
    runs = {}
    for seed in (1, 2):
        run = tmp_path / f"reinit{seed}"
        assert finetune.main(["--load_checkpoint", str(pruned / CKPT), "--reinit", "--seed", str(seed), "--iters", "2",
                              "--save_dir", str(run), "--progress", "off"]) == 0
        runs[seed] = load_checkpoint(run / CKPT)
    first = runs[1]["state_dict"]
    assert runs[1]["masks"] is not None
    for name, mask in source["masks"].items():
        assert torch.equal(runs[1]["masks"][name], mask)  # the architecture is the checkpoint's
    for name, keep in source["channel_masks"].items():  # removed filters stay removed, BN included
        block = name.rsplit(".", 1)[0]
        assert torch.all(first[f"{name}.weight"][~keep] == 0) and torch.all(first[f"{block}.bn1.weight"][~keep] == 0)
    conv = next(k for k in first if k.endswith("conv1.weight"))
    assert not torch.equal(first[conv], source["state_dict"][conv])  # fresh weights, not the checkpoint's
    assert not torch.equal(first[conv], runs[2]["state_dict"][conv])  # drawn from --seed
    model = tiny("resnet34")  # the architecture read back from the re-trained checkpoint: the same filters removed
    model.load_state_dict(first, strict=False)
    masks = MaskSet(model)
    masks.load_state_dict(runs[1]["masks"])
    recovered = ChannelMasks.from_model(model, masks)
    assert {n: k.tolist() for n, k in recovered.keep.items()} == {n: k.tolist() for n, k in
                                                                   source["channel_masks"].items()}
    assert finetune.main(["--save_dir", str(tmp_path / "reinit1"), "--resume", "--iters", "3", "--progress",
                          "off"]) == 0
    assert load_checkpoint(tmp_path / "reinit1" / CKPT)["iter"] == 3


def test_reinit_is_refused_with_resume(tmp_path, capsys):
    from test_user_errors import fails

    fails(finetune, ["--save_dir", str(tmp_path / "r"), "--resume", "--reinit"], tmp_path, capsys, "--reinit")
