"""Inference latency and peak memory: dense vs AdapMTL (sparse, and compacted) vs structured-pruned networks.

Variants, all eval mode under ``torch.no_grad()`` on the same random input batch:

* ``dense``: the model (CPU preset by default: ``main.config.Config``'s architecture, width and crop size).
* ``adapmtl_sparse``: the same model with soft thresholds baked (``MultiTaskModel.bake_thresholds``) so its conv
  weights are ``--sparsity`` zeros (per component, set by choosing each component's tau; a sparse AdapMTL
  ``--checkpoint`` keeps its own learned thresholds).  It runs the SAME dense kernels: unstructured sparsity
  gives no speed-up and no memory saving here; its gains are storage (``python -m main.export``) and the
  theoretical zero-skipping FLOPs ``test.py`` reports.
* ``adapmtl_compact``: ``adapmtl_sparse`` with every dead channel physically removed and the constants dead
  channels carry folded (``main.compaction``, what ``python -m main.export --compact`` writes); the JSON gives
  its per-component table of all-zero filters and removed channels (``dead_filters``).  Exact: same outputs.
* ``taylor_50`` / ``taylor_75`` / ``cosprune_50`` / ``cosprune_75``: 50% / 75% of the prunable backbone filters
  removed by the real selection code (``SOTA_methods.structured.prune_structured``, scored on ``--num_batches``
  batches of the run's data; ranking quality is irrelevant for latency) and physically compacted
  (``SOTA_methods.compact``): smaller convs, smaller activations.
* ``taylor_heads_at_adapmtl_flops``: Taylor with the heads' hidden channels as units too (``--prune_heads``),
  removing as few filters as gets its compacted FLOPs to ``adapmtl_compact``'s (CosPrune cannot rank head
  channels, so it cannot be matched there).

Latency, for every ``--batch`` x ``--threads`` setting: after ``--warmup`` rounds, ``--repeats`` rounds in which
every variant runs one forward, the variant order rotating each round so machine noise hits all alike; the median
per variant and all ratios come from one run (CUDA: timed between ``torch.cuda.synchronize()`` calls).  Memory:
see ``MEMORY_METHOD``.  On CUDA the 2:4 semi-structured sparsity of ``torch.sparse.to_sparse_semi_structured`` is
reported where it applies (it accelerates 2-D matmul weights; these networks are all convolutions).

    python -m bench.inference [--width_mult 1 --input 64] [--batch 1 8] [--threads 1 2] [--checkpoint CKPT]
                              [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from main.atomic import atomic_write_text
from main.channel_masks import ChannelMasks
from main.checkpoint import load_checkpoint, model_from_checkpoint
from main.compaction import compact_model
from main.config import Config
from main.data import build_dataset, dataset_info
from main.device import resolve_device
from main.errors import cli_main
from main.masks import MaskSet
from main.models import MultiTaskModel, model_for
from main.output_file import OutputKind, check_output_file, is_json_with
from main.precision import autocast, to_channels_last
from SOTA_methods.compact import compact_model as structured_compact
from SOTA_methods.compact import count_flops, count_params
from SOTA_methods.structured import accumulate_scores, prune_structured, removable, select_lowest

MEMORY_METHOD = {
    "cpu": ("peak_activation_mb: the highest total of bytes live in torch's CPU allocator during one forward, above "
            "what was live before it (so weights and the input are excluded; activations, outputs and workspaces "
            "allocated through torch are included), from torch.profiler(profile_memory=True) allocation events "
            "replayed in time order; memory a library allocates outside torch's allocator (e.g. oneDNN-internal "
            "buffers) is not seen. weights_mb: bytes of parameters and buffers. peak_total_mb = their sum."),
    "cuda": ("peak_activation_mb: torch.cuda.max_memory_allocated() during one forward minus memory_allocated() "
             "before it (after reset_peak_memory_stats); weights_mb: bytes of parameters and buffers; "
             "peak_total_mb = their sum. The caching allocator's reserved-but-unused memory is not counted."),
}
STRUCTURED = (("taylor", 0.5), ("taylor", 0.75), ("cosprune", 0.5), ("cosprune", 0.75))
UNSTRUCTURED_NOTE = ("adapmtl_sparse runs the same dense convolution kernels as dense on weights that are mostly "
                     "zero: unstructured sparsity gives no speed-up and no memory saving here (any difference is "
                     "noise); its gains are storage (python -m main.export) and theoretical zero-skipping FLOPs")


# ------------------------------------------------------------------------------------------------ variants
@torch.no_grad()
def set_sparsity(model: MultiTaskModel, sparsity: float) -> None:
    """Set each component's threshold s so ``sparsity`` of its thresholded conv weights fall at or below tau.

    tau_c is the magnitude at that quantile of the component's weights (``kthvalue``: no size limit, unlike
    ``torch.quantile``), s_c = logit(tau_c); the forward then prunes exactly the weights a trained AdapMTL model
    with those thresholds would.
    """
    for name, convs in model._component_convs.items():
        mags = torch.cat([c.weight.detach().abs().flatten() for c in convs]).float()
        k = max(1, min(mags.numel(), round(sparsity * mags.numel())))
        tau = float(torch.kthvalue(mags.cpu(), k).values)
        tau = min(max(tau, 1e-12), 1 - 1e-7)
        model.thresholds[name].fill_(float(torch.logit(torch.tensor(tau, dtype=torch.float64))))
    model.set_sparse(True)


def nonzero_params(model: nn.Module) -> int:
    """Non-zero entries of the parameters ``count_params`` counts (thresholds excluded)."""
    return sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if not n.startswith("thresholds."))


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def structured_variant(dense: MultiTaskModel, method: str, ratio: float, batches: list[dict], tasks: tuple[str, ...],
                       device: torch.device, class_weights: Tensor | None) -> tuple[MultiTaskModel, dict]:
    """``ratio`` of the backbone filters removed by ``method``'s real selection, then physically compacted."""
    work = copy.deepcopy(dense)
    masks = MaskSet(work)
    result = prune_structured(method, work, masks, ratio, batches, tasks, device, class_weights)
    channels = ChannelMasks(work)
    channels.load_state_dict(result["channel_masks"])
    report = result["structured"]
    info = {"criterion": report["criterion"], "filters_removed": report["filters_removed"],
            "filters_total": report["filters_total"], "ratio_meaning": report["ratio_meaning"]}
    return structured_compact(work, channels).eval(), info


def compact_variant(sparse: MultiTaskModel) -> tuple[MultiTaskModel, dict]:
    """The AdapMTL model with its dead channels removed and their constants folded (``main.compaction``)."""
    small, report = compact_model(sparse)
    return small.eval(), {"compaction": "main.compaction.compact_model (dead channels removed, constants folded)",
                          "dead_filters": report}


def taylor_at_flops(dense: MultiTaskModel, target_flops: int, batches: list[dict], tasks: tuple[str, ...],
                    device: torch.device, class_weights: Tensor | None, side: int) -> tuple[MultiTaskModel, dict]:
    """Taylor with the heads' hidden channels as units too (``--prune_heads``), removing the fewest filters of its
    one global ranking whose compacted network needs at most ``target_flops`` per image (bisection on the count).
    CosPrune cannot rank head channels (``SOTA_methods.structured.check_heads``), so only Taylor is matched."""
    work = copy.deepcopy(dense)
    channels = ChannelMasks(work, heads=True)
    scores = accumulate_scores(work, channels, batches, tasks, "taylor", class_weights=class_weights)

    @functools.cache  # the last bisection step's count is built again for the result otherwise
    def pruned(n: int) -> tuple[ChannelMasks, int]:
        ch = ChannelMasks(work, heads=True)
        ch.remove(select_lowest(scores, ch, n))
        return ch, count_flops(structured_compact(work, ch), (1, 3, side, side))

    lo, hi = 0, removable(channels)
    reachable = pruned(hi)[1] <= target_flops
    while reachable and hi - lo > 1:  # invariant: flops(lo) > target >= flops(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pruned(mid)[1] <= target_flops else (mid, hi)
    chosen, flops = pruned(hi)
    chosen.install(MaskSet(work))
    heads_removed = sum(int((~chosen.keep[u.name]).sum()) for u in chosen.units if u.is_head)
    return structured_compact(work, chosen).eval(), {
        "criterion": "taylor (BN gate; head channels: conv row and bias), backbone and head hidden channels in one "
                     "global ranking", "filters_removed": chosen.pruned(), "filters_total": chosen.total(),
        "head_channels_removed": heads_removed, "target_flops": target_flops, "flops_reached": flops,
        "target_reachable": reachable}


# ------------------------------------------------------------------------------------------------ measuring
def forward_fn(model: nn.Module, x: Tensor, amp: str, device: torch.device) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad(), autocast(amp, device):
            model(x)
    return run


def time_all(fns: dict[str, Callable[[], None]], warmup: int, repeats: int, cuda: bool) -> dict[str, list[float]]:
    """Per-variant forward times (s): rounds of one forward each, the order rotating every round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fns[n]()
            if cuda:
                torch.cuda.synchronize()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times


def peak_activation_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """See ``MEMORY_METHOD``: peak bytes allocated by one forward above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def semi_structured_status(models: dict[str, nn.Module], device: torch.device) -> str:
    """Where PyTorch's 2:4 semi-structured sparsity could apply to these networks, and why not."""
    linear = sum(isinstance(m, nn.Linear) for model in models.values() for m in model.modules())
    if linear == 0:
        reason = ("not applicable: conv layers. torch.sparse.to_sparse_semi_structured accelerates 2-D matmul "
                  "(nn.Linear) weights, and these networks have no nn.Linear layer (every layer is a convolution)")
        return reason if device.type == "cuda" else reason + "; also CUDA-only (no GPU in this run)"
    return (f"not measured: the networks have {linear} nn.Linear layers, but this bench does not convert them "
            "(they are a negligible share of the cost)")


# ------------------------------------------------------------------------------------------------ main
def build_dense(ns: argparse.Namespace, device: torch.device) -> tuple[Config, MultiTaskModel, str, bool]:
    """(config, dense-mode model, weights description, whether the model came with learned thresholds)."""
    if ns.checkpoint:
        state = load_checkpoint(ns.checkpoint)
        cfg, model = model_from_checkpoint(state, ns.checkpoint, device)
        learned = not cfg.dense
        if ns.input:
            cfg.crop_size = ns.input
        model.set_sparse(False)
        return cfg, model, f"checkpoint {ns.checkpoint} (iteration {state.get('iter')})", learned
    cfg = Config()
    if ns.width_mult is not None:
        cfg.width_mult = ns.width_mult
    if ns.input:
        cfg.crop_size = ns.input
    cfg.architecture = ns.architecture or cfg.architecture
    cfg.check()
    torch.manual_seed(ns.seed)
    info = dataset_info(cfg)
    model = model_for(cfg, info.task_channels, sparse=False).to(device)
    return cfg, model, f"random initialisation (seed {ns.seed})", False


def scoring_batches(cfg: Config, n: int, batch: int) -> list[dict]:
    data_cfg = copy.deepcopy(cfg)
    if data_cfg.dataset == "synthetic":
        data_cfg.train_size = max(n * batch, 1)
    data = build_dataset(data_cfg, "train")
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, drop_last=True)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def build_variants(ns: argparse.Namespace, cfg: Config, dense: MultiTaskModel, learned: bool,
                   device: torch.device) -> tuple[dict[str, MultiTaskModel], dict[str, dict]]:
    """Every variant's model (eval mode) and what describes it."""
    info = dataset_info(cfg)
    class_weights = info.class_weights.to(device) if info.class_weights is not None else None
    models: dict[str, MultiTaskModel] = {"dense": dense.eval()}
    extra: dict[str, dict] = {"dense": {}}
    sparse = copy.deepcopy(dense)
    if learned:
        sparse.set_sparse(True)  # the checkpoint's own learned thresholds
    else:
        set_sparsity(sparse, ns.sparsity)
    sparse.bake_thresholds()
    models["adapmtl_sparse"] = sparse.eval()
    extra["adapmtl_sparse"] = {"thresholds": "learned (checkpoint)" if learned else
                               f"chosen so {ns.sparsity:.0%} of each component's conv weights are zero",
                               "kernels": "dense (same as dense)"}
    models["adapmtl_compact"], extra["adapmtl_compact"] = compact_variant(sparse)
    batches = scoring_batches(cfg, ns.num_batches, cfg.batch_size)
    for method, ratio in STRUCTURED:
        name = f"{method}_{round(100 * ratio)}"
        models[name], extra[name] = structured_variant(dense, method, ratio, batches, info.tasks, device,
                                                       class_weights)
    target = count_flops(models["adapmtl_compact"], (1, 3, cfg.crop_size, cfg.crop_size))
    models["taylor_heads_at_adapmtl_flops"], extra["taylor_heads_at_adapmtl_flops"] = taylor_at_flops(
        dense, target, batches, info.tasks, device, class_weights, cfg.crop_size)
    return models, extra


def static_costs(models: dict[str, MultiTaskModel], extra: dict[str, dict], side: int) -> dict[str, dict]:
    """Per variant: parameters, non-zeros, weight bytes and FLOPs per image, with ratios to dense."""
    out = {}
    for n, m in models.items():
        out[n] = {"params": count_params(m), "nonzero_params": nonzero_params(m),
                  "backbone_params": count_params(m.backbone), "weights_mb": weight_bytes(m) / 2**20,
                  "flops_per_image": count_flops(m, (1, 3, side, side)), **extra[n]}
    base = out["dense"]
    for v in out.values():
        v["vs_dense"] = {k: v[k] / base[k] for k in ("params", "nonzero_params", "backbone_params", "weights_mb",
                                                      "flops_per_image")}
    return out


def measure_setting(models: dict[str, MultiTaskModel], ns: argparse.Namespace, device: torch.device, side: int,
                    batch: int, threads: int, weights_mb: dict[str, float]) -> dict:
    """Latency and peak memory of every variant at one batch size and thread count."""
    torch.set_num_threads(threads)
    x = torch.randn((batch, 3, side, side), generator=torch.Generator().manual_seed(ns.seed)).to(device)
    fns = {n: forward_fn(m, to_channels_last(x, ns.channels_last), ns.amp, device) for n, m in models.items()}
    times = time_all(fns, ns.warmup, ns.repeats, device.type == "cuda")
    peaks = {n: peak_activation_bytes(fn, device) / 2**20 for n, fn in fns.items()}
    latency = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    return {"batch": batch, "threads": torch.get_num_threads(),
            "latency_ms": latency, "latency_ms_min": {n: 1e3 * min(t) for n, t in times.items()},
            "latency_ms_max": {n: 1e3 * max(t) for n, t in times.items()},
            "peak_activation_mb": peaks, "peak_total_mb": {n: peaks[n] + weights_mb[n] for n in models},
            "latency_vs_dense": {n: v / latency["dense"] for n, v in latency.items()},
            "peak_total_vs_dense": {n: (peaks[n] + weights_mb[n]) / (peaks["dense"] + weights_mb["dense"])
                                    for n in models}}


def measurement_notes(ns: argparse.Namespace, device: torch.device) -> dict:
    return {
        "latency": (f"per setting (batch, threads): median of {ns.repeats} forwards per variant after {ns.warmup} "
                    "warm-up rounds, eval mode, torch.no_grad(), variants interleaved with rotating order; "
                    "ratios from this one run"),
        "memory": MEMORY_METHOD["cuda" if device.type == "cuda" else "cpu"],
        "params": ("parameters stored (thresholds excluded; the folded constant maps of adapmtl_compact are buffers, "
                   "in weights_mb); nonzero_params counts non-zero entries; taylor_*/cosprune_* remove backbone "
                   "filters only (BasicBlock conv1 / MobileNetV2 hidden channels), taylor_heads_at_adapmtl_flops "
                   "also the heads' hidden channels"),
        "flops": "per image, torch.utils.flop_counter (2 x MACs of convs; zeros counted: dense kernels)",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", choices=["resnet34", "mobilenetv2"], help="default: the preset's (resnet34)")
    p.add_argument("--width_mult", type=float, help="default: the preset's (0.125)")
    p.add_argument("--input", type=int, help="square input side (default: the preset's crop_size, 96)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="images per forward, each measured")
    p.add_argument("--checkpoint", help="trained checkpoint (its config sets architecture and width)")
    p.add_argument("--sparsity", type=float, default=0.9, help="AdapMTL-sparse: zero fraction per component")
    p.add_argument("--num_batches", type=int, default=2, help="batches that score the structured filters")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch.set_num_threads values, each measured (0: torch's default at start)")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast for every variant")
    p.add_argument("--channels_last", action="store_true", help="NHWC models and input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    p.add_argument("--out", help="also write the JSON here")
    ns = p.parse_args(argv)
    if ns.out:  # before the work: a special file, a symlink or another kind of file is never replaced
        check_output_file(ns.out, "--out", OutputKind("a benchmark JSON", is_json_with("bench")))
    device = resolve_device(ns.device)
    default_threads = torch.get_num_threads()
    t_start = time.perf_counter()
    cfg, dense, weights, learned = build_dense(ns, device)
    models, extra = build_variants(ns, cfg, dense, learned, device)
    for m in models.values():
        if ns.channels_last:
            m.to(memory_format=torch.channels_last)
    variants = static_costs(models, extra, cfg.crop_size)
    t_setup = time.perf_counter() - t_start
    weights_mb = {n: v["weights_mb"] for n, v in variants.items()}
    settings = [measure_setting(models, ns, device, cfg.crop_size, b, t or default_threads, weights_mb)
                for t in ns.threads for b in ns.batch]
    sparsity = 1 - variants["adapmtl_sparse"]["nonzero_params"] / variants["adapmtl_sparse"]["params"]
    result = {
        "bench": "inference", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__, "architecture": cfg.architecture, "width_mult": cfg.width_mult,
        "input_side": cfg.crop_size, "amp": ns.amp, "channels_last": ns.channels_last, "weights": weights,
        "measurement": measurement_notes(ns, device), "adapmtl_overall_param_sparsity": sparsity,
        "unstructured_sparsity": UNSTRUCTURED_NOTE, "semi_structured_2_4": semi_structured_status(models, device),
        "variants": variants, "settings": settings,
        "setup_s": t_setup, "total_s": time.perf_counter() - t_start, "note": ns.note,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if ns.out:
        atomic_write_text(ns.out, text + "\n")
    return 0


if __name__ == "__main__":
    cli_main(main)
