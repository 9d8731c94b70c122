"""Cost of the training loop around the step: ``Trainer.train`` against bare steps, printed as JSON.

The loop is ``Trainer.train`` on the CPU preset (AdapMTL, default ``--log_every 50``, TensorBoard on) for
``--iters`` iterations: data loading, the step, the adaptive weighting, the stop rule, the scheduler, the
interval logging.  Validation and checkpoint saving are switched off (they are periodic jobs, not loop
overhead; the run's final iteration would otherwise trigger both).  The bare step is the same step as
``bench/step_overhead.py`` on the same model, from the same state, over the same batches loaded beforehand.
Loop and bare runs alternate ``--rounds`` times; the medians and the overhead fraction come from one run.

    python bench/loop_overhead.py [--iters 60] [--rounds 4]
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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_overhead import train_step  # noqa: E402

from main.config import Config  # noqa: E402
from main.runner import build_trainer  # noqa: E402
from main.trainer import Trainer  # noqa: E402
from main.validation import to_device  # noqa: E402


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
                     overwrite=True).validate()
        tr = build_trainer(cfg)
        tr._validate = lambda writer: {}  # periodic jobs, not loop overhead (see the docstring)
        tr.save = lambda *a, **k: None
        tr._write_sparsity_json = lambda: None
        limit = tr._threshold_count_limit()
        batches = [to_device(b, tr.device) for _, b in zip(range(ns.iters), tr._train_loader())]
        start = snapshot(tr)
        tr.model.train()
        for b in batches[:3]:  # warm-up
            train_step(tr, b, limit)
        loop_s, bare_s = [], []
        for _ in range(ns.rounds):
            restore(tr, start)
            tr.model.train()
            t0 = time.perf_counter()
            for b in batches:
                train_step(tr, b, limit)
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
