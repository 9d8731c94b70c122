"""The shell pipelines: usage errors, and prune -> fine-tune -> collect-table on tiny runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import baseline

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHON": sys.executable}


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("script", ["run_baseline.sh", "run_pruning.sh", "run_finetune.sh", "run_test.sh",
                                    "distributed_train.sh"])
def test_usage_or_missing_argument_fails_loudly(script):
    proc = sh(f"Scripts/{script}")
    assert proc.returncode == 2 and "usage" in (proc.stdout + proc.stderr)


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
