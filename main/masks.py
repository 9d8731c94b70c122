"""Hard pruning masks over the prunable weights, grouped by component (open_lth / DiSparse style).

The prunable weights are exactly the ones AdapMTL thresholds (every ``SoftThresholdConv2d`` weight), so
every method's sparsity is counted by the same ``SparsityCounter`` and compares one to one with AdapMTL.
A ``MaskSet`` lives in ``main`` because the trainer enforces it (after every optimiser step) and
checkpoints carry it; the pruning criteria and schedules that fill it live in ``SOTA_methods``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UserError
from .models.mtl import HEADS
from .sparse import sparse_convs


class MaskError(UserError, ValueError):
    """A checkpoint's masks do not fit its model or contradict its weights."""


def check_masks(masks: object, state_dict: dict[str, Tensor], source: str) -> None:
    """Refuse masks that do not fit ``state_dict`` (a name without a weight, another shape) or that contradict it
    (a pruned position whose weight is not zero: every writer zeroes pruned weights), before any work is done."""
    if not isinstance(masks, dict) or not all(isinstance(m, Tensor) for m in masks.values()):
        raise MaskError(f"{source}: its masks are not a mapping of layer names to tensors")
    layers = {k[:-len(".weight")].removeprefix(f"{HEADS}.") for k, v in state_dict.items()
              if k.endswith(".weight") and v.dim() == 4}  # every conv of the model is prunable
    missing = sorted(layers - set(masks))
    if missing:
        raise MaskError(f"{source}: its masks lack {missing[0]} ({len(missing)} of {len(layers)} layers unmasked)")
    for name, mask in masks.items():  # mask names are "<component>.<layer>"; heads live under "heads."
        weight = state_dict.get(f"{name}.weight", state_dict.get(f"{HEADS}.{name}.weight"))
        if weight is None:
            raise MaskError(f"{source}: it has a mask for {name!r}, a layer its weights do not have")
        if tuple(mask.shape) != tuple(weight.shape):
            raise MaskError(f"{source}: the mask of {name} has shape {tuple(mask.shape)}, its weight "
                            f"{tuple(weight.shape)}")
        wrong = int((weight[~mask.bool()] != 0).sum())
        if wrong:
            raise MaskError(f"{source}: the mask of {name} prunes {wrong} weight(s) that are not zero; the masks "
                            "contradict the weights (use the checkpoint as pruning.py or finetune.py wrote it)")


@dataclass
class PrunableWeight:
    name: str  # "<component>.<layer>", as in sparsity reports
    component: str
    module: nn.Module
    param: nn.Parameter


def prunable_weights(model: nn.Module) -> list[PrunableWeight]:
    """Every thresholdable conv weight of ``model.components()``, in model order."""
    out = []
    for comp, module in model.components():
        for lname, conv in sparse_convs(module):
            out.append(PrunableWeight(f"{comp}.{lname}", comp, conv, conv.weight))
    return out


class MaskSet:
    """Name-keyed boolean masks (True = keep) for the prunable weights of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.weights = prunable_weights(model)
        self.by_name = {w.name: w for w in self.weights}
        self.masks: dict[str, Tensor] = {
            w.name: torch.ones_like(w.param, dtype=torch.bool) for w in self.weights
        }

    def __iter__(self) -> Iterator[PrunableWeight]:
        return iter(self.weights)

    def components(self) -> list[str]:
        return list(dict.fromkeys(w.component for w in self.weights))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight in place (after each optimiser step, and once when masks change)."""
        for w in self.weights:
            w.param.mul_(self.masks[w.name].to(w.param.dtype))

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights, so Adam's moments never see them either."""
        for w in self.weights:
            if w.param.grad is not None:
                w.param.grad.mul_(self.masks[w.name].to(w.param.grad.dtype))

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear Adam/momentum state at pruned entries (call when masks change), so stale moments cannot move them."""
        for w in self.weights:
            state = optimizer.state.get(w.param, {})
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == w.param.shape:
                    value.mul_(self.masks[w.name].to(value.dtype))

    def kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def sparsity(self) -> float:
        return 1.0 - self.kept() / self.total()

    def state_dict(self) -> dict[str, Tensor]:
        return {name: m.detach().cpu().clone() for name, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not isinstance(state, dict) or not all(isinstance(m, Tensor) for m in state.values()):
            raise MaskError("the checkpoint's masks are not a mapping of layer names to tensors; use the pruned "
                            "checkpoint as pruning.py or finetune.py wrote it")
        missing = sorted(set(self.masks) - set(state))
        unknown = sorted(map(str, set(state) - set(self.masks)))
        if missing or unknown:
            raise MaskError(f"the checkpoint's masks do not match the model's layers (missing {missing[:3]}, "
                            f"unknown {unknown[:3]}); use the pruned checkpoint as pruning.py or finetune.py wrote it")
        for name, m in state.items():
            if m.shape != self.masks[name].shape:
                raise MaskError(f"the checkpoint's mask {name} has shape {tuple(m.shape)}, its weight "
                                f"{tuple(self.masks[name].shape)}; use the pruned checkpoint as pruning.py wrote it")
            self.masks[name] = m.to(device=self.masks[name].device, dtype=torch.bool)

    def to(self, device: torch.device) -> MaskSet:
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        return self

    @classmethod
    def from_weights(cls, model: nn.Module) -> MaskSet:
        """Masks that keep exactly the currently non-zero weights (e.g. of a pruned checkpoint)."""
        ms = cls(model)
        ms.masks = {w.name: w.param.detach() != 0 for w in ms.weights}
        return ms
