"""Export a structurally pruned model as a physically smaller network, and count its parameters and FLOPs.

    python -m SOTA_methods.compact --path PRUNED.model --out SMALL.pt

``compact_model`` rebuilds every filter layer of ``SOTA_methods.structured`` with the removed channels cut out:
the producing conv's output channels, each BatchNorm on the chain, the depthwise conv (its ``groups`` too) and the
consumer conv's input channels.  Because a removed channel emits exactly 0 in the masked network (zero rows, zero
γ and β), the small network computes the same outputs up to float summation order.  The saved file holds plain
types only (``torch.load(weights_only=True)`` reads it): the state dict plus what ``rebuild_compact`` needs to
recreate the modules (architecture, widths, head channels and the per-layer kept channel counts).

``python -m main.export --path CKPT --compact`` (``main.compaction``) compacts any checkpoint instead: it also
removes residual-coupled and head channels, folds the constants dead channels carry, and writes a checkpoint that
``test.py`` evaluates and ``main.checkpoint.model_from_checkpoint`` rebuilds.  This module stays for the cost
accounting of structured pruning (``structured.py``, ``bench/inference.py``), whose numbers it defines.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from main.channel_masks import ChannelMasks, FilterUnit
from main.checkpoint import CHECKPOINT_VERSION, CheckpointError, atomic_save, load_checkpoint
from main.masks import MaskSet
from main.models import HEADS, MultiTaskModel, build_model
from main.models.heads import ASPP_RATES
from main.output_file import COMPACT_MODEL, check_output_file
from main.sparse import SoftThresholdConv2d

# ------------------------------------------------------------------------------------------------ counting
FLOPS_UNIT = ("FLOPs of one forward pass at input_shape, as torch.utils.flop_counter counts them: 2 x multiply-"
              "accumulates of every convolution / matmul; BatchNorm, activations, pooling and the soft threshold "
              "are not counted")


def count_params(model: nn.Module) -> int:
    """Parameters a deployed model stores: every tensor in ``parameters()`` except the AdapMTL thresholds."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("thresholds."))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward on a zero input of ``input_shape`` (N, C, H, W).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 × multiply-accumulates of each convolution and
    matmul (grouped / depthwise convs counted at their real cost); BatchNorm, activations, pooling and additions are
    not counted.  Zero weights still count, so a masked (not compacted) model costs as much as the dense one.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(tuple(input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ shrinking
def _new_conv(conv: nn.Conv2d, weight: Tensor, groups: int) -> SoftThresholdConv2d:
    new = SoftThresholdConv2d(weight.shape[1] * groups, weight.shape[0], conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, groups=groups,
                              bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


def _slice_out(conv: nn.Conv2d, idx: Tensor, depthwise: bool) -> SoftThresholdConv2d:
    if depthwise and conv.groups != conv.out_channels:
        raise ValueError("a chained conv after the producer must be depthwise")
    new = _new_conv(conv, conv.weight.detach()[idx], idx.numel() if depthwise else conv.groups)
    if conv.bias is not None:
        with torch.no_grad():
            new.bias.copy_(conv.bias.detach()[idx])
    return new


def _slice_in(conv: nn.Conv2d, idx: Tensor) -> SoftThresholdConv2d:
    if conv.groups != 1:
        raise ValueError("the consumer of a filter layer must be an ordinary (groups=1) conv")
    new = _new_conv(conv, conv.weight.detach()[:, idx], 1)
    if conv.bias is not None:
        with torch.no_grad():
            new.bias.copy_(conv.bias.detach())
    return new


def _slice_bn(bn: nn.BatchNorm2d, idx: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(idx.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats).to(bn.weight.device, bn.weight.dtype)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[idx])
            new.bias.copy_(bn.bias.detach()[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _shrink_unit(root: nn.Module, unit: FilterUnit, idx: Tensor) -> None:
    for k, path in enumerate(unit.convs):
        _replace(root, path, _slice_out(root.get_submodule(path), idx, depthwise=k > 0))
    for path in unit.bns:
        _replace(root, path, _slice_bn(root.get_submodule(path), idx))
    _replace(root, unit.consumer, _slice_in(root.get_submodule(unit.consumer), idx))


def compact_model(model: MultiTaskModel, channels: ChannelMasks) -> MultiTaskModel:
    """A new ``MultiTaskModel`` (dense mode, thresholds baked) without the removed filters; ``model`` is untouched."""
    work = copy.deepcopy(model)
    work.bake_thresholds()  # a no-op for dense models; the soft threshold must not act on the sliced weights
    for unit in channels.units:
        keep = channels.keep[unit.name]
        if bool(keep.all()):
            continue
        idx = keep.nonzero().flatten().to(next(work.parameters()).device)
        _shrink_unit(work, unit, idx)
    # Rebuild the wrapper so its per-component conv lists point at the new modules.
    small = MultiTaskModel(work.backbone, dict(work.heads), sparse=False, threshold_scope=work.threshold_scope)
    with torch.no_grad():
        for name, s in work.thresholds.items():
            small.thresholds[name].copy_(s)
    small.set_sparse(False)
    return small.to(next(work.parameters()).device).train(model.training)


# ------------------------------------------------------------------------------------------------ saving
def task_channels_of(model: MultiTaskModel) -> dict[str, int]:
    """Output channels of each ASPP head (its first branch's classifier)."""
    return {t: int(head.fc1.conv3.out_channels) for t, head in model.heads.items()}


def cost(model: MultiTaskModel, channels: ChannelMasks, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters (all, and backbone) and FLOPs of the physically compacted network."""
    small = compact_model(model, channels)
    return {"params": count_params(small), "backbone_params": count_params(small.backbone),
            "flops": count_flops(small, input_shape)}


def compact_state(small: MultiTaskModel, channels: ChannelMasks, architecture: str, width_mult: float,
                  head_dropout: float, task_channels: Mapping[str, int], extra: Mapping | None = None,
                  aspp_rates: Sequence[int] = ASPP_RATES) -> dict:
    """Everything needed to rebuild ``small`` (see ``rebuild_compact``), as plain types and tensors."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in small.state_dict().items()},
        "compact": {
            "architecture": architecture, "width_mult": float(width_mult), "head_dropout": float(head_dropout),
            "aspp_rates": [int(r) for r in aspp_rates],
            "task_channels": {t: int(c) for t, c in task_channels.items()},
            "channels": {n: int(k.sum()) for n, k in channels.keep.items()},
            "kept_indices": {n: k.nonzero().flatten().tolist() for n, k in channels.keep.items()},
        },
        **(dict(extra) if extra else {}),
        "version": CHECKPOINT_VERSION,
    }


def rebuild_compact(state: Mapping) -> MultiTaskModel:
    """The compact model of a ``compact_state`` dict (e.g. ``torch.load(SMALL.pt, weights_only=True)``)."""
    spec = state["compact"]
    full = build_model(spec["architecture"], spec["task_channels"], spec["width_mult"], sparse=False,
                       head_dropout=spec["head_dropout"], aspp_rates=spec.get("aspp_rates", ASPP_RATES))
    shapes = ChannelMasks(full, heads=any(n.startswith(f"{HEADS}.") for n in spec["channels"]))
    for name, k in spec["channels"].items():
        keep = torch.zeros(shapes.keep[name].numel(), dtype=torch.bool)
        keep[:k] = True
        shapes.keep[name] = keep
    small = compact_model(full, shapes)
    small.load_state_dict(state["state_dict"])
    return small


def load_pruned(path: str, device: torch.device | str = "cpu") -> tuple[dict, MultiTaskModel, ChannelMasks]:
    """A pruned checkpoint's (config, model with thresholds baked, channel masks), without touching the dataset."""
    state = load_checkpoint(path)
    cfg = state.get("config")
    if cfg is None:
        raise CheckpointError(f"{path} carries no config; it was not written by this code")
    sd = state["state_dict"]
    tasks = list(cfg["tasks"])
    try:
        task_channels = {t: int(sd[f"heads.{t}.fc1.conv3.weight"].shape[0]) for t in tasks}
    except KeyError:
        raise CheckpointError(f"{path}: its state dict has no ASPP head classifier for every task") from None
    model = build_model(cfg["architecture"], task_channels, cfg["width_mult"], sparse=not cfg.get("dense", False),
                        head_dropout=cfg.get("head_dropout", 0.5),
                        threshold_scope=cfg.get("threshold_scope", "component"),
                        aspp_rates=cfg.get("aspp_rates", ASPP_RATES))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0]})") from None
    model.set_sparse(not cfg.get("dense", False))
    model.bake_thresholds()
    model.to(device)
    masks = MaskSet(model)
    if state.get("masks") is not None:
        masks.load_state_dict(state["masks"])
    else:
        masks = MaskSet.from_weights(model)
    return cfg, model, ChannelMasks.from_checkpoint(model, state, masks)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a structurally pruned checkpoint as a physically smaller network.")
    p.add_argument("--path", required=True, help="pruned checkpoint (pruning.py / finetune.py / structured_train)")
    p.add_argument("--out", required=True, help="where to write the compact model (.pt)")
    p.add_argument("--input_size", type=int, help="square input side for FLOPs (default: the run's crop_size)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace an existing file of another kind")
    args = p.parse_args(argv)
    check_output_file(args.out, "--out", COMPACT_MODEL, {"--path": args.path}, overwrite=args.overwrite)
    cfg, model, channels = load_pruned(args.path)
    model.eval()
    side = args.input_size or int(cfg.get("crop_size", 321))
    shape = [1, 3, side, side]
    small = compact_model(model, channels).eval()
    with torch.no_grad():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        a, b = model(x), small(x)
        diff = max(float((a[t] - b[t]).abs().max()) for t in a)
    before = {"params": count_params(model), "flops": count_flops(model, shape)}
    after = {"params": count_params(small), "flops": count_flops(small, shape)}
    extra = {"config": cfg, "source": args.path, "params": after["params"], "flops": after["flops"],
             "params_before": before["params"], "flops_before": before["flops"], "input_shape": shape,
             "flops_unit": FLOPS_UNIT}
    atomic_save(compact_state(small, channels, cfg["architecture"], cfg["width_mult"], cfg.get("head_dropout", 0.5),
                              task_channels_of(model), extra, cfg.get("aspp_rates", ASPP_RATES)), Path(args.out))
    print(f"{args.path}: {channels.pruned()} of {channels.total()} backbone filters removed")
    fewer = 100 * (1 - after["params"] / before["params"])
    print(f"parameters: {before['params']:,} -> {after['params']:,} ({fewer:.2f}% fewer)")
    print(f"GFLOPs at {side}x{side} (2 x MACs of convs/matmuls): {before['flops'] / 1e9:.4f} -> "
          f"{after['flops'] / 1e9:.4f} ({100 * (1 - after['flops'] / before['flops']):.2f}% fewer)")
    print(f"max |masked - compact| output difference (eval mode): {diff:.2e}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from main.errors import cli_main

    cli_main(main)
