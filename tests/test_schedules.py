"""The baselines that train (IMP, LTH, prune-at-init, DiSparse dynamic) on tiny runs of a few iterations."""

from __future__ import annotations

import json
import math

import pytest
import torch

import main.cli.train as baseline
from main.checkpoint import load_checkpoint
from main.masks import MaskSet
from main.models import BACKBONE, build_model
from main.trainer import Trainer
from SOTA_methods import at_init, disparse, imp, lth
from SOTA_methods.engine import magnitude_keep
from SOTA_methods.stages import round_sparsities

CKPT = "segment_semantic_normal_depth_zbuffer.model"
TASKS = ("segment_semantic", "normal", "depth_zbuffer")


def weight_key(mask_name: str) -> str:
    comp, layer = mask_name.split(".", 1)
    return (f"backbone.{layer}" if comp == BACKBONE else f"heads.{comp}.{layer}") + ".weight"


def check_final(run, target: float) -> dict:
    """Sparsity measured from the saved weights is on target, and every masked weight is exactly zero."""
    state = load_checkpoint(run / CKPT)
    assert state["masks"] is not None
    zeros = total = 0
    for name, mask in state["masks"].items():
        w = state["state_dict"][weight_key(name)]
        assert torch.all(w[~mask] == 0), name
        zeros += int((w == 0).sum())
        total += w.numel()
    assert abs(zeros / total - target) <= 0.005
    summary = json.loads((run / "masks.json").read_text())
    assert abs(summary["sparsity"]["overall"] - target) <= 0.005
    assert abs(summary["mask_sparsity"] - target) <= 0.005
    return summary


class EntryStates:
    """Records model state, iteration and masks each time a Trainer starts training."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict] = []
        original = Trainer.train

        def train(trainer: Trainer) -> dict:
            self.calls.append({"dir": trainer.save_dir.name, "iter": trainer.iteration,
                               "lr_epoch": trainer.scheduler.last_epoch,
                               "state": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                               "masks": trainer.masks.state_dict() if trainer.masks is not None else None})
            return original(trainer)

        monkeypatch.setattr(Trainer, "train", train)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A 2-iteration dense baseline.py run, with the weights it started from (θ_0)."""
    from conftest import TINY_FLAGS

    run = tmp_path_factory.mktemp("dense")
    with pytest.MonkeyPatch.context() as mp:
        rec = EntryStates(mp)
        assert baseline.main(TINY_FLAGS + ["--iters", "2", "--dense", "--save_dir", str(run)]) == 0
    return run / CKPT, rec.calls[0]["state"]


# ------------------------------------------------------------------------------------------------ unit
def test_round_schedule_removes_a_fraction_of_the_rest_and_lands_on_target():
    plan = round_sparsities(0.0, 0.9, 0.2)
    assert len(plan) == 11 and plan[-1] == 0.9
    assert all(abs(s - (1 - 0.8 ** (k + 1))) < 1e-12 for k, s in enumerate(plan[:-1]))
    assert round_sparsities(0.0, 0.9, None) == [0.9]
    assert len(round_sparsities(0.5, 0.9, 0.2)) == 8  # starts from what is already pruned


def test_erk_budget_is_exact_and_favours_small_layers():
    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}, width_mult=0.0625,
                        sparse=False)
    masks = MaskSet(model)
    shapes = {n: tuple(m.shape) for n, m in masks.masks.items()}
    numel = {n: m.numel() for n, m in masks.masks.items()}
    dens = disparse.erk_densities(shapes, 0.1)
    assert all(0 < d <= 1 for d in dens.values())
    assert math.isclose(sum(dens[n] * numel[n] for n in dens), 0.1 * masks.total(), rel_tol=1e-9)
    small = min(numel, key=numel.get)
    big = max(numel, key=numel.get)
    assert dens[small] > dens[big]
    # at a generous budget some small layers would exceed 1: they are made dense, the rest re-solved
    dens = disparse.erk_densities(shapes, 0.6)
    assert any(d == 1.0 for d in dens.values()) and max(dens.values()) <= 1.0
    assert math.isclose(sum(dens[n] * numel[n] for n in dens), 0.6 * masks.total(), rel_tol=1e-9)
    counts = disparse.layer_budgets(masks, 0.9)
    assert sum(counts.values()) == round(0.1 * masks.total())


def test_regrowth_is_the_union_of_tasks_on_shared_weights_and_own_task_on_heads():
    torch.manual_seed(0)
    model = build_model("resnet34", {"normal": 3, "depth_zbuffer": 1}, width_mult=0.0625, sparse=False)
    masks = MaskSet(model)
    masks.masks = {n: torch.zeros_like(m) for n, m in masks.masks.items()}
    counts = {n: 4 for n in masks.masks}
    shared, head = "backbone.layer4.0.conv1", "normal.fc1.conv1"
    assert shared in masks.masks and head in masks.masks, sorted(masks.masks)[:8]
    scores = {t: {n: torch.zeros_like(m, dtype=torch.float) for n, m in masks.masks.items()}
              for t in ("normal", "depth_zbuffer")}
    for t, offset in (("normal", 0), ("depth_zbuffer", 100)):
        for n in (shared, head):
            scores[t][n].view(-1)[offset:offset + 4] = 1.0 + torch.arange(4.0)
    grown = disparse.grow(masks, counts, scores)
    flat = grown[shared].view(-1).nonzero().flatten().tolist()
    assert flat == [0, 1, 2, 3, 100, 101, 102, 103]  # each task's top 4, united
    assert grown[head].view(-1).nonzero().flatten().tolist() == [0, 1, 2, 3]  # only the head's own task
    masks.masks[shared].view(-1)[:4] = True  # already active: not "grown" again, and fewer to grow
    counts[shared] = 6
    again = disparse.grow(masks, counts, scores)[shared].view(-1)
    assert not again[:4].any() and int(again.sum()) <= 4 and again[102:104].all()


def test_component_scope_prunes_every_component_to_the_round_sparsity():
    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}, width_mult=0.0625,
                        sparse=False)
    masks = MaskSet(model)
    keep = magnitude_keep(masks, 0.7, "component")
    for comp in masks.components():
        names = [w.name for w in masks if w.component == comp]
        kept = sum(int(keep[n].sum()) for n in names)
        total = sum(keep[n].numel() for n in names)
        assert abs(1 - kept / total - 0.7) < 1e-3, comp


# ------------------------------------------------------------------------------------------------ commands
def test_imp_rounds_finetune_and_final_checkpoint(dense_run, tmp_path):
    ckpt, _ = dense_run
    out = tmp_path / "imp"
    assert imp.main(["--load_checkpoint", str(ckpt), "--target", "0.5", "--per_round", "0.3",
                     "--finetune_iters", "1", "--iters", "1", "--save_dir", str(out)]) == 0
    summary = check_final(out, 0.5)
    rounds = json.loads((out / "rounds.json").read_text())
    assert len(rounds) == len(summary["rounds"]) == 2  # 30 % of all, then down to 50 %
    assert abs(rounds[0]["sparsity"] - 0.3) < 1e-4 and (out / "round_01" / CKPT).is_file()
    first = load_checkpoint(out / "round_01" / CKPT)
    assert first["iter"] == 1


def test_lth_rewinds_survivors_to_the_regenerated_init(dense_run, tmp_path, monkeypatch):
    ckpt, theta0 = dense_run
    rec = EntryStates(monkeypatch)
    out = tmp_path / "lth"
    assert lth.main(["--load_checkpoint", str(ckpt), "--target", "0.6", "--one_shot", "--iters", "1",
                     "--save_dir", str(out)]) == 0
    check_final(out, 0.6)
    (start,) = [c for c in rec.calls if c["masks"] is not None]
    assert start["iter"] == 0
    for name, mask in start["masks"].items():
        key = weight_key(name)
        w = start["state"][key]
        assert torch.equal(w[mask], theta0[key][mask]), name  # θ_0 of the dense baseline.py run, exactly
        assert torch.all(w[~mask] == 0)
    bn = [k for k in theta0 if k.endswith("running_var")]
    assert bn and all(torch.equal(start["state"][k], theta0[k]) for k in bn)


def test_lth_trains_dense_itself_and_rewinds_to_iteration_k(tmp_path, tiny_flags, monkeypatch):
    rec = EntryStates(monkeypatch)
    out = tmp_path / "lthk"
    assert lth.main(tiny_flags + ["--target", "0.5", "--one_shot", "--rewind", "1", "--iters", "2",
                                  "--save_dir", str(out)]) == 0
    check_final(out, 0.5)
    snap = load_checkpoint(out / "dense" / "rewind_iter1.model")
    assert snap["iter"] == 1
    dense_start, retrain = rec.calls
    assert dense_start["masks"] is None
    assert retrain["iter"] == 1 and retrain["lr_epoch"] == 1  # schedule and data order resume at k
    for name, mask in retrain["masks"].items():
        key = weight_key(name)
        assert torch.equal(retrain["state"][key][mask], snap["state_dict"][key][mask]), name
        assert not torch.equal(snap["state_dict"][key], dense_start["state"][key])  # θ_1 is not θ_0
    for key, value in snap["state_dict"].items():
        if "running" in key:
            assert torch.equal(retrain["state"][key], value), key


@pytest.mark.parametrize("method", ["snip", "disparse_static"])
def test_prune_at_init_then_train(dense_run, tmp_path, tiny_flags, method, monkeypatch):
    _, theta0 = dense_run
    rec = EntryStates(monkeypatch)
    out = tmp_path / method
    assert at_init.main(tiny_flags + ["--method", method, "--target", "0.9", "--num_batches", "1", "--iters", "1",
                                      "--save_dir", str(out)]) == 0
    check_final(out, 0.9)
    # masked and trained at the seeded init baseline.py starts from; scoring left BN statistics untouched
    (start,) = rec.calls
    for name, mask in start["masks"].items():
        key = weight_key(name)
        assert torch.equal(start["state"][key][mask], theta0[key][mask]), name
    for key, value in start["state"].items():
        if "running" in key:
            assert torch.equal(value, theta0[key]), key


def test_disparse_dynamic_updates_then_fixes_an_exact_mask(tmp_path, tiny_flags):
    out = tmp_path / "dsd"
    assert disparse.main(tiny_flags + ["--target", "0.9", "--iters", "3", "--delta_t", "1", "--end", "2",
                                       "--save_dir", str(out)]) == 0
    summary = check_final(out, 0.9)
    updates = summary["updates"]
    assert [u["iter"] for u in updates] == [0, 1, 2] and updates[-1].get("final")
    assert updates[0]["rate"] == 0.5 and updates[0]["sparsity_after_drop"] > 0.9
    state = load_checkpoint(out / CKPT)
    kept = sum(int(m.sum()) for m in state["masks"].values())
    total = sum(m.numel() for m in state["masks"].values())
    assert kept == round(0.1 * total)  # exact after the final drop, and fixed during the last iteration


class Interrupt(Exception):
    pass


def test_disparse_dynamic_resume_is_exact(tmp_path, tiny_flags, monkeypatch):
    full, half = tmp_path / "full", tmp_path / "half"
    flags = tiny_flags + ["--target", "0.8", "--iters", "4", "--delta_t", "1", "--end", "3", "--save_iters", "2"]
    assert disparse.main(flags + ["--save_dir", str(full)]) == 0
    original = Trainer.train

    def crash_at_3(trainer: Trainer) -> dict:
        def hook(tr, iteration, batch):
            if iteration == 3:  # after the checkpoint of iteration 2, before that of 3
                raise Interrupt

        trainer.step_hooks.append(hook)
        return original(trainer)

    monkeypatch.setattr(Trainer, "train", crash_at_3)
    with pytest.raises(Interrupt):
        disparse.main(flags + ["--save_dir", str(half)])
    monkeypatch.setattr(Trainer, "train", original)
    assert load_checkpoint(half / CKPT)["iter"] == 2
    assert disparse.main(["--save_dir", str(half), "--resume"]) == 0
    a, b = load_checkpoint(full / CKPT), load_checkpoint(half / CKPT)
    assert b["iter"] == 4
    assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
