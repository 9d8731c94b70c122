"""Which device a run uses (``--device``), checked before any work; CPU runs also get the allocator settings."""

from __future__ import annotations

import torch

from .allocator import keep_freed_memory
from .config import ConfigError


def resolve_device(name: str) -> torch.device:
    """The device of ``--device``; for a CPU run, also the allocator settings of ``main.allocator``."""
    device = _parse_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def _parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # meta, mps, xpu ...: not paths this project trains or tests on
        raise ConfigError(f"--device {name}: this project runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device
