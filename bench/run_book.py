"""What the known-sensitivity and component-sensitivity experiments share: runs (commands, checkpoint, what they
start from), a resumable book of what ran, and running them side by side.

A *run* is one training (``baseline.py``, or ``pruning.py`` then ``finetune.py`` from a dense pre-training) and its
test.py evaluations on the validation and test splits.  The book (``<logs>/<name>/cells.json``) records each run's
commands, the protocol preset's hash, CPU and wall time; a run whose record and JSON match what it would run now is
skipped, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.compare import ROOT, job_layout, protocol_hash, run_commands, run_test_py, stop_children_on_sigterm
from bench.compare_protocol import BUDGET_CONTROL, LR_STEPS, PROTOCOL_CONFIG, QUICK_FLAGS
from bench.mechanism import trace
from main.atomic import atomic_write_text
from main.checkpoint import checkpoint_name
from main.errors import UserError

TARGET = 0.9
SPLITS = ("val", "test")


def is_pretrain(key: str) -> bool:
    return "pretrain_seed" in key


@dataclass
class Run:
    """One training (and its evaluations): its key, shell commands and checkpoint."""

    key: str
    seed: int
    commands: list[list[str]]
    checkpoint: Path
    allocation: dict[str, float] | None = None
    needs: str | None = None  # key of the run whose checkpoint this one starts from


class RunBook:
    """Runs of one experiment (``name``), how to run them resumably, and where their results live.

    Subclasses say which runs there are (``runs``); a run is done when the book records its commands under the
    current protocol preset and its JSON exist.  Runs that start from a pre-training (``Run.needs``) run after it.
    """

    def __init__(self, ns: argparse.Namespace, name: str, tasks: Sequence[str]) -> None:
        self.ns, self.name, self.tasks = ns, name, tuple(tasks)
        self.ckpt = checkpoint_name(self.tasks)
        self.out = Path(ns.out) / name
        self.root = Path(ns.logs) / name
        self.report = Path(ns.logs) / f"{name}.md"
        self.T, self.P = ns.iters, ns.iters // 2
        self.common = ["--config", PROTOCOL_CONFIG, "--tasks", *self.tasks, "--progress", "off", "--overwrite"] + (
            QUICK_FLAGS if ns.quick else [])
        self.protocol = protocol_hash(ROOT / PROTOCOL_CONFIG)
        self.book_path = self.root / "cells.json"
        self.book: dict = json.loads(self.book_path.read_text()) if self.book_path.is_file() else {}
        self.jobs, self.threads = job_layout(ns)
        self._lock = threading.Lock()
        self._sizes: dict[tuple[str, ...], dict[str, int]] = {}

    def runs(self) -> list[Run]:
        raise NotImplementedError

    # ------------------------------------------------------------------ commands
    def flags(self, seed: int, save: Path, iters: int, arch_flags: Sequence[str] = ()) -> list[str]:
        """One training command's flags: the protocol preset, this seed and folder, its own annealed schedule."""
        return self.common + list(arch_flags) + ["--seed", str(seed), "--save_dir", str(save), "--iters",
                                                 str(iters), "--decay_lr_freq", str(max(1, iters // LR_STEPS))]

    def dense_runs(self, prefix: str, seed: int, arch_flags: Sequence[str] = ()) -> list[Run]:
        """The shared dense pre-training (half the budget) and the dense reference (the whole budget)."""
        pre, dense = self.out / f"{prefix}pretrain_seed{seed}", self.out / f"{prefix}dense_seed{seed}"
        return [Run(f"{prefix}pretrain_seed{seed}", seed,
                    [["baseline.py", "--dense", *self.flags(seed, pre, self.P, arch_flags)]], pre / self.ckpt),
                Run(f"{prefix}dense_seed{seed}", seed,
                    [["baseline.py", "--dense", *self.flags(seed, dense, self.T, arch_flags)]], dense / self.ckpt)]

    def adapmtl_run(self, key: str, seed: int, arch_flags: Sequence[str] = ()) -> Run:
        """AdapMTL with budget control at ``TARGET``, from scratch for the whole budget."""
        save = self.out / key
        return Run(key, seed, [["baseline.py", "--ratio", str(TARGET), "--sInit_value", str(BUDGET_CONTROL[0]),
                                "--weight_decay", str(BUDGET_CONTROL[1]), "--sparsity_control", "budget",
                                *self.flags(seed, save, self.T, arch_flags)]], save / self.ckpt)

    def component_sizes(self, arch_flags: Sequence[str] = ()) -> dict[str, int]:
        """Prunable weights per component of the benchmark's model (what an allocation is weighted by); built once
        per architecture, since ``runs()`` (which needs them) is listed again by every report."""
        key = tuple(arch_flags)
        if key not in self._sizes:
            self._sizes[key] = self._count_sizes(key)
        return self._sizes[key]

    def _count_sizes(self, arch_flags: Sequence[str]) -> dict[str, int]:
        from main.cli.args import parse_args
        from main.data import dataset_info
        from main.models import model_for
        from main.sparse import SparsityCounter

        cfg, _ = parse_args(self.flags(0, Path("unused"), self.T, arch_flags))
        model = model_for(cfg, dataset_info(cfg).task_channels, sparse=False)
        counter = SparsityCounter(model.components())
        sizes: dict[str, int] = {}
        for (comp, _, _), n in zip(counter.layers, counter.totals, strict=True):
            sizes[comp] = sizes.get(comp, 0) + n
        return sizes

    def finished(self) -> list[tuple[Run, str]]:
        """Every finished run but the pre-trainings, with its family (its key without ``_seed<N>``)."""
        return [(run, run.key.rsplit("_seed", 1)[0]) for run in self.runs()
                if not is_pretrain(run.key) and self.done(run)]

    def pruned(self, key: str, seed: int, method: str, alloc: dict[str, float] | None, prefix: str = "",
               arch_flags: Sequence[str] = (), target: float = TARGET) -> Run:
        """``pruning.py`` on the seed's pre-training (``alloc``: each component's own sparsity), then
        ``finetune.py`` with the masks fixed for the other half of the budget."""
        save = self.out / key
        pruned = self.out / f"{key}_pruned"
        source = self.out / f"{prefix}pretrain_seed{seed}" / self.ckpt
        prune = ["pruning.py", "--load_checkpoint", str(source), "--method", method, "--target", str(target),
                 "--save_dir", str(pruned), "--progress", "off", "--overwrite"]
        if alloc is not None:
            prune += ["--component_sparsity", *(f"{c}={v:g}" for c, v in alloc.items())]
        tune = ["finetune.py", "--load_checkpoint", str(pruned / self.ckpt),
                *self.flags(seed, save, self.T - self.P, arch_flags)]
        return Run(key, seed, [prune, tune], save / self.ckpt, allocation=alloc, needs=f"{prefix}pretrain_seed{seed}")

    # ------------------------------------------------------------------ running
    def json_path(self, run: Run, split: str) -> Path:
        return self.root / "runs" / f"{run.key}.{split}.json"

    def done(self, run: Run) -> bool:
        entry = self.book.get(run.key)
        return (entry is not None and entry.get("protocol") == self.protocol
                and entry.get("commands") == [shlex.join(["python", *c]) for c in run.commands]
                and (is_pretrain(run.key) or all(self.json_path(run, s).is_file() for s in SPLITS)))

    def execute(self, run: Run) -> bool:
        """Run ``run`` unless it is done; True when it ran."""
        if self.done(run):
            return False
        print(f"[{self.name}] {run.key} ...", flush=True)
        log = self.out / "logs" / f"{run.key}.log"
        log.unlink(missing_ok=True)
        shutil.rmtree(run.checkpoint.parent, ignore_errors=True)
        spent = run_commands(run.commands, log, self.threads)
        if not is_pretrain(run.key):
            for split in SPLITS:
                run_test_py(run.checkpoint, self.json_path(run, split), split, log, run.key, [], self.threads)
        entry = {"seed": run.seed, "allocation": run.allocation, "protocol": self.protocol,
                 "wall_s": round(spent.wall, 1), "cpu_s": round(spent.cpu, 1),
                 "commands": [shlex.join(["python", *c]) for c in run.commands]}
        if "adapmtl" in run.key:
            entry["mechanism"] = trace(run.checkpoint.parent)
        with self._lock:
            self.book[run.key] = entry
            self.book_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.book_path, json.dumps(self.book, indent=1))
        print(f"[{self.name}] {run.key} done ({spent.cpu / 60:.1f} CPU min)", flush=True)
        return True

    def run_all(self) -> None:
        """First what starts from scratch (pre-trainings, dense, AdapMTL), then what starts from a pre-training.

        A pre-training trained anew (its checkpoint lost, another preset) makes its pruned runs stale, although
        their commands are unchanged: they are trained again.
        """
        runs = self.runs()
        first = [r for r in runs if r.needs is None]
        for r in first:  # a pre-training whose checkpoint is gone must run again before its prunes
            if is_pretrain(r.key) and not r.checkpoint.is_file() and any(
                    d.needs == r.key and not self.done(d) for d in runs):
                self.book.pop(r.key, None)
        ran = self.parallel([functools.partial(self.execute, r) for r in first])
        fresh = {r.key for r, did in zip(first, ran) if did and is_pretrain(r.key)}
        for r in runs:
            if r.needs in fresh:
                self.book.pop(r.key, None)
        self.parallel([functools.partial(self.execute, r) for r in runs if r.needs is not None])

    def parallel(self, tasks: Sequence[Callable[[], bool]]) -> list[bool]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return [future.result() for future in [pool.submit(t) for t in tasks]]




# ---------------------------------------------------------------------------------------------------- CLI
def parser(doc: str, name: str, seeds: int) -> argparse.ArgumentParser:
    """The options every run-book experiment takes (its own are added by the caller)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=seeds, help=f"seeds of every run (default {seeds})")
    p.add_argument("--iters", type=int, default=1200, help="training budget of every run (default 1200)")
    p.add_argument("--out", default="outputs", help=f"run folders go in OUT/{name} (default outputs)")
    p.add_argument("--logs", default="logs", help="report and JSON (default logs)")
    p.add_argument("--quick", action="store_true", help="tiny model, a few iterations, 1 seed: a smoke test")
    p.add_argument("--report_only", action="store_true", help="only rebuild the report from the JSON")
    p.add_argument("--jobs", type=int, default=0, help="runs side by side (default 0: one per core, at most 8)")
    return p


def checked(ns: argparse.Namespace) -> argparse.Namespace:
    """The common options checked (one-line errors); a --quick smoke test shrunk to 8 iterations and 1 seed."""
    ns.extra = []
    if ns.seeds < 1 or ns.iters < 4 or ns.jobs < 0:
        raise UserError("--seeds must be >= 1, --iters >= 4 and --jobs >= 0")
    if ns.quick:
        ns.iters, ns.seeds = min(ns.iters, 8), min(ns.seeds, 1)
    return ns


def run_and_report(bench: RunBook, write_report: Callable[[RunBook], Path]) -> int:
    """Run what is not done (unless --report_only), then write the report."""
    if not bench.ns.report_only:
        stop_children_on_sigterm()
        bench.run_all()
    print(f"[{bench.name}] report: {write_report(bench)}")
    return 0
