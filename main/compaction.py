"""Compaction: any checkpoint's dead channels physically removed, with outputs kept (max abs difference ≲ 1e-5).

    python -m main.export --path RUN/segment_semantic_normal_depth_zbuffer.model --compact --out small.model

Works on every kind of checkpoint: AdapMTL (the soft thresholds are baked first, so the weights are the effective
ones), hard-masked baselines (pruned weights are stored as zeros) and structured ones (Taylor / CosPrune: zero
rows and zero BatchNorm γ, β).  Steps:

1. Coupled channel groups from Torch-Pruning's dependency graph (``main.channel_groups``).
2. Dead channels.  Channel c of a group is dead when its value is the same constant at every position for every
   input: every writer conv's row c is constant (all its effective weights zero, or, for an unpadded 1×1 conv,
   non-zero only on dead input channels), and every depthwise conv in the group either has a zero row c or reads
   exactly zero there (in a MobileNetV2 hidden layer, where only the depthwise conv reads the expansion, its zero
   row alone suffices).  A residual group's channel is dead only if it is dead in every member (the identity path
   then carries a constant too).  This is a fixed point over all groups, decided from the weights alone, so no
   data-dependent "dead ReLU" is ever removed.
3. A dead channel is not silent: after BatchNorm and ReLU it is relu(β − γ·μ/σ).  Its value is read off one eval
   forward of a random probe at each reader's input and folded into the reader: into the bias where the reader
   is unpadded (1×1), else into a ``FoldedConv2d``'s position-dependent constant map (zero padding makes the
   contribution differ near the borders, and dilated ASPP convs reach far).
4. An ASPP branch whose output is constant (classifier rows constant) is removed and its constant output added to
   a surviving branch's classifier bias.  Every group keeps at least one channel and every head one branch.

The compact file is an ordinary checkpoint plus a ``compact`` entry (``main.compact_arch.compact_spec``: per-layer
widths), read by ``main.checkpoint.model_from_checkpoint``; test.py evaluates it directly.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .channel_groups import ChannelGroup, channel_groups, is_depthwise
from .checkpoint import CHECKPOINT_VERSION, atomic_save
from .compact_arch import FoldedConv2d, compact_spec, new_bn, new_conv, replace_module, rewrap
from .models import MultiTaskModel
from .models.heads import ASPPHead

if TYPE_CHECKING:
    from .config import Config

PROBE_SIDE = 65  # odd, so ceil-mode pooling and every padding case are exercised; constants do not depend on it
EXACTNESS = 1e-4  # compaction refuses to write a model whose outputs differ more than this on the probe


# ------------------------------------------------------------------------------------------------ dead channels
def _is_padded(conv: nn.Conv2d) -> bool:
    return any(p != 0 for p in conv.padding)


def row_constant(conv: nn.Conv2d, dead_in: Tensor | None) -> Tensor:
    """Per output channel: is it a constant plane whatever the input?  Zero rows always (bias or 0); an unpadded
    groups=1 conv's row also when it reads only constant (``dead_in``) input channels."""
    nonzero = conv.weight.detach().flatten(2).ne(0).any(2).cpu()  # (out, in / groups)
    zero_row = ~nonzero.any(1)
    if dead_in is None or _is_padded(conv) or conv.groups != 1:
        return zero_row
    return ~(nonzero & ~dead_in).any(1)


def _group_dead(group: ChannelGroup, modules: Mapping[str, nn.Module], inputs: Mapping[str, Tensor],
                dead_of: Callable[[str], Tensor | None]) -> Tensor:
    if not group.writers:
        return torch.zeros(group.channels, dtype=torch.bool)
    writers = torch.ones(group.channels, dtype=torch.bool)
    for path in group.writers:
        writers &= row_constant(modules[path], dead_of(path))
    dws = [row_constant(modules[p], None) | (writers & inputs[p].eq(0).flatten(2).all(2).all(0))
           for p in group.depthwise]  # constant dw output: a zero row, or an input structurally exactly 0
    if len(group.writers) == 1 and len(dws) == 1:
        # pw-expand -> dw -> readers (a MobileNetV2 hidden layer): only the dw reads the writer, so the dw's
        # output alone decides (a zero dw row kills the channel even where the expansion is alive)
        return dws[0]
    dead = writers.clone()
    for dw in dws:
        dead &= dw
    return dead


def find_dead(modules: Mapping[str, nn.Module], groups: list[ChannelGroup],
              inputs: Mapping[str, Tensor]) -> list[Tensor]:
    """Dead channels of every group: the least fixed point of ``_group_dead`` (monotone in its inputs)."""
    reader_group = {r: i for i, g in enumerate(groups) for r in g.readers}
    dead = [torch.zeros(g.channels, dtype=torch.bool) for g in groups]

    def dead_of(path: str) -> Tensor | None:
        return dead[reader_group[path]] if path in reader_group else None

    changed = True
    while changed:
        changed = False
        for i, g in enumerate(groups):
            new = _group_dead(g, modules, inputs, dead_of)
            if not torch.equal(new, dead[i]):
                dead[i], changed = new, True
    return dead


def dead_branches(model: MultiTaskModel, groups: list[ChannelGroup], dead: list[Tensor]) -> list[str]:
    """Paths of ASPP branches whose output is constant (every classifier row constant); one branch always stays."""
    reader_group = {r: i for i, g in enumerate(groups) for r in g.readers}
    gone = []
    for task, head in model.heads.items():
        if not isinstance(head, ASPPHead):
            continue
        paths = [f"heads.{task}.{name}" for name in head.branch_names]
        flat = [p for p in paths if bool(row_constant(model.get_submodule(f"{p}.conv3"),
                                                      _maybe(dead, reader_group.get(f"{p}.conv3"))).all())]
        gone += flat[1:] if len(flat) == len(paths) else flat
    return gone


def _maybe(dead: list[Tensor], index: int | None) -> Tensor | None:
    return None if index is None else dead[index]


# ------------------------------------------------------------------------------------------------ probing
@torch.no_grad()
def probe(model: MultiTaskModel, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(input of every conv, output of every ASPP branch) in one eval forward of ``x``."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_pre_hook(
                lambda _m, args, name=name: inputs.__setitem__(name, args[0].detach().clone())))
        elif name.startswith("heads.") and name.count(".") == 2:
            handles.append(m.register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out.detach().clone())))
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def constants(t: Tensor, where: str) -> Tensor:
    """The per-channel constant of ``t`` (N, C, H, W), checked to be one value over batch and positions."""
    value = t[0, :, 0, 0]
    if t.numel() == 0:
        return value
    spread = (t - value[None, :, None, None]).abs().amax()
    if float(spread) > 1e-5 * (1 + float(value.abs().max())):
        raise RuntimeError(f"{where}: a channel found dead is not constant (spread {float(spread):.2e}); a bug")
    return value


# ------------------------------------------------------------------------------------------------ shrinking
@torch.no_grad()
def shrunk_conv(conv: nn.Conv2d, keep_out: Tensor | None, keep_in: Tensor | None, x_in: Tensor | None,
                where: str) -> nn.Conv2d:
    """``conv`` without the removed rows / input columns; removed constant inputs folded into bias or taps."""
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach().clone()
    taps = conv.constant_taps.clone() if isinstance(conv, FoldedConv2d) else None
    if keep_in is not None and conv.groups == 1 and not bool(keep_in.all()):
        gone = ~keep_in
        folded = (weight[:, gone] * constants(x_in[:, gone], where)[None, :, None, None]).sum(1)  # (out, kh, kw)
        if bool(folded.any()) and _is_padded(conv):
            taps = folded[:, None] if taps is None else taps + folded[:, None]
        elif bool(folded.any()):
            bias = folded.sum((1, 2)) if bias is None else bias + folded.sum((1, 2))
        weight = weight[:, keep_in]
    if keep_out is not None:
        weight = weight[keep_out]
        bias = None if bias is None else bias[keep_out]
        taps = None if taps is None else taps[keep_out]
    groups = weight.shape[0] if is_depthwise(conv) else conv.groups
    new = new_conv(conv, weight.shape[1] * groups, weight.shape[0], groups, bias is not None, taps is not None)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    if taps is not None:
        new.constant_taps.copy_(taps)
    return new


@torch.no_grad()
def sliced_bn(bn: nn.BatchNorm2d, keep: Tensor) -> nn.BatchNorm2d:
    new = new_bn(bn, int(keep.sum()))
    new.load_state_dict({k: (v[keep] if v.dim() == 1 else v) for k, v in bn.state_dict().items()})
    return new


def _keeps(groups: list[ChannelGroup], keep: list[Tensor]) -> tuple[dict, dict, dict]:
    """(output keep, input keep, BatchNorm keep) by module path."""
    out_keep, in_keep, bn_keep = {}, {}, {}
    for g, k in zip(groups, keep):
        for path in (*g.writers, *g.depthwise):
            out_keep[path] = k
        for path in g.readers:
            in_keep[path] = k
        for path in g.bns:
            bn_keep[path] = k
    return out_keep, in_keep, bn_keep


@torch.no_grad()
def _drop_branches(work: MultiTaskModel, gone: list[str], outputs: Mapping[str, Tensor]) -> None:
    """Remove each constant branch; its constant output moves into the first surviving branch's classifier bias."""
    for path in gone:
        _, task, name = path.split(".")
        head = work.heads[task]
        head.remove_branch(name)
        survivor = work.get_submodule(f"heads.{task}.{head.branch_names[0]}.conv3")
        survivor.bias.add_(constants(outputs[path], path))


def _build(work: MultiTaskModel, groups: list[ChannelGroup], keep: list[Tensor], gone: list[str],
           probed: tuple[dict[str, Tensor], dict[str, Tensor]]) -> MultiTaskModel:
    inputs, outputs = probed
    out_keep, in_keep, bn_keep = _keeps(groups, keep)
    alive = [(n, m) for n, m in work.named_modules() if not any(n.startswith(p + ".") for p in gone)]
    for path, m in alive:
        if isinstance(m, nn.Conv2d):
            replace_module(work, path, shrunk_conv(m, out_keep.get(path), in_keep.get(path), inputs.get(path), path))
        elif isinstance(m, nn.BatchNorm2d) and path in bn_keep:
            replace_module(work, path, sliced_bn(m, bn_keep[path]))
    _drop_branches(work, gone, outputs)
    return rewrap(work)


# ------------------------------------------------------------------------------------------------ the whole
def compact_model(model: MultiTaskModel, probe_side: int = PROBE_SIDE) -> tuple[MultiTaskModel, dict]:
    """(compact copy of ``model`` in eval mode with thresholds baked, report); ``model`` is untouched."""
    work = copy.deepcopy(model).cpu().eval()
    work.bake_thresholds()
    x = torch.randn((2, 3, probe_side, probe_side), generator=torch.Generator().manual_seed(0))
    groups = channel_groups(work, x[:1])
    probed = probe(work, x)
    modules = dict(work.named_modules())
    dead = find_dead(modules, groups, probed[0])
    gone = dead_branches(work, groups, dead)
    keep = [~d for d in dead]
    for k in keep:
        if not bool(k.any()):
            k[0] = True  # a zero-width layer is not a conv; the kept dead channel is computed exactly
    report = _report(work, groups, keep, gone)
    return _build(work, groups, keep, gone, probed).eval(), report


def _component(path: str) -> str:
    return "backbone" if path.startswith("backbone.") else path.split(".")[1]


def _report(model: MultiTaskModel, groups: list[ChannelGroup], keep: list[Tensor], gone: list[str]) -> dict:
    """Per component: output filters whose effective weights are all zero, and channels compaction removes."""
    zero: dict[str, list[int]] = {name: [0, 0] for name, _ in model.components()}
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            zero[_component(path)][0] += int(row_constant(m, None).sum())
            zero[_component(path)][1] += m.out_channels
    removed: dict[str, list[int]] = {name: [0, 0] for name, _ in model.components()}
    for g, k in zip(groups, keep):
        first = g.writers[0] if g.writers else g.readers[0]
        comp = _component(first)
        in_gone_branch = any(first.startswith(p + ".") for p in gone)
        removed[comp][0] += g.channels if in_gone_branch else int((~k).sum())
        removed[comp][1] += g.channels
    return {"zero_filters": zero, "removed_channels": removed, "removed_branches": list(gone)}


def count_params(model: nn.Module) -> int:
    """Stored parameters, thresholds excluded (the folded constants are buffers, counted by ``count_folded``)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("thresholds."))


@torch.no_grad()
def conv_flops(model: nn.Module, side: int) -> int:
    """2 × multiply-accumulates of every conv for one side×side input (the cached constant maps cost nothing)."""
    total = 0

    def hook(conv: nn.Conv2d, _inputs, output: Tensor) -> None:
        nonlocal total
        total += 2 * conv.weight.numel() * output.shape[-2] * output.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with evaluating(model):
            model(torch.zeros((1, 3, side, side), device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """The models in eval mode for the block, each back in the mode it had: a caller's training model stays one."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@torch.no_grad()
def max_difference(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """Largest |a(x) − b(x)| over all task outputs (eval mode; each model's mode restored)."""
    with evaluating(a, b):
        ya, yb = a(x), b(x)
    return max(float((ya[t] - yb[t]).abs().max()) for t in ya)


def summary(path: str | Path, before: MultiTaskModel, after: MultiTaskModel, report: dict, side: int) -> dict:
    """Params and FLOPs before and after (at ``side``×``side``) plus ``report``, for printing and for the file."""
    return {"source": str(path), "input_side": side,
            "params_before": count_params(before), "params_after": count_params(after),
            "flops_before": conv_flops(before, side), "flops_after": conv_flops(after, side), **report}


# ------------------------------------------------------------------------------------------------ the file
def write_compact(model: MultiTaskModel, cfg: Config, out: str | Path, source: str | Path,
                  iteration: int | None) -> dict:
    """Compact ``model`` (the run ``cfg`` describes) into the checkpoint ``out``; returns its summary.

    Refuses (a bug, not a user error) to write a model whose outputs differ from the original's by more than
    ``EXACTNESS`` on a random input at the run's crop size.  ``cfg`` is stored with ``dense`` set: the thresholds
    are baked, so the compact model is an ordinary dense-storage network."""
    small, report = compact_model(model)
    side = cfg.crop_size
    x = torch.randn((2, 3, side, side), generator=torch.Generator().manual_seed(1))
    diff = max_difference(model, small, x)
    if not diff <= EXACTNESS:
        raise RuntimeError(f"compaction changed the outputs by {diff:.2e} (> {EXACTNESS}); not written")
    info = {**summary(source, model, small, report, side), "max_difference": diff}
    stored = {**cfg.to_dict(), "dense": True}  # the caller's config is left as it was
    atomic_save({"state_dict": {k: v.detach().cpu() for k, v in small.state_dict().items()},
                 "config": stored, "compact": compact_spec(small), "compaction": info, "iter": iteration,
                 "version": CHECKPOINT_VERSION}, out)
    return info


def describe(out: str | Path, info: dict) -> list[str]:
    """The lines ``python -m main.export --compact`` prints about ``write_compact``'s summary."""
    lines = []
    for comp, (zero, total) in info["zero_filters"].items():
        removed, channels = info["removed_channels"][comp]
        lines.append(f"  {comp:>18}: {zero:,}/{total:,} output filters all-zero; {removed:,}/{channels:,} channels "
                     "of its coupled groups removed")
    if info["removed_branches"]:
        lines.append(f"  constant ASPP branches removed: {' '.join(info['removed_branches'])}")
    side = info["input_side"]
    lines.append(f"parameters: {info['params_before']:,} -> {info['params_after']:,} "
                 f"(x{info['params_after'] / info['params_before']:.3f}); conv GFLOPs at {side}x{side}: "
                 f"{info['flops_before'] / 1e9:.4f} -> {info['flops_after'] / 1e9:.4f} "
                 f"(x{info['flops_after'] / info['flops_before']:.3f})")
    lines.append(f"wrote {out} (max |original - compact| output difference on a random input: "
                 f"{info['max_difference']:.1e}); evaluate it with test.py --path {out}")
    return lines
