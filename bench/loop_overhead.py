"""Cost of the training loop around the step: ``Trainer.train`` against bare ``Trainer.step`` calls, with a
breakdown of where an iteration's time goes, printed as JSON.

The loop is ``Trainer.train`` (default ``--log_every 50``, TensorBoard on) for ``--iters`` iterations: data
loading, the step, the callbacks.  Validation and checkpoint saving are switched off (they are periodic jobs, not
loop overhead; the run's final iteration would otherwise trigger both).  The bare step is ``Trainer.step`` on the
same model, from the same state, over the same batches loaded beforehand.  Loop and bare runs alternate
``--rounds`` times; the medians and the ratio come from one run.

Configurations: ``preset`` (the CPU preset: ResNet34 x0.125, 96x96, batch 8) and ``paper`` (the paper's width:
ResNet34 x1, 64x64 crops, batch 4, 24 training scenes, 2 threads: the setting where issue 17 measured the original
code's loop at 2.5-2.9 s/iteration), each for AdapMTL and dense.  The breakdown, per iteration, from timings of the
same batches: ``data`` (the training DataLoader and the copy to the device), ``forward`` (network and task
losses), ``backward``, ``optimizer`` (Adam's step), ``sparsity_and_weighting`` (the step minus forward, backward
and Adam: adaptive weights, the one-transfer step flags and the sparsity control, the scheduler), ``logging`` (one
``TrainingLog`` interval report, timed alone, divided by ``log_every``) and ``everything_else`` (the loop minus
data, step and logging: the other callbacks, the loop itself).

    python -m bench.loop_overhead [--configs preset paper] [--iters 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from main.checkpoint_saver import SaveLatest
from main.config import Config
from main.data.batch import to_device
from main.data.loaders import train_loader
from main.monitor import ScalarWriter
from main.precision import predictions_fp32
from main.tasks import task_loss
from main.trainer import Trainer
from main.trainer_setup import build_trainer
from main.training_log import TrainingLog
from main.validation import Validation

CONFIGS = {
    "preset": {"settings": {}, "threads": None},
    "paper": {"settings": {"width_mult": 1.0, "crop_size": 64, "batch_size": 4, "train_size": 24}, "threads": 2},
}


def snapshot(tr: Trainer) -> dict:
    return copy.deepcopy({"model": tr.model.state_dict(), "opt": tr.optimizer.state_dict(),
                          "sched": tr.scheduler.state_dict(), "weighting": tr.weighting.state_dict()})


def restore(tr: Trainer, state: dict) -> None:
    tr.model.load_state_dict(state["model"])
    tr.optimizer.load_state_dict(state["opt"])
    tr.scheduler.load_state_dict(state["sched"])
    tr.weighting.load_state_dict(state["weighting"])
    tr.iteration = 0


def make_trainer(name: str, dense: bool, iters: int, save_dir: str) -> Trainer:
    """The configuration's trainer, with only the loop's own callbacks (no validation, no checkpoints)."""
    settings = {"train_size": max(16, 8 * iters), **CONFIGS[name]["settings"]}
    cfg = Config(**settings, dense=dense, iters=iters, val_iters=10 * iters, save_iters=10 * iters, device="cpu",
                 val_size=8, test_size=8, save_dir=save_dir, progress="off", overwrite=True).check()
    tr = build_trainer(cfg)
    callbacks = tr.callbacks
    tr.callbacks = lambda stack: [cb for cb in callbacks(stack) if not isinstance(cb, Validation | SaveLatest)]
    return tr


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward(tr: Trainer, batch: dict, backward: bool, optimizer: bool = False) -> None:
    """The step's forward (and backward, and the optimiser step): network, task losses, the plain sum."""
    preds = predictions_fp32(tr.net(batch["input"]))
    total = sum(task_loss(t, preds[t], batch, tr.class_weights) for t in tr.tasks)
    if backward:
        tr.optimizer.zero_grad(set_to_none=True)
        total.backward()
        tr.counter.record_forward_counts(tr.sparse)  # the fused path recorded counts: drop them, as a step reads them
    if optimizer:
        tr.optimizer.step()


def log_cost(tr: Trainer) -> float:
    """Seconds per iteration that the training log's interval report costs (one report, TensorBoard included,
    divided by ``log_every``)."""
    with tempfile.TemporaryDirectory() as tmp:
        tr.writer = ScalarWriter(tmp)
        log = TrainingLog(tr)
        log.steps = log.finite_steps = 1
        seconds = timed(lambda: log.report(tr, torch.ones(len(tr.tasks))))
        log.close()
        tr.writer.close()
    return seconds / tr.cfg.log_every


def load_batches(tr: Trainer, n: int) -> list[dict]:
    loader = train_loader(tr.train_set, tr.cfg, 0, tr.dist, tr.device)
    return [to_device(b, tr.device) for _, b in zip(range(n), loader)]


def measure(name: str, dense: bool, iters: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        tr = make_trainer(name, dense, iters, tmp)
        batches = load_batches(tr, iters)
        start = snapshot(tr)
        tr.model.train()
        for i, b in enumerate(batches[:2]):  # warm-up
            tr.step(b, i)
        runs: dict[str, list[float]] = {k: [] for k in ("loop", "step", "data", "forward", "forward_backward",
                                                        "forward_backward_optimizer", "log")}
        for _ in range(rounds):
            restore(tr, start)
            tr.model.train()
            runs["step"].append(timed(lambda: [tr.step(b, i) for i, b in enumerate(batches)]))
            runs["forward"].append(timed(lambda: [forward(tr, b, False) for b in batches]))
            runs["forward_backward"].append(timed(lambda: [forward(tr, b, True) for b in batches]))
            restore(tr, start)
            runs["forward_backward_optimizer"].append(timed(lambda: [forward(tr, b, True, True) for b in batches]))
            with contextlib.redirect_stdout(sys.stderr):  # its console line; stdout carries only the JSON
                runs["log"].append(iters * log_cost(tr))
            runs["data"].append(timed(lambda: load_batches(tr, iters)))
            restore(tr, start)
            with contextlib.redirect_stdout(sys.stderr):  # the run's log lines; stdout carries only the JSON
                runs["loop"].append(timed(tr.train))
        med = {k: statistics.median(v) / iters for k, v in runs.items()}
        return {"config": name, "mode": "dense" if dense else "adapmtl", "threads": torch.get_num_threads(),
                "iters": iters, "log_every": tr.cfg.log_every, "loop_s_per_it": med["loop"],
                "step_s_per_it": med["step"], "loop_over_step": med["loop"] / med["step"],
                "breakdown_s_per_it": {"data": med["data"], "forward": med["forward"],
                                       "backward": med["forward_backward"] - med["forward"],
                                       "optimizer": med["forward_backward_optimizer"] - med["forward_backward"],
                                       "sparsity_and_weighting": med["step"] - med["forward_backward_optimizer"],
                                       "logging": med["log"],
                                       "everything_else": med["loop"] - med["step"] - med["data"] - med["log"]},
                "runs_s": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    ns = parser.parse_args()
    results = []
    for name in ns.configs:
        if CONFIGS[name]["threads"]:
            torch.set_num_threads(CONFIGS[name]["threads"])
        results += [measure(name, dense, ns.iters, ns.rounds) for dense in (False, True)]
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
