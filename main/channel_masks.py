"""Filter (output-channel) masks of the backbone: which filters are removed, enforced through a ``MaskSet``.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .masks import MaskSet
from .models import BACKBONE, MultiTaskModel
from .models.mobilenetv2 import InvertedResidual, MobileNetV2
from .models.resnet import BasicBlock, DeeplabResNet34


@dataclass(frozen=True)
class FilterUnit:
    """One layer of prunable filters; channel c of it is one unit.

    ``name`` is the producing conv's model path, which is also its ``MaskSet`` name ("backbone.<layer>").
    ``convs`` are the convs whose OUTPUT channel c is the unit (the producer, then depthwise convs), ``bns`` the
    BatchNorms on that chain, ``consumer`` the conv that reads channel c (its input columns).
    """

    name: str
    convs: tuple[str, ...]
    bns: tuple[str, ...]
    consumer: str
    channels: int


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


class ChannelMasks:
    """Which filters of each unit layer are kept (True), bound to one model.

    ``install`` writes the removed filters into a ``MaskSet`` (conv rows and consumer columns) and zeroes the
    BatchNorm γ and β; the instance is also a ``Trainer`` step hook (``hook(trainer, iteration, batch)``) that
    re-zeroes γ and β after every optimiser step, since the ``MaskSet`` only covers conv weights.
    """

    def __init__(self, model: MultiTaskModel) -> None:
        self.units = filter_units(model)
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
            gone = ~self.keep[u.name].to(masks.masks[u.consumer].device)
            if not bool(gone.any()):
                continue
            for conv in u.convs:
                masks.masks[conv] = masks.masks[conv].clone()
                masks.masks[conv][gone] = False
            masks.masks[u.consumer] = masks.masks[u.consumer].clone()
            masks.masks[u.consumer][:, gone] = False

    @torch.no_grad()
    def apply(self) -> None:
        """Zero γ and β of every BatchNorm on a removed filter's chain."""
        for u in self.units:
            for bn in u.bns:
                m = self.modules[bn]
                keep = self.keep[u.name].to(m.weight.device, m.weight.dtype)
                m.weight.mul_(keep)
                m.bias.mul_(keep)

    def install(self, masks: MaskSet) -> None:
        """Make the current keep-vectors effective: ``masks`` updated, pruned weights and BN parameters zeroed."""
        self.write_into(masks)
        masks.apply()
        self.apply()

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear Adam / momentum state of the zeroed BN parameters (the MaskSet does the same for conv weights)."""
        for u in self.units:
            for bn in u.bns:
                m = self.modules[bn]
                for p in (m.weight, m.bias):
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
    def from_model(cls, model: MultiTaskModel, masks: MaskSet) -> ChannelMasks:
        """Recover removed filters from a masked model: every chain row masked off and every chain γ, β zero.

        Trainer checkpoints (fine-tuning, the training schedule) carry the ``MaskSet`` and the zeroed BN
        parameters but no channel masks, so this is how a later step finds the structure again.  Both
        conditions are required: an all-zero row of an unstructured mask alone does not make a channel emit 0.
        """
        cm = cls(model)
        for u in cm.units:
            gone = torch.ones(u.channels, dtype=torch.bool)
            for conv in u.convs:
                gone &= ~masks.masks[conv].flatten(1).any(1).cpu()
            for bn in u.bns:
                m = cm.modules[bn]
                gone &= ((m.weight.detach() == 0) & (m.bias.detach() == 0)).cpu()
            cm.keep[u.name] = ~gone
        return cm

    @classmethod
    def from_checkpoint(cls, model: MultiTaskModel, state: Mapping | None, masks: MaskSet) -> ChannelMasks:
        """The checkpoint's ``channel_masks`` entry (written by pruning.py), else ``from_model``."""
        if state is not None and state.get("channel_masks") is not None:
            cm = cls(model)
            cm.load_state_dict(state["channel_masks"])
            return cm
        return cls.from_model(model, masks)
