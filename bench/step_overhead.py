"""Training-step cost of AdapMTL's soft thresholds against the same model trained dense, printed as JSON.

One step = ``Trainer.step``, what ``Trainer.train`` does per iteration: forward, per-task losses, the adaptive
weights, (AdapMTL only) the on-device per-layer sparsity count the stop rule reads, the one-transfer step flags,
backward, the Adam and scheduler steps, on the same pre-loaded batch.  Dense is the same model with
``set_sparse(False)``.  On CPU two more modes show what each speed-up buys: ``adapmtl_per_layer`` takes the fused
soft threshold one autograd node per layer instead of one per component
(``MultiTaskModel.set_threshold_kernel("per_layer")``), ``adapmtl_general`` switches the fusion off
(``"general"``).  After a warm-up, the modes' steps are interleaved (rotating which goes first) so machine noise
hits all alike; the medians and their ratios come from one run.  Configs: the CPU preset (resnet34, width 0.125,
96×96, batch 8) and ResNet34 at width 1 on 64×64, batch 4; each also on CUDA when a GPU is visible (timed with
``torch.cuda.synchronize``).

    python -m bench.step_overhead [--repeats 15] [--warmup 3] [--configs preset full] [--profile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from main.config import Config
from main.data.batch import to_device
from main.data.loaders import train_loader
from main.step_flags import StepCheck
from main.trainer import Trainer
from main.trainer_setup import build_trainer

CONFIGS = {
    "preset": {"width_mult": 0.125, "crop_size": 96, "batch_size": 8},
    "full": {"width_mult": 1.0, "crop_size": 64, "batch_size": 4},
}


def make_trainer(name: str, device: str, save_dir: str) -> Trainer:
    cfg = Config(**CONFIGS[name], train_size=16, val_size=8, test_size=8, device=device, save_dir=save_dir,
                 tensorboard=False, progress="off", overwrite=True).check()
    return build_trainer(cfg)


KERNELS = {"adapmtl_per_layer": "per_layer", "adapmtl_general": "general"}  # every other mode: "grouped"


def set_mode(tr: Trainer, sparse: bool) -> None:
    """The same trainer stepping dense or AdapMTL (its sparsity check follows)."""
    tr.model.set_sparse(sparse)
    tr.sparse = sparse
    tr.counter.record_forward_counts(sparse)
    tr.check = StepCheck(tr.counter if sparse else None, (1.0 - tr.cfg.ratio) * sum(tr.counter.totals))


def train_step(tr: Trainer, batch: dict) -> None:
    """The per-iteration work of ``Trainer.train``: ``Trainer.step`` at a fixed iteration."""
    tr.step(batch, tr.cfg.adaptive_begin)


def timed(tr: Trainer, batch: dict, mode: str, cuda: bool) -> float:
    """One step in ``mode``: dense; adapmtl; adapmtl_per_layer (the fused CPU soft threshold, one autograd node per
    layer instead of per component); adapmtl_general (the non-fused path GPUs take)."""
    set_mode(tr, mode != "dense")
    tr.model.set_threshold_kernel(KERNELS.get(mode, "grouped"))
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_step(tr, batch)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(name: str, device: str, repeats: int, warmup: int, profile: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        tr = make_trainer(name, device, tmp)
        tr.model.train()
        batch = to_device(next(iter(train_loader(tr.train_set, tr.cfg, 0, tr.dist, tr.device))), tr.device)
        cuda = tr.device.type == "cuda"
        modes = ["dense", "adapmtl"] + ([] if cuda else ["adapmtl_per_layer", "adapmtl_general"])
        for _ in range(warmup):
            for mode in modes:
                timed(tr, batch, mode, cuda)
        times: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(repeats):
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # rotate which goes first
                times[mode].append(timed(tr, batch, mode, cuda))
        tr.model.set_threshold_kernel("grouped")
        out = {"device": str(tr.device), **CONFIGS[name], "conv_layers": len(tr.counter.layers), "repeats": repeats}
        out.update({f"{m}_ms": 1e3 * statistics.median(t) for m, t in times.items()})
        out["ratio"] = out["adapmtl_ms"] / out["dense_ms"]
        if not cuda:  # the fused CPU soft threshold against the general path, same run
            out["ratio_per_layer"] = out["adapmtl_per_layer_ms"] / out["dense_ms"]
            out["ratio_general"] = out["adapmtl_general_ms"] / out["dense_ms"]
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as tprofile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            for sparse in (False, True):
                set_mode(tr, sparse)
                with tprofile(activities=acts) as prof:
                    for _ in range(3):
                        train_step(tr, batch)
                print(f"== {name} {'adapmtl' if sparse else 'dense'} (3 steps)", file=sys.stderr)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), file=sys.stderr)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables to stderr")
    ns = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [measure(c, d, ns.repeats, ns.warmup, ns.profile) for d in devices for c in ns.configs]
    print(json.dumps({"machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                      "torch": torch.__version__, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
