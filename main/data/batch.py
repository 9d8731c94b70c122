"""Moving a batch (a dict of tensors and metadata) to the training device."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in batch.items()}
