"""Every CUDA path once, in a few minutes, with one JSON summary: the check to run on any machine with a GPU.

    bash bench/gpu_check.sh [--out FILE.json]       (python -m bench.gpu_check)

Why: the test suite runs on CPU machines, where the CUDA-only code (the general soft-threshold path, the stop
rule's non-blocking device-to-host flags, autocast in bf16/fp16, channels-last, NCCL, the benchmarks' CUDA timing)
never executes.  Each check is a real command of the project on a tiny model, run as a subprocess with a time
limit; a failing check is recorded with its last output lines and the others still run.  Without a visible GPU it
prints ``{"gpu": false, "status": "no GPU"}`` and exits 0, so it is safe to call anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from main.atomic import atomic_write_text
from main.checkpoint import checkpoint_name
from main.errors import cli_main
from main.output_file import OutputKind, check_output_file, is_json_with
from main.task_registry import DEFAULT_TASKS

ROOT = Path(__file__).resolve().parents[1]
CKPT = checkpoint_name(DEFAULT_TASKS)  # the checks train with the default tasks
TINY = ["--width_mult", "0.0625", "--crop_size", "32", "--train_size", "64", "--val_size", "8", "--test_size", "8",
        "--batch_size", "4", "--iters", "6", "--val_iters", "3", "--save_iters", "3", "--log_every", "2",
        "--adaptive_begin", "1", "--adaptive_window", "2", "--progress", "off", "--device", "cuda"]


def checks(work: Path, gpus: int) -> list[tuple[str, list[str]]]:
    """(name, argv after the interpreter) of every check, in order; later ones use earlier runs' checkpoints."""
    run = lambda name: str(work / name)  # noqa: E731
    out = [
        ("adapmtl_fp32", ["baseline.py", *TINY, "--save_dir", run("adapmtl")]),
        ("dense_fp32", ["baseline.py", *TINY, "--dense", "--save_dir", run("dense")]),
        ("adapmtl_bf16_channels_last", ["baseline.py", *TINY, "--amp", "bf16", "--channels_last",
                                        "--save_dir", run("bf16")]),
        ("adapmtl_fp16", ["baseline.py", *TINY, "--amp", "fp16", "--save_dir", run("fp16")]),
        # a target reached at once: the stop rule's non-blocking flags freeze the thresholds from the first step
        ("stop_rule_flags", ["baseline.py", *TINY, "--ratio", "0.01", "--sInit_value", "-2",
                             "--save_dir", run("stop")]),
        ("budget_control", ["baseline.py", *TINY, "--sparsity_control", "budget", "--save_dir", run("budget")]),
        ("evaluate", ["test.py", "--path", str(work / "adapmtl" / CKPT), "--device", "cuda", "--progress", "off",
                      "--json", str(work / "eval.json")]),
        ("export", ["-m", "main.export", "--path", str(work / "adapmtl" / CKPT), "--out",
                    str(work / "adapmtl.safetensors")]),
        ("evaluate_export", ["test.py", "--path", str(work / "adapmtl.safetensors"), "--device", "cuda",
                             "--progress", "off"]),
        ("inference_bench", ["bench/inference.py", "--device", "cuda", "--warmup", "1", "--repeats", "2",
                             "--width_mult", "0.0625", "--input", "32", "--batch", "2"]),
        ("step_overhead_bench", ["bench/step_overhead.py", "--repeats", "2", "--warmup", "1"]),
    ]
    if gpus >= 1:  # NCCL: two ranks on two GPUs, or one rank alone (still the NCCL backend and DDP wrapper)
        nproc = min(gpus, 2)
        out.append((f"ddp_nccl_{nproc}gpu", ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                             "baseline.py", *TINY, "--save_dir", run("ddp")]))
    return out


def run_check(name: str, argv: Sequence[str], timeout: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        ok, code, tail = proc.returncode == 0, proc.returncode, (proc.stdout + proc.stderr)[-600:]
    except subprocess.TimeoutExpired:
        ok, code, tail = False, None, f"timed out after {timeout:.0f} s"
    result = {"name": name, "ok": ok, "seconds": round(time.perf_counter() - start, 1)}
    if not ok:
        result.update(exit_code=code, output_tail=tail)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON summary here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per check (default 120)")
    ns = p.parse_args(argv)
    if ns.out:  # before the work: a special file, a symlink or another kind of file is never replaced
        check_output_file(ns.out, "--out", OutputKind("a GPU-check JSON", is_json_with("gpu")))
    import torch

    if not torch.cuda.is_available():
        summary = {"gpu": False, "status": "no GPU"}
    else:
        gpus = torch.cuda.device_count()
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            results = [run_check(name, cmd, ns.timeout) for name, cmd in checks(Path(tmp), gpus)]
        summary = {"gpu": True, "devices": [torch.cuda.get_device_name(i) for i in range(gpus)],
                   "torch": torch.__version__, "cuda": torch.version.cuda, "checks": results,
                   "status": "ok" if all(r["ok"] for r in results) else "failed: " + ", ".join(
                       r["name"] for r in results if not r["ok"])}
    text = json.dumps(summary, indent=1)
    print(text)
    if ns.out:
        atomic_write_text(ns.out, text)
    return 0 if summary["status"] in ("ok", "no GPU") else 1


if __name__ == "__main__":
    cli_main(main)
