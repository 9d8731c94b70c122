"""Deeplab-ResNet34 backbone (output stride 8) with soft-threshold convolutions.

Faithful to the reference ``Deeplab_ResNet_Backbone``: 7×7/2 stem, ceil-mode 3×3/2 max-pool, BasicBlocks
[3, 4, 6, 3] with widths [64, 128, 256, 512], strides [1, 2, 1, 1] and dilations [1, 1, 2, 4] (stages 3 and
4 dilate instead of striding), residual ``relu(downsample(x) + block(x))``, conv weights ~ N(0, 0.01) and no
ImageNet pre-training.  Module names follow torchvision's ResNet (``conv1``, ``layer3.0.downsample.0``)
so ImageNet weights could be mapped in on a machine that has them.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..sparse import SoftThresholdConv2d
from .common import scaled

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> SoftThresholdConv2d:
    return SoftThresholdConv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the (optionally projected) residual."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, project: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, dilation)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout, 1, dilation)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(SoftThresholdConv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if project else None
        )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class DeeplabResNet34(nn.Module):
    """Dilated ResNet34 feature extractor: 321×321 → 41×41×512 (at ``width_mult=1``)."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = [scaled(w, width_mult) for w in STAGE_WIDTHS]
        stem = widths[0]
        self.conv1 = SoftThresholdConv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        cin = stem
        for i, (n, cout, stride, dil) in enumerate(zip(STAGE_BLOCKS, widths, STAGE_STRIDES, STAGE_DILATIONS)):
            # The reference projects when the stride or width changes or the stage is dilated (2 or 4).
            project = stride != 1 or cin != cout or dil in (2, 4)
            blocks = [BasicBlock(cin, cout, stride, dil, project)]
            blocks += [BasicBlock(cout, cout, 1, dil, False) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.out_channels = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
