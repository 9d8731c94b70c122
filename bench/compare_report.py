"""The comparison's report and plots, built only from the test.py JSON files the cells wrote.

Kept apart from ``bench.compare`` (which runs things) so that the report can be rebuilt at any time
(``python -m bench.compare --report_only``) and so that nothing in it is typed by hand: every number is read from
``runs/<architecture>/*.json`` and ``cells.json``; the statistics are ``bench.comparison_stats``.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare_allocation import allocation_section
from bench.compare_curves import curve_section
from bench.compare_protocol import (
    ADAPMTL_ROWS,
    BUDGET_CONTROL,
    METHODS,
    PAPER_TABLE2,
    PROTOCOL_CONFIG,
    REFERENCE_CONTROL,
    TASKS,
)
from bench.comparison_stats import (
    STYLE,
    NoiseFloor,
    delta,
    holm,
    mean_table,
    metric_noise,
    metrics_of,
    paired,
    t_interval,
)
from bench.mechanism import mechanism_section
from main.atomic import atomic_write_text
from main.models import BACKBONE
from main.task_registry import task_spec

DEFINITIONS = ("standard", "parity")
_SPECS = [task_spec(t) for t in TASKS]
# (task, metric, header, scale) per metric of every task, in registry order: the column order of the paper's Table 2
COLUMNS = [(spec.name, m.name, m.header, m.scale) for spec in _SPECS for m in spec.metrics[STYLE]]
# (task, metric) after which the task's Δ_T column follows: its last metric
TASK_DELTA_AFTER = {(spec.name, spec.metrics[STYLE][-1].name) for spec in _SPECS}
COMPONENTS = [(BACKBONE, "Sp. backbone"), *((spec.name, f"Sp. {spec.label}") for spec in _SPECS)]
# Per-task parts of the headers: "seg / normal / depth", the sparsity columns' "bb / seg / nor / dep" and the Δ_T
# columns' "Δ_T1 / Δ_T2 / Δ_T3" (the paper's Table 2 columns, which its data rows follow, stay as the paper has them)
TASK_LABELS = " / ".join(spec.label for spec in _SPECS)
SPARSITY_LABELS = " / ".join(["bb", *(spec.tag.lower() for spec in _SPECS)])
DELTA_LABELS = " / ".join(f"Δ_T{i}" for i in range(1, len(_SPECS) + 1))


# The paper's Table 2 row names -> our methods (its DiSparse is the dynamic variant, the one its script runs)
PAPER_ROWS = {"Dense": "dense", "SNIP": "snip", "LTH": "lth", "IMP": "imp", "DiSparse": "disparse_dynamic",
              "AdapMTL": "adapmtl"}


@dataclass
class Run:
    """One finished cell: its test.py JSON and its Δ_T (both definitions) against the mean dense model."""

    key: str
    arch: str
    method: str
    target: int | None
    seed: int
    result: dict
    delta: dict[str, dict | None]


def load_runs(root: Path) -> list[Run]:
    """Every cell JSON under ``root/runs`` that the book knows, with Δ_T against its architecture's dense mean."""
    book_path = root / "cells.json"
    book = json.loads(book_path.read_text()) if book_path.is_file() else {}
    raw: list[tuple[str, dict, dict]] = []
    for path in sorted((root / "runs").glob("*/*.json")):
        key = f"{path.parent.name}/{path.stem}"
        if key in book:
            raw.append((key, book[key], json.loads(path.read_text())))
    references = {}
    for arch in sorted({e["architecture"] for _, e, _ in raw}):
        dense = [r for _, e, r in raw if e["architecture"] == arch and e["method"] == "dense"]
        references[arch] = {d: mean_table([metrics_of(r, d) for r in dense]) if dense else None
                            for d in DEFINITIONS}
    runs = []
    for key, entry, res in raw:
        ref = references[entry["architecture"]]
        deltas = {d: delta(metrics_of(res, d), ref[d]) if ref[d] is not None else None for d in DEFINITIONS}
        runs.append(Run(key, entry["architecture"], entry["method"], entry["target"], entry["seed"], res, deltas))
    return runs


def _mean(values: Sequence[float], digits: int = 2) -> str:
    return f"{round(statistics.fmean(values), digits) + 0.0:.{digits}f}" if values else "–"  # never -0.00


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str, int | None], list[Run]]:
    groups: dict[tuple[str, str, int | None], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.arch, r.method, r.target)].append(r)
    return groups


def per_seed_delta(groups: Mapping, arch: str, method: str, target: int | None, definition: str) -> dict[int, float]:
    """Seed → overall Δ_T of one method's runs (those whose Δ_T is defined): what the paired tests pair."""
    return {r.seed: r.delta[definition]["overall"] for r in groups.get((arch, method, target), [])
            if r.delta[definition]}


def ranked_methods(plan: Any, arch: str) -> list[str]:
    """The methods the main table and the paired tests rank (no ablations, no structured rows)."""
    return [m for m in plan.methods(arch) if not METHODS[m].ablation and METHODS[m].kind != "structured"]


# ---------------------------------------------------------------------------------------------------- sections
def noise_section(runs: Sequence[Run], archs: Sequence[str], definition: str) -> list[str]:
    md = ["## Noise floor", "",
          "Each dense seed's Δ_T against the mean of the other dense seeds (leave-one-out): what Δ_T scatters by for "
          "a model *equal* to dense. A difference between methods well inside ±2 std of it is not a finding.", "",
          f"| architecture | definitions | dense seeds | std of Δ_T | max abs | std {TASK_LABELS} |",
          "|---|---|---|---|---|---|"]
    for arch in archs:
        dense = [r for r in runs if r.arch == arch and r.method == "dense"]
        for d in (definition, *[x for x in DEFINITIONS if x != definition]):
            nf = NoiseFloor.of([metrics_of(r.result, d) for r in dense])
            tasks = " / ".join(f"{nf.task_std[t]:.2f}" if nf.task_std.get(t) is not None else "–" for t in TASKS)
            md.append(f"| {arch} | {d}{' (ranking)' if d == definition else ''} | {nf.n} | "
                      f"{_num(nf.std)} | {_num(nf.max_abs)} | {tasks} |")
    return md + [""] + metric_noise_table(runs, archs, definition)


def metric_noise_table(runs: Sequence[Run], archs: Sequence[str], definition: str) -> list[str]:
    """Where the noise floor comes from: each metric's dense mean and the std of its leave-one-out term."""
    tables = {a: [metrics_of(r.result, definition) for r in runs if r.arch == a and r.method == "dense"]
              for a in archs}
    tables = {a: t for a, t in tables.items() if len(t) > 1}
    if not tables:
        return []
    noise = {a: metric_noise(t) for a, t in tables.items()}
    means = {a: mean_table(t) for a, t in tables.items()}
    md = [f"Metric by metric ({definition}): the dense mean, and the std (%) of the metric's term in its task's "
          "leave-one-out Δ_T (a task's Δ is the sum of these terms, so a small-valued metric with a small absolute "
          "scatter can make most of its task's noise).", "",
          "| task | metric | " + " | ".join(f"{a}: mean | {a}: std of term" for a in tables) + " |",
          "|---|---|" + "---|---|" * len(tables)]
    for task, metric, header, scale in COLUMNS:
        cells = [f"{means[a][task][metric] * scale:.3f} | {_num(noise[a][task][metric])}" for a in tables]
        md.append(f"| {task} | {header} | " + " | ".join(cells) + " |")
    return md + [""]


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def noise_floor(runs: Sequence[Run], arch: str, definition: str) -> NoiseFloor:
    return NoiseFloor.of([metrics_of(r.result, definition) for r in runs if r.arch == arch and r.method == "dense"])


def main_table(rows: Sequence[tuple[str, Sequence[Run]]], definition: str) -> list[str]:
    """Table 2 layout: metric means over seeds, per-task Δ_T means, sparsities, Δ_T with its 95 % t interval."""
    head = []
    for task, metric, label, _ in COLUMNS:
        head.append(label)
        if (task, metric) in TASK_DELTA_AFTER:
            head.append(f"Δ_T{TASKS.index(task) + 1}")
    head += [c[1] for c in COMPONENTS] + ["Sp. overall", "Δ_T ± 95% CI", "Δ_T parity ± CI", "seeds"]
    lines = ["| Model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, rs in rows:
        cells = []
        for task, metric, _, scale in COLUMNS:
            cells.append(_mean([metrics_of(r.result, definition)[task][metric] * scale for r in rs]))
            if (task, metric) in TASK_DELTA_AFTER:
                cells.append(_mean([r.delta[definition]["tasks"][task] for r in rs if r.delta[definition]]))
        for comp, _ in COMPONENTS:
            cells.append(_mean([100 * r.result["sparsity"]["components"][comp] for r in rs], 1))
        cells.append(_mean([100 * r.result["sparsity"]["overall"] for r in rs], 1))
        for d in (definition, "parity" if definition != "parity" else "standard"):
            values = [r.delta[d]["overall"] for r in rs if r.delta[d]]
            cells.append(str(t_interval(values)) if values else "–")
        cells.append(str(len(rs)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def paired_section(groups: Mapping, arch: str, target: int, methods: Sequence[str], definition: str) -> list[str]:
    """Each method minus each AdapMTL row over their common seeds: mean ± 95 % t interval and p (paired t-test)."""
    anchors = [m for m in ADAPMTL_ROWS if (arch, m, target) in groups]
    if not anchors:
        return []
    per_seed = {m: per_seed_delta(groups, arch, m, target, definition) for m in methods}
    md = [f"Paired differences (method − AdapMTL, same seeds, {definition} Δ_T; 95 % t interval, two-sided paired "
          "t-test):", "", "| method | " + " | ".join(f"− {METHODS[a].label}: diff | p" for a in anchors) + " |",
          "|---" * (1 + 2 * len(anchors)) + "|"]
    for m in methods:
        if m in anchors and len(anchors) == 1 or not per_seed.get(m):
            continue
        cells = []
        for a in anchors:
            res = None if m == a else paired(per_seed[m], per_seed[a])
            cells += ["–", "–"] if res is None else [f"{res.diff} (n={len(res.seeds)})", _p(res.p)]
        md.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
    return md + [""]


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"**{p:.3f}**" if p < 0.05 else f"{p:.3f}"


def significance_lines(groups: Mapping, arch: str, target: int, methods: Sequence[str], definition: str,
                       floor: NoiseFloor) -> list[str]:
    """Plain-words findings: which paired differences are significant, and the ceiling check."""
    out = []
    per_seed = {m: per_seed_delta(groups, arch, m, target, definition) for m in methods}
    for a in [x for x in ADAPMTL_ROWS if per_seed.get(x)]:
        tests = {m: res for m in methods if m not in ADAPMTL_ROWS and m != "dense"
                 and (res := paired(per_seed.get(m, {}), per_seed[a])) is not None and res.p is not None}
        if not tests:
            continue
        adjusted = holm({m: res.p for m, res in tests.items()})
        better, worse, same = [], [], []
        for m, res in tests.items():
            name = f"{METHODS[m].label} ({res.diff.mean:+.2f}, p={res.p:.3f}, Holm p={adjusted[m]:.3f})"
            (same if adjusted[m] >= 0.05 else better if res.diff.mean > 0 else worse).append(name)
        parts = [f"significantly better than {', '.join(worse)}" if worse else "",
                 f"significantly worse than {', '.join(better)}" if better else "",
                 f"no significant difference to {', '.join(same)}" if same else ""]
        out.append(f"- {arch}, {METHODS[a].label} against {len(tests)} method(s), paired over seeds "
                   f"(α = 0.05, Holm-corrected over the {len(tests)}): " + "; ".join(x for x in parts if x) + ".")
    if floor.std is not None and target >= 90:
        over = [f"{METHODS[m].label} ({statistics.fmean(v.values()):+.2f})" for m, v in per_seed.items()
                if m != "dense" and v and statistics.fmean(v.values()) > 2 * floor.std]
        out.append(f"- {arch}, ceiling check at {target}%: " + (
            f"**{', '.join(over)} beat(s) the dense mean by more than twice the noise floor "
            f"({2 * floor.std:.2f}): the protocol is not finished.**" if over else
            f"no method beats the dense mean by more than twice the noise floor ({2 * floor.std:.2f})."))
    return out


def seed_section(groups: Mapping, ns: Any, definition: str) -> list[str]:
    """Every AdapMTL seed on its own: where its Δ_T comes from (tasks), where its sparsity went, its thresholds."""
    md = []
    for arch in ns.architectures:
        for m in (x for x in METHODS if METHODS[x].kind == "adapmtl" and not METHODS[x].ablation):
            rs = sorted(groups.get((arch, m, ns.seed_sparsity), []), key=lambda r: r.seed)
            if len(rs) < 2:
                continue
            md += [f"**{arch}, {METHODS[m].label}, seed by seed** ({definition} Δ_T; sparsity %; σ(s) per component)",
                   "", f"| seed | Δ_T | Δ {TASK_LABELS} | Sp. {SPARSITY_LABELS} | overall | thresholds |",
                   "|---|---|---|---|---|---|"]
            for r in rs:
                d = r.delta[definition]
                overall = f"{d['overall']:+.2f}" if d else "–"
                tasks = " / ".join(f"{d['tasks'][t]:+.1f}" for t in TASKS) if d else "–"
                sp = " / ".join(f"{100 * r.result['sparsity']['components'][c]:.1f}" for c, _ in COMPONENTS)
                taus = ", ".join(f"{k} {v:.4f}" for k, v in (r.result.get("thresholds") or {}).items())
                md.append(f"| {r.seed} | {overall} | {tasks} | {sp} | {100 * r.result['sparsity']['overall']:.2f} "
                          f"| {taus} |")
            md.append("")
    return (["## AdapMTL seed by seed", ""] + md) if md else []


def paper_section(groups: Mapping, target: int, definition: str) -> list[str]:
    """The paper's Table 2 (NYUv2, MobileNetV2, 90 %) beside our MobileNetV2 rows."""
    md = [f"## The paper's Table 2 beside ours (MobileNetV2, {target}%)", "",
          "Paper: NYUv2, docs/reference.md §7 (its DiSparse row is the dynamic variant, the one the "
          "reference's script runs). Ours: synthetic benchmark, means over seeds, Δ against our dense mean "
          f"({definition} metrics; parity Δ_T in brackets).", "",
          "| row | paper mIoU / PixAcc | paper Δ_T1 / Δ_T2 / Δ_T3 | paper Sp. bb / seg / nor / dep | paper Δ_T "
          f"| ours {DELTA_LABELS} | ours Sp. {SPARSITY_LABELS} | ours Δ_T (parity) |", "|---" * 8 + "|"]
    for row in PAPER_TABLE2:
        name, miou, pa, d1, d2, d3, *sp, dt = row
        rs = groups.get(("mobilenetv2", PAPER_ROWS.get(name, ""), None if name == "Dense" else target), [])
        paper_sp = " / ".join("–" if x is None else f"{x:.1f}" for x in sp)
        if rs:
            task_d = " / ".join(_mean([r.delta[definition]["tasks"][t] for r in rs if r.delta[definition]])
                                for t in TASKS)
            our_sp = " / ".join(_mean([100 * r.result["sparsity"]["components"][c] for r in rs], 1)
                                for c, _ in COMPONENTS)
            dts = [r.delta[definition]["overall"] for r in rs if r.delta[definition]]
            par = [r.delta["parity"]["overall"] for r in rs if r.delta["parity"]]
            our = f"{_mean(dts)} ({_mean(par)})"
        else:
            task_d = our_sp = our = "not run"
        md.append(f"| {name} | {miou:.2f} / {pa:.2f} | {d1:+.2f} / {d2:+.2f} / {d3:+.2f} | {paper_sp} | {dt:+.2f} "
                  f"| {task_d} | {our_sp} | {our} |")
    return md + [""]


def write_report(plan: Any, lrs: Mapping, elapsed_s: float) -> Path:
    """(Re)write the markdown report and the plots from whatever cells have finished."""
    ns = plan.ns
    runs = load_runs(plan.root)
    groups = group_runs(runs)
    definition = ns.definition
    rel = plan.root.name
    md = ["# Synthetic 3-task benchmark: every method at equal sparsity and equal training budget", "",
          f"Generated by `python -m bench.compare` from the test.py JSON in `logs/{rel}/runs/`; nothing here is typed "
          "by hand. Rebuild it with `python -m bench.compare --report_only`.", "",
          f"- Benchmark: synthetic NYUv2-like scenes (data seed {ns.data_seed}), tasks {' / '.join(TASKS)}, "
          f"protocol preset `{PROTOCOL_CONFIG}`" + (
              " (**--quick smoke test: tiny model and data, the numbers mean nothing**)" if ns.quick else "") + ".",
          f"- Metrics on the test split, final checkpoints. Δ_T (%, the paper's formula) of every run is against the "
          f"**mean of the dense seeds** of its architecture; the ranking uses the **{definition}** metric "
          "definitions, the parity (reference) Δ_T is shown beside it.",
          f"- Budget: {ns.iters} training iterations per method in total (pre-training {ns.iters // 2} + the rest for "
          "uniform, IMP, LTH, AdapMTL from dense).",
          "- Stop rule sInit / weight decay per target: "
          + ", ".join(f"{t}%: {s:g} / {w:g}" for t, (s, w) in REFERENCE_CONTROL.items())
          + f". Budget control: sInit {BUDGET_CONTROL[0]:g} / wd {BUDGET_CONTROL[1]:g} for every target.",
          f"- Learning-rate grid (validation split, seed 0, {ns.ablation_sparsity}%), dense included: "
          f"{{{', '.join(f'{x:g}' for x in ns.grid_lr)}}}"
          + ("" if not lrs else "; chosen: " + ", ".join(f"{a}/{m} {v:g}" for (a, m), v in sorted(lrs.items())
                                                          if v is not None and not METHODS[m].ablation))
          + ("" if ns.data_seed == 0 else f". Data seed {ns.data_seed} is held out: nothing was tuned on it, every "
             "method uses the learning rate chosen on data seed 0"), ""]
    md += noise_section(runs, ns.architectures, definition)
    findings: list[str] = []
    for arch in ns.architectures:
        ranked = ranked_methods(plan, arch)
        floor = noise_floor(runs, arch, definition)
        for t in sorted(set(ns.sparsities)):
            rows = [(METHODS[m].label, groups.get((arch, m, None if m == "dense" else t), [])) for m in ranked]
            rows = [(lab, rs) for lab, rs in rows if rs]
            if len(rows) <= 1:
                continue
            md += [f"## {arch}, target overall sparsity {t}%", ""] + main_table(rows, definition) + [""]
            md += paired_section(groups, arch, t, [m for m in ranked if m != "dense"], definition)
            findings += significance_lines(groups, arch, t, ranked, definition, floor)
    if findings:
        md += ["## Findings (computed)", "", *findings, ""]
    md += curve_section(groups, plan, {a: ranked_methods(plan, a) for a in ns.architectures}, definition)
    md += seed_section(groups, ns, definition)
    if "mobilenetv2" in ns.architectures:
        md += paper_section(groups, ns.seed_sparsity, definition)
    md += allocation_section(groups, plan)
    md += mechanism_section(mechanism_traces(plan))
    md += _ablations(groups, ns, definition) + _structured(groups, ns, definition)
    md += cost_section(plan, groups, definition)
    md += _plots(plan, runs, groups)
    md += _runs_section(plan)
    plan.report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.report, "\n".join(md) + "\n")
    return plan.report


def mechanism_traces(plan: Any) -> dict[str, list[dict]]:
    """"<row>, <architecture>" -> the mechanism trace of each of its test cells (``cells.json``), AdapMTL rows only."""
    book = read_book(plan.root)
    out: dict[str, list[dict]] = {}
    for arch in plan.ns.architectures:
        for m in plan.methods(arch):
            if METHODS[m].kind != "adapmtl":
                continue
            prefix = f"{arch}/{m}_sp{plan.ns.seed_sparsity}_seed"
            traces = [e["mechanism"] for k, e in sorted(book.items()) if k.startswith(prefix)
                      and e.get("split") == "test" and e.get("mechanism")]
            if traces:
                out[f"{METHODS[m].label}, {arch}"] = traces
    return out


def _ablations(groups: Mapping, ns: Any, definition: str) -> list[str]:
    """Each ablation against AdapMTL with budget control (equal sparsity) at the ablations' seeds, paired."""
    arch, t, anchor = ns.architectures[0], ns.ablation_sparsity, "adapmtl_budget"
    ablations = [m for m in METHODS if METHODS[m].ablation and (arch, m, t) in groups]
    if not ablations or (arch, anchor, t) not in groups:
        return []
    seeds = {r.seed for m in ablations for r in groups[(arch, m, t)]}
    rows = [(METHODS[m].label, [r for r in groups[(arch, m, t)] if r.seed in seeds]) for m in [anchor, *ablations]]
    base = per_seed_delta(groups, arch, anchor, t, definition)
    tests = {m: res for m in ablations
             if (res := paired(per_seed_delta(groups, arch, m, t, definition), base)) is not None}
    adjusted = holm({m: res.p for m, res in tests.items() if res.p is not None})
    md = [f"## Ablations ({arch}, {t}%, budget control, seeds {', '.join(map(str, sorted(seeds)))})", "",
          *main_table([(METHODS["dense"].label, groups.get((arch, "dense", None), []))] + rows, definition), "",
          f"Paired against {METHODS[anchor].label} at the same seeds ({definition} Δ_T; Holm over the "
          f"{len(tests)} ablations):", "", "| ablation | − AdapMTL (budget control): diff (n) | p | Holm p |",
          "|---|---|---|---|"]
    for m, res in tests.items():
        md.append(f"| {METHODS[m].label} | {res.diff} (n={len(res.seeds)}) | {_p(res.p)} | "
                  f"{_p(adjusted.get(m))} |")
    return md + [""]


def _structured(groups: Mapping, ns: Any, definition: str) -> list[str]:
    rows = [(f"{a} {METHODS[m].label}, {r}% of backbone filters", groups[(a, m, r)]) for a in ns.architectures
            for m in METHODS if METHODS[m].kind == "structured" for r in ns.filter_ratios if (a, m, r) in groups]
    if not rows:
        return []
    return ["## Structured pruning (filters of the backbone; the heads keep every filter)", "",
            *main_table(rows, definition), ""]


def load_costs(root: Path) -> dict[str, dict]:
    """The per-cell cost JSON that ``bench.compare_cost`` wrote, by cell key."""
    return {f"{p.parent.name}/{p.stem}": json.loads(p.read_text()) for p in sorted((root / "cost").glob("*/*.json"))}


def cost_section(plan: Any, groups: Mapping, definition: str) -> list[str]:
    """Each method's test Δ_T beside its compacted cost (``bench.compare_cost``), and the plot of the two."""
    costs = load_costs(plan.root)
    rows, points = [], []
    for (arch, m, t), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(METHODS).index(kv[0][1]))):
        have = [(r, costs[r.key]) for r in rs if r.key in costs]
        if not have:
            continue
        ratios = {k: statistics.fmean(c["ratios"][k] for _, c in have) for k in ("params", "flops", "latency")}
        deltas = [r.delta[definition]["overall"] for r, _ in have if r.delta[definition]]
        d = statistics.fmean(deltas) if deltas else None
        rows.append(f"| {arch} | {METHODS[m].label} | {t if t is not None else '–'} | {_num(d)} | "
                    f"×{ratios['flops']:.3f} | ×{ratios['params']:.3f} | ×{ratios['latency']:.3f} | {len(have)} |")
        if d is not None:
            points.append({"method": f"{METHODS[m].label} [{arch}]", "flops": 100 * ratios["flops"], "delta_t": d})
    if not rows:
        return []
    plot = []
    if points:
        from bench.plots import plot_delta_vs_cost

        plot_delta_vs_cost(points, plan.root / "delta_vs_flops.png",
                           title=f"Δ_T vs compacted conv FLOPs (synthetic, test split, {definition} metrics)")
        plot = [f"![Δ_T against compacted FLOPs]({plan.root.name}/delta_vs_flops.png)", ""]
    return ["## Accuracy at real cost (checkpoints compacted: `python -m bench.compare_cost`)", "",
            "Unstructured zeros run on dense kernels; what a model saves at run time is what `main.compaction` "
            "removes (dead channels, constants folded). Ratios are compacted / uncompacted network (= dense cost), "
            "FLOPs and parameters exact, latency batch 1, one thread, median of interleaved forwards (noisy on a "
            "shared machine); means over the cells measured.", "",
            "| architecture | method | target % | Δ_T | conv FLOPs | params | latency | cells |",
            "|---|---|---|---|---|---|---|---|", *rows, "", *plot]


def _plots(plan: Any, runs: Sequence[Run], groups: Mapping) -> list[str]:
    from bench.plots import plot_delta_vs_sparsity, plot_training_curves, read_scalars

    definition = plan.ns.definition
    points = []
    for (arch, m, t), rs in groups.items():
        values = [r.delta[definition]["overall"] for r in rs if r.delta[definition]]
        if m == "dense" or t is None or not values or METHODS[m].ablation:
            continue
        points.append({"method": f"{METHODS[m].label} [{arch}]",
                       "sparsity": 100 * statistics.fmean(r.result["sparsity"]["overall"] for r in rs),
                       "delta_t": statistics.fmean(values),
                       "delta_std": statistics.stdev(values) if len(values) > 1 else None})
    md = ["## Plots", ""]
    if points:
        plot_delta_vs_sparsity(sorted(points, key=lambda p: (p["method"], p["sparsity"])),
                               plan.root / "delta_vs_sparsity.png", sparsity_unit="percent",
                               title=f"Δ_T vs overall sparsity (synthetic, test split, {definition} metrics)")
        md += [f"![Δ_T against sparsity]({plan.root.name}/delta_vs_sparsity.png)", ""]
    book_path = plan.root / "cells.json"
    book = json.loads(book_path.read_text()) if book_path.is_file() else {}
    curves = {}
    arch = plan.ns.architectures[0]
    for m in ("adapmtl", "adapmtl_budget"):
        entry = book.get(f"{arch}/{m}_sp{plan.ns.seed_sparsity}_seed0", {})
        run = Path(entry.get("run_dir", "-"))
        if run.is_dir() and any(run.glob("events.out.tfevents.*")):
            curves[f"{METHODS[m].label}, {arch}, seed 0"] = read_scalars(run)
    if curves:
        for path in plot_training_curves(curves, plan.root):
            md += [f"![{path.stem}]({plan.root.name}/{path.name})", ""]
    return md


def read_book(root: Path) -> dict:
    """``cells.json``: each cell's commands, wall and CPU time (empty before the first cell finished)."""
    path = root / "cells.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _runs_section(plan: Any) -> list[str]:
    book = read_book(plan.root)
    layouts = sorted({(e.get("jobs", 1), e.get("threads")) for e in book.values()})
    md = ["## Runs", "", f"Machine: `{json.dumps(_environment())}`", "",
          f"Command: `python -m bench.compare {shlex.join(sys.argv[1:])}`" if sys.argv[1:] else
          "Command: `python -m bench.compare`", "",
          f"Sum of the cells' wall times: {sum(e.get('wall_s', 0) for e in book.values()) / 3600:.2f} h of "
          "training commands (evaluation not included); layouts (cells at a time, threads each): "
          + ", ".join(f"{j} × {t or 'default'}" for j, t in layouts) + ".", "", *cpu_budget(book), "",
          "| cell | wall (min) | CPU (min) | commands |", "|---|---|---|---|"]
    for key, entry in book.items():
        cmds = "<br>".join(f"`{c}`" for c in entry.get("commands", []))
        if "reused" in entry:  # a seed-0 cell is the tuning run at the chosen lr: no time of its own
            md.append(f"| {key} | = {entry['reused']} | – | {cmds} |")
            continue
        cpu = f"{entry['cpu_s'] / 60:.1f}" if "cpu_s" in entry else "-"
        md.append(f"| {key} | {entry.get('wall_s', 0) / 60:.1f} | {cpu} | {cmds} |")
    return md


def cpu_budget(book: dict) -> list[str]:
    """The budget in CPU time (user + system of the training commands), which other work on the machine does not
    inflate as it does wall time; cells recorded before CPU time was measured are counted apart."""
    own = [e for e in book.values() if "reused" not in e]
    timed = [e["cpu_s"] for e in own if "cpu_s" in e]
    if not timed:
        return ["CPU time: not recorded for these cells (recorded from the cells run after it was added)."]
    untimed = [e for e in own if "cpu_s" not in e]
    line = (f"CPU time of the {len(timed)} cells that record it: {sum(timed) / 3600:.2f} CPU-hours, i.e. "
            f"{sum(timed) / 7200:.2f} h on 2 cores")
    if not untimed:
        return [line + "."]
    # a cell that ran on one CPU thread cannot have used more CPU time than its wall time: an upper bound
    bounded = [e.get("wall_s", 0.0) for e in untimed if e.get("threads") == 1]
    line += f"; {len(untimed)} earlier cells recorded wall time only"
    if bounded:
        bound = (sum(timed) + sum(bounded)) / 3600
        line += (f", {len(bounded)} of them at one thread each, whose wall time ({sum(bounded) / 3600:.2f} h) bounds "
                 f"their CPU time from above: at most {bound:.2f} CPU-hours" + (
                     f" for the {len(timed) + len(bounded)} cells" if len(bounded) < len(untimed) else " in all")
                 + f", i.e. at most {bound / 2:.2f} h on 2 cores")
    return [line + "."]


def _environment() -> dict:
    """Versions and machine, for the report."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
