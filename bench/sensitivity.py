"""The known-sensitivity benchmark: does AdapMTL put the sparsity where it costs least?

    python -m bench.sensitivity [--seeds 3] [--quick] [--report_only] [--jobs N]

The seed's first experiment: multitask data whose components differ in how much pruning they tolerate, an
*oracle* allocation measured on it, and AdapMTL's learned allocation compared with it.  The task pair is chosen
for a known contrast: ``depth_zbuffer`` is a smooth, low-frequency field (a head that needs little capacity),
``edge_texture`` a map of thin surface, crease and texture edges (fine detail).  Whether that contrast makes
one head more sensitive to pruning is not assumed: the oracle sweep measures it.

Every run has the comparison's protocol (``configs/synthetic_compare.yaml`` with these two tasks) and its budget
of ``--iters`` training iterations (T):

- **Oracle sweep.** A dense pre-training of T/2 per seed, pruned by |w| with each component (backbone, depth
  head, edge head) ranked alone to its own sparsity, then fine-tuned T/2 with the masks fixed.  The allocations
  all have 90 % overall sparsity: the backbone at ``BACKBONE_SPARSITIES``, the heads sharing the rest with the
  edge head's density ``HEAD_DENSITY_RATIOS`` times the depth head's.  The oracle is the allocation with the best
  mean *validation* Δ_T; everything is reported on the test split.
- **Uniform** (every component at 90 %) and **global magnitude** (one |w| ranking over all weights), from the
  same pre-training with the same fine-tuning: the two fixed rules.
- **AdapMTL** with budget control, from scratch for T (its thresholds learn the allocation), with the
  mechanism trace of ``bench.mechanism`` (threshold travel, separation, settling).
- **Dense** for T: the Δ_T reference (the mean of its seeds), as in the comparison.

Resumable like the comparison: a run whose JSON exists and whose recorded commands and preset are what it would
run now is skipped.  Writes ``logs/sensitivity.md`` and the JSON of every run in ``logs/sensitivity/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import shutil
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.compare import ROOT, job_layout, protocol_hash, run_commands, run_test_py
from bench.compare_protocol import BUDGET_CONTROL, LR_STEPS, PROTOCOL_CONFIG, QUICK_FLAGS
from bench.comparison_stats import delta, mean_table, metrics_of, paired, t_interval
from bench.mechanism import mechanism_section, trace
from main.checkpoint import checkpoint_name
from main.errors import UserError, cli_main

TASKS = ("depth_zbuffer", "edge_texture")
CKPT = checkpoint_name(TASKS)
TARGET = 0.9
BACKBONE_SPARSITIES = (0.8, 0.9, 0.95)
HEAD_DENSITY_RATIOS = (1 / 3, 1.0, 3.0)  # the edge head's density / the depth head's
SPLITS = ("val", "test")
FIXED_RULES = {"uniform": "Uniform (every component 90%)", "magnitude": "Global magnitude"}


@dataclass
class Run:
    """One training (and its evaluations): its key, shell commands and checkpoint."""

    key: str
    seed: int
    commands: list[list[str]]
    checkpoint: Path
    allocation: dict[str, float] | None = None
    needs: str | None = None  # key of the run whose checkpoint this one starts from
    extra: dict = field(default_factory=dict)


class Sensitivity:
    """The runs of the benchmark, how to run them resumably, and where their results live."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.out = Path(ns.out) / "sensitivity"
        self.root = Path(ns.logs) / "sensitivity"
        self.report = Path(ns.logs) / "sensitivity.md"
        self.T, self.P = ns.iters, ns.iters // 2
        self.common = ["--config", PROTOCOL_CONFIG, "--tasks", *TASKS, "--progress", "off", "--overwrite"] + (
            QUICK_FLAGS if ns.quick else [])
        self.protocol = protocol_hash(ROOT / PROTOCOL_CONFIG)
        self.book_path = self.root / "cells.json"
        self.book: dict = json.loads(self.book_path.read_text()) if self.book_path.is_file() else {}
        self.jobs, self.threads = job_layout(ns)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the runs
    def flags(self, seed: int, save: Path, iters: int) -> list[str]:
        return self.common + ["--seed", str(seed), "--save_dir", str(save), "--iters", str(iters),
                              "--decay_lr_freq", str(max(1, iters // LR_STEPS))]

    def component_sizes(self) -> dict[str, int]:
        """Prunable weights per component of the benchmark's model (what an allocation is weighted by)."""
        from main.cli.args import parse_args
        from main.data import dataset_info
        from main.models import model_for
        from main.sparse import SparsityCounter

        cfg, _ = parse_args(self.flags(0, Path("unused"), self.T))
        model = model_for(cfg, dataset_info(cfg).task_channels, sparse=False)
        counter = SparsityCounter(model.components())
        sizes: dict[str, int] = {}
        for (comp, _, _), n in zip(counter.layers, counter.totals, strict=True):
            sizes[comp] = sizes.get(comp, 0) + n
        return sizes

    def allocations(self) -> list[dict[str, float]]:
        """The oracle sweep's allocations, each at ``TARGET`` overall (infeasible ones left out)."""
        sizes = self.component_sizes()
        n_b, n_d, n_e = sizes["backbone"], sizes[TASKS[0]], sizes[TASKS[1]]
        out = []
        for b in BACKBONE_SPARSITIES:
            kept = (1 - TARGET) * sum(sizes.values()) - (1 - b) * n_b  # weights the two heads keep
            for r in HEAD_DENSITY_RATIOS:
                dens_d = kept / (n_d + r * n_e)
                dens_e = r * dens_d
                if 0 < dens_d <= 1 and 0 < dens_e <= 1:
                    out.append({"backbone": b, TASKS[0]: round(1 - dens_d, 6), TASKS[1]: round(1 - dens_e, 6)})
        return out

    def runs(self) -> list[Run]:
        out: list[Run] = []
        for seed in range(self.ns.seeds):
            pre = self.out / f"pretrain_seed{seed}"
            out.append(Run(f"pretrain_seed{seed}", seed, [["baseline.py", "--dense", *self.flags(seed, pre, self.P)]],
                           pre / CKPT))
            dense = self.out / f"dense_seed{seed}"
            out.append(Run(f"dense_seed{seed}", seed, [["baseline.py", "--dense", *self.flags(seed, dense, self.T)]],
                           dense / CKPT))
            ada = self.out / f"adapmtl_seed{seed}"
            out.append(Run(f"adapmtl_seed{seed}", seed, [[
                "baseline.py", "--ratio", str(TARGET), "--sInit_value", str(BUDGET_CONTROL[0]), "--weight_decay",
                str(BUDGET_CONTROL[1]), "--sparsity_control", "budget", *self.flags(seed, ada, self.T)]], ada / CKPT))
            for i, alloc in enumerate(self.allocations()):
                out.append(self.pruned(f"oracle{i}_seed{seed}", seed, "magnitude", alloc))
            for rule in FIXED_RULES:
                out.append(self.pruned(f"{rule}_seed{seed}", seed, rule, None))
        return out

    def pruned(self, key: str, seed: int, method: str, alloc: dict[str, float] | None) -> Run:
        save = self.out / key
        pruned = self.out / f"{key}_pruned"
        prune = ["pruning.py", "--load_checkpoint", str(self.out / f"pretrain_seed{seed}" / CKPT), "--method", method,
                 "--target", str(TARGET), "--save_dir", str(pruned), "--progress", "off", "--overwrite"]
        if alloc is not None:
            prune += ["--component_sparsity", *(f"{c}={v:g}" for c, v in alloc.items())]
        tune = ["finetune.py", "--load_checkpoint", str(pruned / CKPT), *self.flags(seed, save, self.T - self.P)]
        return Run(key, seed, [prune, tune], save / CKPT, allocation=alloc, needs=f"pretrain_seed{seed}")

    # ------------------------------------------------------------------ running
    def json_path(self, run: Run, split: str) -> Path:
        return self.root / "runs" / f"{run.key}.{split}.json"

    def done(self, run: Run) -> bool:
        entry = self.book.get(run.key)
        return (entry is not None and entry.get("protocol") == self.protocol
                and entry.get("commands") == [shlex.join(["python", *c]) for c in run.commands]
                and (run.key.startswith("pretrain") or all(self.json_path(run, s).is_file() for s in SPLITS)))

    def execute(self, run: Run) -> bool:
        """Run ``run`` unless it is done; True when it ran."""
        if self.done(run):
            return False
        print(f"[sensitivity] {run.key} ...", flush=True)
        log = self.out / "logs" / f"{run.key}.log"
        log.unlink(missing_ok=True)
        shutil.rmtree(run.checkpoint.parent, ignore_errors=True)
        spent = run_commands(run.commands, log, self.threads)
        if not run.key.startswith("pretrain"):
            for split in SPLITS:
                run_test_py(run.checkpoint, self.json_path(run, split), split, log, run.key, [], self.threads)
        entry = {"seed": run.seed, "allocation": run.allocation, "protocol": self.protocol,
                 "wall_s": round(spent.wall, 1), "cpu_s": round(spent.cpu, 1),
                 "commands": [shlex.join(["python", *c]) for c in run.commands]}
        if run.key.startswith("adapmtl"):
            entry["mechanism"] = trace(run.checkpoint.parent)
        with self._lock:
            self.book[run.key] = entry
            self.book_path.parent.mkdir(parents=True, exist_ok=True)
            self.book_path.write_text(json.dumps(self.book, indent=1))
        print(f"[sensitivity] {run.key} done ({spent.cpu / 60:.1f} CPU min)", flush=True)
        return True

    def run_all(self) -> None:
        """First what starts from scratch (pre-trainings, dense, AdapMTL), then what starts from a pre-training.

        A pre-training trained anew (its checkpoint lost, another preset) makes its pruned runs stale, although
        their commands are unchanged: they are trained again.
        """
        runs = self.runs()
        first = [r for r in runs if r.needs is None]
        for r in first:  # a pre-training whose checkpoint is gone must run again before its prunes
            if r.key.startswith("pretrain") and not r.checkpoint.is_file() and any(
                    d.needs == r.key and not self.done(d) for d in runs):
                self.book.pop(r.key, None)
        ran = self.parallel([functools.partial(self.execute, r) for r in first])
        fresh = {r.key for r, did in zip(first, ran) if did and r.key.startswith("pretrain")}
        for r in runs:
            if r.needs in fresh:
                self.book.pop(r.key, None)
        self.parallel([functools.partial(self.execute, r) for r in runs if r.needs is not None])

    def parallel(self, tasks: Sequence[Callable[[], bool]]) -> list[bool]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return [future.result() for future in [pool.submit(t) for t in tasks]]


# ---------------------------------------------------------------------------------------------------- report
def _load(bench: Sensitivity) -> dict[str, dict[int, dict[str, dict]]]:
    """family ("dense", "adapmtl", "uniform", "magnitude", "oracle<i>") -> seed -> split -> test.py JSON."""
    out: dict[str, dict[int, dict[str, dict]]] = {}
    for run in bench.runs():
        if run.key.startswith("pretrain") or not bench.done(run):
            continue
        family = run.key.rsplit("_seed", 1)[0]
        out.setdefault(family, {})[run.seed] = {s: json.loads(bench.json_path(run, s).read_text()) for s in SPLITS}
    return out


def _deltas(results: dict[int, dict[str, dict]], reference: dict[str, dict], split: str) -> dict[int, dict]:
    """seed -> Δ_T (overall and per task) against the dense mean of ``split`` (standard metric definitions)."""
    out = {}
    for seed, by_split in results.items():
        d = delta(metrics_of(by_split[split], "standard"), reference[split])
        if d is not None:
            out[seed] = d
    return out


def _components(results: dict[int, dict[str, dict]]) -> dict[str, float]:
    comps = [r["test"]["sparsity"]["components"] for r in results.values()]
    return {c: statistics.fmean(x[c] for x in comps) for c in comps[0]} if comps else {}


def _order(alloc: dict[str, float]) -> str:
    """The components from sparsest to densest, e.g. "edge > depth > backbone"."""
    short = {"backbone": "backbone", TASKS[0]: "depth", TASKS[1]: "edges"}
    return " > ".join(short[c] for c in sorted(alloc, key=alloc.get, reverse=True))


def _spearman(a: dict[str, float], b: dict[str, float]) -> float | None:
    from scipy.stats import spearmanr

    names = sorted(set(a) & set(b))
    if len(names) < 3 or len({a[n] for n in names}) < 2 or len({b[n] for n in names}) < 2:
        return None
    return float(spearmanr([a[n] for n in names], [b[n] for n in names]).statistic)


def write_report(bench: Sensitivity) -> Path:
    data = _load(bench)
    md = ["# Known-sensitivity benchmark: where does AdapMTL put the sparsity?", "",
          "Generated by `python -m bench.sensitivity` from the test.py JSON in `logs/sensitivity/runs/`; rebuild with "
          "`python -m bench.sensitivity --report_only`. Tasks: depth (smooth, low-frequency) and edges (fine "
          f"detail), ResNet34 on the comparison's protocol (`{PROTOCOL_CONFIG}`), {bench.T} training iterations per "
          f"run, {TARGET:.0%} overall sparsity, standard metric definitions, Δ_T (%) against the mean of the dense "
          "seeds of the same split; ± is the 95% t interval over seeds."
          + (" **--quick smoke test: the numbers mean nothing.**" if bench.ns.quick else ""), ""]
    dense = data.get("dense", {})
    if not dense:
        bench.report.parent.mkdir(parents=True, exist_ok=True)
        bench.report.write_text("\n".join(md + ["No dense run has finished yet."]) + "\n")
        return bench.report
    reference = {s: mean_table([metrics_of(r[s], "standard") for r in dense.values()]) for s in SPLITS}
    val = {f: _deltas(r, reference, "val") for f, r in data.items()}
    test = {f: _deltas(r, reference, "test") for f, r in data.items()}
    oracles = sorted(f for f in data if f.startswith("oracle"))
    md += ["## The oracle sweep", "",
           "Each allocation: a dense pre-training of half the budget pruned by |w| with every component ranked alone "
           "to its sparsity, then fine-tuned for the other half. The oracle is the allocation with the best mean "
           "validation Δ_T.", "",
           "| allocation | backbone / depth head / edge head (measured) | seeds | val Δ_T | test Δ_T | test Δ depth / "
           "edges |", "|---|---|---|---|---|---|"]
    best = max((f for f in oracles if val[f]), key=lambda f: statistics.fmean(d["overall"] for d in val[f].values()),
               default=None)
    for f in oracles:
        if not test[f]:
            continue
        comps = _components(data[f])
        v = statistics.fmean(d["overall"] for d in val[f].values()) if val[f] else math.nan
        per_task = " / ".join(f"{statistics.fmean(d['tasks'][t] for d in test[f].values()):+.2f}" for t in TASKS)
        name = f"**{f} (oracle)**" if f == best else f
        md.append(f"| {name} | {' / '.join(f'{100 * comps[c]:.1f}%' for c in ('backbone', *TASKS))} | "
                  f"{len(test[f])} | {v:+.2f} | {t_interval([d['overall'] for d in test[f].values()])} | "
                  f"{per_task} |")
    md += [""] + _marginals(data, test, oracles) + _methods_table(data, test, best) + _mechanism(bench)
    md += _runs(bench)
    bench.report.parent.mkdir(parents=True, exist_ok=True)
    bench.report.write_text("\n".join(md) + "\n")
    return bench.report


def _marginals(data: dict, test: dict, oracles: list[str]) -> list[str]:
    """Mean test Δ_T of the sweep by backbone sparsity and by the heads' density ratio: which part is sensitive."""
    rows = []
    for f in oracles:
        if test[f]:
            alloc = data[f][next(iter(data[f]))]["test"]["sparsity"]["components"]
            rows.append((alloc, statistics.fmean(d["overall"] for d in test[f].values())))
    if len(rows) < 2:
        return []
    md = ["Mean test Δ_T of the sweep's allocations, by the backbone's sparsity and by which head is sparser:", ""]
    by_b: dict[float, list[float]] = {}
    by_head: dict[str, list[float]] = {}
    for alloc, d in rows:
        by_b.setdefault(round(100 * alloc["backbone"]), []).append(d)
        diff = alloc[TASKS[1]] - alloc[TASKS[0]]
        head = "edge head sparser" if diff > 0.005 else "depth head sparser" if diff < -0.005 else "heads equal"
        by_head.setdefault(head, []).append(d)
    md.append("- backbone: " + ", ".join(f"{b}%: {statistics.fmean(v):+.2f} ({len(v)})"
                                         for b, v in sorted(by_b.items())))
    md.append("- heads: " + ", ".join(f"{h}: {statistics.fmean(v):+.2f} ({len(v)})" for h, v in by_head.items()))
    return md + [""]


def _methods_table(data: dict, test: dict, best: str | None) -> list[str]:
    rows = [(f"Oracle ({best})", best)] if best else []
    rows += [(label, f) for f, label in FIXED_RULES.items()] + [("AdapMTL (budget control)", "adapmtl")]
    rows = [(label, f) for label, f in rows if f in test and test[f]]
    if not rows:
        return []
    oracle_alloc = _components(data[best]) if best else {}
    md = ["## AdapMTL against the oracle, uniform and global magnitude", "",
          "Rank agreement: Spearman ρ between a row's component sparsities and the oracle's (3 components: +1 = the "
          "same order). Paired: the row's test Δ_T minus AdapMTL's over the seeds both have.", "",
          "| row | backbone / depth head / edge head | order (sparsest first) | ρ with the oracle | seeds | test Δ_T | "
          "− AdapMTL, p |", "|---|---|---|---|---|---|---|"]
    ada = {s: d["overall"] for s, d in test.get("adapmtl", {}).items()}
    for label, f in rows:
        comps = _components(data[f])
        rho = _spearman(comps, oracle_alloc) if oracle_alloc else None
        mine = {s: d["overall"] for s, d in test[f].items()}
        pair = paired(mine, ada) if f != "adapmtl" and ada else None
        diff = "–" if pair is None else f"{pair.diff}, p={'–' if pair.p is None else f'{pair.p:.3f}'}"
        md.append(f"| {label} | {' / '.join(f'{100 * comps[c]:.1f}%' for c in ('backbone', *TASKS))} | "
                  f"{_order(comps)} | {'–' if rho is None else f'{rho:+.2f}'} | {len(mine)} | "
                  f"{t_interval(list(mine.values()))} | {diff} |")
    return md + [""]


def _mechanism(bench: Sensitivity) -> list[str]:
    traces = [e["mechanism"] for k, e in sorted(bench.book.items()) if k.startswith("adapmtl") and e.get("mechanism")]
    return mechanism_section({"AdapMTL (budget control)": traces}) if traces else []


def _runs(bench: Sensitivity) -> list[str]:
    cpu = sum(e.get("cpu_s", 0) for e in bench.book.values())
    md = ["## Runs", "", f"{len(bench.book)} runs recorded, {cpu / 3600:.2f} CPU-hours in all. Commands "
          "(`logs/sensitivity/cells.json` has every run's):", ""]
    for key in ("pretrain_seed0", "dense_seed0", "adapmtl_seed0", "oracle0_seed0", "uniform_seed0"):
        for cmd in bench.book.get(key, {}).get("commands", []):
            md.append(f"    {cmd}")
    return md


# ---------------------------------------------------------------------------------------------------- CLI
def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds of every run (default 3)")
    p.add_argument("--iters", type=int, default=1200, help="training budget of every run (default 1200)")
    p.add_argument("--out", default="outputs", help="run folders go in OUT/sensitivity (default outputs)")
    p.add_argument("--logs", default="logs", help="report and JSON (default logs)")
    p.add_argument("--quick", action="store_true", help="tiny model, a few iterations, 1 seed: a smoke test")
    p.add_argument("--report_only", action="store_true", help="only rebuild the report from the JSON")
    p.add_argument("--jobs", type=int, default=0, help="runs side by side (default 0: one per core, at most 8)")
    ns = p.parse_args(argv)
    ns.extra = []
    if ns.seeds < 1 or ns.iters < 4 or ns.jobs < 0:
        raise UserError("--seeds must be >= 1, --iters >= 4 and --jobs >= 0")
    if ns.quick:
        ns.iters, ns.seeds = min(ns.iters, 8), min(ns.seeds, 1)
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    bench = Sensitivity(parse(argv))
    if not bench.ns.report_only:
        bench.run_all()
    print(f"[sensitivity] report: {write_report(bench)}")
    return 0


if __name__ == "__main__":
    cli_main(main)
