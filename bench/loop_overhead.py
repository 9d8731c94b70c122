"""Cost of the training loop around the step: ``Trainer.train`` against bare steps, printed as JSON.

The loop is ``Trainer.train`` on the CPU preset (AdapMTL, default ``--log_every 50``, TensorBoard on) for
``--iters`` iterations: data loading, the step, the adaptive weighting, the stop rule, the scheduler, the
interval logging.  Validation and checkpoint saving are switched off (they are periodic jobs, not loop
overhead; the run's final iteration would otherwise trigger both).  The bare step is the same step as
``bench/step_overhead.py`` on the same model, from the same state, over the same batches loaded beforehand.
Loop and bare runs alternate ``--rounds`` times; the medians and the overhead fraction come from one run.

    python -m bench.loop_overhead [--iters 60] [--rounds 4]
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

from bench.step_overhead import train_step
from main.checkpoint_saver import SaveLatest
from main.config import Config
from main.data.batch import to_device
from main.data.loaders import train_loader
from main.trainer import Trainer
from main.trainer_setup import build_trainer
from main.validation import Validation


def snapshot(tr: Trainer) -> dict:
    return copy.deepcopy({"model": tr.model.state_dict(), "opt": tr.optimizer.state_dict(),
                          "sched": tr.scheduler.state_dict(), "weighting": tr.weighting.state_dict()})


def restore(tr: Trainer, state: dict) -> None:
    tr.model.load_state_dict(state["model"])
    tr.optimizer.load_state_dict(state["opt"])
    tr.scheduler.load_state_dict(state["sched"])
    tr.weighting.load_state_dict(state["weighting"])
    tr.iteration = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = Config(iters=ns.iters, val_iters=10 * ns.iters, save_iters=10 * ns.iters, device="cpu",
                     train_size=max(16, 8 * ns.iters), val_size=8, test_size=8, save_dir=tmp, progress="off",
                     overwrite=True).check()
        tr = build_trainer(cfg)
        callbacks = tr.callbacks
        # validation and checkpoints are periodic jobs, not loop overhead (see the docstring): only the training
        # log and the preemption check stay
        tr.callbacks = lambda stack: [cb for cb in callbacks(stack) if not isinstance(cb, Validation | SaveLatest)]
        loader = train_loader(tr.train_set, tr.cfg, 0, tr.dist, tr.device)
        batches = [to_device(b, tr.device) for _, b in zip(range(ns.iters), loader)]
        start = snapshot(tr)
        tr.model.train()
        for b in batches[:3]:  # warm-up
            train_step(tr, b)
        loop_s, bare_s = [], []
        for _ in range(ns.rounds):
            restore(tr, start)
            tr.model.train()
            t0 = time.perf_counter()
            for b in batches:
                train_step(tr, b)
            bare_s.append(time.perf_counter() - t0)
            restore(tr, start)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the run's log lines; stdout carries only the JSON
                tr.train()
            loop_s.append(time.perf_counter() - t0)
        loop, bare = statistics.median(loop_s), statistics.median(bare_s)
        print(json.dumps({"machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                          "torch": torch.__version__, "iters": ns.iters, "log_every": cfg.log_every,
                          "loop_s": loop, "bare_steps_s": bare, "overhead": loop / bare - 1,
                          "loop_runs_s": loop_s, "bare_runs_s": bare_s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
