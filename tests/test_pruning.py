"""The pruning engine, pruning.py and finetune.py on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import main.cli.finetune as finetune
import main.cli.train as baseline
import SOTA_methods.cli as pruning
from main.checkpoint import load_checkpoint
from main.masks import MaskSet
from main.models import build_model
from SOTA_methods.engine import (
    connection_sensitivity,
    install,
    magnitude_scores,
    select_disparse,
    select_global,
    task_gradients,
)

CKPT = "segment_semantic_normal_depth_zbuffer.model"
TASKS = ("segment_semantic", "normal", "depth_zbuffer")


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    from conftest import TINY_FLAGS

    run = tmp_path_factory.mktemp("dense")
    assert baseline.main(TINY_FLAGS + ["--iters", "3", "--dense", "--save_dir", str(run)]) == 0
    return run / CKPT


def tiny_model():
    torch.manual_seed(0)
    return build_model("resnet34", {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}, width_mult=0.0625,
                       sparse=False)


def tiny_batches(n=2):
    from main.data.synthetic import SyntheticScenes

    ds = SyntheticScenes("train", size=32, length=8)
    return [{k: torch.stack([ds[i][k] for i in range(j * 4, j * 4 + 4)]) for k in ds[0]} for j in range(n)]


@pytest.mark.parametrize("method", ["magnitude", "random", "snip", "disparse_pt", "disparse_static"])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_each_unstructured_method_hits_the_target(dense_ckpt, tmp_path, method, ratio):
    out = tmp_path / method
    assert pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", method, "--prune_ratio", str(ratio),
                         "--save_dir", str(out), "--num_batches", "2", "--progress", "off"]) == 0
    report = json.loads((out / "masks.json").read_text())
    assert abs(report["sparsity"]["overall"] - ratio) <= 0.005
    state = load_checkpoint(out / CKPT)
    model_zeros = sum(int((v == 0).sum()) for k, v in state["state_dict"].items()
                      if k.endswith("weight") and v.dim() == 4)
    assert model_zeros >= report["sparsity"]["total"] - report["sparsity"]["nonzero"]


def test_backbone_sparsity_option_prunes_backbone_and_heads_separately(dense_ckpt, tmp_path):
    out = tmp_path / "head"
    pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "magnitude", "--prune_ratio", "0.9",
                  "--backbone_sparsity", "0.6", "--save_dir", str(out)])
    comps = json.loads((out / "masks.json").read_text())["sparsity"]["components"]
    assert abs(comps["backbone"] - 0.6) < 0.005
    heads = [comps[t] for t in TASKS]
    assert min(heads) > 0.6  # the heads were ranked together at 0.9


def test_finetune_keeps_pruned_weights_zero(dense_ckpt, tmp_path):
    pruned = tmp_path / "p"
    pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "magnitude", "--prune_ratio", "0.8",
                  "--save_dir", str(pruned)])
    before = load_checkpoint(pruned / CKPT)
    ft = tmp_path / "ft"
    assert finetune.main(["--load_checkpoint", str(pruned / CKPT), "--iters", "4", "--save_dir", str(ft),
                          "--lr", "1e-2", "--priority", "1", "2", "1"]) == 0
    after = load_checkpoint(ft / CKPT)
    changed = 0
    for name, mask in before["masks"].items():
        comp, layer = name.split(".", 1)
        key = (f"backbone.{layer}" if comp == "backbone" else f"heads.{comp}.{layer}") + ".weight"
        w = after["state_dict"][key]
        assert torch.all(w[~mask] == 0), name
        changed += int((w[mask] != before["state_dict"][key][mask]).sum())
    assert changed > 0  # the surviving weights did train
    assert after["masks"] is not None and after["config"]["priority"] == [1.0, 2.0, 1.0]


def test_single_task_disparse_equals_global_selection_on_its_scope():
    model = tiny_model()
    masks = MaskSet(model)
    scores = magnitude_scores(masks)
    # one task: the arbiter has nothing to combine, so DiSparse is a global top-k over backbone + that head
    only = {n: m for n, m in masks.masks.items() if n.startswith(("backbone.", "normal."))}
    sub = MaskSet(model)
    sub.masks = dict(only)
    sub.weights = [w for w in sub.weights if w.name in only]
    a = select_disparse({"normal": scores}, sub, 0.7, tolerance=0)
    b = select_global(scores, sub, 0.7)
    assert sum(int(v.sum()) for v in a.values()) == sum(int(v.sum()) for v in b.values())
    assert all(torch.equal(a[n], b[n]) for n in only)


def test_disparse_keeps_shared_weight_if_any_task_does():
    model = tiny_model()
    masks = MaskSet(model)
    per_task = task_gradients(model, masks, tiny_batches(1), TASKS, torch.device("cpu"), per_task=True,
                              statistic=connection_sensitivity)
    keep = select_disparse(per_task, masks, 0.9)
    kept = sum(int(v.sum()) for v in keep.values())
    assert abs(kept - round(0.1 * masks.total())) <= 1
    # a backbone weight that a single task ranks first is kept
    top_task = per_task["normal"]["backbone.layer4.0.conv1"].flatten().argmax()
    assert keep["backbone.layer4.0.conv1"].flatten()[top_task]


def test_masks_survive_adam_with_weight_decay():
    model = tiny_model()
    masks = MaskSet(model)
    install(masks, select_global(magnitude_scores(masks), masks, 0.8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    batch = tiny_batches(1)[0]
    from main.tasks import task_loss

    for _ in range(5):
        out = model(batch["input"])
        sum(task_loss(t, out[t], batch) for t in TASKS).backward()
        masks.mask_grads()
        opt.step()
        masks.apply()
        opt.zero_grad()
    assert abs(masks.sparsity() - 0.8) < 1e-6
    for w in masks:
        assert torch.all(w.param[~masks.masks[w.name]] == 0)


def test_adapmtl_from_a_pruned_checkpoint_keeps_its_zeros(dense_ckpt, tmp_path):
    """Reference option 2: --reload a (pre-)pruned model; pruned weights get no task gradient and stay zero."""
    from conftest import TINY_FLAGS

    pruned = tmp_path / "p"
    pruning.main(["--load_checkpoint", str(dense_ckpt), "--method", "magnitude", "--prune_ratio", "0.7",
                  "--save_dir", str(pruned)])
    run = tmp_path / "adapmtl"
    assert baseline.main(TINY_FLAGS + ["--iters", "3", "--reload", str(pruned / CKPT), "--sInit_value", "-8",
                                       "--save_dir", str(run)]) == 0
    before = load_checkpoint(pruned / CKPT)["state_dict"]
    after = load_checkpoint(run / CKPT)
    assert not after["config"]["dense"]
    for key, w in before.items():
        if key.endswith("weight") and w.dim() == 4:
            assert torch.all(after["state_dict"][key][w == 0] == 0), key
