"""What set each method's sparsity allocation: the evidence beside the component sparsities of the main tables.

The paper's AdapMTL keeps MobileNetV2's backbone at 52.74 % while its heads reach 86-95 %; the reason it gives is
the adaptive, per-component thresholds.  Whether our runs allocate by those thresholds or by something else is
measurable from the committed test.py JSON alone, and this section measures it per architecture:

- each component's share of the prunable weights (the overall sparsity is weighted by it, so a small component's
  sparsity hardly moves the overall figure), and the share of weights on kernel taps that never see an input
  pixel at the protocol's crop (pruned for free by every method);
- per method, the Spearman rank correlation between a layer's initial weight scale (the std of its weights as the
  architecture initialises them, seed 0) and the layer's final sparsity: close to -1 means the layers that start
  with small weights end sparsest, whatever the method;
- for AdapMTL, the learned thresholds σ(s) at the end against their common start σ(sInit): thresholds that stay
  together cannot be what tells the components apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from bench.compare_protocol import BUDGET_CONTROL, METHODS, REFERENCE_CONTROL
from main.cli.args import parse_args
from main.conv_taps import live_taps
from main.data import dataset_info
from main.models import model_for
from main.sparse import sparse_convs


def layer_init_scales(plan: Any, arch: str) -> dict[str, tuple[float, int, float]]:
    """``"<component>.<layer>"`` (the keys test.py's JSON uses) -> (std of its initial weights, weight count, the
    fraction of its weights on kernel taps that only ever read zero padding at the protocol's crop).

    Those taps get no task gradient, so every method prunes them for free (weight decay shrinks them, SNIP scores
    them 0): a dilated ASPP branch whose rate exceeds the feature map is live only at its centre tap."""
    cfg, _ = parse_args(plan.base(arch, 0, Path("unused"), None, plan.T))  # parsing writes nothing to the folder
    torch.manual_seed(0)
    model = model_for(cfg, dataset_info(cfg).task_channels, sparse=False).eval()
    convs = {f"{cname}.{lname}": conv for cname, module in model.components() for lname, conv in sparse_convs(module)}
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable:
        def hook(_module: torch.nn.Module, args: tuple) -> None:  # returns None: the inputs stay as they are
            sizes[name] = tuple(args[0].shape[-2:])
        return hook

    hooks = [conv.register_forward_pre_hook(record(name)) for name, conv in convs.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, cfg.crop_size, cfg.crop_size))
    for hook in hooks:
        hook.remove()
    return {name: (float(conv.weight.detach().std()), conv.weight.numel(), _dead_fraction(conv, sizes[name]))
            for name, conv in convs.items()}


def _dead_fraction(conv: torch.nn.Conv2d, size: tuple[int, int]) -> float:
    live = 1
    for d in range(2):
        first, last = live_taps(int(size[d]), conv.kernel_size[d], conv.stride[d], conv.padding[d], conv.dilation[d])
        live *= last - first + 1
    return 1.0 - live / (conv.kernel_size[0] * conv.kernel_size[1])


def init_scale_correlation(result: Mapping, scales: Mapping[str, tuple[float, ...]]) -> float | None:
    """Spearman ρ(layer init std, layer sparsity) of one run; None when it cannot be computed."""
    layers = result.get("sparsity", {}).get("layers") or {}
    names = [n for n in layers if n in scales]
    if len(names) < 3 or len({layers[n] for n in names}) < 2 or len({scales[n][0] for n in names}) < 2:
        return None
    return float(spearmanr([scales[n][0] for n in names], [layers[n] for n in names]).statistic)


def _shares(scales: Mapping[str, tuple[float, int, float]]) -> str:
    totals: dict[str, list[float]] = {}
    for name, (_, count, dead) in scales.items():
        entry = totals.setdefault(name.split(".", 1)[0], [0, 0.0])
        entry[0] += count
        entry[1] += count * dead
    whole = sum(n for n, _ in totals.values())
    dead = sum(d for _, d in totals.values())
    return (", ".join(f"{c} {100 * n / whole:.1f}%" for c, (n, _) in totals.items())
            + f". On taps that only read zero padding at this crop: {100 * dead / whole:.1f}% of all weights ("
            + ", ".join(f"{c} {100 * d / n:.1f}%" for c, (n, d) in totals.items()) + " of each)")


def _thresholds(runs: list) -> str:
    taus = [v for r in runs for v in (r.result.get("thresholds") or {}).values()]
    return f"{min(taus):.4f}–{max(taus):.4f}" if taus else "–"


def allocation_section(groups: Mapping, plan: Any) -> list[str]:
    """Per architecture: parameter shares, ρ(init scale, layer sparsity) per method, AdapMTL's thresholds."""
    ns = plan.ns
    target = ns.seed_sparsity
    starts = {"budget control": BUDGET_CONTROL[0]}
    if target in REFERENCE_CONTROL:
        starts = {"stop rule": REFERENCE_CONTROL[target][0], **starts}
    sigmoid = {name: 1.0 / (1.0 + math.exp(-s)) for name, s in starts.items()}
    md = []
    for arch in ns.architectures:
        methods = [m for m in plan.methods(arch)
                   if m != "dense" and METHODS[m].kind != "structured" and (arch, m, target) in groups]
        if not methods:
            continue
        scales = layer_init_scales(plan, arch)
        md += [f"**{arch}.** Share of the prunable weights: {_shares(scales)}.", "",
               "| method | ρ(layer init std, layer sparsity), mean over seeds (range) | σ(s) at the end, min–max | "
               "seeds |", "|---|---|---|---|"]
        for m in methods:
            runs = groups[(arch, m, target)]
            rhos = [x for x in (init_scale_correlation(r.result, scales) for r in runs) if x is not None]
            rho = f"{statistics.fmean(rhos):+.2f} ({min(rhos):+.2f} to {max(rhos):+.2f})" if rhos else "–"
            taus = _thresholds(runs) if METHODS[m].kind == "adapmtl" else ""
            md.append(f"| {METHODS[m].label} | {rho} | {taus} | {len(runs)} |")
        md.append("")
    if not md:
        return []
    start = ", ".join(f"{k} {v:.4f}" for k, v in sigmoid.items())
    return ["## What set the sparsity allocation", "",
            "Computed from the cells' per-layer sparsities (`bench/compare_allocation.py`). Weights on taps that "
            "only read zero padding (dilated ASPP taps reaching past the feature map) never get a task gradient: "
            "every method prunes them at no cost, so they are sparsity no method has to choose. ρ near −1: the "
            "layers the architecture initialises with small weights end sparsest. Every AdapMTL run starts all its "
            f"thresholds at the same σ(sInit) ({start}).", "", *md]
