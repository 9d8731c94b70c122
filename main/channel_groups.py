"""Coupled channel groups: the output channels that must be removed together, found by Torch-Pruning's dependency
graph (``torch_pruning.DependencyGraph``).

A group is one channel space: channel c of it is output channel c of every *writer* conv (several when a
residual add sums them: a ResNet stage, a MobileNetV2 run of residual blocks), channel c of each BatchNorm and
depthwise conv on the way, and input column c of every *reader* conv.  Removing channel c means removing all of
these at once; nothing else changes shape.

Why Torch-Pruning: it traces the model's autograd graph, so residual adds, depthwise convs and BatchNorms are
coupled by what the forward does, not by a hand-written list per architecture (``main.channel_masks`` is such a
list, for the backbone's residual-free filters only).  The groups it reports for Deeplab-ResNet34, MobileNetV2
(including the t = 1 block whose shortcut exists only at some widths) and the ASPP heads are checked in
``tests/test_compaction.py``.  What it does not do, and ``main.compaction`` adds: deciding which channels are dead,
and folding the constant a dead channel still carries (BatchNorm β after a zero conv) into its readers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UserError


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled channel space, by module path (see the module docstring)."""

    writers: tuple[str, ...]  # groups=1 convs whose output channels are the group's channels
    depthwise: tuple[str, ...]  # depthwise convs inside the group: input and output channel c both belong to it
    bns: tuple[str, ...]  # BatchNorms over the group's channels
    readers: tuple[str, ...]  # groups=1 convs reading the group's channels as input columns
    channels: int


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _group_of(items: list[tuple[str, nn.Module, str]]) -> ChannelGroup:
    """A ``ChannelGroup`` from (path, module, handler name) triples of one Torch-Pruning group."""
    writers, dws, bns, readers = [], [], [], []
    for path, module, handler in items:
        if isinstance(module, nn.BatchNorm2d):
            bns.append(path)
        elif is_depthwise(module):
            dws.append(path)
        elif handler.endswith("out_channels"):
            writers.append(path)
        else:
            readers.append(path)
    channels = {m.num_features if isinstance(m, nn.BatchNorm2d) else
                (m.out_channels if h.endswith("out_channels") or is_depthwise(m) else m.in_channels)
                for _, m, h in items}
    if len(channels) != 1 or any(isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)
                                 for _, m, _ in items):
        raise ValueError(f"unsupported coupling: {[p for p, _, _ in items]}")
    uniq = [tuple(dict.fromkeys(x)) for x in (writers, dws, bns, readers)]
    return ChannelGroup(*uniq, channels=channels.pop())


def channel_groups(model: nn.Module, example: Tensor) -> list[ChannelGroup]:
    """Every coupled channel group of ``model`` that some conv reads (model outputs are never groups here).

    ``example``: an input the model accepts (one forward traces it; the model's mode and weights are untouched).
    Only Conv2d and BatchNorm2d members are kept (Torch-Pruning also lists the adds and activations it passes).
    """
    try:  # imported here: only compaction needs it, evaluation and training never do
        import torch_pruning as tp
    except ImportError:
        raise UserError("compaction needs Torch-Pruning's dependency graph: pip install 'torch-pruning>=1.6,<1.7' "
                        "(in requirements.txt)") from None

    names = {m: n for n, m in model.named_modules()}
    with warnings.catch_warnings():  # the thresholds are "unwrapped parameters" to it; they are never pruned
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=_sum_outputs)
        raw = list(graph.get_all_groups(root_module_types=[nn.Conv2d]))
    groups, seen = [], set()
    for group in raw:
        items = [(names[dep.target.module], dep.target.module, dep.handler.__name__) for dep, _ in group.items
                 if isinstance(dep.target.module, nn.Conv2d | nn.BatchNorm2d)]
        if not any(h.endswith("in_channels") and not is_depthwise(m) for _, m, h in items):
            continue  # nothing reads it: the model's outputs (Torch-Pruning couples all heads' classifiers)
        found = _group_of(items)
        key = (found.writers, found.depthwise, found.readers)
        if key not in seen:
            seen.add(key)
            groups.append(found)
    return groups


def _sum_outputs(out: dict[str, Tensor] | Tensor) -> Tensor:
    """One tensor for Torch-Pruning to trace back from (the model returns a dict of task predictions)."""
    if isinstance(out, dict):
        return torch.stack([v.sum() for v in out.values()]).sum()
    return out.sum()
