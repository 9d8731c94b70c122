"""Inference latency and peak memory: dense vs AdapMTL-sparse vs physically smaller structured-pruned networks.

Variants, all eval mode under ``torch.no_grad()`` on the same random input batch:

* ``dense``: the model (CPU preset by default: ``main.config.Config``'s architecture, width and crop size).
* ``adapmtl_sparse``: the same model with soft thresholds baked (``MultiTaskModel.bake_thresholds``) so its conv
  weights are ``--sparsity`` zeros (per component, set by choosing each component's tau; a sparse AdapMTL
  ``--checkpoint`` keeps its own learned thresholds).  It runs the SAME dense kernels: unstructured sparsity
  gives no speed-up and no memory saving here; its gains are storage (``python -m main.export``) and the
  theoretical zero-skipping FLOPs ``test.py`` reports.
* ``taylor_50`` / ``taylor_75`` / ``cosprune_50`` / ``cosprune_75``: 50% / 75% of the prunable backbone filters
  removed by the real selection code (``SOTA_methods.structured.prune_structured``, scored on ``--num_batches``
  batches of the run's data; ranking quality is irrelevant for latency) and physically compacted
  (``SOTA_methods.compact.compact_model``): smaller convs, smaller activations.

Latency: after ``--warmup`` rounds, ``--repeats`` rounds in which every variant runs one forward, the variant
order rotating each round so machine noise hits all alike; the median per variant and all ratios come from one
run (CUDA: timed between ``torch.cuda.synchronize()`` calls).  Memory: see ``MEMORY_METHOD``.  On CUDA the
2:4 semi-structured sparsity of ``torch.sparse.to_sparse_semi_structured`` is reported where it applies (it
accelerates 2-D matmul weights; these networks are all convolutions).

    python -m bench.inference [--width_mult 1 --input 321 --batch 1] [--checkpoint CKPT] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from main.channel_masks import ChannelMasks
from main.checkpoint import load_checkpoint, model_from_checkpoint
from main.config import Config
from main.data import build_dataset, dataset_info
from main.device import resolve_device
from main.masks import MaskSet
from main.models import MultiTaskModel, model_for
from main.precision import autocast, to_channels_last
from SOTA_methods.compact import compact_model, count_flops, count_params
from SOTA_methods.structured import prune_structured

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
    return compact_model(work, channels).eval(), info


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", choices=["resnet34", "mobilenetv2"], help="default: the preset's (resnet34)")
    p.add_argument("--width_mult", type=float, help="default: the preset's (0.125)")
    p.add_argument("--input", type=int, help="square input side (default: the preset's crop_size, 96)")
    p.add_argument("--batch", type=int, help="images per forward (default: the preset's batch_size, 8)")
    p.add_argument("--checkpoint", help="trained checkpoint (its config sets architecture and width)")
    p.add_argument("--sparsity", type=float, default=0.9, help="AdapMTL-sparse: zero fraction per component")
    p.add_argument("--num_batches", type=int, default=2, help="batches that score the structured filters")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast for every variant")
    p.add_argument("--channels_last", action="store_true", help="NHWC models and input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    p.add_argument("--out", help="also write the JSON here")
    ns = p.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = resolve_device(ns.device)
    t_start = time.perf_counter()

    cfg, dense, weights, learned = build_dense(ns, device)
    batch_size = ns.batch or cfg.batch_size
    info = dataset_info(cfg)
    class_weights = info.class_weights.to(device) if info.class_weights is not None else None
    dense.eval()

    models: dict[str, MultiTaskModel] = {"dense": dense}
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
    batches = scoring_batches(cfg, ns.num_batches, batch_size)
    for method, ratio in STRUCTURED:
        name = f"{method}_{round(100 * ratio)}"
        models[name], extra[name] = structured_variant(dense, method, ratio, batches, info.tasks, device,
                                                       class_weights)
    t_setup = time.perf_counter() - t_start

    shape = (batch_size, 3, cfg.crop_size, cfg.crop_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(ns.seed)).to(device)
    x = to_channels_last(x, ns.channels_last)
    for m in models.values():
        m.eval()
        if ns.channels_last:
            m.to(memory_format=torch.channels_last)
    fns = {n: forward_fn(m, x, ns.amp, device) for n, m in models.items()}
    times = time_all(fns, ns.warmup, ns.repeats, device.type == "cuda")
    peaks = {n: peak_activation_bytes(fn, device) for n, fn in fns.items()}

    variants = {}
    for n, m in models.items():
        ts = sorted(times[n])
        wb = weight_bytes(m)
        variants[n] = {
            "latency_ms": 1e3 * statistics.median(ts), "latency_ms_min": 1e3 * ts[0], "latency_ms_max": 1e3 * ts[-1],
            "peak_activation_mb": peaks[n] / 2**20, "weights_mb": wb / 2**20, "peak_total_mb": (peaks[n] + wb) / 2**20,
            "params": count_params(m), "nonzero_params": nonzero_params(m), "backbone_params": count_params(m.backbone),
            "flops_per_image": count_flops(m, (1, 3, cfg.crop_size, cfg.crop_size)),
            **extra[n],
        }
    base = variants["dense"]
    for v in variants.values():
        v["vs_dense"] = {k: v[key] / base[key] for k, key in (
            ("latency", "latency_ms"), ("peak_total_memory", "peak_total_mb"),
            ("peak_activation_memory", "peak_activation_mb"), ("params", "params"),
            ("nonzero_params", "nonzero_params"), ("backbone_params", "backbone_params"),
            ("flops", "flops_per_image"))}
    sparsity = 1 - variants["adapmtl_sparse"]["nonzero_params"] / variants["adapmtl_sparse"]["params"]
    result = {
        "bench": "inference",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "architecture": cfg.architecture, "width_mult": cfg.width_mult, "input_shape": list(shape),
        "amp": ns.amp, "channels_last": ns.channels_last, "weights": weights,
        "measurement": {
            "latency": (f"median of {ns.repeats} forwards per variant after {ns.warmup} warm-up rounds, eval mode, "
                        "torch.no_grad(), variants interleaved with rotating order; ratios from this one run"),
            "memory": MEMORY_METHOD["cuda" if device.type == "cuda" else "cpu"],
            "params": ("parameters stored (thresholds excluded); nonzero_params counts non-zero entries; structured "
                       "pruning removes backbone BasicBlock conv1 filters only (heads and residual widths stay)"),
            "flops": "per image, torch.utils.flop_counter (2 x MACs of convs; zeros counted: dense kernels)",
        },
        "adapmtl_overall_param_sparsity": sparsity,
        "unstructured_sparsity": UNSTRUCTURED_NOTE,
        "semi_structured_2_4": semi_structured_status(models, device),
        "variants": variants,
        "setup_s": t_setup, "total_s": time.perf_counter() - t_start,
        "note": ns.note,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
