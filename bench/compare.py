"""Every method at equal sparsity and equal training budget on the synthetic 3-task benchmark, on ResNet34 and
MobileNetV2, with seeds enough for confidence intervals.

    python -m bench.compare [--architectures resnet34 mobilenetv2] [--seeds 5] [--sparsities 90] [--jobs N]
                            [--data_seed 0] [--quick] [--report_only]
    Scripts/compare.sh ...                         (the same, with the repository's interpreter)

What one *cell* (architecture x method x target sparsity x seed) runs, with T = ``--iters`` training iterations in
total (pre-training, pruning and fine-tuning counted together) and the protocol preset (``PROTOCOL_CONFIG``):

- dense: ``baseline.py --dense`` for T.  The mean of the dense seeds is the Δ_T reference of every other run.
- AdapMTL (stop rule, the reference control): ``baseline.py`` for T from scratch, sInit and weight decay per
  target from ``REFERENCE_CONTROL`` (the reference controls sparsity this way; docs/reference.md §3.4).
- AdapMTL (budget control): the same with ``--sparsity_control budget`` and ONE sInit / weight decay for all targets.
- AdapMTL from dense: ``--reload`` of the shared dense pre-training (P = T/2), then T - P with budget control (the
  stop rule tuned for a start from scratch need not reach the target in T - P): the reference README's "Option 2".
- ablations (``--ablation_seeds`` seeds, first architecture, budget control so that sparsity is equal, paired with
  AdapMTL's budget-control cells of the same seeds): equal task weights; one global threshold instead of one per
  component.
- SNIP, DiSparse-static: prune at initialisation, train T (``SOTA_methods.at_init``).
- DiSparse-dynamic: prune-and-regrow during T (``SOTA_methods.disparse``).
- IMP, LTH: from the dense pre-training (one per seed and architecture, shared): IMP prunes by magnitude in rounds
  of 50 % of what is left, fine-tuning (T - P) / rounds after each; LTH prunes once, rewinds to θ_0, retrains T - P.
- Taylor, CosPrune (structured; not in the default grid): remove ``--filter_ratios`` of the backbone filters of the
  pre-trained model, fine-tune T - P.  Reported in their own table, at the sparsity they reach.

Fair tuning: every method, dense included, gets the same learning-rate grid (``--grid_lr``), tried with seed 0 at
the ``--ablation_sparsity`` target on the validation split.  Dense picks the lr with the best validation Δ_T against
the mean of its grid runs; every other method the one with the best validation Δ_T against the chosen dense run,
among the lrs whose run ends at the target (overall sparsity at most 1 pp below it: a less sparse model would win
for the wrong reason).  The chosen lr's tuning run is the method's seed-0 cell, evaluated on test.

Side by side: ``--jobs`` cells run at once, each with its share of the CPU cores (default: one cell per core, one
thread each).  Resumable: a cell whose test JSON exists and whose recorded commands are the ones it would run now
is skipped (one recorded with other commands, e.g. another learning rate, is re-run); a finished run with the same
commands in another folder is evaluated instead of trained again; an interrupted cell is re-run from its start.

Writes ``logs/comparison.md`` (``logs/comparison_data_seed<N>.md`` for another ``--data_seed``), the raw test.py JSON
of every cell in ``logs/comparison/runs/<architecture>/``, the tuning runs' in ``.../tuning/<architecture>/``, the
commands, wall and CPU times in ``.../cells.json`` and the plots; ``bench.compare_report`` builds the report from them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bench.compare_protocol import (
    ARCH_FLAGS,
    ARCHITECTURES,
    BUDGET_CONTROL,
    CKPT,
    DEFAULT_ABLATIONS,
    DEFAULT_METHODS,
    LR_STEPS,
    METHODS,
    MOBILENETV2_METHODS,
    PROTOCOL_CONFIG,
    QUICK_FLAGS,
    REFERENCE_CONTROL,
    TUNING_SHORTFALL,
    WINDOW_SWEEP,
)
from bench.comparison_stats import delta, mean_table, metrics_of
from bench.mechanism import trace
from main.atomic import atomic_write_text
from main.config import load_yaml
from main.errors import UserError, cli_main

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cell:
    """One run to make: its shell commands, the checkpoint to evaluate and the JSON that marks it done."""

    key: str  # "<architecture>/<method>[_sp<target>]_seed<seed>[_lr<lr>]"
    arch: str
    method: str
    target: int | None  # percent; None for dense
    seed: int
    commands: list[list[str]]
    checkpoint: Path
    split: str = "test"
    lr: float | None = None


class Plan:
    """Builds the cells from the options; knows where every run and result lives."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.name = "comparison" if ns.data_seed == 0 else f"comparison_data_seed{ns.data_seed}"
        self.out = Path(ns.out) / self.name
        self.logs = Path(ns.logs)
        self.root = self.logs / self.name
        self.report = self.logs / f"{self.name}.md"
        self.runs = self.root / "runs"
        self.tune = self.root / "tuning"
        self.T = ns.iters
        self.P = ns.iters // 2
        self.common = ["--config", PROTOCOL_CONFIG, "--progress", "off", "--overwrite", "--data_seed",
                       str(ns.data_seed)] + (QUICK_FLAGS if ns.quick else []) + list(ns.extra)

    def json_path(self, cell: Cell) -> Path:
        return (self.runs if cell.split == "test" else self.tune) / f"{cell.key}.json"

    # ------------------------------------------------------------------ commands of one method
    def base(self, arch: str, seed: int, save: Path, lr: float | None, iters: int) -> list[str]:
        """Flags of one training command of ``iters`` iterations: its lr steps down ``LR_STEPS - 1`` times, at
        the same fractions of every phase (a pre-training, an IMP round and a full run all anneal alike)."""
        flags = self.common + self.arch_flags(arch) + ["--seed", str(seed), "--save_dir", str(save),
                                                       "--decay_lr_freq", str(max(1, iters // LR_STEPS))]
        return flags + (["--lr", str(lr)] if lr is not None else [])

    def arch_flags(self, arch: str) -> list[str]:
        """``--architecture`` and the architecture's own protocol flags (none in a --quick smoke test, whose
        tiny crop is the point)."""
        return ["--architecture", arch, *([] if self.ns.quick else ARCH_FLAGS.get(arch, ()))]

    def pretrain_dir(self, arch: str, seed: int) -> Path:
        return self.out / arch / f"pretrain_P{self.P}_seed{seed}"

    def pretrain_commands(self, arch: str, seed: int) -> list[list[str]]:
        save = self.pretrain_dir(arch, seed)
        return [["baseline.py", "--dense", "--iters", str(self.P)] + self.base(arch, seed, save, None, self.P)]

    def commands(self, method: str, arch: str, target: int | None, seed: int, save: Path,
                 lr: float | None) -> list[list[str]]:
        kind = METHODS[method].kind
        builder = _BUILDERS.get(method) or _BUILDERS.get(kind)
        if builder is None:
            raise UserError(f"unknown method {method!r}")
        ctx = _Ctx(self, arch, None if target is None else f"{target / 100:g}", target, seed, save, lr)
        return builder(ctx)

    @staticmethod
    def runs_at(method: str, target: int) -> bool:
        """Whether ``method`` has a cell at ``target`` (the stop rule only where it has an sInit / weight decay)."""
        spec = METHODS[method]
        return (method != "dense" and spec.kind != "structured"
                and (method != "adapmtl" or target in REFERENCE_CONTROL))

    def needs_pretrain(self, method: str) -> bool:
        return METHODS[method].needs_pretrain

    def methods(self, arch: str) -> list[str]:
        """The methods run on ``arch``: ``--methods``; on MobileNetV2 those of them in ``MOBILENETV2_METHODS`` (the
        paper's Table 2 rows and AdapMTL with budget control), unless ``--mobilenetv2_methods`` names its own."""
        ns = self.ns
        if arch != "mobilenetv2":
            return list(ns.methods)
        if ns.mobilenetv2_methods is not None:
            return list(ns.mobilenetv2_methods)
        return [m for m in ns.methods if m in MOBILENETV2_METHODS]

    # ------------------------------------------------------------------ the cells, in the order they run
    def cell(self, arch: str, method: str, target: int | None, seed: int, lr: float | None,
             split: str = "test") -> Cell:
        tag = "" if target is None else f"_sp{target}"
        key = f"{arch}/{method}{tag}_seed{seed}" + (f"_lr{lr:g}" if split == "val" else "")
        save = self.out / ("tuning" if split == "val" else "") / key
        return Cell(key, arch, method, target, seed, self.commands(method, arch, target, seed, save, lr),
                    save / CKPT, split=split, lr=lr)

    def cells(self, lrs: dict[tuple[str, str], float | None]) -> list[Cell]:
        """Every test cell; ``lrs[(arch, method)]`` is the tuned learning rate (None: the preset's).

        Seed by seed, so that an interrupted comparison has every method at the same seeds (the paired tests need
        them); within a seed the architectures and methods in order; the other targets and the ablations last.
        """
        ns = self.ns
        main_target = ns.seed_sparsity
        out: list[Cell] = []
        ranked = {a: [m for m in self.methods(a) if not METHODS[m].ablation] for a in ns.architectures}
        for seed in range(ns.seeds):
            for arch in ns.architectures:
                for m in ranked[arch]:
                    for t in ([None] if m == "dense" else [main_target] if main_target in ns.sparsities else []):
                        if METHODS[m].kind == "structured":
                            continue
                        out.append(self.cell(arch, m, t, seed, lrs.get((arch, m))))
        for arch in ns.architectures:
            for seed in range(ns.curve_seeds):  # the other targets (accuracy-against-sparsity curves), seed by seed
                for t in ns.sparsities:
                    if t == main_target:
                        continue
                    for m in ranked[arch]:
                        if self.runs_at(m, t):
                            out.append(self.cell(arch, m, t, seed, lrs.get((arch, m))))
            for m in ranked[arch]:
                if METHODS[m].kind == "structured":
                    out += [self.cell(arch, m, r, 0, lrs.get((arch, m))) for r in ns.filter_ratios]
        arch0 = ns.architectures[0]
        for seed in range(ns.ablation_seeds):  # paired with budget control's cells of the same seeds
            for m in self.methods(arch0):
                if METHODS[m].ablation and ns.ablation_sparsity is not None:
                    out.append(self.cell(arch0, m, ns.ablation_sparsity, seed, lrs.get((arch0, "adapmtl_budget"))))
        return out


# ---------------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class _Ctx:
    plan: Plan
    arch: str
    ratio: str | None  # the target as a fraction, for the command line
    target: int | None
    seed: int
    save: Path
    lr: float | None

    def base(self, iters: int) -> list[str]:
        return self.plan.base(self.arch, self.seed, self.save, self.lr, iters)

    @property
    def pretrained(self) -> str:
        return str(self.plan.pretrain_dir(self.arch, self.seed) / CKPT)


def _dense(c: _Ctx) -> list[list[str]]:
    return [["baseline.py", "--dense", "--iters", str(c.plan.T)] + c.base(c.plan.T)]


_ADAPMTL_EXTRA = {
    "adapmtl_budget_track": ["--budget_mode", "track", "--budget_ramp", "0.5"],  # the first controller design
    "adapmtl_equal_weights": ["--task_weighting", "equal"],
    "adapmtl_global_threshold": ["--threshold_scope", "global"],
    **{f"adapmtl_window{w}": ["--adaptive_window", str(w)] for w in WINDOW_SWEEP},
}


def _adapmtl(method: str) -> Callable[[_Ctx], list[list[str]]]:
    def build(c: _Ctx) -> list[list[str]]:
        stop_rule = method == "adapmtl"
        s_init, wd = REFERENCE_CONTROL[c.target] if stop_rule else BUDGET_CONTROL
        iters = c.plan.T - c.plan.P if method == "adapmtl_dense_start" else c.plan.T
        cmd = ["baseline.py", "--iters", str(iters), "--ratio", c.ratio, "--sInit_value", str(s_init),
               "--weight_decay", str(wd)] + c.base(iters)
        if method == "adapmtl_dense_start":
            cmd += ["--reload", c.pretrained]
        if not stop_rule:
            cmd += ["--sparsity_control", "budget"]
        return [cmd + _ADAPMTL_EXTRA.get(method, [])]
    return build


def _at_init(method: str) -> Callable[[_Ctx], list[list[str]]]:
    return lambda c: [["-m", "SOTA_methods.at_init", "--method", method, "--target", c.ratio, "--iters",
                       str(c.plan.T)] + c.base(c.plan.T)]


def _disparse_dynamic(c: _Ctx) -> list[list[str]]:
    return [["-m", "SOTA_methods.disparse", "--target", c.ratio, "--iters", str(c.plan.T)] + c.base(c.plan.T)]


def _imp(c: _Ctx) -> list[list[str]]:
    T, P = c.plan.T, c.plan.P
    rounds = max(1, math.ceil(math.log(1 - c.target / 100) / math.log(0.5) - 1e-9))
    per = (T - P) // rounds
    return [["-m", "SOTA_methods.imp", "--load_checkpoint", c.pretrained, "--target", c.ratio, "--per_round", "0.5",
             "--finetune_iters", str(per), "--iters", str(T - P - per * (rounds - 1))] + c.base(per)]


def _lth(c: _Ctx) -> list[list[str]]:
    base = c.base(c.plan.T - c.plan.P)  # θ_0 is regenerated from the pre-training's own seed (= this seed): no --seed
    i = base.index("--seed")
    return [["-m", "SOTA_methods.lth", "--load_checkpoint", c.pretrained, "--target", c.ratio, "--one_shot",
             "--iters", str(c.plan.T - c.plan.P)] + base[:i] + base[i + 2:]]


def _prune_then_finetune(method: str) -> Callable[[_Ctx], list[list[str]]]:
    """One-shot and structured rows: ``pruning.py`` on the shared pre-training, then ``finetune.py`` for T - P."""
    def build(c: _Ctx) -> list[list[str]]:
        pruned = c.save.with_name(f"{c.save.name}_pruned")  # beside the run: finetune --overwrite clears c.save
        return [["pruning.py", "--load_checkpoint", c.pretrained, "--method", method, "--prune_ratio", c.ratio,
                 *c.plan.arch_flags(c.arch), "--num_batches", "10", "--save_dir", str(pruned), "--progress", "off",
                 "--overwrite"] + list(c.plan.ns.extra),
                ["finetune.py", "--load_checkpoint", str(pruned / CKPT), "--iters", str(c.plan.T - c.plan.P)]
                + c.base(c.plan.T - c.plan.P)]
    return build


_BUILDERS: dict[str, Callable[[_Ctx], list[list[str]]]] = {
    "dense": _dense,
    **{m: _adapmtl(m) for m, spec in METHODS.items() if spec.kind == "adapmtl"},
    **{m: _at_init(m) for m, spec in METHODS.items() if spec.kind == "at-init"},
    "disparse_dynamic": _disparse_dynamic, "imp": _imp, "lth": _lth,
    **{m: _prune_then_finetune(m) for m, spec in METHODS.items() if spec.kind in ("one-shot", "structured")},
}


# ---------------------------------------------------------------------------------------------------- running
def protocol_hash(path: Path) -> str:
    """A short hash of the preset's settings (parsed YAML, sorted), not of its bytes."""
    settings = json.dumps(load_yaml(str(path)), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


class Elapsed(NamedTuple):
    """Wall time and CPU time (user + system, of the commands' processes) in seconds.

    The CPU time is the budget measure: it does not grow when other work shares the machine, as wall time does.
    """

    wall: float
    cpu: float


_CHILDREN: set[subprocess.Popen] = set()  # the training processes running now, in every thread
_STOPPING = threading.Event()  # set by SIGTERM: no new command starts
_SPAWN = threading.RLock()  # a command is started and registered, or refused, as one step (re-entrant: SIGTERM)


def stop_children_on_sigterm() -> None:
    """SIGTERM (a cluster's preemption, ``kill``) stops the runs this process started before it exits.

    Without it the children outlive their grid, and the next run of the grid trains into a folder an orphan is
    still writing.  Each child gets SIGTERM itself, so a training writes its checkpoint and stops as it would
    alone; the grid then exits 143.
    """
    def stop(signum: int, _frame: object) -> None:
        with _SPAWN:  # no worker thread starts another command from now on
            _STOPPING.set()
        deadline = time.monotonic() + 120
        while _CHILDREN and time.monotonic() < deadline:  # one a worker started just before the flag is caught too
            for proc in list(_CHILDREN):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                if proc.poll() is not None:
                    _CHILDREN.discard(proc)
        os._exit(128 + signum)  # the worker threads still wait on their children: leave without joining them

    signal.signal(signal.SIGTERM, stop)


def run_commands(commands: Sequence[Sequence[str]], log: Path, threads: int | None = None) -> Elapsed:
    """Run each command with this interpreter from the repository root; output appended to ``log``.

    ``threads``: the CPU threads each command may use (``OMP_NUM_THREADS``), when cells run side by side.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads),
                                        "MKL_NUM_THREADS": str(threads)}
    start, cpu = time.perf_counter(), 0.0
    with log.open("a") as fh:
        for cmd in commands:
            fh.write(f"$ {shlex.join(['python', *cmd])}\n")
            fh.flush()
            with _SPAWN:
                if _STOPPING.is_set():
                    raise UserError("stopped (SIGTERM) before this command started")
                proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                        env=env)
                _CHILDREN.add(proc)
            try:  # wait4: this child's own resource usage (other cells' processes run beside it)
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                _CHILDREN.discard(proc)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                raise UserError(f"command failed (exit {proc.returncode}): python {shlex.join(list(cmd))}; "
                                f"its output is in {log}")
    return Elapsed(time.perf_counter() - start, cpu)


def run_test_py(checkpoint: Path, out_json: Path, split: str, log: Path, label: str, extra: Sequence[str],
                threads: int | None = None) -> None:
    """test.py on ``split``; its JSON holds both metric definitions, the report computes every Δ_T from them."""
    cmd = ["test.py", "--path", str(checkpoint), "--json", str(out_json), "--split", split, "--progress", "off",
           "--label", label] + _device_flag(extra)
    run_commands([cmd], log, threads)


def _device_flag(extra: Sequence[str]) -> list[str]:
    """test.py takes only --device of the training flags passed through ``--extra``."""
    extra = list(extra)
    return extra[extra.index("--device"):extra.index("--device") + 2] if "--device" in extra else []


class Grid:
    """The comparison grid: runs the plan's cells, skipping what is done; records commands, wall and CPU times."""

    def __init__(self, plan: Plan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.book_path = plan.root / "cells.json"
        self.book: dict = json.loads(self.book_path.read_text()) if self.book_path.is_file() else {}
        self.jobs, self.threads = job_layout(plan.ns)
        # the protocol preset is not on the command line: its settings are recorded (hashed as parsed, so an edited
        # comment changes nothing), and a cell run with other settings counts as another training
        self.protocol = protocol_hash(ROOT / PROTOCOL_CONFIG)
        self._lock = threading.Lock()  # the book, when cells run side by side
        self._pretrain_lock = threading.Lock()  # a shared pre-training is trained once

    def record(self, key: str, entry: dict) -> None:
        if self.jobs > 1:
            entry = {**entry, "jobs": self.jobs, "threads": self.threads}
        with self._lock:
            self.book[key] = entry
            self.book_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.book_path, json.dumps(self.book, indent=1))

    def parallel(self, tasks: Sequence[Callable[[], None]], after_each: Callable[[], None] | None = None) -> None:
        """Run ``tasks`` (cells: each a few processes, one after another) ``self.jobs`` at a time.

        The first failure stops further cells from starting; the running ones finish.
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

    def ensure_pretrain(self, arch: str, seed: int) -> None:
        plan = self.plan
        key = f"{arch}/{plan.pretrain_dir(arch, seed).name}"
        with self._pretrain_lock:
            recorded = self.book.get(key) or {}
            if (plan.pretrain_dir(arch, seed) / CKPT).is_file() and recorded.get("protocol",
                                                                                  self.protocol) == self.protocol:
                return
            self.say(f"[compare] shared dense pre-training of {arch}, {plan.P} iterations, seed {seed}")
            cmds = plan.pretrain_commands(arch, seed)
            spent = run_commands(cmds, plan.out / "logs" / f"{key}.log", self.threads)
        self.record(key, {"commands": [shlex.join(["python", *c]) for c in cmds], "wall_s": round(spent.wall, 1),
                          "cpu_s": round(spent.cpu, 1), "protocol": self.protocol})

    def run_cell(self, cell: Cell) -> None:
        plan = self.plan
        out_json = plan.json_path(cell)
        if out_json.is_file():
            recorded = self.book.get(cell.key)
            if recorded is None or self.same_training(recorded, cell.key, cell):
                return
            # e.g. the tuning grid chose another learning rate than the one this cell was first run with
            self.say(f"[compare] {cell.key}: recorded with other commands (lr {recorded.get('lr')}), re-running")
            out_json.unlink()
        if plan.needs_pretrain(cell.method):
            self.ensure_pretrain(cell.arch, cell.seed)
        log = plan.out / "logs" / f"{cell.key}.log"
        log.unlink(missing_ok=True)
        twin = self.finished_twin(cell, exclude=cell.key)
        twin_test = None if twin is None or cell.split != "test" else self.twin_test_json(twin[0])
        if twin is not None and twin[1].is_file():  # an identical training (same commands) already ran: evaluate it
            cell.checkpoint = twin[1]
            spent = Elapsed(0.0, 0.0)
            self.say(f"[compare] {cell.key}: the finished run {twin[0]} is this training, evaluating it")
        elif twin_test is not None:  # its run folder is gone (another machine), its test evaluation is kept
            cell.checkpoint = twin[1]
            spent = Elapsed(0.0, 0.0)
            self.say(f"[compare] {cell.key}: the finished run {twin[0]} is this training, taking its test JSON")
        else:
            twin = None
            self.say(f"[compare] {cell.key} ({cell.split}) ...")
            shutil.rmtree(cell.checkpoint.parent, ignore_errors=True)  # no stale events or checkpoints mixed in
            spent = run_commands(cell.commands, log, self.threads)
        if twin_test is not None and not twin[1].is_file():
            out_json.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(twin_test, out_json)
        else:
            run_test_py(cell.checkpoint, out_json, cell.split, log, cell.key, plan.ns.extra, self.threads)
        if cell.split == "val":  # the test split too, now: the chosen lr's run is the seed-0 cell, even elsewhere
            run_test_py(cell.checkpoint, plan.tune / f"{cell.key}.test.json", "test", log, cell.key, plan.ns.extra,
                     self.threads)
        entry = {"architecture": cell.arch, "method": cell.method, "target": cell.target, "seed": cell.seed,
                 "lr": cell.lr, "split": cell.split, "wall_s": round(spent.wall, 1), "cpu_s": round(spent.cpu, 1),
                 "protocol": self.protocol,
                 "run_dir": str(cell.checkpoint.parent),
                 "commands": [shlex.join(["python", *c]) for c in cell.commands]}
        if twin is not None:
            entry["reused"] = twin[0]
        if METHODS[cell.method].kind == "adapmtl":  # is the mechanism acting? (bench.mechanism)
            found = trace(cell.checkpoint.parent)
            entry["mechanism"] = found if found is not None else self.book.get(twin[0] if twin else "", {}).get(
                "mechanism")
        self.record(cell.key, entry)
        self.say(f"[compare] {cell.key} done in {spent.wall / 60:.1f} min ({spent.cpu / 60:.1f} CPU min)")

    def drop_stale(self, cells: Sequence[Cell]) -> None:
        """Remove the result of every cell recorded with other commands than it has now (e.g. another lr)."""
        for cell in cells:
            out_json = self.plan.json_path(cell)
            recorded = self.book.get(cell.key)
            if out_json.is_file() and recorded is not None and not self.same_training(recorded, cell.key, cell):
                self.say(f"[compare] {cell.key}: recorded with other commands (lr {recorded.get('lr')}), dropped "
                         "until it is re-run")
                out_json.unlink()

    def save_dir(self, key: str, entry: dict) -> Path:
        """Where the run recorded under ``key`` saved its checkpoint."""
        return self.plan.out / "tuning" / key if entry.get("split") == "val" else self.plan.out / key

    def same_training(self, entry: dict, key: str, cell: Cell) -> bool:
        """True when the recorded run trained with ``cell``'s commands (up to the folder it saved in) and preset."""
        if entry.get("protocol") != self.protocol:
            return False
        save = cell.checkpoint.parent
        mine = [shlex.join(["python", *c]).replace(str(save), "{SAVE}") for c in cell.commands]
        theirs = [c.replace(str(self.save_dir(key, entry)), "{SAVE}") for c in entry.get("commands", [])]
        return mine == theirs

    def finished_twin(self, cell: Cell, exclude: str) -> tuple[str, Path] | None:
        """(key, checkpoint) of a finished run that trained exactly as ``cell`` would (the tuning run with the
        chosen learning rate is the seed-0 cell, and the other way round): evaluated, not trained twice.  One whose
        checkpoint is gone still counts when its test evaluation is kept (``twin_test_json``)."""
        with self._lock:
            entries = list(self.book.items())
        found = None
        for key, entry in entries:
            if key == exclude or not self.same_training(entry, key, cell):
                continue
            checkpoint = Path(entry.get("run_dir", self.save_dir(key, entry))) / CKPT
            if checkpoint.is_file():
                return key, checkpoint
            found = found or (key, checkpoint)
        return found

    def twin_test_json(self, key: str) -> Path | None:
        """The test-split JSON a finished run left: a tuning run's ``<key>.test.json``, a cell's own JSON."""
        for path in (self.plan.tune / f"{key}.test.json", self.plan.runs / f"{key}.json"):
            if path.is_file():
                return path
        return None

    # ------------------------------------------------------------------ the learning-rate grid
    def tuning_cells(self, arch: str, method: str) -> list[Cell]:
        ns = self.plan.ns
        target = None if method == "dense" else (ns.filter_ratios[0] if METHODS[method].kind == "structured"
                                                 else ns.ablation_sparsity)
        return [self.plan.cell(arch, method, target, 0, lr, split="val") for lr in ns.grid_lr]

    def tune(self, train: bool = True) -> dict[tuple[str, str], float | None]:
        """Pick each (architecture, method)'s learning rate on the validation split, dense first.

        ``train=False`` (``--report_only``) only reads the finished grid: a method with a missing run is left out.
        """
        ns = self.plan.ns
        grid = list(ns.grid_lr)
        methods = {a: self.plan.methods(a) for a in ns.architectures}
        if len(grid) <= 1 or ns.ablation_sparsity is None:
            return {(a, m): grid[0] if grid else None for a in ns.architectures for m in methods[a]}
        archs = ns.architectures
        chosen: dict[tuple[str, str], float | None] = {}
        # dense first: every other method's validation Δ_T is measured against the chosen dense run
        if train:
            self.parallel([functools.partial(self.run_cell, c) for a in archs for c in self.tuning_cells(a, "dense")])
        for arch in archs:
            chosen[(arch, "dense")] = self.choose(arch, "dense", None)
        others = {a: [m for m in methods[a] if m != "dense" and not METHODS[m].ablation] for a in archs}
        if train:
            self.parallel([functools.partial(self.run_cell, c) for a in archs if chosen[(a, "dense")] is not None
                           for m in others[a] for c in self.tuning_cells(a, m)])
        for arch in archs:
            for m in others[arch]:
                chosen[(arch, m)] = self.choose(arch, m, chosen[(arch, "dense")])
        chosen = {k: v for k, v in chosen.items() if v is not None}
        for arch in ns.architectures:
            for m in methods[arch]:
                if METHODS[m].ablation:
                    chosen[(arch, m)] = chosen.get((arch, "adapmtl_budget"), grid[0])
        return chosen

    def choose(self, arch: str, method: str, dense_lr: float | None) -> float | None:
        """The grid's lr for one method (None while a run of its grid, or the dense choice, is missing)."""
        ns = self.plan.ns
        cells = self.tuning_cells(arch, method)
        paths = [self.plan.json_path(c) for c in cells]
        current = [c.key in self.book and self.same_training(self.book[c.key], c.key, c) for c in cells]
        if not all(p.is_file() for p in paths) or not all(current):  # missing, or run with other commands
            return None
        results = [json.loads(p.read_text()) for p in paths]
        tables = [metrics_of(r, ns.definition) for r in results]
        if method == "dense":
            reference = mean_table(tables)
        else:
            if dense_lr is None:
                return None
            dense = next(c for c in self.tuning_cells(arch, "dense") if c.lr == dense_lr)
            reference = metrics_of(json.loads(self.plan.json_path(dense).read_text()), ns.definition)
        scores = {}
        for cell, res, table in zip(cells, results, tables):
            # Equal sparsity first: a run that stops short of the target (AdapMTL's stop rule can, with a small lr)
            # is not at the target, so it only wins when no lr gets there.  Then validation Δ_T; where that is
            # undefined (a reference metric of 0) the mean validation loss decides.
            overall = (res.get("sparsity") or {}).get("overall")
            reached = (cell.target is None or METHODS[method].kind == "structured" or overall is None
                       or overall >= cell.target / 100 - TUNING_SHORTFALL)
            d = delta(table, reference)
            losses = list(res.get("losses", {}).values()) or [math.inf]
            scores[cell.lr] = (reached, -math.inf if d is None else d["overall"], -sum(losses) / len(losses))
        lr = max(scores, key=lambda x: scores[x])
        self.say(f"[compare] tuned {arch}/{method}: lr {lr:g} (target reached, val Δ_T, -loss: " +
                 ", ".join(f"{x:g}: {r}, {d:+.2f}, {loss:.3f}" for x, (r, d, loss) in scores.items()) + ")")
        return lr


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
    p.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), help="default: resnet34 mobilenetv2")
    p.add_argument("--sparsities", type=int, nargs="+", default=[90], help="targets in percent (default 90)")
    p.add_argument("--seeds", type=int, default=5, help="seeds at --seed_sparsity (1 elsewhere); default 5")
    p.add_argument("--seed_sparsity", type=int, default=90, help="the target that gets every seed (default 90)")
    p.add_argument("--curve_seeds", type=int, default=3,
                   help="seeds at each of the other --sparsities (accuracy-against-sparsity curves; default 3)")
    p.add_argument("--iters", type=int, default=1200, help="total training iterations per method (default 1200)")
    p.add_argument("--methods", nargs="+", default=[*DEFAULT_METHODS, *DEFAULT_ABLATIONS],
                   help="subset of: " + " ".join(METHODS))
    p.add_argument("--mobilenetv2_methods", nargs="+", default=None,
                   help="the methods run on MobileNetV2 (default: those of --methods among the paper's Table 2\n"
                        "rows and AdapMTL with budget control: " + " ".join(MOBILENETV2_METHODS) + ")")
    p.add_argument("--ablation_sparsity", type=int, default=90, help="target of the ablations and the tuning grid")
    p.add_argument("--ablation_seeds", type=int, default=5,
                   help="seeds of each ablation (default 5), paired with AdapMTL (budget control) at the same seeds")
    p.add_argument("--filter_ratios", type=int, nargs="+", default=[50, 75],
                   help="Taylor / CosPrune: percent of the backbone filters removed (default 50 75)")
    p.add_argument("--grid_lr", type=float, nargs="+", default=[1e-3, 5e-4],
                   help="learning rates every method, dense included, is tuned over (one value = no tuning)")
    p.add_argument("--definition", default="standard", choices=("standard", "parity"),
                   help="metric definitions of the ranking and the tuning (default standard; the report shows both)")
    p.add_argument("--data_seed", type=int, default=0,
                   help="the synthetic scenes' seed (default 0); another seed writes its own report and folders")
    p.add_argument("--out", default="outputs/compare", help="run folders (default outputs/compare)")
    p.add_argument("--logs", default="logs", help="where results, tables and plots go (default logs)")
    p.add_argument("--quick", action="store_true", help="tiny model and data, a few iterations: a smoke test")
    p.add_argument("--report_only", action="store_true", help="only rebuild the report and plots from the JSON")
    p.add_argument("--readme", type=Path, default=None,
                   help="also rewrite the summary block of this file (the README) between its two marker lines")
    p.add_argument("--jobs", type=int, default=0,
                   help="cells run side by side, each with cores/jobs CPU threads (default 0: one per core, at most\n"
                        "8, one thread each; 1 with --extra --device cuda)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="flags passed to every training command, e.g. --extra --device cuda (must come last)")
    ns = p.parse_args(argv)
    for flag in ("methods", "mobilenetv2_methods"):
        bad = [m for m in getattr(ns, flag) or [] if m not in METHODS]
        if bad:
            raise UserError(f"unknown method {bad[0]!r} in --{flag}; choose from {' '.join(METHODS)}")
    bad = [a for a in ns.architectures if a not in ARCHITECTURES]
    if bad:
        raise UserError(f"unknown architecture {bad[0]!r}; choose from {' '.join(ARCHITECTURES)}")
    for flag in ("methods", "mobilenetv2_methods"):
        if getattr(ns, flag) is not None and "dense" not in getattr(ns, flag):
            setattr(ns, flag, ["dense", *getattr(ns, flag)])  # every Δ_T needs it
    for t in [*ns.sparsities, *ns.filter_ratios, ns.seed_sparsity, ns.ablation_sparsity]:
        if not 0 < t < 100:
            raise UserError(f"sparsities and filter ratios are percentages in (0, 100), got {t}")
    if ns.seed_sparsity not in REFERENCE_CONTROL and "adapmtl" in [*ns.methods, *(ns.mobilenetv2_methods or [])]:
        raise UserError(f"the stop rule has no sInit / weight decay for {ns.seed_sparsity}%; its targets are "
                        f"{', '.join(map(str, REFERENCE_CONTROL))} (at other --sparsities it is left out)")
    if ns.seeds < 1 or ns.ablation_seeds < 0 or ns.curve_seeds < 1 or ns.iters < 2 or ns.jobs < 0 or ns.data_seed < 0:
        raise UserError("--seeds and --curve_seeds must be >= 1, --ablation_seeds >= 0, --iters >= 2, --jobs >= 0 "
                        "and --data_seed >= 0")
    if ns.quick:
        ns.iters = min(ns.iters, 8)
        ns.seeds = min(ns.seeds, 2)
        ns.ablation_seeds = min(ns.ablation_seeds, 1)
        ns.curve_seeds = min(ns.curve_seeds, 1)
    return ns


def held_out_lrs(ns: argparse.Namespace) -> dict[tuple[str, str], float | None]:
    """Another data seed is held out: nothing is tuned on it; every method keeps the learning rate the grid chose
    on data seed 0 (read from that comparison's tuning runs, which must have finished)."""
    seed0 = Grid(Plan(argparse.Namespace(**{**vars(ns), "data_seed": 0})), say=lambda _: None)
    lrs = seed0.tune(train=False)
    missing = [f"{a}/{m}" for a in ns.architectures for m in seed0.plan.methods(a) if (a, m) not in lrs]
    if missing and len(ns.grid_lr) > 1:
        raise UserError(f"--data_seed {ns.data_seed} reuses the learning rates tuned on data seed 0, which has no "
                        f"finished grid for {', '.join(missing[:3])}; run the data-seed-0 comparison first")
    return lrs


def main(argv: Sequence[str] | None = None) -> int:
    from bench.compare_report import write_report

    ns = parse(argv)
    stop_children_on_sigterm()
    if ns.readme is not None:
        from bench.compare_summary import check_readme

        check_readme(ns.readme)
    plan = Plan(ns)
    start = time.time()
    grid = Grid(plan)
    if not ns.report_only:
        if grid.jobs > 1:
            print(f"[compare] {grid.jobs} cells at a time, {grid.threads} CPU thread(s) each", flush=True)
        lrs = grid.tune() if ns.data_seed == 0 else held_out_lrs(ns)
        cells = plan.cells(lrs)
        grid.drop_stale(cells)  # results of other commands leave the tables now, not only when re-run
        todo = [c for c in cells if not plan.json_path(c).is_file()]
        if todo:
            print(f"[compare] {len(todo)} of {len(cells)} cells to run", flush=True)
        grid.parallel([functools.partial(grid.run_cell, c) for c in cells],
                        after_each=lambda: write_report(plan, lrs, time.time() - start))  # the report grows
    else:  # the grid's choice from the finished tuning runs; results of other commands leave the tables
        lrs = grid.tune(train=False) if ns.data_seed == 0 else held_out_lrs(ns)
        grid.drop_stale([c for c in plan.cells(lrs) if (c.arch, c.method) in lrs])
    path = write_report(plan, lrs, time.time() - start)
    print(f"[compare] report: {path}")
    if ns.readme is not None:
        from bench.compare_summary import write_readme

        print(f"[compare] summary: {write_readme(ns.readme, plan)}")
    return 0


if __name__ == "__main__":
    cli_main(main)
