"""The shell pipelines: usage errors, and prune -> fine-tune -> collect-table on tiny runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main.cli.train as baseline
from main.models import build_model
from main.seeding import seed_everything

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHON": sys.executable}


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("script", ["run_baseline.sh", "run_pruning.sh", "run_finetune.sh", "run_test.sh",
                                    "distributed_train.sh"])
def test_usage_or_missing_argument_fails_loudly(script):
    proc = sh(f"Scripts/{script}")
    assert proc.returncode == 2 and "usage" in (proc.stdout + proc.stderr)


PIPELINES = sorted(p.name for p in (ROOT / "Scripts").glob("*.sh") if p.name != "usage.sh")


@pytest.mark.parametrize("script", PIPELINES)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_script_answers_help_with_its_usage(script, flag, tmp_path):
    before = set(ROOT.iterdir())
    proc = subprocess.run(["bash", str(ROOT / "Scripts" / script), flag], cwd=tmp_path, capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert not list(tmp_path.iterdir()) and set(ROOT.iterdir()) == before  # nothing written


def test_demo_refuses_an_option_instead_of_using_it_as_a_folder(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "Scripts" / "demo.sh"), "--quick"], cwd=tmp_path, capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and not (ROOT / "--quick").exists()


def test_prune_finetune_and_collect_table(tmp_path, tiny_flags):
    runs = tmp_path / "runs"
    assert baseline.main(tiny_flags + ["--iters", "2", "--dense", "--save_dir", str(runs / "dense")]) == 0
    ckpt = runs / "dense" / "segment_semantic_normal_depth_zbuffer.model"
    proc = sh("Scripts/run_pruning.sh", str(ckpt), str(tmp_path / "pruned"), "magnitude", "0.5 0.8")
    assert proc.returncode == 0, proc.stderr
    proc = sh("Scripts/run_finetune.sh", str(tmp_path / "pruned"), str(runs), "--iters", "2", "--progress", "off")
    assert proc.returncode == 0, proc.stderr
    proc = sh("Scripts/run_test.sh", str(runs), "dense", "--progress", "off")
    assert proc.returncode == 0, proc.stderr
    assert "magnitude_0.5" in proc.stdout and "magnitude_0.8" in proc.stdout and "Δ_T" in proc.stdout


def test_distributed_train_two_gloo_processes(tmp_path, tiny_flags):
    run = tmp_path / "ddp"
    proc = sh("Scripts/distributed_train.sh", "2", *tiny_flags, "--batch_size", "2", "--iters", "3", "--device", "cpu",
              "--save_dir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = run / "segment_semantic_normal_depth_zbuffer.model"
    assert ckpt.is_file() and (run / "config.yaml").is_file()
    out = subprocess.run([sys.executable, "test.py", "--path", str(ckpt), "--progress", "off"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "overall" in out.stdout


def test_ddp_ranks_stay_identical_and_match_a_single_process(tmp_path, tiny_flags):
    """2 gloo ranks x batch 2 vs 1 process x batch 4: same samples per step (the sampler slices the global batch).

    Ranks must hold bit-identical parameters and thresholds. Against the single process the only difference is
    BatchNorm's batch statistics (per rank: 2 samples, single: 4; dropout is off), so the two runs agree within a
    tolerance: the parameter updates from the common initialisation point the same way (cosine >= 0.9).
    An element-wise bound would prove nothing: Adam moves every weight by about lr per step in either run.
    """
    common = tiny_flags + ["--iters", "3", "--head_dropout", "0", "--device", "cpu", "--no-tensorboard"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "tests/ddp_worker.py", str(tmp_path), *common, "--batch_size", "2",
                           "--save_dir", str(tmp_path / "ddp")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm buffers are per rank (no SyncBatchNorm)
        assert torch.equal(r0[k], r1[k]), k
    assert baseline.main(common + ["--batch_size", "4", "--save_dir", str(tmp_path / "single")]) == 0
    single = torch.load(tmp_path / "single" / "segment_semantic_normal_depth_zbuffer.model",
                        weights_only=True)["state_dict"]
    # θ0: build_trainer seeds, then builds the model (the synthetic data draw nothing from the global RNG)
    seed_everything(0)
    init = build_model("resnet34", {"segment_semantic": 8, "normal": 3, "depth_zbuffer": 1}, 0.0625, -4.5,
                       head_dropout=0.0).state_dict()
    keys = [k for k in r0 if r0[k].is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    d_ddp = torch.cat([(r0[k] - init[k]).flatten() for k in keys])
    d_single = torch.cat([(single[k] - init[k]).flatten() for k in keys])
    cosine = float(d_ddp @ d_single / (d_ddp.norm() * d_single.norm()))
    print(f"update cosine DDP vs single process: {cosine:.4f}")
    assert d_ddp.norm() > 0 and cosine >= 0.9, cosine


def test_ddp_resume_is_exact_on_every_rank(tmp_path, tiny_flags):
    """Dropout on: each rank has its own RNG stream, and every rank's is saved and restored."""

    def torchrun(out: Path, *flags: str) -> None:
        out.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "tests/ddp_worker.py", str(out), *flags], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr[-2000:]

    common = tiny_flags + ["--batch_size", "2", "--device", "cpu", "--no-tensorboard", "--save_iters", "2"]
    torchrun(tmp_path / "full", *common, "--iters", "6", "--save_dir", str(tmp_path / "run_full"))
    torchrun(tmp_path / "half", *common, "--iters", "3", "--save_dir", str(tmp_path / "run_half"))
    torchrun(tmp_path / "half", "--save_dir", str(tmp_path / "run_half"), "--resume", "--iters", "6",
             "--device", "cpu")
    for rank in (0, 1):
        a = torch.load(tmp_path / "full" / f"rank{rank}.pt", weights_only=True)
        b = torch.load(tmp_path / "half" / f"rank{rank}.pt", weights_only=True)
        for k in a:
            assert torch.equal(a[k], b[k]), (rank, k)
