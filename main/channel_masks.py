"""Filter (output-channel) masks: which filters are removed, enforced through a ``MaskSet``.

One module, imported by structured pruning (which decides what to remove), compaction (which removes it
physically) and ``finetune.py`` (which keeps it removed while training), so none of them imports another.

Unit.  A *filter* is one output channel of a backbone conv whose removal changes no tensor shape that anything
else depends on.
* Deeplab-ResNet34: the internal ``conv1`` of every BasicBlock (→ ``bn1`` → ReLU → read by ``conv2``).  Every other
  backbone conv (stem, block ``conv2``, ``downsample``) feeds a residual add, so its channels are coupled across a
  whole stage and are not units here.
* MobileNetV2: the hidden channels of each inverted residual: pw-expand output = depthwise channels = pw-linear
  input, never touched by a residual add.  In the ``t = 1`` first block the hidden channels are the stem's outputs;
  they form a unit too when that block has no shortcut (full width), otherwise they are coupled and skipped.
* Task heads (only with ``heads=True``: S004 prunes the shared backbone alone, so that stays the default): the
  hidden channels of every ASPP branch, ``conv1`` (read by ``conv2``) and ``conv2`` (read by the classifier
  ``conv3``).  These convs have a bias and no BatchNorm, so a removed channel also has its bias entry zeroed: it
  then emits relu(0) = 0, exactly as a removed backbone filter does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .masks import MaskSet
from .models import BACKBONE, HEADS, MultiTaskModel
from .models.mobilenetv2 import InvertedResidual, MobileNetV2
from .models.resnet import BasicBlock, DeeplabResNet34


@dataclass(frozen=True)
class FilterUnit:
    """One layer of prunable filters; channel c of it is one unit.

    ``name`` is the producing conv's model path (its ``MaskSet`` name is ``mask_key(name)``).
    ``convs`` are the convs whose OUTPUT channel c is the unit (the producer, then depthwise convs), ``bns`` the
    BatchNorms on that chain, ``consumer`` the conv that reads channel c (its input columns), ``biases`` the convs
    whose bias entry c is zeroed with the channel (head convs, which have no BatchNorm).
    """

    name: str
    convs: tuple[str, ...]
    bns: tuple[str, ...]
    consumer: str
    channels: int
    biases: tuple[str, ...] = ()

    @property
    def is_head(self) -> bool:
        return self.name.startswith(f"{HEADS}.")


def _is_conv_bn_act(m: nn.Module) -> bool:
    return (isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[0], nn.Conv2d)
            and isinstance(m[1], nn.BatchNorm2d))


def filter_units(model: MultiTaskModel) -> list[FilterUnit]:
    """The prunable filter layers of ``model``'s backbone, in model order (see the module docstring)."""
    backbone = model.backbone
    units: list[FilterUnit] = []
    if isinstance(backbone, DeeplabResNet34):
        for path, block in backbone.named_modules():
            if isinstance(block, BasicBlock):
                p = f"{BACKBONE}.{path}"
                units.append(FilterUnit(f"{p}.conv1", (f"{p}.conv1",), (f"{p}.bn1",), f"{p}.conv2",
                                        block.conv1.out_channels))
    elif isinstance(backbone, MobileNetV2):
        feats = backbone.features
        for i, block in enumerate(feats):
            if not isinstance(block, InvertedResidual):
                continue
            p = f"{BACKBONE}.features.{i}.conv"
            if len(block.conv) == 8:  # pw expand (0, 1, 2) → dw (3, 4, 5) → pw-linear (6, 7)
                units.append(FilterUnit(f"{p}.0", (f"{p}.0", f"{p}.3"), (f"{p}.1", f"{p}.4"), f"{p}.6",
                                        block.conv[0].out_channels))
            elif i > 0 and not block.use_residual and _is_conv_bn_act(feats[i - 1]):
                # t = 1: dw (0, 1, 2) → pw-linear (3, 4); its input channels are the previous conv's outputs,
                # which feed nothing else when the block has no shortcut.
                q = f"{BACKBONE}.features.{i - 1}"
                units.append(FilterUnit(f"{q}.0", (f"{q}.0", f"{p}.0"), (f"{q}.1", f"{p}.1"), f"{p}.3",
                                        feats[i - 1][0].out_channels))
    else:
        raise ValueError(f"structured pruning knows DeeplabResNet34 and MobileNetV2 backbones, "
                         f"not {type(backbone).__name__}")
    return units


def head_units(model: MultiTaskModel) -> list[FilterUnit]:
    """The hidden channels of every task head's ASPP branches, in model order (see the module docstring)."""
    units: list[FilterUnit] = []
    for task, head in model.heads.items():
        for branch_name in head.branch_names:
            p, branch = f"{HEADS}.{task}.{branch_name}", getattr(head, branch_name)
            for conv, consumer in (("conv1", "conv2"), ("conv2", "conv3")):
                units.append(FilterUnit(f"{p}.{conv}", (f"{p}.{conv}",), (), f"{p}.{consumer}",
                                        getattr(branch, conv).out_channels, biases=(f"{p}.{conv}",)))
    return units


def mask_key(path: str) -> str:
    """The ``MaskSet`` name of the conv at model path ``path``: "<component>.<layer>" (a head's component is its
    task, so "heads.<task>.fc1.conv1" is "<task>.fc1.conv1"; backbone paths are their own names)."""
    return path[len(HEADS) + 1:] if path.startswith(f"{HEADS}.") else path


def _channel_params(modules: Mapping[str, nn.Module], unit: FilterUnit) -> list[nn.Parameter]:
    """The per-channel parameters zeroed with a removed channel: BatchNorm γ and β, and head conv biases."""
    params = [p for bn in unit.bns for p in (modules[bn].weight, modules[bn].bias)]
    return params + [modules[conv].bias for conv in unit.biases]


class ChannelMasks:
    """Which filters of each unit layer are kept (True), bound to one model.

    ``install`` writes the removed filters into a ``MaskSet`` (conv rows and consumer columns) and zeroes the
    BatchNorm γ and β (head convs: the bias); the instance is also a ``Trainer`` step hook (``hook(trainer,
    iteration, batch)``) that re-zeroes them after every optimiser step, since the ``MaskSet`` only covers conv
    weights.  ``heads``: the task heads' hidden channels are units too.
    """

    def __init__(self, model: MultiTaskModel, heads: bool = False) -> None:
        self.units = filter_units(model) + (head_units(model) if heads else [])
        self.heads = heads
        self.by_name = {u.name: u for u in self.units}
        self.modules = {name: m for name, m in model.named_modules()}
        self.keep: dict[str, Tensor] = {u.name: torch.ones(u.channels, dtype=torch.bool) for u in self.units}

    # ------------------------------------------------------------------ counts
    def total(self) -> int:
        return sum(u.channels for u in self.units)

    def kept(self) -> int:
        return int(sum(int(k.sum()) for k in self.keep.values()))

    def pruned(self) -> int:
        return self.total() - self.kept()

    def per_layer(self) -> dict[str, dict[str, int]]:
        return {n: {"kept": int(k.sum()), "total": k.numel()} for n, k in self.keep.items()}

    # ------------------------------------------------------------------ changing and enforcing
    def remove(self, chosen: Mapping[str, Tensor]) -> None:
        """Mark the channel indices ``chosen[name]`` of each unit layer as pruned."""
        for name, idx in chosen.items():
            keep = self.keep[name].clone()
            keep[idx.to(keep.device)] = False
            self.keep[name] = keep

    def write_into(self, masks: MaskSet) -> None:
        """Removed filters become False rows (chain convs) and False input columns (consumer) of ``masks``."""
        for u in self.units:
            consumer = mask_key(u.consumer)
            gone = ~self.keep[u.name].to(masks.masks[consumer].device)
            if not bool(gone.any()):
                continue
            for conv in map(mask_key, u.convs):
                masks.masks[conv] = masks.masks[conv].clone()
                masks.masks[conv][gone] = False
            masks.masks[consumer] = masks.masks[consumer].clone()
            masks.masks[consumer][:, gone] = False

    @torch.no_grad()
    def apply(self) -> None:
        """Zero γ and β of every BatchNorm on a removed filter's chain, and a head conv's bias entry."""
        for u in self.units:
            for p in _channel_params(self.modules, u):
                p.mul_(self.keep[u.name].to(p.device, p.dtype))

    def install(self, masks: MaskSet) -> None:
        """Make the current keep-vectors effective: ``masks`` updated, pruned weights and BN parameters zeroed."""
        self.write_into(masks)
        masks.apply()
        self.apply()

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear Adam / momentum state of the zeroed BN parameters and biases (the MaskSet does the same for conv
        weights)."""
        for u in self.units:
            for p in _channel_params(self.modules, u):
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, Tensor) and value.shape == p.shape:
                        value.mul_(self.keep[u.name].to(value.device, value.dtype))

    def __call__(self, trainer, iteration: int, batch: Mapping[str, Tensor]) -> None:
        self.apply()

    def attach(self, trainer) -> ChannelMasks:
        """Enforce these masks in ``trainer`` from now on (no-op when nothing is pruned); returns self."""
        if self.pruned() == 0:
            return self
        self.to(trainer.device)
        if trainer.masks is None:
            trainer.set_masks(MaskSet(trainer.model))
        self.install(trainer.masks)
        trainer.masks.zero_optimizer_state(trainer.optimizer)
        self.zero_optimizer_state(trainer.optimizer)
        trainer.step_hooks.append(self)
        return self

    def to(self, device: torch.device | str) -> ChannelMasks:
        self.keep = {n: k.to(device) for n, k in self.keep.items()}
        return self

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        return {n: k.detach().cpu().clone() for n, k in self.keep.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if set(state) != set(self.keep):
            raise ValueError(f"channel mask names do not match the model's filter layers "
                             f"(missing {sorted(set(self.keep) - set(state))[:3]}, "
                             f"unknown {sorted(set(state) - set(self.keep))[:3]})")
        for n, k in state.items():
            if k.shape != self.keep[n].shape:
                raise ValueError(f"channel mask {n} has {k.numel()} entries, the layer {self.keep[n].numel()}")
            self.keep[n] = k.to(device=self.keep[n].device, dtype=torch.bool)

    @classmethod
    def from_model(cls, model: MultiTaskModel, masks: MaskSet, heads: bool | None = None) -> ChannelMasks:
        """Recover removed filters from a masked model: every chain row masked off and every per-channel parameter
        (BatchNorm γ and β, head conv bias) zero.

        Trainer checkpoints (fine-tuning, the training schedule) carry the ``MaskSet`` and the zeroed parameters
        but no channel masks, so this is how a later step finds the structure again.  Both conditions are
        required: an all-zero row of an unstructured mask alone does not make a channel emit 0.  ``heads``: head
        channels are units (None: only if some head channel is found removed).
        """
        cm = cls(model, heads=heads is not False)
        for u in cm.units:
            gone = torch.ones(u.channels, dtype=torch.bool)
            for conv in u.convs:
                gone &= ~masks.masks[mask_key(conv)].flatten(1).any(1).cpu()
            for p in _channel_params(cm.modules, u):
                gone &= (p.detach() == 0).cpu()
            cm.keep[u.name] = ~gone
        if heads is None and all(bool(cm.keep[u.name].all()) for u in cm.units if u.is_head):
            found = cm
            cm = cls(model)
            cm.keep = {n: found.keep[n] for n in cm.keep}
        return cm

    @classmethod
    def from_checkpoint(cls, model: MultiTaskModel, state: Mapping | None, masks: MaskSet,
                        heads: bool = False) -> ChannelMasks:
        """The checkpoint's ``channel_masks`` entry (written by pruning.py), else ``from_model``.  Head channels are
        units when the checkpoint pruned some, and with ``heads`` (to prune them from now on) in any case."""
        stored = state.get("channel_masks") if state is not None else None
        if stored is None:
            return cls.from_model(model, masks, True if heads else None)
        has_heads = any(name.startswith(f"{HEADS}.") for name in stored)
        cm = cls(model, heads=heads or has_heads)
        unpruned_heads = {u.name: cm.keep[u.name] for u in cm.units if u.is_head}
        cm.load_state_dict({**unpruned_heads, **stored})
        return cm
