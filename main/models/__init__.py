"""Model zoo: backbones, ASPP heads and their assembly into a ``MultiTaskModel``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import nn

from .heads import ASPP_RATES, ASPPHead
from .mobilenetv2 import MobileNetV2
from .mtl import BACKBONE, HEADS, MultiTaskModel
from .resnet import DeeplabResNet34

if TYPE_CHECKING:  # only for the annotation: the models never need the config module at run time
    from ..config import Config

BACKBONES: dict[str, type[nn.Module]] = {"resnet34": DeeplabResNet34, "mobilenetv2": MobileNetV2}

__all__ = ["ASPPHead", "BACKBONE", "BACKBONES", "HEADS", "DeeplabResNet34", "MobileNetV2", "MultiTaskModel",
           "build_model", "model_for"]


def build_model(architecture: str, task_channels: Mapping[str, int], width_mult: float = 1.0,
                s_init: float = -30.5, sparse: bool = True, head_dropout: float = 0.5,
                threshold_scope: str = "component", aspp_rates: Sequence[int] = ASPP_RATES) -> MultiTaskModel:
    """Backbone ``architecture`` plus one ASPP head per task (``task_channels``: task -> output channels)."""
    if architecture not in BACKBONES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(BACKBONES)}")
    backbone = BACKBONES[architecture](width_mult=width_mult)
    heads = {t: ASPPHead(backbone.out_channels, c, width_mult, tuple(aspp_rates), dropout=head_dropout)
             for t, c in task_channels.items()}
    return MultiTaskModel(backbone, heads, s_init=s_init, sparse=sparse, threshold_scope=threshold_scope)


def model_for(cfg: Config, task_channels: Mapping[str, int], sparse: bool | None = None) -> MultiTaskModel:
    """The model a run's config describes (``task_channels`` from its dataset); ``sparse`` defaults to
    ``not cfg.dense``.  Every place that rebuilds a run's model calls this, so they cannot disagree."""
    return build_model(cfg.architecture, task_channels, cfg.width_mult, cfg.sInit_value,
                       sparse=not cfg.dense if sparse is None else sparse, head_dropout=cfg.head_dropout,
                       threshold_scope=cfg.threshold_scope, aspp_rates=cfg.aspp_rates)
