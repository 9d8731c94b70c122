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
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.compare_protocol import PROTOCOL_CONFIG
from bench.comparison_stats import delta, mean_table, metrics_of, paired, t_interval
from bench.mechanism import mechanism_section
from bench.run_book import SPLITS, TARGET, Run, RunBook, checked, parser, run_and_report
from main.atomic import atomic_write_text
from main.errors import cli_main

TASKS = ("depth_zbuffer", "edge_texture")
BACKBONE_SPARSITIES = (0.8, 0.9, 0.95)
HEAD_DENSITY_RATIOS = (1 / 3, 1.0, 3.0)  # the edge head's density / the depth head's
FIXED_RULES = {"uniform": "Uniform (every component 90%)", "magnitude": "Global magnitude"}


class Sensitivity(RunBook):
    """The known-sensitivity benchmark's runs: dense, AdapMTL, the oracle sweep, the two fixed rules."""

    def __init__(self, ns: argparse.Namespace) -> None:
        super().__init__(ns, "sensitivity", TASKS)

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
            out += [*self.dense_runs("", seed), self.adapmtl_run(f"adapmtl_seed{seed}", seed)]
            for i, alloc in enumerate(self.allocations()):
                out.append(self.pruned(f"oracle{i}_seed{seed}", seed, "magnitude", alloc))
            for rule in FIXED_RULES:
                out.append(self.pruned(f"{rule}_seed{seed}", seed, rule, None))
        return out


# ---------------------------------------------------------------------------------------------------- report
def _load(bench: Sensitivity) -> dict[str, dict[int, dict[str, dict]]]:
    """family ("dense", "adapmtl", "uniform", "magnitude", "oracle<i>") -> seed -> split -> test.py JSON."""
    out: dict[str, dict[int, dict[str, dict]]] = {}
    for run, family in bench.finished():
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
        atomic_write_text(bench.report, "\n".join(md + ["No dense run has finished yet."]) + "\n")
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
    atomic_write_text(bench.report, "\n".join(md) + "\n")
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
    return checked(parser(__doc__, "sensitivity", seeds=3).parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_report(Sensitivity(parse(argv)), write_report)


if __name__ == "__main__":
    cli_main(main)
