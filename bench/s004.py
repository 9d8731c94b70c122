"""The structured-pruning paper's experiment (seed S004, §4.2-4.3) at CPU scale, on the comparison's protocol.

S004 reports that the architectures Taylor and CosPrune find, randomly re-initialised and re-trained with a
learning-rate search over {1e-3, 5e-4, 1e-4}, match each other at equal parameter counts and beat their iterative
fine-tuned versions at extreme ratios, checkpoints chosen by Pixel Acc.  Here, per method and ratio of removed
backbone filters:

1. iterative: ``SOTA_methods.structured_train`` prunes the comparison's shared dense pre-training while it
   fine-tunes (the S004 schedule: scores accumulated over a window, ``per_step`` filters removed, lr rewound),
   pruning done by half of the fine-tuning; best checkpoint by validation Pixel Acc after that;
2. re-trained: ``finetune.py --reinit`` trains that final architecture from a fresh initialisation for the whole
   budget, once per learning rate; the lr with the best validation Pixel Acc is the model's.

Both are evaluated on the test split (``test.py``), with Δ_T against the mean of the comparison's dense seeds when
they exist.  Run it after the comparison (it reuses its pre-training and its run folder layout; the two must not
run at once, they share ``cells.json`` for the pre-training):

    python -m bench.s004 [--methods taylor cosprune] [--ratios 25 50 75] [--lrs 1e-3 5e-4 1e-4] [--quick]
    python -m bench.s004 --report_only            # rebuild logs/s004.md from the committed JSON
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

from bench.compare import CKPT, Grid, Plan, run_commands, run_test_py
from bench.compare import parse as parse_compare
from bench.comparison_stats import NoiseFloor, delta, mean_table, metrics_of
from main.atomic import atomic_write_text
from main.channel_masks import filter_units
from main.checkpoint import load_checkpoint
from main.cli.args import parse_args
from main.data import dataset_info
from main.errors import UserError, cli_main
from main.models import model_for

SELECT = "metric:segment_semantic/Pixel Acc"  # S004 (c): checkpoints chosen by Pixel Acc
SELECTED = SELECT.rsplit("/", 1)[1]  # the metric's name, for the report
PRUNING_STEPS = 4  # the ratio is reached in this many pruning steps, by half of the fine-tuning
COLUMNS = (("segment_semantic", "mIoU", 100.0), ("segment_semantic", "Pixel Acc", 100.0),
           ("normal", "Angle Mean", 1.0), ("depth_zbuffer", "abs_err", 1.0))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.s004", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["taylor", "cosprune"], choices=("taylor", "cosprune"))
    p.add_argument("--ratios", type=int, nargs="+", default=[25, 50, 75],
                   help="percent of the prunable backbone filters removed (default 25 50 75)")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-4, 1e-4], help="re-training lr search (S004)")
    p.add_argument("--arch", default="resnet34", choices=("resnet34", "mobilenetv2"))
    p.add_argument("--iters", type=int, default=1200, help="budget per model, as the comparison's (default 1200)")
    p.add_argument("--quick", action="store_true", help="smoke test: the comparison's tiny --quick settings")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--logs", default="logs")
    ns = p.parse_args(argv)
    if ns.quick:  # nothing of a smoke test lands beside the committed results
        ns.out = ns.logs = str(Path(ns.out) / "s004_quick")
    if any(not 0 < r < 100 for r in ns.ratios) or any(lr <= 0 for lr in ns.lrs):
        raise UserError("--ratios are percentages in (0, 100) and --lrs positive")
    return ns


class S004:
    """The experiment's runs: commands, resumable cells (a cell is done when its test JSON exists), the report."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        extra = ["--quick"] if ns.quick else []
        self.plan = Plan(parse_compare(["--iters", str(ns.iters), "--out", ns.out, "--logs", ns.logs,
                                        "--jobs", "1", *extra]))
        self.grid = Grid(self.plan, say=print)
        self.root = Path(ns.logs) / "s004"
        self.out = Path(ns.out) / "s004"
        self.book_path = self.root / "cells.json"
        self.book: dict = json.loads(self.book_path.read_text()) if self.book_path.is_file() else {}

    # ------------------------------------------------------------------ commands
    def schedule(self, ratio: int) -> tuple[int, int, int]:
        """(window, per_step, best_after): ``PRUNING_STEPS`` equal steps, done by half of the fine-tuning; only
        checkpoints after the last step can be the best (``--best_after``: iterations after it)."""
        cfg, _ = parse_args(self.plan.base(self.ns.arch, 0, self.out / "_", None, self.plan.T))
        units = filter_units(model_for(cfg, dataset_info(cfg).task_channels, sparse=False))
        remove = math.ceil(ratio / 100 * sum(u.channels for u in units))
        window = max(1, (self.plan.T - self.plan.P) // (2 * PRUNING_STEPS))
        # the last step lands at iteration window x steps: from then on a checkpoint has the final architecture
        return window, max(1, math.ceil(remove / PRUNING_STEPS)), window * PRUNING_STEPS - 1

    def iterative(self, method: str, ratio: int) -> tuple[str, list[list[str]], Path]:
        key = f"{method}_r{ratio}_iterative"
        save = self.out / key
        window, per_step, best_after = self.schedule(ratio)
        ft = self.plan.T - self.plan.P
        cmd = ["-m", "SOTA_methods.structured_train", "--method", method, "--target", f"{ratio / 100:g}",
               "--window", str(window), "--per_step", str(per_step), "--load_checkpoint",
               str(self.plan.pretrain_dir(self.ns.arch, 0) / CKPT), "--iters", str(ft), "--select_by", SELECT,
               "--best_after", str(best_after)] + self.plan.base(self.ns.arch, 0, save, None, ft)
        return key, [cmd], save

    def retrained(self, method: str, ratio: int, lr: float) -> tuple[str, list[list[str]], Path]:
        key = f"{method}_r{ratio}_retrained_lr{lr:g}"
        save = self.out / key
        source = self.out / f"{method}_r{ratio}_iterative" / CKPT
        cmd = ["finetune.py", "--load_checkpoint", str(source), "--reinit", "--iters", str(self.plan.T),
               "--select_by", SELECT] + self.plan.base(self.ns.arch, 0, save, lr, self.plan.T)
        return key, [cmd], save

    # ------------------------------------------------------------------ running
    def done(self, key: str, commands: list[list[str]]) -> bool:
        """Its test JSON exists and was made by these commands."""
        joined = [shlex.join(["python", *c]) for c in commands]
        return (self.root / "runs" / f"{key}.json").is_file() and self.book.get(key, {}).get("commands") == joined

    def run(self, key: str, commands: list[list[str]], save: Path, force: bool = False,
            pretrained: bool = False) -> dict:
        """Train (unless done with these commands, or ``force``) and test the best checkpoint; -> its test.py
        JSON.  ``pretrained``: the run starts from the shared dense pre-training (trained first if missing)."""
        out_json = self.root / "runs" / f"{key}.json"
        joined = [shlex.join(["python", *c]) for c in commands]
        if not force and self.done(key, commands):
            return json.loads(out_json.read_text())
        if pretrained:  # only when a run needs it: a finished experiment never trains it again
            self.grid.ensure_pretrain(self.ns.arch, 0)
        print(f"[s004] {key} ...", flush=True)
        log = self.out / "logs" / f"{key}.log"
        spent = run_commands(commands, log)
        run_test_py(save / f"best_{CKPT}", out_json, "test", log, key, [])
        result = json.loads(out_json.read_text())
        result["best"] = _best_record(save)
        atomic_write_text(out_json, json.dumps(result, indent=1))
        self.book[key] = {"commands": joined, "wall_s": round(spent.wall, 1), "cpu_s": round(spent.cpu, 1)}
        self.book_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.book_path, json.dumps(self.book, indent=1))
        return result

    def run_all(self) -> None:
        for method in self.ns.methods:
            for ratio in self.ns.ratios:
                key, commands, save = self.iterative(method, ratio)
                retrained = [self.retrained(method, ratio, lr) for lr in self.ns.lrs]
                # a re-training starts from the iterative run's checkpoint: on a machine where that run's folder
                # is gone (only its JSON was kept), the iterative run is trained again first
                missing = any(not self.done(k, c) for k, c, _ in retrained) and not (save / CKPT).is_file()
                self.run(key, commands, save, force=missing, pretrained=True)
                for run in retrained:
                    self.run(*run)


def _best_record(save: Path) -> dict | None:
    """The run's best-checkpoint record (iteration, validation Pixel Acc), from its latest checkpoint."""
    return load_checkpoint(save / CKPT).get("best")


# ---------------------------------------------------------------------------------------------------- report
def _results(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))}


def _dense_tables(logs: Path, arch: str) -> list[dict]:
    """The comparison's dense seeds (standard metrics): their mean is the Δ_T reference, their scatter the noise."""
    return [metrics_of(json.loads(p.read_text()), "standard")
            for p in sorted((logs / "comparison" / "runs").glob(f"{arch}/dense_seed*.json"))]


def _row(label: str, result: dict, reference: dict | None) -> str:
    table = metrics_of(result, "standard")
    cells = [f"{table[t][m] * scale:.2f}" for t, m, scale in COLUMNS]
    d = delta(table, reference) if reference is not None else None
    params, flops = result["params"], result["flops"]
    shown = "-" if d is None else f"{d['overall']:+.2f}"
    reduction = 100.0 * (1 - params["nonzero"] / params["total"])  # S004's %_R: parameters removed
    return (f"| {label} | {params['nonzero'] / 1e3:,.0f}k | {reduction:.1f} | "
            f"{flops['nonzero'] / flops['dense']:.3f} | "
            + " | ".join(cells) + f" | {shown} |")


def search_table(ns: argparse.Namespace, results: dict[str, dict], reference: dict | None) -> list[str]:
    """Every re-training of the lr search: the validation Pixel Acc that chose it, at which iteration, and the test
    Δ_T per task, so that what the selection rule picks (one task's metric, any evaluated checkpoint) is visible."""
    rows = []
    for method in ns.methods:
        for ratio in ns.ratios:
            for lr in ns.lrs:
                r = results.get(f"{method}_r{ratio}_retrained_lr{lr:g}")
                if r is None or not r.get("best"):
                    continue
                d = delta(metrics_of(r, "standard"), reference) if reference is not None else None
                tasks = " / ".join(f"{v:+.1f}" for v in d["tasks"].values()) if d else "-"
                shown = f"{d['overall']:+.2f}" if d else "-"
                rows.append(f"| {method} {ratio}% | {lr:g} | {r['best']['score']:.4f} | {r['best'].get('iter', '-')} "
                            f"| {tasks} | {shown} |")
    if not rows:
        return []
    return ["", "## The learning-rate search, every re-training", "",
            f"Validation {SELECTED} of the checkpoint the rule chose (the highest per model sets its lr above), the "
            "iteration of that checkpoint, and its test Δ_T.", "",
            f"| model | lr | val {SELECTED} | best iter | Δ_T seg / normal / depth | Δ_T |",
            "|---|---|---|---|---|---|",
            *rows]


def write_report(ns: argparse.Namespace, root: Path) -> Path:
    results = _results(root)
    dense = _dense_tables(Path(ns.logs), ns.arch)
    reference = mean_table(dense) if dense else None
    floor = NoiseFloor.of(dense)
    md = ["# S004's experiment at CPU scale: iterative structured pruning vs re-training the architecture", "",
          "Generated by `python -m bench.s004` (" + ("quick smoke test" if ns.quick else "default settings")
          + "); test split, standard metric definitions; the best checkpoint of each run by validation Pixel Acc.",
          "Δ_T against the mean of the comparison's dense seeds" + ("" if reference else " (none yet: '-')") + ".",
          "One seed per model, as in S004: a Δ_T difference within about twice the comparison's noise floor "
          + (f"(leave-one-out std {floor.std:.2f} over {floor.n} dense seeds) " if floor.std is not None else "")
          + "is not a finding.",
          "", "| model | params (non-zero) | %R | FLOPs / dense | mIoU | Pixel Acc | Angle Mean | abs_err | Δ_T |",
          "|---|---|---|---|---|---|---|---|---|"]
    for method in ns.methods:
        for ratio in ns.ratios:
            it = results.get(f"{method}_r{ratio}_iterative")
            if it is not None:
                md.append(_row(f"{method} {ratio}% iterative", it, reference))
            tried = {lr: results.get(f"{method}_r{ratio}_retrained_lr{lr:g}") for lr in ns.lrs}
            tried = {lr: r for lr, r in tried.items() if r is not None and r.get("best")}
            if tried:
                lr, best = max(tried.items(), key=lambda kv: kv[1]["best"]["score"])
                md.append(_row(f"{method} {ratio}% re-trained (lr {lr:g} of {len(tried)})", best, reference))
    md += search_table(ns, results, reference)
    path = root.parent / f"{root.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse(argv)
    experiment = S004(ns)
    if not ns.report_only:
        experiment.run_all()
    print(f"[s004] report: {write_report(ns, experiment.root)}")
    return 0


if __name__ == "__main__":
    cli_main(main)
