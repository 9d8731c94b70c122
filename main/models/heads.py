"""DeepLab-v2 ASPP task head, as the reference ``ASPPHeadNode``.

Four parallel branches with dilation rates 6/12/18/24, each 3×3 dilated conv F→1024 → ReLU → Dropout(0.5)
→ 1×1 1024→1024 → ReLU → Dropout(0.5) → 1×1 1024→C (all with bias, all soft-thresholded, including the
classifier), summed.  No BatchNorm, no output activation, no upsampling: outputs stay at feature
resolution.  PyTorch's default Conv2d initialisation, as in the reference.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..sparse import SoftThresholdConv2d
from .common import scaled

ASPP_RATES = (6, 12, 18, 24)


class ASPPBranch(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, rate: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = SoftThresholdConv2d(cin, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = SoftThresholdConv2d(hidden, hidden, 1)
        self.conv3 = SoftThresholdConv2d(hidden, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.relu(self.conv1(x)))
        x = self.drop2(self.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """Sum of four ASPP branches; branch modules are named ``fc1``..``fc4`` as in the reference."""

    def __init__(self, in_channels: int, out_channels: int, width_mult: float = 1.0,
                 rates: tuple[int, ...] = ASPP_RATES, dropout: float = 0.5) -> None:
        super().__init__()
        hidden = scaled(1024, width_mult, 8)
        for i, rate in enumerate(rates):
            self.add_module(f"fc{i + 1}", ASPPBranch(in_channels, hidden, out_channels, rate, dropout))
        # The branches summed, in order; compaction (``main.compaction``) drops a branch whose output is constant
        # (folded into a surviving branch's bias), so a compact head may have fewer, e.g. ("fc1", "fc3", "fc4").
        self.branch_names: tuple[str, ...] = tuple(f"fc{i + 1}" for i in range(len(rates)))
        self.num_branches = len(rates)

    def remove_branch(self, name: str) -> None:
        """Drop branch ``name`` (its constant output must be folded elsewhere by the caller)."""
        if name not in self.branch_names or len(self.branch_names) == 1:
            raise ValueError(f"cannot remove branch {name!r} of {self.branch_names}")
        delattr(self, name)
        self.branch_names = tuple(n for n in self.branch_names if n != name)
        self.num_branches = len(self.branch_names)

    def forward(self, x: Tensor) -> Tensor:
        first, *rest = self.branch_names
        out = getattr(self, first)(x)
        for name in rest:
            out = out + getattr(self, name)(x)
        return out
