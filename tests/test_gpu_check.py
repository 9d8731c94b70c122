"""bench/gpu_check.sh: a clean "no GPU" on CPU machines; on GPU machines every CUDA path of the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script runs the real checks")
def test_without_a_gpu_the_script_says_so_and_exits_0():
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"gpu": False, "status": "no GPU"}


def test_the_checks_cover_every_cuda_path(tmp_path):
    names = [name for name, _ in gpu_check.checks(tmp_path, gpus=2)]
    assert names == ["adapmtl_fp32", "dense_fp32", "adapmtl_bf16_channels_last", "adapmtl_fp16", "stop_rule_flags",
                     "budget_control", "evaluate", "export", "evaluate_export", "inference_bench",
                     "step_overhead_bench", "ddp_nccl_2gpu"]
    for _, argv in gpu_check.checks(tmp_path, gpus=1):
        if argv[0] in ("baseline.py", "test.py") or "baseline.py" in argv:
            assert "cuda" in argv  # every training and evaluation runs on the GPU, none silently on the CPU
