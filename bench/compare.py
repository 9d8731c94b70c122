"""Every method at equal sparsity and equal training budget on the synthetic 3-task benchmark.

    python -m bench.compare [--sparsities 50 70 90 95] [--seeds 3] [--iters 1000] [--jobs N] [--quick] [--report_only]
    Scripts/compare.sh ...                         (the same, with the repository's interpreter)

What one *cell* (method x target sparsity x seed) runs, with T = ``--iters`` training iterations in total
(pre-training, pruning and fine-tuning counted together) and the CPU preset (configs/synthetic.yaml):

- dense: ``baseline.py --dense`` for T.  Its test JSON is the Δ_T reference of every run with the same seed.
- AdapMTL (stop rule, the reference control): ``baseline.py`` for T from scratch, sInit and weight decay per
  target from ``REFERENCE_CONTROL`` (the reference controls sparsity this way; reference-adapmtl.md §3.4).
- AdapMTL (budget control): the same with ``--sparsity_control budget`` and ONE sInit / weight decay for all targets.
- ablations (at ``--ablation_sparsity``, seed 0, budget control so that sparsity is equal): equal task weights
  instead of the adaptive ones; one global threshold instead of one per component.
- SNIP, DiSparse-static: prune at initialisation, train T (``SOTA_methods.at_init``).
- DiSparse-dynamic: prune-and-regrow during T (``SOTA_methods.disparse``).
- IMP, LTH: from a dense model pre-trained for P = T/2 (one per seed, shared): IMP prunes by magnitude in rounds
  of 50 % of what is left, fine-tuning (T - P) / rounds after each; LTH prunes once to the target, rewinds the
  survivors to θ_0 and retrains T - P.
- Taylor, CosPrune (structured, filters): from the same pre-trained model, remove ``--filter_ratios`` of the
  backbone filters, fine-tune T - P.  Heads cannot lose filters, so these reach far lower overall sparsity than
  the targets: they are reported in their own table, at the sparsity they reach.

Fair tuning: every method except dense gets the same grid (``--grid_lr``, default 1e-3 and 5e-4), tried at
the ``--ablation_sparsity`` target with seed 0; among the learning rates whose run ends at the target (overall
sparsity at most 1 pp below it: AdapMTL's stop rule can stop short with a small lr, and a less sparse model would
win the comparison for the wrong reason), the one with the best validation Δ_T (validation split against the
dense model's validation metrics) is then used for all of that method's cells.  Reported numbers are
the final checkpoints on the test split.

Side by side: ``--jobs`` cells run at once, each with its share of the CPU cores (default: one cell per core, one
thread each; on 2 cores that does 1.6x the work per hour of one cell with two threads, since the preset's model
is too small for two threads to share one convolution well).  The thread count changes float rounding, so a cell
trained in another layout than a recorded one gives slightly different numbers; ``--jobs 1`` is torch's default
layout, the one the committed results were made with.

Resumable: a cell whose test JSON exists and whose recorded commands are the ones it would run now is skipped
(one recorded with other commands, e.g. another learning rate than the grid chose, is re-run); a finished run with
the same commands in another folder (a tuning run and its seed-0 cell) is evaluated instead of trained again; a
shared pre-training whose checkpoint exists is reused; an interrupted cell is re-run from its start.

Writes ``logs/synthetic_comparison.md``, the raw test.py JSON of every run in ``logs/synthetic_comparison/runs/``,
the commands and wall times in ``logs/synthetic_comparison/cells.json`` and the plots in
``logs/synthetic_comparison/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from main.errors import UserError, cli_main  # noqa: E402

CKPT = "segment_semantic_normal_depth_zbuffer.model"
CONFIG = "configs/synthetic.yaml"
# Reference control: sInit / coupled weight decay per target (stop rule).  90 % is the preset (tuned for the demo
# at 1500 iterations, a little stronger for the shorter comparison budget); the others follow the reference's
# monotone sparsity-vs-weight-decay relation (reference-adapmtl.md §3.4) and were not swept.
REFERENCE_CONTROL = {50: (-6.0, 5e-4), 70: (-6.0, 1.5e-3), 90: (-6.0, 5e-3), 95: (-6.0, 8e-3)}
TUNING_SHORTFALL = 0.01  # a tuning run counts as at its target when its overall sparsity is at most 1 pp below
BUDGET_CONTROL = (-6.0, 4e-3)  # one setting for every target: the preset
UNSTRUCTURED = ("adapmtl", "adapmtl_budget", "adapmtl_budget_track", "snip", "disparse_static",
                "disparse_dynamic", "imp", "lth")
STRUCTURED = ("taylor", "cosprune")
ABLATIONS = ("adapmtl_equal_weights", "adapmtl_global_threshold")
LABELS = {
    "dense": "Dense (baseline)", "adapmtl": "AdapMTL (stop rule, wd per target)",
    "adapmtl_budget": "AdapMTL (budget control)", "adapmtl_budget_track": "AdapMTL (budget control, track mode)",
    "snip": "SNIP", "disparse_static": "DiSparse-static", "disparse_dynamic": "DiSparse-dynamic", "imp": "IMP",
    "lth": "LTH", "taylor": "Taylor (filters)", "cosprune": "CosPrune (filters)",
    "adapmtl_equal_weights": "AdapMTL w/o adaptive weighting",
    "adapmtl_global_threshold": "AdapMTL, one global threshold",
}
QUICK_FLAGS = ["--width_mult", "0.0625", "--crop_size", "32", "--train_size", "32", "--val_size", "8",
               "--test_size", "8", "--batch_size", "4", "--adaptive_begin", "2", "--adaptive_window", "2",
               "--log_every", "2", "--val_iters", "4", "--save_iters", "4", "--sInit_value", "-4.5"]


@dataclass
class Cell:
    """One run to make: its shell commands, the checkpoint to evaluate and the JSON that marks it done."""

    key: str
    method: str
    target: int | None  # percent; None for dense
    seed: int
    commands: list[list[str]]
    checkpoint: Path
    split: str = "test"
    lr: float | None = None
    info: dict = field(default_factory=dict)


class Plan:
    """Builds the cells from the options; knows where every run and result lives."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.out = Path(ns.out)
        self.logs = Path(ns.logs)
        self.runs = self.logs / "synthetic_comparison" / "runs"
        self.tune = self.logs / "synthetic_comparison" / "tuning"
        self.T = ns.iters
        self.P = ns.iters // 2
        self.common = ["--config", CONFIG, "--progress", "off", "--overwrite"] + (QUICK_FLAGS if ns.quick else [])
        self.common += list(ns.extra)

    # ------------------------------------------------------------------ commands of one method
    def base(self, seed: int, save: Path, lr: float | None) -> list[str]:
        flags = self.common + ["--seed", str(seed), "--save_dir", str(save)]
        return flags + (["--lr", str(lr)] if lr is not None else [])

    def pretrain_dir(self, seed: int) -> Path:
        return self.out / f"pretrain_P{self.P}_seed{seed}"

    def pretrain_commands(self, seed: int) -> list[list[str]]:
        return [["baseline.py", "--dense", "--iters", str(self.P)] + self.base(seed, self.pretrain_dir(seed), None)]

    def commands(self, method: str, target: int | None, seed: int, save: Path, lr: float | None) -> list[list[str]]:
        T, P, r = self.T, self.P, None if target is None else f"{target / 100:g}"
        base = self.base(seed, save, lr)
        pre = str(self.pretrain_dir(seed) / CKPT)
        if method == "dense":
            return [["baseline.py", "--dense", "--iters", str(T)] + base]
        if method in ("adapmtl", "adapmtl_budget", "adapmtl_budget_track", *ABLATIONS):
            s_init, wd = REFERENCE_CONTROL[target] if method == "adapmtl" else BUDGET_CONTROL
            cmd = ["baseline.py", "--iters", str(T), "--ratio", r, "--sInit_value", str(s_init),
                   "--weight_decay", str(wd)] + base
            if method != "adapmtl":
                cmd += ["--sparsity_control", "budget"]
            if method == "adapmtl_budget_track":  # the first controller design, kept for the record (README)
                cmd += ["--budget_mode", "track", "--budget_ramp", "0.5"]
            if method == "adapmtl_equal_weights":
                cmd += ["--task_weighting", "equal"]
            if method == "adapmtl_global_threshold":
                cmd += ["--threshold_scope", "global"]
            return [cmd]
        if method in ("snip", "disparse_static"):
            return [["-m", "SOTA_methods.at_init", "--method", method, "--target", r, "--iters", str(T)] + base]
        if method == "disparse_dynamic":
            return [["-m", "SOTA_methods.disparse", "--target", r, "--iters", str(T)] + base]
        if method == "imp":
            rounds = max(1, math.ceil(math.log(1 - target / 100) / math.log(0.5) - 1e-9))
            per = (T - P) // rounds
            return [["-m", "SOTA_methods.imp", "--load_checkpoint", pre, "--target", r, "--per_round", "0.5",
                     "--finetune_iters", str(per), "--iters", str(T - P - per * (rounds - 1))] + base]
        if method == "lth":  # θ_0 is regenerated from the pre-training's own seed (= this seed): no --seed
            i = base.index("--seed")
            return [["-m", "SOTA_methods.lth", "--load_checkpoint", pre, "--target", r, "--one_shot",
                     "--iters", str(T - P)] + base[:i] + base[i + 2:]]
        if method in STRUCTURED:
            pruned = save / "pruned"
            return [["pruning.py", "--load_checkpoint", pre, "--method", method, "--prune_ratio", r,
                     "--num_batches", "10", "--save_dir", str(pruned), "--progress", "off", "--overwrite"]
                    + list(self.ns.extra),
                    ["finetune.py", "--load_checkpoint", str(pruned / CKPT), "--iters", str(T - P)] + base]
        raise UserError(f"unknown method {method!r}")

    def needs_pretrain(self, method: str) -> bool:
        return method in ("imp", "lth", *STRUCTURED)

    # ------------------------------------------------------------------ the cells, in the order they run
    def cells(self, lrs: dict[str, float | None]) -> list[Cell]:
        ns = self.ns
        seeds = list(range(ns.seeds))
        first = [t for t in ns.sparsities if t == ns.seed_sparsity] + [t for t in ns.sparsities
                                                                       if t != ns.seed_sparsity]
        out: list[Cell] = []

        def add(method: str, target: int | None, seed: int) -> None:
            tag = "" if target is None else f"_sp{target}"
            key = f"{method}{tag}_seed{seed}"
            save = self.out / key
            out.append(Cell(key, method, target, seed, self.commands(method, target, seed, save, lrs.get(method)),
                            save / CKPT, lr=lrs.get(method)))

        for seed in seeds:
            add("dense", None, seed)
        # Most informative first, so that an interrupted comparison still says the most: every method at the
        # seeded target; AdapMTL's two controls at every target; ablations; structured; the rest; extra seeds.
        adapmtl = ("adapmtl", "adapmtl_budget", "adapmtl_budget_track")
        for m in ns.methods:
            if m in UNSTRUCTURED and first:
                add(m, first[0], 0)
        for target in first[1:]:
            for m in ns.methods:
                if m in adapmtl:
                    add(m, target, 0)
        for m in ns.methods:
            if m in ABLATIONS and ns.ablation_sparsity is not None:
                add(m, ns.ablation_sparsity, 0)
        for m in ns.methods:
            if m in STRUCTURED:
                for ratio in ns.filter_ratios:
                    add(m, ratio, 0)
        for target in first[1:]:
            for m in ns.methods:
                if m in UNSTRUCTURED and m not in adapmtl:
                    add(m, target, 0)
        for seed in seeds[1:]:
            for m in ns.methods:
                if m in UNSTRUCTURED and ns.seed_sparsity in ns.sparsities:
                    add(m, ns.seed_sparsity, seed)
        return out


# ---------------------------------------------------------------------------------------------------- running
def run_commands(commands: Sequence[Sequence[str]], log: Path, threads: int | None = None) -> float:
    """Run each command with this interpreter from the repository root; output appended to ``log``.

    ``threads``: the CPU threads each command may use (``OMP_NUM_THREADS``), when cells run side by side.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads),
                                        "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("a") as fh:
        for cmd in commands:
            argv = [sys.executable, *cmd]
            fh.write(f"$ {shlex.join(['python', *cmd])}\n")
            fh.flush()
            proc = subprocess.run(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
            if proc.returncode != 0:
                raise UserError(f"command failed (exit {proc.returncode}): python {shlex.join(list(cmd))}; "
                                f"its output is in {log}")
    return time.perf_counter() - start


def evaluate(checkpoint: Path, out_json: Path, reference: Path | None, split: str, log: Path, label: str,
             extra: Sequence[str], threads: int | None = None) -> None:
    cmd = ["test.py", "--path", str(checkpoint), "--json", str(out_json), "--split", split, "--progress", "off",
           "--label", label] + (["--reference", str(reference)] if reference is not None else [])
    cmd += _device_flag(extra)
    run_commands([cmd], log, threads)


def _device_flag(extra: Sequence[str]) -> list[str]:
    """test.py takes only --device of the training flags passed through ``--extra``."""
    extra = list(extra)
    return extra[extra.index("--device"):extra.index("--device") + 2] if "--device" in extra else []


class Runner:
    """Runs the plan's cells in order, skipping what is done; records commands and wall times."""

    def __init__(self, plan: Plan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.book_path = plan.logs / "synthetic_comparison" / "cells.json"
        self.book: dict = json.loads(self.book_path.read_text()) if self.book_path.is_file() else {}
        self.jobs, self.threads = job_layout(plan.ns)
        self._lock = threading.Lock()  # the book, when cells run side by side
        self._pretrain_lock = threading.Lock()  # a shared pre-training is trained once

    def record(self, key: str, entry: dict) -> None:
        if self.jobs > 1:
            entry = {**entry, "jobs": self.jobs, "threads": self.threads}
        with self._lock:
            self.book[key] = entry
            self.book_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.book_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.book, indent=1))
            tmp.replace(self.book_path)

    def parallel(self, tasks: Sequence[Callable[[], None]], after_each: Callable[[], None] | None = None) -> None:
        """Run ``tasks`` (cells: each a few processes, one after another) ``self.jobs`` at a time.

        On CPU two one-thread runs of the preset do 1.6x the work of one two-thread run on 2 cores (two dense
        cells side by side: 4.3 min, against 3.5 min for one alone), which brings the default grid within about
        3 hours there.  The first failure stops further cells from starting; the running ones finish.
        """
        if self.jobs == 1:
            for task in tasks:
                task()
                if after_each is not None:
                    after_each()
            return
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(task) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
                    if after_each is not None:
                        after_each()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def ensure_pretrain(self, seed: int) -> None:
        plan = self.plan
        with self._pretrain_lock:
            if (plan.pretrain_dir(seed) / CKPT).is_file():
                return
            key = plan.pretrain_dir(seed).name
            self.say(f"[compare] shared dense pre-training, {plan.P} iterations, seed {seed}")
            cmds = plan.pretrain_commands(seed)
            wall = run_commands(cmds, plan.out / "logs" / f"{key}.log", self.threads)
        self.record(key, {"commands": [shlex.join(["python", *c]) for c in cmds], "wall_s": round(wall, 1)})

    def dense_reference(self, seed: int, split: str) -> Path:
        return (self.plan.runs if split == "test" else self.plan.tune) / f"dense_seed{seed}.json"

    def run_cell(self, cell: Cell, out_json: Path) -> None:
        plan = self.plan
        if out_json.is_file():
            recorded = self.book.get(out_json.stem)
            if recorded is None or self.same_training(recorded, out_json.stem, cell):
                return
            # e.g. the tuning grid chose another learning rate than the one this cell was first run with
            self.say(f"[compare] {out_json.stem}: recorded with other commands (lr {recorded.get('lr')}), re-running")
            out_json.unlink()
        if plan.needs_pretrain(cell.method):
            self.ensure_pretrain(cell.seed)
        log = plan.out / "logs" / f"{cell.key}.log"
        log.unlink(missing_ok=True)
        twin = self.finished_twin(cell, exclude=out_json.stem)
        if twin is not None:  # an identical training (same commands up to the folder) already ran: evaluate it
            cell.checkpoint = twin[1]
            wall = 0.0
            self.say(f"[compare] {cell.key}: the finished run {twin[0]} is this training, evaluating it")
        else:
            self.say(f"[compare] {cell.key} ({cell.split}) ...")
            shutil.rmtree(cell.checkpoint.parent, ignore_errors=True)  # no stale events or checkpoints mixed in
            wall = run_commands(cell.commands, log, self.threads)
        reference = None if cell.method == "dense" else self.dense_reference(cell.seed, cell.split)
        if reference is not None and not reference.is_file():
            raise UserError(f"the dense reference {reference} is missing; run the dense cells first")
        evaluate(cell.checkpoint, out_json, reference, cell.split, log, cell.key, plan.ns.extra, self.threads)
        if cell.method == "dense":  # the validation metrics too: the reference of the tuning grid
            evaluate(cell.checkpoint, self.dense_reference(cell.seed, "val"), None, "val", log, cell.key,
                     plan.ns.extra, self.threads)
        entry = {"method": cell.method, "target": cell.target, "seed": cell.seed, "lr": cell.lr,
                 "split": cell.split, "wall_s": round(wall, 1), "run_dir": str(cell.checkpoint.parent),
                 "commands": [shlex.join(["python", *c]) for c in cell.commands]}
        if twin is not None:
            entry["reused"] = twin[0]
        self.record(out_json.stem, entry)
        self.say(f"[compare] {cell.key} done in {wall / 60:.1f} min")

    def drop_stale(self, cells: Sequence[Cell]) -> None:
        """Remove the result of every cell recorded with other commands than it has now (e.g. another lr)."""
        for cell in cells:
            out_json = self.plan.runs / f"{cell.key}.json"
            recorded = self.book.get(cell.key)
            if out_json.is_file() and recorded is not None and not self.same_training(recorded, cell.key, cell):
                self.say(f"[compare] {cell.key}: recorded with other commands (lr {recorded.get('lr')}), dropped "
                         "until it is re-run")
                out_json.unlink()

    def tuning_key(self, method: str, target: int, lr: float) -> str:
        return f"{method}_sp{target}_seed0_lr{lr:g}"

    def save_dir(self, key: str, entry: dict) -> Path:
        """Where the run recorded under ``key`` saved its checkpoint."""
        return self.plan.out / "tuning" / key if entry.get("split") == "val" else self.plan.out / key

    def same_training(self, entry: dict, key: str, cell: Cell) -> bool:
        """True when the recorded run trained with ``cell``'s commands, up to the folder it saved in."""
        save = cell.checkpoint.parent
        mine = [shlex.join(["python", *c]).replace(str(save), "{SAVE}") for c in cell.commands]
        theirs = [c.replace(str(self.save_dir(key, entry)), "{SAVE}") for c in entry.get("commands", [])]
        return mine == theirs

    def finished_twin(self, cell: Cell, exclude: str) -> tuple[str, Path] | None:
        """(key, checkpoint) of a finished run that trained exactly as ``cell`` would.

        The tuning run with the chosen learning rate is the seed-0 cell at the tuning target, and the other way
        round: the same commands, seed and data give the same training, so it is evaluated, not trained twice.
        """
        with self._lock:
            entries = list(self.book.items())
        for key, entry in entries:
            if key == exclude or not self.same_training(entry, key, cell):
                continue
            # an entry that was itself evaluated from another folder names it in run_dir
            checkpoint = Path(entry.get("run_dir", self.save_dir(key, entry))) / CKPT
            if checkpoint.is_file():
                return key, checkpoint
        return None

    def tune(self, train: bool = True) -> dict[str, float | None]:
        """Pick each method's learning rate on the validation split (seed 0, the ablation target).

        ``train=False`` (``--report_only``) only reads the finished grid: a method with a missing run is left out.
        """
        plan, ns = self.plan, self.plan.ns
        grid = list(ns.grid_lr)
        chosen: dict[str, float | None] = {}
        tunable = [m for m in ns.methods if m != "dense" and m not in ABLATIONS]
        if len(grid) <= 1 or ns.ablation_sparsity is None:
            return {m: (grid[0] if grid and m != "dense" else None) for m in ns.methods}
        def tuning_cell(m: str, lr: float) -> tuple[Cell, Path]:
            target = ns.filter_ratios[0] if m in STRUCTURED else ns.ablation_sparsity
            key = self.tuning_key(m, target, lr)
            save = plan.out / "tuning" / key
            cell = Cell(key, m, target, 0, plan.commands(m, target, 0, save, lr), save / CKPT, split="val", lr=lr)
            return cell, plan.tune / f"{key}.json"

        if train:
            self.parallel([functools.partial(self.run_cell, *tuning_cell(m, lr)) for m in tunable for lr in grid])
        for m in tunable:
            scores = {}
            for lr in grid:
                cell, out_json = tuning_cell(m, lr)
                if not out_json.is_file():  # --report_only: a run of the grid is missing
                    break
                res = json.loads(out_json.read_text())
                # Equal sparsity first: a run that stops short of the target (AdapMTL's stop rule can, with a
                # small lr) is not at the target, so it only wins when no lr gets there.  Then validation Δ_T;
                # where that is undefined (a dense metric of 0) the mean validation loss decides.
                overall = (res.get("sparsity") or {}).get("overall")
                reached = m in STRUCTURED or overall is None or overall >= cell.target / 100 - TUNING_SHORTFALL
                losses = list(res.get("losses", {}).values()) or [math.inf]
                scores[lr] = (reached, (res.get("delta_t") or {}).get("overall", -math.inf),
                              -sum(losses) / len(losses))
            if len(scores) < len(grid):
                continue
            chosen[m] = max(grid, key=lambda lr: scores[lr])
            self.say(f"[compare] tuned {m}: lr {chosen[m]:g} (target reached, val Δ_T, -loss: " +
                     ", ".join(f"{lr:g}: {r}, {d:+.2f}, {loss:.3f}" for lr, (r, d, loss) in scores.items()) + ")")
        for m in ABLATIONS:
            chosen[m] = chosen.get("adapmtl_budget", grid[0])
        chosen["dense"] = None
        return chosen


# ---------------------------------------------------------------------------------------------------- CLI
def job_layout(ns: argparse.Namespace) -> tuple[int, int | None]:
    """(cells at a time, CPU threads per cell or None for torch's default) from ``--jobs``.

    ``--jobs 0`` (auto): one cell per CPU core (at most 8), one thread each; one cell with a GPU (``--extra
    --device cuda``), whose runs would otherwise share it.  One job keeps torch's own thread count.
    """
    cores = os.cpu_count() or 1
    jobs = ns.jobs
    if jobs == 0:
        jobs = 1 if "cuda" in _device_flag(ns.extra)[1:] else min(cores, 8)
    return jobs, (None if jobs == 1 else max(1, cores // jobs))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sparsities", type=int, nargs="+", default=[50, 70, 90, 95], help="targets in percent")
    p.add_argument("--seeds", type=int, default=3, help="seeds at --seed_sparsity (1 elsewhere); default 3")
    p.add_argument("--seed_sparsity", type=int, default=90, help="the target that gets every seed (default 90)")
    p.add_argument("--iters", type=int, default=1000, help="total training iterations per method (default 1000)")
    p.add_argument("--methods", nargs="+", default=["dense", *[m for m in UNSTRUCTURED if m != "adapmtl_budget_track"],
                                                    *ABLATIONS, *STRUCTURED],
                   help="subset of: dense " + " ".join(UNSTRUCTURED + ABLATIONS + STRUCTURED))
    p.add_argument("--ablation_sparsity", type=int, default=90, help="target of the ablations and the tuning grid")
    p.add_argument("--filter_ratios", type=int, nargs="+", default=[50, 75],
                   help="Taylor / CosPrune: percent of the backbone filters removed (default 50 75)")
    p.add_argument("--grid_lr", type=float, nargs="+", default=[1e-3, 5e-4],
                   help="learning rates every method is tuned over (one value = no tuning)")
    p.add_argument("--out", default="outputs/compare", help="run folders (default outputs/compare)")
    p.add_argument("--logs", default="logs", help="where results, tables and plots go (default logs)")
    p.add_argument("--quick", action="store_true", help="tiny model and data, a few iterations: a smoke test")
    p.add_argument("--report_only", action="store_true", help="only rebuild the table and plots from the JSON")
    p.add_argument("--jobs", type=int, default=0,
                   help="cells run side by side, each with cores/jobs CPU threads (default 0: one per core, at most\n"
                        "8, one thread each; 1 with --extra --device cuda)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="flags passed to every training command, e.g. --extra --device cuda (must come last)")
    ns = p.parse_args(argv)
    known = {"dense", *UNSTRUCTURED, *ABLATIONS, *STRUCTURED}
    bad = [m for m in ns.methods if m not in known]
    if bad:
        raise UserError(f"unknown method {bad[0]!r} in --methods; choose from {' '.join(sorted(known))}")
    if "dense" not in ns.methods:
        ns.methods = ["dense", *ns.methods]  # every Δ_T needs it
    for t in [*ns.sparsities, *ns.filter_ratios, ns.seed_sparsity, ns.ablation_sparsity]:
        if not 0 < t < 100:
            raise UserError(f"sparsities and filter ratios are percentages in (0, 100), got {t}")
    if ns.seeds < 1 or ns.iters < 2 or ns.jobs < 0:
        raise UserError("--seeds must be >= 1, --iters >= 2 and --jobs >= 0")
    if ns.quick:
        ns.iters = min(ns.iters, 8)
        ns.seeds = min(ns.seeds, 2)
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    from bench.compare_report import write_report

    ns = parse(argv)
    plan = Plan(ns)
    start = time.time()
    if not ns.report_only:
        runner = Runner(plan)
        plan.runs.mkdir(parents=True, exist_ok=True)
        if runner.jobs > 1:
            print(f"[compare] {runner.jobs} cells at a time, {runner.threads} CPU thread(s) each", flush=True)
        # Dense first (every Δ_T, tuning included, is measured against it), with the shared pre-trainings.
        first = plan.cells({})
        seeds = sorted({c.seed for c in first if plan.needs_pretrain(c.method)})
        runner.parallel([functools.partial(runner.run_cell, c, plan.runs / f"{c.key}.json")
                         for c in first if c.method == "dense"] +
                        [functools.partial(runner.ensure_pretrain, seed) for seed in seeds])
        lrs = runner.tune()
        cells = plan.cells(lrs)
        runner.drop_stale(cells)  # results of other commands leave the tables now, not only when re-run
        todo = [c for c in cells if not (plan.runs / f"{c.key}.json").is_file()]
        if todo:
            print(f"[compare] {len(todo)} of {len(cells)} cells to run", flush=True)
        runner.parallel([functools.partial(runner.run_cell, c, plan.runs / f"{c.key}.json") for c in cells],
                        after_each=lambda: write_report(plan, lrs, time.time() - start))  # the table grows
    else:  # the grid's choice from the finished tuning runs; results of other commands leave the tables
        runner = Runner(plan)
        lrs = runner.tune(train=False)
        runner.drop_stale([c for c in plan.cells(lrs) if c.method in lrs])
    path = write_report(plan, lrs, time.time() - start)
    print(f"[compare] table: {path}")
    return 0


def environment() -> dict:
    """Versions and machine, for the report."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


if __name__ == "__main__":
    cli_main(main)
