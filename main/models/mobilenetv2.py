"""MobileNetV2 backbone (output stride 32, 1280 output channels) with soft-threshold convolutions.

As in the reference (tonylins' MobileNetV2 with the pooling/classifier removed): 3×3/2 stem to 32 channels,
inverted residuals (t, c, n, s) below, identity shortcut iff stride 1 and equal widths, linear bottleneck,
final 1×1 to 1280 + BN + ReLU6.  Conv weights ~ N(0, sqrt(2 / (k·k·C_out))).  ``width_mult`` scales every
width including the final 1280 (the reference only ever used 1.0).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..sparse import SoftThresholdConv2d
from .common import scaled

# (expansion t, output channels c, repeats n, first stride s)
INVERTED_RESIDUAL_CFG = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        SoftThresholdConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """[pw expand →] dw 3×3 → pw-linear, with an identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += list(_conv_bn(cin, hidden, 1))
        layers += list(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
        layers += list(_conv_bn(hidden, cout, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 features: 321×321 → 11×11×1280 (at ``width_mult=1``)."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = scaled(32, width_mult, 8)
        features: list[nn.Module] = [_conv_bn(3, cin, 3, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_CFG:
            cout = scaled(c, width_mult, 8)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.out_channels = scaled(1280, width_mult, 8)
        features.append(_conv_bn(cin, self.out_channels, 1))
        self.features = nn.Sequential(*features)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
