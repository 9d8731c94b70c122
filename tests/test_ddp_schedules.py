"""The pruning schedules that train, under torchrun: 2 gloo processes on CPU, a few iterations each.

Every case checks what DDP must guarantee for a pruning command: both ranks end with bit-identical parameters and
masks (so every decision, including the gradient-scored ones, was the same on both), only rank 0 wrote files
(each log line, TensorBoard file and summary exactly once), and the final checkpoint evaluates with test.py.
BatchNorm running statistics are per rank (no SyncBatchNorm) and are not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main.cli.train as baseline
from main.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CKPT = "segment_semantic_normal_depth_zbuffer.model"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
# TINY_FLAGS at 2 processes x batch 2 (the same global batch as the single-process tests), on the gloo backend.
DDP_FLAGS = ["--batch_size", "2", "--device", "cpu", "--progress", "off"]


def torchrun(out: Path, command: str, *flags: str) -> str:
    """Run ``SOTA_methods.<command>`` on 2 ranks (tests/ddp_schedule_worker.py); returns the combined stdout."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "tests/ddp_schedule_worker.py", str(out), command, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def ranks_identical(out: Path) -> dict:
    """Rank 0's and rank 1's final states agree bit for bit (parameters and masks); returns rank 0's."""
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["stages"] == r1["stages"] and r0["iteration"] == r1["iteration"]
    for k, v in r0["state_dict"].items():
        if k.endswith(("running_mean", "running_var")):
            continue  # per-rank BatchNorm batch statistics
        assert torch.equal(v, r1["state_dict"][k]), k
    assert r0["masks"] is not None and set(r0["masks"]) == set(r1["masks"])
    for name, m in r0["masks"].items():
        assert torch.equal(m, r1["masks"][name]), name
    return r0


def final_checkpoint_is_rank0s_and_evaluates(save_dir: Path, r0: dict) -> dict:
    state = load_checkpoint(save_dir / CKPT)
    for k, v in r0["state_dict"].items():
        assert torch.equal(state["state_dict"][k], v), k
    assert all(torch.equal(state["masks"][n], m) for n, m in r0["masks"].items())
    proc = subprocess.run([sys.executable, "test.py", "--path", str(save_dir / CKPT), "--progress", "off"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0 and "overall" in proc.stdout, proc.stderr[-2000:]
    return state


def written_once(stdout: str, save_dir: Path, log_lines: dict[str, str]) -> None:
    """One summary on stdout, one TensorBoard file per stage, and each ``{folder: log line}`` logged once."""
    assert stdout.count("and masks.json beside it") == 1, stdout[-2000:]
    for folder, line in log_lines.items():
        log = (save_dir / folder / "train.log").read_text()
        assert log.count(line) == 1, (folder, line, log[-2000:])
        assert len(list((save_dir / folder).glob("events.out.tfevents.*"))) == 1, folder
    assert not list(save_dir.rglob("*rank1*")) and not list(save_dir.rglob("*.tmp*"))


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory) -> Path:
    from conftest import TINY_FLAGS

    run = tmp_path_factory.mktemp("dense")
    assert baseline.main(TINY_FLAGS + ["--iters", "2", "--dense", "--save_dir", str(run)]) == 0
    return run / CKPT


def test_rank_helpers_average_and_refuse_divergent_masks(tmp_path):
    torchrun(tmp_path, "collectives")
    assert (tmp_path / "collectives0.ok").is_file() and (tmp_path / "collectives1.ok").is_file()


def test_imp_two_rounds_under_torchrun(dense_ckpt, tmp_path):
    save = tmp_path / "imp"
    stdout = torchrun(tmp_path, "imp", "--load_checkpoint", str(dense_ckpt), "--target", "0.5", "--per_round", "0.3",
                      "--finetune_iters", "2", "--iters", "2", "--save_dir", str(save), *DDP_FLAGS)
    r0 = ranks_identical(tmp_path)
    assert r0["stages"] == 2
    state = final_checkpoint_is_rank0s_and_evaluates(save, r0)
    assert state["iter"] == 2
    rounds = json.loads((save / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and abs(rounds[0]["sparsity"] - 0.3) < 1e-4
    assert abs(json.loads((save / "masks.json").read_text())["mask_sparsity"] - 0.5) < 1e-4
    written_once(stdout, save, {"round_01": "IMP round 1/2", ".": "IMP round 2/2"})


def test_lth_dense_then_rewind_under_torchrun(tmp_path, tiny_flags):
    save = tmp_path / "lth"
    stdout = torchrun(tmp_path, "lth", *tiny_flags, "--target", "0.5", "--one_shot", "--rewind", "1", "--iters", "2",
                      "--save_dir", str(save), *DDP_FLAGS)
    r0 = ranks_identical(tmp_path)
    assert r0["stages"] == 2 and r0["iteration"] == 2
    final_checkpoint_is_rank0s_and_evaluates(save, r0)
    snap = load_checkpoint(save / "dense" / "rewind_iter1.model")
    assert snap["iter"] == 1 and len(snap["rng_ranks"]) == 2  # every rank's RNG, as a DDP checkpoint
    written_once(stdout, save, {"dense": "LTH: training the dense model", ".": "LTH round 1/1"})


@pytest.mark.parametrize("method", ["snip", "disparse_static"])
def test_prune_at_init_under_torchrun(tmp_path, tiny_flags, method):
    save = tmp_path / method
    stdout = torchrun(tmp_path, "at_init", *tiny_flags, "--method", method, "--target", "0.9", "--num_batches", "2",
                      "--iters", "3", "--save_dir", str(save), *DDP_FLAGS)
    r0 = ranks_identical(tmp_path)  # the ranks scored different batches: identical only through the all-reduce
    final_checkpoint_is_rank0s_and_evaluates(save, r0)
    pruning = json.loads((save / "pruning.json").read_text())
    assert pruning["method"] == method and pruning["world_size"] == 2
    kept = sum(int(m.sum()) for m in r0["masks"].values())
    total = sum(m.numel() for m in r0["masks"].values())
    assert abs(kept / total - 0.1) < 2e-3
    written_once(stdout, save, {".": f"{method} at init:"})


def test_disparse_dynamic_under_torchrun(tmp_path, tiny_flags):
    save = tmp_path / "dsd"
    stdout = torchrun(tmp_path, "disparse", *tiny_flags, "--target", "0.9", "--iters", "3", "--delta_t", "1",
                      "--end", "2", "--save_dir", str(save), *DDP_FLAGS)
    r0 = ranks_identical(tmp_path)  # regrowth gradients of different batches, averaged over the ranks
    final_checkpoint_is_rank0s_and_evaluates(save, r0)
    updates = json.loads((save / "masks.json").read_text())["updates"]
    assert [u["iter"] for u in updates] == [0, 1, 2] and updates[-1].get("final")
    assert all(u["changed"] > 0 for u in updates[:2])  # the updates really moved the mask
    kept = sum(int(m.sum()) for m in r0["masks"].values())
    assert kept == round(0.1 * sum(m.numel() for m in r0["masks"].values()))
    written_once(stdout, save, {".": "DiSparse dynamic: ERK random init"})


def test_structured_cosprune_under_torchrun(dense_ckpt, tmp_path):
    save = tmp_path / "cos"
    proc_out = torchrun(tmp_path, "structured_train", "--method", "cosprune", "--load_checkpoint", str(dense_ckpt),
                        "--target", "0.1", "--window", "2", "--per_step", "5", "--iters", "4", "--save_dir", str(save),
                        *DDP_FLAGS)
    r0 = ranks_identical(tmp_path)  # per-task gradients averaged over the ranks before the cosine
    final_checkpoint_is_rank0s_and_evaluates(save, r0)
    steps = json.loads((save / "structured.json").read_text())["steps"]
    assert [s["iter"] for s in steps] == [2, 4] and steps[-1]["filters_removed"] == 10
    log = (save / "train.log").read_text()
    assert log.count("pruned 5 filters") == 2 and "and masks.json" not in proc_out


@pytest.mark.parametrize("method", ["cosprune", "taylor"])
def test_structured_scores_reduced_over_ranks_are_the_global_batch_scores(method):
    """Two ranks emulated in one process: averaging through ``reduce`` gives the scores of the whole batch.

    Eval-mode BatchNorm (running statistics) makes each sample's loss independent of the others, so the global
    batch's gradient is exactly the mean of the two halves' gradients.  The mean of per-rank *scores* (cosines of
    half-batch gradients, squares of half-batch Taylor sums) is a different statistic, which the ranking must not use.
    """
    from main.channel_masks import ChannelMasks
    from main.data.synthetic import SyntheticScenes
    from main.models import build_model
    from SOTA_methods.structured import batch_scores

    tasks = ("segment_semantic", "normal", "depth_zbuffer")
    torch.manual_seed(0)
    model = build_model("resnet34", {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}, width_mult=0.0625,
                        sparse=False).double().eval()
    ds = SyntheticScenes("train", size=32, length=4)
    full = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ds[0]}
    full = {k: v.double() if v.is_floating_point() else v for k, v in full.items()}
    rank0, rank1 = ({k: v[a:a + 2] for k, v in full.items()} for a in (0, 2))
    channels = ChannelMasks(model)
    other: list[torch.Tensor] = []

    def keep_rank1(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        other.extend(t.clone() for t in tensors)
        return tensors

    batch_scores(model, channels, rank1, tasks, method, reduce=keep_rank1)
    reduced = batch_scores(model, channels, rank0, tasks, method,
                           reduce=lambda ts: [(a + b) / 2 for a, b in zip(ts, other)])
    whole = batch_scores(model, channels, full, tasks, method)
    s0, s1 = (batch_scores(model, channels, b, tasks, method) for b in (rank0, rank1))

    def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:  # Taylor scores are ~1e-20 here: relative only
        return float((a - b).abs().max() / b.abs().max())

    assert all(whole[n].abs().max() > 0 for n in whole)
    for name in whole:
        assert rel_err(reduced[name], whole[name]) < 1e-9, name
    assert max(rel_err((s0[n] + s1[n]) / 2, whole[n]) for n in whole) > 1e-2
